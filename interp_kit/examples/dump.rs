//! Prints, as JSON, what anyone can compare against transformers for a model and a chat: the
//! prompt ids, the greedy continuation, the last-position logits (top k, or all with
//! `--all-logits`) and the per-layer resid_post norms at the last prompt position.
//!
//!     cargo run --release --example dump -- [--model PATH] [--system TEXT] --user "What is 2+3?" \
//!         [--max-new-tokens 24] [--top-k 20] [--all-logits] [--exact]
//!
//! Without `--system` the model's template adds its default system prompt (Qwen2.5's does).
//! `--exact` runs with dequantized f32 weights (as transformers runs a GGUF). Bad input (a corrupt
//! or missing model file, a bad option) exits with status 1 and one line on stderr.
use anyhow::{Context, Result};
use candle_core::IndexOp;
use interp_kit::text::chat::Chat;
use interp_kit::prelude::*;

fn main() {
    if let Err(e) = run(std::env::args().collect()) {
        eprintln!("dump: {e:#}");
        std::process::exit(1);
    }
}

/// The whole program; `args` as `std::env::args()` gives them (program name first).
pub fn run(args: Vec<String>) -> Result<()> {
    let get = |k: &str| args.iter().position(|a| a == k).and_then(|i| args.get(i + 1)).cloned();
    let has = |k: &str| args.iter().any(|a| a == k);
    let device = interp_kit::device(&get("--device").unwrap_or_else(|| "auto".into()))?;
    let mut model = match get("--model") {
        Some(p) => Model::load(&p, &device)?,
        None => Model::embedded(&device)?,
    };
    model.quantized_inference = !has("--exact");
    let max_new: usize = get("--max-new-tokens").map(|s| s.parse()).transpose()?.unwrap_or(24);
    let top_k: usize = get("--top-k").map(|s| s.parse()).transpose()?.unwrap_or(20);
    let mut chat = Chat::new();
    if let Some(s) = get("--system") {
        chat = chat.system(s);
    }
    chat = chat.user(get("--user").context("--user TEXT is required")?);
    let tok = model.tok()?;
    let rendered = tok.render_chat(&chat, true)?;
    let ids = rendered.ids.clone();
    let points: Vec<HookPoint> = (0..model.n_layers()).map(HookPoint::resid_post).collect();
    let out = model.run_with_cache(&[ids.clone()], &points, Positions::Last)?;
    let last = out.last_logits()?.i(0)?.to_dtype(DType::F32)?;
    let mut norms = vec![];
    for p in &points {
        norms.push(out.activations.row(*p, 0)?.sqr()?.sum_all()?.sqrt()?.to_dtype(DType::F32)?.to_scalar::<f32>()?);
    }
    let v: Vec<f32> = last.to_vec1()?;
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[b].total_cmp(&v[a]));
    let cfg = GenerateConfig { stop_at_eos: false, ..GenerateConfig::greedy(max_new) };
    let g = model.generate(&[ids.clone()], &cfg, &Hooks::new())?;
    let mut j = serde_json::json!({
        "model": model.info,
        "rendered": rendered.text,
        "prompt_ids": ids,
        "greedy_ids": g[0].tokens,
        "greedy_text": tok.decode(&g[0].tokens, false)?,
        "greedy_logprobs": g[0].logprobs,
        "top_ids": order[..top_k.min(v.len())],
        "top_logits": order[..top_k.min(v.len())].iter().map(|&i| v[i]).collect::<Vec<_>>(),
        "resid_post_norms_last": norms,
    });
    if has("--all-logits") {
        j["last_logits"] = serde_json::json!(v);
    }
    println!("{}", serde_json::to_string_pretty(&j)?);
    Ok(())
}
