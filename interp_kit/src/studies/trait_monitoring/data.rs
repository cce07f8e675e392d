//! The trait datasets of the trait-monitoring study (`datasets/trait_monitoring/`):
//!
//! * `traits.jsonl`, one trait per line: `trait` (name), `scorer` (`caps`: 100 × share of capital
//!   letters; `refusal`: 100 × the refusal metric's score; `judge`: the LLM judge with the trait's
//!   own `judge` template, fields `{prompt}`, `{completion}` and `{max}` = the top of the judge's
//!   integer scale), `description`, `positive` and `negative` (contrasting system instructions,
//!   paired by index, at least one each and as many of one as of the other);
//! * `questions.jsonl`, one question per line: `trait`, `id` (unique), `split` (`extract` or
//!   `eval`) and `question`.
//!
//! Every error names the file, the line (1-based) and the field.
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// How a trait is scored on a response, 0-100.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scorer {
    Caps,
    Refusal,
    Judge,
}

impl Scorer {
    pub fn name(self) -> &'static str {
        match self {
            Scorer::Caps => "caps",
            Scorer::Refusal => "refusal",
            Scorer::Judge => "judge",
        }
    }
}

/// One trait with its contrasting instructions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraitDef {
    pub name: String,
    pub scorer: Scorer,
    pub description: String,
    /// The trait judge's template (scorer `judge` only).
    pub judge: Option<String>,
    pub positive: Vec<String>,
    pub negative: Vec<String>,
}

/// One question of a trait.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Question {
    pub trait_name: String,
    pub id: String,
    pub split: String,
    pub question: String,
}

/// Both files of a dataset directory.
#[derive(Clone, Debug, PartialEq)]
pub struct TraitData {
    pub dir: PathBuf,
    pub traits: Vec<TraitDef>,
    pub questions: Vec<Question>,
}

pub const SPLITS: [&str; 2] = ["extract", "eval"];

fn field<'a>(v: &'a Value, name: &str, file: &Path, line: usize) -> Result<&'a Value> {
    v.get(name).with_context(|| format!("{} line {line}: field `{name}`: missing", file.display()))
}

fn str_field(v: &Value, name: &str, file: &Path, line: usize) -> Result<String> {
    let s = field(v, name, file, line)?
        .as_str()
        .with_context(|| format!("{} line {line}: field `{name}`: expected a string", file.display()))?;
    ensure!(!s.trim().is_empty(), "{} line {line}: field `{name}`: empty", file.display());
    Ok(s.to_string())
}

fn str_list(v: &Value, name: &str, file: &Path, line: usize) -> Result<Vec<String>> {
    let a = field(v, name, file, line)?
        .as_array()
        .with_context(|| format!("{} line {line}: field `{name}`: expected a list of strings", file.display()))?;
    ensure!(!a.is_empty(), "{} line {line}: field `{name}`: empty list", file.display());
    a.iter()
        .enumerate()
        .map(|(i, x)| match x.as_str() {
            Some(s) if !s.trim().is_empty() => Ok(s.to_string()),
            _ => bail!("{} line {line}: field `{name}[{i}]`: expected a non-empty string", file.display()),
        })
        .collect()
}

/// The JSON objects of a JSONL file with their 1-based line numbers (blank lines skipped).
fn lines(path: &Path) -> Result<Vec<(usize, Value)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = vec![];
    for (i, l) in text.lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(l).with_context(|| format!("{} line {}: not valid JSON", path.display(), i + 1))?;
        ensure!(v.is_object(), "{} line {}: expected a JSON object", path.display(), i + 1);
        out.push((i + 1, v));
    }
    ensure!(!out.is_empty(), "{}: no records", path.display());
    Ok(out)
}

/// Reads `traits.jsonl`.
pub fn read_traits(path: &Path) -> Result<Vec<TraitDef>> {
    let mut out: Vec<TraitDef> = vec![];
    for (line, v) in lines(path)? {
        let name = str_field(&v, "trait", path, line)?;
        ensure!(!out.iter().any(|t| t.name == name), "{} line {line}: field `trait`: {name:?} is given twice", path.display());
        let scorer = match str_field(&v, "scorer", path, line)?.as_str() {
            "caps" => Scorer::Caps,
            "refusal" => Scorer::Refusal,
            "judge" => Scorer::Judge,
            other => bail!("{} line {line}: field `scorer`: {other:?} is not caps, refusal or judge", path.display()),
        };
        let judge = match scorer {
            Scorer::Judge => {
                let j = str_field(&v, "judge", path, line)?;
                for f in ["{prompt}", "{completion}", "{max}"] {
                    ensure!(j.contains(f), "{} line {line}: field `judge`: the template has no {f}", path.display());
                }
                Some(j)
            }
            _ => None,
        };
        let positive = str_list(&v, "positive", path, line)?;
        let negative = str_list(&v, "negative", path, line)?;
        ensure!(
            positive.len() == negative.len(),
            "{} line {line}: field `negative`: {} instructions for {} positive ones (they are paired)",
            path.display(),
            negative.len(),
            positive.len()
        );
        out.push(TraitDef { name, scorer, description: str_field(&v, "description", path, line)?, judge, positive, negative });
    }
    Ok(out)
}

/// Reads `questions.jsonl`; `traits` are the known trait names.
pub fn read_questions(path: &Path, traits: &BTreeSet<String>) -> Result<Vec<Question>> {
    let mut ids = BTreeSet::new();
    let mut out = vec![];
    for (line, v) in lines(path)? {
        let trait_name = str_field(&v, "trait", path, line)?;
        ensure!(traits.contains(&trait_name), "{} line {line}: field `trait`: {trait_name:?} is not in traits.jsonl", path.display());
        let id = str_field(&v, "id", path, line)?;
        ensure!(ids.insert(id.clone()), "{} line {line}: field `id`: {id:?} is given twice", path.display());
        let split = str_field(&v, "split", path, line)?;
        ensure!(SPLITS.contains(&split.as_str()), "{} line {line}: field `split`: {split:?} is not extract or eval", path.display());
        out.push(Question { trait_name, id, split, question: str_field(&v, "question", path, line)? });
    }
    Ok(out)
}

impl TraitData {
    /// Reads `dir/traits.jsonl` and `dir/questions.jsonl`; every trait needs questions in both splits.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let traits = read_traits(&dir.join("traits.jsonl"))?;
        let names: BTreeSet<String> = traits.iter().map(|t| t.name.clone()).collect();
        let questions = read_questions(&dir.join("questions.jsonl"), &names)?;
        let d = TraitData { dir, traits, questions };
        for t in &d.traits {
            for s in SPLITS {
                ensure!(!d.questions_of(&t.name, s).is_empty(), "{}: trait {:?} has no {s} questions", d.dir.join("questions.jsonl").display(), t.name);
            }
        }
        Ok(d)
    }

    pub fn trait_def(&self, name: &str) -> Result<&TraitDef> {
        self.traits.iter().find(|t| t.name == name).with_context(|| {
            format!("trait {name:?} is not in {} (known: {:?})", self.dir.join("traits.jsonl").display(), self.traits.iter().map(|t| &t.name).collect::<Vec<_>>())
        })
    }

    /// The questions of `trait_name` in `split`, in file order.
    pub fn questions_of(&self, trait_name: &str, split: &str) -> Vec<&Question> {
        self.questions.iter().filter(|q| q.trait_name == trait_name && q.split == split).collect()
    }

    /// Questions per trait and split.
    pub fn counts(&self) -> BTreeMap<(String, String), usize> {
        let mut m = BTreeMap::new();
        for q in &self.questions {
            *m.entry((q.trait_name.clone(), q.split.clone())).or_insert(0) += 1;
        }
        m
    }
}
