//! The per-call forward context: positions, masks, rope tables, hooks, gradient taps.
use super::bf16::ComputeDtype;
use super::layers::Rope;
use crate::hooks::{ActivationCache, HookCtx, HookPoint, Hooks, Phase};
use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

/// Everything a block needs to know about the current call.
pub struct FwdCtx<'a> {
    pub grad: bool,
    /// Use dense weights on the inference path (exact f32 instead of quantized matmuls).
    pub dense: bool,
    /// Prefill multiplies by Q8_0 weights with int8 activations on VNNI CPUs (`Model::int8_prefill`).
    pub int8_prefill: bool,
    /// The gradient path's arithmetic in frozen linear layers (`Model::compute_dtype`).
    pub compute: ComputeDtype,
    pub keep_kv: bool,
    pub phase: Phase,
    /// The model's rotary tables (`None` for learned absolute positions, GPT-2).
    pub rope: Option<&'a Rope>,
    /// `[B, T, rot_dim/2]` rotary tables at this call's positions (with `rope`).
    pub cos: Option<Tensor>,
    pub sin: Option<Tensor>,
    /// `[B, T]` u32 position of every column: its prompt-relative token index (0 for padding),
    /// what HF derives from the attention mask under left padding (`cumsum(mask) - 1`).
    pub positions: Tensor,
    pub device: Device,
    pub dtype: DType,
    /// `token_index[row][col]` for the columns of this call.
    pub token_index: Vec<Vec<Option<usize>>>,
    /// Left padding (in cache columns) per row, and number of columns already cached.
    pub pad: Vec<usize>,
    pub past_cols: usize,
    /// The block being run (set by the model before each block), for the attention hook points.
    pub layer: usize,
    hooks: &'a Hooks<'a>,
    active: BTreeSet<HookPoint>,
    grad_points: BTreeSet<HookPoint>,
    pub(crate) taps: BTreeMap<HookPoint, Var>,
    pub(crate) activations: ActivationCache,
    /// Attention patterns/scores cached during the call (attention sees the context by `&`).
    pub(crate) attn_cache: RefCell<ActivationCache>,
    masks: RefCell<BTreeMap<Option<usize>, Tensor>>,
    /// One dropout RNG per adapter of the call that runs in training mode.
    lora_rngs: RefCell<Vec<Option<StdRng>>>,
}

/// Which kind of pass a call is: inference (fused kernels, quantized matmuls, no graph) or a
/// gradient pass whose `dL/dh` is read at `taps` (differentiable ops only).
#[derive(Clone, Copy, Debug)]
pub enum Pass<'p> {
    Inference,
    Gradient { taps: &'p [HookPoint] },
}

impl Pass<'_> {
    pub fn is_gradient(&self) -> bool {
        matches!(self, Pass::Gradient { .. })
    }
    pub fn taps(&self) -> &[HookPoint] {
        match self {
            Pass::Inference => &[],
            Pass::Gradient { taps } => taps,
        }
    }
}

/// What [`FwdCtx::new`] needs to know about a call.
pub struct CallSpec<'a, 'p> {
    /// The model's rotary tables (`None` for learned absolute positions).
    pub rope: Option<&'a Rope>,
    pub hooks: &'a Hooks<'a>,
    pub pass: Pass<'p>,
    /// Dense weights on the inference path (exact f32 instead of quantized matmuls).
    pub dense: bool,
    /// Int8 activations for Q8_0 prefill on VNNI CPUs (`Model::int8_prefill`).
    pub int8_prefill: bool,
    /// The gradient path's arithmetic in frozen linear layers (`Model::compute_dtype`).
    pub compute: ComputeDtype,
    /// Append this call's K/V to a cache the caller holds.
    pub keep_kv: bool,
    /// Left padding per row (in cache columns).
    pub pad: Vec<usize>,
    /// Columns already in the cache, and columns this call adds.
    pub past_cols: usize,
    pub new_cols: usize,
    pub device: &'a Device,
    pub dtype: DType,
}

impl<'a> FwdCtx<'a> {
    pub fn new(spec: CallSpec<'a, '_>) -> Result<Self> {
        let CallSpec { rope, hooks, pass, dense, int8_prefill, compute, keep_kv, pad, past_cols, new_cols, device, dtype } = spec;
        let grad = pass.is_gradient();
        let grad_points = pass.taps();
        let phase = if past_cols == 0 { Phase::Prefill } else { Phase::Decode };
        let b = pad.len();
        let mut token_index = Vec::with_capacity(b);
        let mut pos = Vec::with_capacity(b * new_cols);
        for &p in &pad {
            let mut row = Vec::with_capacity(new_cols);
            for c in 0..new_cols {
                let g = past_cols + c;
                if g >= p {
                    row.push(Some(g - p));
                    pos.push((g - p) as u32);
                } else {
                    row.push(None);
                    pos.push(0);
                }
            }
            token_index.push(row);
        }
        let positions = Tensor::from_vec(pos, (b, new_cols), device)?;
        let (cos, sin) = match rope {
            Some(r) => {
                let (c, s) = r.tables(&positions)?;
                (Some(c), Some(s))
            }
            None => (None, None),
        };
        let active = hooks.points().chain(grad_points.iter().copied()).collect();
        Ok(Self {
            grad,
            dense,
            int8_prefill,
            compute,
            keep_kv,
            phase,
            rope,
            cos,
            sin,
            positions,
            device: device.clone(),
            dtype,
            token_index,
            pad,
            past_cols,
            layer: 0,
            hooks,
            active,
            grad_points: grad_points.iter().copied().collect(),
            taps: BTreeMap::new(),
            activations: ActivationCache::default(),
            attn_cache: RefCell::new(ActivationCache::default()),
            masks: RefCell::new(BTreeMap::new()),
            lora_rngs: RefCell::new(hooks.lora.iter().map(|u| u.dropout_seed.map(StdRng::seed_from_u64)).collect()),
        })
    }

    /// Additive attention mask `[B, 1, T, S]`: causal, left padding hidden, optional sliding window.
    pub fn mask(&self, window: Option<usize>) -> Result<Tensor> {
        if let Some(m) = self.masks.borrow().get(&window) {
            return Ok(m.clone());
        }
        let b = self.pad.len();
        let t = self.token_index.first().map_or(0, |r| r.len());
        let s = self.past_cols + t;
        let neg = f32::MIN / 2.0;
        let mut m = vec![neg; b * t * s];
        for (r, &p) in self.pad.iter().enumerate() {
            for c in 0..t {
                let g = self.past_cols + c;
                let row = &mut m[(r * t + c) * s..(r * t + c + 1) * s];
                if g < p {
                    row[g] = 0.0; // a padding query attends to itself only; its output is unused
                    continue;
                }
                let lo = match window {
                    Some(w) => p.max((g + 1).saturating_sub(w)),
                    None => p,
                };
                for v in row.iter_mut().take(g + 1).skip(lo) {
                    *v = 0.0;
                }
            }
        }
        let mask = Tensor::from_vec(m, (b, 1, t, s), &self.device)?.to_dtype(self.dtype)?;
        self.masks.borrow_mut().insert(window, mask.clone());
        Ok(mask)
    }

    /// Whether an adapter of this call targets the module `name`.
    pub fn lora_targets(&self, name: &str) -> bool {
        self.hooks.lora.iter().any(|u| u.adapter.targets(name))
    }

    /// `y + Σ scaling · B A dropout(x)` over the call's adapters that target module `name`
    /// (`x`: `[.., in]`, `y`: `[.., out]`). The delta is computed in f32 (f64 for an f64 model)
    /// and added in `y`'s dtype; dropout acts only for adapters in training mode
    /// ([`Hooks::lora_train`]).
    pub fn lora_delta(&self, name: &str, x: &Tensor, mut y: Tensor) -> Result<Tensor> {
        for (i, u) in self.hooks.lora.iter().enumerate() {
            if !u.adapter.targets(name) {
                continue;
            }
            let mut xin = if x.dtype() == DType::F64 { x.clone() } else { x.to_dtype(DType::F32)? };
            let p = u.adapter.dropout();
            if p > 0.0 {
                if let Some(rng) = self.lora_rngs.borrow_mut()[i].as_mut() {
                    xin = dropout(&xin, p, rng)?;
                }
            }
            let d = u.adapter.delta(name, &xin)?.to_dtype(y.dtype())?;
            y = (y + d)?;
        }
        Ok(y)
    }

    /// Whether any attention hook point of the current block is cached (the patterns are
    /// copied out only when asked: no cost otherwise).
    pub fn wants_attention(&self) -> bool {
        self.hooks.reads.iter().any(|(p, _)| p.site.is_attention() && p.layer == self.layer)
    }

    /// Caches the current block's attention scores (`[B, H, t, s]`, mask added) and
    /// probabilities where asked: per row `[H, n_selected_queries, s - pad]`, padding keys dropped.
    pub fn record_attention(&self, scores: &Tensor, probs: &Tensor) -> Result<()> {
        for (p, pos) in &self.hooks.reads {
            if !p.site.is_attention() || p.layer != self.layer {
                continue;
            }
            let src = if p.site == crate::hooks::Site::AttnPattern { probs } else { scores };
            let (_, _, _, s) = src.dims4()?;
            let sel = self.hook_ctx(*p, src.dtype()).select(pos)?;
            let mut rows = Vec::with_capacity(sel.len());
            let mut idx = Vec::with_capacity(sel.len());
            for (r, cols) in sel.iter().enumerate() {
                let pad = self.pad[r].min(s);
                let xr = src.get(r)?.narrow(2, pad, s - pad)?.contiguous()?; // [H, t, keys]
                let q: Vec<u32> = cols.iter().map(|(c, _)| *c as u32).collect();
                let t = if q.is_empty() {
                    xr.narrow(1, 0, 0)?
                } else {
                    xr.index_select(&Tensor::new(q.as_slice(), src.device())?, 1)?
                };
                rows.push(t.detach().contiguous()?);
                idx.push(cols.iter().map(|(_, i)| *i).collect());
            }
            self.attn_cache.borrow_mut().insert(*p, rows, idx);
        }
        Ok(())
    }

    /// What a hook at `point` sees of this call.
    pub fn hook_ctx(&self, point: HookPoint, dtype: DType) -> HookCtx<'_> {
        HookCtx { point, phase: self.phase, token_index: &self.token_index, device: &self.device, dtype }
    }

    /// Runs the hooks registered at `point` on `x`: writes (in order, if their phase matches),
    /// then the gradient tap, then reads.
    pub fn hook(&mut self, point: HookPoint, mut x: Tensor) -> Result<Tensor> {
        if !self.active.contains(&point) {
            return Ok(x);
        }
        let hooks = self.hooks;
        for (p, phase, f) in &hooks.writes {
            if *p != point || !phase.includes(self.phase) {
                continue;
            }
            let y = f(&x, &self.hook_ctx(point, x.dtype())).with_context(|| format!("write hook at {point}"))?;
            ensure!(
                y.dims() == x.dims(),
                "write hook at {point} returned shape {:?}, expected {:?}",
                y.dims(),
                x.dims()
            );
            x = y;
        }
        if self.grad_points.contains(&point) {
            let tap = Var::zeros(x.shape(), x.dtype(), x.device())?;
            x = (x + tap.as_tensor())?;
            self.taps.insert(point, tap);
        }
        for (p, pos) in &hooks.reads {
            if *p != point {
                continue;
            }
            let sel = self.hook_ctx(point, x.dtype()).select(pos)?;
            let (rows, idx) = gather_rows(&x, &sel)?;
            self.activations.insert(point, rows, idx);
        }
        Ok(x)
    }
}

/// Per row, the `[n_selected, d]` slice of `x` (`[B, T, d]`) at the selected columns.
pub(crate) fn gather_rows(x: &Tensor, sel: &[Vec<(usize, usize)>]) -> Result<(Vec<Tensor>, Vec<Vec<usize>>)> {
    let mut rows = Vec::with_capacity(sel.len());
    let mut idx = Vec::with_capacity(sel.len());
    for (r, s) in sel.iter().enumerate() {
        let cols: Vec<u32> = s.iter().map(|(c, _)| *c as u32).collect();
        let xr = x.get(r)?;
        let t = if cols.is_empty() {
            xr.narrow(0, 0, 0)?
        } else {
            let ci = Tensor::new(cols.as_slice(), x.device())?;
            xr.index_select(&ci, 0)?
        };
        rows.push(t.detach());
        idx.push(s.iter().map(|(_, i)| *i).collect());
    }
    Ok((rows, idx))
}

/// Inverted dropout: zeroes each element with probability `p` and scales the rest by `1/(1-p)`.
fn dropout(x: &Tensor, p: f64, rng: &mut StdRng) -> Result<Tensor> {
    let keep = 1.0 - p;
    let scale = (1.0 / keep) as f32;
    let mask: Vec<f32> = (0..x.elem_count()).map(|_| if rng.random::<f64>() < keep { scale } else { 0.0 }).collect();
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    Ok((x * mask)?)
}

