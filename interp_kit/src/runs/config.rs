//! Study configuration basics shared by every study: the run [`Mode`] (`ci` / `fast` / `full`,
//! overridable by `INTERP_KIT_STUDY_MODE`), the `[model]` table ([`ModelCfg`]) and [`LayerSpec`]
//! (block indices or depth fractions). Each study's own config type lives in its folder.
use crate::model::Model;
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

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
        if self.name == "embedded" {
            let p = crate::base::embedded_model_path()?;
            return Model::from_gguf(&p, &device, dtype);
        }
        let p = base_dir.join(&self.name);
        if p.is_dir() {
            Model::from_hf_dir(&p, &device, dtype)
        } else {
            Model::from_gguf(&p, &device, dtype)
        }
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