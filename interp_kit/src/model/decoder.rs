//! The block shape shared by Llama-family decoders (Qwen2, Qwen3, Llama, Gemma-2): pre-norm
//! attention and gated MLP with optional post-norms, and the loader that builds it from
//! HF-named weights. An architecture file only mirrors its `config.json` and fills a
//! [`LlamaSpec`].
use super::forward::FwdCtx;
use super::layers::{Act, Attention, Linear, Mlp, Norm, RmsNorm};
use super::load::Weights;
use crate::hooks::HookPoint;
use anyhow::Result;
use candle_core::Tensor;

/// One transformer block with its hook sites.
pub trait Block: Send + Sync {
    fn forward(&self, x: Tensor, layer: usize, ctx: &mut FwdCtx, kv: &mut Option<(Tensor, Tensor)>) -> Result<Tensor>;
    /// Whether `hook_resid_mid` exists (false for parallel-residual blocks).
    fn has_resid_mid(&self) -> bool {
        true
    }
    /// The block's linear layers (LoRA targets), in a fixed order.
    fn linears(&self) -> Vec<&Linear>;
    /// The same, mutable (merging an adapter into a copy of the model).
    fn linears_mut(&mut self) -> Vec<&mut Linear>;
    /// A copy sharing the weight tensors.
    fn box_clone(&self) -> Box<dyn Block>;
}

#[derive(Clone)]
pub struct DecoderBlock {
    pub ln1: Norm,
    pub attn: Attention,
    /// Gemma-2: norm applied to the attention output before the residual add.
    pub post_attn_norm: Option<Norm>,
    pub ln2: Norm,
    pub mlp: Mlp,
    pub post_mlp_norm: Option<Norm>,
}

impl Block for DecoderBlock {
    fn forward(&self, x: Tensor, l: usize, ctx: &mut FwdCtx, kv: &mut Option<(Tensor, Tensor)>) -> Result<Tensor> {
        let g = ctx.grad;
        let x = ctx.hook(HookPoint::resid_pre(l), x)?;
        let mut a = self.attn.forward(&self.ln1.forward(&x, g)?, ctx, kv)?;
        if let Some(n) = &self.post_attn_norm {
            a = n.forward(&a, g)?;
        }
        let a = ctx.hook(HookPoint::attn_out(l), a)?;
        let x = ctx.hook(HookPoint::resid_mid(l), (x + a)?)?;
        let mut m = self.mlp.forward(&self.ln2.forward(&x, g)?, ctx)?;
        if let Some(n) = &self.post_mlp_norm {
            m = n.forward(&m, g)?;
        }
        let m = ctx.hook(HookPoint::mlp_out(l), m)?;
        ctx.hook(HookPoint::resid_post(l), (x + m)?)
    }
    fn linears(&self) -> Vec<&Linear> {
        let (a, m) = (&self.attn, &self.mlp);
        let mut v = vec![&a.q, &a.k, &a.v, &a.o];
        v.extend(m.gate.as_ref());
        v.extend([&m.up, &m.down]);
        v
    }
    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let (a, m) = (&mut self.attn, &mut self.mlp);
        let mut v = vec![&mut a.q, &mut a.k, &mut a.v, &mut a.o];
        v.extend(m.gate.as_mut());
        v.extend([&mut m.up, &mut m.down]);
        v
    }
    fn box_clone(&self) -> Box<dyn Block> {
        Box::new(self.clone())
    }
}

/// What differs between Llama-family configs, in HF weight-name terms.
#[derive(Clone, Debug)]
pub struct LlamaSpec {
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub rope_theta: f64,
    pub tie_word_embeddings: bool,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub qkv_bias: bool,
    pub qk_norm: bool,
    pub act: Act,
    /// Gemma: RMSNorm weights are stored as `w - 1`.
    pub norm_plus_one: bool,
    /// Gemma-2: post-attention and post-feedforward norms.
    pub sandwich_norms: bool,
    pub attn_scale: f64,
    pub attn_softcap: Option<f64>,
    /// Per layer: the sliding window, if that layer slides.
    pub sliding_window: Vec<Option<usize>>,
}

pub fn rms_norm(w: &dyn Weights, name: &str, eps: f64, plus_one: bool) -> Result<RmsNorm> {
    let mut weight = w.dense(name)?;
    if plus_one {
        weight = (weight + 1.0)?;
    }
    Ok(RmsNorm { weight, eps })
}

pub fn rms(w: &dyn Weights, name: &str, eps: f64, plus_one: bool) -> Result<Norm> {
    Ok(Norm::Rms(rms_norm(w, name, eps, plus_one)?))
}

fn lin(w: &dyn Weights, name: &str, bias: bool, shape: (usize, usize)) -> Result<Linear> {
    w.linear(name, bias, shape)
}

/// Builds the blocks of a Llama-family model from HF-named weights.
pub fn build_blocks(spec: &LlamaSpec, w: &dyn Weights) -> Result<Vec<Box<dyn Block>>> {
    let (d, hd, nh, nkv, ff) = (
        spec.hidden_size,
        spec.head_dim,
        spec.num_attention_heads,
        spec.num_key_value_heads,
        spec.intermediate_size,
    );
    let eps = spec.rms_norm_eps;
    let p1 = spec.norm_plus_one;
    let mut blocks: Vec<Box<dyn Block>> = Vec::with_capacity(spec.num_hidden_layers);
    for l in 0..spec.num_hidden_layers {
        let pre = format!("model.layers.{l}");
        let attn = Attention {
            q: lin(w, &format!("{pre}.self_attn.q_proj"), spec.qkv_bias, (nh * hd, d))?,
            k: lin(w, &format!("{pre}.self_attn.k_proj"), spec.qkv_bias, (nkv * hd, d))?,
            v: lin(w, &format!("{pre}.self_attn.v_proj"), spec.qkv_bias, (nkv * hd, d))?,
            o: lin(w, &format!("{pre}.self_attn.o_proj"), false, (d, nh * hd))?,
            q_norm: if spec.qk_norm {
                Some(rms_norm(w, &format!("{pre}.self_attn.q_norm.weight"), eps, p1)?)
            } else {
                None
            },
            k_norm: if spec.qk_norm {
                Some(rms_norm(w, &format!("{pre}.self_attn.k_norm.weight"), eps, p1)?)
            } else {
                None
            },
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: hd,
            scale: spec.attn_scale,
            softcap: spec.attn_softcap,
            sliding_window: spec.sliding_window.get(l).copied().flatten(),
        };
        let mlp = Mlp {
            gate: Some(lin(w, &format!("{pre}.mlp.gate_proj"), false, (ff, d))?),
            up: lin(w, &format!("{pre}.mlp.up_proj"), false, (ff, d))?,
            down: lin(w, &format!("{pre}.mlp.down_proj"), false, (d, ff))?,
            act: spec.act,
        };
        let block = if spec.sandwich_norms {
            DecoderBlock {
                ln1: rms(w, &format!("{pre}.input_layernorm.weight"), eps, p1)?,
                attn,
                post_attn_norm: Some(rms(w, &format!("{pre}.post_attention_layernorm.weight"), eps, p1)?),
                ln2: rms(w, &format!("{pre}.pre_feedforward_layernorm.weight"), eps, p1)?,
                mlp,
                post_mlp_norm: Some(rms(w, &format!("{pre}.post_feedforward_layernorm.weight"), eps, p1)?),
            }
        } else {
            DecoderBlock {
                ln1: rms(w, &format!("{pre}.input_layernorm.weight"), eps, p1)?,
                attn,
                post_attn_norm: None,
                ln2: rms(w, &format!("{pre}.post_attention_layernorm.weight"), eps, p1)?,
                mlp,
                post_mlp_norm: None,
            }
        };
        blocks.push(Box::new(block));
    }
    Ok(blocks)
}
