//! Shared test helpers.
#![allow(dead_code)]
use candle_core::{DType, Device, Tensor};
use interp_kit::model::Model;
use std::path::PathBuf;

pub fn fixture_dir(arch: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/parity").join(arch)
}

pub fn tiny(arch: &str) -> Model {
    Model::from_hf_dir(&fixture_dir(arch), &Device::Cpu, DType::F32).expect("load tiny fixture model")
}

/// max |a - b| / max(max |b|, 1e-6)
pub fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let a = a.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
    let b = b.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
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
    m.tokenizer = Some(interp_kit::tokenizer::Tokenizer::from_hf_dir(&byte_chat_dir()).expect("load byte_chat tokenizer"));
    m
}
