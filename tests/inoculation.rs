//! The ALL-CAPS inoculation study module (interp_kit::studies::inoculation_caps): the acceptance
//! criteria and summaries on synthetic tables with hand-computed values, the committed config and
//! its errors, atomic adapter saving, and the phase 2-4 pipeline (directions, resumable alignment
//! sweep, loss-matched selection) on a tiny fixture model.
mod common;
use common::tiny_chat;
use interp_kit::runs::config::{LayerSpec, Mode};
use interp_kit::prelude::*;
use interp_kit::eval::stats::Bootstrap;
use interp_kit::studies::inoculation_caps::{self as inoc, InoculationConfig, RunPoint};
use std::path::PathBuf;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn committed_text() -> String {
    std::fs::read_to_string(repo().join("configs/inoculation_caps.toml")).unwrap()
}

fn boot() -> Bootstrap {
    Bootstrap::new(500, 0.95, 7)
}

fn mean(x: &[f64]) -> f64 {
    x.iter().sum::<f64>() / x.len() as f64
}

/// A synthetic alignment table at `pre_assistant` (plus `user_end` rows that must be ignored):
/// `cos(cond, dir, layer, example)` and `loss(cond, example)` given.
fn table(conds: &[&str], n_ex: usize, layers: &[u32], n_random: usize, cos: impl Fn(&str, &str, u32, usize) -> f64, loss: impl Fn(&str, usize) -> f64) -> DataFrame {
    table_with_user_end(conds, n_ex, layers, n_random, cos, |_| 0.9, loss)
}

/// As [`table`], with the `user_end` cosine per layer given (NaN: g = 0 there, grad_norm and dot 0).
fn table_with_user_end(
    conds: &[&str],
    n_ex: usize,
    layers: &[u32],
    n_random: usize,
    cos: impl Fn(&str, &str, u32, usize) -> f64,
    user_end: impl Fn(u32) -> f64,
    loss: impl Fn(&str, usize) -> f64,
) -> DataFrame {
    let mut c: (Vec<String>, Vec<String>, Vec<u32>, Vec<String>, Vec<String>, Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) = Default::default();
    let dirs: Vec<String> = std::iter::once("trait".to_string()).chain((0..n_random).map(|k| format!("random_{k}"))).collect();
    for cond in conds {
        for e in 0..n_ex {
            for &l in layers {
                for pos in ["pre_assistant", "user_end"] {
                    for d in &dirs {
                        let v = if pos == "pre_assistant" { cos(cond, d, l, e) } else { user_end(l) };
                        let norm = if v.is_nan() { 0.0 } else { 2.0 };
                        c.0.push(format!("ex{e}"));
                        c.1.push(cond.to_string());
                        c.2.push(l);
                        c.3.push(pos.to_string());
                        c.4.push(d.clone());
                        c.5.push(loss(cond, e));
                        c.6.push(norm);
                        c.7.push(if v.is_nan() { 0.0 } else { norm * v });
                        c.8.push(v);
                    }
                }
            }
        }
    }
    DataFrame::new_infer_height(vec![
        Column::new("example_id".into(), c.0),
        Column::new("condition".into(), c.1),
        Column::new("layer".into(), c.2),
        Column::new("position".into(), c.3),
        Column::new("direction".into(), c.4),
        Column::new("loss".into(), c.5),
        Column::new("grad_norm".into(), c.6),
        Column::new("dot".into(), c.7),
        Column::new("cos".into(), c.8),
    ])
    .unwrap()
}

/// Per-example offset of the inoculation effect: -1, 0, 1, -1, ...
fn wiggle(e: usize) -> f64 {
    (e % 3) as f64 - 1.0
}

fn effect_table(inoc_shift: f64, ctl_shift: f64, n_random: usize) -> DataFrame {
    // align = -cos. Neutral align 0.30 (+ an example offset shared by all conditions);
    // inoculation changes align by inoc_shift + 0.01 wiggle, control by ctl_shift.
    table(
        &["neutral", "inoculation", "exact"],
        10,
        &[3, 7],
        n_random,
        move |c, d, l, e| {
            let base = 0.02 * e as f64 + 0.01 * l as f64;
            if d == "trait" {
                let align = 0.30 + base + match c {
                    "inoculation" => inoc_shift + 0.01 * wiggle(e),
                    "exact" => ctl_shift,
                    _ => 0.0,
                };
                -align
            } else {
                let k: f64 = d.trim_start_matches("random_").parse().unwrap();
                let r = 0.01 * (k - 10.0) + base;
                match c {
                    "inoculation" => r + 0.001 * (k - 9.5),
                    _ => r,
                }
            }
        },
        |c, e| match c {
            "inoculation" => 0.8 + 0.01 * e as f64,
            "exact" => 0.82 + 0.01 * e as f64,
            _ => 1.0 + 0.01 * e as f64,
        },
    )
}

fn runs() -> Vec<RunPoint> {
    let r = |c: &str, a: f64, d: f64| RunPoint { train_condition: c.into(), seed: 0, mean_align: a, projection_drift: d, caps_drift: d / 10.0 };
    vec![r("neutral", 0.3, 2.0), r("inoculation", 0.2, 1.0), r("control", 0.28, 1.8)]
}

#[test]
fn acceptance_criteria_on_a_synthetic_effect() {
    let df = effect_table(-0.10, -0.02, 20);
    let acc = inoc::acceptance(&df, "pre_assistant", "exact", &runs(), &boot()).unwrap();
    let c = &acc.criteria;
    assert_eq!(c.len(), 4);
    // 1: mean over examples of (-0.10 + 0.01 wiggle): wiggles sum to -1 over 10 examples.
    let want1 = -0.10 + 0.01 * (0..10).map(wiggle).sum::<f64>() / 10.0;
    assert!((c[0].value - want1).abs() < 1e-12, "{} vs {want1}", c[0].value);
    let (lo, hi) = c[0].ci.unwrap();
    assert!(lo <= want1 && want1 <= hi && hi < 0.0, "CI [{lo}, {hi}]");
    assert!(c[0].holds);
    // 2: inoculation - control = want1 - (-0.02).
    assert!((c[1].value - (want1 + 0.02)).abs() < 1e-12, "{}", c[1].value);
    assert!(c[1].holds);
    // 3: every random |Δ| <= 0.0105 < |trait Δ|: p = 1 / 21.
    assert!((c[2].value - 1.0 / 21.0).abs() < 1e-12, "{}", c[2].value);
    assert!(c[2].holds);
    // 4: inoculation lower alignment and lower drift; r > 0.
    let x = [0.3, 0.2, 0.28];
    let y = [2.0, 1.0, 1.8];
    assert!((c[3].value - pearson(&x, &y).unwrap().r).abs() < 1e-12);
    // y - 1.6 = 10 (x - 0.26): r = 1, p = 0; the text carries both.
    assert!(c[3].measured.contains("Pearson r over 3 runs = +1.000 (p = 0.00); under 5 runs the ordering decides"), "{}", c[3].measured);
    assert!(c[3].holds);
    assert!((acc.loss_delta - (-0.2)).abs() < 1e-9, "{}", acc.loss_delta);
    assert!(acc.verdict.starts_with("inoculation rotates"), "{}", acc.verdict);
}

#[test]
fn acceptance_reports_a_null_when_only_the_loss_drops() {
    // No change of alignment (the wiggle averages -0.001, CI spans 0), lower loss.
    let df = effect_table(0.0, 0.0, 20);
    let acc = inoc::acceptance(&df, "pre_assistant", "exact", &[], &boot()).unwrap();
    assert!(!acc.criteria[0].holds, "{}", acc.criteria[0]);
    assert!(!acc.criteria[3].holds && acc.criteria[3].measured == "no fine-tunes");
    assert!(acc.verdict.starts_with("null"), "{}", acc.verdict);
    // The control's drop is larger than inoculation's: criterion 2 fails although 1 holds.
    let df = effect_table(-0.05, -0.08, 20);
    let acc = inoc::acceptance(&df, "pre_assistant", "exact", &runs(), &boot()).unwrap();
    assert!(acc.criteria[0].holds && !acc.criteria[1].holds);
    assert!(acc.verdict.starts_with("not established"), "{}", acc.verdict);
    // Inoculation drifts more than neutral: criterion 4 fails.
    let mut r = runs();
    r[1].projection_drift = 3.0;
    let acc = inoc::acceptance(&effect_table(-0.1, 0.0, 20), "pre_assistant", "exact", &r, &boot()).unwrap();
    assert!(!acc.criteria[3].holds);
}

#[test]
fn criterion_4_tests_the_correlation_from_five_runs_on() {
    let df = effect_table(-0.1, 0.0, 20);
    let r = |c: &str, seed: i64, a: f64, d: f64| RunPoint { train_condition: c.into(), seed, mean_align: a, projection_drift: d, caps_drift: 0.0 };
    // Six runs, the ordering holds (inoculation lower in both) and r > 0, but weakly:
    // x = (0.30, 0.31, 0.20, 0.21, 0.28, 0.29), y = (2, 1, 1.5, 0.5, 0.1, 3).
    let weak = vec![
        r("neutral", 0, 0.30, 2.0), r("neutral", 1, 0.31, 1.0),
        r("inoculation", 0, 0.20, 1.5), r("inoculation", 1, 0.21, 0.5),
        r("control", 0, 0.28, 0.1), r("control", 1, 0.29, 3.0),
    ];
    let (x, y): (Vec<f64>, Vec<f64>) = weak.iter().map(|p| (p.mean_align, p.projection_drift)).unzip();
    let pc = pearson(&x, &y).unwrap();
    assert!(pc.r > 0.0 && pc.p > 0.05, "fixture: r {} p {}", pc.r, pc.p);
    let c4 = &inoc::acceptance(&df, "pre_assistant", "exact", &weak, &boot()).unwrap().criteria[3];
    assert!(!c4.holds, "{c4}");
    assert!(c4.measured.ends_with(&format!("Pearson r over 6 runs = {:+.3} (p = {:.2}), needs r > 0 and p < 0.05", pc.r, pc.p)), "{}", c4.measured);
    // The same six runs with drift = 10 x align - 1 (r = 1, p = 0) hold.
    let strong: Vec<RunPoint> = weak.iter().map(|p| RunPoint { projection_drift: 10.0 * p.mean_align - 1.0, ..p.clone() }).collect();
    let c4 = &inoc::acceptance(&df, "pre_assistant", "exact", &strong, &boot()).unwrap().criteria[3];
    assert!(c4.holds && (c4.value - 1.0).abs() < 1e-9, "{c4}");
}

#[test]
fn specificity_needs_enough_random_directions() {
    let df = effect_table(-0.10, -0.02, 2);
    let acc = inoc::acceptance(&df, "pre_assistant", "exact", &runs(), &boot()).unwrap();
    assert!((acc.criteria[2].value - 1.0 / 3.0).abs() < 1e-12);
    assert!(!acc.criteria[2].holds);
    assert!(acc.criteria[2].measured.contains("fewer than 19"), "{}", acc.criteria[2].measured);
}

#[test]
fn specificity_table_and_summary_by_hand() {
    // Two examples, one layer, random_0 and random_1.
    let cos = |c: &str, d: &str, _l: u32, e: usize| -> f64 {
        let e = e as f64;
        match (c, d) {
            ("neutral", "trait") => -0.5 - 0.1 * e,
            ("inoculation", "trait") => -0.2 - 0.1 * e, // align change -0.3
            ("neutral", "random_0") => 0.1,
            ("inoculation", "random_0") => 0.2, // align change -0.1
            ("neutral", _) => 0.0,
            _ => -0.4 * e, // random_1: align change +0.2 (mean of 0 and 0.4)
        }
    };
    let df = table(&["neutral", "inoculation"], 2, &[5], 2, cos, |_, _| 1.0);
    let t = interp_kit::eval::analysis::specificity_table(&df, "pre_assistant", "neutral", "inoculation").unwrap();
    let (l, d, v) = (column_f64(&t, "layer").unwrap(), column_str(&t, "direction").unwrap(), column_f64(&t, "delta").unwrap());
    assert_eq!(d, ["trait", "random_0", "random_1", "trait", "random_0", "random_1"]);
    assert_eq!(l, [5.0, 5.0, 5.0, -1.0, -1.0, -1.0]);
    for (got, want) in v.iter().zip([-0.3, -0.1, 0.2, -0.3, -0.1, 0.2]) {
        assert!((got - want).abs() < 1e-12, "{v:?}");
    }
    let s = interp_kit::eval::analysis::specificity_summary(&t).unwrap();
    let g = |c: &str| column_f64(&s, c).unwrap()[0];
    assert!((g("trait_delta") + 0.3).abs() < 1e-12);
    assert!((g("random_mean") - 0.05).abs() < 1e-12);
    let sd = ((0.15f64.powi(2) * 2.0) / 1.0).sqrt();
    assert!((g("random_sd") - sd).abs() < 1e-12);
    assert!((g("z") - (-0.35 / sd)).abs() < 1e-9);
    // No random |Δ| >= 0.3: p = 1/3.
    assert!((g("p_empirical") - 1.0 / 3.0).abs() < 1e-12);
}

#[test]
fn alignment_summary_and_losses_by_hand() {
    let df = effect_table(-0.10, -0.02, 1);
    let s = inoc::alignment_summary(&df, &boot()).unwrap();
    let s = filter_eq(&s, "position", "pre_assistant").unwrap();
    let s = filter_eq(&filter_eq(&s, "condition", "inoculation").unwrap(), "layer", 7u32).unwrap();
    // align = 0.30 + 0.02 e + 0.07 - 0.10 + 0.01 wiggle(e), averaged over e = 0..9.
    let want = mean(&(0..10).map(|e| 0.27 + 0.02 * e as f64 + 0.01 * wiggle(e)).collect::<Vec<_>>());
    assert!((column_f64(&s, "align").unwrap()[0] - want).abs() < 1e-12);
    assert!((column_f64(&s, "cos").unwrap()[0] + want).abs() < 1e-12);
    assert!((column_f64(&s, "loss").unwrap()[0] - 0.845).abs() < 1e-12);
    let l = inoc::loss_by_condition(&df, &boot()).unwrap();
    assert_eq!(column_str(&l, "condition").unwrap(), ["neutral", "inoculation", "exact"]);
    assert!((column_f64(&l, "loss").unwrap()[2] - 0.865).abs() < 1e-12);
}

/// At the last block `user_end` has g = 0 (no target reads that position), so its cosine is NaN:
/// the by-position mean skips that layer and says so, and both figures still build.
#[test]
fn undefined_cosines_are_left_out_of_layer_means() {
    let layers = [3u32, 7, 23];
    let user_end = |l: u32| match l {
        3 => -0.2,
        7 => -0.4,
        _ => f64::NAN,
    };
    let cos = |c: &str, _: &str, l: u32, e: usize| -(0.01 * l as f64 + 0.001 * e as f64) - if c == "inoculation" { 0.05 } else { 0.0 };
    let df = table_with_user_end(&["neutral", "inoculation"], 4, &layers, 1, cos, user_end, |_, _| 1.0);
    let summ = inoc::alignment_summary(&df, &boot()).unwrap();
    let ue = filter_eq(&filter_eq(&summ, "position", "user_end").unwrap(), "condition", "neutral").unwrap();
    let a = column_f64(&ue, "align").unwrap();
    assert!((a[0] - 0.2).abs() < 1e-12 && (a[1] - 0.4).abs() < 1e-12 && a[2].is_nan(), "{a:?}");
    let t = inoc::align_by_position(&summ).unwrap();
    let (c, p, al) = (column_str(&t, "condition").unwrap(), column_str(&t, "position").unwrap(), column_f64(&t, "align").unwrap());
    let (nl, nu) = (column_f64(&t, "n_layers").unwrap(), column_f64(&t, "n_undefined").unwrap());
    assert_eq!(t.height(), 4);
    for i in 0..t.height() {
        let (want, n, u) = if p[i] == "user_end" {
            (0.3, 2.0, 1.0)
        } else {
            // align = -cos, averaged over e = 0..3 (0.0015) and the three layers (0.11).
            (0.11 + 0.0015 + if c[i] == "inoculation" { 0.05 } else { 0.0 }, 3.0, 0.0)
        };
        assert!((al[i] - want).abs() < 1e-12, "{} {}: {} vs {want}", c[i], p[i], al[i]);
        assert_eq!((nl[i], nu[i]), (n, u), "{} {}", c[i], p[i]);
    }
    inoc::fig_align_by_position(&summ).unwrap();
    inoc::fig_align_vs_layer(&summ, "user_end").unwrap();
}

#[test]
fn heldout_check_and_drift_summaries_by_hand() {
    let held = DataFrame::new_infer_height(vec![
        Column::new("example_id".into(), ["a", "b", "a", "b", "a", "b", "a", "b"]),
        Column::new("kind".into(), ["math"; 8]),
        Column::new("system".into(), ["promote", "promote", "suppress", "suppress", "promote", "promote", "suppress", "suppress"]),
        Column::new("layer".into(), [1u32, 1, 1, 1, 2, 2, 2, 2]),
        Column::new("projection".into(), [3.0, 5.0, 1.0, 2.0, 0.0, 1.0, 1.0, 1.0]),
    ])
    .unwrap();
    let c = inoc::heldout_check(&held, &boot()).unwrap();
    assert_eq!(column_f64(&c, "diff").unwrap(), [2.5, -0.5]);
    assert_eq!(column_f64(&c, "promote").unwrap(), [4.0, 0.5]);
    let holds: Vec<Option<bool>> = c.column("holds").unwrap().bool().unwrap().iter().collect();
    assert_eq!(holds, [Some(true), Some(false)]);

    let gens = DataFrame::new_infer_height(vec![
        Column::new("model".into(), ["base", "base", "neutral_s0", "neutral_s0", "inoculation_s0", "inoculation_s0"]),
        Column::new("train_condition".into(), ["base", "base", "neutral", "neutral", "inoculation", "inoculation"]),
        Column::new("seed".into(), [-1i64, -1, 0, 0, 0, 0]),
        Column::new("example_id".into(), ["x", "y", "x", "y", "y", "x"]),
        Column::new("caps_fraction".into(), [0.0, 0.1, 0.5, 0.7, 0.2, 0.1]),
    ])
    .unwrap();
    let s = inoc::drift_caps_summary(&gens, &boot()).unwrap();
    let sh = column_f64(&s, "shift_vs_base").unwrap();
    assert_eq!(column_str(&s, "model").unwrap(), ["base", "neutral_s0", "inoculation_s0"]);
    assert!((sh[1] - 0.55).abs() < 1e-12 && (sh[2] - 0.1).abs() < 1e-12, "{sh:?}");
    let dn = column_f64(&s, "diff_vs_neutral").unwrap();
    assert!(dn[1].is_nan() && (dn[2] + 0.45).abs() < 1e-12, "{dn:?}");

    // Projections: shift vs base paired by example, vs neutral of the same seed.
    let mk = |m: &str, tc: &str, seed: i64, vals: [f64; 2]| -> DataFrame {
        DataFrame::new_infer_height(vec![
            Column::new("model".into(), [m, m]),
            Column::new("condition".into(), ["neutral", "neutral"]),
            Column::new("example_id".into(), ["x", "y"]),
            Column::new("layer".into(), [4u32, 4]),
            Column::new("hook".into(), ["blocks.4.hook_resid_post"; 2]),
            Column::new("position".into(), ["prompt_last"; 2]),
            Column::new("projection".into(), vals),
            Column::new("n_tokens".into(), [1u32, 1]),
            Column::new("train_condition".into(), [tc, tc]),
            Column::new("seed".into(), [seed, seed]),
        ])
        .unwrap()
    };
    let proj = mk("base", "base", -1, [1.0, 2.0]).vstack(&mk("neutral_s0", "neutral", 0, [3.0, 5.0])).unwrap().vstack(&mk("inoculation_s0", "inoculation", 0, [1.5, 2.5])).unwrap();
    let p = interp_kit::eval::analysis::drift_projection_summary(&proj, &Default::default(), &boot()).unwrap();
    assert_eq!(column_str(&p, "model").unwrap(), ["inoculation_s0", "neutral_s0"]);
    assert_eq!(column_f64(&p, "shift_vs_base").unwrap(), [0.5, 2.5]);
    let dn = column_f64(&p, "diff_vs_neutral").unwrap();
    assert!((dn[0] + 2.0).abs() < 1e-12 && dn[1].is_nan(), "{dn:?}");
    // Run points: mean training alignment per run and the drifts.
    let training = DataFrame::new_infer_height(vec![
        Column::new("condition".into(), ["neutral", "neutral", "inoculation", "inoculation"]),
        Column::new("seed".into(), [0i64, 0, 0, 0]),
        Column::new("align".into(), [0.2, 0.4, 0.1, 0.0]),
    ])
    .unwrap();
    let rp = inoc::run_points(&training, &proj, &gens, &boot()).unwrap();
    assert_eq!(rp.len(), 2);
    let ino = rp.iter().find(|r| r.train_condition == "inoculation").unwrap();
    assert!((ino.mean_align - 0.05).abs() < 1e-12 && (ino.projection_drift - 0.5).abs() < 1e-12 && (ino.caps_drift - 0.1).abs() < 1e-12, "{ino:?}");
}

#[test]
fn committed_config_loads_with_modes() {
    let cfg = InoculationConfig::from_toml(&committed_text(), repo().join("configs")).unwrap();
    assert_eq!(cfg.mode, Mode::Fast);
    assert_eq!(cfg.run_id(), "run_001");
    let s = cfg.sizes();
    assert!(s.n_calibration >= 32 && s.n_calibration <= 128, "the issue's fast settings: 32-128 calibration examples");
    assert_eq!(cfg.candidates().len(), cfg.prompts.candidates.len());
    let names: Vec<String> = cfg.all_conditions().iter().map(|c| c.name.clone()).collect();
    assert_eq!(&names[..2], ["neutral", "inoculation"]);
    let ci = InoculationConfig::from_toml(&committed_text().replace("mode = \"fast\"", "mode = \"ci\""), repo().join("configs")).unwrap();
    assert_eq!(ci.run_id(), "run_001_ci");
    assert_eq!(ci.candidates().len(), ci.sizes().n_candidates);
    assert_eq!(ci.all_conditions().len(), 2 + ci.sizes().n_candidates);
    let lc = inoc::lora_config(&ci.sizes().lora, 5).unwrap();
    assert_eq!(lc.r, ci.sizes().lora.r);
}

#[test]
fn bad_configs_name_the_problem() {
    let base = repo().join("configs");
    let err = |t: String| format!("{:#}", InoculationConfig::from_toml(&t, &base).unwrap_err());
    let e = err(committed_text().replace("system = \"Answer step-by-step and be explicit.\"", "system = \"Answer in capital letters.\""));
    assert!(e.contains("mentions caps") && e.contains("step_by_step"), "{e}");
    let e = err(committed_text().replace("gen_k = 3", "gen_k = 9"));
    assert!(e.contains("[modes.ci]") && e.contains("gen_k"), "{e}");
    let e = err(committed_text().replace("preset = \"qv\"\nr = 4", "preset = \"qz\"\nr = 4"));
    assert!(e.contains("qz") && e.contains("all_linear"), "{e}");
    let e = err(committed_text().replace("[run]", "[run]\nrun_idd = \"x\""));
    assert!(e.contains("run_idd"), "{e}");
    let e = err(committed_text().replace("{ name = \"exact\"", "{ name = \"neutral\""));
    assert!(e.contains("used twice"), "{e}");
    let e = err(committed_text().replace("../datasets/inoculation_caps", "../datasets/nope"));
    assert!(e.contains("data.dir") && e.contains("nope"), "{e}");
}

#[test]
fn adapters_are_saved_atomically_and_reload() {
    let m = tiny_chat("qwen2");
    let dir = std::env::temp_dir().join(format!("inoc_adapter_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let target = dir.join("adapters/neutral_s0");
    let a = LoraAdapter::new(&m, &LoraConfig::qv(2, 4.0).with_seed(1)).unwrap();
    a.save_atomic(&target).unwrap();
    let b = LoraAdapter::new(&m, &LoraConfig::qv(2, 4.0).with_seed(2)).unwrap();
    b.save_atomic(&target).unwrap(); // replaces the first
    let entries: Vec<String> = std::fs::read_dir(dir.join("adapters")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
    assert_eq!(entries, ["neutral_s0"], "no temporary directory is left behind");
    let back = LoraAdapter::load(&target, &m).unwrap();
    for (name, mb) in b.modules() {
        let got: Vec<f32> = back.module(name).unwrap().a.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let want: Vec<f32> = mb.a.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(got, want, "{name}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}


/// Phases 2-4 on the tiny model: directions saved with their hook points and equal to the mean
/// difference; the alignment sweep resumes after a lost part and gives the same table; the
/// loss-matched control is the candidate with the closest mean loss.
#[test]
fn tiny_pipeline_resumes_and_selects() {
    let root = std::env::temp_dir().join(format!("inoc_runs_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let text = committed_text().replace("mode = \"fast\"", "mode = \"ci\"");
    let mut cfg = InoculationConfig::from_toml(&text, repo().join("configs")).unwrap();
    // Short texts: the tiny model reads bytes and has 128 positions.
    let p = &mut cfg.prompts;
    (p.neutral, p.inoculation, p.promote, p.suppress) = ("Hi.".into(), "Data: CAPS.".into(), "CAPS!".into(), "calm.".into());
    for (i, c) in p.candidates.iter_mut().enumerate() {
        c.system = ["Be brief.", "Steps.", "Exact.", "Tutor.", "Format."][i % 5].into();
    }
    let data_dir = root.join("data");
    common::caps_short_dataset().write_dir(&data_dir).unwrap();
    cfg.data.dir = data_dir;
    cfg.model.name = common::fixture_dir("qwen2").to_string_lossy().to_string();
    cfg.run.output_root = root.clone();
    cfg.modes.ci.layers = vec![LayerSpec::Index(0), LayerSpec::Index(2)];
    cfg.modes.ci.n_calibration = 2;
    cfg.modes.ci.n_direction = 4;
    let study = inoc::Inoculation::with_model(cfg, tiny_chat("qwen2")).unwrap();
    assert_eq!(study.layers, [0, 2]);
    assert!(study.run.path().ends_with("inoculation_caps/run_001_ci"));
    let ds = study.extract_directions().unwrap();
    assert_eq!(column_f64(&ds, "layer").unwrap(), [0.0, 2.0]);
    let dirs = study.directions().unwrap();
    // The saved direction is the promote - suppress mean difference at pre_assistant.
    let prompts: Vec<String> = study.direction_prompts("extract", 4).into_iter().map(|p| p.2).collect();
    let kinds: Vec<String> = study.direction_prompts("extract", 4).into_iter().map(|p| p.1).collect();
    assert_eq!(kinds, ["math", "general", "math", "general"]);
    let acts = |sys: &str| {
        let p = PromptIds::encode_all(&study.model, &prompts, &PromptFormat::Chat { system: Some(sys.into()) }).unwrap();
        collect_activations(&study.model, &p, &[HookPoint::resid_post(2)], &ReadAt::Named(Position::PreAssistant), 4).unwrap()
    };
    let want = mean_diff(&acts(&study.cfg.prompts.promote)[&HookPoint::resid_post(2)], &acts(&study.cfg.prompts.suppress)[&HookPoint::resid_post(2)]).unwrap();
    assert!(dirs[1].cosine(&want).unwrap() > 0.99999 && (dirs[1].norm() - want.norm()).abs() < 1e-4 * want.norm());

    let al = study.alignment().unwrap();
    let n_dirs = 1 + study.sizes().n_random;
    let n_pos = 2 + study.sizes().k_assistant;
    assert_eq!(al.height(), study.cfg.all_conditions().len() * 2 * 2 * n_pos * n_dirs);
    // Lose one finished cell's part and the collected table: the sweep recomputes that cell only.
    let parts = study.run.join("parts/alignment").unwrap();
    let part = std::fs::read_dir(&parts).unwrap().map(|e| e.unwrap().path()).find(|p| p.extension().is_some_and(|x| x == "parquet")).unwrap();
    std::fs::remove_file(&part).unwrap();
    std::fs::remove_file(study.run.join("alignment.parquet").unwrap()).unwrap();
    let again = study.alignment().unwrap();
    assert_eq!(again.height(), al.height());
    let (a, b) = (column_f64(&al, "cos").unwrap(), column_f64(&again, "cos").unwrap());
    let bad: Vec<(usize, f64, f64)> = a.iter().zip(&b).enumerate().filter(|(_, (x, y))| !((*x - *y).abs() < 1e-9 || (x.is_nan() && y.is_nan()))).map(|(i, (x, y))| (i, *x, *y)).take(5).collect();
    assert!(bad.is_empty(), "resumed table differs: {bad:?} {:?} vs {:?}", column_str(&al, "condition").unwrap()[..4].to_vec(), column_str(&again, "condition").unwrap()[..4].to_vec());
    let align = column_f64(&al, "align").unwrap();
    // NaN where g = 0 (user_end at the last block: no target reads it).
    assert!(a.iter().zip(&align).all(|(c, x)| (c + x).abs() < 1e-15 || (c.is_nan() && x.is_nan())));

    let sel = study.select_control(&al).unwrap();
    let losses = inoc::loss_by_condition(&al, &boot()).unwrap();
    let (names, ls) = (column_str(&losses, "condition").unwrap(), column_f64(&losses, "loss").unwrap());
    let ino = ls[names.iter().position(|n| n == "inoculation").unwrap()];
    let best = names.iter().zip(&ls).filter(|(n, _)| *n != "inoculation" && *n != "neutral").min_by(|x, y| (x.1 - ino).abs().total_cmp(&(y.1 - ino).abs())).unwrap();
    assert_eq!(&sel.chosen, best.0);
    assert_eq!(study.control().unwrap().system, sel.chosen_system);
    assert!(study.run.join("loss_matched.json").unwrap().is_file());
    std::fs::remove_dir_all(&root).unwrap();
}
