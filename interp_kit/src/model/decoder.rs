//! Transformer blocks. [`DecoderBlock`] is the sequential pre-norm block shared by the
//! Llama family (Qwen2, Qwen3, Llama, Gemma-2 with its extra post-norms), GPT-2 and GPT-NeoX
//! without parallel residual; [`ParallelBlock`] is GPT-NeoX's parallel residual block. The
//! Llama-family loader builds blocks from HF-named weights: such an architecture file only
//! mirrors its `config.json` and fills a [`LlamaSpec`].
use super::forward::FwdCtx;
use super::layers::{Act, Attention, Linear, Mlp, Norm, QkvProj, RmsNorm};
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
        attn_mlp_linears(&self.attn, &self.mlp)
    }
    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        attn_mlp_linears_mut(&mut self.attn, &mut self.mlp)
    }
    fn box_clone(&self) -> Box<dyn Block> {
        Box::new(self.clone())
    }
}

fn attn_mlp_linears<'a>(a: &'a Attention, m: &'a Mlp) -> Vec<&'a Linear> {
    let mut v = a.qkv.linears();
    v.push(&a.o);
    v.extend(m.gate.as_ref());
    v.extend([&m.up, &m.down]);
    v
}

fn attn_mlp_linears_mut<'a>(a: &'a mut Attention, m: &'a mut Mlp) -> Vec<&'a mut Linear> {
    let mut v = a.qkv.linears_mut();
    v.push(&mut a.o);
    v.extend(m.gate.as_mut());
    v.extend([&mut m.up, &mut m.down]);
    v
}

/// GPT-NeoX's parallel residual block (`use_parallel_residual = true`, all Pythia models):
/// `x + attn(ln1(x)) + mlp(ln2(x))`. Attention and MLP both read the block input, so no
/// residual state exists between them: **`hook_resid_mid` does not exist** in this block, and
/// asking for it (read, write or gradient) is an error ([`Model::check_points`]), never a made-up
/// tensor. `hook_resid_pre`, `hook_attn_out`, `hook_mlp_out` and `hook_resid_post` exist.
///
/// [`Model::check_points`]: crate::model::Model::check_points
#[derive(Clone)]
pub struct ParallelBlock {
    pub ln1: Norm,
    pub attn: Attention,
    pub ln2: Norm,
    pub mlp: Mlp,
}

impl Block for ParallelBlock {
    fn forward(&self, x: Tensor, l: usize, ctx: &mut FwdCtx, kv: &mut Option<(Tensor, Tensor)>) -> Result<Tensor> {
        let g = ctx.grad;
        let x = ctx.hook(HookPoint::resid_pre(l), x)?;
        let a = self.attn.forward(&self.ln1.forward(&x, g)?, ctx, kv)?;
        let a = ctx.hook(HookPoint::attn_out(l), a)?;
        let m = self.mlp.forward(&self.ln2.forward(&x, g)?, ctx)?;
        let m = ctx.hook(HookPoint::mlp_out(l), m)?;
        // HF GPTNeoXLayer: mlp_output + attn_output + hidden_states, in this order.
        ctx.hook(HookPoint::resid_post(l), ((m + a)? + x)?)
    }
    fn has_resid_mid(&self) -> bool {
        false
    }
    fn linears(&self) -> Vec<&Linear> {
        attn_mlp_linears(&self.attn, &self.mlp)
    }
    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        attn_mlp_linears_mut(&mut self.attn, &mut self.mlp)
    }
    fn box_clone(&self) -> Box<dyn Block> {
        Box::new(self.clone())
    }
}

/// What differs between Llama-family configs (Llama, Qwen2, Qwen3, Gemma-2), in HF
/// weight-name terms.
#[derive(Clone, Debug)]
pub struct LlamaSpec {
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    /// Rotary inverse frequencies (`head_dim / 2` entries), already rescaled (llama3 rope).
    pub rope_inv_freq: Vec<f32>,
    pub tie_word_embeddings: bool,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    /// Biases on q/k/v.
    pub qkv_bias: bool,
    /// Bias on o_proj (Llama/Gemma `attention_bias` covers it; Qwen2 has q/k/v biases only).
    pub o_bias: bool,
    /// Biases on the MLP projections (Llama `mlp_bias`).
    pub mlp_bias: bool,
    pub qk_norm: bool,
    pub act: Act,
    /// Gemma (HF checkpoints): RMSNorm weights are stored as `w - 1` and applied as `1 + w`.
    /// llama.cpp's converter already adds the 1, so GGUF Gemma files set this to false.
    pub norm_plus_one: bool,
    /// Gemma: the norm weight multiplies in f32 before the cast ([`RmsNorm::scale_in_f32`]).
    pub norm_scale_in_f32: bool,
    /// Gemma-2: post-attention and post-feedforward norms.
    pub sandwich_norms: bool,
    pub attn_scale: f64,
    pub attn_softcap: Option<f64>,
    /// Gemma-2: `softcap * tanh(logits / softcap)` on the final logits.
    pub final_softcap: Option<f64>,
    /// Gemma: embeddings multiplied by `sqrt(hidden_size)` (in the model dtype).
    pub embed_scale: Option<f64>,
    /// Per layer: the sliding window, if that layer slides.
    pub sliding_window: Vec<Option<usize>>,
    /// GGUF `llama` files: llama.cpp's converter permuted the q/k rows for its interleaved
    /// rope (`LlamaModel.permute`); they are un-permuted at load time.
    pub qk_permuted: bool,
}

pub fn rms_norm(w: &dyn Weights, name: &str, eps: f64, plus_one: bool) -> Result<RmsNorm> {
    let mut weight = w.dense(name)?;
    if plus_one {
        weight = (weight + 1.0)?;
    }
    Ok(RmsNorm { weight, eps, scale_in_f32: false })
}

pub fn rms(w: &dyn Weights, name: &str, eps: f64, plus_one: bool) -> Result<Norm> {
    Ok(Norm::Rms(rms_norm(w, name, eps, plus_one)?))
}

/// A Gemma/Llama RMSNorm as the spec says: `1 + w` folded in, f32 weight for Gemma.
fn spec_rms(w: &dyn Weights, name: &str, spec: &LlamaSpec) -> Result<RmsNorm> {
    if spec.norm_scale_in_f32 {
        // (1 + w) in f32, as HF Gemma2RMSNorm computes it.
        let mut weight = w.dense_f32(name)?;
        if spec.norm_plus_one {
            weight = (weight + 1.0)?;
        }
        Ok(RmsNorm { weight, eps: spec.rms_norm_eps, scale_in_f32: true })
    } else {
        rms_norm(w, name, spec.rms_norm_eps, spec.norm_plus_one)
    }
}

/// The row order that undoes llama.cpp's q/k permutation for `n_heads` heads of `head_dim`:
/// HF row `h*hd + j*hd/2 + i` is GGUF row `h*hd + 2i + j`.
pub fn unpermute_qk_rows(n_heads: usize, head_dim: usize) -> Vec<usize> {
    let half = head_dim / 2;
    let mut perm = Vec::with_capacity(n_heads * head_dim);
    for h in 0..n_heads {
        for j in 0..2 {
            for i in 0..half {
                perm.push(h * head_dim + 2 * i + j);
            }
        }
    }
    perm
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
    anyhow::ensure!(
        nkv > 0 && nh % nkv == 0,
        "{}: {nh} attention heads cannot be shared by {nkv} key/value heads",
        w.origin()
    );
    let norm = |name: String| -> Result<Norm> { Ok(Norm::Rms(spec_rms(w, &name, spec)?)) };
    let mut blocks: Vec<Box<dyn Block>> = Vec::with_capacity(spec.num_hidden_layers);
    for l in 0..spec.num_hidden_layers {
        let pre = format!("model.layers.{l}");
        let mut q = lin(w, &format!("{pre}.self_attn.q_proj"), spec.qkv_bias, (nh * hd, d))?;
        let mut k = lin(w, &format!("{pre}.self_attn.k_proj"), spec.qkv_bias, (nkv * hd, d))?;
        if spec.qk_permuted {
            q = q.permute_rows(&unpermute_qk_rows(nh, hd))?;
            k = k.permute_rows(&unpermute_qk_rows(nkv, hd))?;
        }
        let attn = Attention {
            qkv: QkvProj::Split { q, k, v: lin(w, &format!("{pre}.self_attn.v_proj"), spec.qkv_bias, (nkv * hd, d))? },
            o: lin(w, &format!("{pre}.self_attn.o_proj"), spec.o_bias, (d, nh * hd))?,
            q_norm: if spec.qk_norm { Some(spec_rms(w, &format!("{pre}.self_attn.q_norm.weight"), spec)?) } else { None },
            k_norm: if spec.qk_norm { Some(spec_rms(w, &format!("{pre}.self_attn.k_norm.weight"), spec)?) } else { None },
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: hd,
            scale: spec.attn_scale,
            softcap: spec.attn_softcap,
            sliding_window: spec.sliding_window.get(l).copied().flatten(),
        };
        let mlp = Mlp {
            gate: Some(lin(w, &format!("{pre}.mlp.gate_proj"), spec.mlp_bias, (ff, d))?),
            up: lin(w, &format!("{pre}.mlp.up_proj"), spec.mlp_bias, (ff, d))?,
            down: lin(w, &format!("{pre}.mlp.down_proj"), spec.mlp_bias, (d, ff))?,
            act: spec.act,
        };
        let block = if spec.sandwich_norms {
            DecoderBlock {
                ln1: norm(format!("{pre}.input_layernorm.weight"))?,
                attn,
                post_attn_norm: Some(norm(format!("{pre}.post_attention_layernorm.weight"))?),
                ln2: norm(format!("{pre}.pre_feedforward_layernorm.weight"))?,
                mlp,
                post_mlp_norm: Some(norm(format!("{pre}.post_feedforward_layernorm.weight"))?),
            }
        } else {
            DecoderBlock {
                ln1: norm(format!("{pre}.input_layernorm.weight"))?,
                attn,
                post_attn_norm: None,
                ln2: norm(format!("{pre}.post_attention_layernorm.weight"))?,
                mlp,
                post_mlp_norm: None,
            }
        };
        blocks.push(Box::new(block));
    }
    Ok(blocks)
}

/// The final norm of a Llama-family model.
pub fn final_norm(spec: &LlamaSpec, w: &dyn Weights) -> Result<Norm> {
    Ok(Norm::Rms(spec_rms(w, "model.norm.weight", spec)?))
}
