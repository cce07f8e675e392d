//! The f32 gradient path's two products with a frozen weight `W` (`[n, k]`, row-major: the dense
//! copy the f32 path keeps), and the f32 prefill's product with a quantized weight, on AVX-512
//! and candle's worker pool, reading `W` where it lies:
//!
//! - **forward** `y = x Wᵀ` (`x` `[m, k]`): `x` is first laid out in blocks of 64 rows, depth-major
//!   (each depth's 64 values side by side; `x` is small beside `W`). A tile of 6 rows of `W` by
//!   one such block broadcasts one value of each row of `W` against four vectors of 16 rows of
//!   `x`: 24 vectors of sums, one FMA per 16 products and no lane sums. The depth runs in blocks
//!   of [`KT`] (the block of `x`, 16 KiB, stays in L1) whose partial sums wait in a small buffer
//!   ([`xwt`]). [`xwt_rows`] does the same with `W` given row by row (the quantized weight,
//!   dequantized by each task into a buffer in cache);
//! - **backward** `dx = g W` (`g` `[m, n]`): `W`'s rows are contiguous along the output, so a tile
//!   of 8 rows of `g` by 48 output columns broadcasts one value of `g` against three vectors of a
//!   row of `W`, with no lane sums ([`xw`]); the depth `n` runs in blocks of [`KC`] rows of `W`
//!   (their 48 columns stay in L2), with partial sums through the output.
//!
//! candle's matmul (the `gemm` crate) copies the operand that is not contiguous along the output
//! into panels on every call: in the forward that operand is `W`, so every call repacked the
//! whole weight, a quarter of the f32 gradient pass's time (BENCHMARKS.md, session 23). Here `W`
//! is never copied (only the small `x` is laid out), and the memory is the dense copy's alone.
//!
//! **Numerics.** f32 products and sums, in another order than the gemm's. The forward keeps one
//! running sum per output along the depth, in order (one FMA per product, the sum stored between
//! depth blocks unrounded beyond f32). The backward keeps one running sum per output along `n`,
//! in order (between depth blocks it waits in the output, unrounded beyond f32). Each output depends only on its own row (no
//! result changes with the batch: the blocks are constants), and the order is fixed (run to run
//! identical). The tests compare both with an f64 sum, within `depth * eps * sum|terms|`.
//!
//! CPUs without AVX-512 (and [`SimdLevel`] below `avx512vnni`) keep the gemm ([`super::fused`]).
use super::qgemm::SendPtr;
use crate::base::cpu::SimdLevel;

/// Rows of `x` per forward tile ([`V`] vectors of 16) and rows of `W` per forward tile.
const V: usize = 4;
const RB: usize = 16 * V;
const FC: usize = 6;
/// Rows of `W` per forward task (a multiple of [`FC`]).
const F_TASK: usize = 8 * FC;
/// Depth per forward block: a block of `x` (`KT x RB`, 16 KiB) stays in L1 while the task's rows
/// of `W` pass over it.
const KT: usize = 64;
/// Rows of `g` and 16-column vectors per backward tile.
const BR: usize = 8;
const BV: usize = 3;
/// Rows of `W` per depth block of the backward.
const KC: usize = 512;

/// Whether [`xwt`] and [`xw`] run at `level` (else the caller keeps the gemm).
pub fn applies(level: SimdLevel) -> bool {
    cfg!(target_arch = "x86_64") && level >= SimdLevel::Avx512Vnni
}

/// `y = x Wᵀ` into `y` (`m x n`, every value written). Needs [`applies`].
pub fn xwt(level: SimdLevel, x: &[f32], m: usize, w: &[f32], n: usize, k: usize, y: &mut [f32]) {
    assert!(
        applies(level) && level <= crate::base::cpu::detected() && x.len() == m * k && w.len() == n * k && y.len() == m * n,
        "f32mm::xwt: level {level}, x {} / W {} / y {} values for m {m}, n {n}, k {k}",
        x.len(),
        w.len(),
        y.len()
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        y.fill(0.0);
        return;
    }
    let xt = transpose_rows(x, m, k);
    let blocks = m.div_ceil(RB);
    let per = task_cols(n);
    let yp = SendPtr(y.as_mut_ptr());
    super::qgemm::par_tasks(
        n.div_ceil(per) * blocks,
        || super::qgemm::uninit::<f32>(F_TASK * RB),
        |partial, t| {
            let yp = &yp;
            let (ct, b) = (t / blocks, t % blocks);
            let (c0, c1) = (ct * per, n.min((ct + 1) * per));
            // SAFETY: AVX-512F (the assert above); this task alone writes rows of block b and
            // columns c0..c1 of y (`m x n`).
            unsafe { block(&xt, m, b, &w[c0 * k..c1 * k], k, partial, yp.0.add(c0), n) };
        },
    );
}

/// [`xwt`] with `W` given by rows: `row(c, out)` writes row `c` of `W` (`k` values) into `out`.
/// Each task writes its [`F_TASK`] rows into a buffer of its thread (in cache, where a whole
/// dequantized copy would be another pass through memory) and multiplies every row of `x` by
/// them as [`xwt`] does: the same bits as [`xwt`] on the matrix that `row` gives.
/// The f32 prefill on a quantized weight ([`super::layers::DequantRowsMatMul`]).
pub fn xwt_rows(level: SimdLevel, x: &[f32], m: usize, row: &(dyn Fn(usize, &mut [f32]) + Sync), n: usize, k: usize, y: &mut [f32]) {
    assert!(
        applies(level) && level <= crate::base::cpu::detected() && x.len() == m * k && y.len() == m * n,
        "f32mm::xwt_rows: level {level}, x {} / y {} values for m {m}, n {n}, k {k}",
        x.len(),
        y.len()
    );
    if m == 0 || n == 0 || k == 0 {
        y.fill(0.0);
        return;
    }
    let xt = transpose_rows(x, m, k);
    let per = task_cols(n);
    let yp = SendPtr(y.as_mut_ptr());
    super::qgemm::par_tasks(
        n.div_ceil(per),
        || (super::qgemm::uninit::<f32>(F_TASK * k), super::qgemm::uninit::<f32>(F_TASK * RB)),
        |(buf, partial), t| {
            let yp = &yp;
            let (c0, c1) = (t * per, n.min((t + 1) * per));
            let w = &mut buf[..(c1 - c0) * k];
            for (c, out) in (c0..c1).zip(w.chunks_exact_mut(k)) {
                row(c, out);
            }
            for b in 0..m.div_ceil(RB) {
                // SAFETY: AVX-512F (the assert above); this task alone writes columns c0..c1 of y.
                unsafe { block(&xt, m, b, w, k, partial, yp.0.add(c0), n) };
            }
        },
    );
}

/// Rows of `W` per forward task: [`F_TASK`], fewer (a multiple of [`FC`]) where `n` would give
/// the pool's threads under four tasks each. No result depends on it.
fn task_cols(n: usize) -> usize {
    let threads = candle_core::utils::barrier_pool().n_workers() + 1;
    n.div_ceil(4 * threads).div_ceil(FC).saturating_mul(FC).clamp(FC, F_TASK)
}

/// `x` (`m x k`) in blocks of [`RB`] rows, each stored depth-major (`[k][RB]`: the block's rows
/// side by side at each depth), the rows past `m` zero. Transposed on the pool, a block per task.
fn transpose_rows(x: &[f32], m: usize, k: usize) -> Vec<f32> {
    let blocks = m.div_ceil(RB);
    let mut xt = super::qgemm::uninit::<f32>(blocks * k * RB);
    let out = SendPtr(xt.as_mut_ptr());
    candle_core::utils::barrier_pool().execute_chunked(blocks, |bs| {
        for b in bs {
            let out = &out;
            // SAFETY: block b's `k * RB` values belong to this task alone.
            let dst = unsafe { std::slice::from_raw_parts_mut(out.0.add(b * k * RB), k * RB) };
            let rows = RB.min(m - b * RB);
            for (d, lane) in dst.chunks_exact_mut(RB).enumerate() {
                for (r, v) in lane.iter_mut().enumerate() {
                    *v = if r < rows { x[(b * RB + r) * k + d] } else { 0.0 };
                }
            }
        }
    });
    xt
}

/// Rows `b RB..` (block `b` of `xt`, [`transpose_rows`]) by columns `0..w.len() / k` of
/// `y = x Wᵀ` (`w`: those rows of `W`, row stride `k`) into `y` (row stride `n`): tiles of
/// [`FC`] weight rows by [`RB`] rows of `x`, over the depth in blocks of [`KT`] whose partial sums
/// wait in `partial` (`[cols][RB]`).
///
/// # Safety
/// AVX-512F; `y` points at `m` rows of `n` values, of which no other thread writes block `b`'s rows
/// of the first `w.len() / k` columns meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn block(xt: &[f32], m: usize, b: usize, w: &[f32], k: usize, partial: &mut [f32], y: *mut f32, n: usize) {
    let cols_all = w.len() / k;
    assert!(partial.len() >= cols_all * RB && xt.len() >= (b + 1) * k * RB);
    let xb = xt.as_ptr().add(b * k * RB);
    let rows = RB.min(m - b * RB);
    let nv = rows.div_ceil(16);
    let mut d0 = 0;
    while d0 < k {
        let len = KT.min(k - d0);
        let mut c = 0;
        while c < cols_all {
            let cols = FC.min(cols_all - c);
            // SAFETY: depths d0..d0+len of block b, rows c..c+cols of w and their `cols * RB`
            // partial sums are in range.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                avx::tile_dispatch(cols, nv, xb.add(d0 * RB), w.as_ptr().add(c * k + d0), k, len, partial.as_mut_ptr().add(c * RB), d0 > 0)
            };
            c += cols;
        }
        d0 += len;
    }
    for r in 0..rows {
        let yr = y.add((b * RB + r) * n);
        for c in 0..cols_all {
            *yr.add(c) = partial[c * RB + r];
        }
    }
}

/// `dx = g W` into `dx` (`m x k`, every value written). Needs [`applies`].
pub fn xw(level: SimdLevel, g: &[f32], m: usize, w: &[f32], n: usize, k: usize, dx: &mut [f32]) {
    assert!(
        applies(level) && level <= crate::base::cpu::detected() && g.len() == m * n && w.len() == n * k && dx.len() == m * k,
        "f32mm::xw: level {level}, g {} / W {} / dx {} values for m {m}, n {n}, k {k}",
        g.len(),
        w.len(),
        dx.len()
    );
    if m == 0 || k == 0 {
        return;
    }
    if n == 0 {
        dx.fill(0.0);
        return;
    }
    // Tasks: groups of 48 columns x chunks of rows, enough of them for the pool to balance.
    let width = BV * 16;
    let groups = k.div_ceil(width);
    let (rows_per, chunks) = super::bf16::row_chunks(groups, m, BR);
    let out = SendPtr(dx.as_mut_ptr());
    candle_core::utils::barrier_pool().execute_chunked(groups * chunks, |ts| {
        for t in ts {
            let out = &out;
            let (gr, ch) = (t % groups, t / groups);
            let d0 = gr * width;
            let nv = BV.min((k - d0).div_ceil(16));
            let (r0, r1) = (ch * rows_per, m.min((ch + 1) * rows_per));
            let mut c0 = 0;
            while c0 < n {
                let c1 = n.min(c0 + KC);
                let mut r = r0;
                while r < r1 {
                    let rows = BR.min(r1 - r);
                    // SAFETY: AVX-512F as above; rows r..r+rows of g and dx, rows c0..c1 and
                    // columns d0..d0+16nv (masked at k) of W are in range, and this task alone
                    // writes that part of dx.
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        avx::bcast_dispatch(rows, nv, g.as_ptr().add(r * n), n, w.as_ptr(), k, d0, c0..c1, out.0.add(r * k), c0 > 0)
                    };
                    r += rows;
                }
                c0 = c1;
            }
        }
    });
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use std::arch::x86_64::*;
    use std::ops::Range;

    #[inline(always)]
    fn tail_mask(left: usize) -> __mmask16 {
        if left >= 16 { 0xffff } else { (1u16 << left) - 1 }
    }

    /// `acc[c][0..RB] (+)= sum over d < len of w[c][d] xt[d][0..RB]` for `C` rows of `W` (at
    /// stride `k`) and the [`super::RB`] rows of a block of `x` stored depth-major (`xt`); `acc`:
    /// `C x RB` partial sums, read first where `add` (a later depth block). One FMA per product,
    /// in depth order.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::needless_range_loop)]
    unsafe fn tile<const C: usize, const V: usize>(xt: *const f32, w: *const f32, k: usize, len: usize, acc: *mut f32, add: bool) {
        const RB: usize = super::RB;
        let mut a = [[_mm512_setzero_ps(); V]; C];
        if add {
            for c in 0..C {
                for v in 0..V {
                    a[c][v] = _mm512_loadu_ps(acc.add(c * RB + 16 * v));
                }
            }
        }
        for d in 0..len {
            let xv: [__m512; V] = std::array::from_fn(|v| _mm512_loadu_ps(xt.add(d * RB + 16 * v)));
            for c in 0..C {
                let wb = _mm512_set1_ps(*w.add(c * k + d));
                for v in 0..V {
                    a[c][v] = _mm512_fmadd_ps(wb, xv[v], a[c][v]);
                }
            }
        }
        for c in 0..C {
            for v in 0..V {
                _mm512_storeu_ps(acc.add(c * RB + 16 * v), a[c][v]);
            }
        }
    }

    /// [`tile`] at a run-time number of weight rows (`cols` in 1..=6) and of vectors of 16 rows
    /// of `x` (`nv` in 1..=4).
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn tile_dispatch(cols: usize, nv: usize, xt: *const f32, w: *const f32, k: usize, len: usize, acc: *mut f32, add: bool) {
        macro_rules! by_c {
            ($v:literal) => {
                match cols {
                    1 => tile::<1, $v>(xt, w, k, len, acc, add),
                    2 => tile::<2, $v>(xt, w, k, len, acc, add),
                    3 => tile::<3, $v>(xt, w, k, len, acc, add),
                    4 => tile::<4, $v>(xt, w, k, len, acc, add),
                    5 => tile::<5, $v>(xt, w, k, len, acc, add),
                    _ => tile::<6, $v>(xt, w, k, len, acc, add),
                }
            };
        }
        match nv {
            1 => by_c!(1),
            2 => by_c!(2),
            3 => by_c!(3),
            _ => by_c!(4),
        }
    }

    /// `dx[r][d0..d0+16V] (+)= sum over c in cs of g[r][c] w[c][d0..]` for `R` rows: `g` rows at
    /// stride `ldg`, `w` rows at stride `k` (columns past `k` masked), `dx` rows at stride `k`;
    /// `add`: start from what `dx` holds (a later depth block).
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn bcast<const R: usize, const V: usize>(g: *const f32, ldg: usize, w: *const f32, k: usize, d0: usize, cs: Range<usize>, dx: *mut f32, add: bool) {
        let masks: [__mmask16; V] = std::array::from_fn(|v| tail_mask(k - (d0 + 16 * v)));
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        if add {
            for r in 0..R {
                for v in 0..V {
                    acc[r][v] = _mm512_maskz_loadu_ps(masks[v], dx.wrapping_add(r * k + d0 + 16 * v));
                }
            }
        }
        for c in cs {
            let wv: [__m512; V] = std::array::from_fn(|v| _mm512_maskz_loadu_ps(masks[v], w.wrapping_add(c * k + d0 + 16 * v)));
            for r in 0..R {
                let gv = _mm512_set1_ps(*g.wrapping_add(r * ldg + c));
                for v in 0..V {
                    acc[r][v] = _mm512_fmadd_ps(gv, wv[v], acc[r][v]);
                }
            }
        }
        for r in 0..R {
            for v in 0..V {
                _mm512_mask_storeu_ps(dx.wrapping_add(r * k + d0 + 16 * v), masks[v], acc[r][v]);
            }
        }
    }

    /// [`bcast`] at a run-time shape (`rows` in 1..=8, `nv` in 1..=3).
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn bcast_dispatch(rows: usize, nv: usize, g: *const f32, ldg: usize, w: *const f32, k: usize, d0: usize, cs: Range<usize>, dx: *mut f32, add: bool) {
        macro_rules! by_v {
            ($r:literal) => {
                match nv {
                    1 => bcast::<$r, 1>(g, ldg, w, k, d0, cs, dx, add),
                    2 => bcast::<$r, 2>(g, ldg, w, k, d0, cs, dx, add),
                    _ => bcast::<$r, 3>(g, ldg, w, k, d0, cs, dx, add),
                }
            };
        }
        match rows {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn normal(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::base::rng::Rng::new(seed);
        (0..n).map(|_| rng.normal() as f32).collect()
    }

    /// Both products against an f64 sum, within `depth * eps * sum|terms|`, on shapes off every
    /// tile edge (rows not a multiple of 4 or 8, weight rows not a multiple of 6, depths and
    /// columns not a multiple of 16, depths over one forward and one backward block), into
    /// NaN-filled outputs (every value is written); and each output row is the same computed alone.
    #[test]
    fn products_match_an_f64_sum() {
        let level = crate::base::cpu::level();
        if !applies(level) {
            eprintln!("no AVX-512 here: the gemm keeps these products");
            return;
        }
        let shapes = [
            (1, 1, 1), (3, 7, 17), (4, 6, 16), (5, 13, 33), (9, 50, 100), (17, 97, 48), (2, 1100, 40), (33, 64, 896), (5, 14, 2100),
            // several blocks of 64 rows of x (the last of 1, 2, 3 or 4 vectors of 16), several
            // depth blocks, weight rows under and over a task
            (70, 13, 130), (100, 128, 200), (130, 50, 65), (192, 7, 64), (81, 100, 3),
        ];
        for &(m, n, k) in &shapes {
            let x = normal(m * k, (m * 31 + k) as u64);
            let w = normal(n * k, (n * 7 + k) as u64);
            let g = normal(m * n, (m + n) as u64);
            let (mut y, mut dx) = (vec![f32::NAN; m * n], vec![f32::NAN; m * k]);
            xwt(level, &x, m, &w, n, k, &mut y);
            xw(level, &g, m, &w, n, k, &mut dx);
            let check = |what: &str, got: f32, terms: &mut dyn Iterator<Item = f64>, depth: usize| {
                let (want, abs) = terms.fold((0f64, 0f64), |(s, a), p| (s + p, a + p.abs()));
                let tol = abs * depth as f64 * f32::EPSILON as f64;
                assert!((got as f64 - want).abs() <= tol, "({m},{n},{k}) {what}: {got} vs {want}");
            };
            for i in 0..m {
                for c in 0..n {
                    check(&format!("y[{i},{c}]"), y[i * n + c], &mut (0..k).map(|d| x[i * k + d] as f64 * w[c * k + d] as f64), k);
                }
                for d in 0..k {
                    check(&format!("dx[{i},{d}]"), dx[i * k + d], &mut (0..n).map(|c| g[i * n + c] as f64 * w[c * k + d] as f64), n);
                }
            }
            // Given by rows, the same bits.
            let mut yr = vec![f32::NAN; m * n];
            xwt_rows(level, &x, m, &|c, out: &mut [f32]| out.copy_from_slice(&w[c * k..(c + 1) * k]), n, k, &mut yr);
            assert_eq!(yr, y, "({m},{n},{k}) xwt_rows differs from xwt");
            // Row i alone gives the same bits as row i in the batch.
            let i = m / 2;
            let (mut y1, mut dx1) = (vec![0f32; n], vec![0f32; k]);
            xwt(level, &x[i * k..(i + 1) * k], 1, &w, n, k, &mut y1);
            xw(level, &g[i * n..(i + 1) * n], 1, &w, n, k, &mut dx1);
            assert_eq!(y1, y[i * n..(i + 1) * n], "({m},{n},{k}) forward row {i} depends on the batch");
            assert_eq!(dx1, dx[i * k..(i + 1) * k], "({m},{n},{k}) backward row {i} depends on the batch");
        }
    }
}
