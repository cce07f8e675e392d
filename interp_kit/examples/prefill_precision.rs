//! What int8 prefill (`Model::int8_prefill`) costs in accuracy on a model (default: the embedded
//! GGUF): for prompts of 64 and 256 tokens and a chat prompt, the last position's logits and the
//! residual stream at every layer, int8 prefill against the default f32-activation prefill, and
//! both against exact dense f32 weights (`quantized_inference = false`, as transformers runs a
//! GGUF). Prints cosines of `resid_post` (minimum over layers and positions), the largest logit
//! difference, KL(reference || path) of the last position's next-token distribution, and whether
//! the top token agrees.
//!
//!     cargo run --release --example prefill_precision -- [--model PATH]
use anyhow::Result;
use candle_core::{DType, IndexOp, Tensor, D};
use interp_kit::interp::directions::{PromptFormat, PromptIds};
use interp_kit::prelude::*;

fn ids(n: usize, salt: u32) -> Vec<u32> {
    (0..n as u32).map(|i| 1000 + (i * 7919 + salt * 131) % 30000).collect()
}

struct Run {
    logits: Tensor,
    resid: Vec<Tensor>,
}

fn run(model: &Model, p: &[u32]) -> Result<Run> {
    let points: Vec<HookPoint> = (0..model.n_layers()).map(HookPoint::resid_post).collect();
    let out = model.run_with_cache(&[p.to_vec()], &points, Positions::All)?;
    let logits = out.last_logits()?.i(0)?.to_dtype(DType::F32)?;
    let resid = points.iter().map(|&h| out.activations.row(h, 0).and_then(|t| Ok(t.to_dtype(DType::F32)?))).collect::<Result<_>>()?;
    Ok(Run { logits, resid })
}

/// (min cosine over layers and positions, max |Δlogit|, KL(a || b), same argmax)
fn compare(a: &Run, b: &Run) -> Result<(f32, f32, f32, bool)> {
    let mut min_cos = 1f32;
    for (x, y) in a.resid.iter().zip(&b.resid) {
        let dot = (x * y)?.sum(D::Minus1)?;
        let nx = x.sqr()?.sum(D::Minus1)?.sqrt()?;
        let ny = y.sqr()?.sum(D::Minus1)?.sqrt()?;
        let cos: Vec<f32> = (dot / (nx * ny)?)?.to_vec1()?;
        min_cos = cos.into_iter().fold(min_cos, f32::min);
    }
    let dl: f32 = (&a.logits - &b.logits)?.abs()?.max(0)?.to_scalar()?;
    let la = candle_nn::ops::log_softmax(&a.logits, 0)?;
    let lb = candle_nn::ops::log_softmax(&b.logits, 0)?;
    let kl: f32 = (la.exp()? * (&la - &lb)?)?.sum_all()?.to_scalar()?;
    let ta: u32 = a.logits.argmax(0)?.to_scalar()?;
    let tb: u32 = b.logits.argmax(0)?.to_scalar()?;
    Ok((min_cos, dl, kl, ta == tb))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let get = |k: &str| args.iter().position(|a| a == k).and_then(|i| args.get(i + 1)).cloned();
    let mut model = match get("--model") {
        Some(p) => Model::load(&p, &Device::Cpu)?,
        None => Model::embedded(&Device::Cpu)?,
    };
    println!("kernel level: {}", interp_kit::base::cpu::level());
    let text = vec!["Write a Python function that checks whether a number is prime.".to_string()];
    let chat = PromptIds::encode_all(&model, &text, &PromptFormat::chat())?.remove(0).ids;
    let prompts = [("64 tokens", ids(64, 1)), ("256 tokens", ids(256, 2)), ("chat prompt", chat)];
    println!("| prompt | comparison | min cos resid_post (all layers, positions) | max abs Δlogit (last) | KL (last) | same top-1 |");
    println!("|---|---|---|---|---|---|");
    for (name, p) in &prompts {
        model.quantized_inference = false;
        model.int8_prefill = false;
        let dense = run(&model, p)?;
        model.quantized_inference = true;
        let f32_prefill = run(&model, p)?;
        model.int8_prefill = true;
        let int8 = run(&model, p)?;
        for (label, a, b) in [
            ("int8 vs f32-activation prefill", &f32_prefill, &int8),
            ("f32-activation prefill vs dense", &dense, &f32_prefill),
            ("int8 prefill vs dense", &dense, &int8),
        ] {
            let (c, dl, kl, same) = compare(a, b)?;
            println!("| {name} ({} tokens) | {label} | {c:.5} | {dl:.4} | {kl:.2e} | {same} |", p.len());
        }
    }
    Ok(())
}
