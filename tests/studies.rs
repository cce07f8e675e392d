//! The steering-reliability study layer (`interp_kit::studies::steering_reliability`): rates, operating points
//! and the Pareto flag against hand-computed values, the results round trip, and an end-to-end
//! sweep on the tiny GPT-NeoX fixture (a non-Qwen model through the whole study) that is
//! interrupted and resumed.
use interp_kit::runs::config::Mode;
use interp_kit::runs::RunDir;
use interp_kit::studies::steering_reliability::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn row(split: &str, id: usize, layer: i64, iv: &str, alpha: f64, refuse: bool, helpful: bool, n_tokens: i64) -> Row {
    Row {
        run: "main".into(),
        split: split.into(),
        prompt_id: format!("{split}_{id:04}"),
        family: "fam".into(),
        style: "direct".into(),
        layer,
        intervention: iv.into(),
        alpha,
        sample: 0,
        seed: id as i64,
        shared_baseline: false,
        prompt: format!("prompt {id}"),
        completion: if refuse { "I'm sorry, I can't help with that.".into() } else { "Step 1: do it.".into() },
        n_tokens,
        mean_entropy: 1.0 + id as f64,
        mean_logprob: -0.5,
        stopped_at_eos: true,
        refusal_score: if refuse { 1.0 } else { 0.0 },
        is_refusal: refuse,
        refusal_matched: if refuse { "sorry|i can't".into() } else { String::new() },
        helpfulness_score: if helpful { 0.8 } else { 0.1 },
        is_helpful: helpful,
    }
}

/// Four prompts per split; `k` of them refuse / are helpful.
fn cell(split: &str, layer: i64, iv: &str, alpha: f64, refusals: usize, helpful: usize) -> Vec<Row> {
    (0..4).map(|i| row(split, i, layer, iv, alpha, i < refusals, i < helpful, 10 + i as i64)).collect()
}

fn table() -> Vec<Row> {
    let mut rows = vec![];
    // baseline: harm_train 1/4 refusals, harm_test 0/4, benign 3/4 helpful
    rows.extend(cell("harm_train", -1, "none", 0.0, 1, 0));
    rows.extend(cell("harm_test", -1, "none", 0.0, 0, 0));
    rows.extend(cell("benign", -1, "none", 0.0, 0, 3));
    // add at layer 5, alpha 1: train 4/4, test 2/4, benign helpful 1/4 with 1/4 false refusals
    rows.extend(cell("harm_train", 5, "add", 1.0, 4, 0));
    rows.extend(cell("harm_test", 5, "add", 1.0, 2, 0));
    rows.extend(cell("benign", 5, "add", 1.0, 1, 1));
    // ablate at layer 5, alpha 1: train 2/4, test 1/4, benign helpful 3/4
    rows.extend(cell("harm_train", 5, "ablate", 1.0, 2, 0));
    rows.extend(cell("harm_test", 5, "ablate", 1.0, 1, 0));
    rows.extend(cell("benign", 5, "ablate", 1.0, 0, 3));
    rows
}

#[test]
fn rows_round_trip_through_the_results_table() {
    let rows = table();
    let df = rows_to_df(&rows).unwrap();
    assert_eq!(df.height(), rows.len());
    assert_eq!(rows_from_df(&df).unwrap(), rows);
}

#[test]
fn cell_rates_match_hand_counts() {
    let rates = cell_rates(&table());
    assert_eq!(rates.len(), 9);
    let get = |split: &str, iv: &str| rates.iter().find(|r| r.split == split && r.intervention == iv).unwrap();
    let add_test = get("harm_test", "add");
    assert_eq!((add_test.n, add_test.layer, add_test.alpha), (4, 5, 1.0));
    assert_eq!(add_test.refusal_rate, 0.5);
    assert_eq!(get("benign", "add").helpful_rate, 0.25);
    assert_eq!(get("benign", "none").helpful_rate, 0.75);
    assert_eq!(get("harm_train", "none").refusal_rate, 0.25);
    // tokens 10, 11, 12, 13; entropies 1, 2, 3, 4
    assert_eq!(add_test.mean_tokens, 11.5);
    assert_eq!(add_test.mean_entropy, 2.5);
}

#[test]
fn operating_points_gap_drop_and_pareto_flags() {
    let pts = operating_points(&cell_rates(&table())).unwrap();
    assert_eq!(pts.len(), 3);
    let p = |iv: &str| pts.iter().find(|p| p.intervention == iv).unwrap();
    let (base, add, abl) = (p("none"), p("add"), p("ablate"));
    assert_eq!(add.generalization_gap, 1.0 - 0.5);
    assert_eq!(add.benign_helpfulness_drop, 0.75 - 0.25);
    assert_eq!(add.benign_false_refusal, 0.25);
    assert_eq!(abl.generalization_gap, 0.5 - 0.25);
    assert_eq!(abl.benign_helpfulness_drop, 0.0);
    assert_eq!(base.benign_helpfulness_drop, 0.0);
    // (refusal_test up, drop down): base (0, 0) is dominated by ablate (0.25, 0); add (0.5, 0.5)
    // and ablate are on the front.
    assert!(!base.pareto);
    assert!(add.pareto && abl.pareto);
    // the example setting: the steered Pareto point with the highest harm_test refusal
    let best = best_point(&pts).unwrap();
    assert_eq!((best.intervention.as_str(), best.layer, best.alpha), ("add", 5, 1.0));
    let s = summary_table(&pts).unwrap();
    assert_eq!(s.height(), 3);
    assert!(s.column("pareto").is_ok() && s.column("generalization_gap").is_ok());
}

/// A setting whose completions have collapsed into a loop refuses "perfectly" (the loop is a
/// refusal phrase) and is on the Pareto front, but it is incoherent: best_point must skip it.
#[test]
fn best_point_never_picks_a_degenerate_setting() {
    let looping = "I'm sorry sorry sorry sorry sorry sorry sorry sorry sorry sorry sorry sorry";
    let mut degenerate: Vec<Row> = ["harm_train", "harm_test", "benign"]
        .iter()
        .flat_map(|s| cell(s, 5, "add", 4.0, if *s == "benign" { 0 } else { 4 }, 0))
        .collect();
    for r in &mut degenerate {
        r.completion = looping.into();
    }
    let mut rows = table();
    rows.extend(degenerate.clone());
    let pts = operating_points(&cell_rates(&rows)).unwrap();
    let bad = pts.iter().find(|p| p.alpha == 4.0).unwrap();
    // Hand values: 4/4 refusals on harm_test, every completion degenerate, on the front.
    assert_eq!((bad.refusal_test, bad.degenerate_rate, bad.pareto), (1.0, 1.0, true));
    assert!(pts.iter().filter(|p| p.alpha != 4.0).all(|p| p.degenerate_rate == 0.0));
    let best = best_point(&pts).unwrap();
    assert_eq!((best.intervention.as_str(), best.layer, best.alpha), ("add", 5, 1.0));
    // Only degenerate steered settings: an error instead of a pick.
    let mut only_bad: Vec<Row> = table().into_iter().filter(|r| r.layer < 0).collect();
    only_bad.extend(degenerate);
    let e = best_point(&operating_points(&cell_rates(&only_bad)).unwrap()).unwrap_err().to_string();
    assert!(e.contains("degenerate") && e.contains("coherent"), "{e}");
}

#[test]
fn operating_points_need_a_benign_baseline() {
    let rows: Vec<Row> = table().into_iter().filter(|r| !(r.split == "benign" && r.layer == -1)).collect();
    let err = operating_points(&cell_rates(&rows)).unwrap_err().to_string();
    assert!(err.contains("baseline") && err.contains("benign"), "{err}");
}

#[test]
fn examples_report_names_a_missing_setting() {
    let err = examples_report(&table(), 7, "add", 3.0, 2).unwrap_err().to_string();
    assert!(err.contains('7') || err.contains("3"), "{err}");
    let md = examples_report(&table(), 5, "add", 1.0, 1).unwrap();
    assert!(md.contains("harm_train_0000") && md.contains("benign_0000"), "{md}");
}

fn neox_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/steering_reliability_tiny_neox.toml")
}

fn part_files(dir: &Path) -> BTreeMap<PathBuf, std::time::SystemTime> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "parquet") {
            let t = std::fs::metadata(&p).unwrap().modified().unwrap();
            out.insert(p, t);
        }
    }
    out
}

/// The whole study on the tiny GPT-NeoX checkpoint (parallel residual, plain prompts): directions,
/// the sweep with add and ablate, the α = 0 law, analysis tables, then a crash simulated by deleting
/// a finished cell and its table: the rerun regenerates only that cell, identically.
#[test]
fn tiny_neox_study_sweeps_and_resumes_after_a_lost_cell() {
    let mut cfg = load_config(neox_config(), Some(Mode::Ci)).unwrap();
    cfg.experiment.layers.truncate(2); // blocks 0 and 1
    cfg.experiment.alphas = vec![0.0, 2.0];
    let study = Study::open(cfg).unwrap();
    assert_eq!(study.model.info.arch, "gpt_neox");
    assert_eq!(study.plan.layers, vec![0, 1]);
    let tmp = tempfile::tempdir().unwrap();
    let run = study_run_dir(&study, tmp.path(), "t").unwrap();
    let dirs = study.directions(PrefixSet::Main).unwrap();
    assert_eq!(dirs.keys().copied().collect::<Vec<_>>(), vec![0, 1]);
    save_directions(&study, &run, &dirs, "directions").unwrap();
    for f in ["layer_0.safetensors", "layer_1.safetensors", "control_vector.gguf"] {
        assert!(run.path().join("directions").join(f).is_file(), "{f}");
    }
    let cv = interp_kit::interp::directions::ControlVector::import_gguf(run.path().join("directions/control_vector.gguf")).unwrap();
    assert_eq!(cv.directions.len(), 1, "block 0 has no llama.cpp control vector");

    let df = study.run_sweep(&run, &dirs).unwrap();
    // 3 baseline cells + 2 layers x 2 ops x 2 alphas x 3 splits, 4 prompts each
    let n_cells = 3 + 2 * 2 * 2 * 3;
    assert_eq!(df.height(), 4 * n_cells);
    let rows = rows_from_df(&df).unwrap();
    let base: BTreeMap<(String, String), String> =
        rows.iter().filter(|r| r.layer == -1).map(|r| ((r.split.clone(), r.prompt_id.clone()), r.completion.clone())).collect();
    // add(v, 0) == ablate(v, 0) == the baseline, row by row
    for r in rows.iter().filter(|r| r.layer >= 0 && r.alpha == 0.0) {
        assert_eq!(&r.completion, &base[&(r.split.clone(), r.prompt_id.clone())]);
    }
    // steering at alpha 2 changes some completion (the intervention is live)
    assert!(rows.iter().filter(|r| r.intervention == "add" && r.alpha == 2.0).any(|r| r.completion != base[&(r.split.clone(), r.prompt_id.clone())]));
    let points = operating_points(&cell_rates(&rows)).unwrap();
    assert_eq!(points.len(), 1 + 2 * 2 * 2);
    assert_eq!(figures(&points).unwrap().len() >= 3, true);

    // A crash: one finished steered cell is lost. The rerun regenerates it and nothing else.
    let parts = run.path().join("parts/main");
    let before = part_files(&parts);
    assert_eq!(before.len(), n_cells);
    let reloaded = RunDir::load(run.path()).unwrap();
    let lost = before.keys().last().cloned().unwrap();
    std::fs::remove_file(&lost).unwrap();
    std::fs::remove_file(run.path().join("results.parquet")).unwrap();
    let df2 = study.run_sweep(&reloaded, &dirs).unwrap();
    let after = part_files(&parts);
    assert_eq!(after.len(), n_cells);
    for (p, t) in &before {
        if p != &lost {
            assert_eq!(after[p], *t, "{} was rewritten", p.display());
        }
    }
    let mut a = rows_from_df(&df2).unwrap();
    let mut b = rows;
    let key = |r: &Row| (r.split.clone(), r.layer, r.intervention.clone(), (r.alpha * 1e6) as i64, r.prompt_id.clone());
    a.sort_by_key(key);
    b.sort_by_key(key);
    // Debug text compares NaN (entropy of an empty completion) equal to NaN
    assert!(format!("{a:?}") == format!("{b:?}"), "the regenerated cell differs (generation must be deterministic per seed)");
}

#[test]
fn tiny_neox_rejects_resid_mid_in_the_config() {
    let mut cfg = load_config(neox_config(), Some(Mode::Ci)).unwrap();
    cfg.direction.hook_point = "resid_mid".into();
    let err = match Study::open(cfg) {
        Ok(_) => panic!("resid_mid accepted on a parallel-residual model"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("resid_mid") && err.contains("parallel-residual"), "{err}");
}
