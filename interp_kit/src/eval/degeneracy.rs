//! A cheap, model-free degeneracy score of a generated text: does it read like language, or has
//! it collapsed into loops, gibberish or nothing? Steering at a large coefficient often produces
//! such text, and length- or phrase-based proxies (helpfulness, refusal) can rate it well; this
//! score lets them refuse to.
//!
//! # The rule
//! The text is split into *words* (maximal runs of letters, digits and inner apostrophes,
//! lowercased) and everything else.
//! * `repetition`: the larger of the repeated-3-gram and repeated-4-gram shares, where the
//!   repeated share of n-grams is `1 - distinct / total` over the word n-grams (0 for a text
//!   without repeats; `(k-n)/(k-n+1)` for one word said `k` times).
//! * `nonword_share`: the share of words that are not dictionary-ish (see [`is_wordlike`]:
//!   alphabetic words need a vowel when longer than 3 letters, at most 5 consonants in a row, at
//!   most 20 letters and at most one lower-to-upper case switch per 4 letters; letter-digit mixes at most 8 characters; digits
//!   and non-Latin scripts pass).
//! * `top_word_share`: the share of the most frequent word (counted from 6 words on; in prose
//!   it is below ~0.1, "the").
//! * `top_char_share`: the share of the most frequent non-space character (counted from 20
//!   characters on; `e` is ~0.12 of English letters).
//!
//! `score = max(repetition, nonword_share, clamp((top_word_share - 0.25) / 0.5),
//! clamp((top_char_share - 0.3) / 0.4))` in [0, 1], and 1 for a text without any word (empty,
//! whitespace or punctuation only). `is_degenerate = score >= THRESHOLD` (0.5).

use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

/// Score from which a text counts as degenerate.
pub const THRESHOLD: f64 = 0.5;

/// The degeneracy of one text and the parts it is made of.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Degeneracy {
    /// In [0, 1]; 0 reads like language, 1 is fully degenerate.
    pub score: f64,
    pub is_degenerate: bool,
    pub n_words: usize,
    /// `max` of the repeated 3-gram and 4-gram shares.
    pub repetition: f64,
    pub nonword_share: f64,
    pub top_word_share: f64,
    pub top_char_share: f64,
    /// No word at all (empty, whitespace or punctuation only).
    pub empty: bool,
}

fn words(text: &str) -> Vec<String> {
    let mut out = vec![];
    let mut cur = String::new();
    let chars: Vec<char> = text.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        let inner_apostrophe = matches!(c, '\'' | '\u{2019}')
            && !cur.is_empty()
            && chars.get(i + 1).is_some_and(|n| n.is_alphanumeric());
        if c.is_alphanumeric() || inner_apostrophe {
            cur.push(c);
        } else if !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn is_vowel(c: char) -> bool {
    matches!(c.to_ascii_lowercase(), 'a' | 'e' | 'i' | 'o' | 'u' | 'y')
}

/// Whether one word (as split by this module, original case) looks like a dictionary word, a
/// number or a short identifier. Only Latin-letter words are judged by spelling; words in other
/// scripts pass.
pub fn is_wordlike(word: &str) -> bool {
    let parts: Vec<&str> = word.split(['\'', '\u{2019}']).filter(|p| !p.is_empty()).collect();
    if parts.is_empty() {
        return false;
    }
    parts.iter().all(|p| part_wordlike(p))
}

fn part_wordlike(p: &str) -> bool {
    let n = p.chars().count();
    let (letters, digits) = (p.chars().filter(|c| c.is_alphabetic()).count(), p.chars().filter(|c| c.is_numeric()).count());
    if digits == n {
        return true;
    }
    if letters > 0 && digits > 0 {
        return n <= 8;
    }
    if !p.chars().all(|c| c.is_ascii_alphabetic()) {
        // Other scripts (CJK has no spaces, so a "word" there can be a whole clause).
        return p.chars().all(|c| c.is_alphabetic());
    }
    if n > 20 {
        return false;
    }
    if n > 3 && !p.chars().any(is_vowel) {
        return false;
    }
    let mut run = 0;
    for c in p.chars() {
        run = if is_vowel(c) { 0 } else { run + 1 };
        if run > 5 {
            return false;
        }
    }
    // Case: lower, UPPER, Capitalised or camelCase; letter soup switches from lower to upper
    // case far more often (at most one switch per 4 letters here).
    let cs: Vec<char> = p.chars().collect();
    let switches = cs.windows(2).filter(|w| w[0].is_ascii_lowercase() && w[1].is_ascii_uppercase()).count();
    n <= 3 || 4 * switches <= n
}

fn repeated_share(words: &[String], n: usize) -> f64 {
    if words.len() < n + 1 {
        return 0.0;
    }
    let grams: Vec<&[String]> = words.windows(n).collect();
    let distinct: HashSet<&[String]> = grams.iter().copied().collect();
    1.0 - distinct.len() as f64 / grams.len() as f64
}

fn clamp01(x: f64) -> f64 {
    x.clamp(0.0, 1.0)
}

/// The degeneracy of `text` (see the module documentation for the rule).
pub fn degeneracy(text: &str) -> Degeneracy {
    let raw = words(text);
    let n_words = raw.len();
    if n_words == 0 {
        return Degeneracy {
            score: 1.0,
            is_degenerate: true,
            n_words: 0,
            repetition: 0.0,
            nonword_share: 0.0,
            top_word_share: 0.0,
            top_char_share: 0.0,
            empty: true,
        };
    }
    let nonword_share = raw.iter().filter(|w| !is_wordlike(w)).count() as f64 / n_words as f64;
    let lower: Vec<String> = raw.iter().map(|w| w.to_lowercase()).collect();
    let repetition = repeated_share(&lower, 3).max(repeated_share(&lower, 4));
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for w in &lower {
        *counts.entry(w.as_str()).or_default() += 1;
    }
    let top_word_share =
        if n_words >= 6 { *counts.values().max().expect("non-empty") as f64 / n_words as f64 } else { 0.0 };
    let mut chars: HashMap<char, usize> = HashMap::new();
    let mut n_chars = 0usize;
    for c in text.chars().filter(|c| !c.is_whitespace()) {
        *chars.entry(c.to_lowercase().next().unwrap_or(c)).or_default() += 1;
        n_chars += 1;
    }
    let top_char_share =
        if n_chars >= 20 { *chars.values().max().expect("non-empty") as f64 / n_chars as f64 } else { 0.0 };
    let score = repetition
        .max(nonword_share)
        .max(clamp01((top_word_share - 0.25) / 0.5))
        .max(clamp01((top_char_share - 0.3) / 0.4));
    Degeneracy {
        score,
        is_degenerate: score >= THRESHOLD,
        n_words,
        repetition,
        nonword_share,
        top_word_share,
        top_char_share,
        empty: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coherent_texts_score_low() {
        let texts = [
            "To bake bread, mix flour, water, salt and yeast, knead the dough for ten minutes, let it rise \
             for an hour, shape it and bake it at 220 C for about 35 minutes until the crust is brown.",
            "Paris is the capital of France.",
            "Yes.",
            "Here's a short Python example:\n```python\nfor i in range(10):\n    print(i * 2)\n```\nIt prints \
             the even numbers from 0 to 18, one per line.",
            "I'm sorry, but I can't help with that request. If you're worried about your safety, please \
             contact local emergency services or a trusted person nearby.",
            "The HTTP server listens on port 8080; set MAX_CONNECTIONS in the config file (e.g. to 64) and \
             restart it with systemctl.",
        ];
        for t in texts {
            let d = degeneracy(t);
            assert!(d.score < 0.2 && !d.is_degenerate, "{t:?}: {d:?}");
        }
        // Hand count for the first text: 38 words, no repeated 3- or 4-gram, all wordlike.
        let d = degeneracy(texts[0]);
        assert_eq!((d.n_words, d.repetition, d.nonword_share), (38, 0.0, 0.0), "{d:?}");
    }

    #[test]
    fn loops_score_high() {
        // One word said 20 times: 18 3-grams, one distinct -> 1 - 1/18 (the 4-grams give 1 - 1/17).
        let t = vec!["the"; 20].join(" ");
        let d = degeneracy(&t);
        assert!((d.repetition - (1.0 - 1.0 / 18.0)).abs() < 1e-12, "{d:?}");
        assert_eq!(d.top_word_share, 1.0);
        assert!(d.is_degenerate && d.score > 0.9);
        // A phrase loop.
        let t = "I can help with that. ".repeat(8);
        let d = degeneracy(&t);
        assert!(d.is_degenerate && d.repetition > 0.7, "{d:?}");
    }

    #[test]
    fn gibberish_and_collapse_score_high() {
        let gib = "xkqz vbnmrt qwrtpl zzxcv ghjkl prtzq wvbn mnbvcxz qqqwrt tplkjh";
        let d = degeneracy(gib);
        assert!(d.nonword_share >= 0.9 && d.is_degenerate, "{d:?}");
        for t in ["", "   \n\t", "!!!!!!!?????......"] {
            let d = degeneracy(t);
            assert!(d.empty && d.score == 1.0 && d.is_degenerate, "{t:?}: {d:?}");
        }
        // Collapse to one character with no spaces: one 40-letter non-word.
        let d = degeneracy(&"a".repeat(40));
        assert!(d.is_degenerate && d.top_char_share == 1.0, "{d:?}");
        // Punctuation storm after a word.
        let d = degeneracy(&format!("Sure{}", "!".repeat(30)));
        assert!(d.is_degenerate, "{d:?}");
    }

    #[test]
    fn steered_like_samples_are_degenerate() {
        // What an over-steered small model tends to write: a start that reads, then a collapse.
        let samples = [
            "Sure, here is how you can do it: helpful helpful helpful helpful helpful helpful helpful \
             helpful helpful helpful helpful helpful",
            "I cannot cannot assist assist assist assist assist assist assist assist assist assist assist",
            "Thewayto thewayto thewayto thewayto thewayto thewayto thewayto thewayto",
            "ulnerableulnerable ÜberUberUBER rrrrrr sssshhhh qxtprrz kkkjjjhhh ulnerableulnerable",
        ];
        for t in samples {
            let d = degeneracy(t);
            assert!(d.is_degenerate, "{t:?}: {d:?}");
        }
    }

    #[test]
    fn wordlike_rules() {
        for w in ["strengths", "rhythm", "I", "Paris", "NASA", "camelCase", "h2o", "sha256", "2024", "don't", "日本語", "привет"] {
            assert!(is_wordlike(w), "{w}");
        }
        for w in ["xkqz", "bcdfgh", "aVeRyOdD", "supercalifragilisticexpialidocious", "abc123def456"] {
            assert!(!is_wordlike(w), "{w}");
        }
    }
}
