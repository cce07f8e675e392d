//! The study's figures (plotters, saved as PNG and SVG in the run's `figures/`). The plan's
//! multi-panel figures are drawn as separate figures.
use super::analysis::linking_points;
use super::pipeline::{model_label, Analysis, InsecureStudy};
use crate::eval::analysis::mean;
use crate::tables::{column_f64, column_str, fresh};
use crate::viz::plots::{bar_chart, histogram, line_plot, scatter_plot, Bars, Figure, Series};
use anyhow::Result;
use polars::prelude::DataFrame;
use statrs::statistics::{Data, OrderStatistics};
use std::collections::BTreeMap;

fn ood_ratings(ratings: &DataFrame) -> Result<Vec<(String, Vec<f64>)>> {
    let r = fresh(ratings);
    let (m, s, v) = (column_str(&r, "model")?, column_str(&r, "set")?, column_f64(&r, "rating")?);
    let mut out: Vec<(String, Vec<f64>)> = vec![];
    for i in 0..m.len() {
        if s[i] != "ood" {
            continue;
        }
        match out.iter_mut().find(|x| x.0 == m[i]) {
            Some(x) => x.1.push(v[i]),
            None => out.push((m[i].clone(), vec![v[i]])),
        }
    }
    Ok(out)
}

/// §3.3 left: the empirical CDF of the OOD ratings per model.
pub fn fig_rating_cdf(ratings: &DataFrame) -> Result<Figure> {
    let mut fig = line_plot("Rating distribution (empirical CDF, OOD contexts)", "insecure rating", "fraction of contexts <= rating").x_range(0.0, 100.0).y_range(0.0, 1.0);
    for (m, mut v) in ood_ratings(ratings)? {
        v.sort_by(f64::total_cmp);
        let n = v.len() as f64;
        let xs: Vec<f64> = std::iter::once(0.0).chain(v.iter().copied()).chain(std::iter::once(100.0)).collect();
        let ys: Vec<f64> = std::iter::once(0.0).chain((1..=v.len()).map(|k| k as f64 / n)).chain(std::iter::once(1.0)).collect();
        fig = fig.series(Series::new(m, xs, ys));
    }
    fig.build()
}

/// §3.3 right: per model the median rating with the interquartile range (a box plot's box) and
/// the mean.
pub fn fig_rating_box(ratings: &DataFrame) -> Result<Figure> {
    let rs = ood_ratings(ratings)?;
    let x: Vec<f64> = (0..rs.len()).map(|i| i as f64).collect();
    let q = |v: &[f64], p: f64| Data::new(v.to_vec()).quantile(p);
    let med: Vec<f64> = rs.iter().map(|r| q(&r.1, 0.5)).collect();
    let lo: Vec<f64> = rs.iter().map(|r| q(&r.1, 0.25)).collect();
    let hi: Vec<f64> = rs.iter().map(|r| q(&r.1, 0.75)).collect();
    scatter_plot("Ratings by model: median with interquartile range, and mean", "model (index, see labels)", "insecure rating")
        .series(Series::new("median [IQR]", x.clone(), med).ci(lo, hi).labels(rs.iter().map(|r| r.0.clone())))
        .series(Series::new("mean", x, rs.iter().map(|r| mean(&r.1))))
        .build()
}

/// §3: insecure rate vs threshold per model.
pub fn fig_threshold_sweep(sweep: &DataFrame) -> Result<Figure> {
    let s = fresh(sweep);
    let (m, t, r) = (column_str(&s, "model")?, column_f64(&s, "threshold")?, column_f64(&s, "insecure_rate")?);
    let mut by: Vec<(String, Vec<f64>, Vec<f64>)> = vec![];
    for i in 0..m.len() {
        match by.iter_mut().find(|x| x.0 == m[i]) {
            Some(x) => {
                x.1.push(t[i]);
                x.2.push(r[i]);
            }
            None => by.push((m[i].clone(), vec![t[i]], vec![r[i]])),
        }
    }
    let mut fig = line_plot("Insecure rate vs threshold (OOD)", "threshold (insecure: rating > threshold)", "insecure rate");
    for (n, x, y) in by {
        fig = fig.series(Series::new(n, x, y));
    }
    fig.build()
}

/// §5.2 left: Δcos(v_insecure) per layer with its CI, beside the random directions' 2.5-97.5 %
/// band (the late-layer average, layer -1, is left out).
pub fn fig_pressure_layers(summary: &DataFrame) -> Result<Figure> {
    let s = fresh(summary);
    let (l, d, lo, hi, rm, rl, rh) = (column_f64(&s, "layer")?, column_f64(&s, "dcos")?, column_f64(&s, "dcos_lo")?, column_f64(&s, "dcos_hi")?, column_f64(&s, "random_mean")?, column_f64(&s, "random_lo")?, column_f64(&s, "random_hi")?);
    let idx: Vec<usize> = (0..l.len()).filter(|&i| l[i] >= 0.0).collect();
    let pick = |v: &[f64]| idx.iter().map(|&i| v[i]).collect::<Vec<_>>();
    let mut fig = line_plot("Gradient pressure: Δcos = cos_inoc − cos_neutral vs layer", "layer", "Δcos(dL/dh, v)").hline(0.0).bands(true);
    if rm.iter().any(|x| x.is_finite()) {
        fig = fig.series(Series::new("random 2.5-97.5 %", pick(&l), pick(&rm)).ci(pick(&rl), pick(&rh)));
    }
    fig.series(Series::new("v_insecure", pick(&l), pick(&d)).ci(pick(&lo), pick(&hi))).build()
}

/// §5.2 right: at the best layer, the random directions' mean Δcos beside v_insecure's.
pub fn fig_pressure_best(pressure: &DataFrame, layer: i64) -> Result<Figure> {
    let p = fresh(pressure);
    let (l, d, v) = (column_f64(&p, "layer")?, column_str(&p, "direction")?, column_f64(&p, "dcos")?);
    let mut by: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for i in 0..l.len() {
        if l[i] as i64 == layer {
            by.entry(d[i].clone()).or_default().push(v[i]);
        }
    }
    let rnd: Vec<f64> = by.iter().filter(|(k, _)| k.starts_with("random_")).map(|(_, v)| mean(v)).collect();
    let tr: Vec<f64> = by.get("trait").map(|v| vec![mean(v)]).unwrap_or_default();
    let mut h = histogram(format!("Mean Δcos at layer {layer}: random directions vs v_insecure"), "mean Δcos over examples").bins(20);
    if !rnd.is_empty() {
        h = h.sample("random directions", rnd);
    }
    h.sample("v_insecure", tr).build()
}

/// §6 top-left: paired drift (model − neutral) vs layer at `position`.
pub fn fig_drift_layers(drift: &DataFrame, position: &str) -> Result<Figure> {
    let s = fresh(drift);
    let (m, l, p, v, lo, hi) = (column_str(&s, "model")?, column_f64(&s, "layer")?, column_str(&s, "position")?, column_f64(&s, "diff_vs_neutral")?, column_f64(&s, "lo_vs_neutral")?, column_f64(&s, "hi_vs_neutral")?);
    let mut models: Vec<String> = vec![];
    for i in 0..m.len() {
        if p[i] == position && v[i].is_finite() && !models.contains(&m[i]) {
            models.push(m[i].clone());
        }
    }
    let mut fig = line_plot(format!("Paired drift vs the neutral fine-tune ({position})"), "layer", "Δ projection (model − neutral)").hline(0.0);
    for mn in models {
        let idx: Vec<usize> = (0..m.len()).filter(|&i| m[i] == mn && p[i] == position).collect();
        fig = fig.series(Series::new(mn, idx.iter().map(|&i| l[i]), idx.iter().map(|&i| v[i])).ci(idx.iter().map(|&i| lo[i]), idx.iter().map(|&i| hi[i])));
    }
    fig.build()
}

/// §6 top-right: drift vs base per model at one layer and position.
pub fn fig_drift_bars(drift: &DataFrame, layer: usize, position: &str) -> Result<Figure> {
    let s = fresh(drift);
    let (m, l, p, v, lo, hi) = (column_str(&s, "model")?, column_f64(&s, "layer")?, column_str(&s, "position")?, column_f64(&s, "shift_vs_base")?, column_f64(&s, "lo_vs_base")?, column_f64(&s, "hi_vs_base")?);
    let idx: Vec<usize> = (0..m.len()).filter(|&i| l[i] as usize == layer && p[i] == position).collect();
    bar_chart(format!("Drift vs base, layer {layer}, {position}"), "model", "Δ projection vs base", idx.iter().map(|&i| m[i].clone()))
        .group(Bars::new("drift", idx.iter().map(|&i| v[i])).ci(idx.iter().map(|&i| lo[i]), idx.iter().map(|&i| hi[i])))
        .build()
}

/// §6 bottom-left: projection histograms per model at one layer and position.
pub fn fig_projection_hist(proj: &DataFrame, layer: usize, position: &str) -> Result<Figure> {
    let s = fresh(proj);
    let (m, l, p, v) = (column_str(&s, "model")?, column_f64(&s, "layer")?, column_str(&s, "position")?, column_f64(&s, "projection")?);
    let mut by: Vec<(String, Vec<f64>)> = vec![];
    for i in 0..m.len() {
        if l[i] as usize == layer && p[i] == position && v[i].is_finite() {
            match by.iter_mut().find(|x| x.0 == m[i]) {
                Some(x) => x.1.push(v[i]),
                None => by.push((m[i].clone(), vec![v[i]])),
            }
        }
    }
    let mut h = histogram(format!("Projection onto v_insecure, layer {layer}, {position}"), "projection").bins(20);
    for (n, v) in by {
        h = h.sample(n, v);
    }
    h.build()
}

/// §6 bottom-right / §7: per context Δprojection vs Δrating (inoculation − neutral).
pub fn fig_linking(points: &[(f64, f64)], layer: usize, position: &str) -> Result<Figure> {
    scatter_plot(format!("Inoculation − neutral per context: Δprojection ({position}) vs Δrating, layer {layer}"), "Δ projection", "Δ rating")
        .hline(0.0)
        .series(Series::new("contexts", points.iter().map(|p| p.0), points.iter().map(|p| p.1)))
        .build()
}

/// Saves every figure of the analysis in the run's `figures/`.
pub fn save_all(study: &InsecureStudy, a: &Analysis) -> Result<Vec<String>> {
    let ratings = study.run.read_parquet("ratings.parquet")?;
    let proj = study.run.read_parquet("drift_projections_models.parquet")?;
    let gen = format!("gen_avg({})", study.sizes().gen_k);
    let seed = study.sizes().lora.seed;
    let best = {
        let s = fresh(&a.pressure_summary);
        let (l, b) = (column_f64(&s, "layer")?, column_f64(&s, "best")?);
        (0..l.len()).find(|&i| b[i] > 0.5).map_or(study.layers[0] as i64, |i| l[i] as i64)
    };
    let mut figs: Vec<(String, Figure)> = vec![
        ("rating_cdf".into(), fig_rating_cdf(&ratings)?),
        ("rating_box".into(), fig_rating_box(&ratings)?),
        ("threshold_sweep".into(), fig_threshold_sweep(&a.thresholds)?),
        ("pressure_layers".into(), fig_pressure_layers(&a.pressure_summary)?),
        ("pressure_best_layer".into(), fig_pressure_best(&a.pressure, best)?),
        ("drift_layers_prompt_last".into(), fig_drift_layers(&a.drift, "prompt_last")?),
        ("drift_layers_gen_avg".into(), fig_drift_layers(&a.drift, &gen)?),
        ("drift_vs_base".into(), fig_drift_bars(&a.drift, a.layer_12, "prompt_last")?),
        ("projection_hist".into(), fig_projection_hist(&proj, a.layer_12, "prompt_last")?),
    ];
    for l in [a.layer_12, a.layer_20] {
        let pts = linking_points(&proj, &ratings, l as i64, &gen, &model_label("inoculation", seed), &model_label("neutral", seed))?;
        if !pts.is_empty() {
            figs.push((format!("linking_gen_avg_L{l}"), fig_linking(&pts, l, &gen)?));
        }
    }
    let mut out = vec![];
    for (stem, f) in figs {
        study.run.save_figure(&stem, &f)?;
        out.push(stem);
    }
    Ok(out)
}

/// Saves a figure in the run's `figures/` and shows it in a notebook.
pub fn show(study: &InsecureStudy, stem: &str, fig: &Figure) -> Result<()> {
    study.run.save_figure(stem, fig)?;
    fig.evcxr_display();
    Ok(())
}
