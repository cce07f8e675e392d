//! Trait vectors by three extraction methods, side by side per layer, from the activations of
//! positive (trait shown) and negative (trait absent) responses:
//!
//! * `mean_diff`: `mean(pos) - mean(neg)`, scaled to unit norm ([`crate::interp::directions::mean_diff`]);
//! * `probe`: the L2-regularised logistic probe ([`crate::interp::directions::probe`]) fitted on
//!   row-normalised activations (each row divided by its L2 norm, so that the probe sees
//!   directions rather than the residual's scale); its unit weight vector;
//! * `gradient`: a direction found by Adam from a seeded random start, maximising the mean
//!   projection gap `mean_pos(x·u) - mean_neg(x·u)` of row-normalised activations on
//!   `u = v/|v|` minus the norm penalty `λ (|v| - 1)²` (which keeps `|v|` near 1 so the step
//!   size in `u` stays meaningful). It needs activations only, no model backward. Because the
//!   gap is linear in `u`, its gradient is computed from the two class means.
//!
//! All three are returned as unit [`Direction`]s with `method` set, oriented so that positive
//! activations project higher than negative ones.
//!
//! ```
//! use interp_kit::interp::extract::{extract, ExtractConfig, Method};
//! use candle_core::{Device, Tensor};
//! let pos = Tensor::new(&[[2f32, 0.1], [1.8, -0.2], [2.2, 0.0]], &Device::Cpu)?;
//! let neg = Tensor::new(&[[-2f32, 0.0], [-1.9, 0.1], [-2.1, -0.1]], &Device::Cpu)?;
//! for m in Method::ALL {
//!     let d = extract(m, &pos, &neg, &ExtractConfig::default())?;
//!     assert!(d.vector[0] > 0.9, "{m}");
//! }
//! # anyhow::Ok(())
//! ```

use crate::interp::directions::{mean_diff, probe, Direction, ProbeConfig};
use crate::hooks::HookPoint;
use crate::base::rng::Rng;
use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use polars::prelude::{Column, DataFrame};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// An extraction method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    MeanDiff,
    Probe,
    Gradient,
}

impl Method {
    pub const ALL: [Method; 3] = [Method::MeanDiff, Method::Probe, Method::Gradient];
    pub fn name(self) -> &'static str {
        match self {
            Method::MeanDiff => "mean_diff",
            Method::Probe => "probe",
            Method::Gradient => "gradient",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Method {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "mean_diff" => Ok(Method::MeanDiff),
            "probe" => Ok(Method::Probe),
            "gradient" => Ok(Method::Gradient),
            other => bail!("unknown extraction method {other:?}: expected mean_diff, probe or gradient"),
        }
    }
}

/// Settings of the gradient method.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GradientConfig {
    /// Adam steps (fixed; no early stop, so results do not depend on a tolerance).
    pub steps: usize,
    /// Adam learning rate.
    pub lr: f64,
    /// Weight `λ` of the norm penalty `λ (|v| - 1)²`.
    pub norm_penalty: f64,
    /// Seed of the Gaussian start.
    pub seed: u64,
}

impl Default for GradientConfig {
    /// 300 steps, lr 0.02, λ = 1, seed 0.
    fn default() -> Self {
        GradientConfig { steps: 300, lr: 0.02, norm_penalty: 1.0, seed: 0 }
    }
}

/// Settings of all three methods.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ExtractConfig {
    pub probe: ProbeConfig,
    pub gradient: GradientConfig,
}

fn row_normalised(t: &Tensor, what: &str) -> Result<Tensor> {
    let t = t.to_dtype(DType::F64)?.to_device(&Device::Cpu)?;
    let (n, d) = t.dims2().with_context(|| format!("{what}: expected [N, D] activations, got {:?}", t.dims()))?;
    ensure!(n > 0 && d > 0, "{what}: empty activation matrix {:?}", t.dims());
    let norms = t.sqr()?.sum_keepdim(1)?.sqrt()?;
    let v: Vec<f64> = norms.flatten_all()?.to_vec1()?;
    if let Some(i) = v.iter().position(|x| !(x.is_finite() && *x > 0.0)) {
        bail!("{what}: row {i} has norm {} and cannot be normalised", v[i]);
    }
    Ok(t.broadcast_div(&norms)?)
}

fn col_means(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.mean(0)?.to_vec1()?)
}

fn unit(v: &[f64]) -> Vec<f64> {
    let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    v.iter().map(|x| x / n).collect()
}

fn to_dir(v: &[f64], method: Method) -> Direction {
    let mut d = Direction::new(v.iter().map(|x| *x as f32).collect());
    d.meta.method = method.name().into();
    d
}

/// The gradient method on `[N, D]` positive and `[M, D]` negative activations.
pub fn gradient_direction(pos: &Tensor, neg: &Tensor, cfg: &GradientConfig) -> Result<Direction> {
    ensure!(cfg.steps > 0 && cfg.lr > 0.0 && cfg.norm_penalty >= 0.0, "gradient method: steps and lr must be > 0, norm_penalty >= 0 ({cfg:?})");
    let (p, n) = (row_normalised(pos, "gradient (positive)")?, row_normalised(neg, "gradient (negative)")?);
    ensure!(p.dim(1)? == n.dim(1)?, "gradient method: positive activations have width {}, negative ones {}", p.dim(1)?, n.dim(1)?);
    let m: Vec<f64> = col_means(&p)?.iter().zip(col_means(&n)?).map(|(a, b)| a - b).collect();
    let d = m.len();
    let mut rng = Rng::new(cfg.seed);
    let mut v: Vec<f64> = unit(&(0..d).map(|_| rng.normal()).collect::<Vec<_>>());
    let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8);
    let (mut m1, mut m2) = (vec![0.0; d], vec![0.0; d]);
    for t in 1..=cfg.steps {
        let nv = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        let u: Vec<f64> = v.iter().map(|x| x / nv).collect();
        let gap = m.iter().zip(&u).map(|(a, b)| a * b).sum::<f64>();
        // Gradient of the objective (ascent): (m - gap u)/|v| - 2 λ (|v| - 1) u.
        let g: Vec<f64> =
            (0..d).map(|j| (m[j] - gap * u[j]) / nv - 2.0 * cfg.norm_penalty * (nv - 1.0) * u[j]).collect();
        for j in 0..d {
            m1[j] = b1 * m1[j] + (1.0 - b1) * g[j];
            m2[j] = b2 * m2[j] + (1.0 - b2) * g[j] * g[j];
            let mh = m1[j] / (1.0 - b1.powi(t as i32));
            let vh = m2[j] / (1.0 - b2.powi(t as i32));
            v[j] += cfg.lr * mh / (vh.sqrt() + eps);
        }
    }
    let u = unit(&v);
    let gap = m.iter().zip(&u).map(|(a, b)| a * b).sum::<f64>();
    let mut dir = to_dir(&u, Method::Gradient);
    dir = dir.with_extra("steps", cfg.steps).with_extra("seed", cfg.seed).with_extra("gap", format!("{gap:.6}"));
    Ok(dir)
}

/// One method's unit direction from `[N, D]` positive and `[M, D]` negative activations.
pub fn extract(method: Method, pos: &Tensor, neg: &Tensor, cfg: &ExtractConfig) -> Result<Direction> {
    let dir = match method {
        Method::MeanDiff => {
            let d = mean_diff(pos, neg)?;
            ensure!(d.norm() > 0.0, "mean_diff: the two classes have the same mean");
            d.normalized()?
        }
        Method::Probe => {
            let (p, n) = (row_normalised(pos, "probe (positive)")?, row_normalised(neg, "probe (negative)")?);
            probe(&p, &n, &cfg.probe)?.direction
        }
        Method::Gradient => gradient_direction(pos, neg, &cfg.gradient)?,
    };
    Ok(dir)
}

/// Every method at every layer: `pos[layer]` and `neg[layer]` are `[N, D]` / `[M, D]`
/// activations at that layer (e.g. response-averaged, see [`crate::interp::readout`]); each direction's
/// metadata names its hook point `at(layer)`.
pub fn extract_layers(
    pos: &BTreeMap<usize, Tensor>,
    neg: &BTreeMap<usize, Tensor>,
    methods: &[Method],
    at: impl Fn(usize) -> HookPoint,
    cfg: &ExtractConfig,
) -> Result<BTreeMap<(usize, Method), Direction>> {
    ensure!(!methods.is_empty(), "no extraction method given");
    let mut out = BTreeMap::new();
    for (&layer, p) in pos {
        let n = neg.get(&layer).with_context(|| format!("layer {layer}: positive activations but no negative ones"))?;
        for &m in methods {
            let d = extract(m, p, n, cfg).with_context(|| format!("layer {layer}, method {m}"))?;
            out.insert((layer, m), d.at(at(layer)));
        }
    }
    for layer in neg.keys() {
        ensure!(pos.contains_key(layer), "layer {layer}: negative activations but no positive ones");
    }
    Ok(out)
}

/// Pairwise cosines of the methods at each layer: columns `layer`, `method_a`, `method_b`, `cosine`.
pub fn method_cosines(dirs: &BTreeMap<(usize, Method), Direction>) -> Result<DataFrame> {
    let (mut layer, mut ma, mut mb, mut cos) = (vec![], vec![], vec![], vec![]);
    for ((l, a), da) in dirs {
        for ((l2, b), db) in dirs.range((*l, *a)..) {
            if l2 != l || b == a {
                continue;
            }
            layer.push(*l as i64);
            ma.push(a.name().to_string());
            mb.push(b.name().to_string());
            cos.push(da.cosine(db)? as f64);
        }
    }
    Ok(DataFrame::new_infer_height(vec![
        Column::new("layer".into(), layer),
        Column::new("method_a".into(), ma),
        Column::new("method_b".into(), mb),
        Column::new("cosine".into(), cos),
    ])?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` rows per class: `offset + noise + label · a · planted` with Gaussian noise (σ = 1),
    /// label 1 for positives and 0 for negatives, and a shared offset so that rows have a
    /// common component (as residual streams do).
    fn planted(d: usize, n: usize, a: f64, seed: u64) -> (Tensor, Tensor, Vec<f64>) {
        let mut r = Rng::new(seed);
        let planted = unit(&(0..d).map(|_| r.normal()).collect::<Vec<_>>());
        let offset: Vec<f64> = (0..d).map(|_| 2.0 * r.normal()).collect();
        let mut make = |label: f64| {
            let v: Vec<f32> = (0..n)
                .flat_map(|_| (0..d).map(|j| (offset[j] + r.normal() + label * a * planted[j]) as f32).collect::<Vec<_>>())
                .collect();
            Tensor::from_vec(v, (n, d), &Device::Cpu).unwrap()
        };
        let pos = make(1.0);
        let neg = make(0.0);
        (pos, neg, planted)
    }

    fn cos(a: &[f32], b: &[f64]) -> f64 {
        let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * y).sum();
        let na = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        dot / na / b.iter().map(|y| y * y).sum::<f64>().sqrt()
    }

    #[test]
    fn every_method_recovers_a_planted_direction() {
        let (pos, neg, want) = planted(64, 200, 3.0, 11);
        let cfg = ExtractConfig::default();
        let mut got = vec![];
        for m in Method::ALL {
            let d = extract(m, &pos, &neg, &cfg).unwrap();
            assert_eq!(d.meta.method, m.name());
            assert!((d.norm() - 1.0).abs() < 1e-5, "{m}: norm {}", d.norm());
            let c = cos(&d.vector, &want);
            got.push((m, c));
            assert!(c > 0.9, "{m}: cosine {c}");
        }
        println!("planted-direction cosines: {got:?}");
    }

    #[test]
    fn gradient_converges_to_the_normalised_mean_difference() {
        // The objective's maximiser over unit u is the unit mean difference of row-normalised
        // rows, so Adam must land there (independently of the seed).
        let (pos, neg, _) = planted(32, 50, 1.0, 5);
        let p = row_normalised(&pos, "p").unwrap();
        let n = row_normalised(&neg, "n").unwrap();
        let m: Vec<f64> = col_means(&p).unwrap().iter().zip(col_means(&n).unwrap()).map(|(a, b)| a - b).collect();
        for seed in [0, 1, 2] {
            let cfg = GradientConfig { seed, steps: 2000, ..Default::default() };
            let d = gradient_direction(&pos, &neg, &cfg).unwrap();
            let c = cos(&d.vector, &m);
            assert!(c > 0.999, "seed {seed}: cosine to the closed form {c}");
        }
    }

    #[test]
    fn layers_table_and_errors() {
        let (p, n, _) = planted(16, 40, 3.0, 3);
        let pos: BTreeMap<usize, Tensor> = [(2, p.clone()), (4, p)].into();
        let neg: BTreeMap<usize, Tensor> = [(2, n.clone()), (4, n)].into();
        let dirs = extract_layers(&pos, &neg, &Method::ALL, HookPoint::resid_post, &ExtractConfig::default()).unwrap();
        assert_eq!(dirs.len(), 6);
        assert_eq!(dirs[&(4, Method::Probe)].meta.hook, Some(HookPoint::resid_post(4)));
        let t = method_cosines(&dirs).unwrap();
        assert_eq!(t.height(), 6); // 3 pairs × 2 layers
        let c = t.column("cosine").unwrap().f64().unwrap();
        assert!(c.into_no_null_iter().all(|x| x > 0.8), "{t}");
        let short: BTreeMap<usize, Tensor> = [(2, Tensor::zeros((3, 16), DType::F32, &Device::Cpu).unwrap())].into();
        let e = extract_layers(&pos, &short, &Method::ALL, HookPoint::resid_post, &ExtractConfig::default()).unwrap_err();
        assert!(format!("{e:#}").contains("layer 2"), "{e:#}");
        assert!("pca".parse::<Method>().unwrap_err().to_string().contains("mean_diff"));
        let wide = Tensor::zeros((3, 8), DType::F32, &Device::Cpu).unwrap();
        assert!(extract(Method::Gradient, &pos[&2], &wide, &ExtractConfig::default()).is_err());
    }
}
