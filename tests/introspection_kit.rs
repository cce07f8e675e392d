//! The kit capabilities behind the introspection plan (issue 19), on the tiny parity fixtures:
//! training through a fixed prefix (finite differences with the cache held constant; equality
//! with full-sequence training whose prefix is detached), per-row steering (a batch equals each
//! row alone), chat message ranges, token-set readout, attention patterns against a hand
//! computation from the checkpoint's weights, the logit lens against a hand computation, vector
//! sets, concept vectors, and steer-then-remove through the cache against one steered forward.
//!
//! The gradient, per-row steering and steer-then-remove tests load their models on
//! `INTERP_KIT_TEST_DEVICE` in `INTERP_KIT_TEST_DTYPE` (tests/common; scripts/gpu_check.sh runs them
//! on CUDA), with bounds widened by `common::tol` off the CPU or in bf16. The hand computations
//! (attention, logit lens) compare against CPU weights and are meant for the CPU.
mod common;
use candle_core::{DType, Device, IndexOp, Tensor, D};
use common::{dev, fixture_dir, rel_err, tiny, tiny_chat, tol};
use interp_kit::grad::{PrefixedExample, TrainExample};
use interp_kit::hooks::{HookPoint, Hooks, Phase, Positions, Site};
use interp_kit::interp::directions::pca_center;
use interp_kit::interp::introspection::{steer_hooks, yes_no_after_prefix, yes_no_batch, ProtocolConfig, SteeredRow, SteeredTokens};
use interp_kit::interp::lens::logit_lens;
use interp_kit::interp::token_probs::{token_logprobs, TokenSet, YesNo};
use interp_kit::interp::row_steer::{row_steering_hooks, RowSteer};
use interp_kit::interp::vector_sets::{concept_vectors, ConceptPrompts, Split, VectorSet};
use interp_kit::lora::{lora_grad, lora_grad_prefixed, lora_grad_with, prefill_prefixes, LoraAdapter, LoraConfig};
use interp_kit::model::{KvCache, LogitsAt, Model};
use interp_kit::text::chat::Chat;
use interp_kit::text::spans::MessageRef;
use rand::{rngs::StdRng, Rng, SeedableRng};

fn flat(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

fn randomize_b(a: &LoraAdapter, seed: u64, scale: f32) {
    let mut rng = StdRng::seed_from_u64(seed);
    for (_, m) in a.modules() {
        let dims = m.b.as_tensor().dims().to_vec();
        let v: Vec<f32> = (0..dims.iter().product()).map(|_| (rng.random::<f32>() * 2.0 - 1.0) * scale).collect();
        let b = m.b.as_tensor();
        m.b.set(&Tensor::from_vec(v, dims, b.device()).unwrap().to_dtype(b.dtype()).unwrap()).unwrap();
    }
}

fn rand_ids(rng: &mut StdRng, n: usize) -> Vec<u32> {
    (0..n).map(|_| rng.random_range(3..300u32)).collect()
}

fn unit(d: usize, seed: u64) -> Vec<f32> {
    interp_kit::interp::directions::random_unit_vectors(d, 1, seed, 0).remove(0)
}

/// Two examples with prefixes of different lengths and suffixes of one length, each prefix
/// steered with its own vector (so the prefix cache is not the plain one).
fn prefixed_examples() -> Vec<PrefixedExample> {
    let mut rng = StdRng::seed_from_u64(21);
    vec![
        PrefixedExample::new(rand_ids(&mut rng, 6), rand_ids(&mut rng, 5), vec![2, 3, 4]).unwrap(),
        PrefixedExample::new(rand_ids(&mut rng, 4), rand_ids(&mut rng, 5), vec![1, 4]).unwrap(),
    ]
}

fn prefix_steer(m: &Model, ex: &[PrefixedExample]) -> Vec<RowSteer> {
    vec![
        RowSteer::new(unit(m.d_model(), 1), 0..2, 2.0, (0..ex[0].prefix.len()).collect()),
        RowSteer::new(unit(m.d_model(), 2), 1..3, -1.5, vec![1, 3]),
    ]
}

/// Mean suffix NLL with `cache` as a constant (inference path).
fn suffix_loss(m: &Model, a: &LoraAdapter, cache: &KvCache, ex: &[PrefixedExample]) -> f64 {
    let mut c = cache.clone();
    let suffixes: Vec<Vec<u32>> = ex.iter().map(|e| e.suffix.clone()).collect();
    let out = m.extend(&suffixes, &mut c, &Hooks::new().lora(a), LogitsAt::All).unwrap();
    let logits = out.logits.unwrap();
    let (mut s, mut n) = (0f64, 0usize);
    for (r, e) in ex.iter().enumerate() {
        let lp = candle_nn::ops::log_softmax(&logits.i(r).unwrap().to_dtype(DType::F64).unwrap(), D::Minus1).unwrap();
        let lp: Vec<Vec<f64>> = lp.to_vec2().unwrap();
        for &t in &e.targets {
            s -= lp[t - 1][e.suffix[t] as usize];
            n += 1;
        }
    }
    s / n as f64
}

#[test]
fn prefix_gradient_matches_finite_differences_with_the_cache_held() {
    let m = Model::from_hf_dir(&fixture_dir("qwen2"), &dev(), DType::F64).unwrap();
    let a = LoraAdapter::new(&m, &LoraConfig::all_linear(2, 4.0).with_seed(5)).unwrap();
    randomize_b(&a, 6, 0.2);
    let ex = prefixed_examples();
    let steer = prefix_steer(&m, &ex);
    let hooks = row_steering_hooks(&m, &steer, Site::ResidPost, Phase::Prefill).unwrap();
    let (loss, grads) = lora_grad_prefixed(&m, &a, &ex, hooks).unwrap();
    let refs: Vec<&PrefixedExample> = ex.iter().collect();
    let cache = prefill_prefixes(&m, &a, &refs, row_steering_hooks(&m, &steer, Site::ResidPost, Phase::Prefill).unwrap()).unwrap();
    assert!((suffix_loss(&m, &a, &cache, &ex) - loss).abs() < 1e-9);
    let checked = common::check_lora_grads_fd(&a, &grads, &["model.layers.0.self_attn.k_proj", "model.layers.1.self_attn.v_proj", "model.layers.2.mlp.down_proj", "model.layers.0.self_attn.q_proj"], 11, || suffix_loss(&m, &a, &cache, &ex));
    assert_eq!(checked, 24);
}

/// With an adapter that leaves k/v alone, detaching the residual stream at the prefix positions
/// before every block makes the prefix's keys and values constants: full-sequence training with
/// that detachment must give the prefixed gradient, and plain full-sequence training must not.
#[test]
fn prefix_gradient_equals_full_sequence_with_the_prefix_detached() {
    let m = Model::from_hf_dir(&fixture_dir("qwen2"), &dev(), DType::F64).unwrap();
    let cfg = LoraConfig::new(2, 4.0, &["q_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]).with_seed(3);
    let a = LoraAdapter::new(&m, &cfg).unwrap();
    randomize_b(&a, 4, 0.2);
    let ex = prefixed_examples();
    let steer = prefix_steer(&m, &ex);
    let (l1, g1) = lora_grad_prefixed(&m, &a, &ex, row_steering_hooks(&m, &steer, Site::ResidPost, Phase::Prefill).unwrap()).unwrap();
    let full: Vec<TrainExample> = ex.iter().map(|e| e.full()).collect();
    let prefix_pos = Positions::PerRow(ex.iter().map(|e| Positions::Span(0..e.prefix.len())).collect());
    let mut hooks = row_steering_hooks(&m, &steer, Site::ResidPost, Phase::Both).unwrap();
    for l in 0..m.n_layers() {
        let pos = prefix_pos.clone();
        hooks = hooks.write(HookPoint::resid_pre(l), Phase::Both, move |x, ctx| {
            let mask = ctx.mask(&pos)?;
            let keep = mask.affine(-1.0, 1.0)?;
            Ok((x.detach().broadcast_mul(&mask)? + x.broadcast_mul(&keep)?)?)
        });
    }
    let (l2, g2) = lora_grad_with(&m, &a, &full, hooks).unwrap();
    assert!((l1 - l2).abs() < 1e-9, "losses {l1} vs {l2}");
    let (_, g3) = lora_grad(&m, &a, &full).unwrap();
    let mut max_diff_plain = 0f32;
    for (name, (ga, gb)) in &g1 {
        let (ha, hb) = &g2[name];
        assert!(rel_err(ga, ha) < 1e-6 && rel_err(gb, hb) < 1e-6, "{name}: prefixed vs detached full {} {}", rel_err(ga, ha), rel_err(gb, hb));
        let (pa, pb) = &g3[name];
        max_diff_plain = max_diff_plain.max(rel_err(ga, pa)).max(rel_err(gb, pb));
    }
    assert!(max_diff_plain > 1e-2, "plain full-sequence training should differ, max rel diff {max_diff_plain}");
}

#[test]
fn a_batch_of_differently_steered_rows_equals_each_row_alone() {
    let m = tiny("qwen2");
    let d = m.d_model();
    let mut rng = StdRng::seed_from_u64(5);
    let prompts = vec![rand_ids(&mut rng, 7), rand_ids(&mut rng, 4), rand_ids(&mut rng, 6)];
    let rows = vec![
        RowSteer::new(unit(d, 1), 0..2, 3.0, vec![1, 2]),
        RowSteer::none(),
        RowSteer::new(unit(d, 2), 1..3, -2.0, vec![0, 4, 5]),
    ];
    let hooks = row_steering_hooks(&m, &rows, Site::ResidPost, Phase::Both).unwrap();
    let batch = m.forward(&prompts, &hooks).unwrap();
    for (r, p) in prompts.iter().enumerate() {
        let alone = m.forward(&[p.clone()], &row_steering_hooks(&m, &rows[r..=r], Site::ResidPost, Phase::Both).unwrap()).unwrap();
        let e = rel_err(&batch.logits_row(r).unwrap(), &alone.logits_row(0).unwrap());
        assert!(e < tol(1e-5), "row {r}: batch vs alone {e}");
        let plain = m.forward(&[p.clone()], &Hooks::new()).unwrap();
        let moved = rel_err(&alone.logits_row(0).unwrap(), &plain.logits_row(0).unwrap());
        assert_eq!(rows[r].is_active(), moved > 1e-4, "row {r}: steering moved the logits by {moved}");
    }
    // Positions before the first steered one are untouched (causality).
    let plain = m.forward(&[prompts[2].clone()], &Hooks::new()).unwrap();
    let b2 = batch.logits_row(2).unwrap();
    assert!(rel_err(&b2.i(0..0 + 1).unwrap(), &plain.logits_row(0).unwrap().i(0..1).unwrap()) > 1e-4);
    let e = rel_err(&batch.logits_row(0).unwrap().i(0..1).unwrap(), &m.forward(&[prompts[0].clone()], &Hooks::new()).unwrap().logits_row(0).unwrap().i(0..1).unwrap());
    assert!(e < tol(1e-5), "token 0 of row 0 precedes its steering: {e}");
    // Bad input names what is wrong.
    let bad = row_steering_hooks(&m, &[RowSteer::new(vec![0.0; d + 1], 0..1, 1.0, vec![0])], Site::ResidPost, Phase::Both);
    assert!(format!("{:#}", bad.err().unwrap()).contains("width"));
    let bad = row_steering_hooks(&m, &[RowSteer::new(unit(d, 1), 2..4, 1.0, vec![0])], Site::ResidPost, Phase::Both);
    assert!(format!("{:#}", bad.err().unwrap()).contains("outside the model"));
    let bad = RowSteer::new(unit(d, 1), 0..1, 1.0, vec![9]).check(&m, Some(7));
    assert!(bad.unwrap_err().to_string().contains("outside the prompt"));
}

#[test]
fn message_ranges_with_and_without_template_tokens() {
    let m = tiny_chat("qwen2");
    let tok = m.tok().unwrap();
    let chat = Chat::new().system("").user("ab").assistant("cd").user("ef").assistant("gh");
    let r = tok.render_chat(&chat, false).unwrap();
    let text = |ix: &[usize]| tok.decode(&ix.iter().map(|&i| r.ids[i]).collect::<Vec<_>>(), false).unwrap();
    let contents = r.message_range(MessageRef::user(1), MessageRef::assistant(1), false).unwrap();
    assert_eq!(text(&contents), "abcd");
    let span = r.message_range("user 1".parse().unwrap(), "assistant1".parse().unwrap(), true).unwrap();
    assert_eq!(text(&span), "ab<|im_end|>\n<|im_start|>assistant\ncd");
    assert!(span.windows(2).all(|w| w[1] == w[0] + 1));
    assert_eq!(text(&r.message_range(MessageRef::user(2), MessageRef::user(2), false).unwrap()), "ef");
    assert!(r.message_range(MessageRef::assistant(1), MessageRef::user(1), false).is_err());
    assert!(r.message_range(MessageRef::user(3), MessageRef::user(3), false).unwrap_err().to_string().contains("2 user"));
}

#[test]
fn token_readout_matches_the_logits_and_finds_word_variants() {
    if !common::exact() {
        eprintln!("SKIP token_readout_matches_the_logits_and_finds_word_variants: hand computations in f32 on the CPU only");
        return;
    }
    let m = tiny_chat("qwen2");
    let tok = m.tok().unwrap();
    let y = TokenSet::word_variants(tok, "y").unwrap();
    let mut want = vec![tok.encode("y").unwrap()[0], tok.encode("Y").unwrap()[0]];
    want.sort();
    let mut got = y.ids.clone();
    got.sort();
    assert_eq!(got, want, "single-token spellings of y");
    let e = TokenSet::word_variants(tok, "yes").unwrap_err().to_string();
    assert!(e.contains("no single token") && e.contains("yes"), "{e}");
    assert!(TokenSet::new("empty", vec![], None).is_err());
    let n = TokenSet::new("n", vec![tok.encode("n").unwrap()[0], 7], Some(tok)).unwrap();
    let prompts = vec![tok.encode("hello there").unwrap(), tok.encode("yo").unwrap()];
    let pos = vec![vec![0, 5, 10], vec![1]];
    let res = token_logprobs(&m, &prompts, &pos, &[y.clone(), n.clone()], &Hooks::new()).unwrap();
    for (r, p) in prompts.iter().enumerate() {
        let logits: Vec<Vec<f32>> = m.forward(&[p.clone()], &Hooks::new()).unwrap().logits_row(0).unwrap().to_vec2().unwrap();
        for (j, &i) in pos[r].iter().enumerate() {
            let row: Vec<f64> = logits[i].iter().map(|&x| x as f64).collect();
            let z: f64 = row.iter().map(|x| x.exp()).sum();
            for (k, set) in [&y, &n].iter().enumerate() {
                let p: f64 = set.ids.iter().map(|&t| row[t as usize].exp() / z).sum();
                assert!((res[r][j][k] - p.ln()).abs() < 1e-5, "row {r} pos {i} set {k}");
            }
        }
    }
    let yn = YesNo::from_logprobs(res[0][0][0], res[0][0][1]);
    assert!((yn.log_odds - (yn.p_yes.ln() - yn.p_no.ln())).abs() < 1e-9);
    assert!(token_logprobs(&m, &prompts, &[vec![11], vec![0]], &[y], &Hooks::new()).unwrap_err().to_string().contains("outside the prompt"));
}

/// RMSNorm by hand.
fn rms(x: &Tensor, w: &Tensor, eps: f64) -> Tensor {
    let ms = x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
    x.broadcast_div(&(ms + eps).unwrap().sqrt().unwrap()).unwrap().broadcast_mul(w).unwrap()
}

/// Rotate-half rope with theta 10000 over `[h, T, hd]`, positions 0..T.
fn rope(x: &Tensor, theta: f64) -> Tensor {
    let (h, t, hd) = x.dims3().unwrap();
    let half = hd / 2;
    let mut cos = vec![0f32; t * half];
    let mut sin = vec![0f32; t * half];
    for p in 0..t {
        for i in 0..half {
            let a = p as f64 / theta.powf(2.0 * i as f64 / hd as f64);
            cos[p * half + i] = a.cos() as f32;
            sin[p * half + i] = a.sin() as f32;
        }
    }
    let c = Tensor::from_vec(cos, (t, half), &Device::Cpu).unwrap();
    let s = Tensor::from_vec(sin, (t, half), &Device::Cpu).unwrap();
    let c = Tensor::cat(&[&c, &c], 1).unwrap();
    let s = Tensor::cat(&[&s, &s], 1).unwrap();
    let x1 = x.narrow(2, 0, half).unwrap();
    let x2 = x.narrow(2, half, half).unwrap();
    let rot = Tensor::cat(&[&x2.neg().unwrap(), &x1], 2).unwrap();
    let _ = h;
    (x.broadcast_mul(&c).unwrap() + rot.broadcast_mul(&s).unwrap()).unwrap()
}

/// Attention patterns of the qwen2 fixture against softmax(QKᵀ/√d + causal mask) computed here
/// from the checkpoint's weights and the cached resid_pre; padded batch rows equal rows alone;
/// a decode step's pattern equals the last query row of a full forward. Not checked against HF
/// `output_attentions` (no torch on this machine).
#[test]
fn attention_patterns_match_a_hand_computation() {
    if !common::exact() {
        eprintln!("SKIP attention_patterns_match_a_hand_computation: hand computations in f32 on the CPU only");
        return;
    }
    let m = tiny("qwen2");
    let w = candle_core::safetensors::load(fixture_dir("qwen2").join("model.safetensors"), &Device::Cpu).unwrap();
    let (h, kv, hd) = (m.info.n_heads, m.info.n_kv_heads, m.info.head_dim);
    let mut rng = StdRng::seed_from_u64(8);
    let p0 = rand_ids(&mut rng, 7);
    let p1 = rand_ids(&mut rng, 4);
    let mut hooks = Hooks::new();
    for l in 0..m.n_layers() {
        hooks = hooks
            .cache(HookPoint::resid_pre(l), Positions::All)
            .cache(HookPoint::attn_pattern(l), Positions::All)
            .cache(HookPoint::attn_scores(l), Positions::All);
    }
    let out = m.forward(&[p0.clone(), p1.clone()], &hooks).unwrap();
    let alone = m.forward(&[p0.clone()], &hooks).unwrap();
    for l in 0..m.n_layers() {
        let pre = format!("model.layers.{l}.");
        let x = rms(alone.activations.row(HookPoint::resid_pre(l), 0).unwrap(), &w[&format!("{pre}input_layernorm.weight")], 1e-6);
        let lin = |n: &str| x.matmul(&w[&format!("{pre}self_attn.{n}.weight")].t().unwrap()).unwrap().broadcast_add(&w[&format!("{pre}self_attn.{n}.bias")]).unwrap();
        let t = x.dim(0).unwrap();
        let q = rope(&lin("q_proj").reshape((t, h, hd)).unwrap().transpose(0, 1).unwrap().contiguous().unwrap(), 10000.0);
        let k = rope(&lin("k_proj").reshape((t, kv, hd)).unwrap().transpose(0, 1).unwrap().contiguous().unwrap(), 10000.0);
        let mut mask = vec![0f32; t * t];
        for i in 0..t {
            for j in i + 1..t {
                mask[i * t + j] = f32::NEG_INFINITY;
            }
        }
        let mask = Tensor::from_vec(mask, (t, t), &Device::Cpu).unwrap();
        let pat = alone.activations.row(HookPoint::attn_pattern(l), 0).unwrap();
        let scores = alone.activations.row(HookPoint::attn_scores(l), 0).unwrap();
        assert_eq!(pat.dims(), &[h, t, t]);
        for head in 0..h {
            let s = (q.i(head).unwrap().matmul(&k.i(head / (h / kv)).unwrap().t().unwrap()).unwrap() / (hd as f64).sqrt()).unwrap();
            let s = s.broadcast_add(&mask).unwrap();
            let want = candle_nn::ops::softmax(&s, D::Minus1).unwrap();
            let e = rel_err(&pat.i(head).unwrap(), &want);
            assert!(e < 1e-5, "layer {l} head {head}: pattern vs hand computation {e}");
            // The unmasked scores agree too.
            let tri: Vec<f32> = flat(&scores.i(head).unwrap());
            let ws = flat(&s);
            for i in 0..t {
                for j in 0..=i {
                    assert!((tri[i * t + j] - ws[i * t + j]).abs() < 1e-4 * ws[i * t + j].abs().max(1.0));
                }
            }
        }
        // Padded batch row 0 (the longer) and row 1 (left-padded) equal the rows alone.
        assert!(rel_err(out.activations.row(HookPoint::attn_pattern(l), 0).unwrap(), pat) < 1e-5);
        let one = m.forward(&[p1.clone()], &hooks).unwrap();
        let e = rel_err(out.activations.row(HookPoint::attn_pattern(l), 1).unwrap(), one.activations.row(HookPoint::attn_pattern(l), 0).unwrap());
        assert!(e < 1e-5, "layer {l}: padded row vs alone {e}");
    }
    // Prefill + one decode step: the step's pattern over cached keys is the full forward's last row.
    let mut cache = KvCache::new(&m);
    m.prefill(&[p0[..6].to_vec()], &mut cache, &Hooks::new(), LogitsAt::None).unwrap();
    let step = m.decode(&[p0[6]], &mut cache, &hooks).unwrap();
    let pat = step.activations.row(HookPoint::attn_pattern(1), 0).unwrap();
    let full = alone.activations.row(HookPoint::attn_pattern(1), 0).unwrap();
    assert!(rel_err(pat, &full.narrow(1, 6, 1).unwrap()) < 1e-5);
    // Readable K/V: the cache's keys of layer 0 have one entry per token.
    let (k0, v0) = cache.row_kv(0, 0).unwrap();
    assert_eq!(k0.dims(), &[kv, 7, hd]);
    assert_eq!(v0.dims(), &[kv, 7, hd]);
    // Read-only: writing a pattern is refused.
    let w_hooks = Hooks::new().write(HookPoint::attn_pattern(0), Phase::Both, |x, _| Ok(x.clone()));
    assert!(m.forward(&[p0.clone()], &w_hooks).err().unwrap().to_string().contains("read-only"));
    assert_eq!("blocks.2.attn.hook_pattern".parse::<HookPoint>().unwrap(), HookPoint::attn_pattern(2));
    assert_eq!(HookPoint::attn_scores(1).to_string(), "blocks.1.attn.hook_attn_scores");
}

#[test]
fn logit_lens_matches_a_hand_computation_and_the_last_layer_is_the_model() {
    if !common::exact() {
        eprintln!("SKIP logit_lens_matches_a_hand_computation_and_the_last_layer_is_the_model: hand computations in f32 on the CPU only");
        return;
    }
    let m = tiny("qwen2");
    let w = candle_core::safetensors::load(fixture_dir("qwen2").join("model.safetensors"), &Device::Cpu).unwrap();
    let mut rng = StdRng::seed_from_u64(9);
    let p = rand_ids(&mut rng, 6);
    let lens = logit_lens(&m, &[p.clone()], Positions::At(vec![2, 5]), Hooks::new()).unwrap();
    let points: Vec<HookPoint> = (0..m.n_layers()).map(HookPoint::resid_post).collect();
    let out = m.forward(&[p.clone()], &Hooks::new().cache_many(points.iter().copied(), Positions::At(vec![2, 5]))).unwrap();
    for (l, pt) in points.iter().enumerate() {
        let x = out.activations.row(*pt, 0).unwrap();
        let hand = rms(x, &w["model.norm.weight"], 1e-6).matmul(&w["lm_head.weight"].t().unwrap()).unwrap();
        let hand = candle_nn::ops::log_softmax(&hand, D::Minus1).unwrap();
        let e = rel_err(&lens.logprobs[l][0], &hand);
        assert!(e < 1e-5, "layer {l}: lens vs hand {e}");
    }
    let logits = m.forward(&[p.clone()], &Hooks::new()).unwrap().logits_row(0).unwrap();
    let want = candle_nn::ops::log_softmax(&Tensor::stack(&[logits.get(2).unwrap(), logits.get(5).unwrap()], 0).unwrap(), D::Minus1).unwrap();
    assert!(rel_err(&lens.logprobs[m.n_layers() - 1][0], &want) < 1e-5);
    let top = lens.top_k(3, None).unwrap();
    assert_eq!(top.height(), m.n_layers() * 2 * 3);
    let ch = lens.chosen(&[5, 17], None).unwrap();
    assert_eq!(ch.height(), m.n_layers() * 2 * 2);
    let lp = interp_kit::tables::column_f64(&ch, "logprob").unwrap();
    let want5 = lens.logprobs[0][0].i((0, 5)).unwrap().to_scalar::<f32>().unwrap() as f64;
    assert!((lp[0] - want5).abs() < 1e-9);
}

#[test]
fn vector_sets_are_stable_unit_and_round_trip() {
    let a = VectorSet::random(16, 10, 5, 42).unwrap();
    let b = VectorSet::random(16, 3, 30, 42).unwrap();
    assert_eq!(a.get(7).unwrap(), b.get(7).unwrap(), "a vector depends on its id and seed only");
    assert_ne!(a.get(7).unwrap(), VectorSet::random(16, 10, 5, 43).unwrap().get(7).unwrap());
    assert_eq!(a.ids(Split::Train), (0..10).collect::<Vec<u32>>());
    assert_eq!(a.ids(Split::HeldOut), (10..15).collect::<Vec<u32>>());
    for v in &a.vectors {
        let n: f64 = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        assert!((n - 1.0).abs() < 1e-5);
    }
    let dir = std::env::temp_dir().join(format!("interp_kit_vecset_{}", std::process::id()));
    let path = dir.join("random.safetensors");
    a.save(&path).unwrap();
    let back = VectorSet::load(&path).unwrap();
    assert_eq!(back, a);
    assert_eq!(back.meta.seed, Some(42));
    assert!(a.get(99).unwrap_err().to_string().contains("99"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn batched_concept_vectors_equal_pca_center_of_single_forwards() {
    let m = tiny_chat("qwen2");
    let concepts: Vec<String> = ["bread", "cats"].iter().map(|s| s.to_string()).collect();
    let suffixes: Vec<String> = ["I think", "Well,", "Sure"].iter().map(|s| s.to_string()).collect();
    let cfg = ConceptPrompts::default();
    let got = concept_vectors(&m, &concepts, &suffixes, &[1, 2], &cfg, 4).unwrap();
    let act = |ids: Vec<u32>, l: usize| -> Tensor {
        let out = m.forward(&[ids], &Hooks::new().cache(HookPoint::resid_post(l), Positions::Last)).unwrap();
        out.activations.row(HookPoint::resid_post(l), 0).unwrap().clone()
    };
    for (ci, c) in concepts.iter().enumerate() {
        for (li, &l) in [1usize, 2].iter().enumerate() {
            let pos: Vec<Tensor> = suffixes.iter().map(|s| act(cfg.ids(&m, &format!("Tell me about {c}."), s).unwrap(), l)).collect();
            let neg: Vec<Tensor> = suffixes.iter().map(|s| act(cfg.ids(&m, &cfg.negative, s).unwrap(), l)).collect();
            let want = pca_center(&Tensor::cat(&pos, 0).unwrap(), &Tensor::cat(&neg, 0).unwrap()).unwrap();
            let cos = got[ci][li].cosine(&want).unwrap();
            assert!(cos > 0.9999, "{c} layer {l}: cosine {cos}");
        }
    }
    let vs = VectorSet::from_labelled("concept", concepts.iter().zip(&got).map(|(c, d)| (c.clone(), d[0].vector.clone())).collect(), &["cats"]).unwrap();
    assert_eq!(vs.ids(Split::HeldOut), vec![1]);
}

/// Steer-then-remove through the cache equals one forward over the whole conversation that adds
/// the vector only at the steered positions.
#[test]
fn steer_then_remove_equals_one_forward_steered_at_the_prompt_positions() {
    let m = tiny_chat("qwen2");
    let tok = m.tok().unwrap();
    // Short texts: the byte-level tokenizer spends a token per byte and the fixture has 128 positions.
    let mut cfg = ProtocolConfig::default();
    cfg.texts.framing = "Hi.".into();
    cfg.texts.info = "Info.".into();
    cfg.texts.notice = "Maybe.".into();
    cfg.texts.reply = "Ok.".into();
    cfg.texts.question = "Any?".into();
    let p = cfg.build(tok).unwrap();
    let user1 = p.rendered.messages[p.rendered.find_message(MessageRef::user(1)).unwrap()].tokens.clone();
    let asst1 = p.rendered.messages[p.rendered.find_message(MessageRef::assistant(1)).unwrap()].tokens.clone();
    assert_eq!(p.steered, (user1.start..asst1.end).collect::<Vec<_>>());
    assert!(p.split < p.ids.len() && p.steered.iter().all(|&i| i < p.split));
    assert_eq!(tok.decode(&p.ids[p.ids.len() - 13..], false).unwrap(), "The answer is");
    let yes = TokenSet::new("yes", vec![tok.encode("y").unwrap()[0]], Some(tok)).unwrap();
    let no = TokenSet::new("no", vec![tok.encode("n").unwrap()[0]], Some(tok)).unwrap();
    let v = unit(m.d_model(), 3);
    let pre = steer_hooks(&m, &v, 1..3, 8.0, &p.steered, p.ids.len()).unwrap();
    let steered = yes_no_after_prefix(&m, &p.ids, p.split, &pre, &Hooks::new(), &yes, &no).unwrap();
    let one = row_steering_hooks(&m, &[RowSteer::new(v.clone(), 1..3, 8.0, p.steered.clone())], Site::ResidPost, Phase::Both).unwrap();
    let full = m.forward_at(&[p.ids.clone()], &one, LogitsAt::Last).unwrap();
    let want = YesNo::from_logits(&full.last_logits().unwrap().get(0).unwrap(), &yes, &no).unwrap();
    let t = tol(1e-6) as f64;
    assert!((steered.p_yes - want.p_yes).abs() < t * want.p_yes.max(1e-3), "{steered:?} vs {want:?}");
    assert!((steered.p_no - want.p_no).abs() < t * want.p_no.max(1e-3));
    let clean = yes_no_after_prefix(&m, &p.ids, p.split, &Hooks::new(), &Hooks::new(), &yes, &no).unwrap();
    assert!((clean.p_yes - steered.p_yes).abs() > 1e-6, "steering changed nothing");
    // Bad input.
    assert!(steer_hooks(&m, &v[..10], 1..3, 8.0, &p.steered, p.ids.len()).err().unwrap().to_string().contains("width"));
    assert!(steer_hooks(&m, &v, 1..9, 8.0, &p.steered, p.ids.len()).err().unwrap().to_string().contains("outside the model"));
    assert!(steer_hooks(&m, &v, 1..3, 8.0, &[p.ids.len()], p.ids.len()).err().unwrap().to_string().contains("outside the prompt"));
    // The "which tokens" choices: user turn 1 alone ends the steered prefix before the reply, and
    // partial is the first half (rounded up) of the context's tokens.
    cfg.tokens = SteeredTokens::UserOnly;
    let u = cfg.build(tok).unwrap();
    assert_eq!(u.ids, p.ids);
    assert_eq!(u.steered, user1.clone().collect::<Vec<_>>());
    assert_eq!(u.split, user1.end);
    assert!(u.split < p.split);
    cfg.tokens = SteeredTokens::Partial;
    let h = cfg.build(tok).unwrap();
    assert_eq!(h.steered, p.steered[..p.steered.len().div_ceil(2)].to_vec());
    assert_eq!(h.split, h.steered.last().unwrap() + 1);
    assert_eq!("user_only".parse::<SteeredTokens>().unwrap(), SteeredTokens::UserOnly);
    assert!("users".parse::<SteeredTokens>().unwrap_err().to_string().contains("user_only"));
    cfg.tokens = SteeredTokens::Context;
    cfg.info = true;
    cfg.steer_system = true;
    let q = cfg.build(tok).unwrap();
    assert_eq!(q.steered[0], 0);
    assert!(q.ids.len() > p.ids.len());
}

/// Every fixture family: the cached pattern is the softmax of the cached scores, rows sum to 1,
/// no query attends to a later key, Gemma-2's sliding-window layers attend to the last 4 keys only,
/// and a left-padded batch row equals the row alone.
#[test]
fn attention_patterns_obey_their_laws_in_every_family() {
    if !common::exact() {
        eprintln!("SKIP attention_patterns_obey_their_laws_in_every_family: hand computations in f32 on the CPU only");
        return;
    }
    for arch in ["qwen2", "qwen3", "llama", "gemma2", "gpt_neox", "gpt_neox_sequential", "gpt2"] {
        let m = tiny(arch);
        let mut rng = StdRng::seed_from_u64(12);
        let (p0, p1) = (rand_ids(&mut rng, 9), rand_ids(&mut rng, 5));
        let mut hooks = Hooks::new();
        for l in 0..m.n_layers() {
            hooks = hooks.cache(HookPoint::attn_pattern(l), Positions::All).cache(HookPoint::attn_scores(l), Positions::All);
        }
        let batch = m.forward(&[p0.clone(), p1.clone()], &hooks).unwrap();
        let alone = m.forward(&[p1.clone()], &hooks).unwrap();
        for l in 0..m.n_layers() {
            let pat = batch.activations.row(HookPoint::attn_pattern(l), 0).unwrap();
            let sc = batch.activations.row(HookPoint::attn_scores(l), 0).unwrap();
            assert_eq!(pat.dims(), &[m.info.n_heads, 9, 9], "{arch} layer {l}");
            let e = rel_err(pat, &candle_nn::ops::softmax(sc, D::Minus1).unwrap());
            assert!(e < 1e-5, "{arch} layer {l}: pattern vs softmax(scores) {e}");
            let v: Vec<Vec<Vec<f32>>> = pat.to_vec3().unwrap();
            let windowed = arch == "gemma2" && l != 1;
            for head in &v {
                for (i, row) in head.iter().enumerate() {
                    assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
                    for (j, &x) in row.iter().enumerate() {
                        let visible = j <= i && (!windowed || i - j < 4);
                        if !visible {
                            assert!(x.abs() < 1e-12, "{arch} layer {l}: query {i} attends to key {j} ({x})");
                        }
                    }
                }
            }
            if arch == "gemma2" && l == 1 {
                assert!(v[0][8][0] > 0.0, "gemma2 layer 1 is global");
            }
            let e = rel_err(batch.activations.row(HookPoint::attn_pattern(l), 1).unwrap(), alone.activations.row(HookPoint::attn_pattern(l), 0).unwrap());
            assert!(e < 1e-5, "{arch} layer {l}: padded row vs alone {e}");
        }
    }
}

/// A batch of conversations with different prefixes (different lengths: left padding), each steered
/// its own way or not, with and without an adapter, equals each conversation run alone; unequal
/// suffixes are refused. (`generate_after_prefix` is checked in tests/introspection_study.rs, on
/// a fixture whose vocabulary the tokenizer can decode.)
#[test]
fn batched_steer_then_remove_equals_each_conversation_alone() {
    let m = tiny_chat("qwen2");
    let tok = m.tok().unwrap();
    let d = m.d_model();
    let mut cfg = ProtocolConfig::default();
    cfg.texts.framing = "Hi.".into();
    cfg.texts.notice = "Maybe.".into();
    cfg.texts.question = "Any?".into();
    let mut prompts = vec![];
    for reply in ["Ok.", "Fine, go on.", "Sure thing!"] {
        cfg.texts.reply = reply.into();
        prompts.push(cfg.build(tok).unwrap());
    }
    assert_ne!(prompts[0].split, prompts[1].split);
    let yes = TokenSet::new("yes", vec![tok.encode("y").unwrap()[0]], Some(tok)).unwrap();
    let no = TokenSet::new("no", vec![tok.encode("n").unwrap()[0]], Some(tok)).unwrap();
    let steers = [
        RowSteer::new(unit(d, 1), 1..3, 6.0, prompts[0].steered.clone()),
        RowSteer::none(),
        RowSteer::new(unit(d, 2), 0..2, -4.0, prompts[2].steered[2..5].to_vec()),
    ];
    let rows: Vec<SteeredRow> = prompts.iter().zip(&steers).map(|(p, s)| SteeredRow { ids: p.ids.clone(), split: p.split, steer: s.clone() }).collect();
    let a = LoraAdapter::new(&m, &LoraConfig::qkvo(2, 4.0).with_seed(1)).unwrap();
    randomize_b(&a, 2, 0.2);
    for adapter in [None, Some(&a)] {
        let batch = yes_no_batch(&m, &rows, adapter.map(|a| a as &dyn interp_kit::hooks::Adapter), &yes, &no).unwrap();
        for (r, (p, s)) in prompts.iter().zip(&steers).enumerate() {
            let mut pre = row_steering_hooks(&m, std::slice::from_ref(s), Site::ResidPost, Phase::Prefill).unwrap();
            let mut post = Hooks::new();
            if let Some(a) = adapter {
                pre = pre.lora(a);
                post = post.lora(a);
            }
            let alone = yes_no_after_prefix(&m, &p.ids, p.split, &pre, &post, &yes, &no).unwrap();
            let t = tol(1e-6) as f64;
            assert!((batch[r].p_yes - alone.p_yes).abs() < t && (batch[r].p_no - alone.p_no).abs() < t, "row {r}: {:?} vs {alone:?}", batch[r]);
        }
    }
    let mut bad = rows.clone();
    bad[1].ids.push(5);
    assert!(yes_no_batch(&m, &bad, None, &yes, &no).unwrap_err().to_string().contains("one length"));
    let mut late = rows[0].clone();
    late.steer.positions.push(late.split);
    assert!(format!("{:#}", yes_no_batch(&m, &[late], None, &yes, &no).unwrap_err()).contains("outside the prompt"));
}
