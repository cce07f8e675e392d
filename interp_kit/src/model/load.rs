//! Weight sources: HF safetensors (single or sharded) and GGUF (kept quantized for inference,
//! dequantized on demand). Both are addressed with HF weight names; GGUF names are mapped.
use super::layers::{Linear, Weight};
use anyhow::{bail, ensure, Context, Result};
use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// How a weight file lays out the tensors that llama.cpp's converter rewrites.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// As HF `transformers` stores them (safetensors checkpoints).
    Hf,
    /// As `convert_hf_to_gguf.py` writes them: Llama q/k rows permuted, GPT-2 Conv1D matrices
    /// transposed to `[out, in]`, GPT-NeoX fused qkv rows de-interleaved to `[q; k; v]`,
    /// Gemma norm weights with the `+1` added.
    LlamaCpp,
}

/// A source of named weights (HF names).
pub trait Weights {
    /// A dense tensor in the model dtype.
    fn dense(&self, name: &str) -> Result<Tensor>;
    /// A dense tensor in f32 (exact for f16/bf16 sources).
    fn dense_f32(&self, name: &str) -> Result<Tensor>;
    /// The tensor's shape, without loading it.
    fn shape(&self, name: &str) -> Result<Vec<usize>>;
    /// Which layout conventions the file follows.
    fn layout(&self) -> Layout;
    /// A `[out, in]` matrix named `{prefix}.weight` (+ `{prefix}.bias`), checked against `shape`.
    fn linear(&self, prefix: &str, bias: bool, shape: (usize, usize)) -> Result<Linear>;
    fn contains(&self, name: &str) -> bool;
    /// The file(s) the weights come from, for error messages.
    fn origin(&self) -> String;
}

fn check_shape(name: &str, got: &[usize], want: &[usize], origin: &str) -> Result<()> {
    ensure!(
        got == want,
        "{origin}: tensor {name} has shape {got:?}, the config implies {want:?}"
    );
    Ok(())
}

/// Safetensors files from an HF model directory.
pub struct SafetensorsWeights {
    st: candle_core::safetensors::MmapedSafetensors,
    names: BTreeSet<String>,
    files: Vec<PathBuf>,
    device: Device,
    dtype: DType,
}

impl SafetensorsWeights {
    /// `model.safetensors`, or the shards listed in `model.safetensors.index.json`.
    pub fn from_dir(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index.exists() {
            let txt = std::fs::read_to_string(&index).with_context(|| format!("reading {}", index.display()))?;
            let v: serde_json::Value =
                serde_json::from_str(&txt).with_context(|| format!("parsing {}", index.display()))?;
            let map = v["weight_map"]
                .as_object()
                .with_context(|| format!("{}: no weight_map object", index.display()))?;
            let mut uniq: BTreeSet<&str> = BTreeSet::new();
            for (tensor, f) in map {
                // A shard is a plain file name in the directory: not empty, no path.
                let name = f.as_str().filter(|n| !n.is_empty() && Path::new(n).file_name() == Some(std::ffi::OsStr::new(n)));
                let name = name.with_context(|| {
                    format!("{}: weight_map[{tensor:?}] is {f}, not the file name of a shard", index.display())
                })?;
                uniq.insert(name);
            }
            ensure!(!uniq.is_empty(), "{}: weight_map names no shard", index.display());
            for f in &uniq {
                ensure!(
                    dir.join(f).is_file(),
                    "{}: weight_map names shard {f}, which is not in {}",
                    index.display(),
                    dir.display()
                );
            }
            uniq.into_iter().map(|f| dir.join(f)).collect()
        } else {
            let single = dir.join("model.safetensors");
            ensure!(
                single.exists(),
                "{}: neither model.safetensors nor model.safetensors.index.json found",
                dir.display()
            );
            vec![single]
        };
        for f in &files {
            ensure!(f.exists(), "missing weight shard {}", f.display());
        }
        // SAFETY: the files are memory-mapped read-only; they must not be modified while loaded.
        let st = unsafe { candle_core::safetensors::MmapedSafetensors::multi(&files) }.map_err(|e| {
            anyhow::anyhow!(
                "cannot read safetensors {}: {e} (truncated or not a safetensors file?)",
                files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ")
            )
        })?;
        let names = st.tensors().into_iter().map(|(n, _)| n).collect();
        Ok(Self { st, names, files, device: device.clone(), dtype })
    }
}

impl SafetensorsWeights {
    fn dense_f32_or_raw(&self, name: &str) -> Result<Tensor> {
        ensure!(self.contains(name), "{}: missing tensor {name}", self.origin());
        self.st
            .load(name, &self.device)
            .with_context(|| format!("{}: loading {name}", self.origin()))
    }
}

impl Weights for SafetensorsWeights {
    fn dense(&self, name: &str) -> Result<Tensor> {
        Ok(self.dense_f32_or_raw(name)?.to_dtype(self.dtype)?)
    }
    fn dense_f32(&self, name: &str) -> Result<Tensor> {
        Ok(self.dense_f32_or_raw(name)?.to_dtype(DType::F32)?)
    }
    fn shape(&self, name: &str) -> Result<Vec<usize>> {
        ensure!(self.contains(name), "{}: missing tensor {name}", self.origin());
        let v = self.st.get(name).with_context(|| format!("{}: {name}", self.origin()))?;
        Ok(v.shape().to_vec())
    }
    fn layout(&self) -> Layout {
        Layout::Hf
    }
    fn linear(&self, prefix: &str, bias: bool, shape: (usize, usize)) -> Result<Linear> {
        let wname = format!("{prefix}.weight");
        let w = self.dense(&wname)?;
        check_shape(&wname, w.dims(), &[shape.0, shape.1], &self.origin())?;
        let b = if bias { Some(self.dense(&format!("{prefix}.bias"))?) } else { None };
        Ok(Linear { weight: Weight::from_dense(w), bias: b, name: prefix.to_string() })
    }
    fn contains(&self, name: &str) -> bool {
        self.names.contains(name)
    }
    fn origin(&self) -> String {
        match self.files.as_slice() {
            [one] => one.display().to_string(),
            many => format!("{} (+{} shards)", many[0].display(), many.len() - 1),
        }
    }
}

/// Maps an HF Llama-family weight name to llama.cpp's GGUF name (see [`gguf_name_for`]).
pub fn gguf_name(hf: &str) -> String {
    gguf_name_for("llama", hf)
}

/// Maps an HF weight name to the name llama.cpp's converter gives it in a GGUF of
/// architecture `arch` (`general.architecture`), as gguf-py's `TensorNameMap` does. Names
/// that map to nothing pass through unchanged (e.g. `rope_freqs.weight`).
pub fn gguf_name_for(arch: &str, hf: &str) -> String {
    let fixed = [
        ("model.embed_tokens.", "token_embd."),
        ("model.norm.", "output_norm."),
        ("lm_head.", "output."),
        // GPT-NeoX
        ("gpt_neox.embed_in.", "token_embd."),
        ("gpt_neox.final_layer_norm.", "output_norm."),
        ("embed_out.", "output."),
        // GPT-2
        ("transformer.wte.", "token_embd."),
        ("transformer.wpe.", "position_embd."),
        ("transformer.ln_f.", "output_norm."),
    ];
    for (a, b) in fixed {
        if let Some(suffix) = hf.strip_prefix(a) {
            return format!("{b}{suffix}");
        }
    }
    let layer = ["model.layers.", "gpt_neox.layers.", "transformer.h."]
        .iter()
        .find_map(|p| hf.strip_prefix(p))
        .and_then(|rest| rest.split_once('.'));
    if let Some((l, tail)) = layer {
        // Gemma-2 has four norms per block; llama.cpp names them differently from Llama's two.
        let gemma = arch == "gemma2";
        let map: &[(&str, &str)] = &[
            ("self_attn.q_proj.", "attn_q."),
            ("self_attn.k_proj.", "attn_k."),
            ("self_attn.v_proj.", "attn_v."),
            ("self_attn.o_proj.", "attn_output."),
            ("self_attn.q_norm.", "attn_q_norm."),
            ("self_attn.k_norm.", "attn_k_norm."),
            ("mlp.gate_proj.", "ffn_gate."),
            ("mlp.up_proj.", "ffn_up."),
            ("mlp.down_proj.", "ffn_down."),
            ("input_layernorm.", "attn_norm."),
            ("post_attention_layernorm.", if gemma { "post_attention_norm." } else { "ffn_norm." }),
            ("pre_feedforward_layernorm.", "ffn_norm."),
            ("post_feedforward_layernorm.", "post_ffw_norm."),
            // GPT-NeoX
            ("attention.query_key_value.", "attn_qkv."),
            ("attention.dense.", "attn_output."),
            ("mlp.dense_h_to_4h.", "ffn_up."),
            ("mlp.dense_4h_to_h.", "ffn_down."),
            // GPT-2
            ("ln_1.", "attn_norm."),
            ("ln_2.", "ffn_norm."),
            ("attn.c_attn.", "attn_qkv."),
            ("attn.c_proj.", "attn_output."),
            ("mlp.c_fc.", "ffn_up."),
            ("mlp.c_proj.", "ffn_down."),
        ];
        for (a, b) in map {
            if let Some(suffix) = tail.strip_prefix(a) {
                return format!("blk.{l}.{b}{suffix}");
            }
        }
    }
    hf.to_string()
}

/// A GGUF file: matrices stay quantized (fast inference), everything else is dequantized.
pub struct GgufWeights {
    pub content: gguf_file::Content,
    /// `general.architecture` (selects the tensor-name map).
    pub arch: String,
    file: Mutex<std::fs::File>,
    path: PathBuf,
    device: Device,
    dtype: DType,
}

impl GgufWeights {
    pub fn open(path: &Path, device: &Device, dtype: DType) -> Result<Self> {
        // The header walk also checks that every tensor lies inside the file (a truncated
        // download parses fine up to its tensor data).
        let (content, file) = crate::base::gguf::read_gguf(path)?;
        let arch = match content.metadata.get("general.architecture") {
            Some(v) => v.to_string().map_err(|e| anyhow::anyhow!("{}: general.architecture: {e}", path.display()))?.clone(),
            None => bail!("{}: GGUF has no general.architecture", path.display()),
        };
        Ok(Self { content, arch, file: Mutex::new(file), path: path.to_path_buf(), device: device.clone(), dtype })
    }

    /// The GGUF name of an HF weight name in this file's architecture.
    pub fn name_of(&self, hf_name: &str) -> String {
        gguf_name_for(&self.arch, hf_name)
    }

    pub fn qtensor(&self, hf_name: &str) -> Result<candle_core::quantized::QTensor> {
        let name = self.name_of(hf_name);
        ensure!(
            self.content.tensor_infos.contains_key(&name),
            "{}: missing tensor {name} (HF name {hf_name})",
            self.path.display()
        );
        let mut f = self.file.lock().map_err(|_| anyhow::anyhow!("GGUF file lock poisoned"))?;
        crate::base::gguf::read_tensor(&self.content, &mut f, &name, &self.device, &self.path)
    }

    pub fn metadata(&self) -> &std::collections::HashMap<String, gguf_file::Value> {
        &self.content.metadata
    }
}

impl Weights for GgufWeights {
    fn dense(&self, name: &str) -> Result<Tensor> {
        Ok(self.dense_f32(name)?.to_dtype(self.dtype)?)
    }
    fn dense_f32(&self, name: &str) -> Result<Tensor> {
        Ok(self.qtensor(name)?.dequantize(&self.device)?.to_dtype(DType::F32)?)
    }
    fn shape(&self, name: &str) -> Result<Vec<usize>> {
        let g = self.name_of(name);
        let info = self
            .content
            .tensor_infos
            .get(&g)
            .with_context(|| format!("{}: missing tensor {g} (HF name {name})", self.path.display()))?;
        Ok(info.shape.dims().to_vec())
    }
    fn layout(&self) -> Layout {
        Layout::LlamaCpp
    }
    fn linear(&self, prefix: &str, bias: bool, shape: (usize, usize)) -> Result<Linear> {
        let wname = format!("{prefix}.weight");
        let q = q5_0_to_q8_0(self.qtensor(&wname)?, &self.device)?;
        check_shape(&self.name_of(&wname), q.shape().dims(), &[shape.0, shape.1], &self.origin())?;
        let b = if bias { Some(self.dense(&format!("{prefix}.bias"))?) } else { None };
        Ok(Linear { weight: Weight::quant(Arc::new(q), self.dtype)?, bias: b, name: prefix.to_string() })
    }
    fn contains(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(&self.name_of(name))
    }
    fn origin(&self) -> String {
        self.path.display().to_string()
    }
}

/// Reads a GGUF metadata value as f64 / usize with a clear error.
pub fn md_f64(md: &std::collections::HashMap<String, gguf_file::Value>, key: &str) -> Result<f64> {
    use gguf_file::Value::*;
    Ok(match md.get(key).with_context(|| format!("GGUF metadata has no {key}"))? {
        F32(v) => *v as f64,
        F64(v) => *v,
        U32(v) => *v as f64,
        I32(v) => *v as f64,
        U64(v) => *v as f64,
        I64(v) => *v as f64,
        U16(v) => *v as f64,
        other => bail!("GGUF metadata {key}: expected a number, got {other:?}"),
    })
}

pub fn md_usize(md: &std::collections::HashMap<String, gguf_file::Value>, key: &str) -> Result<usize> {
    Ok(md_f64(md, key)? as usize)
}

/// Re-encodes a Q5_0 tensor as Q8_0, losslessly: a Q5_0 value is `d * (q - 16)` with
/// `q` in 0..32, which Q8_0 stores as `d * q8` with the same `d` and `q8 = q - 16`.
/// candle has no SIMD kernel for Q5_0 (it runs a scalar dot product, ~10x slower than its
/// AVX2 Q8_0 kernel), and llama.cpp's Q4_K_M files use Q5_0 for every matrix whose row length
/// is not a multiple of 256 (all of Qwen2.5-0.5B's d=896 matrices). Other types pass through.
pub fn q5_0_to_q8_0(q: candle_core::quantized::QTensor, device: &Device) -> Result<candle_core::quantized::QTensor> {
    use candle_core::quantized::GgmlDType;
    if q.dtype() != GgmlDType::Q5_0 {
        return Ok(q);
    }
    const IN: usize = 22; // f16 d, u32 qh, 16 bytes of nibbles
    const OUT: usize = 34; // f16 d, 32 x i8
    let src = q.data()?;
    ensure!(src.len() % IN == 0, "Q5_0 tensor of {} bytes is not whole blocks", src.len());
    let n = src.len() / IN;
    let mut dst = vec![0u8; n * OUT];
    for (b, o) in src.chunks_exact(IN).zip(dst.chunks_exact_mut(OUT)) {
        o[..2].copy_from_slice(&b[..2]);
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        let qs = &b[6..22];
        for j in 0..16 {
            let xh0 = ((qh >> j) << 4) & 0x10;
            let xh1 = (qh >> (j + 12)) & 0x10;
            let x0 = ((qs[j] as u32 & 0x0f) | xh0) as i32 - 16;
            let x1 = ((qs[j] as u32 >> 4) | xh1) as i32 - 16;
            o[2 + j] = x0 as i8 as u8;
            o[2 + j + 16] = x1 as i8 as u8;
        }
    }
    let dims = q.shape().dims().to_vec();
    Ok(candle_core::quantized::ggml_file::qtensor_from_ggml(GgmlDType::Q8_0, &dst, dims, device)?)
}

/// The hyper-parameters every llama.cpp decoder writes as `{arch}.*` metadata.
pub struct GgufHparams {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub max_position_embeddings: usize,
    /// `{arch}.rope.freq_base`; absent in some converters' output (llama.cpp's default: 10000).
    pub rope_theta: Option<f64>,
    pub rms_norm_eps: f64,
}

impl GgufHparams {
    pub fn read(md: &std::collections::HashMap<String, gguf_file::Value>, arch: &str) -> Result<Self> {
        let k = |s: &str| format!("{arch}.{s}");
        Ok(Self {
            hidden_size: md_usize(md, &k("embedding_length"))?,
            intermediate_size: md_usize(md, &k("feed_forward_length"))?,
            num_hidden_layers: md_usize(md, &k("block_count"))?,
            num_attention_heads: md_usize(md, &k("attention.head_count"))?,
            // Absent when the checkpoint has no num_key_value_heads (plain multi-head attention).
            num_key_value_heads: md_usize(md, &k("attention.head_count_kv"))
                .or_else(|_| md_usize(md, &k("attention.head_count")))?,
            max_position_embeddings: md_usize(md, &k("context_length"))?,
            rope_theta: md_f64(md, &k("rope.freq_base")).ok(),
            rms_norm_eps: md_f64(md, &k("attention.layer_norm_rms_epsilon"))?,
        })
    }
}
