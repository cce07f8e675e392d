//! The study's figures (plotters; saved as PNG and SVG in the run's `figures/` by
//! [`save_all`], shown inline by the notebooks).
use super::rows::{summarize, tier_accuracy, SummaryRow, TierRow};
use super::IntrospectionStudy;
use crate::viz::plots::{bar_chart, line_plot, Bars, Figure, Series};
use anyhow::{ensure, Result};

/// Phase 0: the mean change in log-odds of "yes" against the same conversation unsteered, per
/// strength, one line per vector kind and band (detection question, info paragraph off).
pub fn fig_baseline(summary: &[SummaryRow]) -> Result<Figure> {
    let rows: Vec<&SummaryRow> = summary.iter().filter(|r| r.question == "detect" && !r.info && r.tier != "unsteered").collect();
    ensure!(!rows.is_empty(), "baseline figure: no steered detection rows with the info paragraph off");
    let mut keys: Vec<(String, String)> = rows.iter().map(|r| (r.tier.clone(), r.band.clone())).collect();
    keys.sort();
    keys.dedup();
    let mut fig = line_plot("Baseline: steering moves P(yes) before any training", "strength", "mean Δ log-odds(yes) vs unsteered").hline(0.0);
    for (tier, band) in keys {
        let mut pts: Vec<(f64, f64)> = rows.iter().filter(|r| r.tier == tier && r.band == band).map(|r| (r.strength, r.mean_delta_log_odds)).collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        fig = fig.series(Series::new(format!("{tier}, {band}"), pts.iter().map(|p| p.0), pts.iter().map(|p| p.1)));
    }
    fig.build()
}

/// Balanced detection accuracy per evaluation tier, one bar per model, with Wilson 95 %
/// intervals (info paragraph off); 0.5 is chance.
pub fn fig_tiers(title: &str, acc: &[TierRow]) -> Result<Figure> {
    let rows: Vec<&TierRow> = acc.iter().filter(|r| !r.info).collect();
    ensure!(!rows.is_empty(), "{title}: no accuracy rows with the info paragraph off");
    let mut tiers: Vec<String> = vec![];
    let mut models: Vec<String> = vec![];
    for r in &rows {
        if !tiers.contains(&r.tier) {
            tiers.push(r.tier.clone());
        }
        if !models.contains(&r.model) {
            models.push(r.model.clone());
        }
    }
    let mut fig = bar_chart(title, "evaluation tier", "balanced accuracy (Wilson 95 %)", tiers.clone()).y_range(0.0, 1.0);
    for m in &models {
        // A model without every tier (or with an undefined accuracy) is left out, not drawn at 0.
        let Some(rs) = tiers.iter().map(|t| rows.iter().find(|r| &r.model == m && &r.tier == t).copied()).collect::<Option<Vec<&TierRow>>>() else { continue };
        if rs.iter().any(|r| !(r.accuracy.is_finite() && r.acc_lo.is_finite() && r.acc_hi.is_finite())) {
            continue;
        }
        fig = fig.group(Bars::new(m.clone(), rs.iter().map(|r| r.accuracy)).ci(rs.iter().map(|r| r.acc_lo), rs.iter().map(|r| r.acc_hi)));
    }
    fig.build()
}

/// Draws every figure whose table the run has (baseline, experiments 1 and 2) into `figures/`;
/// returns the stems written.
pub fn save_all(study: &IntrospectionStudy) -> Result<Vec<String>> {
    let mut figs: Vec<(&str, Figure)> = vec![];
    if study.run.exists("baseline.parquet") {
        figs.push(("baseline_delta_log_odds", fig_baseline(&summarize(&study.baseline_rows()?))?));
    }
    for (exp, stem, title) in [("exp1", "exp1_tiers", "Experiment 1: trained on random vectors"), ("exp2", "exp2_tiers", "Experiment 2: trained on concept vectors")] {
        if study.run.exists(format!("{exp}.parquet")) {
            figs.push((stem, fig_tiers(title, &tier_accuracy(&study.experiment_rows(exp)?))?));
        }
    }
    let mut out = vec![];
    for (stem, f) in figs {
        study.run.save_figure(stem, &f)?;
        out.push(stem.to_string());
    }
    Ok(out)
}

/// Saves a figure in the run's `figures/` and shows it in a notebook.
pub fn show(study: &IntrospectionStudy, stem: &str, fig: &Figure) -> Result<()> {
    study.run.save_figure(stem, fig)?;
    fig.evcxr_display();
    Ok(())
}
