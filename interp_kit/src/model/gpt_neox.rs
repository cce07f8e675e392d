//! GPT-NeoX / Pythia: LayerNorm (with bias) pre-norm blocks, partial rotary embedding
//! (`rotary_pct` of each head rotates, rotate-half layout), a fused `query_key_value`
//! projection, exact-gelu MLP with biases, untied `embed_out` head.
//!
//! - `use_parallel_residual = true` (every Pythia model): `x + attn(ln1(x)) + mlp(ln2(x))`, a
//!   [`ParallelBlock`] without `hook_resid_mid`;
//! - `use_parallel_residual = false`: the sequential [`DecoderBlock`] (`hook_resid_mid` exists).
//!
//! HF stores `query_key_value` rows interleaved per head, `[n_heads, 3, head_dim]`; they are
//! reordered to `[q; k; v]` at load time (llama.cpp's converter writes GGUF files in that order
//! already).
use super::config::{check_decoder_sizes, RopeParameters, RopeSpec};
use super::decoder::{Block, DecoderBlock, ParallelBlock};
use super::layers::{Act, Attention, LayerNorm, Linear, Mlp, Norm, QkvProj, Rope};
use super::load::{md_f64, md_usize, Layout, Weights};
use super::{dense_checked, lm_head, Embedding, ModelInfo, Parts, ROPE_MAX_POSITIONS};
use anyhow::Result;
use candle_core::quantized::gguf_file::Value;
use candle_core::{DType, Device};
use serde::Deserialize;
use std::collections::HashMap;

/// Mirrors HF `GPTNeoXConfig` (`config.json`): the hub form (`rotary_pct`, `rotary_emb_base`)
/// and the transformers-v5 form (`rope_parameters`) are both read.
#[derive(Clone, Debug, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "default_true")]
    pub use_parallel_residual: bool,
    /// Fraction of each head that rotates (HF default 0.25).
    #[serde(default)]
    pub rotary_pct: Option<f64>,
    #[serde(default)]
    pub rotary_emb_base: Option<f64>,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_scaling: Option<RopeParameters>,
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
    #[serde(default = "default_true")]
    pub attention_bias: bool,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_max_pos() -> usize {
    2048
}
fn default_eps() -> f64 {
    1e-5
}
fn default_true() -> bool {
    true
}

impl Config {
    /// From llama.cpp metadata (`gptneox.*` keys): the rotary fraction comes from
    /// `rope.dimension_count`, theta from `rope.freq_base` (10000 when absent, as in llama.cpp).
    pub fn from_gguf(md: &HashMap<String, Value>, vocab_size: usize, tied: bool) -> Result<Self> {
        let k = |s: &str| format!("gptneox.{s}");
        let d = md_usize(md, &k("embedding_length"))?;
        let nh = md_usize(md, &k("attention.head_count"))?;
        let rot = md_usize(md, &k("rope.dimension_count"))?;
        Ok(Self {
            vocab_size,
            hidden_size: d,
            num_hidden_layers: md_usize(md, &k("block_count"))?,
            num_attention_heads: nh,
            intermediate_size: md_usize(md, &k("feed_forward_length"))?,
            hidden_act: default_act(),
            max_position_embeddings: md_usize(md, &k("context_length"))?,
            layer_norm_eps: md_f64(md, &k("attention.layer_norm_epsilon"))?,
            tie_word_embeddings: tied,
            use_parallel_residual: md.get(&k("use_parallel_residual")).and_then(|v| v.to_bool().ok()).unwrap_or(true),
            rotary_pct: Some(rot as f64 / (d / nh.max(1)) as f64),
            rotary_emb_base: md_f64(md, &k("rope.freq_base")).ok(),
            rope_theta: None,
            rope_scaling: None,
            rope_parameters: None,
            attention_bias: true,
        })
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    pub fn rope(&self) -> Result<RopeSpec> {
        RopeSpec::resolve(
            self.rope_parameters.as_ref(),
            self.rope_scaling.as_ref(),
            self.rotary_emb_base.or(self.rope_theta),
            Some(self.rotary_pct.unwrap_or(0.25)),
            10000.0,
            self.head_dim(),
            self.max_position_embeddings,
        )
    }

    /// Builds the model from HF-named weights (`gpt_neox.*`, `embed_out`).
    pub(crate) fn parts(&self, w: &dyn Weights, device: &Device, dtype: DType) -> Result<Parts> {
        let (d, nh, ff, v) = (self.hidden_size, self.num_attention_heads, self.intermediate_size, self.vocab_size);
        check_decoder_sizes(v, d, ff, self.num_hidden_layers, nh, nh, None, self.max_position_embeddings)?;
        let hd = d / nh;
        let rope = self.rope()?;
        let act = Act::from_hf(&self.hidden_act)?;
        let eps = self.layer_norm_eps;
        let embed = dense_checked(w, "gpt_neox.embed_in.weight", v, d, "vocab_size, hidden_size")?;
        let ab = self.attention_bias;
        // HF row (h, part, i) -> position part*d + h*hd + i in [q; k; v].
        let mut perm = vec![0usize; 3 * d];
        for h in 0..nh {
            for part in 0..3 {
                for i in 0..hd {
                    perm[part * d + h * hd + i] = h * 3 * hd + part * hd + i;
                }
            }
        }
        let mut blocks: Vec<Box<dyn Block>> = Vec::with_capacity(self.num_hidden_layers);
        for l in 0..self.num_hidden_layers {
            let pre = format!("gpt_neox.layers.{l}");
            let mut qkv: Linear = w.linear(&format!("{pre}.attention.query_key_value"), ab, (3 * d, d))?;
            if w.layout() == Layout::Hf {
                qkv = qkv.permute_rows(&perm)?;
            }
            let attn = Attention {
                qkv: QkvProj::Fused(qkv),
                o: w.linear(&format!("{pre}.attention.dense"), ab, (d, d))?,
                q_norm: None,
                k_norm: None,
                n_heads: nh,
                n_kv_heads: nh,
                head_dim: hd,
                scale: 1.0 / (hd as f64).sqrt(),
                softcap: None,
                sliding_window: None,
            };
            let mlp = Mlp {
                gate: None,
                up: w.linear(&format!("{pre}.mlp.dense_h_to_4h"), true, (ff, d))?,
                down: w.linear(&format!("{pre}.mlp.dense_4h_to_h"), true, (d, ff))?,
                act,
            };
            let ln1 = layer_norm(w, &format!("{pre}.input_layernorm"), eps)?;
            let ln2 = layer_norm(w, &format!("{pre}.post_attention_layernorm"), eps)?;
            if self.use_parallel_residual {
                blocks.push(Box::new(ParallelBlock { ln1, attn, ln2, mlp }));
            } else {
                blocks.push(Box::new(DecoderBlock { ln1, attn, post_attn_norm: None, ln2, mlp, post_mlp_norm: None }));
            }
        }
        let norm = layer_norm(w, "gpt_neox.final_layer_norm", eps)?;
        let head = lm_head(w, &["embed_out", "lm_head"], self.tie_word_embeddings, &embed, v, d)?;
        let rope_max = self.max_position_embeddings.min(ROPE_MAX_POSITIONS);
        Ok(Parts {
            embed: Embedding::dense(embed, None),
            pos_embed: None,
            blocks,
            norm,
            lm_head: head,
            final_softcap: None,
            rope: Some(Rope::new(&rope.inv_freq(), rope_max, device, dtype)?),
            info: ModelInfo {
                arch: "gpt_neox".into(),
                n_layers: self.num_hidden_layers,
                d_model: d,
                n_heads: nh,
                n_kv_heads: nh,
                head_dim: hd,
                vocab_size: v,
                max_positions: rope_max,
                source: w.origin(),
                quantized: false,
                resid_mid: !self.use_parallel_residual,
            },
        })
    }
}

/// A LayerNorm with weight and bias named `{prefix}.weight` / `{prefix}.bias`.
pub(crate) fn layer_norm(w: &dyn Weights, prefix: &str, eps: f64) -> Result<Norm> {
    Ok(Norm::Layer(LayerNorm {
        weight: w.dense(&format!("{prefix}.weight"))?,
        bias: w.dense(&format!("{prefix}.bias"))?,
        eps,
    }))
}
