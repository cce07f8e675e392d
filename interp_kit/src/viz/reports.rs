//! A small markdown builder for reports such as `reports/examples.md`: headings, paragraphs,
//! lists, tables (from rows or a DataFrame) and fenced blocks for model completions, with the
//! escaping that keeps arbitrary model output from breaking the document.
//!
//! ```
//! use interp_kit::viz::reports::Markdown;
//! let mut md = Markdown::new();
//! md.heading(1, "Examples")
//!     .heading(2, "harm_test, layer 12, α = 4")
//!     .table(&["score", "matched"], &[vec!["0.8".into(), "I can't | won't".into()]])
//!     .completion("baseline", "Sure! ```rm -rf``` is ...");
//! assert!(md.as_str().contains("I can't \\| won't"));
//! ```
use anyhow::Result;
use polars::prelude::DataFrame;
use crate::tables::markdown::{escape_cell, escape_inline, fence_for};
use std::path::Path;

/// A markdown document under construction. Methods append blocks separated by blank lines and
/// return `&mut Self` so they chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Markdown {
    buf: String,
}

impl Markdown {
    pub fn new() -> Self {
        Self::default()
    }

    fn block(&mut self, s: &str) -> &mut Self {
        if !self.buf.is_empty() && !self.buf.ends_with("\n\n") {
            if !self.buf.ends_with('\n') {
                self.buf.push('\n');
            }
            self.buf.push('\n');
        }
        self.buf.push_str(s);
        if !s.ends_with('\n') {
            self.buf.push('\n');
        }
        self
    }

    /// A heading of level 1–6 (clamped) with escaped text.
    pub fn heading(&mut self, level: usize, text: &str) -> &mut Self {
        let level = level.clamp(1, 6);
        self.block(&format!("{} {}", "#".repeat(level), escape_inline(text)))
    }

    /// A paragraph of plain text (escaped).
    pub fn text(&mut self, text: &str) -> &mut Self {
        self.block(&escape_inline(text))
    }

    /// Markdown inserted as is (for formatting the caller controls).
    pub fn raw(&mut self, md: &str) -> &mut Self {
        self.block(md)
    }

    /// A bulleted list of plain-text items (escaped).
    pub fn bullets<S: AsRef<str>>(&mut self, items: impl IntoIterator<Item = S>) -> &mut Self {
        let s: Vec<String> = items.into_iter().map(|i| format!("- {}", escape_inline(i.as_ref()))).collect();
        if s.is_empty() {
            return self;
        }
        self.block(&s.join("\n"))
    }

    /// `**key**: value` lines, one per pair (escaped), e.g. scores under a completion.
    pub fn fields<K: AsRef<str>, V: AsRef<str>>(&mut self, pairs: impl IntoIterator<Item = (K, V)>) -> &mut Self {
        let s: Vec<String> = pairs
            .into_iter()
            .map(|(k, v)| format!("- **{}**: {}", escape_inline(k.as_ref()), escape_inline(v.as_ref())))
            .collect();
        if s.is_empty() {
            return self;
        }
        self.block(&s.join("\n"))
    }

    /// A table from a header and rows of cells (escaped; a short row is padded with empty cells).
    pub fn table<H: AsRef<str>>(&mut self, header: &[H], rows: &[Vec<String>]) -> &mut Self {
        let n = header.len().max(rows.iter().map(Vec::len).max().unwrap_or(0));
        if n == 0 {
            return self;
        }
        let cell = |v: Option<&str>| escape_cell(v.unwrap_or(""));
        let mut s = String::new();
        s.push_str(&format!(
            "| {} |\n",
            (0..n).map(|i| cell(header.get(i).map(|h| h.as_ref()))).collect::<Vec<_>>().join(" | ")
        ));
        s.push_str(&format!("|{}|\n", vec!["---"; n].join("|")));
        for r in rows {
            s.push_str(&format!("| {} |\n", (0..n).map(|i| cell(r.get(i).map(|c| c.as_str()))).collect::<Vec<_>>().join(" | ")));
        }
        self.block(&s)
    }

    /// A DataFrame as a table (floats with `digits` decimals, all rows).
    pub fn dataframe(&mut self, df: &DataFrame, digits: usize) -> &mut Self {
        let md = crate::tables::pretty(df).digits(digits).max_rows(usize::MAX).to_markdown();
        self.block(&md)
    }

    /// A fenced code block in `lang` (may be empty); the fence outgrows any backticks inside.
    pub fn code(&mut self, lang: &str, text: &str) -> &mut Self {
        let fence = fence_for(text);
        let body = text.strip_suffix('\n').unwrap_or(text);
        self.block(&format!("{fence}{lang}\n{body}\n{fence}"))
    }

    /// A model completion: a bold label line, then the text verbatim in a fenced `text` block.
    pub fn completion(&mut self, label: &str, text: &str) -> &mut Self {
        self.block(&format!("**{}**", escape_inline(label)));
        self.code("text", text)
    }

    /// A horizontal rule.
    pub fn rule(&mut self) -> &mut Self {
        self.block("---")
    }

    pub fn as_str(&self) -> &str {
        &self.buf
    }

    /// Write the document atomically.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        crate::base::io::write_atomic(path, &self.buf)
    }

    /// evcxr's rich display hook: rendered as markdown, with the source as plain text.
    pub fn evcxr_display(&self) {
        println!("EVCXR_BEGIN_CONTENT text/markdown\n{}\nEVCXR_END_CONTENT", self.buf);
        println!("EVCXR_BEGIN_CONTENT text/plain\n{}\nEVCXR_END_CONTENT", self.buf);
    }
}

impl std::fmt::Display for Markdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.buf)
    }
}
