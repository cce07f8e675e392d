//! The trait-monitoring study (issue 21): the dataset loader and its errors, the filter and
//! coherence rules, and the whole pipeline on the tiny Qwen2 fixture with the byte-level chat
//! tokenizer (random weights: the numbers are noise; the laws between the tables are not), with a
//! crash simulated in the steering sweep.
mod common;
use interp_kit::eval::metrics::refusal::refusal;
use interp_kit::eval::stats::{cohens_d, Bootstrap};
use interp_kit::interp::directions::ControlVector;
use interp_kit::interp::extract::Method;
use interp_kit::interp::readout::readout;
use interp_kit::hooks::HookPoint;
use interp_kit::model::quantize::Precision;
use interp_kit::runs::config::{LayerSpec, Mode};
use interp_kit::studies::trait_monitoring::data::{Scorer, TraitData};
use interp_kit::studies::trait_monitoring::*;
use interp_kit::tables::from_df;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn quant_deltas_say_each_effect_and_its_coherence() {
    let row = |p: &str, d: Option<f64>, c: Option<f64>, ok: Option<bool>| QuantSteer {
        precision: p.into(),
        layer: Some(3),
        coef: Some(2.0),
        baseline: Some(1.0),
        steered: d.map(|d| 1.0 + d),
        delta: d,
        coherence: c,
        coherent: ok,
        cosine: None,
        note: String::new(),
    };
    let t = [row("q8_0", Some(1.11), Some(53.21), Some(true)), row("q4_0", Some(3.645), Some(49.72), Some(false)), row("q4_k", None, None, None)];
    assert_eq!(
        quant_deltas(&t, &["q8_0", "q4_0", "q4_k", "q2_k"]),
        "q8_0 Δ +1.110 (coherence 53.2), q4_0 Δ +3.645 (coherence 49.7: INCOHERENT), q4_k Δ null, q2_k Δ null"
    );
    assert!((delta_ratio(&t, "q8_0", "q4_0").unwrap() - 1.11 / 3.645).abs() < 1e-12);
    assert_eq!(delta_ratio(&t, "q8_0", "q4_k"), None);
}

#[test]
fn committed_dataset_loads_with_both_splits() {
    let d = TraitData::load(root().join("datasets/trait_monitoring")).unwrap();
    assert!(d.traits.len() >= 4);
    assert!(d.traits.iter().any(|t| t.scorer == Scorer::Caps) && d.traits.iter().any(|t| t.scorer == Scorer::Refusal));
    for t in &d.traits {
        let (e, v) = (d.questions_of(&t.name, "extract").len(), d.questions_of(&t.name, "eval").len());
        assert!(e + v >= 20 && e > 0 && v > 0, "{}: {e} + {v}", t.name);
        assert_eq!(t.positive.len(), t.negative.len());
    }
    // the committed config parses in every mode against this dataset
    let cfg = TraitConfig::load(root().join("configs/trait_monitoring.toml")).unwrap();
    for m in [Mode::Ci, Mode::Fast, Mode::Full] {
        for t in &cfg.sizes_of(m).traits {
            let td = d.trait_def(t).unwrap();
            assert!(cfg.sizes_of(m).n_extract <= d.questions_of(&td.name, "extract").len(), "{m:?} {t}");
            assert!(cfg.sizes_of(m).n_eval <= d.questions_of(&td.name, "eval").len(), "{m:?} {t}");
        }
    }
}

#[test]
fn loader_errors_name_file_line_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let traits = r#"{"trait":"x","scorer":"caps","description":"d","positive":["p"],"negative":["n"]}"#;
    std::fs::write(tmp.path().join("traits.jsonl"), format!("{traits}\n")).unwrap();
    std::fs::write(
        tmp.path().join("questions.jsonl"),
        "{\"trait\":\"x\",\"id\":\"a\",\"split\":\"extract\",\"question\":\"q\"}\n\n{\"trait\":\"x\",\"id\":\"b\",\"split\":\"eval\"}\n",
    )
    .unwrap();
    let e = format!("{:#}", TraitData::load(tmp.path()).unwrap_err());
    assert!(e.contains("questions.jsonl line 3: field `question`: missing"), "{e}");

    std::fs::write(tmp.path().join("traits.jsonl"), r#"{"trait":"x","scorer":"caps","description":"d","positive":["p"]}"#).unwrap();
    let e = format!("{:#}", TraitData::load(tmp.path()).unwrap_err());
    assert!(e.contains("traits.jsonl line 1: field `negative`: missing"), "{e}");

    std::fs::write(tmp.path().join("traits.jsonl"), r#"{"trait":"x","scorer":"judge","description":"d","judge":"rate {completion}","positive":["p"],"negative":["n"]}"#).unwrap();
    let e = format!("{:#}", TraitData::load(tmp.path()).unwrap_err());
    assert!(e.contains("traits.jsonl line 1: field `judge`: the template has no {prompt}"), "{e}");
}

#[test]
fn filter_and_coherence_rules() {
    assert!(keep(true, Some(50.0), 70.0, 70.0, false));
    assert!(!keep(true, Some(49.9), 90.0, 70.0, false));
    assert!(keep(false, Some(49.9), 70.0, 70.0, false));
    assert!(!keep(false, Some(50.0), 90.0, 70.0, false));
    assert!(!keep(true, Some(90.0), 69.9, 70.0, false), "incoherent rows are dropped");
    assert!(!keep(true, None, 90.0, 70.0, false), "no trait score, no row");
    assert!(!keep(true, Some(90.0), 90.0, 70.0, true), "empty responses are dropped");
    assert_eq!(coherence(Some(90.0), 0.6), 40.0);
    assert_eq!(coherence(Some(30.0), 0.0), 30.0);
    assert_eq!(coherence(None, 0.25), 75.0);
    // gibberish (degeneracy >= 0.5) is never coherent at the default threshold, whatever the judge says
    assert!(coherence(Some(100.0), 0.5) < 70.0);
}

#[test]
fn cohens_d_ci_matches_hand_value() {
    // means 2 and 1, both SDs 1: d = 1
    let (d, lo, hi) = cohens_d_ci(&[1.0, 2.0, 3.0], &[0.0, 1.0, 2.0], &Bootstrap::new(500, 0.95, 3)).unwrap();
    assert!((d - 1.0).abs() < 1e-12);
    assert!(lo <= d && d <= hi && lo < hi);
    assert!(cohens_d_ci(&[1.0], &[0.0, 1.0], &Bootstrap::new(10, 0.95, 0)).is_none(), "one value: no d");
}

fn part_files(dir: &Path) -> BTreeMap<PathBuf, std::time::SystemTime> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .map(|p| {
            let t = std::fs::metadata(&p).unwrap().modified().unwrap();
            (p, t)
        })
        .collect()
}

/// The ci size on the embedded model, end to end, with its wall time (run with `--ignored`; the
/// smoke notebook `notebooks/trait_monitoring/00_smoke.ipynb` does the same in Jupyter).
#[test]
#[ignore]
fn embedded_ci_pipeline() {
    let Some(model) = common::embedded() else { return };
    let mut cfg = TraitConfig::load(root().join("configs/trait_monitoring.toml")).unwrap();
    cfg.mode = Mode::Ci;
    let tmp = tempfile::tempdir().unwrap();
    let t0 = std::time::Instant::now();
    let study = TraitStudy::with_model(cfg, model, tmp.path()).unwrap();
    let lap = |what: &str| println!("{what}: {:.1} s", t0.elapsed().as_secs_f64());
    study.generate().unwrap();
    println!("{}", study.filter_summary().unwrap());
    lap("generate");
    study.extract().unwrap();
    lap("extract");
    println!("{}", study.monitor().unwrap());
    lap("monitor");
    println!("{}", study.steer().unwrap());
    lap("steer");
    println!("{}", study.jailbreak().unwrap());
    lap("jailbreak");
    println!("{}", study.quantization().unwrap());
    lap("quantization");
    println!("{}", study.report().unwrap().markdown());
    lap("total");
}

#[test]
fn tiny_qwen2_pipeline_end_to_end_and_resumes() {
    let mut cfg = TraitConfig::load(root().join("configs/trait_monitoring.toml")).unwrap();
    cfg.mode = Mode::Ci;
    {
        let s = &mut cfg.modes.ci;
        s.layers = Some(vec![LayerSpec::Index(1), LayerSpec::Index(2)]);
        s.steer_layers = vec![LayerSpec::Index(1), LayerSpec::Index(2)];
        s.jailbreak_layer = LayerSpec::Index(1);
        s.n_extract = 3;
        s.n_eval = 3;
        s.max_new_tokens = 8;
        s.search.steps = 3;
        // threshold 0: every step is coherent, so the search, its best and the quantization
        // steering all run on a random model (the incoherent-at-start path is unit-tested)
        s.search.threshold = 0.0;
        s.n_jailbreak = 5;
        s.batch_size = 4;
        s.precisions = vec![Precision::F32, Precision::BF16, Precision::Q8_0, Precision::Q4_0, Precision::Q4K];
        s.n_boot = 100;
    }
    let tmp = tempfile::tempdir().unwrap();
    let study = TraitStudy::with_model(cfg, common::tiny_long_qwen2(tmp.path()), tmp.path()).unwrap();
    assert_eq!(study.layers, vec![1, 2]);

    // 1. generation and the filter
    let gens: Vec<GenRow> = from_df(&study.generate().unwrap()).unwrap();
    assert_eq!(gens.len(), 4 * 2 * 2 * 3);
    for r in &gens {
        assert_eq!(r.kept, keep(r.polarity == "positive", r.trait_score, r.coherence, 0.0, r.response_ids.is_empty()), "{r:?}");
        assert_eq!(r.coherence, coherence(r.judge_coherence, r.degeneracy));
        if r.trait_name == "all_caps" {
            assert!((r.trait_score.unwrap() - 100.0 * interp_kit::eval::metrics::caps_fraction(&r.response)).abs() < 1e-12);
        }
    }
    let filt = study.filter_summary().unwrap();
    assert_eq!(filt.height(), 8);

    // 2. vectors: every trait x method x layer as safetensors, a GGUF per trait x method
    let ex: Vec<ExtractRow> = from_df(&study.extract().unwrap()).unwrap();
    assert_eq!(ex.len(), 4 * 3 * 2);
    for t in ["all_caps", "refusal", "formality", "sycophancy"] {
        for m in Method::ALL {
            for l in [1, 2] {
                let d = study.vector(t, m, l).unwrap();
                assert_eq!(d.dim(), 64);
                assert_eq!(d.meta.hook, Some(HookPoint::resid_post(l)));
                assert!((d.norm() - 1.0).abs() < 1e-4);
            }
            let cv = ControlVector::import_gguf(study.run.path().join(format!("vectors/{t}/{}.gguf", m.name()))).unwrap();
            assert_eq!(cv.layers(), vec![1, 2]);
            for l in [1, 2] {
                let c = cv.get(l).unwrap().cosine(&study.vector(t, m, l).unwrap()).unwrap();
                assert!(c > 0.9999, "{t} {m} layer {l}: GGUF cos {c}");
            }
        }
    }
    // mean_diff is the unit difference of the class means of the response-averaged activations
    let sel = select(&gens, "all_caps", "extract", 2).unwrap();
    let rows: Vec<_> = sel.pos.iter().chain(&sel.neg).map(|r| r.generated().unwrap()).collect();
    let ro = readout(&study.model, &rows, &[HookPoint::resid_post(2)], 8).unwrap();
    let a: Vec<Vec<f32>> = ro.response_mean[&HookPoint::resid_post(2)].to_vec2().unwrap();
    let np = sel.pos.len();
    let mean = |v: &[Vec<f32>]| (0..64).map(|j| v.iter().map(|r| r[j] as f64).sum::<f64>() / v.len() as f64).collect::<Vec<_>>();
    let (mp, mn) = (mean(&a[..np]), mean(&a[np..]));
    let diff: Vec<f64> = mp.iter().zip(&mn).map(|(p, n)| p - n).collect();
    let norm = diff.iter().map(|x| x * x).sum::<f64>().sqrt();
    let v = study.vector("all_caps", Method::MeanDiff, 2).unwrap();
    let c: f64 = diff.iter().zip(&v.vector).map(|(d, x)| d / norm * *x as f64).sum();
    assert!(c > 0.9999, "mean_diff vs hand mean difference: cos {c}");
    // and the base coefficient's norm is the mean row norm of those activations
    let e = ex.iter().find(|e| e.trait_name == "all_caps" && e.layer == 2 && e.method == "mean_diff").unwrap();
    let hand = a.iter().map(|r| r.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt()).sum::<f64>() / a.len() as f64;
    assert!((e.mean_norm - hand).abs() < 1e-4 * hand, "{} vs {hand}", e.mean_norm);

    // 3. monitoring: Cohen's d per layer x method equals the one recomputed from the projections
    let sep: Vec<SepRow> = from_df(&study.monitor().unwrap()).unwrap();
    assert_eq!(sep.len(), 4 * 2 * 3);
    let proj: Vec<ProjRow> = from_df(&study.run.read_parquet("monitor_projections.parquet").unwrap()).unwrap();
    for s in &sep {
        let of = |p: bool| proj.iter().filter(|r| r.trait_name == s.trait_name && r.layer == s.layer && r.method == s.method && r.positive == p).map(|r| r.projection).collect::<Vec<_>>();
        let d = cohens_d(&of(true), &of(false)).ok();
        assert_eq!(s.cohens_d.is_some(), d.is_some());
        if let (Some(a), Some(b)) = (s.cohens_d, d) {
            assert!((a - b).abs() < 1e-12);
            if let (Some(lo), Some(hi)) = (s.d_lo, s.d_hi) {
                assert!(lo <= hi);
            }
        }
        let acc = s.accuracy.unwrap();
        assert!((0.0..=1.0).contains(&acc));
    }
    let traces = study.run.read_parquet("token_traces.parquet").unwrap();
    for c in ["row", "token_index", "token_text", "layer", "projection", "positive", "method"] {
        assert!(traces.column(c).is_ok(), "{c}");
    }
    // one value per response token per layer: trace_rows (2) rows x 8 tokens x 2 layers x 4 traits at most
    assert!(traces.height() > 0 && traces.height() <= 2 * 8 * 2 * 4);

    // 4. steering: the coefficient sequence follows the search rule from 0.7 x base
    let summary: Vec<SteerSummary> = from_df(&study.steer().unwrap()).unwrap();
    assert_eq!(summary.len(), 3 * 2);
    let steps: Vec<SteerRow> = from_df(&study.run.read_parquet("steering.parquet").unwrap()).unwrap();
    let base_rows: Vec<BaselineRow> = from_df(&study.run.read_parquet("steering_baseline.parquet").unwrap()).unwrap();
    for s in &summary {
        let st: Vec<&SteerRow> = steps.iter().filter(|r| r.method == s.method && r.layer == s.layer).collect();
        assert_eq!(st.len(), 3);
        let e = ex.iter().find(|e| e.trait_name == "all_caps" && e.layer == s.layer && e.method == s.method).unwrap();
        assert!((st[0].base - e.mean_norm).abs() < 1e-3 * e.mean_norm, "unit vectors: base = mean norm");
        assert!((st[0].coef - 0.7 * st[0].base).abs() < 1e-9 * st[0].coef);
        for w in st.windows(2) {
            let f = if w[0].coherent { 1.3 } else { 0.85 };
            assert!((w[1].coef - w[0].coef * f).abs() < 1e-9 * w[1].coef);
        }
        let best = st.iter().map(|r| r.trait_score).fold(f64::NEG_INFINITY, f64::max);
        assert!((s.best_delta.unwrap() - (best - base_rows[0].trait_score)).abs() < 1e-9);
    }
    assert!(std::fs::metadata(study.run.path().join("figures/steering_all_caps.png")).is_ok());

    // 5. jailbreak-style monitoring: success is the model's own compliance by the refusal metric
    let js: Vec<JailSep> = from_df(&study.jailbreak().unwrap()).unwrap();
    assert_eq!(js.len(), 2 * 3 * 2);
    let jr: Vec<JailRow> = from_df(&study.run.read_parquet("jailbreak.parquet").unwrap()).unwrap();
    assert_eq!(jr.len(), 5 * 2 * 3);
    for r in &jr {
        assert_eq!(r.success, !refusal(&r.response).is_refusal);
    }

    // 6. quantization: f32 reproduces itself exactly, bf16 nearly, q4_k is named as impossible here
    let qt: Vec<QuantSteer> = from_df(&study.quantization().unwrap()).unwrap();
    assert_eq!(qt.len(), 5);
    let qc: Vec<QuantCos> = from_df(&study.run.read_parquet("quant_cosines.parquet").unwrap()).unwrap();
    for c in qc.iter().filter(|c| c.precision == "f32") {
        assert!((c.cosine.unwrap() - 1.0).abs() < 1e-5, "{c:?}");
    }
    for c in qc.iter().filter(|c| c.precision == "bf16" && c.method == "mean_diff") {
        assert!(c.cosine.unwrap() > 0.99, "{c:?}");
    }
    let q4k = qc.iter().find(|c| c.precision == "q4_k").unwrap();
    assert!(q4k.cosine.is_none() && q4k.note.contains("q4_k") && q4k.note.contains("256"), "{q4k:?}");
    let t4k = qt.iter().find(|r| r.precision == "q4_k").unwrap();
    assert!(t4k.delta.is_none() && t4k.note.contains("q4_k"), "{t4k:?}");
    // f32 at the search's best layer and coefficient reproduces the search's best delta
    let probe_best = method_table(&summary, "all_caps").into_iter().find(|r| r.method == "probe").unwrap();
    let f = qt.iter().find(|r| r.precision == "f32").unwrap();
    assert_eq!(f.layer, Some(probe_best.layer));
    assert!((f.delta.unwrap() - probe_best.best_delta.unwrap()).abs() < 1e-9, "{f:?} vs {probe_best:?}");
    assert!((f.cosine.unwrap() - 1.0).abs() < 1e-5);

    // 7. report: plan value beside measured, nulls as nulls
    let rep = study.report().unwrap();
    assert_eq!(rep.findings.len(), 5);
    let bos = &rep.findings[0];
    let (lead, expected, bad) = study.bos_audit().unwrap();
    assert_eq!((bos.measured, bad), (Some(lead as f64), 0));
    assert_eq!(lead, expected);
    let jd = rep.findings.iter().find(|f| f.name == "jailbreak_cohens_d").unwrap();
    let cell = js.iter().find(|r| r.layer == 1 && r.method == "probe" && r.readout == "response").unwrap();
    assert_eq!(jd.measured, cell.cohens_d);
    let int4 = rep.findings.iter().find(|f| f.name == "int4_15x_smaller").unwrap();
    assert_eq!(int4.measured, delta_ratio(&qt, "q8_0", "q4_0"));
    assert!(int4.detail.contains(&quant_deltas(&qt, &["q8_0", "q4_0"])), "{}", int4.detail);
    let json = std::fs::read_to_string(study.run.path().join("report.json")).unwrap();
    for f in &rep.findings {
        if f.measured.is_none() {
            assert!(json.contains("\"measured\": null"), "a missing measurement is written as null");
        }
    }
    assert!(study.run.path().join("reports/report.md").is_file());

    // A crash: one steering cell is lost; the rerun recomputes it alone, identically.
    let parts = study.run.path().join("parts/steering");
    let before = part_files(&parts);
    assert_eq!(before.len(), 6);
    let lost = before.keys().next().cloned().unwrap();
    std::fs::remove_file(&lost).unwrap();
    std::fs::remove_file(study.run.path().join("steering.parquet")).unwrap();
    let again: Vec<SteerSummary> = from_df(&study.steer().unwrap()).unwrap();
    let after = part_files(&parts);
    for (p, t) in &before {
        if p != &lost {
            assert_eq!(after[p], *t, "{} was rewritten", p.display());
        }
    }
    assert_eq!(format!("{again:?}"), format!("{summary:?}"));
}
