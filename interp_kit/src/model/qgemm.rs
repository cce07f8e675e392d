//! Q8_0 kernels for the CPU inference path: `y = x W^T` for a few rows (batched decode), and a
//! fast dequantizer (prefill multiplies through a transient f32 copy and gemm).
//!
//! The loader stores this model family's d = 896 matrices as Q8_0 (GGUF's Q5_0 is re-encoded
//! losslessly), so Q8_0 carries most of the weights and the LM head.
//!
//! candle's quantized matmul quantizes the activations to 8 bits and, for each input row,
//! re-reads the weight rows; at batch 8 it is compute-bound on the 2-core machine. Here each
//! 32-value block of a weight row is converted to f32 in registers once and multiplied with up
//! to [`MAX_ROWS`] input rows (AVX2/FMA; a portable loop elsewhere). Activations stay f32, so
//! the result is `x · dequantize(W)^T` up to f32 summation order.
use anyhow::{ensure, Result};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use half::f16;
use rayon::prelude::*;
use std::sync::Arc;

/// Bytes and values of one Q8_0 block: an f16 scale and 32 signed bytes.
const BLOCK_BYTES: usize = 34;
const BLOCK: usize = 32;
/// Input rows multiplied together per pass over a weight row.
pub const MAX_ROWS: usize = 8;
/// Weight rows per parallel task.
const ROWS_PER_TASK: usize = 16;

/// Whether [`matmul_xwt`] handles this weight (a 2-d Q8_0 matrix on the CPU).
pub fn supports(w: &QTensor) -> bool {
    w.device().is_cpu() && w.dtype() == GgmlDType::Q8_0 && w.shape().dims().len() == 2
}

/// The `[n, k]` dims and raw blocks of a Q8_0 matrix, checked.
fn q8_0_rows(w: &QTensor) -> Result<(usize, usize, std::borrow::Cow<'_, [u8]>)> {
    ensure!(supports(w), "Q8_0 kernel: weight is {:?} {:?} on {:?}", w.dtype(), w.shape(), w.device().location());
    let (n, k) = w.shape().dims2()?;
    ensure!(k % BLOCK == 0, "Q8_0 kernel: in-dim {k} is not a whole number of {BLOCK}-value blocks");
    let data = w.data()?;
    ensure!(data.len() == n * k / BLOCK * BLOCK_BYTES, "Q8_0 kernel: {} bytes for {n} x {k}", data.len());
    Ok((n, k, data))
}

/// `y[m, n] = x[m, k] · W[n, k]^T` for a Q8_0 `W`; `x`, `y` row-major f32.
pub fn matmul_xwt(x: &[f32], m: usize, w: &QTensor, y: &mut [f32]) -> Result<()> {
    let (n, k, data) = q8_0_rows(w)?;
    ensure!(x.len() == m * k, "Q8_0 kernel: input has {} values, not {m} x {k}", x.len());
    ensure!(y.len() == m * n, "Q8_0 kernel: output has {} values, not {m} x {n}", y.len());
    let row_bytes = k / BLOCK * BLOCK_BYTES;
    let y_ptr = SendPtr(y.as_mut_ptr());
    (0..n.div_ceil(ROWS_PER_TASK)).into_par_iter().for_each(|t| {
        let y = y_ptr;
        for j in t * ROWS_PER_TASK..n.min((t + 1) * ROWS_PER_TASK) {
            let wrow = &data[j * row_bytes..(j + 1) * row_bytes];
            let mut r0 = 0;
            while r0 < m {
                let rows = MAX_ROWS.min(m - r0);
                let mut out = [0f32; MAX_ROWS];
                dot_rows(&x[r0 * k..(r0 + rows) * k], rows, k, wrow, &mut out[..rows]);
                for (r, v) in out[..rows].iter().enumerate() {
                    // SAFETY: column j belongs to this task only; y holds m * n values.
                    unsafe { *y.0.add((r0 + r) * n + j) = *v };
                }
                r0 += rows;
            }
        }
    });
    Ok(())
}

/// Dequantizes a Q8_0 matrix to f32 on all cores.
pub fn dequantize(w: &QTensor) -> Result<Vec<f32>> {
    let (n, k, data) = q8_0_rows(w)?;
    let mut out = vec![0f32; n * k];
    const CHUNK: usize = 256; // blocks per task
    out.par_chunks_mut(BLOCK * CHUNK).zip(data.par_chunks(BLOCK_BYTES * CHUNK)).for_each(|(o, b)| dequant_blocks(b, o));
    Ok(out)
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: used only to write disjoint output columns from the tasks of one parallel loop.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

fn scale(b: &[u8]) -> f32 {
    f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// `out[r] = x[r, :] · w` for `rows` input rows (row stride `k`) and one Q8_0 row `w`.
fn dot_rows(x: &[f32], rows: usize, k: usize, w: &[u8], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: the features are present; the slices hold rows * k values and k / 32 blocks.
        unsafe {
            return match rows {
                1 => avx::dot_rows::<1, 4>(x, k, w, out),
                2 => avx::dot_rows::<2, 2>(x, k, w, out),
                3 => avx::dot_rows::<3, 1>(x, k, w, out),
                4 => avx::dot_rows::<4, 1>(x, k, w, out),
                5 => avx::dot_rows::<5, 1>(x, k, w, out),
                6 => avx::dot_rows::<6, 1>(x, k, w, out),
                7 => avx::dot_rows::<7, 1>(x, k, w, out),
                _ => avx::dot_rows::<8, 1>(x, k, w, out),
            };
        }
    }
    dot_rows_portable(x, rows, k, w, out)
}

fn dot_rows_portable(x: &[f32], rows: usize, k: usize, w: &[u8], out: &mut [f32]) {
    for (r, o) in out.iter_mut().enumerate().take(rows) {
        let xr = &x[r * k..(r + 1) * k];
        let mut s = 0f32;
        for (bi, b) in w.chunks_exact(BLOCK_BYTES).enumerate() {
            let d = scale(b);
            let xb = &xr[bi * BLOCK..(bi + 1) * BLOCK];
            s += b[2..].iter().zip(xb).map(|(&q, &xv)| (q as i8 as f32 * d) * xv).sum::<f32>();
        }
        *o = s;
    }
}

fn dequant_blocks(b: &[u8], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: the features are present; out holds 32 values per 34-byte block.
        unsafe { return avx::dequant_blocks(b, out) };
    }
    dequant_blocks_portable(b, out)
}

fn dequant_blocks_portable(b: &[u8], out: &mut [f32]) {
    for (blk, o) in b.chunks_exact(BLOCK_BYTES).zip(out.chunks_exact_mut(BLOCK)) {
        let d = scale(blk);
        for (v, &q) in o.iter_mut().zip(&blk[2..]) {
            *v = q as i8 as f32 * d;
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn avx2() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use super::{scale, BLOCK, BLOCK_BYTES};
    use std::arch::x86_64::*;

    /// The 32 values of one Q8_0 block as four f32 vectors, times the block's scale.
    #[inline(always)]
    unsafe fn block_f32(b: *const u8) -> [__m256; 4] {
        let d = _mm256_set1_ps(scale(std::slice::from_raw_parts(b, 2)));
        let q = _mm256_loadu_si256(b.add(2) as *const __m256i);
        let lo = _mm256_castsi256_si128(q);
        let hi = _mm256_extracti128_si256(q, 1);
        let f = |v: __m128i| _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)), d);
        [f(lo), f(_mm_srli_si128(lo, 8)), f(hi), f(_mm_srli_si128(hi, 8))]
    }

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// `R` input rows, `A` accumulators per row (one FMA chain per accumulator: with few rows,
    /// several chains per row hide the FMA latency).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_rows<const R: usize, const A: usize>(x: &[f32], k: usize, w: &[u8], out: &mut [f32]) {
        debug_assert!(x.len() >= R * k && w.len() == k / BLOCK * BLOCK_BYTES && out.len() >= R);
        let mut acc = [[_mm256_setzero_ps(); A]; R];
        let xp = x.as_ptr();
        for bi in 0..k / BLOCK {
            let wv = block_f32(w.as_ptr().add(bi * BLOCK_BYTES));
            for (v, wv) in wv.iter().enumerate() {
                let off = bi * BLOCK + v * 8;
                for (r, a) in acc.iter_mut().enumerate() {
                    a[v % A] = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(r * k + off)), *wv, a[v % A]);
                }
            }
        }
        for (o, a) in out.iter_mut().zip(acc) {
            let mut s = a[0];
            for v in &a[1..] {
                s = _mm256_add_ps(s, *v);
            }
            *o = hsum(s);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dequant_blocks(b: &[u8], out: &mut [f32]) {
        let nb = b.len() / BLOCK_BYTES;
        debug_assert!(out.len() >= nb * BLOCK);
        for i in 0..nb {
            let v = block_f32(b.as_ptr().add(i * BLOCK_BYTES));
            for (j, v) in v.iter().enumerate() {
                _mm256_storeu_ps(out.as_mut_ptr().add(i * BLOCK + j * 8), *v);
            }
        }
    }
}

/// [`matmul_xwt`] as a candle op on an f32 input `[.., k]` (inference only: no backward).
pub struct Q8_0MatMul(pub Arc<QTensor>);

impl CustomOp1 for Q8_0MatMul {
    fn name(&self) -> &'static str {
        "q8_0-matmul-f32"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, k) = self.0.shape().dims2()?;
        let dims = l.shape().dims();
        if dims.last() != Some(&k) {
            candle_core::bail!("q8_0 matmul: input {dims:?} does not end in the weight's in-dim {k}")
        }
        let CpuStorage::F32(data) = s else { candle_core::bail!("q8_0 matmul: input must be f32") };
        let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("q8_0 matmul: input must be contiguous") };
        let m = l.shape().elem_count() / k.max(1);
        let mut y = vec![0f32; m * n];
        matmul_xwt(&data[a..b], m, &self.0, &mut y).map_err(|e| candle_core::Error::Msg(format!("{e:#}")))?;
        let mut out = dims.to_vec();
        *out.last_mut().expect("checked above") = n;
        Ok((CpuStorage::F32(y), Shape::from(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn q8(n: usize, k: usize) -> QTensor {
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
        QTensor::quantize(&w, GgmlDType::Q8_0).unwrap()
    }

    /// Against candle's own dequantization and an f32 matmul, for 1..=8 rows, more rows than
    /// one pass takes (11, 20), and `n` off the task grid.
    #[test]
    fn matmul_matches_dequantize_then_matmul() {
        let dev = Device::Cpu;
        for (m, n, k) in [(1, 16, 64), (2, 40, 96), (3, 7, 32), (5, 33, 128), (8, 17, 64), (11, 50, 96), (20, 9, 256)] {
            let q = q8(n, k);
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
            let want = x.matmul(&q.dequantize(&dev).unwrap().t().unwrap()).unwrap();
            let got = x.apply_op1_no_bwd(&Q8_0MatMul(Arc::new(q))).unwrap();
            let err = (&got - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(err <= 1e-5 * scale, "m={m} n={n} k={k}: max error {err} vs scale {scale}");
        }
    }

    /// Bit-identical to candle's dequantizer (the same products `q * d` in f32).
    #[test]
    fn dequantize_equals_candle() {
        let q = q8(300, 96); // more blocks than one task takes, and a partial last task
        let want: Vec<f32> = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(dequantize(&q).unwrap(), want);
    }

    /// The SIMD kernels (where the machine has them) against the portable loops.
    #[test]
    fn simd_matches_portable() {
        let (k, rows) = (96, 8);
        let q = q8(1, k);
        let data = q.data().unwrap();
        let x: Vec<f32> = (0..rows * k).map(|i| (i as f32 * 0.37).sin()).collect();
        for r in 1..=rows {
            let (mut a, mut b) = ([0f32; 8], [0f32; 8]);
            dot_rows(&x, r, k, &data, &mut a[..r]);
            dot_rows_portable(&x, r, k, &data, &mut b[..r]);
            for i in 0..r {
                assert!((a[i] - b[i]).abs() <= 1e-5 * b[i].abs().max(1.0), "{r} rows, row {i}: {} vs {}", a[i], b[i]);
            }
        }
        let (mut a, mut b) = (vec![0f32; k], vec![0f32; k]);
        dequant_blocks(&data, &mut a);
        dequant_blocks_portable(&data, &mut b);
        assert_eq!(a, b);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let q = q8(8, 64);
        let mut y = vec![0f32; 8];
        let e = matmul_xwt(&[0.0; 63], 1, &q, &mut y).unwrap_err();
        assert!(format!("{e}").contains("63 values"), "{e}");
        let q4 = QTensor::quantize(&Tensor::zeros((8, 256), candle_core::DType::F32, &Device::Cpu).unwrap(), GgmlDType::Q4K).unwrap();
        assert!(!supports(&q4) && supports(&q));
    }
}
