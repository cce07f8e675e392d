//! Per-row steering: in one batch each row gets its own vector, layer band, strength and
//! positions (or none), so differently steered conversations run together. The law (tested):
//! a batch of differently steered rows gives each row what it gives alone.
use crate::hooks::{HookPoint, Hooks, Phase, Site};
use crate::model::Model;
use anyhow::{ensure, Context, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::ops::Range;

/// How one batch row is steered: `x ← x + strength · vector` at `site` of the blocks in
/// `layers` (`resid_post` of blocks `A..B-1` for `A..B`), at the row's token indices `positions`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RowSteer {
    /// `None`: the row is not steered.
    pub vector: Option<Vec<f32>>,
    pub layers: Range<usize>,
    pub strength: f64,
    /// Prompt-relative token indices (padding excluded); empty: not steered.
    pub positions: Vec<usize>,
}

impl RowSteer {
    /// A row that is left alone.
    pub fn none() -> Self {
        Self { vector: None, layers: 0..0, strength: 0.0, positions: vec![] }
    }
    pub fn new(vector: Vec<f32>, layers: Range<usize>, strength: f64, positions: Vec<usize>) -> Self {
        Self { vector: Some(vector), layers, strength, positions }
    }
    /// Whether the row changes anything.
    pub fn is_active(&self) -> bool {
        self.vector.is_some() && !self.layers.is_empty() && self.strength != 0.0 && !self.positions.is_empty()
    }
    /// Checks the vector width and the band against `model`, and (with `prompt_len`) that every
    /// position lies inside the row's prompt.
    pub fn check(&self, model: &Model, prompt_len: Option<usize>) -> Result<()> {
        ensure!(self.strength.is_finite(), "steering strength is {}", self.strength);
        if let Some(v) = &self.vector {
            ensure!(
                v.len() == model.d_model(),
                "steering vector has width {}, the model's residual stream has {}",
                v.len(),
                model.d_model()
            );
            if let Some((i, x)) = crate::interp::directions::first_non_finite(v) {
                anyhow::bail!("steering vector has a non-finite entry: [{i}] = {x}");
            }
            let peak = self.strength.abs() * v.iter().fold(0f64, |m, x| m.max(x.abs() as f64));
            let max = crate::interp::steer::dtype_max(model.dtype);
            ensure!(
                peak <= max,
                "steering strength {} times the vector reaches {peak:e}, beyond the largest {:?} value {max:e}; lower the strength",
                self.strength,
                model.dtype
            );
        }
        let n = model.n_layers();
        ensure!(
            self.layers.start <= self.layers.end && self.layers.end <= n,
            "layer band {}..{} is outside the model: it has {n} blocks (a band is A..B with B <= {n})",
            self.layers.start,
            self.layers.end
        );
        if let Some(len) = prompt_len {
            if let Some(bad) = self.positions.iter().find(|&&p| p >= len) {
                anyhow::bail!("steered position {bad} is outside the prompt, which has {len} tokens (0..{len})");
            }
        }
        Ok(())
    }
}

/// Write hooks that steer row `r` of every call by `rows[r]` at `site` (`ResidPost` for the
/// introspection protocol) in `phase`. Each call must have `rows.len()` rows. Positions select
/// by prompt-relative token index, so a later call (decode / extend) whose tokens lie beyond them
/// is unaffected even when `phase` includes it.
pub fn row_steering_hooks(model: &Model, rows: &[RowSteer], site: Site, phase: Phase) -> Result<Hooks<'static>> {
    ensure!(!rows.is_empty(), "row steering: no rows");
    ensure!(!site.is_attention() && site != Site::LnFinal, "row steering acts on a residual-stream site of a block, not {}", site.name());
    for (r, s) in rows.iter().enumerate() {
        s.check(model, None).with_context(|| format!("row {r}"))?;
    }
    let d = model.d_model();
    let b = rows.len();
    let layers: BTreeSet<usize> = rows.iter().filter(|s| s.is_active()).flat_map(|s| s.layers.clone()).collect();
    let mut hooks = Hooks::new();
    for l in layers {
        let point = HookPoint::new(l, site);
        model.check_points([&point])?;
        let mut add = vec![0f32; b * d];
        let mut pos: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); b];
        let mut peak = 0f64;
        for (r, s) in rows.iter().enumerate() {
            if !s.is_active() || !s.layers.contains(&l) {
                continue;
            }
            let v = s.vector.as_ref().expect("active rows have a vector");
            for (o, x) in add[r * d..(r + 1) * d].iter_mut().zip(v) {
                *o = (*x as f64 * s.strength) as f32;
                peak = peak.max(o.abs() as f64);
            }
            pos[r] = s.positions.iter().copied().collect();
        }
        let add = Tensor::from_vec(add, (b, 1, d), &model.device)?.to_dtype(model.dtype)?;
        hooks = hooks.write(point, phase, move |x, ctx| {
            let (xb, t, _) = x.dims3()?;
            ensure!(xb == b, "row steering was built for {b} rows, this call has {xb}");
            let mut m = vec![0f32; b * t];
            for (r, row) in ctx.token_index.iter().enumerate() {
                for (c, idx) in row.iter().enumerate() {
                    if idx.is_some_and(|i| pos[r].contains(&i)) {
                        m[r * t + c] = 1.0;
                    }
                }
            }
            let mask = Tensor::from_vec(m, (b, t, 1), x.device())?.to_dtype(x.dtype())?;
            let a = if add.dtype() == x.dtype() { add.clone() } else { add.to_dtype(x.dtype())? };
            let out = (x + mask.broadcast_mul(&a)?)?;
            crate::interp::steer::check_steered(x, out, &format!("row steering at {point}"), peak)
        });
    }
    Ok(hooks)
}
