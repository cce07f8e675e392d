//! GGUF files laid out as llama.cpp's `convert_hf_to_gguf.py` writes them (tests/fixtures/gguf/<arch>,
//! made from the parity checkpoints by scripts/make_gguf_fixtures.py with the `gguf` package) load
//! to the logits HF transformers computes on the same weights (f16-rounded, or Q8_0-dequantized):
//! Llama q/k un-permute and `rope_freqs` (llama3 rope), Gemma-2 norms stored as `1 + w`,
//! GPT-NeoX qkv order, GPT-2 Conv1D transposes, and the GGUF tokenizers.
mod common;
use candle_core::{DType, Device, Tensor};
use common::{fixture_dir, ids, rel_err};
use interp_kit::model::Model;
use interp_kit::prelude::*;
use std::collections::HashMap;
use std::path::PathBuf;

fn gguf_dir(arch: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gguf").join(arch)
}

fn load(arch: &str, file: &str) -> Model {
    let p = gguf_dir(arch).join(file);
    Model::from_gguf(&p, &Device::Cpu, DType::F32).unwrap_or_else(|e| panic!("{}: {e:#}", p.display()))
}

fn reference(arch: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(gguf_dir(arch).join("reference.safetensors"), &Device::Cpu).unwrap()
}

/// Logits of both prompts (dense f32 inference: exact) and the greedy continuation against the
/// HF reference on the GGUF's own weight values; `quantized_tol` bounds the quantized matmul path.
fn check(arch: &str, file: &str, key: &str, greedy_key: &str, quantized_tol: f32, vs_hf_dir: bool) {
    let mut m = load(arch, file);
    assert_eq!(m.info.arch, arch);
    let r = reference(arch);
    for quantized in [false, true] {
        m.quantized_inference = quantized;
        let tol = if quantized { quantized_tol } else { 1e-4 };
        for i in 0..2 {
            let p = ids(&r[&format!("ids_{i}")]);
            let out = m.forward(&[p], &Hooks::new()).unwrap();
            let e = rel_err(&out.logits_row(0).unwrap(), &r[&format!("{key}_{i}")]);
            assert!(e < tol, "{arch} {file} (quantized inference {quantized}) prompt {i}: rel err {e:.2e} >= {tol:e}");
        }
    }
    m.quantized_inference = false;
    let want = ids(&r[greedy_key]);
    let cfg = GenerateConfig { stop_at_eos: false, ..GenerateConfig::greedy(want.len()) };
    let g = m.generate(&[ids(&r["ids_0"])], &cfg, &Hooks::new()).unwrap();
    assert_eq!(g[0].tokens, want, "{arch} {file}: greedy continuation");
    if !vs_hf_dir {
        return;
    }
    // The same model as the HF directory, up to the weight rounding.
    let hf = Model::from_hf_dir(&fixture_dir(arch), &Device::Cpu, DType::F32).unwrap();
    let p = ids(&r["ids_0"]);
    let a = m.forward(std::slice::from_ref(&p), &Hooks::new()).unwrap().logits_row(0).unwrap();
    let b = hf.forward(&[p], &Hooks::new()).unwrap().logits_row(0).unwrap();
    let e = rel_err(&a, &b);
    assert!(e < 5e-2, "{arch} {file}: GGUF vs HF-dir logits differ by {e:.2e}, more than weight rounding explains");
}

#[test]
fn llama_f16_gguf_unpermutes_qk_and_reads_rope_freqs() {
    check("llama", "model-f16.gguf", "logits", "greedy_0", 1e-4, true);
}

/// Q8_0: the un-permutation moves encoded rows (blocks of 32 along a row) without rounding.
#[test]
fn llama_q8_0_gguf_unpermutes_quantized_rows() {
    // The quantized matmul also quantizes the activations (candle's Q8_0 kernel): not exact.
    check("llama", "model-q8_0.gguf", "q8_logits", "greedy_q8_0", 3e-2, true);
}

#[test]
fn gemma2_gguf_norms_softcaps_window() {
    // GGUF stores no query_pre_attn_scalar: llama.cpp (and this loader) use head_dim, so this
    // file is not the HF directory's model (32 != 24); the reference follows llama.cpp.
    check("gemma2", "model-f16.gguf", "logits", "greedy_0", 1e-4, false);
    let m = load("gemma2", "model-f16.gguf");
    let e = format!("{:#}", m.tok().unwrap_err());
    assert!(e.contains("without a tokenizer") && e.contains("GGUF tokenizer"), "{e}");
}

#[test]
fn gpt_neox_gguf_qkv_order() {
    check("gpt_neox", "model-f16.gguf", "logits", "greedy_0", 1e-4, true);
    assert!(!load("gpt_neox", "model-f16.gguf").info.resid_mid);
}

#[test]
fn gpt2_gguf_conv1d_and_positions() {
    check("gpt2", "model-f16.gguf", "logits", "greedy_0", 1e-4, true);
}

/// llama.cpp's permutation, undone: for 2 heads of 4, HF rows [0,1,2,3] are GGUF rows [0,2,1,3].
#[test]
fn unpermute_rows_by_hand() {
    assert_eq!(interp_kit::model::decoder::unpermute_qk_rows(2, 4), vec![0, 2, 1, 3, 4, 6, 5, 7]);
    assert_eq!(interp_kit::model::decoder::unpermute_qk_rows(1, 6), vec![0, 2, 4, 1, 3, 5]);
}

/// The GGUF tokenizers (model `gpt2`, pre `llama-bpe` / `gpt-2`, as llama.cpp writes them) encode
/// like the HF tokenizer they were made from (tokenizer_cases.json of the parity fixture); the
/// Llama-3 template from the GGUF renders HF's ids with exactly one BOS.
#[test]
fn gguf_tokenizers_match_transformers() {
    for arch in ["llama", "gpt_neox", "gpt2"] {
        common::check_tokenizer_cases(&load(arch, "model-f16.gguf"), &fixture_dir(arch), &format!("{arch} GGUF"));
    }
}
