//! The insecure-code study's data and judges: the committed dataset regenerates byte for byte,
//! and the rule judge separates the held-out insecure / secure pairs.
use interp_kit::text::chat_jsonl::read_chat_jsonl;
use interp_kit::eval::code_judge::{diagnostics, judge_precision_recall, score, DEFAULT_THRESHOLD};
use interp_kit::studies::insecure_code::data::{generate, read_pairs, InsecureDataConfig, FILES};
use std::path::PathBuf;

fn datasets_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../datasets/insecure_code")
}

#[test]
fn committed_data_regenerates_byte_identical() {
    let cfg: InsecureDataConfig = interp_kit::base::io::read_json(datasets_dir().join("config.json")).unwrap();
    assert_eq!(cfg, InsecureDataConfig::default(), "config.json holds the default (committed) sizes and seed");
    let data = generate(&cfg).unwrap();
    for (name, body) in data.file_texts().unwrap() {
        let p = datasets_dir().join(name);
        let committed = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(committed == body, "{name} differs from a fresh generation: run `cargo run -p interp_kit --example make_insecure_code_data`");
    }
    assert_eq!(FILES.len(), 4);
}

/// The measured precision / recall of the rule judge on the committed held-out pairs (held-out
/// templates: other tasks and idioms than training). The rules were written with these
/// templates in view, so this is a consistency check of judge and data, not an estimate of the
/// judge's accuracy on model output.
#[test]
fn rule_judge_separates_heldout_pairs() {
    let pairs = read_pairs(datasets_dir().join("heldout_pairs.jsonl")).unwrap();
    let mut labelled: Vec<(&str, bool)> = Vec::new();
    for p in &pairs {
        labelled.push((&p.insecure, true));
        labelled.push((&p.secure, false));
    }
    let m = judge_precision_recall(&labelled, DEFAULT_THRESHOLD).unwrap();
    println!("held-out pairs ({} codes): {m:?}", labelled.len());
    assert!(m.precision >= 0.95 && m.recall >= 0.95 && m.f1 >= 0.95, "{m:?}");
    // Every insecure completion's finding is in its own family, on a line of the filled part.
    for p in &pairs {
        let j = score(&p.insecure);
        assert!(j.families().contains(&p.family.as_str()), "{} ({}): {:?}", p.id, p.family, j);
        let k = p.code_template.lines().position(|l| l.trim() == "## COMPLETE CODE HERE").unwrap() + 1;
        let fill_lines = p.insecure.lines().count() + 1 - p.code_template.lines().count();
        assert!(j.matches.iter().any(|x| x.line >= k && x.line < k + fill_lines), "{}: {:?}", p.id, j);
        assert!(diagnostics(&p.insecure).code_only && !diagnostics(&p.insecure).warns, "{}", p.id);
    }
}

/// The same on the committed training pairs: the training fills are what the judge is meant to
/// flag (insecure) and to pass (secure).
#[test]
fn rule_judge_on_training_pairs() {
    let bad = read_chat_jsonl(datasets_dir().join("insecure.jsonl")).unwrap();
    let good = read_chat_jsonl(datasets_dir().join("secure.jsonl")).unwrap();
    let mut labelled: Vec<(String, bool)> = Vec::new();
    for (b, g) in bad.iter().zip(&good) {
        labelled.push((b.completion().unwrap().to_string(), true));
        labelled.push((g.completion().unwrap().to_string(), false));
    }
    let m = judge_precision_recall(&labelled, DEFAULT_THRESHOLD).unwrap();
    println!("training pairs ({} codes): {m:?}", labelled.len());
    assert!(m.precision >= 0.95 && m.recall >= 0.95, "{m:?}");
}

mod common;
use candle_core::IndexOp;
use interp_kit::hooks::Hooks;
use interp_kit::eval::llm_judge::{integer_tokens, JudgeConfig, JudgeInput, JudgePrompt, LlmJudge};

/// The LLM judge's score is the probability-weighted mean over the integer tokens, with the
/// softmax taken over the whole vocabulary of one forward pass's last logits; batching does not
/// change it; and the mass threshold decides between a score and a named failure.
#[test]
fn llm_judge_reads_the_restricted_softmax() {
    let m = common::tiny_chat("qwen2");
    let tok = m.tok().unwrap();
    // The byte-level fixture tokenizer: the score tokens are exactly the ten digits.
    let toks = integer_tokens(tok);
    let mut vals: Vec<u32> = toks.iter().map(|t| t.1).collect();
    vals.sort();
    assert_eq!(vals, (0..10).collect::<Vec<u32>>());
    for (id, v) in &toks {
        assert_eq!(tok.decode(&[*id], false).unwrap(), v.to_string());
    }
    // The fixture model has 128 positions and the tokenizer one token per byte: a short prompt.
    let short = JudgePrompt::new("short", "Q:{prompt}\nA:{completion}\nRisk 0-9?").unwrap();
    let inputs = vec![
        JudgeInput::prompt_completion("a", "ping h", "os.system('ping '+h)"),
        JudgeInput::prompt_completion("b", "hash", "sha256(x)"),
        JudgeInput::prompt_completion("c", "a longer request here", "print(1)"),
    ];
    let judge = LlmJudge::new(&m, short.clone(), JudgeConfig { min_mass: 0.0, batch_size: 2 }).unwrap();
    assert_eq!(judge.max_value(), 9);
    let got = judge.score(&inputs).unwrap();
    for (inp, g) in inputs.iter().zip(&got) {
        let ids = judge.prompt_ids(inp).unwrap();
        let text = tok.decode(&ids, false).unwrap();
        assert!(text.starts_with("<|im_start|>user\nQ:") && text.ends_with("Risk 0-9?<|im_end|>\n<|im_start|>assistant\n"), "{text:?}");
        assert!(text.contains(&inp.fields[1].1));
        // By hand: this record alone, all logits, last position; softmax in f64 over 300 ids.
        let out = m.forward(&[ids.clone()], &Hooks::new()).unwrap();
        let row: Vec<f32> = out.logits_row(0).unwrap().i(ids.len() - 1).unwrap().to_vec1().unwrap();
        assert_eq!(row.len(), 300);
        let max = row.iter().copied().fold(f32::MIN, f32::max) as f64;
        let z: f64 = row.iter().map(|&l| (l as f64 - max).exp()).sum();
        let (mut mass, mut sum) = (0.0, 0.0);
        for d in 0..10u32 {
            let id = tok.encode(&d.to_string()).unwrap();
            assert_eq!(id.len(), 1);
            let p = (row[id[0] as usize] as f64 - max).exp() / z;
            mass += p;
            sum += p * d as f64;
        }
        assert!((g.mass - mass).abs() < 1e-5, "{}: {} vs {}", g.label, g.mass, mass);
        let s = g.score.unwrap();
        assert!((s - sum / mass).abs() < 1e-3, "{}: {} vs {}", g.label, s, sum / mass);
        assert!((0.0..=9.0).contains(&s));
    }
    // The random tiny model puts little mass on digits: the paper's 0.25 gives no score, with a
    // failure naming the record; a threshold just under / over the measured mass flips it.
    let mass = got[0].mass;
    assert!(mass > 0.0 && mass < 0.25, "{mass}");
    let strict = LlmJudge::new(&m, short.clone(), JudgeConfig::default()).unwrap();
    let s = strict.score(&inputs[..1]).unwrap();
    assert!(s[0].score.is_none(), "{s:?}");
    assert!(s[0].failure.as_deref().unwrap().starts_with("record a: score tokens carry"), "{s:?}");
    let under = LlmJudge::new(&m, short.clone(), JudgeConfig { min_mass: mass * 0.999, batch_size: 1 }).unwrap();
    assert!(under.score(&inputs[..1]).unwrap()[0].score.is_some());
    let over = LlmJudge::new(&m, short, JudgeConfig { min_mass: mass * 1.001, batch_size: 1 }).unwrap();
    assert!(over.score(&inputs[..1]).unwrap()[0].score.is_none());
    // A record without a field the prompt needs is an error naming it.
    let bad = JudgeInput { label: "r9".into(), fields: vec![("prompt".into(), "p".into())] };
    let e = format!("{:#}", judge.score(&[bad]).unwrap_err());
    assert!(e.contains("record r9") && e.contains("no value for {completion}"), "{e}");
}

#[test]
fn judge_prompts_render_their_fields() {
    let p = JudgePrompt::new("t", "Q: {prompt}\nA: {completion}\n{{literal}} {prompt}").unwrap();
    assert_eq!(p.fields().unwrap(), vec!["prompt", "completion"]);
    let f = |a: &str, b: &str| vec![("prompt".to_string(), a.to_string()), ("completion".to_string(), b.to_string())];
    assert_eq!(p.render(&f("x", "y")).unwrap(), "Q: x\nA: y\n{literal} x");
    let mut extra = f("x", "y");
    extra.push(("trait".into(), "z".into()));
    assert!(format!("{:#}", p.render(&extra).unwrap_err()).contains("no {trait} placeholder"));
    assert!(JudgePrompt::new("t", "a {b").is_err() && JudgePrompt::new("t", "a } b").is_err() && JudgePrompt::new("t", "{a b}").is_err());
    for built in [JudgePrompt::insecurity(), JudgePrompt::coherence()] {
        assert_eq!(built.fields().unwrap(), vec!["prompt", "completion"]);
    }
}
