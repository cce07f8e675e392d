//! Statistics for studies: summaries, bootstrap confidence intervals (plain, paired, two-sample),
//! effect sizes (Cohen's d, d_z), correlations with p-values (Pearson, Spearman) and Pareto
//! frontiers. Distributions and order statistics come from `statrs`; resampling uses the kit's
//! fixed-stream [`Rng`](crate::base::rng::Rng), so a seed gives the same interval on every machine.
//!
//! Every function takes plain `&[f64]` and returns an error (never a panic) for inputs it cannot
//! use: too few values, NaN, mismatched lengths, zero variance.
//!
//! ```
//! use interp_kit::eval::stats::{bootstrap_mean_ci, cohens_d, pearson, Bootstrap};
//! let a = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0];
//! let ci = bootstrap_mean_ci(&a, &Bootstrap::default())?; // 95 %, 10 000 resamples, seed 0
//! assert!(ci.lo <= ci.estimate && ci.estimate <= ci.hi);
//! let d = cohens_d(&[2.0, 3.0, 4.0], &[1.0, 2.0, 3.0])?;
//! assert!((d - 1.0).abs() < 1e-12);
//! let c = pearson(&[1.0, 2.0, 3.0, 4.0], &[2.0, 4.1, 5.9, 8.2])?;
//! assert!(c.r > 0.99 && c.p < 0.01);
//! # anyhow::Ok(())
//! ```
use crate::base::rng::Rng;
use anyhow::{bail, ensure, Result};
use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, StudentsT};
use statrs::statistics::{Data, OrderStatistics, RankTieBreaker};

fn check_finite(xs: &[f64], what: &str) -> Result<()> {
    if let Some(i) = xs.iter().position(|x| !x.is_finite()) {
        bail!("{what}: value {i} is {} (NaN or infinite values are not allowed)", xs[i]);
    }
    Ok(())
}

fn check_len(xs: &[f64], min: usize, what: &str) -> Result<()> {
    ensure!(xs.len() >= min, "{what}: needs at least {min} values, got {}", xs.len());
    check_finite(xs, what)
}

fn check_pair(a: &[f64], b: &[f64], min: usize, what: &str) -> Result<()> {
    ensure!(a.len() == b.len(), "{what}: paired samples have different lengths ({} vs {})", a.len(), b.len());
    check_len(a, min, what)?;
    check_len(b, min, what)
}

fn mean_unchecked(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// Sample variance (denominator `n - 1`).
fn var_unchecked(xs: &[f64]) -> f64 {
    let m = mean_unchecked(xs);
    xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (xs.len() as f64 - 1.0)
}

/// Arithmetic mean; an error for an empty slice or non-finite values.
pub fn mean(xs: &[f64]) -> Result<f64> {
    check_len(xs, 1, "mean")?;
    Ok(mean_unchecked(xs))
}

/// Sample standard deviation (denominator `n - 1`, as numpy's `std(ddof=1)`); needs 2 values.
pub fn sd(xs: &[f64]) -> Result<f64> {
    check_len(xs, 2, "sd")?;
    Ok(var_unchecked(xs).sqrt())
}

/// Standard error of the mean, `sd / sqrt(n)`; needs 2 values.
pub fn sem(xs: &[f64]) -> Result<f64> {
    Ok(sd(xs)? / (xs.len() as f64).sqrt())
}

/// `n`, mean, sample SD and SEM of a sample (SD and SEM are NaN for a single value).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub n: usize,
    pub mean: f64,
    pub sd: f64,
    pub sem: f64,
}

/// [`Summary`] of `xs`; an error for an empty slice or non-finite values.
pub fn summary(xs: &[f64]) -> Result<Summary> {
    check_len(xs, 1, "summary")?;
    let n = xs.len();
    let (sd, sem) = if n >= 2 {
        let s = var_unchecked(xs).sqrt();
        (s, s / (n as f64).sqrt())
    } else {
        (f64::NAN, f64::NAN)
    };
    Ok(Summary { n, mean: mean_unchecked(xs), sd, sem })
}

/// Settings of a percentile bootstrap.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bootstrap {
    /// Number of resamples.
    pub n_boot: usize,
    /// Confidence level in (0, 1), e.g. 0.95.
    pub level: f64,
    /// Seed of the resampling stream.
    pub seed: u64,
}

impl Default for Bootstrap {
    /// 10 000 resamples, 95 %, seed 0.
    fn default() -> Self {
        Bootstrap { n_boot: 10_000, level: 0.95, seed: 0 }
    }
}

impl Bootstrap {
    pub fn new(n_boot: usize, level: f64, seed: u64) -> Self {
        Bootstrap { n_boot, level, seed }
    }
    fn check(&self) -> Result<()> {
        ensure!(self.n_boot >= 1, "bootstrap: n_boot must be at least 1");
        ensure!(self.level > 0.0 && self.level < 1.0, "bootstrap: level must be in (0, 1), got {}", self.level);
        Ok(())
    }
}

/// A point estimate with a two-sided confidence interval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ci {
    /// The statistic on the original sample.
    pub estimate: f64,
    pub lo: f64,
    pub hi: f64,
    pub level: f64,
    /// Sample size (pairs for a paired interval; the first sample's size for two samples).
    pub n: usize,
    pub n_boot: usize,
}

/// Percentile interval of bootstrap replicates: statrs' quantiles (R type 8, numpy's
/// `method="median_unbiased"`) at `(1 - level) / 2` and `(1 + level) / 2`.
fn percentile_ci(estimate: f64, reps: Vec<f64>, cfg: &Bootstrap, n: usize) -> Ci {
    let mut data = Data::new(reps);
    let a = (1.0 - cfg.level) / 2.0;
    Ci { estimate, lo: data.quantile(a), hi: data.quantile(1.0 - a), level: cfg.level, n, n_boot: cfg.n_boot }
}

/// Percentile-bootstrap CI of any statistic of one sample. Resample `b` draws indices
/// `rng.below(n)` `n` times from one [`Rng`] seeded with `cfg.seed`, in order.
pub fn bootstrap_ci_with(xs: &[f64], cfg: &Bootstrap, stat: impl Fn(&[f64]) -> f64) -> Result<Ci> {
    cfg.check()?;
    check_len(xs, 1, "bootstrap")?;
    let n = xs.len();
    let mut rng = Rng::new(cfg.seed);
    let mut buf = vec![0.0; n];
    let reps = (0..cfg.n_boot)
        .map(|_| {
            for b in buf.iter_mut() {
                *b = xs[rng.below(n)];
            }
            stat(&buf)
        })
        .collect();
    Ok(percentile_ci(stat(xs), reps, cfg, n))
}

/// Percentile-bootstrap CI of the mean of one sample.
pub fn bootstrap_mean_ci(xs: &[f64], cfg: &Bootstrap) -> Result<Ci> {
    bootstrap_ci_with(xs, cfg, mean_unchecked)
}

/// Paired bootstrap: CI of `mean(a_i - b_i)`, resampling pairs (e.g. one prompt under two
/// conditions).
pub fn bootstrap_paired_ci(a: &[f64], b: &[f64], cfg: &Bootstrap) -> Result<Ci> {
    check_pair(a, b, 1, "paired bootstrap")?;
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    bootstrap_mean_ci(&d, cfg)
}

/// Two independent samples: CI of `mean(a) - mean(b)`, resampling each sample separately
/// (first `a`, then `b`, from one stream), e.g. the refusal-rate gap between two prompt splits.
pub fn bootstrap_diff_ci(a: &[f64], b: &[f64], cfg: &Bootstrap) -> Result<Ci> {
    cfg.check()?;
    check_len(a, 1, "two-sample bootstrap (a)")?;
    check_len(b, 1, "two-sample bootstrap (b)")?;
    let mut rng = Rng::new(cfg.seed);
    let (na, nb) = (a.len(), b.len());
    let reps = (0..cfg.n_boot)
        .map(|_| {
            let sa: f64 = (0..na).map(|_| a[rng.below(na)]).sum();
            let sb: f64 = (0..nb).map(|_| b[rng.below(nb)]).sum();
            sa / na as f64 - sb / nb as f64
        })
        .collect();
    Ok(percentile_ci(mean_unchecked(a) - mean_unchecked(b), reps, cfg, na))
}

/// Cohen's d of two independent samples with the pooled SD:
/// `(mean(a) - mean(b)) / sqrt(((n_a - 1) s_a² + (n_b - 1) s_b²) / (n_a + n_b - 2))`.
pub fn cohens_d(a: &[f64], b: &[f64]) -> Result<f64> {
    check_len(a, 2, "cohens_d (a)")?;
    check_len(b, 2, "cohens_d (b)")?;
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let pooled = (((na - 1.0) * var_unchecked(a) + (nb - 1.0) * var_unchecked(b)) / (na + nb - 2.0)).sqrt();
    ensure!(pooled > 0.0, "cohens_d: both samples are constant (pooled SD is 0)");
    Ok((mean_unchecked(a) - mean_unchecked(b)) / pooled)
}

/// Cohen's d_z of paired samples: `mean(a_i - b_i) / sd(a_i - b_i)`.
pub fn cohens_dz(a: &[f64], b: &[f64]) -> Result<f64> {
    check_pair(a, b, 2, "cohens_dz")?;
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let s = var_unchecked(&d).sqrt();
    ensure!(s > 0.0, "cohens_dz: the paired differences are constant (SD 0)");
    Ok(mean_unchecked(&d) / s)
}

/// A correlation coefficient with its two-sided p-value (t distribution, `n - 2` degrees of
/// freedom, as scipy's `pearsonr` and `spearmanr`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Correlation {
    pub r: f64,
    pub p: f64,
    pub n: usize,
}

fn pearson_r(x: &[f64], y: &[f64]) -> Result<f64> {
    let (mx, my) = (mean_unchecked(x), mean_unchecked(y));
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    ensure!(sxx > 0.0 && syy > 0.0, "correlation: an input is constant, the coefficient is undefined");
    Ok((sxy / (sxx * syy).sqrt()).clamp(-1.0, 1.0))
}

fn t_test_p(r: f64, n: usize) -> Result<f64> {
    if r.abs() >= 1.0 {
        return Ok(0.0);
    }
    let df = (n - 2) as f64;
    let t = r * (df / (1.0 - r * r)).sqrt();
    let dist = StudentsT::new(0.0, 1.0, df).map_err(|e| anyhow::anyhow!("t distribution with {df} df: {e}"))?;
    Ok((2.0 * dist.sf(t.abs())).min(1.0))
}

/// Pearson's r and its two-sided p-value (`t = r sqrt((n-2)/(1-r²))`); needs 3 pairs.
pub fn pearson(x: &[f64], y: &[f64]) -> Result<Correlation> {
    check_pair(x, y, 3, "pearson")?;
    let r = pearson_r(x, y)?;
    Ok(Correlation { r, p: t_test_p(r, x.len())?, n: x.len() })
}

/// Spearman's ρ (Pearson's r of average ranks, ties sharing their mean rank) and its two-sided
/// p-value from the same t approximation scipy uses; needs 3 pairs.
pub fn spearman(x: &[f64], y: &[f64]) -> Result<Correlation> {
    check_pair(x, y, 3, "spearman")?;
    let rx = Data::new(x.to_vec()).ranks(RankTieBreaker::Average);
    let ry = Data::new(y.to_vec()).ranks(RankTieBreaker::Average);
    let r = pearson_r(&rx, &ry)?;
    Ok(Correlation { r, p: t_test_p(r, x.len())?, n: x.len() })
}

/// Indices (ascending) of the Pareto-optimal points. `points[i][k]` is objective `k` of point
/// `i`; `maximize[k]` says whether larger is better. A point is dropped when another is at least
/// as good in every objective and strictly better in one; equal points are all kept. Points with
/// a NaN objective are never on the frontier.
///
/// ```
/// use interp_kit::eval::stats::pareto_front;
/// // maximise refusal on harmful prompts, minimise the benign helpfulness drop
/// let pts = vec![vec![0.9, 0.30], vec![0.7, 0.05], vec![0.6, 0.10], vec![0.9, 0.40]];
/// assert_eq!(pareto_front(&pts, &[true, false])?, vec![0, 1]);
/// # anyhow::Ok(())
/// ```
pub fn pareto_front(points: &[Vec<f64>], maximize: &[bool]) -> Result<Vec<usize>> {
    let k = maximize.len();
    ensure!(k >= 1, "pareto_front: no objectives given");
    for (i, p) in points.iter().enumerate() {
        ensure!(p.len() == k, "pareto_front: point {i} has {} objectives, expected {k}", p.len());
    }
    // Orient every objective so that larger is better.
    let oriented: Vec<Vec<f64>> = points
        .iter()
        .map(|p| p.iter().zip(maximize).map(|(v, &mx)| if mx { *v } else { -*v }).collect())
        .collect();
    let valid = |p: &Vec<f64>| p.iter().all(|v| !v.is_nan());
    let dominates = |q: &Vec<f64>, p: &Vec<f64>| q.iter().zip(p).all(|(a, b)| a >= b) && q.iter().zip(p).any(|(a, b)| a > b);
    Ok((0..points.len())
        .filter(|&i| valid(&oriented[i]) && !oriented.iter().any(|q| valid(q) && dominates(q, &oriented[i])))
        .collect())
}

/// A proportion `k / n` with Wilson's score interval at `level` (e.g. 0.95).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Proportion {
    pub k: usize,
    pub n: usize,
    pub estimate: f64,
    pub lo: f64,
    pub hi: f64,
}

/// `k / n` with Wilson's score interval (`z` the two-sided normal quantile of `level`): unlike the
/// normal approximation it stays inside [0, 1] and is usable at k = 0 or k = n. An error for
/// `n = 0`, `k > n` or a level outside (0, 1).
pub fn wilson(k: usize, n: usize, level: f64) -> Result<Proportion> {
    ensure!(n > 0, "wilson: no trials");
    ensure!(k <= n, "wilson: {k} successes out of {n} trials");
    ensure!(level > 0.0 && level < 1.0, "wilson: level {level} must be in (0, 1)");
    let z = statrs::distribution::Normal::standard().inverse_cdf(0.5 + level / 2.0);
    let (nf, p) = (n as f64, k as f64 / n as f64);
    let z2 = z * z;
    let denom = 1.0 + z2 / nf;
    let centre = (p + z2 / (2.0 * nf)) / denom;
    let half = z / denom * (p * (1.0 - p) / nf + z2 / (4.0 * nf * nf)).sqrt();
    // The bounds at k = 0 and k = n are exactly 0 and 1 (rounding would leave ~1e-17).
    let lo = if k == 0 { 0.0 } else { (centre - half).max(0.0) };
    let hi = if k == n { 1.0 } else { (centre + half).min(1.0) };
    Ok(Proportion { k, n, estimate: p, lo, hi })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * b.abs().max(1.0)
    }

    #[test]
    fn summary_by_hand() {
        // 2, 4, 4, 4, 5, 5, 7, 9: mean 5, sum of squares 32, var 32/7.
        let xs = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0];
        let s = summary(&xs).unwrap();
        assert_eq!(s.n, 8);
        assert!(close(s.mean, 5.0, 1e-15));
        assert!(close(s.sd, (32.0f64 / 7.0).sqrt(), 1e-14));
        assert!(close(s.sem, (32.0f64 / 7.0).sqrt() / 8f64.sqrt(), 1e-14));
        assert!(summary(&[]).is_err());
        assert!(mean(&[1.0, f64::NAN]).unwrap_err().to_string().contains("value 1"));
        assert!(summary(&[3.0]).unwrap().sd.is_nan());
    }

    #[test]
    fn cohens_d_by_hand() {
        // a: mean 3, var 1; b: mean 1, var 1 -> pooled SD 1 -> d = 2.
        assert!(close(cohens_d(&[2.0, 3.0, 4.0], &[0.0, 1.0, 2.0]).unwrap(), 2.0, 1e-14));
        // Unequal sizes: a = [1,2,3,4] (mean 2.5, var 5/3), b = [2,4] (mean 3, var 2):
        // pooled var = (3*5/3 + 1*2) / 4 = 7/4 -> d = -0.5 / sqrt(1.75).
        assert!(close(cohens_d(&[1.0, 2.0, 3.0, 4.0], &[2.0, 4.0]).unwrap(), -0.5 / 1.75f64.sqrt(), 1e-14));
        // d_z: differences [1, 2, 3] -> mean 2, sd 1 -> 2.
        assert!(close(cohens_dz(&[2.0, 4.0, 6.0], &[1.0, 2.0, 3.0]).unwrap(), 2.0, 1e-14));
        assert!(cohens_d(&[1.0, 1.0], &[1.0, 1.0]).is_err());
        assert!(cohens_dz(&[1.0, 2.0], &[1.0]).unwrap_err().to_string().contains("different lengths"));
    }

    // Reference values from numpy and mpmath (the refvenv has no scipy); the p-value is the
    // regularised incomplete beta form of the t tail, which is what scipy computes:
    //   import numpy as np, mpmath as mp
    //   x = np.array([1,2,3,4,5,6,7,8.]); y = np.array([2.1,3.9,6.2,7.8,10.1,12.2,13.8,16.5])
    //   r = np.corrcoef(x, y)[0,1]; df = len(x) - 2; t = r*np.sqrt(df/(1-r*r))
    //   p = mp.betainc(df/2, 0.5, 0, df/(df+t*t), regularized=True)
    //   (spearman: the same on average ranks)
    #[test]
    fn pearson_and_spearman_match_reference() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        let y = [2.1, 3.9, 6.2, 7.8, 10.1, 12.2, 13.8, 16.5];
        let c = pearson(&x, &y).unwrap();
        assert!(close(c.r, PEARSON_R, 1e-12), "r {}", c.r);
        assert!(close(c.p, PEARSON_P, 1e-6), "p {} vs {}", c.p, PEARSON_P);
        // A noisier pair with ties.
        let u = [1.0, 2.0, 2.0, 3.0, 5.0, 4.0, 7.0, 6.0, 9.0, 8.0];
        let v = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, 5.0, 3.0];
        let s = spearman(&u, &v).unwrap();
        assert!(close(s.r, SPEARMAN_R, 1e-12), "rho {}", s.r);
        assert!(close(s.p, SPEARMAN_P, 1e-6), "p {} vs {}", s.p, SPEARMAN_P);
        let c = pearson(&u, &v).unwrap();
        assert!(close(c.r, PEARSON_R2, 1e-12), "r {}", c.r);
        assert!(close(c.p, PEARSON_P2, 1e-6), "p {} vs {}", c.p, PEARSON_P2);
        assert!(pearson(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]).is_err());
        assert!(spearman(&[1.0, 2.0], &[1.0, 2.0]).is_err());
    }

    const PEARSON_R: f64 = 0.9989776683093575;
    const PEARSON_P: f64 = 2.6692080418389136e-09;
    const SPEARMAN_R: f64 = 0.29755161192389207;
    const SPEARMAN_P: f64 = 0.4037372381789357;
    const PEARSON_R2: f64 = 0.20770358508438294;
    const PEARSON_P2: f64 = 0.5647473372575841;

    #[test]
    fn bootstrap_degenerate_and_two_point_cases() {
        let cfg = Bootstrap::new(2000, 0.95, 1);
        let c = bootstrap_mean_ci(&[3.5; 10], &cfg).unwrap();
        assert_eq!((c.estimate, c.lo, c.hi), (3.5, 3.5, 3.5));
        // {0, 1}: resampled means are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4, so the 2.5 %
        // and 97.5 % quantiles are 0 and 1.
        let c = bootstrap_mean_ci(&[0.0, 1.0], &cfg).unwrap();
        assert_eq!((c.estimate, c.lo, c.hi), (0.5, 0.0, 1.0));
        // Paired with a constant shift: every resampled mean difference is the shift.
        let a = [1.0, 5.0, 2.0, 8.0];
        let b: Vec<f64> = a.iter().map(|x| x - 0.25).collect();
        let c = bootstrap_paired_ci(&a, &b, &cfg).unwrap();
        assert!(close(c.lo, 0.25, 1e-12) && close(c.hi, 0.25, 1e-12));
        assert!(bootstrap_mean_ci(&[], &cfg).is_err());
        assert!(bootstrap_mean_ci(&[1.0], &Bootstrap::new(10, 1.5, 0)).is_err());
    }

    #[test]
    fn bootstrap_is_seeded_and_matches_the_normal_approximation() {
        let mut r = Rng::new(5);
        let xs: Vec<f64> = (0..400).map(|_| r.normal() * 2.0 + 1.0).collect();
        let cfg = Bootstrap::new(4000, 0.95, 9);
        let a = bootstrap_mean_ci(&xs, &cfg).unwrap();
        let b = bootstrap_mean_ci(&xs, &cfg).unwrap();
        assert_eq!(a, b);
        let c = bootstrap_mean_ci(&xs, &Bootstrap::new(4000, 0.95, 10)).unwrap();
        assert_ne!(a.lo, c.lo);
        // Large n: the percentile interval is close to mean ± 1.96 SEM.
        let s = summary(&xs).unwrap();
        let half = 1.959964 * s.sem;
        assert!(close(a.lo, s.mean - half, 0.05 * half), "{a:?} vs {s:?}");
        assert!(close(a.hi, s.mean + half, 0.05 * half), "{a:?} vs {s:?}");
    }

    // The whole procedure re-implemented in Python (SplitMix64 + Lemire's `below`, numpy's
    // `quantile(method="median_unbiased")` = statrs' R-8):
    //   M = 2**64 - 1
    //   class R:
    //       def __init__(s, seed): s.x = seed
    //       def u64(s):
    //           s.x = (s.x + 0x9e3779b97f4a7c15) & M; z = s.x
    //           z = ((z ^ (z >> 30)) * 0xbf58476d1ce4e5b9) & M
    //           z = ((z ^ (z >> 27)) * 0x94d049bb133111eb) & M
    //           return z ^ (z >> 31)
    //       def below(s, n):
    //           while True:
    //               m = s.u64() * n
    //               if (m & M) >= ((-n) & M) % n: return m >> 64
    //   xs = [0.3, 1.7, 2.2, 0.9, 4.1, 3.3, 0.0, 1.1]; r = R(42); reps = []
    //   for _ in range(500): reps.append(sum(xs[r.below(8)] for _ in range(8)) / 8)
    //   np.quantile(reps, [0.05, 0.95], method="median_unbiased")
    #[test]
    fn bootstrap_matches_python_reimplementation() {
        let xs = [0.3, 1.7, 2.2, 0.9, 4.1, 3.3, 0.0, 1.1];
        let c = bootstrap_mean_ci(&xs, &Bootstrap::new(500, 0.90, 42)).unwrap();
        assert!(close(c.lo, BOOT_LO, 1e-12), "lo {}", c.lo);
        assert!(close(c.hi, BOOT_HI, 1e-12), "hi {}", c.hi);
    }
    const BOOT_LO: f64 = 0.941875;
    const BOOT_HI: f64 = 2.5037499999999993;

    #[test]
    fn two_sample_bootstrap() {
        let a = [1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0];
        let b = [0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0];
        let c = bootstrap_diff_ci(&a, &b, &Bootstrap::new(3000, 0.95, 3)).unwrap();
        assert!(close(c.estimate, 0.75 - 0.25, 1e-15));
        assert!(c.lo < 0.5 && c.hi > 0.5 && c.lo > -1.0 && c.hi <= 1.0, "{c:?}");
        let same = bootstrap_diff_ci(&[2.0; 5], &[2.0; 7], &Bootstrap::new(100, 0.9, 0)).unwrap();
        assert_eq!((same.lo, same.hi), (0.0, 0.0));
    }

    #[test]
    fn pareto_by_hand() {
        let pts = vec![
            vec![0.9, 0.30], // on the front: highest refusal among low-drop points
            vec![0.7, 0.05], // on the front: lowest drop
            vec![0.6, 0.10], // dominated by 1
            vec![0.9, 0.40], // dominated by 0
            vec![0.8, 0.20], // on the front
            vec![0.7, 0.05], // equal to 1: kept
            vec![f64::NAN, 0.0],
        ];
        assert_eq!(pareto_front(&pts, &[true, false]).unwrap(), vec![0, 1, 4, 5]);
        // Both maximised: (0.9, 0.40) dominates (0.9, 0.30).
        assert_eq!(pareto_front(&pts, &[true, true]).unwrap(), vec![3]);
        assert!(pareto_front(&pts, &[true]).is_err());
    }
    #[test]
    fn wilson_matches_hand_values() {
        // 8 / 10 at 95 %: centre (0.8 + 1.96^2/20) / (1 + 1.96^2/10), the textbook [0.4902, 0.9433]
        let p = wilson(8, 10, 0.95).unwrap();
        assert!((p.estimate - 0.8).abs() < 1e-12);
        assert!((p.lo - 0.490_16).abs() < 1e-4 && (p.hi - 0.943_32).abs() < 1e-4, "{p:?}");
        let z = wilson(0, 20, 0.95).unwrap();
        assert_eq!(z.lo, 0.0);
        assert!((z.hi - 0.161_13).abs() < 1e-4, "{z:?}");
        assert!(wilson(1, 0, 0.95).is_err() && wilson(3, 2, 0.95).is_err() && wilson(1, 2, 1.0).is_err());
    }
}
