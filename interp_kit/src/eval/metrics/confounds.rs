//! Confound metrics of a generation (plan 004 §6.3): its length, mean per-token entropy and mean
//! log-probability, read from the [`Generation`] itself (the entropies and log-probabilities the
//! generator recorded at each step, under the unsteered temperature-1 distribution of the steered
//! model).
use crate::generate::Generation;
use serde::{Deserialize, Serialize};

/// Length, entropy and log-probability of one completion.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Confounds {
    /// Generated tokens (an end-of-sequence token that stopped the row is not counted).
    pub n_tokens: usize,
    /// Mean entropy (nats) of the next-token distribution over the generated steps; `None` for
    /// an empty completion.
    pub mean_entropy: Option<f64>,
    /// Mean log-probability (nats) of the chosen tokens; `None` for an empty completion.
    pub mean_logprob: Option<f64>,
    /// Whether the row ended at an end-of-sequence token (else it hit `max_new_tokens`).
    pub stopped_at_eos: bool,
}

fn mean(xs: &[f32]) -> Option<f64> {
    (!xs.is_empty()).then(|| xs.iter().map(|x| *x as f64).sum::<f64>() / xs.len() as f64)
}

/// The confounds of `g`.
pub fn confounds(g: &Generation) -> Confounds {
    Confounds {
        n_tokens: g.tokens.len(),
        mean_entropy: mean(&g.entropies),
        mean_logprob: mean(&g.logprobs),
        stopped_at_eos: g.stopped_at_eos,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_hand() {
        let g = Generation {
            tokens: vec![5, 6, 7, 8],
            text: "abcd".into(),
            logprobs: vec![-0.5, -1.5, -0.25, -0.75],
            entropies: vec![1.0, 2.0, 0.5, 0.5],
            stopped_at_eos: true,
        };
        let c = confounds(&g);
        assert_eq!(c.n_tokens, 4);
        assert_eq!(c.mean_logprob, Some(-0.75));
        assert_eq!(c.mean_entropy, Some(1.0));
        assert!(c.stopped_at_eos);
        let empty = Generation { tokens: vec![], text: String::new(), logprobs: vec![], entropies: vec![], stopped_at_eos: true };
        let c = confounds(&empty);
        assert_eq!((c.n_tokens, c.mean_entropy, c.mean_logprob), (0, None, None));
    }
}
