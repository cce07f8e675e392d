//! The ALL-CAPS inoculation study (plan `shared/seeds/000_*`, issue 6) as kit functions: the
//! notebooks in `notebooks/inoculation_caps/` (01 data .. 07 plots) are a params cell and calls
//! into this module. Every phase reads what earlier phases wrote in one run directory
//! (`<output_root>/inoculation_caps/<run_id>[_ci]/`, with a manifest), never notebook state.
//!
//! Flow and artifacts (paths relative to the run directory):
//! - 01 [`Inoculation::data_stats`] → `data_stats.csv`.
//! - 02 [`Inoculation::extract_directions`] → `directions/layer_<l>.safetensors` (mean difference
//!   promote − suppress at `pre_assistant`, raw), `directions/summary.csv`;
//!   [`Inoculation::heldout_projections`] → `direction_heldout.parquet` (sanity check 1);
//!   [`Inoculation::neutral_generation`] → `neutral_generation.parquet` (sanity check 2).
//! - 03 [`Inoculation::alignment`] → `alignment.parquet` (resumable sweep over conditions:
//!   neutral, inoculation and every control candidate; one row per example × condition × layer
//!   × position × direction, see [`crate::interp::alignment::gradient_alignment`]).
//! - 04 [`Inoculation::select_control`] → `loss_matched.json`, `loss_matched.csv`.
//! - 05 [`specificity_table`] / [`specificity_summary`] → `specificity.parquet`, `specificity.csv`.
//! - 06 [`Inoculation::finetune`] → `adapters/<condition>_s<seed>/` (PEFT format) and
//!   `training.parquet` (loss and trait alignment on a fixed batch, logged during training);
//!   [`Inoculation::drift`] → `drift_projections.parquet`, `drift_generations.parquet`.
//! - 07 [`acceptance`] → `acceptance.json`; figures in `figures/`.
//!
//! Sign convention. The kit's table has `cos = cos(g, v̂)` with `g = dL/dh`. Training moves `h`
//! along `-g`, so the alignment of the *update* with the trait direction is
//! `align = cos(-g, v̂) = -cos`: positive when a gradient step on the ALL-CAPS data pushes the
//! residual towards "caps" (`v` = promote − suppress). "Inoculation rotates gradients away from
//! the trait" means `align` drops under the inoculation prompt; the acceptance criteria use
//! `align`, tables carry both.
use crate::interp::alignment::{
    candidate_losses, drift_eval, gradient_alignment, select_loss_matched, AlignmentConfig, ChatExample, Condition, DriftConfig, TextMetric,
    LossMatchedSelection,
};
use crate::studies::inoculation_caps::data::CapsDataset;
use crate::text::chat::Position;
use crate::runs::config::{parse_toml, resolve_layers, study_config_basics, LayerSpec, Mode, ModelCfg, Modes, RunCfg};
use crate::interp::directions::{collect_activations, mean_diff, Direction, PromptFormat, PromptIds, ReadAt};
use crate::generate::GenerateConfig;
use crate::hooks::{HookPoint, Hooks};
use crate::grad::TrainExample;
use crate::lora::{train_lora, LoraAdapter, LoraConfig, StepInfo, TrainConfig};
use crate::model::Model;
use crate::viz::plots::{bar_chart, histogram, line_plot, scatter_plot, Bars, Figure, Series};
use crate::runs::{CellKey, RunDir};
use crate::tables::{column_f64, column_str, fresh, to_df_with_header};
use crate::eval::analysis::{ci_or_nan, drift_projection_summary, mean, paired, per_example, specificity_summary, specificity_table, DriftLabels, Layers};
use crate::eval::metrics::caps_fraction;
use crate::eval::stats::{bootstrap_mean_ci, bootstrap_paired_ci, pearson, Bootstrap, Ci};
use anyhow::{bail, ensure, Context, Result};
use polars::prelude::{Column, DataFrame};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The study's name: its run directories live in `<output_root>/inoculation_caps/`.
pub mod data;

pub const STUDY: &str = "inoculation_caps";

/// The behavioural drift measure of the ALL-CAPS plan: the share of capital letters in a generation.
const CAPS: TextMetric = TextMetric { name: "caps_fraction", score: caps_fraction };

// ------------------------------------------------------------------------------------------------
// Configuration
// ------------------------------------------------------------------------------------------------

/// `[data]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataDir {
    /// The directory of `caps_data` files (`gsm_train.jsonl`, ...), relative to the config file.
    pub dir: PathBuf,
}

/// A named system prompt (a control candidate).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedPrompt {
    pub name: String,
    pub system: String,
}

/// `[prompts]`: the system prompts of the conditions and of direction extraction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prompts {
    /// Condition A (baseline) and the test-time system prompt of the drift evaluation.
    pub neutral: String,
    /// Condition B.
    pub inoculation: String,
    /// Direction extraction: the trait-promoting system prompt.
    pub promote: String,
    /// Direction extraction: the trait-suppressing system prompt.
    pub suppress: String,
    /// Appended to half of the user prompts of sanity check 2 (so that caps propensity varies
    /// under the neutral system prompt).
    pub ask_caps_suffix: String,
    /// Condition C candidates (no mention of caps); the loss-matched one is chosen in phase 4.
    pub candidates: Vec<NamedPrompt>,
}

/// `[modes.*].lora`: the fine-tunes of phase 5 (notebook 06).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSizes {
    /// `qv`, `qkv`, `qkvo` or `all_linear`.
    pub preset: String,
    pub r: usize,
    pub alpha: f64,
    #[serde(default)]
    pub dropout: f64,
    pub lr: f64,
    pub max_steps: usize,
    pub batch_size: usize,
    #[serde(default = "one")]
    pub grad_accum: usize,
    #[serde(default)]
    pub warmup_ratio: f64,
    /// Log the trait alignment on the fixed batch every this many optimizer steps (and before
    /// the first step).
    pub log_every: usize,
    /// Calibration examples in the fixed logging batch.
    pub n_log_examples: usize,
    /// One fine-tune per condition and seed.
    pub seeds: Vec<u64>,
}

fn one() -> usize {
    1
}

/// The sizes of one mode (`[modes.ci]`, `[modes.fast]`, `[modes.full]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sizes {
    /// Layer subset (block indices or depth fractions), read at `hook_resid_post`.
    pub layers: Vec<LayerSpec>,
    /// Direction-extraction prompts (`extract` split), each under promote and suppress.
    pub n_direction: usize,
    /// Held-out direction prompts for sanity check 1.
    pub n_direction_heldout: usize,
    /// Prompts generated under the neutral system prompt for sanity check 2.
    pub n_neutral_gen: usize,
    /// Calibration batch (training problems with ALL-CAPS answers) of phases 3-4.
    pub n_calibration: usize,
    /// Control candidates measured (the first n; 0 = all).
    pub n_candidates: usize,
    /// Random unit directions per layer (specificity control).
    pub n_random: usize,
    /// Gradient read at `pre_assistant`, `user_end` and the first `k_assistant` assistant tokens.
    pub k_assistant: usize,
    /// Sequences per forward/backward and prompts per generation batch.
    pub batch_size: usize,
    /// Training examples of each fine-tune (after the calibration ones in `gsm_train`).
    pub n_train: usize,
    pub lora: LoraSizes,
    /// Held-out problems of the drift evaluation.
    pub n_eval: usize,
    pub max_new_tokens: usize,
    /// `gen_avg(k)`: projection averaged over the first k generated tokens.
    pub gen_k: usize,
    /// Bootstrap resamples of every CI.
    pub n_boot: usize,
}

/// `configs/inoculation_caps.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InoculationConfig {
    #[serde(default)]
    pub mode: Mode,
    pub model: ModelCfg,
    pub data: DataDir,
    pub prompts: Prompts,
    pub run: RunCfg,
    pub modes: Modes<Sizes>,
    #[serde(skip)]
    pub base_dir: PathBuf,
}

study_config_basics!(InoculationConfig, Sizes);

impl InoculationConfig {
    /// Parses TOML; `base_dir` resolves relative paths. Checks sizes and prompts.
    pub fn from_toml(text: &str, base_dir: impl Into<PathBuf>) -> Result<Self> {
        let mut cfg: InoculationConfig = parse_toml(text)?;
        cfg.base_dir = base_dir.into();
        cfg.modes.check_each(|s| cfg.check_sizes(s))?;
        let p = &cfg.prompts;
        for (what, s) in [("neutral", &p.neutral), ("inoculation", &p.inoculation), ("promote", &p.promote), ("suppress", &p.suppress)] {
            ensure!(!s.trim().is_empty(), "prompts.{what} is empty");
        }
        ensure!(!p.candidates.is_empty(), "prompts.candidates is empty: give the control candidates");
        let mut names = vec!["neutral".to_string(), "inoculation".to_string()];
        for c in &p.candidates {
            ensure!(!names.contains(&c.name), "prompts.candidates: the name {:?} is used twice (neutral and inoculation are taken)", c.name);
            ensure!(!c.system.to_lowercase().contains("caps") && !c.system.to_lowercase().contains("capital"), "control candidate {:?} mentions caps", c.name);
            names.push(c.name.clone());
        }
        cfg.model.check(&cfg.base_dir)?;
        ensure!(cfg.path(&cfg.data.dir).is_dir(), "data.dir: {} is not a directory", cfg.path(&cfg.data.dir).display());
        Ok(cfg)
    }

    fn check_sizes(&self, s: &Sizes) -> Result<()> {
        ensure!(!s.layers.is_empty(), "layers is empty");
        for (what, n) in [
            ("n_direction", s.n_direction),
            ("n_direction_heldout", s.n_direction_heldout),
            ("n_neutral_gen", s.n_neutral_gen),
            ("n_calibration", s.n_calibration),
            ("batch_size", s.batch_size),
            ("n_train", s.n_train),
            ("n_eval", s.n_eval),
            ("max_new_tokens", s.max_new_tokens),
            ("gen_k", s.gen_k),
            ("n_boot", s.n_boot),
            ("lora.r", s.lora.r),
            ("lora.max_steps", s.lora.max_steps),
            ("lora.batch_size", s.lora.batch_size),
            ("lora.log_every", s.lora.log_every),
            ("lora.n_log_examples", s.lora.n_log_examples),
        ] {
            ensure!(n > 0, "{what} must be at least 1");
        }
        ensure!(s.gen_k <= s.max_new_tokens, "gen_k ({}) must be <= max_new_tokens ({})", s.gen_k, s.max_new_tokens);
        ensure!(s.lora.n_log_examples <= s.n_calibration, "lora.n_log_examples must be <= n_calibration (the logging batch is taken from it)");
        ensure!(!s.lora.seeds.is_empty(), "lora.seeds is empty");
        lora_config(&s.lora, 0)?;
        Ok(())
    }

    /// Condition A.
    pub fn neutral(&self) -> Condition {
        Condition::new("neutral", self.prompts.neutral.clone())
    }

    /// Condition B.
    pub fn inoculation(&self) -> Condition {
        Condition::new("inoculation", self.prompts.inoculation.clone())
    }

    /// The control candidates measured in this mode.
    pub fn candidates(&self) -> Vec<Condition> {
        let n = match self.sizes().n_candidates {
            0 => self.prompts.candidates.len(),
            n => n.min(self.prompts.candidates.len()),
        };
        self.prompts.candidates[..n].iter().map(|c| Condition::new(c.name.clone(), c.system.clone())).collect()
    }

    /// Neutral, inoculation, then the candidates: the conditions of phase 3.
    pub fn all_conditions(&self) -> Vec<Condition> {
        let mut v = vec![self.neutral(), self.inoculation()];
        v.extend(self.candidates());
        v
    }
}

/// The LoRA configuration of `s` with seed `seed`.
pub fn lora_config(s: &LoraSizes, seed: u64) -> Result<LoraConfig> {
    let c = match s.preset.as_str() {
        "qv" => LoraConfig::qv(s.r, s.alpha),
        "qkv" => LoraConfig::qkv(s.r, s.alpha),
        "qkvo" => LoraConfig::qkvo(s.r, s.alpha),
        "all_linear" => LoraConfig::all_linear(s.r, s.alpha),
        other => bail!("lora.preset {other:?}: expected qv, qkv, qkvo or all_linear"),
    };
    let c = c.with_dropout(s.dropout).with_seed(seed);
    c.validate()?;
    Ok(c)
}

// ------------------------------------------------------------------------------------------------
// The study
// ------------------------------------------------------------------------------------------------

/// An opened study: config (mode applied), model, data, resolved layers and the run directory.
pub struct Inoculation {
    pub cfg: InoculationConfig,
    pub model: Model,
    pub data: CapsDataset,
    /// Block indices of the layer subset (resid_post).
    pub layers: Vec<usize>,
    pub run: RunDir,
}

/// A row of [`Inoculation::data_stats`]: one data file, or one direction-prompt kind × split.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DataStatsRow {
    /// `gsm_train`, `gsm_heldout` or `direction/<kind>/<split>`.
    pub set: String,
    /// Rows.
    pub n: u32,
    /// Mean characters of the prompts (questions) and of the normal answers (completions).
    pub mean_prompt_chars: f64,
    pub mean_answer_chars: f64,
    /// Mean caps fraction of the normal answers and of the ALL-CAPS answers.
    pub caps_fraction_answer: f64,
    pub caps_fraction_answer_caps: f64,
}

/// A row of [`Inoculation::example_rows`]: one training problem.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ExampleRow {
    pub id: String,
    pub question: String,
    pub answer: String,
    /// The same answer in ALL CAPS.
    pub answer_caps: String,
}

/// A row of [`Inoculation::extract_directions`] (`directions/summary.csv`): one layer's trait
/// direction.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DirectionSummaryRow {
    pub layer: u32,
    /// Extraction prompts.
    pub n: u32,
    /// Norm of the raw (not normalised) direction.
    pub norm: f64,
    /// Mean residual norm under the promote prompt.
    pub mean_resid_norm_promote: f64,
    /// Cosine between the directions of the two halves of the prompts.
    pub split_half_cos: f64,
}

/// A row of [`Inoculation::heldout_projections`] (`direction_heldout.parquet`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HeldoutProjectionRow {
    pub example_id: String,
    /// `math` or `general`.
    pub kind: String,
    /// `promote` or `suppress`.
    pub system: String,
    pub layer: u32,
    /// Projection of the `pre_assistant` residual onto the unit trait direction.
    pub projection: f64,
}

/// A row of [`Inoculation::neutral_generation`] (`neutral_generation.parquet`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NeutralGenerationRow {
    pub example_id: String,
    /// `plain` or `ask_caps` (the caps suffix appended).
    pub variant: String,
    pub layer: u32,
    /// Projection at `prompt_last` onto the unit trait direction.
    pub projection: f64,
    /// Caps fraction of the greedy generation, and its text.
    pub caps_fraction: f64,
    pub text: String,
}

impl Inoculation {
    /// Loads the config (mode from `INTERP_KIT_STUDY_MODE` if set), the model and the data, and
    /// opens (or creates) the run directory with its manifest.
    pub fn open(config_path: impl AsRef<Path>) -> Result<Self> {
        let cfg = InoculationConfig::load(config_path)?;
        let model = cfg.model.load(&cfg.base_dir).context("loading the study's model")?;
        Self::with_model(cfg, model)
    }

    /// [`Inoculation::open`] with a config and model at hand.
    pub fn with_model(cfg: InoculationConfig, model: Model) -> Result<Self> {
        let data = CapsDataset::load_dir(&cfg.path(&cfg.data.dir))?;
        let layers = resolve_layers(&cfg.sizes().layers, model.info.n_layers, &format!("[modes.{}] layers", cfg.mode.name()))?;
        let s = cfg.sizes();
        ensure!(
            s.n_calibration + s.n_train <= data.train.len(),
            "n_calibration + n_train = {} but gsm_train has {} problems",
            s.n_calibration + s.n_train,
            data.train.len()
        );
        let run = RunDir::builder(cfg.path(&cfg.run.output_root), STUDY, &cfg.run_id())
            .config(&cfg)?
            .seeds(std::iter::once(cfg.run.seed).chain(s.lora.seeds.iter().copied()))
            .device(&model.device)
            .model_cfg(&cfg.model, &cfg.base_dir)?
            .open()?;
        Ok(Inoculation { cfg, model, data, layers, run })
    }

    pub fn sizes(&self) -> &Sizes {
        self.cfg.sizes()
    }

    /// `blocks.{l}.hook_resid_post` for the layer subset.
    pub fn points(&self) -> Vec<HookPoint> {
        self.layers.iter().map(|&l| HookPoint::resid_post(l)).collect()
    }

    fn boot(&self) -> Bootstrap {
        Bootstrap::new(self.sizes().n_boot, 0.95, self.cfg.run.seed)
    }

    // -------------------------------------------------------------------------------- phase 1

    /// Per file (and direction-prompt kind × split): rows, mean prompt / answer characters, and
    /// the caps fraction of the normal and ALL-CAPS answers. Written to `data_stats.csv`.
    /// Columns: the fields of [`DataStatsRow`].
    pub fn data_stats(&self) -> Result<DataFrame> {
        let mut rows: Vec<(String, Vec<(&str, &str, &str)>)> = vec![];
        rows.push(("gsm_train".into(), self.data.train.iter().map(|p| (p.question.as_str(), p.answer.as_str(), p.answer_caps.as_str())).collect()));
        rows.push(("gsm_heldout".into(), self.data.heldout.iter().map(|p| (p.question.as_str(), p.answer.as_str(), p.answer_caps.as_str())).collect()));
        for kind in ["math", "general"] {
            for split in ["extract", "heldout"] {
                rows.push((
                    format!("direction/{kind}/{split}"),
                    self.data
                        .direction
                        .iter()
                        .filter(|d| d.kind == kind && d.split == split)
                        .map(|d| (d.prompt.as_str(), d.completion.as_str(), d.completion_caps.as_str()))
                        .collect(),
                ));
            }
        }
        let mean = |v: Vec<f64>| if v.is_empty() { f64::NAN } else { v.iter().sum::<f64>() / v.len() as f64 };
        let stats: Vec<DataStatsRow> = rows
            .iter()
            .map(|(set, v)| DataStatsRow {
                set: set.clone(),
                n: v.len() as u32,
                mean_prompt_chars: mean(v.iter().map(|x| x.0.chars().count() as f64).collect()),
                mean_answer_chars: mean(v.iter().map(|x| x.1.chars().count() as f64).collect()),
                caps_fraction_answer: mean(v.iter().map(|x| crate::eval::metrics::caps_fraction(x.1)).collect()),
                caps_fraction_answer_caps: mean(v.iter().map(|x| crate::eval::metrics::caps_fraction(x.2)).collect()),
            })
            .collect();
        let df = to_df_with_header(&stats)?;
        self.run.write_csv("data_stats.csv", &df)?;
        Ok(df)
    }

    /// The first `n` training problems; columns: the fields of [`ExampleRow`].
    pub fn example_rows(&self, n: usize) -> Result<DataFrame> {
        let t = &self.data.train[..n.min(self.data.train.len())];
        let rows: Vec<ExampleRow> = t
            .iter()
            .map(|p| ExampleRow { id: p.id.clone(), question: p.question.clone(), answer: p.answer.clone(), answer_caps: p.answer_caps.clone() })
            .collect();
        to_df_with_header(&rows)
    }

    /// The calibration batch: the first `n_calibration` training problems with ALL-CAPS answers.
    pub fn calibration(&self) -> Vec<ChatExample> {
        self.data.train[..self.sizes().n_calibration].iter().map(|p| ChatExample::new(p.id.clone(), p.question.clone(), p.answer_caps.clone())).collect()
    }

    /// The fine-tuning set: the `n_train` problems after the calibration ones, ALL-CAPS answers.
    pub fn train_examples(&self) -> Vec<ChatExample> {
        let s = self.sizes();
        self.data.train[s.n_calibration..s.n_calibration + s.n_train]
            .iter()
            .map(|p| ChatExample::new(p.id.clone(), p.question.clone(), p.answer_caps.clone()))
            .collect()
    }

    /// Held-out problems of the drift evaluation (their answers are not used).
    pub fn eval_examples(&self) -> Vec<ChatExample> {
        let n = self.sizes().n_eval.min(self.data.heldout.len());
        self.data.heldout[..n].iter().map(|p| ChatExample::new(p.id.clone(), p.question.clone(), p.answer.clone())).collect()
    }

    // -------------------------------------------------------------------------------- phase 2

    /// The first `n` direction prompts of `split`, math and general interleaved (so that any
    /// prefix mixes both kinds): `(id, kind, prompt)`.
    pub fn direction_prompts(&self, split: &str, n: usize) -> Vec<(String, String, String)> {
        let of = |k: &str| self.data.direction.iter().filter(|d| d.split == split && d.kind == k).collect::<Vec<_>>();
        let (m, g) = (of("math"), of("general"));
        let mut out = vec![];
        for i in 0..m.len().max(g.len()) {
            for d in [m.get(i), g.get(i)].into_iter().flatten() {
                if out.len() < n {
                    out.push((d.id.clone(), d.kind.clone(), d.prompt.clone()));
                }
            }
        }
        out
    }

    /// Residuals at `pre_assistant` of `texts` under system prompt `system`, per point `[N, D]`.
    fn acts(&self, texts: &[String], system: &str) -> Result<BTreeMap<HookPoint, candle_core::Tensor>> {
        let fmt = PromptFormat::Chat { system: Some(system.to_string()) };
        let prompts = PromptIds::encode_all(&self.model, texts, &fmt)?;
        collect_activations(&self.model, &prompts, &self.points(), &ReadAt::Named(Position::PreAssistant), self.sizes().batch_size)
    }

    /// Phase 2: `v_trait(l) = E[h_l | promote] − E[h_l | suppress]` at `pre_assistant` over the
    /// first `n_direction` extraction prompts, per layer; saved raw (not normalised) with its
    /// hook point as `directions/layer_<l>.safetensors`. Returns (and writes to
    /// `directions/summary.csv`) one [`DirectionSummaryRow`] per layer.
    pub fn extract_directions(&self) -> Result<DataFrame> {
        let prompts = self.direction_prompts("extract", self.sizes().n_direction);
        ensure!(prompts.len() >= 2, "need at least 2 extraction prompts, have {}", prompts.len());
        let texts: Vec<String> = prompts.iter().map(|p| p.2.clone()).collect();
        let pos = self.acts(&texts, &self.cfg.prompts.promote)?;
        let neg = self.acts(&texts, &self.cfg.prompts.suppress)?;
        let mut rows: Vec<DirectionSummaryRow> = vec![];
        let n = texts.len();
        for p in self.points() {
            let (a, b) = (&pos[&p], &neg[&p]);
            let mut d = mean_diff(a, b)?;
            d.meta.hook = Some(p);
            d = d.with_extra("promote", &self.cfg.prompts.promote).with_extra("suppress", &self.cfg.prompts.suppress).with_extra("position", "pre_assistant");
            d.save(self.run.join(format!("directions/layer_{}.safetensors", p.layer))?)?;
            let h = n / 2;
            let d1 = mean_diff(&a.narrow(0, 0, h)?, &b.narrow(0, 0, h)?)?;
            let d2 = mean_diff(&a.narrow(0, h, n - h)?, &b.narrow(0, h, n - h)?)?;
            let hn: f32 = a.sqr()?.sum(1)?.sqrt()?.mean_all()?.to_scalar()?;
            rows.push(DirectionSummaryRow {
                layer: p.layer as u32,
                n: n as u32,
                norm: d.norm() as f64,
                mean_resid_norm_promote: hn as f64,
                split_half_cos: d1.cosine(&d2)? as f64,
            });
        }
        let df = to_df_with_header(&rows)?;
        self.run.write_csv("directions/summary.csv", &df)?;
        Ok(df)
    }

    /// The trait directions saved by [`Inoculation::extract_directions`], in layer order.
    pub fn directions(&self) -> Result<Vec<Direction>> {
        self.layers
            .iter()
            .map(|l| {
                let p = self.run.join(format!("directions/layer_{l}.safetensors"))?;
                ensure!(p.is_file(), "{} is missing: run notebook 02 (extract_directions) first", p.display());
                let d = Direction::load(&p)?;
                ensure!(d.meta.hook == Some(HookPoint::resid_post(*l)), "{}: hook point {:?}, expected layer {l} resid_post", p.display(), d.meta.hook);
                Ok(d)
            })
            .collect()
    }

    /// Sanity check 1 data: the held-out direction prompts under promote and under suppress,
    /// projection of the `pre_assistant` residual onto the unit trait direction per layer.
    /// Columns: the fields of [`HeldoutProjectionRow`]; written to `direction_heldout.parquet`.
    pub fn heldout_projections(&self) -> Result<DataFrame> {
        let dirs = self.directions()?;
        let prompts = self.direction_prompts("heldout", self.sizes().n_direction_heldout);
        ensure!(!prompts.is_empty(), "no held-out direction prompts");
        let texts: Vec<String> = prompts.iter().map(|p| p.2.clone()).collect();
        let mut rows: Vec<HeldoutProjectionRow> = vec![];
        for (name, system) in [("promote", &self.cfg.prompts.promote), ("suppress", &self.cfg.prompts.suppress)] {
            let acts = self.acts(&texts, system)?;
            for (p, d) in self.points().iter().zip(&dirs) {
                let v = d.normalized()?.vector;
                let h: Vec<Vec<f32>> = acts[p].to_vec2()?;
                for (i, row) in h.iter().enumerate() {
                    rows.push(HeldoutProjectionRow {
                        example_id: prompts[i].0.clone(),
                        kind: prompts[i].1.clone(),
                        system: name.to_string(),
                        layer: p.layer as u32,
                        projection: dot(row, &v),
                    });
                }
            }
        }
        let df = to_df_with_header(&rows)?;
        self.run.write_parquet("direction_heldout.parquet", &df)?;
        Ok(df)
    }

    /// Sanity check 2 data: held-out direction prompts (half of them, balanced over math and
    /// general, with `ask_caps_suffix` appended, so that caps propensity varies) generated greedily under the
    /// neutral system prompt: per prompt and layer, the projection at `prompt_last` (the
    /// `pre_assistant` token of the generation prompt) and the caps fraction of the
    /// generation. Columns: the fields of [`NeutralGenerationRow`]; written to
    /// `neutral_generation.parquet`.
    pub fn neutral_generation(&self) -> Result<DataFrame> {
        let dirs = self.directions()?;
        let s = self.sizes();
        let prompts: Vec<(String, String, String)> = self
            .direction_prompts("heldout", s.n_neutral_gen)
            .into_iter()
            .enumerate()
            .map(|(i, (id, _, prompt))| {
                // i % 4 in {1, 2}: half of each kind (prompts alternate math / general).
                if i % 4 == 1 || i % 4 == 2 {
                    (id, "ask_caps".to_string(), format!("{prompt} {}", self.cfg.prompts.ask_caps_suffix))
                } else {
                    (id, "plain".to_string(), prompt)
                }
            })
            .collect();
        let exs: Vec<ChatExample> = prompts.iter().map(|p| ChatExample::new(p.0.clone(), p.2.clone(), "")).collect();
        let dcfg = DriftConfig { k: 1, generate: GenerateConfig::greedy(s.max_new_tokens), batch_size: s.batch_size, text_metric: Some(CAPS) };
        let out = drift_eval(&self.model, "base", &exs, &self.cfg.neutral(), &dirs, &dcfg, &Hooks::new())?;
        let variant: BTreeMap<String, String> = prompts.iter().map(|p| (p.0.clone(), p.1.clone())).collect();
        let g = &out.generations;
        let gid = column_str(g, "example_id")?;
        let gcaps = column_f64(g, "caps_fraction")?;
        let gtext = column_str(g, "text")?;
        let by_id: BTreeMap<&str, usize> = gid.iter().enumerate().map(|(i, e)| (e.as_str(), i)).collect();
        let pr = &out.projections;
        let (pid, ppos, player, pval) = (column_str(pr, "example_id")?, column_str(pr, "position")?, column_f64(pr, "layer")?, column_f64(pr, "projection")?);
        let mut rows: Vec<NeutralGenerationRow> = vec![];
        for i in 0..pid.len() {
            if ppos[i] != "prompt_last" {
                continue;
            }
            let gi = by_id[pid[i].as_str()];
            rows.push(NeutralGenerationRow {
                example_id: pid[i].clone(),
                variant: variant[&pid[i]].clone(),
                layer: player[i] as u32,
                projection: pval[i],
                caps_fraction: gcaps[gi],
                text: gtext[gi].clone(),
            });
        }
        let df = to_df_with_header(&rows)?;
        self.run.write_parquet("neutral_generation.parquet", &df)?;
        Ok(df)
    }

    // -------------------------------------------------------------------------------- phase 3

    /// The alignment settings of phase 3: `pre_assistant`, `user_end`, `assistant[k]`.
    pub fn alignment_config(&self) -> AlignmentConfig {
        let s = self.sizes();
        let mut positions = vec![Position::PreAssistant, Position::UserEnd];
        if s.k_assistant > 0 {
            positions.push(Position::Assistant(s.k_assistant));
        }
        AlignmentConfig { positions, n_random: s.n_random, seed: self.cfg.run.seed, batch_size: s.batch_size, include_end_of_turn: false }
    }

    /// Phase 3: the gradient-alignment table of the calibration batch under every condition
    /// (neutral, inoculation, the candidates), one resumable sweep cell per condition (sweep
    /// `alignment`: parts in `parts/alignment/`, collected into `alignment.parquet`). Adds the
    /// column `align = -cos` (see the module docs).
    pub fn alignment(&self) -> Result<DataFrame> {
        let dirs = self.directions()?;
        let exs = self.calibration();
        let acfg = self.alignment_config();
        let conds = self.cfg.all_conditions();
        let keys: Vec<CellKey> = conds.iter().map(|c| CellKey::new().with("condition", c.name.as_str())).collect();
        let mut sweep = self.run.sweep::<CellKey>("alignment")?;
        sweep.run(keys, |k| {
            let name = k.str("condition")?;
            let c = conds.iter().find(|c| c.name == name).with_context(|| format!("unknown condition {name}"))?;
            let df = gradient_alignment(&self.model, &exs, std::slice::from_ref(c), &dirs, &acfg, &Hooks::new())?;
            with_align(df)
        })?;
        sweep.collect()
    }

    /// `alignment.parquet` as written by [`Inoculation::alignment`].
    pub fn load_alignment(&self) -> Result<DataFrame> {
        let p = "alignment.parquet";
        ensure!(self.run.exists(p), "{} is missing: run notebook 03 first", self.run.join(p)?.display());
        self.run.read_parquet(p)
    }

    // -------------------------------------------------------------------------------- phase 4

    /// Phase 4.1: the candidates' mean loss on the calibration batch (from the alignment table),
    /// the one closest to the inoculation loss chosen (neutral excluded); writes
    /// `loss_matched.json` and `loss_matched.csv`.
    pub fn select_control(&self, alignment: &DataFrame) -> Result<LossMatchedSelection> {
        let conds = self.cfg.all_conditions();
        let cands = candidate_losses(&fresh(alignment), &conds)?;
        let sel = select_loss_matched(&cands, "inoculation", &["neutral"])?;
        sel.write_json(&self.run.join("loss_matched.json")?)?;
        self.run.write_csv("loss_matched.csv", &sel.to_df()?)?;
        Ok(sel)
    }

    /// The selection written by [`Inoculation::select_control`].
    pub fn loss_matched(&self) -> Result<LossMatchedSelection> {
        let p = self.run.join("loss_matched.json")?;
        ensure!(p.is_file(), "{} is missing: run notebook 04 first", p.display());
        LossMatchedSelection::read_json(&p)
    }

    /// The loss-matched control condition (named `control`, with the chosen prompt).
    pub fn control(&self) -> Result<Condition> {
        let s = self.loss_matched()?;
        let sys = s.chosen_system.context("the chosen control has no system prompt")?;
        Ok(Condition::new("control", sys))
    }

    // -------------------------------------------------------------------------------- phase 5

    /// The conditions fine-tuned in phase 5: neutral, inoculation, control.
    pub fn finetune_conditions(&self) -> Result<Vec<Condition>> {
        Ok(vec![self.cfg.neutral(), self.cfg.inoculation(), self.control()?])
    }

    /// The adapter directory of a fine-tune.
    pub fn adapter_dir(&self, condition: &str, seed: u64) -> Result<PathBuf> {
        self.run.join(format!("adapters/{condition}_s{seed}"))
    }

    /// Phase 5.1-5.2: one LoRA fine-tune per condition (neutral, inoculation, control) and seed
    /// on the ALL-CAPS training set with that condition's system prompt, loss on assistant
    /// tokens only. Before the first step and every `log_every` steps, the trait alignment of the
    /// gradient (w.r.t. the residual, at `pre_assistant`, per layer) on a fixed batch (the first
    /// `n_log_examples` calibration examples, same condition, adapter applied) is logged. Each
    /// fine-tune is a resumable sweep cell (`training`); its adapter is saved in PEFT format in
    /// `adapters/<condition>_s<seed>/` (written to a temporary directory, then renamed).
    /// Returns `training.parquet`: `condition, seed` (the sweep keys) and the fields of
    /// [`TrainLogRow`].
    pub fn finetune(&self) -> Result<DataFrame> {
        let dirs = self.directions()?;
        let conds = self.finetune_conditions()?;
        let s = self.sizes().clone();
        let log_batch: Vec<ChatExample> = self.calibration().into_iter().take(s.lora.n_log_examples).collect();
        let train = self.train_examples();
        let tok = self.model.tok()?;
        let acfg = AlignmentConfig { positions: vec![Position::PreAssistant], n_random: 0, seed: self.cfg.run.seed, batch_size: s.batch_size, include_end_of_turn: false };
        let mut keys = vec![];
        for c in &conds {
            for &seed in &s.lora.seeds {
                keys.push(CellKey::new().with("condition", c.name.as_str()).with("seed", seed as i64));
            }
        }
        let mut sweep = self.run.sweep::<CellKey>("training")?;
        sweep.run(keys, |k| {
            let name = k.str("condition")?.to_string();
            let seed = k.i64("seed")? as u64;
            let c = conds.iter().find(|c| c.name == name).with_context(|| format!("unknown condition {name}"))?;
            let data: Vec<TrainExample> = train
                .iter()
                .map(|e| TrainExample::qa(tok, c.system.as_deref(), &e.user, &e.assistant))
                .collect::<Result<_>>()?;
            let adapter = LoraAdapter::new(&self.model, &lora_config(&s.lora, seed)?)?;
            let tcfg = TrainConfig {
                lr: s.lora.lr,
                warmup_ratio: s.lora.warmup_ratio,
                max_steps: Some(s.lora.max_steps),
                batch_size: s.lora.batch_size,
                grad_accum: s.lora.grad_accum,
                seed,
                callback_every: s.lora.log_every,
                ..Default::default()
            };
            let mut log = TrainLog::default();
            let measure = |adapter: &LoraAdapter| -> Result<DataFrame> {
                gradient_alignment(&self.model, &log_batch, std::slice::from_ref(c), &dirs, &acfg, &Hooks::new().lora(adapter))
            };
            log.push(None, &measure(&adapter)?)?;
            train_lora(&self.model, &adapter, &data, &tcfg, |info, a| log.push(Some(info), &measure(a)?))?;
            adapter.save_atomic(&self.adapter_dir(&name, seed)?)?;
            log.into_df()
        })?;
        let df = sweep.collect()?;
        Ok(df)
    }

    /// Phase 5.3: drift of every fine-tuned model and of the base model, under the neutral
    /// system prompt on the held-out problems (greedy, `max_new_tokens`): projections at
    /// `prompt_last` and `gen_avg(gen_k)` per layer, and the generations with their caps
    /// fraction. A resumable sweep cell per model (`drift`); the generations of a cell are saved
    /// beside it. Returns `(drift_projections.parquet, drift_generations.parquet)`; models are
    /// labelled `base` and `<condition>_s<seed>` with columns `train_condition`, `seed`.
    pub fn drift(&self) -> Result<(DataFrame, DataFrame)> {
        let dirs = self.directions()?;
        let s = self.sizes().clone();
        let exs = self.eval_examples();
        let neutral = self.cfg.neutral();
        let dcfg = DriftConfig { k: s.gen_k, generate: GenerateConfig::greedy(s.max_new_tokens), batch_size: s.batch_size, text_metric: Some(CAPS) };
        let mut keys = vec![CellKey::new().with("train_condition", "base").with("seed", -1i64)];
        for c in self.finetune_conditions()? {
            for &seed in &s.lora.seeds {
                keys.push(CellKey::new().with("train_condition", c.name.as_str()).with("seed", seed as i64));
            }
        }
        let mut sweep = self.run.sweep::<CellKey>("drift_projections")?;
        sweep.run(keys.clone(), |k| {
            let cond = k.str("train_condition")?.to_string();
            let seed = k.i64("seed")?;
            let (label, adapter) = if cond == "base" {
                ("base".to_string(), None)
            } else {
                let dir = self.adapter_dir(&cond, seed as u64)?;
                ensure!(dir.is_dir(), "{} is missing: run the fine-tunes first", dir.display());
                (format!("{cond}_s{seed}"), Some(LoraAdapter::load(&dir, &self.model)?))
            };
            let hooks = match &adapter {
                Some(a) => Hooks::new().lora(a),
                None => Hooks::new(),
            };
            let out = drift_eval(&self.model, &label, &exs, &neutral, &dirs, &dcfg, &hooks)?;
            self.run.write_parquet(format!("drift/generations_{label}.parquet"), &add_model_keys(out.generations, &cond, seed)?)?;
            add_model_keys(out.projections, &cond, seed)
        })?;
        let proj = sweep.collect()?;
        let mut gens: Option<DataFrame> = None;
        for k in &keys {
            let cond = k.str("train_condition")?;
            let seed = k.i64("seed")?;
            let label = if cond == "base" { "base".to_string() } else { format!("{cond}_s{seed}") };
            let g = self.run.read_parquet(format!("drift/generations_{label}.parquet"))?;
            gens = Some(match gens {
                None => g,
                Some(x) => x.vstack(&g)?,
            });
        }
        let gens = gens.context("no drift generations")?;
        self.run.write_parquet("drift_generations.parquet", &gens)?;
        Ok((proj, gens))
    }

    /// `training.parquet`, `drift_projections.parquet`, `drift_generations.parquet` (notebook 07).
    pub fn load_phase5(&self) -> Result<(DataFrame, DataFrame, DataFrame)> {
        for p in ["training.parquet", "drift_projections.parquet", "drift_generations.parquet"] {
            ensure!(self.run.exists(p), "{} is missing: run notebook 06 first", self.run.join(p)?.display());
        }
        Ok((self.run.read_parquet("training.parquet")?, self.run.read_parquet("drift_projections.parquet")?, self.run.read_parquet("drift_generations.parquet")?))
    }

    /// The bootstrap settings of the run (`n_boot`, 95 %, the run seed).
    pub fn bootstrap(&self) -> Bootstrap {
        self.boot()
    }
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

/// Adds `align = -cos` to an alignment table.
pub fn with_align(mut df: DataFrame) -> Result<DataFrame> {
    let cos = column_f64(&df, "cos")?;
    df.with_column(Column::new("align".into(), cos.iter().map(|c| -c).collect::<Vec<f64>>()))?;
    Ok(df)
}

fn add_model_keys(mut df: DataFrame, cond: &str, seed: i64) -> Result<DataFrame> {
    let n = df.height();
    df.with_column(Column::new("train_condition".into(), vec![cond.to_string(); n]))?;
    df.with_column(Column::new("seed".into(), vec![seed; n]))?;
    Ok(df)
}


/// A row of the training log (`training.parquet`, see [`Inoculation::finetune`]): one logging
/// step × layer, the alignment measured on the logging batch.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainLogRow {
    /// Optimizer step (0: before the first step).
    pub step: i64,
    /// The step's training loss, learning rate and LoRA gradient norm (NaN at step 0).
    pub train_loss: f64,
    pub lr: f64,
    pub lora_grad_norm: f64,
    pub layer: i64,
    /// Means over the logging batch of the alignment table's `loss`, `cos`, `-cos` and
    /// `grad_norm` at this layer.
    pub log_loss: f64,
    pub cos: f64,
    pub align: f64,
    pub grad_norm: f64,
}

/// The training log's rows so far.
#[derive(Default)]
struct TrainLog {
    rows: Vec<TrainLogRow>,
}

impl TrainLog {
    /// Adds the per-layer mean over the logging batch of one alignment measurement.
    fn push(&mut self, info: Option<&StepInfo>, al: &DataFrame) -> Result<()> {
        let (layer, loss, cos, gn) = (column_f64(al, "layer")?, column_f64(al, "loss")?, column_f64(al, "cos")?, column_f64(al, "grad_norm")?);
        let mut by: BTreeMap<i64, (f64, f64, f64, usize)> = BTreeMap::new();
        for i in 0..layer.len() {
            let e = by.entry(layer[i] as i64).or_default();
            e.0 += loss[i];
            e.1 += cos[i];
            e.2 += gn[i];
            e.3 += 1;
        }
        for (l, (lo, c, g, n)) in by {
            let n = n as f64;
            self.rows.push(TrainLogRow {
                step: info.map_or(0, |i| i.step as i64),
                train_loss: info.map_or(f64::NAN, |i| i.loss),
                lr: info.map_or(f64::NAN, |i| i.lr),
                lora_grad_norm: info.map_or(f64::NAN, |i| i.grad_norm),
                layer: l,
                log_loss: lo / n,
                cos: c / n,
                align: -c / n,
                grad_norm: g / n,
            });
        }
        Ok(())
    }
    fn into_df(self) -> Result<DataFrame> {
        to_df_with_header(&self.rows)
    }
}

// ------------------------------------------------------------------------------------------------
// Analysis (pure functions of the tables)
// ------------------------------------------------------------------------------------------------

/// A row of [`heldout_check`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HeldoutCheckRow {
    pub layer: i64,
    /// Prompts seen under both system prompts.
    pub n: u32,
    /// Mean projection under promote and under suppress.
    pub promote: f64,
    pub suppress: f64,
    /// Mean paired difference promote - suppress with its bootstrap CI.
    pub diff: f64,
    pub diff_lo: f64,
    pub diff_hi: f64,
    /// `diff_lo > 0`.
    pub holds: bool,
}

/// Sanity check 1 per layer: mean projection under promote and suppress on the held-out prompts,
/// the paired difference with its bootstrap CI, and whether it holds (CI above 0). Columns: the
/// fields of [`HeldoutCheckRow`].
pub fn heldout_check(df: &DataFrame, boot: &Bootstrap) -> Result<DataFrame> {
    let df = fresh(df);
    let (ex, sys, layer, proj) = (column_str(&df, "example_id")?, column_str(&df, "system")?, column_f64(&df, "layer")?, column_f64(&df, "projection")?);
    let mut by: BTreeMap<i64, (BTreeMap<String, f64>, BTreeMap<String, f64>)> = BTreeMap::new();
    for i in 0..ex.len() {
        let e = by.entry(layer[i] as i64).or_default();
        match sys[i].as_str() {
            "promote" => e.0.insert(ex[i].clone(), proj[i]),
            "suppress" => e.1.insert(ex[i].clone(), proj[i]),
            other => bail!("direction_heldout: unknown system {other:?}"),
        };
    }
    let mut rows: Vec<HeldoutCheckRow> = vec![];
    for (l, (p, s)) in by {
        let (a, b): (Vec<f64>, Vec<f64>) = p.iter().filter_map(|(k, v)| s.get(k).map(|w| (*v, *w))).unzip();
        ensure!(!a.is_empty(), "layer {l}: no prompt under both promote and suppress");
        let ci = bootstrap_paired_ci(&a, &b, boot)?;
        rows.push(HeldoutCheckRow {
            layer: l,
            n: a.len() as u32,
            promote: mean(&a),
            suppress: mean(&b),
            diff: ci.estimate,
            diff_lo: ci.lo,
            diff_hi: ci.hi,
            holds: ci.lo > 0.0,
        });
    }
    to_df_with_header(&rows)
}

/// A row of [`neutral_correlation`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NeutralCorrelationRow {
    pub layer: i64,
    /// Generations at this layer.
    pub n: u32,
    /// Pearson's r and its p-value (NaN when an input is constant).
    pub r: f64,
    pub p: f64,
    /// `r > 0 && p < 0.05`.
    pub holds: bool,
}

/// Sanity check 2 per layer: Pearson's r (and p) between the `prompt_last` projection and the
/// caps fraction of the neutral generation, and whether it holds (r > 0, p < 0.05). NaN when
/// an input is constant (e.g. no generation has capitals). Columns: the fields of
/// [`NeutralCorrelationRow`].
pub fn neutral_correlation(df: &DataFrame) -> Result<DataFrame> {
    let df = fresh(df);
    let (layer, proj, caps) = (column_f64(&df, "layer")?, column_f64(&df, "projection")?, column_f64(&df, "caps_fraction")?);
    let mut by: BTreeMap<i64, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for i in 0..layer.len() {
        let e = by.entry(layer[i] as i64).or_default();
        e.0.push(proj[i]);
        e.1.push(caps[i]);
    }
    let mut rows: Vec<NeutralCorrelationRow> = vec![];
    for (l, (x, y)) in by {
        let (r, p) = match pearson(&x, &y) {
            Ok(c) => (c.r, c.p),
            Err(_) => (f64::NAN, f64::NAN),
        };
        rows.push(NeutralCorrelationRow { layer: l, n: x.len() as u32, r, p, holds: r > 0.0 && p < 0.05 });
    }
    to_df_with_header(&rows)
}




/// A row of [`alignment_summary`]: one condition × layer × position, trait direction.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AlignmentSummaryRow {
    pub condition: String,
    pub layer: i64,
    pub position: String,
    /// Rows (examples) in the group, NaN cosines included.
    pub n: u32,
    /// Means over the examples (finite values only).
    pub loss: f64,
    pub grad_norm: f64,
    pub dot: f64,
    pub cos: f64,
    /// Mean of `align = -cos` with its bootstrap CI (NaN when no cosine is defined).
    pub align: f64,
    pub align_lo: f64,
    pub align_hi: f64,
}

/// Phase 3 summary of an alignment table, trait direction only: per condition × layer ×
/// position, the mean over examples of `loss`, `grad_norm`, `dot`, `cos`, `align` with a
/// bootstrap CI of `align` (rows with a NaN cosine, where `g = 0`, are left out of `cos`/`align`).
/// Columns: the fields of [`AlignmentSummaryRow`].
pub fn alignment_summary(df: &DataFrame, boot: &Bootstrap) -> Result<DataFrame> {
    let df = fresh(df);
    let (cond, dir, pos, layer) = (column_str(&df, "condition")?, column_str(&df, "direction")?, column_str(&df, "position")?, column_f64(&df, "layer")?);
    let vals: Vec<Vec<f64>> = ["loss", "grad_norm", "dot", "cos"].iter().map(|c| column_f64(&df, c)).collect::<Result<_>>()?;
    let mut by: BTreeMap<(String, i64, String), Vec<usize>> = BTreeMap::new();
    for i in 0..cond.len() {
        if dir[i] == "trait" {
            by.entry((cond[i].clone(), layer[i] as i64, pos[i].clone())).or_default().push(i);
        }
    }
    ensure!(!by.is_empty(), "the alignment table has no trait rows");
    let mut rows: Vec<AlignmentSummaryRow> = vec![];
    for ((cn, l, p), idx) in by {
        // NaN cosines (g = 0, e.g. user_end at the last block, which no target reads) are left out.
        let col = |k: usize| -> Vec<f64> { idx.iter().map(|&i| vals[k][i]).filter(|x| x.is_finite()).collect() };
        let align: Vec<f64> = col(3).iter().map(|x| -x).collect();
        let ci = if align.is_empty() {
            Ci { estimate: f64::NAN, lo: f64::NAN, hi: f64::NAN, level: boot.level, n: 0, n_boot: boot.n_boot }
        } else {
            bootstrap_mean_ci(&align, boot)?
        };
        rows.push(AlignmentSummaryRow {
            condition: cn,
            layer: l,
            position: p,
            n: idx.len() as u32,
            loss: mean(&col(0)),
            grad_norm: mean(&col(1)),
            dot: mean(&col(2)),
            cos: mean(&col(3)),
            align: ci.estimate,
            align_lo: ci.lo,
            align_hi: ci.hi,
        });
    }
    to_df_with_header(&rows)
}

/// A row of [`loss_by_condition`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LossByConditionRow {
    pub condition: String,
    /// Examples.
    pub n: u32,
    /// Mean per-example loss with its bootstrap CI.
    pub loss: f64,
    pub loss_lo: f64,
    pub loss_hi: f64,
}

/// Per condition: mean assistant-token loss on the calibration batch with a bootstrap CI.
/// Columns: the fields of [`LossByConditionRow`]; conditions in first-seen order.
pub fn loss_by_condition(df: &DataFrame, boot: &Bootstrap) -> Result<DataFrame> {
    let df = fresh(df);
    let (ex, cond, loss) = (column_str(&df, "example_id")?, column_str(&df, "condition")?, column_f64(&df, "loss")?);
    let mut order: Vec<String> = vec![];
    let mut by: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    for i in 0..ex.len() {
        if !order.contains(&cond[i]) {
            order.push(cond[i].clone());
        }
        by.entry(cond[i].clone()).or_default().insert(ex[i].clone(), loss[i]);
    }
    let mut rows: Vec<LossByConditionRow> = vec![];
    for c in order {
        let v: Vec<f64> = by[&c].values().copied().collect();
        let ci = bootstrap_mean_ci(&v, boot)?;
        rows.push(LossByConditionRow { condition: c, n: v.len() as u32, loss: ci.estimate, loss_lo: ci.lo, loss_hi: ci.hi });
    }
    to_df_with_header(&rows)
}






/// A row of [`drift_caps_summary`]: one model.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DriftCapsRow {
    /// `base` or `<train_condition>_s<seed>`, its condition and seed (-1 for base).
    pub model: String,
    pub train_condition: String,
    pub seed: i64,
    /// Generations.
    pub n: u32,
    /// Mean caps fraction of the generations.
    pub caps: f64,
    /// Mean paired shift versus base with its CI (0 for base itself).
    pub shift_vs_base: f64,
    pub lo_vs_base: f64,
    pub hi_vs_base: f64,
    /// Mean paired difference versus the neutral fine-tune of the same seed with its CI (NaN
    /// for base, neutral, or when it is missing).
    pub diff_vs_neutral: f64,
    pub lo_vs_neutral: f64,
    pub hi_vs_neutral: f64,
}

/// Drift summary, behavioural: per model, the mean caps fraction of its neutral-prompt
/// generations, the shift versus base (paired, CI) and the difference versus the neutral
/// fine-tune of the same seed (paired, CI). Columns: the fields of [`DriftCapsRow`].
pub fn drift_caps_summary(gens: &DataFrame, boot: &Bootstrap) -> Result<DataFrame> {
    let g = fresh(gens);
    let (model, tc, seed, ex, caps) = (column_str(&g, "model")?, column_str(&g, "train_condition")?, column_f64(&g, "seed")?, column_str(&g, "example_id")?, column_f64(&g, "caps_fraction")?);
    let mut by: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    let mut meta: Vec<(String, String, i64)> = vec![];
    for i in 0..model.len() {
        by.entry(model[i].clone()).or_default().insert(ex[i].clone(), caps[i]);
        if !meta.iter().any(|m| m.0 == model[i]) {
            meta.push((model[i].clone(), tc[i].clone(), seed[i] as i64));
        }
    }
    let base = by.get("base").context("no base model generations")?;
    let mut rows: Vec<DriftCapsRow> = vec![];
    for (m, cond, sd) in &meta {
        let vals = &by[m];
        let (a, b) = paired(vals, base);
        let vb = if cond == "base" { (0.0, 0.0, 0.0) } else { ci_or_nan(&a, &b, boot) };
        let vn = match by.get(&format!("neutral_s{sd}")) {
            Some(n) if cond != "neutral" && cond != "base" => {
                let (a, b) = paired(vals, n);
                ci_or_nan(&a, &b, boot)
            }
            _ => (f64::NAN, f64::NAN, f64::NAN),
        };
        rows.push(DriftCapsRow {
            model: m.clone(),
            train_condition: cond.clone(),
            seed: *sd,
            n: vals.len() as u32,
            caps: mean(&vals.values().copied().collect::<Vec<_>>()),
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

/// One fine-tune's point in criterion 4: its mean trait alignment during training and its drift.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunPoint {
    pub train_condition: String,
    pub seed: i64,
    /// Mean of `align` over the logged steps and layers of the fixed batch.
    pub mean_align: f64,
    /// Mean projection shift versus base at `prompt_last`, averaged over layers.
    pub projection_drift: f64,
    /// Caps-fraction shift versus base under the neutral prompt.
    pub caps_drift: f64,
}

/// The [`RunPoint`]s of a study from `training.parquet` and the drift tables.
pub fn run_points(training: &DataFrame, proj: &DataFrame, gens: &DataFrame, boot: &Bootstrap) -> Result<Vec<RunPoint>> {
    let t = fresh(training);
    let (tc, sd, al) = (column_str(&t, "condition")?, column_f64(&t, "seed")?, column_f64(&t, "align")?);
    let mut align: BTreeMap<(String, i64), Vec<f64>> = BTreeMap::new();
    for i in 0..tc.len() {
        align.entry((tc[i].clone(), sd[i] as i64)).or_default().push(al[i]);
    }
    let ps = drift_projection_summary(proj, &DriftLabels::default(), boot)?;
    let (pc, psd, ppos, pshift) = (column_str(&ps, "train_condition")?, column_f64(&ps, "seed")?, column_str(&ps, "position")?, column_f64(&ps, "shift_vs_base")?);
    let cs = drift_caps_summary(gens, boot)?;
    let (cc, csd, cshift) = (column_str(&cs, "train_condition")?, column_f64(&cs, "seed")?, column_f64(&cs, "shift_vs_base")?);
    let mut out = vec![];
    for ((c, s), a) in align {
        let pd: Vec<f64> = (0..pc.len()).filter(|&i| pc[i] == c && psd[i] as i64 == s && ppos[i] == "prompt_last").map(|i| pshift[i]).collect();
        let cd = (0..cc.len()).find(|&i| cc[i] == c && csd[i] as i64 == s).map(|i| cshift[i]);
        ensure!(!pd.is_empty(), "no drift projections for {c} seed {s}");
        out.push(RunPoint { train_condition: c, seed: s, mean_align: mean(&a), projection_drift: mean(&pd), caps_drift: cd.unwrap_or(f64::NAN) });
    }
    Ok(out)
}

/// One acceptance criterion of the plan, with its measured value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Criterion {
    /// 1..4 as in the plan.
    pub id: u8,
    pub name: String,
    /// What was measured, in words with numbers.
    pub measured: String,
    /// The headline number (e.g. the mean change of alignment).
    pub value: f64,
    /// Its 95 % interval where there is one.
    pub ci: Option<(f64, f64)>,
    pub holds: bool,
}

impl std::fmt::Display for Criterion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] {}: {} -> {}", self.id, self.name, self.measured, if self.holds { "HOLDS" } else { "does not hold" })
    }
}

/// The verdict over the four criteria.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Acceptance {
    pub position: String,
    pub control: String,
    pub criteria: Vec<Criterion>,
    /// Mean calibration loss, inoculation minus neutral.
    pub loss_delta: f64,
    pub verdict: String,
}

fn ci_tuple(c: &Ci) -> Option<(f64, f64)> {
    Some((c.lo, c.hi))
}

/// The plan's four acceptance criteria from the alignment table (at `position`, trait and
/// random directions, conditions `neutral`, `inoculation` and `control`, the loss-matched
/// candidate's name) and the fine-tunes' [`RunPoint`]s (criterion 4; empty: not run).
/// Alignment is `align = -cos` averaged over the layer subset per example.
///
/// 1. `mean_i align[inoc] − align[neutral] < 0`, paired bootstrap CI entirely below 0.
/// 2. `mean_i align[inoc] − align[control] < 0`, CI entirely below 0 (the drop is larger than
///    the loss-matched control's).
/// 3. The trait direction's change (1) is negative and extreme among the random directions':
///    empirical two-sided `p = (1 + #{|Δ_rand| >= |Δ_trait|}) / (N + 1) < 0.05` (needs N >= 19).
/// 4. Inoculation fine-tunes have both a lower mean training alignment and a lower projection
///    drift than the neutral ones (means over seeds), and the Pearson r of mean alignment vs
///    projection drift across runs is positive (3-4 runs) or positive with p < 0.05 (5 runs or
///    more; 3 runs, one seed per condition, cannot make a correlation significant).
///
/// A failed criterion 1 with a lower inoculation loss is reported as the plan's null.
pub fn acceptance(alignment: &DataFrame, position: &str, control: &str, runs: &[RunPoint], boot: &Bootstrap) -> Result<Acceptance> {
    let pe = per_example(alignment, position, "cos", Layers::Averaged)?;
    let get = |c: &str, d: &str| -> Result<&BTreeMap<String, f64>> {
        pe.get(&(c.to_string(), d.to_string(), -1)).with_context(|| format!("the alignment table has no {d} rows for condition {c:?} at {position}"))
    };
    let neg = |m: &BTreeMap<String, f64>| -> BTreeMap<String, f64> { m.iter().map(|(k, v)| (k.clone(), -v)).collect() };
    let (neu, ino, ctl) = (neg(get("neutral", "trait")?), neg(get("inoculation", "trait")?), neg(get(control, "trait")?));
    let mut crit = vec![];
    // 1
    let (a, b) = paired(&ino, &neu);
    let c1 = bootstrap_paired_ci(&a, &b, boot)?;
    crit.push(Criterion {
        id: 1,
        name: "cosine alignment decreases under inoculation vs neutral".into(),
        measured: format!(
            "mean align neutral {:+.4}, inoculation {:+.4}; change {:+.4} [{:+.4}, {:+.4}] (n = {})",
            mean(&b),
            mean(&a),
            c1.estimate,
            c1.lo,
            c1.hi,
            a.len()
        ),
        value: c1.estimate,
        ci: ci_tuple(&c1),
        holds: c1.hi < 0.0,
    });
    // 2
    let (a2, b2) = paired(&ino, &ctl);
    let c2 = bootstrap_paired_ci(&a2, &b2, boot)?;
    let (cn, nn) = paired(&ctl, &neu);
    crit.push(Criterion {
        id: 2,
        name: format!("the decrease is larger than under the loss-matched control ({control})"),
        measured: format!(
            "change vs neutral: inoculation {:+.4}, control {:+.4}; inoculation − control {:+.4} [{:+.4}, {:+.4}]",
            c1.estimate,
            mean(&cn) - mean(&nn),
            c2.estimate,
            c2.lo,
            c2.hi
        ),
        value: c2.estimate,
        ci: ci_tuple(&c2),
        holds: c2.hi < 0.0,
    });
    // 3
    let spec = specificity_summary(&specificity_table(alignment, position, "neutral", "inoculation")?)?;
    let (sl, st, sp, sn, sm, ssd) = (
        column_f64(&spec, "layer")?,
        column_f64(&spec, "trait_delta")?,
        column_f64(&spec, "p_empirical")?,
        column_f64(&spec, "n_random")?,
        column_f64(&spec, "random_mean")?,
        column_f64(&spec, "random_sd")?,
    );
    let i = sl.iter().position(|l| *l == -1.0).context("no layer-averaged specificity row")?;
    let n_random = sn[i] as usize;
    crit.push(Criterion {
        id: 3,
        name: "the change is specific to the trait direction (vs random directions)".into(),
        measured: format!(
            "trait change {:+.4}; {} random directions: mean {:+.4}, sd {:.4}; empirical p = {:.3}{}",
            st[i],
            n_random,
            sm[i],
            ssd[i],
            sp[i],
            if n_random < 19 { " (fewer than 19 random directions: p cannot reach 0.05)" } else { "" }
        ),
        value: sp[i],
        ci: None,
        holds: st[i] < 0.0 && sp[i] < 0.05,
    });
    // 4
    if runs.is_empty() {
        crit.push(Criterion { id: 4, name: "reduced alignment predicts reduced drift".into(), measured: "no fine-tunes".into(), value: f64::NAN, ci: None, holds: false });
    } else {
        let avg = |c: &str, f: fn(&RunPoint) -> f64| mean(&runs.iter().filter(|r| r.train_condition == c).map(f).collect::<Vec<_>>());
        let (an, ai) = (avg("neutral", |r| r.mean_align), avg("inoculation", |r| r.mean_align));
        let (dn, di) = (avg("neutral", |r| r.projection_drift), avg("inoculation", |r| r.projection_drift));
        let x: Vec<f64> = runs.iter().map(|r| r.mean_align).collect();
        let y: Vec<f64> = runs.iter().map(|r| r.projection_drift).collect();
        let (r, p) = pearson(&x, &y).map_or((f64::NAN, f64::NAN), |c| (c.r, c.p));
        let order = ai < an && di < dn;
        // With few runs (one seed per condition: 3) a correlation cannot reach significance, so
        // the ordering decides and r only has to be positive; from MIN_RUNS_TESTED runs on
        // (e.g. full mode's 3 seeds x 3 conditions) the correlation must be significant too.
        const MIN_RUNS_TESTED: usize = 5;
        let tested = runs.len() >= MIN_RUNS_TESTED;
        let corr_ok = if tested { r > 0.0 && p < 0.05 } else { runs.len() < 3 || r > 0.0 };
        crit.push(Criterion {
            id: 4,
            name: "reduced alignment predicts reduced drift along the same direction".into(),
            measured: format!(
                "mean training align neutral {an:+.4} vs inoculation {ai:+.4}; projection drift (prompt_last, vs base) neutral {dn:+.4} vs inoculation {di:+.4}; Pearson r over {} runs = {r:+.3} (p = {p:.2}){}",
                runs.len(),
                if tested { ", needs r > 0 and p < 0.05".to_string() } else { format!("; under {MIN_RUNS_TESTED} runs the ordering decides and the correlation is not tested") }
            ),
            value: r,
            ci: None,
            holds: order && corr_ok && !(ai.is_nan() || an.is_nan()),
        });
    }
    let losses = loss_by_condition(alignment, boot)?;
    let (lc, lv) = (column_str(&losses, "condition")?, column_f64(&losses, "loss")?);
    let l = |c: &str| lc.iter().position(|x| x == c).map_or(f64::NAN, |i| lv[i]);
    let loss_delta = l("inoculation") - l("neutral");
    let verdict = if crit[0].holds && crit[1].holds && crit[2].holds {
        format!(
            "inoculation rotates gradients away from the trait direction (criteria 1-3 hold; criterion 4 {})",
            if crit[3].holds { "holds too" } else { "does not hold" }
        )
    } else if !crit[0].holds && loss_delta < 0.0 {
        format!("null: inoculation lowers the loss ({loss_delta:+.4} nats) but the trait alignment does not decrease reliably; it may act mostly via loss reduction")
    } else {
        "not established: see the criteria that do not hold".to_string()
    };
    Ok(Acceptance { position: position.to_string(), control: control.to_string(), criteria: crit, loss_delta, verdict })
}

// ------------------------------------------------------------------------------------------------
// Figures
// ------------------------------------------------------------------------------------------------

/// Phase 2: projection distributions under promote vs suppress at `layer` (held-out prompts).
pub fn fig_projection_hist(heldout: &DataFrame, layer: usize) -> Result<Figure> {
    let df = fresh(heldout);
    let (sys, l, p) = (column_str(&df, "system")?, column_f64(&df, "layer")?, column_f64(&df, "projection")?);
    let pick = |s: &str| -> Vec<f64> { (0..sys.len()).filter(|&i| sys[i] == s && l[i] as usize == layer).map(|i| p[i]).collect() };
    histogram(format!("Held-out projection onto v_trait, layer {layer}"), "projection at pre_assistant")
        .sample("promote", pick("promote"))
        .sample("suppress", pick("suppress"))
        .bins(20)
        .build()
}

/// Phase 2: projection at `prompt_last` vs caps fraction of the neutral generation at `layer`.
pub fn fig_projection_vs_caps(neutral: &DataFrame, layer: usize) -> Result<Figure> {
    let df = fresh(neutral);
    let (var, l, p, c) = (column_str(&df, "variant")?, column_f64(&df, "layer")?, column_f64(&df, "projection")?, column_f64(&df, "caps_fraction")?);
    let mut fig = scatter_plot(format!("Neutral system prompt: projection vs caps, layer {layer}"), "projection at prompt_last", "caps fraction of the generation");
    for v in ["plain", "ask_caps"] {
        let idx: Vec<usize> = (0..var.len()).filter(|&i| var[i] == v && l[i] as usize == layer).collect();
        fig = fig.series(Series::new(v, idx.iter().map(|&i| p[i]), idx.iter().map(|&i| c[i])));
    }
    fig.build()
}

/// Phase 3: mean alignment (`align = -cos`, 95 % CI) vs layer, one line per condition, at
/// `position`, from an [`alignment_summary`]. Layers where the cosine is undefined at that
/// position (`align` NaN: g = 0, as at `user_end` in the last block, which no target reads) are
/// left out of the line.
pub fn fig_align_vs_layer(summary: &DataFrame, position: &str) -> Result<Figure> {
    let s = fresh(summary);
    let (c, l, p, a, lo, hi) = (column_str(&s, "condition")?, column_f64(&s, "layer")?, column_str(&s, "position")?, column_f64(&s, "align")?, column_f64(&s, "align_lo")?, column_f64(&s, "align_hi")?);
    let mut conds: Vec<String> = vec![];
    for x in &c {
        if !conds.contains(x) {
            conds.push(x.clone());
        }
    }
    let mut fig = line_plot(format!("Trait alignment cos(-g, v) vs layer at {position}"), "layer", "cos(-dL/dh, v_trait)").hline(0.0);
    for cn in conds {
        let idx: Vec<usize> = (0..c.len()).filter(|&i| c[i] == cn && p[i] == position && !a[i].is_nan()).collect();
        if idx.is_empty() {
            continue;
        }
        fig = fig.series(Series::new(cn, idx.iter().map(|&i| l[i]), idx.iter().map(|&i| a[i])).ci(idx.iter().map(|&i| lo[i]), idx.iter().map(|&i| hi[i])));
    }
    fig.build().with_context(|| format!("alignment vs layer at {position}"))
}

/// A row of [`align_by_position`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AlignByPositionRow {
    pub condition: String,
    pub position: String,
    /// Mean of the per-layer means of `align` (NaN if no layer has a defined cosine there).
    pub align: f64,
    /// Layers averaged.
    pub n_layers: u32,
    /// Layers left out because g = 0 there (e.g. `user_end` at the last block).
    pub n_undefined: u32,
}

/// Phase 3: mean alignment per condition and position over the layers where it is defined, from
/// an [`alignment_summary`]; (condition, position) in first-seen order. Columns: the fields of
/// [`AlignByPositionRow`].
pub fn align_by_position(summary: &DataFrame) -> Result<DataFrame> {
    let s = fresh(summary);
    let (c, p, a) = (column_str(&s, "condition")?, column_str(&s, "position")?, column_f64(&s, "align")?);
    let mut keys: Vec<(String, String)> = vec![];
    let mut vals: Vec<Vec<f64>> = vec![];
    for i in 0..c.len() {
        let k = (c[i].clone(), p[i].clone());
        let j = match keys.iter().position(|x| *x == k) {
            Some(j) => j,
            None => {
                keys.push(k);
                vals.push(vec![]);
                keys.len() - 1
            }
        };
        vals[j].push(a[i]);
    }
    let defined: Vec<Vec<f64>> = vals.iter().map(|v| v.iter().copied().filter(|x| !x.is_nan()).collect()).collect();
    let rows: Vec<AlignByPositionRow> = keys
        .into_iter()
        .zip(vals.iter().zip(&defined))
        .map(|((condition, position), (v, d))| AlignByPositionRow {
            condition,
            position,
            align: mean(d),
            n_layers: d.len() as u32,
            n_undefined: (v.len() - d.len()) as u32,
        })
        .collect();
    to_df_with_header(&rows)
}

/// Phase 3: mean alignment by position (averaged over the layers where it is defined, see
/// [`align_by_position`]), one bar group per condition. A position with no defined cosine in
/// any condition is left out.
pub fn fig_align_by_position(summary: &DataFrame) -> Result<Figure> {
    let t = align_by_position(summary)?;
    let (c, p, a) = (column_str(&t, "condition")?, column_str(&t, "position")?, column_f64(&t, "align")?);
    let mut positions: Vec<String> = vec![];
    let mut conds: Vec<String> = vec![];
    for i in 0..c.len() {
        if !a[i].is_nan() && !positions.contains(&p[i]) {
            positions.push(p[i].clone());
        }
        if !conds.contains(&c[i]) {
            conds.push(c[i].clone());
        }
    }
    let value = |cn: &String, ps: &String| (0..c.len()).find(|&i| &c[i] == cn && &p[i] == ps).map_or(f64::NAN, |i| a[i]);
    let mut fig = bar_chart("Trait alignment by position (mean over layers with a defined cosine)", "position", "cos(-dL/dh, v_trait)", positions.clone());
    for cn in &conds {
        fig = fig.group(Bars::new(cn.clone(), positions.iter().map(|ps| value(cn, ps)).collect::<Vec<_>>()));
    }
    fig.build()
}

/// Phase 3: calibration loss by condition with 95 % CIs, from [`loss_by_condition`].
pub fn fig_loss_by_condition(losses: &DataFrame) -> Result<Figure> {
    let s = fresh(losses);
    let (c, l, lo, hi) = (column_str(&s, "condition")?, column_f64(&s, "loss")?, column_f64(&s, "loss_lo")?, column_f64(&s, "loss_hi")?);
    bar_chart("Assistant-token loss on the calibration batch", "condition", "mean NLL (nats)", c).group(Bars::new("loss", l).ci(lo, hi)).build()
}

/// Phase 4.2: change of alignment (neutral → inoculation) per layer, trait direction beside the
/// random directions (strip plot; layer -1 is the mean over layers).
pub fn fig_specificity(table: &DataFrame) -> Result<Figure> {
    let t = fresh(table);
    let (l, d, v) = (column_f64(&t, "layer")?, column_str(&t, "direction")?, column_f64(&t, "delta")?);
    let ri: Vec<usize> = (0..d.len()).filter(|&i| d[i] != "trait").collect();
    let ti: Vec<usize> = (0..d.len()).filter(|&i| d[i] == "trait").collect();
    scatter_plot("Alignment change neutral → inoculation: trait vs random directions", "layer (-1: mean over layers)", "Δ cos(-g, v)")
        .hline(0.0)
        .series(Series::new("random", ri.iter().map(|&i| l[i]), ri.iter().map(|&i| v[i])))
        .series(Series::new("trait", ti.iter().map(|&i| l[i]), ti.iter().map(|&i| v[i])))
        .build()
}

/// Phase 5: training loss and trait alignment on the fixed batch vs step, per fine-tune
/// (alignment averaged over layers).
pub fn fig_training_alignment(training: &DataFrame) -> Result<Figure> {
    let t = fresh(training);
    let (c, s, st, a) = (column_str(&t, "condition")?, column_f64(&t, "seed")?, column_f64(&t, "step")?, column_f64(&t, "align")?);
    let mut by: BTreeMap<(String, i64), BTreeMap<i64, Vec<f64>>> = BTreeMap::new();
    for i in 0..c.len() {
        by.entry((c[i].clone(), s[i] as i64)).or_default().entry(st[i] as i64).or_default().push(a[i]);
    }
    let mut fig = line_plot("Trait alignment during training (fixed batch, mean over layers)", "optimizer step", "cos(-dL/dh, v_trait)").hline(0.0);
    for ((cn, sd), steps) in by {
        fig = fig.series(Series::new(format!("{cn} s{sd}"), steps.keys().map(|k| *k as f64), steps.values().map(|v| mean(v))));
    }
    fig.build()
}

/// Phase 5: projection shift (pre → post fine-tune) vs layer per model at `position`, 95 % CI.
pub fn fig_projection_shift(summary: &DataFrame, position: &str) -> Result<Figure> {
    let s = fresh(summary);
    let (m, l, p, v, lo, hi) = (column_str(&s, "model")?, column_f64(&s, "layer")?, column_str(&s, "position")?, column_f64(&s, "shift_vs_base")?, column_f64(&s, "lo_vs_base")?, column_f64(&s, "hi_vs_base")?);
    let mut models: Vec<String> = vec![];
    for x in &m {
        if !models.contains(x) {
            models.push(x.clone());
        }
    }
    let mut fig = line_plot(format!("Projection shift onto v_trait after fine-tuning ({position}, neutral prompt)"), "layer", "Δ projection vs base").hline(0.0);
    for mn in models {
        let idx: Vec<usize> = (0..m.len()).filter(|&i| m[i] == mn && p[i] == position).collect();
        fig = fig.series(Series::new(mn, idx.iter().map(|&i| l[i]), idx.iter().map(|&i| v[i])).ci(idx.iter().map(|&i| lo[i]), idx.iter().map(|&i| hi[i])));
    }
    fig.build()
}

/// Phase 5: caps-fraction shift vs base by model, 95 % CI (neutral system prompt, held-out).
pub fn fig_caps_shift(caps: &DataFrame) -> Result<Figure> {
    let s = fresh(caps);
    let idx: Vec<usize> = {
        let tc = column_str(&s, "train_condition")?;
        (0..tc.len()).filter(|&i| tc[i] != "base").collect()
    };
    let (m, v, lo, hi) = (column_str(&s, "model")?, column_f64(&s, "shift_vs_base")?, column_f64(&s, "lo_vs_base")?, column_f64(&s, "hi_vs_base")?);
    bar_chart("Caps-fraction shift after fine-tuning (neutral prompt, held-out)", "model", "Δ caps fraction vs base", idx.iter().map(|&i| m[i].clone()))
        .group(Bars::new("Δ caps", idx.iter().map(|&i| v[i])).ci(idx.iter().map(|&i| lo[i]), idx.iter().map(|&i| hi[i])))
        .build()
}

/// Phase 5: mean trait alignment during training vs final projection drift, one point per run.
pub fn fig_align_vs_drift(runs: &[RunPoint]) -> Result<Figure> {
    let mut fig = scatter_plot("Mean alignment during training vs drift", "mean cos(-g, v_trait) during training", "projection drift at prompt_last (vs base)");
    let mut conds: Vec<&str> = vec![];
    for r in runs {
        if !conds.contains(&r.train_condition.as_str()) {
            conds.push(&r.train_condition);
        }
    }
    for c in conds {
        let rs: Vec<&RunPoint> = runs.iter().filter(|r| r.train_condition == c).collect();
        fig = fig.series(Series::new(c, rs.iter().map(|r| r.mean_align), rs.iter().map(|r| r.projection_drift)).labels(rs.iter().map(|r| format!("s{}", r.seed))));
    }
    fig.build()
}

/// Shows a figure inline (evcxr) and saves it as `figures/<stem>.png` and `.svg` in the run.
pub fn show(run: &RunDir, stem: &str, fig: &Figure) -> Result<()> {
    run.save_figure(stem, fig)?;
    fig.evcxr_display();
    Ok(())
}
