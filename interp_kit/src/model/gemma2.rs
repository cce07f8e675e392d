//! Gemma-2: a Llama-style decoder with
//! - embeddings scaled by `sqrt(hidden_size)` (the scale rounded to the model dtype, as HF does);
//! - `(1 + w)` RMSNorms, multiplied in f32 before the cast;
//! - four norms per block: `input_layernorm` -> attention -> `post_attention_layernorm` -> add,
//!   `pre_feedforward_layernorm` -> MLP -> `post_feedforward_layernorm` -> add. `hook_attn_out`
//!   and `hook_mlp_out` are the post-normed outputs (what is added to the residual);
//! - attention logits scaled by `query_pre_attn_scalar^-1/2` and soft-capped,
//!   `attn_logit_softcapping * tanh(s / attn_logit_softcapping)`, before the mask;
//! - alternating sliding-window layers: HF's default `layer_types` makes layer `i` slide when
//!   `(i + 1) % 2 == 1`, i.e. layers 0, 2, 4, ... slide and 1, 3, 5, ... attend globally;
//! - final logits soft-capped with `final_logit_softcapping`; gelu (tanh approximation) MLP; tied head.
use super::config::{check_decoder_sizes, RopeParameters, RopeSpec};
use super::decoder::LlamaSpec;
use super::layers::Act;
use super::load::{md_f64, md_usize, GgufHparams};
use anyhow::{bail, ensure, Result};
use candle_core::quantized::gguf_file::Value;
use serde::Deserialize;
use std::collections::HashMap;

/// Mirrors HF `Gemma2Config` (`config.json`).
#[derive(Clone, Debug, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default = "default_head_dim")]
    pub head_dim: usize,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_scaling: Option<RopeParameters>,
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default = "default_qpas")]
    pub query_pre_attn_scalar: f64,
    /// `null` disables the window.
    #[serde(default = "default_window")]
    pub sliding_window: Option<usize>,
    /// Per layer `sliding_attention` or `full_attention` (absent in older configs: alternate,
    /// starting with a sliding layer).
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    #[serde(default = "default_final_cap")]
    pub final_logit_softcapping: Option<f64>,
    #[serde(default = "default_attn_cap")]
    pub attn_logit_softcapping: Option<f64>,
    #[serde(default)]
    pub hidden_activation: Option<String>,
    /// Older configs name the activation here.
    #[serde(default)]
    pub hidden_act: Option<String>,
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
}

fn default_head_dim() -> usize {
    256
}
fn default_max_pos() -> usize {
    8192
}
fn default_eps() -> f64 {
    1e-6
}
fn default_qpas() -> f64 {
    256.0
}
fn default_window() -> Option<usize> {
    Some(4096)
}
fn default_final_cap() -> Option<f64> {
    Some(30.0)
}
fn default_attn_cap() -> Option<f64> {
    Some(50.0)
}
fn default_true() -> bool {
    true
}

impl Config {
    /// From llama.cpp metadata (`gemma2.*` keys). llama.cpp does not store
    /// `query_pre_attn_scalar`; like llama.cpp, the scale is `head_dim` except for the 27B
    /// model (46 layers), which uses `hidden_size / num_attention_heads`.
    pub fn from_gguf(md: &HashMap<String, Value>, vocab_size: usize, tied: bool) -> Result<Self> {
        let h = GgufHparams::read(md, "gemma2")?;
        let head_dim = md_usize(md, "gemma2.attention.key_length")?;
        let qpas = if h.num_hidden_layers == 46 { (h.hidden_size / h.num_attention_heads.max(1)) as f64 } else { head_dim as f64 };
        Ok(Self {
            vocab_size,
            hidden_size: h.hidden_size,
            intermediate_size: h.intermediate_size,
            num_hidden_layers: h.num_hidden_layers,
            num_attention_heads: h.num_attention_heads,
            num_key_value_heads: Some(h.num_key_value_heads),
            head_dim,
            max_position_embeddings: h.max_position_embeddings,
            rms_norm_eps: h.rms_norm_eps,
            rope_theta: h.rope_theta,
            rope_scaling: None,
            rope_parameters: None,
            attention_bias: false,
            query_pre_attn_scalar: qpas,
            sliding_window: md_usize(md, "gemma2.attention.sliding_window").ok(),
            layer_types: None,
            final_logit_softcapping: md_f64(md, "gemma2.final_logit_softcapping").ok(),
            attn_logit_softcapping: md_f64(md, "gemma2.attn_logit_softcapping").ok(),
            hidden_activation: None,
            hidden_act: None,
            tie_word_embeddings: tied,
        })
    }

    /// The sliding window of each layer.
    pub fn windows(&self) -> Result<Vec<Option<usize>>> {
        let Some(w) = self.sliding_window else { return Ok(vec![None; self.num_hidden_layers]) };
        match &self.layer_types {
            None => Ok((0..self.num_hidden_layers).map(|i| ((i + 1) % 2 == 1).then_some(w)).collect()),
            Some(t) => {
                ensure!(
                    t.len() == self.num_hidden_layers,
                    "layer_types has {} entries for {} layers",
                    t.len(),
                    self.num_hidden_layers
                );
                t.iter()
                    .enumerate()
                    .map(|(i, s)| match s.as_str() {
                        "sliding_attention" => Ok(Some(w)),
                        "full_attention" => Ok(None),
                        other => bail!("layer_types[{i}] = {other:?}: expected sliding_attention or full_attention"),
                    })
                    .collect()
            }
        }
    }

    pub fn spec(&self) -> Result<LlamaSpec> {
        check_decoder_sizes(
            self.vocab_size,
            self.hidden_size,
            self.intermediate_size,
            self.num_hidden_layers,
            self.num_attention_heads,
            self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            Some(self.head_dim),
            self.max_position_embeddings,
        )?;
        let rope = RopeSpec::resolve(
            self.rope_parameters.as_ref(),
            self.rope_scaling.as_ref(),
            self.rope_theta,
            None,
            10000.0,
            self.head_dim,
            self.max_position_embeddings,
        )?;
        ensure!(rope.rot_dim == self.head_dim, "gemma2: partial rotary embedding is not part of this architecture");
        ensure!(self.query_pre_attn_scalar > 0.0, "query_pre_attn_scalar must be positive");
        let act = self.hidden_activation.as_deref().or(self.hidden_act.as_deref()).unwrap_or("gelu_pytorch_tanh");
        Ok(LlamaSpec {
            vocab_size: self.vocab_size,
            max_position_embeddings: self.max_position_embeddings,
            rope_inv_freq: rope.inv_freq(),
            tie_word_embeddings: self.tie_word_embeddings,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            head_dim: self.head_dim,
            rms_norm_eps: self.rms_norm_eps,
            qkv_bias: self.attention_bias,
            o_bias: self.attention_bias,
            mlp_bias: false,
            qk_norm: false,
            act: Act::from_hf(act)?,
            norm_plus_one: true,
            norm_scale_in_f32: true,
            sandwich_norms: true,
            attn_scale: 1.0 / self.query_pre_attn_scalar.sqrt(),
            attn_softcap: self.attn_logit_softcapping,
            final_softcap: self.final_logit_softcapping,
            embed_scale: Some((self.hidden_size as f64).sqrt()),
            sliding_window: self.windows()?,
            qk_permuted: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_layer_types_slide_on_even_layers() {
        let c: Config = serde_json::from_str(
            r#"{"vocab_size": 10, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 4,
                "num_attention_heads": 2, "head_dim": 4, "sliding_window": 3}"#,
        )
        .unwrap();
        assert_eq!(c.windows().unwrap(), vec![Some(3), None, Some(3), None]);
        let s = c.spec().unwrap();
        assert_eq!((s.attn_softcap, s.final_softcap), (Some(50.0), Some(30.0)));
        assert_eq!(s.attn_scale, 1.0 / 16.0);
        let off: Config = serde_json::from_str(
            r#"{"vocab_size": 10, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 2,
                "num_attention_heads": 2, "head_dim": 4, "final_logit_softcapping": null}"#,
        )
        .unwrap();
        assert_eq!(off.spec().unwrap().final_softcap, None);
    }
}
