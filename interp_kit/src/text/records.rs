//! Prompt sets: JSONL records with line-numbered errors, and CSV / JSON ingestion.
//!
//! A record is one line of JSON, the plan's schema:
//! `{"id":"harm_train_0001","prompt":"...","meta":{"family":"theft","style":"direct",...}}`.
//!
//! ```no_run
//! use interp_kit::text::records::read_jsonl;
//! let train = read_jsonl("datasets/steering_reliability/harm_train.jsonl")?;
//! assert_eq!(train[0].id, "harm_train_0001");
//! # anyhow::Ok(())
//! ```
//!
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::base::io::write_atomic;

/// Metadata of a prompt: `family` and `style` (empty when unknown) and any other fields.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
pub struct PromptMeta {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub family: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub style: String,
    /// Everything else (the generator writes `subfamily` and `template`).
    #[serde(flatten)]
    pub extra: BTreeMap<String, Json>,
}

impl PromptMeta {
    /// A string field of `extra` (empty if absent or not a string).
    pub fn get(&self, key: &str) -> &str {
        match key {
            "family" => &self.family,
            "style" => &self.style,
            _ => self.extra.get(key).and_then(|v| v.as_str()).unwrap_or(""),
        }
    }
}

/// One prompt of a set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PromptRecord {
    pub id: String,
    pub prompt: String,
    #[serde(default)]
    pub meta: PromptMeta,
}

/// The prompts of `records`.
pub fn prompts_of(records: &[PromptRecord]) -> Vec<String> {
    records.iter().map(|r| r.prompt.clone()).collect()
}

/// Checks ids are non-empty and unique and prompts non-empty; `loc(i)` names record `i`.
fn validate(records: &[PromptRecord], what: &str, loc: impl Fn(usize) -> String) -> Result<()> {
    ensure!(!records.is_empty(), "{what}: no prompts (an empty split is an error)");
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, r) in records.iter().enumerate() {
        ensure!(!r.id.trim().is_empty(), "{}: empty id", loc(i));
        ensure!(!r.prompt.trim().is_empty(), "{}: empty prompt (id {})", loc(i), r.id);
        if let Some(j) = seen.insert(&r.id, i) {
            bail!("{}: duplicate id {:?} (first at {})", loc(i), r.id, loc(j));
        }
    }
    Ok(())
}

/// Reads a JSONL prompt file. Blank lines are skipped; a malformed line, an empty id or prompt, a
/// duplicate id or an empty file is an error naming the file and line.
pub fn read_jsonl(path: impl AsRef<Path>) -> Result<Vec<PromptRecord>> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut records = Vec::new();
    let mut lines = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let r: PromptRecord =
            serde_json::from_str(line).with_context(|| format!("{}:{}: not a prompt record", path.display(), i + 1))?;
        records.push(r);
        lines.push(i + 1);
    }
    validate(&records, &path.display().to_string(), |k| format!("{}:{}", path.display(), lines[k]))?;
    Ok(records)
}

/// The JSONL text of `records` (one compact JSON object per line, `\n`-terminated).
pub fn to_jsonl(records: &[PromptRecord]) -> Result<String> {
    let mut s = String::new();
    for r in records {
        s.push_str(&serde_json::to_string(r)?);
        s.push('\n');
    }
    Ok(s)
}

/// Writes `records` as JSONL, atomically; an empty set or duplicate ids are errors.
pub fn write_jsonl(path: impl AsRef<Path>, records: &[PromptRecord]) -> Result<()> {
    let path = path.as_ref();
    validate(records, &path.display().to_string(), |i| format!("record {i}"))?;
    write_atomic(path, to_jsonl(records)?.as_bytes())
}

fn meta_from_fields(fields: impl IntoIterator<Item = (String, Json)>) -> PromptMeta {
    let mut meta = PromptMeta::default();
    for (k, v) in fields {
        match (k.as_str(), &v) {
            ("family", Json::String(s)) => meta.family = s.clone(),
            ("style", Json::String(s)) => meta.style = s.clone(),
            ("meta", Json::Object(m)) => {
                let inner = meta_from_fields(m.clone());
                if !inner.family.is_empty() {
                    meta.family = inner.family;
                }
                if !inner.style.is_empty() {
                    meta.style = inner.style;
                }
                meta.extra.extend(inner.extra);
            }
            _ => {
                meta.extra.insert(k, v);
            }
        }
    }
    meta
}

/// Reads a CSV file with a header: column `prompt` (required), `id` (optional: else
/// `{id_prefix}_{0001..}`), `family` / `style` into those fields, every other column into
/// `meta` as a string. Errors name the file and line.
pub fn ingest_csv(path: impl AsRef<Path>, id_prefix: &str) -> Result<Vec<PromptRecord>> {
    let path = path.as_ref();
    let mut rd = csv::Reader::from_path(path).with_context(|| format!("opening {}", path.display()))?;
    let header: Vec<String> = rd.headers().with_context(|| format!("{}:1: bad header", path.display()))?.iter().map(|h| h.trim().to_string()).collect();
    let pi = header
        .iter()
        .position(|h| h == "prompt")
        .with_context(|| format!("{}:1: no `prompt` column (columns: {header:?})", path.display()))?;
    let ii = header.iter().position(|h| h == "id");
    let mut records = Vec::new();
    let mut lines = Vec::new();
    for (k, row) in rd.records().enumerate() {
        let row = row.with_context(|| format!("{}: record {}", path.display(), k + 1))?;
        let line = row.position().map_or(k + 2, |p| p.line() as usize);
        let get = |i: usize| row.get(i).unwrap_or("").to_string();
        let id = match ii {
            Some(i) if !get(i).trim().is_empty() => get(i),
            _ => format!("{id_prefix}_{:04}", k + 1),
        };
        let fields = header
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != pi && Some(*i) != ii)
            .map(|(i, h)| (h.clone(), Json::String(get(i))));
        records.push(PromptRecord { id, prompt: get(pi), meta: meta_from_fields(fields) });
        lines.push(line);
    }
    validate(&records, &path.display().to_string(), |k| format!("{}:{}", path.display(), lines[k]))?;
    Ok(records)
}

/// Reads a JSON file holding an array of prompt strings or of objects with a `prompt` string,
/// an optional `id` (string or number; else `{id_prefix}_{0001..}`), an optional `meta` object
/// and any other fields (which go to `meta`). Errors name the file and element.
pub fn ingest_json(path: impl AsRef<Path>, id_prefix: &str) -> Result<Vec<PromptRecord>> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: Json = serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    let items = v.as_array().with_context(|| format!("{}: expected a JSON array of prompts", path.display()))?;
    let loc = |k: usize| format!("{}: element {k}", path.display());
    let mut records = Vec::new();
    for (k, item) in items.iter().enumerate() {
        let default_id = format!("{id_prefix}_{:04}", k + 1);
        let r = match item {
            Json::String(s) => PromptRecord { id: default_id, prompt: s.clone(), meta: PromptMeta::default() },
            Json::Object(o) => {
                let prompt = o
                    .get("prompt")
                    .and_then(|p| p.as_str())
                    .with_context(|| format!("{}: no `prompt` string", loc(k)))?
                    .to_string();
                let id = match o.get("id") {
                    Some(Json::String(s)) => s.clone(),
                    Some(Json::Number(n)) => n.to_string(),
                    None | Some(Json::Null) => default_id,
                    Some(other) => bail!("{}: `id` must be a string or number, got {other}", loc(k)),
                };
                let fields = o.iter().filter(|(k, _)| *k != "prompt" && *k != "id").map(|(k, v)| (k.clone(), v.clone()));
                PromptRecord { id, prompt, meta: meta_from_fields(fields) }
            }
            other => bail!("{}: expected a string or an object, got {other}", loc(k)),
        };
        records.push(r);
    }
    validate(&records, &path.display().to_string(), loc)?;
    Ok(records)
}

/// Reads prompts by extension: `.jsonl` ([`read_jsonl`]), `.csv` ([`ingest_csv`]) or `.json`
/// ([`ingest_json`]).
pub fn ingest(path: impl AsRef<Path>, id_prefix: &str) -> Result<Vec<PromptRecord>> {
    let path = path.as_ref();
    match path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase()).as_deref() {
        Some("jsonl") => read_jsonl(path),
        Some("csv") => ingest_csv(path, id_prefix),
        Some("json") => ingest_json(path, id_prefix),
        _ => bail!("{}: unknown prompt file type (expected .jsonl, .csv or .json)", path.display()),
    }
}

/// Counts of `records` by `meta[key]`, sorted by key.
pub fn count_by(records: &[PromptRecord], key: &str) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for r in records {
        *m.entry(r.meta.get(key).to_string()).or_insert(0) += 1;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("interp_kit_data_{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d.join(name)
    }

    #[test]
    fn jsonl_round_trip_and_schema() {
        let recs: Vec<PromptRecord> = (1..=5)
            .map(|i| PromptRecord {
                id: format!("harm_train_{i:04}"),
                prompt: format!("prompt {i}"),
                meta: PromptMeta { family: "theft".into(), ..Default::default() },
            })
            .collect();
        let p = tmp("rt.jsonl");
        write_jsonl(&p, &recs).unwrap();
        assert_eq!(read_jsonl(&p).unwrap(), recs);
        let first = std::fs::read_to_string(&p).unwrap().lines().next().unwrap().to_string();
        assert!(first.starts_with("{\"id\":\"harm_train_0001\",\"prompt\":"), "{first}");
        assert!(first.contains("\"meta\":{\"family\":"), "{first}");
    }

    #[test]
    fn malformed_line_names_file_and_line() {
        let p = tmp("bad.jsonl");
        std::fs::write(&p, "{\"id\":\"a\",\"prompt\":\"x\"}\n\n{\"id\":\"b\",\"prompt\":}\n").unwrap();
        let e = format!("{:#}", read_jsonl(&p).unwrap_err());
        assert!(e.contains(&format!("{}:3", p.display())), "{e}");
        std::fs::write(&p, "{\"id\":\"a\",\"prompt\":\"x\"}\n{\"id\":\"a\",\"prompt\":\"y\"}\n").unwrap();
        let e = format!("{:#}", read_jsonl(&p).unwrap_err());
        assert!(e.contains(":2") && e.contains("duplicate id") && e.contains(":1"), "{e}");
        std::fs::write(&p, "\n\n").unwrap();
        let e = format!("{:#}", read_jsonl(&p).unwrap_err());
        assert!(e.contains("empty split"), "{e}");
        std::fs::write(&p, "{\"id\":\"a\",\"prompt\":\" \"}\n").unwrap();
        assert!(format!("{:#}", read_jsonl(&p).unwrap_err()).contains(":1: empty prompt"));
    }

    #[test]
    fn csv_and_json_ingestion() {
        let p = tmp("in.csv");
        std::fs::write(&p, "prompt,family,source\n\"Hello, world\",greeting,manual\nHow are you?,,chat\n").unwrap();
        let r = ingest(&p, "mine").unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].id, "mine_0001");
        assert_eq!(r[0].prompt, "Hello, world");
        assert_eq!(r[0].meta.family, "greeting");
        assert_eq!(r[0].meta.get("source"), "manual");
        assert_eq!(r[1].meta.family, "");
        let p = tmp("bad.csv");
        std::fs::write(&p, "text,id\nhello,1\n").unwrap();
        assert!(format!("{:#}", ingest(&p, "x").unwrap_err()).contains("no `prompt` column"));
        std::fs::write(&p, "prompt,id\nhello,1\nagain,1\n").unwrap();
        let e = format!("{:#}", ingest(&p, "x").unwrap_err());
        assert!(e.contains(&format!("{}:3", p.display())) && e.contains("duplicate"), "{e}");

        let p = tmp("in.json");
        std::fs::write(&p, r#"[{"prompt":"a?","id":7,"style":"slang","meta":{"family":"f","k":1}}, "b?"]"#).unwrap();
        let r = ingest(&p, "j").unwrap();
        assert_eq!((r[0].id.as_str(), r[0].meta.family.as_str(), r[0].meta.style.as_str()), ("7", "f", "slang"));
        assert_eq!(r[0].meta.extra["k"], Json::from(1));
        assert_eq!((r[1].id.as_str(), r[1].prompt.as_str()), ("j_0002", "b?"));
        std::fs::write(&p, r#"[{"text":"a"}]"#).unwrap();
        assert!(format!("{:#}", ingest(&p, "j").unwrap_err()).contains("element 0: no `prompt` string"));
    }
}
