//! Kill and resume, for real (issue 23 §2): a study runs in a child process (this test binary run
//! again with `--exact child_process` and the study named in an environment variable), is killed
//! at chosen points (`INTERP_KIT_FAULT`: while a sweep part, an index, the manifest, a collected
//! table or a LoRA adapter is written, in the middle of a LoRA run) and at seeded random moments
//! (SIGKILL), is rerun until it finishes, and must then hold exactly the files of an uninterrupted
//! run (tests/common/rundir.rs), with no temporary file left. After every interruption each table
//! and JSON file present must read whole. A write that fails (a full disk, simulated by the hook
//! with ENOSPC; a read-only directory where chmod can make one) stops the run with an error naming
//! the file, keeps every finished part, and the rerun reuses them.
//!
//! A LoRA fine-tune is one sweep cell: killed mid-run it restarts from step 0 on the rerun (no
//! checkpoint per step), and the test shows the restarted run ends where the uninterrupted one does.
mod common;
#[path = "common/study_runs.rs"]
mod study_runs;

use common::rundir::{assert_same_run, leftovers};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const STUDY_ENV: &str = "KILL_RESUME_STUDY";
const ROOT_ENV: &str = "KILL_RESUME_ROOT";
/// The child's exit code when the study returns an error.
const FAILED: i32 = 3;

/// The child process's body; does nothing in a normal test run (the variables are unset).
#[test]
fn child_process() {
    let (Ok(study), Ok(root)) = (std::env::var(STUDY_ENV), std::env::var(ROOT_ENV)) else { return };
    let root = PathBuf::from(root);
    let r = match study.as_str() {
        "steering" => study_runs::steering(&root),
        "inoculation" => study_runs::inoculation(&root),
        s => panic!("unknown study {s}"),
    };
    match r {
        Ok(dir) => println!("child finished {}", dir.display()),
        Err(e) => {
            eprintln!("child failed: {e:#}");
            std::process::exit(FAILED);
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum End {
    Finished,
    /// Exit code FAILED, with the child's stderr.
    Failed(String),
    /// SIGKILL from the test.
    Killed,
    /// SIGABRT from the fault hook.
    Aborted,
}

/// Runs the child on `study` in `work`, with `fault` as `INTERP_KIT_FAULT` and a SIGKILL after
/// `kill_after` if it is still running then. Output goes to `logs/<n>.{out,err}`.
fn run_child(study: &str, work: &Path, logs: &Path, fault: Option<&str>, kill_after: Option<Duration>) -> End {
    std::fs::create_dir_all(logs).unwrap();
    let n = std::fs::read_dir(logs).unwrap().count() / 2;
    let (out, err) = (logs.join(format!("{n:02}.out")), logs.join(format!("{n:02}.err")));
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "child_process", "--nocapture", "--test-threads=1"])
        .env(STUDY_ENV, study)
        .env(ROOT_ENV, work)
        .env("INTERP_KIT_PROGRESS", "off")
        .env_remove(interp_kit::base::fault::ENV)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap());
    if let Some(f) = fault {
        cmd.env(interp_kit::base::fault::ENV, f);
    }
    let mut child = cmd.spawn().expect("spawn the child test process");
    let status: ExitStatus = match kill_after {
        None => child.wait().unwrap(),
        Some(d) => {
            let t0 = Instant::now();
            loop {
                if let Some(s) = child.try_wait().unwrap() {
                    break s;
                }
                if t0.elapsed() >= d {
                    let _ = child.kill(); // SIGKILL; a child that just exited makes this a no-op
                    break child.wait().unwrap();
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    };
    use std::os::unix::process::ExitStatusExt;
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    match (status.code(), status.signal()) {
        (Some(0), _) => End::Finished,
        (Some(FAILED), _) => End::Failed(stderr),
        (_, Some(9)) => End::Killed,
        (_, Some(6)) => End::Aborted,
        _ => panic!("child {n} ({study}, fault {fault:?}) ended with {status}; stderr:\n{stderr}"),
    }
}

/// Every finished file an interrupted run left reads whole: Parquet tables, JSON files (temporary
/// files aside, which nothing reads).
fn assert_finished_files_read(dir: &Path) {
    for (rel, bytes) in common::rundir::files(dir) {
        let p = dir.join(&rel);
        if interp_kit::base::io::is_temp_file(&p) || p.ancestors().any(|a| interp_kit::base::io::is_temp_file(a)) {
            continue;
        }
        match p.extension().and_then(|x| x.to_str()) {
            Some("parquet") => {
                interp_kit::base::io::read_parquet(&p).unwrap_or_else(|e| panic!("{} does not read: {e:#}", rel.display()));
            }
            Some("json") => {
                serde_json::from_slice::<serde_json::Value>(&bytes).unwrap_or_else(|e| panic!("{} does not parse: {e}", rel.display()));
            }
            _ => {}
        }
    }
}

/// Seeded delays in `[lo, hi] · t`.
fn delays(seed: u64, n: usize, t: Duration, lo: f64, hi: f64) -> Vec<Duration> {
    let mut rng = interp_kit::base::rng::Rng::new(seed);
    (0..n).map(|_| t.mul_f64(lo + (hi - lo) * rng.uniform())).collect()
}

struct Setup {
    root: PathBuf,
    work: PathBuf,
    logs: PathBuf,
    /// The run directory below `work`.
    run_rel: PathBuf,
    reference: PathBuf,
    reference_time: Duration,
}

/// A fresh root and an uninterrupted reference run, moved to `<root>/reference` so that the run
/// directory can be made again at the same path (the manifests' configs name it).
fn reference(study: &str, run_rel: &str, tag: &str) -> Setup {
    let root = std::env::temp_dir().join(format!("kill_resume_{tag}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let (work, logs) = (root.join("work"), root.join("logs"));
    let t0 = Instant::now();
    assert_eq!(run_child(study, &work, &logs, None, None), End::Finished, "the reference run");
    let reference_time = t0.elapsed();
    let reference = root.join("reference");
    std::fs::rename(work.join(run_rel), &reference).unwrap();
    println!("{study}: reference run {:.1} s", reference_time.as_secs_f64());
    Setup { root, work, logs, run_rel: run_rel.into(), reference, reference_time }
}

/// The deterministic kills `faults` one after another on one run directory (each must abort the
/// child at its point), a run to the end, and the comparison with the reference; then `n_random`
/// times: a fresh run SIGKILLed at a seeded moment within the reference's duration, resumed to the
/// end and compared again.
fn kill_and_resume(s: &Setup, study: &str, faults: &[(&str, &str)], n_random: usize) {
    let run = s.work.join(&s.run_rel);
    for (fault, expect_temp) in faults {
        let end = run_child(study, &s.work, &s.logs, Some(fault), None);
        assert_eq!(end, End::Aborted, "fault {fault} was not reached");
        // A kill in the middle of a write: its temporary file (or directory) is there.
        if !expect_temp.is_empty() {
            let left = leftovers(&run);
            assert!(
                left.iter().any(|p| p.file_name().unwrap().to_string_lossy().contains(expect_temp)),
                "after {fault}: no temporary {expect_temp} in {left:?}"
            );
        }
        assert_finished_files_read(&run);
    }
    assert_eq!(run_child(study, &s.work, &s.logs, None, None), End::Finished, "the resume after the faults");
    assert_same_run(&s.reference, &run);
    let mut ends = vec![];
    for d in delays(23, n_random, s.reference_time, 0.1, 0.9) {
        std::fs::remove_dir_all(&run).unwrap();
        let end = run_child(study, &s.work, &s.logs, None, Some(d));
        assert!(matches!(end, End::Killed | End::Finished), "{end:?}");
        if run.exists() {
            assert_finished_files_read(&run);
        }
        ends.push(format!("{:.2} s: {end:?}", d.as_secs_f64()));
        assert_eq!(run_child(study, &s.work, &s.logs, None, None), End::Finished, "the resume after a kill at {d:?}");
        assert_same_run(&s.reference, &run);
    }
    println!("{study}: random kills: {ends:?}");
}

#[test]
fn steering_sweep_killed_anywhere_resumes_to_the_same_files() {
    let s = reference("steering", "steering_reliability/t", "steering");
    kill_and_resume(
        &s,
        "steering",
        &[
            // the run's very first write: the manifest of a new run directory
            ("write@manifest.json:1", ".tmp-manifest.json"),
            // the fourth sweep part
            ("write@cell-:4", ".tmp-cell-"),
            // a part saved but not yet in the index (the rerun adopts it)
            ("write@index.json:3", ".tmp-index.json"),
            // the collected table
            ("write@results.parquet:1", ".tmp-results.parquet"),
            // the manifest of an existing run, rewritten on reopening
            ("write@manifest.json:1", ".tmp-manifest.json"),
        ],
        5,
    );
    let _ = std::fs::remove_dir_all(&s.root);
}

#[test]
fn inoculation_series_killed_anywhere_resumes_to_the_same_files() {
    let s = reference("inoculation", "inoculation_caps/run_001_ci", "inoculation");
    kill_and_resume(
        &s,
        "inoculation",
        &[
            ("write@manifest.json:1", ".tmp-manifest.json"),
            ("write@cell-:3", ".tmp-cell-"),
            // the second of three steps of the first LoRA fine-tune: the rerun starts it again
            // (nothing of it is on disk yet, so there is no temporary file to look for)
            ("lora_step:2", ""),
            // the adapter of a finished fine-tune, half saved in its temporary directory
            ("write@adapter_model.safetensors:1", ".tmp-"),
            // the middle of the second fine-tune (steps 1-3 are the first one's again)
            ("lora_step:5", ""),
        ],
        5,
    );
    let _ = std::fs::remove_dir_all(&s.root);
}

/// The finished parts of a sweep directory with their modification times.
fn parts_with_times(dir: &Path) -> Vec<(PathBuf, std::time::SystemTime)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "parquet") && !interp_kit::base::io::is_temp_file(p))
        .map(|p| {
            let t = std::fs::metadata(&p).unwrap().modified().unwrap();
            (p, t)
        })
        .collect();
    v.sort();
    v
}

/// True if chmod can make a directory unwritable for this process (not as root).
fn chmod_blocks_writes(dir: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let probe = dir.join("probe");
    std::fs::create_dir_all(&probe).unwrap();
    std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o555)).unwrap();
    let blocked = std::fs::write(probe.join("x"), b"x").is_err();
    std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::remove_dir_all(&probe).unwrap();
    blocked
}

/// A full disk while the third part is written, then (where chmod can do it) a read-only parts
/// directory: each run stops with an error naming the file or directory, the finished parts stay
/// readable, no temporary file is left, and the rerun reuses the parts instead of recomputing them.
#[test]
fn a_failed_write_names_the_path_and_keeps_finished_parts() {
    let s = reference("steering", "steering_reliability/t", "disk_full");
    let run = s.work.join(&s.run_rel);
    let parts = run.join("parts/main");
    let End::Failed(err) = run_child("steering", &s.work, &s.logs, Some("write@cell-:3:enospc"), None) else {
        panic!("the full disk did not stop the run")
    };
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains(&parts.join("cell-").display().to_string()), "the error names the part file: {err}");
    assert!(err.contains("2 of 27 cells are saved") && err.contains("a rerun resumes"), "{err}");
    assert!(leftovers(&run).is_empty(), "{:?}", leftovers(&run));
    let kept = parts_with_times(&parts);
    assert_eq!(kept.len(), 2);
    for (p, _) in &kept {
        interp_kit::base::io::read_parquet(p).unwrap();
    }
    if chmod_blocks_writes(&s.root) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&parts, std::fs::Permissions::from_mode(0o555)).unwrap();
        let end = run_child("steering", &s.work, &s.logs, None, None);
        std::fs::set_permissions(&parts, std::fs::Permissions::from_mode(0o755)).unwrap();
        let End::Failed(err) = end else { panic!("a read-only parts directory did not stop the run: {end:?}") };
        assert!(err.contains("Permission denied") && err.contains(&parts.display().to_string()), "{err}");
        assert_eq!(parts_with_times(&parts), kept);
    } else {
        println!("chmod does not block writes here (root): the read-only directory case is covered by the ENOSPC hook only");
    }
    assert_eq!(run_child("steering", &s.work, &s.logs, None, None), End::Finished);
    let after = parts_with_times(&parts);
    for k in &kept {
        assert!(after.contains(k), "{} was recomputed", k.0.display());
    }
    assert_same_run(&s.reference, &run);
    let _ = std::fs::remove_dir_all(&s.root);
}
