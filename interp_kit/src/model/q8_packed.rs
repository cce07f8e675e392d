//! Q8_0 weights repacked for a tiled int8 matmul on AVX-512 VNNI (`vpdpbusd`): the inference
//! path's quantized prefill and batched decode on CPUs that have it (Zen 4, Ice Lake and later).
//!
//! **Layout.** A GGUF Q8_0 row is a run of 34-byte blocks (an f16 scale, 32 signed bytes). Here a
//! row's blocks are split into groups of eight (the last group of a row may hold four), and within
//! a group the bytes are interleaved four at a time: 32-bit lane `j` of the `t`-th 256-bit vector
//! of a group holds bytes `4t..4t+4` of block `j`. Eight `vpdpbusd` over a group therefore leave
//! block `j`'s whole integer dot product in lane `j`, with no horizontal sums; one convert, one
//! multiply by the eight blocks' scale products and one FMA finish eight blocks. A row's block
//! count is rounded up to a multiple of four with zero blocks (scale 0), which add exactly
//! nothing. The packed weight takes the bytes of the GGUF one (32 quants and an f16 scale per
//! block), so the decode path streams no more memory than before.
//!
//! **Five-bit weights.** A Q8_0 weight whose every quant lies in -16..=15 (the embedded model's
//! `Q5_0` matrices, re-encoded as Q8_0 by the loader without loss) is packed in 5 bits per value
//! instead, 22 bytes per block as in the GGUF's `Q5_0`: per group, four vectors of nibbles (lane
//! `j` of vector `t` holds values `4t..4t+4` of block `j` in its low nibbles and `4t+16..4t+20` in
//! its high ones) and one 32-bit word of fifth bits per block (bit `8b + t` for value `4t + b`),
//! so that one shift and one mask put value `4t + b`'s fifth bit at bit 4 of byte `b`. Decode (up
//! to [`SMALL_M`] rows) unpacks in registers and streams 35 % fewer bytes than Q8_0; prefill
//! unpacks each task's weight rows once into the eight-bit layout and runs the same tiles. The
//! unpacked bytes equal the Q8_0 ones, so results are bit for bit those of the Q8_0 layout.
//!
//! **Signs.** `vpdpbusd` multiplies unsigned by signed bytes. Weights are stored offset by 128
//! (`q ^ 0x80`, in 0..=255), activations as they are, and each activation block carries
//! `-128 * sum(q_x)`, the accumulator's starting value, so the integer result is exactly
//! `sum(q_x q_w)` (at most 32 x 128 x 255 in magnitude before the correction: no overflow).
//!
//! **Numerics.** Activations are quantized as candle (and llama.cpp) quantize them for a Q8_0
//! matmul (`BlockQ8_0::from_float`: per 32 values, scale `max|x| / 127`), and every block's
//! integer dot product is exact, as in candle's `vec_dot_q8_0_q8_0`. Only the f32 sum over blocks
//! is grouped differently (a block's whole product goes to one of eight lanes; candle spreads
//! each block over all eight), so results agree with candle's to f32 rounding, not bit for bit.
//! [`tile_portable`] is the same arithmetic in plain Rust, lane for lane; the VNNI kernel equals it
//! bit for bit, and so does the AMX prefill kernel (`amx`, from 32 rows on; its block sums come
//! from int8 tiles, its f32 arithmetic is the portable one). A row's output does not depend on the
//! other rows of the call.
use anyhow::{ensure, Result};
use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;

use super::qgemm::SendPtr;
use crate::base::cpu::SimdLevel;

const BLOCK: usize = 32;
const BLOCK_BYTES: usize = 34;
/// Blocks per interleaved group (one 32-bit lane of a 256-bit vector each).
const GROUP: usize = 8;
/// Input rows and weight rows of one register tile.
const TILE_ROWS: usize = 4;
const TILE_COLS: usize = 3;
/// Up to this many input rows (decode), a tile takes one weight row at a time: the weights then
/// stream from memory as one sequential run per thread. Three rows at a time, with each row's
/// 900 bytes read in step, halved the bandwidth (the 145 MiB output head at one row: 10.3 ms
/// against candle's 6.4 ms; one row at a time 4.3 ms; BENCHMARKS.md). From 9 rows on the
/// arithmetic dominates and the 4 x 3 tile wins.
const SMALL_M: usize = 8;
/// Weight rows per parallel task (a multiple of [`TILE_COLS`]).
const ROWS_PER_TASK: usize = 8 * TILE_COLS;
/// From this many input rows on, the AMX kernel where the CPU has it: at 16 and 24 rows it was
/// 8-25 % slower than the VNNI tiles on the embedded model's shapes, at 32 as fast or faster, at
/// 48 up to 1.3x (`examples/qkernels`, BENCHMARKS.md).
const AMX_MIN_ROWS: usize = 32;

/// A Q8_0 matrix (`rows x k`) in the interleaved layout of the module doc: weights (quants
/// offset by 128, f16 scales) or a call's activations (signed quants, f32 scales, corrections).
pub struct PackedQ8 {
    rows: usize,
    k: usize,
    /// Blocks per row, rounded up to a multiple of four.
    nbp: usize,
    /// `rows x nbp x 32` bytes (empty for a weight in the five-bit layout).
    quants: Vec<u8>,
    /// Five-bit layout (see the module doc): `rows x nbp x 16` bytes of nibbles and `rows x nbp`
    /// words of fifth bits; empty otherwise.
    q5_nib: Vec<u8>,
    q5_hi: Vec<u32>,
    /// Weights: `rows x nbp` f16 block scales (bits), and 8 more so that a group of four can be
    /// read as eight.
    scales_f16: Vec<u16>,
    /// Activations: `rows x nbp` f32 block scales.
    scales: Vec<f32>,
    /// Activations: `rows x nbp` values `-128 * sum(q)` per block.
    corr: Vec<i32>,
}

impl PackedQ8 {
    /// Repacks a 2-d Q8_0 weight (on the CPU): in the five-bit layout when every quant fits.
    pub fn from_qtensor(w: &QTensor) -> Result<Self> {
        Self::from_qtensor_with(w, true)
    }

    fn from_qtensor_with(w: &QTensor, five_bit: bool) -> Result<Self> {
        ensure!(
            w.dtype() == GgmlDType::Q8_0 && w.shape().rank() == 2 && w.device().is_cpu(),
            "Q8_0 repack: weight is {:?} {:?} on {:?}",
            w.dtype(),
            w.shape(),
            w.device().location()
        );
        let (n, k) = w.shape().dims2()?;
        ensure!(k % BLOCK == 0, "Q8_0 repack: in-dim {k} is not a whole number of {BLOCK}-value blocks");
        let data = w.data()?;
        ensure!(data.len() == n * k / BLOCK * BLOCK_BYTES, "Q8_0 repack: {} bytes for {n} x {k}", data.len());
        let nb = k / BLOCK;
        let nbp = nb.div_ceil(4) * 4;
        let mut quants = vec![0x80u8; n * nbp * BLOCK];
        let mut scales_f16 = vec![0u16; n * nbp + GROUP];
        let (qp, sp) = (SendPtr(quants.as_mut_ptr()), SendPtr(scales_f16.as_mut_ptr()));
        each_row(n, |r| {
            // SAFETY: row r's quants and scales are written by this task alone.
            let (dst, sc) = unsafe { (qp.row(r, nbp * BLOCK), sp.row(r, nbp)) };
            let src = &data[r * nb * BLOCK_BYTES..(r + 1) * nb * BLOCK_BYTES];
            for (b, blk) in src.chunks_exact(BLOCK_BYTES).enumerate() {
                interleave(blk, b, nbp, 0x80, dst);
                sc[b] = u16::from_le_bytes([blk[0], blk[1]]);
            }
        });
        let packed = Self { rows: n, k, nbp, quants, q5_nib: Vec::new(), q5_hi: Vec::new(), scales_f16, scales: Vec::new(), corr: Vec::new() };
        // Every quant in -16..=15 (offset: 112..=143): five bits hold them exactly.
        if five_bit && packed.quants.iter().all(|&q| (112..=143).contains(&q)) {
            return Ok(packed.to_five_bit());
        }
        Ok(packed)
    }

    /// The five-bit layout of a weight whose quants all fit (see [`PackedQ8::from_qtensor`]).
    fn to_five_bit(self) -> Self {
        let (n, nbp) = (self.rows, self.nbp);
        let mut nib = vec![0u8; n * nbp * 16];
        let mut hi = vec![0u32; n * nbp];
        let (np, hp) = (SendPtr(nib.as_mut_ptr()), SendPtr(hi.as_mut_ptr()));
        each_row(n, |r| {
            // SAFETY: row r's nibbles and fifth bits are written by this task alone.
            let (nib, hi) = unsafe { (np.row(r, nbp * 16), hp.row(r, nbp)) };
            let q = &self.quants[r * nbp * BLOCK..(r + 1) * nbp * BLOCK];
            for b in 0..nbp {
                let (g0, j) = (b / GROUP * GROUP, b % GROUP);
                let g = GROUP.min(nbp - g0);
                for i in 0..BLOCK {
                    let (t, bb) = (i / 4, i % 4);
                    let u = q[g0 * BLOCK + t * 4 * g + j * 4 + bb] - 112;
                    nib[g0 * 16 + (t % 4) * 4 * g + j * 4 + bb] |= (u & 0xf) << (if t < 4 { 0 } else { 4 });
                    hi[b] |= ((u >> 4) as u32) << (8 * bb + t);
                }
            }
        });
        Self { quants: Vec::new(), q5_nib: nib, q5_hi: hi, ..self }
    }

    /// Whether this weight is in the five-bit layout.
    pub fn is_five_bit(&self) -> bool {
        !self.q5_hi.is_empty()
    }

    /// Value `i` of block `b` of weight row `c`, offset by 128, from either layout.
    fn weight_byte(&self, c: usize, b: usize, i: usize) -> u8 {
        let (g0, j) = (b / GROUP * GROUP, b % GROUP);
        let g = GROUP.min(self.nbp - g0);
        let (t, bb) = (i / 4, i % 4);
        if !self.is_five_bit() {
            return self.quants[c * self.nbp * BLOCK + g0 * BLOCK + t * 4 * g + j * 4 + bb];
        }
        let nib = self.q5_nib[c * self.nbp * 16 + g0 * 16 + (t % 4) * 4 * g + j * 4 + bb];
        let low = if t < 4 { nib & 0xf } else { nib >> 4 };
        let h = ((self.q5_hi[c * self.nbp + b] >> (8 * bb + t)) & 1) as u8;
        (low | (h << 4)) + 112
    }

    /// Weight rows `c0..c1` of a five-bit weight in the eight-bit layout (prefill: once per task).
    fn unpack_rows(&self, vnni: bool, c0: usize, c1: usize, out: &mut Self) {
        let (nbp, rows) = (self.nbp, c1 - c0);
        // Every byte of rows c0..c1 is written below; the buffer is reused from task to task.
        out.quants.resize(rows * nbp * BLOCK, 0);
        for c in c0..c1 {
            let dst = &mut out.quants[(c - c0) * nbp * BLOCK..(c - c0 + 1) * nbp * BLOCK];
            #[cfg(target_arch = "x86_64")]
            if vnni {
                // SAFETY: `vnni` says the CPU has AVX-512 VNNI and VL; row c exists.
                unsafe { vnni::unpack_row(self, c, dst) };
                continue;
            }
            let _ = vnni;
            for b in 0..nbp {
                let (g0, j) = (b / GROUP * GROUP, b % GROUP);
                let g = GROUP.min(nbp - g0);
                for i in 0..BLOCK {
                    dst[g0 * BLOCK + (i / 4) * 4 * g + j * 4 + i % 4] = self.weight_byte(c, b, i);
                }
            }
        }
        out.scales_f16.clear();
        out.scales_f16.extend_from_slice(&self.scales_f16[c0 * nbp..c1 * nbp]);
        out.scales_f16.extend_from_slice(&[0; GROUP]);
        (out.rows, out.k, out.nbp) = (rows, self.k, nbp);
    }

    /// An empty matrix: the scratch buffer of [`PackedQ8::unpack_rows`].
    fn scratch() -> Self {
        Self { rows: 0, k: 0, nbp: 0, quants: Vec::new(), q5_nib: Vec::new(), q5_hi: Vec::new(), scales_f16: Vec::new(), scales: Vec::new(), corr: Vec::new() }
    }

    /// `rows x k` f32 activations quantized as candle quantizes a Q8_0 matmul's input
    /// (`BlockQ8_0::from_float`), at the kernel level of [`crate::base::cpu::level`]. Rows are
    /// quantized in parallel from 8 rows on.
    pub fn activations(x: &[f32], rows: usize, k: usize) -> Result<Self> {
        Self::activations_at(crate::base::cpu::level(), x, rows, k)
    }

    /// [`PackedQ8::activations`] with the quantizer of `level`: AVX-512 (16 lanes, the same
    /// arithmetic as candle's scalar loop, so the same bits; a block with a non-finite value
    /// takes candle's loop) or candle's own.
    pub fn activations_at(level: SimdLevel, x: &[f32], rows: usize, k: usize) -> Result<Self> {
        Self::activations_in(level, x, rows, k, false)
    }

    /// [`PackedQ8::activations_at`], the quants in the interleaved layout or, if `plain`, in
    /// block order (block `b` of row `r` at bytes `(r nbp + b) 32..`: the AMX kernel's).
    fn activations_in(level: SimdLevel, x: &[f32], rows: usize, k: usize, plain: bool) -> Result<Self> {
        ensure!(k % BLOCK == 0, "Q8_0 activations: width {k} is not a whole number of {BLOCK}-value blocks");
        ensure!(x.len() == rows * k, "Q8_0 activations: {} values, not {rows} x {k}", x.len());
        ensure!(level <= crate::base::cpu::detected(), "Q8_0 activations: level {level} is above this CPU's");
        let (nb, nbp) = (k / BLOCK, (k / BLOCK).div_ceil(4) * 4);
        // Every block of every row is written below, the padding blocks (nb..nbp) as zeros.
        let mut quants = super::qgemm::uninit::<u8>(rows * nbp * BLOCK);
        let mut scales = super::qgemm::uninit::<f32>(rows * nbp);
        let mut corr = super::qgemm::uninit::<i32>(rows * nbp);
        let simd = cfg!(target_arch = "x86_64") && level >= SimdLevel::Avx512Vnni;
        let one = |(r, ((q, s), c)): (usize, ((&mut [u8], &mut [f32]), &mut [i32]))| {
            let xr = &x[r * k..(r + 1) * k];
            for (b, xb) in xr.chunks_exact(BLOCK).enumerate() {
                let mut blk = [0u8; BLOCK_BYTES];
                #[cfg(target_arch = "x86_64")]
                // SAFETY: AVX-512F is present at this level; xb holds 32 values.
                let done = simd && unsafe { vnni::quantize_block(xb, &mut blk) };
                #[cfg(not(target_arch = "x86_64"))]
                let done = false;
                if !done {
                    blk.copy_from_slice(&super::qgemm::quantize_rows(xb, 1, BLOCK));
                }
                if plain {
                    q[b * BLOCK..(b + 1) * BLOCK].copy_from_slice(&blk[2..]);
                } else {
                    interleave(&blk, b, nbp, 0, q);
                }
                s[b] = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                c[b] = -128 * blk[2..].iter().map(|&v| v as i8 as i32).sum::<i32>();
            }
            for b in nb..nbp {
                if plain {
                    q[b * BLOCK..(b + 1) * BLOCK].fill(0);
                } else {
                    interleave(&[0; BLOCK_BYTES], b, nbp, 0, q);
                }
                (s[b], c[b]) = (0.0, 0);
            }
        };
        let (rq, rs) = (nbp * BLOCK, nbp);
        if rows >= 8 {
            // On candle's worker pool, as the kernel (a second pool, rayon, would compete with its
            // spinning workers for the cores).
            let (qp, sp, cp) = (SendPtr(quants.as_mut_ptr()), SendPtr(scales.as_mut_ptr()), SendPtr(corr.as_mut_ptr()));
            candle_core::utils::barrier_pool().execute_chunked(rows, |ts| {
                let (qp, sp, cp) = (&qp, &sp, &cp);
                for r in ts {
                    // SAFETY: row r of each output is written by this task alone.
                    let parts = unsafe {
                        (
                            std::slice::from_raw_parts_mut(qp.0.add(r * rq), rq),
                            std::slice::from_raw_parts_mut(sp.0.add(r * rs), rs),
                            std::slice::from_raw_parts_mut(cp.0.add(r * rs), rs),
                        )
                    };
                    one((r, ((parts.0, parts.1), parts.2)));
                }
            });
        } else {
            quants.chunks_mut(rq).zip(scales.chunks_mut(rs)).zip(corr.chunks_mut(rs)).enumerate().for_each(one);
        }
        Ok(Self { rows, k, nbp, quants, q5_nib: Vec::new(), q5_hi: Vec::new(), scales_f16: Vec::new(), scales, corr })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn k(&self) -> usize {
        self.k
    }
    /// Bytes held (quants, scales and correction terms).
    pub fn bytes(&self) -> usize {
        self.quants.len() + self.q5_nib.len() + 4 * self.q5_hi.len() + 2 * self.scales_f16.len() + 4 * (self.scales.len() + self.corr.len())
    }

    fn row_quants(&self, r: usize) -> *const u8 {
        self.quants[r * self.nbp * BLOCK..].as_ptr()
    }
    fn row_nib(&self, r: usize) -> *const u8 {
        self.q5_nib[r * self.nbp * 16..].as_ptr()
    }
    fn row_hi(&self, r: usize) -> *const u32 {
        self.q5_hi[r * self.nbp..].as_ptr()
    }
    fn row_scales(&self, r: usize) -> *const f32 {
        self.scales[r * self.nbp..].as_ptr()
    }
    fn row_scales_f16(&self, r: usize) -> *const u16 {
        self.scales_f16[r * self.nbp..].as_ptr()
    }
    fn row_corr(&self, r: usize) -> *const i32 {
        self.corr[r * self.nbp..].as_ptr()
    }
}

/// `y[m, n] = x[m, k] · W[n, k]^T` for a packed Q8_0 `W`; `x`, `y` row-major f32. Uses the VNNI
/// kernel when [`crate::base::cpu::level`] allows it, else [`tile_portable`] (slow: the reference).
pub fn matmul(x: &[f32], m: usize, w: &PackedQ8, y: &mut [f32]) -> Result<()> {
    matmul_at(crate::base::cpu::level(), x, m, w, y)
}

/// [`matmul`] with the kernel of `level` (at most [`crate::base::cpu::detected`]).
pub fn matmul_at(level: SimdLevel, x: &[f32], m: usize, w: &PackedQ8, y: &mut [f32]) -> Result<()> {
    ensure!(level <= crate::base::cpu::detected(), "Q8_0 packed kernel: level {level} is above this CPU's");
    let (n, k) = (w.rows, w.k);
    ensure!(y.len() == m * n, "Q8_0 packed kernel: output has {} values, not {m} x {n}", y.len());
    let y = SendPtr(y.as_mut_ptr());
    let xq = Activations::quantize(level, x, m, k)?;
    xq.by_columns(&[n], || (), |columns, (), _, c0, _| {
        let y = y; // the whole `SendPtr`, not its field
        // Each task writes columns c0..c1 of `y` (m x n), its own.
        columns(w, y.0.wrapping_add(c0), n)
    });
    Ok(())
}

/// `y = [x w_0ᵀ, x w_1ᵀ, ..]` (`m x Σ n_p`, the products side by side, as one weight of the
/// stacked rows would give them): the attention's q, k and v projections of one input, bit for bit
/// [`matmul_at`] for each, with the activations quantized once and one pass of tasks over all the
/// products' columns.
pub fn side_by_side_at(level: SimdLevel, x: &[f32], m: usize, ws: &[&PackedQ8], y: &mut [f32]) -> Result<()> {
    ensure!(level <= crate::base::cpu::detected(), "Q8_0 packed products: level {level} is above this CPU's");
    let Some(k) = ws.first().map(|w| w.k) else { anyhow::bail!("Q8_0 packed products: no weights") };
    for (p, w) in ws.iter().enumerate() {
        ensure!(w.k == k, "Q8_0 packed products: weight {p} has depth {}, weight 0 has {k}", w.k);
    }
    let ns: Vec<usize> = ws.iter().map(|w| w.rows).collect();
    let total: usize = ns.iter().sum();
    ensure!(y.len() == m * total, "Q8_0 packed products: output has {} values, not {m} x {total}", y.len());
    let offsets: Vec<usize> = ns.iter().scan(0, |acc, n| Some(std::mem::replace(acc, *acc + n))).collect();
    let y = SendPtr(y.as_mut_ptr());
    let xq = Activations::quantize(level, x, m, k)?;
    xq.by_columns(&ns, || (), |columns, (), p, c0, _| {
        let y = y; // the whole `SendPtr`, not its field
        // Each task writes columns c0..c1 of product p, columns offsets[p] + c0.. of `y`, its own.
        columns(ws[p], y.0.wrapping_add(offsets[p] + c0), total)
    });
    Ok(())
}

/// `y[m, n] = silu(x gateᵀ) ⊙ (x upᵀ)`: the gated MLP's hidden layer (SwiGLU) from two packed
/// weights of one shape, bit for bit [`matmul_at`] for each and then [`vmath::silu_mul`], but with
/// the activations quantized once, and each task's columns of both products kept in a buffer of
/// its own (`m x` a task's columns) instead of two `m x n` outputs and a pass over them.
///
/// [`vmath::silu_mul`]: crate::base::vmath::silu_mul
pub fn swiglu_at(level: SimdLevel, x: &[f32], m: usize, gate: &PackedQ8, up: &PackedQ8, y: &mut [f32]) -> Result<()> {
    ensure!(level <= crate::base::cpu::detected(), "Q8_0 packed SwiGLU: level {level} is above this CPU's");
    ensure!(
        (gate.rows, gate.k) == (up.rows, up.k),
        "Q8_0 packed SwiGLU: gate [{}, {}] and up [{}, {}] differ in shape",
        gate.rows,
        gate.k,
        up.rows,
        up.k
    );
    let (n, k) = (gate.rows, gate.k);
    ensure!(y.len() == m * n, "Q8_0 packed SwiGLU: output has {} values, not {m} x {n}", y.len());
    let y = SendPtr(y.as_mut_ptr());
    let xq = Activations::quantize(level, x, m, k)?;
    xq.by_columns(&[n], || (Vec::new(), Vec::new()), |columns, (g, u), _, c0, c1| {
        let y = y; // the whole `SendPtr`, not its field
        let cols = c1 - c0;
        // Every value is written below (the products fill their buffers).
        for buf in [&mut *g, &mut *u] {
            buf.clear();
            buf.resize(m * cols, 0f32);
        }
        // The buffers hold m x cols values.
        columns(gate, g.as_mut_ptr(), cols);
        columns(up, u.as_mut_ptr(), cols);
        for r in 0..m {
            // SAFETY: row r of columns c0..c1 of `y` (m x n) is this task's alone.
            let out = unsafe { std::slice::from_raw_parts_mut(y.0.add(r * n + c0), cols) };
            crate::base::vmath::silu_mul(&g[r * cols..(r + 1) * cols], &u[r * cols..(r + 1) * cols], out);
        }
    });
    Ok(())
}

/// Quantized activations and the kernel that reads them: the AMX tiles from
/// [`AMX_MIN_ROWS`] rows on (plain block order), else the VNNI or portable tiles (interleaved).
struct Activations {
    level: SimdLevel,
    xq: PackedQ8,
    amx: bool,
}

impl Activations {
    fn quantize(level: SimdLevel, x: &[f32], m: usize, k: usize) -> Result<Self> {
        let amx = cfg!(target_arch = "x86_64") && level >= SimdLevel::Amx && m >= AMX_MIN_ROWS;
        Ok(Self { level, xq: PackedQ8::activations_in(level, x, m, k, amx)?, amx })
    }

    /// One task per block of output columns `c0..c1` of each product `p` (`ns[p]` columns) on
    /// candle's worker pool (its workers spin between candle's ops, as in `qgemm::matmul_xwt`):
    /// `f(columns, state, p, c0, c1)`, where `columns(w, out, ldo)` writes columns `c0..c1` of
    /// `x wᵀ` at `out` (row `r` at `out + r ldo`, column `c0` first), and `state` is the thread's
    /// own (from `init`).
    ///
    /// `columns` writes through `out` unchecked (a private contract of this module): `out` must
    /// hold those rows and columns, which no other task writes; `w` has this product's `k` and at
    /// least `c1` rows.
    fn by_columns<S>(
        &self,
        ns: &[usize],
        init: impl Fn() -> S + Sync,
        f: impl Fn(&mut dyn FnMut(&PackedQ8, *mut f32, usize), &mut S, usize, usize, usize) + Sync,
    ) {
        let (xq, m) = (&self.xq, self.xq.rows);
        // Task `t` -> (product, its first column, its end) for `per` columns per task.
        let split = |per: usize, mut t: usize| {
            for (p, &n) in ns.iter().enumerate() {
                if t < n.div_ceil(per) {
                    return (p, t * per, n.min((t + 1) * per));
                }
                t -= n.div_ceil(per);
            }
            unreachable!("task past the last product")
        };
        let tasks = |per: usize| ns.iter().map(|n| n.div_ceil(per)).sum::<usize>();
        #[cfg(target_arch = "x86_64")]
        if self.amx {
            let init = || (amx::Scratch::new(xq.nbp), init());
            super::qgemm::par_tasks(tasks(amx::N), init, |(scratch, state), t| {
                let (p, c0, c1) = split(amx::N, t);
                // SAFETY: the level has AMX (`Activations::quantize`); the caller's contract.
                f(&mut |w, out, ldo| unsafe { amx::columns(scratch, xq, w, c0, c1, out, ldo) }, state, p, c0, c1);
            });
            return;
        }
        let vnni = cfg!(target_arch = "x86_64") && self.level >= SimdLevel::Avx512Vnni;
        let tile_cols = if m <= SMALL_M { 1 } else { TILE_COLS };
        super::qgemm::par_tasks(tasks(ROWS_PER_TASK), || (PackedQ8::scratch(), init()), |(scratch, state), t| {
            let (p, start, end) = split(ROWS_PER_TASK, t);
            let mut columns = |w: &PackedQ8, out: *mut f32, ldo: usize| {
                // Prefill on a five-bit weight: each task's rows unpacked once to eight bits.
                let (wt, base) = if w.is_five_bit() && m > SMALL_M {
                    w.unpack_rows(vnni, start, end, scratch);
                    (&*scratch, start)
                } else {
                    (w, 0)
                };
                let mut c0 = start;
                while c0 < end {
                    let cols = tile_cols.min(end - c0);
                    let mut r0 = 0;
                    while r0 < m {
                        let rows = TILE_ROWS.min(m - r0);
                        // SAFETY: the tile's rows and columns are in range (of `wt`: rows from
                        // `base`); `out` per the caller's contract.
                        unsafe { tile(vnni, xq, r0, rows, wt, c0 - base, cols, out.add(r0 * ldo + c0 - start), ldo) };
                        r0 += rows;
                    }
                    c0 += cols;
                }
            };
            f(&mut columns, state, p, start, end);
        });
    }
}

/// [`matmul`] as a candle op on an f32 input `[.., k]` (inference only: no backward; CPU only,
/// like [`super::qgemm::Q8_0MatMul`]).
pub struct PackedMatMul<'a>(pub &'a PackedQ8);

impl candle_core::CustomOp1 for PackedMatMul<'_> {
    fn name(&self) -> &'static str {
        "q8_0-packed-matmul-f32"
    }
    fn cpu_fwd(&self, s: &candle_core::CpuStorage, l: &candle_core::Layout) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        super::qgemm::cpu_fwd_xwt("q8_0 packed matmul", s, l, self.0.rows, self.0.k, |x, m, y| matmul(x, m, self.0, y))
    }
}

/// [`side_by_side_at`] as a candle op on an f32 input `[.., k]` (inference only, CPU only, as
/// [`PackedMatMul`]).
pub struct PackedSideBySide<'a>(pub Vec<&'a PackedQ8>);

impl candle_core::CustomOp1 for PackedSideBySide<'_> {
    fn name(&self) -> &'static str {
        "q8_0-packed-side-by-side-f32"
    }
    fn cpu_fwd(&self, s: &candle_core::CpuStorage, l: &candle_core::Layout) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let level = crate::base::cpu::level();
        let (n, k) = (self.0.iter().map(|w| w.rows).sum(), self.0.first().map_or(0, |w| w.k));
        super::qgemm::cpu_fwd_xwt("q8_0 packed side by side", s, l, n, k, |x, m, y| side_by_side_at(level, x, m, &self.0, y))
    }
}

/// [`swiglu_at`] as a candle op on an f32 input `[.., k]`: `(gate, up)`, of one shape
/// (inference only, CPU only, as [`PackedMatMul`]).
pub struct PackedSwiGlu<'a>(pub &'a PackedQ8, pub &'a PackedQ8);

impl candle_core::CustomOp1 for PackedSwiGlu<'_> {
    fn name(&self) -> &'static str {
        "q8_0-packed-swiglu-f32"
    }
    fn cpu_fwd(&self, s: &candle_core::CpuStorage, l: &candle_core::Layout) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let level = crate::base::cpu::level();
        super::qgemm::cpu_fwd_xwt("q8_0 packed swiglu", s, l, self.0.rows, self.0.k, |x, m, y| swiglu_at(level, x, m, self.0, self.1, y))
    }
}

/// `f(r)` for every row `r < n`, on candle's worker pool (the one-time repacks of a weight).
fn each_row(n: usize, f: impl Fn(usize) + Sync) {
    candle_core::utils::barrier_pool().execute_chunked(n, |ts| ts.for_each(&f));
}

/// Block `b` of a row (raw 34 bytes) into the row's interleaved quants, xor `flip`.
fn interleave(blk: &[u8], b: usize, nbp: usize, flip: u8, dst: &mut [u8]) {
    let (g0, j) = (b / GROUP * GROUP, b % GROUP);
    let g = GROUP.min(nbp - g0);
    for (t, q) in blk[2..].chunks_exact(4).enumerate() {
        let o = g0 * BLOCK + t * 4 * g + j * 4;
        let d = &mut dst[o..o + 4];
        for (d, &q) in d.iter_mut().zip(q) {
            *d = q ^ flip;
        }
    }
}

/// One `rows x cols` tile of outputs at `out` (row stride `ldo`).
///
/// # Safety
/// `vnni` only where the CPU has AVX-512 VNNI and VL; the tile lies inside `x`, `w` and `out`.
#[allow(clippy::too_many_arguments)]
unsafe fn tile(vnni: bool, x: &PackedQ8, r0: usize, rows: usize, w: &PackedQ8, c0: usize, cols: usize, out: *mut f32, ldo: usize) {
    #[cfg(target_arch = "x86_64")]
    if vnni {
        macro_rules! by_cols {
            ($r:literal) => {
                match (cols, w.is_five_bit()) {
                    (1, false) => vnni::tile::<$r, 1, false>(x, r0, w, c0, out, ldo),
                    (2, false) => vnni::tile::<$r, 2, false>(x, r0, w, c0, out, ldo),
                    (_, false) => vnni::tile::<$r, 3, false>(x, r0, w, c0, out, ldo),
                    (1, true) => vnni::tile::<$r, 1, true>(x, r0, w, c0, out, ldo),
                    (2, true) => vnni::tile::<$r, 2, true>(x, r0, w, c0, out, ldo),
                    (_, true) => vnni::tile::<$r, 3, true>(x, r0, w, c0, out, ldo),
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
    let _ = vnni;
    for r in 0..rows {
        for c in 0..cols {
            *out.add(r * ldo + c) = tile_portable(x, r0 + r, w, c0 + c);
        }
    }
}

/// One output, `x[r] · w[c]`, in the kernel's arithmetic: exact integer block dot products, then
/// `acc[j] = fma(d_x d_w, dot, acc[j])` with block `j` of each group in lane `j`, summed as
/// candle's `hsum_float_8` sums.
pub fn tile_portable(x: &PackedQ8, r: usize, w: &PackedQ8, c: usize) -> f32 {
    let nbp = w.nbp;
    let xq = &x.quants[r * nbp * BLOCK..(r + 1) * nbp * BLOCK];
    let mut acc = [0f32; GROUP];
    for b in 0..nbp {
        let (g0, j) = (b / GROUP * GROUP, b % GROUP);
        let g = GROUP.min(nbp - g0);
        let mut dot = x.corr[r * nbp + b];
        for i in 0..BLOCK {
            let o = g0 * BLOCK + (i / 4) * 4 * g + j * 4 + i % 4;
            dot += w.weight_byte(c, b, i) as i32 * xq[o] as i8 as i32;
        }
        let d = x.scales[r * nbp + b] * f16::from_bits(w.scales_f16[c * nbp + b]).to_f32();
        acc[j] = d.mul_add(dot as f32, acc[j]);
    }
    ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))
}

/// Prefill on AMX (`tdpbssd`, Sapphire Rapids and later), bit for bit the arithmetic of
/// [`tile_portable`]: each block's exact integer dot product comes from a 16 x 16 int32 tile
/// (16 activation rows x 16 weight rows, depth one block of 32 signed bytes, so a tile op is
/// half as deep as it could be: the block scales need per-block sums), stored to a buffer; then
/// AVX-512 applies the scales and sums the blocks in the portable order, 16 weight rows per
/// vector (lane `b % 8` of the portable sum is accumulator `b % 8` here).
///
/// The tiles want each block's 32 bytes in a row: the activations are quantized in plain block
/// order for this kernel, and each task (16 weight rows) lays its rows out as the tiles' right-hand
/// operand (`[block][4-byte group t][weight row][4]`, signed: the stored offset 128 removed,
/// so no correction term), from the eight-bit layout or its five-bit one unpacked.
#[cfg(target_arch = "x86_64")]
mod amx {
    use super::{PackedQ8, BLOCK, GROUP};
    use crate::model::amx::{for_row_chunks, TileConfig};
    use std::arch::asm;
    use std::arch::x86_64::*;

    /// Weight rows per task (one tile's columns) and activation rows per tile.
    pub(super) const N: usize = 16;
    const M: usize = 16;
    /// Bytes of one block's right-hand tile (8 rows of 16 x 4 bytes).
    const B_TILE: usize = BLOCK * N;

    /// The tiles (palette 1): tmm0/1 the int32 sums (`rows` x 16), tmm4/5 the activation blocks
    /// (`rows` x 32 bytes), tmm6/7 the weight blocks (8 x 64 bytes); two of each, for two blocks
    /// in flight.
    fn config(rows: usize) -> TileConfig {
        TileConfig::new([(64, rows), (64, rows), (0, 0), (0, 0), (32, rows), (32, rows), (64, 8), (64, 8)])
    }

    pub(super) struct Scratch {
        unpack: PackedQ8,
        b: Vec<u8>,
        ws: Vec<f32>,
        dots: Vec<i32>,
    }

    impl Scratch {
        pub(super) fn new(nbp: usize) -> Self {
            Scratch { unpack: PackedQ8::scratch(), b: vec![0; nbp * B_TILE], ws: vec![0.0; nbp * N], dots: vec![0; nbp * M * N] }
        }
    }

    /// Columns `c0..c1` (at most [`N`]) of `x W^T` for the quantized activations `xq` (plain
    /// block order) into `out` (row `r` at `out + r ldo`, column `c0` first; every value written).
    ///
    /// # Safety
    /// The CPU has AMX-INT8 and AVX-512 and the process has leave to use the tiles
    /// (`SimdLevel::Amx`); `w` has `xq`'s depth and at least `c1` rows; `out` holds `xq.rows`
    /// rows of `c1 - c0` values at stride `ldo`.
    pub(super) unsafe fn columns(s: &mut Scratch, xq: &PackedQ8, w: &PackedQ8, c0: usize, c1: usize, out: *mut f32, ldo: usize) {
        let (m, nbp) = (xq.rows, w.nbp);
        let xp = &xq.quants;
        let cols = c1 - c0;
        debug_assert!(cols <= N && xq.nbp == nbp && s.dots.len() >= nbp * M * N);
        let (src, base) = if w.is_five_bit() {
            w.unpack_rows(true, c0, c1, &mut s.unpack);
            (&s.unpack.quants, 0)
        } else {
            (&w.quants, c0)
        };
        for b in 0..nbp {
            for c in 0..N {
                s.ws[b * N + c] = if c < cols { half::f16::from_bits(w.scales_f16[(c0 + c) * nbp + b]).to_f32() } else { 0.0 };
            }
        }
        // rows base..base+cols of `src` exist, `s.b` holds nbp blocks.
        lay_out_weights(src, nbp, base, cols, &mut s.b);
        for_row_chunks(m, config, |r0, rows| {
            // Every pointer below stays inside its buffer (rows r0..r0+rows of `xp` and `out`).
            dots(xp.as_ptr().add(r0 * nbp * BLOCK), nbp * BLOCK, s.b.as_ptr(), nbp, s.dots.as_mut_ptr());
            epilogue(&s.dots, nbp, &xq.scales[r0 * nbp..], &s.ws, rows, out.add(r0 * ldo), ldo, cols);
        });
    }

    /// Weight rows `r0..r0+rows` (at most 16) of an eight-bit interleaved quant array as the
    /// tiles' right-hand operand: block `b`, group `t` of row `c` at `b 512 + t 64 + 4 c`,
    /// signed (offset 128 removed); rows past `rows` zero. One gather per block and group.
    #[target_feature(enable = "avx512f")]
    unsafe fn lay_out_weights(q: &[u8], nbp: usize, r0: usize, rows: usize, out: &mut [u8]) {
        debug_assert!(rows <= N && q.len() >= (r0 + rows) * nbp * BLOCK && out.len() >= nbp * B_TILE);
        let stride = (nbp * BLOCK) as i32;
        let idx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32(stride));
        let mask: __mmask16 = if rows >= 16 { 0xffff } else { (1u16 << rows) - 1 };
        let flip = _mm512_set1_epi32(0x8080_8080u32 as i32);
        let base = q.as_ptr().add(r0 * nbp * BLOCK);
        for b in 0..nbp {
            let (g0, j) = (b / GROUP * GROUP, b % GROUP);
            let g = GROUP.min(nbp - g0);
            for t in 0..8 {
                let p = base.add(g0 * BLOCK + t * 4 * g + j * 4);
                let v = _mm512_mask_i32gather_epi32::<1>(_mm512_setzero_si512(), mask, idx, p as *const i32);
                let v = _mm512_maskz_xor_epi32(mask, v, flip);
                _mm512_storeu_si512(out.as_mut_ptr().add(b * B_TILE + t * 4 * N) as *mut __m512i, v);
            }
        }
    }

    /// Block `b`'s int32 tile into `dots[b]` (16 x 16, row stride 16), two blocks at a time
    /// (`nbp` is a multiple of four).
    #[inline(always)]
    unsafe fn dots(x: *const u8, ldx: usize, b: *const u8, nbp: usize, dots: *mut i32) {
        const LD: usize = 64;
        let mut blk = 0;
        while blk < nbp {
            let (x0, x1) = (x.add(blk * BLOCK), x.add((blk + 1) * BLOCK));
            let (b0, b1) = (b.add(blk * B_TILE), b.add((blk + 1) * B_TILE));
            let (d0, d1) = (dots.add(blk * M * N), dots.add((blk + 1) * M * N));
            asm!(
                "tileloadd tmm4, [{x0} + {ldx}*1]",
                "tileloadd tmm6, [{b0} + {ld}*1]",
                "tilezero tmm0",
                "tdpbssd tmm0, tmm4, tmm6",
                "tileloadd tmm5, [{x1} + {ldx}*1]",
                "tileloadd tmm7, [{b1} + {ld}*1]",
                "tilezero tmm1",
                "tdpbssd tmm1, tmm5, tmm7",
                "tilestored [{d0} + {ld}*1], tmm0",
                "tilestored [{d1} + {ld}*1], tmm1",
                x0 = in(reg) x0, x1 = in(reg) x1, b0 = in(reg) b0, b1 = in(reg) b1, d0 = in(reg) d0, d1 = in(reg) d1,
                ldx = in(reg) ldx, ld = in(reg) LD,
                options(nostack),
            );
            blk += 2;
        }
    }

    /// Rows `0..rows` of the outputs from the blocks' int32 sums: per block `d_x d_w` (one
    /// vector of 16 weight rows), fused into accumulator `b % 8`, then the portable final sum;
    /// the first `cols` lanes stored. Two rows at a time (their 16 accumulators stay in
    /// registers and share each block's weight scales).
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn epilogue(dots: &[i32], nbp: usize, xs: &[f32], ws: &[f32], rows: usize, out: *mut f32, ldo: usize, cols: usize) {
        debug_assert!(nbp.is_multiple_of(4) && dots.len() >= nbp * M * N && ws.len() >= nbp * N && xs.len() >= rows * nbp);
        let mask: __mmask16 = if cols >= 16 { 0xffff } else { (1u16 << cols) - 1 };
        let mut r = 0;
        while r + 2 <= rows {
            epilogue_rows::<2>(dots.as_ptr(), nbp, xs.as_ptr(), ws.as_ptr(), r, out, ldo, mask);
            r += 2;
        }
        if r < rows {
            epilogue_rows::<1>(dots.as_ptr(), nbp, xs.as_ptr(), ws.as_ptr(), r, out, ldo, mask);
        }
    }

    /// [`epilogue`] for rows `r..r + R`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn epilogue_rows<const R: usize>(dots: *const i32, nbp: usize, xs: *const f32, ws: *const f32, r: usize, out: *mut f32, ldo: usize, mask: __mmask16) {
        let mut acc = [[_mm512_setzero_ps(); GROUP]; R];
        // Block `b` into accumulator `j` (= b % 8) of each row.
        macro_rules! step {
            ($b:expr, $j:expr) => {{
                let b = $b;
                let w = _mm512_loadu_ps(ws.add(b * N));
                for i in 0..R {
                    let v = _mm512_cvtepi32_ps(_mm512_loadu_epi32(dots.add((b * M + r + i) * N)));
                    let d = _mm512_mul_ps(_mm512_set1_ps(*xs.add((r + i) * nbp + b)), w);
                    acc[i][$j] = _mm512_fmadd_ps(d, v, acc[i][$j]);
                }
            }};
        }
        let full = nbp / GROUP * GROUP;
        let mut g0 = 0;
        while g0 < full {
            step!(g0, 0);
            step!(g0 + 1, 1);
            step!(g0 + 2, 2);
            step!(g0 + 3, 3);
            step!(g0 + 4, 4);
            step!(g0 + 5, 5);
            step!(g0 + 6, 6);
            step!(g0 + 7, 7);
            g0 += GROUP;
        }
        // `nbp` is a multiple of four: at most one group of four is left.
        if g0 < nbp {
            step!(g0, 0);
            step!(g0 + 1, 1);
            step!(g0 + 2, 2);
            step!(g0 + 3, 3);
        }
        for (i, a) in acc.iter().enumerate() {
            let s = _mm512_add_ps(
                _mm512_add_ps(_mm512_add_ps(a[0], a[4]), _mm512_add_ps(a[2], a[6])),
                _mm512_add_ps(_mm512_add_ps(a[1], a[5]), _mm512_add_ps(a[3], a[7])),
            );
            _mm512_mask_storeu_ps(out.add((r + i) * ldo), mask, s);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use super::{PackedQ8, BLOCK};
    use crate::model::qgemm::avx::hsum;
    use std::arch::x86_64::*;

    /// Unaligned loads through `vlddqu`: `_mm256_loadu_si256` and friends go through
    /// `ptr::read_unaligned`, whose debug-build checks (null, overlap) put two branches before
    /// every load of the inner loop in the dev profile that tests and notebooks build with.
    #[inline(always)]
    unsafe fn ld256(p: *const __m256i) -> __m256i {
        _mm256_lddqu_si256(p)
    }
    #[inline(always)]
    unsafe fn ld128(p: *const __m128i) -> __m128i {
        _mm_lddqu_si128(p)
    }

    /// Vector `t` of a five-bit group of eight blocks (nibbles at `nib`, fifth bits `hi`) as the
    /// eight-bit layout's bytes (quant + 128).
    #[inline(always)]
    unsafe fn five_bit_256(nib: *const u8, hi: __m256i, t: usize) -> __m256i {
        let n = ld256(nib.wrapping_add(32 * (t % 4)) as *const __m256i);
        let lo4 = _mm256_set1_epi8(0x0f);
        let low = if t < 4 { _mm256_and_si256(n, lo4) } else { _mm256_and_si256(_mm256_srli_epi16::<4>(n), lo4) };
        let h = if t <= 4 { _mm256_sllv_epi32(hi, _mm256_set1_epi32(4 - t as i32)) } else { _mm256_srlv_epi32(hi, _mm256_set1_epi32(t as i32 - 4)) };
        let h = _mm256_and_si256(h, _mm256_set1_epi8(0x10));
        _mm256_add_epi8(_mm256_or_si256(low, h), _mm256_set1_epi8(0x70))
    }

    /// [`five_bit_256`] for a group of four blocks.
    #[inline(always)]
    unsafe fn five_bit_128(nib: *const u8, hi: __m128i, t: usize) -> __m128i {
        let n = ld128(nib.wrapping_add(16 * (t % 4)) as *const __m128i);
        let lo4 = _mm_set1_epi8(0x0f);
        let low = if t < 4 { _mm_and_si128(n, lo4) } else { _mm_and_si128(_mm_srli_epi16::<4>(n), lo4) };
        let h = if t <= 4 { _mm_sllv_epi32(hi, _mm_set1_epi32(4 - t as i32)) } else { _mm_srlv_epi32(hi, _mm_set1_epi32(t as i32 - 4)) };
        let h = _mm_and_si128(h, _mm_set1_epi8(0x10));
        _mm_add_epi8(_mm_or_si128(low, h), _mm_set1_epi8(0x70))
    }

    /// Row `c` of a five-bit weight in the eight-bit layout, into `dst` (`nbp x 32` bytes).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
    pub(super) unsafe fn unpack_row(w: &PackedQ8, c: usize, dst: &mut [u8]) {
        let (nbp, nib, hi) = (w.nbp, w.row_nib(c), w.row_hi(c));
        let mut g0 = 0;
        while g0 + 8 <= nbp {
            let hv = ld256(hi.wrapping_add(g0) as *const __m256i);
            for t in 0..8 {
                let v = five_bit_256(nib.wrapping_add(g0 * 16), hv, t);
                _mm256_storeu_si256(dst.as_mut_ptr().add(g0 * BLOCK + 32 * t) as *mut __m256i, v);
            }
            g0 += 8;
        }
        if g0 < nbp {
            let hv = ld128(hi.wrapping_add(g0) as *const __m128i);
            for t in 0..8 {
                let v = five_bit_128(nib.wrapping_add(g0 * 16), hv, t);
                _mm_storeu_si128(dst.as_mut_ptr().add(g0 * BLOCK + 16 * t) as *mut __m128i, v);
            }
        }
    }

    /// An `R x C` tile: `R` activation rows from `r0` against `C` weight rows from `c0`.
    ///
    /// Pointer offsets use `wrapping_add`: the tile is in range (the caller's contract), and the
    /// dev profile's debug assertions would otherwise check every `add` in the inner loop.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
    pub(super) unsafe fn tile<const R: usize, const C: usize, const Q5: bool>(x: &PackedQ8, r0: usize, w: &PackedQ8, c0: usize, out: *mut f32, ldo: usize) {
        let nbp = w.nbp;
        let xq: [*const u8; R] = std::array::from_fn(|r| x.row_quants(r0 + r));
        let xs: [*const f32; R] = std::array::from_fn(|r| x.row_scales(r0 + r));
        let xc: [*const i32; R] = std::array::from_fn(|r| x.row_corr(r0 + r));
        let wq: [*const u8; C] = std::array::from_fn(|c| if Q5 { std::ptr::null() } else { w.row_quants(c0 + c) });
        let wn: [*const u8; C] = std::array::from_fn(|c| if Q5 { w.row_nib(c0 + c) } else { std::ptr::null() });
        let wh: [*const u32; C] = std::array::from_fn(|c| if Q5 { w.row_hi(c0 + c) } else { std::ptr::null() });
        let ws: [*const u16; C] = std::array::from_fn(|c| w.row_scales_f16(c0 + c));
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let mut g0 = 0;
        while g0 + 8 <= nbp {
            let base = g0 * BLOCK;
            let mut dot: [[__m256i; C]; R] = std::array::from_fn(|r| [ld256(xc[r].wrapping_add(g0) as *const __m256i); C]);
            let hv: [__m256i; C] = std::array::from_fn(|c| if Q5 { ld256(wh[c].wrapping_add(g0) as *const __m256i) } else { _mm256_setzero_si256() });
            for t in 0..8 {
                let wv: [__m256i; C] = std::array::from_fn(|c| {
                    if Q5 {
                        five_bit_256(wn[c].wrapping_add(g0 * 16), hv[c], t)
                    } else {
                        ld256(wq[c].wrapping_add(base + 32 * t) as *const __m256i)
                    }
                });
                for r in 0..R {
                    let xv = ld256(xq[r].wrapping_add(base + 32 * t) as *const __m256i);
                    for c in 0..C {
                        dot[r][c] = _mm256_dpbusd_epi32(dot[r][c], wv[c], xv);
                    }
                }
            }
            let sw: [__m256; C] = std::array::from_fn(|c| _mm256_cvtph_ps(ld128(ws[c].wrapping_add(g0) as *const __m128i)));
            for r in 0..R {
                let sx = _mm256_castsi256_ps(ld256(xs[r].wrapping_add(g0) as *const __m256i));
                for c in 0..C {
                    let d = _mm256_mul_ps(sx, sw[c]);
                    acc[r][c] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot[r][c]), acc[r][c]);
                }
            }
            g0 += 8;
        }
        if g0 < nbp {
            // The row's last group holds four blocks: lanes 0..4, in 128-bit vectors.
            let base = g0 * BLOCK;
            let mut dot: [[__m128i; C]; R] = std::array::from_fn(|r| [ld128(xc[r].wrapping_add(g0) as *const __m128i); C]);
            let hv: [__m128i; C] = std::array::from_fn(|c| if Q5 { ld128(wh[c].wrapping_add(g0) as *const __m128i) } else { _mm_setzero_si128() });
            for t in 0..8 {
                let wv: [__m128i; C] = std::array::from_fn(|c| {
                    if Q5 {
                        five_bit_128(wn[c].wrapping_add(g0 * 16), hv[c], t)
                    } else {
                        ld128(wq[c].wrapping_add(base + 16 * t) as *const __m128i)
                    }
                });
                for r in 0..R {
                    let xv = ld128(xq[r].wrapping_add(base + 16 * t) as *const __m128i);
                    for c in 0..C {
                        dot[r][c] = _mm_dpbusd_epi32(dot[r][c], wv[c], xv);
                    }
                }
            }
            // eight f16 scales read, four used (the scale array has eight spare entries at its end)
            let sw: [__m128; C] = std::array::from_fn(|c| _mm_cvtph_ps(ld128(ws[c].wrapping_add(g0) as *const __m128i)));
            for r in 0..R {
                let sx = _mm_castsi128_ps(ld128(xs[r].wrapping_add(g0) as *const __m128i));
                for c in 0..C {
                    let d = _mm_mul_ps(sx, sw[c]);
                    let lo = _mm_fmadd_ps(d, _mm_cvtepi32_ps(dot[r][c]), _mm256_castps256_ps128(acc[r][c]));
                    acc[r][c] = _mm256_insertf128_ps::<0>(acc[r][c], lo);
                }
            }
        }
        for r in 0..R {
            for c in 0..C {
                *out.add(r * ldo + c) = hsum(acc[r][c]);
            }
        }
    }

    /// One 32-value block quantized as candle's `BlockQ8_0::from_float` does it (scale
    /// `d = max|x| / 127` stored as f16, `q = round(x * (1/d))` with halves away from zero) into a
    /// raw 34-byte block. The same f32 operations in 16 lanes, so the same bits. Returns false,
    /// writing nothing, for a block with a NaN or an infinity (candle's loop handles those).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn quantize_block(x: &[f32], out: &mut [u8; 34]) -> bool {
        debug_assert!(x.len() >= BLOCK);
        let a = _mm512_castsi512_ps(_mm512_loadu_epi32(x.as_ptr() as *const i32));
        let b = _mm512_castsi512_ps(_mm512_loadu_epi32(x.as_ptr().wrapping_add(16) as *const i32));
        // finite iff x - x == 0
        let fin = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(_mm512_sub_ps(a, a), _mm512_setzero_ps())
            & _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(_mm512_sub_ps(b, b), _mm512_setzero_ps());
        if fin != 0xffff {
            return false;
        }
        let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
        let d = amax / ((1 << 7) - 1) as f32;
        let id = if d != 0f32 { 1. / d } else { 0. };
        let vid = _mm512_set1_ps(id);
        let half = _mm512_set1_ps(0.5);
        let round = |v: __m512| {
            let v = _mm512_mul_ps(v, vid);
            // f32::round: truncate, then step away from zero where the dropped part is >= 1/2
            // (v - trunc(v) is exact).
            let t = _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
            let up = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(_mm512_abs_ps(_mm512_sub_ps(v, t)), half);
            let one = _mm512_or_ps(_mm512_set1_ps(1.0), _mm512_and_ps(v, _mm512_set1_ps(-0.0)));
            _mm512_cvttps_epi32(_mm512_mask_add_ps(t, up, t, one))
        };
        let (qa, qb) = (round(a), round(b));
        out[..2].copy_from_slice(&half::f16::from_f32(d).to_le_bytes());
        let lo: [u8; 16] = std::mem::transmute(_mm512_cvtepi32_epi8(qa));
        let hi: [u8; 16] = std::mem::transmute(_mm512_cvtepi32_epi8(qb));
        out[2..18].copy_from_slice(&lo);
        out[18..].copy_from_slice(&hi);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn normal(n: usize, k: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::base::rng::Rng::new(seed);
        (0..n * k).map(|_| rng.normal() as f32).collect()
    }

    fn q8(w: &[f32], n: usize, k: usize) -> QTensor {
        QTensor::quantize(&Tensor::from_vec(w.to_vec(), (n, k), &Device::Cpu).unwrap(), GgmlDType::Q8_0).unwrap()
    }

    /// (m, n, k): one and many rows, rows and columns off the tile grid, `n` off the task grid,
    /// and block counts of whole groups (8, 16), a four-block tail (4, 28 = the embedded model's
    /// 896) and a padded tail (1, 3, 5 blocks). From 32 rows on, the AMX kernel where the CPU has
    /// it (row blocks of 16 and a shorter last one, weight rows in tasks of 16, padded blocks).
    const SHAPES: [(usize, usize, usize); 13] = [
        (1, 7, 32),
        (2, 30, 96),
        (3, 25, 160),
        (4, 3, 128),
        (5, 50, 256),
        (9, 4, 512),
        (17, 27, 896),
        (1, 49, 896),
        (6, 5, 136 * 4),
        (35, 20, 160),
        (40, 33, 96),
        // AMX with two full groups of eight blocks, and with one full group and four blocks.
        (37, 18, 32 * 13),
        (33, 17, 32 * 12),
    ];

    /// Within f32 rounding of candle's `vec_dot` of the same quantized rows (the integers are the
    /// same; only the f32 sum is grouped differently): |diff| <= 1e-6 x sum over blocks of |term|.
    #[test]
    fn matches_candle_vec_dot() {
        use candle_core::quantized::k_quants::{BlockQ8_0, GgmlType};
        let quant = |v: &[f32]| {
            let mut b = vec![BlockQ8_0::zeros(); v.len() / BLOCK];
            BlockQ8_0::from_float(v, &mut b);
            b
        };
        for (m, n, k) in SHAPES {
            let w = normal(n, k, (n * 1000 + k) as u64);
            let x = normal(m, k, m as u64 + 7);
            let p = PackedQ8::from_qtensor(&q8(&w, n, k)).unwrap();
            let mut got = vec![0f32; m * n];
            matmul(&x, m, &p, &mut got).unwrap();
            for i in 0..m {
                let xb = quant(&x[i * k..(i + 1) * k]);
                for j in 0..n {
                    let wb = quant(&w[j * k..(j + 1) * k]);
                    let want = BlockQ8_0::vec_dot(k, &wb, &xb);
                    // SAFETY: `BlockQ8_0` is `#[repr(C)]` {f16, [i8; 32]}: 34 bytes (candle asserts it).
                    let raw = |b: &[BlockQ8_0]| unsafe { std::slice::from_raw_parts(b.as_ptr() as *const u8, b.len() * BLOCK_BYTES) }.to_vec();
                    let (wr, xr) = (raw(&wb), raw(&xb));
                    let scale: f32 = wr.chunks(BLOCK_BYTES).zip(xr.chunks(BLOCK_BYTES)).map(|(a, b)| {
                        let dot: i32 = a[2..].iter().zip(&b[2..]).map(|(&u, &v)| u as i8 as i32 * v as i8 as i32).sum();
                        let d = |c: &[u8]| f16::from_le_bytes([c[0], c[1]]).to_f32();
                        (d(a) * d(b) * dot as f32).abs()
                    }).sum();
                    let g = got[i * n + j];
                    assert!((g - want).abs() <= 1e-6 * scale + 1e-30, "m={m} n={n} k={k} ({i}, {j}): {g} vs {want}");
                }
            }
        }
    }

    /// Every level this machine has gives the portable reference's bits, on ordinary values and on
    /// blocks where every quantized value is ±127 (the largest integer sums).
    #[test]
    fn every_level_matches_portable() {
        for (m, n, k) in SHAPES {
            for extreme in [false, true] {
                let mut w = normal(n, k, 3 + k as u64);
                let mut x = normal(m, k, 4 + m as u64);
                if extreme {
                    for v in w.iter_mut().chain(x.iter_mut()) {
                        *v = if *v >= 0.0 { 2.5 } else { -2.5 };
                    }
                }
                let p = PackedQ8::from_qtensor(&q8(&w, n, k)).unwrap();
                let xq = PackedQ8::activations(&x, m, k).unwrap();
                // The padding blocks (the buffers arrive unzeroed) are zeros: scale, correction, quants.
                for r in 0..m {
                    for b in k / BLOCK..xq.nbp {
                        assert_eq!((xq.scales[r * xq.nbp + b], xq.corr[r * xq.nbp + b]), (0.0, 0), "row {r} pad block {b}");
                        assert!((0..BLOCK).all(|i| xq.weight_byte(r, b, i) == 0), "row {r} pad block {b} quants");
                    }
                }
                let want: Vec<f32> = (0..m * n).map(|i| tile_portable(&xq, i / n, &p, i % n)).collect();
                for lvl in crate::base::cpu::detected().up_to() {
                    let mut got = vec![f32::NAN; m * n]; // every output is written (unzeroed buffers)
                    matmul_at(lvl, &x, m, &p, &mut got).unwrap();
                    assert_eq!(got, want, "level {lvl}, m={m} n={n} k={k}, extreme {extreme}");
                }
            }
        }
    }

    /// The AVX-512 activation quantizer gives candle's bits: ordinary rows, halves that round
    /// away from zero (a block whose scale is exactly 1), zeros, tiny and huge values, and blocks
    /// with NaN or infinity (which fall back to candle's loop).
    #[test]
    fn activation_quantizer_matches_candle() {
        let k = 32 * 9;
        let mut x = normal(3, k, 77);
        for (i, v) in x[..32].iter_mut().enumerate() {
            *v = if i == 0 { 127.0 } else { (i as f32 - 16.0) + 0.5 }; // d = 1: exact halves
        }
        x[32..64].fill(0.0);
        for (i, v) in x[64..96].iter_mut().enumerate() {
            *v = (i as f32 - 16.0) * 1e-30;
        }
        for (i, v) in x[96..128].iter_mut().enumerate() {
            *v = (i as f32 - 16.0) * 1e30;
        }
        x[130] = f32::NAN;
        x[170] = f32::INFINITY;
        x[200] = f32::NEG_INFINITY;
        let want = PackedQ8::activations_at(SimdLevel::Portable, &x, 3, k).unwrap();
        for lvl in crate::base::cpu::detected().up_to() {
            let got = PackedQ8::activations_at(lvl, &x, 3, k).unwrap();
            assert_eq!(got.quants, want.quants, "level {lvl}");
            assert_eq!(got.scales.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want.scales.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "level {lvl}");
            assert_eq!(got.corr, want.corr, "level {lvl}");
        }
        // and the portable path is candle's quantizer itself
        let raw = crate::model::qgemm::quantize_rows(&x[..32], 1, 32);
        assert_eq!(want.scales[0], f16::from_le_bytes([raw[0], raw[1]]).to_f32());
        assert_eq!(want.scales[0], 1.0);
    }

    /// A row's output does not depend on the other rows of the call (batched decode law).
    #[test]
    fn rows_do_not_depend_on_the_batch() {
        let (m, n, k) = (11, 26, 896);
        let p = PackedQ8::from_qtensor(&q8(&normal(n, k, 1), n, k)).unwrap();
        let x = normal(m, k, 2);
        let mut all = vec![0f32; m * n];
        matmul(&x, m, &p, &mut all).unwrap();
        for i in 0..m {
            let mut one = vec![0f32; n];
            matmul(&x[i * k..(i + 1) * k], 1, &p, &mut one).unwrap();
            assert_eq!(one, all[i * n..(i + 1) * n], "row {i}");
        }
    }

    /// Unpacking the interleaved layout gives back the GGUF blocks (the repack is lossless), in
    /// as many bytes (plus eight spare scales).
    #[test]
    fn repack_is_lossless() {
        let (n, k) = (5, 896);
        let q = q8(&normal(n, k, 9), n, k);
        let p = PackedQ8::from_qtensor(&q).unwrap();
        let data = q.data().unwrap();
        let nb = k / BLOCK;
        assert_eq!(p.nbp, 28);
        assert_eq!(p.bytes(), data.len() + 2 * GROUP);
        for r in 0..n {
            for b in 0..nb {
                let blk = &data[(r * nb + b) * BLOCK_BYTES..][..BLOCK_BYTES];
                assert_eq!(p.scales_f16[r * p.nbp + b], u16::from_le_bytes([blk[0], blk[1]]));
                let (g0, j) = (b / GROUP * GROUP, b % GROUP);
                let g = GROUP.min(p.nbp - g0);
                for i in 0..BLOCK {
                    assert_eq!(p.quants[r * p.nbp * BLOCK + g0 * BLOCK + (i / 4) * 4 * g + j * 4 + i % 4] ^ 0x80, blk[2 + i], "row {r} block {b} byte {i}");
                }
            }
        }
    }

    /// A Q5_0 weight (re-encoded as Q8_0 by the loader) packs in five bits, 22 bytes per block as in
    /// the GGUF, and gives the eight-bit layout's results bit for bit at every level, in decode
    /// (up to 8 rows: unpacked in registers) and prefill (unpacked per task), and the portable
    /// reference's; a weight with one quant outside -16..=15 stays eight-bit.
    /// Products side by side are each product bit for bit, at every level, with eight-bit and
    /// five-bit weights of different row counts (tasks that end inside a product) and row counts
    /// on both sides of the AMX threshold.
    #[test]
    fn side_by_side_is_each_product() {
        for (m, k) in [(1, 96), (5, 256), (9, 160), (40, 96), (64, 896)] {
            let weight = |n: usize, five: bool, seed: u64| {
                let t = Tensor::from_vec(normal(n, k, seed), (n, k), &Device::Cpu).unwrap();
                let q = if five {
                    crate::model::load::q5_0_to_q8_0(QTensor::quantize(&t, GgmlDType::Q5_0).unwrap(), &Device::Cpu).unwrap()
                } else {
                    QTensor::quantize(&t, GgmlDType::Q8_0).unwrap()
                };
                PackedQ8::from_qtensor(&q).unwrap()
            };
            let ws = [weight(50, true, 21), weight(7, false, 22), weight(33, true, 23)];
            let x = normal(m, k, 24 + m as u64);
            let total: usize = ws.iter().map(|w| w.rows).sum();
            for lvl in crate::base::cpu::detected().up_to() {
                let mut want = vec![0f32; m * total];
                let mut at = 0;
                for w in &ws {
                    let mut y = vec![0f32; m * w.rows];
                    matmul_at(lvl, &x, m, w, &mut y).unwrap();
                    for r in 0..m {
                        want[r * total + at..r * total + at + w.rows].copy_from_slice(&y[r * w.rows..(r + 1) * w.rows]);
                    }
                    at += w.rows;
                }
                let mut got = vec![f32::NAN; m * total]; // every output is written
                side_by_side_at(lvl, &x, m, &ws.iter().collect::<Vec<_>>(), &mut got).unwrap();
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "level {lvl}, m={m} k={k}");
            }
        }
        let (a, b) = (PackedQ8::from_qtensor(&q8(&normal(4, 64, 1), 4, 64)).unwrap(), PackedQ8::from_qtensor(&q8(&normal(4, 96, 2), 4, 96)).unwrap());
        let err = side_by_side_at(SimdLevel::Portable, &[0.0; 64], 1, &[&a, &b], &mut [0.0; 8]).unwrap_err();
        assert!(format!("{err:#}").contains("weight 1 has depth 96"), "{err:#}");
    }

    /// The fused SwiGLU is the two products and `vmath::silu_mul` bit for bit, at every level,
    /// on eight-bit and five-bit weights, with row counts on both sides of the AMX threshold and
    /// column counts that leave a short last task.
    #[test]
    fn swiglu_is_the_two_products_then_silu_mul() {
        for (m, n, k, five) in [(5, 50, 256, false), (40, 33, 96, false), (35, 20, 160, true), (64, 50, 896, true), (9, 7, 128, true)] {
            let weight = |seed: u64| {
                let t = Tensor::from_vec(normal(n, k, seed), (n, k), &Device::Cpu).unwrap();
                let q = if five {
                    crate::model::load::q5_0_to_q8_0(QTensor::quantize(&t, GgmlDType::Q5_0).unwrap(), &Device::Cpu).unwrap()
                } else {
                    QTensor::quantize(&t, GgmlDType::Q8_0).unwrap()
                };
                let p = PackedQ8::from_qtensor(&q).unwrap();
                assert_eq!(p.is_five_bit(), five);
                p
            };
            let (gate, up) = (weight(11 + k as u64), weight(12 + n as u64));
            let x: Vec<f32> = normal(m, k, 13 + m as u64).iter().map(|v| 3.0 * v).collect();
            for lvl in crate::base::cpu::detected().up_to() {
                let (mut g, mut u, mut want) = (vec![0f32; m * n], vec![0f32; m * n], vec![0f32; m * n]);
                matmul_at(lvl, &x, m, &gate, &mut g).unwrap();
                matmul_at(lvl, &x, m, &up, &mut u).unwrap();
                crate::base::vmath::silu_mul(&g, &u, &mut want);
                let mut got = vec![f32::NAN; m * n]; // every output is written
                swiglu_at(lvl, &x, m, &gate, &up, &mut got).unwrap();
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "level {lvl}, m={m} n={n} k={k}, five-bit {five}");
            }
        }
        let (a, b) = (PackedQ8::from_qtensor(&q8(&normal(4, 64, 1), 4, 64)).unwrap(), PackedQ8::from_qtensor(&q8(&normal(5, 64, 2), 5, 64)).unwrap());
        let err = swiglu_at(SimdLevel::Portable, &[0.0; 64], 1, &a, &b, &mut [0.0; 4]).unwrap_err();
        assert!(format!("{err:#}").contains("differ in shape"), "{err:#}");
    }

    #[test]
    fn five_bit_layout_matches_eight_bit() {
        for (n, k) in [(50, 896), (7, 256), (9, 160)] {
            let w = normal(n, k, (n + k) as u64);
            let q5 = QTensor::quantize(&Tensor::from_vec(w.clone(), (n, k), &Device::Cpu).unwrap(), GgmlDType::Q5_0).unwrap();
            let q = crate::model::load::q5_0_to_q8_0(q5, &Device::Cpu).unwrap();
            let five = PackedQ8::from_qtensor(&q).unwrap();
            let eight = PackedQ8::from_qtensor_with(&q, false).unwrap();
            assert!(five.is_five_bit() && !eight.is_five_bit());
            assert_eq!(five.bytes(), n * five.nbp * 22 + 2 * GROUP, "22 bytes per block");
            for r in 0..n {
                for b in 0..five.nbp {
                    for i in 0..BLOCK {
                        assert_eq!(five.weight_byte(r, b, i), eight.weight_byte(r, b, i), "row {r} block {b} value {i}");
                    }
                }
            }
            for m in [1, 3, 8, 9, 20] {
                let x = normal(m, k, m as u64 + 40);
                let xq = PackedQ8::activations(&x, m, k).unwrap();
                let want: Vec<f32> = (0..m * n).map(|i| tile_portable(&xq, i / n, &five, i % n)).collect();
                for lvl in crate::base::cpu::detected().up_to() {
                    let (mut a, mut b) = (vec![f32::NAN; m * n], vec![f32::NAN; m * n]); // every output is written
                    matmul_at(lvl, &x, m, &five, &mut a).unwrap();
                    matmul_at(lvl, &x, m, &eight, &mut b).unwrap();
                    assert_eq!(a, b, "level {lvl}, m={m} n={n} k={k}");
                    assert_eq!(a, want, "level {lvl}, m={m} n={n} k={k}: portable");
                }
            }
        }
        let mut w = normal(4, 64, 5);
        w[3] = 40.0; // this block's other quants round to 0; this one is 127
        let q = crate::model::load::q5_0_to_q8_0(QTensor::quantize(&Tensor::from_vec(w, (4, 64), &Device::Cpu).unwrap(), GgmlDType::Q8_0).unwrap(), &Device::Cpu).unwrap();
        assert!(!PackedQ8::from_qtensor(&q).unwrap().is_five_bit());
    }

    #[test]
    fn bad_inputs_are_errors() {
        let p = PackedQ8::from_qtensor(&q8(&normal(4, 64, 1), 4, 64)).unwrap();
        let mut y = vec![0f32; 4];
        assert!(format!("{}", matmul(&[0.0; 63], 1, &p, &mut y).unwrap_err()).contains("63 values"));
        assert!(format!("{}", matmul(&[0.0; 64], 1, &p, &mut [0f32; 3]).unwrap_err()).contains("3 values"));
        let q4 = QTensor::quantize(&Tensor::zeros((8, 256), candle_core::DType::F32, &Device::Cpu).unwrap(), GgmlDType::Q4K).unwrap();
        assert!(format!("{}", PackedQ8::from_qtensor(&q4).err().unwrap()).contains("Q4K"));
    }
}
