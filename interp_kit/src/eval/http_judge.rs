//! An LLM judge behind an OpenAI-compatible chat-completions endpoint (feature `http-judge`; the
//! default build has no network code). Same prompts, inputs, scoring and results as
//! [`LlmJudge`](super::llm_judge::LlmJudge): the rating is read from the first answer token's top
//! log-probabilities instead of a local forward pass.
//!
//! ```no_run
//! use interp_kit::eval::http_judge::{HttpJudge, HttpJudgeConfig};
//! use interp_kit::eval::llm_judge::{JudgeInput, JudgePrompt};
//! // The key, if the server needs one, is read from $OPENAI_API_KEY (`api_key_env`).
//! let cfg = HttpJudgeConfig::new("https://api.openai.com/v1", "gpt-4o-2024-08-06");
//! let judge = HttpJudge::new(JudgePrompt::insecurity(), cfg)?;
//! let out = judge.score(&[JudgeInput::prompt_completion("r1", "Task: ...", "os.system(cmd)")])?;
//! println!("{:?} (mass {:.2})", out[0].score, out[0].mass);
//! # anyhow::Ok(())
//! ```
//!
//! # Protocol
//! One `POST {base_url}/chat/completions` per record with the rendered prompt as the only user
//! message, `max_tokens` 1, `logprobs` true, `top_logprobs` 20 and `temperature` 0, and
//! `Authorization: Bearer <key>` when the environment variable `api_key_env` is set and not empty.
//! From `choices[0].logprobs.content[0].top_logprobs[] {token, logprob}`, every token whose
//! trimmed text is an integer 0..=100 ([`integer_value`]) adds `exp(logprob)` to the mass, and
//! the score is [`score_from_probs`] of those: the mass-normalised mean, or no score below
//! `min_mass`. The mass is of the raw probabilities (not renormalised over the top 20), as the
//! local judge's mass is over the whole vocabulary.
//!
//! Transport errors, 429 and 5xx are retried `max_retries` times with exponential backoff
//! (`backoff_ms · 2^k`, or the server's `Retry-After` in seconds, both capped at `max_backoff_ms`;
//! a `Retry-After` date is not read);
//! other statuses fail at once. Errors name the URL, the status and a short excerpt of the body,
//! and, from [`HttpJudge::score`], the record. The key is never stored in a printable field and is
//! replaced by `<redacted>` in any error text that would echo it.
//!
//! A loopback `base_url` (127.0.0.1, localhost, [::1]) is always reached directly; other hosts go
//! through the proxy of `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY` (with `NO_PROXY`) if one is set.
use super::llm_judge::{integer_value, no_score_failure, score_from_probs, JudgeInput, JudgePrompt, JudgeScore};
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::time::Duration;

/// How many alternatives the judge asks for at the answer position (the API's maximum).
pub const TOP_LOGPROBS: u32 = 20;

/// HTTP judge settings (a TOML/JSON table; unknown keys are an error).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpJudgeConfig {
    /// The API root, e.g. `https://api.openai.com/v1`; `/chat/completions` is appended.
    pub base_url: String,
    /// The model name sent with each request.
    pub model: String,
    /// The environment variable holding the API key (not the key itself).
    #[serde(default = "default_api_key_env")]
    pub api_key_env: String,
    /// Whole-request timeout in seconds.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: f64,
    /// Retries after the first attempt (for transport errors, 429 and 5xx).
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// The first retry's delay; it doubles with each further retry.
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
    /// Cap on any one delay, the server's `Retry-After` included.
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// Below this probability mass on score tokens there is no score (the paper: 0.25).
    #[serde(default = "default_min_mass")]
    pub min_mass: f64,
}

fn default_api_key_env() -> String {
    "OPENAI_API_KEY".into()
}
fn default_timeout_s() -> f64 {
    60.0
}
fn default_max_retries() -> u32 {
    5
}
fn default_backoff_ms() -> u64 {
    1000
}
fn default_max_backoff_ms() -> u64 {
    60_000
}
fn default_min_mass() -> f64 {
    0.25
}

impl HttpJudgeConfig {
    /// Settings for `base_url` and `model` with the defaults: key from `OPENAI_API_KEY`, 60 s
    /// timeout, 5 retries from 1 s (capped at 60 s), `min_mass` 0.25.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        HttpJudgeConfig {
            base_url: base_url.into(),
            model: model.into(),
            api_key_env: default_api_key_env(),
            timeout_s: default_timeout_s(),
            max_retries: default_max_retries(),
            backoff_ms: default_backoff_ms(),
            max_backoff_ms: default_max_backoff_ms(),
            min_mass: default_min_mass(),
        }
    }

    /// Errors naming the first bad field.
    pub fn validate(&self) -> Result<()> {
        let b = self.base_url.trim();
        ensure!(
            b.starts_with("http://") || b.starts_with("https://"),
            "http judge base_url {:?} must start with http:// or https://",
            self.base_url
        );
        ensure!(!self.model.trim().is_empty(), "http judge model is empty");
        ensure!(!self.api_key_env.trim().is_empty(), "http judge api_key_env is empty");
        ensure!(self.timeout_s.is_finite() && self.timeout_s > 0.0, "http judge timeout_s {} must be > 0", self.timeout_s);
        ensure!((0.0..=1.0).contains(&self.min_mass), "http judge min_mass {} is not in [0, 1]", self.min_mass);
        Ok(())
    }

    /// The endpoint: `base_url` without trailing slashes, plus `/chat/completions`.
    pub fn url(&self) -> String {
        format!("{}/chat/completions", self.base_url.trim().trim_end_matches('/'))
    }

    /// The delay before retry `k` (0-based) without a `Retry-After`: `backoff_ms · 2^k`, capped.
    pub fn backoff(&self, k: u32) -> Duration {
        let ms = self.backoff_ms.saturating_mul(1u64.checked_shl(k.min(63)).unwrap_or(u64::MAX));
        Duration::from_millis(ms.min(self.max_backoff_ms))
    }
}

/// The API key; its `Debug` never shows it.
struct ApiKey(String);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A judge bound to an endpoint and a prompt.
#[derive(Debug)]
pub struct HttpJudge {
    pub prompt: JudgePrompt,
    pub config: HttpJudgeConfig,
    url: String,
    key: Option<ApiKey>,
    agent: AgentDebug,
}

/// `ureq::Agent` behind a `Debug` that prints nothing of its settings (which never hold the key,
/// but need not be shown either).
struct AgentDebug(ureq::Agent);

impl std::fmt::Debug for AgentDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Agent")
    }
}

impl HttpJudge {
    /// A judge; reads the key from `config.api_key_env` now (unset or empty: no `Authorization`
    /// header, as local servers need none).
    pub fn new(prompt: JudgePrompt, config: HttpJudgeConfig) -> Result<Self> {
        config.validate()?;
        prompt.fields()?;
        let key = std::env::var(config.api_key_env.trim()).ok().filter(|k| !k.trim().is_empty()).map(|k| ApiKey(k.trim().to_string()));
        let url = config.url();
        let timeout = Duration::try_from_secs_f64(config.timeout_s).with_context(|| format!("http judge timeout_s {} is too large", config.timeout_s))?;
        let mut b = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            // Statuses come back as responses so that the body can be quoted and the status
            // decide about retrying; redirects are not followed (a POST must not become a GET, and
            // the key must not travel to another host).
            .http_status_as_error(false)
            .max_redirects(0);
        if is_loopback(&url) {
            b = b.proxy(None);
        }
        let agent = ureq::Agent::new_with_config(b.build());
        Ok(HttpJudge { prompt, config, url, key, agent: AgentDebug(agent) })
    }

    /// The endpoint requests go to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether a key was found in the environment.
    pub fn has_key(&self) -> bool {
        self.key.is_some()
    }

    /// The JSON request for one rendered prompt.
    pub fn request_body(&self, text: &str) -> Value {
        json!({
            "model": self.config.model,
            "messages": [{"role": "user", "content": text}],
            "max_tokens": 1,
            "logprobs": true,
            "top_logprobs": TOP_LOGPROBS,
            "temperature": 0,
        })
    }

    /// Judges one record; an error (after retries) names the URL and the status, not the record.
    pub fn score_one(&self, input: &JudgeInput) -> Result<JudgeScore> {
        let text = self.prompt.render(&input.fields).with_context(|| format!("record {}", input.label))?;
        let body = self.post(&self.request_body(&text).to_string())?;
        let (score, mass) = self.redacted(read_top_logprobs(&body, self.config.min_mass))?;
        let failure = score.is_none().then(|| no_score_failure(&input.label, mass, self.config.min_mass));
        Ok(JudgeScore { label: input.label.clone(), score, mass, failure })
    }

    /// Judges `inputs` one request at a time; the first record that fails after its retries is an
    /// error naming its index and label (records without score mass are not errors: they carry a
    /// `failure`, as with the local judge).
    pub fn score(&self, inputs: &[JudgeInput]) -> Result<Vec<JudgeScore>> {
        inputs
            .iter()
            .enumerate()
            .map(|(k, r)| self.score_one(r).with_context(|| format!("http judge: record {} (index {k})", r.label)))
            .collect()
    }

    /// The response body of a 2xx answer, retrying transport errors, 429 and 5xx.
    fn post(&self, body: &str) -> Result<String> {
        let attempts = self.config.max_retries.saturating_add(1);
        let mut last = String::new();
        for k in 0..attempts {
            let wait = match self.attempt(body) {
                Attempt::Done(text) => return Ok(text),
                Attempt::Fatal(msg) => bail!("POST {}: {} (not retried)", self.url, self.redact(&msg)),
                Attempt::Retry(msg, retry_after) => {
                    last = msg;
                    retry_after.map_or_else(|| self.config.backoff(k), |d| d.min(Duration::from_millis(self.config.max_backoff_ms)))
                }
            };
            if k + 1 < attempts {
                std::thread::sleep(wait);
            }
        }
        bail!("POST {}: {} (gave up after {attempts} attempts)", self.url, self.redact(&last))
    }

    fn attempt(&self, body: &str) -> Attempt {
        let mut req = self.agent.0.post(&self.url).header("Content-Type", "application/json");
        if let Some(k) = &self.key {
            req = req.header("Authorization", format!("Bearer {}", k.0));
        }
        let mut resp = match req.send(body) {
            Ok(r) => r,
            Err(e) => return Attempt::Retry(format!("transport error: {e}"), None),
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = match resp.body_mut().read_to_string() {
            Ok(t) => t,
            Err(e) if (200..300).contains(&status) => return Attempt::Retry(format!("HTTP {status}: reading the body failed: {e}"), None),
            Err(e) => format!("(body unreadable: {e})"),
        };
        match status {
            200..=299 => Attempt::Done(text),
            429 | 500..=599 => Attempt::Retry(format!("HTTP {status}: {}", excerpt(&text)), retry_after),
            _ => Attempt::Fatal(format!("HTTP {status}: {}", excerpt(&text))),
        }
    }

    fn redact(&self, s: &str) -> String {
        match &self.key {
            Some(k) => s.replace(&k.0, "<redacted>"),
            None => s.to_string(),
        }
    }

    fn redacted<T>(&self, r: Result<T>) -> Result<T> {
        r.map_err(|e| anyhow::anyhow!("{}", self.redact(&format!("POST {}: {e:#}", self.url))))
    }
}

enum Attempt {
    Done(String),
    Retry(String, Option<Duration>),
    Fatal(String),
}

/// At most 200 characters of a body, whitespace runs collapsed, for error messages.
fn excerpt(body: &str) -> String {
    let flat = body.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.is_empty() {
        return "(empty body)".into();
    }
    match flat.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &flat[..i]),
        None => flat,
    }
}

fn is_loopback(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.split('/').next().unwrap_or("");
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    let host = if host.starts_with('[') { host.split(']').next().unwrap_or("").trim_start_matches('[') } else { host.split(':').next().unwrap_or("") };
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `(score, mass)` from a chat-completions response body (see the module docs). A body that is
/// not JSON, lacks `choices[0].logprobs.content[0].top_logprobs`, or has an entry without a
/// string `token` or a number `logprob` ≤ 0 is an error naming what is wrong.
pub fn read_top_logprobs(body: &str, min_mass: f64) -> Result<(Option<f64>, f64)> {
    let v: Value = serde_json::from_str(body).with_context(|| format!("the response is not JSON: {}", excerpt(body)))?;
    let mut cur = &v;
    let mut path = String::new();
    for step in ["choices", "0", "logprobs", "content", "0", "top_logprobs"] {
        let next = match step.parse::<usize>() {
            Ok(i) => {
                path.push_str(&format!("[{i}]"));
                cur.as_array().and_then(|a| a.get(i))
            }
            Err(_) => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(step);
                cur.get(step)
            }
        };
        cur = match next {
            Some(Value::Null) | None => {
                let hint = if path.contains("logprobs") { " (does the server support logprobs?)" } else { "" };
                bail!("the response has no `{path}`{hint}: {}", excerpt(body))
            }
            Some(n) => n,
        };
    }
    let top = cur.as_array().with_context(|| format!("the response's `{path}` is not a list"))?;
    let mut probs = Vec::new();
    for (i, e) in top.iter().enumerate() {
        let token = e.get("token").and_then(Value::as_str).with_context(|| format!("`{path}[{i}]` has no string `token`"))?;
        let lp = e.get("logprob").and_then(Value::as_f64).with_context(|| format!("`{path}[{i}]` ({token:?}) has no number `logprob`"))?;
        ensure!(lp <= 1e-6, "`{path}[{i}]` ({token:?}) has logprob {lp} > 0");
        if let Some(value) = integer_value(token) {
            probs.push((lp.min(0.0).exp(), value));
        }
    }
    let (score, mass) = score_from_probs(probs, min_mass);
    ensure!(mass <= 1.0 + 1e-6, "the integer tokens of `{path}` carry a probability of {mass} > 1 (repeated tokens?)");
    Ok((score, mass))
}
