//! Run directories: where a study's outputs live, with a manifest that says how they were made.
//!
//! A run is `<root>/<study>/<run_id>/` (the root is usually the repository's `results/`):
//! ```text
//! manifest.json        config, seeds, model id + sha256, kit version, git commit, host, sessions
//! parts/<sweep>/       one Parquet file per finished sweep cell, plus index.json (see `Sweep`)
//! <sweep>.parquet      the collected sweep (`results.parquet` for the sweep named "results")
//! summary.csv          tables written by the study
//! figures/             PNG and SVG figures
//! reports/             markdown reports (`reports/examples.md`)
//! ```
//! Every file is written atomically ([`crate::base::io`]), so a crash never leaves a half-written result.
//!
//! ```no_run
//! use interp_kit::prelude::*;
//! # fn main() -> anyhow::Result<()> {
//! let config = serde_json::json!({"layers": [6, 12], "alphas": [0.0, 2.0]});
//! let run = RunDir::builder("../../results", "steering_reliability", "fast-seed0")
//!     .config(&config)?
//!     .seeds([0])
//!     .model_id("qwen2.5-coder-0.5b-instruct")
//!     .open()?;
//! run.write_json("notes.json", &serde_json::json!({"ok": true}))?;
//! # Ok(()) }
//! ```
pub mod config;
pub mod provenance;
pub mod sweep;

pub use config::{LayerSpec, Mode, ModelCfg};
pub use provenance::{GitInfo, HostInfo};
pub use sweep::{CellKey, Grid, KeyValue, Progress, Sweep, SweepReport};

use anyhow::{bail, Context, Result};
use polars::prelude::DataFrame;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// File name of a run's manifest.
pub const MANIFEST: &str = "manifest.json";

/// The model a run used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRecord {
    /// Model id or name as the study calls it (`qwen2.5-coder-0.5b-instruct`, a hub id...).
    pub id: String,
    /// The file or directory it was loaded from, if known.
    pub path: Option<PathBuf>,
    /// sha256 of the file (or of a directory's files, see `provenance::model_sha256`), if a path
    /// was given.
    pub sha256: Option<String>,
}

/// One opening of the run (the first creates it; each resume adds one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// RFC 3339 UTC.
    pub started_at: String,
    pub kit_version: String,
    pub git: GitInfo,
    pub host: HostInfo,
}

/// `manifest.json`: what a run is (config, seeds, model) and how it was produced.
///
/// The *identity* of a run is its `config`, `seeds` and `model`: reopening a run with a different
/// identity is an error (or, if asked, replaces the run). Kit version, git state and host may change
/// between sessions; each opening appends a [`Session`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub study: String,
    pub run_id: String,
    /// The study's configuration, any serde value (a TOML config parsed into a struct serialises
    /// to a JSON object).
    pub config: Value,
    /// Every seed the run uses, in the study's order.
    pub seeds: Vec<u64>,
    pub model: Option<ModelRecord>,
    /// interp_kit's version (`CARGO_PKG_VERSION`) when the run was created.
    pub kit_version: String,
    /// The git state of interp_kit's repository when the run was created.
    pub git: GitInfo,
    /// RFC 3339 UTC creation time.
    pub started_at: String,
    pub host: HostInfo,
    /// Every opening of the run, the creation included, oldest first.
    pub sessions: Vec<Session>,
}

impl Manifest {
    /// The keys in which this manifest's identity (config, seeds, model) differs from `other`'s,
    /// as dotted paths (`config.generation.temperature`, `seeds`, `model.sha256`), sorted.
    ///
    /// A study config with a `mode` name and a `modes` table (`ci` / `fast` / `full`) is compared
    /// on the mode it runs only: adding an axis to `full` does not orphan a half-finished `fast` run.
    pub fn identity_diff(&self, other: &Manifest) -> Vec<String> {
        let mut out = Vec::new();
        json_diff("config", &active_mode_only(&self.config), &active_mode_only(&other.config), &mut out);
        if self.seeds != other.seeds {
            out.push("seeds".into());
        }
        let a = serde_json::to_value(&self.model).unwrap_or(Value::Null);
        let b = serde_json::to_value(&other.model).unwrap_or(Value::Null);
        // The path may move (another machine, another cache dir); the content may not.
        let strip = |v: Value| match v {
            Value::Object(mut m) => {
                m.remove("path");
                Value::Object(m)
            }
            v => v,
        };
        json_diff("model", &strip(a), &strip(b), &mut out);
        out.sort();
        out
    }
}

/// `config` without the `modes.<m>` tables of the modes it does not run (`m != config.mode`);
/// any other shape unchanged.
fn active_mode_only(config: &Value) -> Value {
    let mut c = config.clone();
    if let Value::Object(top) = &mut c {
        if let Some(Value::String(mode)) = top.get("mode").cloned() {
            if let Some(Value::Object(modes)) = top.get_mut("modes") {
                if modes.contains_key(&mode) {
                    modes.retain(|k, _| *k == mode);
                }
            }
        }
    }
    c
}

/// Dotted paths where two JSON values differ; object keys are walked recursively, anything else
/// (arrays included) is compared whole.
pub fn json_diff(prefix: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => json_diff(&p, u, v, out),
                    _ => out.push(p),
                }
            }
        }
        // Integers compare exactly; floats within 1e-12 relative, because serde_json's default float
        // parsing may be one ulp off after a write/read round trip.
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (u, v) = (x.as_f64().unwrap_or(f64::NAN), y.as_f64().unwrap_or(f64::NAN));
            if (u - v).abs() > 1e-12 * u.abs().max(v.abs()) || u.is_nan() || v.is_nan() {
                out.push(prefix.to_string());
            }
        }
        _ if a == b => {}
        _ => out.push(prefix.to_string()),
    }
}

/// What to do when an existing run has a different identity than the one asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnMismatch {
    /// Fail, naming the keys that differ (default).
    #[default]
    Error,
    /// Delete the old run directory and everything in it, then create the run afresh.
    Overwrite,
}

/// Builder for [`RunDir`]: see [`RunDir::builder`].
#[derive(Debug, Clone)]
pub struct RunBuilder {
    root: PathBuf,
    study: String,
    run_id: String,
    config: Value,
    seeds: Vec<u64>,
    model: Option<(String, Option<PathBuf>)>,
    device: String,
    on_mismatch: OnMismatch,
}

fn check_name(what: &str, s: &str) -> Result<()> {
    if s.is_empty()
        || s.starts_with('.')
        || !s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '='))
    {
        bail!("{what} {s:?} must be non-empty, not start with '.', and use only letters, digits, '_', '-', '.', '='");
    }
    Ok(())
}

impl RunBuilder {
    /// The study's configuration (any `Serialize`: a config struct, a `toml::Value`, a
    /// `serde_json::Value`). Part of the run's identity.
    pub fn config<T: Serialize + ?Sized>(mut self, config: &T) -> Result<Self> {
        self.config = serde_json::to_value(config).context("serialising the run config to JSON")?;
        Ok(self)
    }

    /// The seeds the run uses. Part of the run's identity.
    pub fn seeds(mut self, seeds: impl IntoIterator<Item = u64>) -> Self {
        self.seeds = seeds.into_iter().collect();
        self
    }

    /// The model by id only (no file to hash).
    pub fn model_id(mut self, id: impl Into<String>) -> Self {
        self.model = Some((id.into(), None));
        self
    }

    /// The model by id and the file (or directory) it is loaded from; its sha256 is recorded (and
    /// cached beside the file keyed by size and mtime, so it is computed once).
    pub fn model_file(mut self, id: impl Into<String>, path: impl AsRef<Path>) -> Self {
        self.model = Some((id.into(), Some(path.as_ref().to_path_buf())));
        self
    }

    /// The model of a study config's `[model]` table: the embedded GGUF, or `name` resolved
    /// against `base_dir` (a file or a Hugging Face directory, hashed), or the id alone when no
    /// such path exists.
    pub fn model_cfg(self, m: &config::ModelCfg, base_dir: &Path) -> Result<Self> {
        Ok(if m.name == "embedded" {
            self.model_file("embedded", crate::base::embedded_model_path()?)
        } else {
            let p = config::resolve_path(base_dir, Path::new(&m.name));
            if p.exists() {
                self.model_file(&m.name, p)
            } else {
                self.model_id(&m.name)
            }
        })
    }

    /// The device the run computes on, recorded in the host info.
    pub fn device(mut self, device: &candle_core::Device) -> Self {
        self.device = provenance::device_name(device);
        self
    }

    /// What to do if the run exists with a different config, seeds or model (default: error).
    pub fn on_mismatch(mut self, m: OnMismatch) -> Self {
        self.on_mismatch = m;
        self
    }

    /// Shorthand for `on_mismatch(OnMismatch::Overwrite)` when `yes`.
    pub fn overwrite(self, yes: bool) -> Self {
        self.on_mismatch(if yes { OnMismatch::Overwrite } else { OnMismatch::Error })
    }

    /// Create the run directory, or reopen it if it exists with the same identity (config, seeds,
    /// model id and sha256), appending a session to its manifest.
    pub fn open(self) -> Result<RunDir> {
        check_name("study", &self.study)?;
        check_name("run_id", &self.run_id)?;
        let dir = self.root.join(&self.study).join(&self.run_id);
        let model = match &self.model {
            None => None,
            Some((id, None)) => Some(ModelRecord { id: id.clone(), path: None, sha256: None }),
            Some((id, Some(p))) => Some(ModelRecord {
                id: id.clone(),
                path: Some(p.clone()),
                sha256: Some(provenance::model_sha256(p).with_context(|| format!("hashing model {}", p.display()))?),
            }),
        };
        let session = Session {
            started_at: provenance::now_rfc3339(),
            kit_version: env!("CARGO_PKG_VERSION").into(),
            git: GitInfo::of_kit(),
            host: HostInfo::current(&self.device),
        };
        let fresh = Manifest {
            study: self.study.clone(),
            run_id: self.run_id.clone(),
            config: self.config.clone(),
            seeds: self.seeds.clone(),
            model,
            kit_version: session.kit_version.clone(),
            git: session.git.clone(),
            started_at: session.started_at.clone(),
            host: session.host.clone(),
            sessions: vec![session.clone()],
        };
        let mpath = dir.join(MANIFEST);
        // What a process killed mid-write left (its temporary files) goes first, so it neither
        // lingers nor makes a run killed during its first manifest write look like a foreign
        // directory below.
        crate::base::io::remove_stale_temps(&dir)?;
        let manifest = if mpath.exists() {
            let mut old: Manifest = crate::base::io::read_json(&mpath)
                .with_context(|| format!("reading the manifest of existing run {}", dir.display()))?;
            let diff = old.identity_diff(&fresh);
            if diff.is_empty() {
                old.sessions.push(session);
                old
            } else {
                match self.on_mismatch {
                    OnMismatch::Error => bail!(
                        "run {} exists with a different identity: {} differ{}; choose another run_id, or \
                         call .overwrite(true) to delete the old run and start again",
                        dir.display(),
                        diff.join(", "),
                        if diff.len() == 1 { "s" } else { "" }
                    ),
                    OnMismatch::Overwrite => {
                        std::fs::remove_dir_all(&dir).with_context(|| format!("removing old run {}", dir.display()))?;
                        fresh
                    }
                }
            }
        } else if dir.exists()
            && std::fs::read_dir(&dir)
                .with_context(|| format!("listing {}", dir.display()))?
                .any(|e| e.map_or(true, |e| !crate::base::io::is_temp_file(&e.path())))
        {
            bail!(
                "{} exists and is not empty but has no {MANIFEST}: not a run directory; choose another run_id",
                dir.display()
            );
        } else {
            fresh
        };
        std::fs::create_dir_all(&dir).with_context(|| format!("creating run directory {}", dir.display()))?;
        crate::base::io::write_json(&mpath, &manifest)?;
        Ok(RunDir { dir, manifest })
    }
}

/// A run directory `<root>/<study>/<run_id>/` with its manifest. See the module docs for the layout.
#[derive(Debug, Clone)]
pub struct RunDir {
    dir: PathBuf,
    manifest: Manifest,
}

impl RunDir {
    /// Start describing a run under `root` (e.g. `"../../results"` from a notebook folder).
    /// `study` and `run_id` are single path components (letters, digits, `_ - . =`).
    pub fn builder(root: impl AsRef<Path>, study: &str, run_id: &str) -> RunBuilder {
        RunBuilder {
            root: root.as_ref().to_path_buf(),
            study: study.into(),
            run_id: run_id.into(),
            config: Value::Null,
            seeds: Vec::new(),
            model: None,
            device: "unknown".into(),
            on_mismatch: OnMismatch::Error,
        }
    }

    /// Open an existing run for reading (analysis notebooks): reads its manifest, changes nothing.
    pub fn load(dir: impl AsRef<Path>) -> Result<RunDir> {
        let dir = dir.as_ref().to_path_buf();
        let manifest = crate::base::io::read_json(dir.join(MANIFEST))
            .with_context(|| format!("{} is not a run directory (no readable {MANIFEST})", dir.display()))?;
        Ok(RunDir { dir, manifest })
    }

    /// The run's directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// A path inside the run (`rel` must be relative and stay inside).
    pub fn join(&self, rel: impl AsRef<Path>) -> Result<PathBuf> {
        Ok(self.dir.join(crate::base::io::checked_relative(rel.as_ref())?))
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The config deserialised into the study's config type.
    pub fn config<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_value(self.manifest.config.clone())
            .with_context(|| format!("the config in {} does not fit the requested type", self.dir.join(MANIFEST).display()))
    }

    /// True if `rel` exists inside the run.
    pub fn exists(&self, rel: impl AsRef<Path>) -> bool {
        self.join(rel).map(|p| p.exists()).unwrap_or(false)
    }

    /// Write JSON at `rel` atomically; returns the full path.
    pub fn write_json<T: Serialize + ?Sized>(&self, rel: impl AsRef<Path>, value: &T) -> Result<PathBuf> {
        let p = self.join(rel)?;
        crate::base::io::write_json(&p, value)?;
        Ok(p)
    }

    /// Read JSON at `rel`.
    pub fn read_json<T: DeserializeOwned>(&self, rel: impl AsRef<Path>) -> Result<T> {
        crate::base::io::read_json(self.join(rel)?)
    }

    /// Write text (markdown, logs) at `rel` atomically.
    pub fn write_text(&self, rel: impl AsRef<Path>, text: &str) -> Result<PathBuf> {
        let p = self.join(rel)?;
        crate::base::io::write_atomic(&p, text)?;
        Ok(p)
    }

    /// Write a DataFrame as Parquet at `rel` atomically.
    pub fn write_parquet(&self, rel: impl AsRef<Path>, df: &DataFrame) -> Result<PathBuf> {
        let p = self.join(rel)?;
        crate::base::io::write_parquet(&p, df)?;
        Ok(p)
    }

    /// Read a Parquet file at `rel`.
    pub fn read_parquet(&self, rel: impl AsRef<Path>) -> Result<DataFrame> {
        crate::base::io::read_parquet(self.join(rel)?)
    }

    /// The rows of the Parquet file at `rel` as structs ([`crate::tables::read_rows`]: errors
    /// name the file).
    pub fn read_rows<T: DeserializeOwned>(&self, rel: impl AsRef<Path>) -> Result<Vec<T>> {
        crate::tables::read_rows(self.join(rel)?)
    }

    /// Write a DataFrame as CSV at `rel` atomically.
    pub fn write_csv(&self, rel: impl AsRef<Path>, df: &DataFrame) -> Result<PathBuf> {
        let p = self.join(rel)?;
        crate::base::io::write_csv(&p, df)?;
        Ok(p)
    }

    /// Read a CSV file at `rel`.
    pub fn read_csv(&self, rel: impl AsRef<Path>) -> Result<DataFrame> {
        crate::base::io::read_csv(self.join(rel)?)
    }

    /// `results.parquet` (written by the sweep named `"results"`, see [`RunDir::sweep`]).
    pub fn results(&self) -> Result<DataFrame> {
        self.read_parquet("results.parquet")
    }

    /// Write `summary.csv`.
    pub fn write_summary(&self, df: &DataFrame) -> Result<PathBuf> {
        self.write_csv("summary.csv", df)
    }

    /// Save a figure as `figures/<stem>.png` and `figures/<stem>.svg`; returns both paths.
    pub fn save_figure(&self, stem: &str, fig: &crate::viz::plots::Figure) -> Result<(PathBuf, PathBuf)> {
        let png = self.join(format!("figures/{stem}.png"))?;
        let svg = self.join(format!("figures/{stem}.svg"))?;
        fig.save(&png)?;
        fig.save(&svg)?;
        Ok((png, svg))
    }

    /// The resumable sweep `name` of this run: parts in `parts/<name>/`, collected into
    /// `<name>.parquet` (so `run.sweep("results")` fills `results.parquet`). `K` is the cell key
    /// type: the kit's [`CellKey`] in notebooks (`run.sweep::<CellKey>("results")`), or a small
    /// serde struct or `BTreeMap<String, _>` of scalars.
    pub fn sweep<K: Serialize>(&self, name: &str) -> Result<Sweep<K>> {
        check_name("sweep name", name)?;
        Sweep::open(self.dir.join("parts").join(name), self.dir.join(format!("{name}.parquet")))
    }
}

impl std::fmt::Display for RunDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = &self.manifest;
        write!(
            f,
            "run {}/{} at {} (created {}, kit {}, git {}{}, {} session(s))",
            m.study,
            m.run_id,
            self.dir.display(),
            m.started_at,
            m.kit_version,
            &m.git.commit[..m.git.commit.len().min(12)],
            match m.git.dirty {
                Some(true) => " dirty",
                _ => "",
            },
            m.sessions.len()
        )
    }
}
