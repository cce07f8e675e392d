//! Quantize on load: re-encode a loaded model's linear layers at a chosen precision, so that
//! the same weights can be compared at f32, bf16, Q8_0, Q4_0, Q4_K, ... with hooks and steering
//! running unchanged on each.
//!
//! [`quantize`] takes the dense weight of every linear layer (the blocks' projections and the
//! unembedding; dequantized first when the model came from a GGUF) and
//! * for `f32`, `f16`, `bf16`: rounds it to that float type and keeps it dense in the model's
//!   dtype (so the compute precision stays the model's; load with `DType::F32` to isolate the
//!   effect of the weights);
//! * for the GGML block formats: quantizes it with candle's `QTensor::quantize` and keeps it
//!   quantized ([`Weight::Quant`]), so inference runs the quantized matmuls exactly as for a
//!   GGUF of that type.
//!
//! Embeddings and norms keep the model's dtype (llama.cpp also keeps norms in f32). Block
//! formats need a row length (a layer's input width) that is a multiple of their block size:
//! 32 for Q4_0/Q4_1/Q5_0/Q5_1/Q8_0, 256 for the K-quants; a layer that does not fit is an
//! error naming it. Formats candle 0.11 cannot quantize to (FP8, INT8/INT4 in the
//! bitsandbytes/GPTQ sense, the activation-only Q8_1/Q8_K) are rejected by
//! [`Precision::from_str`] with a message naming the nearest supported format.
//!
//! ```no_run
//! use interp_kit::model::{Model, quantize::{quantize, Precision}};
//! let m = Model::from_hf_dir(std::path::Path::new("models/gemma-2-2b-it"), &candle_core::Device::Cpu, candle_core::DType::F32)?;
//! let q4 = quantize(&m, "q4_k".parse::<Precision>()?)?;
//! # anyhow::Ok(())
//! ```

use super::layers::{Linear, Weight};
use super::Model;
use anyhow::{bail, ensure, Context, Result};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// A storage precision for linear-layer weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Precision {
    F32,
    F16,
    BF16,
    Q8_0,
    Q5_0,
    Q5_1,
    Q4_0,
    Q4_1,
    Q6K,
    Q5K,
    Q4K,
    Q3K,
    Q2K,
}

impl Precision {
    /// Every supported precision, from most to least precise (roughly).
    pub const ALL: [Precision; 13] = [
        Precision::F32,
        Precision::F16,
        Precision::BF16,
        Precision::Q8_0,
        Precision::Q6K,
        Precision::Q5_1,
        Precision::Q5_0,
        Precision::Q5K,
        Precision::Q4_1,
        Precision::Q4_0,
        Precision::Q4K,
        Precision::Q3K,
        Precision::Q2K,
    ];

    /// The lower-case name (`q4_k`, `bf16`, ...), as parsed by `FromStr`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::BF16 => "bf16",
            Precision::Q8_0 => "q8_0",
            Precision::Q5_0 => "q5_0",
            Precision::Q5_1 => "q5_1",
            Precision::Q4_0 => "q4_0",
            Precision::Q4_1 => "q4_1",
            Precision::Q6K => "q6_k",
            Precision::Q5K => "q5_k",
            Precision::Q4K => "q4_k",
            Precision::Q3K => "q3_k",
            Precision::Q2K => "q2_k",
        }
    }

    /// The GGML block type, `None` for the float types.
    pub fn ggml(self) -> Option<GgmlDType> {
        Some(match self {
            Precision::F32 | Precision::F16 | Precision::BF16 => return None,
            Precision::Q8_0 => GgmlDType::Q8_0,
            Precision::Q5_0 => GgmlDType::Q5_0,
            Precision::Q5_1 => GgmlDType::Q5_1,
            Precision::Q4_0 => GgmlDType::Q4_0,
            Precision::Q4_1 => GgmlDType::Q4_1,
            Precision::Q6K => GgmlDType::Q6K,
            Precision::Q5K => GgmlDType::Q5K,
            Precision::Q4K => GgmlDType::Q4K,
            Precision::Q3K => GgmlDType::Q3K,
            Precision::Q2K => GgmlDType::Q2K,
        })
    }

    /// The float type of a float precision.
    pub fn float_dtype(self) -> Option<DType> {
        match self {
            Precision::F32 => Some(DType::F32),
            Precision::F16 => Some(DType::F16),
            Precision::BF16 => Some(DType::BF16),
            _ => None,
        }
    }

    /// Weights per block (1 for the float types): a layer's input width must be a multiple.
    pub fn block_size(self) -> usize {
        self.ggml().map_or(1, |g| g.block_size())
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase().replace('-', "_");
        if let Some(p) = Precision::ALL.iter().find(|p| p.name() == t || p.name().replace('_', "") == t) {
            return Ok(*p);
        }
        let names: Vec<&str> = Precision::ALL.iter().map(|p| p.name()).collect();
        let why = match t.as_str() {
            "fp8" | "f8" | "e4m3" | "e5m2" | "fp8_e4m3" | "fp8_e5m2" => "candle 0.11 has no FP8 weight format; q8_0 is the nearest 8-bit format it has",
            "int8" | "i8" | "8bit" => "INT8 in the bitsandbytes/GPTQ sense is not a candle format; q8_0 (8-bit, one scale per 32 weights) is the nearest",
            "int4" | "i4" | "4bit" | "nf4" | "fp4" => "INT4/NF4 in the bitsandbytes/GPTQ sense is not a candle format; q4_0, q4_1 or q4_k are the 4-bit formats it has",
            "q8_1" | "q8_k" => "candle uses this type only for activations in quantized dot products, not for weights",
            "q4_k_m" | "q4_k_s" | "q5_k_m" | "q5_k_s" | "q3_k_m" | "q3_k_s" | "q3_k_l" | "q2_k_s" => {
                "llama.cpp's _S/_M/_L mixes assign different types per tensor; choose one type (e.g. q4_k)"
            }
            _ => "not a precision this kit knows",
        };
        bail!("precision {s:?} is not supported: {why}. Supported: {}", names.join(", "))
    }
}

impl TryFrom<String> for Precision {
    type Error = anyhow::Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<Precision> for String {
    fn from(p: Precision) -> String {
        p.name().to_string()
    }
}

/// `lin`'s weight at `p` (see the module documentation); errors name the layer.
pub fn quantize_linear(lin: &Linear, p: Precision, model_dtype: DType, device: &Device) -> Result<Linear> {
    let (out, inp) = (lin.out_dim(), lin.in_dim());
    let w = lin.weight.dense().with_context(|| format!("{}: reading the dense weight", lin.name))?;
    let weight = match (p.float_dtype(), p.ggml()) {
        (Some(dt), _) => Weight::from_dense(w.to_dtype(dt)?.to_dtype(model_dtype)?),
        (None, Some(g)) => {
            let bs = g.block_size();
            ensure!(
                inp % bs == 0,
                "{}: cannot quantize to {p}: its input width {inp} (weight [{out}, {inp}]) is not a multiple of the {p} block size {bs}{}",
                lin.name,
                if bs == 256 { " (use q8_0, q5_0 or q4_0, whose blocks are 32 wide)" } else { "" }
            );
            let src = w.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
            let q = if device.is_cpu() { QTensor::quantize(&src, g) } else { QTensor::quantize_onto(&src, g, device) }
                .with_context(|| format!("{}: quantizing [{out}, {inp}] to {p}", lin.name))?;
            Weight::quant(Arc::new(q), model_dtype)?
        }
        (None, None) => unreachable!("every precision is a float or a block type"),
    };
    Ok(Linear { weight, bias: lin.bias.clone(), name: lin.name.clone() })
}

/// A copy of `model` whose linear layers (every block projection and the unembedding) are
/// stored at `p`. `model` is unchanged; the copy shares embeddings, norms and the tokenizer.
pub fn quantize(model: &Model, p: Precision) -> Result<Model> {
    let mut m = model.clone();
    for (l, block) in m.blocks.iter_mut().enumerate() {
        for lin in block.linears_mut() {
            *lin = quantize_linear(lin, p, model.dtype, &model.device).with_context(|| format!("layer {l}"))?;
        }
    }
    m.lm_head = quantize_linear(&m.lm_head, p, model.dtype, &model.device)?;
    m.info.quantized = p.ggml().is_some();
    Ok(m)
}

/// Loads `source` (an HF directory or GGUF file, see [`Model::load`]) and stores its linear
/// layers at `p`.
pub fn load_quantized(source: &str, device: &Device, p: Precision) -> Result<Model> {
    let m = Model::load(source, device)?;
    quantize(&m, p).with_context(|| format!("quantizing {source} to {p}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::{HookPoint, Hooks, Phase, Positions};
    use crate::base::rng::Rng;
    use candle_core::Tensor;
    use half::f16;
    use std::path::{Path, PathBuf};

    fn gaussian(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
        let mut r = Rng::new(seed);
        (0..rows * cols).map(|_| r.normal() as f32).collect()
    }

    fn roundtrip(x: &[f32], cols: usize, g: GgmlDType) -> (QTensor, Vec<f32>) {
        let t = Tensor::from_vec(x.to_vec(), (x.len() / cols, cols), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&t, g).unwrap();
        let y = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        (q, y)
    }

    fn f16r(x: f32) -> f32 {
        f16::from_f32(x).to_f32()
    }

    /// Q8_0: per block of 32, `d = amax/127`, `q = round(x/d)`, stored scale `d16 = f16(d)`.
    /// `|x - q d16| <= |x - q d| + |q| |d - d16| <= d/2 + 127 |d - d16|`.
    #[test]
    fn q8_0_error_within_half_a_step() {
        let x = gaussian(8, 256, 1);
        let (_, y) = roundtrip(&x, 256, GgmlDType::Q8_0);
        let mut worst = 0.0f32;
        for (xb, yb) in x.chunks(32).zip(y.chunks(32)) {
            let d = xb.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            let bound = 0.5 * d + 127.0 * (d - f16r(d)).abs() + 1e-6 * d;
            for (a, b) in xb.iter().zip(yb) {
                let e = (a - b).abs();
                assert!(e <= bound, "Q8_0 error {e} > bound {bound} (d {d})");
                worst = worst.max(e / d);
            }
        }
        assert!(worst > 0.4, "errors should reach close to half a step, max {worst} steps");
    }

    /// Q4_0: `d = m/-8` with `m` the block's value of largest magnitude, `q = min(15, ⌊x/d + 8.5⌋)`,
    /// value `(q - 8) d16`. Unclamped elements (`x/d < 7.5`): error `<= |d|/2 + 8|d - d16|`; the
    /// clamped ones (`x/d` in [7.5, 8], i.e. near `-m`) `<= |d| + 8|d - d16|`.
    #[test]
    fn q4_0_error_within_half_a_step_or_one_when_clamped() {
        let x = gaussian(8, 256, 2);
        let (_, y) = roundtrip(&x, 256, GgmlDType::Q4_0);
        for (xb, yb) in x.chunks(32).zip(y.chunks(32)) {
            let m = xb.iter().copied().fold(0f32, |m, v| if v.abs() > m.abs() { v } else { m });
            let d = m / -8.0;
            let slack = 8.0 * (d - f16r(d)).abs() + 1e-6 * d.abs();
            for (a, b) in xb.iter().zip(yb) {
                let e = (a - b).abs();
                let bound = if a / d >= 7.5 { d.abs() } else { 0.5 * d.abs() } + slack;
                assert!(e <= bound, "Q4_0 error {e} > bound {bound} (x/d {})", a / d);
            }
        }
    }

    /// Q4_K: per super-block of 256, sub-blocks of 32 with 6-bit scale `sc_j` and min `m_j` and
    /// f16 super-scales `d`, `dmin`; every weight is the nearest point of its sub-block's grid
    /// `{d sc_j k - dmin m_j : k = 0..15}`, so its error is the distance to that grid (at most
    /// half a step `d sc_j / 2` inside the grid's range).
    #[test]
    fn q4_k_values_are_the_nearest_grid_points() {
        let x = gaussian(4, 512, 3);
        let (q, y) = roundtrip(&x, 512, GgmlDType::Q4K);
        let data = q.data().unwrap();
        assert_eq!(data.len(), x.len() / 256 * 144);
        let mut inside = 0;
        for (bi, blk) in data.chunks(144).enumerate() {
            let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
            let dmin = f16::from_le_bytes([blk[2], blk[3]]).to_f32();
            let s = &blk[4..16];
            for j in 0..8 {
                let (sc, mn) = if j < 4 {
                    (s[j] & 63, s[j + 4] & 63)
                } else {
                    ((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
                };
                let (step, lo) = (d * sc as f32, -dmin * mn as f32);
                for i in 0..32 {
                    let k = bi * 256 + j * 32 + i;
                    let (a, b) = (x[k], y[k]);
                    let kk = if step > 0.0 { ((a - lo) / step).round().clamp(0.0, 15.0) } else { 0.0 };
                    let dist = (a - (lo + kk * step)).abs();
                    let tol = 1e-5 * (a.abs() + lo.abs() + 16.0 * step);
                    assert!(((a - b).abs() - dist).abs() <= tol, "block {bi} sub {j} elt {i}: error {} vs grid distance {dist}", (a - b).abs());
                    if a >= lo && a <= lo + 15.0 * step {
                        inside += 1;
                        assert!((a - b).abs() <= 0.5 * step + tol);
                    }
                }
            }
        }
        assert!(inside > x.len() * 9 / 10, "{inside} of {} inside the grids", x.len());
    }

    /// Relative RMS error of Gaussian weights per format, ordered by bits per weight.
    #[test]
    fn rms_error_orders_by_bits() {
        let x = gaussian(8, 512, 4);
        let rms = |y: &[f32]| (x.iter().zip(y).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>() / x.len() as f64).sqrt();
        let err = |g| rms(&roundtrip(&x, 512, g).1);
        let order = [GgmlDType::Q8_0, GgmlDType::Q6K, GgmlDType::Q5K, GgmlDType::Q4K, GgmlDType::Q3K, GgmlDType::Q2K];
        let e: Vec<f64> = order.iter().map(|g| err(*g)).collect();
        println!("relative RMS error (unit-variance weights) q8_0 q6_k q5_k q4_k q3_k q2_k: {e:?}");
        assert!(e.windows(2).all(|w| w[0] < w[1]), "{e:?}");
        // Measured: q8_0 0.0054, q6_k 0.018, q5_k 0.037, q4_k 0.074, q3_k 0.152, q2_k 0.287 (σ = 1);
        // q8_0 is uniform rounding with step amax/127 (amax ≈ 2σ for 32 Gaussians): step/√12 ≈ 0.005.
        assert!(e[0] < 0.008 && e[3] < 0.1 && e[5] < 0.4, "{e:?}");
        let (q40, q41) = (err(GgmlDType::Q4_0), err(GgmlDType::Q4_1));
        println!("q4_0 {q40}, q4_1 {q41}");
        assert!(e[2] < q40 && e[2] < q41 && q40 < e[4] && q41 < e[4], "q4_0 {q40}, q4_1 {q41}, {e:?}");
    }

    #[test]
    fn precision_names() {
        for p in Precision::ALL {
            assert_eq!(p.name().parse::<Precision>().unwrap(), p);
            assert_eq!(p.to_string(), p.name());
        }
        assert_eq!("Q4_K".parse::<Precision>().unwrap(), Precision::Q4K);
        assert_eq!("q8-0".parse::<Precision>().unwrap(), Precision::Q8_0);
        assert_eq!("bf16".parse::<Precision>().unwrap(), Precision::BF16);
        for (bad, says) in [("fp8", "FP8"), ("int4", "q4_0"), ("int8", "q8_0"), ("q8_k", "activations"), ("q4_k_m", "one type"), ("q7", "Supported")] {
            let e = bad.parse::<Precision>().unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains(says), "{bad}: {e}");
        }
        assert_eq!(Precision::Q4K.block_size(), 256);
        assert_eq!(Precision::Q4_0.block_size(), 32);
        let p: Precision = serde_json::from_str("\"q2_k\"").unwrap();
        assert_eq!(p, Precision::Q2K);
    }

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/parity").join(name)
    }

    /// A random Llama with widths that are multiples of 256 (d 256, ffn 512), so the K-quants
    /// apply to every layer; weights `N(0, 1/in)` so activations stay O(1).
    fn wide_llama(dir: &Path) -> Model {
        std::fs::create_dir_all(dir).unwrap();
        let (d, f, v, layers, kv) = (256usize, 512usize, 300usize, 2usize, 128usize);
        let cfg = serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": d, "intermediate_size": f,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64, "num_hidden_layers": layers,
            "vocab_size": v, "max_position_embeddings": 128, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
            "hidden_act": "silu", "tie_word_embeddings": false, "attention_bias": false, "mlp_bias": false,
            "torch_dtype": "float32"
        });
        std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
        let mut tensors: Vec<(String, Vec<usize>)> = vec![
            ("model.embed_tokens.weight".into(), vec![v, d]),
            ("model.norm.weight".into(), vec![d]),
            ("lm_head.weight".into(), vec![v, d]),
        ];
        for l in 0..layers {
            let p = format!("model.layers.{l}");
            for (n, s) in [
                ("input_layernorm", vec![d]),
                ("post_attention_layernorm", vec![d]),
                ("self_attn.q_proj", vec![d, d]),
                ("self_attn.k_proj", vec![kv, d]),
                ("self_attn.v_proj", vec![kv, d]),
                ("self_attn.o_proj", vec![d, d]),
                ("mlp.gate_proj", vec![f, d]),
                ("mlp.up_proj", vec![f, d]),
                ("mlp.down_proj", vec![d, f]),
            ] {
                tensors.push((format!("{p}.{n}.weight"), s));
            }
        }
        let mut map = std::collections::HashMap::new();
        for (i, (name, shape)) in tensors.iter().enumerate() {
            let n: usize = shape.iter().product();
            let vals: Vec<f32> = if shape.len() == 1 {
                vec![1.0; n]
            } else {
                let sd = if name.contains("embed") { 1.0 } else { 1.0 / (shape[1] as f32).sqrt() };
                gaussian(1, n, 100 + i as u64).iter().map(|x| x * sd).collect()
            };
            map.insert(name.clone(), Tensor::from_vec(vals, shape.as_slice(), &Device::Cpu).unwrap());
        }
        candle_core::safetensors::save(&map, dir.join("model.safetensors")).unwrap();
        Model::from_hf_dir(dir, &Device::Cpu, DType::F32).unwrap()
    }

    fn logits(m: &Model, ids: &[Vec<u32>]) -> Vec<f32> {
        m.forward(ids, &Hooks::new()).unwrap().logits.unwrap().flatten_all().unwrap().to_vec1().unwrap()
    }

    fn rel_rms(a: &[f32], b: &[f32]) -> f64 {
        let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
        let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
        (num / den).sqrt()
    }

    #[test]
    fn quantized_models_stay_close_to_f32_in_order() {
        let dir = std::env::temp_dir().join(format!("interp_kit_quantize_{}", std::process::id()));
        let m = wide_llama(&dir);
        // 20 prompt tokens (prefill through the dense-copy gemm) and a 3-token batch row
        // (quantized dot products) in one padded batch.
        let ids = vec![(0..20u32).map(|i| (i * 37 + 5) % 300).collect::<Vec<_>>(), vec![7, 8, 9]];
        let base = logits(&m, &ids);
        let mut errs = vec![];
        for p in [Precision::F32, Precision::BF16, Precision::Q8_0, Precision::Q6K, Precision::Q4K, Precision::Q4_0, Precision::Q3K, Precision::Q2K] {
            let q = quantize(&m, p).unwrap();
            assert_eq!(q.info.quantized, p.ggml().is_some());
            errs.push((p, rel_rms(&logits(&q, &ids), &base)));
        }
        println!("relative RMS logit error vs f32: {errs:?}");
        let e = |p: Precision| errs.iter().find(|x| x.0 == p).unwrap().1;
        assert_eq!(e(Precision::F32), 0.0);
        assert!(e(Precision::BF16) < e(Precision::Q8_0), "{errs:?}");
        assert!(e(Precision::Q8_0) < e(Precision::Q6K) && e(Precision::Q6K) < e(Precision::Q4K), "{errs:?}");
        assert!(e(Precision::Q4K) < e(Precision::Q4_0) && e(Precision::Q4_0) < e(Precision::Q2K), "{errs:?}");
        assert!(e(Precision::Q3K) < e(Precision::Q2K), "{errs:?}");
        // Measured (this seed): bf16 0.0030, q8_0 0.0102, q6_k 0.033, q4_k 0.133, q4_0 0.162,
        // q3_k 0.280, q2_k 0.537; tolerances ~1.5x the measured values.
        for (p, tol) in [(Precision::BF16, 0.005), (Precision::Q8_0, 0.015), (Precision::Q6K, 0.05), (Precision::Q4K, 0.2), (Precision::Q4_0, 0.25)] {
            assert!(e(p) < tol, "{p}: {} >= {tol}", e(p));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hooks_and_steering_run_on_a_quantized_fixture() {
        let m = Model::from_hf_dir(&fixture("llama"), &Device::Cpu, DType::F32).unwrap();
        let ids = vec![vec![1u32, 5, 9, 200, 17, 3]];
        let e = quantize(&m, Precision::Q4K).err().map(|e| format!("{e:#}")).unwrap_or_default();
        assert!(e.contains("layer 0") && e.contains("input width 64") && e.contains("256"), "{e}");
        for p in [Precision::BF16, Precision::Q8_0, Precision::Q4_0] {
            let q = quantize(&m, p).unwrap();
            let pt = HookPoint::resid_post(1);
            let out = q.run_with_cache(&ids, &[pt], Positions::All).unwrap();
            assert_eq!(out.activations.row(pt, 0).unwrap().dims(), &[6, 64]);
            let plain = logits(&q, &ids);
            let shift = Tensor::ones(64, DType::F32, &Device::Cpu).unwrap();
            let hooks = Hooks::new().write(pt, Phase::Both, move |x, _| Ok(x.broadcast_add(&shift)?));
            let steered: Vec<f32> = q.forward(&ids, &hooks).unwrap().logits.unwrap().flatten_all().unwrap().to_vec1().unwrap();
            assert!(rel_rms(&steered, &plain) > 1e-3, "{p}: steering changed nothing");
        }
    }
}
