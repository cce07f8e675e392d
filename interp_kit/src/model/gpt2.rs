//! GPT-2: learned absolute position embeddings (`wpe`), LayerNorm pre-norm blocks, a fused
//! `c_attn` projection, `gelu_new` MLP with biases, head tied to `wte`.
//!
//! HF stores GPT-2's projections as `Conv1D` weights, `[in, out]` (the transpose of
//! `nn.Linear`); they are transposed at load time (llama.cpp's converter writes GGUF files
//! transposed already). Positions follow HF under left padding: each token's position is its
//! index within its prompt (`cumsum(attention_mask) - 1`), so a padded row gets the same
//! position embeddings as the prompt alone.
use super::config::{check_sizes, MAX_HEADS, MAX_LAYERS, MAX_VOCAB, MAX_WIDTH};
use super::decoder::{Block, DecoderBlock};
use super::gpt_neox::layer_norm;
use super::layers::{Act, Attention, Linear, Mlp, QkvProj, Weight};
use super::load::{md_f64, md_usize, Layout, Weights};
use super::{dense_checked, lm_head, Embedding, ModelInfo, Parts};
use anyhow::{bail, ensure, Result};
use candle_core::quantized::gguf_file::Value;
use candle_core::{DType, Device};
use serde::Deserialize;
use std::collections::HashMap;

/// Mirrors HF `GPT2Config` (`config.json`).
#[derive(Clone, Debug, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    #[serde(default = "default_n_positions")]
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    /// MLP width (default `4 * n_embd`).
    #[serde(default)]
    pub n_inner: Option<usize>,
    #[serde(default = "default_act")]
    pub activation_function: String,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "default_true")]
    pub scale_attn_weights: bool,
    /// Divides layer `l`'s attention scores by `l + 1` (not used by the OpenAI checkpoints).
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub add_cross_attention: bool,
}

fn default_n_positions() -> usize {
    1024
}
fn default_act() -> String {
    "gelu_new".into()
}
fn default_eps() -> f64 {
    1e-5
}
fn default_true() -> bool {
    true
}

impl Config {
    /// From llama.cpp metadata (`gpt2.*` keys).
    pub fn from_gguf(md: &HashMap<String, Value>, vocab_size: usize, tied: bool) -> Result<Self> {
        let k = |s: &str| format!("gpt2.{s}");
        Ok(Self {
            vocab_size,
            n_positions: md_usize(md, &k("context_length"))?,
            n_embd: md_usize(md, &k("embedding_length"))?,
            n_layer: md_usize(md, &k("block_count"))?,
            n_head: md_usize(md, &k("attention.head_count"))?,
            n_inner: Some(md_usize(md, &k("feed_forward_length"))?),
            activation_function: default_act(),
            layer_norm_epsilon: md_f64(md, &k("attention.layer_norm_epsilon"))?,
            scale_attn_weights: true,
            scale_attn_by_inverse_layer_idx: false,
            tie_word_embeddings: tied,
            add_cross_attention: false,
        })
    }

    /// Builds the model from HF-named weights (`transformer.*`, or without the prefix as in
    /// the original `gpt2` checkpoints).
    pub(crate) fn parts(&self, w: &dyn Weights, _device: &Device, _dtype: DType) -> Result<Parts> {
        let (d, nh, v) = (self.n_embd, self.n_head, self.vocab_size);
        check_sizes(&[
            ("vocab_size", v, MAX_VOCAB),
            ("n_embd", d, MAX_WIDTH),
            ("n_layer", self.n_layer, MAX_LAYERS),
            ("n_head", nh, MAX_HEADS),
            ("n_inner", self.n_inner.unwrap_or(d.saturating_mul(4)), MAX_WIDTH),
            ("n_positions", self.n_positions, MAX_WIDTH),
        ])?;
        ensure!(d % nh == 0, "n_embd {d} is not a multiple of n_head {nh}");
        if self.add_cross_attention {
            bail!("GPT-2 with cross-attention (an encoder-decoder) is not supported");
        }
        let hd = d / nh;
        let ff = self.n_inner.unwrap_or(4 * d);
        let act = Act::from_hf(&self.activation_function)?;
        let eps = self.layer_norm_epsilon;
        let p = if w.layout() == Layout::Hf && !w.contains("transformer.wte.weight") && w.contains("wte.weight") {
            ""
        } else {
            "transformer."
        };
        let embed = dense_checked(w, &format!("{p}wte.weight"), v, d, "vocab_size, n_embd")?;
        let wpe = dense_checked(w, &format!("{p}wpe.weight"), self.n_positions, d, "n_positions, n_embd")?;
        let mut blocks: Vec<Box<dyn Block>> = Vec::with_capacity(self.n_layer);
        for l in 0..self.n_layer {
            let pre = format!("{p}h.{l}");
            let mut scale = if self.scale_attn_weights { 1.0 / (hd as f64).sqrt() } else { 1.0 };
            if self.scale_attn_by_inverse_layer_idx {
                scale /= (l + 1) as f64;
            }
            let attn = Attention {
                qkv: QkvProj::Fused(conv1d(w, &format!("{pre}.attn.c_attn"), d, 3 * d)?),
                o: conv1d(w, &format!("{pre}.attn.c_proj"), d, d)?,
                q_norm: None,
                k_norm: None,
                n_heads: nh,
                n_kv_heads: nh,
                head_dim: hd,
                scale,
                softcap: None,
                sliding_window: None,
            };
            let mlp = Mlp {
                gate: None,
                up: conv1d(w, &format!("{pre}.mlp.c_fc"), d, ff)?,
                down: conv1d(w, &format!("{pre}.mlp.c_proj"), ff, d)?,
                act,
            };
            blocks.push(Box::new(DecoderBlock {
                ln1: layer_norm(w, &format!("{pre}.ln_1"), eps)?,
                attn,
                post_attn_norm: None,
                ln2: layer_norm(w, &format!("{pre}.ln_2"), eps)?,
                mlp,
                post_mlp_norm: None,
            }));
        }
        let norm = layer_norm(w, &format!("{p}ln_f"), eps)?;
        let head = lm_head(w, &["lm_head"], self.tie_word_embeddings, &embed, v, d)?;
        Ok(Parts {
            embed: Embedding::dense(embed, None),
            pos_embed: Some(wpe),
            blocks,
            norm,
            lm_head: head,
            final_softcap: None,
            rope: None,
            info: ModelInfo {
                arch: "gpt2".into(),
                n_layers: self.n_layer,
                d_model: d,
                n_heads: nh,
                n_kv_heads: nh,
                head_dim: hd,
                vocab_size: v,
                max_positions: self.n_positions,
                source: w.origin(),
                quantized: false,
                resid_mid: true,
            },
        })
    }
}

/// A GPT-2 `Conv1D` (`y = x W + b`, `W: [in, out]`) as a [`Linear`] (`[out, in]`).
fn conv1d(w: &dyn Weights, prefix: &str, n_in: usize, n_out: usize) -> Result<Linear> {
    match w.layout() {
        Layout::LlamaCpp => w.linear(prefix, true, (n_out, n_in)),
        Layout::Hf => {
            let name = format!("{prefix}.weight");
            let t = dense_checked(w, &name, n_in, n_out, "Conv1D [in, out]")?;
            let bias = w.dense(&format!("{prefix}.bias"))?;
            ensure!(bias.dims() == [n_out], "{}: {prefix}.bias has shape {:?}, expected [{n_out}]", w.origin(), bias.dims());
            Ok(Linear { weight: Weight::from_dense(t.t()?.contiguous()?), bias: Some(bias), name: prefix.to_string() })
        }
    }
}
