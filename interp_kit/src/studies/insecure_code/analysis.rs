//! The insecure-code study's analyses: pure functions of the run's tables (no model), so the
//! tests check them on hand-made tables.
//!
//! Tables they read:
//! * ratings (`ratings.parquet`): one row per model × set × context: `model, set (ood | id),
//!   example_id, prompt_hash, rating (0-100), insecure, ...`;
//! * alignment (`alignment.parquet`): [`crate::interp::alignment::gradient_alignment`]'s columns;
//! * drift projections (`drift_projections.parquet`): [`crate::interp::alignment::drift_eval`]'s
//!   columns plus `train_condition, seed`.
//!
//! Sign convention (the plan's): `cos = cos(dL/dh, v_insecure)` with `g = dL/dh` as the kit writes
//! it, and `Δcos(l) = cos_inoculation − cos_neutral` per example (no sign flip).
use crate::eval::analysis::{ci_or_nan, mean, paired};
use crate::eval::stats::{bootstrap_mean_ci, bootstrap_paired_ci, pearson, Bootstrap};
use crate::tables::{column_f64, column_str, fresh, to_df};
use anyhow::{ensure, Context, Result};
use polars::prelude::DataFrame;
use serde::{Deserialize, Serialize};
use statrs::statistics::{Data, OrderStatistics};
use std::collections::BTreeMap;

/// SHA-256 of a prompt text, first 16 hex digits: the pairing key of every table (§4.1).
pub fn prompt_hash(text: &str) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(text.as_bytes());
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Per model, the values of `value` by example in `set` (`model → example → value`) and the
/// models in first-seen order.
fn by_model(ratings: &DataFrame, set: &str, value: &str) -> Result<(Vec<String>, BTreeMap<String, BTreeMap<String, f64>>)> {
    let df = fresh(ratings);
    let (model, s, ex, v) = (column_str(&df, "model")?, column_str(&df, "set")?, column_str(&df, "example_id")?, column_f64(&df, value)?);
    let mut order = vec![];
    let mut by: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    for i in 0..model.len() {
        if s[i] != set {
            continue;
        }
        if !order.contains(&model[i]) {
            order.push(model[i].clone());
        }
        ensure!(by.entry(model[i].clone()).or_default().insert(ex[i].clone(), v[i]).is_none(), "ratings: model {:?} has two rows for example {:?} in set {set:?}", model[i], ex[i]);
    }
    ensure!(!order.is_empty(), "ratings: no rows in set {set:?}");
    Ok((order, by))
}

fn indicator(m: &BTreeMap<String, f64>, threshold: f64) -> BTreeMap<String, f64> {
    m.iter().map(|(k, v)| (k.clone(), if *v > threshold { 1.0 } else { 0.0 })).collect()
}

/// A row of [`behaviour_summary`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BehaviourRow {
    pub model: String,
    pub n: u32,
    pub mean_rating: f64,
    pub rating_lo: f64,
    pub rating_hi: f64,
    pub insecure_rate: f64,
    pub rate_lo: f64,
    pub rate_hi: f64,
    /// Hash of the sorted prompt hashes the model was rated on: equal across models = paired.
    pub prompts_hash: String,
}

/// §3.1: per model, mean rating and insecure rate (rating > `threshold`) with bootstrap CIs.
pub fn behaviour_summary(ratings: &DataFrame, set: &str, threshold: f64, boot: &Bootstrap) -> Result<DataFrame> {
    let (order, by) = by_model(ratings, set, "rating")?;
    let df = fresh(ratings);
    let (model, s, ph) = (column_str(&df, "model")?, column_str(&df, "set")?, column_str(&df, "prompt_hash")?);
    let mut rows = vec![];
    for m in order {
        let v: Vec<f64> = by[&m].values().copied().collect();
        let r = bootstrap_mean_ci(&v, boot).with_context(|| format!("model {m}"))?;
        let ind: Vec<f64> = indicator(&by[&m], threshold).values().copied().collect();
        let q = bootstrap_mean_ci(&ind, boot)?;
        let mut hashes: Vec<&str> = (0..model.len()).filter(|&i| model[i] == m && s[i] == set).map(|i| ph[i].as_str()).collect();
        hashes.sort();
        rows.push(BehaviourRow {
            model: m,
            n: v.len() as u32,
            mean_rating: r.estimate,
            rating_lo: r.lo,
            rating_hi: r.hi,
            insecure_rate: q.estimate,
            rate_lo: q.lo,
            rate_hi: q.hi,
            prompts_hash: prompt_hash(&hashes.join(",")),
        });
    }
    to_df(&rows)
}

/// A row of [`paired_vs`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PairedRow {
    /// `<model> − <reference>`.
    pub comparison: String,
    pub model: String,
    pub n: u32,
    pub d_rating: f64,
    pub d_rating_lo: f64,
    pub d_rating_hi: f64,
    /// The CI of the rating difference excludes 0.
    pub significant: bool,
    /// Difference of the binary score (insecure rate).
    pub d_score: f64,
    pub d_score_lo: f64,
    pub d_score_hi: f64,
}

/// §3.2: per model other than `reference`, the paired (by example) difference of ratings and of
/// the binary score `model − reference`, with paired bootstrap CIs.
pub fn paired_vs(ratings: &DataFrame, set: &str, reference: &str, threshold: f64, boot: &Bootstrap) -> Result<DataFrame> {
    let (order, by) = by_model(ratings, set, "rating")?;
    let r = by.get(reference).with_context(|| format!("ratings: no {reference:?} model in set {set:?} (models: {order:?})"))?;
    let mut rows = vec![];
    for m in order.iter().filter(|m| *m != reference) {
        let (a, b) = paired(&by[m], r);
        ensure!(a.len() >= 2, "{m} vs {reference}: {} shared examples, need 2", a.len());
        let c = bootstrap_paired_ci(&a, &b, boot)?;
        let (x, y) = paired(&indicator(&by[m], threshold), &indicator(r, threshold));
        let d = bootstrap_paired_ci(&x, &y, boot)?;
        rows.push(PairedRow {
            comparison: format!("{m} − {reference}"),
            model: m.clone(),
            n: a.len() as u32,
            d_rating: c.estimate,
            d_rating_lo: c.lo,
            d_rating_hi: c.hi,
            significant: c.lo > 0.0 || c.hi < 0.0,
            d_score: d.estimate,
            d_score_lo: d.lo,
            d_score_hi: d.hi,
        });
    }
    to_df(&rows)
}

/// A row of [`threshold_sweep`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ThresholdRow {
    pub model: String,
    pub threshold: f64,
    pub insecure_rate: f64,
}

/// §3: the insecure rate of each model at each threshold (insecure: rating > threshold).
pub fn threshold_sweep(ratings: &DataFrame, set: &str, thresholds: &[f64]) -> Result<DataFrame> {
    let (order, by) = by_model(ratings, set, "rating")?;
    let mut rows = vec![];
    for m in order {
        for &t in thresholds {
            let v: Vec<f64> = indicator(&by[&m], t).values().copied().collect();
            rows.push(ThresholdRow { model: m.clone(), threshold: t, insecure_rate: mean(&v) });
        }
    }
    to_df(&rows)
}

/// A row of [`pressure_table`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PressureRow {
    pub example_id: String,
    pub layer: i64,
    pub direction: String,
    /// `cos[to] − cos[from]` of this example (the plan's Δcos when to = inoculation, from = neutral).
    pub dcos: f64,
}

/// §5.2: per example, layer and direction (`trait`, `random_k`, any other), `Δcos = cos[to] −
/// cos[from]` at `position`, from an alignment table. Rows with a NaN cosine (g = 0) are left out.
pub fn pressure_table(alignment: &DataFrame, position: &str, from: &str, to: &str) -> Result<DataFrame> {
    let df = fresh(alignment);
    let (ex, cond, dir, pos, layer, cos) = (
        column_str(&df, "example_id")?,
        column_str(&df, "condition")?,
        column_str(&df, "direction")?,
        column_str(&df, "position")?,
        column_f64(&df, "layer")?,
        column_f64(&df, "cos")?,
    );
    let mut acc: BTreeMap<(i64, String, String), [Option<f64>; 2]> = BTreeMap::new();
    for i in 0..ex.len() {
        if pos[i] != position || !cos[i].is_finite() {
            continue;
        }
        let slot = if cond[i] == from {
            0
        } else if cond[i] == to {
            1
        } else {
            continue;
        };
        acc.entry((layer[i] as i64, dir[i].clone(), ex[i].clone())).or_default()[slot] = Some(cos[i]);
    }
    let rows: Vec<PressureRow> = acc
        .into_iter()
        .filter_map(|((l, d, e), v)| Some(PressureRow { example_id: e, layer: l, direction: d, dcos: v[1]? - v[0]? }))
        .collect();
    ensure!(!rows.is_empty(), "alignment: no example has a finite cosine under both {from:?} and {to:?} at {position:?}");
    to_df(&rows)
}

/// A row of [`pressure_summary`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PressureSummaryRow {
    /// Block index, or -1 for the late-layer average.
    pub layer: i64,
    pub n: u32,
    /// Mean Δcos of `v_insecure` with a bootstrap CI over examples.
    pub dcos: f64,
    pub dcos_lo: f64,
    pub dcos_hi: f64,
    pub n_random: u32,
    pub random_mean: f64,
    /// 2.5 % and 97.5 % quantiles of the random directions' mean Δcos.
    pub random_lo: f64,
    pub random_hi: f64,
    /// `dcos` lies outside `[random_lo, random_hi]`.
    pub outside_random: bool,
    /// The layer with the most negative `dcos` (the plan's "best layer").
    pub best: bool,
}

fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    Data::new(v.to_vec()).quantile(q)
}

/// §5.3: per layer (and `layer = -1`: per example the mean over the layers `>= late_from`) the
/// mean Δcos of the trait direction with a CI, beside the random directions' 2.5-97.5 % range.
pub fn pressure_summary(pressure: &DataFrame, late_from: i64, boot: &Bootstrap) -> Result<DataFrame> {
    let df = fresh(pressure);
    let (ex, layer, dir, d) = (column_str(&df, "example_id")?, column_f64(&df, "layer")?, column_str(&df, "direction")?, column_f64(&df, "dcos")?);
    // (layer, direction) -> example -> (sum, n)
    let mut acc: BTreeMap<(i64, String), BTreeMap<String, (f64, usize)>> = BTreeMap::new();
    for i in 0..ex.len() {
        let l = layer[i] as i64;
        let mut put = |l: i64| {
            let e = acc.entry((l, dir[i].clone())).or_default().entry(ex[i].clone()).or_default();
            e.0 += d[i];
            e.1 += 1;
        };
        put(l);
        if l >= late_from {
            put(-1);
        }
    }
    let mut layers: Vec<i64> = acc.keys().map(|k| k.0).collect();
    layers.dedup();
    let mut rows = vec![];
    for l in layers {
        let per_ex = |d: &str| -> Option<Vec<f64>> { acc.get(&(l, d.to_string())).map(|m| m.values().map(|(s, n)| s / *n as f64).collect()) };
        let Some(t) = per_ex("trait") else { continue };
        let ci = bootstrap_mean_ci(&t, boot).with_context(|| format!("layer {l}"))?;
        let rnd: Vec<f64> = acc
            .iter()
            .filter(|((ll, d), _)| *ll == l && d.starts_with("random_"))
            .map(|(_, m)| mean(&m.values().map(|(s, n)| s / *n as f64).collect::<Vec<_>>()))
            .collect();
        let (lo, hi) = (quantile(&rnd, 0.025), quantile(&rnd, 0.975));
        rows.push(PressureSummaryRow {
            layer: l,
            n: t.len() as u32,
            dcos: ci.estimate,
            dcos_lo: ci.lo,
            dcos_hi: ci.hi,
            n_random: rnd.len() as u32,
            random_mean: mean(&rnd),
            random_lo: lo,
            random_hi: hi,
            outside_random: !rnd.is_empty() && (ci.estimate < lo || ci.estimate > hi),
            best: false,
        });
    }
    ensure!(!rows.is_empty(), "pressure table has no trait rows");
    if let Some(b) = rows.iter().enumerate().filter(|(_, r)| r.layer >= 0).min_by(|a, b| a.1.dcos.total_cmp(&b.1.dcos)).map(|(i, _)| i) {
        rows[b].best = true;
    }
    to_df(&rows)
}

/// A row of [`cross_trait`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CrossRow {
    pub layer: i64,
    pub direction: String,
    pub n: u32,
    pub dcos: f64,
    pub dcos_lo: f64,
    pub dcos_hi: f64,
}

/// §10.1 cross-trait specificity: per layer, mean Δcos with a CI of every non-random direction
/// (`trait` = v_insecure, `cross_caps` = the ALL-CAPS direction).
pub fn cross_trait(pressure: &DataFrame, boot: &Bootstrap) -> Result<DataFrame> {
    let df = fresh(pressure);
    let (layer, dir, d) = (column_f64(&df, "layer")?, column_str(&df, "direction")?, column_f64(&df, "dcos")?);
    let mut by: BTreeMap<(i64, String), Vec<f64>> = BTreeMap::new();
    for i in 0..d.len() {
        if !dir[i].starts_with("random_") {
            by.entry((layer[i] as i64, dir[i].clone())).or_default().push(d[i]);
        }
    }
    let mut rows = vec![];
    for ((l, dn), v) in by {
        let c = bootstrap_mean_ci(&v, boot).with_context(|| format!("layer {l} {dn}"))?;
        rows.push(CrossRow { layer: l, direction: dn, n: v.len() as u32, dcos: c.estimate, dcos_lo: c.lo, dcos_hi: c.hi });
    }
    to_df(&rows)
}

/// A row of [`projection_levels`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LevelRow {
    pub model: String,
    pub layer: i64,
    pub position: String,
    pub n: u32,
    pub mean_projection: f64,
}

/// §6.3: the mean projection per model × layer × position (NaN projections left out).
pub fn projection_levels(proj: &DataFrame) -> Result<DataFrame> {
    let df = fresh(proj);
    let (model, layer, pos, v) = (column_str(&df, "model")?, column_f64(&df, "layer")?, column_str(&df, "position")?, column_f64(&df, "projection")?);
    let mut order: Vec<String> = vec![];
    let mut by: BTreeMap<(String, i64, String), Vec<f64>> = BTreeMap::new();
    for i in 0..model.len() {
        if !order.contains(&model[i]) {
            order.push(model[i].clone());
        }
        if v[i].is_finite() {
            by.entry((model[i].clone(), layer[i] as i64, pos[i].clone())).or_default().push(v[i]);
        }
    }
    let mut rows = vec![];
    for m in &order {
        for ((mm, l, p), v) in &by {
            if mm == m {
                rows.push(LevelRow { model: m.clone(), layer: *l, position: p.clone(), n: v.len() as u32, mean_projection: mean(v) });
            }
        }
    }
    to_df(&rows)
}

/// `(model, layer, position) → example → projection` (finite values).
fn projections(proj: &DataFrame) -> Result<BTreeMap<(String, i64, String), BTreeMap<String, f64>>> {
    let df = fresh(proj);
    let (model, ex, layer, pos, v) = (column_str(&df, "model")?, column_str(&df, "example_id")?, column_f64(&df, "layer")?, column_str(&df, "position")?, column_f64(&df, "projection")?);
    let mut by: BTreeMap<(String, i64, String), BTreeMap<String, f64>> = BTreeMap::new();
    for i in 0..model.len() {
        if v[i].is_finite() {
            by.entry((model[i].clone(), layer[i] as i64, pos[i].clone())).or_default().insert(ex[i].clone(), v[i]);
        }
    }
    Ok(by)
}

/// A row of [`rating_buckets`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BucketRow {
    pub model: String,
    pub bucket: String,
    pub n: u32,
    pub mean_projection: f64,
}

/// §6.4: per model, contexts split by their own rating (`high_insecure`: rating > cut, else
/// `low_insecure`) and the mean projection at `layer`, `position` in each bucket.
pub fn rating_buckets(proj: &DataFrame, ratings: &DataFrame, layer: i64, position: &str, cut: f64) -> Result<DataFrame> {
    let p = projections(proj)?;
    let (order, r) = by_model(ratings, "ood", "rating")?;
    let mut rows = vec![];
    for m in order {
        let Some(pm) = p.get(&(m.clone(), layer, position.to_string())) else { continue };
        for (bucket, high) in [("high_insecure", true), ("low_insecure", false)] {
            let v: Vec<f64> = r[&m].iter().filter(|(_, x)| (**x > cut) == high).filter_map(|(e, _)| pm.get(e).copied()).collect();
            rows.push(BucketRow { model: m.clone(), bucket: bucket.into(), n: v.len() as u32, mean_projection: mean(&v) });
        }
    }
    to_df(&rows)
}

/// A row of [`linking`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinkRow {
    pub layer: i64,
    pub position: String,
    pub n: u32,
    /// Pearson r between `Δprojection = proj[a] − proj[b]` and `Δrating = rating[a] − rating[b]`
    /// over contexts (NaN when either is constant).
    pub r: f64,
    pub p: f64,
    pub significant: bool,
}

/// §7.1: per layer, the per-context correlation between the projection change and the rating
/// change from model `b` to model `a` at `position`.
pub fn linking(proj: &DataFrame, ratings: &DataFrame, position: &str, a: &str, b: &str) -> Result<DataFrame> {
    let p = projections(proj)?;
    let (_, r) = by_model(ratings, "ood", "rating")?;
    let (ra, rb) = (r.get(a).with_context(|| format!("ratings: no model {a:?}"))?, r.get(b).with_context(|| format!("ratings: no model {b:?}"))?);
    let mut layers: Vec<i64> = p.keys().filter(|k| k.0 == a && k.2 == position).map(|k| k.1).collect();
    layers.sort();
    ensure!(!layers.is_empty(), "projections: no {a:?} rows at {position:?}");
    let mut rows = vec![];
    for l in layers {
        let (pa, pb) = (&p[&(a.to_string(), l, position.to_string())], p.get(&(b.to_string(), l, position.to_string())).with_context(|| format!("projections: no {b:?} rows at layer {l} {position}"))?);
        let (mut x, mut y) = (vec![], vec![]);
        for (e, va) in pa {
            if let (Some(vb), Some(qa), Some(qb)) = (pb.get(e), ra.get(e), rb.get(e)) {
                x.push(va - vb);
                y.push(qa - qb);
            }
        }
        let (rr, pp) = match pearson(&x, &y) {
            Ok(c) => (c.r, c.p),
            Err(_) => (f64::NAN, f64::NAN),
        };
        rows.push(LinkRow { layer: l, position: position.into(), n: x.len() as u32, r: rr, p: pp, significant: pp < 0.05 });
    }
    to_df(&rows)
}

/// Per-context `(Δprojection, Δrating)` from `b` to `a` at one layer and position (the §7 scatter).
pub fn linking_points(proj: &DataFrame, ratings: &DataFrame, layer: i64, position: &str, a: &str, b: &str) -> Result<Vec<(f64, f64)>> {
    let p = projections(proj)?;
    let (_, r) = by_model(ratings, "ood", "rating")?;
    let key = |m: &str| (m.to_string(), layer, position.to_string());
    let (pa, pb) = (p.get(&key(a)).with_context(|| format!("no {a} projections at layer {layer}"))?, p.get(&key(b)).with_context(|| format!("no {b} projections at layer {layer}"))?);
    let (ra, rb) = (r.get(a).context("ratings")?, r.get(b).context("ratings")?);
    Ok(pa.iter().filter_map(|(e, va)| Some((va - pb.get(e)?, ra.get(e)? - rb.get(e)?))).collect())
}

/// A row of [`control_discrepancy`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiscrepancyRow {
    pub model: String,
    pub drift_vs_base: f64,
    pub drift_lo: f64,
    pub drift_hi: f64,
    pub d_rating_vs_neutral: f64,
    pub d_rating_lo: f64,
    pub d_rating_hi: f64,
    pub d_rating_significant: bool,
    pub insecure_rate: f64,
}

/// §8: per fine-tuned model, the drift vs base at `layer`/`position` beside the behavioural
/// change vs neutral and the insecure rate.
pub fn control_discrepancy(drift: &DataFrame, paired: &DataFrame, behaviour: &DataFrame, layer: i64, position: &str) -> Result<DataFrame> {
    let d = fresh(drift);
    let (dm, dl, dp, dv, dlo, dhi) = (column_str(&d, "model")?, column_f64(&d, "layer")?, column_str(&d, "position")?, column_f64(&d, "shift_vs_base")?, column_f64(&d, "lo_vs_base")?, column_f64(&d, "hi_vs_base")?);
    let p = fresh(paired);
    let (pm, pv, plo, phi) = (column_str(&p, "model")?, column_f64(&p, "d_rating")?, column_f64(&p, "d_rating_lo")?, column_f64(&p, "d_rating_hi")?);
    let b = fresh(behaviour);
    let (bm, br) = (column_str(&b, "model")?, column_f64(&b, "insecure_rate")?);
    let mut rows = vec![];
    for i in 0..dm.len() {
        if dl[i] as i64 != layer || dp[i] != position {
            continue;
        }
        let j = pm.iter().position(|m| *m == dm[i]);
        let (v, lo, hi) = j.map_or((0.0, 0.0, 0.0), |j| (pv[j], plo[j], phi[j]));
        rows.push(DiscrepancyRow {
            model: dm[i].clone(),
            drift_vs_base: dv[i],
            drift_lo: dlo[i],
            drift_hi: dhi[i],
            d_rating_vs_neutral: v,
            d_rating_lo: lo,
            d_rating_hi: hi,
            d_rating_significant: lo > 0.0 || hi < 0.0,
            insecure_rate: bm.iter().position(|m| *m == dm[i]).map_or(f64::NAN, |k| br[k]),
        });
    }
    ensure!(!rows.is_empty(), "drift summary: no rows at layer {layer} {position}");
    to_df(&rows)
}

/// A paired `(estimate, lo, hi)` of `mean(a − b)` over shared keys, NaN when fewer than 2.
pub fn paired_ci(a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>, boot: &Bootstrap) -> (f64, f64, f64) {
    let (x, y) = paired(a, b);
    ci_or_nan(&x, &y, boot)
}
