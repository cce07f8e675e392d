//! The steering-reliability study (seed 004) as kit functions: the notebooks in
//! `notebooks/steering_reliability/` are a params cell and calls into this module.
//!
//! Flow: [`Study::open`] (config, model, prompt splits) → [`Study::directions`] (contrastive
//! forced-prefix direction per layer, from `harm_train`) → [`Study::run_sweep`] (baseline and
//! every split × layer × intervention × α cell, resumable, one row per prompt) → [`summarize`],
//! [`pareto_table`], [`figures`], [`examples_report`] over the collected `results.parquet`.
//!
//! Conventions:
//! - `alpha = 0` rows are the baseline rows relabelled (`add(v, 0)` and `ablate(v, 0)` are exactly
//!   no intervention, a law the tests check), so the sweep generates them once; column
//!   `shared_baseline` marks them.
//! - A prompt's sampling seed depends on the prompt's index in its split and on the sample number,
//!   never on the batch it lands in: `seed + 1000 · sample + index`.
//! - Rows of the baseline have `layer = -1` and `intervention = "none"`.
pub mod config;
pub mod data;

pub use self::config::PrefixSet;
use self::config::{ResolvedPlan, StudyConfig};
use self::data::Split;
use crate::runs::Mode;
use crate::text::records::PromptRecord;
use crate::interp::directions::{contrastive_prefix, ContrastiveResult, Direction, PromptFormat, PromptIds};
use crate::generate::GenerateConfig;
use crate::eval::metrics::{confounds, helpfulness, refusal};
use crate::model::Model;
use crate::viz::plots::{self, Figure};
use crate::runs::RunDir;
use crate::interp::steer::{hooks_for, Intervention, Op};
use anyhow::{bail, ensure, Context, Result};
use crate::tables::to_df_with_header;
use polars::prelude::DataFrame;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One generated completion with its metrics: a row of `results.parquet`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Row {
    /// `main`, `sanity_alt_prefix` or `sanity_alt_seed`.
    pub run: String,
    pub split: String,
    pub prompt_id: String,
    pub family: String,
    pub style: String,
    /// Block index of the hook point, -1 for the baseline.
    pub layer: i64,
    /// `none`, `add` or `ablate`.
    pub intervention: String,
    pub alpha: f64,
    pub sample: i64,
    pub seed: i64,
    pub shared_baseline: bool,
    pub prompt: String,
    pub completion: String,
    pub n_tokens: i64,
    pub mean_entropy: f64,
    pub mean_logprob: f64,
    pub stopped_at_eos: bool,
    pub refusal_score: f64,
    pub is_refusal: bool,
    /// Matched refusal phrases, `|`-separated.
    pub refusal_matched: String,
    pub helpfulness_score: f64,
    pub is_helpful: bool,
}

/// A sweep cell: one split under one intervention setting.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Cell {
    pub run: String,
    pub split: String,
    pub layer: i64,
    pub intervention: String,
    pub alpha: f64,
    pub sample: i64,
}

/// A loaded study: config, resolved plan, model and prompt splits.
pub struct Study {
    pub cfg: StudyConfig,
    pub plan: ResolvedPlan,
    pub model: Model,
    pub splits: BTreeMap<Split, Vec<PromptRecord>>,
    encoded: BTreeMap<Split, Vec<PromptIds>>,
}

impl Study {
    /// Loads the config's model and splits (truncated to the mode's sizes) and checks the plan
    /// against the model. An empty split is an error.
    pub fn open(cfg: StudyConfig) -> Result<Study> {
        let model = cfg.load_model().context("loading the study's model")?;
        Self::with_model(cfg, model)
    }

    /// Like [`Study::open`] with a model already loaded (the notebooks keep one per kernel).
    pub fn with_model(cfg: StudyConfig, model: Model) -> Result<Study> {
        let plan = cfg.resolve(&model.info)?;
        let format = Self::format_of(&cfg, &model);
        let mut splits = BTreeMap::new();
        let mut encoded = BTreeMap::new();
        for s in Split::ALL {
            let recs = cfg.load_split(s).with_context(|| format!("split {}", s.name()))?;
            ensure!(!recs.is_empty(), "split {} is empty ({})", s.name(), cfg.data_path(s).display());
            let texts: Vec<&str> = recs.iter().map(|r| r.prompt.as_str()).collect();
            let ids = PromptIds::encode_all(&model, &texts, &format).with_context(|| format!("split {}", s.name()))?;
            splits.insert(s, recs);
            encoded.insert(s, ids);
        }
        Ok(Study { cfg, plan, model, splits, encoded })
    }

    fn format_of(cfg: &StudyConfig, model: &Model) -> PromptFormat {
        let has_template = model.tokenizer.as_ref().is_some_and(|t| t.chat_template().is_some());
        if cfg.model.chat && has_template {
            PromptFormat::Chat { system: cfg.model.system_prompt.clone() }
        } else {
            PromptFormat::Plain
        }
    }

    /// How prompts are given to the model (chat template or plain text).
    pub fn format(&self) -> PromptFormat {
        Self::format_of(&self.cfg, &self.model)
    }

    pub fn prompts(&self, split: Split) -> &[PromptIds] {
        &self.encoded[&split]
    }

    /// The contrastive forced-prefix direction (plan §7.1) at every layer of the plan, from the
    /// `harm_train` prompts; `alt_prefixes` uses the sanity check's prefixes.
    pub fn directions(&self, prefixes: PrefixSet) -> Result<BTreeMap<usize, ContrastiveResult>> {
        let c = self.cfg.contrastive(prefixes)?;
        let res = contrastive_prefix(&self.model, self.prompts(Split::HarmTrain), &self.plan.hook_points, &c)?;
        Ok(self.plan.layers.iter().copied().zip(res).collect())
    }

    /// The steering direction of a contrastive result, scaled as the config says.
    pub fn steering_direction(&self, r: &ContrastiveResult) -> Result<Direction> {
        r.scaled(self.cfg.direction.scale)
    }

    /// Generates every prompt of `split` (the first `limit` if given) under `interventions`,
    /// batched, and scores the completions. `sample` picks the seed (see the module docs).
    pub fn generate(
        &self,
        split: Split,
        interventions: &[Intervention],
        sample: usize,
        seed_base: Option<u64>,
        limit: Option<usize>,
    ) -> Result<Vec<Row>> {
        let prompts = self.prompts(split);
        let recs = &self.splits[&split];
        let n = limit.map_or(prompts.len(), |l| l.min(prompts.len()));
        ensure!(n > 0, "split {} has no prompts to generate", split.name());
        let base: GenerateConfig = self.cfg.generate_config(sample);
        let seed0 = seed_base.unwrap_or(self.cfg.generation.seed) + 1000 * sample as u64;
        let bs = self.cfg.generation.batch_size.max(1);
        let hooks = hooks_for(interventions, &self.model)?;
        let mut rows = Vec::with_capacity(n);
        for start in (0..n).step_by(bs) {
            let end = (start + bs).min(n);
            let ids: Vec<Vec<u32>> = prompts[start..end].iter().map(|p| p.ids.clone()).collect();
            let gcfg = GenerateConfig { seeds: Some((start..end).map(|i| seed0 + i as u64).collect()), ..base.clone() };
            let gens = self.model.generate(&ids, &gcfg, &hooks).with_context(|| format!("split {} prompts {start}..{end}", split.name()))?;
            for (i, g) in (start..end).zip(gens) {
                let r = refusal(&g.text);
                let h = helpfulness(&g.text);
                let c = confounds(&g);
                rows.push(Row {
                    run: "main".into(),
                    split: split.name().into(),
                    prompt_id: recs[i].id.clone(),
                    family: recs[i].meta.family.clone(),
                    style: recs[i].meta.style.clone(),
                    layer: -1,
                    intervention: "none".into(),
                    alpha: 0.0,
                    sample: sample as i64,
                    seed: (seed0 + i as u64) as i64,
                    shared_baseline: false,
                    prompt: recs[i].prompt.clone(),
                    completion: g.text.clone(),
                    n_tokens: c.n_tokens as i64,
                    mean_entropy: c.mean_entropy.unwrap_or(f64::NAN),
                    mean_logprob: c.mean_logprob.unwrap_or(f64::NAN),
                    stopped_at_eos: c.stopped_at_eos,
                    refusal_score: r.score,
                    is_refusal: r.is_refusal,
                    refusal_matched: r.matched.join("|"),
                    helpfulness_score: h.score,
                    is_helpful: h.is_helpful,
                });
            }
        }
        Ok(rows)
    }

    /// The intervention of a cell at `layer` with direction `dir`.
    pub fn intervention(&self, op: Op, dir: &Direction, alpha: f64) -> Result<Intervention> {
        let positions = self.cfg.positions()?;
        Ok(Intervention::new(op, dir, alpha).positions(positions))
    }

    /// The main grid of plan §9.2 plus the baseline, resumable in `run`'s `sweep/` directory.
    /// `dirs` are the directions of [`Study::directions`]. Returns the collected table, also
    /// written to `results.parquet`.
    pub fn run_sweep(&self, run: &RunDir, dirs: &BTreeMap<usize, ContrastiveResult>) -> Result<DataFrame> {
        let mut cells = vec![];
        for s in Split::ALL {
            cells.push(Cell { run: "main".into(), split: s.name().into(), layer: -1, intervention: "none".into(), alpha: 0.0, sample: 0 });
        }
        for &l in &self.plan.layers {
            for op in &self.plan.interventions {
                for &a in &self.plan.alphas {
                    for s in Split::ALL {
                        cells.push(Cell { run: "main".into(), split: s.name().into(), layer: l as i64, intervention: op.to_string(), alpha: a, sample: 0 });
                    }
                }
            }
        }
        self.run_cells(run, "main", cells, dirs, None, None)
    }

    /// Sanity checks of plan §9.3 on the middle layer of the plan at `alpha` (ablation and
    /// addition): (1) alternative prefixes (`alt_dirs`), (2) an alternative seed, each on the
    /// first `rerun_subset_n` prompts of every split. Rows go to `sanity.parquet`.
    pub fn run_sanity(&self, run: &RunDir, alt_dirs: &BTreeMap<usize, ContrastiveResult>, dirs: &BTreeMap<usize, ContrastiveResult>, alpha: f64) -> Result<DataFrame> {
        let layer = self.plan.layers[self.plan.layers.len() / 2] as i64;
        let n = self.cfg.sanity_checks.rerun_subset_n;
        let mut cells = vec![];
        for run_name in ["sanity_alt_prefix", "sanity_alt_seed"] {
            for s in Split::ALL {
                if run_name == "sanity_alt_seed" {
                    cells.push(Cell { run: run_name.into(), split: s.name().into(), layer: -1, intervention: "none".into(), alpha: 0.0, sample: 0 });
                }
                for op in &self.plan.interventions {
                    cells.push(Cell { run: run_name.into(), split: s.name().into(), layer, intervention: op.to_string(), alpha, sample: 0 });
                }
            }
        }
        let mut out: Option<DataFrame> = None;
        for (name, d, seed) in [
            ("sanity_alt_prefix", alt_dirs, None),
            ("sanity_alt_seed", dirs, Some(self.cfg.sanity_checks.alt_seed)),
        ] {
            let these: Vec<Cell> = cells.iter().filter(|c| c.run == name).cloned().collect();
            let df = self.run_cells(run, name, these, d, seed, Some(n))?;
            out = Some(match out {
                None => df,
                Some(o) => o.vstack(&df)?,
            });
        }
        let df = out.expect("two runs");
        run.write_parquet("sanity.parquet", &df)?;
        Ok(df)
    }

    fn run_cells(
        &self,
        run: &RunDir,
        name: &str,
        cells: Vec<Cell>,
        dirs: &BTreeMap<usize, ContrastiveResult>,
        seed: Option<u64>,
        limit: Option<usize>,
    ) -> Result<DataFrame> {
        let mut sweep = run.sweep::<Cell>(name)?;
        let mut baseline: BTreeMap<String, Vec<Row>> = BTreeMap::new();
        sweep.run(cells, |c| {
            let split: Split = c.split.parse()?;
            let rows = if c.intervention == "none" {
                self.generate(split, &[], c.sample as usize, seed, limit)?
            } else if c.alpha == 0.0 && name == "main" {
                // add(v, 0) == ablate(v, 0) == no intervention: relabel the baseline rows.
                let b = match baseline.get(&c.split) {
                    Some(b) => b.clone(),
                    None => {
                        let b = match sweep_cell_rows(run, name, &c.split)? {
                            Some(b) => b,
                            None => self.generate(split, &[], c.sample as usize, seed, limit)?,
                        };
                        baseline.insert(c.split.clone(), b.clone());
                        b
                    }
                };
                b.into_iter().map(|r| Row { shared_baseline: true, ..r }).collect()
            } else {
                let l = c.layer as usize;
                let r = dirs.get(&l).with_context(|| format!("no direction for layer {l}"))?;
                let dir = self.steering_direction(r)?;
                let op: Op = c.intervention.parse()?;
                let iv = self.intervention(op, &dir, c.alpha)?;
                self.generate(split, &[iv], c.sample as usize, seed, limit)?
            };
            let rows: Vec<Row> = rows
                .into_iter()
                .map(|r| Row { run: c.run.clone(), layer: c.layer, intervention: c.intervention.clone(), alpha: c.alpha, ..r })
                .collect();
            rows_to_df(&rows)
        })?;
        let df = sweep.collect()?;
        if name == "main" {
            run.write_parquet("results.parquet", &df)?;
        }
        Ok(df)
    }
}

/// The baseline rows of `split` if the sweep already saved them (resume without regenerating).
fn sweep_cell_rows(run: &RunDir, name: &str, split: &str) -> Result<Option<Vec<Row>>> {
    let sweep = run.sweep::<Cell>(name)?;
    let key = Cell { run: name.into(), split: split.into(), layer: -1, intervention: "none".into(), alpha: 0.0, sample: 0 };
    match sweep.cell(&key)? {
        Some(df) => Ok(Some(rows_from_df(&df)?)),
        None => Ok(None),
    }
}

/// Rows as a polars table (one column per field, in field order).
pub fn rows_to_df(rows: &[Row]) -> Result<DataFrame> {
    crate::tables::to_df(rows)
}

/// The rows of a results table written by [`rows_to_df`].
pub fn rows_from_df(df: &DataFrame) -> Result<Vec<Row>> {
    crate::tables::from_df(df)
}

/// Rates of one cell (run × split × layer × intervention × α).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CellRates {
    pub run: String,
    pub split: String,
    pub layer: i64,
    pub intervention: String,
    pub alpha: f64,
    pub n: usize,
    pub refusal_rate: f64,
    pub helpful_rate: f64,
    pub mean_refusal_score: f64,
    /// Share of completions whose degeneracy score is at or above its threshold
    /// ([`crate::eval::degeneracy`]), computed from the completion texts.
    pub degenerate_rate: f64,
    pub mean_tokens: f64,
    pub mean_entropy: f64,
    pub mean_logprob: f64,
}

/// Per-cell rates of a results table.
pub fn cell_rates(rows: &[Row]) -> Vec<CellRates> {
    let mut groups: BTreeMap<(String, String, i64, String, i64), Vec<&Row>> = BTreeMap::new();
    for r in rows {
        groups
            .entry((r.run.clone(), r.split.clone(), r.layer, r.intervention.clone(), (r.alpha * 1e6).round() as i64))
            .or_default()
            .push(r);
    }
    let mean = |v: &[&Row], f: &dyn Fn(&Row) -> f64| -> f64 {
        let xs: Vec<f64> = v.iter().map(|r| f(r)).filter(|x| x.is_finite()).collect();
        if xs.is_empty() { f64::NAN } else { xs.iter().sum::<f64>() / xs.len() as f64 }
    };
    groups
        .into_iter()
        .map(|((run, split, layer, iv, a), v)| CellRates {
            run,
            split,
            layer,
            intervention: iv,
            alpha: a as f64 / 1e6,
            n: v.len(),
            refusal_rate: mean(&v, &|r| r.is_refusal as u8 as f64),
            helpful_rate: mean(&v, &|r| r.is_helpful as u8 as f64),
            mean_refusal_score: mean(&v, &|r| r.refusal_score),
            degenerate_rate: mean(&v, &|r| crate::eval::degeneracy::degeneracy(&r.completion).is_degenerate as u8 as f64),
            mean_tokens: mean(&v, &|r| r.n_tokens as f64),
            mean_entropy: mean(&v, &|r| r.mean_entropy),
            mean_logprob: mean(&v, &|r| r.mean_logprob),
        })
        .collect()
}

/// One operating point (layer × intervention × α) of the main run across splits; also a row of
/// [`summary_table`].
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct OperatingPoint {
    pub layer: i64,
    pub intervention: String,
    pub alpha: f64,
    pub refusal_train: f64,
    pub refusal_test: f64,
    /// `refusal_rate(harm_train) − refusal_rate(harm_test)`.
    pub generalization_gap: f64,
    pub helpful_benign: f64,
    /// `helpful_rate(benign, baseline) − helpful_rate(benign, this)`.
    pub benign_helpfulness_drop: f64,
    /// Refusal rate on benign prompts (false refusals).
    pub benign_false_refusal: f64,
    pub benign_mean_tokens: f64,
    pub benign_mean_entropy: f64,
    /// The largest degenerate-completion rate of the three splits.
    pub degenerate_rate: f64,
    pub pareto: bool,
}

/// Operating points of the main run, with the Pareto frontier of (maximise harm_test refusal,
/// minimise benign helpfulness drop) marked. The baseline is the row with `layer = -1`.
pub fn operating_points(rates: &[CellRates]) -> Result<Vec<OperatingPoint>> {
    let main: Vec<&CellRates> = rates.iter().filter(|r| r.run == "main").collect();
    let get = |split: &str, layer: i64, iv: &str, a: f64| main.iter().find(|r| r.split == split && r.layer == layer && r.intervention == iv && (r.alpha - a).abs() < 1e-9).copied();
    let base_b = get("benign", -1, "none", 0.0).context("the results have no baseline cell for benign")?;
    let mut keys: Vec<(i64, String, f64)> = main.iter().map(|r| (r.layer, r.intervention.clone(), r.alpha)).collect();
    keys.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.total_cmp(&b.2)));
    keys.dedup();
    let mut pts = vec![];
    for (l, iv, a) in keys {
        let (Some(tr), Some(te), Some(be)) = (get("harm_train", l, &iv, a), get("harm_test", l, &iv, a), get("benign", l, &iv, a)) else {
            continue;
        };
        pts.push(OperatingPoint {
            layer: l,
            intervention: iv,
            alpha: a,
            refusal_train: tr.refusal_rate,
            refusal_test: te.refusal_rate,
            generalization_gap: tr.refusal_rate - te.refusal_rate,
            helpful_benign: be.helpful_rate,
            benign_helpfulness_drop: base_b.helpful_rate - be.helpful_rate,
            benign_false_refusal: be.refusal_rate,
            benign_mean_tokens: be.mean_tokens,
            benign_mean_entropy: be.mean_entropy,
            degenerate_rate: tr.degenerate_rate.max(te.degenerate_rate).max(be.degenerate_rate),
            pareto: false,
        });
    }
    ensure!(!pts.is_empty(), "no operating point has all three splits");
    let objs: Vec<Vec<f64>> = pts.iter().map(|p| vec![p.refusal_test, p.benign_helpfulness_drop]).collect();
    let front = crate::eval::stats::pareto_front(&objs, &[true, false])?;
    for i in front {
        pts[i].pareto = true;
    }
    Ok(pts)
}

/// `summary.csv` of plan §10: baseline rates, every operating point with its Pareto flag and
/// benign false-refusal stats, as a table. Columns: the fields of [`OperatingPoint`].
pub fn summary_table(points: &[OperatingPoint]) -> Result<DataFrame> {
    to_df_with_header(points)
}

/// The figures of plan §10: generalisation gap vs α, the trade-off curve, and layer × α heatmaps
/// (harm_test refusal, benign helpfulness) per intervention. Keys are file stems.
pub fn figures(points: &[OperatingPoint]) -> Result<Vec<(String, Figure)>> {
    let mut out = vec![];
    let mut ivs: Vec<String> = points.iter().filter(|p| p.layer >= 0).map(|p| p.intervention.clone()).collect();
    ivs.sort();
    ivs.dedup();
    let mut layers: Vec<i64> = points.iter().filter(|p| p.layer >= 0).map(|p| p.layer).collect();
    layers.sort();
    layers.dedup();
    let base = points.iter().find(|p| p.layer < 0);
    let mut gap = plots::line_plot("Generalisation gap vs alpha", "alpha", "refusal rate (harm_train) - refusal rate (harm_test)");
    let mut trade = plots::scatter_plot("Trade-off: OOD refusal vs benign helpfulness drop", "refusal rate on harm_test", "benign helpfulness drop");
    for iv in &ivs {
        for &l in &layers {
            let mut ps: Vec<&OperatingPoint> = points.iter().filter(|p| &p.intervention == iv && p.layer == l).collect();
            ps.sort_by(|a, b| a.alpha.total_cmp(&b.alpha));
            if ps.is_empty() {
                continue;
            }
            let name = format!("{iv} @ layer {l}");
            gap = gap.series(plots::Series::new(name.clone(), ps.iter().map(|p| p.alpha), ps.iter().map(|p| p.generalization_gap)));
            trade = trade.series(
                plots::Series::new(name, ps.iter().map(|p| p.refusal_test), ps.iter().map(|p| p.benign_helpfulness_drop))
                    .labels(ps.iter().map(|p| format!("a={}", p.alpha)))
                    .connect(true),
            );
        }
    }
    if let Some(b) = base {
        gap = gap.hline(b.generalization_gap);
    }
    out.push(("gap_vs_alpha".to_string(), gap.build()?));
    out.push(("tradeoff".to_string(), trade.build()?));
    let mut alphas: Vec<f64> = points.iter().filter(|p| p.layer >= 0).map(|p| p.alpha).collect();
    alphas.sort_by(|a, b| a.total_cmp(b));
    alphas.dedup_by(|a, b| (*a - *b).abs() < 1e-9);
    for iv in &ivs {
        for (stem, title, f) in [
            ("heatmap_refusal_harm_test", "refusal rate on harm_test", (|p: &OperatingPoint| p.refusal_test) as fn(&OperatingPoint) -> f64),
            ("heatmap_helpful_benign", "helpful rate on benign", |p: &OperatingPoint| p.helpful_benign),
        ] {
            let rows: Vec<String> = layers.iter().map(|l| format!("layer {l}")).collect();
            let cols: Vec<String> = alphas.iter().map(|a| format!("{a}")).collect();
            let values: Vec<Vec<f64>> = layers
                .iter()
                .map(|&l| {
                    alphas
                        .iter()
                        .map(|&a| points.iter().find(|p| p.layer == l && &p.intervention == iv && (p.alpha - a).abs() < 1e-9).map_or(f64::NAN, f))
                        .collect()
                })
                .collect();
            let m = crate::tables::Matrix::new(rows, cols, values);
            let fig = plots::heatmap(format!("{title} ({iv}), layer x alpha"), "alpha", "layer", m)
                .annotate(Some(2))
                .range(0.0, 1.0)
                .allow_missing(true)
                .colorbar_label(title)
                .build()?;
            out.push((format!("{stem}_{iv}"), fig));
        }
    }
    Ok(out)
}

/// `reports/examples.md`: `per_split` prompts per split, baseline vs the steered completion at
/// (`layer`, `intervention`, `alpha`), with refusal / helpfulness scores and matched phrases.
pub fn examples_report(rows: &[Row], layer: i64, intervention: &str, alpha: f64, per_split: usize) -> Result<String> {
    let mut md = String::new();
    md.push_str("# Steering reliability: examples\n\n");
    md.push_str(&format!("Baseline vs `{intervention}` at layer {layer}, alpha = {alpha}. Scores: refusal score in [0, 1] (matched phrases), helpfulness score in [0, 1].\n\n"));
    let main: Vec<&Row> = rows.iter().filter(|r| r.run == "main").collect();
    let mut any = false;
    for s in Split::ALL {
        md.push_str(&format!("## {}\n\n", s.name()));
        let base: Vec<&&Row> = main.iter().filter(|r| r.split == s.name() && r.layer == -1).take(per_split).collect();
        for b in base {
            let Some(st) = main.iter().find(|r| r.split == s.name() && r.prompt_id == b.prompt_id && r.layer == layer && r.intervention == intervention && (r.alpha - alpha).abs() < 1e-9) else {
                continue;
            };
            any = true;
            md.push_str(&format!("### {} ({} / {})\n\n", b.prompt_id, b.family, b.style));
            md.push_str(&format!("**Prompt:** {}\n\n", b.prompt.replace('\n', " ")));
            for (label, r) in [("Baseline", b), ("Steered", st)] {
                md.push_str(&format!(
                    "**{label}** — refusal {:.2}{} (matched: {}), helpfulness {:.2}{}, {} tokens\n\n",
                    r.refusal_score,
                    if r.is_refusal { " (refusal)" } else { "" },
                    if r.refusal_matched.is_empty() { "none".to_string() } else { r.refusal_matched.replace('|', ", ") },
                    r.helpfulness_score,
                    if r.is_helpful { " (helpful)" } else { "" },
                    r.n_tokens
                ));
                md.push_str(&fence(&r.completion));
            }
        }
    }
    if !any {
        bail!("no example rows at layer {layer}, {intervention}, alpha {alpha}: is that cell in the results?");
    }
    Ok(md)
}

/// A fenced block that cannot be closed by the text inside it.
fn fence(text: &str) -> String {
    let mut ticks = 3;
    while text.contains(&"`".repeat(ticks)) {
        ticks += 1;
    }
    let f = "`".repeat(ticks);
    format!("{f}text\n{}\n{f}\n\n", text.trim_end())
}

/// The config file the notebooks read, with the mode overridable by `INTERP_KIT_STUDY_MODE`
/// (`ci`, `fast`, `full`) so that the test command can run the notebooks at CI size.
pub fn load_config(path: impl AsRef<std::path::Path>, mode: Option<Mode>) -> Result<StudyConfig> {
    let mut cfg = StudyConfig::load(path)?;
    if let Some(m) = mode {
        cfg.mode = m;
    }
    if let Some(m) = Mode::from_env()? {
        cfg.mode = m;
    }
    Ok(cfg)
}

/// A row of [`rates_table`]: the displayed subset of a [`CellRates`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RatesRow {
    pub run: String,
    pub split: String,
    /// Block index, -1 for the baseline.
    pub layer: i64,
    pub intervention: String,
    pub alpha: f64,
    /// Completions in the cell.
    pub n: i64,
    /// Share of refusals, of helpful completions.
    pub refusal_rate: f64,
    pub helpful_rate: f64,
    /// Means over the cell's completions (non-finite values left out).
    pub mean_tokens: f64,
    pub mean_entropy: f64,
    pub mean_logprob: f64,
}

/// Per-cell rates as a table (for display and `rates.csv`). Columns: the fields of [`RatesRow`].
pub fn rates_table(rates: &[CellRates]) -> Result<DataFrame> {
    let rows: Vec<RatesRow> = rates
        .iter()
        .map(|r| RatesRow {
            run: r.run.clone(),
            split: r.split.clone(),
            layer: r.layer,
            intervention: r.intervention.clone(),
            alpha: r.alpha,
            n: r.n as i64,
            refusal_rate: r.refusal_rate,
            helpful_rate: r.helpful_rate,
            mean_tokens: r.mean_tokens,
            mean_entropy: r.mean_entropy,
            mean_logprob: r.mean_logprob,
        })
        .collect();
    to_df_with_header(&rows)
}

/// The run directory of a study (`<root>/steering_reliability/<run_id>/`) with its manifest:
/// config, seeds, model id and file hash, device. Reopening with a different config is an error.
pub fn study_run_dir(study: &Study, root: impl AsRef<std::path::Path>, run_id: &str) -> Result<RunDir> {
    let cfg = &study.cfg;
    let b = RunDir::builder(root, "steering_reliability", run_id)
        .config(cfg)?
        .seeds([cfg.generation.seed, cfg.sanity_checks.alt_seed])
        .device(&study.model.device)
        .model_cfg(&cfg.model, &cfg.base_dir)?;
    b.open()
}

/// Saves each layer's steering direction as `<sub>/layer_<l>.safetensors` and those llama.cpp
/// can load as a control-vector GGUF `<sub>/control_vector.gguf`: llama.cpp has no control
/// vector for block 0 (its `direction.0` is rejected), so a block-0 direction is only saved as
/// safetensors, and no GGUF is written when block 0 is the only layer.
pub fn save_directions(study: &Study, run: &RunDir, dirs: &BTreeMap<usize, ContrastiveResult>, sub: &str) -> Result<()> {
    let mut exportable = vec![];
    for (l, r) in dirs {
        let d = study.steering_direction(r)?;
        d.save(run.join(format!("{sub}/layer_{l}.safetensors"))?)?;
        if *l > 0 {
            exportable.push(d);
        }
    }
    if !exportable.is_empty() {
        let cv = crate::interp::directions::ControlVector::from_directions(study.cfg.model.name.clone(), exportable)?;
        cv.export_gguf(run.join(format!("{sub}/control_vector.gguf"))?)?;
    }
    Ok(())
}

/// A row of [`direction_stats_table`]: one layer's [`crate::interp::directions::ContrastiveStats`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DirectionStatsRow {
    pub layer: i64,
    /// Prompt pairs.
    pub n: i64,
    /// `mean_i |d_i|`.
    pub mean_diff_norm: f64,
    /// `|mean_i d_i|`.
    pub norm_of_mean: f64,
    /// `mean_i cos(d_i, mean d)`.
    pub mean_cosine_to_mean: f64,
    /// Cosine between the two halves' mean differences (NaN when not computed).
    pub split_half_cosine: f64,
}

/// Per layer: the contrastive statistics (mean |d_i|, |mean d|, mean cosine of d_i to the mean,
/// split-half cosine). Columns: the fields of [`DirectionStatsRow`].
pub fn direction_stats_table(dirs: &BTreeMap<usize, ContrastiveResult>) -> Result<DataFrame> {
    let rows: Vec<DirectionStatsRow> = dirs
        .iter()
        .map(|(l, r)| DirectionStatsRow {
            layer: *l as i64,
            n: r.stats.n as i64,
            mean_diff_norm: r.stats.mean_diff_norm,
            norm_of_mean: r.stats.norm_of_mean,
            mean_cosine_to_mean: r.stats.mean_cosine_to_mean,
            split_half_cosine: r.stats.split_half_cosine.unwrap_or(f64::NAN),
        })
        .collect();
    to_df_with_header(&rows)
}

/// A row of [`prefix_robustness_table`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PrefixRobustnessRow {
    pub layer: i64,
    /// Cosine between the main direction and the alternative-prefix one at this layer.
    pub cosine_main_vs_alt_prefix: f64,
}

/// Per layer: cosine between the main direction and the one from the alternative prefixes.
/// Columns: the fields of [`PrefixRobustnessRow`].
pub fn prefix_robustness_table(dirs: &BTreeMap<usize, ContrastiveResult>, alt: &BTreeMap<usize, ContrastiveResult>) -> Result<DataFrame> {
    let mut rows = vec![];
    for (l, r) in dirs {
        let a = alt.get(l).with_context(|| format!("no alternative-prefix direction at layer {l}"))?;
        rows.push(PrefixRobustnessRow { layer: *l as i64, cosine_main_vs_alt_prefix: r.direction.cosine(&a.direction)? as f64 });
    }
    to_df_with_header(&rows)
}

/// Operating points with more degenerate completions than this (in any split) are incoherent
/// settings that [`best_point`] never picks.
pub const MAX_DEGENERATE_RATE: f64 = 0.25;

/// The operating point shown in the examples: among coherent steered points (`layer >= 0`,
/// α > 0, `degenerate_rate <= MAX_DEGENERATE_RATE`), the Pareto point with the highest harm_test
/// refusal rate; else the largest-α coherent one. Errors when every steered point is incoherent.
pub fn best_point(points: &[OperatingPoint]) -> Result<OperatingPoint> {
    let steered: Vec<&OperatingPoint> = points.iter().filter(|p| p.layer >= 0 && p.alpha > 0.0).collect();
    ensure!(!steered.is_empty(), "no steered operating point in the results");
    let coherent = steered.iter().copied().filter(|p| p.degenerate_rate <= MAX_DEGENERATE_RATE);
    let best = coherent
        .clone()
        .filter(|p| p.pareto)
        .max_by(|a, b| a.refusal_test.total_cmp(&b.refusal_test))
        .or_else(|| coherent.max_by(|a, b| a.alpha.total_cmp(&b.alpha)));
    best.cloned().with_context(|| {
        format!(
            "every steered operating point ({}) has more than {:.0}% degenerate completions in some split: none is a coherent setting",
            steered.len(),
            100.0 * MAX_DEGENERATE_RATE
        )
    })
}

/// Rates of the sanity runs beside the main run's at the same setting (same prompts only).
pub fn sanity_table(main: &[Row], sanity: &[Row]) -> Result<DataFrame> {
    ensure!(!sanity.is_empty(), "the sanity table is empty: run the sanity checks in notebook 02");
    let ids: std::collections::BTreeSet<(String, String)> = sanity.iter().map(|r| (r.split.clone(), r.prompt_id.clone())).collect();
    let settings: std::collections::BTreeSet<(i64, String, i64)> =
        sanity.iter().map(|r| (r.layer, r.intervention.clone(), (r.alpha * 1e6).round() as i64)).collect();
    let mut rows: Vec<Row> = main
        .iter()
        .filter(|r| r.run == "main" && ids.contains(&(r.split.clone(), r.prompt_id.clone())))
        .filter(|r| settings.contains(&(r.layer, r.intervention.clone(), (r.alpha * 1e6).round() as i64)))
        .cloned()
        .collect();
    rows.extend(sanity.iter().cloned());
    let mut rates = cell_rates(&rows);
    rates.sort_by(|a, b| (a.split.clone(), a.layer, a.intervention.clone(), a.run.clone()).cmp(&(b.split.clone(), b.layer, b.intervention.clone(), b.run.clone())));
    rates_table(&rates)
}

/// A row of [`confound_table`]: one steered operating point's changes from the baseline.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfoundRow {
    pub layer: i64,
    pub intervention: String,
    pub alpha: f64,
    /// Change of the harm_test refusal rate.
    pub d_refusal_test: f64,
    /// Change of the benign mean length (tokens) and mean entropy.
    pub d_benign_tokens: f64,
    pub d_benign_entropy: f64,
    /// Spearman's rho across the steered points between harm_test refusal and benign mean
    /// length (the same in every row; NaN under three points).
    pub spearman_refusal_test_vs_benign_tokens: f64,
}

/// Length / entropy confound check (§9.3): per operating point, benign and harm_test refusal
/// changes beside length and entropy changes, and the Spearman correlation across operating
/// points between refusal on harm_test and benign mean length. Columns: the fields of
/// [`ConfoundRow`].
pub fn confound_table(points: &[OperatingPoint]) -> Result<DataFrame> {
    let base = points.iter().find(|p| p.layer < 0).context("no baseline operating point")?;
    let steered: Vec<&OperatingPoint> = points.iter().filter(|p| p.layer >= 0).collect();
    ensure!(!steered.is_empty(), "no steered operating points");
    let x: Vec<f64> = steered.iter().map(|p| p.refusal_test).collect();
    let y: Vec<f64> = steered.iter().map(|p| p.benign_mean_tokens).collect();
    let rho = if steered.len() >= 3 { crate::eval::stats::spearman(&x, &y).map(|c| c.r).unwrap_or(f64::NAN) } else { f64::NAN };
    let rows: Vec<ConfoundRow> = steered
        .iter()
        .map(|p| ConfoundRow {
            layer: p.layer,
            intervention: p.intervention.clone(),
            alpha: p.alpha,
            d_refusal_test: p.refusal_test - base.refusal_test,
            d_benign_tokens: p.benign_mean_tokens - base.benign_mean_tokens,
            d_benign_entropy: p.benign_mean_entropy - base.benign_mean_entropy,
            spearman_refusal_test_vs_benign_tokens: rho,
        })
        .collect();
    to_df_with_header(&rows)
}
