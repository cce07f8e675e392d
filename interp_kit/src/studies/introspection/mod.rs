//! The introspection fine-tuning study (plan `shared/seeds/002_*`, issue 19) as kit functions; the
//! notebooks in `notebooks/introspection/` are a params cell and calls into this module, and every
//! phase reads what earlier phases wrote in one run directory
//! (`<output_root>/introspection/<run_id>[_ci]/`). Every long loop is a resumable sweep
//! ([`crate::runs::Sweep`]): rerunning after a crash redoes only unfinished cells.
//!
//! The protocol is steer-then-remove ([`crate::interp::introspection`]): user turn 1 and assistant
//! turn 1 are prefilled into a KV cache with a vector added to `resid_post` of a band of blocks;
//! the detection question and the answer prefix "The answer is" extend the cache unsteered, and
//! the next token gives P(yes), P(no). Conversations vary by their assistant reply
//! (`datasets/introspection/replies.txt`), so unsteered runs are not one repeated conversation.
//!
//! Phases and artifacts (relative to the run directory):
//! 0. [`IntrospectionStudy::vectors`] → `vectors/random.safetensors` (seeded unit vectors, train
//!    and held-out ids) and `vectors/concepts.safetensors` (repeng-style PCA concept vectors of
//!    `concepts.txt` at `concept_layer`; every `concept_heldout_every`-th held out).
//!    [`IntrospectionStudy::baseline`] → `baseline.parquet` ([`ReadoutRow`]s of the base model:
//!    random and concept vectors at each baseline band × strength, unsteered runs, control
//!    questions unsteered and steered; with and without the info paragraph),
//!    `baseline_summary.csv`, `baseline_accuracy.csv`.
//! 1. [`IntrospectionStudy::experiment1`] → per training variant (the base setup and the sweep's
//!    one-factor variations) a LoRA trained on the answer token with the steered prefix fixed in
//!    the cache ([`crate::lora::train_lora_prefixed`]), saved under `adapters/exp1/<variant>/`
//!    with `train_log.json`; `exp1.parquet` (the base model and every adapter on three tiers:
//!    train vectors, held-out random vectors, concept vectors), `exp1_accuracy.csv`
//!    ([`TierRow`]: balanced accuracy, TPR, FPR, control yes-rate, Wilson intervals).
//! 2. [`IntrospectionStudy::experiment2`] → the same trained on concept vectors (train split),
//!    evaluated on held-out concepts and held-out random vectors: `exp2.parquet`,
//!    `exp2_accuracy.csv`, and [`IntrospectionStudy::generalisation`] → `generalisation.csv`.
//! 3. [`IntrospectionStudy::tasks`] → `tasks.parquet` ([`TaskRow`]: sentence, layer, concept and
//!    magnitude localisation answered in free text by the base model and, with
//!    `task_train_examples` > 0, by a LoRA per task trained on train-split vectors
//!    (`adapters/tasks/<task>/`), parsed by [`tasks::parse`]) and `tasks_summary.csv`.
//! 4. [`IntrospectionStudy::analysis`] → `attention.parquet` / `attention_summary.csv` (per head,
//!    attention from the question onto the steered positions), `lora_norms.csv` (‖ΔW‖ per module),
//!    `lens.parquet` / `lens_summary.csv` (P(yes) per layer at the answer position).
//! 5. [`IntrospectionStudy::report`] → `report.json`, `reports/report.md`: the plan's seven key
//!    predictions beside the measured values (null with the reason when this run cannot measure one).
pub mod config;
pub mod data;
pub mod figures;
pub mod rows;
pub mod tasks;

pub use config::{Band, IntrospectionConfig, Sizes, TrainCfg, Variant};
pub use rows::*;

use crate::eval::stats::spearman;
use crate::generate::GenerateConfig;
use crate::grad::PrefixedExample;
use crate::hooks::{HookPoint, Hooks, Phase, Positions, Site};
use crate::interp::introspection::{generate_after_prefix, yes_no_batch, ProtocolConfig, ProtocolPrompt, SteeredRow, SteeredTokens};
use crate::interp::lens::logit_lens;
use crate::interp::row_steer::{row_steering_hooks, RowSteer};
use crate::interp::token_probs::{TokenSet, YesNo};
use crate::interp::vector_sets::{concept_vectors, ConceptPrompts, Split, VectorSet};
use crate::lora::{train_lora_prefixed, LoraAdapter, TrainConfig};
use crate::model::{LogitsAt, Model};
use crate::runs::config::Mode;
use crate::runs::{CellKey, RunDir};
use crate::tables::{from_df, to_df};
use anyhow::{bail, ensure, Context, Result};
use data::{Conversation, Question, StudyData};
use polars::prelude::DataFrame;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use tasks::{Task, TaskExample, TaskParams};

pub const STUDY: &str = "introspection";

/// A set of vectors evaluated together: its tier name, which set and which ids.
#[derive(Clone, Debug)]
pub struct Tier {
    pub name: String,
    pub concept: bool,
    pub ids: Vec<u32>,
}

/// What one evaluation reads (see [`IntrospectionStudy::evaluate`]).
#[derive(Clone, Debug)]
pub struct EvalPlan {
    pub tiers: Vec<Tier>,
    pub bands: Vec<String>,
    pub strengths: Vec<f64>,
    /// Emit the unsteered detection rows (they are always computed, for the deltas).
    pub emit_clean: bool,
    /// Add the control questions, unsteered and steered with the first tier's vectors.
    pub controls: bool,
    /// The steered tokens and the detection question's phrasing (a training setup's own).
    pub tokens: SteeredTokens,
    pub phrasing: usize,
}

/// One readout before it is run.
#[derive(Clone, Debug)]
struct Spec {
    question: Question,
    conversation: usize,
    tier: String,
    vector: Option<(bool, u32)>,
    band: String,
    strength: f64,
}

/// The training log of one adapter (`adapters/<exp>/<variant>/train_log.json`), saved with the
/// adapter (both appear at once). No wall time: a result file is the same on every run of one
/// config and seed; the time a fine-tune took is its sweep cell's `seconds` in the parts' `index.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainLog {
    pub variant: Variant,
    pub n_examples: usize,
    pub n_steered: usize,
    pub steps: Vec<crate::lora::StepInfo>,
}

/// An opened study: config (mode applied), model, data, token sets and the run directory.
pub struct IntrospectionStudy {
    pub cfg: IntrospectionConfig,
    pub model: Model,
    pub data: StudyData,
    pub run: RunDir,
    /// P(yes) / P(no) sum these sets; training targets the single tokens `yes_id` / `no_id`.
    pub yes: TokenSet,
    pub no: TokenSet,
    pub yes_id: u32,
    pub no_id: u32,
}

/// The single token of `text`, which the readout set must contain; errors name the config field.
fn answer_token(tok: &crate::text::tokenizer::Tokenizer, text: &str, field: &str, set: &TokenSet) -> Result<u32> {
    let ids = tok.encode(text)?;
    let [id] = ids.as_slice() else { bail!("{field} = {text:?} is {} tokens for this tokenizer; it must be one", ids.len()) };
    ensure!(set.ids.contains(id), "{field} = {text:?} (token {id}) is not among the readout spellings {:?}", set.tokens);
    Ok(*id)
}

impl IntrospectionStudy {
    /// Loads the config (mode from `INTERP_KIT_STUDY_MODE` if set), the model and the data, and
    /// opens (or creates) the run directory.
    pub fn open(config_path: impl AsRef<Path>) -> Result<Self> {
        let cfg = IntrospectionConfig::load(config_path)?;
        let model = cfg.model.load(&cfg.base_dir).context("loading the study's model")?;
        let root = cfg.path(&cfg.run.output_root);
        Self::with_model(cfg, model, &root)
    }

    /// [`IntrospectionStudy::open`] with a config and model at hand, and the run root given.
    pub fn with_model(cfg: IntrospectionConfig, model: Model, output_root: &Path) -> Result<Self> {
        let data = StudyData::load(cfg.path(&cfg.data.dir))?;
        let s = cfg.sizes().clone();
        let mode = cfg.mode.name();
        let have = |what: &str, n: usize, max: usize, file: &str| -> Result<()> {
            ensure!(n <= max, "[modes.{mode}] {what} = {n} but {file} has {max}");
            Ok(())
        };
        have("n_concepts", s.n_concepts, data.concepts.len(), "concepts.txt")?;
        have("n_suffixes", s.n_suffixes, data.suffixes.len(), "suffixes.txt")?;
        have("n_conversations", s.n_conversations, data.replies.len(), "replies.txt")?;
        have("n_controls", s.n_controls, data.controls.len(), "control_questions.txt")?;
        for v in s.sweep.variants(&s.train) {
            have(&format!("question of training setup {}", v.name), v.train.question, data.questions.len(), "questions.txt")?;
        }
        let n = model.n_layers();
        ensure!(n >= 3, "the study's bands need at least 3 blocks, the model has {n}");
        for b in &s.bands {
            b.blocks(n).with_context(|| format!("[modes.{mode}] bands"))?;
        }
        s.concept_layer.resolve(n).with_context(|| format!("[modes.{mode}] concept_layer"))?;
        let tok = model.tok()?;
        ensure!(tok.chat_template().is_some(), "the introspection protocol renders a chat; this model's tokenizer has no chat template");
        let yes = TokenSet::word_variants(tok, &cfg.protocol.yes).context("protocol.yes")?;
        let no = TokenSet::word_variants(tok, &cfg.protocol.no).context("protocol.no")?;
        let yes_id = answer_token(tok, &cfg.protocol.yes, "protocol.yes", &yes)?;
        let no_id = answer_token(tok, &cfg.protocol.no, "protocol.no", &no)?;
        let run = RunDir::builder(output_root, STUDY, &cfg.run_id()).config(&cfg)?.seeds([cfg.run.seed]).device(&model.device).model_cfg(&cfg.model, &cfg.base_dir)?.open()?;
        Ok(Self { cfg, model, data, run, yes, no, yes_id, no_id })
    }

    pub fn sizes(&self) -> &Sizes {
        self.cfg.sizes()
    }
    pub fn mode(&self) -> Mode {
        self.cfg.mode
    }

    /// The blocks of band `name`.
    pub fn band(&self, name: &str) -> Result<Range<usize>> {
        let b = self.sizes().bands.iter().find(|b| b.name == name).with_context(|| format!("band {name:?} is not defined in [modes.{}] bands", self.mode().name()))?;
        b.blocks(self.model.n_layers())
    }

    /// The protocol's steering choices from `[protocol]`, with `tokens` steered.
    pub fn protocol_base(&self, tokens: SteeredTokens) -> ProtocolConfig {
        let p = &self.cfg.protocol;
        ProtocolConfig { steer_template_between: p.steer_template_between, steer_system: p.steer_system, tokens, ..Default::default() }
    }

    fn prompt(&self, c: &Conversation, tokens: SteeredTokens) -> Result<ProtocolPrompt> {
        c.build(&self.data, self.model.tok()?, &self.protocol_base(tokens))
    }

    // ---------------------------------------------------------------------------- 0 vectors

    /// The random set: ids `0..n_train_vectors` train, then the held-out ones (written once).
    pub fn random_vectors(&self) -> Result<VectorSet> {
        let p = self.run.join("vectors/random.safetensors")?;
        if p.exists() {
            return VectorSet::load(&p);
        }
        let s = self.sizes();
        let v = VectorSet::random(self.model.d_model(), s.n_train_vectors, s.n_heldout_vectors, self.cfg.run.seed)?;
        v.save(&p)?;
        Ok(v)
    }

    /// The concept set: the first `n_concepts` concepts, every `concept_heldout_every`-th held
    /// out (written once).
    pub fn concept_vectors(&self) -> Result<VectorSet> {
        let p = self.run.join("vectors/concepts.safetensors")?;
        if p.exists() {
            return VectorSet::load(&p);
        }
        let s = self.sizes();
        let names: Vec<String> = self.data.concepts[..s.n_concepts].iter().map(|c| c.name.clone()).collect();
        let layer = s.concept_layer.resolve(self.model.n_layers())?;
        let prompts = ConceptPrompts { positive: self.cfg.protocol.concept_positive.clone(), negative: self.cfg.protocol.concept_negative.clone(), system: Some(String::new()) };
        let dirs = concept_vectors(&self.model, &names, &self.data.suffixes[..s.n_suffixes], &[layer], &prompts, s.batch_size)?;
        let k = s.concept_heldout_every;
        let heldout: Vec<&str> = names.iter().enumerate().filter(|(i, _)| i % k == k - 1).map(|(_, n)| n.as_str()).collect();
        let mut v = VectorSet::from_labelled("concept", names.iter().cloned().zip(dirs.into_iter().map(|d| d[0].vector.clone())).collect(), &heldout)?;
        v.meta.extra.insert("layer".into(), layer.to_string());
        v.meta.extra.insert("positive".into(), prompts.positive.clone());
        v.meta.extra.insert("negative".into(), prompts.negative.clone());
        v.save(&p)?;
        Ok(v)
    }

    /// Both sets (computing what is missing) as a table: kind, id, label, split.
    pub fn vectors(&self) -> Result<DataFrame> {
        #[derive(Serialize)]
        struct Row {
            kind: String,
            id: i64,
            label: String,
            split: String,
        }
        let mut rows = vec![];
        for set in [self.random_vectors()?, self.concept_vectors()?] {
            for e in &set.meta.entries {
                let split = if e.split == Split::Train { "train" } else { "heldout" };
                rows.push(Row { kind: set.meta.kind.clone(), id: e.id as i64, label: e.label.clone(), split: split.into() });
            }
        }
        to_df(&rows)
    }

    // ---------------------------------------------------------------------------- readouts

    /// Yes/no readouts of `plan` with `adapter` (labelled `model`) and the info paragraph on or
    /// off. Conversation of a steered row: its position in the tier modulo `n_conversations`.
    pub fn evaluate(&self, model_label: &str, adapter: Option<&LoraAdapter>, info: bool, plan: &EvalPlan) -> Result<Vec<ReadoutRow>> {
        let s = self.sizes().clone();
        let (random, concepts) = (self.random_vectors()?, self.concept_vectors()?);
        let mut specs = vec![];
        let unsteered = |question: Question, conversation: usize| Spec { question, conversation, tier: "unsteered".into(), vector: None, band: String::new(), strength: 0.0 };
        for c in 0..s.n_conversations {
            specs.push(unsteered(Question::Detect(plan.phrasing), c));
        }
        for t in &plan.tiers {
            for (i, &id) in t.ids.iter().enumerate() {
                for b in &plan.bands {
                    for &st in &plan.strengths {
                        specs.push(Spec { question: Question::Detect(plan.phrasing), conversation: i % s.n_conversations, tier: t.name.clone(), vector: Some((t.concept, id)), band: b.clone(), strength: st });
                    }
                }
            }
        }
        if plan.controls {
            let t = plan.tiers.first().context("an evaluation with controls needs a tier")?;
            let strength = plan.strengths.iter().copied().fold(0.0, f64::max);
            for q in 0..s.n_controls {
                let conv = q % s.n_conversations;
                specs.push(unsteered(Question::Control(q), conv));
                if strength > 0.0 {
                    let id = t.ids[q % t.ids.len()];
                    specs.push(Spec { question: Question::Control(q), conversation: conv, tier: t.name.clone(), vector: Some((t.concept, id)), band: plan.bands[0].clone(), strength });
                }
            }
        }
        // One batch per question (the unsteered part has one length per question).
        let mut prompts: HashMap<(usize, String), ProtocolPrompt> = HashMap::new();
        let qkey = |q: &Question| format!("{q:?}");
        let mut results: Vec<Option<YesNo>> = vec![None; specs.len()];
        let mut by_q: Vec<(String, Vec<usize>)> = vec![];
        for (i, sp) in specs.iter().enumerate() {
            let k = qkey(&sp.question);
            match by_q.iter_mut().find(|(q, _)| *q == k) {
                Some((_, v)) => v.push(i),
                None => by_q.push((k.clone(), vec![i])),
            }
            let pk = (sp.conversation, k);
            if !prompts.contains_key(&pk) {
                let conv = Conversation { reply: sp.conversation, info, question: sp.question.clone(), framing: None };
                prompts.insert(pk, self.prompt(&conv, plan.tokens)?);
            }
        }
        let steer_of = |sp: &Spec, p: &ProtocolPrompt| -> Result<RowSteer> {
            Ok(match sp.vector {
                None => RowSteer::none(),
                Some((is_concept, id)) => {
                    let v = if is_concept { concepts.get(id)? } else { random.get(id)? };
                    RowSteer::new(v.to_vec(), self.band(&sp.band)?, sp.strength, p.steered.clone())
                }
            })
        };
        for (k, idx) in &by_q {
            for chunk in idx.chunks(s.batch_size) {
                let rows: Vec<SteeredRow> = chunk
                    .iter()
                    .map(|&i| {
                        let p = &prompts[&(specs[i].conversation, k.clone())];
                        Ok(SteeredRow { ids: p.ids.clone(), split: p.split, steer: steer_of(&specs[i], p)? })
                    })
                    .collect::<Result<_>>()?;
                let yn = yes_no_batch(&self.model, &rows, adapter.map(|a| a as &dyn crate::hooks::Adapter), &self.yes, &self.no)?;
                for (&i, y) in chunk.iter().zip(yn) {
                    results[i] = Some(y);
                }
            }
        }
        let clean: HashMap<(String, usize), YesNo> = specs
            .iter()
            .zip(&results)
            .filter(|(sp, _)| sp.vector.is_none())
            .map(|(sp, y)| ((qkey(&sp.question), sp.conversation), y.expect("every spec was read")))
            .collect();
        let mut out = vec![];
        for (sp, y) in specs.iter().zip(results) {
            let y = y.expect("every spec was read");
            if sp.vector.is_none() && matches!(sp.question, Question::Detect(_)) && !plan.emit_clean {
                continue;
            }
            let c = clean[&(qkey(&sp.question), sp.conversation)];
            let (vector_id, label) = match sp.vector {
                None => (-1, String::new()),
                Some((true, id)) => (id as i64, concepts.meta.entries.iter().find(|e| e.id == id).map(|e| e.label.clone()).unwrap_or_default()),
                Some((false, id)) => (id as i64, format!("random_{id}")),
            };
            let band = if sp.vector.is_some() { self.band(&sp.band)? } else { 0..0 };
            let steered = sp.vector.is_some() && sp.strength != 0.0 && !band.is_empty();
            let says_yes = y.p_yes > y.p_no;
            let (question, control) = match sp.question {
                Question::Control(q) => ("control", q as i64),
                _ => ("detect", -1),
            };
            out.push(ReadoutRow {
                model: model_label.into(),
                info,
                question: question.into(),
                control,
                tier: sp.tier.clone(),
                vector_id,
                label,
                band: sp.band.clone(),
                layer_start: band.start as i64,
                layer_end: band.end as i64,
                strength: sp.strength,
                conversation: sp.conversation as i64,
                steered,
                p_yes: y.p_yes,
                p_no: y.p_no,
                log_odds: y.log_odds,
                says_yes,
                correct: if question == "control" { !says_yes } else { says_yes == steered },
                clean_p_yes: c.p_yes,
                clean_log_odds: c.log_odds,
                delta_p_yes: y.p_yes - c.p_yes,
                delta_log_odds: y.log_odds - c.log_odds,
            });
        }
        Ok(out)
    }

    /// The first `n` ids of `split` of the random (or concept) set.
    fn ids(&self, concept: bool, split: Split, n: usize) -> Result<Vec<u32>> {
        let set = if concept { self.concept_vectors()? } else { self.random_vectors()? };
        Ok(set.ids(split).into_iter().take(n).collect())
    }

    // ---------------------------------------------------------------------------- 0 baseline

    /// The base model with and without the info paragraph on random and concept vectors at every
    /// baseline band × strength, unsteered runs and control questions; writes `baseline.parquet`,
    /// `baseline_summary.csv` and `baseline_accuracy.csv`, returns the accuracy table.
    pub fn baseline(&self) -> Result<DataFrame> {
        let s = self.sizes().clone();
        self.vectors()?;
        let info: Vec<bool> = s.info.clone();
        let cells = CellKey::grid().axis("info", info).axis("kind", ["random", "concept"]).build();
        let mut sweep = self.run.sweep::<CellKey>("baseline")?;
        sweep.run(cells, |k| {
            let (info, concept) = (k.bool("info")?, k.str("kind")? == "concept");
            let n = s.baseline_vectors;
            let ids = if concept {
                let all = self.concept_vectors()?;
                all.meta.entries.iter().map(|e| e.id).take(n).collect()
            } else {
                let mut v = self.ids(false, Split::HeldOut, n)?;
                v.extend(self.ids(false, Split::Train, n - v.len().min(n))?);
                v.truncate(n);
                v
            };
            let plan = EvalPlan {
                tiers: vec![Tier { name: if concept { "concept".into() } else { "random".into() }, concept, ids }],
                bands: s.baseline_bands.clone(),
                strengths: s.baseline_strengths.clone(),
                emit_clean: !concept,
                controls: !concept,
                tokens: SteeredTokens::Context,
                phrasing: 0,
            };
            to_df(&self.evaluate("base_model", None, info, &plan)?)
        })?;
        let rows: Vec<ReadoutRow> = from_df(&sweep.collect()?)?;
        self.run.write_csv("baseline_summary.csv", &to_df(&summarize(&rows))?)?;
        let acc = to_df(&tier_accuracy(&rows))?;
        self.run.write_csv("baseline_accuracy.csv", &acc)?;
        Ok(acc)
    }

    pub fn baseline_rows(&self) -> Result<Vec<ReadoutRow>> {
        from_df(&self.run.read_parquet("baseline.parquet").context("baseline.parquet: run the baseline phase first")?)
    }

    // ---------------------------------------------------------------------------- 1, 2 training

    /// The training variants of experiment 1 (the base setup, then the sweep's variations).
    pub fn variants(&self) -> Vec<Variant> {
        self.sizes().sweep.variants(&self.sizes().train)
    }

    /// The training examples of `t` on the train split of the random (or concept) set: their
    /// steering and prefixed ids (prefix = the steered turns; suffix = question, answer prefix and
    /// the answer token, which is the only target).
    pub fn training_examples(&self, t: &TrainCfg, concept: bool, seed: u64) -> Result<(Vec<PrefixedExample>, Vec<RowSteer>)> {
        let s = self.sizes();
        let set = if concept { self.concept_vectors()? } else { self.random_vectors()? };
        let train_ids: Vec<u32> = set.ids(Split::Train).into_iter().take(t.n_vectors).collect();
        ensure!(!train_ids.is_empty(), "no training vectors in the {} set's train split", set.meta.kind);
        let mut rng = crate::base::rng::Rng::new(seed);
        let n_steered = ((t.n_examples as f64 * t.steered_ratio).round() as usize).clamp(1, t.n_examples.max(2) - 1).min(t.n_examples);
        let mut flags: Vec<bool> = (0..t.n_examples).map(|i| i < n_steered).collect();
        rng.shuffle(&mut flags);
        let mut prompts: HashMap<usize, ProtocolPrompt> = HashMap::new();
        let (mut examples, mut steers) = (vec![], vec![]);
        for steered in flags {
            let conv = rng.below(s.n_conversations);
            if let std::collections::hash_map::Entry::Vacant(e) = prompts.entry(conv) {
                let c = Conversation { question: Question::Detect(t.question), ..Conversation::detect(conv, false) };
                e.insert(self.prompt(&c, t.tokens)?);
            }
            let p = &prompts[&conv];
            let mut suffix = p.ids[p.split..].to_vec();
            suffix.push(if steered { self.yes_id } else { self.no_id });
            let target = suffix.len() - 1;
            examples.push(PrefixedExample::new(p.ids[..p.split].to_vec(), suffix, vec![target])?);
            steers.push(if steered {
                let id = train_ids[rng.below(train_ids.len())];
                let st = t.strengths[rng.below(t.strengths.len())];
                let band = self.band(&t.bands[rng.below(t.bands.len())])?;
                RowSteer::new(set.get(id)?.to_vec(), band, st, p.steered.clone())
            } else {
                RowSteer::none()
            });
        }
        Ok((examples, steers))
    }

    fn adapter_dir(&self, exp: &str, variant: &str) -> Result<std::path::PathBuf> {
        self.run.join(format!("adapters/{exp}/{}", variant.replace(['/', ' '], "_")))
    }

    /// The adapter of `variant` trained in experiment `exp` (`exp1` / `exp2`), if saved.
    pub fn adapter(&self, exp: &str, variant: &str) -> Result<Option<LoraAdapter>> {
        let d = self.adapter_dir(exp, variant)?;
        if !d.join("adapter_config.json").exists() {
            return Ok(None);
        }
        Ok(Some(LoraAdapter::load(&d, &self.model).with_context(|| format!("loading {}", d.display()))?))
    }

    /// Trains (or loads, when saved) the adapter of `v` on the random (or concept) train split.
    fn train_variant(&self, exp: &str, v: &Variant, concept: bool) -> Result<LoraAdapter> {
        if let Some(a) = self.adapter(exp, &v.name)? {
            return Ok(a);
        }
        let seed = self.cfg.run.seed;
        let (examples, steers) = self.training_examples(&v.train, concept, seed ^ 0x7e57)?;
        let (adapter, steps) = self.train_prefixed(&v.train, &examples, &steers)?;
        let dir = self.adapter_dir(exp, &v.name)?;
        let log = TrainLog { variant: v.clone(), n_examples: examples.len(), n_steered: steers.iter().filter(|s| s.is_active()).count(), steps };
        adapter.save_atomic_with(&dir, |tmp| crate::base::io::write_json(tmp.join("train_log.json"), &log))?;
        Ok(adapter)
    }

    /// A fresh LoRA of `t` trained on `examples`, example `i`'s prefix steered by `steers[i]`.
    fn train_prefixed(&self, t: &TrainCfg, examples: &[PrefixedExample], steers: &[RowSteer]) -> Result<(LoraAdapter, Vec<crate::lora::StepInfo>)> {
        let seed = self.cfg.run.seed;
        let adapter = LoraAdapter::new(&self.model, &t.lora(seed)?)?;
        let tc = TrainConfig {
            lr: t.lr,
            epochs: t.epochs,
            max_steps: t.max_steps,
            batch_size: t.batch_size,
            grad_accum: t.grad_accum,
            seed,
            callback_every: 0,
            ..Default::default()
        };
        let model = &self.model;
        let steps = train_lora_prefixed(
            model,
            &adapter,
            examples,
            &tc,
            |idx| {
                let rows: Vec<RowSteer> = idx.iter().map(|&i| steers[i].clone()).collect();
                row_steering_hooks(model, &rows, Site::ResidPost, Phase::Prefill)
            },
            |_, _| Ok(()),
        )?;
        Ok((adapter, steps))
    }

    /// The training log of a saved adapter.
    pub fn train_log(&self, exp: &str, variant: &str) -> Result<TrainLog> {
        crate::base::io::read_json(self.adapter_dir(exp, variant)?.join("train_log.json"))
    }

    /// One experiment: cells `base_model` (no adapter) and each variant (train, then evaluate
    /// every tier with each `info` setting); writes `<exp>.parquet` and `<exp>_accuracy.csv`.
    fn experiment(&self, exp: &str, concept: bool, variants: Vec<Variant>, tiers: Vec<Tier>) -> Result<DataFrame> {
        let s = self.sizes().clone();
        self.vectors()?;
        let mut names = vec!["base_model".to_string()];
        names.extend(variants.iter().map(|v| v.name.clone()));
        let cells = CellKey::grid().axis("variant", names).build();
        let base_plan = EvalPlan { tiers, bands: s.eval_bands.clone(), strengths: s.eval_strengths.clone(), emit_clean: true, controls: true, tokens: SteeredTokens::Context, phrasing: 0 };
        let mut sweep = self.run.sweep::<CellKey>(exp)?;
        sweep.run(cells, |k| {
            let name = k.str("variant")?;
            let adapter = match variants.iter().find(|v| v.name == name) {
                Some(v) => Some(self.train_variant(exp, v, concept)?),
                None => None,
            };
            let label = if adapter.is_some() { name.to_string() } else { "base_model".to_string() };
            // A variant is evaluated with its own steered tokens and question phrasing; the base
            // model with the protocol's.
            let mut plan = base_plan.clone();
            if let Some(v) = variants.iter().find(|v| v.name == name) {
                (plan.tokens, plan.phrasing) = (v.train.tokens, v.train.question);
            }
            let mut rows = vec![];
            for &info in &s.eval_info {
                rows.extend(self.evaluate(&label, adapter.as_ref(), info, &plan)?);
            }
            to_df(&rows)
        })?;
        let rows: Vec<ReadoutRow> = from_df(&sweep.collect()?)?;
        let acc = to_df(&tier_accuracy(&rows))?;
        self.run.write_csv(&format!("{exp}_accuracy.csv"), &acc)?;
        self.run.write_csv(&format!("{exp}_summary.csv"), &to_df(&summarize(&rows))?)?;
        Ok(acc)
    }

    /// Experiment 1: random-vector training, every variant; tiers `random_train` (the first
    /// `eval_vectors` training vectors), `random_heldout`, `concept` (all concepts).
    pub fn experiment1(&self) -> Result<DataFrame> {
        let n = self.sizes().eval_vectors;
        let concepts: Vec<u32> = self.concept_vectors()?.meta.entries.iter().map(|e| e.id).take(n).collect();
        let tiers = vec![
            Tier { name: "random_train".into(), concept: false, ids: self.ids(false, Split::Train, n.min(self.sizes().train.n_vectors))? },
            Tier { name: "random_heldout".into(), concept: false, ids: self.ids(false, Split::HeldOut, n)? },
            Tier { name: "concept".into(), concept: true, ids: concepts },
        ];
        self.experiment("exp1", false, self.variants(), tiers)
    }

    /// Experiment 2: the base setup trained on concept vectors (train split); tiers
    /// `concept_train`, `concept_heldout`, `random_heldout`.
    pub fn experiment2(&self) -> Result<DataFrame> {
        let n = self.sizes().eval_vectors;
        let n_train = self.concept_vectors()?.ids(Split::Train).len();
        let mut t = self.sizes().train.clone();
        t.n_vectors = t.n_vectors.min(n_train);
        let v = Variant { name: "concept_base".into(), axis: "base".into(), value: String::new(), train: t };
        let tiers = vec![
            Tier { name: "concept_train".into(), concept: true, ids: self.ids(true, Split::Train, n.min(v.train.n_vectors))? },
            Tier { name: "concept_heldout".into(), concept: true, ids: self.ids(true, Split::HeldOut, n)? },
            Tier { name: "random_heldout".into(), concept: false, ids: self.ids(false, Split::HeldOut, n)? },
        ];
        self.experiment("exp2", true, vec![v], tiers)
    }

    pub fn experiment_rows(&self, exp: &str) -> Result<Vec<ReadoutRow>> {
        from_df(&self.run.read_parquet(format!("{exp}.parquet")).with_context(|| format!("{exp}.parquet: run that experiment first"))?)
    }

    /// Random-trained vs concept-trained generalisation: per trained model, accuracy on vectors of
    /// its own kind it trained on, held-out vectors of its kind, and the other kind (info off);
    /// writes `generalisation.csv`.
    pub fn generalisation(&self) -> Result<DataFrame> {
        #[derive(Serialize)]
        struct Row {
            trained_on: String,
            model: String,
            evaluated_on: String,
            tier: String,
            accuracy: f64,
            acc_lo: f64,
            acc_hi: f64,
            tpr: f64,
            fpr: f64,
        }
        let mut out = vec![];
        for (exp, trained_on, model, tiers) in [
            ("exp1", "random", "base", [("seen", "random_train"), ("heldout_same_kind", "random_heldout"), ("other_kind", "concept")]),
            ("exp2", "concept", "concept_base", [("seen", "concept_train"), ("heldout_same_kind", "concept_heldout"), ("other_kind", "random_heldout")]),
        ] {
            let Ok(rows) = self.experiment_rows(exp) else { continue };
            let acc = tier_accuracy(&rows);
            for (what, tier) in tiers {
                if let Some(r) = acc.iter().find(|r| r.model == model && !r.info && r.tier == tier) {
                    out.push(Row { trained_on: trained_on.into(), model: model.into(), evaluated_on: what.into(), tier: tier.into(), accuracy: r.accuracy, acc_lo: r.acc_lo, acc_hi: r.acc_hi, tpr: r.tpr, fpr: r.fpr });
                }
            }
        }
        ensure!(!out.is_empty(), "generalisation: run experiment 1 and/or 2 first");
        let df = to_df(&out)?;
        self.run.write_csv("generalisation.csv", &df)?;
        Ok(df)
    }

    // ---------------------------------------------------------------------------- 3 tasks

    /// The evaluation examples of `task` (seeded by the run's seed): held-out random vectors,
    /// every concept.
    pub fn task_examples(&self, task: Task) -> Result<Vec<TaskExample>> {
        self.task_examples_of(task, false)
    }

    /// The training examples of `task` (another seed): train-split random vectors, and the train
    /// split's concepts when it has at least four (else every concept: the options need four).
    pub fn task_train_examples(&self, task: Task) -> Result<Vec<TaskExample>> {
        self.task_examples_of(task, true)
    }

    fn task_examples_of(&self, task: Task, train: bool) -> Result<Vec<TaskExample>> {
        let s = self.sizes();
        let concepts = self.concept_vectors()?;
        let split = if train { Split::Train } else { Split::HeldOut };
        let mut cs: Vec<(u32, String)> = concepts.meta.entries.iter().filter(|e| train && e.split == Split::Train).map(|e| (e.id, e.label.clone())).collect();
        if cs.len() < 4 {
            cs = concepts.meta.entries.iter().map(|e| (e.id, e.label.clone())).collect();
        }
        let p = TaskParams {
            n: if train { s.task_train_examples } else { s.task_examples },
            n_conversations: s.n_conversations,
            band: s.task_band.clone(),
            strength: s.task_strength,
            magnitudes: s.magnitudes.clone(),
            magnitude_edges: s.magnitude_edges,
            random_ids: self.random_vectors()?.ids(split),
            concepts: cs,
            seed: if train { self.cfg.run.seed.wrapping_add(1_000_003) } else { self.cfg.run.seed },
        };
        tasks::generate(task, &self.data.sentences, &p)
    }

    /// The training pairs of `task`: the prefix is the steered turns, the suffix the question,
    /// "Answer:" and the right answer (` Sentences 3, 7`), whose tokens are the targets.
    pub fn task_training_examples(&self, task: Task) -> Result<(Vec<PrefixedExample>, Vec<RowSteer>)> {
        let tok = self.model.tok()?;
        let (mut ex, mut steers) = (vec![], vec![]);
        for e in self.task_train_examples(task)? {
            let (p, steer) = self.task_row(&e)?;
            let mut suffix = p.ids[p.split..].to_vec();
            let start = suffix.len();
            suffix.extend(tok.encode(&format!(" {}", e.truth))?);
            ex.push(PrefixedExample::new(p.ids[..p.split].to_vec(), suffix.clone(), (start..suffix.len()).collect())?);
            steers.push(steer);
        }
        Ok((ex, steers))
    }

    /// Trains (or loads, when saved) the LoRA of `task` with the `train` setup (batch size 1:
    /// the answers differ in length), saved under `adapters/tasks/<task>/`.
    fn train_task(&self, task: Task) -> Result<LoraAdapter> {
        if let Some(a) = self.adapter("tasks", task.name())? {
            return Ok(a);
        }
        let mut t = self.sizes().train.clone();
        t.n_examples = self.sizes().task_train_examples;
        t.grad_accum = t.batch_size * t.grad_accum;
        t.batch_size = 1;
        let (examples, steers) = self.task_training_examples(task)?;
        let variant = Variant { name: format!("task_{}", task.name()), axis: "task".into(), value: task.name().into(), train: t };
        let (adapter, steps) = self.train_prefixed(&variant.train, &examples, &steers)?;
        let dir = self.adapter_dir("tasks", task.name())?;
        let log = TrainLog { variant, n_examples: examples.len(), n_steered: examples.len(), steps };
        adapter.save_atomic_with(&dir, |tmp| crate::base::io::write_json(tmp.join("train_log.json"), &log))?;
        Ok(adapter)
    }

    /// The conversation of a task example, its steering and the prompt.
    pub fn task_row(&self, ex: &TaskExample) -> Result<(ProtocolPrompt, RowSteer)> {
        let conv = Conversation {
            reply: ex.reply,
            info: false,
            question: Question::Custom { question: ex.question.clone(), answer_prefix: tasks::TASK_ANSWER_PREFIX.into() },
            framing: ex.framing.clone(),
        };
        let p = self.prompt(&conv, SteeredTokens::Context)?;
        let positions = if ex.task == Task::Sentences {
            let r = &p.rendered;
            let user1 = &r.messages[r.find_message(crate::text::spans::MessageRef::user(1))?];
            let content = &r.text[user1.chars.clone()];
            let mut pos = vec![];
            for &k in &ex.steered_sentences {
                let line = tasks::sentence_line(&ex.sentences, k);
                let at = content.find(&line).with_context(|| format!("sentence {k} is not in the rendered user turn"))?;
                let start = user1.chars.start + at;
                pos.extend(r.tokens_overlapping(start..start + line.len()));
            }
            pos.sort_unstable();
            pos.dedup();
            ensure!(!pos.is_empty(), "example {}: the steered sentences have no tokens", ex.index);
            pos
        } else {
            p.steered.clone()
        };
        let set = if ex.vector_kind == "concept" { self.concept_vectors()? } else { self.random_vectors()? };
        let steer = RowSteer::new(set.get(ex.vector_id)?.to_vec(), self.band(&ex.band)?, ex.strength, positions);
        Ok((p, steer))
    }

    /// Every task answered by the base model and (with `task_train_examples` > 0) by a LoRA
    /// trained on that task (greedy, `max_new_tokens`), parsed; writes `tasks.parquet` and
    /// `tasks_summary.csv`.
    pub fn tasks(&self) -> Result<DataFrame> {
        self.vectors()?;
        let s = self.sizes().clone();
        let mut models = vec!["base_model"];
        if s.task_train_examples > 0 {
            models.push("trained");
        }
        let cells = CellKey::grid().axis("task", Task::ALL.map(|t| t.name())).axis("model", models).build();
        let mut sweep = self.run.sweep::<CellKey>("tasks")?;
        sweep.run(cells, |k| {
            let task = Task::from_name(k.str("task")?)?;
            let model = k.str("model")?;
            let adapter = if model == "trained" { Some(self.train_task(task)?) } else { None };
            let mut out = vec![];
            for ex in self.task_examples(task)? {
                let (p, steer) = self.task_row(&ex)?;
                let n_steered = steer.positions.len();
                let row = SteeredRow { ids: p.ids.clone(), split: p.split, steer };
                let a = adapter.as_ref().map(|a| a as &dyn crate::hooks::Adapter);
                let g = generate_after_prefix(&self.model, &[row], a, &GenerateConfig::greedy(s.max_new_tokens))?.remove(0);
                let parsed = tasks::parse(&ex, &g.text);
                let correct = parsed.as_deref() == Some(ex.truth.as_str());
                let jaccard = match (&parsed, task) {
                    (Some(a), Task::Sentences) => tasks::sentence_jaccard(a, &ex.truth)?,
                    _ => f64::NAN,
                };
                let chance = match task {
                    Task::Sentences => sentence_chance(tasks::N_SENTENCES),
                    Task::Concept => 0.25,
                    Task::Layers | Task::Magnitude => 1.0 / 3.0,
                };
                out.push(TaskRow {
                    model: model.into(),
                    task: task.name().into(),
                    index: ex.index as i64,
                    conversation: ex.reply as i64,
                    band: ex.band.clone(),
                    strength: ex.strength,
                    vector_kind: ex.vector_kind.clone(),
                    vector_id: ex.vector_id as i64,
                    n_steered_tokens: n_steered as i64,
                    truth: ex.truth.clone(),
                    answer: g.text.clone(),
                    parsed_ok: parsed.is_some(),
                    parsed: parsed.unwrap_or_default(),
                    correct,
                    jaccard,
                    chance,
                });
            }
            to_df(&out)
        })?;
        let rows: Vec<TaskRow> = from_df(&sweep.collect()?)?;
        let df = to_df(&task_summary(&rows))?;
        self.run.write_csv("tasks_summary.csv", &df)?;
        Ok(df)
    }

    pub fn task_rows(&self) -> Result<Vec<TaskRow>> {
        from_df(&self.run.read_parquet("tasks.parquet").context("tasks.parquet: run the tasks phase first")?)
    }

    // ---------------------------------------------------------------------------- 4 analysis

    /// The analysis conversations: `(prompt, steering)` for `analysis_rows` conversations with a
    /// held-out random vector at the first eval band and the largest eval strength.
    pub fn analysis_conversations(&self) -> Result<Vec<(ProtocolPrompt, RowSteer)>> {
        let s = self.sizes();
        let random = self.random_vectors()?;
        let ids = random.ids(Split::HeldOut);
        let band = self.band(&s.eval_bands[0])?;
        let strength = s.eval_strengths.iter().copied().fold(0.0, f64::max);
        (0..s.analysis_rows)
            .map(|i| {
                let p = self.prompt(&Conversation::detect(i % s.n_conversations, false), SteeredTokens::Context)?;
                let st = RowSteer::new(random.get(ids[i % ids.len()])?.to_vec(), band.clone(), strength, p.steered.clone());
                Ok((p, st))
            })
            .collect()
    }

    /// The models of the analysis: the base model and experiment 1's base adapter when trained.
    fn analysis_models(&self) -> Result<Vec<(String, Option<LoraAdapter>)>> {
        let mut m = vec![("base_model".to_string(), None)];
        if let Some(a) = self.adapter("exp1", "base")? {
            m.push(("exp1/base".to_string(), Some(a)));
        }
        Ok(m)
    }

    /// Hooks of one full forward equivalent to steer-then-remove: the vector is added at the
    /// steered (prefix) positions only, in every phase, with the adapter if any.
    fn analysis_hooks<'a>(&self, steer: Option<&RowSteer>, adapter: Option<&'a LoraAdapter>) -> Result<Hooks<'a>> {
        let mut h: Hooks<'a> = match steer {
            Some(s) => row_steering_hooks(&self.model, std::slice::from_ref(s), Site::ResidPost, Phase::Both)?,
            None => Hooks::new(),
        };
        if let Some(a) = adapter {
            h = h.lora(a);
        }
        Ok(h)
    }

    /// Attention from the question's positions onto the steered positions per layer and head,
    /// steered vs clean, for the base model and experiment 1's adapter (`attention.parquet`,
    /// `attention_summary.csv`); ‖ΔW‖ of every saved adapter (`lora_norms.csv`); the logit lens
    /// at the answer position (`lens.parquet`, `lens_summary.csv`). Returns the attention summary.
    pub fn analysis(&self) -> Result<DataFrame> {
        let convs = self.analysis_conversations()?;
        let n = self.model.n_layers();
        let models = self.analysis_models()?;
        let names: Vec<String> = models.iter().map(|m| m.0.clone()).collect();
        let mut attn = self.run.sweep::<CellKey>("attention")?;
        attn.run(CellKey::grid().axis("model", names.clone()).build(), |k| {
            let (label, adapter) = models.iter().find(|m| m.0 == k.str("model").unwrap_or_default()).context("unknown model")?;
            let mut out = vec![];
            for (row, (p, st)) in convs.iter().enumerate() {
                for steered in [false, true] {
                    let mut hooks = self.analysis_hooks(steered.then_some(st), adapter.as_ref())?;
                    for l in 0..n {
                        hooks = hooks.cache(HookPoint::attn_pattern(l), Positions::Span(p.split..p.ids.len()));
                    }
                    let o = self.model.forward_at(std::slice::from_ref(&p.ids), &hooks, LogitsAt::None)?;
                    for l in 0..n {
                        let pat: Vec<Vec<Vec<f32>>> = o.activations.row(HookPoint::attn_pattern(l), 0)?.to_dtype(candle_core::DType::F32)?.to_vec3()?;
                        for (h, qs) in pat.iter().enumerate() {
                            let mass = qs.iter().map(|q| p.steered.iter().map(|&j| q[j] as f64).sum::<f64>()).sum::<f64>() / qs.len().max(1) as f64;
                            out.push(AttnRow { model: label.clone(), steered, row: row as i64, layer: l as i64, head: h as i64, mass });
                        }
                    }
                }
            }
            to_df(&out)
        })?;
        let arows: Vec<AttnRow> = from_df(&attn.collect()?)?;
        let summary = to_df(&attention_summary(&arows)?)?;
        self.run.write_csv("attention_summary.csv", &summary)?;

        let mut norms = vec![];
        for (exp, variant) in self.saved_adapters()? {
            if let Some(a) = self.adapter(&exp, &variant)? {
                for (name, m) in a.modules() {
                    let w = m.delta_weight()?;
                    let f = w.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?.sqrt();
                    let kind = name.rsplit('.').next().unwrap_or(name).to_string();
                    norms.push(NormRow { adapter: format!("{exp}/{variant}"), module: name.to_string(), layer: m.layer as i64, kind, delta_norm: f });
                }
            }
        }
        if !norms.is_empty() {
            self.run.write_csv("lora_norms.csv", &to_df(&norms)?)?;
        }

        let mut lens = self.run.sweep::<CellKey>("lens")?;
        lens.run(CellKey::grid().axis("model", names).build(), |k| {
            let (label, adapter) = models.iter().find(|m| m.0 == k.str("model").unwrap_or_default()).context("unknown model")?;
            let mut out = vec![];
            for (row, (p, st)) in convs.iter().enumerate() {
                for steered in [false, true] {
                    let hooks = self.analysis_hooks(steered.then_some(st), adapter.as_ref())?;
                    let ll = logit_lens(&self.model, std::slice::from_ref(&p.ids), Positions::Last, hooks)?;
                    for (l, per_row) in ll.logprobs.iter().enumerate() {
                        let lp = per_row[0].get(0)?;
                        let y = YesNo::from_logprobs(crate::interp::token_probs::set_logprobs(&lp, &[self.yes.clone()])?[0], crate::interp::token_probs::set_logprobs(&lp, &[self.no.clone()])?[0]);
                        out.push(LensRow { model: label.clone(), steered, row: row as i64, layer: l as i64, p_yes: y.p_yes, p_no: y.p_no });
                    }
                }
            }
            to_df(&out)
        })?;
        let lrows: Vec<LensRow> = from_df(&lens.collect()?)?;
        #[derive(Serialize)]
        struct LensMean {
            model: String,
            steered: bool,
            layer: i64,
            p_yes: f64,
            n: i64,
        }
        let lm: Vec<LensMean> = mean_by(&lrows, |r| (r.model.clone(), r.steered, r.layer), |r| r.p_yes)
            .into_iter()
            .map(|((model, steered, layer), p_yes, n)| LensMean { model, steered, layer, p_yes, n: n as i64 })
            .collect();
        self.run.write_csv("lens_summary.csv", &to_df(&lm)?)?;
        Ok(summary)
    }

    /// `(exp, variant)` of every adapter saved in this run.
    pub fn saved_adapters(&self) -> Result<Vec<(String, String)>> {
        let mut out = vec![];
        for exp in ["exp1", "exp2", "tasks"] {
            let d = self.run.join(format!("adapters/{exp}"))?;
            let Ok(rd) = std::fs::read_dir(&d) else { continue };
            let mut names: Vec<String> = rd.filter_map(|e| e.ok()).filter(|e| e.path().join("adapter_config.json").exists()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
            names.sort();
            out.extend(names.into_iter().map(|n| (exp.to_string(), n)));
        }
        Ok(out)
    }

    // ---------------------------------------------------------------------------- 5 report

    /// The plan's seven key predictions beside this run's measurements; writes `report.json` and
    /// `reports/report.md`, and draws the figures into `figures/`.
    pub fn report(&self) -> Result<Report> {
        let exp1 = self.experiment_rows("exp1").ok();
        let acc1 = exp1.as_ref().map(|r| tier_accuracy(r));
        let tier = |t: &str| acc1.as_ref().and_then(|a| a.iter().find(|r| r.model == "base" && !r.info && r.tier == t).cloned());
        let tier_finding = |name: &str, plan: &str, lo: f64, hi: f64, t: &str| -> Finding {
            match tier(t) {
                Some(r) => Finding::measured(name, plan, (lo, hi), r.accuracy, Some((r.acc_lo, r.acc_hi)), Some(2 * r.n_steered), format!("experiment 1, base setup, tier {t}, info off: balanced accuracy (TPR {:.3}, FPR {:.3})", r.tpr, r.fpr)),
                None => Finding::null(name, plan, (lo, hi), "experiment 1 has not been run (no exp1.parquet)"),
            }
        };
        let mut findings = vec![
            tier_finding("train_accuracy", "training accuracy > 90 % (the task is learnable)", 0.9, 1.0, "random_train"),
            tier_finding("heldout_random", "held-out random vectors: 70-85 % (partial generalisation)", 0.7, 0.85, "random_heldout"),
            tier_finding("concept_vectors", "concept vectors: 50-70 % (harder, closer to the manifold)", 0.5, 0.7, "concept"),
        ];
        // 4. rank
        let ranks: Vec<(usize, TierRow)> = match (&acc1, exp1.is_some()) {
            (Some(a), true) => self
                .variants()
                .iter()
                .filter(|v| v.axis == "rank" || v.axis == "base")
                .filter_map(|v| a.iter().find(|r| r.model == v.name && !r.info && r.tier == "random_heldout").map(|r| (v.train.rank, r.clone())))
                .collect(),
            _ => vec![],
        };
        let mut ranks = ranks;
        ranks.sort_by_key(|r| r.0);
        ranks.dedup_by_key(|r| r.0);
        let plan4 = "low LoRA rank generalises better than high rank (held-out accuracy falls with rank)";
        findings.push(if ranks.len() >= 2 {
            let (lo, hi) = (&ranks[0], &ranks[ranks.len() - 1]);
            let detail = ranks.iter().map(|(r, t)| format!("r={r}: {:.3} [{:.3}, {:.3}]", t.accuracy, t.acc_lo, t.acc_hi)).collect::<Vec<_>>().join("; ");
            Finding::measured("low_rank_generalises", plan4, (0.0, f64::INFINITY), lo.1.accuracy - hi.1.accuracy, None, Some(ranks.len() as i64), format!("held-out accuracy of the lowest minus the highest rank (> 0 supports the prediction): {detail}"))
        } else {
            Finding::null("low_rank_generalises", plan4, (0.0, f64::INFINITY), &format!("needs at least two ranks in experiment 1 (this mode trains {})", ranks.len()))
        });
        // 5, 6: the trained adapter when there is one, else the base model's baseline.
        let (source, rows): (&str, Vec<ReadoutRow>) = match &exp1 {
            Some(r) => ("experiment 1, base setup", r.iter().filter(|x| x.model == "base" && !x.info).cloned().collect()),
            None => ("baseline (base model)", self.baseline_rows().map(|r| r.into_iter().filter(|x| !x.info).collect()).unwrap_or_default()),
        };
        let steered: Vec<&ReadoutRow> = rows.iter().filter(|r| r.question == "detect" && r.steered).collect();
        let mut strengths: Vec<i64> = steered.iter().map(|r| (r.strength * 1e6) as i64).collect();
        strengths.sort();
        strengths.dedup();
        let plan5 = "magnitude correlates positively with detection";
        findings.push(if strengths.len() >= 2 && steered.len() >= 3 {
            let x: Vec<f64> = steered.iter().map(|r| r.strength).collect();
            let y: Vec<f64> = steered.iter().map(|r| r.says_yes as u8 as f64).collect();
            match spearman(&x, &y) {
                Ok(c) => Finding::measured("magnitude_correlation", plan5, (0.0, 1.0), c.r, None, Some(c.n as i64), format!("{source}: Spearman ρ(strength, said yes) over steered rows, p = {:.3}", c.p)),
                Err(e) => Finding::null("magnitude_correlation", plan5, (0.0, 1.0), &format!("{source}: {e}")),
            }
        } else {
            Finding::null("magnitude_correlation", plan5, (0.0, 1.0), &format!("{source}: needs at least two strengths (this mode has {})", strengths.len()))
        });
        let plan6 = "middle-layer steering is the hardest to detect";
        let tpr = |b: &str| {
            let v: Vec<&&ReadoutRow> = steered.iter().filter(|r| r.band == b).collect();
            (!v.is_empty()).then(|| rate(v.iter().filter(|r| r.says_yes).count(), v.len()))
        };
        findings.push(match (tpr("early"), tpr("middle"), tpr("late")) {
            (Some(e), Some(m), Some(l)) => Finding::measured(
                "middle_hardest",
                plan6,
                (f64::NEG_INFINITY, 0.0),
                m.estimate - e.estimate.min(l.estimate),
                None,
                Some((e.n + m.n + l.n) as i64),
                format!("{source}: detection rate middle − min(early, late) (< 0 supports it); early {:.3} [{:.3}, {:.3}], middle {:.3} [{:.3}, {:.3}], late {:.3} [{:.3}, {:.3}]", e.estimate, e.lo, e.hi, m.estimate, m.lo, m.hi, l.estimate, l.lo, l.hi),
            ),
            _ => Finding::null("middle_hardest", plan6, (f64::NEG_INFINITY, 0.0), &format!("{source}: needs the early, middle and late bands among the evaluated bands")),
        });
        let plan7 = "token localisation is possible but much harder (~60 % accuracy)";
        findings.push(match self.task_rows() {
            Ok(t) => {
                let trained = t.iter().any(|r| r.task == "sentences" && r.model == "trained");
                let (model, who) = if trained { ("trained", "LoRA trained on the task") } else { ("base_model", "base model (untrained on the task)") };
                let v: Vec<&TaskRow> = t.iter().filter(|r| r.task == "sentences" && r.model == model).collect();
                let p = rate(v.iter().filter(|r| r.correct).count(), v.len());
                let parsed = v.iter().filter(|r| r.parsed_ok).count();
                Finding::measured("token_localisation", plan7, (0.6, 0.6), p.estimate, Some((p.lo, p.hi)), Some(v.len() as i64), format!("{who}, exact set of steered sentences on held-out vectors; {parsed}/{} answers parseable; chance {:.4}", v.len(), sentence_chance(tasks::N_SENTENCES)))
            }
            Err(_) => Finding::null("token_localisation", plan7, (0.6, 0.6), "the tasks phase has not been run"),
        });
        let rep = Report { mode: self.mode().name().into(), model: self.cfg.model.name.clone(), findings };
        self.run.write_json("report.json", &rep)?;
        self.run.write_text("reports/report.md", &rep.markdown())?;
        figures::save_all(self)?;
        Ok(rep)
    }
}

/// One key prediction of the plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub name: String,
    pub plan: String,
    /// The predicted range (`plan_lo == plan_hi` for a point value; infinite ends are written null).
    pub plan_lo: Option<f64>,
    pub plan_hi: Option<f64>,
    /// Null when this run cannot measure it (see `detail`).
    pub measured: Option<f64>,
    pub ci_lo: Option<f64>,
    pub ci_hi: Option<f64>,
    pub n: Option<i64>,
    pub detail: String,
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

impl Finding {
    fn measured(name: &str, plan: &str, range: (f64, f64), value: f64, ci: Option<(f64, f64)>, n: Option<i64>, detail: String) -> Self {
        Self {
            name: name.into(),
            plan: plan.into(),
            plan_lo: finite(range.0),
            plan_hi: finite(range.1),
            measured: finite(value),
            ci_lo: ci.and_then(|c| finite(c.0)),
            ci_hi: ci.and_then(|c| finite(c.1)),
            n,
            detail,
        }
    }
    fn null(name: &str, plan: &str, range: (f64, f64), reason: &str) -> Self {
        Self { name: name.into(), plan: plan.into(), plan_lo: finite(range.0), plan_hi: finite(range.1), measured: None, ci_lo: None, ci_hi: None, n: None, detail: reason.into() }
    }
}

/// `report.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub mode: String,
    pub model: String,
    pub findings: Vec<Finding>,
}

fn fmt_opt(x: Option<f64>) -> String {
    x.map_or("null".into(), |v| format!("{v:.3}"))
}

impl Report {
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "# Introspection fine-tuning: the plan's key predictions beside this run's\n\nmode `{}`, model `{}`. `null` = not measurable in this run (the detail says why). CIs are Wilson 95 % intervals.\n\n| prediction | plan | plan range | measured | 95 % CI | n | detail |\n|---|---|---|---|---|---|---|\n",
            self.mode, self.model
        );
        for f in &self.findings {
            s += &format!(
                "| {} | {} | [{}, {}] | {} | [{}, {}] | {} | {} |\n",
                f.name,
                f.plan,
                fmt_opt(f.plan_lo),
                fmt_opt(f.plan_hi),
                fmt_opt(f.measured),
                fmt_opt(f.ci_lo),
                fmt_opt(f.ci_hi),
                f.n.map_or("null".into(), |n| n.to_string()),
                f.detail.replace('|', "/")
            );
        }
        s
    }
}
