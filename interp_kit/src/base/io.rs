//! Atomic file writes and the table formats a run directory holds.
//!
//! Every writer here puts the bytes in a temporary file in the destination's own directory, flushes
//! it to disk and renames it over the destination, so a reader (or a resumed run after a crash) sees
//! either the old file or the complete new one, never a half-written one. Temporary files are named
//! `.tmp-<final name>.<random>` ([`TEMP_PREFIX`]); loaders skip any file whose name starts with it.
use anyhow::{anyhow, bail, Context, Result};
use polars::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Prefix of the temporary files of atomic writes. A file whose name starts with it is an
/// unfinished write (left behind only if the process died mid-write) and is never read.
pub const TEMP_PREFIX: &str = ".tmp-";

/// True if `path`'s file name marks an unfinished atomic write ([`TEMP_PREFIX`]).
pub fn is_temp_file(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(TEMP_PREFIX))
}

/// Write `path` atomically: `write` fills a temporary file in the same directory, which is synced
/// and renamed over `path`. Parent directories are created. If `write` fails, the temporary file is
/// removed and `path` is untouched.
pub fn write_atomic_with<F>(path: impl AsRef<Path>, write: F) -> Result<()>
where
    F: FnOnce(&mut File) -> Result<()>,
{
    let path = path.as_ref();
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("cannot write {}: no UTF-8 file name", path.display()))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating directory {}", dir.display()))?;
    let prefix = format!("{TEMP_PREFIX}{name}.");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o644));
    }
    let mut tmp = builder
        .tempfile_in(&dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    write(tmp.as_file_mut()).with_context(|| format!("writing {}", path.display()))?;
    tmp.as_file_mut().sync_all().with_context(|| format!("syncing {}", path.display()))?;
    tmp.persist(path).map_err(|e| anyhow!("renaming a temporary file to {}: {}", path.display(), e.error))?;
    // Make the rename itself durable; not every filesystem allows syncing a directory.
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Write bytes (or a string) to `path` atomically.
pub fn write_atomic(path: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> Result<()> {
    write_atomic_with(path, |f| Ok(f.write_all(contents.as_ref())?))
}

/// Write `value` as pretty-printed JSON (with a final newline), atomically.
pub fn write_json<T: Serialize + ?Sized>(path: impl AsRef<Path>, value: &T) -> Result<()> {
    let mut s = serde_json::to_string_pretty(value)?;
    s.push('\n');
    write_atomic(path, s)
}

/// Read a JSON file into `T`; errors name the file (and serde's line and column).
pub fn read_json<T: DeserializeOwned>(path: impl AsRef<Path>) -> Result<T> {
    let path = path.as_ref();
    let s = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&s).with_context(|| format!("parsing JSON in {}", path.display()))
}

/// Write a DataFrame as Parquet (zstd-compressed, polars' defaults otherwise), atomically.
pub fn write_parquet(path: impl AsRef<Path>, df: &DataFrame) -> Result<()> {
    let path = path.as_ref();
    let mut df = schema_free(df);
    write_atomic_with(path, |f| {
        ParquetWriter::new(BufWriter::new(f)).finish(&mut df)?;
        Ok(())
    })
}

/// Read a Parquet file into a DataFrame; errors name the file.
pub fn read_parquet(path: impl AsRef<Path>) -> Result<DataFrame> {
    let path = path.as_ref();
    if is_temp_file(path) {
        bail!("{} is an unfinished write (temporary file), not a result", path.display());
    }
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // polars' Parquet reader panics on some corrupt footers (its thrift decoder asserts on field
    // types); a corrupt file is an error naming it, like any other unreadable input.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ParquetReader::new(f).finish())) {
        Ok(r) => r.map_err(anyhow::Error::from).with_context(|| format!("reading Parquet {}", path.display())),
        Err(p) => bail!("reading Parquet {}: the file is corrupt (the Parquet reader failed: {})", path.display(), panic_message(&*p)),
    }
}

/// The text of a caught panic.
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

/// Write a DataFrame as CSV (header row, `,` separator, RFC 4180 quoting), atomically.
/// Floats are written in full precision.
pub fn write_csv(path: impl AsRef<Path>, df: &DataFrame) -> Result<()> {
    let mut df = schema_free(df);
    write_atomic_with(path, |f| {
        let mut w = BufWriter::new(f);
        CsvWriter::new(&mut w).include_header(true).finish(&mut df)?;
        w.flush()?;
        Ok(())
    })
}

/// Read a CSV file with a header row (types inferred from the data); errors name the file.
pub fn read_csv(path: impl AsRef<Path>) -> Result<DataFrame> {
    let path = path.as_ref();
    CsvReadOptions::default()
        .with_has_header(true)
        .try_into_reader_with_file_path(Some(path.to_path_buf()))
        .and_then(|r| r.finish())
        .map_err(anyhow::Error::from)
        .with_context(|| format!("reading CSV {}", path.display()))
}

/// Normalise a path relative to a run directory: it must be relative and must not climb out
/// (`..`), so a notebook cannot write outside its run by accident.
pub(crate) fn checked_relative(rel: &Path) -> Result<&Path> {
    use std::path::Component;
    if rel.as_os_str().is_empty() {
        bail!("empty path inside the run directory");
    }
    for c in rel.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            _ => bail!(
                "path {} must be relative to the run directory and stay inside it (no leading `/`, no `..`)",
                rel.display()
            ),
        }
    }
    Ok(rel)
}

/// The table without polars' cached schema, which a DataFrame made in another evcxr cell carries
/// with that cell's hasher seed (the reason [`crate::tables::fresh`] exists; the columns are shared).
fn schema_free(df: &DataFrame) -> DataFrame {
    DataFrame::new(df.height(), df.columns().to_vec()).unwrap_or_else(|_| df.clone())
}
