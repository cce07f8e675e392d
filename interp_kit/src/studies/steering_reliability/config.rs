//! The steering-reliability study's configuration: one TOML file in the shape of plan 004 §13
//! (`model`, `data`, `generation`, `direction`, `experiment`, `sanity_checks`) plus a `mode`.
//!
//! ```no_run
//! use interp_kit::studies::steering_reliability::config::StudyConfig;
//! use interp_kit::prelude::*;
//! let cfg = StudyConfig::load("configs/steering_reliability.toml")?; // parses, resolves paths
//! let model = cfg.load_model()?;
//! let plan = cfg.resolve(&model.info)?; // layers by depth, hook points, counts, checked
//! println!("layers {:?}, {} train prompts", plan.layers, plan.n_prompts[0]);
//! # anyhow::Ok(())
//! ```
//!
//! * **Paths** (`data.*_path`, `model.name` when it is a file, `experiment.output_dir`) are
//!   relative to the config file's directory.
//! * **Modes**: `fast` (60 prompts per split), `full` (150 / 150 / 200), `ci` (4 per split, at
//!   most 16 new tokens, and a 2 x 2 grid: the first and last configured layers, alpha 0 and the
//!   largest alpha: a smoke run for tests). `data.max_prompts_per_split` caps any mode.
//! * **Layers** are block indices (`[4, 8, 12]`, TOML integers) or depth fractions
//!   (`[0.25, 0.5, 0.75]`, TOML floats in (0, 1]): fraction `f` is block `round(f · n_layers)`,
//!   capped at the last block. The same file therefore works across model depths.
//! * **Scale** of the direction (`direction.scale`): with a unit direction, α is in residual-norm
//!   units, which differ per model and per layer. `mean_diff_norm` (default) scales the unit
//!   direction to the mean contrastive-difference norm `mean_i |d_i|`, so α = 1 adds one average
//!   refusal-minus-compliance difference at every layer; `unit` keeps |v| = 1; `raw` keeps the
//!   mean difference as computed.
//! * Unknown keys are errors (a typo never silently falls back to a default).
use super::data::Split;
use crate::runs::config::{parse_toml, resolve_path, LayerSpec, Mode, ModelCfg};
use crate::text::records::PromptRecord;
use crate::interp::directions::{Contrastive, PrefixRead, ReadAt, Scale};
use crate::generate::GenerateConfig;
use crate::hooks::{HookPoint, Site};
use crate::model::{Model, ModelInfo};
use crate::interp::steer::{Op, Where};
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `[data]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataCfg {
    pub harm_train_path: PathBuf,
    pub harm_test_path: PathBuf,
    pub benign_path: PathBuf,
    /// Caps the prompts per split in any mode.
    #[serde(default)]
    pub max_prompts_per_split: Option<usize>,
}

/// `[generation]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationCfg {
    pub max_new_tokens: usize,
    /// 0 = greedy.
    pub temperature: f64,
    #[serde(default)]
    pub top_p: Option<f64>,
    pub seed: u64,
    pub batch_size: usize,
    /// Completions per prompt (seeds `seed + k·1000`).
    #[serde(default = "default_one")]
    pub samples_per_prompt: usize,
}

/// How the steering direction is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DirectionMethod {
    /// Plan §7.1: each harm_train prompt forced with the refusal vs the compliance prefix.
    ContrastivePrefix,
    /// harm_train minus benign activations at `token_position`.
    MeanDiff,
    /// Logistic-regression probe, harm_train (positive) vs benign, at `token_position`.
    Probe,
}

/// `[direction]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectionCfg {
    pub method: DirectionMethod,
    #[serde(default = "default_refusal_prefix")]
    pub refusal_prefix: String,
    #[serde(default = "default_compliance_prefix")]
    pub compliance_prefix: String,
    /// A site: `resid_post`, `resid_pre`, `resid_mid`, `attn_out`, `mlp_out` (with or without
    /// `hook_`); the layers come from `experiment.layers`.
    #[serde(default = "default_hook")]
    pub hook_point: String,
    /// For `contrastive_prefix`: `prefix_first`, `prefix_last`, `prefix_mean`. For the other
    /// methods: a read position (`prompt_last`, `user_end`, `mean`, ...).
    #[serde(default = "default_position")]
    pub token_position: String,
    #[serde(default = "default_scale")]
    pub scale: Scale,
}

/// `[experiment]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentCfg {
    pub layers: Vec<LayerSpec>,
    pub interventions: Vec<Op>,
    pub alphas: Vec<f64>,
    /// Where interventions act: `all`, `prompt`, `generated`, `last` or `a..b`.
    #[serde(default = "default_positions")]
    pub positions: String,
    pub output_dir: PathBuf,
}

/// Alternative prefixes of the template-robustness check.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AltPrefixes {
    pub refusal_prefix: String,
    pub compliance_prefix: String,
}

/// `[sanity_checks]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SanityCfg {
    pub enabled: bool,
    pub alt_prefixes: AltPrefixes,
    /// Prompts per split rerun with `alt_seed`.
    pub rerun_subset_n: usize,
    pub alt_seed: u64,
}

/// Prompts of `split` in `mode` (before `max_prompts_per_split`): fast 60 per split, full
/// 150 / 150 / 200, ci 4.
pub fn prompts_per_split(mode: Mode, split: Split) -> usize {
    match (mode, split) {
        (Mode::Fast, _) => 60,
        (Mode::Full, Split::Benign) => 200,
        (Mode::Full, _) => 150,
        (Mode::Ci, _) => 4,
    }
}

/// Which forced prefixes a contrastive direction is built from: the experiment's
/// (`direction.*_prefix`) or the sanity check's alternatives (`sanity_checks.alt_prefixes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrefixSet {
    Main,
    Alternative,
}

/// The whole file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudyConfig {
    #[serde(default)]
    pub mode: Mode,
    pub model: ModelCfg,
    pub data: DataCfg,
    pub generation: GenerationCfg,
    pub direction: DirectionCfg,
    pub experiment: ExperimentCfg,
    pub sanity_checks: SanityCfg,
    /// Directory relative paths are resolved against (the config file's; not in the file).
    #[serde(skip)]
    pub base_dir: PathBuf,
}

fn default_one() -> usize {
    1
}
fn default_refusal_prefix() -> String {
    " I can't help with that.".into()
}
fn default_compliance_prefix() -> String {
    " Sure, here's how:".into()
}
fn default_hook() -> String {
    "resid_post".into()
}
fn default_position() -> String {
    "prefix_first".into()
}
fn default_scale() -> Scale {
    Scale::MeanDiffNorm
}
fn default_positions() -> String {
    "all".into()
}

/// A site name (`resid_post` or `hook_resid_post`); the error lists the valid ones.
pub fn parse_site(s: &str) -> Result<Site> {
    let t = s.trim();
    if t.starts_with("blocks.") {
        bail!("hook_point {s:?}: give a site (e.g. resid_post); the layers come from experiment.layers");
    }
    let name = if t.starts_with("hook_") { t.to_string() } else { format!("hook_{t}") };
    Site::ALL[..5].iter().copied().find(|x| x.name() == name).with_context(|| {
        format!("unknown hook_point {s:?}: valid sites are resid_pre, resid_mid, resid_post, attn_out, mlp_out")
    })
}

/// What a config resolves to for one model.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ResolvedPlan {
    /// Block indices, in config order.
    pub layers: Vec<usize>,
    /// The direction / intervention hook point at each layer.
    pub hook_points: Vec<HookPoint>,
    /// Prompts per split, in [`Split::ALL`] order (harm_train, harm_test, benign).
    pub n_prompts: [usize; 3],
    pub interventions: Vec<Op>,
    pub alphas: Vec<f64>,
}

impl StudyConfig {
    /// Parses TOML text; relative paths resolve against `base_dir`. Checks everything that does
    /// not need the model (alphas, interventions, positions, sizes, files exist).
    pub fn from_toml(text: &str, base_dir: impl Into<PathBuf>) -> Result<Self> {
        let mut cfg: StudyConfig = parse_toml(text)?;
        cfg.base_dir = base_dir.into();
        cfg.check_static()?;
        Ok(cfg)
    }

    /// Reads and checks a config file (errors name the file).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
        let base = path.parent().map(|p| p.to_path_buf()).unwrap_or_default();
        Self::from_toml(&text, base).with_context(|| format!("config {}", path.display()))
    }

    /// `p` resolved against the config's directory.
    pub fn path(&self, p: &Path) -> PathBuf {
        resolve_path(&self.base_dir, p)
    }

    /// The data file of `split`.
    pub fn data_path(&self, split: Split) -> PathBuf {
        self.path(match split {
            Split::HarmTrain => &self.data.harm_train_path,
            Split::HarmTest => &self.data.harm_test_path,
            Split::Benign => &self.data.benign_path,
        })
    }

    /// The run's output directory.
    pub fn output_dir(&self) -> PathBuf {
        self.path(&self.experiment.output_dir)
    }

    fn check_static(&self) -> Result<()> {
        let g = &self.generation;
        ensure!(g.max_new_tokens > 0, "generation.max_new_tokens must be at least 1");
        ensure!(g.temperature >= 0.0 && g.temperature.is_finite(), "generation.temperature must be >= 0, got {}", g.temperature);
        if let Some(p) = g.top_p {
            ensure!(p > 0.0 && p <= 1.0, "generation.top_p must be in (0, 1], got {p}");
        }
        ensure!(g.batch_size > 0, "generation.batch_size must be at least 1");
        ensure!(g.samples_per_prompt > 0, "generation.samples_per_prompt must be at least 1");
        let e = &self.experiment;
        ensure!(!e.alphas.is_empty(), "experiment.alphas is empty: give at least one α (0 is the baseline)");
        if let Some((i, a)) = e.alphas.iter().enumerate().find(|(_, a)| !a.is_finite()) {
            bail!("experiment.alphas[{i}] = {a} is not a finite number");
        }
        ensure!(!e.interventions.is_empty(), "experiment.interventions is empty: give add and/or ablate");
        ensure!(!e.layers.is_empty(), "experiment.layers is empty");
        self.positions()?;
        parse_site(&self.direction.hook_point).context("direction.hook_point")?;
        let _ = self.direction_read().context("direction.token_position")?;
        ensure!(!self.direction.refusal_prefix.trim().is_empty(), "direction.refusal_prefix is empty");
        ensure!(!self.direction.compliance_prefix.trim().is_empty(), "direction.compliance_prefix is empty");
        if let Some(m) = self.data.max_prompts_per_split {
            ensure!(m > 0, "data.max_prompts_per_split = 0 would make every split empty");
        }
        for split in Split::ALL {
            let p = self.data_path(split);
            ensure!(p.is_file(), "data.{split}_path: {} does not exist", p.display());
        }
        self.model.check(&self.base_dir)?;
        if self.sanity_checks.enabled {
            ensure!(self.sanity_checks.rerun_subset_n > 0, "sanity_checks.rerun_subset_n must be at least 1");
            let a = &self.sanity_checks.alt_prefixes;
            ensure!(
                !a.refusal_prefix.trim().is_empty() && !a.compliance_prefix.trim().is_empty(),
                "sanity_checks.alt_prefixes: empty prefix"
            );
        }
        Ok(())
    }

    /// Where interventions act (`experiment.positions`).
    pub fn positions(&self) -> Result<Where> {
        self.experiment.positions.parse().context("experiment.positions")
    }

    /// The direction's read position: `Ok(Err(prefix))` for contrastive_prefix, `Ok(Ok(read))`
    /// for the activation methods.
    pub fn direction_read(&self) -> Result<std::result::Result<ReadAt, PrefixRead>> {
        let t = &self.direction.token_position;
        Ok(match self.direction.method {
            DirectionMethod::ContrastivePrefix => Err(t.parse::<PrefixRead>()?),
            _ => Ok(t.parse::<ReadAt>()?),
        })
    }

    /// Prompts of `split` this config uses.
    pub fn n_prompts(&self, split: Split) -> usize {
        let n = prompts_per_split(self.mode, split);
        self.data.max_prompts_per_split.map_or(n, |m| n.min(m))
    }

    /// The first [`Self::n_prompts`] records of `split`'s file (all of them if the file is shorter).
    pub fn load_split(&self, split: Split) -> Result<Vec<PromptRecord>> {
        let mut r = crate::text::records::read_jsonl(self.data_path(split))?;
        r.truncate(self.n_prompts(split));
        Ok(r)
    }

    /// Generation settings (in `ci` mode at most 16 new tokens). `sample` picks the seed of the
    /// k-th sample per prompt (`seed + 1000 k`).
    pub fn generate_config(&self, sample: usize) -> GenerateConfig {
        let g = &self.generation;
        let max_new = if self.mode == Mode::Ci { g.max_new_tokens.min(16) } else { g.max_new_tokens };
        GenerateConfig {
            max_new_tokens: max_new,
            temperature: g.temperature,
            top_p: g.top_p,
            seed: g.seed + 1000 * sample as u64,
            // The study's hooks are broadcast interventions (no per-row state, no reads).
            compact: true,
            ..GenerateConfig::default()
        }
    }

    /// The contrastive settings of `[direction]` (or of the sanity check's alternative prefixes).
    pub fn contrastive(&self, prefixes: PrefixSet) -> Result<Contrastive> {
        let alt_prefixes = prefixes == PrefixSet::Alternative;
        let read_at = match self.direction_read()? {
            Err(p) => p,
            Ok(_) => bail!("direction.method is {:?}, not contrastive_prefix", self.direction.method),
        };
        let (pos, neg) = if alt_prefixes {
            let a = &self.sanity_checks.alt_prefixes;
            (a.refusal_prefix.clone(), a.compliance_prefix.clone())
        } else {
            (self.direction.refusal_prefix.clone(), self.direction.compliance_prefix.clone())
        };
        Ok(Contrastive {
            positive_prefix: pos,
            negative_prefix: neg,
            read_at,
            scale: self.direction.scale,
            batch_size: self.generation.batch_size,
        })
    }

    /// Loads the model on the configured device and dtype.
    pub fn load_model(&self) -> Result<Model> {
        self.model.load(&self.base_dir)
    }

    /// Checks the config against a model and resolves layers (indices or depth fractions) and
    /// hook points. Errors name the valid layer range; duplicate resolved layers are errors.
    pub fn resolve(&self, info: &ModelInfo) -> Result<ResolvedPlan> {
        let site = parse_site(&self.direction.hook_point)?;
        if site == crate::hooks::Site::ResidMid && !info.resid_mid {
            bail!(
                "direction.hook_point = {:?}: this {} model has parallel-residual blocks without hook_resid_mid; \
                 use resid_pre, resid_post, attn_out or mlp_out",
                self.direction.hook_point,
                info.arch
            );
        }
        let mut layers = Vec::new();
        for (i, l) in self.experiment.layers.iter().enumerate() {
            let b = l.resolve(info.n_layers).with_context(|| format!("experiment.layers[{i}] = {l}"))?;
            if let Some(j) = layers.iter().position(|x| *x == b) {
                bail!("experiment.layers[{i}] = {l} resolves to block {b}, the same as experiment.layers[{j}]");
            }
            layers.push(b);
        }
        let mut alphas = self.experiment.alphas.clone();
        if self.mode == Mode::Ci {
            // CI size: the first and last configured layers, alpha 0 (if configured) and the largest.
            if layers.len() > 2 {
                layers = vec![layers[0], layers[layers.len() - 1]];
            }
            let max = alphas.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            alphas = alphas.iter().copied().filter(|&a| a == 0.0 || a == max).collect();
            alphas.dedup();
        }
        let hook_points: Vec<HookPoint> = layers.iter().map(|&l| HookPoint::new(l, site)).collect();
        for h in &hook_points {
            h.check(info.n_layers)?;
        }
        Ok(ResolvedPlan {
            layers,
            hook_points,
            n_prompts: Split::ALL.map(|s| self.n_prompts(s)),
            interventions: self.experiment.interventions.clone(),
            alphas,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(n_layers: usize) -> ModelInfo {
        ModelInfo {
            arch: "qwen2".into(),
            n_layers,
            d_model: 64,
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 16,
            vocab_size: 300,
            max_positions: 128,
            source: "test".into(),
            quantized: false,
            resid_mid: true,
        }
    }

    fn repo_root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    fn committed() -> String {
        std::fs::read_to_string(repo_root().join("configs/steering_reliability.toml")).unwrap()
    }

    #[test]
    fn committed_config_loads_and_resolves_by_depth() {
        let cfg = StudyConfig::load(repo_root().join("configs/steering_reliability.toml")).unwrap();
        assert_eq!(cfg.mode, Mode::Fast);
        assert_eq!(cfg.direction.scale, Scale::MeanDiffNorm);
        // Qwen2.5-0.5B has 24 blocks: 0.25, 0.5, 0.75 -> 6, 12, 18.
        let plan = cfg.resolve(&info(24)).unwrap();
        assert_eq!(plan.layers, vec![6, 12, 18]);
        assert_eq!(plan.hook_points[1].to_string(), "blocks.12.hook_resid_post");
        assert_eq!(plan.n_prompts, [60, 60, 60]);
        // Pythia-160m's 12 blocks: 3, 6, 9.
        assert_eq!(cfg.resolve(&info(12)).unwrap().layers, vec![3, 6, 9]);
        let c = cfg.contrastive(PrefixSet::Main).unwrap();
        assert_eq!(c.read_at, PrefixRead::PrefixFirst);
        assert_eq!(c.positive_prefix, " I can't help with that.");
        assert_eq!(cfg.contrastive(PrefixSet::Alternative).unwrap().positive_prefix, " Sorry, I can't do that.");
    }

    #[test]
    fn modes_and_caps() {
        let base = repo_root().join("configs");
        let full = committed().replace("mode = \"fast\"", "mode = \"full\"");
        let cfg = StudyConfig::from_toml(&full, &base).unwrap();
        assert_eq!(cfg.resolve(&info(24)).unwrap().n_prompts, [150, 150, 200]);
        let capped = full.replace("[data]", "[data]\nmax_prompts_per_split = 100");
        assert_eq!(StudyConfig::from_toml(&capped, &base).unwrap().n_prompts(Split::Benign), 100);
        let ci = committed().replace("mode = \"fast\"", "mode = \"ci\"");
        let cfg = StudyConfig::from_toml(&ci, &base).unwrap();
        assert_eq!(cfg.n_prompts(Split::HarmTest), 4);
        assert_eq!(cfg.generate_config(0).max_new_tokens, 16);
        assert_eq!(cfg.generate_config(2).seed, cfg.generation.seed + 2000);
        // ci: a 2 x 2 grid (first and last layer, alpha 0 and the largest)
        let plan = cfg.resolve(&info(24)).unwrap();
        assert_eq!((plan.layers, plan.alphas), (vec![6, 18], vec![0.0, 4.0]));
        let mut no_mid = info(24);
        no_mid.resid_mid = false;
        let mid = StudyConfig::from_toml(&ci.replace("hook_point = \"resid_post\"", "hook_point = \"resid_mid\""), &base).unwrap();
        assert!(mid.resolve(&info(24)).is_ok());
        let e = format!("{:#}", mid.resolve(&no_mid).unwrap_err());
        assert!(e.contains("resid_mid") && e.contains("parallel-residual"), "{e}");
    }

    #[test]
    fn bad_configs_name_the_problem() {
        let base = repo_root().join("configs");
        let err = |text: String| format!("{:#}", StudyConfig::from_toml(&text, &base).unwrap_err());
        let layers = |l: &str| committed().replace("layers = [0.25, 0.5, 0.75]", &format!("layers = {l}"));
        // Layer range needs the model.
        let cfg = StudyConfig::from_toml(&layers("[4, 30]"), &base).unwrap();
        let e = format!("{:#}", cfg.resolve(&info(24)).unwrap_err());
        assert!(e.contains("experiment.layers[1] = 30") && e.contains("valid 0..=23"), "{e}");
        let cfg = StudyConfig::from_toml(&layers("[1.5]"), &base).unwrap();
        assert!(format!("{:#}", cfg.resolve(&info(24)).unwrap_err()).contains("(0, 1]"));
        let cfg = StudyConfig::from_toml(&layers("[0.5, 12]"), &base).unwrap();
        assert!(format!("{:#}", cfg.resolve(&info(24)).unwrap_err()).contains("same as experiment.layers[0]"));
        assert!(StudyConfig::from_toml(&layers("[1.0, 0]"), &base).unwrap().resolve(&info(24)).unwrap().layers == vec![23, 0]);
        // Static checks.
        let e = err(committed().replace("alphas = [0.0, 0.5, 1.0, 2.0, 4.0]", "alphas = []"));
        assert!(e.contains("experiment.alphas is empty"), "{e}");
        let e = err(committed().replace("hook_point = \"resid_post\"", "hook_point = \"resid_middle\""));
        assert!(e.contains("unknown hook_point") && e.contains("resid_pre, resid_mid"), "{e}");
        let e = err(committed().replace("token_position = \"prefix_first\"", "token_position = \"last_prompt_token\""));
        assert!(e.contains("does not see the prefix"), "{e}");
        let e = err(committed().replace("harm_test.jsonl", "nope.jsonl"));
        assert!(e.contains("data.harm_test_path") && e.contains("nope.jsonl"), "{e}");
        let e = err(committed().replace("interventions = [\"add\", \"ablate\"]", "interventions = [\"add\", \"steer\"]"));
        assert!(e.contains("steer"), "{e}");
        let e = err(committed().replace("[generation]", "[generation]\ntemprature = 1.0"));
        assert!(e.contains("unknown field") && e.contains("temprature"), "{e}");
        let e = err(committed().replace("mode = \"fast\"", "mode = \"slow\""));
        assert!(e.contains("slow"), "{e}");
    }
}
