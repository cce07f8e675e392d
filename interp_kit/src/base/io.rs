//! Atomic file writes and the table formats a run directory holds.
//!
//! Every writer here puts the bytes in a temporary file in the destination's own directory, flushes
//! it to disk and renames it over the destination, so a reader (or a resumed run after a crash) sees
//! either the old file or the complete new one, never a half-written one. Temporary files are named
//! `.tmp-<final name>.<pid>.<random>` ([`TEMP_PREFIX`]); loaders skip any file whose name starts with
//! it, and [`remove_stale_temps`] (run when a run directory or sweep is opened) deletes those whose
//! writing process is gone (killed mid-write), so a resumed run leaves no debris.
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

/// The name prefix of a temporary file or directory that this process makes for `final_name`:
/// `.tmp-<final_name>.<pid>.` (a random suffix or `dir` follows). The pid lets
/// [`remove_stale_temps`] tell a dead writer's leftovers from a live writer's work in progress.
pub fn temp_prefix_for(final_name: &str) -> String {
    format!("{TEMP_PREFIX}{final_name}.{}.", std::process::id())
}

/// The writer's pid in a temporary name made by [`temp_prefix_for`] (`None` for other names).
fn temp_writer_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(TEMP_PREFIX)?;
    let mut it = rest.rsplitn(3, '.');
    let (_suffix, pid, final_name) = (it.next()?, it.next()?, it.next()?);
    if final_name.is_empty() {
        return None;
    }
    pid.parse().ok()
}

/// True if a process with this pid exists (on other platforms than unix: always true, so nothing
/// is ever deleted there).
fn process_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        if pid == std::process::id() {
            return true;
        }
        let Ok(p) = libc::pid_t::try_from(pid) else { return true };
        // Signal 0 checks existence only; EPERM means it exists but belongs to someone else.
        let r = unsafe { libc::kill(p, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// Deletes, under `dir` (recursively, symlinks not followed), every temporary file or directory of
/// an atomic write whose writing process no longer exists: what a kill during a write leaves
/// behind. A live writer's temporary files, and temporary names without a pid, are left alone.
/// Returns the paths removed. A missing `dir` is not an error.
pub fn remove_stale_temps(dir: impl AsRef<Path>) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let mut stack = vec![dir.as_ref().to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("listing {}", d.display())),
        };
        for e in entries {
            let e = e.with_context(|| format!("listing {}", d.display()))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let ft = e.file_type().with_context(|| format!("reading the type of {}", e.path().display()))?;
            match temp_writer_pid(&name) {
                Some(pid) if !process_alive(pid) => {
                    let p = e.path();
                    let r = if ft.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
                    r.with_context(|| format!("removing the leftover temporary {}", p.display()))?;
                    removed.push(p);
                }
                _ if ft.is_dir() && !name.starts_with(TEMP_PREFIX) => stack.push(e.path()),
                _ => {}
            }
        }
    }
    Ok(removed)
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
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot write {}: creating directory {}", path.display(), dir.display()))?;
    let prefix = temp_prefix_for(name);
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o644));
    }
    let mut tmp = builder
        .tempfile_in(&dir)
        .with_context(|| format!("cannot write {}: creating a temporary file in {}", path.display(), dir.display()))?;
    write(tmp.as_file_mut()).with_context(|| format!("writing {}", path.display()))?;
    // The crash tests' hook (INTERP_KIT_FAULT=write...): the data is in the temporary file, not
    // yet at `path`. An injected io error drops `tmp`, which deletes it, as a real one would.
    super::fault::hit("write", &path.to_string_lossy()).with_context(|| format!("writing {}", path.display()))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The pid of a process that has exited (and been reaped).
    fn dead_pid() -> u32 {
        let mut c = std::process::Command::new("true").spawn().expect("spawn `true`");
        let pid = c.id();
        c.wait().unwrap();
        pid
    }

    #[test]
    fn temp_names_carry_the_writer_pid() {
        let p = temp_prefix_for("cell-ab.parquet");
        assert_eq!(p, format!(".tmp-cell-ab.parquet.{}.", std::process::id()));
        assert_eq!(temp_writer_pid(&format!("{p}XyZ123")), Some(std::process::id()));
        assert_eq!(temp_writer_pid(".tmp-manifest.json.42.dir"), Some(42));
        // the older pid-less form, and names that only look similar
        assert_eq!(temp_writer_pid(".tmp-manifest.json.AbCdEf"), None);
        assert_eq!(temp_writer_pid("manifest.json"), None);
        assert_eq!(temp_writer_pid(".tmp-.42.x"), None);
    }

    #[test]
    fn stale_temps_of_dead_writers_are_removed_and_live_ones_kept() {
        let root = tempfile::tempdir().unwrap();
        let d = root.path();
        let dead = dead_pid();
        std::fs::create_dir_all(d.join("parts/results")).unwrap();
        let stale_file = d.join(format!(".tmp-manifest.json.{dead}.aB3dE9"));
        let stale_nested = d.join(format!("parts/results/.tmp-cell-0011.parquet.{dead}.Qq1234"));
        let stale_dir = d.join(format!("adapters/.tmp-neutral_s0.{dead}.dir"));
        std::fs::create_dir_all(&stale_dir).unwrap();
        std::fs::write(stale_dir.join("adapter_model.safetensors"), b"half").unwrap();
        let live = d.join(format!("parts/results/.tmp-cell-0022.parquet.{}.Zz9876", std::process::id()));
        let pidless = d.join(".tmp-summary.csv.AbCdEf");
        let real = d.join("parts/results/cell-0011.parquet");
        for p in [&stale_file, &stale_nested, &live, &pidless, &real] {
            std::fs::write(p, b"x").unwrap();
        }
        let mut removed = remove_stale_temps(d).unwrap();
        removed.sort();
        let mut want = vec![stale_file.clone(), stale_nested.clone(), stale_dir.clone()];
        want.sort();
        assert_eq!(removed, want);
        for p in [&live, &pidless, &real] {
            assert!(p.exists(), "{} was removed", p.display());
        }
        assert!(d.join("adapters").is_dir());
        assert!(remove_stale_temps(d.join("missing")).unwrap().is_empty());
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let root = tempfile::tempdir().unwrap();
        let p = root.path().join("t.json");
        write_atomic(&p, "old").unwrap();
        let e = write_atomic_with(&p, |f| {
            f.write_all(b"new, half")?;
            Err(std::io::Error::from_raw_os_error(libc::ENOSPC).into())
        })
        .unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains(&p.display().to_string()) && msg.contains("No space left"), "{msg}");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "old");
        let names: Vec<_> = std::fs::read_dir(root.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["t.json"]);
    }
}
