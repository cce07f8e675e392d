//! The study's table rows and the pure statistics over them (accuracies with Wilson intervals,
//! false-positive rates, yes-bias), so that notebooks and tests recompute them from the tables.
use crate::eval::stats::{wilson, Proportion};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One yes/no readout after the steer-then-remove protocol (`baseline.parquet`, `exp1.parquet`,
/// `exp2.parquet`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReadoutRow {
    /// `base_model` (no adapter) or the name of the training variant whose adapter was active
    /// (`base`, `rank=16`, ..., `concept_base`).
    pub model: String,
    pub info: bool,
    /// `detect` or `control` (a question whose answer is no).
    pub question: String,
    /// Control question index (-1 for the detection question).
    pub control: i64,
    /// `unsteered`, or the vector tier: `random`, `random_train`, `random_heldout`, `concept`,
    /// `concept_train`, `concept_heldout`.
    pub tier: String,
    /// Vector id in its set (-1 when unsteered) and its label.
    pub vector_id: i64,
    pub label: String,
    /// Band name and blocks `layer_start..layer_end` (empty when unsteered).
    pub band: String,
    pub layer_start: i64,
    pub layer_end: i64,
    pub strength: f64,
    /// Assistant reply index of the conversation.
    pub conversation: i64,
    /// Whether anything was added (a vector, a band and a strength > 0).
    pub steered: bool,
    pub p_yes: f64,
    pub p_no: f64,
    pub log_odds: f64,
    /// `p_yes > p_no`.
    pub says_yes: bool,
    /// Detection: `says_yes == steered`; control: `!says_yes`.
    pub correct: bool,
    /// The same conversation and question unsteered (same model), and the differences to it.
    pub clean_p_yes: f64,
    pub clean_log_odds: f64,
    pub delta_p_yes: f64,
    pub delta_log_odds: f64,
}

/// Per group (model, info, question, tier, band, strength): the share saying yes and the share
/// correct with Wilson intervals, the mean P(yes) and the mean changes against the clean runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SummaryRow {
    pub model: String,
    pub info: bool,
    pub question: String,
    pub tier: String,
    pub band: String,
    pub strength: f64,
    pub n: i64,
    pub yes_rate: f64,
    pub yes_lo: f64,
    pub yes_hi: f64,
    pub accuracy: f64,
    pub acc_lo: f64,
    pub acc_hi: f64,
    pub mean_p_yes: f64,
    pub mean_delta_p_yes: f64,
    pub mean_delta_log_odds: f64,
}

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = xs.collect();
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// The Wilson 95 % interval of `k / n` (NaNs for `n = 0`).
pub fn rate(k: usize, n: usize) -> Proportion {
    wilson(k, n, 0.95).unwrap_or(Proportion { k, n, estimate: f64::NAN, lo: f64::NAN, hi: f64::NAN })
}

/// [`SummaryRow`]s of `rows`, sorted by their keys.
pub fn summarize(rows: &[ReadoutRow]) -> Vec<SummaryRow> {
    let mut groups: BTreeMap<(String, bool, String, String, String, i64), Vec<&ReadoutRow>> = BTreeMap::new();
    for r in rows {
        let key = (r.model.clone(), r.info, r.question.clone(), r.tier.clone(), r.band.clone(), (r.strength * 1e6).round() as i64);
        groups.entry(key).or_default().push(r);
    }
    groups
        .into_iter()
        .map(|((model, info, question, tier, band, _), g)| {
            let n = g.len();
            let y = rate(g.iter().filter(|r| r.says_yes).count(), n);
            let a = rate(g.iter().filter(|r| r.correct).count(), n);
            SummaryRow {
                model,
                info,
                question,
                tier,
                band,
                strength: g[0].strength,
                n: n as i64,
                yes_rate: y.estimate,
                yes_lo: y.lo,
                yes_hi: y.hi,
                accuracy: a.estimate,
                acc_lo: a.lo,
                acc_hi: a.hi,
                mean_p_yes: mean(g.iter().map(|r| r.p_yes)),
                mean_delta_p_yes: mean(g.iter().map(|r| r.delta_p_yes)),
                mean_delta_log_odds: mean(g.iter().map(|r| r.delta_log_odds)),
            }
        })
        .collect()
}

/// Detection per (model, info, tier): the balanced accuracy set (each steered row of the tier
/// with the clean run of its conversation: `2m` answers), the detection rate on the steered rows
/// (TPR), the false-positive rate over the distinct unsteered conversations, and the yes-bias:
/// the share of control questions answered yes, unsteered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TierRow {
    pub model: String,
    pub info: bool,
    pub tier: String,
    pub n_steered: i64,
    pub accuracy: f64,
    pub acc_lo: f64,
    pub acc_hi: f64,
    pub tpr: f64,
    pub tpr_lo: f64,
    pub tpr_hi: f64,
    pub n_unsteered: i64,
    pub fpr: f64,
    pub fpr_lo: f64,
    pub fpr_hi: f64,
    pub n_controls: i64,
    pub control_yes_rate: f64,
    pub control_yes_lo: f64,
    pub control_yes_hi: f64,
    pub control_mean_p_yes: f64,
}

/// [`TierRow`]s of `rows` (detection rows with strength 0 are left out: they are law checks).
pub fn tier_accuracy(rows: &[ReadoutRow]) -> Vec<TierRow> {
    let mut keys: Vec<(String, bool, String)> =
        rows.iter().filter(|r| r.question == "detect" && r.steered).map(|r| (r.model.clone(), r.info, r.tier.clone())).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .map(|(model, info, tier)| {
            let of_model = |r: &&ReadoutRow| r.model == model && r.info == info;
            let clean: Vec<&ReadoutRow> = rows.iter().filter(of_model).filter(|r| r.question == "detect" && r.tier == "unsteered").collect();
            let steered: Vec<&ReadoutRow> = rows.iter().filter(of_model).filter(|r| r.question == "detect" && r.steered && r.tier == tier).collect();
            let clean_correct = |conv: i64| clean.iter().find(|c| c.conversation == conv).map(|c| c.correct);
            let (mut k, mut n) = (0, 0);
            for s in &steered {
                k += s.correct as usize;
                n += 1;
                if let Some(c) = clean_correct(s.conversation) {
                    k += c as usize;
                    n += 1;
                }
            }
            let acc = rate(k, n);
            let tpr = rate(steered.iter().filter(|r| r.says_yes).count(), steered.len());
            let fpr = rate(clean.iter().filter(|r| r.says_yes).count(), clean.len());
            let controls: Vec<&ReadoutRow> = rows.iter().filter(of_model).filter(|r| r.question == "control" && !r.steered).collect();
            let cy = rate(controls.iter().filter(|r| r.says_yes).count(), controls.len());
            TierRow {
                model: model.clone(),
                info,
                tier,
                n_steered: steered.len() as i64,
                accuracy: acc.estimate,
                acc_lo: acc.lo,
                acc_hi: acc.hi,
                tpr: tpr.estimate,
                tpr_lo: tpr.lo,
                tpr_hi: tpr.hi,
                n_unsteered: clean.len() as i64,
                fpr: fpr.estimate,
                fpr_lo: fpr.lo,
                fpr_hi: fpr.hi,
                n_controls: controls.len() as i64,
                control_yes_rate: cy.estimate,
                control_yes_lo: cy.lo,
                control_yes_hi: cy.hi,
                control_mean_p_yes: mean(controls.iter().map(|r| r.p_yes)),
            }
        })
        .collect()
}

/// One answer of a localisation task (`tasks.parquet`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskRow {
    pub model: String,
    pub task: String,
    pub index: i64,
    pub conversation: i64,
    pub band: String,
    pub strength: f64,
    pub vector_kind: String,
    pub vector_id: i64,
    /// Steered token count.
    pub n_steered_tokens: i64,
    pub truth: String,
    /// The generated answer and its canonical reading (`""` with `parsed_ok = false` when it
    /// could not be read).
    pub answer: String,
    pub parsed: String,
    pub parsed_ok: bool,
    pub correct: bool,
    /// Sentence task: Jaccard overlap of the named and the steered sentences (NaN otherwise or
    /// when unparseable).
    pub jaccard: f64,
    /// The chance of a right answer by guessing uniformly among the task's answers.
    pub chance: f64,
}

/// Per (model, task): parse rate and accuracy with Wilson intervals, against chance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskSummary {
    pub model: String,
    pub task: String,
    pub n: i64,
    pub parsed_rate: f64,
    pub accuracy: f64,
    pub acc_lo: f64,
    pub acc_hi: f64,
    pub chance: f64,
    pub mean_jaccard: f64,
}

pub fn task_summary(rows: &[TaskRow]) -> Vec<TaskSummary> {
    let mut groups: BTreeMap<(String, String), Vec<&TaskRow>> = BTreeMap::new();
    for r in rows {
        groups.entry((r.model.clone(), r.task.clone())).or_default().push(r);
    }
    groups
        .into_iter()
        .map(|((model, task), g)| {
            let n = g.len();
            let a = rate(g.iter().filter(|r| r.correct).count(), n);
            TaskSummary {
                model,
                task,
                n: n as i64,
                parsed_rate: g.iter().filter(|r| r.parsed_ok).count() as f64 / n as f64,
                accuracy: a.estimate,
                acc_lo: a.lo,
                acc_hi: a.hi,
                chance: mean(g.iter().map(|r| r.chance)),
                mean_jaccard: mean(g.iter().map(|r| r.jaccard).filter(|x| x.is_finite())),
            }
        })
        .collect()
}

/// The chance of guessing a sentence answer: one of the non-empty subsets of size 1-3 of
/// `n` sentences, uniformly.
pub fn sentence_chance(n: usize) -> f64 {
    let c = |k: usize| (0..k).fold(1.0, |a, i| a * (n - i) as f64 / (i + 1) as f64);
    1.0 / (c(1) + c(2) + c(3))
}

/// Per head, the attention mass from the question's positions onto the steered ones.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttnRow {
    pub model: String,
    pub steered: bool,
    pub row: i64,
    pub layer: i64,
    pub head: i64,
    /// Mean over the question's query positions of the attention on the steered keys.
    pub mass: f64,
}

/// The Frobenius norm of one LoRA module's `ΔW = scaling · B A`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NormRow {
    pub adapter: String,
    pub module: String,
    pub layer: i64,
    /// `q_proj`, `k_proj`, ...
    pub kind: String,
    pub delta_norm: f64,
}

/// The logit lens at the answer position: P(yes), P(no) read from each block's residual stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LensRow {
    pub model: String,
    pub steered: bool,
    pub row: i64,
    pub layer: i64,
    pub p_yes: f64,
    pub p_no: f64,
}

/// Mean of `f` over the rows of each key, as `(key, mean, n)`, sorted by key.
pub fn mean_by<R, K: Ord + Clone>(rows: &[R], key: impl Fn(&R) -> K, f: impl Fn(&R) -> f64) -> Vec<(K, f64, usize)> {
    let mut g: BTreeMap<K, Vec<f64>> = BTreeMap::new();
    for r in rows {
        g.entry(key(r)).or_default().push(f(r));
    }
    g.into_iter().map(|(k, v)| (k, v.iter().sum::<f64>() / v.len() as f64, v.len())).collect()
}

/// Per (model, layer, head): the mean attention mass on the steered positions, steered and clean,
/// and their difference (`attention_summary.csv`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttnSummary {
    pub model: String,
    pub layer: i64,
    pub head: i64,
    pub mass_steered: f64,
    pub mass_clean: f64,
    pub diff: f64,
}

pub fn attention_summary(rows: &[AttnRow]) -> Result<Vec<AttnSummary>> {
    let m = mean_by(rows, |r| (r.model.clone(), r.layer, r.head, r.steered), |r| r.mass);
    let mut out = vec![];
    for ((model, layer, head, steered), v, _) in &m {
        if !*steered {
            continue;
        }
        let clean = m.iter().find(|(k, _, _)| k.0 == *model && k.1 == *layer && k.2 == *head && !k.3).map(|x| x.1).unwrap_or(f64::NAN);
        out.push(AttnSummary { model: model.clone(), layer: *layer, head: *head, mass_steered: *v, mass_clean: clean, diff: v - clean });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(tier: &str, conv: i64, steered: bool, yes: bool, question: &str) -> ReadoutRow {
        ReadoutRow {
            model: "base".into(),
            info: false,
            question: question.into(),
            control: if question == "control" { 0 } else { -1 },
            tier: tier.into(),
            vector_id: if steered { 1 } else { -1 },
            label: String::new(),
            band: if steered { "middle".into() } else { String::new() },
            layer_start: 0,
            layer_end: 0,
            strength: if steered { 10.0 } else { 0.0 },
            conversation: conv,
            steered,
            p_yes: if yes { 0.7 } else { 0.2 },
            p_no: if yes { 0.2 } else { 0.7 },
            log_odds: 0.0,
            says_yes: yes,
            correct: if question == "control" { !yes } else { yes == steered },
            clean_p_yes: 0.2,
            clean_log_odds: 0.0,
            delta_p_yes: if yes { 0.5 } else { 0.0 },
            delta_log_odds: 0.0,
        }
    }

    #[test]
    fn tier_accuracy_pairs_each_steered_row_with_its_clean_run() {
        let rows = vec![
            row("unsteered", 0, false, false, "detect"),
            row("unsteered", 1, false, true, "detect"),
            row("random", 0, true, true, "detect"),
            row("random", 1, true, true, "detect"),
            row("random", 1, true, false, "detect"),
            row("unsteered", 0, false, true, "control"),
            row("unsteered", 1, false, false, "control"),
        ];
        let t = tier_accuracy(&rows);
        assert_eq!(t.len(), 1);
        let t = &t[0];
        // steered correct 2 of 3; their clean runs: conv 0 correct, conv 1 (says yes) wrong twice
        assert_eq!(t.n_steered, 3);
        assert!((t.accuracy - 3.0 / 6.0).abs() < 1e-12);
        let w = wilson(3, 6, 0.95).unwrap();
        assert_eq!((t.acc_lo, t.acc_hi), (w.lo, w.hi));
        assert!((t.tpr - 2.0 / 3.0).abs() < 1e-12);
        assert!((t.fpr - 0.5).abs() < 1e-12 && t.n_unsteered == 2);
        assert!((t.control_yes_rate - 0.5).abs() < 1e-12 && t.n_controls == 2);
        let s = summarize(&rows);
        let r = s.iter().find(|s| s.tier == "random").unwrap();
        assert_eq!(r.n, 3);
        assert!((r.yes_rate - 2.0 / 3.0).abs() < 1e-12 && (r.mean_delta_p_yes - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn sentence_chance_counts_the_subsets() {
        // 10 + 45 + 120 answers of one to three sentences
        assert!((sentence_chance(10) - 1.0 / 175.0).abs() < 1e-15);
        let m = mean_by(&[1.0, 2.0, 4.0], |x| (*x > 1.5) as i32, |x| *x);
        assert_eq!(m, vec![(0, 1.0, 1), (1, 3.0, 2)]);
    }
}
