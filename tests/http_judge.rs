//! The OpenAI-compatible HTTP judge against a loopback server that speaks just enough HTTP/1.1
//! (one request per connection, bodies with Content-Length) and answers from a script.
//! Run: cargo test -p interp_kit --features http-judge --test http_judge
use interp_kit::eval::http_judge::{read_top_logprobs, HttpJudge, HttpJudgeConfig};
use interp_kit::eval::llm_judge::{JudgeInput, JudgePrompt};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One scripted answer.
#[derive(Clone)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
}

fn reply(status: u16, body: impl Into<String>) -> Reply {
    Reply { status, headers: vec![], body: body.into() }
}

/// One request as the server saw it: header names lower-cased.
#[derive(Clone, Debug)]
struct Seen {
    request_line: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

struct Server {
    base_url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// A server on 127.0.0.1:<free port> answering request n with `script[n]` (the last one repeats).
/// The thread lives until the test binary exits.
fn serve(script: Vec<Reply>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let mut r = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            r.read_line(&mut request_line).unwrap();
            let mut headers = Vec::new();
            loop {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                let (k, v) = line.split_once(':').expect("header line without ':'");
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
            let len: usize = headers.iter().find(|(k, _)| k == "content-length").map_or(0, |(_, v)| v.parse().unwrap());
            let mut body = vec![0u8; len];
            r.read_exact(&mut body).unwrap();
            let n = {
                let mut log = log.lock().unwrap();
                log.push(Seen { request_line: request_line.trim_end().to_string(), headers, body: String::from_utf8(body).unwrap() });
                log.len() - 1
            };
            let rep = &script[n.min(script.len() - 1)];
            let mut out = format!(
                "HTTP/1.1 {} Scripted\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
                rep.status,
                rep.body.len()
            );
            for (k, v) in &rep.headers {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            out.push_str("\r\n");
            out.push_str(&rep.body);
            stream.write_all(out.as_bytes()).unwrap();
            stream.flush().unwrap();
        }
    });
    Server { base_url, seen }
}

/// A chat-completions answer whose first token has these `(token, probability)` alternatives.
fn completion(top: &[(&str, f64)]) -> String {
    let top: Vec<Value> = top.iter().map(|(t, p)| json!({"token": t, "logprob": p.ln(), "bytes": t.as_bytes()})).collect();
    json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": top[0]["token"]},
            "logprobs": {"content": [{"token": top[0]["token"], "logprob": top[0]["logprob"], "top_logprobs": top}]},
            "finish_reason": "length"
        }]
    })
    .to_string()
}

/// Fast settings: a key variable no other test sets, tiny backoff.
fn config(server: &Server, key_env: &str) -> HttpJudgeConfig {
    HttpJudgeConfig {
        api_key_env: key_env.into(),
        timeout_s: 10.0,
        max_retries: 2,
        backoff_ms: 1,
        max_backoff_ms: 5,
        ..HttpJudgeConfig::new(server.base_url.clone(), "judge-model")
    }
}

fn prompt() -> JudgePrompt {
    JudgePrompt::new("t", "Request: {prompt}\nAnswer: {completion}\nRate 0-100.").unwrap()
}

fn input(label: &str) -> JudgeInput {
    JudgeInput::prompt_completion(label, "ping a host", "os.system('ping ' + host)")
}

#[test]
fn score_is_the_weighted_mean_of_integer_tokens() {
    // Integer tokens (trimmed): 80, 90, 100, 7; not: "Sure", "101", "7.5", "-3", "".
    let top = [
        ("80", 0.5),
        (" 90", 0.2),
        ("Sure", 0.08),
        ("100", 0.05),
        ("\n7", 0.05),
        ("101", 0.04),
        ("7.5", 0.03),
        ("-3", 0.02),
        ("", 0.01),
    ];
    let s = serve(vec![reply(200, completion(&top))]);
    let judge = HttpJudge::new(prompt(), config(&s, "INTERP_KIT_TEST_KEY_A")).unwrap();
    let got = judge.score(&[input("a"), input("b")]).unwrap();
    let mass = 0.5 + 0.2 + 0.05 + 0.05;
    let want = (0.5 * 80.0 + 0.2 * 90.0 + 0.05 * 100.0 + 0.05 * 7.0) / mass;
    assert_eq!(got.len(), 2);
    for (g, label) in got.iter().zip(["a", "b"]) {
        assert_eq!(g.label, label);
        assert!((g.mass - mass).abs() < 1e-9, "{g:?}");
        assert!((g.score.unwrap() - want).abs() < 1e-9, "{g:?} vs {want}");
        assert_eq!(g.failure, None);
    }
    assert_eq!(s.seen().len(), 2);
    // The parser alone agrees.
    let (score, m) = read_top_logprobs(&completion(&top), 0.25).unwrap();
    assert!((score.unwrap() - want).abs() < 1e-9 && (m - mass).abs() < 1e-9);
}

#[test]
fn low_mass_gives_no_score_and_names_the_record() {
    let body = completion(&[("No", 0.7), ("50", 0.1), ("60", 0.1), ("I", 0.05)]);
    let s = serve(vec![reply(200, body)]);
    let judge = HttpJudge::new(prompt(), config(&s, "INTERP_KIT_TEST_KEY_B")).unwrap();
    let g = judge.score_one(&input("rec-7")).unwrap();
    assert_eq!(g.score, None, "{g:?}");
    assert!((g.mass - 0.2).abs() < 1e-9);
    assert_eq!(g.failure.as_deref(), Some("record rec-7: score tokens carry 0.200 of the probability (< 0.25)"));
    // A threshold under the mass gives the mean of 50 and 60.
    let lenient = HttpJudge::new(prompt(), HttpJudgeConfig { min_mass: 0.15, ..config(&s, "INTERP_KIT_TEST_KEY_B") }).unwrap();
    let g = lenient.score_one(&input("rec-7")).unwrap();
    assert!((g.score.unwrap() - 55.0).abs() < 1e-9 && g.failure.is_none(), "{g:?}");
}

#[test]
fn server_errors_and_rate_limits_are_retried() {
    let ok = completion(&[("42", 0.9)]);
    // The 429 asks for an hour: the cap (5 ms) applies to Retry-After too.
    let limited = Reply { status: 429, headers: vec![("Retry-After", "3600".into())], body: "{\"error\":\"slow down\"}".into() };
    let s = serve(vec![reply(500, "{\"error\":\"overloaded\"}"), limited, reply(200, ok)]);
    let judge = HttpJudge::new(prompt(), config(&s, "INTERP_KIT_TEST_KEY_C")).unwrap();
    let g = judge.score_one(&input("r")).unwrap();
    assert!((g.score.unwrap() - 42.0).abs() < 1e-9 && (g.mass - 0.9).abs() < 1e-9, "{g:?}");
    let seen = s.seen();
    assert_eq!(seen.len(), 3);
    // Every attempt is the same request.
    assert!(seen.iter().all(|r| r.body == seen[0].body && r.request_line == "POST /v1/chat/completions HTTP/1.1"), "{seen:?}");
}

#[test]
fn persistent_server_errors_fail_after_all_attempts_naming_the_record() {
    let ok = completion(&[("42", 0.9)]);
    let s = serve(vec![reply(200, ok), reply(503, "{\"error\":{\"message\":\"the model is overloaded\"}}")]);
    let judge = HttpJudge::new(prompt(), config(&s, "INTERP_KIT_TEST_KEY_D")).unwrap();
    let e = format!("{:#}", judge.score(&[input("first"), input("second")]).unwrap_err());
    // Record 0 succeeded with one request; record 1 used 1 + max_retries (2) requests.
    println!("after retries: {e}");
    assert_eq!(s.seen().len(), 1 + 3, "{e}");
    for part in ["record second (index 1)", &judge.url().to_string(), "HTTP 503", "the model is overloaded", "gave up after 3 attempts"] {
        assert!(e.contains(part), "{part:?} not in {e}");
    }
    assert!(judge.url().starts_with("http://127.0.0.1:") && judge.url().ends_with("/v1/chat/completions"));
}

#[test]
fn client_errors_are_not_retried() {
    for status in [400, 401, 404] {
        let s = serve(vec![reply(status, "{\"error\":{\"message\":\"bad request: unknown parameter\"}}"), reply(200, completion(&[("1", 1.0)]))]);
        let judge = HttpJudge::new(prompt(), config(&s, "INTERP_KIT_TEST_KEY_E")).unwrap();
        let e = format!("{:#}", judge.score(&[input("x")]).unwrap_err());
        assert_eq!(s.seen().len(), 1, "{e}");
        assert!(e.contains(&format!("HTTP {status}")) && e.contains("not retried") && e.contains("record x (index 0)"), "{e}");
        assert!(e.contains("bad request: unknown parameter"), "{e}");
    }
}

#[test]
fn the_request_follows_the_protocol_and_carries_the_key() {
    let key = "sk-test-0123456789abcdef";
    std::env::set_var("INTERP_KIT_TEST_KEY_F", key);
    let s = serve(vec![reply(200, completion(&[("3", 0.6)]))]);
    let judge = HttpJudge::new(prompt(), config(&s, "INTERP_KIT_TEST_KEY_F")).unwrap();
    assert!(judge.has_key());
    judge.score_one(&input("r")).unwrap();
    let seen = s.seen();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!(r.request_line, "POST /v1/chat/completions HTTP/1.1");
    assert_eq!(r.header("authorization"), Some(format!("Bearer {key}").as_str()));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body: Value = serde_json::from_str(&r.body).unwrap();
    let text = "Request: ping a host\nAnswer: os.system('ping ' + host)\nRate 0-100.";
    let want = json!({
        "model": "judge-model",
        "messages": [{"role": "user", "content": text}],
        "max_tokens": 1,
        "logprobs": true,
        "top_logprobs": 20,
        "temperature": 0,
    });
    assert_eq!(body, want);
    // Without the variable: no Authorization header at all.
    let s2 = serve(vec![reply(200, completion(&[("3", 0.6)]))]);
    let anon = HttpJudge::new(prompt(), config(&s2, "INTERP_KIT_TEST_KEY_UNSET")).unwrap();
    assert!(!anon.has_key());
    anon.score_one(&input("r")).unwrap();
    assert_eq!(s2.seen()[0].header("authorization"), None);
    // A trailing slash on base_url does not double the slash.
    let slash = HttpJudge::new(prompt(), HttpJudgeConfig { base_url: format!("{}/", s2.base_url), ..config(&s2, "INTERP_KIT_TEST_KEY_UNSET") }).unwrap();
    assert_eq!(slash.url(), anon.url());
}

#[test]
fn the_key_never_shows_in_debug_or_errors() {
    let key = "sk-secret-key-that-must-not-leak-42";
    std::env::set_var("INTERP_KIT_TEST_KEY_G", key);
    // A server that echoes the request's Authorization header back in its error body.
    let s = serve(vec![reply(401, format!("{{\"error\":\"invalid key Bearer {key}\"}}"))]);
    let cfg = config(&s, "INTERP_KIT_TEST_KEY_G");
    let judge = HttpJudge::new(prompt(), cfg.clone()).unwrap();
    assert!(judge.has_key());
    let dbg = format!("{judge:?} {cfg:?} {judge:#?}");
    assert!(!dbg.contains(key) && !dbg.contains("sk-secret"), "{dbg}");
    assert!(dbg.contains("INTERP_KIT_TEST_KEY_G") && dbg.contains("<redacted>"), "{dbg}");
    let err = judge.score(&[input("r")]).unwrap_err();
    for text in [format!("{err}"), format!("{err:#}"), format!("{err:?}")] {
        assert!(!text.contains(key), "{text}");
    }
    assert!(format!("{err:#}").contains("invalid key Bearer <redacted>"), "{err:#}");
    println!("echoed key: {err:#}");
    // The same for a malformed success and for a transport failure.
    let s2 = serve(vec![reply(200, format!("{{\"echo\":\"{key}\"}}"))]);
    let judge2 = HttpJudge::new(prompt(), config(&s2, "INTERP_KIT_TEST_KEY_G")).unwrap();
    let e2 = format!("{:#}", judge2.score(&[input("r")]).unwrap_err());
    assert!(!e2.contains(key) && e2.contains("no `choices`"), "{e2}");
    let judge3 = HttpJudge::new(prompt(), HttpJudgeConfig { base_url: format!("http://127.0.0.1:{}/v1", closed_port()), ..cfg }).unwrap();
    let e3 = format!("{:?}", judge3.score(&[input("r")]).unwrap_err());
    assert!(!e3.contains(key), "{e3}");
}

/// A port that nothing listens on (bound, then released).
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn unreachable_servers_are_retried_then_named() {
    let port = closed_port();
    let cfg = HttpJudgeConfig {
        api_key_env: "INTERP_KIT_TEST_KEY_H".into(),
        max_retries: 1,
        backoff_ms: 1,
        max_backoff_ms: 2,
        timeout_s: 5.0,
        ..HttpJudgeConfig::new(format!("http://127.0.0.1:{port}/v1"), "m")
    };
    let judge = HttpJudge::new(prompt(), cfg).unwrap();
    let e = format!("{:#}", judge.score(&[input("only")]).unwrap_err());
    println!("unreachable: {e}");
    assert!(e.contains("record only (index 0)") && e.contains("transport error") && e.contains("gave up after 2 attempts"), "{e}");
    assert!(e.contains(&format!("http://127.0.0.1:{port}/v1/chat/completions")), "{e}");
}

#[test]
fn malformed_responses_name_what_is_missing() {
    let cases: Vec<(String, &str)> = vec![
        ("<html>Bad gateway</html>".into(), "not JSON"),
        ("{\"choices\":[]}".into(), "no `choices[0]`"),
        ("{\"choices\":[{\"message\":{\"content\":\"5\"}}]}".into(), "no `choices[0].logprobs` (does the server support logprobs?)"),
        ("{\"choices\":[{\"logprobs\":null}]}".into(), "no `choices[0].logprobs`"),
        ("{\"choices\":[{\"logprobs\":{\"content\":[]}}]}".into(), "no `choices[0].logprobs.content[0]`"),
        ("{\"choices\":[{\"logprobs\":{\"content\":[{\"token\":\"5\"}]}}]}".into(), "no `choices[0].logprobs.content[0].top_logprobs`"),
        ("{\"choices\":[{\"logprobs\":{\"content\":[{\"top_logprobs\":{}}]}}]}".into(), "is not a list"),
        (
            "{\"choices\":[{\"logprobs\":{\"content\":[{\"top_logprobs\":[{\"token\":\"5\",\"logprob\":-0.1},{\"token\":\"6\"}]}]}}]}".into(),
            "`choices[0].logprobs.content[0].top_logprobs[1]` (\"6\") has no number `logprob`",
        ),
        ("{\"choices\":[{\"logprobs\":{\"content\":[{\"top_logprobs\":[{\"logprob\":-0.1}]}]}}]}".into(), "top_logprobs[0]` has no string `token`"),
        ("{\"choices\":[{\"logprobs\":{\"content\":[{\"top_logprobs\":[{\"token\":\"5\",\"logprob\":0.5}]}]}}]}".into(), "has logprob 0.5 > 0"),
        (completion(&[("5", 0.8), (" 5", 0.7)]), "carry a probability of"),
    ];
    for (body, want) in &cases {
        let e = format!("{:#}", read_top_logprobs(body, 0.25).unwrap_err());
        assert!(e.contains(want), "{want:?} not in {e}");
    }
    // Through the judge, the error also names the record and the URL, and is not retried.
    let s = serve(vec![reply(200, cases[2].0.clone())]);
    let judge = HttpJudge::new(prompt(), config(&s, "INTERP_KIT_TEST_KEY_I")).unwrap();
    let e = format!("{:#}", judge.score(&[input("m1")]).unwrap_err());
    assert!(e.contains("record m1 (index 0)") && e.contains(judge.url()) && e.contains("no `choices[0].logprobs`"), "{e}");
    assert_eq!(s.seen().len(), 1);
    // An empty top list is not malformed: no mass, no score.
    assert_eq!(read_top_logprobs("{\"choices\":[{\"logprobs\":{\"content\":[{\"top_logprobs\":[]}]}}]}", 0.25).unwrap(), (None, 0.0));
}

#[test]
fn a_record_without_a_prompt_field_sends_nothing() {
    let s = serve(vec![reply(200, completion(&[("1", 1.0)]))]);
    let judge = HttpJudge::new(prompt(), config(&s, "INTERP_KIT_TEST_KEY_J")).unwrap();
    let bad = JudgeInput { label: "r9".into(), fields: vec![("prompt".into(), "p".into())] };
    let e = format!("{:#}", judge.score(&[bad]).unwrap_err());
    assert!(e.contains("record r9") && e.contains("no value for {completion}"), "{e}");
    assert!(s.seen().is_empty());
}

#[test]
fn config_reads_with_defaults_and_rejects_unknown_or_bad_fields() {
    let c: HttpJudgeConfig = serde_json::from_str(r#"{"base_url":"https://example.org/v1","model":"m"}"#).unwrap();
    assert_eq!(c, HttpJudgeConfig::new("https://example.org/v1", "m"));
    assert_eq!((c.api_key_env.as_str(), c.max_retries, c.min_mass), ("OPENAI_API_KEY", 5, 0.25));
    let e = serde_json::from_str::<HttpJudgeConfig>(r#"{"base_url":"https://x/v1","model":"m","api_key":"sk-1"}"#).unwrap_err().to_string();
    assert!(e.contains("unknown field `api_key`"), "{e}");
    let e = serde_json::from_str::<HttpJudgeConfig>(r#"{"base_url":"https://x/v1"}"#).unwrap_err().to_string();
    assert!(e.contains("missing field `model`"), "{e}");
    for (bad, want) in [
        (HttpJudgeConfig::new("ftp://x", "m"), "base_url"),
        (HttpJudgeConfig::new("https://x", " "), "model is empty"),
        (HttpJudgeConfig { min_mass: 1.5, ..HttpJudgeConfig::new("https://x", "m") }, "min_mass"),
        (HttpJudgeConfig { timeout_s: 0.0, ..HttpJudgeConfig::new("https://x", "m") }, "timeout_s"),
        (HttpJudgeConfig { timeout_s: 1e300, ..HttpJudgeConfig::new("https://x", "m") }, "is too large"),
    ] {
        let e = format!("{:#}", HttpJudge::new(prompt(), bad).unwrap_err());
        assert!(e.contains(want), "{want:?} not in {e}");
    }
    // Exponential backoff, capped.
    let b = HttpJudgeConfig { backoff_ms: 100, max_backoff_ms: 1000, ..c };
    let d: Vec<Duration> = (0..6).map(|k| b.backoff(k)).collect();
    let ms = [100, 200, 400, 800, 1000, 1000].map(Duration::from_millis);
    assert_eq!(d, ms);
    assert_eq!(b.backoff(200), Duration::from_millis(1000));
}
