//! Gradients of a teacher-forced loss with respect to the residual stream.
//!
//! `dL/dh` at a hook point is read by adding a zero `Var` to the activation there (candle keeps
//! gradients only for `Var`s). Base weights are frozen: no weight gradient is computed.
use crate::hooks::{ActivationCache, HookPoint, Hooks, Positions};
use crate::model::forward::FwdCtx;
use crate::model::Model;
use anyhow::{ensure, Context, Result};
use candle_core::{DType, Tensor, D};

/// Which tokens the loss predicts.
#[derive(Clone, Debug)]
pub enum Loss {
    /// For each row, the token indices `t` (>= 1) whose ids are predicted from position `t - 1`.
    Tokens(Vec<Vec<usize>>),
    /// For each row, every token from index `start` (>= 1) to the end.
    From(Vec<usize>),
}

impl Loss {
    pub(crate) fn targets(&self, lens: &[usize]) -> Result<Vec<Vec<usize>>> {
        let t = match self {
            Loss::Tokens(t) => t.clone(),
            Loss::From(s) => s.iter().zip(lens).map(|(&s, &n)| (s..n).collect()).collect(),
        };
        ensure!(t.len() == lens.len(), "loss targets given for {} rows, batch has {}", t.len(), lens.len());
        for (r, (row, &n)) in t.iter().zip(lens).enumerate() {
            for &i in row {
                ensure!(i >= 1 && i < n, "row {r}: target token {i} must be in 1..{n} (it is predicted from token {i}-1)");
            }
        }
        ensure!(t.iter().any(|r| !r.is_empty()), "the loss has no target tokens");
        Ok(t)
    }
}

/// Loss and residual gradients of one backward pass.
pub struct GradOutput {
    /// Mean negative log-likelihood over all target tokens of the batch.
    pub loss: f64,
    /// Mean NLL per row (NaN for a row without targets).
    pub row_loss: Vec<f64>,
    pub n_targets: usize,
    /// `dL/dh` per hook point: per row `[n_selected, d]`, like an [`ActivationCache`].
    pub grads: ActivationCache,
    /// What the read hooks cached during the forward pass.
    pub activations: ActivationCache,
}

/// The per-target negative log-likelihoods of a teacher-forced batch, still in the graph.
pub(crate) struct NllGraph<'a> {
    /// `[n]` f32 (f64 for an f64 model): one entry per target token, rows in order.
    pub nll: Tensor,
    /// The batch row of each entry.
    pub owner: Vec<usize>,
    pub ctx: FwdCtx<'a>,
}

impl Model {
    /// Forward pass on the gradient path (left-padded batch) and the NLL of each target token
    /// (`targets[r]`: token indices >= 1 of row `r`, checked by the caller), predicted from the
    /// previous position. Logits are computed only at the predicting positions.
    pub(crate) fn nll_graph<'a>(
        &'a self,
        prompts: &[Vec<u32>],
        targets: &[Vec<usize>],
        hooks: &'a Hooks<'a>,
        points: &[HookPoint],
    ) -> Result<NllGraph<'a>> {
        let (ids, pad) = self.pad_batch(prompts)?;
        let (b, t) = ids.dims2()?;
        let (h, ctx) = self.run(&ids, pad.clone(), None, hooks, points, true)?;
        // Rows of the flattened [B*T, d] hidden state that predict each target.
        let mut src = vec![];
        let mut tgt = vec![];
        let mut owner = vec![];
        for (r, row) in targets.iter().enumerate() {
            for &i in row {
                src.push((r * t + pad[r] + i - 1) as u32);
                tgt.push(prompts[r][i]);
                owner.push(r);
            }
        }
        let n = src.len();
        let src = Tensor::from_vec(src, n, &self.device)?;
        let tgt_t = Tensor::from_vec(tgt, (n, 1), &self.device)?;
        let hs = h.reshape((b * t, ()))?.index_select(&src, 0)?;
        // In f32 (f64 for an f64 model).
        let logits = self.logits(&hs, true)?;
        let logits = if logits.dtype() == DType::F64 { logits } else { logits.to_dtype(DType::F32)? };
        let lp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let nll = lp.gather(&tgt_t, 1)?.squeeze(1)?.neg()?; // [n]
        Ok(NllGraph { nll, owner, ctx })
    }

    /// Teacher-forced loss over `loss` targets and `dL/dh` at `points` (at `positions`), from one
    /// backward pass. `hooks` may intervene (their writes are part of the graph) or read.
    pub fn grad(
        &self,
        prompts: &[Vec<u32>],
        loss: &Loss,
        points: &[HookPoint],
        positions: Positions,
        hooks: &Hooks,
    ) -> Result<GradOutput> {
        let lens: Vec<usize> = prompts.iter().map(|p| p.len()).collect();
        let targets = loss.targets(&lens)?;
        let b = prompts.len();
        let NllGraph { nll, owner, ctx } = self.nll_graph(prompts, &targets, hooks, points)?;
        let n = owner.len();
        let loss_t = nll.mean_all()?;
        let grads = loss_t.backward().context("backward pass")?;
        let nll_v: Vec<f64> = nll.to_dtype(DType::F64)?.to_vec1()?;
        let mut sums = vec![(0f64, 0usize); b];
        for (v, r) in nll_v.iter().zip(&owner) {
            sums[*r].0 += *v;
            sums[*r].1 += 1;
        }
        let mut out = ActivationCache::default();
        for p in points {
            let var = ctx.taps.get(p).with_context(|| format!("{p} was not reached in the forward pass"))?;
            let g = grads.get(var.as_tensor()).with_context(|| {
                format!("no gradient reached {p}: the loss does not depend on it (is it after every target position?)")
            });
            let g = match g {
                Ok(g) => g.clone(),
                Err(_) => var.as_tensor().zeros_like()?,
            };
            let sel = ctx.hook_ctx(*p, g.dtype()).select(&positions)?;
            let (rows, idx) = crate::model::forward::gather_rows(&g, &sel)?;
            out.insert(*p, rows, idx);
        }
        Ok(GradOutput {
            loss: loss_t.to_dtype(DType::F64)?.to_scalar::<f64>()?,
            row_loss: sums.iter().map(|(s, c)| if *c == 0 { f64::NAN } else { s / *c as f64 }).collect(),
            n_targets: n,
            grads: out,
            activations: ctx.activations,
        })
    }
}
