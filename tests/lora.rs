//! LoRA adapters on the tiny Qwen2 parity checkpoint: PEFT parity (tests/fixtures/peft, made by
//! scripts/make_peft_fixtures.py with peft 0.21.2), PEFT file layout, B = 0 is the base model,
//! merged == unmerged, the base weights are never touched, gradients against finite differences,
//! gradient accumulation == one large batch, seeded dropout, and training lowering the loss.
mod common;
use candle_core::{DType, Device, Tensor, Var};
use common::{fixture_dir, rel_err, tiny};
use interp_kit::prelude::*;
use interp_kit::lora::LoraTrainer;
use interp_kit::lora::Schedule;
use interp_kit::lora::StepInfo;
use interp_kit::lora::eval_loss;
use interp_kit::lora::lora_grad;
use interp_kit::lora::train_lora_with;
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

const TOL: f32 = 1e-4;

fn peft_dir(variant: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/peft").join(variant)
}

fn reference(variant: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(peft_dir(variant).join("reference.safetensors"), &Device::Cpu).unwrap()
}

fn ids(t: &Tensor) -> Vec<u32> {
    t.to_dtype(DType::I64).unwrap().to_vec1::<i64>().unwrap().into_iter().map(|x| x as u32).collect()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("interp_kit_lora_{name}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

/// Every base weight of the model, as f32 vectors (dense copies of quantized ones).
fn weights(m: &Model) -> Vec<Vec<f32>> {
    m.block_linears().iter().map(|(_, l)| flat(l.weight.dense().unwrap())).collect()
}

fn prompts(r: &HashMap<String, Tensor>) -> Vec<Vec<u32>> {
    vec![ids(&r["ids_0"]), ids(&r["ids_1"])]
}

/// Sets every B of the adapter to seeded random values (A stays as initialised).
fn randomize_b(a: &LoraAdapter, seed: u64, scale: f64) {
    let mut rng = StdRng::seed_from_u64(seed);
    for (_, m) in a.modules() {
        let dims = m.b.as_tensor().dims().to_vec();
        let v: Vec<f32> = (0..dims.iter().product()).map(|_| (rng.random::<f64>() * 2.0 - 1.0) as f32 * scale as f32).collect();
        m.b.set(&Tensor::from_vec(v, dims, &Device::Cpu).unwrap()).unwrap();
    }
}

/// Random sequences over the tiny vocabulary whose second half repeats the first (learnable by
/// attention), the loss on the second half.
fn copy_examples(n: usize, half: usize, seed: u64) -> Vec<TrainExample> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let h = half + i % 3; // different lengths: padded batches
            let p: Vec<u32> = (0..h).map(|_| rng.random_range(3..300u32)).collect();
            TrainExample::prompt_completion(&p, &p).unwrap()
        })
        .collect()
}

#[test]
fn peft_adapters_give_peft_logits() {
    let m = tiny("qwen2");
    let base_before = m.forward(&[prompts(&reference("qv"))[0].clone()], &Hooks::new()).unwrap().logits.unwrap();
    let w_before = weights(&m);
    for variant in ["qv", "all_linear"] {
        let r = reference(variant);
        let a = LoraAdapter::load(peft_dir(variant), &m).unwrap();
        let merged = lora::merge(&m, &a).unwrap();
        for (i, p) in prompts(&r).into_iter().enumerate() {
            let hooks = Hooks::new().lora(&a);
            let got = m.forward(&[p.clone()], &hooks).unwrap().logits_row(0).unwrap();
            let e = rel_err(&got, &r[&format!("logits_{i}")]);
            assert!(e < TOL, "{variant} prompt {i}: LoRA logits rel err {e:.2e} vs PEFT");
            let got = merged.forward(&[p.clone()], &Hooks::new()).unwrap().logits_row(0).unwrap();
            let e = rel_err(&got, &r[&format!("merged_logits_{i}")]);
            assert!(e < TOL, "{variant} prompt {i}: merged logits rel err {e:.2e} vs PEFT merge_and_unload");
            let base = m.forward(&[p.clone()], &Hooks::new()).unwrap().logits_row(0).unwrap();
            let e = rel_err(&base, &r[&format!("base_logits_{i}")]);
            assert!(e < TOL, "{variant} prompt {i}: base logits rel err {e:.2e}");
            // The adapter matters: PEFT's logits are far from the base's.
            assert!(rel_err(&base, &r[&format!("logits_{i}")]) > 0.1);
        }
        // Left-padded batch: each row as PEFT computed it alone.
        let ps = prompts(&r);
        let out = m.forward(&ps, &Hooks::new().lora(&a)).unwrap();
        for i in 0..2 {
            let e = rel_err(&out.logits_row(i).unwrap(), &r[&format!("logits_{i}")]);
            assert!(e < TOL, "{variant} batched row {i}: rel err {e:.2e}");
        }
        // KV-cache generation with the adapter = full recomputation with the adapter.
        let cfg = GenerateConfig { stop_at_eos: false, ..GenerateConfig::greedy(4) };
        let g = m.generate(&[ps[0].clone()], &cfg, &Hooks::new().lora(&a)).unwrap();
        let mut seq = ps[0].clone();
        for _ in 0..4 {
            let l = m.forward(&[seq.clone()], &Hooks::new().lora(&a)).unwrap().last_logits().unwrap();
            seq.push(l.argmax(candle_core::D::Minus1).unwrap().to_vec1::<u32>().unwrap()[0]);
        }
        assert_eq!(g[0].tokens, seq[ps[0].len()..], "{variant}: greedy generation with the adapter");
    }
    // Base contamination: loading, applying and merging adapters left the base bit-identical.
    let base_after = m.forward(&[prompts(&reference("qv"))[0].clone()], &Hooks::new()).unwrap().logits.unwrap();
    assert_eq!(flat(&base_before), flat(&base_after), "base logits changed after loading/merging adapters");
    assert_eq!(w_before, weights(&m), "base weights changed");
}

#[test]
fn zero_b_is_the_base_model() {
    let m = tiny("qwen2");
    let r = reference("qv");
    let ps = prompts(&r);
    let a = LoraAdapter::new(&m, &LoraConfig::all_linear(4, 8.0).with_seed(7)).unwrap();
    assert!(a.modules().all(|(_, x)| flat(x.b.as_tensor()).iter().all(|v| *v == 0.0)));
    assert!(a.modules().all(|(_, x)| flat(x.a.as_tensor()).iter().any(|v| *v != 0.0)));
    let base = m.forward(&ps, &Hooks::new()).unwrap().logits.unwrap();
    let with = m.forward(&ps, &Hooks::new().lora(&a)).unwrap().logits.unwrap();
    assert_eq!(flat(&base), flat(&with), "B = 0 must give exactly the base logits");
    // Gradient path too: same loss, same residual gradient.
    let loss = Loss::From(vec![3, 3]);
    let hp = [HookPoint::resid_post(1)];
    let g0 = m.grad(&ps, &loss, &hp, Positions::All, &Hooks::new()).unwrap();
    let g1 = m.grad(&ps, &loss, &hp, Positions::All, &Hooks::new().lora(&a)).unwrap();
    assert_eq!(g0.loss, g1.loss);
    assert_eq!(flat(g0.grads.row(hp[0], 0).unwrap()), flat(g1.grads.row(hp[0], 0).unwrap()));
}

#[test]
fn kaiming_init_matches_peft_bounds_and_seed() {
    let m = tiny("qwen2");
    let c = LoraConfig::qv(8, 16.0).with_seed(3);
    let a = LoraAdapter::new(&m, &c).unwrap();
    let b = LoraAdapter::new(&m, &c).unwrap();
    let d = LoraAdapter::new(&m, &c.clone().with_seed(4)).unwrap();
    assert_eq!(a.modules().count(), 2 * m.n_layers());
    assert_eq!(a.n_params(), m.n_layers() * (8 * 64 + 64 * 8 + 8 * 64 + 32 * 8));
    for ((n1, x), (_, y)) in a.modules().zip(b.modules()) {
        assert_eq!(flat(x.a.as_tensor()), flat(y.a.as_tensor()), "{n1}: same seed, same A");
        let v = flat(x.a.as_tensor());
        let bound = 1.0 / (64f32).sqrt(); // kaiming_uniform(a=sqrt(5)) on [r, in=64]
        assert!(v.iter().all(|x| x.abs() <= bound));
        let max = v.iter().fold(0f32, |a, x| a.max(x.abs()));
        assert!(max > 0.9 * bound, "{n1}: {max} should approach the bound {bound}");
        assert_eq!(x.scaling, 2.0);
    }
    assert_ne!(flat(a.modules().next().unwrap().1.a.as_tensor()), flat(d.modules().next().unwrap().1.a.as_tensor()));
    let l = LoraAdapter::new(&m, &LoraConfig::qkvo(2, 2.0).with_layers([1])).unwrap();
    let names: Vec<&str> = l.modules().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        ["model.layers.1.self_attn.k_proj", "model.layers.1.self_attn.o_proj", "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]
    );
}

#[test]
fn merge_equals_unmerged_and_leaves_the_base_alone() {
    let m = tiny("qwen2");
    let ps = prompts(&reference("qv"));
    let base = flat(&m.forward(&ps, &Hooks::new()).unwrap().logits.unwrap());
    let w = weights(&m);
    let a = LoraAdapter::new(&m, &LoraConfig::all_linear(4, 8.0).with_seed(1)).unwrap();
    randomize_b(&a, 2, 0.3);
    let unmerged = m.forward(&ps, &Hooks::new().lora(&a)).unwrap().logits.unwrap();
    let merged_model = lora::merge(&m, &a).unwrap();
    let merged = merged_model.forward(&ps, &Hooks::new()).unwrap().logits.unwrap();
    let e = rel_err(&merged, &unmerged);
    assert!(e < 1e-5, "merged vs unmerged: rel err {e:.2e}");
    assert!(rel_err(&unmerged, &Tensor::from_vec(base.clone(), unmerged.dims(), &Device::Cpu).unwrap()) > 1e-2);
    assert_eq!(base, flat(&m.forward(&ps, &Hooks::new()).unwrap().logits.unwrap()), "base logits changed");
    assert_eq!(w, weights(&m), "merging modified the base weights");
    // Training the adapter afterwards changes neither the base nor the merged copy.
    let merged_before = flat(&merged);
    let data = copy_examples(4, 5, 9);
    train_lora(&m, &a, &data, &TrainConfig { lr: 1e-2, max_steps: Some(2), ..Default::default() }, |_, _| Ok(())).unwrap();
    assert_eq!(w, weights(&m));
    assert_eq!(merged_before, flat(&merged_model.forward(&ps, &Hooks::new()).unwrap().logits.unwrap()));
}

/// The kit writes what PEFT writes: same tensor keys, shapes and dtypes, same config fields.
#[test]
fn kit_saves_peft_layout() {
    let m = tiny("qwen2");
    let cases = [
        ("qv", LoraConfig::qv(4, 8.0)),
        ("all_linear", LoraConfig { use_rslora: true, ..LoraConfig::all_linear(4, 6.0).with_layers([0, 2]).with_dropout(0.1) }),
    ];
    for (variant, cfg) in cases {
        let mut a = LoraAdapter::new(&m, &cfg).unwrap();
        a.base_model = "tests/fixtures/parity/qwen2".into();
        let dir = tmp(&format!("save_{variant}"));
        a.save(&dir).unwrap();
        let peft_st = std::fs::read(peft_dir(variant).join("adapter_model.safetensors")).unwrap();
        let ours_st = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
        let (peft_t, ours_t) = (safetensors::SafeTensors::deserialize(&peft_st).unwrap(), safetensors::SafeTensors::deserialize(&ours_st).unwrap());
        let layout = |s: &safetensors::SafeTensors| -> BTreeMap<String, (Vec<usize>, String)> {
            s.tensors().into_iter().map(|(k, v)| (k, (v.shape().to_vec(), format!("{:?}", v.dtype())))).collect()
        };
        assert_eq!(layout(&ours_t), layout(&peft_t), "{variant}: tensor keys/shapes/dtypes");
        let meta = |b: &[u8]| safetensors::SafeTensors::read_metadata(b).unwrap().1.metadata().clone();
        assert_eq!(meta(&ours_st), meta(&peft_st), "{variant}: safetensors metadata");
        let read = |p: &Path| -> serde_json::Map<String, serde_json::Value> {
            serde_json::from_str(&std::fs::read_to_string(p.join("adapter_config.json")).unwrap()).unwrap()
        };
        let (mut peft_c, mut ours_c) = (read(&peft_dir(variant)), read(&dir));
        assert_eq!(ours_c.keys().collect::<Vec<_>>(), peft_c.keys().collect::<Vec<_>>(), "{variant}: config fields");
        let set = |c: &mut serde_json::Map<String, serde_json::Value>| -> BTreeSet<String> {
            let v = c.remove("target_modules").unwrap();
            v.as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect()
        };
        assert_eq!(set(&mut ours_c), set(&mut peft_c), "{variant}: target_modules");
        // The fixture was made with init_lora_weights=False (random B); a kit adapter starts with B = 0.
        assert_eq!(ours_c.remove("init_lora_weights"), Some(serde_json::json!(true)));
        assert_eq!(peft_c.remove("init_lora_weights"), Some(serde_json::json!(false)));
        assert_eq!(ours_c, peft_c, "{variant}: config values");
        // A saved adapter loads back to the same values; a PEFT adapter round-trips bit-exactly.
        let back = LoraAdapter::load(&dir, &m).unwrap();
        let mut want = LoraConfig { seed: 0, ..cfg.clone() };
        want.target_modules.sort();
        assert_eq!(back.config, want);
        for ((n1, x), (n2, y)) in a.modules().zip(back.modules()) {
            assert_eq!(n1, n2);
            assert_eq!(flat(x.a.as_tensor()), flat(y.a.as_tensor()));
        }
        let p = LoraAdapter::load(peft_dir(variant), &m).unwrap();
        let dir2 = tmp(&format!("resave_{variant}"));
        p.save(&dir2).unwrap();
        let again = safetensors::SafeTensors::deserialize(&std::fs::read(dir2.join("adapter_model.safetensors")).unwrap())
            .unwrap()
            .tensors()
            .into_iter()
            .map(|(k, v)| (k, v.data().to_vec()))
            .collect::<BTreeMap<_, _>>();
        let orig = peft_t.tensors().into_iter().map(|(k, v)| (k, v.data().to_vec())).collect::<BTreeMap<_, _>>();
        assert_eq!(again, orig, "{variant}: PEFT tensors re-saved bit-exactly");
        let (mut c1, mut c2) = (read(&peft_dir(variant)), read(&dir2));
        assert_eq!(set(&mut c1), set(&mut c2));
        assert_eq!(c1, c2, "{variant}: PEFT config re-saved unchanged");
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&dir2);
    }
}

#[track_caller]
fn err_of<T>(r: anyhow::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn bad_adapters_are_refused_with_the_offending_key() {
    let m = tiny("qwen2");
    let src = peft_dir("qv");
    let cfg_txt = std::fs::read_to_string(src.join("adapter_config.json")).unwrap();
    let tensors = candle_core::safetensors::load(src.join("adapter_model.safetensors"), &Device::Cpu).unwrap();
    let case = |name: &str, cfg: &str, t: &HashMap<String, Tensor>| -> String {
        let d = tmp(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("adapter_config.json"), cfg).unwrap();
        candle_core::safetensors::save(t, d.join("adapter_model.safetensors")).unwrap();
        let r = LoraAdapter::load(&d, &m);
        let _ = std::fs::remove_dir_all(&d);
        match r {
            Ok(_) => panic!("case {name}: the adapter loaded, expected an error"),
            Err(e) => format!("{e:#}"),
        }
    };
    let key = "base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight";
    let mut t = tensors.clone();
    t.insert(key.into(), t[key].t().unwrap().contiguous().unwrap());
    let e = case("shape", &cfg_txt, &t);
    assert!(e.contains(key) && e.contains("[64, 4]") && e.contains("[4, 64]"), "{e}");
    let mut t = tensors.clone();
    t.remove("base_model.model.model.layers.2.self_attn.q_proj.lora_B.weight");
    let e = case("missing", &cfg_txt, &t);
    assert!(e.contains("model.layers.2.self_attn.q_proj.lora_B.weight is missing"), "{e}");
    let mut t = tensors.clone();
    t.insert("base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight".into(), tensors[key].clone());
    let e = case("nomodule", &cfg_txt, &t);
    assert!(e.contains("layers.7.self_attn.q_proj") && e.contains("no linear layer"), "{e}");
    let mut t = tensors.clone();
    t.insert("base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector".into(), Tensor::zeros(64, DType::F32, &Device::Cpu).unwrap());
    let e = case("dora_key", &cfg_txt, &t);
    assert!(e.contains("lora_magnitude_vector"), "{e}");
    let e = case("dora", &cfg_txt.replace("\"use_dora\": false", "\"use_dora\": true"), &tensors);
    assert!(e.contains("use_dora"), "{e}");
    let e = case("rank", &cfg_txt.replace("\"r\": 4", "\"r\": 8"), &tensors);
    assert!(e.contains("r = 8"), "{e}");
    // The config targets k_proj too, but the file has no k_proj weights.
    let mut c: serde_json::Value = serde_json::from_str(&cfg_txt).unwrap();
    c["target_modules"] = serde_json::json!(["q_proj", "k_proj", "v_proj"]);
    let e = case("targets", &c.to_string(), &tensors);
    assert!(e.contains("k_proj") && e.contains("targeted"), "{e}");
    let e = err_of(LoraAdapter::load(tmp("absent"), &m));
    assert!(e.contains("adapter_config.json"), "{e}");
    // An adapter made for another model is refused at the call.
    let q3 = tiny("qwen3");
    let a = LoraAdapter::load(&src, &m).unwrap();
    let e = err_of(q3.forward(&[vec![1, 2, 3]], &Hooks::new().lora(&a)));
    assert!(e.contains("self_attn.q_proj") && e.contains("features"), "{e}");
    // Config values.
    let e = err_of(LoraAdapter::new(&m, &LoraConfig::new(4, 8.0, &["q_proj", "qproj"])));
    assert!(e.contains("\"qproj\""), "{e}");
    let e = err_of(LoraAdapter::new(&m, &LoraConfig::qv(4, 8.0).with_layers([3])));
    assert!(e.contains("layer 3") && e.contains("3 layers"), "{e}");
    let e = err_of(LoraAdapter::new(&m, &LoraConfig::qv(0, 8.0)));
    assert!(e.contains("rank"), "{e}");
}

/// dL/dA and dL/dB against central finite differences of the loss (f64 model).
#[test]
fn lora_gradient_matches_finite_differences() {
    let m = Model::from_hf_dir(&fixture_dir("qwen2"), &Device::Cpu, DType::F64).unwrap();
    let a = LoraAdapter::new(&m, &LoraConfig::all_linear(2, 4.0).with_seed(5)).unwrap();
    randomize_b(&a, 6, 0.2);
    let data = copy_examples(2, 5, 3);
    let (loss, grads) = lora_grad(&m, &a, &data).unwrap();
    let f = || lora_grad(&m, &a, &data).unwrap().0;
    assert!((f() - loss).abs() < 1e-12);
    let checked = common::check_lora_grads_fd(&a, &grads, &["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.v_proj", "model.layers.2.mlp.down_proj", "model.layers.0.mlp.gate_proj"], 11, || f());
    assert_eq!(checked, 24);
}

#[test]
fn training_lowers_the_loss() {
    let m = tiny("qwen2");
    let a = LoraAdapter::new(&m, &LoraConfig::qkvo(8, 16.0).with_seed(1)).unwrap();
    let data = copy_examples(8, 6, 1);
    let before = eval_loss(&m, &Hooks::new().lora(&a), &data, 4).unwrap();
    let base = eval_loss(&m, &Hooks::new(), &data, 4).unwrap();
    assert_eq!(before, base, "a fresh adapter (B = 0) does not change the loss");
    let cfg = TrainConfig { lr: 1e-2, epochs: 10, batch_size: 4, grad_accum: 1, warmup_steps: 2, schedule: Schedule::Cosine, callback_every: 5, ..Default::default() };
    let mut seen = vec![];
    let log = train_lora(&m, &a, &data, &cfg, |info, ad| {
        seen.push((info.step, eval_loss(&m, &Hooks::new().lora(ad), &data, 4)?));
        Ok(())
    })
    .unwrap();
    let after = eval_loss(&m, &Hooks::new().lora(&a), &data, 4).unwrap();
    assert_eq!(log.len(), 20);
    assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), [5, 10, 15, 20]);
    assert!((seen[3].1 - after).abs() < 1e-9);
    assert!(after < before - 1.0, "loss {before:.3} -> {after:.3}: expected a drop of more than 1 nat");
    // The first step's logged loss is the loss before training (teacher-forced, same examples).
    let first_batch_tokens: usize = log[0].tokens;
    assert!(first_batch_tokens > 0 && (log[0].loss - before).abs() < 0.5);
    // Schedule: warmup from 0, cosine decay.
    for (s, info) in log.iter().enumerate() {
        assert!((info.lr - cfg.lr_at(s, 20)).abs() < 1e-15);
        assert_eq!(info.epoch, s / 2);
        assert!(info.grad_norm.is_finite() && info.grad_norm > 0.0);
    }
    assert_eq!(log[0].lr, 0.0);
    assert!((log[1].lr - 5e-3).abs() < 1e-12 && (log[2].lr - 1e-2).abs() < 1e-12);
    // The log serialises.
    let js = serde_json::to_string(&log).unwrap();
    let back: Vec<StepInfo> = serde_json::from_str(&js).unwrap();
    assert_eq!(back.len(), log.len());
    for (x, y) in back.iter().zip(&log) {
        assert_eq!((x.step, x.epoch, x.tokens, x.seq_tokens, x.examples), (y.step, y.epoch, y.tokens, y.seq_tokens, y.examples));
        for (p, q) in [(x.loss, y.loss), (x.lr, y.lr), (x.grad_norm, y.grad_norm)] {
            assert!((p - q).abs() <= 1e-12 * q.abs());
        }
    }
}

#[test]
fn schedules_match_hf_formulas() {
    let c = TrainConfig { lr: 1.0, warmup_ratio: 0.1, ..Default::default() };
    // HF get_linear_schedule_with_warmup(warmup=10, total=100).
    assert_eq!(c.warmup(100), 10);
    assert_eq!(c.lr_at(0, 100), 0.0);
    assert!((c.lr_at(5, 100) - 0.5).abs() < 1e-12);
    assert!((c.lr_at(10, 100) - 1.0).abs() < 1e-12);
    assert!((c.lr_at(55, 100) - 0.5).abs() < 1e-12);
    let cos = TrainConfig { schedule: Schedule::Cosine, ..c.clone() };
    assert!((cos.lr_at(55, 100) - 0.5).abs() < 1e-12);
    assert!((cos.lr_at(10 + 90 / 3, 100) - 0.75).abs() < 1e-12); // 0.5 (1 + cos(pi/3))
    assert!((cos.lr_at(99, 100) - 0.5 * (1.0 + (std::f64::consts::PI * 89.0 / 90.0).cos())).abs() < 1e-12);
    let k = TrainConfig { schedule: Schedule::Constant, warmup_ratio: 0.0, ..c };
    assert_eq!(k.lr_at(0, 100), 1.0);
    assert_eq!(k.lr_at(99, 100), 1.0);
    assert_eq!(TrainConfig { batch_size: 4, grad_accum: 2, epochs: 3, ..Default::default() }.total_steps(17), 9);
}

/// Gradient accumulation over micro-batches equals one large batch (loss normalised over all
/// target tokens of the optimizer step); clipping and AdamW then give the same update.
#[test]
fn accumulation_equals_one_large_batch() {
    let m = tiny("qwen2");
    let data = copy_examples(4, 5, 4);
    let run = |bs: usize, acc: usize| {
        let a = LoraAdapter::new(&m, &LoraConfig::qv(4, 8.0).with_seed(2)).unwrap();
        randomize_b(&a, 3, 0.1);
        let cfg = TrainConfig { lr: 1e-2, batch_size: bs, grad_accum: acc, max_steps: Some(2), shuffle: false, max_grad_norm: Some(0.05), ..Default::default() };
        let log = train_lora(&m, &a, &data, &cfg, |_, _| Ok(())).unwrap();
        (log, a.modules().map(|(_, x)| flat(x.b.as_tensor())).collect::<Vec<_>>())
    };
    let (l1, w1) = run(4, 1);
    let (l2, w2) = run(1, 4);
    for (x, y) in l1.iter().zip(&l2) {
        assert!((x.loss - y.loss).abs() < 1e-5 * x.loss, "loss {} vs {}", x.loss, y.loss);
        assert!((x.grad_norm - y.grad_norm).abs() < 1e-4 * x.grad_norm, "grad norm {} vs {}", x.grad_norm, y.grad_norm);
        assert_eq!((x.tokens, x.examples), (y.tokens, y.examples));
    }
    assert!(l1[0].grad_norm > 0.05, "clipping is exercised");
    for (x, y) in w1.iter().zip(&w2) {
        let d = x.iter().zip(y).fold(0f32, |a, (p, q)| a.max((p - q).abs()));
        assert!(d < 1e-5, "B after two steps differs by {d}");
    }
}

#[test]
fn dropout_only_in_training_mode_and_seeded() {
    let m = tiny("qwen2");
    let ps = prompts(&reference("qv"));
    let a = LoraAdapter::new(&m, &LoraConfig::all_linear(4, 8.0).with_dropout(0.5)).unwrap();
    randomize_b(&a, 1, 0.3);
    let no_drop = LoraAdapter::new(&m, &LoraConfig::all_linear(4, 8.0)).unwrap();
    for ((_, x), (_, y)) in a.modules().zip(no_drop.modules()) {
        y.b.set(x.b.as_tensor()).unwrap();
    }
    let logits = |h: &Hooks| flat(&m.forward(&ps, h).unwrap().logits.unwrap());
    let inference = logits(&Hooks::new().lora(&a));
    assert_eq!(inference, logits(&Hooks::new().lora(&no_drop)), "no dropout at inference");
    let t1 = logits(&Hooks::new().lora_train(&a, 1));
    assert_eq!(t1, logits(&Hooks::new().lora_train(&a, 1)), "same seed, same masks");
    assert_ne!(t1, logits(&Hooks::new().lora_train(&a, 2)), "another seed, other masks");
    assert_ne!(t1, inference);
    assert_eq!(logits(&Hooks::new().lora_train(&no_drop, 1)), inference, "p = 0: training mode = inference");
}

#[test]
fn snapshot_is_independent_and_trainer_checks_its_adapter() {
    let m = tiny("qwen2");
    let a = LoraAdapter::new(&m, &LoraConfig::qv(4, 8.0)).unwrap();
    let snap = a.snapshot().unwrap();
    let data = copy_examples(4, 5, 5);
    train_lora(&m, &a, &data, &TrainConfig { lr: 1e-2, max_steps: Some(1), ..Default::default() }, |_, _| Ok(())).unwrap();
    let changed = a.modules().zip(snap.modules()).any(|((_, x), (_, y))| flat(x.b.as_tensor()) != flat(y.b.as_tensor()));
    assert!(changed, "training moved B");
    assert!(snap.modules().all(|(_, x)| flat(x.b.as_tensor()).iter().all(|v| *v == 0.0)), "the snapshot stayed at B = 0");
    let mut t = LoraTrainer::new(&a, TrainConfig::default(), 10).unwrap();
    let refs: Vec<&TrainExample> = data.iter().collect();
    let e = err_of(t.step(&m, &snap, &refs));
    assert!(e.contains("another adapter"), "{e}");
    let e = err_of(train_lora(&m, &a, &data, &TrainConfig { max_steps: Some(3), ..Default::default() }, |info, _| {
        anyhow::ensure!(info.step < 2, "stop here");
        Ok(())
    }));
    assert!(e.contains("on_step callback at step 2") && e.contains("stop here"), "{e}");
    let e = err_of(TrainExample::new(vec![1, 2, 3], vec![0, 1]));
    assert!(e.contains("target token 0"), "{e}");
    let _ = Var::zeros(1, DType::F32, &Device::Cpu).unwrap();
}

/// Hooks in the training passes (steering while training): they shape the loss and the
/// gradient, and the hook function sees the example indices of each micro-batch.
#[test]
fn training_with_hooks_sees_its_examples() {
    let m = tiny("qwen2");
    let data = copy_examples(6, 5, 8);
    let cfg = TrainConfig { lr: 1e-2, batch_size: 2, grad_accum: 2, epochs: 2, seed: 4, ..Default::default() };
    let seen = std::cell::RefCell::new(vec![]);
    let plain = LoraAdapter::new(&m, &LoraConfig::qv(4, 8.0)).unwrap();
    let steered = LoraAdapter::new(&m, &LoraConfig::qv(4, 8.0)).unwrap();
    let log0 = train_lora(&m, &plain, &data, &cfg, |_, _| Ok(())).unwrap();
    let push = Tensor::full(3f32, (1, 1, 64), &Device::Cpu).unwrap();
    let log1 = train_lora_with(
        &m,
        &steered,
        &data,
        &cfg,
        |rows| {
            seen.borrow_mut().push(rows.to_vec());
            let p = push.clone();
            Ok(Hooks::new().write(HookPoint::resid_pre(1), Phase::Both, move |x, _| Ok(x.broadcast_add(&p)?)))
        },
        |_, _| Ok(()),
    )
    .unwrap();
    assert_eq!(log0.len(), 4);
    assert_eq!(log1.len(), 4);
    // Same shuffling: the same examples per step; the steering changes the loss.
    for (a, b) in log0.iter().zip(&log1) {
        assert_eq!((a.tokens, a.examples), (b.tokens, b.examples));
        assert!((a.loss - b.loss).abs() > 1e-3, "steering during training changes the loss");
    }
    // Micro-batches of <= 2 rows; each epoch covers every example exactly once.
    let seen = seen.into_inner();
    assert_eq!(seen.len(), 6, "2 epochs x 3 micro-batches");
    for epoch in seen.chunks(3) {
        let mut all: Vec<usize> = epoch.iter().flatten().copied().collect();
        assert!(epoch.iter().all(|r| r.len() == 2));
        all.sort();
        assert_eq!(all, (0..6).collect::<Vec<_>>());
    }
    // A hook function error stops training with context.
    let e = err_of(train_lora_with(&m, &plain, &data, &cfg, |_| anyhow::bail!("no hooks today"), |_, _| Ok(())));
    assert!(e.contains("training step 1") && e.contains("no hooks today"), "{e}");
}

/// The loss mask of a chat: the assistant content and its end-of-turn token, nothing else.
#[test]
fn chat_examples_target_assistant_tokens() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/chat/qwen3");
    let tok = Tokenizer::from_hf_dir(&dir).unwrap();
    let ex = TrainExample::qa(&tok, Some("Answer in capitals."), "What is 2+3?", "TWO PLUS THREE IS FIVE.").unwrap();
    let text = tok.decode(&ex.targets.iter().map(|&i| ex.ids[i]).collect::<Vec<_>>(), false).unwrap();
    assert!(text.ends_with("TWO PLUS THREE IS FIVE.<|im_end|>"), "{text:?}");
    assert!(!text.contains("What is"), "{text:?}");
    assert!(ex.targets.windows(2).all(|w| w[1] == w[0] + 1), "one contiguous span");
    // Two assistant turns: both are targets; the user turns are not.
    let chat = interp_kit::text::chat::Chat::new().user("a?").assistant("ALPHA").user("b?").assistant("BETA");
    let ex = TrainExample::from_chat(&tok, &chat).unwrap();
    let text = tok.decode(&ex.targets.iter().map(|&i| ex.ids[i]).collect::<Vec<_>>(), false).unwrap();
    assert!(text.contains("ALPHA<|im_end|>") && text.ends_with("BETA<|im_end|>") && !text.contains("b?"), "{text:?}");
    let e = err_of(TrainExample::from_chat(&tok, &interp_kit::text::chat::Chat::new().user("hi")));
    assert!(e.contains("no assistant tokens"), "{e}");
}

/// On the embedded GGUF (quantized inference path): B = 0 is the base bit for bit, the adapter
/// acts on quantized matmuls, and merging leaves the base untouched. Skipped without the model.
#[test]
fn quantized_path_on_the_embedded_model() {
    let Some(mut m) = common::embedded() else { return };
    let p = vec![(0..12u32).map(|i| 1000 + i * 37).collect::<Vec<u32>>()];
    let a = LoraAdapter::new(&m, &LoraConfig::qv(4, 8.0).with_layers([0, 12, 23])).unwrap();
    let base = flat(&m.forward(&p, &Hooks::new()).unwrap().logits.unwrap());
    assert_eq!(base, flat(&m.forward(&p, &Hooks::new().lora(&a)).unwrap().logits.unwrap()));
    randomize_b(&a, 1, 0.05);
    let q = m.forward(&p, &Hooks::new().lora(&a)).unwrap().logits.unwrap();
    assert!(rel_err(&q, &Tensor::from_vec(base.clone(), q.dims(), &Device::Cpu).unwrap()) > 1e-3, "the adapter acts");
    let merged = lora::merge(&m, &a).unwrap();
    assert_eq!(base, flat(&m.forward(&p, &Hooks::new()).unwrap().logits.unwrap()), "base unchanged by merge");
    // Exact (dense) inference: merged == unmerged.
    m.quantized_inference = false;
    let mut merged = merged;
    merged.quantized_inference = false;
    let u = m.forward(&p, &Hooks::new().lora(&a)).unwrap().logits.unwrap();
    let e = rel_err(&merged.forward(&p, &Hooks::new()).unwrap().logits.unwrap(), &u);
    assert!(e < 1e-4, "merged vs unmerged (dense): {e:.2e}");
    // On quantized matmuls the adapter adds what it adds on dense ones: the adapter's effect on the
    // logits agrees up to the quantization error the base model has anyway.
    let ub = m.forward(&p, &Hooks::new()).unwrap().logits.unwrap();
    let qb = Tensor::from_vec(base, q.dims(), &Device::Cpu).unwrap();
    let quant_err = rel_err(&qb, &ub);
    let effect = rel_err(&(&q - &qb).unwrap(), &(&u - &ub).unwrap());
    assert!(effect < 0.2, "adapter effect quantized vs dense: rel err {effect:.2e} (base quantization error {quant_err:.2e})");
}
