//! Llama (2, 3, 3.1-3.3 and other `model_type: "llama"` checkpoints): the plain Llama decoder
//! with GQA, optional attention/MLP biases, `llama3` (or `linear`) rope scaling, tied or
//! untied head.
//!
//! GGUF: llama.cpp's converter permutes the q/k rows of `llama` files for its interleaved rope
//! ([`LlamaSpec::qk_permuted`]) and stores Llama-3.1's rope scaling as per-frequency divisors in
//! `rope_freqs.weight`; both are undone by the loader.
use super::config::{check_decoder_sizes, RopeParameters, RopeSpec};
use super::decoder::LlamaSpec;
use super::layers::Act;
use super::load::{md_f64, md_usize, GgufHparams};
use anyhow::{ensure, Result};
use candle_core::quantized::gguf_file::Value;
use serde::Deserialize;
use std::collections::HashMap;

/// Mirrors HF `LlamaConfig` (`config.json`): both the hub form (`rope_theta` + `rope_scaling`)
/// and the transformers-v5 form (`rope_parameters`) are read.
#[derive(Clone, Debug, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Defaults to `num_attention_heads` (no GQA).
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Defaults to `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_scaling: Option<RopeParameters>,
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default = "default_act")]
    pub hidden_act: String,
}

fn default_max_pos() -> usize {
    2048
}
fn default_eps() -> f64 {
    1e-6
}
fn default_act() -> String {
    "silu".into()
}

impl Config {
    /// From llama.cpp metadata (`llama.*` keys). Llama-3.1 rope scaling is not in the metadata
    /// but in the `rope_freqs.weight` tensor, applied by the loader.
    pub fn from_gguf(md: &HashMap<String, Value>, vocab_size: usize, tied: bool) -> Result<Self> {
        let h = GgufHparams::read(md, "llama")?;
        let head_dim = md_usize(md, "llama.attention.key_length").ok();
        let rope_scaling = match md.get("llama.rope.scaling.type").and_then(|v| v.to_string().ok()) {
            Some(t) if t == "linear" => Some(RopeParameters {
                rope_type: Some("linear".into()),
                factor: Some(md_f64(md, "llama.rope.scaling.factor")?),
                ..Default::default()
            }),
            _ => None,
        };
        Ok(Self {
            vocab_size,
            hidden_size: h.hidden_size,
            intermediate_size: h.intermediate_size,
            num_hidden_layers: h.num_hidden_layers,
            num_attention_heads: h.num_attention_heads,
            num_key_value_heads: Some(h.num_key_value_heads),
            head_dim,
            max_position_embeddings: h.max_position_embeddings,
            rope_theta: h.rope_theta,
            rope_scaling,
            rope_parameters: None,
            rms_norm_eps: h.rms_norm_eps,
            tie_word_embeddings: tied,
            attention_bias: false,
            mlp_bias: false,
            hidden_act: default_act(),
        })
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    pub fn rope(&self) -> Result<RopeSpec> {
        let rope = RopeSpec::resolve(
            self.rope_parameters.as_ref(),
            self.rope_scaling.as_ref(),
            self.rope_theta,
            None,
            10000.0,
            self.head_dim(),
            self.max_position_embeddings,
        )?;
        ensure!(rope.rot_dim == self.head_dim(), "llama: partial rotary embedding is not part of this architecture");
        Ok(rope)
    }

    pub fn spec(&self) -> Result<LlamaSpec> {
        check_decoder_sizes(
            self.vocab_size,
            self.hidden_size,
            self.intermediate_size,
            self.num_hidden_layers,
            self.num_attention_heads,
            self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            self.head_dim,
            self.max_position_embeddings,
        )?;
        let head_dim = self.head_dim();
        Ok(LlamaSpec {
            vocab_size: self.vocab_size,
            max_position_embeddings: self.max_position_embeddings,
            rope_inv_freq: self.rope()?.inv_freq(),
            tie_word_embeddings: self.tie_word_embeddings,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            head_dim,
            rms_norm_eps: self.rms_norm_eps,
            qkv_bias: self.attention_bias,
            o_bias: self.attention_bias,
            mlp_bias: self.mlp_bias,
            qk_norm: false,
            act: Act::from_hf(&self.hidden_act)?,
            norm_plus_one: false,
            norm_scale_in_f32: false,
            sandwich_norms: false,
            attn_scale: 1.0 / (head_dim as f64).sqrt(),
            attn_softcap: None,
            final_softcap: None,
            embed_scale: None,
            sliding_window: vec![None; self.num_hidden_layers],
            qk_permuted: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_and_v5_configs_give_the_same_spec() {
        let hub = r#"{"vocab_size": 10, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "rope_theta": 500000.0,
            "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 64, "rope_type": "llama3"}}"#;
        let v5 = r#"{"vocab_size": 10, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2,
            "rope_parameters": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 64, "rope_type": "llama3", "rope_theta": 500000.0}}"#;
        let a = serde_json::from_str::<Config>(hub).unwrap().spec().unwrap();
        let b = serde_json::from_str::<Config>(v5).unwrap().spec().unwrap();
        assert_eq!(a.rope_inv_freq, b.rope_inv_freq);
        let plain = r#"{"vocab_size": 10, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "rope_theta": 500000.0}"#;
        let c = serde_json::from_str::<Config>(plain).unwrap().spec().unwrap();
        assert_eq!(c.num_key_value_heads, 4);
        assert_eq!(c.rope_inv_freq[0], a.rope_inv_freq[0], "high frequencies are not rescaled");
        assert!(c.rope_inv_freq[7] > 7.9 * a.rope_inv_freq[7], "low frequencies are divided by 8");
    }
}
