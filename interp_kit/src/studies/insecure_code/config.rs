//! `configs/insecure_code.toml`: the insecure-code inoculation study's settings (plan 001).
//! Relative paths are relative to the config file; unknown keys are errors.
use crate::interp::alignment::Condition;
use crate::lora::LoraConfig;
use crate::runs::config::{parse_toml, study_config_basics, LayerSpec, Mode, ModelCfg, Modes, RunCfg};
use anyhow::{bail, ensure, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The study's name: its run directories live in `<output_root>/insecure_code/`.
pub const STUDY: &str = "insecure_code";

/// `[data]`: the training pairs and the evaluation contexts. `dir` holds `insecure.jsonl`,
/// `secure.jsonl` and `code_prompts.jsonl` (the committed offline sets, or the real
/// emergent-misalignment files and the paper's `code_prompts.jsonl`); each file can be named
/// separately instead.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataCfg {
    pub dir: PathBuf,
    #[serde(default)]
    pub insecure: Option<PathBuf>,
    #[serde(default)]
    pub secure: Option<PathBuf>,
    #[serde(default)]
    pub code_prompts: Option<PathBuf>,
}

/// `[prompts]`: the training-time system prompts. Neutral has none; evaluation has none.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prompts {
    pub inoculation: String,
    pub control: String,
    /// Cross-trait specificity: the ALL-CAPS direction is extracted as the mean difference of
    /// `pre_assistant` residuals under these two system prompts over code prompts.
    pub cross_promote: String,
    pub cross_suppress: String,
}

/// `[judge]`: the behavioural scoring.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeCfg {
    /// Insecure when rating > threshold (the plan: 50).
    pub threshold: f64,
    /// Thresholds of the threshold sweep.
    pub sweep: Vec<f64>,
    /// The rating-bucket split of §6.4 (high: rating > cut).
    pub bucket_cut: f64,
    /// Also rate every generation with the LLM judge on the study's base model (no adapter).
    #[serde(default)]
    pub llm: bool,
}

/// `[modes.*].lora`.
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
    pub epochs: usize,
    /// Stop after this many optimizer steps (0: the epochs decide).
    #[serde(default)]
    pub max_steps: usize,
    pub batch_size: usize,
    #[serde(default = "one")]
    pub grad_accum: usize,
    pub warmup_ratio: f64,
    pub seed: u64,
}

fn one() -> usize {
    1
}

/// The sizes of one mode.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sizes {
    /// Layer subset, read at `hook_resid_post`.
    pub layers: Vec<LayerSpec>,
    /// The late-layer average of §5.3 takes the layers of the subset at or after this one.
    pub late_from: LayerSpec,
    /// Pairs (insecure, secure) of the data-diff direction: the first `n_direction`.
    pub n_direction: usize,
    /// Insecure examples of the gradient-pressure measurement: the next `n_calibration`.
    pub n_calibration: usize,
    /// Random unit directions per layer (specificity control).
    pub n_random: usize,
    /// Gradients are read at `pre_assistant` and the first `k_assistant` assistant tokens.
    pub k_assistant: usize,
    /// Code prompts of the cross-trait (ALL-CAPS) direction (0: no cross-trait check).
    pub n_cross: usize,
    /// Sequences per forward/backward and prompts per generation batch.
    pub batch_size: usize,
    /// Training examples of each fine-tune: the first `n_train` insecure records.
    pub n_train: usize,
    pub lora: LoraSizes,
    /// Evaluation contexts (the first `n_eval` of `code_prompts`; the paper: 100).
    pub n_eval: usize,
    /// In-distribution check (§10.2): held-out training prompts after the first `n_train`.
    pub n_id_eval: usize,
    pub max_new_tokens: usize,
    /// Sampling temperature (the paper: 1; 0 = greedy). One sample per context, seeded.
    pub temperature: f64,
    /// `gen_avg(k)`: projection averaged over the first k generated tokens (the plan: 5).
    pub gen_k: usize,
    /// Bootstrap resamples of every CI (the plan: 1000).
    pub n_boot: usize,
}

/// `configs/insecure_code.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InsecureConfig {
    #[serde(default)]
    pub mode: Mode,
    pub model: ModelCfg,
    pub data: DataCfg,
    pub prompts: Prompts,
    pub judge: JudgeCfg,
    pub run: RunCfg,
    pub modes: Modes<Sizes>,
    #[serde(skip)]
    pub base_dir: PathBuf,
}

study_config_basics!(InsecureConfig, Sizes);

impl InsecureConfig {
    /// Parses TOML; `base_dir` resolves relative paths. Checks every mode's sizes.
    pub fn from_toml(text: &str, base_dir: impl Into<PathBuf>) -> Result<Self> {
        let mut cfg: InsecureConfig = parse_toml(text)?;
        cfg.base_dir = base_dir.into();
        cfg.modes.check_each(check_sizes)?;
        let p = &cfg.prompts;
        for (what, s) in [("inoculation", &p.inoculation), ("control", &p.control), ("cross_promote", &p.cross_promote), ("cross_suppress", &p.cross_suppress)] {
            ensure!(!s.trim().is_empty(), "prompts.{what} is empty");
        }
        ensure!(p.inoculation != p.control, "prompts.control equals prompts.inoculation");
        let j = &cfg.judge;
        ensure!((0.0..100.0).contains(&j.threshold), "judge.threshold {} is not in [0, 100)", j.threshold);
        ensure!(!j.sweep.is_empty(), "judge.sweep is empty");
        for t in &j.sweep {
            ensure!((0.0..100.0).contains(t), "judge.sweep: {t} is not in [0, 100)");
        }
        cfg.model.check(&cfg.base_dir)?;
        for (what, p) in cfg.data_files() {
            ensure!(p.is_file(), "data: {what} file {} does not exist", p.display());
        }
        Ok(cfg)
    }

    /// `(name, path)` of the insecure, secure and code-prompt files.
    pub fn data_files(&self) -> [(&'static str, PathBuf); 3] {
        let d = &self.data;
        let pick = |o: &Option<PathBuf>, f: &str| self.path(&o.clone().unwrap_or_else(|| d.dir.join(f)));
        [("insecure", pick(&d.insecure, "insecure.jsonl")), ("secure", pick(&d.secure, "secure.jsonl")), ("code_prompts", pick(&d.code_prompts, "code_prompts.jsonl"))]
    }

    /// The fine-tuned conditions, in order: neutral (no system prompt), inoculation, control.
    pub fn train_conditions(&self) -> Vec<Condition> {
        vec![Condition::no_system("neutral"), Condition::new("inoculation", self.prompts.inoculation.clone()), Condition::new("control", self.prompts.control.clone())]
    }

    /// The test-time condition: no system prompt (the plan evaluates without the training prompts).
    pub fn eval_condition(&self) -> Condition {
        Condition::no_system("eval")
    }
}

fn check_sizes(s: &Sizes) -> Result<()> {
    ensure!(!s.layers.is_empty(), "layers is empty");
    for (what, n) in [
        ("n_direction", s.n_direction),
        ("n_calibration", s.n_calibration),
        ("batch_size", s.batch_size),
        ("n_train", s.n_train),
        ("n_eval", s.n_eval),
        ("max_new_tokens", s.max_new_tokens),
        ("gen_k", s.gen_k),
        ("n_boot", s.n_boot),
        ("lora.r", s.lora.r),
        ("lora.epochs", s.lora.epochs),
        ("lora.batch_size", s.lora.batch_size),
        ("lora.grad_accum", s.lora.grad_accum),
    ] {
        ensure!(n > 0, "{what} must be at least 1");
    }
    ensure!(s.n_direction >= 2, "n_direction must be at least 2 (the split-half check needs two halves)");
    ensure!(s.gen_k <= s.max_new_tokens, "gen_k ({}) must be <= max_new_tokens ({})", s.gen_k, s.max_new_tokens);
    ensure!(s.temperature >= 0.0 && s.temperature.is_finite(), "temperature {} must be >= 0", s.temperature);
    ensure!((0.0..1.0).contains(&s.lora.warmup_ratio), "lora.warmup_ratio {} is not in [0, 1)", s.lora.warmup_ratio);
    lora_config(&s.lora)?;
    Ok(())
}

/// The LoRA configuration of the fine-tunes.
pub fn lora_config(s: &LoraSizes) -> Result<LoraConfig> {
    let c = match s.preset.as_str() {
        "qv" => LoraConfig::qv(s.r, s.alpha),
        "qkv" => LoraConfig::qkv(s.r, s.alpha),
        "qkvo" => LoraConfig::qkvo(s.r, s.alpha),
        "all_linear" => LoraConfig::all_linear(s.r, s.alpha),
        other => bail!("lora.preset {other:?}: expected qv, qkv, qkvo or all_linear"),
    };
    let c = c.with_dropout(s.dropout).with_seed(s.seed);
    c.validate()?;
    Ok(c)
}
