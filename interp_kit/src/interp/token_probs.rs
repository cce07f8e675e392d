//! Token-probability readout: log-probabilities of chosen token sets at chosen positions from one
//! forward, the variants of a word found in the tokenizer, and P(yes) / P(no) with log-odds.
use crate::hooks::Hooks;
use crate::model::{LogitsAt, Model};
use crate::text::tokenizer::Tokenizer;
use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};

/// Probabilities are clipped to `[PROB_CLIP, 1 - PROB_CLIP]` before taking logs.
pub const PROB_CLIP: f64 = 1e-7;

/// A set of token ids whose probabilities are summed (e.g. the variants of "yes").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenSet {
    pub label: String,
    pub ids: Vec<u32>,
    /// The decoded text of each id (for reports: which ids were counted).
    pub tokens: Vec<String>,
}

impl TokenSet {
    /// An explicit set; errors when empty.
    pub fn new(label: impl Into<String>, ids: Vec<u32>, tok: Option<&Tokenizer>) -> Result<Self> {
        let label = label.into();
        ensure!(!ids.is_empty(), "token set {label:?} is empty");
        let mut uniq = Vec::with_capacity(ids.len());
        for i in ids {
            if !uniq.contains(&i) {
                uniq.push(i);
            }
        }
        let tokens = uniq.iter().map(|&i| tok.map_or_else(|| format!("#{i}"), |t| t.token_str(i))).collect();
        Ok(Self { label, ids: uniq, tokens })
    }

    /// The single-token spellings of `word` this tokenizer has, among: with and without a leading
    /// space, lower case, capitalised and upper case (`" yes"`, `"yes"`, `" Yes"`, `"Yes"`,
    /// `" YES"`, `"YES"`). Spellings that take several tokens are skipped; none at all is an
    /// error naming the word.
    pub fn word_variants(tok: &Tokenizer, word: &str) -> Result<Self> {
        let w = word.trim();
        ensure!(!w.is_empty(), "token set: empty word");
        let lower = w.to_lowercase();
        let mut cap = String::new();
        let mut chars = lower.chars();
        if let Some(c) = chars.next() {
            cap.extend(c.to_uppercase());
            cap.push_str(chars.as_str());
        }
        let upper = w.to_uppercase();
        let mut forms: Vec<String> = vec![];
        for base in [&lower, &cap, &upper] {
            for f in [format!(" {base}"), base.clone()] {
                if !forms.contains(&f) {
                    forms.push(f);
                }
            }
        }
        let mut ids = vec![];
        for f in &forms {
            if let [id] = tok.encode(f)?.as_slice() {
                if !ids.contains(id) {
                    ids.push(*id);
                }
            }
        }
        if ids.is_empty() {
            bail!("the tokenizer has no single token for the word {w:?} (tried {forms:?}; each takes several tokens)");
        }
        Self::new(w, ids, Some(tok))
    }

    fn check(&self, vocab: usize) -> Result<()> {
        ensure!(!self.ids.is_empty(), "token set {:?} is empty", self.label);
        if let Some(bad) = self.ids.iter().find(|&&i| i as usize >= vocab) {
            bail!("token set {:?}: id {bad} is outside the vocabulary (size {vocab})", self.label);
        }
        Ok(())
    }
}

/// `log Σ_{i∈set} softmax(logits)[i]` for each set, from one logits vector `[V]`.
pub fn set_logprobs(logits: &Tensor, sets: &[TokenSet]) -> Result<Vec<f64>> {
    let v = logits.dim(0)?;
    let lp: Vec<f64> = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F64)?, D::Minus1)?.to_vec1()?;
    sets.iter()
        .map(|s| {
            s.check(v)?;
            let xs: Vec<f64> = s.ids.iter().map(|&i| lp[i as usize]).collect();
            let m = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            Ok(m + xs.iter().map(|x| (x - m).exp()).sum::<f64>().ln())
        })
        .collect()
}

/// For each row of `prompts`, at each of its token indices `positions[r]`, the log-probability
/// of each set as the next token: `[row][position][set]`, from one forward with `hooks`.
pub fn token_logprobs(
    model: &Model,
    prompts: &[Vec<u32>],
    positions: &[Vec<usize>],
    sets: &[TokenSet],
    hooks: &Hooks,
) -> Result<Vec<Vec<Vec<f64>>>> {
    ensure!(!sets.is_empty(), "token readout: no token sets");
    ensure!(positions.len() == prompts.len(), "token readout: positions for {} rows, {} prompts", positions.len(), prompts.len());
    for s in sets {
        s.check(model.info.vocab_size)?;
    }
    for (r, (p, pos)) in prompts.iter().zip(positions).enumerate() {
        if let Some(bad) = pos.iter().find(|&&i| i >= p.len()) {
            bail!("token readout: row {r}: position {bad} is outside the prompt ({} tokens)", p.len());
        }
    }
    let out = model.forward_at(prompts, hooks, LogitsAt::All)?;
    let mut res = Vec::with_capacity(prompts.len());
    for (r, pos) in positions.iter().enumerate() {
        let lr = out.logits_row(r)?;
        let mut row = Vec::with_capacity(pos.len());
        for &i in pos {
            row.push(set_logprobs(&lr.get(i)?, sets).with_context(|| format!("row {r}, position {i}"))?);
        }
        res.push(row);
    }
    Ok(res)
}

/// P(yes), P(no) at one position and their log-odds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct YesNo {
    pub p_yes: f64,
    pub p_no: f64,
    /// `ln(clip(p_yes)) − ln(clip(p_no))`, probabilities clipped at [`PROB_CLIP`].
    pub log_odds: f64,
}

impl YesNo {
    /// From the log-probabilities of the yes and no sets.
    pub fn from_logprobs(lp_yes: f64, lp_no: f64) -> Self {
        let (p_yes, p_no) = (lp_yes.exp(), lp_no.exp());
        Self { p_yes, p_no, log_odds: log_odds(p_yes, p_no) }
    }
    /// From a logits vector `[V]`.
    pub fn from_logits(logits: &Tensor, yes: &TokenSet, no: &TokenSet) -> Result<Self> {
        let lp = set_logprobs(logits, &[yes.clone(), no.clone()])?;
        Ok(Self::from_logprobs(lp[0], lp[1]))
    }
}

/// `ln(clip(p_yes) / clip(p_no))`, each clipped to `[PROB_CLIP, 1 − PROB_CLIP]`.
pub fn log_odds(p_yes: f64, p_no: f64) -> f64 {
    let c = |p: f64| p.clamp(PROB_CLIP, 1.0 - PROB_CLIP);
    c(p_yes).ln() - c(p_no).ln()
}

/// `ln(p / (1 − p))` with `p` clipped to `[PROB_CLIP, 1 − PROB_CLIP]`.
pub fn logit(p: f64) -> f64 {
    let p = p.clamp(PROB_CLIP, 1.0 - PROB_CLIP);
    (p / (1.0 - p)).ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_logprobs_sum_the_members() {
        let l = Tensor::new(&[1.0f32, 2.0, 0.5, -1.0], &candle_core::Device::Cpu).unwrap();
        let z: f64 = [1.0f64, 2.0, 0.5, -1.0].iter().map(|x| x.exp()).sum();
        let s = TokenSet::new("a", vec![0, 2, 0], None).unwrap();
        assert_eq!(s.ids, vec![0, 2]);
        let got = set_logprobs(&l, &[s]).unwrap()[0];
        assert!((got - ((1f64.exp() + 0.5f64.exp()) / z).ln()).abs() < 1e-12);
        assert!(TokenSet::new("e", vec![], None).is_err());
        let bad = TokenSet { label: "x".into(), ids: vec![9], tokens: vec![] };
        assert!(set_logprobs(&l, &[bad]).unwrap_err().to_string().contains("outside the vocabulary"));
    }

    #[test]
    fn log_odds_clip() {
        assert!((log_odds(0.5, 0.25) - 2f64.ln()).abs() < 1e-12);
        assert!((log_odds(0.0, 1.0) - ((1e-7f64).ln() - (1.0 - 1e-7f64).ln())).abs() < 1e-9);
        assert!((logit(0.75) - 3f64.ln()).abs() < 1e-12);
    }
}
