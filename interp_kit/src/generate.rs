//! Batched greedy / sampled generation on top of the KV cache, with per-step logprobs and
//! entropy. The same seed gives the same output.
use crate::hooks::{ActivationCache, Hooks};
use crate::model::{KvCache, LogitsAt, Model};
use anyhow::{ensure, Result};
use candle_core::{DType, Tensor};
use rayon::prelude::*;
use crate::base::vmath::exp_affine;
use wide::f32x8;

/// Sum in f64 of f32 values, in f32x8 partial sums of 1024 values each (accurate to ~1e-7 relative
/// for positive values, several times faster than a scalar f64 loop).
fn sum_f64(x: &[f32]) -> f64 {
    x.chunks(1024)
        .map(|c| {
            let mut acc = f32x8::ZERO;
            let mut chunks = c.chunks_exact(8);
            for v in &mut chunks {
                acc += f32x8::from(<[f32; 8]>::try_from(v).expect("8 lanes"));
            }
            acc.to_array().iter().map(|&v| v as f64).sum::<f64>() + chunks.remainder().iter().map(|&v| v as f64).sum::<f64>()
        })
        .sum()
}

/// `log Z` and the entropy (nats) of `softmax(logits)` at temperature 1, with f64 sums.
/// `scratch` is reused between calls.
pub fn log_partition_and_entropy(logits: &[f32], scratch: &mut Vec<f32>) -> (f64, f64) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    exp_affine(logits, 1.0, -max, scratch);
    let z = sum_f64(scratch);
    // H = -sum p (l - log Z) = log Z - sum p l, with l taken relative to the max.
    let el: f64 = scratch.iter().zip(logits).map(|(&e, &l)| e as f64 * (l - max) as f64).sum();
    let log_z = max as f64 + z.ln();
    (log_z, z.ln() - el / z)
}

/// How to generate. `temperature == 0` is greedy.
#[derive(Clone, Debug)]
pub struct GenerateConfig {
    pub max_new_tokens: usize,
    pub temperature: f64,
    pub top_p: Option<f64>,
    pub top_k: Option<usize>,
    /// Row `r` samples with seed `seed + r`, unless `seeds` gives one seed per row.
    pub seed: u64,
    /// One seed per row (e.g. derived from each prompt's id), so that a prompt's sample does
    /// not depend on which batch or row it lands in.
    pub seeds: Option<Vec<u64>>,
    /// Stop a row at an end-of-sequence token (the tokenizer's, unless `eos` is given).
    pub stop_at_eos: bool,
    pub eos: Option<Vec<u32>>,
    /// Drop rows from the batch (and the KV cache) once they have stopped, instead of feeding
    /// them end-of-sequence tokens until the longest row ends. Much faster when lengths differ;
    /// the tokens are the same up to floating-point summation order (the quantized inference path
    /// picks its matmul kernel by the number of rows). Off when read hooks are set, and leave it
    /// off for write hooks that capture per-row state (their batch shrinks).
    pub compact: bool,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        Self { max_new_tokens: 64, temperature: 0.0, top_p: None, top_k: None, seed: 0, seeds: None, stop_at_eos: true, eos: None, compact: false }
    }
}

impl GenerateConfig {
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self { max_new_tokens, ..Default::default() }
    }
    pub fn sampled(max_new_tokens: usize, temperature: f64, top_p: f64, seed: u64) -> Self {
        Self { max_new_tokens, temperature, top_p: Some(top_p), seed, ..Default::default() }
    }
    /// The seed of row `r` of a batch: `seeds[r]` when given, else `seed + r`.
    pub fn row_seed(&self, r: usize) -> u64 {
        match &self.seeds {
            Some(s) => s[r],
            None => self.seed.wrapping_add(r as u64),
        }
    }
}

/// Temperature / top-k / top-p sampling of one row, with HF `generate` semantics: logits are
/// divided by the temperature, top-k keeps the k most likely tokens, top-p keeps the smallest
/// set of most likely tokens whose probability reaches `p` (at least one), then one token is drawn
/// from the renormalised distribution. Greedy (`temperature == 0`) is an argmax.
///
/// The nucleus is found without sorting the whole vocabulary: the tokens whose probability is at
/// least `τ` times the largest are a prefix of the sorted order, so once their mass reaches `p`
/// the nucleus is among them (`τ` = 1e-3, lowered 64-fold until the mass suffices). Kept tokens
/// are ordered by probability, then by id.
pub struct Sampler {
    rng: rand::rngs::StdRng,
    temperature: f64,
    top_k: Option<usize>,
    top_p: Option<f64>,
    probs: Vec<f32>,
    idx: Vec<u32>,
    /// Temperature-1 probabilities for [`log_partition_and_entropy`].
    scratch: Vec<f32>,
}

impl Sampler {
    pub fn new(seed: u64, temperature: f64, top_k: Option<usize>, top_p: Option<f64>) -> Self {
        use rand::SeedableRng;
        Sampler { rng: rand::rngs::StdRng::seed_from_u64(seed), temperature, top_k, top_p, probs: vec![], idx: vec![], scratch: vec![] }
    }

    /// Draws the next token from one row of logits.
    pub fn sample(&mut self, logits: &[f32]) -> Result<u32> {
        use rand::Rng;
        ensure!(!logits.is_empty(), "cannot sample from empty logits");
        if self.temperature <= 0.0 {
            return Ok(argmax(logits));
        }
        let t = self.temperature as f32;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        ensure!(max.is_finite(), "logits are not finite (max {max})");
        exp_affine(logits, 1.0 / t, -max / t, &mut self.probs);
        let probs = &self.probs;
        let n = probs.len();
        let k = self.top_k.unwrap_or(n).clamp(1, n);
        let total: f64 = if k < n {
            // Mass of the top k.
            self.idx.clear();
            self.idx.extend(0..n as u32);
            self.idx.select_nth_unstable_by(k - 1, |&a, &b| probs[b as usize].total_cmp(&probs[a as usize]));
            self.idx.truncate(k);
            self.idx.iter().map(|&i| probs[i as usize] as f64).sum()
        } else {
            self.idx.clear();
            sum_f64(probs)
        };
        // `idx` holds the top-k candidates, or is empty for the whole vocabulary; now the nucleus.
        let by_prob = |a: &u32, b: &u32| probs[*b as usize].total_cmp(&probs[*a as usize]).then(a.cmp(b));
        let keep = match self.top_p {
            Some(p) if p < 1.0 => {
                let target = p * total;
                if self.idx.is_empty() {
                    // Candidates: probability >= tau (the max is 1), a prefix of the sorted order.
                    let mut tau = 1e-3f32;
                    loop {
                        self.idx.clear();
                        self.idx.extend((0..n as u32).filter(|&i| probs[i as usize] >= tau));
                        if tau == 0.0 || self.idx.iter().map(|&i| probs[i as usize] as f64).sum::<f64>() >= target {
                            break;
                        }
                        tau = if tau < 1e-30 { 0.0 } else { tau / 64.0 };
                    }
                }
                self.idx.sort_unstable_by(by_prob);
                let mut cum = 0f64;
                let mut keep = self.idx.len();
                for (j, &i) in self.idx.iter().enumerate() {
                    cum += probs[i as usize] as f64;
                    if cum >= target {
                        keep = j + 1;
                        break;
                    }
                }
                keep
            }
            _ => {
                if self.idx.is_empty() {
                    self.idx.extend(0..n as u32);
                }
                self.idx.len()
            }
        };
        let kept = &self.idx[..keep];
        let mass: f64 = kept.iter().map(|&i| probs[i as usize] as f64).sum();
        let mut r = self.rng.random::<f64>() * mass;
        for &i in kept {
            r -= probs[i as usize] as f64;
            if r < 0.0 {
                return Ok(i);
            }
        }
        Ok(*kept.last().expect("at least one candidate"))
    }
}

fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best as u32
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
        if let Some(s) = &cfg.seeds {
            ensure!(s.len() == b, "GenerateConfig.seeds has {} seeds for a batch of {b} rows", s.len());
        }
        let mut procs: Vec<Sampler> =
            (0..b).map(|r| Sampler::new(cfg.row_seed(r), cfg.temperature, cfg.top_k, cfg.top_p)).collect();
        let mut gens: Vec<Generation> = (0..b)
            .map(|_| Generation { tokens: vec![], text: String::new(), logprobs: vec![], entropies: vec![], stopped_at_eos: false })
            .collect();
        let mut done = vec![false; b];
        let mut acts = ActivationCache::default();
        let compact = cfg.compact && hooks.reads.is_empty();
        // `alive[slot]`: the original row in batch slot `slot` (all rows unless compacting).
        let mut alive: Vec<usize> = (0..b).collect();
        for step in 0..cfg.max_new_tokens {
            // Sampling runs on the host on every device (the kit's seeded per-row RNG, the returned
            // log-probabilities and entropies need whole rows): on a GPU this copies the step's
            // [rows, vocab] logits to the host, a documented cost, not a fallback that changes results.
            let rows: Vec<Vec<f32>> = logits.to_dtype(DType::F32)?.to_vec2()?;
            let mut slot_of = vec![None; b];
            for (slot, &r) in alive.iter().enumerate() {
                slot_of[r] = Some(slot);
            }
            // Each live row's next token, its log-probability and the step's entropy (temperature
            // 1), rows in parallel.
            let drawn: Vec<(usize, u32, f32, f32)> = procs
                .par_iter_mut()
                .enumerate()
                .filter_map(|(r, p)| slot_of[r].filter(|_| !done[r]).map(|slot| (r, slot, p)))
                .map(|(r, slot, p)| -> Result<(usize, u32, f32, f32)> {
                    let row = &rows[slot];
                    let tok = p.sample(row)?;
                    let (log_z, ent) = log_partition_and_entropy(row, &mut p.scratch);
                    Ok((r, tok, (row[tok as usize] as f64 - log_z) as f32, ent as f32))
                })
                .collect::<Result<_>>()?;
            let mut next = vec![eos.first().copied().unwrap_or(0); alive.len()];
            for (r, tok, logprob, ent) in drawn {
                next[slot_of[r].expect("a live row")] = tok;
                if cfg.stop_at_eos && eos.contains(&tok) {
                    done[r] = true;
                    gens[r].stopped_at_eos = true;
                    continue;
                }
                gens[r].tokens.push(tok);
                gens[r].logprobs.push(logprob);
                gens[r].entropies.push(ent);
            }
            // The last token is fed too when read hooks want its activations.
            if done.iter().all(|d| *d) || (step + 1 == cfg.max_new_tokens && hooks.reads.is_empty()) {
                break;
            }
            if compact && alive.iter().any(|&r| done[r]) {
                let keep: Vec<usize> = (0..alive.len()).filter(|&s| !done[alive[s]]).collect();
                cache.retain_rows(&keep)?;
                next = keep.iter().map(|&s| next[s]).collect();
                alive = keep.iter().map(|&s| alive[s]).collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn logits_of(probs: &[f64]) -> Vec<f32> {
        probs.iter().map(|p| p.ln() as f32).collect()
    }

    fn freqs(s: &mut Sampler, logits: &[f32], n: usize) -> Vec<f64> {
        let mut c = vec![0f64; logits.len()];
        for _ in 0..n {
            c[s.sample(logits).unwrap() as usize] += 1.0;
        }
        c.iter().map(|x| x / n as f64).collect()
    }

    #[test]
    fn greedy_is_first_argmax() {
        let mut s = Sampler::new(0, 0.0, None, None);
        assert_eq!(s.sample(&[0.1, 3.0, 3.0, -1.0]).unwrap(), 1);
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p() {
        // 0.5 + 0.3 = 0.8 >= 0.75: tokens 0 and 1 only, renormalised to 0.625 / 0.375.
        let l = logits_of(&[0.15, 0.5, 0.05, 0.3]);
        let f = freqs(&mut Sampler::new(7, 1.0, None, Some(0.75)), &l, 20000);
        assert_eq!(f[0], 0.0);
        assert_eq!(f[2], 0.0);
        assert!((f[1] - 0.625).abs() < 0.015, "{f:?}");
        assert!((f[3] - 0.375).abs() < 0.015, "{f:?}");
        // p below the top probability keeps the argmax alone.
        let f = freqs(&mut Sampler::new(7, 1.0, None, Some(0.1)), &l, 200);
        assert_eq!(f[1], 1.0);
    }

    #[test]
    fn temperature_and_top_k() {
        // T = 0.5 squares and renormalises the probabilities: [0.2, 0.8] -> [1/17, 16/17].
        let l = logits_of(&[0.2, 0.8]);
        let f = freqs(&mut Sampler::new(1, 0.5, None, None), &l, 40000);
        assert!((f[1] - 16.0 / 17.0).abs() < 0.01, "{f:?}");
        let l = logits_of(&[0.1, 0.2, 0.3, 0.4]);
        let f = freqs(&mut Sampler::new(2, 1.0, Some(2), None), &l, 40000);
        assert_eq!(f[0] + f[1], 0.0);
        assert!((f[3] - 4.0 / 7.0).abs() < 0.01, "{f:?}");
        // top-k then top-p within the top k: 0.4/0.7 = 0.571 >= 0.5 keeps token 3 alone.
        let f = freqs(&mut Sampler::new(2, 1.0, Some(2), Some(0.5)), &l, 100);
        assert_eq!(f[3], 1.0);
    }

    /// Against an f64 softmax computed term by term, and the uniform case (log V).
    #[test]
    fn log_partition_and_entropy_match_f64() {
        let mut scratch = vec![];
        let (z, h) = log_partition_and_entropy(&vec![3.5f32; 1003], &mut scratch);
        assert!((h - 1003f64.ln()).abs() < 1e-6 && (z - (3.5 + 1003f64.ln())).abs() < 1e-6, "{z} {h}");
        let l: Vec<f32> = (0..151_937).map(|i| ((i * 7919) % 1000) as f32 * 0.03 - 5.0 + if i == 42 { 40.0 } else { 0.0 }).collect();
        let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let zf: f64 = l.iter().map(|&x| (x as f64 - max).exp()).sum();
        let log_z = max + zf.ln();
        let hf: f64 = -l.iter().map(|&x| { let lp = x as f64 - log_z; lp.exp() * lp }).sum::<f64>();
        let (z, h) = log_partition_and_entropy(&l, &mut scratch);
        assert!((z - log_z).abs() < 1e-5 && (h - hf).abs() < 1e-5 * hf.max(1.0), "{z} vs {log_z}, {h} vs {hf}");
    }

    #[test]
    fn nucleus_matches_a_full_sort_on_a_large_vocabulary() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for trial in 0..20 {
            // Flat-ish logits make the nucleus span thousands of tokens. Every third trial: one
            // token far above a flat tail of exact ties, each under the first threshold (1e-3 of
            // the max) but holding most of the mass together, so the candidate set must widen, and
            // ties are taken in id order (as this stable sort does).
            let l: Vec<f32> = match trial % 3 {
                0 => (0..50_000).map(|_| rng.random::<f32>() * 12.0).collect(),
                1 => (0..50_000).map(|_| rng.random::<f32>() * 0.5).collect(),
                _ => (0..50_000).map(|i| if i == 7 { 10.0 } else { 0.0 }).collect(),
            };
            let p = 0.9;
            let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f64> = l.iter().map(|&x| ((x - max) as f64).exp()).collect();
            let tot: f64 = e.iter().sum();
            let mut order: Vec<usize> = (0..l.len()).collect();
            order.sort_by(|&a, &b| e[b].total_cmp(&e[a]));
            let mut cum = 0.0;
            let mut n_keep = 0;
            for &i in &order {
                cum += e[i] / tot;
                n_keep += 1;
                if cum >= p {
                    break;
                }
            }
            let nucleus: std::collections::HashSet<usize> = order[..n_keep].iter().copied().collect();
            let mut s = Sampler::new(trial, 1.0, None, Some(p));
            for _ in 0..200 {
                let t = s.sample(&l).unwrap() as usize;
                assert!(nucleus.contains(&t), "trial {trial}: token {t} outside the nucleus of {n_keep}");
            }
        }
    }

    #[test]
    fn same_seed_same_draws() {
        let l: Vec<f32> = (0..1000).map(|i| ((i * 37) % 101) as f32 / 10.0).collect();
        let a: Vec<u32> = { let mut s = Sampler::new(5, 0.7, None, Some(0.9)); (0..50).map(|_| s.sample(&l).unwrap()).collect() };
        let b: Vec<u32> = { let mut s = Sampler::new(5, 0.7, None, Some(0.9)); (0..50).map(|_| s.sample(&l).unwrap()).collect() };
        let c: Vec<u32> = { let mut s = Sampler::new(6, 0.7, None, Some(0.9)); (0..50).map(|_| s.sample(&l).unwrap()).collect() };
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
