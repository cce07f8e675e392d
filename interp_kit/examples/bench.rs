//! Benchmark of the runtime on a model (default: the embedded GGUF), as in BENCHMARKS.md:
//! load, forward over 64 and 256 tokens, decode tokens/s at batch 1 and 8,
//! forward+backward to 3 residual hook points over ~100 tokens, one LoRA training step
//! (r=16 on q_proj+v_proj, batch 4 x 64 tokens, loss on every next token, AdamW), the last two
//! in f32 and in bf16 compute (`Model::compute_dtype`); peak RSS;
//! and `study`: sampled generation as the steering-reliability sweep runs it (the first 8 prompts
//! of `datasets/steering_reliability/harm_test.jsonl` as chats, one batch of 8, 80 new tokens,
//! temperature 0.7, top-p 0.9), aggregate generated tokens/s. `--study-ids FILE` writes the
//! prompts' token ids so that `scripts/bench_peers.py` generates from the same ids.
//!
//!     cargo run --release --example bench -- [--model PATH] [--reps 3] [--json out.json]
//!         [--only forward,decode,grad,lora,study] [--study-ids ids.json] [--compute f32,bf16]
//!         (default: all; load is always measured)
use anyhow::{Context, Result};
use interp_kit::interp::directions::PromptFormat;
use interp_kit::prelude::*;
use interp_kit::lora::{LoraTrainer, Schedule};
use std::time::Instant;

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(|l| l.split_whitespace().nth(1).unwrap_or("0").parse::<f64>().unwrap_or(0.0)))
        .unwrap_or(0.0)
        / 1024.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn ids(n: usize, salt: u32) -> Vec<u32> {
    // Ordinary word-piece ids (avoid special tokens).
    (0..n as u32).map(|i| 1000 + (i * 7919 + salt * 131) % 30000).collect()
}

/// The `study` workload: one batch of the sweep's size and generation length.
const STUDY_BATCH: usize = 8;
const STUDY_NEW_TOKENS: usize = 80;
const STUDY_ROW: &str = "generate, steering study prompts (batch 8, 80 new tokens, sampled), aggregate";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let get = |k: &str| args.iter().position(|a| a == k).and_then(|i| args.get(i + 1)).cloned();
    // Which compute dtypes the gradient and LoRA rows run (default both).
    let computes: Vec<ComputeDtype> =
        get("--compute").unwrap_or("f32,bf16".into()).split(',').map(|c| c.parse()).collect::<Result<_>>()?;
    let reps: usize = get("--reps").map(|s| s.parse()).transpose()?.unwrap_or(3);
    let only = get("--only");
    let want = |w: &str| only.as_deref().is_none_or(|o| o.split(',').any(|x| x.trim() == w));
    let t0 = Instant::now();
    let model = match get("--model") {
        Some(p) => Model::load(&p, &Device::Cpu)?,
        None => Model::embedded(&Device::Cpu)?,
    };
    let load_s = t0.elapsed().as_secs_f64();
    let mut rows: Vec<(String, f64, String)> = vec![];
    let mut row = |k: String, v: f64, u: &str| {
        eprintln!("{k}: {v:.3} {u}");
        rows.push((k, v, u.to_string()));
    };
    row("load".into(), load_s, "s");
    // Median seconds of a forward over `n` tokens (last-position logits).
    let forward = |m: &Model, n: usize| -> Result<f64> {
        let p = vec![ids(n, 1)];
        let mut ts = vec![];
        for _ in 0..reps {
            let t = Instant::now();
            m.forward_at(&p, &Hooks::new(), LogitsAt::Last)?;
            ts.push(t.elapsed().as_secs_f64());
        }
        Ok(median(ts))
    };
    for n in [64usize, 256].into_iter().filter(|_| want("forward")) {
        row(format!("forward, {n} tokens"), forward(&model, n)?, "s");
    }
    // The same with int8 activations for the Q8_0 layers (`Model::int8_prefill`; VNNI CPUs only).
    if want("forward") && interp_kit::base::cpu::level() >= interp_kit::base::cpu::SimdLevel::Avx512Vnni {
        let mut m8 = model.clone();
        m8.int8_prefill = true;
        m8.forward_at(&[ids(64, 1)], &Hooks::new(), LogitsAt::Last)?; // warm-up: repacks the Q8_0 weights once
        for n in [64usize, 256] {
            row(format!("forward, {n} tokens, int8 prefill"), forward(&m8, n)?, "s");
        }
    }
    let infer_rss = peak_rss_mib();
    for b in [1usize, 8].into_iter().filter(|_| want("decode")) {
        let prompts: Vec<Vec<u32>> = (0..b).map(|r| ids(16, r as u32)).collect();
        let steps = 32;
        {
            // warm-up: the first decode step repacks the Q8_0 weights on VNNI CPUs (once per model)
            let mut cache = KvCache::new(&model);
            model.prefill(&prompts, &mut cache, &Hooks::new(), LogitsAt::Last)?;
            model.decode(&vec![2000; b], &mut cache, &Hooks::new())?;
        }
        let mut ts = vec![];
        for _ in 0..reps.min(2) {
            let mut cache = KvCache::new(&model);
            model.prefill(&prompts, &mut cache, &Hooks::new(), LogitsAt::Last)?;
            let t = Instant::now();
            for s in 0..steps {
                let next: Vec<u32> = (0..b).map(|r| 2000 + (s * 13 + r) as u32).collect();
                model.decode(&next, &mut cache, &Hooks::new())?;
            }
            ts.push((b * steps) as f64 / t.elapsed().as_secs_f64());
        }
        row(format!("decode, batch {b} (aggregate)"), median(ts), "tok/s");
    }
    let infer_rss = infer_rss.max(peak_rss_mib());
    if want("grad") {
        let p = vec![ids(100, 3)];
        let l = model.n_layers();
        let points = [HookPoint::resid_post(l / 4), HookPoint::resid_post(l / 2), HookPoint::resid_post(3 * l / 4)];
        let loss = Loss::From(vec![80]);
        // f32 (the default), then bf16 compute (`Model::compute_dtype`) on a clone sharing the weights.
        for &compute in &computes {
            let mut m = model.clone();
            m.compute_dtype = compute;
            m.grad(&p, &loss, &points, Positions::Last, &Hooks::new())?; // warm-up: dequantizes (and packs) weights once
            let mut ts = vec![];
            for _ in 0..reps {
                let t = Instant::now();
                m.grad(&p, &loss, &points, Positions::All, &Hooks::new())?;
                ts.push(t.elapsed().as_secs_f64());
            }
            let suffix = if compute.is_f32() { "" } else { ", bf16 compute" };
            row(format!("forward+backward, 100 tokens, dL/dh at 3 layers{suffix}"), median(ts), "s");
        }
    }
    if want("forward") || want("decode") {
        row("peak RSS, inference path".into(), infer_rss, "MiB");
    }
    if want("grad") {
        row("peak RSS, after gradient path".into(), peak_rss_mib(), "MiB");
    }
    if want("study") {
        // As the study reads and encodes its prompts (chat, the template's default system prompt).
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets/steering_reliability/harm_test.jsonl");
        let texts: Vec<String> =
            interp_kit::text::records::read_jsonl(&path)?.into_iter().take(STUDY_BATCH).map(|r| r.prompt).collect();
        let prompts: Vec<Vec<u32>> = interp_kit::interp::directions::PromptIds::encode_all(&model, &texts, &PromptFormat::chat())?
            .into_iter()
            .map(|p| p.ids)
            .collect();
        if let Some(out) = get("--study-ids") {
            std::fs::write(&out, serde_json::to_string(&prompts)?).with_context(|| format!("writing {out}"))?;
        }
        // Finished rows leave the batch, as in the study (`StudyConfig::generate_config`).
        let cfg = GenerateConfig { compact: true, ..GenerateConfig::sampled(STUDY_NEW_TOKENS, 0.7, 0.9, 0) };
        let mut ts = vec![];
        for _ in 0..reps.min(2) {
            let t = Instant::now();
            let gens = model.generate(&prompts, &cfg, &Hooks::new())?;
            let n: usize = gens.iter().map(|g| g.tokens.len()).sum();
            ts.push(n as f64 / t.elapsed().as_secs_f64());
        }
        row(STUDY_ROW.into(), median(ts), "tok/s");
    }
    if want("lora") {
        // As scripts/bench_peers.py's PEFT workload: r=16, alpha=32, no dropout, q_proj+v_proj;
        // 4 rows x 64 tokens, mean NLL of tokens 1..63 (each from the previous position);
        // AdamW(lr 1e-4, weight decay 0.01: torch's defaults), no clipping, constant lr;
        // forward + backward + update, median over --reps after one untimed warm-up step.
        let batch: Vec<TrainExample> =
            (0..4u32).map(|r| TrainExample::new(ids(64, r), (1..64).collect())).collect::<Result<_>>()?;
        let refs: Vec<&TrainExample> = batch.iter().collect();
        for &compute in &computes {
            let mut m = model.clone();
            m.compute_dtype = compute;
            let adapter = LoraAdapter::new(&m, &LoraConfig::qv(16, 32.0))?;
            let cfg = TrainConfig {
                lr: 1e-4,
                weight_decay: 0.01,
                schedule: Schedule::Constant,
                batch_size: 4,
                max_grad_norm: None,
                ..Default::default()
            };
            let mut trainer = LoraTrainer::new(&adapter, cfg, reps + 1)?;
            trainer.step(&m, &adapter, &refs)?; // warm-up
            let mut ts = vec![];
            for _ in 0..reps {
                let t = Instant::now();
                trainer.step(&m, &adapter, &refs)?;
                ts.push(t.elapsed().as_secs_f64());
            }
            let suffix = if compute.is_f32() { "" } else { ", bf16 compute" };
            row(format!("LoRA step, r=16 q_proj+v_proj, batch 4 x 64 tokens, AdamW{suffix}"), median(ts), "s");
        }
        row("peak RSS, after LoRA steps".into(), peak_rss_mib(), "MiB");
    }
    println!("| workload | interp_kit | unit |\n|---|---|---|");
    for (k, v, u) in &rows {
        println!("| {k} | {v:.3} | {u} |");
    }
    if let Some(path) = get("--json") {
        let m: serde_json::Map<String, serde_json::Value> = rows.iter().map(|(k, v, _)| (k.clone(), (*v).into())).collect();
        std::fs::write(path, serde_json::to_string_pretty(&m)?)?;
    }
    Ok(())
}
