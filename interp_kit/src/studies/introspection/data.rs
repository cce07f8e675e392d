//! The committed inputs (`datasets/introspection/`) and the conversations built from them.
//!
//! Every file is plain text, one entry per line; blank lines and lines starting with `#` are
//! skipped. `concepts.txt` lines are `concept<TAB>kind`.
use crate::interp::introspection::{ProtocolConfig, ProtocolPrompt, ProtocolTexts};
use crate::text::tokenizer::Tokenizer;
use anyhow::{ensure, Context, Result};
use std::path::Path;

/// Appended to a control question so that it asks for the same answer format as the detection
/// question.
pub const ANSWER_FORMAT: &str = "Start your answer with \"The answer is yes\" or \"The answer is no\".";

/// One concept of `concepts.txt`.
#[derive(Clone, Debug, PartialEq)]
pub struct Concept {
    pub name: String,
    pub kind: String,
}

/// The study's committed inputs.
#[derive(Clone, Debug, PartialEq)]
pub struct StudyData {
    pub concepts: Vec<Concept>,
    /// Openings of a reply for the concept extraction.
    pub suffixes: Vec<String>,
    /// Assistant turn 1 variants.
    pub replies: Vec<String>,
    /// Questions whose answer is "no".
    pub controls: Vec<String>,
    /// Neutral sentences for the sentence-localisation task.
    pub sentences: Vec<String>,
    /// Other phrasings of the detection question (the plan's "question phrasing" sweep), each
    /// asking for the same answer format.
    pub questions: Vec<String>,
}

/// The non-comment lines of `path` with their 1-based line numbers.
pub fn read_lines(path: &Path) -> Result<Vec<(usize, String)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_end().to_string()))
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .collect())
}

impl StudyData {
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let plain = |name: &str, min: usize| -> Result<Vec<String>> {
            let p = dir.join(name);
            let v: Vec<String> = read_lines(&p)?.into_iter().map(|(_, l)| l.trim().to_string()).collect();
            ensure!(v.len() >= min, "{}: {} entries, at least {min} needed", p.display(), v.len());
            let mut seen = std::collections::BTreeSet::new();
            for x in &v {
                ensure!(seen.insert(x.clone()), "{}: {x:?} appears twice", p.display());
            }
            Ok(v)
        };
        let cp = dir.join("concepts.txt");
        let mut concepts = vec![];
        for (line, l) in read_lines(&cp)? {
            let (name, kind) = l.split_once('\t').with_context(|| format!("{} line {line}: expected `concept<TAB>kind`", cp.display()))?;
            let (name, kind) = (name.trim(), kind.trim());
            ensure!(!name.is_empty() && !kind.is_empty(), "{} line {line}: empty concept or kind", cp.display());
            ensure!(!concepts.iter().any(|c: &Concept| c.name == name), "{} line {line}: concept {name:?} appears twice", cp.display());
            concepts.push(Concept { name: name.into(), kind: kind.into() });
        }
        ensure!(concepts.len() >= 4, "{}: {} concepts, at least 4 needed", cp.display(), concepts.len());
        Ok(Self {
            concepts,
            suffixes: plain("suffixes.txt", 2)?,
            replies: plain("replies.txt", 1)?,
            controls: plain("control_questions.txt", 1)?,
            sentences: plain("sentences.txt", 10)?,
            questions: plain("questions.txt", 1)?,
        })
    }
}

/// Which second user turn a conversation asks.
#[derive(Clone, Debug, PartialEq)]
pub enum Question {
    /// The detection question: phrasing 0 is the protocol's own, `i` is `questions.txt` entry `i`.
    Detect(usize),
    /// Control question `i` (answer "no") with [`ANSWER_FORMAT`].
    Control(usize),
    /// A task's own question and answer prefix.
    Custom { question: String, answer_prefix: String },
}

/// A conversation of the study: the protocol's texts with assistant turn 1 = `replies[reply]`,
/// the info paragraph on or off, the question, and optionally a replaced framing.
#[derive(Clone, Debug, PartialEq)]
pub struct Conversation {
    pub reply: usize,
    pub info: bool,
    pub question: Question,
    /// Replaces the framing (user turn 1's opening), e.g. by numbered sentences.
    pub framing: Option<String>,
}

impl Conversation {
    pub fn detect(reply: usize, info: bool) -> Self {
        Self { reply, info, question: Question::Detect(0), framing: None }
    }

    /// The protocol config of this conversation: its texts and info setting, with `base`'s choice
    /// of steered tokens.
    pub fn protocol(&self, data: &StudyData, base: &ProtocolConfig) -> Result<ProtocolConfig> {
        let mut texts = ProtocolTexts::default();
        texts.reply = data.replies.get(self.reply).with_context(|| format!("reply {} (replies.txt has {})", self.reply, data.replies.len()))?.clone();
        match &self.question {
            Question::Detect(0) => {}
            Question::Detect(i) => {
                texts.question = data.questions.get(*i - 1).with_context(|| format!("question phrasing {i} (questions.txt has {})", data.questions.len()))?.clone();
            }
            Question::Control(i) => {
                let q = data.controls.get(*i).with_context(|| format!("control question {i} (control_questions.txt has {})", data.controls.len()))?;
                texts.question = format!("{q} {ANSWER_FORMAT}");
            }
            Question::Custom { question, answer_prefix } => {
                texts.question = question.clone();
                texts.answer_prefix = answer_prefix.clone();
            }
        }
        if let Some(f) = &self.framing {
            texts.framing = f.clone();
        }
        Ok(ProtocolConfig { texts, info: self.info, ..base.clone() })
    }

    /// The built prompt (ids, steered positions, split).
    pub fn build(&self, data: &StudyData, tok: &Tokenizer, base: &ProtocolConfig) -> Result<ProtocolPrompt> {
        self.protocol(data, base)?.build(tok)
    }
}
