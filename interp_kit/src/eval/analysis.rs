//! Analyses that studies share, over the long tables the kit's measurements write: per-example
//! pairing across conditions, the specificity of a trait direction against random directions,
//! and drift summaries of fine-tuned models against a base and a reference fine-tune.
//!
//! The tables follow the column names of [`crate::interp::alignment`]: `example_id, condition,
//! direction (trait | random_k), position, layer, cos` for alignment, and `model,
//! train_condition, seed, example_id, layer, position, projection` for drift projections.
use crate::eval::stats::{bootstrap_paired_ci, Bootstrap};
use crate::tables::{column_f64, column_str, fresh, to_df_with_header};
use anyhow::{ensure, Context, Result};
use polars::prelude::DataFrame;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The model labels a drift summary compares: the `base` model, and the reference fine-tune of the
/// same seed (`{reference}_s{seed}`, whose `train_condition` is `reference`).
#[derive(Clone, Debug, PartialEq)]
pub struct DriftLabels {
    pub base: String,
    pub reference: String,
}

impl Default for DriftLabels {
    /// `base` and `neutral` (the inoculation plans' naming).
    fn default() -> Self {
        Self { base: "base".into(), reference: "neutral".into() }
    }
}

/// The mean of `x` (NaN for none).
pub fn mean(x: &[f64]) -> f64 {
    if x.is_empty() {
        f64::NAN
    } else {
        x.iter().sum::<f64>() / x.len() as f64
    }
}

/// Whether per-example values are kept per layer or averaged over each example's layers (then
/// reported at `layer = -1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layers {
    Each,
    Averaged,
}

/// Per-example values of an alignment table: `(condition, direction, layer) → example → value`
/// of column `value` at `position`.
pub fn per_example(df: &DataFrame, position: &str, value: &str, layers: Layers) -> Result<BTreeMap<(String, String, i64), BTreeMap<String, f64>>> {
    let df = fresh(df);
    let (ex, cond, dir, pos, layer, val) = (
        column_str(&df, "example_id")?,
        column_str(&df, "condition")?,
        column_str(&df, "direction")?,
        column_str(&df, "position")?,
        column_f64(&df, "layer")?,
        column_f64(&df, value)?,
    );
    let mut acc: BTreeMap<(String, String, i64), BTreeMap<String, (f64, usize)>> = BTreeMap::new();
    for i in 0..ex.len() {
        if pos[i] != position {
            continue;
        }
        let l = if layers == Layers::Each { layer[i] as i64 } else { -1 };
        let e = acc.entry((cond[i].clone(), dir[i].clone(), l)).or_default().entry(ex[i].clone()).or_default();
        e.0 += val[i];
        e.1 += 1;
    }
    ensure!(!acc.is_empty(), "the alignment table has no rows at position {position:?}");
    Ok(acc.into_iter().map(|(k, m)| (k, m.into_iter().map(|(e, (s, n))| (e, s / n as f64)).collect())).collect())
}

/// The values of the keys `a` and `b` share, in key order: `(a values, b values)`.
pub fn paired(a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>) -> (Vec<f64>, Vec<f64>) {
    a.iter().filter_map(|(k, v)| b.get(k).map(|w| (*v, *w))).unzip()
}

/// A row of [`specificity_table`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SpecificityRow {
    /// Block index; -1: averaged over the layers of each example first.
    pub layer: i64,
    /// `trait` or `random_k`.
    pub direction: String,
    /// `mean_i align[to] - align[from]`, paired by example (`align = -cos`).
    pub delta: f64,
}

/// Phase 4.2: per layer (and `layer = -1`: averaged over the layers of each example) and per
/// direction (`trait`, `random_k`), the change of mean alignment from `from` to `to`
/// (`mean_i align[to] - align[from]`, paired by example) at `position`. Columns: the fields of
/// [`SpecificityRow`].
pub fn specificity_table(alignment: &DataFrame, position: &str, from: &str, to: &str) -> Result<DataFrame> {
    let mut rows: Vec<SpecificityRow> = vec![];
    for layers in [Layers::Each, Layers::Averaged] {
        let pe = per_example(alignment, position, "cos", layers)?;
        let mut keys: Vec<(String, i64)> = pe.keys().filter(|k| k.0 == from).map(|k| (k.1.clone(), k.2)).collect();
        keys.sort_by(|a, b| (a.1, dir_order(&a.0)).cmp(&(b.1, dir_order(&b.0))));
        for (d, l) in keys {
            let a = pe.get(&(to.to_string(), d.clone(), l)).with_context(|| format!("no {to:?} rows for {d} at layer {l}"))?;
            let b = &pe[&(from.to_string(), d.clone(), l)];
            let (x, y) = paired(a, b);
            ensure!(!x.is_empty(), "{d} layer {l}: no example under both {from} and {to}");
            // align = -cos
            rows.push(SpecificityRow { layer: l, direction: d, delta: -(mean(&x) - mean(&y)) });
        }
    }
    to_df_with_header(&rows)
}

fn dir_order(d: &str) -> (u8, usize) {
    match d.strip_prefix("random_").and_then(|k| k.parse().ok()) {
        Some(k) => (1, k),
        None => (0, 0),
    }
}

/// A row of [`specificity_summary`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SpecificitySummaryRow {
    /// Block index; -1: averaged over layers.
    pub layer: i64,
    /// The trait direction's `delta`.
    pub trait_delta: f64,
    /// Mean and sample sd (NaN for fewer than two) of the random directions' `delta`.
    pub random_mean: f64,
    pub random_sd: f64,
    /// Number of random directions.
    pub n_random: u32,
    /// `(trait_delta - random_mean) / random_sd`.
    pub z: f64,
    /// `(1 + #{|Δ_random| >= |Δ_trait|}) / (n_random + 1)`.
    pub p_empirical: f64,
}

/// Per layer of a [`specificity_table`]: the trait direction's change beside the random
/// directions' (mean, sd, number), `z = (trait - mean) / sd`, and the empirical two-sided
/// p-value `(1 + #{|Δ_random| >= |Δ_trait|}) / (N + 1)`. Columns: the fields of
/// [`SpecificitySummaryRow`].
pub fn specificity_summary(table: &DataFrame) -> Result<DataFrame> {
    let t = fresh(table);
    let (layer, dir, delta) = (column_f64(&t, "layer")?, column_str(&t, "direction")?, column_f64(&t, "delta")?);
    let mut by: BTreeMap<i64, (Option<f64>, Vec<f64>)> = BTreeMap::new();
    for i in 0..layer.len() {
        let e = by.entry(layer[i] as i64).or_default();
        if dir[i] == "trait" {
            e.0 = Some(delta[i]);
        } else {
            e.1.push(delta[i]);
        }
    }
    let mut rows: Vec<SpecificitySummaryRow> = vec![];
    for (l, (tr, rnd)) in by {
        let tr = tr.with_context(|| format!("layer {l}: no trait row"))?;
        let m = mean(&rnd);
        let sd = if rnd.len() > 1 { (rnd.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (rnd.len() - 1) as f64).sqrt() } else { f64::NAN };
        let exceed = rnd.iter().filter(|x| x.abs() >= tr.abs()).count();
        rows.push(SpecificitySummaryRow {
            layer: l,
            trait_delta: tr,
            random_mean: m,
            random_sd: sd,
            n_random: rnd.len() as u32,
            z: (tr - m) / sd,
            p_empirical: (1 + exceed) as f64 / (rnd.len() + 1) as f64,
        });
    }
    to_df_with_header(&rows)
}

/// A row of [`drift_projection_summary`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DriftProjectionRow {
    /// The fine-tuned model's label (`<train_condition>_s<seed>`), its condition and seed.
    pub model: String,
    pub train_condition: String,
    pub seed: i64,
    pub layer: i64,
    /// `prompt_last` or `gen_avg(k)`.
    pub position: String,
    /// Examples paired with the base model.
    pub n: u32,
    /// Mean paired projection shift versus the base model, with its bootstrap CI.
    pub shift_vs_base: f64,
    pub lo_vs_base: f64,
    pub hi_vs_base: f64,
    /// Mean paired difference versus the reference fine-tune of the same seed, with its CI
    /// (NaN for the reference model itself or when it is missing).
    pub diff_vs_neutral: f64,
    pub lo_vs_neutral: f64,
    pub hi_vs_neutral: f64,
}

/// Drift summaries, internal: per fine-tuned model × layer × position, the mean projection
/// shift versus the base model (paired by example, bootstrap CI) and versus the reference
/// fine-tune of the same seed (paired); `labels` names both. Columns: the fields of
/// [`DriftProjectionRow`] (NaN vs neutral for the neutral model itself).
pub fn drift_projection_summary(proj: &DataFrame, labels: &DriftLabels, boot: &Bootstrap) -> Result<DataFrame> {
    let p = fresh(proj);
    let (model, tc, seed, ex, layer, pos, val) = (
        column_str(&p, "model")?,
        column_str(&p, "train_condition")?,
        column_f64(&p, "seed")?,
        column_str(&p, "example_id")?,
        column_f64(&p, "layer")?,
        column_str(&p, "position")?,
        column_f64(&p, "projection")?,
    );
    // (model, layer, position) -> example -> value
    let mut by: BTreeMap<(String, i64, String), BTreeMap<String, f64>> = BTreeMap::new();
    let mut meta: BTreeMap<String, (String, i64)> = BTreeMap::new();
    for i in 0..model.len() {
        if val[i].is_finite() {
            by.entry((model[i].clone(), layer[i] as i64, pos[i].clone())).or_default().insert(ex[i].clone(), val[i]);
        }
        meta.insert(model[i].clone(), (tc[i].clone(), seed[i] as i64));
    }
    let mut rows: Vec<DriftProjectionRow> = vec![];
    for ((m, l, ps), vals) in &by {
        let (cond, sd) = &meta[m];
        if *cond == labels.base {
            continue;
        }
        let base = by
            .get(&(labels.base.clone(), *l, ps.clone()))
            .with_context(|| format!("no {} model rows at layer {l} {ps}", labels.base))?;
        let (a, b) = paired(vals, base);
        let vb = ci_or_nan(&a, &b, boot);
        let reference = format!("{}_s{sd}", labels.reference);
        let vn = match by.get(&(reference, *l, ps.clone())) {
            _ if *cond == labels.reference => None,
            None => None,
            Some(n) => {
                let (a, b) = paired(vals, n);
                Some(ci_or_nan(&a, &b, boot))
            }
        };
        let vn = vn.unwrap_or((f64::NAN, f64::NAN, f64::NAN));
        rows.push(DriftProjectionRow {
            model: m.clone(),
            train_condition: cond.clone(),
            seed: *sd,
            layer: *l,
            position: ps.clone(),
            n: a.len() as u32,
            shift_vs_base: vb.0,
            lo_vs_base: vb.1,
            hi_vs_base: vb.2,
            diff_vs_neutral: vn.0,
            lo_vs_neutral: vn.1,
            hi_vs_neutral: vn.2,
        });
    }
    to_df_with_header(&rows)
}

/// A paired bootstrap CI of `mean(a - b)` as `(estimate, lo, hi)`, NaN when it cannot be computed
/// (fewer than two pairs).
pub fn ci_or_nan(a: &[f64], b: &[f64], boot: &Bootstrap) -> (f64, f64, f64) {
    match bootstrap_paired_ci(a, b, boot) {
        Ok(c) => (c.estimate, c.lo, c.hi),
        Err(_) => (f64::NAN, f64::NAN, f64::NAN),
    }
}
