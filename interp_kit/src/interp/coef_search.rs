//! Coefficient search for steering with a trait vector, as the persona-vector recipe does it:
//! scale the vector so that its push is comparable to the residual stream, then walk the
//! coefficient up while the steered text stays coherent and down when it stops being so, and
//! keep the coefficient with the highest trait score among the coherent steps.
//!
//! * base coefficient = mean activation norm at the layer / vector norm ([`base_coefficient`]),
//! * the first coefficient is `start × base` (default 0.7),
//! * after each step: coherent (`coherence >= threshold`, default 70 on a 0-100 judge scale) →
//!   multiply by `up` (1.3), else by `down` (0.85); `steps` coefficients are scored in all,
//! * the best is the highest trait score among coherent steps (ties: the earliest).
//!
//! A weak judge (a small model judging its own answers) can rate even the *unsteered* answers
//! below the threshold, and then no search can pass. `unsteered_margin = m` sets the threshold
//! relative to the unsteered coherence `u`: a step is coherent at `min(threshold, max(u - m,
//! floor))` ([`CoefSearchConfig::calibrated`]), i.e. "no more than `m` points worse than not
//! steering", but never below a floor the caller chooses (e.g. above what degenerate text can score).
//!
//! If the very first coefficient is already incoherent the search stops and says so
//! ([`Outcome::IncoherentAtStart`]; [`CoefSearch::best`] is then an error) rather than return a
//! coefficient: the start is too strong for this layer and vector.
//!
//! The scorer is any closure `coef -> (trait score, coherence)`: steered generation plus judges
//! in a study, a synthetic function in tests.
//!
//! ```
//! use interp_kit::interp::coef_search::{coef_search, CoefSearchConfig};
//! let cfg = CoefSearchConfig { steps: 3, ..Default::default() };
//! let s = coef_search(&cfg, 10.0, |c| Ok((c, if c < 10.0 { 90.0 } else { 20.0 })))?;
//! // 7 (coherent) -> 9.1 (coherent) -> 11.83 (incoherent): best is 9.1
//! assert!((s.best()?.coef - 9.1).abs() < 1e-9);
//! # anyhow::Ok(())
//! ```

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

/// Settings of [`coef_search`] (a TOML/JSON table; absent keys take the defaults).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoefSearchConfig {
    /// First coefficient as a multiple of the base coefficient.
    pub start: f64,
    /// Factor after a coherent step (> 1).
    pub up: f64,
    /// Factor after an incoherent step (in (0, 1)).
    pub down: f64,
    /// Coherence at or above which a step counts as coherent (judge scale, 0-100).
    pub threshold: f64,
    /// Coefficients scored in all.
    pub steps: usize,
    /// Set: the threshold becomes `min(threshold, max(unsteered coherence - unsteered_margin, floor))`, see
    /// [`CoefSearchConfig::calibrated`]; the caller measures the unsteered coherence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unsteered_margin: Option<f64>,
}

impl Default for CoefSearchConfig {
    /// start 0.7, up 1.3, down 0.85, threshold 70, 8 steps.
    fn default() -> Self {
        CoefSearchConfig { start: 0.7, up: 1.3, down: 0.85, threshold: 70.0, steps: 8, unsteered_margin: None }
    }
}

impl CoefSearchConfig {
    /// Errors name the field and the allowed range.
    pub fn validate(&self) -> Result<()> {
        ensure!(self.start.is_finite() && self.start > 0.0, "coefficient search: start must be > 0, got {}", self.start);
        ensure!(self.up.is_finite() && self.up > 1.0, "coefficient search: up must be > 1, got {}", self.up);
        ensure!(self.down > 0.0 && self.down < 1.0, "coefficient search: down must be in (0, 1), got {}", self.down);
        ensure!(self.threshold.is_finite(), "coefficient search: threshold must be finite, got {}", self.threshold);
        ensure!(self.steps >= 1, "coefficient search: steps must be at least 1");
        if let Some(m) = self.unsteered_margin {
            ensure!(m.is_finite() && m >= 0.0, "coefficient search: unsteered_margin must be finite and >= 0, got {m}");
        }
        Ok(())
    }

    /// The configuration to search with, given the coherence of the unsteered answers: without
    /// `unsteered_margin` unchanged; with it, `threshold = min(threshold, max(unsteered - margin,
    /// floor))` and the margin cleared (so calibrating twice changes nothing more).
    pub fn calibrated(&self, unsteered_coherence: f64, floor: f64) -> Result<CoefSearchConfig> {
        self.validate()?;
        ensure!(floor.is_finite(), "coefficient search: the threshold floor must be finite, got {floor}");
        let Some(m) = self.unsteered_margin else { return Ok(self.clone()) };
        ensure!(
            unsteered_coherence.is_finite(),
            "coefficient search: the unsteered coherence is {unsteered_coherence}; cannot set the threshold from it"
        );
        Ok(CoefSearchConfig { threshold: self.threshold.min((unsteered_coherence - m).max(floor)), unsteered_margin: None, ..self.clone() })
    }
}

/// One scored coefficient.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// 0-based step number.
    pub step: usize,
    pub coef: f64,
    pub trait_score: f64,
    pub coherence: f64,
    pub coherent: bool,
}

/// How a search ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    /// The coherent step with the highest trait score.
    Best(Step),
    /// The first coefficient was already incoherent; nothing else was tried.
    IncoherentAtStart(Step),
}

/// Every step of a search and its outcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CoefSearch {
    /// The base coefficient the start was scaled from.
    pub base: f64,
    pub steps: Vec<Step>,
    pub outcome: Outcome,
}

impl CoefSearch {
    /// The best coherent step, or an error saying the first coefficient was already incoherent.
    pub fn best(&self) -> Result<&Step> {
        match &self.outcome {
            Outcome::Best(s) => Ok(s),
            Outcome::IncoherentAtStart(s) => bail!(
                "coefficient search: the first coefficient {:.4} (base {:.4}) is already incoherent (coherence {:.1} below \
                 the threshold); no coefficient is returned: start lower",
                s.coef,
                self.base,
                s.coherence
            ),
        }
    }
}

/// `mean_norm / vector_norm`: the coefficient at which the vector's push equals the typical
/// residual norm at the layer.
pub fn base_coefficient(mean_norm: f64, vector_norm: f64) -> Result<f64> {
    ensure!(mean_norm.is_finite() && mean_norm > 0.0, "base coefficient: mean activation norm must be > 0, got {mean_norm}");
    ensure!(vector_norm.is_finite() && vector_norm > 0.0, "base coefficient: vector norm must be > 0, got {vector_norm}");
    Ok(mean_norm / vector_norm)
}

/// Mean L2 norm of the rows of a `[N, D]` activation matrix.
pub fn mean_row_norm(acts: &Tensor) -> Result<f64> {
    let (n, _) = acts.dims2().with_context(|| format!("mean row norm: expected [N, D] activations, got {:?}", acts.dims()))?;
    ensure!(n > 0, "mean row norm: no rows");
    let v: Vec<f64> = acts.to_dtype(DType::F64)?.to_device(&Device::Cpu)?.sqr()?.sum(1)?.sqrt()?.to_vec1()?;
    Ok(v.iter().sum::<f64>() / n as f64)
}

/// Runs the search from `base` (see the module documentation), calling `scorer(coef)` once per
/// step. Scorer errors and non-finite scores stop the search with an error naming the step.
pub fn coef_search(
    cfg: &CoefSearchConfig,
    base: f64,
    mut scorer: impl FnMut(f64) -> Result<(f64, f64)>,
) -> Result<CoefSearch> {
    cfg.validate()?;
    ensure!(base.is_finite() && base > 0.0, "coefficient search: base coefficient must be > 0, got {base}");
    let mut coef = cfg.start * base;
    let mut steps: Vec<Step> = Vec::with_capacity(cfg.steps);
    for step in 0..cfg.steps {
        let (trait_score, coherence) =
            scorer(coef).with_context(|| format!("coefficient search step {step} (coefficient {coef:.6})"))?;
        ensure!(
            trait_score.is_finite() && coherence.is_finite(),
            "coefficient search step {step} (coefficient {coef:.6}): scorer returned trait {trait_score}, coherence {coherence}"
        );
        let coherent = coherence >= cfg.threshold;
        let s = Step { step, coef, trait_score, coherence, coherent };
        steps.push(s.clone());
        if step == 0 && !coherent {
            return Ok(CoefSearch { base, steps, outcome: Outcome::IncoherentAtStart(s) });
        }
        coef *= if coherent { cfg.up } else { cfg.down };
    }
    let best = steps
        .iter()
        .filter(|s| s.coherent)
        .fold(None::<&Step>, |b, s| match b {
            Some(b) if b.trait_score >= s.trait_score => Some(b),
            _ => Some(s),
        })
        .expect("the first step is coherent")
        .clone();
    Ok(CoefSearch { base, steps, outcome: Outcome::Best(best) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trait rises linearly with the coefficient; coherence is 90 up to a cliff at 10, then 40.
    fn cliff(c: f64) -> Result<(f64, f64)> {
        Ok((5.0 * c, if c <= 10.0 { 90.0 } else { 40.0 }))
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9 * b.abs().max(1.0)
    }

    #[test]
    fn visits_the_hand_computed_sequence() {
        let cfg = CoefSearchConfig { steps: 6, ..Default::default() };
        let s = coef_search(&cfg, 10.0, cliff).unwrap();
        // 7 (ok) ×1.3 -> 9.1 (ok) ×1.3 -> 11.83 (cliff) ×0.85 -> 10.0555 (cliff) ×0.85
        // -> 8.547175 (ok) ×1.3 -> 11.1113275 (cliff)
        let want = [7.0, 9.1, 11.83, 10.0555, 8.547175, 11.1113275];
        let got: Vec<f64> = s.steps.iter().map(|x| x.coef).collect();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!(close(*g, w), "{got:?}");
        }
        let coherent: Vec<bool> = s.steps.iter().map(|x| x.coherent).collect();
        assert_eq!(coherent, [true, true, false, false, true, false]);
        // Best coherent trait: 5 × 9.1 = 45.5 at step 1 (11.83 scores higher but is incoherent).
        let b = s.best().unwrap();
        assert_eq!(b.step, 1);
        assert!(close(b.coef, 9.1) && close(b.trait_score, 45.5));
    }

    #[test]
    fn custom_multipliers_and_threshold() {
        // Coherence 60 everywhere: coherent only with a threshold of 50.
        let cfg = CoefSearchConfig { start: 1.0, up: 2.0, down: 0.5, threshold: 50.0, steps: 4, unsteered_margin: None };
        let s = coef_search(&cfg, 1.5, |c| Ok((-(c - 6.0).abs(), 60.0))).unwrap();
        let got: Vec<f64> = s.steps.iter().map(|x| x.coef).collect();
        assert_eq!(got, [1.5, 3.0, 6.0, 12.0]);
        assert_eq!(s.best().unwrap().coef, 6.0);
    }

    #[test]
    fn threshold_relative_to_unsteered_coherence() {
        // A judge that rates everything 30 points lower: the unsteered answers get 60, the cliff
        // drops to 10. Threshold 70 fails at once; margin 10 puts it at 50 and finds the cliff.
        let weak = |c: f64| cliff(c).map(|(t, co)| (t, co - 30.0));
        let plain = CoefSearchConfig { steps: 6, ..Default::default() };
        assert!(matches!(coef_search(&plain, 10.0, weak).unwrap().outcome, Outcome::IncoherentAtStart(_)));
        let rel = CoefSearchConfig { unsteered_margin: Some(10.0), ..plain.clone() };
        let cal = rel.calibrated(60.0, 0.0).unwrap();
        assert_eq!((cal.threshold, cal.unsteered_margin), (50.0, None));
        assert_eq!(cal.calibrated(0.0, 0.0).unwrap(), cal, "calibrating twice changes nothing more");
        let s = coef_search(&cal, 10.0, weak).unwrap();
        let strong = coef_search(&plain, 10.0, cliff).unwrap();
        // Same walk and best step as the strong judge with threshold 70.
        assert_eq!(s.steps.iter().map(|x| (x.coef, x.coherent)).collect::<Vec<_>>(), strong.steps.iter().map(|x| (x.coef, x.coherent)).collect::<Vec<_>>());
        assert_eq!(s.best().unwrap().step, 1);
        // Never above the configured threshold nor below the floor; no margin: unchanged.
        assert_eq!(rel.calibrated(95.0, 0.0).unwrap().threshold, 70.0);
        assert_eq!(rel.calibrated(45.0, 51.0).unwrap().threshold, 51.0);
        assert_eq!(rel.calibrated(45.0, 0.0).unwrap().threshold, 35.0);
        assert_eq!(plain.calibrated(10.0, 51.0).unwrap(), plain);
        assert!(rel.calibrated(f64::NAN, 0.0).unwrap_err().to_string().contains("unsteered coherence"));
        let bad = CoefSearchConfig { unsteered_margin: Some(-1.0), ..plain };
        assert!(bad.validate().unwrap_err().to_string().contains("unsteered_margin"));
    }

    #[test]
    fn incoherent_first_step_says_so() {
        let mut calls = 0;
        let s = coef_search(&CoefSearchConfig::default(), 20.0, |c| {
            calls += 1;
            cliff(c)
        })
        .unwrap();
        assert_eq!(calls, 1);
        assert!(matches!(s.outcome, Outcome::IncoherentAtStart(ref x) if close(x.coef, 14.0)));
        let e = s.best().unwrap_err().to_string();
        assert!(e.contains("already incoherent") && e.contains("14.0000"), "{e}");
    }

    #[test]
    fn base_and_bad_input() {
        assert_eq!(base_coefficient(12.0, 3.0).unwrap(), 4.0);
        assert!(base_coefficient(12.0, 0.0).unwrap_err().to_string().contains("vector norm"));
        // rows (3, 4) and (0, 2): norms 5 and 2.
        let t = Tensor::new(&[[3f32, 4.0], [0.0, 2.0]], &Device::Cpu).unwrap();
        assert_eq!(mean_row_norm(&t).unwrap(), 3.5);
        let bad = CoefSearchConfig { down: 1.2, ..Default::default() };
        assert!(coef_search(&bad, 1.0, cliff).unwrap_err().to_string().contains("down"));
        let e = coef_search(&CoefSearchConfig::default(), 1.0, |_| Ok((f64::NAN, 80.0))).unwrap_err();
        assert!(e.to_string().contains("step 0"), "{e}");
        let e = coef_search(&CoefSearchConfig::default(), 1.0, |c| if c > 0.8 { anyhow::bail!("judge failed") } else { Ok((1.0, 90.0)) })
            .unwrap_err();
        assert!(format!("{e:#}").contains("step 1") && format!("{e:#}").contains("judge failed"), "{e:#}");
        let cfg: CoefSearchConfig = toml::from_str("up = 1.5\nsteps = 3").unwrap();
        assert_eq!((cfg.up, cfg.down, cfg.steps, cfg.threshold), (1.5, 0.85, 3, 70.0));
        assert!(toml::from_str::<CoefSearchConfig>("upp = 1.5").is_err());
    }
}
