//! interp_kit: mechanistic-interpretability toolkit for chat language models.
//!
//! Layers, bottom to top: `model` (weights, hooked forward, KV cache, gradients),
//! `tokenizer`/`chat` (templates and named positions), analysis modules, results.
pub mod chat;
pub mod device;
pub mod directions;
pub mod generate;
pub mod grad;
pub mod hooks;
pub mod lora;
pub mod model;
pub mod tokenizer;

pub use device::{default_dtype, device};

use anyhow::{bail, Result};
use std::path::PathBuf;

/// File name of the embedded default model (Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF).
pub const EMBEDDED_MODEL_FILE: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";

/// The cache directory: `$INTERP_KIT_CACHE`, else `~/.cache/interp_kit`.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("INTERP_KIT_CACHE") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| ".".into())).join(".cache/interp_kit"),
    }
}

/// Path of the embedded model, or an error naming the command that fetches it.
pub fn embedded_model_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("INTERP_KIT_MODEL") {
        return Ok(PathBuf::from(p));
    }
    let p = cache_dir().join("models").join(EMBEDDED_MODEL_FILE);
    if !p.exists() {
        bail!(
            "the embedded model is not at {}: run `scripts/fetch_model.sh` (or scripts/setup.sh) from the repository root",
            p.display()
        );
    }
    Ok(p)
}

/// The names a notebook needs: `use interp_kit::prelude::*;`.
pub mod prelude {
    pub use crate::device::device;
    pub use crate::directions::{Direction, DirectionMeta};
    pub use crate::generate::{GenerateConfig, Generation};
    pub use crate::grad::{GradOutput, Loss};
    pub use crate::hooks::{ActivationCache, HookCtx, HookPoint, Hooks, Phase, Positions, Site};
    pub use crate::lora::{
        self, eval_loss, lora_grad, train_lora, train_lora_with, ChatExample, LoraAdapter, LoraConfig, LoraTrainer, Schedule, StepInfo,
        TrainConfig,
    };
    pub use crate::model::{KvCache, LogitsAt, Model, Output};
    pub use crate::tokenizer::Tokenizer;
    pub use candle_core::{DType, Device, Tensor};
}
