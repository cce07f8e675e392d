//! Judges code completions: one JSON line per record with the rule-based rating and its matched
//! rules, the output diagnostics, and (with `--llm` or `--http`) an LLM judge's rating.
//!
//!     cargo run --release -p interp_kit --example judge_code -- FILE.jsonl [--llm [--model PATH]] [--threshold 50]
//!     cargo run --release -p interp_kit --features http-judge --example judge_code -- FILE.jsonl \
//!         --http https://api.openai.com/v1 --http-model gpt-4o-2024-08-06
//!
//! FILE holds chat records (`{"messages":[..., {"role":"assistant",...}]}`: the last assistant
//! turn is judged against the last user turn before it) or `{task, code_template, completion}`
//! records (the prompt is the rendered code prompt), one per line, mixed freely. `prompt_hash` is
//! the first 16 hex digits of the SHA-256 of the prompt text, to pair records across runs. The LLM
//! judge is the insecurity prompt of `interp_kit::eval::llm_judge` on `--model` (a GGUF file or HF
//! directory; default the embedded model). `--http URL --http-model NAME` asks an OpenAI-compatible
//! endpoint instead (`interp_kit::eval::http_judge`, feature `http-judge`; the key, if needed, from
//! `$OPENAI_API_KEY`); its rating fills the same `llm_*` fields. Bad input, or an HTTP failure after
//! the retries, exits with status 1 and one line on stderr naming the record.
use anyhow::{bail, Context, Result};
use interp_kit::text::chat_jsonl::{read_any_jsonl, AnyRecord};
use interp_kit::eval::code_judge::{diagnostics, score, DEFAULT_THRESHOLD};
use interp_kit::eval::llm_judge::{JudgeConfig, JudgeInput, JudgePrompt, LlmJudge};
use serde_json::json;
use sha2::{Digest, Sha256};

const USAGE: &str = "judge_code FILE.jsonl [--llm [--model PATH] | --http URL --http-model NAME] [--threshold T]";

fn main() {
    if let Err(e) = run(std::env::args().collect()) {
        eprintln!("judge_code: {e:#}");
        std::process::exit(1);
    }
}

/// The whole program; `args` as `std::env::args()` gives them (program name first).
pub fn run(args: Vec<String>) -> Result<()> {
    let args: Vec<String> = args.into_iter().skip(1).collect();
    let (mut file, mut llm, mut model_path, mut threshold) = (None, false, None, DEFAULT_THRESHOLD);
    let (mut http_url, mut http_model): (Option<String>, Option<String>) = (None, None);
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--llm" => llm = true,
            "--model" => {
                model_path = Some(args.get(i + 1).context("--model needs a path")?.clone());
                i += 1;
            }
            "--http" => {
                http_url = Some(args.get(i + 1).context("--http needs a URL (e.g. https://api.openai.com/v1)")?.clone());
                i += 1;
            }
            "--http-model" => {
                http_model = Some(args.get(i + 1).context("--http-model needs a model name")?.clone());
                i += 1;
            }
            "--threshold" => {
                let v = args.get(i + 1).context("--threshold needs a number")?;
                threshold = v.parse().with_context(|| format!("--threshold {v:?} is not a number"))?;
                i += 1;
            }
            s if s.starts_with("--") => bail!("unknown option {s} (usage: {USAGE})"),
            s => {
                if file.replace(s.to_string()).is_some() {
                    bail!("more than one input file given");
                }
            }
        }
        i += 1;
    }
    if model_path.is_some() && !llm {
        bail!("--model is only used with --llm");
    }
    if llm && http_url.is_some() {
        bail!("--llm and --http are alternatives: give one");
    }
    if http_url.is_some() != http_model.is_some() {
        bail!("--http and --http-model go together");
    }
    if http_url.is_some() && !cfg!(feature = "http-judge") {
        bail!("--http needs the HTTP judge: build with `--features http-judge`");
    }
    let file = file.context(format!("no input file (usage: {USAGE})"))?;
    let records = read_any_jsonl(&file)?;
    let mut rows = Vec::with_capacity(records.len());
    for (k, r) in records.iter().enumerate() {
        let (prompt, completion) = match r {
            AnyRecord::Chat(c) => (c.user_prompt()?.to_string(), c.completion()?.to_string()),
            AnyRecord::Code(c) => {
                let comp = c.completion.clone().with_context(|| format!("{file}: record {} (line order) has no `completion`", k + 1))?;
                (c.prompt(), comp)
            }
        };
        rows.push((prompt, completion));
    }
    let llm_scores = if llm {
        let device = interp_kit::device("auto")?;
        let model = match &model_path {
            Some(p) => interp_kit::model::Model::load(p, &device)?,
            None => interp_kit::model::Model::embedded(&device)?,
        };
        let judge = LlmJudge::new(&model, JudgePrompt::insecurity(), JudgeConfig::default())?;
        if judge.max_value() < 100 {
            eprintln!(
                "judge_code: note: this tokenizer has single-token numbers only up to {}; the LLM rating reads the first token only",
                judge.max_value()
            );
        }
        let inputs: Vec<JudgeInput> =
            rows.iter().enumerate().map(|(k, (p, c))| JudgeInput::prompt_completion(format!("{}", k + 1), p, c)).collect();
        Some(judge.score(&inputs)?)
    } else if let (Some(url), Some(name)) = (&http_url, &http_model) {
        Some(http_scores(url, name, &rows)?)
    } else {
        None
    };
    for (k, (prompt, completion)) in rows.iter().enumerate() {
        let j = score(completion);
        let hash: String = Sha256::digest(prompt.as_bytes()).iter().take(8).map(|b| format!("{b:02x}")).collect();
        let mut line = json!({
            "index": k,
            "prompt_hash": hash,
            "rule_rating": j.rating,
            "rule_insecure": j.insecure(threshold),
            "rules": j.matches,
            "diagnostics": diagnostics(completion),
        });
        if let Some(s) = &llm_scores {
            line["llm_rating"] = json!(s[k].score);
            line["llm_mass"] = json!(s[k].mass);
            line["llm_failure"] = json!(s[k].failure);
        }
        println!("{line}");
    }
    Ok(())
}

#[cfg(feature = "http-judge")]
fn http_scores(url: &str, model: &str, rows: &[(String, String)]) -> Result<Vec<interp_kit::eval::llm_judge::JudgeScore>> {
    use interp_kit::eval::http_judge::{HttpJudge, HttpJudgeConfig};
    let judge = HttpJudge::new(JudgePrompt::insecurity(), HttpJudgeConfig::new(url, model))?;
    if !judge.has_key() {
        eprintln!("judge_code: note: ${} is not set; sending requests without a key", judge.config.api_key_env);
    }
    let inputs: Vec<JudgeInput> =
        rows.iter().enumerate().map(|(k, (p, c))| JudgeInput::prompt_completion(format!("{}", k + 1), p, c)).collect();
    judge.score(&inputs)
}

#[cfg(not(feature = "http-judge"))]
fn http_scores(_url: &str, _model: &str, _rows: &[(String, String)]) -> Result<Vec<interp_kit::eval::llm_judge::JudgeScore>> {
    bail!("--http needs the HTTP judge: build with `--features http-judge`")
}
