//! The architecture registry: one row per family, naming it as HF's `config.json` (`model_type`)
//! and llama.cpp's GGUF (`general.architecture`) do, with the functions that build its parts from
//! either format. Loading dispatches through this table only, so adding a family is one file plus
//! one row here.
use super::load::{GgufWeights, Weights};
use super::{gemma2, gpt2, gpt_neox, llama, llama_parts, qwen2, qwen3, Parts};
use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device};
use candle_core::quantized::gguf_file::Value as GgufValue;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::HashMap;

/// GGUF metadata as candle reads it.
pub(crate) type GgufMeta = HashMap<String, GgufValue>;

/// One architecture family.
pub(crate) struct Arch {
    /// HF `model_type`.
    pub hf: &'static str,
    /// GGUF `general.architecture`.
    pub gguf: &'static str,
    /// Parts from a parsed `config.json` and safetensors weights.
    pub from_hf: fn(&Value, &dyn Weights, &Device, DType) -> Result<Parts>,
    /// Parts from GGUF metadata (vocabulary size and tied head read from the tensor list).
    pub from_gguf: fn(&GgufMeta, usize, bool, &GgufWeights, &Device, DType) -> Result<Parts>,
}

fn config<C: DeserializeOwned>(v: &Value) -> Result<C> {
    Ok(serde_json::from_value(v.clone())?)
}

pub(crate) const REGISTRY: &[Arch] = &[
    Arch {
        hf: "qwen2",
        gguf: "qwen2",
        from_hf: |v, w, d, t| llama_parts("qwen2", &config::<qwen2::Config>(v)?.spec()?, w, d, t),
        from_gguf: |md, vocab, tied, w, d, t| llama_parts("qwen2", &qwen2::Config::from_gguf(md, vocab, tied)?.spec()?, w, d, t),
    },
    Arch {
        hf: "qwen3",
        gguf: "qwen3",
        from_hf: |v, w, d, t| llama_parts("qwen3", &config::<qwen3::Config>(v)?.spec()?, w, d, t),
        from_gguf: |md, vocab, tied, w, d, t| llama_parts("qwen3", &qwen3::Config::from_gguf(md, vocab, tied)?.spec()?, w, d, t),
    },
    Arch {
        hf: "llama",
        gguf: "llama",
        from_hf: |v, w, d, t| llama_parts("llama", &config::<llama::Config>(v)?.spec()?, w, d, t),
        from_gguf: llama_from_gguf,
    },
    Arch {
        hf: "gemma2",
        gguf: "gemma2",
        from_hf: |v, w, d, t| llama_parts("gemma2", &config::<gemma2::Config>(v)?.spec()?, w, d, t),
        from_gguf: |md, vocab, tied, w, d, t| {
            let mut spec = gemma2::Config::from_gguf(md, vocab, tied)?.spec()?;
            spec.norm_plus_one = false; // the converter stored 1 + w
            llama_parts("gemma2", &spec, w, d, t)
        },
    },
    Arch {
        hf: "gpt_neox",
        gguf: "gptneox",
        from_hf: |v, w, d, t| config::<gpt_neox::Config>(v)?.parts(w, d, t),
        from_gguf: |md, vocab, tied, w, d, t| gpt_neox::Config::from_gguf(md, vocab, tied)?.parts(w, d, t),
    },
    Arch {
        hf: "gpt2",
        gguf: "gpt2",
        from_hf: |v, w, d, t| config::<gpt2::Config>(v)?.parts(w, d, t),
        from_gguf: |md, vocab, tied, w, d, t| gpt2::Config::from_gguf(md, vocab, tied)?.parts(w, d, t),
    },
];

/// Llama from GGUF: llama.cpp permuted q/k for its rope, and stores Llama-3.1 rope scaling as
/// per-frequency divisors (`rope_freqs.weight`).
fn llama_from_gguf(md: &GgufMeta, vocab: usize, tied: bool, w: &GgufWeights, d: &Device, t: DType) -> Result<Parts> {
    let mut spec = llama::Config::from_gguf(md, vocab, tied)?.spec()?;
    spec.qk_permuted = true;
    if w.contains("rope_freqs.weight") {
        let f: Vec<f32> = w.dense_f32("rope_freqs.weight")?.flatten_all()?.to_vec1()?;
        ensure!(
            f.len() == spec.rope_inv_freq.len(),
            "{}: rope_freqs.weight has {} entries, head_dim {} needs {}",
            w.origin(),
            f.len(),
            spec.head_dim,
            spec.rope_inv_freq.len()
        );
        for (x, div) in spec.rope_inv_freq.iter_mut().zip(&f) {
            *x /= div;
        }
    }
    llama_parts("llama", &spec, w, d, t)
}

/// The family with HF `model_type` `name`; the error lists the supported ones.
pub(crate) fn by_hf(name: &str) -> Result<&'static Arch> {
    REGISTRY.iter().find(|a| a.hf == name).with_context(|| {
        format!("unknown architecture (model_type) {name:?}; this build supports {:?}", REGISTRY.iter().map(|a| a.hf).collect::<Vec<_>>())
    })
}

/// The family with GGUF `general.architecture` `name`; the error lists the supported ones.
pub(crate) fn by_gguf(name: &str) -> Result<&'static Arch> {
    REGISTRY.iter().find(|a| a.gguf == name).with_context(|| {
        format!("unknown GGUF architecture {name:?}; this build supports {:?}", REGISTRY.iter().map(|a| a.gguf).collect::<Vec<_>>())
    })
}
