//! Qwen3: Llama-style decoder with per-head RMSNorm on q and k, explicit head_dim, no biases.
use super::config::check_decoder_sizes;
use super::decoder::LlamaSpec;
use super::layers::{Act, Rope};
use super::load::{md_usize, GgufHparams};
use super::qwen2::{default_eps, default_max_pos, default_theta};
use anyhow::Result;
use candle_core::quantized::gguf_file::Value;
use serde::Deserialize;
use std::collections::HashMap;

/// Mirrors HF `Qwen3Config` (`config.json`).
#[derive(Clone, Debug, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub attention_bias: bool,
}

impl Config {
    /// From llama.cpp metadata (`qwen3.*` keys).
    pub fn from_gguf(md: &HashMap<String, Value>, vocab_size: usize, tied: bool) -> Result<Self> {
        let h = GgufHparams::read(md, "qwen3")?;
        Ok(Self {
            vocab_size,
            hidden_size: h.hidden_size,
            intermediate_size: h.intermediate_size,
            num_hidden_layers: h.num_hidden_layers,
            num_attention_heads: h.num_attention_heads,
            num_key_value_heads: h.num_key_value_heads,
            head_dim: md_usize(md, "qwen3.attention.key_length").ok(),
            max_position_embeddings: h.max_position_embeddings,
            rope_theta: h.rope_theta.unwrap_or_else(default_theta),
            rms_norm_eps: h.rms_norm_eps,
            tie_word_embeddings: tied,
            attention_bias: false,
        })
    }

    pub fn spec(&self) -> Result<LlamaSpec> {
        check_decoder_sizes(
            self.vocab_size,
            self.hidden_size,
            self.intermediate_size,
            self.num_hidden_layers,
            self.num_attention_heads,
            self.num_key_value_heads,
            self.head_dim,
            self.max_position_embeddings,
        )?;
        let head_dim = self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads);
        Ok(LlamaSpec {
            vocab_size: self.vocab_size,
            max_position_embeddings: self.max_position_embeddings,
            rope_inv_freq: Rope::default_inv_freq(head_dim, self.rope_theta),
            tie_word_embeddings: self.tie_word_embeddings,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: self.num_key_value_heads,
            head_dim,
            rms_norm_eps: self.rms_norm_eps,
            qkv_bias: self.attention_bias,
            o_bias: false,
            mlp_bias: false,
            qk_norm: true,
            act: Act::Silu,
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
