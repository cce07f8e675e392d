//! Writes a kit-trained LoRA adapter in PEFT's format plus the kit's logits, for
//! scripts/check_peft_roundtrip.py to load in PEFT and compare.
//!
//!     cargo run --example lora_export -- OUT_DIR [--model tests/fixtures/parity/qwen2]
//!
//! The adapter (all seven linear modules of layers 0 and 2, r=4, alpha=8, seed 3) is trained for
//! three AdamW steps on seeded random sequences so that both A and B are non-zero. Output:
//! `OUT_DIR/adapter/{adapter_config.json, adapter_model.safetensors}` and
//! `OUT_DIR/kit_logits.safetensors` (`ids_{i}` i64 `[T]`, `logits_{i}` and `merged_logits_{i}`
//! f32 `[T, vocab]` for two prompts).
use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use interp_kit::prelude::*;
use std::collections::HashMap;
use std::path::PathBuf;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let out = PathBuf::from(args.get(1).context("usage: lora_export OUT_DIR [--model DIR]")?);
    let model_dir = args
        .iter()
        .position(|a| a == "--model")
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| "tests/fixtures/parity/qwen2".into());
    let model = Model::from_hf_dir(&PathBuf::from(&model_dir), &Device::Cpu, DType::F32)?;
    let mut adapter = LoraAdapter::new(&model, &LoraConfig::all_linear(4, 8.0).with_layers([0, 2]).with_seed(3))?;
    adapter.base_model = model_dir.clone();
    let vocab = model.info.vocab_size as u32;
    let data: Vec<TrainExample> = (0..8u32)
        .map(|r| {
            let p: Vec<u32> = (0..6 + r % 3).map(|i| 3 + (i * 37 + r * 101) % (vocab - 3)).collect();
            TrainExample::prompt_completion(&p, &p)
        })
        .collect::<Result<_>>()?;
    let cfg = TrainConfig { lr: 5e-2, max_steps: Some(3), seed: 1, ..Default::default() };
    let log = train_lora(&model, &adapter, &data, &cfg, |_, _| Ok(()))?;
    eprintln!("trained: {}", serde_json::to_string(&log)?);
    adapter.save(out.join("adapter"))?;
    let merged = lora::merge(&model, &adapter)?;
    let prompts: Vec<Vec<u32>> = vec![(0..11).map(|i| (i * 29 + 5) % vocab).collect(), (0..7).map(|i| (i * 13 + 100) % vocab).collect()];
    let mut t: HashMap<String, Tensor> = HashMap::new();
    for (i, p) in prompts.iter().enumerate() {
        let ids: Vec<i64> = p.iter().map(|&x| x as i64).collect();
        t.insert(format!("ids_{i}"), Tensor::new(ids.as_slice(), &Device::Cpu)?);
        let o = model.forward(&[p.clone()], &Hooks::new().lora(&adapter))?;
        t.insert(format!("logits_{i}"), o.logits_row(0)?.contiguous()?);
        let o = merged.forward(&[p.clone()], &Hooks::new())?;
        t.insert(format!("merged_logits_{i}"), o.logits_row(0)?.contiguous()?);
    }
    candle_core::safetensors::save(&t, out.join("kit_logits.safetensors"))?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
