//! The hookable, differentiable transformer runtime.
//!
//! ```no_run
//! use interp_kit::prelude::*;
//! let model = Model::load("path/to/model.gguf", &Device::Cpu)?;
//! let ids = vec![vec![1u32, 2, 3]];
//! let hooks = Hooks::new().cache(HookPoint::resid_post(3), Positions::Last);
//! let out = model.forward(&ids, &hooks)?;
//! let h = out.activations.row(HookPoint::resid_post(3), 0)?; // [1, d_model]
//! # anyhow::Ok(())
//! ```
#[cfg(target_arch = "x86_64")]
mod amx;
mod arch;
pub mod bf16;
pub mod config;
pub mod decoder;
pub mod f32mm;
pub mod forward;
pub mod fused;
pub mod gemma2;
pub mod gpt2;
pub mod gpt_neox;
pub mod kquant;
pub mod layers;
pub mod llama;
pub mod load;
pub mod q8_packed;
pub mod qgemm;
pub mod quantize;
pub mod qwen2;
pub mod qwen3;

use crate::hooks::{ActivationCache, HookPoint, Hooks};
use crate::text::tokenizer::Tokenizer;
use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, IndexOp, Tensor};
pub use bf16::ComputeDtype;
use decoder::Block;
use forward::{CallSpec, FwdCtx, Pass};
use layers::{Linear, Norm, Rope, Weight};
use load::{GgufWeights, Layout, SafetensorsWeights, Weights};
use std::path::{Path, PathBuf};

/// Shape facts about a loaded model.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ModelInfo {
    /// HF `model_type`: `qwen2`, `qwen3`, `llama`, `gemma2`, `gpt_neox`, `gpt2`.
    pub arch: String,
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub max_positions: usize,
    /// Where the weights came from (path or hub id).
    pub source: String,
    /// Whether matrices are kept quantized for inference (GGUF).
    pub quantized: bool,
    /// Whether the blocks have `hook_resid_mid` (false for GPT-NeoX's parallel residual).
    pub resid_mid: bool,
}

/// Token embedding (optionally scaled, e.g. Gemma's `sqrt(d)`: the scale is rounded to the
/// model dtype before multiplying, as HF does).
#[derive(Clone)]
pub struct Embedding {
    /// `[vocab, d]`: dense, or kept quantized (a GGUF file's table when the output head is its
    /// own matrix and the model is on the CPU: Q8_0, dequantized row by row on lookup, the same
    /// values as the dense table at a quarter of its memory).
    pub table: Weight,
    pub scale: Option<f64>,
}

impl Embedding {
    pub fn dense(weight: Tensor, scale: Option<f64>) -> Self {
        Self { table: Weight::from_dense(weight), scale }
    }

    /// The rows of `ids` (u32, 1-d) as `[len, d]` in the model dtype.
    pub fn lookup(&self, ids: &Tensor) -> Result<Tensor> {
        match &self.table {
            Weight::Dense(t, _) => Ok(t.index_select(ids, 0)?),
            Weight::Quant { q, dtype, .. } if qgemm::supports(q) => {
                let ids: Vec<u32> = ids.to_vec1()?;
                let d = q.shape().dims2()?.1;
                let rows = qgemm::dequantize_rows(q, &ids).context("token embedding")?;
                Ok(Tensor::from_vec(rows, (ids.len(), d), &Device::Cpu)?.to_dtype(*dtype)?)
            }
            w => Ok(w.dense()?.index_select(ids, 0)?),
        }
    }
}

/// Which logits a call computes (the vocabulary projection is costly).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitsAt {
    All,
    Last,
    None,
}

/// A model with hook points, KV cache and gradients.
///
/// `clone()` is cheap: the copy shares the (immutable) weight tensors. A quantized weight's
/// dequantized copy for the gradient path is shared if it existed at the time of the clone and
/// is otherwise made separately by each copy that needs it.
pub struct Model {
    pub info: ModelInfo,
    pub tokenizer: Option<Tokenizer>,
    pub device: Device,
    pub dtype: DType,
    /// Inference with the GGUF's quantized matmuls (fast, default) or with dequantized f32
    /// weights (exact, slower; the gradient path always uses dense weights).
    pub quantized_inference: bool,
    /// Prefill (16 rows or more) multiplies by the Q8_0 weights with activations quantized to
    /// int8 per 32-value block, as decode and llama.cpp do, in the tiled VNNI kernel
    /// (`model::q8_packed`), and by the Q4_K / Q6_K weights in their GGUF blocks with activations
    /// quantized per 256 values (`model::kquant`, llama.cpp's `Q8_K`). Only on CPUs with AVX-512 VNNI
    /// (elsewhere it changes nothing). Default false: prefill keeps f32 activations by the
    /// dequantized weights (`layers::QuantPath::DequantGemm`). The error it adds is measured in
    /// BENCHMARKS.md.
    pub int8_prefill: bool,
    /// The arithmetic of the frozen linear layers on the gradient path (gradients, LoRA
    /// training): f32 (default, the reference) or bf16 operands with f32 sums (`model::bf16`:
    /// the kit's AVX-512 BF16 kernel where the CPU has it). The residual stream, norms,
    /// attention, adapters and the loss stay f32. Inference is unaffected. The error it adds
    /// is tested on the embedded model and measured in BENCHMARKS.md.
    pub compute_dtype: ComputeDtype,
    pub(crate) embed: Embedding,
    /// Learned absolute position embeddings `[n_positions, d]` (GPT-2).
    pub(crate) pos_embed: Option<Tensor>,
    pub(crate) blocks: Vec<Box<dyn Block>>,
    pub(crate) norm: Norm,
    pub(crate) lm_head: Linear,
    pub(crate) final_softcap: Option<f64>,
    /// Rotary tables (`None` for GPT-2).
    pub(crate) rope: Option<Rope>,
    /// Why the tokenizer could not be loaded, if it could not (reported by [`Model::tok`]).
    pub(crate) tokenizer_error: Option<String>,
    /// [`kit_copy`] of the copy of the kit that built the model (see [`Model::check_kit_copy`]).
    pub(crate) kit_copy: usize,
}

impl Clone for Model {
    fn clone(&self) -> Self {
        Self {
            info: self.info.clone(),
            tokenizer: self.tokenizer.clone(),
            device: self.device.clone(),
            dtype: self.dtype,
            quantized_inference: self.quantized_inference,
            int8_prefill: self.int8_prefill,
            compute_dtype: self.compute_dtype,
            embed: self.embed.clone(),
            pos_embed: self.pos_embed.clone(),
            blocks: self.blocks.iter().map(|b| b.box_clone()).collect(),
            norm: self.norm.clone(),
            lm_head: self.lm_head.clone(),
            final_softcap: self.final_softcap,
            rope: self.rope.clone(),
            tokenizer_error: self.tokenizer_error.clone(),
            // The blocks keep running the code of the copy that built them.
            kit_copy: self.kit_copy,
        }
    }
}

/// The KV cache of a batch: a value the caller holds, clones cheaply, and may pass to later
/// calls with other hooks (prefill with steering, decode without: the introspection protocol).
#[derive(Clone, Debug)]
pub struct KvCache {
    pub(crate) layers: Vec<Option<(Tensor, Tensor)>>,
    /// Left padding columns per row.
    pub(crate) pad: Vec<usize>,
    /// Columns held (padding included).
    pub(crate) cols: usize,
}

impl KvCache {
    pub fn new(model: &Model) -> Self {
        Self { layers: vec![None; model.blocks.len()], pad: vec![], cols: 0 }
    }
    pub fn is_empty(&self) -> bool {
        self.cols == 0
    }
    pub fn batch_size(&self) -> usize {
        self.pad.len()
    }
    /// Tokens held for `row` (padding excluded).
    pub fn len(&self, row: usize) -> usize {
        self.cols - self.pad.get(row).copied().unwrap_or(0)
    }

    /// Keeps only the rows `keep` (in that order; row `i` of the result is row `keep[i]` now),
    /// and drops the left-padding columns that every kept row has. Positions do not change:
    /// a row's tokens keep their prompt-relative indices.
    pub fn retain_rows(&mut self, keep: &[usize]) -> Result<()> {
        let b = self.batch_size();
        ensure!(!keep.is_empty(), "retain_rows: keep at least one row");
        if let Some(bad) = keep.iter().find(|&&r| r >= b) {
            bail!("retain_rows: row {bad} of a KV cache with {b} rows");
        }
        let pad: Vec<usize> = keep.iter().map(|&r| self.pad[r]).collect();
        let trim = pad.iter().copied().min().unwrap_or(0);
        // One index tensor for every layer (all on the model's device).
        if let Some(device) = self.layers.iter().flatten().next().map(|kv| kv.0.device().clone()) {
            let ids: Vec<u32> = keep.iter().map(|&r| r as u32).collect();
            let idx = Tensor::new(ids.as_slice(), &device)?;
            let cut = |t: &Tensor| -> Result<Tensor> {
                let t = t.index_select(&idx, 0)?;
                let cols = t.dim(2)?;
                Ok(if trim > 0 { t.narrow(2, trim, cols - trim)?.contiguous()? } else { t })
            };
            for kv in self.layers.iter_mut().flatten() {
                *kv = (cut(&kv.0)?, cut(&kv.1)?);
            }
        }
        self.pad = pad.iter().map(|p| p - trim).collect();
        self.cols -= trim;
        Ok(())
    }
}

impl KvCache {
    /// Keys and values of block `layer` for every row: `([B, n_kv_heads, cols, head_dim], ..)`,
    /// left padding included (see [`KvCache::row_kv`]). Keys are stored after rotary embedding
    /// (and the k-norm where the model has one), as attention reads them.
    pub fn layer_kv(&self, layer: usize) -> Result<(Tensor, Tensor)> {
        let n = self.layers.len();
        let kv = self
            .layers
            .get(layer)
            .with_context(|| format!("KV cache: layer {layer} is out of range, the cache has {n} layers"))?
            .as_ref()
            .with_context(|| format!("KV cache: layer {layer} holds nothing (prefill first)"))?;
        Ok(kv.clone())
    }
    /// Keys and values of block `layer` for `row` without its padding: `[n_kv_heads, len, head_dim]`
    /// each, position `i` being the row's token `i`.
    pub fn row_kv(&self, layer: usize, row: usize) -> Result<(Tensor, Tensor)> {
        let (k, v) = self.layer_kv(layer)?;
        let b = self.batch_size();
        ensure!(row < b, "KV cache: row {row} is out of range ({b} rows)");
        let pad = self.pad[row];
        let len = self.cols - pad;
        Ok((k.i(row)?.narrow(1, pad, len)?.contiguous()?, v.i(row)?.narrow(1, pad, len)?.contiguous()?))
    }
}

/// The result of a forward call.
pub struct Output {
    /// `[B, T, V]` for [`LogitsAt::All`] (left-padded), `[B, 1, V]` for `Last`.
    pub logits: Option<Tensor>,
    /// What the read hooks cached.
    pub activations: ActivationCache,
    /// Prompt-relative token index of every column, `None` for padding.
    pub token_index: Vec<Vec<Option<usize>>>,
}

impl Output {
    /// The logits of row `row` without padding: `[len, V]` (or `[1, V]` for `Last`).
    pub fn logits_row(&self, row: usize) -> Result<Tensor> {
        let l = self.logits.as_ref().context("this call computed no logits")?;
        let (_, t, _) = l.dims3()?;
        let idx = &self.token_index[row];
        if t == idx.len() {
            let pad = idx.iter().take_while(|i| i.is_none()).count();
            Ok(l.i(row)?.narrow(0, pad, t - pad)?)
        } else {
            Ok(l.i(row)?)
        }
    }
    /// Logits at each row's last token: `[B, V]`.
    pub fn last_logits(&self) -> Result<Tensor> {
        let l = self.logits.as_ref().context("this call computed no logits")?;
        let t = l.dim(1)?;
        Ok(l.i((.., t - 1))?.contiguous()?)
    }
}

/// Where a model comes from.
#[derive(Clone, Debug)]
pub enum Source {
    /// An HF directory (`config.json`, `*.safetensors`, `tokenizer.json`, ...).
    HfDir(PathBuf),
    /// A GGUF file (weights, tokenizer and chat template).
    Gguf(PathBuf),
    /// A hub repo id, downloaded with hf-hub (needs the `hub` feature and a network).
    Hub(String),
}

impl Source {
    /// A `.gguf` path, a directory, or else a hub id like `Qwen/Qwen2.5-7B-Instruct`.
    pub fn parse(s: &str) -> Self {
        let p = Path::new(s);
        if p.is_dir() {
            Source::HfDir(p.into())
        } else if s.ends_with(".gguf") || p.is_file() {
            Source::Gguf(p.into())
        } else {
            Source::Hub(s.into())
        }
    }
}

/// The rope tables cover the configured context, capped to keep memory small.
pub(crate) const ROPE_MAX_POSITIONS: usize = 1 << 16;

/// The parts an architecture builds.
pub(crate) struct Parts {
    pub(crate) embed: Embedding,
    pub(crate) pos_embed: Option<Tensor>,
    pub(crate) blocks: Vec<Box<dyn Block>>,
    pub(crate) norm: Norm,
    pub(crate) lm_head: Linear,
    pub(crate) final_softcap: Option<f64>,
    pub(crate) rope: Option<Rope>,
    pub(crate) info: ModelInfo,
}

/// A dense matrix checked against `[rows, cols]`.
pub(crate) fn dense_checked(w: &dyn Weights, name: &str, rows: usize, cols: usize, what: &str) -> Result<Tensor> {
    let t = w.dense(name)?;
    ensure!(
        t.dims() == [rows, cols],
        "{}: {name} has shape {:?}, the config implies [{rows}, {cols}] ({what})",
        w.origin(),
        t.dims()
    );
    Ok(t)
}

/// The token embedding `{prefix}.weight` (`[vocab, d]`): kept quantized when it comes from a GGUF
/// file, the model is on the CPU and the output head is a matrix of its own (a tied head needs
/// the dense table anyway); dense otherwise.
pub(crate) fn embed_table(w: &dyn Weights, prefix: &str, vocab: usize, d: usize, tied: bool, device: &Device) -> Result<Weight> {
    if !tied && device.is_cpu() && w.layout() == Layout::LlamaCpp && w.contains("lm_head.weight") {
        let t = w.linear(prefix, false, (vocab, d))?.weight;
        if let Weight::Quant { q, .. } = &t {
            if qgemm::supports(q) {
                return Ok(t);
            }
        }
    }
    Ok(Weight::from_dense(dense_checked(w, &format!("{prefix}.weight"), vocab, d, "vocab_size, hidden_size")?))
}

/// The output head: the first of `names` present, or the token embedding when `tied`.
/// An untied config whose checkpoint has no head is an error naming what was looked for.
pub(crate) fn lm_head(w: &dyn Weights, names: &[&str], tied: bool, embed: &Tensor, vocab: usize, d: usize) -> Result<Linear> {
    if !tied {
        for n in names {
            if w.contains(&format!("{n}.weight")) {
                return w.linear(n, false, (vocab, d));
            }
        }
        // llama.cpp drops a head equal to the embedding; GGUF loaders pass `tied` from its absence.
        bail!(
            "{}: the config says tie_word_embeddings = false but none of {} is in the checkpoint",
            w.origin(),
            names.iter().map(|n| format!("{n}.weight")).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(Linear { weight: Weight::from_dense(embed.clone()), bias: None, name: "lm_head (tied)".into() })
}

fn llama_parts(
    arch: &str,
    spec: &decoder::LlamaSpec,
    w: &dyn Weights,
    device: &Device,
    dtype: DType,
) -> Result<Parts> {
    let (vocab_size, max_pos, tied) = (spec.vocab_size, spec.max_position_embeddings, spec.tie_word_embeddings);
    let embed = embed_table(w, "model.embed_tokens", vocab_size, spec.hidden_size, tied, device)?;
    let blocks = decoder::build_blocks(spec, w)?;
    let norm = decoder::final_norm(spec, w)?;
    let lm_head = match &embed {
        Weight::Dense(e, _) => lm_head(w, &["lm_head"], tied, e, vocab_size, spec.hidden_size)?,
        Weight::Quant { .. } => w.linear("lm_head", false, (vocab_size, spec.hidden_size))?,
    };
    let rope_max = max_pos.min(ROPE_MAX_POSITIONS);
    ensure!(
        spec.rope_inv_freq.len() * 2 == spec.head_dim,
        "rope has {} frequencies for head_dim {}",
        spec.rope_inv_freq.len(),
        spec.head_dim
    );
    let rope = Rope::new(&spec.rope_inv_freq, rope_max, device, dtype)?;
    Ok(Parts {
        embed: Embedding { table: embed, scale: spec.embed_scale },
        pos_embed: None,
        blocks,
        norm,
        lm_head,
        final_softcap: spec.final_softcap,
        rope: Some(rope),
        info: ModelInfo {
            arch: arch.into(),
            n_layers: spec.num_hidden_layers,
            d_model: spec.hidden_size,
            n_heads: spec.num_attention_heads,
            n_kv_heads: spec.num_key_value_heads,
            head_dim: spec.head_dim,
            vocab_size,
            max_positions: rope_max,
            source: w.origin(),
            quantized: false,
            resid_mid: true,
        },
    })
}

/// Identifies this copy of the kit in the process: the address of one of its statics.
///
/// evcxr links a `:dep` crate into the shared object of every notebook cell, so a notebook that
/// loads `interp_kit` itself runs a separate copy of the kit, and of candle, in each cell. candle
/// numbers tensors from a static counter and its backward pass keys gradients by those numbers, so
/// tensors made by different copies (the model's layers run the code of the cell that loaded them)
/// can share a number and get each other's gradients. The `interp_kit_dylib` package
/// (`interp_kit/dylib`) links the kit as one shared library: one copy, whichever cell calls it.
pub fn kit_copy() -> usize {
    static MARK: u8 = 0;
    std::ptr::addr_of!(MARK) as usize
}

impl Model {
    /// Fails unless this call runs in the copy of the kit that built the model (see
    /// [`kit_copy`]): the gradient paths call it, because there a second copy gives wrong
    /// gradients rather than an error.
    pub fn check_kit_copy(&self) -> Result<()> {
        anyhow::ensure!(
            self.kit_copy == kit_copy(),
            "this model was loaded by another copy of interp_kit than the one running this call: \
             evcxr links a `:dep` crate into every notebook cell, and across copies candle's backward \
             pass can mix up tensors made in different cells (wrong gradients). Load the kit as one \
             shared library, `:dep interp_kit = {{ path = \"<clone>/interp_kit/dylib\", package = \
             \"interp_kit_dylib\" }}`, or load the model in the cell that computes the gradients"
        );
        Ok(())
    }

    /// Loads from a path (GGUF file or HF directory) or a hub id; see [`Source::parse`].
    pub fn load(source: &str, device: &Device) -> Result<Self> {
        let dtype = crate::base::device::default_dtype(device);
        match Source::parse(source) {
            Source::HfDir(d) => Self::from_hf_dir(&d, device, dtype),
            Source::Gguf(p) => {
                ensure!(p.exists(), "model file {} does not exist", p.display());
                Self::from_gguf(&p, device, dtype)
            }
            Source::Hub(id) => Self::from_hub(&id, device, dtype),
        }
    }

    /// The embedded default model (Qwen2.5-Coder-0.5B-Instruct Q4_K_M), fetched by
    /// `scripts/fetch_model.sh`.
    pub fn embedded(device: &Device) -> Result<Self> {
        let p = crate::base::embedded_model_path()?;
        Self::from_gguf(&p, device, crate::base::device::default_dtype(device))
    }

    /// An HF directory: `config.json`, `model.safetensors` (or sharded), tokenizer files.
    pub fn from_hf_dir(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let txt = std::fs::read_to_string(&cfg_path).with_context(|| format!("reading {}", cfg_path.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&txt).with_context(|| format!("parsing {}", cfg_path.display()))?;
        let arch = v["model_type"].as_str().unwrap_or("");
        let family = arch::by_hf(arch).with_context(|| cfg_path.display().to_string())?;
        let w = SafetensorsWeights::from_dir(dir, device, dtype)?;
        let parts = (family.from_hf)(&v, &w, device, dtype).with_context(|| cfg_path.display().to_string())?;
        let tokenizer = if dir.join("tokenizer.json").exists() { Some(Tokenizer::from_hf_dir(dir)?) } else { None };
        let tokenizer_error = tokenizer.is_none().then(|| format!("{} has no tokenizer.json", dir.display()));
        Ok(Self::assemble(parts, tokenizer, tokenizer_error, device, dtype, dir.display().to_string()))
    }

    /// A GGUF file: matrices stay quantized for inference; tokenizer and template from metadata.
    /// Layouts llama.cpp's converter rewrote are undone (see [`Layout::LlamaCpp`]). A GGUF
    /// tokenizer this build cannot read (SentencePiece `llama` vocabularies, e.g. Gemma) leaves
    /// the model without one; [`Model::tok`] then says why.
    pub fn from_gguf(path: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let w = GgufWeights::open(path, device, dtype)?;
        debug_assert_eq!(w.layout(), Layout::LlamaCpp);
        let md = w.metadata();
        let arch = w.arch.clone();
        let vocab = *w
            .content
            .tensor_infos
            .get("token_embd.weight")
            .with_context(|| format!("{}: no token_embd.weight", path.display()))?
            .shape
            .dims()
            .first()
            .with_context(|| format!("{}: token_embd.weight has no dimensions", path.display()))?;
        let tied = !w.content.tensor_infos.contains_key("output.weight");
        let family = arch::by_gguf(&arch).with_context(|| path.display().to_string())?;
        let mut parts = (family.from_gguf)(md, vocab, tied, &w, device, dtype).with_context(|| path.display().to_string())?;
        parts.info.quantized = true;
        let (tokenizer, tokenizer_error) = match Tokenizer::from_gguf(&w.content) {
            Ok(t) => (Some(t.with_gguf_path(path)), None),
            Err(e) => (None, Some(format!("{}: the GGUF tokenizer could not be read: {e:#}", path.display()))),
        };
        Ok(Self::assemble(parts, tokenizer, tokenizer_error, device, dtype, path.display().to_string()))
    }

    /// Downloads `repo_id` with hf-hub (config, safetensors, tokenizer) and loads it.
    #[cfg(feature = "hub")]
    pub fn from_hub(repo_id: &str, device: &Device, dtype: DType) -> Result<Self> {
        let api = hf_hub::api::sync::Api::new()?;
        let repo = api.model(repo_id.to_string());
        let mut dir = None;
        for f in ["config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
            if let Ok(p) = repo.get(f) {
                dir = p.parent().map(|d| d.to_path_buf());
            }
        }
        let dir = dir.with_context(|| format!("hub repo {repo_id}: could not fetch config.json"))?;
        match repo.get("model.safetensors.index.json") {
            Ok(idx) => {
                let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(idx)?)?;
                let files: std::collections::BTreeSet<String> = v["weight_map"]
                    .as_object()
                    .context("weight_map")?
                    .values()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect();
                for f in files {
                    repo.get(&f)?;
                }
            }
            Err(_) => {
                repo.get("model.safetensors")?;
            }
        }
        Self::from_hf_dir(&dir, device, dtype)
    }

    #[cfg(not(feature = "hub"))]
    pub fn from_hub(repo_id: &str, _device: &Device, _dtype: DType) -> Result<Self> {
        bail!(
            "{repo_id:?} is neither an existing file nor a directory; loading hub ids needs the `hub` \
             cargo feature and a network (or download the model and pass its directory)"
        )
    }

    fn assemble(
        p: Parts,
        tokenizer: Option<Tokenizer>,
        tokenizer_error: Option<String>,
        device: &Device,
        dtype: DType,
        source: String,
    ) -> Self {
        crate::base::malloc::tune();
        let mut info = p.info;
        info.source = source;
        info.resid_mid = p.blocks.iter().all(|b| b.has_resid_mid());
        Self {
            info,
            tokenizer,
            device: device.clone(),
            dtype,
            quantized_inference: true,
            int8_prefill: false,
            compute_dtype: ComputeDtype::F32,
            embed: p.embed,
            pos_embed: p.pos_embed,
            blocks: p.blocks,
            norm: p.norm,
            lm_head: p.lm_head,
            final_softcap: p.final_softcap,
            rope: p.rope,
            tokenizer_error,
            kit_copy: kit_copy(),
        }
    }

    pub fn n_layers(&self) -> usize {
        self.info.n_layers
    }
    pub fn d_model(&self) -> usize {
        self.info.d_model
    }
    /// The tokenizer, or an error saying why the model was loaded without one (set
    /// `model.tokenizer = Some(Tokenizer::from_hf_dir(..)?)` to supply one).
    pub fn tok(&self) -> Result<&Tokenizer> {
        self.tokenizer.as_ref().with_context(|| match &self.tokenizer_error {
            Some(why) => format!("this model was loaded without a tokenizer ({why}); set model.tokenizer to supply one"),
            None => "this model was loaded without a tokenizer; set model.tokenizer to supply one".to_string(),
        })
    }

    /// Token ids of a plain-text prompt, as HF `tokenizer(text)` gives them: the BOS the model
    /// expects (Llama-3, Gemma) is prepended once, none for models without one (GPT-2,
    /// GPT-NeoX, Qwen). For base models without a chat template; see [`Tokenizer::encode_prompt`].
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        self.tok()?.encode_prompt(text)
    }

    /// The linear layers of the blocks with their layer index, in layer order (the modules a
    /// LoRA adapter can target; the unembedding is not among them).
    pub fn block_linears(&self) -> Vec<(usize, &Linear)> {
        self.blocks.iter().enumerate().flat_map(|(l, b)| b.linears().into_iter().map(move |x| (l, x))).collect()
    }

    /// Checks that every module an adapter targets exists in this model with the adapter's shapes.
    pub fn check_adapter(&self, adapter: &dyn crate::hooks::Adapter) -> Result<()> {
        let dims: std::collections::BTreeMap<&str, (usize, usize)> =
            self.block_linears().into_iter().map(|(_, x)| (x.name.as_str(), (x.in_dim(), x.out_dim()))).collect();
        for (name, got) in adapter.module_dims()? {
            let want = dims
                .get(name.as_str())
                .with_context(|| format!("the LoRA adapter targets {name}, which this model does not have"))?;
            ensure!(
                got == *want,
                "the LoRA adapter's {name} maps {} -> {} features, the model's layer {} -> {}",
                got.0,
                got.1,
                want.0,
                want.1
            );
        }
        Ok(())
    }

    /// Checks hook points against the model depth and architecture.
    pub fn check_points<'p>(&self, points: impl IntoIterator<Item = &'p HookPoint>) -> Result<()> {
        for p in points {
            p.check(self.n_layers())?;
            if p.site == crate::hooks::Site::ResidMid && !self.blocks[p.layer].has_resid_mid() {
                bail!(
                    "{p} does not exist in this {} model: its blocks use a parallel residual (attention and MLP \
                     both read hook_resid_pre and are added together), so there is no residual state between \
                     them; use hook_resid_pre, hook_attn_out, hook_mlp_out or hook_resid_post",
                    self.info.arch
                );
            }
        }
        Ok(())
    }

    /// Left-pads `prompts` into `[B, T]` ids and the per-row padding.
    pub(crate) fn pad_batch(&self, prompts: &[Vec<u32>]) -> Result<(Tensor, Vec<usize>)> {
        ensure!(!prompts.is_empty(), "empty batch");
        let t = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
        ensure!(t > 0, "empty prompt in batch");
        let mut ids = Vec::with_capacity(prompts.len() * t);
        let mut pad = Vec::with_capacity(prompts.len());
        for (r, p) in prompts.iter().enumerate() {
            ensure!(!p.is_empty(), "prompt {r} is empty");
            if let Some(bad) = p.iter().find(|&&i| i as usize >= self.info.vocab_size) {
                bail!("prompt {r}: token id {bad} is outside the vocabulary (size {})", self.info.vocab_size);
            }
            pad.push(t - p.len());
            ids.extend(std::iter::repeat_n(0u32, t - p.len()));
            ids.extend_from_slice(p);
        }
        Ok((Tensor::from_vec(ids, (prompts.len(), t), &self.device)?, pad))
    }

    /// The core pass: embeddings, blocks with hooks, final norm. Returns the final normed
    /// hidden state `[B, T, d]` and the context (activations, gradient taps).
    pub(crate) fn run<'a>(
        &'a self,
        ids: &Tensor,
        pad: Vec<usize>,
        kv: Option<&mut KvCache>,
        hooks: &'a Hooks<'a>,
        pass: Pass<'_>,
    ) -> Result<(Tensor, FwdCtx<'a>)> {
        self.check_points(hooks.points().collect::<Vec<_>>().iter())?;
        self.check_points(pass.taps())?;
        if let Some(p) = hooks.writes.iter().map(|w| w.0).chain(pass.taps().iter().copied()).find(|p| p.site.is_attention()) {
            bail!("{p} is read-only: cache it (Hooks::cache); writing or differentiating attention patterns is not supported");
        }
        let grad = pass.is_gradient();
        for u in &hooks.lora {
            self.check_adapter(u.adapter)?;
        }
        let (b, t) = ids.dims2()?;
        let past = kv.as_ref().map_or(0, |c| c.cols);
        let keep = kv.is_some();
        let mut ctx = FwdCtx::new(CallSpec {
            rope: self.rope.as_ref(),
            hooks,
            pass,
            dense: !self.quantized_inference,
            int8_prefill: self.int8_prefill,
            compute: self.compute_dtype,
            keep_kv: keep,
            pad,
            past_cols: past,
            new_cols: t,
            device: &self.device,
            dtype: self.dtype,
        })?;
        let mut x = self.embed.lookup(&ids.flatten_all()?)?.reshape((b, t, ()))?;
        if let Some(s) = self.embed.scale {
            // HF: the scale is a tensor cast to the weight dtype before the product.
            let s = Tensor::new(s as f32, &self.device)?.to_dtype(x.dtype())?;
            x = x.broadcast_mul(&s)?;
        }
        if let Some(pe) = &self.pos_embed {
            let max = pe.dim(0)?;
            let top = ctx.positions.flatten_all()?.max(0)?.to_scalar::<u32>()? as usize;
            ensure!(top < max, "position {top} exceeds the model's maximum of {max} positions (n_positions)");
            let p = pe.index_select(&ctx.positions.flatten_all()?, 0)?.reshape((b, t, ()))?;
            x = (x + p)?;
        }
        let mut scratch: Vec<Option<(Tensor, Tensor)>> = vec![None; self.blocks.len()];
        let layers = match kv {
            Some(c) => &mut c.layers,
            None => &mut scratch,
        };
        for (l, block) in self.blocks.iter().enumerate() {
            ctx.layer = l;
            x = block.forward(x, l, &mut ctx, &mut layers[l]).with_context(|| format!("block {l}"))?;
        }
        let attn = std::mem::take(&mut *ctx.attn_cache.borrow_mut());
        ctx.activations.append(attn)?;
        let x = self.norm.forward(&x, grad)?;
        let x = ctx.hook(HookPoint::ln_final(), x)?;
        Ok((x, ctx))
    }

    /// Vocabulary logits from final normed hidden states `[.., d]`.
    pub(crate) fn logits(&self, h: &Tensor, grad: bool) -> Result<Tensor> {
        let l = self.lm_head.forward_with(h, grad, !self.quantized_inference, self.int8_prefill, self.compute_dtype)?;
        Ok(match self.final_softcap {
            Some(c) => ((l / c)?.tanh()? * c)?,
            None => l,
        })
    }

    /// The logit lens of residual states `[.., d]`: the final norm, which normalises each vector by
    /// its own scale (not the last layer's: TransformerLens #1076), then the unembedding and the
    /// model's final soft-cap. On the last block's `resid_post` this is the model's logits.
    pub fn unembed(&self, resid: &Tensor) -> Result<Tensor> {
        ensure!(
            resid.dims().last() == Some(&self.d_model()),
            "unembed: residual states of shape {:?}, expected [.., {}]",
            resid.dims(),
            self.d_model()
        );
        let h = self.norm.forward(&resid.to_dtype(self.dtype)?, false)?;
        self.logits(&h, false)
    }

    fn finish(&self, h: Tensor, ctx: FwdCtx, at: LogitsAt) -> Result<Output> {
        let logits = match at {
            LogitsAt::All => Some(self.logits(&h, false)?),
            LogitsAt::Last => {
                let t = h.dim(1)?;
                Some(self.logits(&h.narrow(1, t - 1, 1)?.contiguous()?, false)?)
            }
            LogitsAt::None => None,
        };
        Ok(Output { logits, activations: ctx.activations, token_index: ctx.token_index })
    }

    /// A batch of prompts (left-padded internally), no KV cache, logits at every position.
    pub fn forward(&self, prompts: &[Vec<u32>], hooks: &Hooks) -> Result<Output> {
        self.forward_at(prompts, hooks, LogitsAt::All)
    }

    /// Like [`Model::forward`], choosing which logits to compute.
    pub fn forward_at(&self, prompts: &[Vec<u32>], hooks: &Hooks, at: LogitsAt) -> Result<Output> {
        let (ids, pad) = self.pad_batch(prompts)?;
        let (h, ctx) = self.run(&ids, pad, None, hooks, Pass::Inference)?;
        self.finish(h, ctx, at)
    }

    /// Caches `points` at `positions`: TransformerLens' `run_with_cache`.
    pub fn run_with_cache(&self, prompts: &[Vec<u32>], points: &[HookPoint], positions: crate::hooks::Positions) -> Result<Output> {
        let hooks = Hooks::new().cache_many(points.iter().copied(), positions);
        self.forward_at(prompts, &hooks, LogitsAt::Last)
    }

    /// Fills an empty `cache` with `prompts` (phase [`Phase::Prefill`](crate::hooks::Phase::Prefill)).
    pub fn prefill(&self, prompts: &[Vec<u32>], cache: &mut KvCache, hooks: &Hooks, at: LogitsAt) -> Result<Output> {
        ensure!(cache.is_empty(), "prefill needs an empty KV cache (it holds {} columns)", cache.cols);
        ensure!(cache.layers.len() == self.blocks.len(), "KV cache was made for another model");
        let (ids, pad) = self.pad_batch(prompts)?;
        let t = ids.dim(1)?;
        let (h, ctx) = self.run(&ids, pad.clone(), Some(cache), hooks, Pass::Inference)?;
        cache.pad = pad;
        cache.cols = t;
        self.finish(h, ctx, at)
    }

    /// Appends `tokens` (`[B][n]`, the same `n` for every row) to a filled cache
    /// (phase [`Phase::Decode`](crate::hooks::Phase::Decode)); logits at every new position.
    pub fn extend(&self, tokens: &[Vec<u32>], cache: &mut KvCache, hooks: &Hooks, at: LogitsAt) -> Result<Output> {
        ensure!(!cache.is_empty(), "extend/decode needs a filled KV cache: call prefill first");
        ensure!(
            tokens.len() == cache.batch_size(),
            "{} rows given, the KV cache holds {}",
            tokens.len(),
            cache.batch_size()
        );
        let n = tokens[0].len();
        ensure!(n > 0 && tokens.iter().all(|r| r.len() == n), "every row must add the same number (>0) of tokens");
        let flat: Vec<u32> = tokens.iter().flatten().copied().collect();
        if let Some(bad) = flat.iter().find(|&&i| i as usize >= self.info.vocab_size) {
            bail!("token id {bad} is outside the vocabulary (size {})", self.info.vocab_size);
        }
        let ids = Tensor::from_vec(flat, (tokens.len(), n), &self.device)?;
        let pad = cache.pad.clone();
        let (h, ctx) = self.run(&ids, pad, Some(cache), hooks, Pass::Inference)?;
        cache.cols += n;
        self.finish(h, ctx, at)
    }

    /// One decode step: one new token per row.
    pub fn decode(&self, next: &[u32], cache: &mut KvCache, hooks: &Hooks) -> Result<Output> {
        let rows: Vec<Vec<u32>> = next.iter().map(|&t| vec![t]).collect();
        self.extend(&rows, cache, hooks, LogitsAt::Last)
    }
}
