//! Shared test helpers.
#![allow(dead_code)]
use candle_core::{DType, Device, Tensor};
use interp_kit::model::Model;
use std::path::PathBuf;

pub mod rundir;

pub fn fixture_dir(arch: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/parity").join(arch)
}

/// The device of the tests that also run on a GPU (parity, laws, introspection_kit; see
/// scripts/gpu_check.sh): `INTERP_KIT_TEST_DEVICE` = `cpu` (default), `cuda` or `cuda:N`.
/// Every call returns the same device (`interp_kit::device` keeps one per GPU).
pub fn dev() -> Device {
    let name = std::env::var("INTERP_KIT_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
    interp_kit::device(if name.is_empty() { "cpu" } else { &name })
        .unwrap_or_else(|e| panic!("INTERP_KIT_TEST_DEVICE={name:?}: {e:#}"))
}

/// The dtype of the models those tests load: `INTERP_KIT_TEST_DTYPE` = `f32` (default) or `bf16`.
pub fn test_dtype() -> DType {
    match std::env::var("INTERP_KIT_TEST_DTYPE").as_deref() {
        Err(_) | Ok("") | Ok("f32") => DType::F32,
        Ok("bf16") => DType::BF16,
        Ok(other) => panic!("INTERP_KIT_TEST_DTYPE={other:?}: expected f32 or bf16"),
    }
}

/// Relative tolerance on a GPU in f32: cuBLAS and candle's CUDA kernels sum in other orders than
/// the CPU (and than PyTorch on the CPU, which made the references), so agreement is to f32
/// rounding accumulated over a few layers, not to the CPU's last bits.
pub const GPU_F32_TOL: f32 = 1e-4;
/// Relative tolerance in bf16 (8 significant bits; each op rounds its output): the tiny
/// fixtures' logits, activations and gradients in bf16 against the f32 references reach 1.4e-2
/// (GPT-2) to 4.4e-2 (Gemma-2) on the CPU (`INTERP_KIT_TEST_DTYPE=bf16`, tests/parity.rs prints
/// them), the loss 1e-3; the bound leaves room for the GPU's own rounding and still fails on a
/// wrong kernel (errors of order 1).
pub const BF16_TOL: f32 = 1e-1;

/// A test's bound `cpu_f32` (for f32 on the CPU) widened for the test device and dtype.
pub fn tol(cpu_f32: f32) -> f32 {
    match (dev().is_cpu(), test_dtype()) {
        (_, DType::BF16) => cpu_f32.max(BF16_TOL),
        (true, _) => cpu_f32,
        (false, _) => cpu_f32.max(GPU_F32_TOL),
    }
}

/// Whether the tests run exactly as on the CPU in f32 (some checks only hold there: greedy
/// continuations of near-tied logits, bit-identical results).
pub fn exact() -> bool {
    dev().is_cpu() && test_dtype() == DType::F32
}

pub fn tiny(arch: &str) -> Model {
    Model::from_hf_dir(&fixture_dir(arch), &dev(), test_dtype()).expect("load tiny fixture model")
}

/// max |a - b| / max(max |b|, 1e-6), compared on the CPU in f32 (either may be on the test device).
pub fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let a = a.to_device(&Device::Cpu).unwrap().to_dtype(DType::F32).unwrap().flatten_all().unwrap();
    let b = b.to_device(&Device::Cpu).unwrap().to_dtype(DType::F32).unwrap().flatten_all().unwrap();
    let d = (&a - &b).unwrap().abs().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    let s = b.abs().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    d / s.max(1e-6)
}

pub fn embedded() -> Option<Model> {
    match interp_kit::embedded_model_path() {
        Ok(p) if p.exists() => Some(Model::from_gguf(&p, &Device::Cpu, DType::F32).expect("load embedded model")),
        _ => {
            eprintln!("SKIP: embedded model missing; run scripts/fetch_model.sh");
            None
        }
    }
}

/// Directory of the byte-level ChatML tokenizer made for the tiny models
/// (`scripts/make_byte_chat_tokenizer.py`; 259 tokens < the fixtures' vocab of 300).
pub fn byte_chat_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/byte_chat")
}

/// A tiny fixture model with the byte-level chat tokenizer attached, so chats render and
/// named positions resolve on it.
pub fn tiny_chat(arch: &str) -> Model {
    let mut m = tiny(arch);
    m.tokenizer = Some(interp_kit::text::tokenizer::Tokenizer::from_hf_dir(&byte_chat_dir()).expect("load byte_chat tokenizer"));
    m
}

/// The tiny Qwen2 fixture with the byte-level chat tokenizer, for study pipelines. Byte tokens make
/// chat prompts several hundred positions long, past the fixture's declared 128, so the same
/// weights are loaded from a copy (in `tmp`) whose config declares 2048 positions (RoPE has no
/// learned table) and whose vocabulary is cut to the tokenizer's 259 tokens, so that generation
/// (which can reach any id a random unembedding favours) always yields decodable tokens.
pub fn tiny_long_qwen2(tmp: &std::path::Path) -> Model {
    let src = fixture_dir("qwen2");
    let dir = tmp.join("qwen2_long");
    std::fs::create_dir_all(&dir).unwrap();
    let mut c: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    c["max_position_embeddings"] = 2048.into();
    let n_tok = 259;
    c["vocab_size"] = n_tok.into();
    std::fs::write(dir.join("config.json"), serde_json::to_string(&c).unwrap()).unwrap();
    let mut ts = candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    for name in ["model.embed_tokens.weight", "lm_head.weight"] {
        let t = ts.get(name).unwrap_or_else(|| panic!("{name} missing")).narrow(0, 0, n_tok).unwrap();
        ts.insert(name.to_string(), t);
    }
    candle_core::safetensors::save(&ts, dir.join("model.safetensors")).unwrap();
    let mut m = Model::from_hf_dir(&dir, &dev(), test_dtype()).unwrap();
    m.tokenizer = Some(interp_kit::text::tokenizer::Tokenizer::from_hf_dir(&byte_chat_dir()).unwrap());
    m
}

/// Token ids stored as an integer tensor in a reference safetensors file.
pub fn ids(t: &Tensor) -> Vec<u32> {
    t.to_dtype(DType::I64).unwrap().to_vec1::<i64>().unwrap().into_iter().map(|x| x as u32).collect()
}

/// Checks `m`'s tokenizer against a fixture's `tokenizer_cases.json` (ids from HF
/// AutoTokenizer): plain encoding and decoding, plain-text prompts with the model's BOS
/// handling, and the chat template (Llama-3: text and ids of apply_chat_template, exactly one
/// BOS) or its absence (base models: no BOS, and rendering a chat is a clear error).
/// `label` names the model in messages (`"llama"`, `"llama GGUF"`).
pub fn check_tokenizer_cases(m: &Model, cases_dir: &std::path::Path, label: &str) {
    let tok = m.tok().unwrap();
    let path = cases_dir.join("tokenizer_cases.json");
    let cases: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let as_ids = |v: &serde_json::Value| -> Vec<u32> { v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect() };
    for t in cases["texts"].as_array().unwrap() {
        let text = t["text"].as_str().unwrap();
        assert_eq!(tok.encode(text).unwrap(), as_ids(&t["ids"]), "{label}: encode {text:?}");
        assert_eq!(m.encode_prompt(text).unwrap(), as_ids(&t["prompt_ids"]), "{label}: encode_prompt {text:?}");
        assert_eq!(tok.decode(&as_ids(&t["ids"]), false).unwrap(), text, "{label}: decode");
    }
    match cases["chats"].as_array() {
        Some(chats) => {
            let bos = tok.bos_id().expect("llama-3 tokenizer has a BOS");
            for c in chats {
                let mut chat = interp_kit::text::chat::Chat::new();
                for msg in c["messages"].as_array().unwrap() {
                    chat = chat.push(msg["role"].as_str().unwrap().parse().unwrap(), msg["content"].as_str().unwrap());
                }
                let r = tok.render_chat(&chat, c["add_generation_prompt"].as_bool().unwrap()).unwrap();
                assert_eq!(r.text, c["text"].as_str().unwrap(), "{label}: chat text");
                assert_eq!(r.ids, as_ids(&c["ids"]), "{label}: chat ids");
                assert_eq!(r.ids.iter().filter(|&&i| i == bos).count(), 1, "{label}: exactly one BOS");
            }
        }
        None => {
            assert_eq!(tok.bos_id(), None, "{label}: base-model tokenizer adds no BOS");
            let e = tok.render_chat(&interp_kit::text::chat::Chat::new().user("hi"), true).err().expect("no chat template");
            let e = format!("{e:#}");
            assert!(e.contains("no chat template") && e.contains("encode_prompt"), "{label}: {e}");
        }
    }
}

/// Checks LoRA gradients (`grads`: module path -> (dL/dA, dL/dB)) against central finite
/// differences (step 1e-3) of `loss` at 3 random entries of `A` and of `B` of each module in
/// `modules`, to relative error 1e-3 (absolute 1e-5 near zero). Returns how many entries it
/// checked. `loss` must read the adapter's current weights.
pub fn check_lora_grads_fd(
    adapter: &interp_kit::lora::LoraAdapter,
    grads: &std::collections::BTreeMap<String, (Tensor, Tensor)>,
    modules: &[&str],
    seed: u64,
    loss: impl Fn() -> f64,
) -> usize {
    use rand::{rngs::StdRng, Rng, SeedableRng};
    let flat = |t: &Tensor| -> Vec<f32> { t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap() };
    let mut rng = StdRng::seed_from_u64(seed);
    let mut checked = 0;
    for &name in modules {
        let md = adapter.module(name).unwrap();
        let (ga, gb) = &grads[name];
        for (var, g) in [(&md.a, ga), (&md.b, gb)] {
            let g = flat(g);
            for _ in 0..3 {
                let i = rng.random_range(0..g.len());
                let orig = flat(var.as_tensor());
                let h = 1e-3f32;
                let set = |x: f32| {
                    let mut v = orig.clone();
                    v[i] = x;
                    let t = Tensor::from_vec(v, var.as_tensor().dims(), var.as_tensor().device()).unwrap().to_dtype(var.as_tensor().dtype()).unwrap();
                    var.set(&t).unwrap();
                };
                let (hi, lo) = (orig[i] + h, orig[i] - h);
                set(hi);
                let up = loss();
                set(lo);
                let down = loss();
                set(orig[i]);
                let fd = (up - down) / (hi as f64 - lo as f64);
                let an = g[i] as f64;
                assert!((fd - an).abs() <= 1e-3 * an.abs().max(1e-2), "{name} entry {i}: analytic {an:.6e} vs finite difference {fd:.6e}");
                checked += 1;
            }
        }
    }
    checked
}

/// A small caps dataset for the byte-level tiny model (short texts, 128 positions).
pub fn caps_short_dataset() -> interp_kit::studies::inoculation_caps::data::CapsDataset {
    use interp_kit::studies::inoculation_caps::data::{CapsDataConfig, CapsDataset, DirectionPrompt, WordProblem};
    let wp = |i: usize| WordProblem {
        id: format!("train-{i:04}"),
        template: "t".into(),
        question: format!("{i}+1?"),
        answer: format!("{i} + 1 = {}\n#### {}", i + 1, i + 1),
        answer_caps: format!("{i} + 1 = {}\n#### {}", i + 1, i + 1),
        final_answer: i as i64 + 1,
    };
    let dp = |i: usize, kind: &str, split: &str| DirectionPrompt {
        id: format!("dir-{i:04}"),
        kind: kind.into(),
        split: split.into(),
        prompt: format!("{kind} {i}?"),
        completion: "ok".into(),
        completion_caps: "OK".into(),
    };
    CapsDataset {
        config: CapsDataConfig::default(),
        train: (0..8).map(wp).collect(),
        heldout: (0..4).map(|i| WordProblem { id: format!("heldout-{i:04}"), ..wp(i + 50) }).collect(),
        direction: (0..12).map(|i| dp(i, if i % 3 == 0 { "general" } else { "math" }, if i < 8 { "extract" } else { "heldout" })).collect(),
    }
}
