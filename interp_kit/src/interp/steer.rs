//! Interventions as values: additive steering and projection ablation of a [`Direction`] at hook
//! points, on chosen positions and phases. An [`Intervention`] turns into the kit's [`Hooks`]
//! (write closures), so it lives exactly as long as the call it is passed to; a list of
//! interventions becomes one `Hooks`, and several at one point apply in list order.
//!
//! * `add(v, α)`: `x ← x + α v` (the direction as stored: unit, or scaled, see
//!   [`Scale`](crate::interp::directions::Scale)).
//! * `ablate(v, α)`: `x ← x − α (x·v̂) v̂` with `v̂ = v / |v|`; `α = 1` removes the component along
//!   `v` entirely, `α = 0` changes nothing.
//!
//! ```no_run
//! use interp_kit::prelude::*;
//! use interp_kit::interp::steer::{hooks_for, Intervention, Where};
//! # let model = Model::embedded(&Device::Cpu)?;
//! # let v = Direction::load("refusal_l12.safetensors")?; // knows its hook point
//! let steer = Intervention::add(&v, 4.0).positions(Where::Generated);
//! let ablate = Intervention::ablate(&v, 1.0).layers(&[10, 11, 12, 13]);
//! let hooks = hooks_for(&[steer, ablate], &model)?;
//! let gens = model.generate(&[vec![1, 2, 3]], &GenerateConfig::greedy(40), &hooks)?;
//! # anyhow::Ok(())
//! ```
//!
//! The direction is converted to the model's device and dtype once, when the hooks are built,
//! not at every forward call. Arithmetic happens in the model's dtype.
use crate::text::chat::Position;
use crate::interp::directions::{ControlVector, Direction, PromptIds};
use crate::hooks::{HookPoint, Hooks, Phase, Positions, Site};
use crate::model::Model;
use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::str::FromStr;

/// What an intervention does at each selected position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// `x + α v`.
    Add,
    /// `x − α (x·v̂) v̂`.
    Ablate,
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Op::Add => "add",
            Op::Ablate => "ablate",
        })
    }
}

impl FromStr for Op {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "add" => Ok(Op::Add),
            "ablate" => Ok(Op::Ablate),
            other => bail!("unknown intervention {other:?}: expected add or ablate"),
        }
    }
}

/// The token positions an intervention acts on (prompt-relative indices, padding excluded;
/// generated tokens continue the count).
#[derive(Clone, Debug, PartialEq)]
pub enum Where {
    /// Every token of every call.
    All,
    /// The tokens of the prefill call — the prompt, when generating (phase forced to prefill).
    Prompt,
    /// The tokens of decode calls — the generated tokens (phase forced to decode). Note that
    /// the first generated token is sampled from the prefill's last position, so it is not
    /// affected; use `All` or `Last` to steer it.
    Generated,
    /// The last token of each call: the last prompt token in prefill, the new token in decode.
    Last,
    /// Token indices `a..b` of every row.
    Span(Range<usize>),
    /// Any kit [`Positions`] (per-row selections, e.g. from [`Where::named`]).
    Positions(Positions),
}

impl Where {
    /// A named chat position (`user_end`, `prompt_last`, `assistant[k]`...) resolved in each
    /// prompt's rendering: the batch must be exactly these prompts, in this order.
    pub fn named(pos: &Position, prompts: &[PromptIds]) -> Result<Where> {
        let rows = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let r = p.chat.as_ref().with_context(|| format!("prompt {i}: position {pos} needs a chat prompt"))?;
                Ok(Positions::At(r.resolve(pos).with_context(|| format!("prompt {i}"))?))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Where::Positions(Positions::PerRow(rows)))
    }

    /// Tokens from each prompt's end onwards (`len_r..`): exactly the generated tokens, also in a
    /// single teacher-forced forward of prompt + completion.
    pub fn after_prompts(prompts: &[PromptIds]) -> Where {
        Where::Positions(Positions::PerRow(prompts.iter().map(|p| Positions::Span(p.len()..usize::MAX)).collect()))
    }

    fn describe(&self) -> String {
        match self {
            Where::All => "all".into(),
            Where::Prompt => "prompt".into(),
            Where::Generated => "generated".into(),
            Where::Last => "last".into(),
            Where::Span(r) => format!("{}..{}", r.start, r.end),
            Where::Positions(_) => "custom".into(),
        }
    }
}

impl FromStr for Where {
    type Err = anyhow::Error;
    /// `all`, `prompt`, `generated`, `last` or `a..b`.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "all" => Ok(Where::All),
            "prompt" => Ok(Where::Prompt),
            "generated" => Ok(Where::Generated),
            "last" => Ok(Where::Last),
            t => {
                let (a, b) = t
                    .split_once("..")
                    .with_context(|| format!("unknown positions {s:?}: expected all, prompt, generated, last or a..b"))?;
                let a: usize = a.trim().parse().with_context(|| format!("positions {s:?}: bad start"))?;
                let b: usize = b.trim().parse().with_context(|| format!("positions {s:?}: bad end"))?;
                ensure!(a < b, "positions {s:?}: empty span");
                Ok(Where::Span(a..b))
            }
        }
    }
}

/// One intervention: an operation with a strength, applied with one direction at each of its
/// hook points, on some positions, in some phases.
#[derive(Clone, Debug)]
pub struct Intervention {
    pub op: Op,
    pub alpha: f64,
    /// One direction per hook point, each placed by its `meta.hook`.
    pub targets: Vec<Direction>,
    pub positions: Where,
    pub phase: Phase,
}

impl Intervention {
    /// `op` with `dir` at its own hook point (`dir.meta.hook`; change it with [`Self::at`] or
    /// [`Self::layers`]), every position, both phases.
    pub fn new(op: Op, dir: &Direction, alpha: f64) -> Self {
        Intervention { op, alpha, targets: vec![dir.clone()], positions: Where::All, phase: Phase::Both }
    }
    /// `x ← x + α v`.
    pub fn add(dir: &Direction, alpha: f64) -> Self {
        Self::new(Op::Add, dir, alpha)
    }
    /// `x ← x − α (x·v̂) v̂`.
    pub fn ablate(dir: &Direction, alpha: f64) -> Self {
        Self::new(Op::Ablate, dir, alpha)
    }
    /// Every layer of a control vector with its own direction.
    pub fn control_vector(op: Op, cv: &ControlVector, alpha: f64) -> Self {
        Intervention { op, alpha, targets: cv.directions.values().cloned().collect(), positions: Where::All, phase: Phase::Both }
    }
    /// Places the (single) direction at `point`.
    pub fn at(mut self, point: HookPoint) -> Self {
        for d in self.targets.iter_mut() {
            d.meta.hook = Some(point);
        }
        self
    }
    /// The first direction at each of `layers`, at the site of its hook (`hook_resid_post` if it
    /// names none).
    pub fn layers(mut self, layers: &[usize]) -> Self {
        if let Some(d) = self.targets.first().cloned() {
            let site = d.meta.hook.map(|h| h.site).unwrap_or(Site::ResidPost);
            self.targets = layers.iter().map(|&l| d.clone().at(HookPoint::new(l, site))).collect();
        }
        self
    }
    pub fn positions(mut self, positions: Where) -> Self {
        self.positions = positions;
        self
    }
    pub fn phase(mut self, phase: Phase) -> Self {
        self.phase = phase;
        self
    }

    /// One line: `add(α=4)@blocks.12.hook_resid_post[all]`.
    pub fn describe(&self) -> String {
        let pts: Vec<String> = self.targets.iter().map(|d| d.meta.hook.map_or("-".into(), |h| h.to_string())).collect();
        format!("{}(α={})@{}[{}; {:?}]", self.op, self.alpha, pts.join(","), self.positions.describe(), self.phase)
    }

    /// The phase the hooks run in and the positions they select (`None` = every position).
    fn plan(&self) -> Result<(Phase, Option<Positions>)> {
        let meet = |forced: Phase| -> Result<Phase> {
            ensure!(
                self.phase.includes(forced),
                "intervention {}: positions {:?} only exist in phase {forced:?}, but the phase is {:?}",
                self.describe(),
                self.positions.describe(),
                self.phase
            );
            Ok(forced)
        };
        Ok(match &self.positions {
            Where::All => (self.phase, None),
            Where::Prompt => (meet(Phase::Prefill)?, None),
            Where::Generated => (meet(Phase::Decode)?, None),
            Where::Last => (self.phase, Some(Positions::Last)),
            Where::Span(r) => (self.phase, Some(Positions::Span(r.clone()))),
            Where::Positions(p) => (self.phase, Some(p.clone())),
        })
    }

    /// Checks widths, layers and α against `model` and builds the write hooks (directions moved
    /// to the model's device and dtype here, once).
    pub fn hooks(&self, model: &Model) -> Result<Hooks<'static>> {
        ensure!(self.alpha.is_finite(), "intervention {}: α is {}", self.describe(), self.alpha);
        ensure!(!self.targets.is_empty(), "intervention {}: no direction", self.describe());
        let (phase, positions) = self.plan()?;
        let mut hooks = Hooks::new();
        for d in &self.targets {
            let point = d.meta.hook.with_context(|| {
                format!("intervention {}: direction {} names no hook point; place it with .at(..) or .layers(..)", self.describe(), d.describe())
            })?;
            model.check_points([&point]).with_context(|| format!("intervention {}", self.describe()))?;
            d.check_dim(model.d_model()).with_context(|| format!("intervention {}", self.describe()))?;
            d.check_finite().with_context(|| format!("intervention {}", self.describe()))?;
            let alpha = self.alpha;
            let pos = positions.clone();
            let what = format!("intervention {}", self.describe());
            match self.op {
                Op::Add => {
                    // α·v itself must fit the dtype the model computes in (f16 ends at 65504).
                    let peak = alpha.abs() * d.vector.iter().fold(0f64, |m, x| m.max(x.abs() as f64));
                    ensure!(
                        peak <= dtype_max(model.dtype),
                        "{what}: α·v reaches {peak:e}, beyond the largest {:?} value {:e}; lower α",
                        model.dtype,
                        dtype_max(model.dtype)
                    );
                    let av = (d.to_tensor(&model.device, model.dtype)? * alpha)?;
                    hooks = hooks.write(point, phase, move |x, ctx| {
                        let av = cast(&av, x.dtype())?;
                        let out = match &pos {
                            None => x.broadcast_add(&av)?,
                            Some(p) => (x + ctx.mask(p)?.broadcast_mul(&av)?)?,
                        };
                        check_steered(x, out, &what, peak)
                    });
                }
                Op::Ablate => {
                    // α multiplies a tensor of the model's dtype: it must be a value of that dtype.
                    ensure!(
                        alpha.abs() <= dtype_max(model.dtype),
                        "{what}: α = {alpha:e} is beyond the largest {:?} value {:e}",
                        model.dtype,
                        dtype_max(model.dtype)
                    );
                    let u = d.normalized().with_context(|| format!("intervention {}", self.describe()))?;
                    let col = u.to_tensor(&model.device, model.dtype)?.unsqueeze(1)?; // [D, 1]
                    let row = col.t()?.contiguous()?; // [1, D]
                    hooks = hooks.write(point, phase, move |x, ctx| {
                        let (col, row) = (cast(&col, x.dtype())?, cast(&row, x.dtype())?);
                        let mut proj = (x.broadcast_matmul(&col)? * alpha)?; // [B, T, 1]
                        if let Some(p) = &pos {
                            proj = (proj * ctx.mask(p)?)?;
                        }
                        let out = (x - proj.broadcast_mul(&row)?)?;
                        check_steered(x, out, &what, alpha.abs())
                    });
                }
            }
        }
        Ok(hooks)
    }
}

/// The largest finite value of a float dtype (f64's for the others).
pub(crate) fn dtype_max(dtype: DType) -> f64 {
    match dtype {
        DType::F16 => half::f16::MAX.to_f64(),
        DType::BF16 => half::bf16::MAX.to_f64(),
        DType::F32 => f32::MAX as f64,
        _ => f64::MAX,
    }
}

/// True if every entry of `t` is finite: `t - t` is 0 for a finite entry and NaN otherwise, so
/// its sum is 0 exactly when all are (a max would skip NaN, a plain sum could overflow).
pub(crate) fn all_finite(t: &Tensor) -> Result<bool> {
    Ok((t - t)?.sum_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()? == 0.0)
}

/// `out` if it is finite; otherwise an error that names the intervention and its strength (or, if
/// the residual was not finite before the write, says so: then the steering is not the cause).
pub(crate) fn check_steered(x: &Tensor, out: Tensor, what: &str, strength: f64) -> Result<Tensor> {
    if all_finite(&out)? {
        return Ok(out);
    }
    if !all_finite(x)? {
        bail!("{what}: the residual is already NaN or infinite before the steering writes to it");
    }
    bail!("{what}: the steered residual is NaN or infinite (|α|·max|v| up to {strength:e}, in {:?}); lower the strength", out.dtype())
}

/// The direction in the activation's dtype (a no-op unless a hook point runs in another dtype).
fn cast(t: &Tensor, dtype: DType) -> Result<Tensor> {
    Ok(if t.dtype() == dtype { t.clone() } else { t.to_dtype(dtype)? })
}

/// One [`Hooks`] for a list of interventions, in order (several at one point compose in list
/// order). Add read hooks with `.cache(..)` or `.extend(..)` on the result.
pub fn hooks_for(interventions: &[Intervention], model: &Model) -> Result<Hooks<'static>> {
    let mut hooks = Hooks::new();
    for (i, iv) in interventions.iter().enumerate() {
        hooks = hooks.extend(iv.hooks(model).with_context(|| format!("intervention {i}"))?);
    }
    Ok(hooks)
}
