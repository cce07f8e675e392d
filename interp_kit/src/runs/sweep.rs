//! A resumable sweep: a grid of cells (split × layer × α × intervention, ...) whose rows are saved
//! cell by cell, so an interrupted sweep resumes where it stopped.
//!
//! Each finished cell is one Parquet file `parts/<sweep>/cell-<hash>.parquet`, written atomically;
//! `<hash>` is the first 16 hex digits of the sha256 of the cell key's JSON (object keys sorted).
//! `index.json` beside the parts records each cell's key, row count, position in the grid and
//! timing. A crash at any point loses at most the cell in progress: a part either exists whole or
//! not at all, and a part that exists without an index entry (a crash between the two writes) is
//! still recognised as finished by its file name.
//!
//! Keys: any serde struct or map of scalars; [`CellKey`] (with [`CellKey::grid`]) is the kit's own,
//! for notebooks, which should not define types that hold state across cells.
//!
//! Progress: [`Sweep::run`] shows an indicatif bar on stderr only when stderr is a terminal, because
//! the notebook runner fails any cell that writes to stderr. The environment variable
//! `INTERP_KIT_PROGRESS` overrides that: `bar` (always draw the bar on stderr), `lines` (one plain
//! line per finished cell on stdout, which notebooks show), `off`/`0`/`none` (nothing), `auto`
//! (the default). [`Sweep::progress`] overrides both.
use crate::base::io::{self, is_temp_file};
use anyhow::{anyhow, bail, Context, Result};
use polars::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How [`Sweep::run`] reports progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// A bar on stderr if stderr is a terminal, else nothing.
    Auto,
    /// Nothing.
    Hidden,
    /// A bar on stderr, terminal or not.
    Bar,
    /// One line per finished cell on stdout: `[3/30] {"alpha":1.0,...} 60 rows, 12.3 s`.
    Lines,
}

impl Progress {
    /// From `INTERP_KIT_PROGRESS` (`auto`, `bar`, `lines`, `off`/`0`/`none`/`hidden`); `Auto`
    /// when unset or unrecognised.
    pub fn from_env() -> Progress {
        match std::env::var("INTERP_KIT_PROGRESS").unwrap_or_default().trim().to_ascii_lowercase().as_str() {
            "bar" | "stderr" => Progress::Bar,
            "lines" | "stdout" => Progress::Lines,
            "off" | "0" | "none" | "hidden" | "false" => Progress::Hidden,
            _ => Progress::Auto,
        }
    }

    /// `Auto` resolved against the current stderr.
    fn resolve(self) -> Progress {
        match self {
            Progress::Auto if std::io::stderr().is_terminal() => Progress::Bar,
            Progress::Auto => Progress::Hidden,
            p => p,
        }
    }
}

/// A scalar in a [`CellKey`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum KeyValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

impl std::fmt::Display for KeyValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyValue::Bool(b) => write!(f, "{b}"),
            KeyValue::Int(i) => write!(f, "{i}"),
            KeyValue::Float(x) => write!(f, "{x}"),
            KeyValue::Str(s) => f.write_str(s),
        }
    }
}

macro_rules! key_from {
    ($variant:ident: $($t:ty),*) => {$(
        impl From<$t> for KeyValue { fn from(v: $t) -> Self { KeyValue::$variant(v as _) } }
    )*};
}
key_from!(Int: i8, i16, i32, i64, u8, u16, u32, usize, isize);
key_from!(Float: f32, f64);
impl From<bool> for KeyValue {
    fn from(v: bool) -> Self {
        KeyValue::Bool(v)
    }
}
impl From<&str> for KeyValue {
    fn from(v: &str) -> Self {
        KeyValue::Str(v.into())
    }
}
impl From<String> for KeyValue {
    fn from(v: String) -> Self {
        KeyValue::Str(v)
    }
}
impl From<&String> for KeyValue {
    fn from(v: &String) -> Self {
        KeyValue::Str(v.clone())
    }
}

/// A sweep cell key defined by the kit, so notebooks need no key struct of their own (evcxr
/// forgets variables whose type a cell redefines): named scalars, e.g.
/// `{split: "harm_test", layer: 12, alpha: 0.5}`. Make a grid with [`CellKey::grid`].
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CellKey(pub BTreeMap<String, KeyValue>);

impl CellKey {
    pub fn new() -> Self {
        Self::default()
    }

    /// The key with one more field.
    pub fn with(mut self, name: &str, value: impl Into<KeyValue>) -> Self {
        self.0.insert(name.into(), value.into());
        self
    }

    pub fn get(&self, name: &str) -> Result<&KeyValue> {
        self.0.get(name).ok_or_else(|| {
            anyhow!("cell key {self} has no field {name:?} (fields: {:?})", self.0.keys().collect::<Vec<_>>())
        })
    }

    /// A string field.
    pub fn str(&self, name: &str) -> Result<&str> {
        match self.get(name)? {
            KeyValue::Str(s) => Ok(s),
            v => bail!("cell key field {name:?} is {v}, not a string"),
        }
    }

    /// A numeric field as f64 (integers convert).
    pub fn f64(&self, name: &str) -> Result<f64> {
        match self.get(name)? {
            KeyValue::Float(x) => Ok(*x),
            KeyValue::Int(i) => Ok(*i as f64),
            v => bail!("cell key field {name:?} is {v}, not a number"),
        }
    }

    /// An integer field as i64.
    pub fn i64(&self, name: &str) -> Result<i64> {
        match self.get(name)? {
            KeyValue::Int(i) => Ok(*i),
            v => bail!("cell key field {name:?} is {v}, not an integer"),
        }
    }

    /// A non-negative integer field as usize (layers, indices).
    pub fn usize(&self, name: &str) -> Result<usize> {
        let i = self.i64(name)?;
        usize::try_from(i).map_err(|_| anyhow!("cell key field {name:?} is {i}, not a non-negative integer"))
    }

    /// A boolean field.
    pub fn bool(&self, name: &str) -> Result<bool> {
        match self.get(name)? {
            KeyValue::Bool(b) => Ok(*b),
            v => bail!("cell key field {name:?} is {v}, not a boolean"),
        }
    }

    /// Start a cartesian grid of keys: `CellKey::grid().axis("split", ["a", "b"]).axis("alpha",
    /// [0.0, 1.0]).build()` gives 4 keys, the first axis outermost.
    pub fn grid() -> Grid {
        Grid { axes: Vec::new() }
    }
}

impl std::fmt::Display for CellKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        write!(f, "{{{}}}", parts.join(", "))
    }
}

/// Builder of a cartesian grid of [`CellKey`]s.
#[derive(Debug, Clone, Default)]
pub struct Grid {
    axes: Vec<(String, Vec<KeyValue>)>,
}

impl Grid {
    /// Add an axis; values vary fastest along the last axis added.
    pub fn axis<V: Into<KeyValue>>(mut self, name: &str, values: impl IntoIterator<Item = V>) -> Self {
        self.axes.push((name.into(), values.into_iter().map(Into::into).collect()));
        self
    }

    /// Every combination, first axis outermost. An empty axis gives an empty grid.
    pub fn build(&self) -> Vec<CellKey> {
        let mut out = vec![CellKey::new()];
        for (name, values) in &self.axes {
            out = out
                .iter()
                .flat_map(|k| values.iter().map(move |v| k.clone().with(name, v.clone())))
                .collect();
        }
        if self.axes.is_empty() {
            Vec::new()
        } else {
            out
        }
    }
}

/// One finished cell in `index.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellEntry {
    /// The cell key as JSON.
    pub key: Value,
    /// Part file name inside the sweep's parts directory.
    pub file: String,
    pub rows: usize,
    /// Position of the cell in the grid last passed to [`Sweep::run`]; collected rows follow it.
    pub seq: usize,
    /// Wall-clock seconds the cell took (0 if recovered from a part without an index entry).
    pub seconds: f64,
    /// RFC 3339 UTC.
    pub finished_at: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct SweepIndex {
    /// Keyed by the cell hash.
    cells: BTreeMap<String, CellEntry>,
}

/// What one call of [`Sweep::run`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    /// Cells in the grid.
    pub total: usize,
    /// Cells already finished before this call (skipped).
    pub skipped: usize,
    /// Cells computed by this call.
    pub ran: usize,
    /// Rows written by this call.
    pub rows: usize,
}

impl std::fmt::Display for SweepReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} cells: {} already done, {} computed ({} rows)",
            self.total, self.skipped, self.ran, self.rows
        )
    }
}

/// A resumable sweep over cells keyed by `K` (see the module docs). Obtain one with
/// [`crate::runs::RunDir::sweep`], or [`Sweep::open`] for a directory of your own.
#[derive(Debug)]
pub struct Sweep<K = CellKey> {
    parts: PathBuf,
    out: PathBuf,
    index: SweepIndex,
    progress: Option<Progress>,
    _key: PhantomData<fn(&K)>,
}

const INDEX: &str = "index.json";

/// The canonical JSON text and hash of a key. It must serialise to an object of scalars.
fn key_json<K: Serialize>(key: &K) -> Result<(Value, String)> {
    let v = serde_json::to_value(key).context("serialising a sweep cell key")?;
    let Value::Object(m) = &v else {
        bail!("a sweep cell key must serialise to a map (a struct or BTreeMap<String, _>), got {v}");
    };
    if m.is_empty() {
        bail!("a sweep cell key must have at least one field");
    }
    for (k, x) in m {
        if !matches!(x, Value::Number(_) | Value::String(_) | Value::Bool(_)) {
            bail!("sweep cell key field {k:?} must be a number, string or bool (it becomes a column), got {x}");
        }
    }
    let text = serde_json::to_string(&v)?;
    let hash = super::provenance::hex(&sha2::Sha256::digest(text.as_bytes()))[..16].to_string();
    Ok((v, hash))
}
use sha2::Digest;

fn part_name(hash: &str) -> String {
    format!("cell-{hash}.parquet")
}

fn hash_of_part(name: &str) -> Option<&str> {
    name.strip_prefix("cell-")?.strip_suffix(".parquet")
}

/// Add the key's fields as constant columns (those the frame lacks).
fn with_key_columns(df: DataFrame, key: &Value) -> Result<DataFrame> {
    let mut df = crate::tables::fresh(&df);
    let h = df.height();
    if let Value::Object(m) = key {
        for (k, v) in m {
            if df.column(k).is_ok() {
                continue;
            }
            let col = match v {
                Value::String(s) => Column::new(k.as_str().into(), vec![s.as_str(); h]),
                Value::Bool(b) => Column::new(k.as_str().into(), vec![*b; h]),
                Value::Number(n) => match n.as_i64() {
                    Some(i) if !n.is_f64() => Column::new(k.as_str().into(), vec![i; h]),
                    _ => Column::new(k.as_str().into(), vec![n.as_f64().unwrap_or(f64::NAN); h]),
                },
                _ => unreachable!("checked in key_json"),
            };
            df.with_column(col)?;
        }
    }
    Ok(df)
}

// Bounds on K sit on the methods, not on the impl: rust-analyzer (which evcxr uses to infer the
// types of notebook variables) cannot see derived `Serialize` impls and would otherwise fail to
// resolve these methods, leaving `let df = sweep.collect()?;` with an unknown type.
impl<K> Sweep<K> {
    /// Open (or create) the sweep whose parts live in `parts_dir` and whose collected table is
    /// written to `out`. Reads `index.json` and reconciles it with the part files present.
    pub fn open(parts_dir: impl AsRef<Path>, out: impl AsRef<Path>) -> Result<Self> {
        let parts = parts_dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&parts).with_context(|| format!("creating {}", parts.display()))?;
        io::remove_stale_temps(&parts)?;
        let ipath = parts.join(INDEX);
        let mut index: SweepIndex = if ipath.exists() { io::read_json(&ipath)? } else { SweepIndex::default() };
        // A part deleted by hand is no longer finished.
        index.cells.retain(|_, e| parts.join(&e.file).exists());
        Ok(Sweep { parts, out: out.as_ref().to_path_buf(), index, progress: None, _key: PhantomData })
    }

    /// Override how progress is shown (default: `INTERP_KIT_PROGRESS`, else a bar only on a terminal).
    pub fn progress(mut self, p: Progress) -> Self {
        self.progress = Some(p);
        self
    }

    /// The parts directory.
    pub fn parts_dir(&self) -> &Path {
        &self.parts
    }

    /// Where [`Sweep::collect`] writes the concatenated table.
    pub fn output_path(&self) -> &Path {
        &self.out
    }

    fn part_files(&self) -> Result<Vec<String>> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(&self.parts).with_context(|| format!("listing {}", self.parts.display()))? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if is_temp_file(Path::new(&name)) || hash_of_part(&name).is_none() {
                continue;
            }
            v.push(name);
        }
        v.sort();
        Ok(v)
    }

    /// True if the cell has a saved part.
    pub fn is_done(&self, key: &K) -> Result<bool>
    where
        K: Serialize,
    {
        let (_, hash) = key_json(key)?;
        Ok(self.parts.join(part_name(&hash)).exists())
    }

    /// Number of finished cells (part files present).
    pub fn n_done(&self) -> Result<usize> {
        Ok(self.part_files()?.len())
    }

    /// The index entries of finished cells, in grid order.
    pub fn finished(&self) -> Vec<CellEntry> {
        let mut v: Vec<CellEntry> = self.index.cells.values().cloned().collect();
        v.sort_by(|a, b| a.seq.cmp(&b.seq).then_with(|| a.file.cmp(&b.file)));
        v
    }

    /// The rows of one finished cell, or `None` if it has not run.
    pub fn cell(&self, key: &K) -> Result<Option<DataFrame>>
    where
        K: Serialize,
    {
        let (_, hash) = key_json(key)?;
        let p = self.parts.join(part_name(&hash));
        if p.exists() {
            Ok(Some(io::read_parquet(&p)?))
        } else {
            Ok(None)
        }
    }

    fn write_index(&self) -> Result<()> {
        io::write_json(self.parts.join(INDEX), &self.index)
    }

    /// Compute every cell of `cells` that has no saved part yet, in order, with `f`, saving each
    /// cell's rows as soon as it finishes. The key's fields are added to the rows as constant
    /// columns (unless `f` already returns a column of that name), so the collected table has one
    /// column per key field. Stops at the first error, which names the cell; finished cells stay
    /// saved, and calling `run` again resumes with the failed cell.
    pub fn run<F>(&mut self, cells: impl IntoIterator<Item = K>, mut f: F) -> Result<SweepReport>
    where
        K: Serialize,
        F: FnMut(&K) -> Result<DataFrame>,
    {
        let cells: Vec<K> = cells.into_iter().collect();
        let mut keyed = Vec::with_capacity(cells.len());
        let mut seen = BTreeMap::new();
        for (seq, c) in cells.iter().enumerate() {
            let (v, hash) = key_json(c)?;
            if let Some(prev) = seen.insert(hash.clone(), seq) {
                bail!("sweep cells {prev} and {seq} have the same key {v}; each cell must be unique");
            }
            keyed.push((seq, c, v, hash));
        }
        let on_disk: std::collections::BTreeSet<String> =
            self.part_files()?.iter().filter_map(|n| hash_of_part(n).map(str::to_string)).collect();
        // Reconcile the index with the grid: record grid positions, adopt parts without entries.
        let mut changed = false;
        for (seq, _, v, hash) in &keyed {
            if !on_disk.contains(hash) {
                continue;
            }
            match self.index.cells.get_mut(hash) {
                Some(e) => {
                    if e.seq != *seq {
                        e.seq = *seq;
                        changed = true;
                    }
                }
                None => {
                    let file = part_name(hash);
                    let rows = io::read_parquet(self.parts.join(&file))?.height();
                    let entry = CellEntry {
                        key: v.clone(),
                        file,
                        rows,
                        seq: *seq,
                        seconds: 0.0,
                        finished_at: super::provenance::now_rfc3339(),
                    };
                    self.index.cells.insert(hash.clone(), entry);
                    changed = true;
                }
            }
        }
        if changed {
            self.write_index()?;
        }
        let total = keyed.len();
        let skipped = keyed.iter().filter(|(_, _, _, h)| on_disk.contains(h)).count();
        let mode = self.progress.unwrap_or_else(Progress::from_env).resolve();
        let bar = match mode {
            Progress::Bar => {
                let b = indicatif::ProgressBar::with_draw_target(Some(total as u64), indicatif::ProgressDrawTarget::stderr());
                if let Ok(style) = indicatif::ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} cells [{elapsed_precise}, eta {eta}] {msg}",
                ) {
                    b.set_style(style);
                }
                b
            }
            _ => indicatif::ProgressBar::hidden(),
        };
        bar.set_position(skipped as u64);
        let mut report = SweepReport { total, skipped, ran: 0, rows: 0 };
        let mut done = skipped;
        for (seq, cell, v, hash) in &keyed {
            if on_disk.contains(hash) {
                continue;
            }
            bar.set_message(v.to_string());
            let t0 = Instant::now();
            let result = f(cell).and_then(|df| with_key_columns(df, v));
            let df = match result {
                Ok(df) => df,
                Err(e) => {
                    bar.abandon();
                    // The cause goes into the message itself: evcxr prints only an error's outermost
                    // context, which would hide why the cell failed.
                    let cause = format!("{e:#}");
                    return Err(e.context(format!(
                        "sweep cell {v} failed ({cause}); {done} of {total} cells are saved in {} and a rerun resumes here",
                        self.parts.display()
                    )));
                }
            };
            let file = part_name(hash);
            // A full disk or a read-only directory stops the sweep here with the path in the
            // message; the cells saved so far stay, and a rerun resumes with this one.
            let saved = |e: anyhow::Error| {
                bar.abandon();
                e.context(format!(
                    "saving sweep cell {v} failed; {done} of {total} cells are saved in {} and a rerun resumes here",
                    self.parts.display()
                ))
            };
            io::write_parquet(self.parts.join(&file), &df).map_err(saved)?;
            let seconds = t0.elapsed().as_secs_f64();
            self.index.cells.insert(
                hash.clone(),
                CellEntry {
                    key: v.clone(),
                    file,
                    rows: df.height(),
                    seq: *seq,
                    seconds,
                    finished_at: super::provenance::now_rfc3339(),
                },
            );
            // The part is saved: a failed index write loses nothing (the next open adopts the part).
            self.write_index().map_err(|e| {
                bar.abandon();
                e.context(format!(
                    "sweep cell {v} is saved in {} but its index entry could not be written; a rerun adopts it",
                    self.parts.display()
                ))
            })?;
            done += 1;
            report.ran += 1;
            report.rows += df.height();
            bar.inc(1);
            if mode == Progress::Lines {
                println!("[{done}/{total}] {v} {} rows, {seconds:.1} s", df.height());
            }
        }
        bar.finish_and_clear();
        Ok(report)
    }

    /// Concatenate every finished cell's rows (grid order of the last [`Sweep::run`]; parts without
    /// an index entry last, by file name) and write them atomically to the output Parquet file.
    /// All parts must have the same columns (in any order; the first part's order is kept) and
    /// types. Having no finished cell is an error.
    pub fn collect(&self) -> Result<DataFrame> {
        let files = self.part_files()?;
        if files.is_empty() {
            bail!("sweep in {} has no finished cells: nothing to collect", self.parts.display());
        }
        let by_file: BTreeMap<&str, &CellEntry> = self.index.cells.values().map(|e| (e.file.as_str(), e)).collect();
        let mut order: Vec<(usize, &String)> =
            files.iter().map(|f| (by_file.get(f.as_str()).map_or(usize::MAX, |e| e.seq), f)).collect();
        order.sort();
        // A cell by its key (when the index has it) and its part file, for errors.
        let describe = |f: &str| match by_file.get(f) {
            Some(e) => format!("{} ({})", e.key, self.parts.join(f).display()),
            None => self.parts.join(f).display().to_string(),
        };
        let mut out: Option<(DataFrame, String)> = None;
        for (_, f) in order {
            let df = io::read_parquet(self.parts.join(f))?;
            match &mut out {
                None => out = Some((df, f.clone())),
                Some((acc, first)) => {
                    let names: Vec<String> = acc.get_column_names().iter().map(|s| s.to_string()).collect();
                    let mut mine: Vec<String> = df.get_column_names().iter().map(|s| s.to_string()).collect();
                    let mut theirs = names.clone();
                    mine.sort();
                    theirs.sort();
                    if mine != theirs {
                        let missing: Vec<_> = theirs.iter().filter(|c| !mine.contains(c)).collect();
                        let extra: Vec<_> = mine.iter().filter(|c| !theirs.contains(c)).collect();
                        bail!(
                            "sweep cell {} has different columns than cell {} (missing {:?}, extra {:?})",
                            describe(f),
                            describe(first),
                            missing,
                            extra
                        );
                    }
                    let df = df.select(names.iter().map(|s| s.as_str()))?;
                    acc.vstack_mut(&df).map_err(|e| {
                        anyhow!("sweep cell {} does not stack under cell {}: {e}", describe(f), describe(first))
                    })?;
                }
            }
        }
        let (mut df, _) = out.expect("non-empty");
        df.rechunk_mut_par();
        io::write_parquet(&self.out, &df)?;
        Ok(df)
    }
}
