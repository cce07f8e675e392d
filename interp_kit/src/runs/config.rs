//! Study configuration basics shared by every study: the run [`Mode`] (`ci` / `fast` / `full`,
//! overridable by `INTERP_KIT_STUDY_MODE`), the `[model]` table ([`ModelCfg`]) and [`LayerSpec`]
//! (block indices or depth fractions), the per-mode size tables ([`Modes`]), the `[run]` table
//! ([`RunCfg`]) and the file reading every study config shares ([`read_config`], [`resolve_path`]).
//! Each study's own config type lives in its folder.
use crate::model::{ComputeDtype, Model};
use anyhow::{bail, ensure, Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The size of a study run: `ci` (seconds to minutes, what `scripts/test.sh` runs), `fast` (the
/// embedded model on a laptop CPU) or `full` (the plan's sizes, for a CUDA host). Each study maps
/// a mode to its own sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Fast,
    Full,
    Ci,
}

impl Mode {
    /// The mode named by `INTERP_KIT_STUDY_MODE` (`ci`, `fast`, `full`), `None` when unset or
    /// empty: the test command runs the study notebooks at CI size this way. Every study's
    /// config loader applies it over the file's `mode`.
    pub fn from_env() -> Result<Option<Mode>> {
        match std::env::var("INTERP_KIT_STUDY_MODE") {
            Ok(m) if m.trim().is_empty() => Ok(None),
            Ok(m) => Ok(Some(match m.trim() {
                "ci" => Mode::Ci,
                "fast" => Mode::Fast,
                "full" => Mode::Full,
                other => bail!("INTERP_KIT_STUDY_MODE={other:?}: expected ci, fast or full"),
            })),
            Err(_) => Ok(None),
        }
    }

    /// The mode of a study whose config file says `file`: `INTERP_KIT_STUDY_MODE` when set, else `file`.
    pub fn resolve(file: Mode) -> Result<Mode> {
        Ok(Mode::from_env()?.unwrap_or(file))
    }

    /// The run id for `base` in this mode: `{base}_ci` in `ci` mode, so that a CI-size run never
    /// writes into (or resumes from) the directory of a real run.
    pub fn run_id(self, base: &str) -> String {
        if self == Mode::Ci {
            format!("{base}_ci")
        } else {
            base.to_string()
        }
    }

    /// `ci`, `fast` or `full`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Ci => "ci",
            Mode::Fast => "fast",
            Mode::Full => "full",
        }
    }
}

/// `[modes]` of a study config: the study's sizes for each [`Mode`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Modes<S> {
    pub ci: S,
    pub fast: S,
    pub full: S,
}

impl<S> Modes<S> {
    /// The sizes of mode `m`.
    pub fn get(&self, m: Mode) -> &S {
        match m {
            Mode::Ci => &self.ci,
            Mode::Fast => &self.fast,
            Mode::Full => &self.full,
        }
    }

    /// Runs `check` on every mode's sizes; an error names the table (`[modes.fast]`).
    pub fn check_each(&self, check: impl Fn(&S) -> Result<()>) -> Result<()> {
        for m in [Mode::Ci, Mode::Fast, Mode::Full] {
            check(self.get(m)).with_context(|| format!("[modes.{}]", m.name()))?;
        }
        Ok(())
    }
}

/// `[run]` of a study config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunCfg {
    /// Root of the run directories, relative to the config file.
    pub output_root: PathBuf,
    /// Run id; `ci` mode appends `_ci` ([`Mode::run_id`]).
    pub run_id: String,
    /// Seed of random directions, sampling and bootstraps.
    pub seed: u64,
}

/// Reads a study config file: `parse(text, folder)` builds and checks it (relative paths resolve
/// against the file's folder), errors name the file, and `INTERP_KIT_STUDY_MODE` overrides the
/// file's mode through `mode`.
pub fn read_config<C>(path: &Path, parse: impl FnOnce(&str, PathBuf) -> Result<C>, mode: impl FnOnce(&mut C) -> &mut Mode) -> Result<C> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
    let base = path.parent().map(|p| p.to_path_buf()).unwrap_or_default();
    let mut cfg = parse(&text, base).with_context(|| format!("config {}", path.display()))?;
    let m = mode(&mut cfg);
    *m = Mode::resolve(*m)?;
    Ok(cfg)
}

/// Parses a study config's TOML (unknown keys are errors in every study table).
pub fn parse_toml<C: DeserializeOwned>(text: &str) -> Result<C> {
    toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))
}

/// `p` resolved against the config file's folder `base_dir` (absolute paths stay as they are).
pub fn resolve_path(base_dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base_dir.join(p)
    }
}

/// The methods every study config shares (`load`, `sizes_of`, `sizes`, `path`, `run_id`), for a
/// struct with the fields `mode: Mode`, `modes: Modes<Sizes>`, `run: RunCfg`, `base_dir: PathBuf`
/// and an inherent `from_toml(text, base_dir) -> Result<Self>` that parses and checks it.
macro_rules! study_config_basics {
    ($cfg:ty, $sizes:ty) => {
        impl $cfg {
            /// Reads a config file (errors name it); `INTERP_KIT_STUDY_MODE` overrides its `mode`.
            pub fn load(path: impl AsRef<std::path::Path>) -> anyhow::Result<Self> {
                $crate::runs::config::read_config(path.as_ref(), Self::from_toml, |c| &mut c.mode)
            }
            /// The sizes of mode `m`.
            pub fn sizes_of(&self, m: $crate::runs::config::Mode) -> &$sizes {
                self.modes.get(m)
            }
            /// The sizes of the current mode.
            pub fn sizes(&self) -> &$sizes {
                self.modes.get(self.mode)
            }
            /// `p` resolved against the config file's folder.
            pub fn path(&self, p: &std::path::Path) -> std::path::PathBuf {
                $crate::runs::config::resolve_path(&self.base_dir, p)
            }
            /// The run id: `run.run_id`, with `_ci` appended in `ci` mode.
            pub fn run_id(&self) -> String {
                self.mode.run_id(&self.run.run_id)
            }
        }
    };
}
pub(crate) use study_config_basics;

/// `[model]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelCfg {
    /// `embedded` (the kit's default model), a `.gguf` file or an HF directory.
    pub name: String,
    /// `cpu`, `cuda`, `cuda:N` or `auto`.
    #[serde(default = "default_device")]
    pub device: String,
    /// `auto` (f32 on CPU, bf16 on CUDA), `f32`, `f16` or `bf16`.
    #[serde(default = "default_auto")]
    pub dtype: String,
    /// Render prompts with the model's chat template (the prefix then opens the assistant turn).
    #[serde(default = "default_true")]
    pub chat: bool,
    /// Optional system message for chat prompts.
    #[serde(default)]
    pub system_prompt: Option<String>,
    /// Prefill with int8 activations on the Q8_0 matrices (`Model::int8_prefill`: faster on CPUs
    /// with AVX-512 VNNI, a no-op elsewhere; the error it adds is in BENCHMARKS.md). Default
    /// false: f32 activations, the reference. Left out of the manifest when false, so the
    /// identity of runs made before it existed does not change.
    #[serde(default, skip_serializing_if = "is_false")]
    pub int8_prefill: bool,
    /// `f32` (default, the reference) or `bf16`: the arithmetic of the frozen linear layers on
    /// the gradient path (`Model::compute_dtype`: gradients and LoRA training; inference is
    /// unaffected). Left out of the manifest when f32, as `int8_prefill` is when false.
    #[serde(default, skip_serializing_if = "ComputeDtype::is_f32")]
    pub compute_dtype: ComputeDtype,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl ModelCfg {
    /// Checks device, dtype and (for a file) that it exists; `base_dir` resolves a relative path.
    pub fn check(&self, base_dir: &Path) -> Result<()> {
        if self.name != "embedded" {
            let p = base_dir.join(&self.name);
            ensure!(p.exists(), "model.name: {} does not exist (use \"embedded\" for the kit's default model)", p.display());
        }
        crate::base::device::device(&self.device).context("model.device")?;
        ensure!(
            ["auto", "f32", "f16", "bf16"].contains(&self.dtype.as_str()),
            "model.dtype {:?}: expected auto, f32, f16 or bf16",
            self.dtype
        );
        Ok(())
    }

    /// Loads the model on the configured device and dtype (`auto`: f32 on CPU, bf16 on CUDA);
    /// a relative `name` resolves against `base_dir`.
    pub fn load(&self, base_dir: &Path) -> Result<Model> {
        let device = crate::base::device::device(&self.device)?;
        let dtype = match self.dtype.as_str() {
            "f32" => candle_core::DType::F32,
            "f16" => candle_core::DType::F16,
            "bf16" => candle_core::DType::BF16,
            _ => crate::base::device::default_dtype(&device),
        };
        let mut model = if self.name == "embedded" {
            Model::from_gguf(&crate::base::embedded_model_path()?, &device, dtype)?
        } else {
            let p = base_dir.join(&self.name);
            if p.is_dir() {
                Model::from_hf_dir(&p, &device, dtype)?
            } else {
                Model::from_gguf(&p, &device, dtype)?
            }
        };
        model.int8_prefill = self.int8_prefill;
        model.compute_dtype = self.compute_dtype;
        Ok(model)
    }
}

/// A layer: a block index (TOML integer) or a depth fraction in (0, 1] (TOML float).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LayerSpec {
    Index(i64),
    Fraction(f64),
}

impl LayerSpec {
    /// The block index for a model of `n_layers` blocks; the error names the valid range.
    pub fn resolve(self, n_layers: usize) -> Result<usize> {
        ensure!(n_layers > 0, "the model has no layers");
        let last = n_layers - 1;
        match self {
            LayerSpec::Index(i) => {
                ensure!(
                    i >= 0 && (i as usize) < n_layers,
                    "layer {i} is out of range: this model has {n_layers} layers (valid 0..={last}, or a depth fraction in (0, 1])"
                );
                Ok(i as usize)
            }
            LayerSpec::Fraction(f) => {
                ensure!(
                    f > 0.0 && f <= 1.0,
                    "layer fraction {f} is out of range: fractions must be in (0, 1] (integers 0..={last} name blocks)"
                );
                Ok(((f * n_layers as f64).round() as usize).min(last))
            }
        }
    }
}

/// Resolves `specs` (a config's `what`, e.g. `[modes.fast] layers`) on a model of `n_layers`
/// blocks; an error names the entry, and two entries that resolve to one block are an error.
pub fn resolve_layers(specs: &[LayerSpec], n_layers: usize, what: &str) -> Result<Vec<usize>> {
    let mut out = vec![];
    for (i, l) in specs.iter().enumerate() {
        let b = l.resolve(n_layers).with_context(|| format!("{what}[{i}] = {l}"))?;
        ensure!(!out.contains(&b), "{what}[{i}] = {l} resolves to block {b} twice");
        out.push(b);
    }
    Ok(out)
}

impl std::fmt::Display for LayerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LayerSpec::Index(i) => write!(f, "{i}"),
            LayerSpec::Fraction(x) => write!(f, "{x:?}"),
        }
    }
}

fn default_device() -> String {
    "auto".into()
}
fn default_auto() -> String {
    "auto".into()
}
fn default_true() -> bool {
    true
}
#[cfg(test)]
mod tests {
    use super::*;

    /// `[model] int8_prefill`: false by default and then absent from the serialised config (the
    /// manifest identity of older runs is unchanged); true reaches the loaded model.
    #[test]
    fn int8_prefill_is_read_recorded_only_when_set_and_applied() {
        let base: ModelCfg = toml::from_str("name = \"embedded\"").unwrap();
        assert!(!base.int8_prefill);
        assert!(!serde_json::to_string(&base).unwrap().contains("int8_prefill"));
        let on: ModelCfg = toml::from_str("name = \"embedded\"\nint8_prefill = true").unwrap();
        assert!(serde_json::to_string(&on).unwrap().contains("\"int8_prefill\":true"));
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/parity");
        for flag in [false, true] {
            let cfg = ModelCfg { name: "gpt_neox".into(), device: "cpu".into(), dtype: "f32".into(), int8_prefill: flag, ..on.clone() };
            assert_eq!(cfg.load(&dir).unwrap().int8_prefill, flag);
        }
    }

    /// `[model] compute_dtype`: f32 by default and then absent from the serialised config; bf16
    /// is recorded and reaches the loaded model; anything else is an error naming the field.
    #[test]
    fn compute_dtype_is_read_recorded_only_when_bf16_and_applied() {
        let base: ModelCfg = toml::from_str("name = \"embedded\"\ncompute_dtype = \"f32\"").unwrap();
        assert_eq!(base.compute_dtype, ComputeDtype::F32);
        assert!(!serde_json::to_string(&base).unwrap().contains("compute_dtype"));
        let on: ModelCfg = toml::from_str("name = \"embedded\"\ncompute_dtype = \"bf16\"").unwrap();
        assert!(serde_json::to_string(&on).unwrap().contains("\"compute_dtype\":\"bf16\""));
        let e = toml::from_str::<ModelCfg>("name = \"embedded\"\ncompute_dtype = \"f16\"").unwrap_err().to_string();
        assert!(e.contains("compute_dtype") || e.contains("f16"), "{e}");
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/parity");
        for c in [ComputeDtype::F32, ComputeDtype::Bf16] {
            let cfg = ModelCfg { name: "gpt_neox".into(), device: "cpu".into(), dtype: "f32".into(), compute_dtype: c, ..on.clone() };
            assert_eq!(cfg.load(&dir).unwrap().compute_dtype, c);
        }
    }
}
