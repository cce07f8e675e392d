//! Q8_0 kernels for the CPU inference path: `y = x W^T` for a few rows (batched decode), and a
//! fast dequantizer (prefill multiplies through a transient f32 copy and gemm).
//!
//! The loader stores this model family's d = 896 matrices as Q8_0 (GGUF's Q5_0 is re-encoded
//! losslessly), so Q8_0 carries most of the weights and the LM head.
//!
//! For one input row, candle's quantized matmul quantizes the row to Q8_0 blocks and takes
//! integer dot products with each weight row (`vec_dot_q8_0_q8_0`); for more rows it re-reads
//! every weight row once per input row. [`matmul_xwt`] does the same arithmetic but loads each
//! 32-value weight block once for up to [`MAX_ROWS`] input rows (AVX2; a portable loop
//! elsewhere). Each row's result is that of candle's `vec_dot` on the row alone, bit for bit on
//! AVX2, so a row's decode output does not depend on how many rows share its batch.
//!
//! On CPUs with AVX-512 VNNI the inference path uses [`super::q8_packed`] instead (a repacked
//! weight and a tiled int8 kernel, every decode batch and, with `Model::int8_prefill`, prefill);
//! [`matmul_xwt`] serves AVX2 machines, and [`dequantize`] the f32 prefill and the gradient path.
//!
//! An earlier version kept the activations in f32 and converted each weight block to f32 in
//! registers; converting every block on every call made it slower at 2-5 rows (a 4864 x 896
//! layer: 0.46 vs 0.32 ms at 2 rows) and no faster at 8 (BENCHMARKS.md).
use anyhow::{ensure, Result};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, CustomOp1, DeviceLocation, Layout, Shape};
use half::f16;
use rayon::prelude::*;
use crate::base::cpu::{level, SimdLevel};
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
    kernel_applies(w.device().location(), w.dtype(), w.shape().rank())
}

/// The dispatch decision behind [`supports`], on plain values so that it can be tested without a
/// GPU. The kernels here read host memory, so only a CPU weight qualifies; a weight on a GPU stays
/// on candle's quantized matmul and dequantizer for that device (`QMatMul`, `QTensor::dequantize`),
/// which the callers ([`super::layers::quant_path`], [`super::layers::dequant_path`]) choose.
pub fn kernel_applies(loc: DeviceLocation, dtype: GgmlDType, rank: usize) -> bool {
    matches!(loc, DeviceLocation::Cpu) && dtype == GgmlDType::Q8_0 && rank == 2
}

/// The `[n, k]` dims and raw blocks of a Q8_0 matrix, checked.
pub(crate) fn q8_0_rows(w: &QTensor) -> Result<(usize, usize, std::borrow::Cow<'_, [u8]>)> {
    ensure!(supports(w), "Q8_0 kernel: weight is {:?} {:?} on {:?}", w.dtype(), w.shape(), w.device().location());
    let (n, k) = w.shape().dims2()?;
    ensure!(k % BLOCK == 0, "Q8_0 kernel: in-dim {k} is not a whole number of {BLOCK}-value blocks");
    let data = w.data()?;
    ensure!(data.len() == n * k / BLOCK * BLOCK_BYTES, "Q8_0 kernel: {} bytes for {n} x {k}", data.len());
    Ok((n, k, data))
}

/// Bytes of one Q8_0 row of `k` values.
pub(crate) fn row_bytes(k: usize) -> usize {
    k / BLOCK * BLOCK_BYTES
}

/// `y[m, n] = x[m, k] · W[n, k]^T` for a Q8_0 `W`; `x`, `y` row-major f32.
pub fn matmul_xwt(x: &[f32], m: usize, w: &QTensor, y: &mut [f32]) -> Result<()> {
    let (n, k, data) = q8_0_rows(w)?;
    ensure!(x.len() == m * k, "Q8_0 kernel: input has {} values, not {m} x {k}", x.len());
    ensure!(y.len() == m * n, "Q8_0 kernel: output has {} values, not {m} x {n}", y.len());
    let row_bytes = k / BLOCK * BLOCK_BYTES;
    let y_ptr = SendPtr(y.as_mut_ptr());
    let xq = quantize_rows(x, m, k);
    // candle's own worker pool (not rayon): candle's ops before and after this one run there, and
    // its workers spin for a while after each op, so a second pool would compete for the cores.
    candle_core::utils::barrier_pool().execute_chunked(n.div_ceil(ROWS_PER_TASK), |tasks| {
        let y = y_ptr;
        for j in tasks.start * ROWS_PER_TASK..n.min(tasks.end * ROWS_PER_TASK) {
            let wrow = &data[j * row_bytes..(j + 1) * row_bytes];
            let mut r0 = 0;
            while r0 < m {
                let rows = MAX_ROWS.min(m - r0);
                let mut out = [0f32; MAX_ROWS];
                dot_rows(&xq[r0 * row_bytes..(r0 + rows) * row_bytes], rows, wrow, &mut out[..rows]);
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
    // rayon, like the gemm that consumes the result (candle's pool would spin beside it).
    out.par_chunks_mut(BLOCK * CHUNK).zip(data.par_chunks(BLOCK_BYTES * CHUNK)).for_each(|(o, b)| dequant_blocks(b, o));
    Ok(out)
}

/// The rows `ids` of a Q8_0 matrix dequantized to f32 (`ids.len() x k`, row-major): a token
/// embedding lookup on a table kept quantized. Bit-identical to the same rows of [`dequantize`].
pub fn dequantize_rows(w: &QTensor, ids: &[u32]) -> Result<Vec<f32>> {
    let (n, k, data) = q8_0_rows(w)?;
    let row_bytes = k / BLOCK * BLOCK_BYTES;
    let mut out = vec![0f32; ids.len() * k];
    for (o, &id) in out.chunks_exact_mut(k).zip(ids) {
        let id = id as usize;
        ensure!(id < n, "token id {id} is outside the table's {n} rows (the vocabulary)");
        dequant_blocks(&data[id * row_bytes..(id + 1) * row_bytes], o);
    }
    Ok(out)
}

/// Runs `f(state, t)` for every task `t < n` on candle's worker pool with guided scheduling: a
/// thread takes a quarter of the remaining tasks over the thread count at a time, at least one,
/// so that runs are long (each thread streams its weights in long runs) while the threads finish
/// within one task of each other (the pool's `execute_chunked` hands out sixteenths: for a
/// 896-row weight in 24-row tasks, three tasks, ~8 % of the call, can be left to one thread at the
/// end). `init` makes each thread's scratch state, once per call, on threads that get a task.
pub(crate) fn par_tasks<S>(n: usize, init: impl Fn() -> S + Sync, f: impl Fn(&mut S, usize) + Sync) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let pool = candle_core::utils::barrier_pool();
    let threads = pool.n_workers() + 1;
    let next = AtomicUsize::new(0);
    // One slot per thread; a thread that takes a slot then takes tasks until none are left (run
    // inline, from inside the pool, both slots fall to the caller: the first does everything).
    pool.execute_chunked(threads, |slots| {
        for _ in slots {
            let mut state = None;
            let mut start = next.load(Ordering::Relaxed);
            loop {
                if start >= n {
                    break;
                }
                let take = ((n - start) / (4 * threads)).max(1);
                match next.compare_exchange_weak(start, start + take, Ordering::Relaxed, Ordering::Relaxed) {
                    Ok(_) => {
                        let s = state.get_or_insert_with(&init);
                        for t in start..start + take {
                            f(s, t);
                        }
                        start = next.load(Ordering::Relaxed);
                    }
                    Err(now) => start = now,
                }
            }
        }
    });
}

#[derive(Clone, Copy)]
pub(super) struct SendPtr<T>(pub(super) *mut T);
// SAFETY: used only to write disjoint parts of one output from the tasks of one parallel loop.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// Row `r` (`len` values) of the buffer.
    ///
    /// # Safety
    /// The row lies in the buffer, and no other live slice overlaps it.
    #[allow(clippy::mut_from_ref)]
    pub(super) unsafe fn row(&self, r: usize, len: usize) -> &mut [T] {
        std::slice::from_raw_parts_mut(self.0.add(r * len), len)
    }
}

fn scale(b: &[u8]) -> f32 {
    f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// The rows of `x` (`m x k`) quantized as candle quantizes a matmul's activations for Q8_0
/// weights (`BlockQ8_0::from_float`: per 32 values, scale `max|x| / 127`), as raw 34-byte blocks.
pub(super) fn quantize_rows(x: &[f32], m: usize, k: usize) -> Vec<u8> {
    use candle_core::quantized::k_quants::{BlockQ8_0, GgmlType};
    let nb = k / BLOCK;
    let mut blocks = vec![BlockQ8_0::zeros(); m * nb];
    for (r, b) in blocks.chunks_exact_mut(nb).enumerate() {
        BlockQ8_0::from_float(&x[r * k..(r + 1) * k], b);
    }
    // SAFETY: `BlockQ8_0` is `#[repr(C)]` { f16, [i8; 32] }: 34 bytes, no padding (candle
    // asserts the size), the layout of a GGUF Q8_0 block.
    let bytes = unsafe { std::slice::from_raw_parts(blocks.as_ptr() as *const u8, blocks.len() * BLOCK_BYTES) };
    bytes.to_vec()
}

/// `out[r] = w · xq[r]` for `rows` quantized input rows (each `w.len()` bytes) and one Q8_0
/// weight row, in candle's arithmetic (`vec_dot_q8_0_q8_0`): exact integer dot products per
/// block, `acc += (d_w d_x) * dot` in eight lanes, then the same horizontal sum. A row's result
/// is therefore bit-identical to candle's quantized matmul on that row alone.
fn dot_rows(xq: &[u8], rows: usize, w: &[u8], out: &mut [f32]) {
    dot_rows_at(level(), xq, rows, w, out)
}

/// [`dot_rows`] with the kernel of `level` (at most [`crate::base::cpu::detected`]): every level
/// gives the same bits, since the block dot products are exact integers and the f32 steps are
/// the same at every level.
fn dot_rows_at(level: SimdLevel, xq: &[u8], rows: usize, w: &[u8], out: &mut [f32]) {
    debug_assert!(level <= crate::base::cpu::detected());
    macro_rules! by_rows {
        ($m:ident :: $f:ident) => {
            match rows {
                1 => $m::$f::<1>(xq, w, out),
                2 => $m::$f::<2>(xq, w, out),
                3 => $m::$f::<3>(xq, w, out),
                4 => $m::$f::<4>(xq, w, out),
                5 => $m::$f::<5>(xq, w, out),
                6 => $m::$f::<6>(xq, w, out),
                7 => $m::$f::<7>(xq, w, out),
                _ => $m::$f::<8>(xq, w, out),
            }
        };
    }
    #[cfg(target_arch = "x86_64")]
    match level {
        // SAFETY: the level's features are present (it is at most the detected level); xq holds
        // rows x w.len() bytes of whole blocks.
        SimdLevel::Avx512Vnni | SimdLevel::Avx512Bf16 | SimdLevel::Amx => return unsafe { by_rows!(avx::dot_rows_vnni) },
        SimdLevel::Avx2 => return unsafe { by_rows!(avx::dot_rows) },
        SimdLevel::Portable => {}
    }
    dot_rows_portable(xq, rows, w, out)
}

/// [`dot_rows`] in plain Rust, lane for lane and in the same order (`mul_add` is fused).
fn dot_rows_portable(xq: &[u8], rows: usize, w: &[u8], out: &mut [f32]) {
    let len = w.len();
    for (r, o) in out.iter_mut().enumerate().take(rows) {
        let x = &xq[r * len..(r + 1) * len];
        let mut acc = [0f32; 8];
        for (wb, xb) in w.chunks_exact(BLOCK_BYTES).zip(x.chunks_exact(BLOCK_BYTES)) {
            let d = scale(wb) * scale(xb);
            for (j, a) in acc.iter_mut().enumerate() {
                let dot: i32 = (0..4).map(|t| wb[2 + 4 * j + t] as i8 as i32 * xb[2 + 4 * j + t] as i8 as i32).sum();
                *a = d.mul_add(dot as f32, *a);
            }
        }
        *o = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
    }
}

/// Q8_0 blocks (34 bytes each) into f32 values, 32 per block.
pub(crate) fn dequant_blocks(b: &[u8], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if level() >= SimdLevel::Avx2 {
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
pub(super) mod avx {
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

    /// `R` quantized input rows against one Q8_0 weight row; see [`super::dot_rows`].
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_rows<const R: usize>(xq: &[u8], w: &[u8], out: &mut [f32]) {
        dot_rows_body::<R, false>(xq, w, out)
    }

    /// [`dot_rows`] with AVX-512 VNNI: one `vpdpbusd` per block and row instead of `vpmaddubsw` +
    /// `vpmaddwd`. The same integers (|x| <= 127 for Q8_0, so `vpmaddubsw`'s 16-bit pair sums
    /// never saturate), hence the same bits.
    #[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512vnni")]
    pub(super) unsafe fn dot_rows_vnni<const R: usize>(xq: &[u8], w: &[u8], out: &mut [f32]) {
        dot_rows_body::<R, true>(xq, w, out)
    }

    #[inline(always)]
    unsafe fn dot_rows_body<const R: usize, const VNNI: bool>(xq: &[u8], w: &[u8], out: &mut [f32]) {
        let len = w.len();
        debug_assert!(xq.len() >= R * len && len % BLOCK_BYTES == 0 && out.len() >= R);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); R];
        let (wp, xp) = (w.as_ptr(), xq.as_ptr());
        let mut off = 0;
        while off < len {
            let dw = scale(std::slice::from_raw_parts(wp.add(off), 2));
            let wq = _mm256_loadu_si256(wp.add(off + 2) as *const __m256i);
            let aw = _mm256_sign_epi8(wq, wq);
            for (r, a) in acc.iter_mut().enumerate() {
                let xb = xp.add(r * len + off);
                let d = _mm256_set1_ps(dw * scale(std::slice::from_raw_parts(xb, 2)));
                let sx = _mm256_sign_epi8(_mm256_loadu_si256(xb.add(2) as *const __m256i), wq);
                let q = if VNNI {
                    _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), aw, sx))
                } else {
                    _mm256_cvtepi32_ps(_mm256_madd_epi16(ones, _mm256_maddubs_epi16(aw, sx)))
                };
                *a = _mm256_fmadd_ps(d, q, *a);
            }
            off += BLOCK_BYTES;
        }
        for (o, a) in out.iter_mut().zip(acc) {
            *o = hsum(a);
        }
    }

    /// candle's `hsum_float_8`: ((x0+x4)+(x2+x6)) + ((x1+x5)+(x3+x7)).
    #[inline(always)]
    pub(in crate::model) unsafe fn hsum(x: __m256) -> f32 {
        let r = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
        let r = _mm_add_ps(r, _mm_movehl_ps(r, r));
        let r = _mm_add_ss(r, _mm_movehdup_ps(r));
        _mm_cvtss_f32(r)
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
/// CPU only: it has no `cuda_fwd`, so candle answers a GPU input with the error "no cuda
/// implementation for q8_0-matmul-f32"; [`super::layers::Linear::forward`] never sends it one
/// (the weight would have to be on the CPU, see [`kernel_applies`]).
pub struct Q8_0MatMul(pub Arc<QTensor>);

impl CustomOp1 for Q8_0MatMul {
    fn name(&self) -> &'static str {
        "q8_0-matmul-f32"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, k) = self.0.shape().dims2()?;
        cpu_fwd_xwt("q8_0 matmul", s, l, n, k, |x, m, y| matmul_xwt(x, m, &self.0, y))
    }
}

/// Plain numbers: every bit pattern is a value (what [`uninit`] may hand out).
pub(crate) trait Plain: Copy {}
impl Plain for f32 {}
impl Plain for u32 {}
impl Plain for i32 {}
impl Plain for u8 {}
impl Plain for u16 {}
impl Plain for i8 {}

/// A buffer of `len` numbers left as the allocator gives it (as candle's `alloc_uninit`): for
/// outputs whose every value the caller writes before anything reads it, so that no `memset`
/// runs first (on the calling thread, while the pool's workers wait).
pub(crate) fn uninit<T: Plain>(len: usize) -> Vec<T> {
    let mut v = Vec::with_capacity(len);
    // SAFETY: every bit pattern is a `T` (`Plain`) and the capacity is `len`; every value is
    // written before it is read (the caller's contract).
    unsafe { v.set_len(len) };
    v
}

/// The CPU forward of a custom op `y = x W^T` (`W` `[n, k]`) on a contiguous f32 input `[.., k]`:
/// checks the input, runs `f(x, m, y)` and gives `[.., n]`. `f` must write every value of `y`.
/// Shared by [`Q8_0MatMul`], [`super::q8_packed::PackedMatMul`], [`super::kquant::KQuantMatMul`]
/// and [`super::bf16::Bf16MatMul`].
pub(super) fn cpu_fwd_xwt(
    what: &str,
    s: &CpuStorage,
    l: &Layout,
    n: usize,
    k: usize,
    f: impl FnOnce(&[f32], usize, &mut [f32]) -> Result<()>,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let dims = l.shape().dims();
    if dims.last() != Some(&k) {
        candle_core::bail!("{what}: input {dims:?} does not end in the weight's in-dim {k}")
    }
    let CpuStorage::F32(data) = s else { candle_core::bail!("{what}: input must be f32") };
    let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("{what}: input must be contiguous") };
    let m = l.shape().elem_count() / k.max(1);
    // Every kernel behind this op writes each of the `m x n` outputs (their tests run on
    // NaN-filled buffers), so the buffer is not zeroed first (a `memset` on the calling thread
    // while the pool waited: ~2 % of an int8 prefill). Depth 0 writes nothing: zeros then.
    let mut y = if k == 0 { vec![0f32; m * n] } else { uninit(m * n) };
    f(&data[a..b], m, &mut y).map_err(|e| candle_core::Error::Msg(format!("{e:#}")))?;
    let mut out = dims.to_vec();
    *out.last_mut().expect("checked above") = n;
    Ok((CpuStorage::F32(y), Shape::from(out)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// Seeded standard-normal `[n, k]` values (a failure reproduces).
    fn normal(n: usize, k: usize, seed: u64) -> Tensor {
        let mut rng = crate::base::rng::Rng::new(seed);
        let v: Vec<f32> = (0..n * k).map(|_| rng.normal() as f32).collect();
        Tensor::from_vec(v, (n, k), &Device::Cpu).unwrap()
    }

    fn q8(n: usize, k: usize) -> QTensor {
        QTensor::quantize(&normal(n, k, (n * 1000 + k) as u64), GgmlDType::Q8_0).unwrap()
    }

    const SHAPES: [(usize, usize, usize); 7] =
        [(1, 16, 64), (2, 40, 96), (3, 7, 32), (5, 33, 128), (8, 17, 64), (11, 50, 96), (20, 9, 256)];

    /// Each output equals candle's `vec_dot` of the weight row with the input row quantized by
    /// candle (`BlockQ8_0::from_float`): bit for bit on AVX2 (the same lanes and order), within
    /// f32 rounding elsewhere. Shapes: 1..=8 rows, more rows than one pass takes (11, 20), and
    /// `n` off the task grid.
    #[test]
    fn matmul_equals_candle_vec_dot_per_row() {
        use candle_core::quantized::k_quants::{BlockQ8_0, GgmlType};
        let quant = |v: &[f32]| {
            let mut b = vec![BlockQ8_0::zeros(); v.len() / BLOCK];
            BlockQ8_0::from_float(v, &mut b);
            b
        };
        let exact = cfg!(target_arch = "x86_64") && level() >= SimdLevel::Avx2;
        for (m, n, k) in SHAPES {
            let seed = (n * 1000 + k) as u64;
            let w: Vec<f32> = normal(n, k, seed).flatten_all().unwrap().to_vec1().unwrap();
            let x: Vec<f32> = normal(m, k, m as u64).flatten_all().unwrap().to_vec1().unwrap();
            let q = QTensor::quantize(&normal(n, k, seed), GgmlDType::Q8_0).unwrap();
            let mut got = vec![f32::NAN; m * n]; // every output is written: the op hands out an unzeroed buffer
            matmul_xwt(&x, m, &q, &mut got).unwrap();
            for i in 0..m {
                let xb = quant(&x[i * k..(i + 1) * k]);
                for j in 0..n {
                    let want = BlockQ8_0::vec_dot(k, &quant(&w[j * k..(j + 1) * k]), &xb);
                    let g = got[i * n + j];
                    if exact {
                        assert_eq!(g.to_bits(), want.to_bits(), "m={m} n={n} k={k} ({i}, {j}): {g} vs {want}");
                    } else {
                        assert!((g - want).abs() <= 1e-5 * want.abs().max(1.0), "m={m} n={n} k={k} ({i}, {j})");
                    }
                }
            }
        }
    }

    /// Against candle's dequantized weights and an f32 matmul, within the bound that 8-bit
    /// activations allow: each input value is off by at most half its block's step
    /// (`max|x_block| / 254`), so `|y - y_f32| <= sum over blocks of step/2 * sum |w|`.
    #[test]
    fn matmul_is_within_the_activation_rounding_bound_of_f32() {
        for (m, n, k) in SHAPES {
            let q = QTensor::quantize(&normal(n, k, 7 + n as u64), GgmlDType::Q8_0).unwrap();
            let w: Vec<f32> = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let x: Vec<f32> = normal(m, k, 100 + m as u64).flatten_all().unwrap().to_vec1().unwrap();
            let mut got = vec![0f32; m * n];
            matmul_xwt(&x, m, &q, &mut got).unwrap();
            for i in 0..m {
                for j in 0..n {
                    let (xr, wr) = (&x[i * k..(i + 1) * k], &w[j * k..(j + 1) * k]);
                    let want: f64 = xr.iter().zip(wr).map(|(&a, &b)| a as f64 * b as f64).sum();
                    let bound: f64 = xr
                        .chunks(BLOCK)
                        .zip(wr.chunks(BLOCK))
                        .map(|(xb, wb)| {
                            let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs())) as f64;
                            amax / 254.0 * wb.iter().map(|v| v.abs() as f64).sum::<f64>()
                        })
                        .sum();
                    let err = (got[i * n + j] as f64 - want).abs();
                    assert!(err <= bound * 1.01 + 1e-4, "m={m} n={n} k={k} ({i}, {j}): error {err} > bound {bound}");
                }
            }
        }
    }

    /// A row's output does not depend on the other rows of the call (batched decode law).
    #[test]
    fn rows_do_not_depend_on_the_batch() {
        let (m, n, k) = (13, 24, 128);
        let q = q8(n, k);
        let x: Vec<f32> = normal(m, k, 5).flatten_all().unwrap().to_vec1().unwrap();
        let mut all = vec![0f32; m * n];
        matmul_xwt(&x, m, &q, &mut all).unwrap();
        for i in 0..m {
            let mut one = vec![0f32; n];
            matmul_xwt(&x[i * k..(i + 1) * k], 1, &q, &mut one).unwrap();
            assert_eq!(one, all[i * n..(i + 1) * n], "row {i}");
        }
    }

    /// Row lookups equal the same rows of the whole dequantized matrix; an id past the table is
    /// an error that names it.
    #[test]
    fn dequantize_rows_equals_rows_of_dequantize() {
        let (n, k) = (37, 96);
        let q = q8(n, k);
        let all = dequantize(&q).unwrap();
        let ids = [0u32, 36, 5, 5, 17];
        let got = dequantize_rows(&q, &ids).unwrap();
        for (i, &id) in ids.iter().enumerate() {
            assert_eq!(got[i * k..(i + 1) * k], all[id as usize * k..(id as usize + 1) * k], "id {id}");
        }
        let e = dequantize_rows(&q, &[3, 37]).unwrap_err().to_string();
        assert!(e.contains("37") && e.contains("37 rows"), "{e}");
    }

    /// Bit-identical to candle's dequantizer (the same products `q * d` in f32).
    #[test]
    fn dequantize_equals_candle() {
        let q = q8(300, 96); // more blocks than one task takes, and a partial last task
        let want: Vec<f32> = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(dequantize(&q).unwrap(), want);
    }

    /// Every kernel level this machine has against the portable loops, bit for bit, on rows with
    /// the extreme quantized values (±127 in every block) and on ordinary ones, 1 to 8 rows.
    #[test]
    fn every_level_matches_portable() {
        let k = 160;
        for seed in 0..3u64 {
            let mut w = normal(1, k, 40 + seed).flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let mut x = normal(8, k, 50 + seed).flatten_all().unwrap().to_vec1::<f32>().unwrap();
            if seed == 0 {
                // every value ±max of its block: all quantized values are ±127
                for v in w.iter_mut().chain(x.iter_mut()) {
                    *v = if *v >= 0.0 { 3.0 } else { -3.0 };
                }
            }
            let q = QTensor::quantize(&Tensor::from_vec(w, (1, k), &Device::Cpu).unwrap(), GgmlDType::Q8_0).unwrap();
            let data = q.data().unwrap();
            let xq = quantize_rows(&x, 8, k);
            for rows in 1..=8 {
                let mut want = [0f32; 8];
                dot_rows_portable(&xq, rows, &data, &mut want[..rows]);
                for lvl in crate::base::cpu::detected().up_to() {
                    let mut got = [0f32; 8];
                    dot_rows_at(lvl, &xq, rows, &data, &mut got[..rows]);
                    assert_eq!(got[..rows], want[..rows], "level {lvl}, {rows} rows, seed {seed}");
                }
            }
        }
    }

    /// The dequantizer at this machine's level against the portable loop, bit for bit (the dot
    /// kernels of every level: [`every_level_matches_portable`]).
    #[test]
    fn dequant_matches_portable() {
        let k = 96;
        let q = q8(3, k);
        let data = q.data().unwrap();
        let (mut a, mut b) = (vec![0f32; 3 * k], vec![0f32; 3 * k]);
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

    /// The CPU kernel serves exactly the 2-d Q8_0 weights on the CPU; the same weight on a GPU
    /// (a device location needs no GPU to name) goes to candle's kernels for that device.
    #[test]
    fn kernel_dispatch_by_device() {
        let cuda = DeviceLocation::Cuda { gpu_id: 0 };
        let metal = DeviceLocation::Metal { gpu_id: 0 };
        assert!(kernel_applies(DeviceLocation::Cpu, GgmlDType::Q8_0, 2));
        assert!(!kernel_applies(cuda, GgmlDType::Q8_0, 2));
        assert!(!kernel_applies(metal, GgmlDType::Q8_0, 2));
        assert!(!kernel_applies(DeviceLocation::Cpu, GgmlDType::Q4K, 2));
        assert!(!kernel_applies(DeviceLocation::Cpu, GgmlDType::Q8_0, 3));
        assert!(supports(&q8(8, 64)), "a real CPU Q8_0 tensor takes the same decision");
    }
}
