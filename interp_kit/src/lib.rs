//! interp_kit: mechanistic-interpretability toolkit for chat language models.
//!
//! Layers, bottom to top: `model` (weights, hooked forward, KV cache, gradients),
//! `tokenizer`/`chat` (templates and named positions), analysis modules, results.
pub mod alignment;
pub mod caps_data;
pub mod chat;
pub mod config;
pub mod data;
pub mod device;
pub mod directions;
pub mod generate;
pub mod grad;
pub mod hooks;
pub mod metrics;
pub mod lora;
pub mod malloc;
pub mod model;
pub mod rng;
pub mod stats;
pub mod steer;
pub mod studies;
pub mod plots;
pub mod reports;
pub mod results;
pub mod tokenizer;

pub use device::{default_dtype, device};
/// polars, re-exported so notebooks build and read tables with the kit's exact version.
pub use polars;
/// anyhow, re-exported so notebook closures can name their return type
/// (`|c: &CellKey| -> interp_kit::anyhow::Result<DataFrame> { .. }`).
pub use anyhow;

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
    /// `.context(..)` / `.with_context(..)` on `Result` and `Option` (anyhow), for notebook cells.
    pub use anyhow::Context as _;
    pub use crate::config::StudyConfig;
    pub use crate::data::{read_jsonl, PromptRecord, Split};
    pub use crate::alignment::{
        assistant_losses, candidate_losses, drift_eval, gradient_alignment, random_directions, select_loss_matched,
        teacher_forced, AlignmentConfig, CandidateLoss, ChatExample, Condition, DriftConfig, DriftOutput,
        LossMatchedSelection,
    };
    pub use crate::chat::{Chat, Position};
    pub use crate::device::device;
    pub use crate::directions::{
        collect_activations, contrastive_prefix, mean_diff, pca_center, pca_diff, probe, prompt_set_hash, random,
        random_n, Contrastive, ControlVector, Direction, DirectionMeta, PromptFormat, PromptIds, ReadAt, Scale,
    };
    pub use crate::generate::{GenerateConfig, Generation};
    pub use crate::grad::{GradOutput, Loss};
    pub use crate::hooks::{ActivationCache, HookCtx, HookPoint, Hooks, Phase, Positions, Site};
    pub use crate::metrics::{caps_fraction, confounds, helpfulness, refusal};
    pub use crate::lora::{
        self, eval_loss, lora_grad, train_lora, train_lora_with, TrainExample, LoraAdapter, LoraConfig, LoraTrainer, Schedule, StepInfo,
        TrainConfig,
    };
    pub use crate::model::{KvCache, LogitsAt, Model, Output};
    pub use crate::stats::{bootstrap_mean_ci, bootstrap_paired_ci, cohens_d, pareto_front, pearson, spearman, Bootstrap};
    pub use crate::steer::{hooks_for, Intervention, Op, Where};
    pub use crate::plots::{self, bar_chart, heatmap, histogram, line_plot, scatter_plot, Bars, Figure, Matrix, Series};
    pub use crate::reports::Markdown;
    pub use crate::results::{
        column_f64, column_str, filter_eq, fresh, group_mean, group_summary, pivot, pretty, CellKey, Progress, RunDir, Sweep, SweepReport,
    };
    pub use polars::prelude::{Column, DataFrame, NamedFrom};
    pub use crate::tokenizer::Tokenizer;
    pub use candle_core::{DType, Device, Tensor};
}
