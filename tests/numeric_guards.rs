//! NaN and infinity are stopped where they enter, with an error naming the value (issue 23 §3):
//! a direction with a NaN entry (from a tensor, from a file, into a control vector, into a
//! steering intervention), a steering strength whose α·v overflows the model's dtype or whose
//! steered residual is not finite, and a NaN loss in LoRA training (the error names the step and
//! the batch, and the adapter keeps its last finite weights).
mod common;

use candle_core::{DType, Device, Tensor};
use common::{fixture_dir, tiny};
use interp_kit::hooks::{HookPoint, Hooks, Phase};
use interp_kit::interp::directions::{mean_diff, ControlVector, Direction};
use interp_kit::interp::steer::Intervention;
use interp_kit::lora::{train_lora_with, LoraAdapter, LoraConfig, TrainConfig};
use interp_kit::grad::TrainExample;
use interp_kit::model::Model;

fn err<T>(r: anyhow::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

/// A direction at block 1 of the tiny model (width 64) with `v[i] = x`.
fn dir_with(i: usize, x: f32) -> Direction {
    let mut v = vec![0.1f32; 64];
    v[i] = x;
    Direction::new(v).at(HookPoint::resid_post(1))
}

#[test]
fn a_nan_direction_is_refused_where_it_enters() {
    let t = Tensor::new(&[1f32, f32::NAN, 3.0], &Device::Cpu).unwrap();
    let e = err(Direction::from_tensor(&t));
    assert!(e.contains("[1] = NaN"), "{e}");

    // saved by hand (save does not judge), refused on loading with the file named
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.safetensors");
    dir_with(5, f32::INFINITY).save(&p).unwrap();
    let e = err(Direction::load(&p));
    assert!(e.contains("[5] = inf") && e.contains("bad.safetensors"), "{e}");

    let mut cv = ControlVector::new("tiny");
    let e = err(cv.insert(2, dir_with(7, f32::NAN)));
    assert!(e.contains("layer 2") && e.contains("[7] = NaN"), "{e}");
    assert!(cv.is_empty());

    // activations with a NaN row never become a direction
    let pos = Tensor::new(&[[1f32, 2.0], [f32::NAN, 0.0]], &Device::Cpu).unwrap();
    let neg = Tensor::new(&[[0f32, 1.0], [1.0, 1.0]], &Device::Cpu).unwrap();
    let e = err(mean_diff(&pos, &neg));
    assert!(e.contains("row 1") && e.contains("NaN"), "{e}");

    // a hand-made vector reaches the steering check
    let m = tiny("qwen2");
    let e = err(Intervention::add(&dir_with(3, f32::NAN), 1.0).hooks(&m));
    assert!(e.contains("[3] = NaN") && e.contains("add"), "{e}");
}

#[test]
fn a_steering_strength_that_overflows_is_named() {
    let m = tiny("qwen2");
    let d = dir_with(0, 2.0); // max |v| = 2
    // alpha * v beyond f32: 1e38 * 2 = 2e38 fits, 2e38 * 2 = 4e38 does not
    assert!(Intervention::add(&d, 1e38).hooks(&m).is_ok());
    let e = err(Intervention::add(&d, 2e38).hooks(&m));
    assert!(e.contains("4e38") && e.contains("F32"), "{e}");
    // a non-finite alpha
    let e = err(Intervention::add(&d, f64::INFINITY).hooks(&m));
    assert!(e.contains("inf"), "{e}");

    // The same alpha is far too large for f16 (largest value 65504): refused at once.
    let m16 = Model::from_hf_dir(&fixture_dir("qwen2"), &Device::Cpu, DType::F16).unwrap();
    let e = err(Intervention::add(&d, 4e4).hooks(&m16));
    assert!(e.contains("8e4") && e.contains("F16") && e.contains("6.5504e4"), "{e}");
    assert!(Intervention::add(&d, 1e3).hooks(&m16).is_ok());

    // Ablation multiplies by alpha in the model's dtype: beyond it, refused at once.
    let e = err(Intervention::ablate(&d, 1e300).hooks(&m));
    assert!(e.contains("ablate") && e.contains("1e300") && e.contains("F32"), "{e}");

    // alpha * v fits f32 but the steered residual does not: an earlier write at the same point
    // sets every entry to 1e38, and adding 3e38 * 1.0 at entry 0 gives 4e38 = inf.
    let ids = vec![vec![1u32, 5, 9, 3]];
    let big = Hooks::new().write(HookPoint::resid_post(1), Phase::Both, |x, _| Ok((x.ones_like()? * 1e38)?));
    let steer = Intervention::add(&dir_with(0, 1.0), 3e38).hooks(&m).unwrap();
    let e = err(m.forward(&ids, &big.extend(steer)));
    assert!(e.contains("add") && e.contains("steered residual is NaN or infinite") && e.contains("3e38"), "{e}");
    // ... while a sane alpha leaves finite logits
    let out = m.forward(&ids, &Intervention::add(&d, 4.0).hooks(&m).unwrap()).unwrap();
    let l: Vec<f32> = out.logits.unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert!(l.iter().all(|x| x.is_finite()));

    // A residual that was already broken upstream is not blamed on the steering.
    let upstream = Hooks::new().write(HookPoint::resid_post(0), Phase::Both, |x, _| Ok((x * f64::NAN)?));
    let steer = Intervention::add(&d, 1.0).hooks(&m).unwrap();
    let e = err(m.forward(&ids, &upstream.extend(steer)));
    assert!(e.contains("already NaN or infinite before the steering"), "{e}");
}

/// A NaN loss at step 2 (example 1's forward pass is made NaN by a hook): training stops with the
/// step and the batch named, and the adapter keeps the weights of step 1.
#[test]
fn a_nan_loss_stops_lora_training_naming_step_and_batch() {
    let m = tiny("qwen2");
    let adapter = LoraAdapter::new(&m, &LoraConfig::qv(2, 4.0).with_seed(1)).unwrap();
    let examples: Vec<TrainExample> = (0..3u32).map(|k| TrainExample::new(vec![1 + k, 7, 11 + k, 4, 20 + k], vec![2, 3, 4]).unwrap()).collect();
    let cfg = TrainConfig { lr: 1e-2, batch_size: 1, shuffle: false, max_steps: Some(3), callback_every: 1, ..Default::default() };
    let weights = |a: &LoraAdapter| -> Vec<Vec<f32>> { a.vars().iter().map(|v| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()).collect() };
    let mut after_step1 = None;
    let r = train_lora_with(
        &m,
        &adapter,
        &examples,
        &cfg,
        |idx| {
            Ok(if idx.contains(&1) {
                Hooks::new().write(HookPoint::resid_post(0), Phase::Both, |x, _| Ok((x * f64::NAN)?))
            } else {
                Hooks::new()
            })
        },
        |info, a| {
            if info.step == 1 {
                after_step1 = Some(weights(a));
            }
            Ok(())
        },
    );
    let e = err(r);
    assert!(e.contains("training step 2") && e.contains("batch of examples [1]") && e.contains("loss is NaN"), "{e}");
    let w1 = after_step1.expect("step 1 ran");
    assert_eq!(weights(&adapter), w1, "the NaN step changed the adapter");
    assert!(w1.iter().flatten().all(|x| x.is_finite()));
}
