//! Parity with HF transformers on tiny random-weight checkpoints (tests/fixtures/parity/<arch>,
//! made by scripts/make_parity_fixtures.py): logits, every hook site, batching with left
//! padding, greedy decoding and residual gradients, f32, relative error < 1e-4. One checkpoint
//! per family: Qwen2, Qwen3, Llama 3.x, Gemma-2, GPT-NeoX (parallel and sequential residual),
//! GPT-2; plus the tiny tokenizers some of them carry.
//!
//! The models load on `INTERP_KIT_TEST_DEVICE` in `INTERP_KIT_TEST_DTYPE` (default: CPU, f32;
//! scripts/gpu_check.sh runs them on CUDA in f32 and bf16) against the same f32 references, with
//! the bound widened by `common::tol` off the CPU or in bf16. Greedy continuations are compared in
//! f32 only: bf16 rounding can swap near-tied tokens of these random-weight models.
mod common;
use candle_core::{DType, Device, IndexOp, Tensor};
use common::{fixture_dir, ids, rel_err, test_dtype, tiny, tol};
use interp_kit::prelude::*;
use std::collections::HashMap;

const TOL: f32 = 1e-4;

fn reference(arch: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture_dir(arch).join("reference.safetensors"), &Device::Cpu).expect("reference.safetensors")
}

thread_local! {
    /// The largest relative error [`check`] saw on this test's thread (reported by [`parity`]).
    static WORST: std::cell::Cell<f32> = const { std::cell::Cell::new(0.0) };
}

fn check(what: &str, got: &Tensor, want: &Tensor) {
    let (e, tol) = (rel_err(got, want), tol(TOL));
    WORST.with(|w| w.set(w.get().max(e)));
    assert!(e < tol, "{what}: relative error {e:.2e} >= {tol:e}");
}

fn parity(arch: &str) {
    WORST.with(|w| w.set(0.0));
    let m = tiny(arch);
    assert_eq!(m.device.location(), common::dev().location(), "{arch}: the model is not on the test device");
    let r = reference(arch);
    let n = m.n_layers();
    // Parallel-residual blocks have no resid_mid: the reference has none and the model says so.
    assert_eq!(m.info.resid_mid, r.contains_key("resid_mid_0"), "{arch}: resid_mid presence");
    let all_sites = [Site::ResidPre, Site::AttnOut, Site::ResidMid, Site::MlpOut, Site::ResidPost];
    let all_names = ["resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post"];
    let (sites, names): (Vec<Site>, Vec<&str>) = all_sites
        .into_iter()
        .zip(all_names)
        .filter(|(s, _)| *s != Site::ResidMid || m.info.resid_mid)
        .unzip();
    for i in 0..2 {
        let p = ids(&r[&format!("ids_{i}")]);
        let mut hooks = Hooks::new().cache(HookPoint::ln_final(), Positions::All);
        for l in 0..n {
            for s in &sites {
                hooks = hooks.cache(HookPoint::new(l, *s), Positions::All);
            }
        }
        let out = m.forward(&[p.clone()], &hooks).unwrap();
        check(&format!("{arch} logits_{i}"), &out.logits_row(0).unwrap(), &r[&format!("logits_{i}")]);
        check(&format!("{arch} ln_final_{i}"), out.activations.row(HookPoint::ln_final(), 0).unwrap(), &r[&format!("ln_final_{i}")]);
        for (s, name) in sites.iter().zip(names.iter().copied()) {
            for l in 0..n {
                let want = r[&format!("{name}_{i}")].i(l).unwrap();
                check(&format!("{arch} blocks.{l}.hook_{name} (prompt {i})"), out.activations.row(HookPoint::new(l, *s), 0).unwrap(), &want);
            }
        }
    }
    // Left-padded batch: per-row logits at real positions.
    let p0 = ids(&r["ids_0"]);
    let p1 = ids(&r["ids_1"]);
    let out = m.forward(&[p0.clone(), p1.clone()], &Hooks::new()).unwrap();
    let bl = &r["batch_logits"];
    check(&format!("{arch} batch row 0"), &out.logits_row(0).unwrap(), &bl.i(0).unwrap());
    let pad = p0.len() - p1.len();
    check(&format!("{arch} batch row 1"), &out.logits_row(1).unwrap(), &bl.i(1).unwrap().narrow(0, pad, p1.len()).unwrap());
    // Greedy decoding with the KV cache.
    let want = ids(&r["greedy_0"]);
    let cfg = GenerateConfig { stop_at_eos: false, ..GenerateConfig::greedy(want.len()) };
    let g = m.generate(&[p0.clone()], &cfg, &Hooks::new()).unwrap();
    if test_dtype() == DType::F32 {
        assert_eq!(g[0].tokens, want, "{arch} greedy continuation");
    } else {
        assert_eq!(g[0].tokens.len(), want.len(), "{arch} greedy continuation length");
    }
    // Loss and residual gradients.
    let pos: Vec<usize> = ids(&r["loss_positions"]).into_iter().map(|x| x as usize).collect();
    let targets: Vec<usize> = pos.iter().map(|p| p + 1).collect();
    let points: Vec<HookPoint> = (0..n).flat_map(|l| [HookPoint::resid_pre(l), HookPoint::resid_post(l)]).collect();
    let go = m.grad(&[p0.clone()], &Loss::Tokens(vec![targets]), &points, Positions::All, &Hooks::new()).unwrap();
    let want_loss = r["loss_0"].to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
    let loss_tol = tol(1e-5) as f64;
    assert!((go.loss - want_loss).abs() < loss_tol * want_loss.abs().max(1.0), "{arch} loss {} vs {want_loss}", go.loss);
    for l in 0..n {
        check(&format!("{arch} grad resid_post {l}"), go.grads.row(HookPoint::resid_post(l), 0).unwrap(), &r["grad_resid_post_0"].i(l).unwrap());
        check(&format!("{arch} grad resid_pre {l}"), go.grads.row(HookPoint::resid_pre(l), 0).unwrap(), &r["grad_resid_pre_0"].i(l).unwrap());
    }
    // Seen with --nocapture (scripts/gpu_check.sh puts it in its report).
    let (dev, dt) = (common::dev().location(), common::test_dtype());
    eprintln!("parity {arch} on {dev:?} {dt:?}: max relative error {:.2e} (bound {:.0e}); loss {:.3e} off", WORST.with(|w| w.get()), tol(TOL), (go.loss - want_loss).abs() / want_loss.abs().max(1.0));
}

#[test]
fn qwen2_matches_transformers() {
    parity("qwen2");
}

#[test]
fn qwen3_sharded_tied_matches_transformers() {
    parity("qwen3");
}

#[test]
fn llama3_rope_scaling_gqa_untied_matches_transformers() {
    parity("llama");
}

#[test]
fn gemma2_softcaps_sliding_window_matches_transformers() {
    parity("gemma2");
}

#[test]
fn gpt_neox_parallel_residual_partial_rotary_matches_transformers() {
    parity("gpt_neox");
}

#[test]
fn gpt_neox_sequential_residual_matches_transformers() {
    parity("gpt_neox_sequential");
}

#[test]
fn gpt2_learned_positions_conv1d_matches_transformers() {
    parity("gpt2");
}

/// GPT-NeoX's parallel blocks have no `hook_resid_mid`: reading, writing or differentiating it
/// is an error that says why; the sequential variant has it; the other sites add up.
#[test]
fn parallel_residual_has_no_resid_mid() {
    let m = tiny("gpt_neox");
    assert!(!m.info.resid_mid);
    let p = vec![vec![5u32, 17, 42, 8, 99]];
    let hp = HookPoint::resid_mid(1);
    let says = |e: anyhow::Error| {
        let e = format!("{e:#}");
        assert!(e.contains("blocks.1.hook_resid_mid") && e.contains("parallel residual") && e.contains("hook_attn_out"), "{e}");
    };
    says(m.forward(&p, &Hooks::new().cache(hp, Positions::All)).err().expect("read of resid_mid must fail"));
    says(m.forward(&p, &Hooks::new().write(hp, Phase::Both, |x, _| Ok(x.clone()))).err().expect("write must fail"));
    says(m.grad(&p, &Loss::From(vec![1]), &[hp], Positions::All, &Hooks::new()).err().expect("gradient must fail"));
    let mut cache = KvCache::new(&m);
    says(m.prefill(&p, &mut cache, &Hooks::new().cache(hp, Positions::All), LogitsAt::Last).err().expect("prefill must fail"));
    // resid_post = resid_pre + attn_out + mlp_out, the parallel block's definition.
    let pts: Vec<HookPoint> = [Site::ResidPre, Site::AttnOut, Site::MlpOut, Site::ResidPost].iter().map(|s| HookPoint::new(1, *s)).collect();
    let out = m.run_with_cache(&p, &pts, Positions::All).unwrap();
    let g = |i: usize| out.activations.row(pts[i], 0).unwrap().clone();
    let sum = ((g(2) + g(1)).unwrap() + g(0)).unwrap();
    check("parallel block sum", &sum, &g(3));
    let s = tiny("gpt_neox_sequential");
    assert!(s.info.resid_mid);
    s.forward(&p, &Hooks::new().cache(hp, Positions::All)).unwrap();
}

/// The tiny tokenizers of the fixtures (tokenizer_cases.json: ids from HF AutoTokenizer):
/// plain encoding, plain-text prompts with the model's BOS handling, and the chat template
/// (Llama-3: ids of apply_chat_template, one BOS) or its absence (GPT-NeoX, GPT-2).
#[test]
fn fixture_tokenizers_match_transformers() {
    for arch in ["llama", "gpt_neox", "gpt_neox_sequential", "gpt2"] {
        common::check_tokenizer_cases(&tiny(arch), &fixture_dir(arch), arch);
    }
}

#[test]
fn bad_inputs_give_clear_errors() {
    use interp_kit::model::Model;
    let dir = tempdir("bad");
    // Unknown architecture.
    std::fs::write(dir.join("config.json"), r#"{"model_type": "mamba9"}"#).unwrap();
    let e = format!("{:#}", Model::from_hf_dir(&dir, &Device::Cpu, DType::F32).err().unwrap());
    assert!(e.contains("mamba9") && e.contains("qwen2"), "{e}");
    // Missing weights.
    std::fs::copy(fixture_dir("qwen2").join("config.json"), dir.join("config.json")).unwrap();
    let e = format!("{:#}", Model::from_hf_dir(&dir, &Device::Cpu, DType::F32).err().unwrap());
    assert!(e.contains("model.safetensors"), "{e}");
    // Truncated weights.
    let bytes = std::fs::read(fixture_dir("qwen2").join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let e = format!("{:#}", Model::from_hf_dir(&dir, &Device::Cpu, DType::F32).err().unwrap());
    assert!(e.contains("model.safetensors") && e.contains("truncated"), "{e}");
    // A config that does not fit the weights names the tensor.
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(fixture_dir("qwen2").join("config.json")).unwrap()).unwrap();
    cfg["intermediate_size"] = 128.into();
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    std::fs::write(dir.join("model.safetensors"), &bytes).unwrap();
    let e = format!("{:#}", Model::from_hf_dir(&dir, &Device::Cpu, DType::F32).err().unwrap());
    assert!(e.contains("gate_proj") && e.contains("128"), "{e}");
    // Truncated GGUF.
    let g = dir.join("x.gguf");
    std::fs::write(&g, b"GGUF\x03\x00\x00\x00").unwrap();
    let e = format!("{:#}", Model::from_gguf(&g, &Device::Cpu, DType::F32).err().unwrap());
    assert!(e.contains("x.gguf"), "{e}");
    // Token id outside the vocabulary.
    let m = tiny("qwen2");
    let e = format!("{:#}", m.forward(&[vec![1, 2, 999]], &Hooks::new()).err().unwrap());
    assert!(e.contains("999") && e.contains("300"), "{e}");
}

fn tempdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("interp_kit_test_{tag}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn q5_0_is_reencoded_as_q8_0_losslessly() {
    use candle_core::quantized::{GgmlDType, QTensor};
    let x = Tensor::randn(0f32, 1.0, (8, 96), &Device::Cpu).unwrap();
    let q5 = QTensor::quantize(&x, GgmlDType::Q5_0).unwrap();
    let want = q5.dequantize(&Device::Cpu).unwrap();
    let q8 = interp_kit::model::load::q5_0_to_q8_0(q5, &Device::Cpu).unwrap();
    assert_eq!(q8.dtype(), GgmlDType::Q8_0);
    let got = q8.dequantize(&Device::Cpu).unwrap();
    assert_eq!(rel_err(&got, &want), 0.0, "re-encoding changed values");
    assert!(rel_err(&got, &x) > 0.0, "the reference must be quantized (else the test proves nothing)");
}

#[test]
fn parallel_dequantization_equals_candles() {
    use candle_core::quantized::{GgmlDType, QTensor};
    // 80 x 512 = 40960 values: several rayon chunks of 64 blocks for every block type.
    let x = Tensor::randn(0f32, 1.0, (80, 512), &Device::Cpu).unwrap();
    for dt in [GgmlDType::Q8_0, GgmlDType::Q4K, GgmlDType::Q5K, GgmlDType::Q6K] {
        let q = QTensor::quantize(&x, dt).unwrap();
        let want = q.dequantize(&Device::Cpu).unwrap();
        let got = interp_kit::model::layers::dequantize_par(&q).unwrap();
        assert_eq!(got.dims(), want.dims());
        assert_eq!(rel_err(&got, &want), 0.0, "{dt:?}");
        assert!(rel_err(&got, &x) > 0.0, "{dt:?}: the reference must be quantized");
    }
}
