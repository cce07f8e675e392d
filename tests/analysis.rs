//! Analysis modules: direction extraction (planted directions), interventions on the tiny fixture
//! model (algebraic laws), control-vector IO (a GGUF written by the `gguf` Python package as repeng
//! writes it), and the committed prompt sets.
mod common;
use candle_core::{DType, Device, IndexOp, Tensor, D};
use common::{rel_err, tiny};
use interp_kit::studies::steering_reliability::data::{self, Split};
use interp_kit::text::records;
use interp_kit::interp::directions::{self, cache_matrix, contrastive_prefix_ids, prompt_set_hash, PrefixRead, ProbeConfig};
use interp_kit::prelude::*;
use interp_kit::text::records::PromptRecord;
use interp_kit::text::records::read_jsonl;
use interp_kit::base::rng::Rng;
use std::path::PathBuf;

const REFUSAL: &str = " I can't help with that.";
const COMPLIANCE: &str = " Sure, here's how:";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("interp_kit_analysis_{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

/// The error of a call expected to fail, with its context chain.
fn err<T>(r: anyhow::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

fn unit(d: usize, seed: u64) -> Vec<f32> {
    directions::random(d, seed).unwrap().vector
}

fn mat(rows: &[Vec<f32>]) -> Tensor {
    let d = rows[0].len();
    Tensor::from_vec(rows.concat(), (rows.len(), d), &Device::Cpu).unwrap()
}

fn cos(a: &[f32], b: &[f32]) -> f32 {
    Direction::new(a.to_vec()).cosine(&Direction::new(b.to_vec())).unwrap()
}

/// Paired synthetic activations with a planted direction `v`: a shared per-pair component
/// (large, isotropic), and `pos_i - neg_i = s_i v + noise` with `s_i` in [0.5, 3.5].
fn planted(n: usize, d: usize, seed: u64) -> (Tensor, Tensor, Vec<f32>) {
    let v = unit(d, seed + 100);
    let mut r = Rng::new(seed);
    let (mut pos, mut neg) = (vec![], vec![]);
    for _ in 0..n {
        let c: Vec<f32> = (0..d).map(|_| 3.0 * r.normal() as f32).collect();
        let s = 0.5 + 3.0 * r.uniform() as f32;
        let diff: Vec<f32> = v.iter().map(|x| s * x + 0.05 * r.normal() as f32).collect();
        pos.push(c.iter().zip(&diff).map(|(a, b)| a + b / 2.0).collect::<Vec<_>>());
        neg.push(c.iter().zip(&diff).map(|(a, b)| a - b / 2.0).collect::<Vec<_>>());
    }
    (mat(&pos), mat(&neg), v)
}

#[test]
fn planted_direction_is_recovered_by_every_method() {
    for (n, d) in [(200, 32), (40, 96)] {
        // n > d (covariance path) and n < d (Gram path) of the PCA.
        let (pos, neg, v) = planted(n, d, 7);
        let md = mean_diff(&pos, &neg).unwrap();
        let pd = pca_diff(&pos, &neg).unwrap();
        let pc = pca_center(&pos, &neg).unwrap();
        for (name, dir) in [("mean_diff", &md), ("pca_diff", &pd), ("pca_center", &pc)] {
            let c = cos(&dir.vector, &v);
            assert!(c > 0.99, "{name} (n={n}, d={d}): cosine with the planted direction {c}");
            assert_eq!(dir.meta.method, name);
        }
        assert!((pd.norm() - 1.0).abs() < 1e-5 && (pc.norm() - 1.0).abs() < 1e-5);
        let evr: f64 = pd.meta.extra["explained_variance_ratio"].parse().unwrap();
        // var(s) = 0.75 against 0.0025 per noise dimension.
        assert!(evr > 0.5, "pca_diff explains {evr}");
        // Swapping the sides flips every direction.
        assert!(cos(&pca_diff(&neg, &pos).unwrap().vector, &v) < -0.99);
        assert!(cos(&pca_center(&neg, &pos).unwrap().vector, &v) < -0.99);
    }
}

#[test]
fn pca_diff_is_the_centred_component_pca_center_the_uncentred_one() {
    // Differences all equal to 2 e0 plus variation only along e1: pca_diff (centred) finds e1,
    // pca_center (uncentred) finds the dominant e0.
    let (mut pos, mut neg) = (vec![], vec![]);
    for t in [-1.0f32, -0.5, 0.5, 1.0] {
        pos.push(vec![2.0, t, 0.0]);
        neg.push(vec![0.0, 0.0, 0.0]);
    }
    let (p, n) = (mat(&pos), mat(&neg));
    let pd = pca_diff(&p, &n).unwrap();
    assert!(pd.vector[1].abs() > 0.999, "{:?}", pd.vector);
    let pc = pca_center(&p, &n).unwrap();
    assert!(pc.vector[0] > 0.99, "{:?}", pc.vector);
    // Explained variance by hand: centred differences are (0, t, 0): all variance on e1.
    assert_eq!(pd.meta.extra["explained_variance_ratio"], "1.000000");
    // pca_center rows ±(1, t/2, 0) (mean 0, no x-y covariance): Σ x² = 8, Σ y² = 2 (0.25 + 0.0625
    // + 0.0625 + 0.25) = 1.25, so the first component explains 8 / 9.25.
    let evr: f64 = pc.meta.extra["explained_variance_ratio"].parse().unwrap();
    assert!((evr - 8.0 / 9.25).abs() < 1e-6, "{evr}");
}

#[test]
fn probe_recovers_the_planted_direction_and_is_optimal() {
    // Two Gaussian classes, isotropic noise, means ±1.5 v: the Bayes direction is v.
    let d = 16;
    let v = unit(d, 3);
    let mut r = Rng::new(4);
    let mut rows = |sign: f32| -> Vec<Vec<f32>> {
        (0..1000).map(|_| v.iter().map(|x| sign * 1.5 * x + r.normal() as f32).collect()).collect()
    };
    let (pos, neg) = (mat(&rows(1.0)), mat(&rows(-1.0)));
    let cfg = ProbeConfig { l2: 1e-3, ..ProbeConfig::default() };
    let fit = probe(&pos, &neg, &cfg).unwrap();
    assert!(fit.converged, "{} iterations, |g| {}", fit.iterations, fit.grad_norm);
    let c = cos(&fit.direction.vector, &v);
    assert!(c > 0.99, "probe cosine {c}");
    // Train accuracy recomputed here: P(correct) = Φ(1.5) ≈ 0.933 for the Bayes rule.
    let x: Vec<Vec<f32>> = pos.to_vec2().unwrap().into_iter().chain(neg.to_vec2::<f32>().unwrap()).collect();
    let correct = x
        .iter()
        .enumerate()
        .filter(|(i, xi)| {
            let s: f64 = xi.iter().zip(&fit.weights).map(|(a, b)| (*a as f64) * (*b as f64)).sum::<f64>() + fit.bias;
            (s > 0.0) == (*i < 1000)
        })
        .count();
    assert_eq!(fit.train_accuracy, correct as f64 / 2000.0);
    assert!((fit.train_accuracy - 0.933).abs() < 0.02, "accuracy {}", fit.train_accuracy);
    // First-order optimality, computed independently: mean_i -y_i σ(-m_i) x_i + λ w = 0.
    let mut g = vec![0f64; d + 1];
    for (i, xi) in x.iter().enumerate() {
        let y = if i < 1000 { 1.0 } else { -1.0 };
        let m = y * (xi.iter().zip(&fit.weights).map(|(a, b)| (*a as f64) * (*b as f64)).sum::<f64>() + fit.bias);
        let q = 1.0 / (1.0 + m.exp());
        for j in 0..d {
            g[j] += -y * q * xi[j] as f64 / 2000.0;
        }
        g[d] += -y * q / 2000.0;
    }
    for j in 0..d {
        g[j] += 1e-3 * fit.weights[j] as f64;
    }
    let gn = g.iter().map(|x| x * x).sum::<f64>().sqrt();
    assert!(gn < 1e-5, "gradient norm at the returned solution {gn}");
    // Separable data (±2 v plus small noise): train accuracy 1. Deterministic.
    let v8 = unit(8, 2);
    let mut r = Rng::new(9);
    let mut sep = |sign: f32| -> Tensor { mat(&(0..30).map(|_| v8.iter().map(|x| sign * 2.0 * x + 0.1 * r.normal() as f32).collect()).collect::<Vec<_>>()) };
    let (p2, n2) = (sep(1.0), sep(-1.0));
    let f2 = probe(&p2, &n2, &ProbeConfig::default()).unwrap();
    assert_eq!(f2.train_accuracy, 1.0);
    assert_eq!(probe(&p2, &n2, &ProbeConfig::default()).unwrap().weights, f2.weights);
}

#[test]
fn random_directions_are_seeded_unit_and_nearly_orthogonal() {
    let d = 256;
    let rs = random_n(d, 60, 5).unwrap();
    assert_eq!(rs[..10], random_n(d, 10, 5).unwrap()[..]);
    assert_eq!(random(d, 5).unwrap(), rs[0]);
    assert_ne!(random(d, 6).unwrap().vector, rs[0].vector);
    let mut cs = vec![];
    for i in 0..rs.len() {
        assert!((rs[i].norm() - 1.0).abs() < 1e-5);
        for j in 0..i {
            cs.push(rs[i].cosine(&rs[j]).unwrap() as f64);
        }
    }
    // Cosines of independent uniform unit vectors: mean 0, variance 1/d.
    let n = cs.len() as f64;
    let m = cs.iter().sum::<f64>() / n;
    let var = cs.iter().map(|c| (c - m) * (c - m)).sum::<f64>() / (n - 1.0);
    assert!(m.abs() < 0.01, "mean cosine {m}");
    assert!((var * d as f64 - 1.0).abs() < 0.15, "d·var = {}", var * d as f64);
}

#[test]
fn errors_name_widths_and_counts() {
    let a = Tensor::zeros((4, 8), DType::F32, &Device::Cpu).unwrap();
    let b = Tensor::zeros((4, 6), DType::F32, &Device::Cpu).unwrap();
    assert!(mean_diff(&a, &b).unwrap_err().to_string().contains("width 8"));
    let c = Tensor::zeros((3, 8), DType::F32, &Device::Cpu).unwrap();
    assert!(pca_diff(&a, &c).unwrap_err().to_string().contains("4 vs 3"));
    let v = Tensor::zeros(8, DType::F32, &Device::Cpu).unwrap();
    assert!(mean_diff(&v, &a).unwrap_err().to_string().contains("[N, D]"));
    // Constant data: no principal component.
    assert!(pca_diff(&a, &a).unwrap_err().to_string().contains("zero variance"));
}

// ------------------------------------------------------------------------------------------
// Model-driven helpers on the tiny fixture model
// ------------------------------------------------------------------------------------------

fn prompts() -> Vec<PromptIds> {
    [vec![5u32, 17, 42, 8, 99, 3, 250, 7, 11, 64, 2], vec![9, 120, 33, 4, 18, 77, 201], vec![1, 2, 3, 4, 5]]
        .into_iter()
        .map(PromptIds::from_ids)
        .collect()
}

#[test]
fn collect_activations_matches_a_direct_forward() {
    let m = tiny("qwen2");
    let ps = prompts();
    let pts = [HookPoint::resid_post(0), HookPoint::resid_pre(2)];
    for at in [ReadAt::Last, ReadAt::Index(2), "mean(1..4)".parse().unwrap(), ReadAt::MeanAll] {
        let got = collect_activations(&m, &ps, &pts, &at, 2).unwrap();
        for (i, p) in ps.iter().enumerate() {
            let out = m.forward(std::slice::from_ref(&p.ids), &Hooks::new().cache_many(pts, Positions::All)).unwrap();
            for hp in pts {
                let all = out.activations.row(hp, 0).unwrap();
                let want = match &at {
                    ReadAt::Last => all.i(p.len() - 1).unwrap(),
                    ReadAt::Index(k) => all.i(*k).unwrap(),
                    ReadAt::Mean(r) => all.narrow(0, r.start, r.end - r.start).unwrap().mean(0).unwrap(),
                    _ => all.mean(0).unwrap(),
                };
                let e = rel_err(&got[&hp].i(i).unwrap(), &want);
                assert!(e < 1e-5, "{at} {hp} prompt {i}: rel err {e}");
            }
        }
    }
    // Named positions need chat prompts; out-of-range indices name the prompt.
    let e = collect_activations(&m, &ps, &pts, &"prompt_last".parse().unwrap(), 2).unwrap_err();
    assert!(format!("{e:#}").contains("prompt 0") && format!("{e:#}").contains("chat"), "{e:#}");
    let e = collect_activations(&m, &ps, &pts, &ReadAt::Index(6), 2).unwrap_err();
    assert!(format!("{e:#}").contains("prompt 2"), "{e:#}");
    // cache_matrix averages a cache's rows.
    let out = m.forward(&directions::ids_of(&ps[..2]), &Hooks::new().cache(pts[0], Positions::Span(0..3))).unwrap();
    let cm = cache_matrix(&out.activations, pts[0]).unwrap();
    let want = out.activations.row(pts[0], 1).unwrap().mean(0).unwrap();
    assert!(rel_err(&cm.i(1).unwrap(), &want) < 1e-6);
}

#[test]
fn contrastive_prefix_is_the_mean_of_forced_prefix_differences() {
    let m = tiny("qwen2");
    let ps = prompts();
    let (pos, neg) = (vec![10u32, 20, 30], vec![40u32, 50]);
    let hp = HookPoint::resid_post(1);
    let resid = |ids: Vec<u32>, at: usize| -> Tensor {
        m.forward(&[ids], &Hooks::new().cache(hp, Positions::All)).unwrap().activations.row(hp, 0).unwrap().i(at).unwrap()
    };
    for read in [PrefixRead::PrefixFirst, PrefixRead::PrefixLast] {
        let cfg = Contrastive { read_at: read, scale: Scale::Raw, batch_size: 2, ..Contrastive::new(REFUSAL, COMPLIANCE) };
        let res = contrastive_prefix_ids(&m, &ps, &pos, &neg, &[hp], &cfg).unwrap();
        let r = &res[0];
        let mut diffs = vec![];
        for p in &ps {
            let (a, b) = ([p.ids.clone(), pos.clone()].concat(), [p.ids.clone(), neg.clone()].concat());
            let (ia, ib) = match read {
                PrefixRead::PrefixFirst => (p.len(), p.len()),
                _ => (a.len() - 1, b.len() - 1),
            };
            diffs.push((resid(a, ia) - resid(b, ib)).unwrap());
        }
        let d = Tensor::stack(&diffs, 0).unwrap();
        assert!(rel_err(&r.diffs, &d) < 1e-5, "{read}: differences");
        let mean = d.mean(0).unwrap();
        assert!(rel_err(&r.direction.to_tensor(&Device::Cpu, DType::F32).unwrap(), &mean) < 1e-5);
        let norms: Vec<f32> = d.sqr().unwrap().sum(D::Minus1).unwrap().sqrt().unwrap().to_vec1().unwrap();
        let mn = norms.iter().sum::<f32>() as f64 / 3.0;
        assert!((r.stats.mean_diff_norm - mn).abs() < 1e-4 * mn);
        assert!((r.stats.norm_of_mean - r.direction.norm() as f64).abs() < 1e-4);
        // Split halves are prompts {0} and {1, 2}; batches of 2 are {0, 1} and {2}.
        let h1 = Direction::from_tensor(&d.i(0).unwrap()).unwrap();
        let h2 = Direction::from_tensor(&d.narrow(0, 1, 2).unwrap().mean(0).unwrap()).unwrap();
        assert!((r.stats.split_half_cosine.unwrap() - h1.cosine(&h2).unwrap() as f64).abs() < 1e-5);
        assert_eq!(r.stats.batch_cosines.as_ref().unwrap().len(), 2);
        assert_eq!(r.direction.meta.hook, Some(hp));
        assert_eq!(r.direction.meta.method, "contrastive_prefix");
        assert_eq!(r.direction.meta.position, read.to_string());
        assert_eq!(r.direction.meta.prompt_hash, directions::prompts_hash(&ps));
        // Scales: unit has norm 1, mean_diff_norm has norm mean |d_i|.
        assert!((r.scaled(Scale::Unit).unwrap().norm() - 1.0).abs() < 1e-5);
        assert!((r.scaled(Scale::MeanDiffNorm).unwrap().norm() as f64 - mn).abs() < 1e-4 * mn);
    }
    // Why there is no "last prompt token" option: causal attention makes it identical for both.
    let p = &ps[0];
    let a = resid([p.ids.clone(), pos.clone()].concat(), p.len() - 1);
    let b = resid([p.ids.clone(), neg.clone()].concat(), p.len() - 1);
    assert!(rel_err(&a, &b) < 1e-6);
    assert!("last_prompt_token".parse::<PrefixRead>().unwrap_err().to_string().contains("does not see"));
}

// ------------------------------------------------------------------------------------------
// Interventions
// ------------------------------------------------------------------------------------------

fn vdir(m: &Model, seed: u64, hp: HookPoint) -> Direction {
    directions::random(m.d_model(), seed).unwrap().at(hp)
}

#[test]
fn zero_strength_interventions_change_nothing() {
    let m = tiny("qwen2");
    let ids = directions::ids_of(&prompts());
    let base = m.forward(&ids, &Hooks::new()).unwrap();
    let hp = HookPoint::resid_post(1);
    let v = vdir(&m, 1, hp) * 3.0;
    for iv in [Intervention::add(&v, 0.0), Intervention::ablate(&v, 0.0), Intervention::add(&v, 0.0).positions(Where::Span(2..4))] {
        let out = m.forward(&ids, &iv.hooks(&m).unwrap()).unwrap();
        assert_eq!(
            out.logits.unwrap().to_vec3::<f32>().unwrap(),
            base.logits.as_ref().unwrap().to_vec3::<f32>().unwrap(),
            "{}",
            iv.describe()
        );
    }
    // And in generation (prefill + decode).
    let cfg = GenerateConfig::greedy(6);
    let g0 = m.generate(&ids, &cfg, &Hooks::new()).unwrap();
    let hooks = hooks_for(&[Intervention::add(&v, 0.0), Intervention::ablate(&v, 0.0).layers(&[0, 2])], &m).unwrap();
    let g1 = m.generate(&ids, &cfg, &hooks).unwrap();
    for (a, b) in g0.iter().zip(&g1) {
        assert_eq!(a.tokens, b.tokens);
        assert_eq!(a.logprobs, b.logprobs);
    }
    // A non-zero α does change them.
    let out = m.forward(&ids, &Intervention::add(&v, 4.0).hooks(&m).unwrap()).unwrap();
    assert!(rel_err(out.logits.as_ref().unwrap(), base.logits.as_ref().unwrap()) > 1e-3);
}

/// Projection of each cached vector of `row` onto the unit `u`.
fn projections(t: &Tensor, u: &Direction) -> Vec<f32> {
    t.matmul(&u.to_tensor(&Device::Cpu, DType::F32).unwrap().unsqueeze(1).unwrap()).unwrap().squeeze(1).unwrap().to_vec1().unwrap()
}

#[test]
fn ablation_zeroes_the_projection_where_hooked_only() {
    let m = tiny("qwen2");
    let ps = prompts();
    let ids = directions::ids_of(&ps);
    let hp = HookPoint::resid_post(1);
    let v = vdir(&m, 2, hp) * 5.0; // not unit: ablation uses v / |v|
    let u = v.normalized().unwrap();
    let read = Hooks::new().cache(hp, Positions::All);
    let base = m.forward(&ids, &read).unwrap();
    let span = 2..5;
    for alpha in [1.0, 0.5] {
        let hooks = Intervention::ablate(&v, alpha).positions(Where::Span(span.clone())).hooks(&m).unwrap().extend(Hooks::new().cache(hp, Positions::All));
        let out = m.forward(&ids, &hooks).unwrap();
        for r in 0..ids.len() {
            let (b, a) = (base.activations.row(hp, r).unwrap(), out.activations.row(hp, r).unwrap());
            let (pb, pa) = (projections(b, &u), projections(a, &u));
            let nb: Vec<f32> = b.sqr().unwrap().sum(1).unwrap().sqrt().unwrap().to_vec1().unwrap();
            for t in 0..ids[r].len() {
                if span.contains(&t) {
                    let want = (1.0 - alpha as f32) * pb[t];
                    assert!((pa[t] - want).abs() < 1e-5 * nb[t], "α={alpha} row {r} pos {t}: projection {} want {want}", pa[t]);
                    // Orthogonal part untouched.
                    let orth_a = (a.i(t).unwrap() - (u.to_tensor(&Device::Cpu, DType::F32).unwrap() * pa[t] as f64).unwrap()).unwrap();
                    let orth_b = (b.i(t).unwrap() - (u.to_tensor(&Device::Cpu, DType::F32).unwrap() * pb[t] as f64).unwrap()).unwrap();
                    assert!(rel_err(&orth_a, &orth_b) < 1e-5);
                } else {
                    assert_eq!(a.i(t).unwrap().to_vec1::<f32>().unwrap(), b.i(t).unwrap().to_vec1::<f32>().unwrap(), "row {r} pos {t} changed");
                }
            }
        }
    }
    // Per-row named positions: only each row's selected token is ablated.
    let pos = Where::Positions(Positions::PerRow(vec![Positions::At(vec![0]), Positions::At(vec![6]), Positions::At(vec![4])]));
    let hooks = Intervention::ablate(&v, 1.0).positions(pos).hooks(&m).unwrap().extend(Hooks::new().cache(hp, Positions::All));
    let out = m.forward(&ids, &hooks).unwrap();
    for (r, t) in [(0usize, 0usize), (1, 6), (2, 4)] {
        let pa = projections(out.activations.row(hp, r).unwrap(), &u);
        assert!(pa[t].abs() < 1e-4, "row {r} pos {t}: {}", pa[t]);
        let pb = projections(base.activations.row(hp, r).unwrap(), &u);
        assert_eq!(pa[(t + 1) % ids[r].len()], pb[(t + 1) % ids[r].len()]);
    }
}

#[test]
fn interventions_compose_in_order() {
    let m = tiny("qwen3");
    let ids = directions::ids_of(&prompts());
    let hp = HookPoint::resid_pre(2);
    let v = vdir(&m, 3, hp);
    let read = || Hooks::new().cache(hp, Positions::All);
    // add(a) then add(b) == add(a + b).
    let two = hooks_for(&[Intervention::add(&v, 1.5), Intervention::add(&v, 2.5)], &m).unwrap().extend(read());
    let one = Intervention::add(&v, 4.0).hooks(&m).unwrap().extend(read());
    let (o2, o1) = (m.forward(&ids, &two).unwrap(), m.forward(&ids, &one).unwrap());
    assert!(rel_err(o2.logits.as_ref().unwrap(), o1.logits.as_ref().unwrap()) < 1e-5);
    // ablate then add(α): the projection on v is exactly α everywhere; add then ablate: 0.
    for (order, want) in [(vec![Intervention::ablate(&v, 1.0), Intervention::add(&v, 3.0)], 3.0f32), (vec![Intervention::add(&v, 3.0), Intervention::ablate(&v, 1.0)], 0.0)] {
        let out = m.forward(&ids, &hooks_for(&order, &m).unwrap().extend(read())).unwrap();
        for r in 0..ids.len() {
            for p in projections(out.activations.row(hp, r).unwrap(), &v) {
                assert!((p - want).abs() < 1e-4, "projection {p}, want {want}");
            }
        }
    }
    // A control vector applies each layer's own direction.
    let cv = ControlVector::from_directions("tiny", [vdir(&m, 4, HookPoint::resid_post(0)), vdir(&m, 5, HookPoint::resid_post(2))]).unwrap();
    let a = m.forward(&ids, &Intervention::control_vector(Op::Add, &cv, 2.0).hooks(&m).unwrap()).unwrap();
    let b = m
        .forward(&ids, &hooks_for(&[Intervention::add(cv.get(0).unwrap(), 2.0), Intervention::add(cv.get(2).unwrap(), 2.0)], &m).unwrap())
        .unwrap();
    assert_eq!(a.logits.unwrap().to_vec3::<f32>().unwrap(), b.logits.unwrap().to_vec3::<f32>().unwrap());
}

#[test]
fn phases_and_positions_in_generation() {
    let m = tiny("qwen2");
    let ids = directions::ids_of(&prompts());
    let cfg = GenerateConfig::greedy(5);
    let base = m.generate(&ids, &cfg, &Hooks::new()).unwrap();
    let v = vdir(&m, 6, HookPoint::resid_post(1));
    let run = |w: Where| m.generate(&ids, &cfg, &Intervention::add(&v, 50.0).positions(w).hooks(&m).unwrap()).unwrap();
    // Generated only: the prefill is untouched, so the first token and its log-prob are the same.
    let g = run(Where::Generated);
    for (a, b) in g.iter().zip(&base) {
        assert_eq!(a.tokens[0], b.tokens[0]);
        assert_eq!(a.logprobs[0], b.logprobs[0]);
    }
    assert!(g.iter().zip(&base).any(|(a, b)| a.logprobs[1..] != b.logprobs[1..]));
    // Prompt only: the first step differs.
    let g = run(Where::Prompt);
    assert!(g.iter().zip(&base).any(|(a, b)| a.logprobs[0] != b.logprobs[0]));
    // Prompt positions in a decode-only phase is a contradiction.
    let e = err(Intervention::add(&v, 1.0).positions(Where::Prompt).phase(Phase::Decode).hooks(&m));
    assert!(e.contains("Prefill"), "{e}");
    // after_prompts in one teacher-forced forward of prompt + completion steers the same tokens
    // as Where::Generated does in generation: the completion's log-probs agree.
    let ps = prompts();
    let g = run(Where::Generated);
    let full: Vec<Vec<u32>> = ps.iter().zip(&g).map(|(p, gi)| [p.ids.clone(), gi.tokens.clone()].concat()).collect();
    let out = m.forward(&full, &Intervention::add(&v, 50.0).positions(Where::after_prompts(&ps)).hooks(&m).unwrap()).unwrap();
    for (r, (p, gi)) in ps.iter().zip(&g).enumerate() {
        let lp = candle_nn::ops::log_softmax(&out.logits_row(r).unwrap(), D::Minus1).unwrap();
        for (k, &tok) in gi.tokens.iter().enumerate() {
            let want = gi.logprobs[k];
            let got: f32 = lp.i((p.len() - 1 + k, tok as usize)).unwrap().to_scalar().unwrap();
            assert!((got - want).abs() < 1e-3 * want.abs().max(1.0), "row {r} token {k}: {got} vs {want}");
        }
    }
}

#[test]
fn interventions_check_width_layer_and_hook() {
    let m = tiny("qwen2");
    let short = Direction::new(vec![1.0; 10]).at(HookPoint::resid_post(0));
    let e = err(Intervention::add(&short, 1.0).hooks(&m));
    assert!(e.contains("width 10") && e.contains("d_model is 64"), "{e}");
    let deep = vdir(&m, 1, HookPoint::resid_post(7));
    let e = err(Intervention::ablate(&deep, 1.0).hooks(&m));
    assert!(e.contains("3 layers") && e.contains("0..=2"), "{e}");
    let loose = directions::random(m.d_model(), 1).unwrap();
    let e = err(Intervention::add(&loose, 1.0).hooks(&m));
    assert!(e.contains("names no hook point"), "{e}");
    let zero = Direction::new(vec![0.0; 64]).at(HookPoint::resid_post(0));
    assert!(Intervention::ablate(&zero, 1.0).hooks(&m).is_err());
    assert!(Intervention::add(&loose, f64::NAN).at(HookPoint::resid_post(0)).hooks(&m).is_err());
}

// ------------------------------------------------------------------------------------------
// IO
// ------------------------------------------------------------------------------------------

#[test]
fn reads_a_repeng_style_control_vector_gguf() {
    // Written by scripts/make_control_vector_fixture.py with the `gguf` package, as repeng's
    // export_gguf writes: direction.{L}[j] = L + j/8 for L in {1, 2, 5}, width 8, hint "qwen2".
    let cv = ControlVector::import_gguf(repo().join("tests/fixtures/control_vector/repeng_style.gguf")).unwrap();
    assert_eq!(cv.model, "qwen2");
    assert_eq!(cv.layers(), vec![1, 2, 5]);
    for l in [1usize, 2, 5] {
        let d = cv.get(l).unwrap();
        assert_eq!(d.meta.hook, Some(HookPoint::resid_post(l)), "direction.{l} is blocks.{l}.hook_resid_post");
        let want: Vec<f32> = (0..8).map(|j| l as f32 + j as f32 / 8.0).collect();
        assert_eq!(d.vector, want);
    }
}

#[test]
fn control_vector_round_trips_through_gguf_and_safetensors() {
    let dirs: Vec<Direction> = [1usize, 3, 4]
        .iter()
        .map(|&l| {
            let mut d = directions::random(16, l as u64).unwrap().at(HookPoint::resid_post(l));
            d.meta.model = "tiny".into();
            d.meta.position = "prefix_first".into();
            d.meta.prompt_hash = prompt_set_hash(&["a", "b"]);
            d
        })
        .collect();
    let cv = ControlVector::from_directions("qwen2", dirs).unwrap();
    let p = tmp("cv.gguf");
    cv.export_gguf(&p).unwrap();
    let back = ControlVector::import_gguf(&p).unwrap();
    assert_eq!(back, cv);
    let p = tmp("cv.safetensors");
    cv.save(&p).unwrap();
    assert_eq!(ControlVector::load(&p).unwrap(), cv);
    // Arithmetic: layer-wise, a missing layer counts as zero.
    let other = ControlVector::from_directions("qwen2", [directions::random(16, 9).unwrap().at(HookPoint::resid_post(2))]).unwrap();
    let sum = &cv + &(2.0 * &other);
    assert_eq!(sum.layers(), vec![1, 2, 3, 4]);
    assert_eq!(sum.get(2).unwrap().vector, (other.get(2).unwrap() * 2.0).vector);
    assert_eq!((&sum - &sum).get(3).unwrap().norm(), 0.0);
    assert_eq!((-&cv).get(1).unwrap().vector, (cv.get(1).unwrap() * -1.0).vector);
    // What llama.cpp cannot load is refused.
    let l0 = ControlVector::from_directions("m", [directions::random(16, 1).unwrap().at(HookPoint::resid_post(0))]).unwrap();
    assert!(l0.export_gguf(tmp("l0.gguf")).unwrap_err().to_string().contains("layer 0"));
    let pre = ControlVector::from_directions("m", [directions::random(16, 1).unwrap().at(HookPoint::resid_pre(3))]).unwrap();
    assert!(pre.export_gguf(tmp("pre.gguf")).unwrap_err().to_string().contains("hook_resid_post"));
    // A direction without a hook point has no layer.
    assert!(ControlVector::from_directions("m", [Direction::new(vec![1.0; 4])]).is_err());
}

#[test]
fn direction_round_trips_through_safetensors() {
    let mut d = directions::random(32, 3).unwrap().at(HookPoint::resid_mid(5)).with_extra("scale", "unit");
    d.meta.method = "contrastive_prefix".into();
    let p = tmp("d.safetensors");
    d.save(&p).unwrap();
    assert_eq!(Direction::load(&p).unwrap(), d);
    assert!(Direction::load(tmp("missing.safetensors")).unwrap_err().to_string().contains("missing.safetensors"));
}

#[test]
fn prompt_set_hash_matches_python() {
    // h = hashlib.sha256()
    // for p in ["How do I bake bread?", "a\nb", "é"]: b = p.encode(); h.update(len(b).to_bytes(8, "little") + b)
    // h.hexdigest()
    assert_eq!(prompt_set_hash(&["How do I bake bread?", "a\nb", "é"]), PY_HASH);
    assert_ne!(prompt_set_hash(&["a\nb"]), prompt_set_hash(&["a", "b"]));
}
const PY_HASH: &str = "53c6344a873e77637df8efbaad444a891445bef31805ddd2d4d49e484a1a952f";

// ------------------------------------------------------------------------------------------
// Prompt sets
// ------------------------------------------------------------------------------------------

#[test]
fn committed_prompt_sets_regenerate_byte_identically() {
    let dir = repo().join("datasets/steering_reliability");
    let mut sets = vec![];
    for (split, n) in [(Split::HarmTrain, 150), (Split::HarmTest, 150), (Split::Benign, 200)] {
        let recs = data::generate_split(split, n, 0).unwrap();
        let committed = std::fs::read_to_string(dir.join(format!("{}.jsonl", split.name()))).unwrap();
        assert!(records::to_jsonl(&recs).unwrap() == committed, "{split}: regeneration differs from the committed file");
        assert_eq!(read_jsonl(dir.join(format!("{}.jsonl", split.name()))).unwrap(), recs);
        sets.push((split, recs));
    }
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    assert!(readme == data::generator_readme(&sets, 0), "README.md differs from the generator's");
}

#[test]
fn train_and_test_are_shifted() {
    let train = data::generate_split(Split::HarmTrain, 150, 0).unwrap();
    let test = data::generate_split(Split::HarmTest, 150, 0).unwrap();
    let set = |r: &[PromptRecord], k: &str| r.iter().map(|x| x.meta.get(k).to_string()).collect::<std::collections::BTreeSet<_>>();
    assert!(set(&train, "template").is_disjoint(&set(&test, "template")));
    assert!(set(&train, "subfamily").is_disjoint(&set(&test, "subfamily")));
    assert!(set(&train, "style").is_disjoint(&set(&test, "style")));
    assert_eq!(set(&train, "family"), set(&test, "family"));
    // The template texts themselves differ too (not only their ids).
    let (tr, te) = (data::HARM_TRAIN_TEMPLATES, data::HARM_TEST_TEMPLATES);
    assert!(tr.iter().all(|a| te.iter().all(|b| a.2 != b.2)));
    let prompts_train: std::collections::HashSet<_> = train.iter().map(|r| &r.prompt).collect();
    assert!(test.iter().all(|r| !prompts_train.contains(&r.prompt)));
}

#[test]
fn malformed_jsonl_names_file_and_line() {
    let p = tmp("broken.jsonl");
    std::fs::write(&p, "{\"id\":\"x_1\",\"prompt\":\"hi\",\"meta\":{\"family\":\"f\"}}\n{\"id\":\"x_2\",\"prompt\":\"hi\"\n").unwrap();
    let e = format!("{:#}", read_jsonl(&p).unwrap_err());
    assert!(e.contains(&format!("{}:2", p.display())), "{e}");
    std::fs::write(&p, "").unwrap();
    assert!(format!("{:#}", read_jsonl(&p).unwrap_err()).contains("empty split"));
}

// ------------------------------------------------------------------------------------------
// Chat prompts on the embedded model (skipped when it is not downloaded)
// ------------------------------------------------------------------------------------------

#[test]
fn chat_contrastive_prefix_opens_the_assistant_turn() {
    let Some(m) = common::embedded() else { return };
    let tok = m.tok().unwrap();
    let texts = ["How do I bake bread?", "Tell me how to pick a lock."];
    let ps = PromptIds::encode_all(&m, &texts, &PromptFormat::chat()).unwrap();
    for p in &ps {
        // The prompt ends with the generation prompt, so a prefix appended to it is assistant text.
        assert!(tok.decode(&p.ids, false).unwrap().ends_with("<|im_start|>assistant\n"));
        assert_eq!(p.chat.as_ref().unwrap().index(&"prompt_last".parse().unwrap()).unwrap(), p.len() - 1);
    }
    let hp = HookPoint::resid_post(12);
    let cfg = Contrastive { batch_size: 2, ..Contrastive::new(REFUSAL, COMPLIANCE) };
    let by_text = contrastive_prefix(&m, &ps, &[hp], &cfg).unwrap();
    // The text form drops the prefixes' leading space in an assistant turn.
    let (a, b) = (tok.encode("I can't help with that.").unwrap(), tok.encode("Sure, here's how:").unwrap());
    let by_ids = contrastive_prefix_ids(&m, &ps, &a, &b, &[hp], &cfg).unwrap();
    assert_eq!(by_text[0].direction.vector, by_ids[0].direction.vector);
    let s = &by_text[0].stats;
    assert!(s.mean_diff_norm > 0.0 && s.mean_diff_norm.is_finite() && s.norm_of_mean <= s.mean_diff_norm + 1e-9);
    assert!((by_text[0].direction.norm() - 1.0).abs() < 1e-5);
    // Named positions steer the right token of each chat prompt.
    let w = Where::named(&"user_end".parse().unwrap(), &ps).unwrap();
    let Where::Positions(Positions::PerRow(rows)) = w else { panic!("per-row positions") };
    for (p, r) in ps.iter().zip(rows) {
        let i = p.chat.as_ref().unwrap().index(&"user_end".parse().unwrap()).unwrap();
        assert_eq!(r, Positions::At(vec![i]));
        assert!(tok.decode(&p.ids[i..=i], false).unwrap().contains('?') || tok.decode(&p.ids[i..=i], false).unwrap().contains('.'));
    }
}
