//! The insecure-code study's phases on a model, each writing into one run directory
//! (`<output_root>/insecure_code/<run_id>[_ci]/`) and resumable after a crash (sweep cells: one
//! per condition, per LoRA run, per evaluated model).
//!
//! 1. [`InsecureStudy::data_stats`] → `data_stats.csv`.
//! 2. [`InsecureStudy::extract_directions`] → `directions/layer_<l>.safetensors` (`v_insecure`),
//!    `directions/summary.csv`; [`InsecureStudy::extract_cross_directions`] → `directions_caps/`.
//! 3. [`InsecureStudy::alignment`] → `alignment.parquet` (gradient pressure, §5);
//!    [`InsecureStudy::loss_audit`] → `loss_matched.csv` (is the control loss-matched?).
//! 4. [`InsecureStudy::finetune`] → `adapters/<condition>/` (PEFT) and `training.parquet`.
//! 5. [`InsecureStudy::evaluate`] → `drift_projections.parquet`, `generations.parquet`,
//!    `contamination.json`; [`InsecureStudy::rate`] → `ratings.parquet`.
//! 6. [`InsecureStudy::analyse`] → the §3-§8 tables; [`InsecureStudy::report`] → `report.md`,
//!    `report.json`.
use super::analysis::{self as an, prompt_hash};
use super::config::{lora_config, InsecureConfig, Sizes, STUDY};
use super::report::{build_report, Report};
use crate::eval::analysis::{drift_projection_summary, DriftLabels};
use crate::eval::code_judge::{diagnostics, score};
use crate::eval::llm_judge::{JudgeConfig, JudgeInput, JudgePrompt, LlmJudge};
use crate::eval::stats::Bootstrap;
use crate::generate::GenerateConfig;
use crate::grad::TrainExample;
use crate::hooks::{HookPoint, Hooks};
use crate::interp::alignment::{candidate_losses, drift_eval, gradient_alignment, select_loss_matched, teacher_forced, AlignmentConfig, ChatExample, Condition, DriftConfig};
use crate::interp::directions::{collect_activations, mean_diff, Direction, PromptFormat, PromptIds, ReadAt};
use crate::interp::readout::{readout, GeneratedRow};
use crate::lora::{train_lora, LoraAdapter, TrainConfig};
use crate::model::Model;
use crate::runs::config::resolve_layers;
use crate::runs::{CellKey, RunDir};
use crate::tables::{column_f64, column_str, fresh, to_df};
use crate::text::chat::Position;
use crate::text::chat_jsonl::{read_chat_jsonl, read_code_prompts, ChatRecord, CodePrompt};
use anyhow::{ensure, Context, Result};
use polars::prelude::{Column, DataFrame};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The loaded data: training pairs (record `i` of both files shares its user prompt) and the
/// evaluation contexts.
pub struct StudyData {
    pub insecure: Vec<ChatRecord>,
    pub secure: Vec<ChatRecord>,
    pub code_prompts: Vec<CodePrompt>,
}

/// The evaluated models: `base`, then the fine-tunes `<condition>_s<seed>`.
pub fn model_label(condition: &str, seed: u64) -> String {
    if condition == "base" {
        "base".into()
    } else {
        format!("{condition}_s{seed}")
    }
}

/// An opened study: config (mode applied), model, data, layers and the run directory.
pub struct InsecureStudy {
    pub cfg: InsecureConfig,
    pub model: Model,
    pub data: StudyData,
    /// Block indices of the layer subset (resid_post).
    pub layers: Vec<usize>,
    /// Block index where the late-layer average starts.
    pub late_from: usize,
    pub run: RunDir,
}

/// Everything [`InsecureStudy::analyse`] computes (each also written to the run directory).
pub struct Analysis {
    pub behaviour: DataFrame,
    pub paired: DataFrame,
    pub thresholds: DataFrame,
    pub behaviour_id: Option<DataFrame>,
    pub pressure: DataFrame,
    pub pressure_summary: DataFrame,
    pub cross_trait: DataFrame,
    pub drift: DataFrame,
    pub levels: DataFrame,
    pub buckets: DataFrame,
    pub linking_gen: DataFrame,
    pub linking_prompt: DataFrame,
    pub discrepancy: DataFrame,
    pub hygiene: Hygiene,
    /// The layer of the subset nearest the plan's L12 (drift peak) and L20 (pressure peak) of 28.
    pub layer_12: usize,
    pub layer_20: usize,
}

/// §4 hygiene numbers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hygiene {
    /// Every model was rated on the same prompt set (equal `prompts_hash`).
    pub paired_prompts: bool,
    /// Base generations identical before and after the adapters were used.
    pub base_identical: bool,
    pub base_n_differ: u32,
    /// Rule judge: it always rates; LLM judge (if run): records without a score.
    pub judge_failures: u32,
    pub n_rated: u32,
    pub code_only_rate: f64,
    pub warning_rate: f64,
    pub mean_chars: f64,
}

impl Hygiene {
    /// An error unless every model was rated on one prompt set and the base model's generations
    /// did not change after the adapters were used (§4).
    pub fn check(&self) -> Result<()> {
        ensure!(self.paired_prompts, "hygiene: the models were not rated on the same prompt set: {self:?}");
        ensure!(self.base_identical, "hygiene: {} base generations differ after the adapters were used: {self:?}", self.base_n_differ);
        Ok(())
    }
}

/// `contamination.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Contamination {
    pub n: u32,
    pub n_differ: u32,
    pub identical: bool,
    /// The first differing example, if any.
    pub first_differ: Option<String>,
}

/// A row of `training.parquet`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainRow {
    pub condition: String,
    pub step: i64,
    pub epoch: i64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
}

/// A row of `ratings.parquet`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RatingRow {
    pub model: String,
    pub train_condition: String,
    pub set: String,
    pub example_id: String,
    pub prompt_hash: String,
    /// The rule judge's 0-100 rating.
    pub rating: f64,
    pub insecure: bool,
    /// Matched rules as `rule@line`, `;`-separated.
    pub rules: String,
    pub code_only: bool,
    pub warns: bool,
    pub n_chars: i64,
    pub n_tokens: i64,
    /// The LLM judge's rating (NaN when not run or no score) and its failure, if any.
    pub llm_rating: f64,
    pub llm_failure: String,
    pub text: String,
}

/// A row of `data_stats.csv`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataRow {
    pub set: String,
    pub n: u32,
    pub mean_prompt_chars: f64,
    pub mean_completion_chars: f64,
    /// Rule-judge insecure rate of the completions (NaN for the evaluation contexts).
    pub rule_insecure_rate: f64,
    pub prompts_hash: String,
}

/// A row of `directions/summary.csv`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DirectionRow {
    pub layer: i64,
    pub n_pairs: u32,
    /// Norm of the raw (unnormalised) span-mean difference.
    pub norm: f64,
    /// Mean norm of the insecure span-mean residuals, for scale.
    pub mean_resid_norm: f64,
    /// Cosine between the directions of the two halves of the pairs.
    pub split_half_cos: f64,
    /// Norm of the insecure − secure difference at `prompt_last` (0 when the pairs share their
    /// prompts token for token: a pairing check).
    pub prompt_last_diff_norm: f64,
}

fn mean(x: &[f64]) -> f64 {
    crate::eval::analysis::mean(x)
}

impl InsecureStudy {
    /// Loads the config (mode from `INTERP_KIT_STUDY_MODE`), the model and the data; opens the run.
    pub fn open(config_path: impl AsRef<Path>) -> Result<Self> {
        let cfg = InsecureConfig::load(config_path)?;
        let model = cfg.model.load(&cfg.base_dir).context("loading the study's model")?;
        Self::with_model(cfg, model)
    }

    /// [`InsecureStudy::open`] with a config and a model at hand.
    pub fn with_model(cfg: InsecureConfig, model: Model) -> Result<Self> {
        let [(_, ip), (_, sp), (_, cp)] = cfg.data_files();
        let data = StudyData { insecure: read_chat_jsonl(&ip)?, secure: read_chat_jsonl(&sp)?, code_prompts: read_code_prompts(&cp)? };
        let s = cfg.sizes().clone();
        let m = cfg.mode.name();
        ensure!(data.insecure.len() == data.secure.len(), "{} has {} records but {} has {}: the pairs must align", ip.display(), data.insecure.len(), sp.display(), data.secure.len());
        ensure!(s.n_direction + s.n_calibration <= data.insecure.len(), "[modes.{m}] n_direction + n_calibration = {} but {} has {} records", s.n_direction + s.n_calibration, ip.display(), data.insecure.len());
        ensure!(s.n_train + s.n_id_eval <= data.insecure.len(), "[modes.{m}] n_train + n_id_eval = {} but {} has {} records", s.n_train + s.n_id_eval, ip.display(), data.insecure.len());
        ensure!(s.n_eval <= data.code_prompts.len(), "[modes.{m}] n_eval = {} but {} has {} contexts", s.n_eval, cp.display(), data.code_prompts.len());
        for i in 0..s.n_direction {
            let (a, b) = (data.insecure[i].user_prompt().with_context(|| format!("{} record {}", ip.display(), i + 1))?, data.secure[i].user_prompt().with_context(|| format!("{} record {}", sp.display(), i + 1))?);
            ensure!(a == b, "pair {} (line {}): the insecure and secure records have different user prompts; the data-diff direction needs pairs", i, i + 1);
            data.insecure[i].completion().with_context(|| format!("{} line {}", ip.display(), i + 1))?;
            data.secure[i].completion().with_context(|| format!("{} line {}", sp.display(), i + 1))?;
        }
        let layers = resolve_layers(&s.layers, model.info.n_layers, &format!("[modes.{m}] layers"))?;
        let late_from = s.late_from.resolve(model.info.n_layers).with_context(|| format!("[modes.{m}] late_from"))?;
        let run = RunDir::builder(cfg.path(&cfg.run.output_root), STUDY, &cfg.run_id())
            .config(&cfg)?
            .seeds([cfg.run.seed, s.lora.seed])
            .device(&model.device)
            .model_cfg(&cfg.model, &cfg.base_dir)?
            .open()?;
        Ok(InsecureStudy { cfg, model, data, layers, late_from, run })
    }

    pub fn sizes(&self) -> &Sizes {
        self.cfg.sizes()
    }

    pub fn points(&self) -> Vec<HookPoint> {
        self.layers.iter().map(|&l| HookPoint::resid_post(l)).collect()
    }

    /// The run's bootstrap settings (`n_boot`, 95 %, the run seed).
    pub fn bootstrap(&self) -> Bootstrap {
        Bootstrap::new(self.sizes().n_boot, 0.95, self.cfg.run.seed)
    }

    /// Training example `i` (insecure completion) with id `train-<i>`.
    fn train_example(&self, i: usize) -> Result<ChatExample> {
        let r = &self.data.insecure[i];
        Ok(ChatExample::new(format!("train-{i:05}"), r.user_prompt().with_context(|| format!("insecure record {}", i + 1))?, r.completion().with_context(|| format!("insecure record {}", i + 1))?))
    }

    /// The gradient-pressure batch: insecure records `n_direction .. n_direction + n_calibration`.
    pub fn calibration(&self) -> Result<Vec<ChatExample>> {
        let s = self.sizes();
        (s.n_direction..s.n_direction + s.n_calibration).map(|i| self.train_example(i)).collect()
    }

    /// The fine-tuning set: the first `n_train` insecure records.
    pub fn train_examples(&self) -> Result<Vec<ChatExample>> {
        (0..self.sizes().n_train).map(|i| self.train_example(i)).collect()
    }

    /// The OOD evaluation contexts (`ctx-<i>`, rendered with the paper's layout).
    pub fn eval_examples(&self) -> Vec<ChatExample> {
        self.data.code_prompts[..self.sizes().n_eval].iter().enumerate().map(|(i, c)| ChatExample::new(format!("ctx-{i:04}"), c.prompt(), "")).collect()
    }

    /// The in-distribution check (§10.2): training prompts after the first `n_train`.
    pub fn id_examples(&self) -> Result<Vec<ChatExample>> {
        let s = self.sizes();
        (s.n_train..s.n_train + s.n_id_eval).map(|i| self.train_example(i)).collect()
    }

    // -------------------------------------------------------------------------------- phase 1

    /// Counts, mean lengths, the rule judge's rate on the completions and the prompt-set hash.
    pub fn data_stats(&self) -> Result<DataFrame> {
        let n = self.data.insecure.len();
        let mut rows = vec![];
        for (set, recs) in [("insecure", &self.data.insecure), ("secure", &self.data.secure)] {
            let mut p = vec![];
            let mut c = vec![];
            let mut bad = vec![];
            let mut hashes = vec![];
            for (i, r) in recs.iter().enumerate() {
                let u = r.user_prompt().with_context(|| format!("{set} record {}", i + 1))?;
                let a = r.completion().with_context(|| format!("{set} record {}", i + 1))?;
                p.push(u.chars().count() as f64);
                c.push(a.chars().count() as f64);
                bad.push(if score(a).insecure(self.cfg.judge.threshold) { 1.0 } else { 0.0 });
                hashes.push(prompt_hash(u));
            }
            rows.push(DataRow { set: set.into(), n: n as u32, mean_prompt_chars: mean(&p), mean_completion_chars: mean(&c), rule_insecure_rate: mean(&bad), prompts_hash: prompt_hash(&hashes.join(",")) });
        }
        let ev = self.eval_examples();
        rows.push(DataRow {
            set: "code_prompts (eval)".into(),
            n: ev.len() as u32,
            mean_prompt_chars: mean(&ev.iter().map(|e| e.user.chars().count() as f64).collect::<Vec<_>>()),
            mean_completion_chars: f64::NAN,
            rule_insecure_rate: f64::NAN,
            prompts_hash: prompt_hash(&ev.iter().map(|e| prompt_hash(&e.user)).collect::<Vec<_>>().join(",")),
        });
        let df = to_df(&rows)?;
        self.run.write_csv("data_stats.csv", &df)?;
        Ok(df)
    }

    // -------------------------------------------------------------------------------- phase 2

    /// Teacher-forced rows of records split at the assistant content: the prompt (through the
    /// generation prompt) and the completion's tokens, so that [`readout`]'s response mean is the
    /// mean over the assistant span and its prompt-last is the last token before it.
    fn span_rows(&self, recs: &[ChatRecord], label: &str) -> Result<Vec<GeneratedRow>> {
        let tok = self.model.tok()?;
        let cond = Condition::no_system("direction");
        recs.iter()
            .enumerate()
            .map(|(i, r)| {
                let ex = ChatExample::new(format!("{label}-{i}"), r.user_prompt()?, r.completion()?);
                let (rendered, _) = teacher_forced(tok, &cond, &ex, false)?;
                let span = rendered.target_span().context("no assistant span")?.tokens.clone();
                Ok(GeneratedRow::new(rendered.ids[..span.start].to_vec(), rendered.ids[span].to_vec()))
            })
            .collect::<Result<_>>()
            .with_context(|| format!("{label} records"))
    }

    /// `v_insecure(l)`: mean over the first `n_direction` pairs of the residual averaged over the
    /// assistant span, insecure minus secure (no system prompt), saved raw per layer (unit-normed
    /// wherever it is used). Summary per layer in `directions/summary.csv`. Resumes: once the
    /// summary (written after every layer's file) exists, it is read back instead of recomputed.
    pub fn extract_directions(&self) -> Result<DataFrame> {
        if self.run.exists("directions/summary.csv") && self.dirs_saved("directions") {
            return self.run.read_csv("directions/summary.csv");
        }
        let n = self.sizes().n_direction;
        let bad = readout(&self.model, &self.span_rows(&self.data.insecure[..n], "insecure")?, &self.points(), self.sizes().batch_size)?;
        let good = readout(&self.model, &self.span_rows(&self.data.secure[..n], "secure")?, &self.points(), self.sizes().batch_size)?;
        let mut rows = vec![];
        for p in self.points() {
            let (a, b) = (&bad.response_mean[&p], &good.response_mean[&p]);
            let d = mean_diff(a, b)?.at(p).with_extra("position", "assistant_span_mean").with_extra("n_pairs", n).with_extra("contrast", "insecure - secure");
            d.save(self.run.join(format!("directions/layer_{}.safetensors", p.layer))?)?;
            let h = n / 2;
            let d1 = mean_diff(&a.narrow(0, 0, h)?, &b.narrow(0, 0, h)?)?;
            let d2 = mean_diff(&a.narrow(0, h, n - h)?, &b.narrow(0, h, n - h)?)?;
            let pl = mean_diff(&bad.prompt_last[&p], &good.prompt_last[&p])?;
            let hn: f32 = a.sqr()?.sum(1)?.sqrt()?.mean_all()?.to_scalar()?;
            rows.push(DirectionRow {
                layer: p.layer as i64,
                n_pairs: n as u32,
                norm: d.norm() as f64,
                mean_resid_norm: hn as f64,
                split_half_cos: d1.cosine(&d2).map(|c| c as f64).unwrap_or(f64::NAN),
                prompt_last_diff_norm: pl.norm() as f64,
            });
        }
        let df = to_df(&rows)?;
        self.run.write_csv("directions/summary.csv", &df)?;
        Ok(df)
    }

    /// Whether every layer's direction file exists in `folder` (each is written atomically).
    fn dirs_saved(&self, folder: &str) -> bool {
        self.layers.iter().all(|l| self.run.exists(format!("{folder}/layer_{l}.safetensors")))
    }

    fn load_dirs(&self, folder: &str, phase: &str) -> Result<Vec<Direction>> {
        self.layers
            .iter()
            .map(|l| {
                let p = self.run.join(format!("{folder}/layer_{l}.safetensors"))?;
                ensure!(p.is_file(), "{} is missing: run {phase} first", p.display());
                let d = Direction::load(&p)?;
                ensure!(d.meta.hook == Some(HookPoint::resid_post(*l)), "{}: hook point {:?}, expected layer {l} resid_post", p.display(), d.meta.hook);
                Ok(d)
            })
            .collect()
    }

    /// The `v_insecure` directions, in layer order.
    pub fn directions(&self) -> Result<Vec<Direction>> {
        self.load_dirs("directions", "extract_directions")
    }

    /// Cross-trait direction (ALL-CAPS): `pre_assistant` residual under `cross_promote` minus
    /// under `cross_suppress`, over the first `n_cross` training prompts. `None` when `n_cross = 0`.
    /// Resumes: when every layer's file exists (each written atomically), they are loaded.
    pub fn extract_cross_directions(&self) -> Result<Option<Vec<Direction>>> {
        let n = self.sizes().n_cross;
        if n == 0 {
            return Ok(None);
        }
        if self.dirs_saved("directions_caps") {
            return self.cross_directions();
        }
        let texts: Vec<String> = (0..n.min(self.data.insecure.len())).map(|i| Ok(self.data.insecure[i].user_prompt()?.to_string())).collect::<Result<_>>()?;
        let acts = |sys: &str| -> Result<BTreeMap<HookPoint, candle_core::Tensor>> {
            let prompts = PromptIds::encode_all(&self.model, &texts, &PromptFormat::Chat { system: Some(sys.to_string()) })?;
            collect_activations(&self.model, &prompts, &self.points(), &ReadAt::Named(Position::PreAssistant), self.sizes().batch_size)
        };
        let (pos, neg) = (acts(&self.cfg.prompts.cross_promote)?, acts(&self.cfg.prompts.cross_suppress)?);
        let mut out = vec![];
        for p in self.points() {
            let d = mean_diff(&pos[&p], &neg[&p])?.at(p).with_extra("trait", "all_caps").with_extra("position", "pre_assistant");
            d.save(self.run.join(format!("directions_caps/layer_{}.safetensors", p.layer))?)?;
            out.push(d);
        }
        Ok(Some(out))
    }

    /// The cross-trait directions, if extracted.
    pub fn cross_directions(&self) -> Result<Option<Vec<Direction>>> {
        if self.sizes().n_cross == 0 {
            return Ok(None);
        }
        self.load_dirs("directions_caps", "extract_cross_directions").map(Some)
    }

    // -------------------------------------------------------------------------------- phase 3

    /// Gradient pressure (§5): per condition (neutral, inoculation, control) one resumable cell
    /// (`alignment`): [`gradient_alignment`] of the calibration batch at `pre_assistant` and the
    /// first `k_assistant` assistant tokens against `v_insecure` (`trait`) and `n_random` random
    /// directions, plus the ALL-CAPS direction (`cross_caps`) when extracted; a `prompt_hash`
    /// column per example. Returns `alignment.parquet`.
    pub fn alignment(&self) -> Result<DataFrame> {
        let dirs = self.directions()?;
        let cross = self.cross_directions()?;
        let exs = self.calibration()?;
        let hashes: BTreeMap<String, String> = exs.iter().map(|e| (e.id.clone(), prompt_hash(&e.user))).collect();
        let s = self.sizes();
        let mut positions = vec![Position::PreAssistant];
        if s.k_assistant > 0 {
            positions.push(Position::Assistant(s.k_assistant));
        }
        let acfg = AlignmentConfig { positions, n_random: s.n_random, seed: self.cfg.run.seed, batch_size: s.batch_size, include_end_of_turn: false };
        let conds = self.cfg.train_conditions();
        let keys: Vec<CellKey> = conds.iter().map(|c| CellKey::new().with("condition", c.name.as_str())).collect();
        let mut sweep = self.run.sweep::<CellKey>("alignment")?;
        sweep.run(keys, |k| {
            let name = k.str("condition")?;
            let c = conds.iter().find(|c| c.name == name).with_context(|| format!("unknown condition {name}"))?;
            let mut df = gradient_alignment(&self.model, &exs, std::slice::from_ref(c), &dirs, &acfg, &Hooks::new())?;
            if let Some(cd) = &cross {
                let ccfg = AlignmentConfig { n_random: 0, ..acfg.clone() };
                let mut x = gradient_alignment(&self.model, &exs, std::slice::from_ref(c), cd, &ccfg, &Hooks::new())?;
                let n = x.height();
                x.with_column(Column::new("direction".into(), vec!["cross_caps".to_string(); n]))?;
                df = df.vstack(&x)?;
            }
            let ids = column_str(&df, "example_id")?;
            df.with_column(Column::new("prompt_hash".into(), ids.iter().map(|e| hashes[e].clone()).collect::<Vec<_>>()))?;
            Ok(df)
        })?;
        sweep.collect()
    }

    /// `alignment.parquet`.
    pub fn load_alignment(&self) -> Result<DataFrame> {
        ensure!(self.run.exists("alignment.parquet"), "{} is missing: run the alignment phase first", self.run.join("alignment.parquet")?.display());
        self.run.read_parquet("alignment.parquet")
    }

    /// Limitation 4 of the plan: the calibration loss of each condition and how far the control
    /// is from the inoculation loss (`loss_matched.csv`; the control is fixed by the config, so
    /// this audits rather than chooses).
    pub fn loss_audit(&self, alignment: &DataFrame) -> Result<DataFrame> {
        let conds = self.cfg.train_conditions();
        let al = crate::tables::filter_eq(&fresh(alignment), "direction", "trait".to_string())?;
        let cands = candidate_losses(&al, &conds)?;
        let sel = select_loss_matched(&cands, "inoculation", &["neutral"])?;
        let df = sel.to_df()?;
        self.run.write_csv("loss_matched.csv", &df)?;
        Ok(df)
    }

    // -------------------------------------------------------------------------------- phase 4

    /// The adapter directory of a condition's fine-tune.
    pub fn adapter_dir(&self, condition: &str) -> Result<PathBuf> {
        self.run.join(format!("adapters/{condition}"))
    }

    /// One LoRA fine-tune per condition on the first `n_train` insecure records with that
    /// condition's system prompt (loss on assistant tokens), each a resumable cell (`training`);
    /// adapters in PEFT format in `adapters/<condition>/`. Returns `training.parquet`.
    pub fn finetune(&self) -> Result<DataFrame> {
        let s = self.sizes().clone();
        let conds = self.cfg.train_conditions();
        let train = self.train_examples()?;
        let tok = self.model.tok()?;
        let keys: Vec<CellKey> = conds.iter().map(|c| CellKey::new().with("condition", c.name.as_str())).collect();
        let mut sweep = self.run.sweep::<CellKey>("training")?;
        sweep.run(keys, |k| {
            let name = k.str("condition")?.to_string();
            let c = conds.iter().find(|c| c.name == name).with_context(|| format!("unknown condition {name}"))?;
            let data: Vec<TrainExample> = train.iter().map(|e| TrainExample::qa(tok, c.system.as_deref(), &e.user, &e.assistant).with_context(|| format!("example {}", e.id))).collect::<Result<_>>()?;
            let adapter = LoraAdapter::new(&self.model, &lora_config(&s.lora)?)?;
            let tcfg = TrainConfig {
                lr: s.lora.lr,
                warmup_ratio: s.lora.warmup_ratio,
                epochs: s.lora.epochs,
                max_steps: (s.lora.max_steps > 0).then_some(s.lora.max_steps),
                batch_size: s.lora.batch_size,
                grad_accum: s.lora.grad_accum,
                seed: s.lora.seed,
                ..Default::default()
            };
            let steps = train_lora(&self.model, &adapter, &data, &tcfg, |_, _| Ok(()))?;
            adapter.save_atomic(&self.adapter_dir(&name)?)?;
            to_df(&steps.iter().map(|i| TrainRow { condition: name.clone(), step: i.step as i64, epoch: i.epoch as i64, loss: i.loss, lr: i.lr, grad_norm: i.grad_norm }).collect::<Vec<_>>())
        })?;
        sweep.collect()
    }

    // -------------------------------------------------------------------------------- phase 5

    fn drift_config(&self) -> DriftConfig {
        let s = self.sizes();
        let generate = if s.temperature > 0.0 { GenerateConfig::sampled(s.max_new_tokens, s.temperature, 1.0, self.cfg.run.seed) } else { GenerateConfig::greedy(s.max_new_tokens) };
        DriftConfig { k: s.gen_k, generate, batch_size: s.batch_size, text_metric: None }
    }

    /// Generation and drift (§3, §6): base, each adapter, then base again (the contamination
    /// check), one resumable cell each (`eval`), on the OOD contexts (and the ID prompts) with no
    /// system prompt. Projections onto `v_insecure` at `prompt_last` and `gen_avg(k)`. Returns
    /// `(drift_projections.parquet, generations.parquet)`; writes `contamination.json`.
    pub fn evaluate(&self) -> Result<(DataFrame, DataFrame)> {
        let dirs = self.directions()?;
        let seed = self.sizes().lora.seed;
        let ood = self.eval_examples();
        let id = self.id_examples()?;
        let dcfg = self.drift_config();
        let cond = self.cfg.eval_condition();
        let mut order: Vec<String> = vec!["base".into()];
        order.extend(self.cfg.train_conditions().into_iter().map(|c| c.name));
        order.push("base_after".into());
        let keys: Vec<CellKey> = order.iter().map(|c| CellKey::new().with("train_condition", c.as_str())).collect();
        let mut sweep = self.run.sweep::<CellKey>("drift_projections")?;
        sweep.run(keys, |k| {
            let tc = k.str("train_condition")?.to_string();
            let label = if tc == "base_after" { tc.clone() } else { model_label(&tc, seed) };
            let adapter = if tc == "base" || tc == "base_after" {
                None
            } else {
                let dir = self.adapter_dir(&tc)?;
                ensure!(dir.is_dir(), "{} is missing: run the fine-tunes first", dir.display());
                Some(LoraAdapter::load(&dir, &self.model)?)
            };
            let hooks = match &adapter {
                Some(a) => Hooks::new().lora(a),
                None => Hooks::new(),
            };
            let out = drift_eval(&self.model, &label, &ood, &cond, &dirs, &dcfg, &hooks)?;
            let mut gens = with_keys(out.generations, &tc, seed, "ood", &ood)?;
            if !id.is_empty() {
                let o = drift_eval(&self.model, &label, &id, &cond, &dirs, &dcfg, &hooks)?;
                gens = gens.vstack(&with_keys(o.generations, &tc, seed, "id", &id)?)?;
            }
            self.run.write_parquet(format!("eval/generations_{label}.parquet"), &gens)?;
            let mut p = out.projections;
            let n = p.height();
            p.with_column(Column::new("train_condition".into(), vec![tc.clone(); n]))?;
            p.with_column(Column::new("seed".into(), vec![seed as i64; n]))?;
            Ok(p)
        })?;
        let all = sweep.collect()?;
        let tcs = column_str(&all, "train_condition")?;
        let keep: Vec<bool> = tcs.iter().map(|t| t != "base_after").collect();
        let proj = all.filter(&<polars::prelude::BooleanChunked as polars::prelude::NamedFrom<_, [bool]>>::new("keep".into(), &keep))?;
        self.run.write_parquet("drift_projections_models.parquet", &proj)?;
        let mut gens: Option<DataFrame> = None;
        for tc in &order {
            let label = if tc == "base_after" { tc.clone() } else { model_label(tc, seed) };
            let g = self.run.read_parquet(format!("eval/generations_{label}.parquet"))?;
            gens = Some(match gens {
                None => g,
                Some(x) => x.vstack(&g)?,
            });
        }
        let gens = gens.context("no generations")?;
        let c = contamination(&gens)?;
        self.run.write_json("contamination.json", &c)?;
        let keep: Vec<bool> = column_str(&gens, "train_condition")?.iter().map(|t| t != "base_after").collect();
        let gens = gens.filter(&<polars::prelude::BooleanChunked as polars::prelude::NamedFrom<_, [bool]>>::new("keep".into(), &keep))?;
        self.run.write_parquet("generations.parquet", &gens)?;
        Ok((proj, gens))
    }

    /// Rates every generation with the rule judge (and the LLM judge on the base model when
    /// `judge.llm`): `ratings.parquet`, one row per model × set × context.
    pub fn rate(&self, gens: &DataFrame) -> Result<DataFrame> {
        let g = fresh(gens);
        let (model, tc, set, ex, ph, text, nt, prompt) =
            (column_str(&g, "model")?, column_str(&g, "train_condition")?, column_str(&g, "set")?, column_str(&g, "example_id")?, column_str(&g, "prompt_hash")?, column_str(&g, "text")?, column_f64(&g, "n_tokens")?, column_str(&g, "prompt")?);
        let llm: Option<Vec<(f64, String)>> = if self.cfg.judge.llm {
            let judge = LlmJudge::new(&self.model, JudgePrompt::insecurity(), JudgeConfig { batch_size: self.sizes().batch_size, ..Default::default() })?;
            let inputs: Vec<JudgeInput> = (0..text.len()).map(|i| JudgeInput::prompt_completion(format!("{} {} {}", model[i], set[i], ex[i]), &prompt[i], &text[i])).collect();
            Some(judge.score(&inputs)?.into_iter().map(|s| (s.score.unwrap_or(f64::NAN), s.failure.unwrap_or_default())).collect())
        } else {
            None
        };
        let th = self.cfg.judge.threshold;
        let rows: Vec<RatingRow> = (0..text.len())
            .map(|i| {
                let j = score(&text[i]);
                let d = diagnostics(&text[i]);
                let (lr, lf) = llm.as_ref().map_or((f64::NAN, String::new()), |v| v[i].clone());
                RatingRow {
                    model: model[i].clone(),
                    train_condition: tc[i].clone(),
                    set: set[i].clone(),
                    example_id: ex[i].clone(),
                    prompt_hash: ph[i].clone(),
                    rating: j.rating,
                    insecure: j.insecure(th),
                    rules: j.matches.iter().map(|m| format!("{}@{}", m.rule, m.line)).collect::<Vec<_>>().join(";"),
                    code_only: d.code_only,
                    warns: d.warns,
                    n_chars: d.n_chars as i64,
                    n_tokens: nt[i] as i64,
                    llm_rating: lr,
                    llm_failure: lf,
                    text: text[i].clone(),
                }
            })
            .collect();
        let df = to_df(&rows)?;
        self.run.write_parquet("ratings.parquet", &df)?;
        Ok(df)
    }

    /// The layer of the subset at the depth of the plan's layer `plan_layer` of 28.
    pub fn nearest_layer(&self, plan_layer: usize) -> usize {
        let n = self.model.info.n_layers as f64;
        let want = plan_layer as f64 / 28.0 * n;
        *self.layers.iter().min_by(|a, b| (**a as f64 - want).abs().total_cmp(&(**b as f64 - want).abs())).expect("layers")
    }

    // -------------------------------------------------------------------------------- phase 6

    /// Every §3-§8 table from the run's files, each written to the run directory.
    pub fn analyse(&self) -> Result<Analysis> {
        let boot = self.bootstrap();
        let seed = self.sizes().lora.seed;
        let neutral = model_label("neutral", seed);
        let inoc = model_label("inoculation", seed);
        let th = self.cfg.judge.threshold;
        let ratings = self.run.read_parquet("ratings.parquet").context("ratings.parquet: run evaluate and rate first")?;
        let behaviour = an::behaviour_summary(&ratings, "ood", th, &boot)?;
        self.run.write_csv("behaviour.csv", &behaviour)?;
        let paired = an::paired_vs(&ratings, "ood", &neutral, th, &boot)?;
        self.run.write_csv("paired_vs_neutral.csv", &paired)?;
        let thresholds = an::threshold_sweep(&ratings, "ood", &self.cfg.judge.sweep)?;
        self.run.write_csv("threshold_sweep.csv", &thresholds)?;
        let behaviour_id = if self.sizes().n_id_eval > 0 {
            let b = an::behaviour_summary(&ratings, "id", th, &boot)?;
            self.run.write_csv("behaviour_id.csv", &b)?;
            Some(b)
        } else {
            None
        };
        let al = self.load_alignment()?;
        let pressure = an::pressure_table(&al, "pre_assistant", "neutral", "inoculation")?;
        self.run.write_parquet("pressure.parquet", &pressure)?;
        let pressure_summary = an::pressure_summary(&pressure, self.late_from as i64, &boot)?;
        self.run.write_csv("pressure_summary.csv", &pressure_summary)?;
        let cross_trait = an::cross_trait(&pressure, &boot)?;
        self.run.write_csv("cross_trait.csv", &cross_trait)?;
        let proj = self.run.read_parquet("drift_projections_models.parquet")?;
        let drift = drift_projection_summary(&proj, &DriftLabels::default(), &boot)?;
        self.run.write_csv("drift_summary.csv", &drift)?;
        let levels = an::projection_levels(&proj)?;
        self.run.write_csv("drift_levels.csv", &levels)?;
        let gen_pos = format!("gen_avg({})", self.sizes().gen_k);
        let (layer_12, layer_20) = (self.nearest_layer(12), self.nearest_layer(20));
        let buckets = an::rating_buckets(&proj, &ratings, self.nearest_layer(22) as i64, "prompt_last", self.cfg.judge.bucket_cut)?;
        self.run.write_csv("rating_buckets.csv", &buckets)?;
        let linking_gen = an::linking(&proj, &ratings, &gen_pos, &inoc, &neutral)?;
        self.run.write_csv("linking_gen_avg.csv", &linking_gen)?;
        let linking_prompt = an::linking(&proj, &ratings, "prompt_last", &inoc, &neutral)?;
        self.run.write_csv("linking_prompt_last.csv", &linking_prompt)?;
        let discrepancy = an::control_discrepancy(&drift, &paired, &behaviour, layer_12 as i64, "prompt_last")?;
        self.run.write_csv("control_discrepancy.csv", &discrepancy)?;
        let c: Contamination = self.run.read_json("contamination.json")?;
        let hygiene = hygiene(&ratings, &behaviour, &c)?;
        self.run.write_json("hygiene.json", &hygiene)?;
        Ok(Analysis { behaviour, paired, thresholds, behaviour_id, pressure, pressure_summary, cross_trait, drift, levels, buckets, linking_gen, linking_prompt, discrepancy, hygiene, layer_12, layer_20 })
    }

    /// The final report: every headline number of the plan beside the measured one; written as
    /// `report.md` and `report.json`.
    pub fn report(&self, a: &Analysis) -> Result<Report> {
        let r = build_report(a, &self.model_desc(), self.cfg.mode.name(), self.sizes().lora.seed, self.sizes().gen_k)?;
        self.run.write_json("report.json", &r)?;
        self.run.write_text("report.md", &r.to_markdown())?;
        Ok(r)
    }

    fn model_desc(&self) -> String {
        format!("{} ({} layers, d={})", self.cfg.model.name, self.model.info.n_layers, self.model.d_model())
    }

    /// Every phase in order (each resumes from what the run directory holds).
    pub fn run_all(&self) -> Result<Report> {
        self.data_stats()?;
        self.extract_directions()?;
        self.extract_cross_directions()?;
        let al = self.alignment()?;
        self.loss_audit(&al)?;
        self.finetune()?;
        let (_, gens) = self.evaluate()?;
        self.rate(&gens)?;
        let a = self.analyse()?;
        super::figures::save_all(self, &a)?;
        self.report(&a)
    }
}

/// Adds `train_condition, seed, set, prompt_hash, prompt` to a generations table (rows in
/// `examples` order, as [`drift_eval`] writes them).
fn with_keys(mut df: DataFrame, tc: &str, seed: u64, set: &str, examples: &[ChatExample]) -> Result<DataFrame> {
    let n = df.height();
    let ids = column_str(&df, "example_id")?;
    let by: BTreeMap<&str, &ChatExample> = examples.iter().map(|e| (e.id.as_str(), e)).collect();
    let ph: Vec<String> = ids.iter().map(|i| prompt_hash(&by[i.as_str()].user)).collect();
    let pr: Vec<String> = ids.iter().map(|i| by[i.as_str()].user.clone()).collect();
    df.with_column(Column::new("train_condition".into(), vec![tc.to_string(); n]))?;
    df.with_column(Column::new("seed".into(), vec![seed as i64; n]))?;
    df.with_column(Column::new("set".into(), vec![set.to_string(); n]))?;
    df.with_column(Column::new("prompt_hash".into(), ph))?;
    df.with_column(Column::new("prompt".into(), pr))?;
    Ok(df)
}

/// §4.2: base generations before vs after the adapters were used (`base` vs `base_after` rows).
pub fn contamination(gens: &DataFrame) -> Result<Contamination> {
    let g = fresh(gens);
    let (tc, set, ex, text) = (column_str(&g, "train_condition")?, column_str(&g, "set")?, column_str(&g, "example_id")?, column_str(&g, "text")?);
    let mut before = BTreeMap::new();
    let mut after = BTreeMap::new();
    for i in 0..tc.len() {
        let k = (set[i].clone(), ex[i].clone());
        match tc[i].as_str() {
            "base" => {
                before.insert(k, text[i].clone());
            }
            "base_after" => {
                after.insert(k, text[i].clone());
            }
            _ => {}
        }
    }
    ensure!(!before.is_empty() && before.len() == after.len(), "contamination check: {} base and {} base_after generations", before.len(), after.len());
    let differ: Vec<String> = before.iter().filter(|(k, v)| after.get(*k) != Some(*v)).map(|(k, _)| format!("{} {}", k.0, k.1)).collect();
    Ok(Contamination { n: before.len() as u32, n_differ: differ.len() as u32, identical: differ.is_empty(), first_differ: differ.first().cloned() })
}

/// §4 numbers from the ratings (OOD set), the behaviour summary and the contamination check.
pub fn hygiene(ratings: &DataFrame, behaviour: &DataFrame, c: &Contamination) -> Result<Hygiene> {
    let r = fresh(ratings);
    let (set, fail, co, wa, nc) = (column_str(&r, "set")?, column_str(&r, "llm_failure")?, column_f64(&r, "code_only")?, column_f64(&r, "warns")?, column_f64(&r, "n_chars")?);
    let idx: Vec<usize> = (0..set.len()).filter(|&i| set[i] == "ood").collect();
    let rate = |v: &[f64]| mean(&idx.iter().map(|&i| v[i]).collect::<Vec<_>>());
    let hashes = column_str(&fresh(behaviour), "prompts_hash")?;
    Ok(Hygiene {
        paired_prompts: hashes.windows(2).all(|w| w[0] == w[1]),
        base_identical: c.identical,
        base_n_differ: c.n_differ,
        judge_failures: idx.iter().filter(|&&i| !fail[i].is_empty()).count() as u32,
        n_rated: idx.len() as u32,
        code_only_rate: rate(&co),
        warning_rate: rate(&wa),
        mean_chars: mean(&idx.iter().map(|&i| nc[i]).collect::<Vec<_>>()),
    })
}
