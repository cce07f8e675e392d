//! Batched greedy / sampled generation on top of the KV cache, with per-step logprobs and
//! entropy. The same seed gives the same output.
use crate::hooks::{ActivationCache, Hooks};
use crate::model::{KvCache, LogitsAt, Model};
use anyhow::{ensure, Result};
use candle_core::{DType, Tensor, D};
use candle_transformers::generation::{LogitsProcessor, Sampling};

/// How to generate. `temperature == 0` is greedy.
#[derive(Clone, Debug)]
pub struct GenerateConfig {
    pub max_new_tokens: usize,
    pub temperature: f64,
    pub top_p: Option<f64>,
    pub top_k: Option<usize>,
    /// Row `r` samples with seed `seed + r`.
    pub seed: u64,
    /// Stop a row at an end-of-sequence token (the tokenizer's, unless `eos` is given).
    pub stop_at_eos: bool,
    pub eos: Option<Vec<u32>>,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        Self { max_new_tokens: 64, temperature: 0.0, top_p: None, top_k: None, seed: 0, stop_at_eos: true, eos: None }
    }
}

impl GenerateConfig {
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self { max_new_tokens, ..Default::default() }
    }
    pub fn sampled(max_new_tokens: usize, temperature: f64, top_p: f64, seed: u64) -> Self {
        Self { max_new_tokens, temperature, top_p: Some(top_p), seed, ..Default::default() }
    }
    fn sampling(&self) -> Sampling {
        if self.temperature <= 0.0 {
            return Sampling::ArgMax;
        }
        let temperature = self.temperature;
        match (self.top_k, self.top_p) {
            (Some(k), Some(p)) => Sampling::TopKThenTopP { k, p, temperature },
            (Some(k), None) => Sampling::TopK { k, temperature },
            (None, Some(p)) => Sampling::TopP { p, temperature },
            (None, None) => Sampling::All { temperature },
        }
    }
}

/// One row's continuation.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Generation {
    pub tokens: Vec<u32>,
    /// Decoded text (special tokens skipped); empty without a tokenizer.
    pub text: String,
    /// Log-probability of each chosen token under the model (temperature 1).
    pub logprobs: Vec<f32>,
    /// Entropy (nats) of the model's next-token distribution at each step.
    pub entropies: Vec<f32>,
    /// Whether the row stopped at an end-of-sequence token (not included in `tokens`).
    pub stopped_at_eos: bool,
}

impl Model {
    /// Generates from `prompts`; `hooks` act according to their phases (prefill and/or decode).
    pub fn generate(&self, prompts: &[Vec<u32>], cfg: &GenerateConfig, hooks: &Hooks) -> Result<Vec<Generation>> {
        Ok(self.generate_traced(prompts, cfg, hooks)?.0)
    }

    /// Like [`Model::generate`], also returning what read hooks cached across all steps.
    pub fn generate_traced(
        &self,
        prompts: &[Vec<u32>],
        cfg: &GenerateConfig,
        hooks: &Hooks,
    ) -> Result<(Vec<Generation>, ActivationCache)> {
        let mut cache = KvCache::new(self);
        let out = self.prefill(prompts, &mut cache, hooks, LogitsAt::Last)?;
        let logits = out.last_logits()?;
        let mut acts = out.activations;
        let (gens, more) = self.generate_from(&mut cache, logits, cfg, hooks)?;
        acts.append(more)?;
        Ok((gens, acts))
    }

    /// Continues a filled cache whose last logits (`[B, V]`) are given. Use it for the
    /// steer-then-remove protocol: prefill with steering hooks, then generate with others.
    pub fn generate_from(
        &self,
        cache: &mut KvCache,
        mut logits: Tensor,
        cfg: &GenerateConfig,
        hooks: &Hooks,
    ) -> Result<(Vec<Generation>, ActivationCache)> {
        let b = cache.batch_size();
        ensure!(logits.dims() == [b, self.info.vocab_size], "logits must be [batch, vocab], got {:?}", logits.dims());
        let eos: Vec<u32> = match (&cfg.eos, &self.tokenizer) {
            (Some(e), _) => e.clone(),
            (None, Some(t)) => t.eos_ids().to_vec(),
            (None, None) => vec![],
        };
        let mut procs: Vec<LogitsProcessor> =
            (0..b).map(|r| LogitsProcessor::from_sampling(cfg.seed.wrapping_add(r as u64), cfg.sampling())).collect();
        let mut gens: Vec<Generation> = (0..b)
            .map(|_| Generation { tokens: vec![], text: String::new(), logprobs: vec![], entropies: vec![], stopped_at_eos: false })
            .collect();
        let mut done = vec![false; b];
        let mut acts = ActivationCache::default();
        for step in 0..cfg.max_new_tokens {
            let l32 = logits.to_dtype(DType::F32)?;
            let lp = candle_nn::ops::log_softmax(&l32, D::Minus1)?;
            let ent: Vec<f32> = (lp.exp()? * &lp)?.sum(D::Minus1)?.neg()?.to_vec1()?;
            let mut next = vec![0u32; b];
            for r in 0..b {
                if done[r] {
                    next[r] = eos.first().copied().unwrap_or(0);
                    continue;
                }
                let row = l32.get(r)?;
                let tok = procs[r].sample(&row)?;
                next[r] = tok;
                if cfg.stop_at_eos && eos.contains(&tok) {
                    done[r] = true;
                    gens[r].stopped_at_eos = true;
                    continue;
                }
                gens[r].tokens.push(tok);
                gens[r].logprobs.push(lp.get(r)?.get(tok as usize)?.to_scalar::<f32>()?);
                gens[r].entropies.push(ent[r]);
            }
            // The last token is fed too when read hooks want its activations.
            if done.iter().all(|d| *d) || (step + 1 == cfg.max_new_tokens && hooks.reads.is_empty()) {
                break;
            }
            let out = self.decode(&next, cache, hooks)?;
            logits = out.last_logits()?;
            acts.append(out.activations)?;
        }
        if let Some(t) = &self.tokenizer {
            for g in gens.iter_mut() {
                g.text = t.decode(&g.tokens, true)?;
            }
        }
        Ok((gens, acts))
    }
}
