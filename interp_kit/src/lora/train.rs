//! LoRA training: AdamW with warmup and decay, gradient accumulation, loss on the target tokens only.
use super::LoraAdapter;
use crate::grad::TrainExample;
use crate::grad::{Loss, NllGraph, PrefixedExample};
use crate::model::{KvCache, LogitsAt};
use crate::hooks::Hooks;
use crate::model::Model;
use anyhow::{ensure, Context, Result};
use candle_core::{backprop::GradStore, DType, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Learning-rate schedule after the warmup (as HF transformers' `get_*_schedule_with_warmup`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Constant,
    Linear,
    Cosine,
}

/// Optimisation settings. Defaults follow HF `TrainingArguments` where they exist (weight decay 0,
/// max grad norm 1, linear decay, no warmup) and the insecure-code plan's learning rate 2e-4.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Peak learning rate.
    pub lr: f64,
    /// Decoupled weight decay of AdamW.
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Warmup optimizer steps; when 0, `ceil(warmup_ratio · total steps)`.
    pub warmup_steps: usize,
    pub warmup_ratio: f64,
    pub schedule: Schedule,
    pub epochs: usize,
    /// Stop after this many optimizer steps (overrides `epochs` for the schedule's length).
    pub max_steps: Option<usize>,
    /// Examples per forward/backward pass (padded to the longest, left padding).
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Clip the global gradient L2 norm to this value (torch `clip_grad_norm_`).
    pub max_grad_norm: Option<f64>,
    /// Seed of the shuffling and of the dropout masks.
    pub seed: u64,
    pub shuffle: bool,
    /// Call `on_step` after every this many optimizer steps (0: never).
    pub callback_every: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            lr: 2e-4,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            warmup_steps: 0,
            warmup_ratio: 0.0,
            schedule: Schedule::Linear,
            epochs: 1,
            max_steps: None,
            batch_size: 4,
            grad_accum: 1,
            max_grad_norm: Some(1.0),
            seed: 0,
            shuffle: true,
            callback_every: 1,
        }
    }
}

impl TrainConfig {
    /// Optimizer steps a run over `n_examples` takes.
    pub fn total_steps(&self, n_examples: usize) -> usize {
        let per_step = (self.batch_size * self.grad_accum).max(1);
        self.max_steps.unwrap_or(self.epochs * n_examples.div_ceil(per_step))
    }
    /// Warmup steps for a run of `total` steps.
    pub fn warmup(&self, total: usize) -> usize {
        if self.warmup_steps > 0 {
            self.warmup_steps
        } else {
            (self.warmup_ratio * total as f64).ceil() as usize
        }
    }
    /// Learning rate of optimizer step `step` (0-based) in a run of `total` steps, as HF's
    /// schedulers give it: `lr · step / warmup` during warmup (0 at step 0), then constant,
    /// linear to 0 at `total`, or cosine to 0 at `total`.
    pub fn lr_at(&self, step: usize, total: usize) -> f64 {
        let w = self.warmup(total);
        if step < w {
            return self.lr * step as f64 / w.max(1) as f64;
        }
        let progress = (step - w) as f64 / (total.saturating_sub(w)).max(1) as f64;
        let f = match self.schedule {
            Schedule::Constant => 1.0,
            Schedule::Linear => (1.0 - progress).max(0.0),
            Schedule::Cosine => (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0),
        };
        self.lr * f
    }
    fn validate(&self) -> Result<()> {
        ensure!(self.batch_size >= 1, "TrainConfig: batch_size must be >= 1");
        ensure!(self.grad_accum >= 1, "TrainConfig: grad_accum must be >= 1");
        ensure!(self.lr.is_finite() && self.lr >= 0.0, "TrainConfig: lr must be a finite number >= 0");
        ensure!((0.0..=1.0).contains(&self.warmup_ratio), "TrainConfig: warmup_ratio must be in [0, 1]");
        if let Some(m) = self.max_grad_norm {
            ensure!(m > 0.0, "TrainConfig: max_grad_norm must be > 0");
        }
        Ok(())
    }
}

/// What one optimizer step did (the training log is a `Vec` of these; serde-serialisable).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepInfo {
    /// Optimizer steps done, counting this one (1-based).
    pub step: usize,
    /// Epoch of the step (0-based).
    pub epoch: usize,
    /// Mean NLL (nats) over the step's target tokens, before the update.
    pub loss: f64,
    /// Learning rate used by this step.
    pub lr: f64,
    /// Global L2 norm of the gradient, before clipping.
    pub grad_norm: f64,
    /// Target (loss) tokens in the step.
    pub tokens: usize,
    /// All tokens of the step's sequences (padding excluded).
    pub seq_tokens: usize,
    pub examples: usize,
}

/// AdamW state for one adapter, taking optimizer steps on batches the caller chooses.
/// [`train_lora`] drives it over a dataset.
pub struct LoraTrainer {
    pub cfg: TrainConfig,
    opt: AdamW,
    vars: Vec<Var>,
    steps_done: usize,
    total_steps: usize,
}

fn mix(seed: u64, a: u64, b: u64) -> u64 {
    seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F).rotate_left(17)
}

impl LoraTrainer {
    /// An optimizer over `adapter`'s variables for a run of `total_steps` steps (the length of
    /// the learning-rate schedule).
    pub fn new(adapter: &LoraAdapter, cfg: TrainConfig, total_steps: usize) -> Result<Self> {
        cfg.validate()?;
        let vars = adapter.vars();
        ensure!(!vars.is_empty(), "the LoRA adapter has no modules");
        let params = ParamsAdamW {
            lr: cfg.lr,
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            eps: cfg.eps,
            weight_decay: cfg.weight_decay,
        };
        let opt = AdamW::new(vars.clone(), params)?;
        Ok(Self { cfg, opt, vars, steps_done: 0, total_steps })
    }

    pub fn steps_done(&self) -> usize {
        self.steps_done
    }

    /// One optimizer step on `batch`: forward and backward in micro-batches of
    /// `cfg.batch_size` (gradients summed; the loss is the mean over all target tokens of the
    /// batch, so accumulation equals one large batch), gradient clipping, the scheduled
    /// learning rate, and an AdamW update of the adapter in place.
    pub fn step(&mut self, model: &Model, adapter: &LoraAdapter, batch: &[&TrainExample]) -> Result<StepInfo> {
        self.step_with(model, adapter, batch, |_| Ok(Hooks::new()))
    }

    /// Like [`LoraTrainer::step`], with extra hooks for each micro-batch: `hooks(range)` gets the
    /// range of `batch` the micro-batch covers and returns hooks (e.g. steering writes) that act
    /// in its forward pass, with the adapter in training mode, and so shape the gradient.
    pub fn step_with<'h>(
        &mut self,
        model: &Model,
        adapter: &'h LoraAdapter,
        batch: &[&TrainExample],
        hooks: impl Fn(std::ops::Range<usize>) -> Result<Hooks<'h>>,
    ) -> Result<StepInfo> {
        let targets: Vec<usize> = batch.iter().map(|e| e.targets.len()).collect();
        let (acc, nll_sum, n_tok) = self.accumulate(adapter, &targets, |range, seed, n_tok| {
            let extra = hooks(range.clone()).context("the step's hook function")?;
            nll_backward(model, &extra.lora_train(adapter, seed), &batch[range], n_tok as f64)
        })?;
        self.apply(acc, nll_sum, n_tok, batch.len(), batch.iter().map(|e| e.ids.len()).sum())
    }

    /// The gradient of one step summed over its micro-batches of `cfg.batch_size` rows (the rows
    /// have `targets[i]` target tokens): `micro(range, dropout_seed, n_tok)` runs the forward and
    /// backward of the rows `range` with the loss divided by the step's `n_tok`, and returns the
    /// NLL sum and the gradients. Returns the summed gradients, the NLL sum and `n_tok`.
    fn accumulate(
        &self,
        adapter: &LoraAdapter,
        targets: &[usize],
        mut micro: impl FnMut(std::ops::Range<usize>, u64, usize) -> Result<(f64, GradStore)>,
    ) -> Result<(Vec<Option<Tensor>>, f64, usize)> {
        let ours: Vec<_> = adapter.vars().iter().map(|v| v.as_tensor().id()).collect();
        ensure!(
            ours == self.vars.iter().map(|v| v.as_tensor().id()).collect::<Vec<_>>(),
            "this LoraTrainer was made for another adapter"
        );
        ensure!(!targets.is_empty(), "empty training batch");
        let n_tok: usize = targets.iter().sum();
        ensure!(n_tok > 0, "the training batch has no target tokens");
        let mut acc: Vec<Option<Tensor>> = vec![None; self.vars.len()];
        let mut nll_sum = 0f64;
        for (mi, start) in (0..targets.len()).step_by(self.cfg.batch_size).enumerate() {
            let seed = mix(self.cfg.seed, self.steps_done as u64 + 1, mi as u64 + 1);
            let end = (start + self.cfg.batch_size).min(targets.len());
            let (sum, grads) = micro(start..end, seed, n_tok)?;
            nll_sum += sum;
            for (a, v) in acc.iter_mut().zip(&self.vars) {
                if let Some(g) = grads.get(v.as_tensor()) {
                    *a = Some(match a.take() {
                        Some(x) => (x + g)?,
                        None => g.clone(),
                    });
                }
            }
        }
        Ok((acc, nll_sum, n_tok))
    }

    /// Clipping, the scheduled learning rate and the AdamW update from summed gradients.
    fn apply(&mut self, acc: Vec<Option<Tensor>>, nll_sum: f64, n_tok: usize, examples: usize, seq_tokens: usize) -> Result<StepInfo> {
        let grads: Vec<Tensor> = acc
            .into_iter()
            .zip(&self.vars)
            .map(|(g, v)| g.map_or_else(|| v.as_tensor().zeros_like(), Ok))
            .collect::<candle_core::Result<_>>()?;
        let mut sq = 0f64;
        for g in &grads {
            sq += g.sqr()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        }
        let norm = sq.sqrt();
        // A non-finite loss or gradient would turn the adapter into NaN at this update and every
        // later number into noise: stop here, before the optimizer touches the weights.
        let loss = nll_sum / n_tok as f64;
        ensure!(loss.is_finite(), "the loss is {loss} at step {} ({n_tok} target tokens); the adapter was not updated", self.steps_done + 1);
        ensure!(norm.is_finite(), "the gradient norm is {norm} at step {} (loss {loss}); the adapter was not updated", self.steps_done + 1);
        let clip = match self.cfg.max_grad_norm {
            Some(m) if norm > m => m / (norm + 1e-6),
            _ => 1.0,
        };
        let mut store = GradStore::default();
        for (v, g) in self.vars.iter().zip(grads) {
            let g = if clip < 1.0 { (g * clip)? } else { g };
            store.insert(v.as_tensor(), g);
        }
        let lr = self.cfg.lr_at(self.steps_done, self.total_steps.max(self.steps_done + 1));
        self.opt.set_learning_rate(lr);
        self.opt.step(&store)?;
        self.steps_done += 1;
        Ok(StepInfo {
            step: self.steps_done,
            epoch: 0,
            loss: nll_sum / n_tok as f64,
            lr,
            grad_norm: norm,
            tokens: n_tok,
            seq_tokens,
            examples,
        })
    }

    /// One optimizer step on examples whose prefixes are run first, without gradient and with the
    /// adapter active (inference mode), into a KV cache, together with `prefix_hooks(range)` (e.g.
    /// per-row steering of the micro-batch `range` of `batch`); the suffixes then attend to that
    /// cache with the adapter in training mode, so the gradient flows through the suffixes only.
    /// The suffixes of one micro-batch must have one length. Otherwise as [`LoraTrainer::step`].
    pub fn step_prefixed<'h>(
        &mut self,
        model: &Model,
        adapter: &'h LoraAdapter,
        batch: &[&PrefixedExample],
        prefix_hooks: impl Fn(std::ops::Range<usize>) -> Result<Hooks<'h>>,
    ) -> Result<StepInfo> {
        let targets: Vec<usize> = batch.iter().map(|e| e.targets.len()).collect();
        let (acc, nll_sum, n_tok) = self.accumulate(adapter, &targets, |range, seed, n_tok| {
            let pre = prefix_hooks(range.clone()).context("the step's prefix hook function")?;
            let chunk = &batch[range];
            let cache = prefill_prefixes(model, adapter, chunk, pre)?;
            nll_backward_after(model, &Hooks::new().lora_train(adapter, seed), &cache, chunk, n_tok as f64)
        })?;
        let seq: usize = batch.iter().map(|e| e.prefix.len() + e.suffix.len()).sum();
        self.apply(acc, nll_sum, n_tok, batch.len(), seq)
    }
}

/// The KV cache of `examples`' prefixes, computed without gradient with `adapter` active
/// (inference mode) and `hooks` (e.g. steering), phase prefill.
pub fn prefill_prefixes<'h>(model: &Model, adapter: &'h LoraAdapter, examples: &[&PrefixedExample], hooks: Hooks<'h>) -> Result<KvCache> {
    let prefixes: Vec<Vec<u32>> = examples.iter().map(|e| e.prefix.clone()).collect();
    let hooks = hooks.lora(adapter);
    let mut cache = KvCache::new(model);
    model.prefill(&prefixes, &mut cache, &hooks, LogitsAt::None).context("the prefix forward")?;
    Ok(cache)
}

/// Forward + backward of `sum(NLL of the suffix targets) / denom` after a prefix cache.
fn nll_backward_after(model: &Model, hooks: &Hooks, cache: &KvCache, chunk: &[&PrefixedExample], denom: f64) -> Result<(f64, GradStore)> {
    let suffixes: Vec<Vec<u32>> = chunk.iter().map(|e| e.suffix.clone()).collect();
    let targets: Vec<Vec<usize>> = chunk.iter().map(|e| e.targets.clone()).collect();
    let NllGraph { nll, .. } = model.nll_graph_after(cache, &suffixes, &targets, hooks)?;
    let sum = nll.sum_all()?;
    let grads = (&sum / denom)?.backward().context("LoRA backward pass")?;
    Ok((sum.to_dtype(DType::F64)?.to_scalar::<f64>()?, grads))
}

/// Mean NLL over the suffix targets of `examples` and its gradient with respect to every `A` and
/// `B` of `adapter` (no dropout), the prefixes held constant: they are run first without
/// gradient, with the adapter active and `prefix_hooks` (e.g. steering), into a KV cache that the
/// suffixes attend to. Keyed by module path: `(dL/dA, dL/dB)`. One pass: the suffixes must have
/// one length.
pub fn lora_grad_prefixed<'h>(
    model: &Model,
    adapter: &'h LoraAdapter,
    examples: &[PrefixedExample],
    prefix_hooks: Hooks<'h>,
) -> Result<(f64, BTreeMap<String, (Tensor, Tensor)>)> {
    ensure!(!examples.is_empty(), "lora_grad_prefixed: no examples");
    let refs: Vec<&PrefixedExample> = examples.iter().collect();
    let n_tok: usize = examples.iter().map(|e| e.targets.len()).sum();
    let cache = prefill_prefixes(model, adapter, &refs, prefix_hooks)?;
    let hooks = Hooks::new().lora(adapter);
    let (sum, grads) = nll_backward_after(model, &hooks, &cache, &refs, n_tok as f64)?;
    Ok((sum / n_tok as f64, grads_by_module(adapter, &grads)?))
}

/// [`train_lora`] for prefixed examples ([`LoraTrainer::step_prefixed`]): `prefix_hooks(indices)`
/// gets the indices (into `examples`) of a micro-batch's rows and returns the hooks of their
/// prefix forward (e.g. [`crate::hooks`] writes that steer each row with its own vector).
pub fn train_lora_prefixed<'h>(
    model: &Model,
    adapter: &'h LoraAdapter,
    examples: &[PrefixedExample],
    cfg: &TrainConfig,
    prefix_hooks: impl Fn(&[usize]) -> Result<Hooks<'h>>,
    on_step: impl FnMut(&StepInfo, &LoraAdapter) -> Result<()>,
) -> Result<Vec<StepInfo>> {
    ensure!(!examples.is_empty(), "train_lora_prefixed: no training examples");
    for (i, e) in examples.iter().enumerate() {
        PrefixedExample::new(e.prefix.clone(), e.suffix.clone(), e.targets.clone()).with_context(|| format!("training example {i}"))?;
    }
    run_epochs(adapter, examples.len(), cfg, on_step, |trainer, group| {
        let batch: Vec<&PrefixedExample> = group.iter().map(|&i| &examples[i]).collect();
        trainer.step_prefixed(model, adapter, &batch, |r| prefix_hooks(&group[r]))
    })
}

/// `(dL/dA, dL/dB)` of every module of `adapter` in `grads`, keyed by module path (zeros where the
/// loss does not reach a module).
fn grads_by_module(adapter: &LoraAdapter, grads: &GradStore) -> Result<BTreeMap<String, (Tensor, Tensor)>> {
    let mut out = BTreeMap::new();
    for (name, m) in adapter.modules() {
        let g = |v: &Var| grads.get(v.as_tensor()).cloned().map_or_else(|| v.as_tensor().zeros_like(), Ok);
        out.insert(name.to_string(), (g(&m.a)?, g(&m.b)?));
    }
    Ok(out)
}

/// Forward + backward of `sum(NLL of the chunk's targets) / denom`: returns the NLL sum and the
/// gradients.
fn nll_backward(model: &Model, hooks: &Hooks, chunk: &[&TrainExample], denom: f64) -> Result<(f64, GradStore)> {
    let prompts: Vec<Vec<u32>> = chunk.iter().map(|e| e.ids.clone()).collect();
    let lens: Vec<usize> = prompts.iter().map(|p| p.len()).collect();
    let targets = Loss::Tokens(chunk.iter().map(|e| e.targets.clone()).collect()).targets(&lens)?;
    let NllGraph { nll, .. } = model.nll_graph(&prompts, &targets, hooks, &[])?;
    let sum = nll.sum_all()?;
    let grads = (&sum / denom)?.backward().context("LoRA backward pass")?;
    Ok((sum.to_dtype(DType::F64)?.to_scalar::<f64>()?, grads))
}

/// Mean NLL over the targets of `examples` and its gradient with respect to every `A` and `B`
/// of `adapter` (no dropout), keyed by module path: `(dL/dA, dL/dB)`.
pub fn lora_grad(model: &Model, adapter: &LoraAdapter, examples: &[TrainExample]) -> Result<(f64, BTreeMap<String, (Tensor, Tensor)>)> {
    lora_grad_with(model, adapter, examples, Hooks::new())
}

/// [`lora_grad`] with extra `hooks` in the forward pass (e.g. steering writes, which are part of
/// the graph).
pub fn lora_grad_with<'h>(
    model: &Model,
    adapter: &'h LoraAdapter,
    examples: &[TrainExample],
    hooks: Hooks<'h>,
) -> Result<(f64, BTreeMap<String, (Tensor, Tensor)>)> {
    ensure!(!examples.is_empty(), "lora_grad: no examples");
    let refs: Vec<&TrainExample> = examples.iter().collect();
    let n_tok: usize = examples.iter().map(|e| e.targets.len()).sum();
    let hooks = hooks.lora(adapter);
    let (sum, grads) = nll_backward(model, &hooks, &refs, n_tok as f64)?;
    Ok((sum / n_tok as f64, grads_by_module(adapter, &grads)?))
}

/// Mean NLL (nats) over the targets of `examples` on the inference path, with `hooks` (e.g.
/// `Hooks::new().lora(&adapter)`; no dropout), in batches of `batch_size`.
pub fn eval_loss(model: &Model, hooks: &Hooks, examples: &[TrainExample], batch_size: usize) -> Result<f64> {
    ensure!(!examples.is_empty(), "eval_loss: no examples");
    ensure!(batch_size >= 1, "eval_loss: batch_size must be >= 1");
    let (mut sum, mut n) = (0f64, 0usize);
    for chunk in examples.chunks(batch_size) {
        let prompts: Vec<Vec<u32>> = chunk.iter().map(|e| e.ids.clone()).collect();
        let out = model.forward(&prompts, hooks)?;
        for (r, e) in chunk.iter().enumerate() {
            let lp = candle_nn::ops::log_softmax(&out.logits_row(r)?.to_dtype(DType::F32)?, D::Minus1)?;
            let src: Vec<u32> = e.targets.iter().map(|&t| (t - 1) as u32).collect();
            let tgt: Vec<u32> = e.targets.iter().map(|&t| e.ids[t]).collect();
            let k = src.len();
            let rows = lp.index_select(&Tensor::from_vec(src, k, lp.device())?, 0)?;
            let picked = rows.gather(&Tensor::from_vec(tgt, (k, 1), lp.device())?, 1)?;
            sum -= picked.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            n += k;
        }
    }
    Ok(sum / n as f64)
}

/// Trains `adapter` on `examples`: `cfg.epochs` passes (or `cfg.max_steps` steps) over the data,
/// shuffled per epoch with `cfg.seed`, in optimizer steps of `batch_size × grad_accum` examples
/// (see [`LoraTrainer::step`]). After every `cfg.callback_every` steps, `on_step` gets the step's
/// info and the adapter (e.g. to log gradient alignment on a fixed batch, or save a checkpoint);
/// an error from it stops training. Returns the log of every step.
pub fn train_lora(
    model: &Model,
    adapter: &LoraAdapter,
    examples: &[TrainExample],
    cfg: &TrainConfig,
    on_step: impl FnMut(&StepInfo, &LoraAdapter) -> Result<()>,
) -> Result<Vec<StepInfo>> {
    train_lora_with(model, adapter, examples, cfg, |_| Ok(Hooks::new()), on_step)
}

/// [`train_lora`] with hooks in every training forward pass: `hooks(indices)` gets the indices
/// (into `examples`) of a micro-batch's rows, in row order, and returns the hooks for its pass,
/// e.g. a steering write whose vector depends on the example (the introspection plan trains
/// while a concept vector is injected).
pub fn train_lora_with<'h>(
    model: &Model,
    adapter: &'h LoraAdapter,
    examples: &[TrainExample],
    cfg: &TrainConfig,
    hooks: impl Fn(&[usize]) -> Result<Hooks<'h>>,
    on_step: impl FnMut(&StepInfo, &LoraAdapter) -> Result<()>,
) -> Result<Vec<StepInfo>> {
    ensure!(!examples.is_empty(), "train_lora: no training examples");
    for (i, e) in examples.iter().enumerate() {
        TrainExample::new(e.ids.clone(), e.targets.clone()).with_context(|| format!("training example {i}"))?;
    }
    run_epochs(adapter, examples.len(), cfg, on_step, |trainer, group| {
        let batch: Vec<&TrainExample> = group.iter().map(|&i| &examples[i]).collect();
        trainer.step_with(model, adapter, &batch, |r| hooks(&group[r]))
    })
}

/// The training loop of [`train_lora_with`] and [`train_lora_prefixed`] over `n` examples:
/// `cfg.epochs` passes (or `cfg.max_steps` steps), shuffled per epoch with `cfg.seed`, one
/// `step(trainer, indices)` per `batch_size × grad_accum` examples, `on_step` every
/// `cfg.callback_every` steps.
fn run_epochs(
    adapter: &LoraAdapter,
    n: usize,
    cfg: &TrainConfig,
    mut on_step: impl FnMut(&StepInfo, &LoraAdapter) -> Result<()>,
    mut step: impl FnMut(&mut LoraTrainer, &[usize]) -> Result<StepInfo>,
) -> Result<Vec<StepInfo>> {
    let total = cfg.total_steps(n);
    let mut trainer = LoraTrainer::new(adapter, cfg.clone(), total)?;
    let per_step = cfg.batch_size * cfg.grad_accum;
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut log = Vec::with_capacity(total);
    let mut epoch = 0;
    while trainer.steps_done() < total {
        let mut order: Vec<usize> = (0..n).collect();
        if cfg.shuffle {
            order.shuffle(&mut rng);
        }
        for group in order.chunks(per_step) {
            if trainer.steps_done() >= total {
                break;
            }
            let mut info = step(&mut trainer, group)
                .with_context(|| format!("training step {} (epoch {epoch}, batch of examples {group:?})", trainer.steps_done() + 1))?;
            info.epoch = epoch;
            // The crash tests' hook (INTERP_KIT_FAULT=lora_step:<n>): a kill in the middle of a run.
            crate::base::fault::hit("lora_step", &info.step.to_string()).with_context(|| format!("training step {}", info.step))?;
            if cfg.callback_every > 0 && info.step % cfg.callback_every == 0 {
                on_step(&info, adapter).with_context(|| format!("on_step callback at step {}", info.step))?;
            }
            log.push(info);
        }
        epoch += 1;
    }
    Ok(log)
}
