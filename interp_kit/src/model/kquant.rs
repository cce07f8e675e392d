//! Q4_K and Q6_K weights multiplied in their GGUF blocks by int8 activations on AVX-512 VNNI:
//! the inference path's quantized prefill (`Model::int8_prefill`) for the K-quant matrices of a
//! llama.cpp `Q4_K_M` file (the embedded model's `ffn_down`), which otherwise go through the f32
//! prefill (f32 activations by the dequantized weight, `layers::QuantPath::DequantGemm`).
//!
//! **Arithmetic.** A K-quant super-block holds 256 weights of one row as small unsigned integers
//! `u` with one integer scale `sc` per group of 16 (Q6_K: `sc` per 16 values, `w = d sc (u - 32)`;
//! Q4_K: `sc` and a minimum `m` per 32 values, `w = d sc u - dmin m`). Activations are quantized
//! per 256 values as llama.cpp's `Q8_K` (`d_x = max|x| / 127`, `q = round(x / d_x)`, ties to
//! even), so one output is
//!
//! `y = Σ_s d_x d_w Σ_g sc_g Σ_{i∈g} u_i q_i  +  Σ_s Σ_g c_g d_x Σ_{i∈g} q_i`
//!
//! with the offset terms `c_g = -dmin m` (Q4_K) or `-32 d sc_g` (Q6_K). Each group's integer sum
//! `Σ_{i∈g} u_i q_i` is exact (at most 16 · 63 · 127). Weights and activations of a super-block
//! are both stored in *lane order* ([`lane_pos`]): 32-bit lane `j` of the `t`-th 64-byte vector
//! holds values `16j + 4t .. 16j + 4t + 4`, so four `vpdpbusd` (u8 × i8, four products per lane)
//! leave group `j`'s whole integer sum in lane `j`, with no horizontal sums and no 16-bit
//! intermediates. One convert, one multiply of `d_x` by the weight's sixteen group scales
//! `d sc_g` (f32) and one FMA per super-block finish it into f32 lanes; the offset terms are one
//! f32 dot product of 16 values per super-block (`d_x · group sums` against `c_g`). The weight's
//! bits are unpacked from the GGUF bytes per call, a task's [`ROWS_PER_TASK`] rows at a time, into
//! an L2-sized scratch buffer that each thread reuses: no repacked copy and no f32 copy of the
//! weight.
//!
//! **AMX.** From `AMX_MIN_ROWS` (32) input rows on, on CPUs with AMX (`SimdLevel::Amx`), the group
//! scales go into the weight as two byte planes and each super-block is one chain of tile
//! products (see the `amx` module below): the same integers, summed over the whole super-block
//! before the f32 step ([`dot_amx_portable`], which that kernel equals bit for bit). So on such a
//! CPU a row's output differs in its last bits between calls of fewer and of more rows than
//! `AMX_MIN_ROWS`; within either kernel it does not depend on the other rows.
//!
//! **Numerics.** Only the activations are rounded (to 8 bits per 256 values, as llama.cpp and
//! candle do for a K-quant dot product); the weight enters as stored. [`dot_portable`] is the same
//! arithmetic in plain Rust (its integer sums are the kernel's; its f32 sums are in another order),
//! and the tests hold the kernel to it and both to candle's dequantized weights.
use anyhow::{ensure, Result};
use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;

use super::qgemm::SendPtr;
use crate::base::cpu::SimdLevel;

/// Values per super-block.
pub const QK_K: usize = 256;
/// Groups of 16 values per super-block (the unit of the group scales and offset terms).
const GROUPS: usize = QK_K / 16;
/// Input rows and weight rows of one register tile.
const TILE_ROWS: usize = 4;
const TILE_COLS: usize = 3;
/// Weight rows per parallel task (a multiple of [`TILE_COLS`]).
const ROWS_PER_TASK: usize = 8 * TILE_COLS;
/// From this many input rows on, the AMX kernel where the CPU has it (as `q8_packed`'s).
const AMX_MIN_ROWS: usize = 32;

/// The K-quant block types the kernel reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Q4K,
    Q6K,
}

impl Kind {
    pub fn of(dtype: GgmlDType) -> Option<Kind> {
        match dtype {
            GgmlDType::Q4K => Some(Kind::Q4K),
            GgmlDType::Q6K => Some(Kind::Q6K),
            _ => None,
        }
    }
    /// Bytes per super-block (ggml's `block_q4_K` and `block_q6_K`).
    pub fn block_bytes(self) -> usize {
        match self {
            Kind::Q4K => 144,
            Kind::Q6K => 210,
        }
    }
}

/// Whether [`KQuantMatMul`] takes this weight: a 2-d Q4_K or Q6_K tensor in host memory.
pub fn kernel_applies(loc: candle_core::DeviceLocation, dtype: GgmlDType, rank: usize) -> bool {
    loc == candle_core::DeviceLocation::Cpu && rank == 2 && Kind::of(dtype).is_some()
}

/// One super-block decoded: `u` (0..=15 or 0..=63), the group scales, the weight's scale `d`,
/// and the group offsets `c_g` (see the module doc).
pub struct Decoded {
    pub u: [u8; QK_K],
    pub sc: [i16; GROUPS],
    pub d: f32,
    pub offset: [f32; GROUPS],
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Q4_K's 6-bit scale and minimum of sub-block `j` (ggml's `get_scale_min_k4`).
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// A super-block's integers: the group scales `sc_g` and minimums `m_g`
/// (per group of 16; Q6_K has no minimums), `d` and `dmin` (0 for Q6_K).
fn block_ints(kind: Kind, blk: &[u8]) -> ([i32; GROUPS], [i32; GROUPS], f32, f32) {
    let (mut sc, mut m) = ([0i32; GROUPS], [0i32; GROUPS]);
    match kind {
        Kind::Q4K => {
            for j in 0..8 {
                let (s, mn) = scale_min_k4(j, &blk[4..16]);
                sc[2 * j..2 * j + 2].fill(s as i32);
                m[2 * j..2 * j + 2].fill(mn as i32);
            }
            (sc, m, f16_at(blk, 0), f16_at(blk, 2))
        }
        Kind::Q6K => {
            for (g, v) in sc.iter_mut().enumerate() {
                *v = blk[192 + g] as i8 as i32;
            }
            (sc, m, f16_at(blk, 208), 0.0)
        }
    }
}

/// The group scales, `d` and the offsets of a super-block, without its quants.
fn block_scales(kind: Kind, blk: &[u8]) -> ([i16; GROUPS], f32, [f32; GROUPS]) {
    let (sc, m, d, dmin) = block_ints(kind, blk);
    let offset = std::array::from_fn(|g| match kind {
        Kind::Q4K => -dmin * m[g] as f32,
        Kind::Q6K => -32.0 * d * sc[g] as f32,
    });
    (sc.map(|v| v as i16), d, offset)
}

/// Decodes a super-block (the layouts of ggml's `dequantize_row_q4_K` / `_q6_K`): weight `i` is
/// `d * sc[i / 16] * u[i] + offset[i / 16]`.
pub fn decode(kind: Kind, blk: &[u8]) -> Decoded {
    let (sc, d, offset) = block_scales(kind, blk);
    let mut u = [0u8; QK_K];
    match kind {
        Kind::Q4K => {
            let qs = &blk[16..144];
            for p in 0..4 {
                for l in 0..32 {
                    u[64 * p + l] = qs[32 * p + l] & 0xf;
                    u[64 * p + 32 + l] = qs[32 * p + l] >> 4;
                }
            }
        }
        Kind::Q6K => {
            let (ql, qh) = (&blk[0..128], &blk[128..192]);
            for n in 0..2 {
                for l in 0..32 {
                    let (a, b, h) = (ql[64 * n + l], ql[64 * n + 32 + l], qh[32 * n + l]);
                    u[128 * n + l] = (a & 0xf) | ((h & 3) << 4);
                    u[128 * n + 32 + l] = (b & 0xf) | (((h >> 2) & 3) << 4);
                    u[128 * n + 64 + l] = (a >> 4) | (((h >> 4) & 3) << 4);
                    u[128 * n + 96 + l] = (b >> 4) | (((h >> 6) & 3) << 4);
                }
            }
        }
    }
    Decoded { u, sc, d, offset }
}

/// A K-quant weight `[n, k]` as its GGUF bytes.
pub struct KWeight<'a> {
    kind: Kind,
    n: usize,
    k: usize,
    data: &'a [u8],
}

impl<'a> KWeight<'a> {
    pub fn new(kind: Kind, n: usize, k: usize, data: &'a [u8]) -> Result<Self> {
        ensure!(k % QK_K == 0, "{kind:?} weight: in-dim {k} is not a whole number of {QK_K}-value super-blocks");
        let want = n * k / QK_K * kind.block_bytes();
        ensure!(data.len() == want, "{kind:?} weight: {} bytes for {n} x {k} (want {want})", data.len());
        Ok(Self { kind, n, k, data })
    }
    fn sbs(&self) -> usize {
        self.k / QK_K
    }
    fn block(&self, c: usize, s: usize) -> &'a [u8] {
        let bb = self.kind.block_bytes();
        let o = (c * self.sbs() + s) * bb;
        &self.data[o..o + bb]
    }
}

/// Where value `i` of a super-block is stored in lane order (see the module doc): byte
/// `64t + 4j + b` holds value `16j + 4t + b`.
#[inline]
pub fn lane_pos(i: usize) -> usize {
    64 * ((i % 16) / 4) + 4 * (i / 16) + i % 4
}

/// Reorders a super-block's 256 bytes from value order into lane order ([`lane_pos`]): a
/// transpose of 16 x 4 32-bit words.
fn to_lane_order<T: Copy>(natural: &[T; QK_K], out: &mut [T]) {
    for (i, &v) in natural.iter().enumerate() {
        out[lane_pos(i)] = v;
    }
}

/// Activations `[rows, k]` quantized per 256 values (llama.cpp's `Q8_K`): quants (each
/// super-block in lane order, [`lane_pos`]), scales, and each group of 16's sum times the scale
/// (for the offset terms).
pub struct Q8K {
    q: Vec<i8>,
    d: Vec<f32>,
    /// `rows x sbs x 16`: `d_x * Σ_{i∈g} q_i`.
    gsum: Vec<f32>,
}

impl Q8K {
    /// The quant of value `i` (`0..k`) of row `r` (`k` the width quantized).
    pub fn quant(&self, r: usize, i: usize, k: usize) -> i8 {
        self.q[r * k + i / QK_K * QK_K + lane_pos(i % QK_K)]
    }
    /// Quantizes `x` (`rows x k`, row-major). A super-block holding a NaN or an infinity gets a NaN
    /// scale, so its outputs are NaN as an f32 product's would be.
    pub fn quantize(x: &[f32], rows: usize, k: usize) -> Result<Self> {
        Self::quantize_at(crate::base::cpu::level(), x, rows, k)
    }

    /// [`Q8K::quantize`] with the code of `level` (AVX-512 from [`SimdLevel::Avx512Vnni`] on; the
    /// same bits at every level).
    pub fn quantize_at(level: SimdLevel, x: &[f32], rows: usize, k: usize) -> Result<Self> {
        ensure!(level <= crate::base::cpu::detected(), "Q8_K activations: level {level} is above this CPU's");
        let simd = cfg!(target_arch = "x86_64") && level >= SimdLevel::Avx512Vnni;
        ensure!(k % QK_K == 0, "Q8_K activations: width {k} is not a whole number of {QK_K}-value super-blocks");
        ensure!(x.len() == rows * k, "Q8_K activations: {} values, not {rows} x {k}", x.len());
        let sbs = k / QK_K;
        // Every super-block's quants, scale and group sums are written below.
        let mut q = super::qgemm::uninit::<i8>(rows * k);
        let mut d = super::qgemm::uninit::<f32>(rows * sbs);
        let mut gsum = super::qgemm::uninit::<f32>(rows * sbs * GROUPS);
        let one = |((xs, qs), (ds, gs)): ((&[f32], &mut [i8]), (&mut [f32], &mut [f32]))| {
            let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
            let fin = xs.iter().all(|v| v.is_finite());
            if !fin || amax == 0.0 {
                ds[0] = if fin { 0.0 } else { f32::NAN };
                qs.fill(0);
                gs.fill(if fin { 0.0 } else { f32::NAN });
                return;
            }
            let id = 127.0 / amax;
            let mut nat = [0i8; QK_K];
            for (q, &v) in nat.iter_mut().zip(xs) {
                *q = (v * id).round_ties_even().clamp(-127.0, 127.0) as i8;
            }
            let dx = amax / 127.0;
            ds[0] = dx;
            for (g, gq) in gs.iter_mut().zip(nat.chunks_exact(16)) {
                *g = dx * gq.iter().map(|&v| v as i32).sum::<i32>() as f32;
            }
            to_lane_order(&nat, qs);
        };
        // On candle's worker pool, as the kernel: its workers spin between ops, and a second pool
        // (rayon) would compete with them for the cores.
        let units = rows * sbs;
        const PER: usize = 64;
        let (qp, dp, gp) = (SendPtr(q.as_mut_ptr()), SendPtr(d.as_mut_ptr()), SendPtr(gsum.as_mut_ptr()));
        candle_core::utils::barrier_pool().execute_chunked(units.div_ceil(PER), |ts| {
            let (qp, dp, gp) = (&qp, &dp, &gp);
            for u in ts.start * PER..units.min(ts.end * PER) {
                // SAFETY: super-block u's quants, scale and group sums are written by this task alone.
                let (qs, ds, gs) = unsafe {
                    (
                        std::slice::from_raw_parts_mut(qp.0.add(u * QK_K), QK_K),
                        std::slice::from_raw_parts_mut(dp.0.add(u), 1),
                        std::slice::from_raw_parts_mut(gp.0.add(u * GROUPS), GROUPS),
                    )
                };
                let xs = &x[u * QK_K..(u + 1) * QK_K];
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the level says the CPU has AVX-512 F and BW; every slice holds its
                // super-block's values.
                if simd && unsafe { vnni::quantize_block(xs, qs, ds, gs) } {
                    continue;
                }
                one(((xs, qs), (ds, gs)));
            }
        });
        Ok(Self { q, d, gsum })
    }
}

/// A task's weight rows unpacked for the kernel (L2-sized: [`ROWS_PER_TASK`] rows; one buffer per
/// thread, reused from task to task), so that each super-block is unpacked once per call, not
/// once per tile of input rows.
#[derive(Default)]
struct Prepared {
    sbs: usize,
    /// `cols x sbs x 256` unsigned quants, each super-block in lane order ([`lane_pos`]).
    u: Vec<u8>,
    /// `cols x sbs x 16` group scales `d sc_g` (f32).
    scale: Vec<f32>,
    /// `cols x sbs x 16` offsets `c_g`.
    offset: Vec<f32>,
}

impl Prepared {
    fn resize(&mut self, cols: usize, sbs: usize) {
        self.sbs = sbs;
        self.u.resize(cols * sbs * QK_K, 0);
        self.scale.resize(cols * sbs * GROUPS, 0.0);
        self.offset.resize(cols * sbs * GROUPS, 0.0);
    }
}

/// One output `x[r] · w[c]` in the kernel's arithmetic: exact integer sums per group of 16, each
/// scaled by `d_x · d sc_g` in f32, plus the offset terms (the reference the kernel is tested
/// against; its f32 sums run in another order).
pub fn dot_portable(x: &Q8K, r: usize, w: &KWeight, c: usize) -> f32 {
    let sbs = w.sbs();
    let mut acc = 0f32;
    let mut off = 0f32;
    for s in 0..sbs {
        let b = decode(w.kind, w.block(c, s));
        let dx = x.d[r * sbs + s];
        for g in 0..GROUPS {
            let dot: i32 = (16 * g..16 * g + 16).map(|i| b.u[i] as i32 * x.quant(r, s * QK_K + i, w.k) as i32).sum();
            acc = (dx * (b.d * b.sc[g] as f32)).mul_add(dot as f32, acc);
            off = x.gsum[(r * sbs + s) * GROUPS + g].mul_add(b.offset[g], off);
        }
    }
    acc + off
}

/// One output `x[r] · w[c]` in the AMX kernel's arithmetic (from [`AMX_MIN_ROWS`] rows on, on
/// CPUs with AMX): per super-block the exact integers `P1 = Σ_i v_i q_i` with
/// `v_i = sc_g u_i` (Q4_K) or `sc_g (u_i - 32)` (Q6_K), and `P2 = Σ_i m_g q_i` (Q4_K), then
/// `acc = fma(d_x d, P1, acc)` and `acc = fma(-(d_x dmin), P2, acc)` in f32. The same weights and
/// activations as [`dot_portable`]; only the f32 steps differ (one per super-block instead of one
/// per group of 16), so the two agree to f32 rounding, not bit for bit.
pub fn dot_amx_portable(x: &Q8K, r: usize, w: &KWeight, c: usize) -> f32 {
    let sbs = w.sbs();
    let mut acc = 0f32;
    for s in 0..sbs {
        let blk = w.block(c, s);
        let u = decode(w.kind, blk).u;
        let (sc, m, d, dmin) = block_ints(w.kind, blk);
        let dx = x.d[r * sbs + s];
        let (mut p1, mut p2) = (0i32, 0i32);
        for (i, &ui) in u.iter().enumerate() {
            let (q, g) = (x.quant(r, s * QK_K + i, w.k) as i32, i / 16);
            let v = if w.kind == Kind::Q6K { sc[g] * (ui as i32 - 32) } else { sc[g] * ui as i32 };
            p1 += v * q;
            p2 += m[g] * q;
        }
        acc = (dx * d).mul_add(p1 as f32, acc);
        if w.kind == Kind::Q4K {
            acc = (-(dx * dmin)).mul_add(p2 as f32, acc);
        }
    }
    acc
}

/// `y[m, n] = x[m, k] · W[n, k]^T` for a Q4_K / Q6_K `W` in its GGUF bytes; `x`, `y` row-major
/// f32. The VNNI kernel where `level` allows it, else [`dot_portable`] output by output (slow: the
/// reference).
pub fn matmul_at(level: SimdLevel, x: &[f32], m: usize, w: &KWeight, y: &mut [f32]) -> Result<()> {
    ensure!(level <= crate::base::cpu::detected(), "K-quant kernel: level {level} is above this CPU's");
    let n = w.n;
    ensure!(y.len() == m * n, "K-quant kernel: output has {} values, not {m} x {n}", y.len());
    let xq = Q8K::quantize_at(level, x, m, w.k)?;
    let y_ptr = SendPtr(y.as_mut_ptr());
    #[cfg(target_arch = "x86_64")]
    if level >= SimdLevel::Amx && m >= AMX_MIN_ROWS {
        super::qgemm::par_tasks(n.div_ceil(amx::N), amx::Scratch::default, |scratch, t| {
            let (y, c0, c1) = (&y_ptr, t * amx::N, n.min((t + 1) * amx::N));
            // SAFETY: the level has AMX (and AVX-512 BW); columns c0..c1 of y (m x n) belong to
            // this task only.
            unsafe { amx::columns(scratch, &xq, m, w, c0, c1, y.0.add(c0), n) };
        });
        return Ok(());
    }
    let vnni = cfg!(target_arch = "x86_64") && level >= SimdLevel::Avx512Vnni;
    super::qgemm::par_tasks(n.div_ceil(ROWS_PER_TASK), Prepared::default, |prep, t| {
        let y = y_ptr;
        let (start, end) = (t * ROWS_PER_TASK, n.min((t + 1) * ROWS_PER_TASK));
        #[cfg(target_arch = "x86_64")]
        if vnni {
            // SAFETY: the level says the CPU has AVX-512 VNNI and BW; rows start..end exist.
            unsafe { vnni::prepare(w, start, end, prep) };
        }
        let mut c0 = start;
        while c0 < end {
            let cols = TILE_COLS.min(end - c0);
            let mut r0 = 0;
            while r0 < m {
                let rows = TILE_ROWS.min(m - r0);
                // SAFETY: columns c0..c0+cols belong to this task only; y holds m x n values
                // and the tile's rows and columns are in range; `prep` holds start..end.
                unsafe { tile(vnni, &xq, r0, rows, w, prep, c0 - start, c0, cols, y.0.add(r0 * n + c0), n) };
                r0 += rows;
            }
            c0 += cols;
        }
    });
    Ok(())
}

/// One `rows x cols` tile of outputs at `out` (row stride `ldo`): weight rows `c0..`, which are
/// rows `cl..` of `prep` (VNNI only).
///
/// # Safety
/// `vnni` only where the CPU has AVX-512 VNNI and BW; the tile lies inside `x`, `w`, `prep` and `out`.
#[allow(clippy::too_many_arguments)]
unsafe fn tile(vnni: bool, x: &Q8K, r0: usize, rows: usize, w: &KWeight, prep: &Prepared, cl: usize, c0: usize, cols: usize, out: *mut f32, ldo: usize) {
    #[cfg(target_arch = "x86_64")]
    if vnni {
        macro_rules! by_cols {
            ($r:literal) => {
                match cols {
                    1 => vnni::tile::<$r, 1>(x, r0, prep, cl, out, ldo),
                    2 => vnni::tile::<$r, 2>(x, r0, prep, cl, out, ldo),
                    _ => vnni::tile::<$r, 3>(x, r0, prep, cl, out, ldo),
                }
            };
        }
        return match rows {
            1 => by_cols!(1),
            2 => by_cols!(2),
            3 => by_cols!(3),
            _ => by_cols!(4),
        };
    }
    let _ = (vnni, prep, cl);
    for r in 0..rows {
        for c in 0..cols {
            *out.add(r * ldo + c) = dot_portable(x, r0 + r, w, c0 + c);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use super::{Kind, KWeight, Prepared, Q8K, GROUPS, QK_K};
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn ld512(p: *const u8) -> __m512i {
        _mm512_loadu_epi32(p as *const i32)
    }
    #[inline(always)]
    unsafe fn bcast256(p: *const u8) -> __m512i {
        _mm512_broadcast_i64x4(_mm256_lddqu_si256(p as *const __m256i))
    }

    /// The unsigned quants of values `64v..64v+64` of a super-block, in order.
    #[inline(always)]
    pub(super) unsafe fn unpack(kind: Kind, blk: *const u8, v: usize) -> __m512i {
        let lo4 = _mm512_set1_epi8(0x0f);
        match kind {
            Kind::Q4K => {
                // 32 bytes: low nibbles are values 64v..64v+32, high nibbles the next 32.
                let q = bcast256(blk.wrapping_add(16 + 32 * v));
                _mm512_and_si512(_mm512_srlv_epi64(q, _mm512_set_epi64(4, 4, 4, 4, 0, 0, 0, 0)), lo4)
            }
            Kind::Q6K => {
                let n = v / 2;
                let l = ld512(blk.wrapping_add(64 * n));
                let h = bcast256(blk.wrapping_add(128 + 32 * n));
                let hi2 = _mm512_set1_epi8(0x30);
                if v % 2 == 0 {
                    // low nibbles; high bits 0-1 (first 32 values) and 2-3 (next 32) moved to 4-5
                    let h = _mm512_and_si512(_mm512_sllv_epi64(h, _mm512_set_epi64(2, 2, 2, 2, 4, 4, 4, 4)), hi2);
                    _mm512_or_si512(_mm512_and_si512(l, lo4), h)
                } else {
                    // high nibbles; high bits 4-5 and 6-7
                    let h = _mm512_and_si512(_mm512_srlv_epi64(h, _mm512_set_epi64(2, 2, 2, 2, 0, 0, 0, 0)), hi2);
                    _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16::<4>(l), lo4), h)
                }
            }
        }
    }

    /// A super-block's four 64-byte vectors from value order into lane order ([`super::lane_pos`]):
    /// out[t] word j = in[j / 4] word 4 (j % 4) + t. Words 0..8 come from vectors 0 and 1 (one
    /// two-source permute), 8..16 from vectors 2 and 3.
    #[inline(always)]
    unsafe fn to_lane_order(n: [__m512i; 4]) -> [__m512i; 4] {
        std::array::from_fn(|t| {
            let w: [i32; 16] = std::array::from_fn(|j| if j < 8 { (16 * (j / 4) + 4 * (j % 4) + t) as i32 } else { 0 });
            let idx: __m512i = std::mem::transmute(w);
            let a = _mm512_permutex2var_epi32(n[0], idx, n[1]);
            let b = _mm512_permutex2var_epi32(n[2], idx, n[3]);
            _mm512_shuffle_i64x2::<0b01_00_01_00>(a, b)
        })
    }

    /// One super-block of activations quantized as [`super::Q8K::quantize`]'s portable code does
    /// it (the same f32 operations, round half to even), quants in lane order. Returns false,
    /// writing nothing, for a super-block with a NaN, an infinity or only zeros (the portable code
    /// handles those).
    #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn quantize_block(x: &[f32], q: &mut [i8], d: &mut [f32], gsum: &mut [f32]) -> bool {
        debug_assert!(x.len() == QK_K && q.len() == QK_K && d.len() == 1 && gsum.len() == GROUPS);
        let v: [__m512; GROUPS] = std::array::from_fn(|g| _mm512_loadu_ps(x.as_ptr().wrapping_add(16 * g)));
        let mut amax = _mm512_setzero_ps();
        let mut fin: u16 = 0xffff;
        for vg in &v {
            // finite iff x - x == 0
            fin &= _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(_mm512_sub_ps(*vg, *vg), _mm512_setzero_ps());
            amax = _mm512_max_ps(amax, _mm512_abs_ps(*vg));
        }
        let amax = _mm512_reduce_max_ps(amax);
        if fin != 0xffff || amax == 0.0 {
            return false;
        }
        let id = _mm512_set1_ps(127.0 / amax);
        let dx = amax / 127.0;
        d[0] = dx;
        let (lo, hi) = (_mm512_set1_epi32(-127), _mm512_set1_epi32(127));
        let mut nat = [_mm512_setzero_si512(); 4];
        for (g, vg) in v.iter().enumerate() {
            let r = _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(*vg, id));
            let r = _mm512_min_epi32(_mm512_max_epi32(r, lo), hi);
            gsum[g] = dx * _mm512_reduce_add_epi32(r) as f32;
            // group g's 16 bytes are 128-bit lane g % 4 of value-order vector g / 4
            let b = _mm512_castsi128_si512(_mm512_cvtepi32_epi8(r));
            nat[g / 4] = match g % 4 {
                0 => _mm512_inserti32x4::<0>(nat[g / 4], _mm512_castsi512_si128(b)),
                1 => _mm512_inserti32x4::<1>(nat[g / 4], _mm512_castsi512_si128(b)),
                2 => _mm512_inserti32x4::<2>(nat[g / 4], _mm512_castsi512_si128(b)),
                _ => _mm512_inserti32x4::<3>(nat[g / 4], _mm512_castsi512_si128(b)),
            };
        }
        for (t, o) in to_lane_order(nat).iter().enumerate() {
            _mm512_storeu_si512(q.as_mut_ptr().add(64 * t) as *mut __m512i, *o);
        }
        true
    }

    /// A super-block's sixteen group scales `d sc_g` and offsets `c_g` (the f32 operations of
    /// [`super::block_scales`] and [`super::dot_portable`], so the same bits).
    #[inline(always)]
    unsafe fn scales(kind: Kind, blk: *const u8, scale: *mut f32, offset: *mut f32) {
        let f16_at = |i: usize| half::f16::from_bits(u16::from_le_bytes([*blk.add(i), *blk.add(i + 1)])).to_f32();
        match kind {
            Kind::Q4K => {
                // ggml's unpacking of the 6-bit scales and minimums (kmask1..3): bytes 0..8 of
                // `u` the scales of the eight sub-blocks, bytes 8..16 their minimums.
                let (d, dmin) = (f16_at(0), f16_at(2));
                let mut u = [0u32; 4];
                std::ptr::copy_nonoverlapping(blk.add(4), u.as_mut_ptr() as *mut u8, 12);
                let (k1, k2, k3) = (0x3f3f_3f3fu32, 0x0f0f_0f0fu32, 0x0303_0303u32);
                u[3] = ((u[2] >> 4) & k2) | (((u[1] >> 6) & k3) << 4);
                let aux = u[1] & k1;
                u[1] = (u[2] & k2) | (((u[0] >> 6) & k3) << 4);
                u[2] = aux;
                u[0] &= k1;
                let v: __m128i = std::mem::transmute(u);
                // each sub-block's value twice: groups 2j and 2j + 1
                let sc = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_unpacklo_epi8(v, v)));
                let m = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_unpackhi_epi8(v, v)));
                _mm512_storeu_ps(scale, _mm512_mul_ps(_mm512_set1_ps(d), sc));
                _mm512_storeu_ps(offset, _mm512_mul_ps(_mm512_set1_ps(-dmin), m));
            }
            Kind::Q6K => {
                let d = f16_at(208);
                let sc = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(blk.add(192) as *const __m128i)));
                _mm512_storeu_ps(scale, _mm512_mul_ps(_mm512_set1_ps(d), sc));
                _mm512_storeu_ps(offset, _mm512_mul_ps(_mm512_set1_ps(-32.0 * d), sc));
            }
        }
    }

    /// Unpacks weight rows `c0..c1` into `p`: quants in lane order, the group scales `d sc_g` and
    /// the offsets.
    #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn prepare(w: &KWeight, c0: usize, c1: usize, p: &mut Prepared) {
        let sbs = w.sbs();
        p.resize(c1 - c0, sbs);
        for c in c0..c1 {
            for s in 0..sbs {
                let blk = w.block(c, s);
                let i = (c - c0) * sbs + s;
                scales(w.kind, blk.as_ptr(), p.scale.as_mut_ptr().add(i * GROUPS), p.offset.as_mut_ptr().add(i * GROUPS));
                let n: [__m512i; 4] = std::array::from_fn(|v| unpack(w.kind, blk.as_ptr(), v));
                for (t, o) in to_lane_order(n).iter().enumerate() {
                    _mm512_storeu_si512(p.u.as_mut_ptr().add(i * QK_K + 64 * t) as *mut __m512i, *o);
                }
            }
        }
    }

    /// An `R x C` tile: activation rows `r0..r0+R` against rows `cl..cl+C` of `p`.
    #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn tile<const R: usize, const C: usize>(x: &Q8K, r0: usize, p: &Prepared, cl: usize, out: *mut f32, ldo: usize) {
        let sbs = p.sbs;
        let xq: [*const u8; R] = std::array::from_fn(|r| x.q.as_ptr().wrapping_add((r0 + r) * sbs * QK_K) as *const u8);
        let xd: [*const f32; R] = std::array::from_fn(|r| x.d.as_ptr().wrapping_add((r0 + r) * sbs));
        let wu: [*const u8; C] = std::array::from_fn(|c| p.u.as_ptr().wrapping_add((cl + c) * sbs * QK_K));
        let ws: [*const f32; C] = std::array::from_fn(|c| p.scale.as_ptr().wrapping_add((cl + c) * sbs * GROUPS));
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        for s in 0..sbs {
            // Lane j of dot[r][c]: group j's integer sum (see the module doc).
            let mut dot = [[_mm512_setzero_si512(); C]; R];
            for t in 0..4 {
                let wv: [__m512i; C] = std::array::from_fn(|c| ld512(wu[c].wrapping_add(s * QK_K + 64 * t)));
                for r in 0..R {
                    let xv = ld512(xq[r].wrapping_add(s * QK_K + 64 * t));
                    for c in 0..C {
                        dot[r][c] = _mm512_dpbusd_epi32(dot[r][c], wv[c], xv);
                    }
                }
            }
            let sw: [__m512; C] = std::array::from_fn(|c| _mm512_loadu_ps(ws[c].wrapping_add(s * GROUPS)));
            for r in 0..R {
                let dx = _mm512_set1_ps(*xd[r].wrapping_add(s));
                for c in 0..C {
                    acc[r][c] = _mm512_fmadd_ps(_mm512_mul_ps(dx, sw[c]), _mm512_cvtepi32_ps(dot[r][c]), acc[r][c]);
                }
            }
        }
        // The offset terms: 16 group sums per super-block against the weight's offsets.
        let xg: [*const f32; R] = std::array::from_fn(|r| x.gsum.as_ptr().wrapping_add((r0 + r) * sbs * GROUPS));
        let wo: [*const f32; C] = std::array::from_fn(|c| p.offset.as_ptr().wrapping_add((cl + c) * sbs * GROUPS));
        for s in 0..sbs {
            for c in 0..C {
                let o = _mm512_loadu_ps(wo[c].wrapping_add(s * GROUPS));
                for r in 0..R {
                    acc[r][c] = _mm512_fmadd_ps(_mm512_loadu_ps(xg[r].wrapping_add(s * GROUPS)), o, acc[r][c]);
                }
            }
        }
        for r in 0..R {
            for c in 0..C {
                *out.add(r * ldo + c) = _mm512_reduce_add_ps(acc[r][c]);
            }
        }
    }
}

/// Prefill on AMX tiles at full depth ([`dot_amx_portable`]'s arithmetic). A group's integer
/// scale goes into the weight: `v = sc_g u` (Q4_K, 0..=945) or `sc_g (u - 32)` (Q6_K,
/// -4064..=4096) is split into two byte planes, `v = 64 H + L` with `L = v & 63` and `H = v >> 6`
/// (-64..=64), so each plane is one chain of `tdpbssd` over a whole 256-value super-block, and
/// `P1 = 64 ΣHq + ΣLq` is exact in int32 (at most 256 · 4096 · 127 in magnitude). Q4_K's minimums
/// are a third plane (`m_g` at every value of group `g`), whose chain gives `P2`. Per super-block,
/// 16 activation rows and 16 weight rows: 2 or 3 int32 tiles stored, then one f32 step per
/// plane pair (the group-of-16 kernel needs 16 lanes of scaling per super-block and output).
///
/// Each task (16 weight rows) unpacks its rows and lays the planes out as the tiles' right-hand
/// operands per call (`[super-block][H0 L0 H1 L1 H2 L2 H3 L3 M][16 x 64 bytes]`), in the lane
/// order of [`Q8K`]'s quants: tile row `kr` of K-step `t` holds values `16 kr + 4 t ..+4` of each
/// weight row, which are group `kr`. No copy of the weight stays resident.
#[cfg(target_arch = "x86_64")]
mod amx {
    use super::{block_ints, KWeight, Kind, Q8K, GROUPS, QK_K};
    use crate::model::amx::{for_row_chunks, TileConfig};
    use std::arch::asm;
    use std::arch::x86_64::*;

    /// Weight rows per task (one tile's columns) and activation rows per tile.
    pub(super) const N: usize = 16;
    /// Bytes of one right-hand tile (16 rows of 64 bytes).
    const TILE: usize = 1024;
    /// Right-hand tiles per super-block: H and L of each of the four K-steps, then M.
    const PER_SB: usize = 9;

    /// tmm0/1/2 the int32 sums of H, L and M (`rows` x 16), tmm3 the M plane, tmm4/5 the
    /// activations of two K-steps (`rows` x 64 bytes), tmm6/7 the H and L planes.
    fn config(rows: usize) -> TileConfig {
        TileConfig::new([(64, rows), (64, rows), (64, rows), (64, 16), (64, rows), (64, rows), (64, 16), (64, 16)])
    }

    #[derive(Default)]
    pub(super) struct Scratch {
        /// `N x sbs x 256` unsigned quants in value order.
        nat: Vec<u8>,
        /// `N x sbs x 16` group scales and minimums.
        sc: Vec<i32>,
        m: Vec<i32>,
        /// `sbs x N`: each weight row's `d` and `dmin` per super-block.
        d: Vec<f32>,
        dmin: Vec<f32>,
        /// The right-hand tiles, `sbs x PER_SB x TILE` bytes.
        b: Vec<u8>,
        /// One super-block's int32 tiles (H, L, M sums; 16 x 16 each).
        dots: Vec<i32>,
    }

    /// Columns `c0..c1` (at most [`N`]) of `x W^T` for the `m` rows of `x` into `out` (row `r`
    /// at `out + r ldo`, column `c0` first; every value written).
    ///
    /// # Safety
    /// The CPU has AMX-INT8 and AVX-512 BW and the process has leave to use the tiles
    /// (`SimdLevel::Amx`); `x` has `m` rows of `w.k` values; `w` has at least `c1` rows; `out`
    /// holds `m` rows of `c1 - c0` values at stride `ldo`.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn columns(s: &mut Scratch, x: &Q8K, m: usize, w: &KWeight, c0: usize, c1: usize, out: *mut f32, ldo: usize) {
        let sbs = w.sbs();
        prepare(s, w, c0, c1);
        lay_out(s, w.kind, sbs);
        for_row_chunks(m, config, |r0, rows| chunk(s, x, r0, rows, sbs, w.k, w.kind == Kind::Q4K, out.add(r0 * ldo), ldo, c1 - c0));
    }

    /// Weight rows `c0..c1` unpacked: quants in value order, the integer scales and minimums,
    /// `d`, `dmin`; rows past `c1 - c0` zero.
    #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl")]
    unsafe fn prepare(s: &mut Scratch, w: &KWeight, c0: usize, c1: usize) {
        let sbs = w.sbs();
        s.nat.resize(N * sbs * QK_K, 0);
        s.sc.resize(N * sbs * GROUPS, 0);
        s.m.resize(N * sbs * GROUPS, 0);
        s.d.resize(sbs * N, 0.0);
        s.dmin.resize(sbs * N, 0.0);
        s.b.resize(sbs * PER_SB * TILE, 0);
        s.dots.resize(3 * N * N, 0);
        for c in 0..N {
            for sb in 0..sbs {
                let i = c * sbs + sb;
                if c0 + c >= c1 {
                    s.nat[i * QK_K..(i + 1) * QK_K].fill(0);
                    s.sc[i * GROUPS..(i + 1) * GROUPS].fill(0);
                    s.m[i * GROUPS..(i + 1) * GROUPS].fill(0);
                    (s.d[sb * N + c], s.dmin[sb * N + c]) = (0.0, 0.0);
                    continue;
                }
                let blk = w.block(c0 + c, sb);
                for v in 0..4 {
                    _mm512_storeu_si512(s.nat.as_mut_ptr().add(i * QK_K + 64 * v) as *mut __m512i, super::vnni::unpack(w.kind, blk.as_ptr(), v));
                }
                let (sc, m, d, dmin) = block_ints(w.kind, blk);
                s.sc[i * GROUPS..(i + 1) * GROUPS].copy_from_slice(&sc);
                s.m[i * GROUPS..(i + 1) * GROUPS].copy_from_slice(&m);
                (s.d[sb * N + c], s.dmin[sb * N + c]) = (d, dmin);
            }
        }
    }

    /// The right-hand tiles from [`prepare`]'s arrays: row `kr` of K-step `t` of super-block `sb`
    /// holds, at bytes `4c..4c+4`, weight row `c`'s values `16 kr + 4t ..+4` (group `kr`) as
    /// H and L bytes; the M tile's row `kr` holds `m_kr` in all four bytes of each column.
    #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl")]
    unsafe fn lay_out(s: &mut Scratch, kind: Kind, sbs: usize) {
        let c16 = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let nat_idx = _mm512_mullo_epi32(c16, _mm512_set1_epi32((sbs * QK_K) as i32));
        let sc_idx = _mm512_mullo_epi32(c16, _mm512_set1_epi32((sbs * GROUPS) as i32));
        // 16-bit lane l of a half takes column l / 4 (+ 8 for the upper half).
        let rep: [i16; 32] = std::array::from_fn(|l| (l / 4) as i16);
        let rep_lo: __m512i = std::mem::transmute(rep);
        let rep_hi = _mm512_add_epi16(rep_lo, _mm512_set1_epi16(8));
        let off = _mm512_set1_epi16(if kind == Kind::Q6K { 32 } else { 0 });
        let low6 = _mm512_set1_epi16(63);
        let (nat, scs, ms, b) = (s.nat.as_ptr(), s.sc.as_ptr(), s.m.as_ptr(), s.b.as_mut_ptr());
        for sb in 0..sbs {
            let tiles = b.add(sb * PER_SB * TILE);
            for kr in 0..16 {
                let scv = _mm512_i32gather_epi32::<4>(sc_idx, scs.add(sb * GROUPS + kr));
                let sc16 = _mm512_castsi256_si512(_mm512_cvtepi32_epi16(scv));
                let (sc_lo, sc_hi) = (_mm512_permutexvar_epi16(rep_lo, sc16), _mm512_permutexvar_epi16(rep_hi, sc16));
                for t in 0..4 {
                    let g = _mm512_i32gather_epi32::<1>(nat_idx, nat.add(sb * QK_K + 16 * kr + 4 * t) as *const i32);
                    let lo = _mm512_sub_epi16(_mm512_cvtepu8_epi16(_mm512_castsi512_si256(g)), off);
                    let hi = _mm512_sub_epi16(_mm512_cvtepu8_epi16(_mm512_extracti64x4_epi64::<1>(g)), off);
                    let (vlo, vhi) = (_mm512_mullo_epi16(lo, sc_lo), _mm512_mullo_epi16(hi, sc_hi));
                    let bytes = |a: __m512i, c: __m512i| _mm512_inserti64x4::<1>(_mm512_castsi256_si512(_mm512_cvtepi16_epi8(a)), _mm512_cvtepi16_epi8(c));
                    let h = bytes(_mm512_srai_epi16::<6>(vlo), _mm512_srai_epi16::<6>(vhi));
                    let l = bytes(_mm512_and_si512(vlo, low6), _mm512_and_si512(vhi, low6));
                    _mm512_storeu_si512(tiles.add(2 * t * TILE + 64 * kr) as *mut __m512i, h);
                    _mm512_storeu_si512(tiles.add((2 * t + 1) * TILE + 64 * kr) as *mut __m512i, l);
                }
                if kind == Kind::Q4K {
                    let mv = _mm512_i32gather_epi32::<4>(sc_idx, ms.add(sb * GROUPS + kr));
                    _mm512_storeu_si512(tiles.add(8 * TILE + 64 * kr) as *mut __m512i, _mm512_mullo_epi32(mv, _mm512_set1_epi32(0x0101_0101)));
                }
            }
        }
    }

    /// Rows `r0..r0+rows` (at most 16): per super-block the planes' int32 tiles, then
    /// `acc = fma(d_x d, 64 H + L, acc)` (and `fma(-(d_x dmin), M, acc)` for Q4_K) per row, 16
    /// weight rows per vector; the first `cols` lanes stored.
    #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn chunk(s: &mut Scratch, x: &Q8K, r0: usize, rows: usize, sbs: usize, k: usize, q4: bool, out: *mut f32, ldo: usize, cols: usize) {
        debug_assert!(rows <= N && x.d.len() >= (r0 + rows) * sbs && x.q.len() >= (r0 + rows) * k);
        let mut acc = [_mm512_setzero_ps(); N];
        let xq = x.q.as_ptr().add(r0 * k) as *const u8;
        let dots = s.dots.as_mut_ptr();
        for sb in 0..sbs {
            let a = xq.add(sb * QK_K);
            let b = s.b.as_ptr().add(sb * PER_SB * TILE);
            if q4 {
                dots_3(a, k, b, dots);
            } else {
                dots_2(a, k, b, dots);
            }
            let (dv, dmv) = (_mm512_loadu_ps(s.d.as_ptr().add(sb * N)), _mm512_loadu_ps(s.dmin.as_ptr().add(sb * N)));
            for (r, a) in acc.iter_mut().enumerate() {
                if r >= rows {
                    break;
                }
                let dx = _mm512_set1_ps(*x.d.get_unchecked((r0 + r) * sbs + sb));
                let h = _mm512_loadu_epi32(dots.add(r * N));
                let l = _mm512_loadu_epi32(dots.add(N * N + r * N));
                let p1 = _mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_slli_epi32::<6>(h), l));
                *a = _mm512_fmadd_ps(_mm512_mul_ps(dx, dv), p1, *a);
                if q4 {
                    let p2 = _mm512_cvtepi32_ps(_mm512_loadu_epi32(dots.add(2 * N * N + r * N)));
                    *a = _mm512_fnmadd_ps(_mm512_mul_ps(dx, dmv), p2, *a);
                }
            }
        }
        let mask: __mmask16 = if cols >= 16 { 0xffff } else { (1u16 << cols) - 1 };
        for (r, a) in acc.iter().enumerate().take(rows) {
            _mm512_mask_storeu_ps(out.add(r * ldo), mask, *a);
        }
    }

    /// One super-block's H and L chains (activations at `a`, row stride `lda`; tiles at `b`)
    /// into `d` (H sums) and `d + 256` (L sums).
    #[inline(always)]
    unsafe fn dots_2(a: *const u8, lda: usize, b: *const u8, d: *mut i32) {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tileloadd tmm4, [{a} + {lda}*1]",
            "tileloadd tmm6, [{b} + {ld}*1]",
            "tileloadd tmm7, [{b} + {ld}*1 + 1024]",
            "tdpbssd tmm0, tmm4, tmm6",
            "tdpbssd tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{a} + {lda}*1 + 64]",
            "tileloadd tmm6, [{b} + {ld}*1 + 2048]",
            "tileloadd tmm7, [{b} + {ld}*1 + 3072]",
            "tdpbssd tmm0, tmm5, tmm6",
            "tdpbssd tmm1, tmm5, tmm7",
            "tileloadd tmm4, [{a} + {lda}*1 + 128]",
            "tileloadd tmm6, [{b} + {ld}*1 + 4096]",
            "tileloadd tmm7, [{b} + {ld}*1 + 5120]",
            "tdpbssd tmm0, tmm4, tmm6",
            "tdpbssd tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{a} + {lda}*1 + 192]",
            "tileloadd tmm6, [{b} + {ld}*1 + 6144]",
            "tileloadd tmm7, [{b} + {ld}*1 + 7168]",
            "tdpbssd tmm0, tmm5, tmm6",
            "tdpbssd tmm1, tmm5, tmm7",
            "tilestored [{d} + {ld}*1], tmm0",
            "tilestored [{d} + {ld}*1 + 1024], tmm1",
            a = in(reg) a, b = in(reg) b, d = in(reg) d, lda = in(reg) lda, ld = in(reg) 64usize,
            options(nostack),
        );
    }

    /// [`dots_2`] and the M chain (M tile at `b + 8 TILE`) into `d + 512`.
    #[inline(always)]
    unsafe fn dots_3(a: *const u8, lda: usize, b: *const u8, d: *mut i32) {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tileloadd tmm3, [{b} + {ld}*1 + 8192]",
            "tileloadd tmm4, [{a} + {lda}*1]",
            "tileloadd tmm6, [{b} + {ld}*1]",
            "tileloadd tmm7, [{b} + {ld}*1 + 1024]",
            "tdpbssd tmm0, tmm4, tmm6",
            "tdpbssd tmm1, tmm4, tmm7",
            "tdpbssd tmm2, tmm4, tmm3",
            "tileloadd tmm5, [{a} + {lda}*1 + 64]",
            "tileloadd tmm6, [{b} + {ld}*1 + 2048]",
            "tileloadd tmm7, [{b} + {ld}*1 + 3072]",
            "tdpbssd tmm0, tmm5, tmm6",
            "tdpbssd tmm1, tmm5, tmm7",
            "tdpbssd tmm2, tmm5, tmm3",
            "tileloadd tmm4, [{a} + {lda}*1 + 128]",
            "tileloadd tmm6, [{b} + {ld}*1 + 4096]",
            "tileloadd tmm7, [{b} + {ld}*1 + 5120]",
            "tdpbssd tmm0, tmm4, tmm6",
            "tdpbssd tmm1, tmm4, tmm7",
            "tdpbssd tmm2, tmm4, tmm3",
            "tileloadd tmm5, [{a} + {lda}*1 + 192]",
            "tileloadd tmm6, [{b} + {ld}*1 + 6144]",
            "tileloadd tmm7, [{b} + {ld}*1 + 7168]",
            "tdpbssd tmm0, tmm5, tmm6",
            "tdpbssd tmm1, tmm5, tmm7",
            "tdpbssd tmm2, tmm5, tmm3",
            "tilestored [{d} + {ld}*1], tmm0",
            "tilestored [{d} + {ld}*1 + 1024], tmm1",
            "tilestored [{d} + {ld}*1 + 2048], tmm2",
            a = in(reg) a, b = in(reg) b, d = in(reg) d, lda = in(reg) lda, ld = in(reg) 64usize,
            options(nostack),
        );
    }
}

/// [`matmul_at`] as a candle op on an f32 input `[.., k]` (inference only: no backward; host
/// memory only).
pub struct KQuantMatMul<'a>(pub &'a QTensor);

impl candle_core::CustomOp1 for KQuantMatMul<'_> {
    fn name(&self) -> &'static str {
        "kquant-int8-matmul-f32"
    }
    fn cpu_fwd(&self, s: &candle_core::CpuStorage, l: &candle_core::Layout) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let q = self.0;
        let err = |e: anyhow::Error| candle_core::Error::Msg(format!("{e:#}"));
        let kind = Kind::of(q.dtype()).ok_or_else(|| candle_core::Error::Msg(format!("K-quant kernel: weight is {:?}", q.dtype())))?;
        let (n, k) = q.shape().dims2()?;
        let data = q.data()?;
        let w = KWeight::new(kind, n, k, &data).map_err(err)?;
        super::qgemm::cpu_fwd_xwt("K-quant int8 matmul", s, l, n, k, |x, m, y| matmul_at(crate::base::cpu::level(), x, m, &w, y))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn normal(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut rng = crate::base::rng::Rng::new(seed);
        (0..n).map(|_| rng.normal() as f32 * scale).collect()
    }

    fn quantized(dtype: GgmlDType, n: usize, k: usize, seed: u64) -> QTensor {
        // Rows of different magnitudes and a shifted mean, so that scales and minimums vary.
        let mut w = normal(n * k, seed, 0.05);
        for (i, v) in w.iter_mut().enumerate() {
            *v = *v * (1.0 + (i / k) as f32 * 0.3) + 0.01 * ((i / 64) % 5) as f32;
        }
        QTensor::quantize(&Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap(), dtype).unwrap()
    }

    /// The block decoder against candle's own dequantization (ggml's layout), value for value.
    #[test]
    fn decode_matches_candle() {
        for dtype in [GgmlDType::Q4K, GgmlDType::Q6K] {
            let (n, k) = (5, 512);
            let q = quantized(dtype, n, k, 3);
            let want = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let data = q.data().unwrap();
            let w = KWeight::new(Kind::of(dtype).unwrap(), n, k, &data).unwrap();
            for c in 0..n {
                for s in 0..k / QK_K {
                    let b = decode(w.kind, w.block(c, s));
                    for i in 0..QK_K {
                        let got = b.d * b.sc[i / 16] as f32 * b.u[i] as f32 + b.offset[i / 16];
                        let exp = want[c * k + s * QK_K + i];
                        assert!((got - exp).abs() <= 1e-6 * (1.0 + exp.abs()), "{dtype:?} [{c},{}]: {got} vs candle {exp}", s * QK_K + i);
                    }
                }
            }
        }
    }

    /// Lane order is a permutation of a super-block that puts the 16 values of group `j` in 32-bit
    /// lane `j` of the four 64-byte vectors, four to a vector.
    #[test]
    fn lane_order_puts_each_group_in_its_lane() {
        let mut seen = [false; QK_K];
        for i in 0..QK_K {
            let p = lane_pos(i);
            assert!(!seen[p], "position {p} taken twice");
            seen[p] = true;
            assert_eq!((p % 64) / 4, i / 16, "value {i} at byte {p}");
        }
        let nat: [u16; QK_K] = std::array::from_fn(|i| i as u16);
        let mut out = [0u16; QK_K];
        to_lane_order(&nat, &mut out);
        assert_eq!(&out[64..72], &[4, 5, 6, 7, 20, 21, 22, 23]);
    }

    /// Activation quantization: 8 bits per 256 values, `|x - d q| <= d / 2`, group sums exact; a
    /// non-finite value gives a NaN scale.
    #[test]
    fn activations_round_to_nearest() {
        let mut x = normal(3 * 512, 9, 2.0);
        let q = Q8K::quantize(&x, 3, 512).unwrap();
        for (i, &v) in x.iter().enumerate() {
            let d = q.d[i / QK_K];
            assert!((v - d * q.quant(i / 512, i % 512, 512) as f32).abs() <= d * 0.5 * (1.0 + 1e-6), "value {i}");
        }
        let g: i32 = (16..32).map(|i| q.quant(0, i, 512) as i32).sum();
        assert_eq!(q.gsum[1], q.d[0] * g as f32);
        x[300] = f32::INFINITY;
        let q = Q8K::quantize(&x, 3, 512).unwrap();
        assert!(q.d[1].is_nan() && !q.d[0].is_nan() && !q.d[2].is_nan());
    }

    /// The kernel at every level against an f64 product of candle's dequantized weight and the
    /// quantized activations (a bound of f32 roundings), and the VNNI kernel against the portable
    /// arithmetic; shapes off the tile grid (rows, columns, task size), one of them (33 rows) on
    /// the AMX kernel where the CPU has it.
    #[test]
    fn matmul_matches_reference_at_every_level() {
        for dtype in [GgmlDType::Q4K, GgmlDType::Q6K] {
            for &(m, n, k, seed) in &[(1, 3, 256, 1u64), (5, 7, 512, 2), (9, 50, 768, 3), (17, 26, 256, 4), (33, 20, 512, 6)] {
                let q = quantized(dtype, n, k, seed);
                let wd = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let data = q.data().unwrap();
                let w = KWeight::new(Kind::of(dtype).unwrap(), n, k, &data).unwrap();
                let x = normal(m * k, seed + 100, 1.0);
                let xq = Q8K::quantize(&x, m, k).unwrap();
                let mut portable = vec![f32::NAN; m * n]; // every output is written (unzeroed buffers)
                matmul_at(SimdLevel::Portable, &x, m, &w, &mut portable).unwrap();
                for level in crate::base::cpu::level().up_to() {
                    let mut y = vec![f32::NAN; m * n];
                    matmul_at(level, &x, m, &w, &mut y).unwrap();
                    for r in 0..m {
                        for c in 0..n {
                            let terms = (0..k).map(|i| wd[c * k + i] as f64 * (xq.d[r * k / QK_K + i / QK_K] * xq.quant(r, i, k) as f32) as f64);
                            let (want, abs) = terms.fold((0f64, 0f64), |(s, a), t| (s + t, a + t.abs()));
                            let got = y[r * n + c] as f64;
                            let tol = abs * 64.0 * f32::EPSILON as f64;
                            assert!((got - want).abs() <= tol, "{dtype:?} {level} ({m},{n},{k}) [{r},{c}]: {got} vs {want} (tol {tol})");
                            let p = portable[r * n + c] as f64;
                            assert!((got - p).abs() <= tol, "{dtype:?} {level} ({m},{n},{k}) [{r},{c}]: {got} vs portable {p}");
                        }
                    }
                }
            }
        }
    }

    /// The AMX kernel (from 32 rows on) gives [`dot_amx_portable`]'s bits: rows and columns off
    /// the 16 x 16 tile grid, a zero super-block of activations, and super-blocks at the planes'
    /// extremes (Q6_K: `sc = -128`, `u = 0`, so `v = 4096`, `H = 64`; Q4_K: `sc = m = 63`,
    /// `u = 15`) against activations of ±127.
    #[test]
    fn amx_kernel_is_its_portable_arithmetic() {
        if crate::base::cpu::level() < SimdLevel::Amx {
            eprintln!("SKIP: no AMX on this CPU");
            return;
        }
        for dtype in [GgmlDType::Q4K, GgmlDType::Q6K] {
            let kind = Kind::of(dtype).unwrap();
            for &(m, n, k, seed) in &[(33, 20, 512, 7u64), (48, 16, 256, 8), (40, 37, 768, 9)] {
                let mut data = quantized(dtype, n, k, seed).data().unwrap().to_vec();
                let bb = kind.block_bytes();
                // Row 0's first super-block and the last row's last one at the extremes.
                match kind {
                    Kind::Q6K => {
                        data[..192].fill(0);
                        data[192..208].fill(0x80);
                    }
                    Kind::Q4K => data[4..144].fill(0xff),
                }
                let last = data.len() - bb;
                match kind {
                    Kind::Q6K => data[last + 192..last + 208].fill(0x80),
                    Kind::Q4K => data[last + 4..last + 16].fill(0xff),
                }
                let w = KWeight::new(kind, n, k, &data).unwrap();
                let mut x = normal(m * k, seed + 200, 1.0);
                x[k..k + QK_K].fill(0.0);
                x[..QK_K].iter_mut().for_each(|v| *v = if *v >= 0.0 { 3.0 } else { -3.0 });
                let xq = Q8K::quantize(&x, m, k).unwrap();
                let mut y = vec![f32::NAN; m * n];
                matmul_at(SimdLevel::Amx, &x, m, &w, &mut y).unwrap();
                for r in 0..m {
                    for c in 0..n {
                        let want = dot_amx_portable(&xq, r, &w, c);
                        assert_eq!(y[r * n + c].to_bits(), want.to_bits(), "{dtype:?} ({m},{n},{k}) [{r},{c}]: {} vs {want}", y[r * n + c]);
                    }
                }
                // And the portable arithmetic is the group-of-16 one to f32 rounding.
                for (r, c) in [(0, 0), (m - 1, n - 1), (1, n / 2)] {
                    let (a, b) = (dot_amx_portable(&xq, r, &w, c), dot_portable(&xq, r, &w, c));
                    assert!((a - b).abs() <= 1e-5 * b.abs().max(1e-3), "{dtype:?} [{r},{c}]: {a} vs {b}");
                }
            }
        }
    }

    /// The VNNI `prepare` against the portable decoder (itself checked against candle): quants in
    /// lane order, and group scales `d sc_g` and offsets with the bits of `block_scales`.
    #[test]
    fn prepare_matches_the_decoder() {
        if crate::base::cpu::level() < SimdLevel::Avx512Vnni {
            eprintln!("SKIP: no AVX-512 VNNI on this CPU");
            return;
        }
        for dtype in [GgmlDType::Q4K, GgmlDType::Q6K] {
            let (n, k) = (7, 768);
            let q = quantized(dtype, n, k, 5);
            let data = q.data().unwrap();
            let w = KWeight::new(Kind::of(dtype).unwrap(), n, k, &data).unwrap();
            let mut p = Prepared::default();
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the level check above; rows 2..7 exist.
            unsafe { vnni::prepare(&w, 2, n, &mut p) };
            for c in 2..n {
                for s in 0..w.sbs() {
                    let b = decode(w.kind, w.block(c, s));
                    let i = (c - 2) * w.sbs() + s;
                    for v in 0..QK_K {
                        assert_eq!(p.u[i * QK_K + lane_pos(v)], b.u[v], "{dtype:?} row {c} sb {s} value {v}");
                    }
                    for g in 0..GROUPS {
                        assert_eq!(p.scale[i * GROUPS + g].to_bits(), (b.d * b.sc[g] as f32).to_bits(), "{dtype:?} scale {g}");
                        assert_eq!(p.offset[i * GROUPS + g].to_bits(), b.offset[g].to_bits(), "{dtype:?} offset {g}");
                    }
                }
            }
        }
    }

    /// The AVX-512 quantizer gives the portable one's bits: quants, scales and group sums, with a
    /// zero super-block, a non-finite one and values on the rounding ties.
    #[test]
    fn activation_quantizer_is_the_same_at_every_level() {
        let (rows, k) = (3, 1024);
        let mut x = normal(rows * k, 21, 3.0);
        x[256..512].fill(0.0);
        x[700] = f32::NAN;
        // amax 127: every x.5 is a tie of round-half-to-even
        x[1024] = 127.0;
        for (i, v) in x[1025..1100].iter_mut().enumerate() {
            *v = i as f32 - 37.5;
        }
        let want = Q8K::quantize_at(SimdLevel::Portable, &x, rows, k).unwrap();
        for level in crate::base::cpu::level().up_to() {
            let got = Q8K::quantize_at(level, &x, rows, k).unwrap();
            assert_eq!(got.q, want.q, "{level}: quants");
            assert_eq!(got.d.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want.d.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "{level}: scales");
            assert_eq!(got.gsum.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want.gsum.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "{level}: group sums");
        }
        assert_eq!(want.quant(1, 1, k), -38, "-37.5 rounds to even");
        assert_eq!(want.quant(1, 2, k), -36, "-36.5 rounds to even");
    }

    /// Against the unquantized product: the error is the activations' 8-bit rounding only.
    #[test]
    fn error_against_f32_is_the_activation_rounding() {
        let (m, n, k) = (6, 20, 1024);
        for dtype in [GgmlDType::Q4K, GgmlDType::Q6K] {
            let q = quantized(dtype, n, k, 7);
            let wd = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let data = q.data().unwrap();
            let w = KWeight::new(Kind::of(dtype).unwrap(), n, k, &data).unwrap();
            let x = normal(m * k, 11, 1.0);
            let mut y = vec![0f32; m * n];
            matmul_at(crate::base::cpu::level(), &x, m, &w, &mut y).unwrap();
            let (mut num, mut den) = (0f64, 0f64);
            for r in 0..m {
                for c in 0..n {
                    let exact: f64 = (0..k).map(|i| wd[c * k + i] as f64 * x[r * k + i] as f64).sum();
                    num += (y[r * n + c] as f64 - exact).powi(2);
                    den += exact.powi(2);
                }
            }
            let rel = (num / den).sqrt();
            assert!(rel > 1e-5 && rel < 1e-2, "{dtype:?}: relative error {rel}");
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let e = KWeight::new(Kind::Q4K, 2, 200, &[0u8; 10]).err().unwrap().to_string();
        assert!(e.contains("200") && e.contains("256"), "{e}");
        let e = KWeight::new(Kind::Q6K, 2, 256, &[0u8; 10]).err().unwrap().to_string();
        assert!(e.contains("10 bytes") && e.contains("420"), "{e}");
        assert!(Q8K::quantize(&[0.0; 255], 1, 255).is_err());
        let data = vec![0u8; 144];
        let w = KWeight::new(Kind::Q4K, 1, 256, &data).unwrap();
        let e = matmul_at(SimdLevel::Portable, &[0.0; 256], 1, &w, &mut [0.0; 2]).unwrap_err().to_string();
        assert!(e.contains("2 values"), "{e}");
    }
}
