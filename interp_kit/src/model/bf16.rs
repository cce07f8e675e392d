//! bf16 compute for the gradient path (`Model::compute_dtype = ComputeDtype::Bf16`): the frozen
//! linear layers multiply in bf16 with f32 accumulation, forward (`y = x W^T`) and backward
//! (`dL/dx = dL/dy W`), on AVX-512 BF16 (`vdpbf16ps`, Zen 4, Sapphire Rapids, Cooper Lake).
//! Everything else stays f32: the residual stream, norms, attention, softmax, LoRA adapters and
//! the loss. This is what torch's CPU autocast to bf16 does for `nn.Linear`.
//!
//! **Numerics.** Operands are rounded to bf16 (round to nearest even; subnormal inputs become
//! signed zeros, as `vcvtne2ps2bf16` does), each product of two bf16 values is exact in f32, and
//! products are summed in f32 along the contraction, two per step, in the order
//! `acc = (acc + a[2i+1] b[2i+1]) + a[2i] b[2i]` that Intel documents for `vdpbf16ps`.
//! [`gemm_at`] at [`SimdLevel::Portable`] is that arithmetic in plain Rust, output by output; the
//! AVX-512 kernel is compared with it in the tests. The error against f32 compute is measured on
//! the embedded model (`tests/embedded.rs`, BENCHMARKS.md).
//!
//! **Layout.** A right-hand matrix `B` (`depth x cols`) is packed once ([`PackedB`]): panels of 16
//! columns; within a panel, for each pair of depth indices `(2i, 2i+1)`, the 16 columns' two
//! values side by side (one 64-byte vector). The kernel broadcasts a pair of `A` values (one
//! 32-bit word of a bf16 row) and runs one `vdpbf16ps` per 16 columns, so every output column is
//! one f32 lane and no horizontal sum is needed. A frozen weight `W` (`[out, in]`) is packed twice
//! ([`Bf16Weight`]): as `W^T` for the forward and as `W` for the backward, 4 bytes per parameter
//! in all, as much as the f32 copy the f32 path keeps.
//!
//! Without AVX-512 BF16, or on a GPU, [`Bf16Weight::Tensor`] keeps `W` once as a bf16 tensor
//! and candle multiplies bf16 tensors (same rounding of the operands; candle's own summation).
use anyhow::{ensure, Result};
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};

use super::qgemm::SendPtr;
use crate::base::cpu::SimdLevel;

/// The arithmetic of the gradient path's frozen linear layers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComputeDtype {
    /// f32 operands and sums: the default and the reference.
    #[default]
    F32,
    /// bf16 operands, f32 sums (this module).
    Bf16,
}

impl ComputeDtype {
    pub fn is_f32(&self) -> bool {
        *self == ComputeDtype::F32
    }
}

impl std::fmt::Display for ComputeDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ComputeDtype::F32 => "f32",
            ComputeDtype::Bf16 => "bf16",
        })
    }
}

impl std::str::FromStr for ComputeDtype {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" => Ok(ComputeDtype::F32),
            "bf16" => Ok(ComputeDtype::Bf16),
            other => anyhow::bail!("compute dtype {other:?}: use f32 or bf16"),
        }
    }
}

/// Columns per panel (one 512-bit vector of f32 lanes).
const PANEL: usize = 16;
/// Rows and panels of one register tile: 8 x 3 accumulators of 16 lanes.
const MR: usize = 8;
const NV: usize = 3;
/// Depth pairs per block: a block of `b` for one tile's panels (3 x 16 columns x 512 pairs,
/// 96 KiB) stays in L2 while every row of the task passes over it.
const KC: usize = 512;

/// `x` rounded to bf16 (bits): nearest, ties to even; NaN stays NaN (quiet); subnormals become
/// signed zeros, as `vcvtne2ps2bf16` rounds.
pub fn to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) as u16) | 0x0040;
    }
    if b & 0x7f80_0000 == 0 {
        return ((b >> 16) & 0x8000) as u16;
    }
    let r = b.wrapping_add(0x7fff + ((b >> 16) & 1));
    (r >> 16) as u16
}

fn from_bf16(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// The left-hand operand: `m` rows of `depth` f32 values rounded to bf16, as pairs (one `u32`
/// per pair: the even index in the low half), `depth` padded to even with a zero.
pub struct PackedA {
    m: usize,
    pairs: usize,
    data: Vec<u32>,
}

impl PackedA {
    pub fn new_at(level: SimdLevel, x: &[f32], m: usize, depth: usize) -> Result<Self> {
        ensure!(x.len() == m * depth, "bf16 lhs: {} values for {m} x {depth}", x.len());
        let pairs = depth.div_ceil(2);
        // Every pair of every row is written below (the kernel's rows, then the scalar tail).
        let mut data = super::qgemm::uninit::<u32>(m * pairs);
        let simd = cfg!(target_arch = "x86_64") && level >= SimdLevel::Avx512Bf16;
        let one = |(r, out): (usize, &mut [u32])| {
            let row = &x[r * depth..(r + 1) * depth];
            let mut done = 0;
            #[cfg(target_arch = "x86_64")]
            if simd {
                // SAFETY: the level says the CPU has AVX-512 BF16; lengths as the function states.
                done = unsafe { avx::round_row(row, out) };
            }
            for i in done / 2..pairs {
                let lo = to_bf16(row[2 * i]) as u32;
                let hi = row.get(2 * i + 1).map_or(0, |v| to_bf16(*v) as u32);
                out[i] = lo | (hi << 16);
            }
        };
        // On candle's worker pool, as the gemm: its workers spin between ops and a second pool
        // (rayon) would compete with them for the cores.
        let rows_per = ((1 << 15) / depth.max(1)).max(1);
        let ptr = SendPtr(data.as_mut_ptr());
        candle_core::utils::barrier_pool().execute_chunked(m.div_ceil(rows_per), |ts| {
            let p = &ptr;
            for r in ts.start * rows_per..m.min(ts.end * rows_per) {
                // SAFETY: row r of `data` (pairs values) is written by this task alone.
                one((r, unsafe { std::slice::from_raw_parts_mut(p.0.add(r * pairs), pairs) }));
            }
        });
        Ok(Self { m, pairs, data })
    }
}

/// A right-hand matrix (`depth x cols`) in bf16, packed as the module doc says.
#[derive(Debug, PartialEq)]
pub struct PackedB {
    depth: usize,
    cols: usize,
    pairs: usize,
    panels: usize,
    /// `panels x pairs x 16 x 2` bf16 bits; columns past `cols` are zero.
    data: Vec<u16>,
}

impl PackedB {
    /// Packs `B[d][c] = get(d, c)`.
    fn pack(depth: usize, cols: usize, get: impl Fn(usize, usize) -> f32 + Sync) -> Self {
        use rayon::prelude::*;
        let pairs = depth.div_ceil(2);
        let panels = cols.div_ceil(PANEL);
        let mut data = vec![0u16; panels * pairs * PANEL * 2];
        data.par_chunks_mut((pairs * PANEL * 2).max(1)).enumerate().for_each(|(p, panel)| {
            for i in 0..pairs {
                for j in 0..PANEL {
                    let c = p * PANEL + j;
                    if c >= cols {
                        continue;
                    }
                    let v = &mut panel[(i * PANEL + j) * 2..(i * PANEL + j) * 2 + 2];
                    v[0] = to_bf16(get(2 * i, c));
                    v[1] = if 2 * i + 1 < depth { to_bf16(get(2 * i + 1, c)) } else { 0 };
                }
            }
        });
        Self { depth, cols, pairs, panels, data }
    }

    /// `B = W^T` for a row-major `W` (`[n, k]`): depth `k`, `n` columns (the forward `x W^T`).
    pub fn from_w_t(w: &[f32], n: usize, k: usize) -> Result<Self> {
        ensure!(w.len() == n * k, "bf16 weight: {} values for {n} x {k}", w.len());
        Ok(Self::pack(k, n, |d, c| w[c * k + d]))
    }

    /// `B = W` for a row-major `W` (`[n, k]`): depth `n`, `k` columns (the backward `g W`).
    pub fn from_w(w: &[f32], n: usize, k: usize) -> Result<Self> {
        ensure!(w.len() == n * k, "bf16 weight: {} values for {n} x {k}", w.len());
        Ok(Self::pack(n, k, |d, c| w[d * k + c]))
    }

    pub fn depth(&self) -> usize {
        self.depth
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    pub fn bytes(&self) -> usize {
        self.data.len() * 2
    }
    fn panel(&self, p: usize) -> &[u16] {
        &self.data[p * self.pairs * PANEL * 2..(p + 1) * self.pairs * PANEL * 2]
    }
}

/// Rows per task and tasks per column group when `m` rows (in tiles of `mr`) times `groups`
/// column groups are split into tasks: about eight per thread in all, each a whole number of
/// tiles. Shared with [`super::f32mm::xw`].
pub(crate) fn row_chunks(groups: usize, m: usize, mr: usize) -> (usize, usize) {
    let threads = candle_core::utils::get_num_threads().max(1);
    let chunks = (8 * threads).div_ceil(groups.max(1)).clamp(1, m.div_ceil(mr).max(1));
    let rows_per = m.div_ceil(chunks).div_ceil(mr) * mr;
    (rows_per, m.div_ceil(rows_per.max(1)))
}

/// `C = A B` (`m x cols`, f32) at the given kernel level (see the module doc).
pub fn gemm_at(level: SimdLevel, a: &PackedA, b: &PackedB) -> Result<Vec<f32>> {
    let mut c = vec![0f32; a.m * b.cols];
    gemm_into(level, a, b, &mut c)?;
    Ok(c)
}

/// [`gemm_at`] into `c` (`m x cols`, every value overwritten).
pub fn gemm_into(level: SimdLevel, a: &PackedA, b: &PackedB, c: &mut [f32]) -> Result<()> {
    ensure!(a.pairs == b.pairs, "bf16 gemm: lhs depth of {} pairs, rhs depth of {} pairs ({} values)", a.pairs, b.pairs, b.depth);
    let (m, n) = (a.m, b.cols);
    ensure!(c.len() == m * n, "bf16 gemm: output of {} values for {m} x {n}", c.len());
    if m == 0 || n == 0 {
        return Ok(());
    }
    let simd = cfg!(target_arch = "x86_64") && level >= SimdLevel::Avx512Bf16;
    let tiles = cfg!(target_arch = "x86_64") && level >= SimdLevel::Amx;
    // Tasks: groups of panels (NV, or two for the AMX tiles) x chunks of rows; enough of them
    // for the pool to balance.
    let (per_group, row_unit) = if tiles { (2, 2 * amx::ROWS) } else { (NV, MR) };
    let groups = b.panels.div_ceil(per_group);
    let (rows_per, chunks) = row_chunks(groups, m, row_unit);
    let out = SendPtr(c.as_mut_ptr());
    let task = |t: usize| {
        let out = &out;
        let (g, ch) = (t % groups, t / groups);
        let p0 = g * per_group;
        let nv = per_group.min(b.panels - p0);
        let (r0, r1) = (ch * rows_per, m.min((ch + 1) * rows_per));
        #[cfg(target_arch = "x86_64")]
        if tiles {
            // SAFETY: the level says the CPU has AMX (and the process leave to use it) and
            // AVX-512 BF16; rows r0..r1 and panels p0..p0+nv are in range, and this task alone
            // writes that part of `c`.
            unsafe { amx::task(a, r0..r1, b, p0, nv, out.0, n) };
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if simd {
            // Depth in blocks of KC pairs, each over all the task's rows, so that the block of
            // `b` stays in L2 (a long depth, e.g. the output head's backward, would otherwise
            // stream `b` from memory once per tile of rows). Partial sums go through `c` in f32:
            // exact, so the order of the sums is the portable one.
            let mut i0 = 0;
            while i0 < a.pairs {
                let i1 = a.pairs.min(i0 + KC);
                let mut r = r0;
                while r < r1 {
                    let mr = MR.min(r1 - r);
                    // SAFETY: the level says the CPU has AVX-512 BF16; rows r..r+mr, panels
                    // p0..p0+nv and pairs i0..i1 are in range, and this task alone writes that
                    // part of `c`.
                    unsafe { avx::tile_dispatch(mr, nv, a, r, b, p0, out.0, n, i0..i1) };
                    r += mr;
                }
                i0 = i1;
            }
            return;
        }
        for r in r0..r1 {
            let arow = &a.data[r * a.pairs..(r + 1) * a.pairs];
            for c in p0 * PANEL..n.min((p0 + nv) * PANEL) {
                let panel = b.panel(c / PANEL);
                let j = c % PANEL;
                let mut acc = 0f32;
                for (i, &ap) in arow.iter().enumerate() {
                    let (alo, ahi) = (from_bf16(ap as u16), from_bf16((ap >> 16) as u16));
                    let blo = from_bf16(panel[(i * PANEL + j) * 2]);
                    let bhi = from_bf16(panel[(i * PANEL + j) * 2 + 1]);
                    acc += ahi * bhi;
                    acc += alo * blo;
                }
                // SAFETY: (r, c) is in range and belongs to this task alone.
                unsafe { *out.0.add(r * n + c) = acc };
            }
        }
    };
    let _ = (simd, tiles);
    candle_core::utils::barrier_pool().execute_chunked(groups * chunks, |ts| ts.for_each(task));
    Ok(())
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use super::{PackedA, PackedB, MR, PANEL};
    use std::ops::Range;
    use std::arch::x86_64::*;

    /// Rounds `row` to bf16 pairs 32 values at a time (`vcvtne2ps2bf16`); returns how many values
    /// it did (a multiple of 32); the caller does the rest.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn round_row(row: &[f32], out: &mut [u32]) -> usize {
        let n = row.len() / 32 * 32;
        let mut i = 0;
        while i < n {
            let lo = _mm512_loadu_ps(row.as_ptr().wrapping_add(i));
            let hi = _mm512_loadu_ps(row.as_ptr().wrapping_add(i + 16));
            // The second operand fills the low half of the result.
            let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_storeu_si512(out.as_mut_ptr().wrapping_add(i / 2) as *mut __m512i, v);
            i += 32;
        }
        n
    }

    /// An `R x V` tile: rows `r0..r0+R` of `a` against panels `p0..p0+V` of `b` over the depth
    /// pairs `depth`, added to what `c` holds unless `depth` starts at 0, and written (masked at
    /// the last column) into row-major `c` with `ldc` columns.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn tile<const R: usize, const V: usize>(a: &PackedA, r0: usize, b: &PackedB, p0: usize, c: *mut f32, ldc: usize, depth: Range<usize>) {
        let pairs = a.pairs;
        let ap: [*const u32; R] = std::array::from_fn(|r| a.data.as_ptr().wrapping_add((r0 + r) * pairs));
        let bp: [*const u16; V] = std::array::from_fn(|v| b.data.as_ptr().wrapping_add((p0 + v) * pairs * PANEL * 2));
        let masks: [__mmask16; V] = std::array::from_fn(|v| {
            let left = b.cols - (p0 + v) * PANEL;
            if left >= PANEL { 0xffff } else { (1u16 << left) - 1 }
        });
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        if depth.start > 0 {
            for r in 0..R {
                for v in 0..V {
                    acc[r][v] = _mm512_maskz_loadu_ps(masks[v], c.wrapping_add((r0 + r) * ldc + (p0 + v) * PANEL));
                }
            }
        }
        for i in depth {
            let bv: [__m512bh; V] =
                std::array::from_fn(|v| std::mem::transmute(_mm512_loadu_epi32(bp[v].wrapping_add(i * PANEL * 2) as *const i32)));
            for r in 0..R {
                let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*ap[r].wrapping_add(i) as i32));
                for v in 0..V {
                    acc[r][v] = _mm512_dpbf16_ps(acc[r][v], av, bv[v]);
                }
            }
        }
        for v in 0..V {
            for r in 0..R {
                _mm512_mask_storeu_ps(c.wrapping_add((r0 + r) * ldc + (p0 + v) * PANEL), masks[v], acc[r][v]);
            }
        }
    }

    /// [`tile`] at a run-time shape (`mr` in 1..=8, `nv` in 1..=3).
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn tile_dispatch(mr: usize, nv: usize, a: &PackedA, r0: usize, b: &PackedB, p0: usize, c: *mut f32, ldc: usize, depth: Range<usize>) {
        debug_assert!(mr >= 1 && mr <= MR && (1..=3).contains(&nv));
        macro_rules! by_v {
            ($r:literal) => {
                match nv {
                    1 => tile::<$r, 1>(a, r0, b, p0, c, ldc, depth),
                    2 => tile::<$r, 2>(a, r0, b, p0, c, ldc, depth),
                    _ => tile::<$r, 3>(a, r0, b, p0, c, ldc, depth),
                }
            };
        }
        match mr {
            1 => by_v!(1),
            2 => by_v!(2),
            3 => by_v!(3),
            4 => by_v!(4),
            5 => by_v!(5),
            6 => by_v!(6),
            7 => by_v!(7),
            _ => by_v!(8),
        }
    }
}

/// The same product in AMX tiles (`tdpbf16ps`, Sapphire Rapids and later): a 32 x 32 block of
/// `c` (two row halves x two panels) is four 16 x 16 f32 tiles, fed per step of 16 depth pairs
/// by two tiles of `a` (16 rows x 16 pairs, read in place) and two of `b` (a panel's 16 pairs x
/// 16 columns x 2 values: the packed layout is the tiles' pair-interleaved one, read in place).
///
/// **Numerics.** The tiles' own order of sums (Intel does not document it beyond "f32
/// accumulation"), so not the portable order: tested against the f64 sum of the bf16 products
/// within `depth x eps x sum |products|`, as the other levels, not bit for bit. Each row's sums
/// depend on nothing but that row (a tile's rows are independent; a short last block configures
/// shorter tiles rather than padding with other rows), so a row's output does not depend on the
/// batch around it. Depth pairs past the last whole step of 16 go through the AVX-512 kernel.
#[cfg(target_arch = "x86_64")]
mod amx {
    use super::{avx, PackedA, PackedB, KC, MR, PANEL};
    use crate::model::amx::{release, TileConfig};
    use std::arch::asm;

    /// Rows of a tile, and depth pairs per step (a tile row is 64 bytes: 16 pairs of bf16).
    pub(super) const ROWS: usize = 16;
    const STEP: usize = 16;

    /// The tiles (palette 1): tmm0..3 the f32 sums (`c00 c01 c10 c11`: row half x panel),
    /// tmm4/5 the rows of `a` of each half, tmm6/7 the two panels of `b`. `lo` and `hi` are the
    /// rows of the two halves (`hi` 0: tiles 2, 3 and 5 unconfigured, unused).
    fn config(lo: usize, hi: usize) -> TileConfig {
        debug_assert!((1..=ROWS).contains(&lo) && hi <= ROWS);
        let t = |rows: usize| if rows > 0 { (64, rows) } else { (0, 0) };
        TileConfig::new([t(lo), t(lo), t(hi), t(hi), t(lo), t(hi), t(STEP), t(STEP)])
    }

    /// One 32 x 32 block (`HI`: the second row half exists; `P1`: the second panel does) over
    /// `steps` steps, its sums in `acc` (row stride 32 values), started from zero if `first`.
    /// `a0`/`a1`: the rows of each half at the block's first pair, `lda` bytes apart; `b0`/`b1`:
    /// each panel at that pair.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block<const HI: bool, const P1: bool>(a0: *const u32, a1: *const u32, lda: usize, b0: *const u16, b1: *const u16, steps: usize, acc: *mut f32, first: bool) {
        const LDC: usize = 32 * 4;
        let (c00, c01, c10, c11) = (acc, acc.wrapping_add(16), acc.wrapping_add(16 * 32), acc.wrapping_add(16 * 32 + 16));
        if first {
            asm!("tilezero tmm0", options(nostack));
            if P1 { asm!("tilezero tmm1", options(nostack)) }
            if HI { asm!("tilezero tmm2", options(nostack)) }
            if HI && P1 { asm!("tilezero tmm3", options(nostack)) }
        } else {
            asm!("tileloadd tmm0, [{p} + {s}*1]", p = in(reg) c00, s = in(reg) LDC, options(nostack, readonly));
            if P1 { asm!("tileloadd tmm1, [{p} + {s}*1]", p = in(reg) c01, s = in(reg) LDC, options(nostack, readonly)) }
            if HI { asm!("tileloadd tmm2, [{p} + {s}*1]", p = in(reg) c10, s = in(reg) LDC, options(nostack, readonly)) }
            if HI && P1 { asm!("tileloadd tmm3, [{p} + {s}*1]", p = in(reg) c11, s = in(reg) LDC, options(nostack, readonly)) }
        }
        const LDB: usize = 64;
        for s in 0..steps {
            let (pa0, pa1) = (a0.wrapping_add(s * STEP), a1.wrapping_add(s * STEP));
            let (pb0, pb1) = (b0.wrapping_add(s * STEP * PANEL * 2), b1.wrapping_add(s * STEP * PANEL * 2));
            asm!("tileloadd tmm6, [{p} + {s}*1]", p = in(reg) pb0, s = in(reg) LDB, options(nostack, readonly));
            asm!("tileloadd tmm4, [{p} + {s}*1]", "tdpbf16ps tmm0, tmm4, tmm6", p = in(reg) pa0, s = in(reg) lda, options(nostack, readonly));
            if P1 {
                asm!("tileloadd tmm7, [{p} + {s}*1]", "tdpbf16ps tmm1, tmm4, tmm7", p = in(reg) pb1, s = in(reg) LDB, options(nostack, readonly));
            }
            if HI {
                asm!("tileloadd tmm5, [{p} + {s}*1]", "tdpbf16ps tmm2, tmm5, tmm6", p = in(reg) pa1, s = in(reg) lda, options(nostack, readonly));
                if P1 { asm!("tdpbf16ps tmm3, tmm5, tmm7", options(nostack, nomem)) }
            }
        }
        asm!("tilestored [{p} + {s}*1], tmm0", p = in(reg) c00, s = in(reg) LDC, options(nostack));
        if P1 { asm!("tilestored [{p} + {s}*1], tmm1", p = in(reg) c01, s = in(reg) LDC, options(nostack)) }
        if HI { asm!("tilestored [{p} + {s}*1], tmm2", p = in(reg) c10, s = in(reg) LDC, options(nostack)) }
        if HI && P1 { asm!("tilestored [{p} + {s}*1], tmm3", p = in(reg) c11, s = in(reg) LDC, options(nostack)) }
    }

    /// Rows `rows` of `a` against panels `p0..p0+nv` (`nv` 1 or 2) of `b`, written into
    /// row-major `c` (`ldc` columns, masked at the last column): the whole steps of 16 pairs in
    /// tiles, depth in blocks of KC pairs over all the rows (as the AVX-512 kernel, so that the
    /// block of `b` stays in L2), then the remaining pairs with the AVX-512 kernel.
    ///
    /// SAFETY: the CPU has AMX-BF16 and AVX-512 BF16 and the process has leave to use the tiles
    /// (`SimdLevel::Amx`); the rows and panels are in range; no other thread writes these
    /// outputs.
    pub(super) unsafe fn task(a: &PackedA, rows: std::ops::Range<usize>, b: &PackedB, p0: usize, nv: usize, c: *mut f32, ldc: usize) {
        debug_assert!((1..=2).contains(&nv) && rows.end <= a.m);
        let (r0, r1) = (rows.start, rows.end);
        let whole = a.pairs / STEP * STEP;
        let mut acc = vec![0f32; (r1 - r0).div_ceil(2 * ROWS) * 2 * ROWS * 32];
        let lda = a.pairs * 4;
        let mut current: Option<TileConfig> = None;
        let mut i0 = 0;
        while i0 < whole {
            let i1 = whole.min(i0 + KC);
            let mut r = r0;
            while r < r1 {
                let (lo, hi) = ((r1 - r).min(ROWS), (r1 - r).saturating_sub(ROWS).min(ROWS));
                let cfg = config(lo, hi);
                if current != Some(cfg) {
                    cfg.load();
                    current = Some(cfg);
                }
                let a0 = a.data.as_ptr().wrapping_add(r * a.pairs + i0);
                let a1 = a0.wrapping_add(ROWS * a.pairs);
                let b0 = b.data.as_ptr().wrapping_add((p0 * b.pairs + i0) * PANEL * 2);
                let b1 = b0.wrapping_add(b.pairs * PANEL * 2);
                let (steps, sums, first) = ((i1 - i0) / STEP, acc.as_mut_ptr().wrapping_add((r - r0) * 32), i0 == 0);
                match (hi > 0, nv == 2) {
                    (true, true) => block::<true, true>(a0, a1, lda, b0, b1, steps, sums, first),
                    (true, false) => block::<true, false>(a0, a1, lda, b0, b1, steps, sums, first),
                    (false, true) => block::<false, true>(a0, a1, lda, b0, b1, steps, sums, first),
                    (false, false) => block::<false, false>(a0, a1, lda, b0, b1, steps, sums, first),
                }
                r += 2 * ROWS;
            }
            i0 = i1;
        }
        if current.is_some() {
            release();
        }
        let cols = (p0 * PANEL)..b.cols.min((p0 + nv) * PANEL);
        for r in r0..r1 {
            let src = &acc[(r - r0) * 32..(r - r0) * 32 + cols.len()];
            std::ptr::copy_nonoverlapping(src.as_ptr(), c.add(r * ldc + cols.start), cols.len());
        }
        if whole < a.pairs {
            let mut r = r0;
            while r < r1 {
                let mr = MR.min(r1 - r);
                avx::tile_dispatch(mr, nv, a, r, b, p0, c, ldc, whole..a.pairs);
                r += mr;
            }
        }
    }
}

/// A frozen weight `W` (`[out, in]`) stored once for bf16 compute.
pub enum Bf16Weight {
    /// Packed for the kit's kernel (CPU with AVX-512 BF16): `W^T` for the forward, `W` for the
    /// backward.
    Packed { n: usize, k: usize, fwd: PackedB, bwd: PackedB },
    /// `W` as a bf16 tensor on its device, multiplied by candle (other CPUs, GPUs).
    Tensor(Tensor),
}

impl Bf16Weight {
    /// From the f32 (or other dtype) dense `W` on its device; `packed` picks the kit's kernel
    /// layout (host memory only). An f32 host tensor is read in place.
    pub fn new(w: &Tensor, packed: bool) -> Result<Self> {
        let (n, k) = w.dims2()?;
        if !packed {
            return Ok(Bf16Weight::Tensor(w.to_dtype(DType::BF16)?.contiguous()?));
        }
        let w = w.to_dtype(DType::F32)?.contiguous()?;
        let (st, l) = w.storage_and_layout();
        let v = match (&*st, l.contiguous_offsets()) {
            (candle_core::Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => &v[a..b],
            _ => anyhow::bail!("bf16 weight: the packed layout needs a host tensor, got one on {:?}", w.device().location()),
        };
        Self::packed_from_rows(crate::base::cpu::level(), n, k, |r, out| out.copy_from_slice(&v[r * k..(r + 1) * k]))
    }

    /// The packed layout of `W` (`[n, k]`) whose row `r` `row(r, out)` writes into `out`
    /// (`k` values): both directions in one pass over the rows, sixteen at a time on candle's
    /// worker pool, so that neither an f32 copy of `W` nor a second pass over it is needed (a
    /// quantized weight is dequantized row by row, [`super::layers::Weight::bf16`]). The same
    /// bits as [`PackedB::from_w_t`] and [`PackedB::from_w`] (tested).
    pub fn packed_from_rows(level: SimdLevel, n: usize, k: usize, row: impl Fn(usize, &mut [f32]) + Sync) -> Result<Self> {
        ensure!(n > 0 && k > 0, "bf16 weight: an empty {n} x {k} matrix");
        let (fwd_pairs, bwd_pairs) = (k.div_ceil(2), n.div_ceil(2));
        let (fwd_panels, bwd_panels) = (n.div_ceil(PANEL), k.div_ceil(PANEL));
        // Every value of both buffers is written below: a task writes its panel of the forward
        // layout and its eight depth pairs of every panel of the backward one, padding included.
        let mut fwd = super::qgemm::uninit::<u16>(fwd_panels * fwd_pairs * PANEL * 2);
        let mut bwd = super::qgemm::uninit::<u16>(bwd_panels * bwd_pairs * PANEL * 2);
        let (fp, bp) = (SendPtr(fwd.as_mut_ptr()), SendPtr(bwd.as_mut_ptr()));
        let simd = cfg!(target_arch = "x86_64") && level >= SimdLevel::Avx512Bf16;
        candle_core::utils::barrier_pool().execute_chunked(fwd_panels, |ps| {
            let (fp, bp) = (&fp, &bp);
            let mut f32_row = vec![0f32; k];
            // Rows 16p..16p+16 as bf16 pairs (word i of a row: values 2i and 2i+1); zeros past n.
            let mut words = vec![0u32; PANEL * fwd_pairs];
            for p in ps {
                for (j, w) in words.chunks_exact_mut(fwd_pairs).enumerate() {
                    let r = p * PANEL + j;
                    if r >= n {
                        w.fill(0);
                        continue;
                    }
                    row(r, &mut f32_row);
                    let mut done = 0;
                    #[cfg(target_arch = "x86_64")]
                    if simd {
                        // SAFETY: the level says the CPU has AVX-512 BF16; `w` holds k/2 words.
                        done = unsafe { avx::round_row(&f32_row, w) };
                    }
                    for i in done / 2..fwd_pairs {
                        let lo = to_bf16(f32_row[2 * i]) as u32;
                        let hi = f32_row.get(2 * i + 1).map_or(0, |v| to_bf16(*v) as u32);
                        w[i] = lo | (hi << 16);
                    }
                }
                // SAFETY: forward panel p (pairs x 16 x 2 values) is written by this task alone.
                let f = unsafe { std::slice::from_raw_parts_mut(fp.0.add(p * fwd_pairs * PANEL * 2), fwd_pairs * PANEL * 2) };
                for i in 0..fwd_pairs {
                    for j in 0..PANEL {
                        let w = words[j * fwd_pairs + i];
                        f[(i * PANEL + j) * 2] = w as u16;
                        f[(i * PANEL + j) * 2 + 1] = (w >> 16) as u16;
                    }
                }
                // Backward: depth pairs 8p..8p+8 are rows (2i, 2i+1) of this task's sixteen.
                let half = |j: usize, c: usize| (words[j * fwd_pairs + c / 2] >> (16 * (c % 2))) as u16;
                for ib in 8 * p..bwd_pairs.min(8 * p + PANEL / 2) {
                    let j0 = 2 * ib - PANEL * p;
                    for q in 0..bwd_panels {
                        // SAFETY: pair ib of backward panel q is written by this task alone.
                        let b = unsafe { std::slice::from_raw_parts_mut(bp.0.add((q * bwd_pairs + ib) * PANEL * 2), PANEL * 2) };
                        for jj in 0..PANEL {
                            let c = q * PANEL + jj;
                            let (lo, hi) = if c < k { (half(j0, c), half(j0 + 1, c)) } else { (0, 0) };
                            b[2 * jj] = lo;
                            b[2 * jj + 1] = hi;
                        }
                    }
                }
            }
        });
        Ok(Bf16Weight::Packed {
            n,
            k,
            fwd: PackedB { depth: k, cols: n, pairs: fwd_pairs, panels: fwd_panels, data: fwd },
            bwd: PackedB { depth: n, cols: k, pairs: bwd_pairs, panels: bwd_panels, data: bwd },
        })
    }
}

/// `x B` for f32 `x` (`[.., depth]`) and a packed `B`: one bf16 gemm over all leading dims, read
/// in place (no backward: [`crate::model::layers`] pairs the two directions).
pub struct Bf16MatMul<'a>(pub &'a PackedB);

impl CustomOp1 for Bf16MatMul<'_> {
    fn name(&self) -> &'static str {
        "bf16-matmul"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let b = self.0;
        super::qgemm::cpu_fwd_xwt("bf16 matmul", s, l, b.cols, b.depth, |x, m, y| {
            let level = crate::base::cpu::level();
            gemm_into(level, &PackedA::new_at(level, x, m, b.depth)?, b, y)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normal(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut rng = crate::base::rng::Rng::new(seed);
        (0..n).map(|_| rng.normal() as f32 * scale).collect()
    }

    /// Rounding: ties to even, overflow to infinity, NaN kept, subnormals flushed; and the
    /// AVX-512 row rounding gives the same bits.
    #[test]
    fn rounding_matches_the_instruction() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        assert_eq!(from_bf16(to_bf16(1.0 + 1.0 / 256.0)), 1.0); // tie, to even (down)
        assert_eq!(from_bf16(to_bf16(1.0 + 3.0 / 256.0)), 1.0 + 4.0 / 256.0); // tie, to even (up)
        assert_eq!(from_bf16(to_bf16(1.0 + 1.5 / 256.0)), 1.0 + 2.0 / 256.0);
        assert_eq!(from_bf16(to_bf16(f32::MAX)), f32::INFINITY);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(to_bf16(-1e-40), 0x8000);
        assert_eq!(to_bf16(f32::NEG_INFINITY), 0xff80);
        let mut x = normal(3 * 77, 1, 3.0);
        x[5] = 1e-40;
        x[6] = f32::NAN;
        x[7] = -0.0;
        x[40] = 1.0 + 1.0 / 256.0;
        x[41] = f32::INFINITY;
        let want = PackedA::new_at(SimdLevel::Portable, &x, 3, 77).unwrap();
        for level in crate::base::cpu::level().up_to() {
            let got = PackedA::new_at(level, &x, 3, 77).unwrap();
            assert_eq!(got.data, want.data, "{level}");
        }
        assert_eq!(want.data[2] >> 16, 0, "1e-40 (index 5: pair 2, high half) flushes to zero");
        // Every pair is written (the buffer is not zeroed first), the odd depth's pad with zero.
        for r in 0..3 {
            for i in 0..39 {
                let hi = if 2 * i + 1 < 77 { to_bf16(x[r * 77 + 2 * i + 1]) as u32 } else { 0 };
                let pair = to_bf16(x[r * 77 + 2 * i]) as u32 | (hi << 16);
                assert_eq!(want.data[r * 39 + i], pair, "row {r} pair {i}");
            }
        }
    }

    /// The packed product against an f64 product of the bf16-rounded operands (shapes off every
    /// tile edge: odd depth, columns not a multiple of 16, rows not a multiple of 8), and the
    /// kernel against the portable arithmetic.
    #[test]
    fn gemm_matches_reference_at_every_level() {
        for &(m, n, k) in &[(1, 16, 2), (3, 17, 7), (8, 48, 64), (9, 50, 33), (20, 131, 96), (17, 5, 300), (100, 64, 896), (10, 40, 2100), (33, 70, 1090), (64, 32, 32), (47, 16, 1024 + 62)] {
            let x = normal(m * k, (m * 31 + k) as u64, 1.0);
            let w = normal(n * k, (n * 7 + k) as u64, 0.5);
            let r = |v: f32| from_bf16(to_bf16(v)) as f64;
            let fwd = PackedB::from_w_t(&w, n, k).unwrap();
            let bwd = PackedB::from_w(&w, n, k).unwrap();
            let g = normal(m * n, (m + n) as u64, 1.0);
            let portable = gemm_at(SimdLevel::Portable, &PackedA::new_at(SimdLevel::Portable, &x, m, k).unwrap(), &fwd).unwrap();
            for level in crate::base::cpu::level().up_to() {
                // Into NaN-filled buffers: every output is written (the op hands out unzeroed ones).
                let (mut y, mut dx) = (vec![f32::NAN; m * n], vec![f32::NAN; m * k]);
                gemm_into(level, &PackedA::new_at(level, &x, m, k).unwrap(), &fwd, &mut y).unwrap();
                gemm_into(level, &PackedA::new_at(level, &g, m, n).unwrap(), &bwd, &mut dx).unwrap();
                // out[i][j] against sum_t lhs(i, t) rhs(t, j) in f64, to `depth` f32 roundings.
                let check = |what: &str, out: &[f32], cols: usize, depth: usize, lhs: &dyn Fn(usize, usize) -> f32, rhs: &dyn Fn(usize, usize) -> f32| {
                    for i in 0..m {
                        for j in 0..cols {
                            let terms = (0..depth).map(|t| r(lhs(i, t)) * r(rhs(t, j)));
                            let (want, abs) = terms.fold((0f64, 0f64), |(s, a), p| (s + p, a + p.abs()));
                            let got = out[i * cols + j] as f64;
                            let tol = abs * depth as f64 * f32::EPSILON as f64;
                            assert!((got - want).abs() <= tol, "{level} ({m},{n},{k}) {what}[{i},{j}] {got} vs {want}");
                        }
                    }
                };
                check("y", &y, n, k, &|i, t| x[i * k + t], &|t, j| w[j * k + t]);
                check("dx", &dx, k, n, &|i, j| g[i * n + j], &|j, t| w[j * k + t]);
                // The AVX-512 kernel sums in the portable order; the AMX tiles in their own.
                if level < SimdLevel::Amx {
                    let same = y.iter().zip(&portable).filter(|(a, b)| a.to_bits() == b.to_bits()).count();
                    assert_eq!(same, y.len(), "{level} ({m},{n},{k}): {} of {} outputs differ in bits from the portable sum", y.len() - same, y.len());
                }
                // Each row's outputs do not depend on the rows around it: rows computed alone.
                for i in [0, m / 2, m - 1] {
                    let mut alone = vec![f32::NAN; n];
                    gemm_into(level, &PackedA::new_at(level, &x[i * k..(i + 1) * k], 1, k).unwrap(), &fwd, &mut alone).unwrap();
                    assert!(alone.iter().zip(&y[i * n..(i + 1) * n]).all(|(a, b)| a.to_bits() == b.to_bits()), "{level} ({m},{n},{k}): row {i} alone differs");
                }
            }
        }
    }

    /// The one-pass packer of a weight gives the bits of the two reference packings, at every
    /// level, on shapes off every edge (rows and columns not multiples of 16, odd sizes, sizes
    /// below and above the 32 values that the AVX-512 rounding takes at a time, subnormals and
    /// ties among the values).
    #[test]
    fn packed_from_rows_equals_the_reference_packings() {
        for &(n, k) in &[(1, 1), (1, 2), (2, 1), (3, 5), (16, 32), (17, 33), (31, 64), (33, 95), (40, 130), (128, 896)] {
            let mut w = normal(n * k, (n * 13 + k) as u64, 0.7);
            for (i, v) in w.iter_mut().enumerate().step_by(7) {
                *v = match i % 3 {
                    0 => 1e-40,                            // subnormal: flushed
                    1 => f32::from_bits(0x3f80_8000),      // a tie: to even
                    _ => -f32::from_bits(0x3f81_8000),     // a tie, upwards to even
                };
            }
            let (fwd, bwd) = (PackedB::from_w_t(&w, n, k).unwrap(), PackedB::from_w(&w, n, k).unwrap());
            for level in crate::base::cpu::level().up_to() {
                let got = Bf16Weight::packed_from_rows(level, n, k, |r, out| out.copy_from_slice(&w[r * k..(r + 1) * k])).unwrap();
                let Bf16Weight::Packed { n: gn, k: gk, fwd: gf, bwd: gb } = got else { panic!("not packed") };
                assert_eq!((gn, gk), (n, k));
                assert!(gf == fwd, "{level} ({n}, {k}): forward packing differs");
                assert!(gb == bwd, "{level} ({n}, {k}): backward packing differs");
            }
        }
        assert!(Bf16Weight::packed_from_rows(SimdLevel::Portable, 0, 3, |_, _| {}).is_err());
    }

    #[test]
    fn bad_shapes_are_errors() {
        let a = PackedA::new_at(SimdLevel::Portable, &[0.0; 6], 2, 3).unwrap();
        let b = PackedB::from_w_t(&[0.0; 20], 4, 5).unwrap();
        let e = gemm_at(SimdLevel::Portable, &a, &b).unwrap_err().to_string();
        assert!(e.contains("2 pairs") && e.contains("3 pairs"), "{e}");
        assert!(PackedA::new_at(SimdLevel::Portable, &[0.0; 5], 2, 3).is_err());
        assert!(PackedB::from_w(&[0.0; 5], 2, 3).is_err());
        assert_eq!("BF16".parse::<ComputeDtype>().unwrap(), ComputeDtype::Bf16);
        assert!("f16".parse::<ComputeDtype>().unwrap_err().to_string().contains("f32 or bf16"));
    }
}
