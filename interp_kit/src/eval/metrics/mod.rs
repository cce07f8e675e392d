//! Behaviour metrics of generated text: plain functions returning small serde structs, so a row
//! of results is `serde_json::to_value(metric)`.
//!
//! * [`refusal()`](refusal::refusal): weighted refusal / compliance phrases → score in [0, 1],
//!   `is_refusal`, matched phrases (plan 004 §6.1).
//! * [`helpfulness()`](helpfulness::helpfulness): length, steps / bullets / code, absence of
//!   refusal → score in [0, 1], `is_helpful` (§6.2).
//! * [`confounds()`](confounds::confounds): completion length, mean per-token entropy and mean
//!   log-probability from a [`Generation`](crate::generate::Generation) (§6.3).
//! * [`caps_fraction`]: share of capital letters among letters (the ALL-CAPS trait, plan 000).
//!
//! ```
//! use interp_kit::eval::metrics::{caps_fraction, helpfulness, refusal};
//! let r = refusal("I’m sorry, but I can’t help with that.");
//! assert!(r.is_refusal);
//! assert!(r.matched.contains(&"i can't help".to_string()));
//! assert!(!helpfulness("I’m sorry, but I can’t help with that.").is_helpful);
//! assert_eq!(caps_fraction("ABc d!"), 0.5);
//! ```
pub mod confounds;
pub mod helpfulness;
pub mod refusal;

pub use confounds::{confounds, Confounds};
pub use helpfulness::{helpfulness, Helpfulness};
pub use refusal::{refusal, RefusalDetector, RefusalScore};

/// Share of upper-case letters among alphabetic characters (Unicode-aware: `É` counts, digits and
/// punctuation do not). `0.0` for a text without letters.
pub fn caps_fraction(text: &str) -> f64 {
    let (mut letters, mut upper) = (0usize, 0usize);
    for c in text.chars().filter(|c| c.is_alphabetic()) {
        letters += 1;
        if c.is_uppercase() {
            upper += 1;
        }
    }
    if letters == 0 {
        0.0
    } else {
        upper as f64 / letters as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_by_hand() {
        assert_eq!(caps_fraction("HELLO WORLD"), 1.0);
        assert_eq!(caps_fraction("hello"), 0.0);
        // 3 capitals (H, W, É) among 12 letters; digits and punctuation ignored.
        assert_eq!(caps_fraction("Hello World é É 42!"), 3.0 / 12.0);
        assert_eq!(caps_fraction("123 ..."), 0.0);
        assert_eq!(caps_fraction(""), 0.0);
    }
}
