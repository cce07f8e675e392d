//! Pieces of HF `config.json` that several architectures share: the rotary-embedding
//! parameters, in the legacy hub form (top-level `rope_theta` + `rope_scaling`, GPT-NeoX's
//! `rotary_emb_base` + `rotary_pct`) and in the transformers-v5 form (`rope_parameters`).
use anyhow::{bail, ensure, Result};
use serde::Deserialize;

/// Upper bounds on the sizes a config (or GGUF metadata) may declare. No released checkpoint comes
/// near them (the largest have ~130 layers, 128 heads, head_dim 256, d = 16384, a 256k vocabulary);
/// a value past them comes from a corrupt file, and is refused before anything is allocated from
/// it (the per-layer tables and rotary frequencies are built before the weights are checked).
pub const MAX_LAYERS: usize = 1 << 12;
pub const MAX_HEADS: usize = 1 << 12;
pub const MAX_HEAD_DIM: usize = 1 << 12;
pub const MAX_WIDTH: usize = 1 << 20;
pub const MAX_VOCAB: usize = 1 << 24;

/// Checks `(name, value, max)` sizes of a config: each must be in `1..=max`; the error names the field.
pub fn check_sizes(sizes: &[(&str, usize, usize)]) -> Result<()> {
    for &(name, v, max) in sizes {
        ensure!(v >= 1, "{name} = {v}: must be at least 1");
        ensure!(v <= max, "{name} = {v} is implausibly large (at most {max} is accepted): a corrupt config?");
    }
    Ok(())
}

/// The sizes every decoder declares, checked with [`check_sizes`], plus `heads % kv_heads == 0`.
#[allow(clippy::too_many_arguments)]
pub fn check_decoder_sizes(
    vocab: usize,
    hidden: usize,
    intermediate: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: Option<usize>,
    max_positions: usize,
) -> Result<()> {
    check_sizes(&[
        ("vocab_size", vocab, MAX_VOCAB),
        ("hidden_size", hidden, MAX_WIDTH),
        ("intermediate_size", intermediate, MAX_WIDTH),
        ("num_hidden_layers", layers, MAX_LAYERS),
        ("num_attention_heads", heads, MAX_HEADS),
        ("num_key_value_heads", kv_heads, MAX_HEADS),
        ("max_position_embeddings", max_positions, usize::MAX),
    ])?;
    if let Some(hd) = head_dim {
        check_sizes(&[("head_dim", hd, MAX_HEAD_DIM)])?;
    } else {
        ensure!(hidden % heads == 0, "hidden_size {hidden} is not a multiple of num_attention_heads {heads}");
        check_sizes(&[("hidden_size / num_attention_heads", hidden / heads, MAX_HEAD_DIM)])?;
    }
    ensure!(heads % kv_heads == 0, "{heads} attention heads cannot be shared by {kv_heads} key/value heads");
    Ok(())
}

/// `rope_scaling` (legacy) or `rope_parameters` (transformers v5), field names as HF writes them.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct RopeParameters {
    /// `default`, `linear`, `llama3`, ... (v5 and Llama-3.1 configs).
    #[serde(default)]
    pub rope_type: Option<String>,
    /// The same, as older configs spell it (`"type": "linear"`).
    #[serde(default, rename = "type")]
    pub legacy_type: Option<String>,
    /// The base `theta` (v5 keeps it here; legacy configs at the top level).
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// Fraction of each head's dimensions that rotate (v5; GPT-NeoX legacy: `rotary_pct`).
    #[serde(default)]
    pub partial_rotary_factor: Option<f64>,
    /// `linear` / `llama3`: the context extension factor (8 for Llama-3.1).
    #[serde(default)]
    pub factor: Option<f64>,
    /// `llama3`: wavelengths above `original_max_position_embeddings / low_freq_factor` are
    /// divided by `factor`.
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    /// `llama3`: wavelengths below `original_max_position_embeddings / high_freq_factor` are kept.
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    /// `llama3`: the pre-training context (8192 for Llama-3.1).
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
}

/// Rotary settings after merging the legacy and v5 forms.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeSpec {
    pub theta: f64,
    /// Rotating dimensions per head (even; `head_dim` unless partial rotary).
    pub rot_dim: usize,
    pub scaling: RopeScaling,
}

/// How the inverse frequencies are rescaled for long contexts.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Every frequency divided by `factor` (position interpolation).
    Linear { factor: f64 },
    /// Llama-3.1's piecewise rule (HF `_compute_llama3_parameters`).
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: usize },
}

impl RopeSpec {
    /// Merges HF's forms as `PreTrainedConfig.standardize_rope_params` does: `rope_parameters`
    /// (or, for legacy configs, `rope_scaling`) with `rope_theta` / `partial_rotary_factor`
    /// filled from the top-level keys when absent. `max_position_embeddings` stands in for a
    /// missing `original_max_position_embeddings`.
    pub fn resolve(
        rope_parameters: Option<&RopeParameters>,
        rope_scaling: Option<&RopeParameters>,
        top_theta: Option<f64>,
        top_partial: Option<f64>,
        default_theta: f64,
        head_dim: usize,
        max_position_embeddings: usize,
    ) -> Result<Self> {
        let p = rope_parameters.or(rope_scaling).cloned().unwrap_or_default();
        let theta = p.rope_theta.or(top_theta).unwrap_or(default_theta);
        ensure!(theta > 0.0, "rope theta must be positive, got {theta}");
        let partial = p.partial_rotary_factor.or(top_partial).unwrap_or(1.0);
        ensure!(partial > 0.0 && partial <= 1.0, "partial rotary factor must be in (0, 1], got {partial}");
        // HF: dim = int(head_dim * partial_rotary_factor)
        let rot_dim = (head_dim as f64 * partial) as usize;
        ensure!(rot_dim >= 2 && rot_dim % 2 == 0, "rotary dimension {rot_dim} (head_dim {head_dim} x {partial}) must be even and >= 2");
        let kind = p.rope_type.clone().or(p.legacy_type.clone()).unwrap_or_else(|| "default".into());
        let need = |v: Option<f64>, name: &str| v.ok_or_else(|| anyhow::anyhow!("rope type {kind:?} needs `{name}`"));
        let scaling = match kind.as_str() {
            "default" => RopeScaling::None,
            "linear" => RopeScaling::Linear { factor: need(p.factor, "factor")? },
            "llama3" => RopeScaling::Llama3 {
                factor: need(p.factor, "factor")?,
                low_freq_factor: need(p.low_freq_factor, "low_freq_factor")?,
                high_freq_factor: need(p.high_freq_factor, "high_freq_factor")?,
                original_max_position_embeddings: p.original_max_position_embeddings.unwrap_or(max_position_embeddings),
            },
            other => bail!("rope type {other:?} is not supported (supported: default, linear, llama3)"),
        };
        if let RopeScaling::Llama3 { low_freq_factor, high_freq_factor, .. } = scaling {
            ensure!(high_freq_factor != low_freq_factor, "llama3 rope: high_freq_factor must differ from low_freq_factor");
        }
        Ok(Self { theta, rot_dim, scaling })
    }

    /// The inverse frequencies (`rot_dim / 2` entries), scaled as configured.
    pub fn inv_freq(&self) -> Vec<f32> {
        let d = self.rot_dim as f64;
        (0..self.rot_dim / 2)
            .map(|i| {
                let f = 1.0 / self.theta.powf(2.0 * i as f64 / d);
                (match self.scaling {
                    RopeScaling::None => f,
                    RopeScaling::Linear { factor } => f / factor,
                    RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                        let old = original_max_position_embeddings as f64;
                        let (low_wl, high_wl) = (old / low_freq_factor, old / high_freq_factor);
                        let wl = 2.0 * std::f64::consts::PI / f;
                        if wl < high_wl {
                            f
                        } else if wl > low_wl {
                            f / factor
                        } else {
                            let s = (old / wl - low_freq_factor) / (high_freq_factor - low_freq_factor);
                            (1.0 - s) * f / factor + s * f
                        }
                    }
                }) as f32
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> RopeParameters {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn llama3_rule_matches_hand_computed_values() {
        // head_dim 16, theta 10000, factor 8, low 1, high 4, original context 64:
        // wavelengths 2*pi*10000^(2i/16): i=0 6.28 (< 16: kept), i=1 19.9 (between 16 and 64:
        // smoothed), i>=3 > 64 (divided by 8).
        let p = parse(r#"{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":64}"#);
        let r = RopeSpec::resolve(None, Some(&p), Some(10000.0), None, 10000.0, 16, 128).unwrap();
        let f = r.inv_freq();
        let base: Vec<f64> = (0..8).map(|i| 1.0 / 10000f64.powf(2.0 * i as f64 / 16.0)).collect();
        assert_eq!(f[0], base[0] as f32);
        let wl = 2.0 * std::f64::consts::PI / base[1];
        let s = (64.0 / wl - 1.0) / 3.0;
        assert!((f[1] as f64 - ((1.0 - s) * base[1] / 8.0 + s * base[1])).abs() < 1e-7);
        for i in 3..8 {
            assert!((f[i] as f64 - base[i] / 8.0).abs() < 1e-9, "i={i}");
        }
    }

    /// Regression (fuzzing): a corrupt config.json's sizes were believed — `head_dim` 2^32 asked
    /// for 8 GiB of rotary frequencies, `num_hidden_layers` 2^40 for a per-layer table of 16 TiB,
    /// `num_attention_heads` 0 divided by zero — before any weight was compared with them.
    #[test]
    fn implausible_sizes_are_refused() {
        let ok = |r: Result<()>| r.map_err(|e| format!("{e:#}"));
        ok(check_decoder_sizes(300, 64, 160, 3, 4, 2, None, 128)).unwrap();
        ok(check_decoder_sizes(300, 64, 160, 3, 4, 2, Some(32), 128)).unwrap();
        let err = |r: Result<()>| format!("{:#}", r.unwrap_err());
        assert!(err(check_decoder_sizes(300, 64, 160, 1 << 40, 4, 2, None, 128)).contains("num_hidden_layers = 1099511627776"));
        assert!(err(check_decoder_sizes(300, 64, 160, 3, 0, 2, None, 128)).contains("num_attention_heads = 0"));
        assert!(err(check_decoder_sizes(300, 64, 160, 3, 4, 2, Some(1 << 32), 128)).contains("head_dim = 4294967296"));
        assert!(err(check_decoder_sizes(300, 64, 160, 3, 4, 3, None, 128)).contains("cannot be shared"));
        assert!(err(check_decoder_sizes(300, 66, 160, 3, 4, 2, None, 128)).contains("not a multiple"));
        assert!(err(check_decoder_sizes(300, 64, 160, 3, 4, 2, None, 0)).contains("max_position_embeddings = 0"));
        assert!(err(check_decoder_sizes(usize::MAX, 64, 160, 3, 4, 2, None, 128)).contains("vocab_size"));
    }

    #[test]
    fn legacy_and_v5_forms_agree() {
        let legacy = parse(r#"{"type":"linear","factor":2.0}"#);
        let v5 = parse(r#"{"rope_type":"linear","factor":2.0,"rope_theta":500000.0}"#);
        let a = RopeSpec::resolve(None, Some(&legacy), Some(500000.0), None, 10000.0, 8, 64).unwrap();
        let b = RopeSpec::resolve(Some(&v5), None, None, None, 10000.0, 8, 64).unwrap();
        assert_eq!(a, b);
        // GPT-NeoX: rotary_pct / rotary_emb_base at the top level vs partial_rotary_factor.
        let neox_v5 = parse(r#"{"rope_type":"default","rope_theta":10000.0,"partial_rotary_factor":0.25}"#);
        let a = RopeSpec::resolve(None, None, Some(10000.0), Some(0.25), 10000.0, 16, 64).unwrap();
        let b = RopeSpec::resolve(Some(&neox_v5), None, None, None, 10000.0, 16, 64).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.rot_dim, 4);
        let e = RopeSpec::resolve(Some(&parse(r#"{"rope_type":"yarn","factor":4.0}"#)), None, None, None, 1e4, 16, 64);
        assert!(format!("{:#}", e.unwrap_err()).contains("yarn"));
    }
}
