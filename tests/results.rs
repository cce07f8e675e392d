//! Run directories, manifests, atomic writes, the resumable sweep, table helpers and reports.
use interp_kit::base::io::*;
use interp_kit::tables::markdown::{escape_cell, escape_inline, fence_for};
use interp_kit::tables::*;
use interp_kit::viz::reports::Markdown;
use interp_kit::base::io::TEMP_PREFIX;
use interp_kit::runs::provenance::{sha256_cache_path, sha256_file_cached, GitInfo};
use interp_kit::runs::*;
use polars::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::Path;

fn temp_files(dir: &Path) -> Vec<String> {
    let mut v = Vec::new();
    for e in walk(dir) {
        let n = e.file_name().unwrap().to_string_lossy().into_owned();
        if n.starts_with(TEMP_PREFIX) {
            v.push(n);
        }
    }
    v
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn atomic_write_replaces_whole_file_and_failed_write_leaves_old_content() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sub/a.txt");
    write_atomic(&p, "first").unwrap();
    assert_eq!(std::fs::read_to_string(&p).unwrap(), "first");
    write_atomic(&p, "second, longer").unwrap();
    assert_eq!(std::fs::read_to_string(&p).unwrap(), "second, longer");
    // A writer that fails half-way: the old file stays, no temporary file is left.
    let err = write_atomic_with(&p, |f| {
        use std::io::Write;
        f.write_all(b"half")?;
        anyhow::bail!("disk on fire")
    })
    .unwrap_err();
    assert!(format!("{err:#}").contains("disk on fire"), "{err:#}");
    assert_eq!(std::fs::read_to_string(&p).unwrap(), "second, longer");
    assert!(temp_files(dir.path()).is_empty(), "{:?}", temp_files(dir.path()));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Gen {
    temperature: f64,
    max_new_tokens: u32,
}
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Cfg {
    layers: Vec<usize>,
    generation: Gen,
    mode: String,
}

fn cfg() -> Cfg {
    Cfg { layers: vec![6, 12, 18], generation: Gen { temperature: 0.7, max_new_tokens: 80 }, mode: "fast".into() }
}

#[test]
fn manifest_records_identity_and_provenance() {
    let root = tempfile::tempdir().unwrap();
    let model = root.path().join("model.gguf");
    std::fs::write(&model, b"abc").unwrap();
    let run = RunDir::builder(root.path(), "study_x", "run-1")
        .config(&cfg())
        .unwrap()
        .seeds([0, 1])
        .model_file("tiny", &model)
        .device(&candle_core::Device::Cpu)
        .open()
        .unwrap();
    assert_eq!(run.path(), root.path().join("study_x/run-1"));
    let m: Manifest = read_json(run.path().join("manifest.json")).unwrap();
    assert_eq!(&m, run.manifest());
    assert_eq!(m.study, "study_x");
    assert_eq!(m.run_id, "run-1");
    assert_eq!(run.config::<Cfg>().unwrap(), cfg());
    assert_eq!(m.seeds, vec![0, 1]);
    let model_rec = m.model.as_ref().unwrap();
    assert_eq!(model_rec.id, "tiny");
    // sha256("abc"), FIPS 180-2 test vector.
    assert_eq!(model_rec.sha256.as_deref(), Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
    assert_eq!(m.kit_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(m.host.device, "cpu");
    assert_eq!(m.host.cores, std::thread::available_parallelism().unwrap().get());
    // The kernel level this process uses, and the CPU by Linux's name where /proc/cpuinfo exists.
    assert_eq!(m.host.cpu_kernels, interp_kit::base::cpu::level().name());
    if let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") {
        let name = info.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split_once(':')).map(|(_, v)| v.trim().to_string());
        if let Some(name) = name {
            assert!(m.host.cpu.starts_with(&name) && m.host.cpu.contains("family"), "{}", m.host.cpu);
        }
    }
    // A manifest written before these fields existed still reads (empty strings).
    let mut old = serde_json::to_value(&m).unwrap();
    for k in ["cpu", "cpu_kernels"] {
        old["host"].as_object_mut().unwrap().remove(k);
    }
    let back: Manifest = serde_json::from_value(old).unwrap();
    assert_eq!((back.host.cpu.as_str(), back.host.cpu_kernels.as_str()), ("", ""));
    assert!(chrono::DateTime::parse_from_rfc3339(&m.started_at).is_ok(), "{}", m.started_at);
    assert_eq!(m.sessions.len(), 1);
    // The commit must be what git itself says for the kit's repository (when git is installed).
    if let Ok(out) = std::process::Command::new("git")
        .args(["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "HEAD"])
        .output()
    {
        if out.status.success() {
            assert_eq!(m.git.commit, String::from_utf8_lossy(&out.stdout).trim());
            assert!(m.git.dirty.is_some());
        }
    }
}

#[test]
fn git_info_outside_a_repository_is_unknown() {
    let d = tempfile::tempdir().unwrap();
    // /tmp is normally not inside a repository; if it is, there is nothing to check.
    let g = GitInfo::discover(d.path());
    if g.repo.is_none() {
        assert_eq!(g.commit, "unknown");
        assert_eq!(g.dirty, None);
    }
}

#[test]
fn git_info_reads_a_worktree_gitdir_file_and_packed_refs_without_git() {
    // A hand-made repository layout: a worktree whose `.git` is a file pointing at
    // <common>/worktrees/wt, HEAD a symbolic ref found only in the common dir's packed-refs.
    let d = tempfile::tempdir().unwrap();
    let common = d.path().join("main/.git");
    let wtgit = common.join("worktrees/wt");
    std::fs::create_dir_all(&wtgit).unwrap();
    std::fs::write(wtgit.join("HEAD"), "ref: refs/heads/feature\n").unwrap();
    std::fs::write(wtgit.join("commondir"), "../..\n").unwrap();
    let id = "0123456789abcdef0123456789abcdef01234567";
    std::fs::write(common.join("packed-refs"), format!("# pack-refs with: peeled\n{id} refs/heads/feature\n")).unwrap();
    let wt = d.path().join("wt");
    std::fs::create_dir_all(wt.join("sub")).unwrap();
    std::fs::write(wt.join(".git"), format!("gitdir: {}\n", wtgit.display())).unwrap();
    let g = GitInfo::discover(wt.join("sub"));
    assert_eq!(g.commit, id);
    assert_eq!(g.repo.as_deref(), Some(wt.canonicalize().unwrap().as_path()));
    // A loose ref in the common dir takes precedence over packed-refs.
    let id2 = "89abcdef0123456789abcdef0123456789abcdef";
    std::fs::create_dir_all(common.join("refs/heads")).unwrap();
    std::fs::write(common.join("refs/heads/feature"), format!("{id2}\n")).unwrap();
    assert_eq!(GitInfo::discover(&wt).commit, id2);
}

#[test]
fn reopening_checks_identity_and_overwrite_starts_afresh() {
    let root = tempfile::tempdir().unwrap();
    let open = |c: &Cfg, seeds: [u64; 2]| RunDir::builder(root.path(), "s", "r").config(c).unwrap().seeds(seeds).open();
    let run = open(&cfg(), [0, 1]).unwrap();
    run.write_text("notes.md", "# old\n").unwrap();
    // Same identity: reopened, one more session, files kept.
    let again = open(&cfg(), [0, 1]).unwrap();
    assert_eq!(again.manifest().sessions.len(), 2);
    assert!(again.exists("notes.md"));
    // Different temperature and seeds: an error naming exactly those keys.
    let mut other = cfg();
    other.generation.temperature = 0.8;
    let err = format!("{:#}", open(&other, [0, 2]).unwrap_err());
    assert!(err.contains("config.generation.temperature, seeds differ"), "{err}");
    assert!(!err.contains("max_new_tokens"), "{err}");
    // Overwrite: the old run is removed and a fresh one created.
    let fresh = RunDir::builder(root.path(), "s", "r").config(&other).unwrap().seeds([0, 2]).overwrite(true).open().unwrap();
    assert_eq!(fresh.manifest().sessions.len(), 1);
    assert!(!fresh.exists("notes.md"));
    assert_eq!(fresh.config::<Cfg>().unwrap(), other);
    // Load (read-only) sees the same manifest.
    assert_eq!(RunDir::load(fresh.path()).unwrap().manifest(), fresh.manifest());
}

#[test]
fn identity_is_the_running_mode_only() {
    use serde_json::json;
    let root = tempfile::tempdir().unwrap();
    let c = |fast_steps: u32, full_axes: serde_json::Value, mode: &str| {
        json!({"mode": mode, "model": {"name": "m"}, "modes": {"fast": {"steps": fast_steps}, "full": {"steps": 9, "sweep": full_axes}}})
    };
    let open = |v: &serde_json::Value| RunDir::builder(root.path(), "s", "r").config(v).unwrap().open();
    open(&c(2, json!({"rank": [4]}), "fast")).unwrap();
    // A new axis in the mode this run does not use: the same run, resumed.
    assert_eq!(open(&c(2, json!({"rank": [4], "tokens": ["partial"]}), "fast")).unwrap().manifest().sessions.len(), 2);
    // A change in the running mode, or another mode: a different run, named by the keys.
    let e = format!("{:#}", open(&c(3, json!({"rank": [4]}), "fast")).unwrap_err());
    assert!(e.contains("config.modes.fast.steps differs"), "{e}");
    let e = format!("{:#}", open(&c(2, json!({"rank": [4]}), "full")).unwrap_err());
    assert!(e.contains("config.mode") && e.contains("config.modes.fast") && e.contains("config.modes.full"), "{e}");
}

#[test]
fn run_names_and_paths_are_checked() {
    let root = tempfile::tempdir().unwrap();
    for bad in ["", "../x", "a/b", ".hidden"] {
        let e = RunDir::builder(root.path(), "s", bad).open().unwrap_err();
        assert!(format!("{e}").contains("run_id"), "{e}");
    }
    let run = RunDir::builder(root.path(), "s", "ok").open().unwrap();
    for bad in ["../escape.txt", "/abs.txt"] {
        let e = run.write_text(bad, "x").unwrap_err();
        assert!(format!("{e}").contains("inside"), "{e}");
    }
    // A non-empty directory without a manifest is not silently adopted.
    std::fs::create_dir_all(root.path().join("s/stray")).unwrap();
    std::fs::write(root.path().join("s/stray/file"), "x").unwrap();
    let e = RunDir::builder(root.path(), "s", "stray").open().unwrap_err();
    assert!(format!("{e}").contains("not a run directory"), "{e}");
}

#[test]
fn model_hash_is_cached_by_size_and_mtime() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("m.bin");
    std::fs::write(&f, b"abc").unwrap();
    let (h, cached) = sha256_file_cached(&f).unwrap();
    assert_eq!(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    assert!(!cached);
    let cache = sha256_cache_path(&f);
    assert!(cache.exists());
    // The second call reads the cache: prove it by planting a different hash with the same key.
    let mut entry: serde_json::Value = read_json(&cache).unwrap();
    entry["sha256"] = serde_json::Value::String("f".repeat(64));
    write_json(&cache, &entry).unwrap();
    assert_eq!(sha256_file_cached(&f).unwrap(), ("f".repeat(64), true));
    // A changed file (size differs) is hashed again: sha256("abcd").
    std::fs::write(&f, b"abcd").unwrap();
    let (h, cached) = sha256_file_cached(&f).unwrap();
    assert!(!cached);
    assert_eq!(h, "88d4266fd4e6338d13b845fcf289579d209c897823b9217da3e161936f031589");
}

#[derive(Debug, Clone, Serialize)]
struct Cell {
    split: String,
    layer: usize,
    alpha: f64,
}

fn grid() -> Vec<Cell> {
    let mut v = Vec::new();
    for split in ["harm_train", "benign"] {
        for layer in [6, 12] {
            for alpha in [0.0, 0.5, 2.0] {
                v.push(Cell { split: split.into(), layer, alpha });
            }
        }
    }
    v
}

/// Deterministic rows for a cell: three prompts with a score derived from the key.
fn rows(c: &Cell) -> anyhow::Result<DataFrame> {
    let prompt: Vec<u32> = vec![0, 1, 2];
    let score: Vec<f64> = prompt.iter().map(|&p| c.layer as f64 * 0.01 + c.alpha * 0.1 + p as f64).collect();
    let refused: Vec<bool> = prompt.iter().map(|&p| (p as f64 + c.alpha) > 2.0).collect();
    let text: Vec<String> = prompt.iter().map(|p| format!("{}-{}-{}", c.split, c.layer, p)).collect();
    Ok(DataFrame::new_infer_height(vec![
        Column::new("prompt".into(), prompt),
        Column::new("score".into(), score),
        Column::new("refused".into(), refused),
        Column::new("text".into(), text),
    ])?)
}

#[test]
fn interrupted_sweep_resumes_to_the_same_rows() {
    let root = tempfile::tempdir().unwrap();
    // Uninterrupted reference.
    let a = RunDir::builder(root.path(), "s", "a").open().unwrap();
    let mut sa = a.sweep::<Cell>("results").unwrap().progress(Progress::Hidden);
    let rep = sa.run(grid(), rows).unwrap();
    assert_eq!((rep.total, rep.skipped, rep.ran, rep.rows), (12, 0, 12, 36));
    let full = sa.collect().unwrap();
    assert_eq!(full.shape(), (36, 7));
    assert!(a.path().join("results.parquet").exists());

    // Interrupted: the 6th cell fails (a crash mid-sweep).
    let b = RunDir::builder(root.path(), "s", "b").open().unwrap();
    let mut sb = b.sweep::<Cell>("results").unwrap().progress(Progress::Hidden);
    let mut calls = 0;
    let err = sb
        .run(grid(), |c| {
            calls += 1;
            if calls == 6 {
                anyhow::bail!("simulated crash");
            }
            rows(c)
        })
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("simulated crash") && msg.contains("\"layer\":12") && msg.contains("5 of 12"), "{msg}");
    assert_eq!(sb.n_done().unwrap(), 5);
    // Resume in a fresh handle (as after a kernel restart): only the 7 missing cells run.
    let mut sb = b.sweep::<Cell>("results").unwrap().progress(Progress::Hidden);
    let mut ran = Vec::new();
    let rep = sb
        .run(grid(), |c| {
            ran.push((c.split.clone(), c.layer, c.alpha));
            rows(c)
        })
        .unwrap();
    assert_eq!((rep.skipped, rep.ran), (5, 7));
    assert_eq!(ran[0], ("harm_train".to_string(), 12, 2.0), "resumes at the failed cell");
    let resumed = sb.collect().unwrap();
    assert!(resumed.equals_missing(&full), "resumed:\n{resumed}\nfull:\n{full}");
    // And on disk.
    assert!(read_parquet(b.path().join("results.parquet")).unwrap().equals_missing(&full));
    assert!(b.results().unwrap().equals_missing(&full));
    // Running again computes nothing.
    let rep = sb.run(grid(), |_| -> anyhow::Result<DataFrame> { panic!("must not run") }).unwrap();
    assert_eq!((rep.skipped, rep.ran), (12, 0));

    // Key columns carry the key's types.
    let schema = full.schema();
    assert_eq!(schema.get("split"), Some(&DataType::String));
    assert_eq!(schema.get("layer"), Some(&DataType::Int64));
    assert_eq!(schema.get("alpha"), Some(&DataType::Float64));
    // Rows follow the grid order.
    let first = filter_eq(&full, "prompt", 0u32).unwrap();
    assert_eq!(column_f64(&first, "alpha").unwrap(), vec![0.0, 0.5, 2.0, 0.0, 0.5, 2.0, 0.0, 0.5, 2.0, 0.0, 0.5, 2.0]);
}

#[test]
fn sweep_survives_a_lost_index_and_ignores_temporary_files() {
    let root = tempfile::tempdir().unwrap();
    let run = RunDir::builder(root.path(), "s", "r").open().unwrap();
    let mut sw = run.sweep::<Cell>("results").unwrap().progress(Progress::Hidden);
    sw.run(grid(), rows).unwrap();
    let full = sw.collect().unwrap();
    let parts = run.path().join("parts/results");
    // A crash between a part's rename and the index write leaves parts without entries.
    std::fs::remove_file(parts.join("index.json")).unwrap();
    // A crash during a write leaves a temporary file behind; it must never be read.
    std::fs::write(parts.join(format!("{TEMP_PREFIX}cell-0123456789abcdef.parquet.x1y2")), b"garbage").unwrap();
    std::fs::write(run.path().join(format!("{TEMP_PREFIX}results.parquet.z9")), b"garbage").unwrap();
    let mut sw = run.sweep::<Cell>("results").unwrap().progress(Progress::Hidden);
    let rep = sw.run(grid(), |_| -> anyhow::Result<DataFrame> { panic!("every cell is already saved") }).unwrap();
    assert_eq!(rep.ran, 0);
    assert_eq!(sw.finished().len(), 12);
    assert!(sw.collect().unwrap().equals_missing(&full));
    // A deleted part is recomputed.
    let victim = sw.finished()[3].file.clone();
    std::fs::remove_file(parts.join(&victim)).unwrap();
    let mut sw = run.sweep::<Cell>("results").unwrap().progress(Progress::Hidden);
    let rep = sw.run(grid(), rows).unwrap();
    assert_eq!(rep.ran, 1);
    assert!(sw.collect().unwrap().equals_missing(&full));
    assert!(sw.cell(&grid()[0]).unwrap().unwrap().equals_missing(&rows(&grid()[0]).map(|d| {
        let mut d = d;
        d.with_column(Column::new("alpha".into(), vec![0.0; 3])).unwrap();
        d.with_column(Column::new("layer".into(), vec![6i64; 3])).unwrap();
        d.with_column(Column::new("split".into(), vec!["harm_train"; 3])).unwrap();
        d
    }).unwrap()));
}

#[test]
fn sweep_rejects_bad_keys_duplicates_and_mismatched_parts() {
    let root = tempfile::tempdir().unwrap();
    let run = RunDir::builder(root.path(), "s", "r").open().unwrap();
    let mut sw = run.sweep::<Cell>("dup").unwrap().progress(Progress::Hidden);
    let mut g = grid();
    g.push(g[0].clone());
    let e = format!("{:#}", sw.run(g, rows).unwrap_err());
    assert!(e.contains("same key"), "{e}");

    let mut bad = run.sweep::<Vec<u32>>("bad").unwrap();
    let e = format!("{:#}", bad.run([vec![1u32]], |_| Ok(DataFrame::empty())).unwrap_err());
    assert!(e.contains("must serialise to a map"), "{e}");

    let mut sw = run.sweep::<Cell>("mixed").unwrap().progress(Progress::Hidden);
    sw.run(grid(), |c| {
        let df = rows(c)?;
        Ok(if c.layer == 12 { df.drop("text")? } else { df })
    })
    .unwrap();
    let e = format!("{:#}", sw.collect().unwrap_err());
    assert!(e.contains("different columns") && e.contains("\"text\""), "{e}");

    let empty = run.sweep::<Cell>("empty").unwrap();
    let e = format!("{:#}", empty.collect().unwrap_err());
    assert!(e.contains("no finished cells"), "{e}");
}

#[test]
fn cell_key_grid_and_getters() {
    let cells = CellKey::grid().axis("split", ["train", "test"]).axis("layer", [6usize, 12]).axis("alpha", [0.0, 1.5]).build();
    assert_eq!(cells.len(), 8);
    assert_eq!(cells[0].to_string(), "{alpha=0, layer=6, split=train}");
    assert_eq!(cells[1].to_string(), "{alpha=1.5, layer=6, split=train}");
    assert_eq!(cells[7].to_string(), "{alpha=1.5, layer=12, split=test}");
    let k = &cells[3];
    assert_eq!((k.str("split").unwrap(), k.usize("layer").unwrap(), k.f64("alpha").unwrap()), ("train", 12, 1.5));
    assert_eq!(k.f64("layer").unwrap(), 12.0);
    let e = format!("{}", k.str("layer").unwrap_err());
    assert!(e.contains("\"layer\" is 12, not a string"), "{e}");
    let e = format!("{}", k.f64("seed").unwrap_err());
    assert!(e.contains("no field \"seed\""), "{e}");
    assert!(CellKey::grid().build().is_empty());
    assert!(CellKey::grid().axis("a", Vec::<i32>::new()).build().is_empty());
    // JSON round trip keeps integer and float fields apart.
    let back: CellKey = serde_json::from_str(&serde_json::to_string(k).unwrap()).unwrap();
    assert_eq!(&back, k);

    let root = tempfile::tempdir().unwrap();
    let run = RunDir::builder(root.path(), "s", "r").open().unwrap();
    let mut sw = run.sweep::<CellKey>("results").unwrap().progress(Progress::Hidden);
    sw.run(cells, |c| {
        let n = c.usize("layer")?;
        Ok(DataFrame::new_infer_height(vec![Column::new("x".into(), vec![c.f64("alpha")? * n as f64; 2])])?)
    })
    .unwrap();
    let df = sw.collect().unwrap();
    assert_eq!(df.shape(), (16, 4));
    let schema = df.schema();
    assert_eq!(schema.get("split"), Some(&DataType::String));
    assert_eq!(schema.get("layer"), Some(&DataType::Int64));
    assert_eq!(schema.get("alpha"), Some(&DataType::Float64));
    assert_eq!(column_f64(&df, "x").unwrap()[6..8], [18.0, 18.0]);
}

fn long_table() -> DataFrame {
    // Two groups: A has scores 1,2,3,4 and refusals T,T,F,T; B has scores 10,10 and refusals F,F.
    DataFrame::new_infer_height(vec![
        Column::new("cond".into(), ["A", "B", "A", "A", "B", "A"]),
        Column::new("layer".into(), [1i64, 1, 1, 1, 1, 1]),
        Column::new("score".into(), [1.0, 10.0, 2.0, 3.0, 10.0, 4.0]),
        Column::new("refused".into(), [true, false, true, false, false, true]),
    ])
    .unwrap()
}

#[test]
fn group_summary_matches_hand_computed_intervals() {
    let s = group_summary(&long_table(), &["cond", "layer"], &["score", "refused"]).unwrap();
    assert_eq!(column_str(&s, "cond").unwrap(), vec!["A", "B"]);
    assert_eq!(column_f64(&s, "n").unwrap(), vec![4.0, 2.0]);
    let get = |c: &str| column_f64(&s, c).unwrap();
    // Group A scores 1..4: mean 2.5, sd sqrt(5/3); t(0.975, 3) = 3.182446305284263 (tables).
    let sd: f64 = (5.0f64 / 3.0).sqrt();
    let half = 3.182446305284263 * sd / 2.0;
    approx::assert_relative_eq!(get("score_mean")[0], 2.5);
    approx::assert_relative_eq!(get("score_std")[0], sd, epsilon = 1e-12);
    approx::assert_relative_eq!(get("score_lo")[0], 2.5 - half, epsilon = 1e-9);
    approx::assert_relative_eq!(get("score_hi")[0], 2.5 + half, epsilon = 1e-9);
    // Group B: constant scores, zero-width interval.
    approx::assert_relative_eq!(get("score_std")[1], 0.0);
    approx::assert_relative_eq!(get("score_lo")[1], 10.0);
    // Refusals in A: 3 of 4. Wilson score interval with z = 1.959963984540054.
    let (p, n, z): (f64, f64, f64) = (0.75, 4.0, 1.959963984540054);
    let centre = (p + z * z / (2.0 * n)) / (1.0 + z * z / n);
    let h = z / (1.0 + z * z / n) * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt();
    approx::assert_relative_eq!(get("refused_mean")[0], 0.75);
    approx::assert_relative_eq!(get("refused_lo")[0], centre - h, epsilon = 1e-9);
    approx::assert_relative_eq!(get("refused_hi")[0], centre + h, epsilon = 1e-9);
    // Wilson for 0 of 2: lower bound 0, upper z²/(n+z²).
    approx::assert_relative_eq!(get("refused_lo")[1], 0.0, epsilon = 1e-12);
    approx::assert_relative_eq!(get("refused_hi")[1], z * z / (2.0 + z * z), epsilon = 1e-9);

    let m = group_mean(&long_table(), &["cond"], &["score", "refused"]).unwrap();
    assert_eq!(column_f64(&m, "score").unwrap(), vec![2.5, 10.0]);
    assert_eq!(column_f64(&m, "refused").unwrap(), vec![0.75, 0.0]);

    let e = format!("{:#}", group_mean(&long_table(), &["cond"], &["nope"]).unwrap_err());
    assert!(e.contains("no column \"nope\"") && e.contains("score"), "{e}");
    let e = format!("{:#}", group_mean(&long_table(), &["layer"], &["cond"]).unwrap_err());
    assert!(e.contains("\"cond\" (str) is not numeric"), "{e}");
    let e = format!("{:#}", group_mean(&long_table(), &["layer"], &["layer"]).unwrap_err());
    assert!(e.contains("both a group key"), "{e}");
    assert!(column_f64(&long_table(), "cond").is_err());
    let empty = long_table().head(Some(0));
    assert!(group_summary(&empty, &["cond"], &["score"]).is_err());
}

#[test]
fn pivot_builds_a_matrix_with_sorted_numeric_keys() {
    let df = DataFrame::new_infer_height(vec![
        Column::new("layer".into(), [12i64, 6, 12, 6, 18]),
        Column::new("alpha".into(), [2.0, 0.5, 0.5, 2.0, 0.5]),
        Column::new("rate".into(), [0.9, 0.1, 0.4, 0.3, 0.7]),
    ])
    .unwrap();
    let m = pivot(&df, "layer", "alpha", "rate").unwrap();
    assert_eq!(m.rows, vec!["6", "12", "18"]);
    assert_eq!(m.cols, vec!["0.5", "2"]);
    assert_eq!(m.values[0], vec![0.1, 0.3]);
    assert_eq!(m.values[1], vec![0.4, 0.9]);
    assert_eq!(m.values[2][0], 0.7);
    assert!(m.values[2][1].is_nan());
    assert_eq!(m.get("12", "2"), Some(0.9));
    let dup = df.vstack(&df.head(Some(1))).unwrap();
    let e = format!("{:#}", pivot(&dup, "layer", "alpha", "rate").unwrap_err());
    assert!(e.contains("layer = 12") && e.contains("alpha = 2"), "{e}");
}

#[test]
fn filter_and_csv_round_trip() {
    let df = long_table();
    let a = filter_eq(&df, "cond", "A").unwrap();
    assert_eq!(a.height(), 4);
    assert_eq!(filter_eq(&df, "score", 10.0).unwrap().height(), 2);
    assert_eq!(filter_eq(&df, "refused", true).unwrap().height(), 3);
    assert_eq!(filter_eq(&df, "layer", 1i64).unwrap().height(), 6);
    let root = tempfile::tempdir().unwrap();
    let run = RunDir::builder(root.path(), "s", "r").open().unwrap();
    let p = run.write_summary(&df).unwrap();
    assert_eq!(p, run.path().join("summary.csv"));
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(text.starts_with("cond,layer,score,refused\nA,1,1.0,true\n"), "{text}");
    let back = run.read_csv("summary.csv").unwrap();
    assert!(back.equals_missing(&df), "{back}");
    let pq = run.write_parquet("t.parquet", &df).unwrap();
    assert!(read_parquet(&pq).unwrap().equals_missing(&df));
    assert!(temp_files(root.path()).is_empty());
}

#[test]
fn pretty_prints_every_column_with_fixed_decimals() {
    let df = DataFrame::new_infer_height(vec![
        Column::new("name".into(), (0..50).map(|i| format!("row{i}")).collect::<Vec<_>>()),
        Column::new("x".into(), (0..50).map(|i| i as f64 / 3.0).collect::<Vec<_>>()),
    ])
    .unwrap();
    let s = pretty(&df).digits(2).max_rows(6).title("T").to_string();
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines[0], "T");
    assert_eq!(lines[1].split_whitespace().collect::<Vec<_>>(), vec!["name", "x"]);
    assert_eq!(lines[3].split_whitespace().collect::<Vec<_>>(), vec!["row0", "0.00"]);
    assert_eq!(lines[4].split_whitespace().collect::<Vec<_>>(), vec!["row1", "0.33"]);
    assert!(s.contains("…") && s.contains("row49") && s.contains("16.33") && !s.contains("row25"), "{s}");
    assert!(s.ends_with("(50 rows × 2 columns)"));
    let md = pretty(&df.head(Some(2))).digits(1).to_markdown();
    assert_eq!(md, "| name | x |\n|:---|---:|\n| row0 | 0.0 |\n| row1 | 0.3 |\n");
}

#[test]
fn markdown_escapes_and_fences() {
    assert_eq!(escape_inline("a*b_c [x](y) <b> #1"), "a\\*b\\_c \\[x\\](y) \\<b\\> \\#1");
    assert_eq!(escape_inline("- not a list"), "\\- not a list");
    assert_eq!(escape_inline("12. not a list\nline"), "12\\. not a list line");
    assert_eq!(escape_inline("0.25 and -3"), "0.25 and -3");
    assert_eq!(escape_inline("-"), "\\-");
    assert_eq!(escape_cell("a|b\nc"), "a\\|b<br>c");
    assert_eq!(fence_for("plain"), "```");
    assert_eq!(fence_for("has ``` inside and ````` too"), "``````");
    let mut md = Markdown::new();
    md.heading(1, "Examples: harm_test")
        .text("Scores *below*.")
        .table(&["prompt", "score"], &[vec!["How | why?".into(), "0.5".into()], vec!["short".into()]])
        .completion("α = 4 (steered)", "Sure.\n```\nrm -rf /\n```\nDone.")
        .fields([("refusal", "0.00"), ("matched", "none")]);
    let expected = "# Examples: harm\\_test\n\nScores \\*below\\*.\n\n| prompt | score |\n|---|---|\n| How \\| why? | 0.5 |\n| short |  |\n\n**α = 4 (steered)**\n\n````text\nSure.\n```\nrm -rf /\n```\nDone.\n````\n\n- **refusal**: 0.00\n- **matched**: none\n";
    assert_eq!(md.as_str(), expected);
    let d = tempfile::tempdir().unwrap();
    md.save(d.path().join("reports/examples.md")).unwrap();
    assert_eq!(std::fs::read_to_string(d.path().join("reports/examples.md")).unwrap(), expected);
}

#[test]
fn progress_mode_comes_from_the_environment() {
    // Only this test touches the variable.
    std::env::set_var("INTERP_KIT_PROGRESS", "lines");
    assert_eq!(Progress::from_env(), Progress::Lines);
    std::env::set_var("INTERP_KIT_PROGRESS", "off");
    assert_eq!(Progress::from_env(), Progress::Hidden);
    std::env::set_var("INTERP_KIT_PROGRESS", "bar");
    assert_eq!(Progress::from_env(), Progress::Bar);
    std::env::remove_var("INTERP_KIT_PROGRESS");
    assert_eq!(Progress::from_env(), Progress::Auto);
}

#[test]
fn summary_of_a_collected_sweep_filters_by_key() {
    let root = tempfile::tempdir().unwrap();
    let run = RunDir::builder(root.path(), "s", "r").open().unwrap();
    let cells = CellKey::grid().axis("split", ["a", "b"]).axis("alpha", [0.0, 1.0, 2.0]).build();
    let mut sw = run.sweep::<CellKey>("results").unwrap().progress(Progress::Hidden);
    sw.run(cells, |c| {
        let a = c.f64("alpha")?;
        Ok(DataFrame::new_infer_height(vec![Column::new("refused".into(), vec![a > 0.5, true, false])])?)
    })
    .unwrap();
    let df = sw.collect().unwrap();
    let s = group_summary(&df, &["split", "alpha"], &["refused"]).unwrap();
    let a = filter_eq(&s, "split", "a").unwrap();
    assert_eq!(column_f64(&a, "alpha").unwrap(), vec![0.0, 1.0, 2.0]);
    approx::assert_relative_eq!(column_f64(&a, "refused_mean").unwrap()[1], 2.0 / 3.0);
}

#[test]
fn fresh_drops_the_cached_schema_and_keeps_the_data() {
    let df = long_table();
    let _ = df.schema(); // caches it
    assert!(df.cached_schema().is_some());
    let f = fresh(&df);
    assert!(f.cached_schema().is_none());
    assert!(f.equals_missing(&df));
}
