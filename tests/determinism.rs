//! Same config and seed twice on the CPU gives the same files (issue 23 §3): the steering,
//! ALL-CAPS inoculation, trait-monitoring and introspection studies at a tiny size, each run to the
//! end, its run directory moved aside, and run again at the same path (so the manifests' configs,
//! which name the output root, agree). Every table, direction, adapter, figure and report must be
//! byte-identical; the manifests and sweep indexes must agree but for their timestamps and timings
//! (tests/common/rundir.rs). The insecure-code study has its own such test
//! (tests/insecure_code_study.rs).
mod common;
#[path = "common/study_runs.rs"]
mod study_runs;

use std::path::{Path, PathBuf};

fn twice(name: &str, study: fn(&Path) -> anyhow::Result<PathBuf>) {
    let root = std::env::temp_dir().join(format!("determinism_{name}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let t0 = std::time::Instant::now();
    let first = study(&root).unwrap_or_else(|e| panic!("{name}, first run: {e:#}"));
    let moved = root.join("first_run");
    std::fs::rename(&first, &moved).unwrap();
    let second = study(&root).unwrap_or_else(|e| panic!("{name}, second run: {e:#}"));
    assert_eq!(second, first);
    let n = common::rundir::files(&moved).len();
    assert!(n > 5, "{name}: only {n} files");
    common::rundir::assert_same_run(&moved, &second);
    println!("{name}: {n} files identical, {:.1} s for both runs", t0.elapsed().as_secs_f64());
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn steering_twice_gives_identical_files() {
    twice("steering", study_runs::steering);
}

#[test]
fn inoculation_twice_gives_identical_files() {
    twice("inoculation", study_runs::inoculation);
}

#[test]
fn trait_monitoring_twice_gives_identical_files() {
    twice("trait_monitoring", study_runs::trait_monitoring);
}

#[test]
fn introspection_twice_gives_identical_files() {
    twice("introspection", study_runs::introspection);
}
