//! Teacher-forced examples and losses, and their gradients with respect to the residual stream.
//!
//! [`TrainExample`] is the kit's one teacher-forced example type (token ids plus the indices whose
//! ids the loss predicts): LoRA training, gradient alignment and loss evaluation all take it.
//!
//! `dL/dh` at a hook point is read by adding a zero `Var` to the activation there (candle keeps
//! gradients only for `Var`s). Base weights are frozen: no weight gradient is computed.
use crate::hooks::{ActivationCache, HookPoint, Hooks, Positions};
use crate::model::forward::{FwdCtx, Pass};
use crate::model::{KvCache, Model};
use crate::text::chat::{Chat, RenderedChat, Role};
use crate::text::tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};
use anyhow::{bail, ensure, Context, Result};
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Storage, Tensor, D};
use crate::base::vmath;
use rayon::prelude::*;
use std::sync::Arc;

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

/// Per row of logits `[n, V]`, `-log softmax(row)[target]` (`[n]`), fused: one pass forward, and
/// a backward that writes `(softmax(row) - onehot(target)) · grad` directly (the composed
/// log_softmax + gather allocates and reads the `[n, V]` logits a dozen times, which for a
/// 150k-token vocabulary costs as much as a few transformer layers). CPU, f32 or f64: it has no
/// `cuda_fwd`, and [`nll_path`] keeps GPU logits on candle's composed ops instead.
struct NllOp {
    targets: Vec<u32>,
}

macro_rules! nll_rows {
    ($t:ty, $x:expr, $v:expr, $targets:expr) => {{
        let x: &[$t] = $x;
        x.par_chunks($v)
            .zip($targets.par_iter())
            .map(|(row, &t)| {
                let max = row.iter().copied().fold(<$t>::NEG_INFINITY, <$t>::max);
                let sum: $t = row.iter().map(|&z| (z - max).exp()).sum();
                max + sum.ln() - row[t as usize]
            })
            .collect::<Vec<$t>>()
    }};
}

/// The backward reads each row's log-sum-exp back from the forward's result (`nll + z[target]`)
/// instead of summing the row's exponentials again: one pass over the logits instead of three.
macro_rules! nll_grad {
    ($t:ty, $x:expr, $v:expr, $targets:expr, $g:expr, $nll:expr) => {{
        let x: &[$t] = $x;
        let g: Vec<$t> = $g;
        let nll: Vec<$t> = $nll;
        let mut out = vec![<$t>::default(); x.len()];
        out.par_chunks_mut($v).zip(x.par_chunks($v)).zip($targets.par_iter().zip(g.par_iter().zip(nll.par_iter()))).for_each(
            |((o, row), (&t, (&go, &nll)))| {
                let lse = nll + row[t as usize];
                for (oj, &z) in o.iter_mut().zip(row) {
                    *oj = (z - lse).exp() * go;
                }
                o[t as usize] -= go;
            },
        );
        out
    }};
}

impl CustomOp1 for NllOp {
    fn name(&self) -> &'static str {
        "nll"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, v) = l.shape().dims2()?;
        if n != self.targets.len() || !l.is_contiguous() {
            candle_core::bail!("nll: logits {:?} for {} targets", l.shape(), self.targets.len())
        }
        let range = l.start_offset()..l.start_offset() + n * v;
        let out = match s {
            CpuStorage::F32(x) => {
                // f32 (every model the kit trains): `vmath`'s exp on the worker pool, as the model's ops.
                let x = &x[range];
                CpuStorage::F32(crate::model::fused::par_map(n, |r| {
                    let (row, t) = (&x[r * v..(r + 1) * v], self.targets[r] as usize);
                    let max = vmath::max(row);
                    max + vmath::sum_exp(row, max).ln() - row[t]
                }))
            }
            CpuStorage::F64(x) => CpuStorage::F64(nll_rows!(f64, &x[range], v, self.targets)),
            _ => candle_core::bail!("nll: logits must be f32 or f64"),
        };
        Ok((out, Shape::from(n)))
    }
    fn bwd(&self, arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (n, v) = arg.dims2()?;
        let arg = arg.contiguous()?;
        let (st, l) = arg.storage_and_layout();
        let range = l.start_offset()..l.start_offset() + n * v;
        let grad = match &*st {
            Storage::Cpu(CpuStorage::F32(x)) => {
                let (x, g, nll): (_, Vec<f32>, Vec<f32>) = (&x[range], grad_res.to_dtype(DType::F32)?.to_vec1()?, res.to_vec1()?);
                let [out] = crate::model::fused::par_rows(n, v, |r0, [out]| {
                    for (i, o) in out.chunks_exact_mut(v).enumerate() {
                        let r = r0 + i;
                        let (row, t) = (&x[r * v..(r + 1) * v], self.targets[r] as usize);
                        vmath::exp_sub_scale(row, nll[r] + row[t], g[r], o);
                        o[t] -= g[r];
                    }
                });
                Tensor::from_vec(out, (n, v), arg.device())?
            }
            Storage::Cpu(CpuStorage::F64(x)) => {
                let g = nll_grad!(f64, &x[range], v, self.targets, grad_res.to_dtype(DType::F64)?.to_vec1()?, res.to_vec1()?);
                Tensor::from_vec(g, (n, v), arg.device())?
            }
            _ => candle_core::bail!("nll: logits must be f32 or f64 on the CPU"),
        };
        Ok(Some(grad))
    }
}

/// How [`Model::nll_of`] computes the per-token NLL of logits on a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NllPath {
    /// [`NllOp`]: fused rows over host memory (f32: `vmath` on the worker pool; f64: rayon),
    /// forward and backward.
    FusedCpu,
    /// candle's `log_softmax` + `gather` on the logits' own device (differentiable there); the
    /// logits are never copied to the host.
    Composed,
}

/// The dispatch decision of [`Model::nll_of`], on a device location (testable without a GPU).
pub(crate) fn nll_path(loc: candle_core::DeviceLocation) -> NllPath {
    match loc {
        candle_core::DeviceLocation::Cpu => NllPath::FusedCpu,
        _ => NllPath::Composed,
    }
}

/// `-log softmax(logits[i])[tgt[i]]` for `[n, V]` f32/f64 logits, by `path`.
fn nll_rows(logits: &Tensor, tgt: Vec<u32>, path: NllPath) -> Result<Tensor> {
    let n = tgt.len();
    Ok(match path {
        NllPath::FusedCpu => logits.contiguous()?.apply_op1_arc(Arc::new(Box::new(NllOp { targets: tgt })))?,
        NllPath::Composed => {
            let tgt_t = Tensor::from_vec(tgt, (n, 1), logits.device())?;
            let lp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
            lp.gather(&tgt_t, 1)?.squeeze(1)?.neg()?
        }
    })
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
        self.check_kit_copy()?;
        let (ids, pad) = self.pad_batch(prompts)?;
        let (b, t) = ids.dims2()?;
        let (h, ctx) = self.run(&ids, pad.clone(), None, hooks, Pass::Gradient { taps: points })?;
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
        let hs = h.reshape((b * t, ()))?.index_select(&src, 0)?;
        // In f32 (f64 for an f64 model).
        let nll = self.nll_of(&hs, tgt)?; // [n]
        Ok(NllGraph { nll, owner, ctx })
    }

    /// Like [`Model::nll_graph`] for `suffixes` (`[B][n]`, one length) that continue the rows of
    /// `prefix`, a KV cache filled earlier (e.g. by [`Model::prefill`] with steering and the
    /// adapter active): the cache enters as a constant, so the gradient flows through the suffix
    /// tokens only. `targets[r]` are suffix indices >= 1, each predicted from the previous suffix
    /// position. `prefix` is not changed (the call runs on a clone).
    pub(crate) fn nll_graph_after<'a>(
        &'a self,
        prefix: &KvCache,
        suffixes: &[Vec<u32>],
        targets: &[Vec<usize>],
        hooks: &'a Hooks<'a>,
    ) -> Result<NllGraph<'a>> {
        self.check_kit_copy()?;
        ensure!(!prefix.is_empty(), "training after a prefix needs a filled KV cache (prefill the prefixes first)");
        let b = prefix.batch_size();
        ensure!(suffixes.len() == b, "{} suffixes given, the prefix KV cache holds {b} rows", suffixes.len());
        ensure!(targets.len() == b, "targets given for {} rows, the batch has {b}", targets.len());
        let n = suffixes[0].len();
        ensure!(n > 0, "suffix 0 is empty");
        for (r, s) in suffixes.iter().enumerate() {
            ensure!(
                s.len() == n,
                "suffix {r} has {} tokens, suffix 0 has {n}: the suffixes of one pass must have one length \
                 (group examples by suffix length, or use micro-batches of one)",
                s.len()
            );
            if let Some(bad) = s.iter().find(|&&i| i as usize >= self.info.vocab_size) {
                bail!("suffix {r}: token id {bad} is outside the vocabulary (size {})", self.info.vocab_size);
            }
            for &i in &targets[r] {
                ensure!(i >= 1 && i < n, "row {r}: suffix target {i} must be in 1..{n} (it is predicted from suffix token {i}-1)");
            }
        }
        ensure!(targets.iter().any(|t| !t.is_empty()), "the loss has no target tokens");
        let flat: Vec<u32> = suffixes.iter().flatten().copied().collect();
        let ids = Tensor::from_vec(flat, (b, n), &self.device)?;
        let mut cache = prefix.clone();
        let (h, ctx) = self.run(&ids, prefix.pad.clone(), Some(&mut cache), hooks, Pass::Gradient { taps: &[] })?;
        let mut src = vec![];
        let mut tgt = vec![];
        let mut owner = vec![];
        for (r, row) in targets.iter().enumerate() {
            for &i in row {
                src.push((r * n + i - 1) as u32);
                tgt.push(suffixes[r][i]);
                owner.push(r);
            }
        }
        let k = src.len();
        let src = Tensor::from_vec(src, k, &self.device)?;
        let hs = h.reshape((b * n, ()))?.index_select(&src, 0)?;
        let nll = self.nll_of(&hs, tgt)?;
        Ok(NllGraph { nll, owner, ctx })
    }

    /// `-log softmax(logits(hs))[target]` per row of `hs` (`[k, d]`), on the gradient path.
    fn nll_of(&self, hs: &Tensor, tgt: Vec<u32>) -> Result<Tensor> {
        if let Some(w) = self.fused_head(hs)? {
            return crate::model::fused::head_nll(hs, w, tgt);
        }
        let n = tgt.len();
        let logits = self.logits(hs, true)?;
        let logits = if logits.dtype() == DType::F64 { logits } else { logits.to_dtype(DType::F32)? };
        ensure!(logits.dims2()?.0 == n, "nll: {} logit rows for {n} targets", logits.dims2()?.0);
        nll_rows(&logits, tgt, nll_path(logits.device().location()))
    }

    /// The output head for [`crate::model::fused::head_nll`] (the head and the NLL in one op, the
    /// logits never in the graph): host f32 states, a head without bias or final soft-cap, and
    /// an f32 weight (f32 compute) or one packed for the bf16 kernel (bf16 compute). `None`:
    /// the composed path.
    fn fused_head(&self, hs: &Tensor) -> Result<Option<crate::model::fused::HeadWeight>> {
        use crate::model::bf16::{Bf16Weight, ComputeDtype};
        use crate::model::fused::HeadWeight;
        if !crate::model::fused::applies(&[hs]) || self.final_softcap.is_some() || self.lm_head.bias.is_some() {
            return Ok(None);
        }
        Ok(match self.compute_dtype {
            ComputeDtype::F32 => {
                let w = self.lm_head.weight.dense()?;
                (w.device().is_cpu() && w.dtype() == DType::F32).then(|| HeadWeight::F32(w.clone()))
            }
            ComputeDtype::Bf16 => {
                let w = self.lm_head.weight.bf16()?;
                matches!(*w, Bf16Weight::Packed { .. }).then_some(HeadWeight::Bf16(w))
            }
        })
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

/// A training sequence split into a prefix that is run first without gradient (into a KV
/// cache, possibly steered, with the adapter active) and a suffix whose tokens attend to that
/// cache and carry the loss: the gradient reaches only what the suffix computes (the
/// introspection protocol: learn to read a steered cache, not to produce one).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrefixedExample {
    pub prefix: Vec<u32>,
    pub suffix: Vec<u32>,
    /// Suffix indices (`1..suffix.len()`, increasing) whose ids the loss predicts, each from the
    /// previous suffix position.
    pub targets: Vec<usize>,
}

impl PrefixedExample {
    /// Checks that both parts are non-empty and the targets are in `1..suffix.len()`, increasing.
    pub fn new(prefix: Vec<u32>, suffix: Vec<u32>, targets: Vec<usize>) -> Result<Self> {
        ensure!(!prefix.is_empty(), "prefixed example: empty prefix");
        ensure!(!targets.is_empty(), "prefixed example without target tokens");
        ensure!(targets.windows(2).all(|w| w[0] < w[1]), "prefixed example: targets must be increasing");
        let n = suffix.len();
        for &t in &targets {
            ensure!(t >= 1 && t < n, "prefixed example: suffix target {t} must be in 1..{n}");
        }
        Ok(Self { prefix, suffix, targets })
    }
    /// Splits a [`TrainExample`] before token `split`: every target must lie after `split`.
    pub fn split(e: &TrainExample, split: usize) -> Result<Self> {
        ensure!(split >= 1 && split < e.ids.len(), "split {split} must be in 1..{}", e.ids.len());
        let targets = e
            .targets
            .iter()
            .map(|&t| {
                ensure!(t > split, "target token {t} is not after the split at {split} (targets are predicted from the suffix)");
                Ok(t - split)
            })
            .collect::<Result<Vec<_>>>()?;
        Self::new(e.ids[..split].to_vec(), e.ids[split..].to_vec(), targets)
    }
    /// The whole sequence with the targets in its coordinates.
    pub fn full(&self) -> TrainExample {
        let p = self.prefix.len();
        let ids = self.prefix.iter().chain(&self.suffix).copied().collect();
        TrainExample { ids, targets: self.targets.iter().map(|t| t + p).collect() }
    }
}

/// One training sequence and the tokens its loss predicts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainExample {
    pub ids: Vec<u32>,
    /// Token indices (`1..ids.len()`, increasing) whose ids the loss predicts, each from the
    /// previous position (the convention of [`Loss::Tokens`]).
    pub targets: Vec<usize>,
}

impl TrainExample {
    /// Checks that targets are in `1..ids.len()`, increasing, and not empty.
    pub fn new(ids: Vec<u32>, targets: Vec<usize>) -> Result<Self> {
        ensure!(!targets.is_empty(), "training example without target tokens");
        ensure!(targets.windows(2).all(|w| w[0] < w[1]), "training example: targets must be increasing");
        let n = ids.len();
        for &t in &targets {
            ensure!(t >= 1 && t < n, "training example: target token {t} must be in 1..{n}");
        }
        Ok(Self { ids, targets })
    }
    /// `prompt ++ completion` with the loss on the completion tokens.
    pub fn prompt_completion(prompt: &[u32], completion: &[u32]) -> Result<Self> {
        ensure!(!prompt.is_empty(), "training example: empty prompt");
        let ids: Vec<u32> = prompt.iter().chain(completion).copied().collect();
        Self::new(ids, (prompt.len()..prompt.len() + completion.len()).collect())
    }
    /// A rendered chat with the loss on every assistant message's content tokens, each followed
    /// by its end-of-turn token when that token is one of `end_of_turn` (e.g. `tok.eos_ids()`:
    /// Qwen's `<|im_end|>`), as TRL's assistant-only loss does.
    pub fn from_rendered(r: &RenderedChat, end_of_turn: &[u32]) -> Result<Self> {
        let mut targets = vec![];
        for m in r.messages.iter().filter(|m| m.role == Role::Assistant) {
            targets.extend(m.tokens.clone());
            if m.tokens.end < r.ids.len() && end_of_turn.contains(&r.ids[m.tokens.end]) {
                targets.push(m.tokens.end);
            }
        }
        ensure!(!targets.is_empty(), "the chat has no assistant tokens to train on");
        targets.sort_unstable();
        targets.dedup();
        Self::new(r.ids.clone(), targets)
    }
    /// `chat` rendered with the model's template (no generation prompt), loss on the assistant
    /// messages and their end-of-turn tokens (see [`TrainExample::from_rendered`]).
    pub fn from_chat(tok: &Tokenizer, chat: &Chat) -> Result<Self> {
        let r = tok.render_chat(chat, false)?;
        Self::from_rendered(&r, tok.eos_ids())
    }
    /// One (system prompt condition, user, assistant) example. `system: None` sends no system
    /// message (the template may insert its default one); `Some("")` an empty one.
    pub fn qa(tok: &Tokenizer, system: Option<&str>, user: &str, assistant: &str) -> Result<Self> {
        let mut chat = Chat::new();
        if let Some(s) = system {
            chat = chat.system(s);
        }
        Self::from_chat(tok, &chat.user(user).assistant(assistant))
    }
}


#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DeviceLocation, Var};

    #[test]
    fn nll_path_by_device() {
        assert_eq!(nll_path(DeviceLocation::Cpu), NllPath::FusedCpu);
        assert_eq!(nll_path(DeviceLocation::Cuda { gpu_id: 0 }), NllPath::Composed);
        assert_eq!(nll_path(DeviceLocation::Metal { gpu_id: 1 }), NllPath::Composed);
    }

    /// The composed path (what a GPU runs) gives the fused CPU op's values and gradients, in f32
    /// and f64, so the device decides the speed and never the result.
    #[test]
    fn composed_nll_equals_fused_values_and_gradients() {
        let (n, v) = (5, 37);
        let mut rng = crate::base::rng::Rng::new(11);
        let vals: Vec<f64> = (0..n * v).map(|_| 3.0 * rng.normal()).collect();
        let tgt: Vec<u32> = vec![0, 36, 5, 5, 20];
        let weights = Tensor::new(&[1.0f64, -2.0, 0.5, 3.0, 0.25], &candle_core::Device::Cpu).unwrap();
        for (dt, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
            let run = |path: NllPath| {
                let x = Var::from_tensor(&Tensor::from_vec(vals.clone(), (n, v), &candle_core::Device::Cpu).unwrap().to_dtype(dt).unwrap()).unwrap();
                let nll = nll_rows(x.as_tensor(), tgt.clone(), path).unwrap();
                let loss = (nll.to_dtype(DType::F64).unwrap() * &weights).unwrap().sum_all().unwrap();
                let g = loss.backward().unwrap().get(x.as_tensor()).unwrap().to_dtype(DType::F64).unwrap();
                let nll: Vec<f64> = nll.to_dtype(DType::F64).unwrap().to_vec1().unwrap();
                let g: Vec<f64> = g.flatten_all().unwrap().to_vec1().unwrap();
                (nll, g)
            };
            let (a, ga) = run(NllPath::FusedCpu);
            let (b, gb) = run(NllPath::Composed);
            for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                assert!((x - y).abs() <= tol * y.abs().max(1.0), "{dt:?} row {i}: fused {x} vs composed {y}");
            }
            for (i, (x, y)) in ga.iter().zip(&gb).enumerate() {
                assert!((x - y).abs() <= tol * 10.0, "{dt:?} grad {i}: fused {x} vs composed {y}");
            }
            // Independent check of one value: row 0's NLL from its definition.
            let row = &vals[..v];
            let lse = row.iter().map(|z| z.exp()).sum::<f64>().ln();
            assert!((a[0] - (lse - row[0])).abs() <= tol * a[0].abs().max(1.0), "{dt:?}: {} vs {}", a[0], lse - row[0]);
        }
    }

    /// The output head and the NLL as one op (`fused::head_nll`) give the composed path's values
    /// and `dL/dh` (the head's frozen linear, then [`NllOp`]), in f32 and bf16 compute, with and
    /// without a graph; a target outside the head is an error that names it. The loss weights are
    /// powers of two, so that scaling after the product (fused) or before it (composed) rounds
    /// alike and the tolerance can be tight.
    #[test]
    fn fused_head_nll_equals_head_then_nll() {
        use crate::model::bf16::Bf16Weight;
        use crate::model::fused::{head_nll, HeadWeight};
        use crate::model::layers::{bf16_packs, frozen_matmul, frozen_matmul_bf16};
        let (n, v, d) = (9, 301, 40);
        let dev = candle_core::Device::Cpu;
        let mut rng = crate::base::rng::Rng::new(23);
        let mut normal = |len: usize, sc: f64| Tensor::from_vec((0..len).map(|_| (sc * rng.normal()) as f32).collect::<Vec<_>>(), len, &dev).unwrap();
        let w = normal(v * d, 0.3).reshape((v, d)).unwrap();
        let h = normal(n * d, 1.0).reshape((n, d)).unwrap();
        let tgt: Vec<u32> = vec![0, 300, 5, 5, 150, 17, 299, 1, 64];
        let weights = Tensor::new(&[1.0f32, -2.0, 0.5, 4.0, 0.25, 1.0, -1.0, 8.0, 0.125], &dev).unwrap();
        for bf16 in [false, true] {
            if bf16 && !bf16_packs(DeviceLocation::Cpu, crate::base::cpu::level()) {
                continue; // the fused op takes only the packed bf16 head
            }
            let bw = Arc::new(Bf16Weight::new(&w, true).unwrap());
            let head = || if bf16 { HeadWeight::Bf16(bw.clone()) } else { HeadWeight::F32(w.clone()) };
            let run = |fused: bool| {
                let x = Var::from_tensor(&h).unwrap();
                let nll = if fused {
                    head_nll(x.as_tensor(), head(), tgt.clone()).unwrap()
                } else {
                    let z = if bf16 { frozen_matmul_bf16(x.as_tensor(), bw.clone()).unwrap() } else { frozen_matmul(x.as_tensor(), &w).unwrap() };
                    nll_rows(&z, tgt.clone(), NllPath::FusedCpu).unwrap()
                };
                let g = (&nll * &weights).unwrap().sum_all().unwrap().backward().unwrap().get(x.as_tensor()).unwrap().clone();
                (nll.to_vec1::<f32>().unwrap(), g.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            };
            let ((a, ga), (b, gb)) = (run(true), run(false));
            for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                assert!((x - y).abs() <= 1e-6 * y.abs().max(1.0), "bf16 {bf16} row {i}: fused {x} vs composed {y}");
            }
            let gmax = gb.iter().fold(0f32, |m, g| m.max(g.abs()));
            assert!(gmax > 0.1, "the gradient is not trivial");
            for (i, (x, y)) in ga.iter().zip(&gb).enumerate() {
                assert!((x - y).abs() <= 1e-6 * gmax, "bf16 {bf16} dL/dh {i}: fused {x} vs composed {y}");
            }
            // Outside a graph: the same values (no gradient is formed).
            let plain: Vec<f32> = head_nll(&h, head(), tgt.clone()).unwrap().to_vec1().unwrap();
            assert_eq!(plain, a, "bf16 {bf16}: values without a graph");
            let mut bad = tgt.clone();
            bad[3] = 301;
            let e = head_nll(&h, head(), bad).unwrap_err().to_string();
            assert!(e.contains("target id 301") && e.contains("301 rows"), "{e}");
        }
    }
}
