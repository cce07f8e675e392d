//! Comparing two run directories file by file (determinism, kill-and-resume), and finding what an
//! interrupted write left behind.
//!
//! Every file must be byte-identical except the run's bookkeeping, which holds wall-clock facts:
//! `manifest.json` (creation time, host, one session per opening) must have the same study, run id
//! and identity (config, seeds, model hash), and each sweep's `index.json` the same cells, files, row
//! counts and grid positions, its `seconds` and `finished_at` aside.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Every file under `dir`, keyed by its path below `dir`, with its bytes.
pub fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("listing {}: {e}", d.display())) {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(dir).unwrap().to_path_buf(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// Files and directories under `dir` that an unfinished write leaves: the kit's temporary names
/// (`.tmp-*`, see `interp_kit::base::io::TEMP_PREFIX`) and anything named like a temporary file
/// (`*.tmp`, `*.tmp<digits>`, `*.part`, `*~`).
pub fn leftovers(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            let tmp_suffix = name.rsplit_once(".tmp").is_some_and(|(_, rest)| rest.chars().all(|c| c.is_ascii_digit()));
            if interp_kit::base::io::is_temp_file(&p) || tmp_suffix || name.ends_with(".part") || name.ends_with('~') {
                out.push(p.clone());
            }
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// `index.json` without its timing fields.
fn index_without_timing(bytes: &[u8]) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_slice(bytes).expect("index.json parses");
    if let Some(cells) = v.get_mut("cells").and_then(|c| c.as_object_mut()) {
        for c in cells.values_mut() {
            if let Some(o) = c.as_object_mut() {
                o.remove("seconds");
                o.remove("finished_at");
            }
        }
    }
    v
}

/// Why two versions of one file differ (for Parquet: the columns that differ), for the message.
fn describe_difference(rel: &Path, a: &[u8], b: &[u8]) -> String {
    if rel.extension().is_some_and(|x| x == "parquet") {
        use polars::prelude::SerReader;
        let read = |x: &[u8]| polars::prelude::ParquetReader::new(std::io::Cursor::new(x.to_vec())).finish();
        if let (Ok(x), Ok(y)) = (read(a), read(b)) {
            if x.shape() != y.shape() {
                return format!("{}: shapes {:?} vs {:?}", rel.display(), x.shape(), y.shape());
            }
            let cols: Vec<String> = x
                .columns()
                .iter()
                .filter(|c| y.column(c.name().as_str()).map_or(true, |d| !c.as_materialized_series().equals_missing(d.as_materialized_series())))
                .map(|c| c.name().to_string())
                .collect();
            return format!("{}: columns {cols:?} differ", rel.display());
        }
    }
    format!("{}: {} vs {} bytes", rel.display(), a.len(), b.len())
}

/// Panics, listing every difference, unless the run directories `a` and `b` hold the same files
/// with the same contents (bookkeeping compared as the module docs say) and neither holds a
/// leftover temporary file.
pub fn assert_same_run(a: &Path, b: &Path) {
    for d in [a, b] {
        let l = leftovers(d);
        assert!(l.is_empty(), "temporary files left in {}: {l:?}", d.display());
    }
    let (fa, fb) = (files(a), files(b));
    let only_a: Vec<_> = fa.keys().filter(|k| !fb.contains_key(*k)).collect();
    let only_b: Vec<_> = fb.keys().filter(|k| !fa.contains_key(*k)).collect();
    assert!(only_a.is_empty() && only_b.is_empty(), "files only in {}: {only_a:?}; only in {}: {only_b:?}", a.display(), b.display());
    let mut differ = Vec::new();
    for (rel, x) in &fa {
        let y = &fb[rel];
        match rel.file_name().and_then(|n| n.to_str()) {
            Some("manifest.json") => {
                let m: interp_kit::runs::Manifest = serde_json::from_slice(x).expect("manifest parses");
                let n: interp_kit::runs::Manifest = serde_json::from_slice(y).expect("manifest parses");
                let diff = m.identity_diff(&n);
                if !diff.is_empty() || m.study != n.study || m.run_id != n.run_id {
                    differ.push(format!("{}: identity differs in {diff:?}", rel.display()));
                }
            }
            Some("index.json") => {
                if index_without_timing(x) != index_without_timing(y) {
                    differ.push(format!("{}: cells differ", rel.display()));
                }
            }
            _ if x != y => differ.push(describe_difference(rel, x, y)),
            _ => {}
        }
    }
    assert!(differ.is_empty(), "{} of {} files differ between {} and {}:\n{}", differ.len(), fa.len(), a.display(), b.display(), differ.join("\n"));
}
