//! interp_kit: mechanistic-interpretability toolkit for chat language models.
//!
//! # Layers
//! Dependencies run one way, from the bottom layer up; a layer never imports one above it and no
//! generic module imports a study (`scripts/check_layers.py` enforces this in `scripts/test.sh`).
//!
//! ```text
//! base      io (atomic writes, json/csv/parquet), gguf (checked reads), rng, device, malloc, vmath, paths
//! tables    DataFrame helpers: serde rows <-> frames, filters, group summaries, pivots, escaping
//! text      tokenizer, chat templates and named positions, JSONL records
//! hooks     HookPoint (TransformerLens names), Positions, Phase, Hooks, caches, the Adapter trait
//! model     weights -> hooked forward -> logits, KV cache; one file per architecture + registry
//! generate  batched greedy / sampled generation with per-row seeds
//! grad      teacher-forced examples and losses, dL/dh at hook points
//! lora      adapters (scoped per call, PEFT IO, merge); lora::train is the part that needs grad
//! interp    directions (values, IO, extraction methods), steering, gradient alignment
//! eval      text metrics, statistics, shared analyses (paired, specificity, drift summaries)
//! viz       plots (plotters, PNG/SVG, inline in evcxr) and markdown reports
//! runs      run directories with manifests, resumable sweeps, study config basics (Mode, ...)
//! studies   one folder per study: config, data, pipeline steps, study tables
//! ```
//! `base` is not named `core` so that it cannot shadow Rust's `core` crate. `tables` sits just
//! above it because it needs nothing but polars, and every layer that measures something (interp,
//! eval, the studies) returns its results as tables.
pub mod base;
pub mod tables;
pub mod text;
pub mod hooks;
pub mod model;
pub mod generate;
pub mod grad;
pub mod lora;
pub mod interp;
pub mod eval;
pub mod viz;
pub mod runs;
pub mod studies;

pub use base::device::{default_dtype, device};
pub use base::{cache_dir, embedded_model_path, EMBEDDED_MODEL_FILE};
/// polars, re-exported so notebooks build and read tables with the kit's exact version.
pub use polars;
/// anyhow, re-exported so notebook closures can name their return type
/// (`|c: &CellKey| -> interp_kit::anyhow::Result<DataFrame> { .. }`).
pub use anyhow;

/// The names a notebook needs in its first hour: `use interp_kit::prelude::*;`. Study types are
/// imported from their folder (`use interp_kit::studies::inoculation_caps as inoc;`).
pub mod prelude {
    /// `.context(..)` / `.with_context(..)` on `Result` and `Option` (anyhow), for notebook cells.
    pub use anyhow::Context as _;
    pub use crate::base::device::device;
    pub use crate::generate::{GenerateConfig, Generation};
    pub use crate::grad::{GradOutput, Loss, TrainExample};
    pub use crate::hooks::{ActivationCache, HookCtx, HookPoint, Hooks, Phase, Positions, Site};
    pub use crate::interp::directions::{
        collect_activations, contrastive_prefix, mean_diff, pca_center, pca_diff, probe, random, random_n, Contrastive,
        ControlVector, Direction, DirectionMeta, PromptFormat, PromptIds, ReadAt, Scale,
    };
    pub use crate::interp::steer::{hooks_for, Intervention, Op, Where};
    pub use crate::lora::{self, train_lora, LoraAdapter, LoraConfig, TrainConfig};
    pub use crate::model::{ComputeDtype, KvCache, LogitsAt, Model, Output};
    pub use crate::eval::stats::{bootstrap_mean_ci, bootstrap_paired_ci, cohens_d, pearson, spearman};
    pub use crate::runs::{CellKey, Mode, RunDir, Sweep};
    pub use crate::tables::{column_f64, column_str, filter_eq, fresh, group_mean, group_summary, pivot, pretty};
    pub use crate::text::chat::{Chat, Position};
    pub use crate::text::tokenizer::Tokenizer;
    pub use crate::viz::plots::{self, bar_chart, heatmap, histogram, line_plot, scatter_plot, Bars, Figure, Series};
    pub use crate::viz::reports::Markdown;
    pub use polars::prelude::{Column, DataFrame, NamedFrom};
    pub use candle_core::{DType, Device, Tensor};
}
