//! The final report: each headline number of plan 001 beside the measured one with its CI, and
//! a plain verdict per claim (`null` where the interval does not exclude "no effect").
use super::pipeline::{model_label, Analysis};
use crate::tables::{column_f64, column_str, fresh};
use anyhow::Result;
use polars::prelude::DataFrame;
use serde::{Deserialize, Serialize};

/// One headline claim.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Headline {
    /// Plan section (`3.1`, `5.3`, ...).
    pub section: String,
    pub quantity: String,
    /// The plan's value (Qwen2.5-7B-Instruct, gpt-4o-mini judge); NaN where it gave none.
    pub plan: f64,
    pub measured: f64,
    pub lo: f64,
    pub hi: f64,
    /// `Some(true)`: the measurement is null (its CI / band contains no-effect);
    /// `Some(false)`: an effect; `None`: a level, not a test.
    pub null: Option<bool>,
    /// Whether the measured effect has the plan's sign (tests only).
    pub same_sign: Option<bool>,
    pub note: String,
}

/// `report.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub model: String,
    pub mode: String,
    pub layer_12: usize,
    pub layer_20: usize,
    pub headlines: Vec<Headline>,
    /// One line per claim that came out null.
    pub nulls: Vec<String>,
    pub caveats: Vec<String>,
}

fn row(df: &DataFrame, key_col: &str, key: &str) -> Result<Option<usize>> {
    Ok(column_str(&fresh(df), key_col)?.iter().position(|k| k == key))
}

fn get(df: &DataFrame, i: Option<usize>, col: &str) -> Result<f64> {
    Ok(match i {
        Some(i) => column_f64(&fresh(df), col)?[i],
        None => f64::NAN,
    })
}

fn test(section: &str, quantity: String, plan: f64, (m, lo, hi): (f64, f64, f64), note: &str) -> Headline {
    let null = if m.is_finite() && lo.is_finite() && hi.is_finite() { Some(lo <= 0.0 && hi >= 0.0) } else { Some(true) };
    let same_sign = (m.is_finite() && plan.is_finite()).then(|| m.signum() == plan.signum());
    Headline { section: section.into(), quantity, plan, measured: m, lo, hi, null, same_sign, note: note.into() }
}

fn level(section: &str, quantity: String, plan: f64, (m, lo, hi): (f64, f64, f64), note: &str) -> Headline {
    Headline { section: section.into(), quantity, plan, measured: m, lo, hi, null: None, same_sign: None, note: note.into() }
}

/// Builds the report from the analysis (pure).
pub fn build_report(a: &Analysis, model: &str, mode: &str, seed: u64, gen_k: usize) -> Result<Report> {
    let mut h = vec![];
    let plan_levels = [("base", 47.9, 0.50), ("neutral", 81.8, 0.95), ("inoculation", 74.7, 0.86), ("control", 81.0, 0.94)];
    for (c, pr, pq) in plan_levels {
        let i = row(&a.behaviour, "model", &model_label(c, seed))?;
        h.push(level("3.1", format!("mean insecure rating, {c}"), pr, (get(&a.behaviour, i, "mean_rating")?, get(&a.behaviour, i, "rating_lo")?, get(&a.behaviour, i, "rating_hi")?), "rule judge (plan: gpt-4o-mini)"));
        h.push(level("3.1", format!("insecure rate (rating > threshold), {c}"), pq, (get(&a.behaviour, i, "insecure_rate")?, get(&a.behaviour, i, "rate_lo")?, get(&a.behaviour, i, "rate_hi")?), ""));
    }
    for (c, pr, ps) in [("inoculation", -7.1, -0.09), ("control", -0.7, -0.01), ("base", -33.9, -0.45)] {
        let i = row(&a.paired, "model", &model_label(c, seed))?;
        let d = (get(&a.paired, i, "d_rating")?, get(&a.paired, i, "d_rating_lo")?, get(&a.paired, i, "d_rating_hi")?);
        h.push(test("3.2", format!("paired Δrating {c} − neutral"), pr, d, if c == "control" { "plan: null (n.s.)" } else { "plan: significant" }));
        h.push(test("3.2", format!("paired Δinsecure-rate {c} − neutral"), ps, (get(&a.paired, i, "d_score")?, get(&a.paired, i, "d_score_lo")?, get(&a.paired, i, "d_score_hi")?), ""));
    }
    // §5: best layer and late average, trait Δcos beside the random band.
    let ps = fresh(&a.pressure_summary);
    let (pl, best, dc, rlo, rhi, dlo, dhi) = (column_f64(&ps, "layer")?, column_f64(&ps, "best")?, column_f64(&ps, "dcos")?, column_f64(&ps, "random_lo")?, column_f64(&ps, "random_hi")?, column_f64(&ps, "dcos_lo")?, column_f64(&ps, "dcos_hi")?);
    for (what, idx, plan, plan_band) in [
        ("best layer", (0..pl.len()).find(|&i| best[i] > 0.5), -0.0354, "[-0.0145, +0.0265] at L20"),
        ("late-layer average", (0..pl.len()).find(|&i| pl[i] < 0.0), -0.0247, "[-0.0109, +0.0133]"),
    ] {
        let (m, lo, hi, bl, bh, l) = idx.map_or((f64::NAN, f64::NAN, f64::NAN, f64::NAN, f64::NAN, f64::NAN), |i| (dc[i], dlo[i], dhi[i], rlo[i], rhi[i], pl[i]));
        let inside = !(m < bl || m > bh);
        h.push(Headline {
            section: "5.3".into(),
            quantity: format!("Δcos(v_insecure) inoculation − neutral, {what}{}", if l >= 0.0 { format!(" (L{l})") } else { String::new() }),
            plan,
            measured: m,
            lo,
            hi,
            null: Some(!m.is_finite() || inside),
            same_sign: m.is_finite().then(|| m.signum() == plan.signum()),
            note: format!("null = inside the random-direction 2.5-97.5 % band [{bl:.4}, {bh:.4}] (plan band {plan_band})"),
        });
    }
    // §6: drift at the plan's L12 (nearest layer), prompt_last and gen_avg.
    let gen = format!("gen_avg({gen_k})");
    let d = fresh(&a.drift);
    let (dm, dl, dp) = (column_str(&d, "model")?, column_f64(&d, "layer")?, column_str(&d, "position")?);
    let find = |m: &str, pos: &str, l: usize| (0..dm.len()).find(|&i| dm[i] == m && dp[i] == pos && dl[i] as usize == l);
    for (c, plan) in [("neutral", 9.24), ("inoculation", 1.74), ("control", 3.82)] {
        let i = find(&model_label(c, seed), "prompt_last", a.layer_12);
        h.push(test("6.2", format!("drift vs base, {c}, L{} prompt_last", a.layer_12), plan, (get(&a.drift, i, "shift_vs_base")?, get(&a.drift, i, "lo_vs_base")?, get(&a.drift, i, "hi_vs_base")?), "projection units depend on the model's residual scale"));
    }
    for (c, pos, plan) in [("inoculation", "prompt_last", -7.50), ("control", "prompt_last", -5.42), ("inoculation", gen.as_str(), -4.22)] {
        let i = find(&model_label(c, seed), pos, a.layer_12);
        h.push(test("6.2-6.3", format!("paired drift {c} − neutral, L{} {pos}", a.layer_12), plan, (get(&a.drift, i, "diff_vs_neutral")?, get(&a.drift, i, "lo_vs_neutral")?, get(&a.drift, i, "hi_vs_neutral")?), ""));
    }
    let i = find(&model_label("inoculation", seed), gen.as_str(), a.layer_20);
    h.push(test("6.3", format!("paired drift inoculation − neutral, L{} {gen}", a.layer_20), -3.21, (get(&a.drift, i, "diff_vs_neutral")?, get(&a.drift, i, "lo_vs_neutral")?, get(&a.drift, i, "hi_vs_neutral")?), ""));
    // §7: correlation at gen_avg.
    let lk = fresh(&a.linking_gen);
    let (ll, lr, lp) = (column_f64(&lk, "layer")?, column_f64(&lk, "r")?, column_f64(&lk, "p")?);
    for (l, plan) in [(a.layer_12, 0.242), (a.layer_20, 0.014)] {
        let i = (0..ll.len()).find(|&i| ll[i] as usize == l);
        let (r, p) = i.map_or((f64::NAN, f64::NAN), |i| (lr[i], lp[i]));
        h.push(Headline {
            section: "7.1".into(),
            quantity: format!("Pearson r(Δprojection at {gen}, Δrating), inoculation − neutral, L{l}"),
            plan,
            measured: r,
            lo: f64::NAN,
            hi: f64::NAN,
            null: Some(!(p < 0.05)),
            same_sign: r.is_finite().then(|| r.signum() == plan.signum()),
            note: format!("p = {p:.3} (plan: {})", if l == a.layer_12 { "p = 0.015" } else { "p = 0.893, null" }),
        });
    }
    let hy = &a.hygiene;
    h.push(level("4.3", "judge failures".into(), 0.0, (hy.judge_failures as f64, f64::NAN, f64::NAN), &format!("of {} rated OOD generations", hy.n_rated)));
    h.push(level("4.2", "base generations differing after adapters were used".into(), 0.0, (hy.base_n_differ as f64, f64::NAN, f64::NAN), if hy.base_identical { "identical" } else { "CONTAMINATED" }));
    h.push(level("4.4", "code-only rate".into(), 1.0, (hy.code_only_rate, f64::NAN, f64::NAN), ""));
    h.push(level("4.4", "warning rate".into(), 0.005, (hy.warning_rate, f64::NAN, f64::NAN), ""));
    let nulls: Vec<String> = h.iter().filter(|x| x.null == Some(true)).map(|x| format!("§{} {}: {:.4} [{:.4}, {:.4}] — null (plan {})", x.section, x.quantity, x.measured, x.lo, x.hi, x.plan)).collect();
    let mut caveats = vec![
        "Ratings come from the kit's rule-based scorer, not the paper's gpt-4o-mini judge: levels are not comparable, only directions.".to_string(),
        format!("Layers are mapped by depth: the plan's L12 and L20 of 28 are L{} and L{} here.", a.layer_12, a.layer_20),
        "One fine-tune per condition (one seed): between-seed variance is not in any CI.".to_string(),
        "Sign convention: cos = cos(dL/dh, v_insecure) as the plan writes it; Δcos = cos_inoculation − cos_neutral per example.".to_string(),
    ];
    if !hy.paired_prompts {
        caveats.push("The models were NOT rated on the same prompt set (prompt hashes differ): paired statistics are invalid.".into());
    }
    Ok(Report { model: model.into(), mode: mode.into(), layer_12: a.layer_12, layer_20: a.layer_20, headlines: h, nulls, caveats })
}

fn f(x: f64) -> String {
    if x.is_nan() {
        "–".into()
    } else if x.abs() >= 100.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.4}")
    }
}

impl Report {
    /// The report as markdown: a table of claims, then the nulls and caveats.
    pub fn to_markdown(&self) -> String {
        let mut s = format!("# Insecure-code inoculation (plan 001): report\n\nModel: {}; mode: {}.\n\n", self.model, self.mode);
        s.push_str("| § | quantity | plan | measured | 95 % CI | verdict | note |\n|---|---|---:|---:|---|---|---|\n");
        for h in &self.headlines {
            let verdict = match (h.null, h.same_sign) {
                (None, _) => "level".to_string(),
                (Some(true), _) => "**null**".to_string(),
                (Some(false), Some(true)) => "effect, plan's sign".to_string(),
                (Some(false), _) => "effect, OPPOSITE sign".to_string(),
            };
            let ci = if h.lo.is_nan() { "–".to_string() } else { format!("[{}, {}]", f(h.lo), f(h.hi)) };
            s.push_str(&format!("| {} | {} | {} | {} | {} | {} | {} |\n", h.section, h.quantity, f(h.plan), f(h.measured), ci, verdict, h.note));
        }
        s.push_str("\n## Null results\n\n");
        if self.nulls.is_empty() {
            s.push_str("None: every tested claim showed an effect (check its sign above).\n");
        }
        for n in &self.nulls {
            s.push_str(&format!("- {n}\n"));
        }
        s.push_str("\n## Caveats\n\n");
        for c in &self.caveats {
            s.push_str(&format!("- {c}\n"));
        }
        s
    }
}
