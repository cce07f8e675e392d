//! `configs/introspection.toml`: the model, the committed inputs, the protocol's answer tokens and
//! the per-mode sizes, including the training sweep as one-factor-at-a-time variations of a base
//! training setup (every variant is one resumable cell of experiment 1).
use crate::interp::introspection::SteeredTokens;
use crate::lora::LoraConfig;
use crate::runs::config::{parse_toml, study_config_basics, LayerSpec, Mode, ModelCfg, Modes, RunCfg};
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::path::PathBuf;

/// `[data]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataCfg {
    /// Folder with `concepts.txt`, `suffixes.txt`, `replies.txt`, `control_questions.txt` and
    /// `sentences.txt`, relative to the config file.
    pub dir: PathBuf,
}

/// `[protocol]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProtocolCfg {
    /// The completions after the answer prefix that mean yes and no (each must be one token of the
    /// model's tokenizer: `" yes"` / `" no"` after "The answer is"). They are the training targets;
    /// P(yes) and P(no) sum every single-token spelling of the trimmed word.
    pub yes: String,
    pub no: String,
    /// Steer the template tokens between user turn 1 and assistant turn 1 too (one span).
    pub steer_template_between: bool,
    /// Also steer the (empty) system block and user turn 1's header, as the reference code did;
    /// off by default, as the plan keeps the system turn clean.
    #[serde(default, skip_serializing_if = "is_false")]
    pub steer_system: bool,
    /// The concept-vector contrast (`{concept}` is replaced by the concept).
    pub concept_positive: String,
    pub concept_negative: String,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn is_context(t: &SteeredTokens) -> bool {
    *t == SteeredTokens::Context
}

/// A layer band as depth fractions: blocks `round(from·n) .. round(to·n)` (at least one block).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Band {
    pub name: String,
    pub from: f64,
    pub to: f64,
}

impl Band {
    /// The blocks of the band on a model of `n_layers` blocks.
    pub fn blocks(&self, n_layers: usize) -> Result<Range<usize>> {
        ensure!(
            (0.0..1.0).contains(&self.from) && self.to > self.from && self.to <= 1.0,
            "band {:?}: need 0 <= from < to <= 1 (depth fractions), got from = {}, to = {}",
            self.name,
            self.from,
            self.to
        );
        let a = ((self.from * n_layers as f64).round() as usize).min(n_layers - 1);
        let b = ((self.to * n_layers as f64).round() as usize).clamp(a + 1, n_layers);
        Ok(a..b)
    }
}

/// One training setup (the base one is `[modes.x.train]`; the sweep varies one field at a time).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainCfg {
    pub rank: usize,
    /// `lora_alpha = alpha_ratio · rank`.
    pub alpha_ratio: f64,
    /// `qkv`, `qkvo` or `all_linear`.
    pub targets: String,
    pub dropout: f64,
    pub lr: f64,
    pub epochs: usize,
    /// Stop after this many optimizer steps (`None`: the epochs decide).
    #[serde(default)]
    pub max_steps: Option<usize>,
    /// Training examples (conversations), `steered_ratio` of them steered.
    pub n_examples: usize,
    pub steered_ratio: f64,
    /// Training vectors: the first n of the train split.
    pub n_vectors: usize,
    /// Strengths and bands (names from `bands`) drawn uniformly per steered example.
    pub strengths: Vec<f64>,
    pub bands: Vec<String>,
    pub batch_size: usize,
    pub grad_accum: usize,
    /// Which context tokens are steered, in training and in this setup's evaluation (`context`,
    /// `user_only`, `partial`).
    #[serde(default, skip_serializing_if = "is_context")]
    pub tokens: SteeredTokens,
    /// The detection question's phrasing, in training and in this setup's evaluation: 0 is the
    /// protocol's own, `i` the i-th entry of `questions.txt`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub question: usize,
}

impl TrainCfg {
    pub fn lora(&self, seed: u64) -> Result<LoraConfig> {
        let alpha = self.alpha_ratio * self.rank as f64;
        let c = match self.targets.as_str() {
            "qkv" => LoraConfig::qkv(self.rank, alpha),
            "qkvo" => LoraConfig::qkvo(self.rank, alpha),
            "all_linear" => LoraConfig::all_linear(self.rank, alpha),
            t => bail!("targets {t:?}: expected qkv, qkvo or all_linear"),
        };
        let c = c.with_dropout(self.dropout).with_seed(seed);
        c.validate()?;
        Ok(c)
    }

    fn check(&self, bands: &[Band]) -> Result<()> {
        for (what, n) in [("rank", self.rank), ("epochs", self.epochs), ("n_examples", self.n_examples), ("n_vectors", self.n_vectors)] {
            ensure!(n > 0, "{what} must be at least 1");
        }
        ensure!(self.batch_size > 0 && self.grad_accum > 0, "batch_size and grad_accum must be at least 1");
        ensure!(self.lr > 0.0 && self.lr.is_finite(), "lr must be > 0");
        ensure!(self.alpha_ratio > 0.0, "alpha_ratio must be > 0");
        ensure!((0.0..1.0).contains(&self.dropout), "dropout must be in [0, 1)");
        ensure!(self.steered_ratio > 0.0 && self.steered_ratio < 1.0, "steered_ratio must be in (0, 1)");
        ensure!(!self.strengths.is_empty() && self.strengths.iter().all(|s| s.is_finite() && *s > 0.0), "strengths must be non-empty and > 0");
        ensure!(!self.bands.is_empty(), "bands is empty");
        for b in &self.bands {
            ensure!(bands.iter().any(|x| &x.name == b), "band {b:?} is not defined in bands");
        }
        if self.max_steps == Some(0) {
            bail!("max_steps must be at least 1 (omit it to train for `epochs`)");
        }
        self.lora(0).map(|_| ())
    }
}

/// The plan's sweeps: each listed value replaces the base setup's field in one variant.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepCfg {
    #[serde(default)]
    pub rank: Vec<usize>,
    #[serde(default)]
    pub alpha_ratio: Vec<f64>,
    #[serde(default)]
    pub targets: Vec<String>,
    #[serde(default)]
    pub dropout: Vec<f64>,
    #[serde(default)]
    pub lr: Vec<f64>,
    #[serde(default)]
    pub epochs: Vec<usize>,
    #[serde(default)]
    pub n_vectors: Vec<usize>,
    #[serde(default)]
    pub steered_ratio: Vec<f64>,
    #[serde(default)]
    pub grad_accum: Vec<usize>,
    #[serde(default)]
    pub strengths: Vec<Vec<f64>>,
    #[serde(default)]
    pub bands: Vec<Vec<String>>,
    // Skipped when empty so that configs written before these axes existed keep their manifests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<SteeredTokens>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub question: Vec<usize>,
}

/// A named training setup: `base` or `<field>=<value>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Variant {
    pub name: String,
    /// The field varied (`base` for the base setup) and its value as text.
    pub axis: String,
    pub value: String,
    pub train: TrainCfg,
}

fn list<T: std::fmt::Debug>(v: &[T]) -> String {
    format!("{v:?}").replace([' ', '"'], "")
}

impl SweepCfg {
    /// The base variant, then one variant per listed value that differs from the base.
    pub fn variants(&self, base: &TrainCfg) -> Vec<Variant> {
        let mut out = vec![Variant { name: "base".into(), axis: "base".into(), value: String::new(), train: base.clone() }];
        let mut push = |axis: &str, value: String, t: TrainCfg| {
            if t != *base && !out.iter().any(|v| v.train == t) {
                out.push(Variant { name: format!("{axis}={value}"), axis: axis.into(), value, train: t });
            }
        };
        macro_rules! axis {
            ($field:ident, $fmt:expr) => {
                for v in &self.$field {
                    let mut t = base.clone();
                    t.$field = v.clone();
                    push(stringify!($field), $fmt(v), t);
                }
            };
        }
        axis!(rank, |v: &usize| v.to_string());
        axis!(alpha_ratio, |v: &f64| v.to_string());
        axis!(targets, |v: &String| v.clone());
        axis!(dropout, |v: &f64| v.to_string());
        axis!(lr, |v: &f64| format!("{v:e}"));
        axis!(epochs, |v: &usize| v.to_string());
        axis!(n_vectors, |v: &usize| v.to_string());
        axis!(steered_ratio, |v: &f64| v.to_string());
        axis!(grad_accum, |v: &usize| v.to_string());
        axis!(strengths, |v: &Vec<f64>| list(v));
        axis!(bands, |v: &Vec<String>| list(v));
        axis!(tokens, |v: &SteeredTokens| v.to_string());
        axis!(question, |v: &usize| v.to_string());
        out
    }
}

/// The sizes of one mode.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sizes {
    /// Random unit vectors: train split ids `0..n_train_vectors`, held-out after them.
    pub n_train_vectors: usize,
    pub n_heldout_vectors: usize,
    /// Concepts (the first n of `concepts.txt`), of which every `concept_heldout_every`-th is held out.
    pub n_concepts: usize,
    pub concept_heldout_every: usize,
    /// Suffixes per concept extraction (the first n of `suffixes.txt`, at least 2).
    pub n_suffixes: usize,
    /// Block whose `resid_post` the concept vectors are read at.
    pub concept_layer: LayerSpec,
    /// Conversation variants (the first n assistant replies) and control questions used.
    pub n_conversations: usize,
    pub n_controls: usize,
    /// Named layer bands (depth fractions).
    pub bands: Vec<Band>,
    /// Baseline: vectors per kind (random, concept), bands, strengths (0 allowed: the law row) and
    /// with/without the info paragraph.
    pub baseline_vectors: usize,
    pub baseline_bands: Vec<String>,
    pub baseline_strengths: Vec<f64>,
    pub info: Vec<bool>,
    /// Evaluation of experiments 1 and 2: vectors per tier, bands, strengths (> 0), and the info
    /// settings (`[false, true]` asks whether the info paragraph stacks with the training).
    pub eval_vectors: usize,
    pub eval_bands: Vec<String>,
    pub eval_strengths: Vec<f64>,
    pub eval_info: Vec<bool>,
    /// Forward batch (conversations per call).
    pub batch_size: usize,
    /// Experiment 1's base training setup and its sweep; experiment 2 trains the base setup on
    /// concept vectors (its `n_vectors` capped at the concept train split).
    pub train: TrainCfg,
    #[serde(default)]
    pub sweep: SweepCfg,
    /// Localisation tasks: examples per task, training examples per task (0: the base model
    /// only; else a LoRA per task with the `train` setup's adapter and optimizer, on train-split
    /// vectors), new tokens of the answer, the band and strength of the sentence / concept tasks,
    /// and the magnitude task's strengths and bucket edges (weak < edges[0] <= moderate <
    /// edges[1] <= strong).
    pub task_examples: usize,
    pub task_train_examples: usize,
    pub max_new_tokens: usize,
    pub task_band: String,
    pub task_strength: f64,
    pub magnitudes: Vec<f64>,
    pub magnitude_edges: [f64; 2],
    /// Analyses: conversations (steered and clean) for the attention and logit-lens tables.
    pub analysis_rows: usize,
}

fn check_sizes(s: &Sizes) -> Result<()> {
    for (what, n) in [
        ("n_train_vectors", s.n_train_vectors),
        ("n_heldout_vectors", s.n_heldout_vectors),
        ("n_concepts", s.n_concepts),
        ("concept_heldout_every", s.concept_heldout_every),
        ("n_conversations", s.n_conversations),
        ("n_controls", s.n_controls),
        ("baseline_vectors", s.baseline_vectors),
        ("eval_vectors", s.eval_vectors),
        ("batch_size", s.batch_size),
        ("task_examples", s.task_examples),
        ("max_new_tokens", s.max_new_tokens),
        ("analysis_rows", s.analysis_rows),
    ] {
        ensure!(n > 0, "{what} must be at least 1");
    }
    ensure!(s.n_suffixes >= 2, "n_suffixes must be at least 2 (the PCA of the concept vectors needs two pairs)");
    ensure!(s.concept_heldout_every >= 2, "concept_heldout_every must be at least 2 (else no concept is left to train on)");
    ensure!(s.n_concepts >= s.concept_heldout_every, "n_concepts = {} holds out none: it must be >= concept_heldout_every = {}", s.n_concepts, s.concept_heldout_every);
    ensure!(s.n_concepts >= 4, "n_concepts must be at least 4 (the concept task offers 4 choices)");
    ensure!(!s.bands.is_empty(), "bands is empty");
    for (i, b) in s.bands.iter().enumerate() {
        b.blocks(2).with_context(|| format!("bands[{i}]"))?;
        ensure!(s.bands.iter().filter(|x| x.name == b.name).count() == 1, "band {:?} is defined twice", b.name);
    }
    let known = |what: &str, names: &[String]| -> Result<()> {
        ensure!(!names.is_empty(), "{what} is empty");
        for n in names {
            ensure!(s.bands.iter().any(|b| &b.name == n), "{what}: band {n:?} is not defined in bands");
        }
        Ok(())
    };
    known("baseline_bands", &s.baseline_bands)?;
    known("eval_bands", &s.eval_bands)?;
    known("task_band", std::slice::from_ref(&s.task_band))?;
    for name in ["early", "middle", "late"] {
        ensure!(s.bands.iter().any(|b| b.name == name), "bands must define {name:?} (the layer-localisation task asks for it)");
    }
    ensure!(!s.baseline_strengths.is_empty() && s.baseline_strengths.iter().all(|x| x.is_finite() && *x >= 0.0), "baseline_strengths must be non-empty and >= 0");
    ensure!(!s.eval_strengths.is_empty() && s.eval_strengths.iter().all(|x| x.is_finite() && *x > 0.0), "eval_strengths must be non-empty and > 0");
    ensure!(!s.info.is_empty(), "info is empty (list false and/or true)");
    ensure!(s.eval_info.contains(&false), "eval_info must contain false (the reported accuracies are without the info paragraph)");
    ensure!(s.eval_vectors <= s.n_train_vectors && s.eval_vectors <= s.n_heldout_vectors, "eval_vectors = {} exceeds n_train_vectors or n_heldout_vectors", s.eval_vectors);
    ensure!(s.baseline_vectors <= s.n_heldout_vectors + s.n_train_vectors, "baseline_vectors = {} exceeds the random vectors drawn", s.baseline_vectors);
    ensure!(s.task_strength > 0.0, "task_strength must be > 0");
    ensure!(!s.magnitudes.is_empty() && s.magnitudes.iter().all(|m| *m > 0.0), "magnitudes must be non-empty and > 0");
    ensure!(s.magnitude_edges[0] < s.magnitude_edges[1], "magnitude_edges must increase");
    s.train.check(&s.bands).context("train")?;
    ensure!(s.train.n_vectors <= s.n_train_vectors, "train.n_vectors = {} exceeds n_train_vectors = {}", s.train.n_vectors, s.n_train_vectors);
    for (i, v) in s.sweep.variants(&s.train).iter().enumerate().skip(1) {
        v.train.check(&s.bands).with_context(|| format!("sweep variant {i} ({})", v.name))?;
        ensure!(v.train.n_vectors <= s.n_train_vectors, "sweep variant {}: n_vectors exceeds n_train_vectors = {}", v.name, s.n_train_vectors);
    }
    Ok(())
}

/// `configs/introspection.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionConfig {
    #[serde(default)]
    pub mode: Mode,
    pub model: ModelCfg,
    pub data: DataCfg,
    pub protocol: ProtocolCfg,
    pub run: RunCfg,
    pub modes: Modes<Sizes>,
    #[serde(skip)]
    pub base_dir: PathBuf,
}

study_config_basics!(IntrospectionConfig, Sizes);

impl IntrospectionConfig {
    pub fn from_toml(text: &str, base_dir: impl Into<PathBuf>) -> Result<Self> {
        let mut cfg: IntrospectionConfig = parse_toml(text)?;
        cfg.base_dir = base_dir.into();
        cfg.modes.check_each(check_sizes)?;
        let p = &cfg.protocol;
        ensure!(!p.yes.trim().is_empty() && !p.no.trim().is_empty(), "protocol.yes and protocol.no must not be empty");
        ensure!(p.yes.trim() != p.no.trim(), "protocol.yes and protocol.no are the same word");
        ensure!(p.concept_positive.contains("{concept}"), "protocol.concept_positive has no {{concept}} placeholder");
        cfg.model.check(&cfg.base_dir)?;
        ensure!(cfg.path(&cfg.data.dir).is_dir(), "data.dir: {} is not a directory", cfg.path(&cfg.data.dir).display());
        Ok(cfg)
    }
}
