//! BOS audit: how many beginning-of-sequence tokens lead a token sequence, against what the
//! model expects.
//!
//! A model trained with a BOS (Llama-3 `<|begin_of_text|>`, Gemma `<bos>`) must see exactly one,
//! at position 0. Two easy mistakes break that: no BOS on a plain prompt (the text tokenized
//! without special tokens), and a double BOS (a chat template that writes `<bos>` itself, whose
//! text is then tokenized *with* special tokens, as `tokenizer(apply_chat_template(..))` does in
//! `transformers`). Both change every activation downstream without any error.
//!
//! What the model expects comes from the tokenizer ([`Tokenizer::bos_id`]): `add_bos_token` in
//! `tokenizer_config.json` (or, without that key, whether `tokenizer.json`'s post-processor
//! prepends the BOS), or `tokenizer.ggml.add_bos_token` in a GGUF. Models without a BOS (Qwen,
//! GPT-2, GPT-NeoX) expect none; a sequence that starts with their `bos_token` string's id
//! anyway is reported ([`BosAudit::matches_expected`] is false) but not an error, because a GGUF
//! without the `add_bos_token` key says "no BOS" for models whose template writes one.
//!
//! [`audit`] reports; [`check`] turns a double, missing or misplaced BOS into an error that names
//! the positions: a double BOS names both positions, a missing one names the id expected at
//! position 0.
//!
//! ```no_run
//! use interp_kit::text::{bos, tokenizer::Tokenizer, chat::Chat};
//! let tok = Tokenizer::from_hf_dir(std::path::Path::new("models/gemma-2-2b-it"))?;
//! let r = tok.render_chat(&Chat::new().user("Hi"), true)?;
//! bos::check(&tok, &r.ids)?;                       // one <bos>: fine
//! let mut twice = vec![tok.bos_id().unwrap()];
//! twice.extend(&r.ids);                             // what tokenizer(template text) gives
//! assert!(bos::check(&tok, &twice).is_err());       // "double BOS at positions 0 and 1"
//! # anyhow::Ok(())
//! ```

use crate::text::tokenizer::Tokenizer;
use anyhow::{bail, Result};
use serde::Serialize;

/// The BOS facts of one token sequence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BosAudit {
    /// The id looked for: the model's BOS, or (for models that expect none) the id of its
    /// `bos_token` string, if it has one.
    pub bos_id: Option<u32>,
    /// BOS tokens the model expects at the start: 1 or 0.
    pub expected: usize,
    /// BOS tokens leading the sequence (a run from position 0).
    pub leading: usize,
    /// Every position of `bos_id` in the sequence.
    pub positions: Vec<usize>,
}

impl BosAudit {
    /// True when [`BosAudit::ensure_ok`] passes: no double, missing or misplaced BOS.
    pub fn is_ok(&self) -> bool {
        self.problem().is_none()
    }

    /// True when the leading BOS count equals the expected one and no BOS occurs later.
    pub fn matches_expected(&self) -> bool {
        self.leading == self.expected && self.positions.len() == self.leading
    }

    fn problem(&self) -> Option<String> {
        let id = self.bos_id.map_or_else(|| "?".to_string(), |b| b.to_string());
        if self.positions.len() >= 2 && (self.expected == 1 || self.leading >= 2) {
            let (a, b) = (self.positions[0], self.positions[1]);
            return Some(format!(
                "double BOS: BOS id {id} at positions {a} and {b} ({} in all); the model expects exactly one, at \
                 position 0 (a template that writes its own BOS must be tokenized without adding special tokens)",
                self.positions.len()
            ));
        }
        if self.expected == 1 && self.leading == 0 {
            return Some(match self.positions.first() {
                Some(p) => format!("BOS id {id} is at position {p}, not 0: the model expects it first"),
                None => format!("missing BOS: the model expects BOS id {id} at position 0 and the sequence has none"),
            });
        }
        None
    }

    /// `Ok` when [`BosAudit::is_ok`], else an error that names the positions.
    pub fn ensure_ok(&self) -> Result<()> {
        match self.problem() {
            None => Ok(()),
            Some(p) => bail!("{p}"),
        }
    }
}

/// The id whose count is audited: the model's BOS, else the id of the `bos_token` string.
fn audited_id(tok: &Tokenizer) -> Option<u32> {
    tok.bos_id().or_else(|| {
        tok.special_tokens().iter().find(|(n, _)| n == "bos_token").and_then(|(_, content)| tok.token_id(content))
    })
}

/// Counts the BOS tokens of `ids` against what `tok`'s model expects (no error).
pub fn audit(tok: &Tokenizer, ids: &[u32]) -> BosAudit {
    let bos_id = audited_id(tok);
    let expected = usize::from(tok.bos_id().is_some());
    let (leading, positions) = match bos_id {
        None => (0, vec![]),
        Some(b) => (
            ids.iter().take_while(|&&i| i == b).count(),
            ids.iter().enumerate().filter(|(_, &i)| i == b).map(|(p, _)| p).collect(),
        ),
    };
    BosAudit { bos_id, expected, leading, positions }
}

/// [`audit`], erroring on a double, missing or misplaced BOS.
pub fn check(tok: &Tokenizer, ids: &[u32]) -> Result<BosAudit> {
    let a = audit(tok, ids);
    a.ensure_ok()?;
    Ok(a)
}
