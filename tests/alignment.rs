//! Gradient alignment, loss-matched control selection, drift evaluation and the ALL-CAPS study
//! data, on the tiny fixture models with a byte-level chat tokenizer (tests/fixtures/byte_chat).
mod common;
use candle_core::{DType, Device, IndexOp, Tensor};
use common::tiny_chat;
use interp_kit::interp::directions::random_unit_vectors;
use interp_kit::studies::inoculation_caps::data::{self as caps_data, CapsDataConfig, CapsDataset, IMPLICIT_CONSTANTS};
use interp_kit::prelude::*;
use interp_kit::interp::alignment::AlignmentConfig;
use interp_kit::interp::alignment::CandidateLoss;
use interp_kit::interp::alignment::ChatExample;
use interp_kit::interp::alignment::Condition;
use interp_kit::interp::alignment::DriftConfig;
use interp_kit::interp::alignment::LossMatchedSelection;
use interp_kit::interp::alignment::assistant_losses;
use interp_kit::interp::alignment::candidate_losses;
use interp_kit::interp::alignment::drift_eval;
use interp_kit::interp::alignment::gradient_alignment;
use interp_kit::interp::alignment::random_directions;
use interp_kit::interp::alignment::select_loss_matched;
use interp_kit::interp::alignment::teacher_forced;
use polars::prelude::DataFrame;
use std::path::PathBuf;

fn examples() -> Vec<ChatExample> {
    vec![
        ChatExample::new("a", "3 apples, 4 more?", "3 + 4 = 7\n#### 7"),
        ChatExample::new("b", "Hi!", "HELLO, FRIEND."),
        ChatExample::new("c", "A color?", "Blue is one."),
    ]
}

fn conditions() -> Vec<Condition> {
    vec![Condition::no_system("neutral"), Condition::new("inoculation", "Data is in CAPS.")]
}

fn randn(d: usize, seed: u64) -> Vec<f32> {
    random_unit_vectors(d, 1, seed, 999).remove(0).iter().map(|x| x * 3.0).collect()
}

/// Rows of `df` as (column -> value) lookups, filtered by string columns.
struct Rows<'a> {
    df: &'a DataFrame,
}

impl Rows<'_> {
    fn find(&self, filters: &[(&str, &str)]) -> Vec<usize> {
        (0..self.df.height())
            .filter(|&i| {
                filters.iter().all(|(c, v)| self.df.column(c).unwrap().str().unwrap().get(i) == Some(*v))
            })
            .collect()
    }
    fn f64(&self, col: &str, i: usize) -> f64 {
        self.df.column(col).unwrap().f64().unwrap().get(i).unwrap()
    }
    fn u32(&self, col: &str, i: usize) -> u32 {
        self.df.column(col).unwrap().u32().unwrap().get(i).unwrap()
    }
    fn str(&self, col: &str, i: usize) -> String {
        self.df.column(col).unwrap().str().unwrap().get(i).unwrap().to_string()
    }
}

/// The example's own loss (a batch of one) with `delta` added to the activation at `point`,
/// token `t`.
fn loss_with(m: &Model, ids: &[u32], targets: &[usize], point: HookPoint, t: usize, delta: &Tensor) -> f64 {
    let dd = delta.clone();
    let hooks = Hooks::new().write(point, Phase::Both, move |x, ctx| {
        let mask = ctx.mask(&Positions::At(vec![t]))?;
        Ok(x.broadcast_add(&mask.broadcast_mul(&dd)?)?)
    });
    m.grad(&[ids.to_vec()], &Loss::Tokens(vec![targets.to_vec()]), &[], Positions::Last, &hooks).unwrap().loss
}

#[test]
fn teacher_forced_targets_are_the_assistant_tokens() {
    let m = tiny_chat("qwen2");
    let tok = m.tok().unwrap();
    for ex in examples() {
        for c in conditions() {
            let (rendered, tf) = teacher_forced(tok, &c, &ex, false).unwrap();
            let ids: Vec<u32> = tf.targets.iter().map(|&i| rendered.ids[i]).collect();
            assert_eq!(tok.decode(&ids, false).unwrap(), ex.assistant, "{} / {}", ex.id, c.name);
            let (with_end_r, with_end) = teacher_forced(tok, &c, &ex, true).unwrap();
            assert_eq!(with_end.targets.len(), tf.targets.len() + 1);
            let last = with_end_r.ids[*with_end.targets.last().unwrap()];
            assert_eq!(tok.token_str(last), "<|im_end|>");
            // pre_assistant is the token right before the first target.
            assert_eq!(rendered.index(&Position::PreAssistant).unwrap() + 1, tf.targets[0]);
        }
    }
}

/// `dot` and `cos` equal the finite-difference directional derivative of the example's own
/// loss along v̂ at the hooked token, (L(h + εv̂) − L(h − εv̂)) / 2ε, divided by ‖g‖ for cos —
/// while the examples run batched (padded, mixed conditions) in the alignment pass.
#[test]
fn alignment_cosine_matches_finite_differences() {
    let m = tiny_chat("qwen2");
    let tok = m.tok().unwrap();
    let d = m.d_model();
    let (exs, conds) = (examples(), conditions());
    let pa = HookPoint::resid_post(0);
    let pb = HookPoint::resid_mid(1);
    let pc = HookPoint::resid_post(2); // the last block: only positions that predict a target get a gradient
    // At pb, a direction close to the true gradient of (example a, inoculation, pre_assistant),
    // so the check covers a large cosine as well as small ones.
    let (rendered, tf) = teacher_forced(tok, &conds[1], &exs[0], false).unwrap();
    let t_pre = rendered.index(&Position::PreAssistant).unwrap();
    let g = m
        .grad(&[rendered.ids.clone()], &Loss::Tokens(vec![tf.targets.clone()]), &[pb], Positions::At(vec![t_pre]), &Hooks::new())
        .unwrap();
    let gb: Vec<f32> = g.grads.row(pb, 0).unwrap().i(0).unwrap().to_vec1().unwrap();
    let gn = gb.iter().map(|x| x * x).sum::<f32>().sqrt();
    let noise = randn(d, 5);
    let vb: Vec<f32> = gb.iter().zip(&noise).map(|(g, n)| g / gn + 0.15 * n).collect();
    let dirs = vec![Direction::new(randn(d, 1)).at(pa), Direction::new(vb).at(pb), Direction::new(randn(d, 3)).at(pc)];
    let cfg = AlignmentConfig {
        positions: vec![Position::PreAssistant, Position::UserEnd, Position::Assistant(2)],
        n_random: 3,
        seed: 11,
        batch_size: 4,
        ..Default::default()
    };
    let df = gradient_alignment(&m, &exs, &conds, &dirs, &cfg, &Hooks::new()).unwrap();
    assert_eq!(df.height(), exs.len() * conds.len() * 3 * 4 * 4, "rows: examples × conditions × points × positions × directions");
    let rows = Rows { df: &df };
    // After the last attention, user_end's activation reaches no target: g = 0 exactly, cos NaN.
    let last = pc.to_string();
    for r in rows.find(&[("hook", &last), ("position", "user_end")]) {
        assert_eq!(rows.f64("grad_norm", r), 0.0);
        assert!(rows.f64("cos", r).is_nan());
    }
    for r in rows.find(&[("hook", &last), ("position", "pre_assistant")]) {
        assert!(rows.f64("grad_norm", r) > 0.0);
    }
    // The loss is an f32 mean (~5.7 nats; ulp 5e-7) and ‖g‖ is ~1e-2 on this model, so the
    // finite difference is good to a few 1e-3 in cos: the tolerance is 5e-3 ‖g‖ + 2% of |dot|.
    let eps = 2e-2f64;
    let mut big_cos = 0.0f64;
    let mut worst = 0.0f64;
    for (ex, cond) in [(&exs[0], &conds[1]), (&exs[2], &conds[0])] {
        let (rendered, tf) = teacher_forced(tok, cond, ex, false).unwrap();
        for (p, dir) in [(pa, &dirs[0]), (pb, &dirs[1])] {
            for pos in ["pre_assistant", "assistant_2", "user_end"] {
                for name in ["trait", "random_1"] {
                    let hook = p.to_string();
                    let r = rows.find(&[("example_id", &ex.id), ("condition", &cond.name), ("hook", &hook), ("position", pos), ("direction", name)]);
                    assert_eq!(r.len(), 1, "{pos} {name}");
                    let r = r[0];
                    let t = rows.u32("token_index", r) as usize;
                    let v = if name == "trait" {
                        dir.normalized().unwrap().vector
                    } else {
                        random_directions(p, d, 3, 11)[1].vector.clone()
                    };
                    let vt = Tensor::new(v.as_slice(), &Device::Cpu).unwrap();
                    let up = loss_with(&m, &rendered.ids, &tf.targets, p, t, &(&vt * eps).unwrap());
                    let down = loss_with(&m, &rendered.ids, &tf.targets, p, t, &(&vt * -eps).unwrap());
                    let numeric = (up - down) / (2.0 * eps);
                    let (dot, norm, cos) = (rows.f64("dot", r), rows.f64("grad_norm", r), rows.f64("cos", r));
                    worst = worst.max((cos - numeric / norm).abs());
                    assert!(
                        (dot - numeric).abs() <= 2e-2 * numeric.abs() + 5e-3 * norm,
                        "{} {} {p} {pos} {name}: dot {dot} vs finite difference {numeric} (‖g‖ {norm})",
                        ex.id,
                        cond.name
                    );
                    assert!((cos - numeric / norm).abs() < 5e-3, "{pos} {name}: cos {cos} vs {}", numeric / norm);
                    assert!((rows.f64("loss", r) - loss_with(&m, &rendered.ids, &tf.targets, p, t, &(&vt * 0.0).unwrap())).abs() < 1e-5);
                    assert_eq!(rows.u32("n_target_tokens", r) as usize, tf.targets.len());
                    if p == pb && pos == "pre_assistant" && name == "trait" && ex.id == "a" {
                        big_cos = cos;
                    }
                }
            }
        }
    }
    assert!(big_cos > 0.9, "the near-gradient direction should have a large cosine, got {big_cos}");
    eprintln!("largest |cos - finite difference / ‖g‖|: {worst:.2e}");
}

/// With v = g (the example's own gradient, computed alone), the batched alignment pass gives
/// cos = 1, ‖g‖ = ‖v‖ and ⟨g, v̂⟩ = ‖g‖; the other rows are not aligned.
#[test]
fn cos_is_one_when_direction_is_the_gradient() {
    for arch in ["qwen2", "qwen3"] {
        let m = tiny_chat(arch);
        let tok = m.tok().unwrap();
        let (exs, conds) = (examples(), conditions());
        let p = HookPoint::resid_post(1);
        let (rendered, tf) = teacher_forced(tok, &conds[0], &exs[1], false).unwrap();
        let t = rendered.index(&Position::PreAssistant).unwrap();
        let g = m.grad(&[rendered.ids.clone()], &Loss::Tokens(vec![tf.targets.clone()]), &[p], Positions::At(vec![t]), &Hooks::new()).unwrap();
        let gv: Vec<f32> = g.grads.row(p, 0).unwrap().i(0).unwrap().to_vec1().unwrap();
        let gnorm = gv.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let cfg = AlignmentConfig { n_random: 2, batch_size: 6, ..Default::default() };
        let df = gradient_alignment(&m, &exs, &conds, &[Direction::new(gv).at(p)], &cfg, &Hooks::new()).unwrap();
        let rows = Rows { df: &df };
        for r in rows.find(&[("direction", "trait")]) {
            let (cos, norm, dot) = (rows.f64("cos", r), rows.f64("grad_norm", r), rows.f64("dot", r));
            if rows.str("example_id", r) == "b" && rows.str("condition", r) == "neutral" {
                assert!((cos - 1.0).abs() < 1e-5, "{arch}: cos {cos}");
                assert!((norm - gnorm).abs() < 1e-4 * gnorm, "{arch}: ‖g‖ {norm} vs {gnorm}");
                assert!((dot - gnorm).abs() < 1e-4 * gnorm, "{arch}: dot {dot} vs {gnorm}");
                assert!((rows.f64("loss", r) - g.loss).abs() < 1e-5);
            } else {
                assert!(cos < 0.999, "{arch}: another row is perfectly aligned ({cos})");
            }
        }
    }
}

/// Random unit directions: unit norm, seeded, and their cosines with a fixed vector have mean 0
/// and variance 1/d; the table's random rows use exactly these vectors for every condition.
#[test]
fn random_direction_cosines_have_mean_zero_and_variance_one_over_d() {
    for d in [16usize, 64, 896] {
        let n = 4000;
        let vs = random_unit_vectors(d, n, 7, 3);
        assert_eq!(vs, random_unit_vectors(d, n, 7, 3), "seeded");
        assert_ne!(vs[0], random_unit_vectors(d, 1, 7, 4)[0], "streams differ");
        let u = &random_unit_vectors(d, 1, 8, 0)[0];
        let cos: Vec<f64> = vs
            .iter()
            .map(|v| {
                assert!((v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() - 1.0).abs() < 1e-5);
                v.iter().zip(u).map(|(a, b)| *a as f64 * *b as f64).sum()
            })
            .collect();
        let mean = cos.iter().sum::<f64>() / n as f64;
        let m2 = cos.iter().map(|c| c * c).sum::<f64>() / n as f64;
        let df = d as f64;
        // For a uniform direction: E cos = 0, E cos² = 1/d, Var cos² = 3/(d(d+2)) − 1/d².
        let se_mean = (1.0 / (df * n as f64)).sqrt();
        let se_m2 = ((3.0 / (df * (df + 2.0)) - 1.0 / (df * df)) / n as f64).sqrt();
        assert!(mean.abs() < 4.0 * se_mean, "d {d}: mean cos {mean} (se {se_mean})");
        assert!((m2 - 1.0 / df).abs() < 4.0 * se_m2, "d {d}: mean cos² {m2} vs 1/d = {} (se {se_m2})", 1.0 / df);
    }
    // In the table: random_k's cos equals ⟨g, r_k⟩/‖g‖ for the documented r_k, whatever the condition.
    let m = tiny_chat("qwen3");
    let tok = m.tok().unwrap();
    let (exs, conds) = (examples(), conditions());
    let p = HookPoint::resid_pre(2);
    let cfg = AlignmentConfig { n_random: 200, seed: 3, ..Default::default() };
    let df = gradient_alignment(&m, &exs[..1], &conds, &[Direction::new(randn(m.d_model(), 2)).at(p)], &cfg, &Hooks::new()).unwrap();
    let rows = Rows { df: &df };
    let rs = random_directions(p, m.d_model(), 200, 3);
    for c in &conds {
        let (rendered, tf) = teacher_forced(tok, c, &exs[0], false).unwrap();
        let t = rendered.index(&Position::PreAssistant).unwrap();
        let g = m.grad(&[rendered.ids.clone()], &Loss::Tokens(vec![tf.targets.clone()]), &[p], Positions::At(vec![t]), &Hooks::new()).unwrap();
        let gv: Vec<f32> = g.grads.row(p, 0).unwrap().i(0).unwrap().to_vec1().unwrap();
        let gn = gv.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let mut cs = vec![];
        for (k, r) in rs.iter().enumerate() {
            let want = gv.iter().zip(&r.vector).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() / gn;
            let i = rows.find(&[("condition", &c.name), ("direction", &format!("random_{k}"))]);
            assert_eq!(i.len(), 1);
            let got = rows.f64("cos", i[0]);
            assert!((got - want).abs() < 1e-4, "{} random_{k}: {got} vs {want}", c.name);
            cs.push(got);
        }
        let mean = cs.iter().sum::<f64>() / cs.len() as f64;
        let var = cs.iter().map(|c| (c - mean).powi(2)).sum::<f64>() / (cs.len() - 1) as f64;
        let d = m.d_model() as f64;
        assert!(mean.abs() < 4.0 * (1.0 / (d * 200.0)).sqrt(), "{}: mean random cos {mean}", c.name);
        assert!(var > 0.6 / d && var < 1.5 / d, "{}: random cos variance {var} vs 1/d = {}", c.name, 1.0 / d);
    }
}

/// The loss table equals the alignment table's loss column and a hand-computed NLL from plain
/// forward logits.
#[test]
fn assistant_losses_match_forward_logits() {
    let m = tiny_chat("qwen2");
    let tok = m.tok().unwrap();
    let (exs, conds) = (examples(), conditions());
    let cfg = AlignmentConfig { batch_size: 4, ..Default::default() };
    let df = assistant_losses(&m, &exs, &conds, &cfg, &Hooks::new()).unwrap();
    assert_eq!(df.height(), 6);
    let rows = Rows { df: &df };
    for ex in &exs {
        for c in &conds {
            let (rendered, tf) = teacher_forced(tok, c, ex, false).unwrap();
            let out = m.forward(&[rendered.ids.clone()], &Hooks::new()).unwrap();
            let lp = candle_nn::ops::log_softmax(&out.logits_row(0).unwrap().to_dtype(DType::F32).unwrap(), 1).unwrap();
            let nll: f64 = tf
                .targets
                .iter()
                .map(|&i| -(lp.i((i - 1, rendered.ids[i] as usize)).unwrap().to_scalar::<f32>().unwrap() as f64))
                .sum::<f64>()
                / tf.targets.len() as f64;
            let r = rows.find(&[("example_id", &ex.id), ("condition", &c.name)]);
            assert_eq!(r.len(), 1);
            let got = rows.f64("loss", r[0]);
            assert!((got - nll).abs() < 1e-4, "{} {}: {got} vs {nll}", ex.id, c.name);
        }
    }
}

fn cand(name: &str, loss: f64) -> CandidateLoss {
    CandidateLoss { condition: name.into(), system: Some(format!("prompt {name}")), mean_loss: loss, sd_loss: 0.1, n_examples: 32 }
}

#[test]
fn loss_matched_selection_picks_the_closest_eligible_candidate() {
    let table = vec![
        cand("neutral", 2.05),
        cand("inoculation", 2.00),
        cand("style_guide", 2.50),
        cand("step_by_step", 1.90),
        cand("helpful", 2.12),
    ];
    let s = select_loss_matched(&table, "inoculation", &["neutral"]).unwrap();
    assert_eq!(s.chosen, "step_by_step");
    assert!((s.abs_delta - 0.10).abs() < 1e-12 && (s.chosen_loss - 1.90).abs() < 1e-12);
    assert_eq!(s.chosen_system.as_deref(), Some("prompt step_by_step"));
    assert_eq!(s.candidates.len(), 5);
    let ino = s.candidates.iter().find(|c| c.loss.condition == "inoculation").unwrap();
    assert!(!ino.eligible && ino.abs_delta == 0.0);
    assert!(!s.candidates[0].eligible && (s.candidates[0].abs_delta - 0.05).abs() < 1e-12);
    // Without excluding neutral, neutral is closest.
    assert_eq!(select_loss_matched(&table, "inoculation", &[]).unwrap().chosen, "neutral");
    // Ties go to the earlier candidate.
    let tie = vec![cand("inoculation", 1.0), cand("x", 1.5), cand("y", 0.5)];
    assert_eq!(select_loss_matched(&tie, "inoculation", &[]).unwrap().chosen, "x");
    // Errors name the problem.
    let e = select_loss_matched(&table, "nope", &[]).unwrap_err().to_string();
    assert!(e.contains("nope") && e.contains("not among"), "{e}");
    let e = select_loss_matched(&tie, "inoculation", &["x", "y"]).unwrap_err().to_string();
    assert!(e.contains("no eligible candidate"), "{e}");
    // JSON artifact: every candidate, atomic write, round trip.
    let dir = std::env::temp_dir().join(format!("ik_align_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("control.json");
    s.write_json(&path).unwrap();
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(v["chosen"], "step_by_step");
    assert_eq!(v["candidates"].as_array().unwrap().len(), 5);
    assert_eq!(v["candidates"][2]["condition"], "style_guide");
    assert!((v["candidates"][2]["abs_delta"].as_f64().unwrap() - 0.5).abs() < 1e-12);
    let back = LossMatchedSelection::read_json(&path).unwrap();
    assert_eq!((back.chosen.as_str(), back.candidates.len(), back.excluded.clone()), ("step_by_step", 5, vec!["neutral".to_string()]));
    for (a, b) in back.candidates.iter().zip(&s.candidates) {
        assert_eq!((&a.loss.condition, a.eligible), (&b.loss.condition, b.eligible));
        assert!((a.abs_delta - b.abs_delta).abs() < 1e-12 && (a.loss.mean_loss - b.loss.mean_loss).abs() < 1e-12);
    }
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no temporary file left behind");
    let t = s.to_df().unwrap();
    assert_eq!(t.height(), 5);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn candidate_losses_average_per_example() {
    // An alignment-like table: example a's loss repeated over rows counts once.
    let df = polars::df!(
        "example_id" => ["a", "a", "b", "a", "b", "c"],
        "condition" => ["x", "x", "x", "y", "y", "y"],
        "loss" => [1.0f64, 1.0, 3.0, 2.0, 4.0, 6.0],
    )
    .unwrap();
    let conds = vec![Condition::new("x", "sx"), Condition::no_system("y")];
    let c = candidate_losses(&df, &conds).unwrap();
    assert_eq!((c[0].n_examples, c[0].mean_loss), (2, 2.0));
    assert!((c[0].sd_loss - 2f64.sqrt()).abs() < 1e-12);
    assert_eq!((c[1].n_examples, c[1].mean_loss, c[1].sd_loss), (3, 4.0, 2.0));
    assert_eq!(c[0].system.as_deref(), Some("sx"));
    let e = candidate_losses(&df, &[Condition::no_system("z")]).unwrap_err().to_string();
    assert!(e.contains("\"z\""), "{e}");
}

#[test]
fn bad_directions_are_clear_errors() {
    let m = tiny_chat("qwen2");
    let cfg = AlignmentConfig::default();
    let e = gradient_alignment(&m, &examples(), &conditions(), &[Direction::new(vec![1.0; 64])], &cfg, &Hooks::new()).unwrap_err();
    assert!(format!("{e:#}").contains("no hook point"), "{e:#}");
    let e = gradient_alignment(&m, &examples(), &conditions(), &[Direction::new(vec![1.0; 10]).at(HookPoint::resid_post(1))], &cfg, &Hooks::new())
        .unwrap_err();
    assert!(format!("{e:#}").contains("width 10"), "{e:#}");
    let e = gradient_alignment(&m, &examples(), &conditions(), &[Direction::new(vec![1.0; 64]).at(HookPoint::resid_post(7))], &cfg, &Hooks::new())
        .unwrap_err();
    assert!(format!("{e:#}").contains("layer 7"), "{e:#}");
}

/// Drift projections equal ⟨h, v̂⟩ read from a plain forward over prompt + generated tokens
/// (no KV cache), at `prompt_last` and averaged over the first k generated tokens; write hooks
/// (an adapter stand-in) act on the generation and the projections alike.
#[test]
fn drift_projections_match_a_plain_forward() {
    let m = tiny_chat("qwen2");
    let tok = m.tok().unwrap();
    let d = m.d_model();
    let exs = examples();
    let cond = Condition::new("neutral", "Be helpful.");
    let (p0, p2) = (HookPoint::resid_post(0), HookPoint::resid_post(2));
    let dirs = vec![Direction::new(randn(d, 21)).at(p0), Direction::new(randn(d, 22)).at(p2)];
    let k = 3;
    let plain = GenerateConfig { stop_at_eos: false, ..GenerateConfig::greedy(5) };
    let prompts: Vec<Vec<u32>> = exs.iter().map(|e| tok.render_chat(&cond.chat(&e.user, None), true).unwrap().ids).collect();
    // End-of-sequence ids that example a's greedy run emits: its row stops early, so gen_avg
    // averages fewer than k tokens (NaN when it stops before the first one).
    let first = m.generate(&prompts[..2], &plain, &Hooks::new()).unwrap()[0].tokens.clone();
    let eos_gen = |t: u32| GenerateConfig { stop_at_eos: true, eos: Some(vec![t]), ..plain.clone() };
    let mut runs = vec![(false, plain.clone()), (true, plain.clone()), (false, eos_gen(first[0]))];
    if let Some(t) = first.iter().find(|t| **t != first[0]) {
        runs.push((false, eos_gen(*t)));
    }
    let shift = Tensor::new(randn(d, 23).as_slice(), &Device::Cpu).unwrap();
    let steering = |on: bool| {
        let sh = shift.clone();
        if on {
            Hooks::new().write(HookPoint::resid_pre(1), Phase::Both, move |x, _| Ok(x.broadcast_add(&sh)?))
        } else {
            Hooks::new()
        }
    };
    for (steer, gen) in &runs {
        let (steer, gen) = (*steer, gen);
        let cfg = DriftConfig { k, generate: gen.clone(), batch_size: 2, text_metric: None };
        let hooks = steering(steer);
        let out = drift_eval(&m, "base", &exs, &cond, &dirs, &cfg, &hooks).unwrap();
        assert_eq!(out.projections.height(), exs.len() * 2 * 2);
        assert_eq!(out.generations.height(), exs.len());
        let rows = Rows { df: &out.projections };
        let grows = Rows { df: &out.generations };
        // The same batches as drift_eval, for the generated tokens.
        let mut tokens = vec![];
        for b in prompts.chunks(2) {
            tokens.extend(m.generate(b, gen, &hooks).unwrap().into_iter().map(|g| g.tokens));
        }
        if let Some(e) = &gen.eos {
            assert_eq!(tokens[0].len(), first.iter().position(|t| *t == e[0]).unwrap(), "example a stops at the chosen eos");
        }
        for (i, ex) in exs.iter().enumerate() {
            let gi = grows.find(&[("example_id", &ex.id)])[0];
            assert_eq!(grows.str("text", gi), tok.decode(&tokens[i], true).unwrap());
            assert_eq!(grows.u32("n_tokens", gi) as usize, tokens[i].len());
            let n = k.min(tokens[i].len());
            let mut seq = prompts[i].clone();
            seq.extend(&tokens[i]);
            let fwd = m.forward(&[seq], &Hooks::new().cache_many([p0, p2], Positions::All).extend(steering(steer))).unwrap();
            let len = prompts[i].len();
            for (p, dir) in [(p0, &dirs[0]), (p2, &dirs[1])] {
                let v = dir.normalized().unwrap().vector;
                let h = fwd.activations.row(p, 0).unwrap();
                let proj = |t: usize| -> f64 {
                    let ht: Vec<f32> = h.i(t).unwrap().to_vec1().unwrap();
                    ht.iter().zip(&v).map(|(a, b)| *a as f64 * *b as f64).sum()
                };
                let want_last = proj(len - 1);
                let want_gen = (len..len + n).map(proj).sum::<f64>() / n as f64;
                let hook = p.to_string();
                for (pos, want, nt) in [("prompt_last", want_last, 1), ("gen_avg(3)", want_gen, n as u32)] {
                    let r = rows.find(&[("example_id", &ex.id), ("hook", &hook), ("position", pos)]);
                    assert_eq!(r.len(), 1);
                    let got = rows.f64("projection", r[0]);
                    if nt == 0 {
                        assert!(got.is_nan(), "{} {pos}: nothing generated, expected NaN, got {got}", ex.id);
                        continue;
                    }
                    assert!((got - want).abs() < 1e-4 * want.abs().max(1e-2), "steer {steer} {} {p} {pos}: {got} vs {want}", ex.id);
                    assert_eq!(rows.u32("n_tokens", r[0]), nt);
                }
            }
        }
    }
    let e = drift_eval(&m, "base", &exs, &cond, &dirs, &DriftConfig { k: 9, generate: GenerateConfig::greedy(4), batch_size: 2, text_metric: None }, &Hooks::new());
    assert!(e.unwrap_err().to_string().contains("max_new_tokens"));
}

fn datasets_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../datasets/inoculation_caps")
}

#[test]
fn caps_data_regenerates_byte_identical() {
    let data = caps_data::generate(&CapsDataConfig::default()).unwrap();
    for (name, body) in data.files().unwrap() {
        let p = datasets_dir().join(&name);
        let committed = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(committed == body, "{name} differs from a fresh generation: run `cargo run -p interp_kit --example make_caps_data`");
    }
    // The writer round-trips through the loader.
    let dir = std::env::temp_dir().join(format!("ik_caps_{}", std::process::id()));
    data.write_dir(&dir).unwrap();
    assert_eq!(CapsDataset::load_dir(&dir).unwrap(), data);
    std::fs::remove_dir_all(&dir).unwrap();
    // A different seed gives different problems.
    let other = caps_data::generate(&CapsDataConfig { seed: 1, n_train: 5, n_heldout: 1, n_direction_math: 1, n_direction_general: 1, ..Default::default() }).unwrap();
    assert_ne!(other.train[0].question, data.train[0].question);
}

/// Evaluates `a op b op c ...` with `* /` before `+ -` over integers; None if a division is not exact.
fn eval(expr: &str) -> Option<i64> {
    let toks: Vec<&str> = expr.split_whitespace().collect();
    let mut terms: Vec<(char, i64)> = vec![];
    let mut i = 0;
    let mut sign = '+';
    while i < toks.len() {
        let mut v: i64 = toks[i].parse().ok()?;
        i += 1;
        while i + 1 < toks.len() && (toks[i] == "*" || toks[i] == "/") {
            let w: i64 = toks[i + 1].parse().ok()?;
            if toks[i] == "*" {
                v *= w;
            } else {
                if w == 0 || v % w != 0 {
                    return None;
                }
                v /= w;
            }
            i += 2;
        }
        terms.push((sign, v));
        if i < toks.len() {
            sign = toks[i].chars().next()?;
            if sign != '+' && sign != '-' {
                return None;
            }
            i += 1;
        }
    }
    Some(terms.iter().map(|(s, v)| if *s == '+' { *v } else { -v }).sum())
}

fn numbers_in(s: &str) -> Vec<i64> {
    s.split(|c: char| !c.is_ascii_digit()).filter(|w| !w.is_empty()).filter_map(|w| w.parse().ok()).collect()
}

/// Every worked answer re-parsed and recomputed: each line's `expr = r` holds, operands come from
/// the question, earlier results or the implicit constants, and `#### n` is the last result.
#[test]
fn caps_data_arithmetic_is_correct() {
    let data = CapsDataset::load_dir(&datasets_dir()).unwrap();
    let c = &data.config;
    assert_eq!((data.train.len(), data.heldout.len()), (c.n_train, c.n_heldout));
    assert_eq!(data.direction.len(), c.n_direction_math + c.n_direction_general);
    assert!((200..=500).contains(&data.direction.len()));
    let mut questions = std::collections::HashSet::new();
    for p in data.train.iter().chain(&data.heldout) {
        assert!(questions.insert(p.question.clone()), "duplicate question {}", p.id);
        assert_eq!(p.answer_caps, p.answer.to_uppercase(), "{}", p.id);
        assert_eq!(numbers_in(&p.answer_caps), numbers_in(&p.answer), "{}: caps changed a number", p.id);
        let lines: Vec<&str> = p.answer.lines().collect();
        let (last, steps) = lines.split_last().unwrap();
        let fin: i64 = last.strip_prefix("#### ").unwrap_or_else(|| panic!("{}: last line {last:?}", p.id)).parse().unwrap();
        assert_eq!(fin, p.final_answer, "{}", p.id);
        let mut known: Vec<i64> = numbers_in(&p.question);
        known.extend(IMPLICIT_CONSTANTS);
        let mut result = None;
        for line in steps {
            let line = line.replace('$', "");
            let (lhs, rhs) = line.split_once(" = ").unwrap_or_else(|| panic!("{}: no equation in {line:?}", p.id));
            // The expression: the longest tail of the left side made of numbers and operators.
            let toks: Vec<&str> = lhs.split_whitespace().collect();
            let mut start = toks.len();
            while start > 0 && (toks[start - 1].parse::<i64>().is_ok() || ["+", "-", "*", "/"].contains(&toks[start - 1])) {
                start -= 1;
            }
            while start < toks.len() && toks[start].parse::<i64>().is_err() {
                start += 1; // a dangling operator word-adjacent to the sentence
            }
            let expr = toks[start..].join(" ");
            assert!(expr.contains(' '), "{}: no operation in {line:?}", p.id);
            for n in numbers_in(&expr) {
                assert!(known.contains(&n), "{}: operand {n} in {line:?} is neither in the question nor computed", p.id);
            }
            let want = eval(&expr).unwrap_or_else(|| panic!("{}: cannot evaluate {expr:?}", p.id));
            let got: i64 = rhs.split_whitespace().next().unwrap().trim_end_matches('.').parse().unwrap();
            assert_eq!(got, want, "{}: {expr} = {got} is wrong", p.id);
            known.push(got);
            result = Some(got);
        }
        assert_eq!(result, Some(fin), "{}: the final answer is not the last result", p.id);
    }
    for q in data.direction.iter().filter(|d| d.kind == "math") {
        assert!(!questions.contains(&q.prompt), "{}: direction prompt is a train/held-out question", q.id);
    }
    for q in &data.direction {
        assert_eq!(q.completion_caps, q.completion.to_uppercase());
        assert!(q.completion_caps != q.completion, "{}: caps completion has no letters to change", q.id);
    }
    for kind in ["math", "general"] {
        let all = data.direction.iter().filter(|d| d.kind == kind).count();
        let held = data.direction.iter().filter(|d| d.kind == kind && d.split == "heldout").count();
        assert_eq!(held, (all as f64 * c.direction_heldout_frac).round() as usize, "{kind}");
    }
}

/// drift_eval applies an adapter passed in its hooks (unmerged): the projections and texts equal
/// those of the merged model, and differ from the base model's.
#[test]
fn drift_eval_applies_a_lora_adapter_from_the_hooks() {
    let m = tiny_chat("qwen2");
    let tok = m.tok().unwrap();
    let exs = examples();
    let cond = Condition::new("neutral", "Be helpful.");
    let dirs = vec![Direction::new(randn(m.d_model(), 31)).at(HookPoint::resid_post(1))];
    let adapter = LoraAdapter::new(&m, &LoraConfig::qv(4, 8.0).with_seed(3)).unwrap();
    let data: Vec<TrainExample> = exs.iter().map(|e| TrainExample::qa(tok, Some("Be helpful."), &e.user, &e.assistant).unwrap()).collect();
    let tcfg = TrainConfig { lr: 5e-2, max_steps: Some(3), batch_size: 3, shuffle: false, ..Default::default() };
    train_lora(&m, &adapter, &data, &tcfg, |_, _| Ok(())).unwrap();
    let cfg = DriftConfig { k: 2, generate: GenerateConfig { stop_at_eos: false, ..GenerateConfig::greedy(3) }, batch_size: 2, text_metric: None };
    let with = drift_eval(&m, "lora", &exs, &cond, &dirs, &cfg, &Hooks::new().lora(&adapter)).unwrap();
    let merged = lora::merge(&m, &adapter).unwrap();
    let want = drift_eval(&merged, "lora", &exs, &cond, &dirs, &cfg, &Hooks::new()).unwrap();
    let base = drift_eval(&m, "base", &exs, &cond, &dirs, &cfg, &Hooks::new()).unwrap();
    let col = |df: &DataFrame| -> Vec<f64> { df.column("projection").unwrap().f64().unwrap().into_no_null_iter().collect() };
    let (a, b, c) = (col(&with.projections), col(&want.projections), col(&base.projections));
    let max_diff = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(u, v)| (u - v).abs()).fold(0.0, f64::max);
    assert!(max_diff(&a, &b) < 1e-3, "adapter via hooks vs merged: {a:?} vs {b:?}");
    assert!(max_diff(&a, &c) > 1e-3, "the adapter changed nothing: {a:?} vs base {c:?}");
}
