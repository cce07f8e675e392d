//! Logit lens: each block's `resid_post` through the final norm (each vector normalised by its
//! own scale, not the last layer's: TransformerLens #1076) and the unembedding
//! ([`Model::unembed`]); top-k tokens and chosen-token log-probabilities per layer as tables.
use crate::hooks::{HookPoint, Hooks, Positions};
use crate::model::{LogitsAt, Model};
use crate::text::tokenizer::Tokenizer;
use anyhow::{ensure, Context, Result};
use candle_core::{DType, Tensor, D};
use polars::prelude::DataFrame;
use serde::Serialize;

/// Per block, per row, the lens log-probabilities `[n_selected, V]` at the selected positions.
pub struct LogitLens {
    /// Block `l` of entry `l`.
    pub logprobs: Vec<Vec<Tensor>>,
    /// The token index of each selected position, per row.
    pub positions: Vec<Vec<usize>>,
}

/// One row of [`LogitLens::top_k`].
#[derive(Clone, Debug, Serialize)]
pub struct LensTopRow {
    pub row: usize,
    pub position: usize,
    pub layer: usize,
    pub rank: usize,
    pub token_id: u32,
    pub token: String,
    pub logprob: f64,
}

/// One row of [`LogitLens::chosen`].
#[derive(Clone, Debug, Serialize)]
pub struct LensChosenRow {
    pub row: usize,
    pub position: usize,
    pub layer: usize,
    pub token_id: u32,
    pub token: String,
    pub logprob: f64,
}

/// The lens of every block at `positions` of `prompts`, from one forward with `hooks` (e.g. a
/// LoRA adapter or steering).
pub fn logit_lens(model: &Model, prompts: &[Vec<u32>], positions: Positions, hooks: Hooks) -> Result<LogitLens> {
    let n = model.n_layers();
    let points: Vec<HookPoint> = (0..n).map(HookPoint::resid_post).collect();
    let hooks = hooks.cache_many(points.iter().copied(), positions);
    let out = model.forward_at(prompts, &hooks, LogitsAt::None)?;
    let mut logprobs = Vec::with_capacity(n);
    for p in &points {
        let rows = out.activations.get(*p)?;
        let mut lr = Vec::with_capacity(rows.len());
        for h in rows {
            let l = model.unembed(h).with_context(|| format!("lens at {p}"))?;
            lr.push(candle_nn::ops::log_softmax(&l.to_dtype(DType::F32)?, D::Minus1)?);
        }
        logprobs.push(lr);
    }
    let positions = out.activations.token_indices(points[0])?.to_vec();
    Ok(LogitLens { logprobs, positions })
}

impl LogitLens {
    /// The `k` most probable tokens per layer, row and position (`rank` 0 first).
    pub fn top_k(&self, k: usize, tok: Option<&Tokenizer>) -> Result<DataFrame> {
        ensure!(k >= 1, "logit lens: k must be >= 1");
        let mut rows = vec![];
        for (layer, per_row) in self.logprobs.iter().enumerate() {
            for (r, t) in per_row.iter().enumerate() {
                let m: Vec<Vec<f32>> = t.to_vec2()?;
                for (j, v) in m.iter().enumerate() {
                    let mut order: Vec<usize> = (0..v.len()).collect();
                    order.sort_by(|&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
                    for (rank, &id) in order.iter().take(k).enumerate() {
                        rows.push(LensTopRow {
                            row: r,
                            position: self.positions[r][j],
                            layer,
                            rank,
                            token_id: id as u32,
                            token: tok.map_or_else(|| format!("#{id}"), |t| t.token_str(id as u32)),
                            logprob: v[id] as f64,
                        });
                    }
                }
            }
        }
        crate::tables::to_df(&rows)
    }

    /// The lens log-probability of each of `ids` per layer, row and position.
    pub fn chosen(&self, ids: &[u32], tok: Option<&Tokenizer>) -> Result<DataFrame> {
        ensure!(!ids.is_empty(), "logit lens: no chosen tokens");
        let mut rows = vec![];
        for (layer, per_row) in self.logprobs.iter().enumerate() {
            for (r, t) in per_row.iter().enumerate() {
                let m: Vec<Vec<f32>> = t.to_vec2()?;
                for (j, v) in m.iter().enumerate() {
                    for &id in ids {
                        let lp = *v.get(id as usize).with_context(|| format!("token id {id} is outside the vocabulary ({})", v.len()))?;
                        rows.push(LensChosenRow {
                            row: r,
                            position: self.positions[r][j],
                            layer,
                            token_id: id,
                            token: tok.map_or_else(|| format!("#{id}"), |t| t.token_str(id)),
                            logprob: lp as f64,
                        });
                    }
                }
            }
        }
        crate::tables::to_df(&rows)
    }
}
