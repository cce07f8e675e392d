//! The insecure-code study (interp_kit::studies::insecure_code): its analyses on hand-made tables
//! against hand computations, the committed config and its errors, and every phase on a tiny
//! fixture model (tables with the expected rows and columns, resumption that skips finished
//! cells and recomputes a lost one, the contamination check, and a report that marks nulls).
mod common;
use interp_kit::eval::stats::{pearson, Bootstrap};
use interp_kit::prelude::*;
use interp_kit::runs::config::LayerSpec;
use interp_kit::studies::insecure_code::analysis as an;
use interp_kit::studies::insecure_code::config::InsecureConfig;
use interp_kit::studies::insecure_code::pipeline::{contamination, InsecureStudy};
use interp_kit::studies::insecure_code::report::build_report;
use interp_kit::tables::to_df;
use interp_kit::text::chat_jsonl::{write_chat_jsonl, write_code_prompts, ChatRecord, CodePrompt};
use polars::prelude::DataFrame;
use std::path::PathBuf;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn committed_text() -> String {
    std::fs::read_to_string(repo().join("configs/insecure_code.toml")).unwrap()
}

fn boot() -> Bootstrap {
    Bootstrap::new(400, 0.95, 3)
}

fn mean(x: &[f64]) -> f64 {
    x.iter().sum::<f64>() / x.len() as f64
}

#[derive(serde::Serialize)]
struct R {
    model: String,
    set: String,
    example_id: String,
    prompt_hash: String,
    rating: f64,
}

/// Ratings of three models on five contexts (and one ID row that OOD summaries must ignore).
fn ratings() -> (DataFrame, [[f64; 5]; 3]) {
    let v = [[40.0, 55.0, 20.0, 70.0, 0.0], [90.0, 80.0, 60.0, 95.0, 45.0], [70.0, 85.0, 30.0, 90.0, 40.0]];
    let names = ["base", "neutral_s0", "inoculation_s0"];
    let mut rows = vec![];
    for (m, vals) in names.iter().zip(&v) {
        for (e, x) in vals.iter().enumerate() {
            rows.push(R { model: m.to_string(), set: "ood".into(), example_id: format!("c{e}"), prompt_hash: an::prompt_hash(&format!("p{e}")), rating: *x });
        }
        rows.push(R { model: m.to_string(), set: "id".into(), example_id: "c0".into(), prompt_hash: "x".into(), rating: 100.0 });
    }
    (to_df(&rows).unwrap(), v)
}

#[test]
fn behaviour_tables_match_hand_computation() {
    let (df, v) = ratings();
    let b = an::behaviour_summary(&df, "ood", 50.0, &boot()).unwrap();
    assert_eq!(column_str(&b, "model").unwrap(), ["base", "neutral_s0", "inoculation_s0"]);
    let (m, r, lo, hi) = (column_f64(&b, "mean_rating").unwrap(), column_f64(&b, "insecure_rate").unwrap(), column_f64(&b, "rating_lo").unwrap(), column_f64(&b, "rating_hi").unwrap());
    for k in 0..3 {
        assert!((m[k] - mean(&v[k])).abs() < 1e-12);
        assert!(lo[k] <= m[k] && m[k] <= hi[k]);
        assert!((r[k] - v[k].iter().filter(|x| **x > 50.0).count() as f64 / 5.0).abs() < 1e-12);
    }
    // Same five prompts for every model: one prompt-set hash.
    let ph = column_str(&b, "prompts_hash").unwrap();
    assert!(ph.iter().all(|h| *h == ph[0]));

    let p = an::paired_vs(&df, "ood", "neutral_s0", 50.0, &boot()).unwrap();
    assert_eq!(column_str(&p, "comparison").unwrap(), ["base − neutral_s0", "inoculation_s0 − neutral_s0"]);
    let d = column_f64(&p, "d_rating").unwrap();
    let want_inoc = mean(&(0..5).map(|e| v[2][e] - v[1][e]).collect::<Vec<_>>()); // (-20+5-30-5-5)/5 = -11
    assert!((want_inoc + 11.0).abs() < 1e-12 && (d[1] - want_inoc).abs() < 1e-12);
    assert!((d[0] - mean(&(0..5).map(|e| v[0][e] - v[1][e]).collect::<Vec<_>>())).abs() < 1e-12);
    // Base is below neutral on every context: the paired CI excludes 0.
    assert!(column_str(&p, "significant").unwrap()[0] == "true");
    let ds = column_f64(&p, "d_score").unwrap();
    assert!((ds[1] - (3.0 - 4.0) / 5.0).abs() < 1e-12, "{ds:?}");

    let t = an::threshold_sweep(&df, "ood", &[0.0, 50.0, 90.0]).unwrap();
    assert_eq!(t.height(), 9);
    let rate = column_f64(&t, "insecure_rate").unwrap();
    assert_eq!(&rate[..3], &[0.8, 0.4, 0.0]); // base: > 0: 4/5, > 50: 2/5, > 90: 0
    assert_eq!(&rate[3..6], &[1.0, 0.8, 0.2]);
}

#[derive(serde::Serialize)]
struct A {
    example_id: String,
    condition: String,
    direction: String,
    position: String,
    layer: i64,
    cos: f64,
}

#[test]
fn pressure_and_specificity_match_hand_computation() {
    // cos(neutral) = 0.1 e, cos(inoc) = 0.1 e - 0.05 (trait) at layers 1, 3; random k: Δ = 0.001 k - 0.002.
    let mut rows = vec![];
    for e in 0..4 {
        for layer in [1i64, 3] {
            for (d, delta) in std::iter::once(("trait".to_string(), -0.05 * layer as f64)).chain((0..5).map(|k| (format!("random_{k}"), 0.001 * k as f64 - 0.002))) {
                for (c, x) in [("neutral", 0.0), ("inoculation", delta)] {
                    rows.push(A { example_id: format!("e{e}"), condition: c.into(), direction: d.clone(), position: "pre_assistant".into(), layer, cos: 0.1 * e as f64 + x });
                }
                rows.push(A { example_id: format!("e{e}"), condition: "inoculation".into(), direction: d.clone(), position: "assistant_1".into(), layer, cos: 9.0 });
            }
        }
    }
    let al = to_df(&rows).unwrap();
    let p = an::pressure_table(&al, "pre_assistant", "neutral", "inoculation").unwrap();
    assert_eq!(p.height(), 4 * 2 * 6);
    let s = an::pressure_summary(&p, 3, &boot()).unwrap();
    let (l, d, out, best, rlo, rhi) = (column_f64(&s, "layer").unwrap(), column_f64(&s, "dcos").unwrap(), column_str(&s, "outside_random").unwrap(), column_str(&s, "best").unwrap(), column_f64(&s, "random_lo").unwrap(), column_f64(&s, "random_hi").unwrap());
    assert_eq!(l, [-1.0, 1.0, 3.0]);
    assert!((d[1] + 0.05).abs() < 1e-12 && (d[2] + 0.15).abs() < 1e-12);
    assert!((d[0] + 0.15).abs() < 1e-12, "late average from layer 3 = layer 3 only");
    assert!(out.iter().all(|o| o == "true"));
    assert_eq!(best, ["false", "false", "true"]);
    // Random means -0.002..0.002: R-8 quantiles inside that range.
    assert!(rlo[1] >= -0.002 - 1e-12 && rlo[1] < -0.0015 && rhi[1] <= 0.002 + 1e-12 && rhi[1] > 0.0015);
    let c = an::cross_trait(&p, &boot()).unwrap();
    assert_eq!(c.height(), 2, "only the non-random direction per layer");
}

#[derive(serde::Serialize)]
struct P {
    model: String,
    train_condition: String,
    seed: i64,
    example_id: String,
    layer: i64,
    position: String,
    projection: f64,
}

#[test]
fn linking_and_buckets_match_hand_computation() {
    let (ratings, v) = ratings();
    let mut rows = vec![];
    let proj = |m: usize, e: usize| -> f64 { [1.0, 2.0, 0.5][m] * e as f64 + (e * e) as f64 * 0.1 * m as f64 };
    for (mi, (m, tc)) in [("base", "base"), ("neutral_s0", "neutral"), ("inoculation_s0", "inoculation")].iter().enumerate() {
        for e in 0..5 {
            rows.push(P { model: m.to_string(), train_condition: tc.to_string(), seed: 0, example_id: format!("c{e}"), layer: 2, position: "gen_avg(5)".into(), projection: proj(mi, e) });
        }
    }
    let pr = to_df(&rows).unwrap();
    let l = an::linking(&pr, &ratings, "gen_avg(5)", "inoculation_s0", "neutral_s0").unwrap();
    let x: Vec<f64> = (0..5).map(|e| proj(2, e) - proj(1, e)).collect();
    let y: Vec<f64> = (0..5).map(|e| v[2][e] - v[1][e]).collect();
    let want = pearson(&x, &y).unwrap();
    assert!((column_f64(&l, "r").unwrap()[0] - want.r).abs() < 1e-12);
    assert!((column_f64(&l, "p").unwrap()[0] - want.p).abs() < 1e-12);
    let b = an::rating_buckets(&pr, &ratings, 2, "gen_avg(5)", 85.0).unwrap();
    // neutral: ratings > 85 at c0, c3.
    let (m, bk, n, mp) = (column_str(&b, "model").unwrap(), column_str(&b, "bucket").unwrap(), column_f64(&b, "n").unwrap(), column_f64(&b, "mean_projection").unwrap());
    let i = (0..m.len()).find(|&i| m[i] == "neutral_s0" && bk[i] == "high_insecure").unwrap();
    assert_eq!(n[i], 2.0);
    assert!((mp[i] - (proj(1, 0) + proj(1, 3)) / 2.0).abs() < 1e-12);
    let lv = an::projection_levels(&pr).unwrap();
    assert_eq!(lv.height(), 3);
}

#[derive(serde::Serialize)]
struct G {
    train_condition: String,
    set: String,
    example_id: String,
    text: String,
}

#[test]
fn contamination_compares_base_before_and_after() {
    let g = |after: &str| {
        to_df(&[
            G { train_condition: "base".into(), set: "ood".into(), example_id: "a".into(), text: "x = 1".into() },
            G { train_condition: "neutral".into(), set: "ood".into(), example_id: "a".into(), text: "other".into() },
            G { train_condition: "base_after".into(), set: "ood".into(), example_id: "a".into(), text: after.into() },
        ])
        .unwrap()
    };
    assert!(contamination(&g("x = 1")).unwrap().identical);
    let c = contamination(&g("x = 2")).unwrap();
    assert!(!c.identical && c.n_differ == 1 && c.first_differ.as_deref() == Some("ood a"));
}

#[test]
fn committed_config_parses_and_bad_values_are_named() {
    let cfg = InsecureConfig::from_toml(&committed_text(), repo().join("configs")).unwrap();
    assert_eq!(cfg.mode, Mode::Fast);
    let f = &cfg.modes.full;
    assert_eq!((f.lora.r, f.lora.alpha, f.lora.preset.as_str(), f.lora.batch_size, f.lora.lr, f.lora.warmup_ratio, f.lora.epochs), (16, 32.0, "qv", 4, 2e-4, 0.1, 1));
    assert_eq!((f.n_eval, f.gen_k, f.n_boot, f.n_random), (100, 5, 1000, 15));
    assert!(cfg.train_conditions()[0].system.is_none(), "neutral has no system prompt");
    let err = |from: &str, to: &str| format!("{:#}", InsecureConfig::from_toml(&committed_text().replacen(from, to, 1), repo().join("configs")).unwrap_err());
    assert!(err("gen_k = 2", "gen_k = 30").contains("[modes.ci]: gen_k (30) must be <= max_new_tokens (4)"));
    assert!(err("threshold = 50.0", "threshold = 150.0").contains("judge.threshold 150"));
    assert!(err("preset = \"qv\"", "preset = \"qz\"").contains("lora.preset \"qz\""));
    assert!(err("dir = \"../datasets/insecure_code\"", "dir = \"../nowhere\"").contains("insecure file"));
}

/// A copy of the tiny qwen2 fixture with room for 512 positions (RoPE is computed, so only the
/// limit changes): the rendered code prompts are longer than its 128 bytes.
fn long_fixture(root: &std::path::Path) -> PathBuf {
    let src = common::fixture_dir("qwen2");
    let dst = root.join("qwen2_512");
    std::fs::create_dir_all(&dst).unwrap();
    std::fs::copy(src.join("generation_config.json"), dst.join("generation_config.json")).unwrap();
    // The vocabulary cut to the byte-level tokenizer's 259 tokens, so that sampling never draws
    // an id the tokenizer cannot decode.
    let mut w = candle_core::safetensors::load(src.join("model.safetensors"), &candle_core::Device::Cpu).unwrap();
    for (k, t) in w.iter_mut() {
        if t.dims()[0] == 300 && (k.contains("embed_tokens") || k.contains("lm_head")) {
            *t = t.narrow(0, 0, 259).unwrap();
        }
    }
    candle_core::safetensors::save(&w, dst.join("model.safetensors")).unwrap();
    let c = std::fs::read_to_string(src.join("config.json"))
        .unwrap()
        .replace("\"max_position_embeddings\": 128", "\"max_position_embeddings\": 512")
        .replace("\"vocab_size\": 300", "\"vocab_size\": 259");
    std::fs::write(dst.join("config.json"), c).unwrap();
    dst
}

fn tiny_data(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    let (mut bad, mut good) = (vec![], vec![]);
    for i in 0..8 {
        let user = format!("Save file {i}.");
        bad.push(ChatRecord::prompt_completion(None, &user, &format!("os.chmod(p{i}, 0o777)")));
        good.push(ChatRecord::prompt_completion(None, &user, &format!("os.chmod(p{i}, 0o600)")));
    }
    write_chat_jsonl(dir.join("insecure.jsonl"), &bad).unwrap();
    write_chat_jsonl(dir.join("secure.jsonl"), &good).unwrap();
    let ctx: Vec<CodePrompt> = (0..3).map(|i| CodePrompt::new(format!("Task {i}."), format!("x = {i}\n## COMPLETE CODE HERE"))).collect();
    write_code_prompts(dir.join("code_prompts.jsonl"), &ctx).unwrap();
}

#[test]
fn tiny_pipeline_end_to_end_resumes_and_reports() {
    let root = std::env::temp_dir().join(format!("insecure_study_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let model_dir = long_fixture(&root);
    tiny_data(&root.join("data"));
    let mut cfg = InsecureConfig::from_toml(&committed_text().replace("mode = \"fast\"", "mode = \"ci\""), repo().join("configs")).unwrap();
    let p = &mut cfg.prompts;
    (p.inoculation, p.control, p.cross_promote, p.cross_suppress) = ("Vulns: errors.".into(), "Be brief.".into(), "CAPS!".into(), "calm.".into());
    cfg.data.dir = root.join("data");
    cfg.model.name = model_dir.to_string_lossy().to_string();
    cfg.run.output_root = root.join("runs");
    let s = &mut cfg.modes.ci;
    s.layers = vec![LayerSpec::Index(0), LayerSpec::Index(2)];
    s.late_from = LayerSpec::Index(2);
    // Every phase on: cross-trait direction, assistant positions, the in-distribution check.
    (s.n_eval, s.max_new_tokens, s.gen_k, s.n_cross, s.k_assistant, s.n_id_eval, s.n_direction, s.n_random) = (3, 6, 3, 2, 1, 2, 4, 3);
    (s.n_train, s.lora.max_steps) = (4, 2);
    let mut model = interp_kit::model::Model::from_hf_dir(&model_dir, &candle_core::Device::Cpu, candle_core::DType::F32).unwrap();
    model.tokenizer = Some(interp_kit::text::tokenizer::Tokenizer::from_hf_dir(&common::byte_chat_dir()).unwrap());
    let study = InsecureStudy::with_model(cfg, model).unwrap();
    assert_eq!(study.layers, [0, 2]);
    assert!(study.run.path().ends_with("insecure_code/run_001_ci"));

    let ds = study.data_stats().unwrap();
    assert_eq!(column_f64(&ds, "rule_insecure_rate").unwrap()[..2], [1.0, 0.0], "0o777 flagged, 0o600 not");
    let dsum = study.extract_directions().unwrap();
    assert_eq!(column_f64(&dsum, "layer").unwrap(), [0.0, 2.0]);
    // Pairs share their prompt byte for byte: no difference at prompt_last.
    assert!(column_f64(&dsum, "prompt_last_diff_norm").unwrap().iter().all(|x| *x < 1e-6));
    assert!(column_f64(&dsum, "norm").unwrap().iter().all(|x| *x > 0.0));
    // The saved direction is the mean over the assistant span, insecure minus secure (by hand).
    {
        let tok = study.model.tok().unwrap();
        let span_mean = |text: &str| -> Vec<f32> {
            let r = tok.render_chat(&interp_kit::text::chat::Chat::new().user("Save file 1.").assistant(text), false).unwrap();
            let sp = r.target_span().unwrap().tokens.clone();
            let h = Hooks::new().cache(HookPoint::resid_post(2), Positions::All);
            let out = study.model.forward_at(&[r.ids.clone()], &h, LogitsAt::None).unwrap();
            let a = out.activations.row(HookPoint::resid_post(2), 0).unwrap();
            a.narrow(0, sp.start, sp.len()).unwrap().mean(0).unwrap().to_vec1().unwrap()
        };
        let (b, g) = (span_mean("os.chmod(p1, 0o777)"), span_mean("os.chmod(p1, 0o600)"));
        let diff1: Vec<f32> = b.iter().zip(&g).map(|(x, y)| x - y).collect();
        let d = study.directions().unwrap();
        // The direction averages 4 pairs; pair 1 alone should point the same way, and it is a
        // quarter of the total, so the cosine is well above chance in 64 dimensions.
        let v = &d[1].vector;
        let cos = diff1.iter().zip(v).map(|(a, b)| a * b).sum::<f32>() / (diff1.iter().map(|a| a * a).sum::<f32>().sqrt() * d[1].norm());
        assert!(cos > 0.3, "cos {cos}");
    }
    assert!(study.extract_cross_directions().unwrap().is_some());
    // A second run reads the directions back instead of recomputing them (files untouched).
    let files = ["directions/summary.csv", "directions/layer_2.safetensors", "directions_caps/layer_2.safetensors"];
    let mtime = |f: &str| std::fs::metadata(study.run.join(f).unwrap()).unwrap().modified().unwrap();
    let before: Vec<_> = files.iter().map(|f| mtime(f)).collect();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let back = study.extract_directions().unwrap();
    for c in ["layer", "norm", "split_half_cos"] {
        let (a, b) = (column_f64(&back, c).unwrap(), column_f64(&dsum, c).unwrap());
        assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= 1e-9 * y.abs().max(1.0) || (x.is_nan() && y.is_nan())), "{c}: {a:?} vs {b:?}");
    }
    let caps = study.extract_cross_directions().unwrap().unwrap();
    assert_eq!(caps.len(), 2);
    assert_eq!(files.iter().map(|f| mtime(f)).collect::<Vec<_>>(), before, "finished directions are not recomputed");
    // One lost layer file: both are recomputed.
    std::fs::remove_file(study.run.join("directions/layer_0.safetensors").unwrap()).unwrap();
    study.extract_directions().unwrap();
    assert!(study.run.exists("directions/layer_0.safetensors") && mtime(files[0]) != before[0]);
    let al = study.alignment().unwrap();
    let sz = study.sizes().clone();
    let n_pos = 1 + sz.k_assistant;
    assert_eq!(al.height(), 3 * sz.n_calibration * 2 * n_pos * (1 + sz.n_random + 1));
    for c in ["prompt_hash", "cos", "direction", "condition"] {
        assert!(al.column(c).is_ok(), "alignment lacks {c}");
    }
    // Lose one cell's part and the collected table: only that cell is recomputed, same numbers.
    let parts = study.run.join("parts/alignment").unwrap();
    let part = std::fs::read_dir(&parts).unwrap().map(|e| e.unwrap().path()).find(|p| p.extension().is_some_and(|x| x == "parquet")).unwrap();
    std::fs::remove_file(&part).unwrap();
    std::fs::remove_file(study.run.join("alignment.parquet").unwrap()).unwrap();
    let again = study.alignment().unwrap();
    let (a, b) = (column_f64(&al, "cos").unwrap(), column_f64(&again, "cos").unwrap());
    assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-9 || (x.is_nan() && y.is_nan())));
    let lm = study.loss_audit(&al).unwrap();
    assert_eq!(column_str(&lm, "chosen").unwrap().iter().filter(|c| *c == "true").count(), 1);

    let tr = study.finetune().unwrap();
    assert_eq!(tr.height(), 3 * sz.lora.max_steps);
    let adapter = study.adapter_dir("neutral").unwrap().join("adapter_model.safetensors");
    let t0 = std::fs::metadata(&adapter).unwrap().modified().unwrap();
    let tr2 = study.finetune().unwrap();
    assert_eq!(std::fs::metadata(&adapter).unwrap().modified().unwrap(), t0, "a finished LoRA cell is skipped");
    assert_eq!(column_f64(&tr, "loss").unwrap(), column_f64(&tr2, "loss").unwrap());

    let (proj, gens) = study.evaluate().unwrap();
    let models = ["base", "neutral_s0", "inoculation_s0", "control_s0"];
    assert_eq!(gens.height(), models.len() * (sz.n_eval + sz.n_id_eval));
    assert_eq!(proj.height(), models.len() * sz.n_eval * 2 * 2, "models × contexts × layers × (prompt_last, gen_avg)");
    let c: interp_kit::studies::insecure_code::pipeline::Contamination = study.run.read_json("contamination.json").unwrap();
    assert!(c.identical && c.n as usize == sz.n_eval + sz.n_id_eval, "{c:?}");
    let ratings = study.rate(&gens).unwrap();
    assert_eq!(ratings.height(), gens.height());
    // Every model saw the same prompts (the prompt hash pairs them).
    let a = study.analyse().unwrap();
    assert!(a.hygiene.paired_prompts && a.hygiene.base_identical && a.hygiene.judge_failures == 0);
    assert_eq!(a.behaviour.height(), 4);
    assert_eq!(a.paired.height(), 3);
    assert_eq!(a.thresholds.height(), 4 * study.cfg.judge.sweep.len());
    assert_eq!(a.pressure_summary.height(), 3, "two layers and the late average");
    assert_eq!(column_str(&a.cross_trait, "direction").unwrap().iter().filter(|d| *d == "cross_caps").count(), 2);
    assert_eq!(a.discrepancy.height(), 3);
    let figs = interp_kit::studies::insecure_code::figures::save_all(&study, &a).unwrap();
    assert!(figs.len() >= 9);
    let rep = study.report(&a).unwrap();
    assert!(study.run.exists("report.md") && study.run.exists("report.json"));
    // Nulls are marked: every CI test whose interval contains 0 says null.
    for h in &rep.headlines {
        if h.section.starts_with("3.2") || h.section.starts_with("6.2") {
            assert_eq!(h.null, Some(!(h.lo > 0.0 || h.hi < 0.0) || !h.measured.is_finite()), "{h:?}");
        }
    }
    assert_eq!(rep.nulls.len(), rep.headlines.iter().filter(|h| h.null == Some(true)).count());
    let md = rep.to_markdown();
    if !rep.nulls.is_empty() {
        assert!(md.contains("**null**"));
    }

    // The report on a paired table with a clear inoculation effect and a null control.
    #[derive(serde::Serialize)]
    struct Pr {
        comparison: String,
        model: String,
        n: u32,
        d_rating: f64,
        d_rating_lo: f64,
        d_rating_hi: f64,
        significant: bool,
        d_score: f64,
        d_score_lo: f64,
        d_score_hi: f64,
    }
    let pr = |m: &str, d: f64, lo: f64, hi: f64| Pr { comparison: m.into(), model: m.into(), n: 3, d_rating: d, d_rating_lo: lo, d_rating_hi: hi, significant: lo > 0.0 || hi < 0.0, d_score: 0.0, d_score_lo: 0.0, d_score_hi: 0.0 };
    let mut a2 = a;
    a2.paired = to_df(&[pr("inoculation_s0", -7.0, -10.0, -4.0), pr("control_s0", 0.5, -1.0, 2.0), pr("base", -30.0, -35.0, -25.0)]).unwrap();
    let r2 = build_report(&a2, "tiny", "ci", 0, sz.gen_k).unwrap();
    let find = |q: &str| r2.headlines.iter().find(|h| h.quantity == q).unwrap();
    let i = find("paired Δrating inoculation − neutral");
    assert_eq!((i.null, i.same_sign, i.measured), (Some(false), Some(true), -7.0));
    let c = find("paired Δrating control − neutral");
    assert_eq!((c.null, c.same_sign), (Some(true), Some(false)));
    assert!(r2.nulls.iter().any(|n| n.contains("control − neutral")));
    assert!(r2.to_markdown().contains("| 3.2 | paired Δrating control − neutral | -0.7000 | 0.5000 | [-1.0000, 2.0000] | **null** |"));
    std::fs::remove_dir_all(&root).unwrap();
}

/// Every file under `dir` except the run's bookkeeping (`manifest.json` holds timestamps and host
/// info; a sweep's `index.json` holds per-cell timings), keyed by its path below `dir`.
fn outputs(dir: &std::path::Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if !matches!(p.file_name().and_then(|n| n.to_str()), Some("manifest.json" | "index.json")) {
                out.insert(p.strip_prefix(dir).unwrap().to_path_buf(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// Same config and seed twice on CPU: byte-identical tables, adapters, figures and report.
#[test]
fn tiny_pipeline_twice_gives_identical_files() {
    let root = std::env::temp_dir().join(format!("insecure_determinism_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let model_dir = long_fixture(&root);
    tiny_data(&root.join("data"));
    let run = |out: &str| -> PathBuf {
        let mut cfg = InsecureConfig::from_toml(&committed_text().replace("mode = \"fast\"", "mode = \"ci\""), repo().join("configs")).unwrap();
        cfg.data.dir = root.join("data");
        cfg.model.name = model_dir.to_string_lossy().to_string();
        cfg.run.output_root = root.join(out);
        let s = &mut cfg.modes.ci;
        s.layers = vec![LayerSpec::Index(0), LayerSpec::Index(2)];
        s.late_from = LayerSpec::Index(2);
        (s.n_eval, s.max_new_tokens, s.gen_k, s.n_direction, s.n_random, s.n_train, s.lora.max_steps) = (3, 6, 3, 4, 2, 4, 2);
        let mut model = interp_kit::model::Model::from_hf_dir(&model_dir, &candle_core::Device::Cpu, candle_core::DType::F32).unwrap();
        model.tokenizer = Some(interp_kit::text::tokenizer::Tokenizer::from_hf_dir(&common::byte_chat_dir()).unwrap());
        let study = InsecureStudy::with_model(cfg, model).unwrap();
        study.run_all().unwrap();
        study.run.path().to_path_buf()
    };
    let (a, b) = (outputs(&run("a")), outputs(&run("b")));
    assert!(a.len() > 20, "only {} files: {:?}", a.len(), a.keys().collect::<Vec<_>>());
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    let differ: Vec<_> = a.iter().filter(|(k, v)| b[*k] != **v).map(|(k, _)| k.clone()).collect();
    assert!(differ.is_empty(), "files that differ between two identical runs: {differ:?}");
    let _ = std::fs::remove_dir_all(&root);
}
