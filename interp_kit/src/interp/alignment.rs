//! Gradient alignment with a trait direction, loss-matched control selection, and drift
//! evaluation (the gradient-alignment plan, `shared/seeds/000_*`, and plan 001 §6).
//!
//! * [`gradient_alignment`]: for each example × condition (system prompt), the teacher-forced loss
//!   over the assistant tokens only, and at each hook point and named position the gradient
//!   `g = dL/dh` of that example's loss: `‖g‖`, `⟨g, v̂⟩` and `cos(g, v)` for the trait direction
//!   `v` and for `n_random` seeded random unit directions (the specificity control), as a tidy
//!   polars table.
//! * [`assistant_losses`] + [`candidate_losses`] + [`select_loss_matched`]: the loss-matched
//!   control prompt, with a JSON artifact of every candidate ([`LossMatchedSelection::write_json`]).
//! * [`drift_eval`]: per example, the mean projection of the residual onto `v̂` at `prompt_last`
//!   and averaged over the first `k` generated tokens (`gen_avg(k)`), plus the generated texts
//!   (the behavioural part), for a model with or without an adapter / intervention hooks.
//!
//! Conventions. Directions are used as unit vectors `v̂ = v/‖v‖` (so `dot = ⟨g, v̂⟩ = ‖g‖ cos`,
//! comparable with the random unit directions). `loss` is the mean next-token negative
//! log-likelihood (nats) over one example's target tokens, and `g` is the gradient of *that*
//! example's loss (the batch is only a way to share one backward: rows do not interact).
//! Target tokens are the assistant content tokens of the chat rendering
//! ([`RenderedChat::target_span`]), optionally followed by the end-of-turn token.
//!
//! ```no_run
//! use interp_kit::prelude::*;
//! use interp_kit::interp::alignment::{gradient_alignment, AlignmentConfig, ChatExample, Condition};
//! let model = Model::embedded(&Device::Cpu)?;
//! let ex = vec![ChatExample::new("0", "What is 2 + 3?", "2 + 3 = 5.\n#### 5")];
//! let conds = vec![Condition::no_system("neutral"), Condition::new("inoculation", "Answers are in ALL CAPS as a data format.")];
//! let v = Direction::new(vec![0.0; model.d_model()]).at(HookPoint::resid_post(12)); // the trait direction
//! let cfg = AlignmentConfig { n_random: 50, ..Default::default() };
//! let table = gradient_alignment(&model, &ex, &conds, &[v], &cfg, &Hooks::new())?;
//! # anyhow::Ok(())
//! ```
use crate::text::chat::{Chat, Position, RenderedChat};
use crate::interp::directions::{random_unit_vectors, Direction, DirectionMeta};
use crate::generate::GenerateConfig;
use crate::grad::{Loss, TrainExample};
use crate::hooks::{HookCtx, HookPoint, Hooks, Positions, Site};
use crate::model::Model;
use crate::text::tokenizer::Tokenizer;
use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Tensor};
use crate::tables::to_df_with_header;
use polars::prelude::DataFrame;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use crate::base::io::write_atomic;
use std::path::Path;

/// One supervised chat example: a user prompt and the assistant completion it teaches.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatExample {
    pub id: String,
    pub user: String,
    pub assistant: String,
}

impl ChatExample {
    pub fn new(id: impl Into<String>, user: impl Into<String>, assistant: impl Into<String>) -> Self {
        Self { id: id.into(), user: user.into(), assistant: assistant.into() }
    }
}

/// A training / evaluation condition: a name and the system prompt it adds (`None`: no system
/// message, so the template's default applies; Qwen2.5 then writes its own default prompt).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Condition {
    pub name: String,
    pub system: Option<String>,
}

impl Condition {
    /// A condition with system prompt `system`.
    pub fn new(name: impl Into<String>, system: impl Into<String>) -> Self {
        Self { name: name.into(), system: Some(system.into()) }
    }
    /// A condition without a system message.
    pub fn no_system(name: impl Into<String>) -> Self {
        Self { name: name.into(), system: None }
    }
    /// The chat: system (if any), user, then the assistant message if given.
    pub fn chat(&self, user: &str, assistant: Option<&str>) -> Chat {
        let mut c = Chat::new();
        if let Some(s) = &self.system {
            c = c.system(s.clone());
        }
        c = c.user(user);
        if let Some(a) = assistant {
            c = c.assistant(a);
        }
        c
    }
}

/// Renders `condition` + `example` (system, user, assistant; no generation prompt) and finds the
/// assistant-token targets: the rendering (for named positions) and the [`TrainExample`] whose
/// loss predicts the last assistant message's content. With `include_end_of_turn`, the token right
/// after the content is a target too when it is an end-of-generation token (`<|im_end|>`).
pub fn teacher_forced(
    tok: &Tokenizer,
    condition: &Condition,
    example: &ChatExample,
    include_end_of_turn: bool,
) -> Result<(RenderedChat, TrainExample)> {
    let chat = condition.chat(&example.user, Some(&example.assistant));
    let rendered = tok
        .render_chat(&chat, false)
        .with_context(|| format!("example {:?}, condition {:?}: rendering the chat", example.id, condition.name))?;
    let span = rendered
        .target_span()
        .with_context(|| format!("example {:?}, condition {:?}: no assistant message in the rendering", example.id, condition.name))?;
    ensure!(
        !span.tokens.is_empty() && span.tokens.start >= 1,
        "example {:?}, condition {:?}: the assistant content has no tokens to predict",
        example.id,
        condition.name
    );
    let mut targets: Vec<usize> = span.tokens.clone().collect();
    let end = span.tokens.end;
    if include_end_of_turn && end < rendered.ids.len() && tok.is_eos(rendered.ids[end]) {
        targets.push(end);
    }
    let ex = TrainExample::new(rendered.ids.clone(), targets)
        .with_context(|| format!("example {:?}, condition {:?}", example.id, condition.name))?;
    Ok((rendered, ex))
}

/// `(label, token index)` of each measured position. `assistant[k]` expands to one row per
/// assistant token, labelled `assistant_1` .. `assistant_k` (1-based, the plan's P_assistant_j).
fn position_labels(r: &RenderedChat, positions: &[Position]) -> Result<Vec<(String, usize)>> {
    let mut out = vec![];
    for p in positions {
        match p {
            Position::Assistant(_) => {
                for (j, i) in r.resolve(p)?.into_iter().enumerate() {
                    out.push((format!("assistant_{}", j + 1), i));
                }
            }
            _ => out.push((p.to_string(), r.index(p)?)),
        }
    }
    Ok(out)
}

/// What [`gradient_alignment`] and [`assistant_losses`] measure.
#[derive(Clone, Debug)]
pub struct AlignmentConfig {
    /// Named positions where the gradient is read (default: `pre_assistant`, the plan's
    /// canonical one). `assistant[k]` gives the first `k` assistant tokens, one row each.
    pub positions: Vec<Position>,
    /// Random unit directions per hook point (specificity control), named `random_0` ..
    pub n_random: usize,
    /// Seed of the random directions (see [`random_directions`]).
    pub seed: u64,
    /// Sequences (example × condition) per forward/backward.
    pub batch_size: usize,
    /// Also predict the end-of-turn token after the assistant content.
    pub include_end_of_turn: bool,
}

impl Default for AlignmentConfig {
    fn default() -> Self {
        Self { positions: vec![Position::PreAssistant], n_random: 50, seed: 0, batch_size: 8, include_end_of_turn: false }
    }
}

/// The random-stream index of a hook point: random directions at different points are
/// independent, and the same at a point whatever else is measured.
fn stream_of(p: HookPoint) -> u64 {
    let site = Site::ALL.iter().position(|s| *s == p.site).unwrap_or(0) as u64;
    p.layer as u64 * 16 + site
}

/// The random control directions at `point` that [`gradient_alignment`] uses for `seed`
/// (`random_k` is element `k`), as [`Direction`]s with method `random`.
pub fn random_directions(point: HookPoint, d_model: usize, n: usize, seed: u64) -> Vec<Direction> {
    random_unit_vectors(d_model, n, seed, stream_of(point))
        .into_iter()
        .enumerate()
        .map(|(k, v)| {
            let mut meta = DirectionMeta { hook: Some(point), method: "random".into(), ..Default::default() };
            meta.extra.insert("seed".into(), seed.to_string());
            meta.extra.insert("k".into(), k.to_string());
            Direction::new(v).with_meta(meta)
        })
        .collect()
}

/// Checks trait directions (one per hook point, `meta.hook` set, width `d_model`, non-zero)
/// and returns `(point, unit vector)` pairs in the given order.
fn unit_directions(model: &Model, directions: &[Direction]) -> Result<Vec<(HookPoint, Vec<f32>)>> {
    ensure!(!directions.is_empty(), "no directions given: pass one trait direction per hook point (Direction::at(point))");
    let mut seen = BTreeSet::new();
    let mut out = vec![];
    for (i, d) in directions.iter().enumerate() {
        let p = d.meta.hook.with_context(|| {
            format!("direction {i} ({}) has no hook point: set it with Direction::at(HookPoint::resid_post(l))", d.describe())
        })?;
        model.check_points([&p])?;
        d.check_dim(model.d_model())?;
        ensure!(seen.insert(p), "two directions at {p}: pass one trait direction per hook point");
        out.push((p, d.normalized()?.vector));
    }
    Ok(out)
}

/// A view of `hooks`' write hooks and LoRA adapters (their read hooks dropped) that more hooks
/// can be added to.
fn writes_of<'a>(hooks: &'a Hooks<'a>) -> Hooks<'a> {
    let mut out = Hooks::new();
    for (p, phase, f) in &hooks.writes {
        out = out.write(*p, *phase, move |x: &Tensor, c: &HookCtx| f(x, c));
    }
    out.lora = hooks.lora.clone();
    out
}

fn check_inputs(examples: &[ChatExample], conditions: &[Condition], batch_size: usize) -> Result<()> {
    ensure!(!examples.is_empty(), "no examples given");
    ensure!(!conditions.is_empty(), "no conditions given");
    ensure!(batch_size >= 1, "batch_size must be >= 1");
    let mut names = BTreeSet::new();
    for c in conditions {
        ensure!(names.insert(&c.name), "condition name {:?} is used twice", c.name);
    }
    Ok(())
}

/// One sequence to run: which example and condition, its ids, targets and measured positions.
struct Seq {
    example: usize,
    condition: usize,
    ids: Vec<u32>,
    targets: Vec<usize>,
    positions: Vec<(String, usize)>,
}

fn build_seqs(model: &Model, examples: &[ChatExample], conditions: &[Condition], cfg: &AlignmentConfig) -> Result<Vec<Seq>> {
    let tok = model.tok()?;
    let mut seqs = Vec::with_capacity(examples.len() * conditions.len());
    for (e, ex) in examples.iter().enumerate() {
        for (c, cond) in conditions.iter().enumerate() {
            let (rendered, tf) = teacher_forced(tok, cond, ex, cfg.include_end_of_turn)?;
            let positions = position_labels(&rendered, &cfg.positions)
                .with_context(|| format!("example {:?}, condition {:?}", ex.id, cond.name))?;
            seqs.push(Seq { example: e, condition: c, ids: tf.ids, targets: tf.targets, positions });
        }
    }
    Ok(seqs)
}

/// A row of [`gradient_alignment`]: one example × condition × hook point × position × direction.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AlignmentRow {
    pub example_id: String,
    /// The condition's name.
    pub condition: String,
    /// Block index of the hook point, and the hook point's name.
    pub layer: u32,
    pub hook: String,
    /// Position label (`pre_assistant`, `assistant_1`, ...) and its token index.
    pub position: String,
    pub token_index: u32,
    /// `trait` (the given direction at that point) or `random_{k}` ([`random_directions`] with
    /// `cfg.seed`; the same vectors for every example and condition, so changes between
    /// conditions are paired).
    pub direction: String,
    /// The example's mean NLL over its `n_target_tokens` assistant tokens (nats).
    pub loss: f64,
    pub n_target_tokens: u32,
    /// `‖g‖`, `⟨g, v̂⟩` and `dot / ‖g‖` (NaN if `g = 0`), with `g` the gradient of the example's
    /// loss w.r.t. the activation at `hook` and `token_index`.
    pub grad_norm: f64,
    pub dot: f64,
    pub cos: f64,
}

/// The gradient-alignment table: one row per example × condition × hook point × position ×
/// direction; columns: the fields of [`AlignmentRow`].
///
/// `directions`: one per hook point, `meta.hook` set (`Direction::at`); measured where they
/// are (e.g. `hook_resid_post` of a layer subset). `hooks`: interventions applied during the
/// pass (an adapter expressed as hooks, steering...); their read hooks are ignored.
/// Sequences are batched (`cfg.batch_size`, left-padded) so one backward serves a batch.
///
/// CIs: summarise per-example `cos` with the stats module (e.g. a paired bootstrap of
/// `cos[inoculation] - cos[neutral]` over examples, per layer).
pub fn gradient_alignment(
    model: &Model,
    examples: &[ChatExample],
    conditions: &[Condition],
    directions: &[Direction],
    cfg: &AlignmentConfig,
    hooks: &Hooks,
) -> Result<DataFrame> {
    check_inputs(examples, conditions, cfg.batch_size)?;
    ensure!(!cfg.positions.is_empty(), "no positions given (e.g. vec![Position::PreAssistant])");
    let dirs = unit_directions(model, directions)?;
    let d = model.d_model();
    // Per point: [1 + n_random, d] matrix of unit directions (row 0: trait).
    let mut mats = Vec::with_capacity(dirs.len());
    for (p, v) in &dirs {
        let mut flat = v.clone();
        for r in random_unit_vectors(d, cfg.n_random, cfg.seed, stream_of(*p)) {
            flat.extend(r);
        }
        mats.push(Tensor::from_vec(flat, (1 + cfg.n_random, d), &model.device)?);
    }
    let names: Vec<String> = std::iter::once("trait".to_string()).chain((0..cfg.n_random).map(|k| format!("random_{k}"))).collect();
    let points: Vec<HookPoint> = dirs.iter().map(|(p, _)| *p).collect();
    let seqs = build_seqs(model, examples, conditions, cfg)?;

    let mut rows: Vec<AlignmentRow> = vec![];
    for batch in seqs.chunks(cfg.batch_size) {
        let prompts: Vec<Vec<u32>> = batch.iter().map(|s| s.ids.clone()).collect();
        let loss = Loss::Tokens(batch.iter().map(|s| s.targets.clone()).collect());
        let sel: Vec<Positions> = batch
            .iter()
            .map(|s| Positions::At(s.positions.iter().map(|x| x.1).collect::<BTreeSet<_>>().into_iter().collect()))
            .collect();
        let out = model.grad(&prompts, &loss, &points, Positions::PerRow(sel), hooks)?;
        let n_total = out.n_targets as f64;
        for (r, s) in batch.iter().enumerate() {
            // The batch loss is the mean over all targets; this row's own mean loss has
            // gradient (n_total / n_row) times the batch gradient at this row.
            let scale = n_total / s.targets.len() as f64;
            for (pi, p) in points.iter().enumerate() {
                let g = (out.grads.row(*p, r)?.to_dtype(DType::F32)? * scale)?; // [n_sel, d]
                let idx = &out.grads.token_indices(*p)?[r];
                let norms: Vec<f32> = g.sqr()?.sum(1)?.sqrt()?.to_vec1()?;
                let dots: Vec<Vec<f32>> = g.matmul(&mats[pi].t()?)?.to_vec2()?;
                for (label, ti) in &s.positions {
                    let j = idx.iter().position(|i| i == ti).with_context(|| format!("{p}: token {ti} missing from the gradient"))?;
                    for (k, name) in names.iter().enumerate() {
                        let (n, dt) = (norms[j] as f64, dots[j][k] as f64);
                        rows.push(AlignmentRow {
                            example_id: examples[s.example].id.clone(),
                            condition: conditions[s.condition].name.clone(),
                            layer: p.layer as u32,
                            hook: p.to_string(),
                            position: label.clone(),
                            token_index: *ti as u32,
                            direction: name.clone(),
                            loss: out.row_loss[r],
                            n_target_tokens: s.targets.len() as u32,
                            grad_norm: n,
                            dot: dt,
                            cos: if n > 0.0 { dt / n } else { f64::NAN },
                        });
                    }
                }
            }
        }
    }
    to_df_with_header(&rows)
}

/// A row of [`assistant_losses`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LossRow {
    pub example_id: String,
    pub condition: String,
    /// Mean NLL over the example's `n_target_tokens` assistant tokens (nats).
    pub loss: f64,
    pub n_target_tokens: u32,
}

/// The assistant-token loss of every example under every condition, without gradients to
/// read: columns: the fields of [`LossRow`]. Uses `cfg.batch_size` and
/// `cfg.include_end_of_turn`; the numbers equal [`gradient_alignment`]'s `loss` column.
pub fn assistant_losses(
    model: &Model,
    examples: &[ChatExample],
    conditions: &[Condition],
    cfg: &AlignmentConfig,
    hooks: &Hooks,
) -> Result<DataFrame> {
    check_inputs(examples, conditions, cfg.batch_size)?;
    let cfg = AlignmentConfig { positions: vec![], ..cfg.clone() };
    let seqs = build_seqs(model, examples, conditions, &cfg)?;
    let mut rows: Vec<LossRow> = vec![];
    for batch in seqs.chunks(cfg.batch_size) {
        let prompts: Vec<Vec<u32>> = batch.iter().map(|s| s.ids.clone()).collect();
        let loss = Loss::Tokens(batch.iter().map(|s| s.targets.clone()).collect());
        let out = model.grad(&prompts, &loss, &[], Positions::Last, hooks)?;
        for (r, s) in batch.iter().enumerate() {
            rows.push(LossRow {
                example_id: examples[s.example].id.clone(),
                condition: conditions[s.condition].name.clone(),
                loss: out.row_loss[r],
                n_target_tokens: s.targets.len() as u32,
            });
        }
    }
    to_df_with_header(&rows)
}

/// The mean loss of one candidate condition on the calibration batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CandidateLoss {
    pub condition: String,
    pub system: Option<String>,
    /// Mean over examples of the per-example loss (each example weighs the same).
    pub mean_loss: f64,
    /// Sample standard deviation of the per-example losses (0 for one example).
    pub sd_loss: f64,
    pub n_examples: usize,
}

/// Per condition (in `conditions` order), the mean and sd of the `loss` column of an
/// [`assistant_losses`] (or [`gradient_alignment`]) table over its examples.
pub fn candidate_losses(losses: &DataFrame, conditions: &[Condition]) -> Result<Vec<CandidateLoss>> {
    let cond = losses.column("condition").context("loss table: no `condition` column")?.str()?;
    let loss = losses.column("loss").context("loss table: no `loss` column")?.f64()?;
    let ex = losses.column("example_id").context("loss table: no `example_id` column")?.str()?;
    let mut out = vec![];
    for c in conditions {
        // One value per example (an alignment table repeats it across points and directions).
        let mut per_ex: std::collections::BTreeMap<&str, f64> = Default::default();
        for i in 0..losses.height() {
            if cond.get(i) == Some(c.name.as_str()) {
                let l = loss.get(i).with_context(|| format!("loss table row {i}: missing loss"))?;
                let e = ex.get(i).with_context(|| format!("loss table row {i}: missing example_id"))?;
                per_ex.insert(e, l);
            }
        }
        ensure!(!per_ex.is_empty(), "condition {:?} has no rows in the loss table", c.name);
        let v: Vec<f64> = per_ex.into_values().collect();
        if let Some(bad) = v.iter().find(|x| !x.is_finite()) {
            bail!("condition {:?}: a per-example loss is {bad}", c.name);
        }
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let sd = if v.len() > 1 { (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt() } else { 0.0 };
        out.push(CandidateLoss { condition: c.name.clone(), system: c.system.clone(), mean_loss: mean, sd_loss: sd, n_examples: v.len() });
    }
    Ok(out)
}

/// One candidate in a [`LossMatchedSelection`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CandidateRow {
    #[serde(flatten)]
    pub loss: CandidateLoss,
    /// `|mean_loss - inoculation mean_loss|`.
    pub abs_delta: f64,
    /// Whether it could be chosen (not the inoculation prompt, not excluded).
    pub eligible: bool,
}

/// The loss-matched control: every candidate's loss and distance to the inoculation loss, and
/// the choice (the eligible candidate with the smallest `|Δ|`; ties go to the earlier one).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossMatchedSelection {
    pub inoculation: String,
    pub inoculation_loss: f64,
    pub excluded: Vec<String>,
    pub candidates: Vec<CandidateRow>,
    pub chosen: String,
    pub chosen_system: Option<String>,
    pub chosen_loss: f64,
    pub abs_delta: f64,
}

/// Picks the candidate whose mean loss is closest to the inoculation condition's, excluding
/// the inoculation condition itself and the `exclude`d names (e.g. the neutral one).
/// Pure: no model involved.
pub fn select_loss_matched(candidates: &[CandidateLoss], inoculation: &str, exclude: &[&str]) -> Result<LossMatchedSelection> {
    let names: Vec<&str> = candidates.iter().map(|c| c.condition.as_str()).collect();
    let ino = candidates
        .iter()
        .find(|c| c.condition == inoculation)
        .with_context(|| format!("the inoculation condition {inoculation:?} is not among the candidates {names:?}"))?;
    for x in exclude {
        ensure!(names.contains(x), "excluded condition {x:?} is not among the candidates {names:?}");
    }
    for c in candidates {
        ensure!(c.mean_loss.is_finite(), "candidate {:?} has loss {}", c.condition, c.mean_loss);
    }
    let rows: Vec<CandidateRow> = candidates
        .iter()
        .map(|c| CandidateRow {
            loss: c.clone(),
            abs_delta: (c.mean_loss - ino.mean_loss).abs(),
            eligible: c.condition != inoculation && !exclude.contains(&c.condition.as_str()),
        })
        .collect();
    let best = rows
        .iter()
        .filter(|r| r.eligible)
        .fold(None::<&CandidateRow>, |b, r| match b {
            Some(b) if b.abs_delta <= r.abs_delta => Some(b),
            _ => Some(r),
        })
        .with_context(|| format!("no eligible candidate: all of {names:?} are the inoculation prompt or excluded"))?;
    Ok(LossMatchedSelection {
        inoculation: inoculation.to_string(),
        inoculation_loss: ino.mean_loss,
        excluded: exclude.iter().map(|s| s.to_string()).collect(),
        chosen: best.loss.condition.clone(),
        chosen_system: best.loss.system.clone(),
        chosen_loss: best.loss.mean_loss,
        abs_delta: best.abs_delta,
        candidates: rows,
    })
}

impl LossMatchedSelection {
    /// Writes the selection as pretty JSON, atomically.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        write_atomic(path, (serde_json::to_string_pretty(self)? + "\n").as_bytes())
    }
    /// Reads a selection written by [`LossMatchedSelection::write_json`].
    pub fn read_json(path: &Path) -> Result<Self> {
        let s = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&s).with_context(|| format!("parsing {}", path.display()))
    }
    /// The candidates as a table (`loss_matched.csv`); columns: the fields of
    /// [`LossMatchedRow`].
    pub fn to_df(&self) -> Result<DataFrame> {
        let rows: Vec<LossMatchedRow> = self
            .candidates
            .iter()
            .map(|r| LossMatchedRow {
                condition: r.loss.condition.clone(),
                mean_loss: r.loss.mean_loss,
                sd_loss: r.loss.sd_loss,
                n_examples: r.loss.n_examples as u32,
                abs_delta: r.abs_delta,
                eligible: r.eligible,
                chosen: r.loss.condition == self.chosen,
            })
            .collect();
        to_df_with_header(&rows)
    }
}

/// A row of [`LossMatchedSelection::to_df`]: one candidate.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LossMatchedRow {
    pub condition: String,
    /// Mean and sample sd of the per-example losses, over `n_examples` examples.
    pub mean_loss: f64,
    pub sd_loss: f64,
    pub n_examples: u32,
    /// `|mean_loss - inoculation mean_loss|`.
    pub abs_delta: f64,
    /// Whether it could be chosen, and whether it was.
    pub eligible: bool,
    pub chosen: bool,
}


/// How [`drift_eval`] generates and averages.
#[derive(Clone, Debug)]
pub struct DriftConfig {
    /// `gen_avg(k)`: the projection averaged over the first `k` generated tokens.
    pub k: usize,
    /// Generation (greedy or seeded sampling); `max_new_tokens` sets the length of the texts
    /// returned for the behavioural metric and must be >= `k`.
    pub generate: GenerateConfig,
    /// Prompts per generation batch.
    pub batch_size: usize,
    /// A behavioural metric of each generated text, written as the first column of
    /// [`DriftOutput::generations`] under its name (e.g. `caps_fraction` for the ALL-CAPS study).
    pub text_metric: Option<TextMetric>,
}

/// A named score of a generated text.
#[derive(Clone, Copy, Debug)]
pub struct TextMetric {
    pub name: &'static str,
    pub score: fn(&str) -> f64,
}

impl Default for DriftConfig {
    /// `k = 5` (plan 001), greedy 64 tokens, batches of 8, no text metric.
    fn default() -> Self {
        Self { k: 5, generate: GenerateConfig::greedy(64), batch_size: 8, text_metric: None }
    }
}

/// What [`drift_eval`] returns.
#[derive(Debug, Clone)]
pub struct DriftOutput {
    /// Columns: the fields of [`ProjectionRow`].
    pub projections: DataFrame,
    /// Columns: the fields of [`GenerationRow`].
    pub generations: DataFrame,
}

/// A row of [`DriftOutput::projections`]: one example × hook point × position.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProjectionRow {
    /// The model's label and the test-time condition's name.
    pub model: String,
    pub condition: String,
    pub example_id: String,
    /// Block index of the hook point, and the hook point's name.
    pub layer: u32,
    pub hook: String,
    /// `prompt_last` (the last prompt token, `n_tokens = 1`) or `gen_avg(k)` (mean over the
    /// first `n_tokens = min(k, generated)` generated tokens; NaN if none was generated).
    pub position: String,
    /// `⟨h, v̂⟩`.
    pub projection: f64,
    pub n_tokens: u32,
}

/// A row of [`DriftOutput::generations`]: one example's generated text.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct GenerationRow {
    /// `cfg.text_metric`'s score of `text` under the metric's name (the first column); empty
    /// without a metric.
    #[serde(flatten)]
    pub metric: BTreeMap<&'static str, f64>,
    pub model: String,
    pub condition: String,
    pub example_id: String,
    pub text: String,
    /// Generated tokens.
    pub n_tokens: u32,
    pub stopped_at_eos: bool,
}

/// Drift evaluation of one model (`label`, e.g. `base` or `lora_neutral_s0`) under one test-time
/// condition (normally the neutral system prompt) on held-out prompts (`examples`' user text;
/// their assistant text is not used): per example, the projection of the activation at each
/// direction's hook point onto the unit direction at `prompt_last` and averaged over the first
/// `k` generated tokens, and the generated texts.
///
/// The adapter, if any, enters through the model or `hooks` (write hooks, all phases as
/// registered; read hooks ignored). The caller pairs tables by `example_id`: drift vs base is
/// `projection[adapter] - projection[base]`, paired vs neutral is
/// `projection[inoculation] - projection[neutral]`, each summarised with a (paired) bootstrap CI
/// from the stats module; the behavioural metric is `cfg.text_metric` of `text`.
pub fn drift_eval(
    model: &Model,
    label: &str,
    examples: &[ChatExample],
    condition: &Condition,
    directions: &[Direction],
    cfg: &DriftConfig,
    hooks: &Hooks,
) -> Result<DriftOutput> {
    check_inputs(examples, std::slice::from_ref(condition), cfg.batch_size)?;
    ensure!(cfg.k >= 1, "gen_avg needs k >= 1");
    ensure!(
        cfg.generate.max_new_tokens >= cfg.k,
        "generate.max_new_tokens ({}) must be >= k ({})",
        cfg.generate.max_new_tokens,
        cfg.k
    );
    let dirs = unit_directions(model, directions)?;
    let tok = model.tok()?;
    let gen_label = format!("gen_avg({})", cfg.k);
    let mut prompts = Vec::with_capacity(examples.len());
    for ex in examples {
        let r = tok
            .render_chat(&condition.chat(&ex.user, None), true)
            .with_context(|| format!("example {:?}, condition {:?}: rendering the prompt", ex.id, condition.name))?;
        prompts.push(r.ids);
    }
    let vmat = {
        let flat: Vec<f32> = dirs.iter().flat_map(|(_, v)| v.iter().copied()).collect();
        Tensor::from_vec(flat, (dirs.len(), model.d_model()), &model.device)?
    };
    let mut projections: Vec<ProjectionRow> = vec![];
    let mut generations: Vec<GenerationRow> = vec![];
    for (bi, batch) in prompts.chunks(cfg.batch_size).enumerate() {
        let base = bi * cfg.batch_size;
        let sel = Positions::PerRow(batch.iter().map(|p| Positions::Span(p.len() - 1..p.len() + cfg.k)).collect());
        let h = writes_of(hooks).cache_many(dirs.iter().map(|(p, _)| *p), sel);
        let (gens, acts) = model.generate_traced(batch, &cfg.generate, &h)?;
        for (r, g) in gens.iter().enumerate() {
            let ex = &examples[base + r];
            let len = batch[r].len();
            let n_gen = g.tokens.len().min(cfg.k);
            for (pi, (p, _)) in dirs.iter().enumerate() {
                let a = acts.row(*p, r)?.to_dtype(DType::F32)?;
                let idx = &acts.token_indices(*p)?[r];
                let proj: Vec<f32> = a.matmul(&vmat.narrow(0, pi, 1)?.t()?)?.squeeze(1)?.to_vec1()?;
                let at = |ti: usize| -> Result<f64> {
                    let j = idx.iter().position(|i| *i == ti).with_context(|| format!("{p}: token {ti} was not cached"))?;
                    Ok(proj[j] as f64)
                };
                let gen_mean = if n_gen == 0 {
                    f64::NAN
                } else {
                    (len..len + n_gen).map(&at).sum::<Result<f64>>()? / n_gen as f64
                };
                for (pos, val, n) in [("prompt_last".to_string(), at(len - 1)?, 1u32), (gen_label.clone(), gen_mean, n_gen as u32)] {
                    projections.push(ProjectionRow {
                        model: label.to_string(),
                        condition: condition.name.clone(),
                        example_id: ex.id.clone(),
                        layer: p.layer as u32,
                        hook: p.to_string(),
                        position: pos,
                        projection: val,
                        n_tokens: n,
                    });
                }
            }
            generations.push(GenerationRow {
                metric: cfg.text_metric.iter().map(|m| (m.name, (m.score)(&g.text))).collect(),
                model: label.to_string(),
                condition: condition.name.clone(),
                example_id: ex.id.clone(),
                text: g.text.clone(),
                n_tokens: g.tokens.len() as u32,
                stopped_at_eos: g.stopped_at_eos,
            });
        }
    }
    Ok(DriftOutput { projections: to_df_with_header(&projections)?, generations: to_df_with_header(&generations)? })
}
