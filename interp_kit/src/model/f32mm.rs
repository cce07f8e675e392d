//! The f32 gradient path's two products with a frozen weight `W` (`[n, k]`, row-major: the dense
//! copy the f32 path keeps), on AVX-512 and candle's worker pool, reading `W` where it lies:
//!
//! - **forward** `y = x Wᵀ` (`x` `[m, k]`): both operands are contiguous along the depth `k`, so a
//!   tile of 4 rows of `x` by 6 rows of `W` keeps 24 vectors of 16 partial sums, one FMA per 16
//!   products, and sums each vector's lanes at the end of each depth block of [`KD`] ([`xwt`]);
//! - **backward** `dx = g W` (`g` `[m, n]`): `W`'s rows are contiguous along the output, so a tile
//!   of 8 rows of `g` by 48 output columns broadcasts one value of `g` against three vectors of a
//!   row of `W`, with no lane sums ([`xw`]); the depth `n` runs in blocks of [`KC`] rows of `W`
//!   (their 48 columns stay in L2), with partial sums through the output.
//!
//! candle's matmul (the `gemm` crate) copies the operand that is not contiguous along the output
//! into panels on every call: in the forward that operand is `W`, so every call repacked the
//! whole weight, a quarter of the f32 gradient pass's time (BENCHMARKS.md, session 23). Here
//! nothing is copied, and the memory is the dense copy's alone.
//!
//! **Numerics.** f32 products and sums, in another order than the gemm's. The forward sums each
//! output in 16 lane-wise partial sums per depth block, adds the lanes, and adds the blocks in
//! order. The backward keeps one running sum per output along `n`, in order (between depth blocks
//! it waits in the output, unrounded beyond f32). Each output depends only on its own row (no
//! result changes with the batch: the blocks are constants), and the order is fixed (run to run
//! identical). The tests compare both with an f64 sum, within `depth * eps * sum|terms|`.
//!
//! CPUs without AVX-512 (and [`SimdLevel`] below `avx512vnni`) keep the gemm ([`super::fused`]).
use super::qgemm::SendPtr;
use crate::base::cpu::SimdLevel;

/// Rows of `x` and rows of `W` per forward tile.
const FR: usize = 4;
const FC: usize = 6;
/// Rows of `W` per forward task (a multiple of [`FC`]).
const F_TASK: usize = 8 * FC;
/// Depth per forward block: the block of every row of `x` (400 KiB at 100 rows) stays in L2
/// while the task's rows of `W` pass over it. A constant, so that no result depends on the batch.
const KD: usize = 1024;
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
    let yp = SendPtr(y.as_mut_ptr());
    super::qgemm::par_tasks(
        n.div_ceil(F_TASK),
        || (),
        |_, t| {
            let yp = &yp;
            let (c0, c1) = (t * F_TASK, n.min((t + 1) * F_TASK));
            let mut d0 = 0;
            while d0 < k {
                let d1 = k.min(d0 + KD);
                let mut c = c0;
                while c < c1 {
                    let cols = FC.min(c1 - c);
                    let mut r = 0;
                    while r < m {
                        let rows = FR.min(m - r);
                        // SAFETY: `applies` and the level check above say the CPU has AVX-512F;
                        // rows r..r+rows of x, rows c..c+cols of W, depths d0..d1 and that part of
                        // y are in range, and this task alone writes columns c0..c1 of y.
                        #[cfg(target_arch = "x86_64")]
                        unsafe {
                            avx::dot_dispatch(rows, cols, x.as_ptr().add(r * k + d0), w.as_ptr().add(c * k + d0), k, d1 - d0, yp.0.add(r * n + c), n, d0 > 0)
                        };
                        r += rows;
                    }
                    c += cols;
                }
                d0 = d1;
            }
        },
    );
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

    /// `y[r][c] (+)= x[r] · w[c]` over `len` depths for an `R x C` tile: `x` and `w` rows at stride
    /// `k`, `y` at row stride `ldy`; `add`: added to what `y` holds (a later depth block).
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn dot<const R: usize, const C: usize>(x: *const f32, w: *const f32, k: usize, len: usize, y: *mut f32, ldy: usize, add: bool) {
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        let full = len / 16 * 16;
        let mut d = 0;
        while d < full {
            let wv: [__m512; C] = std::array::from_fn(|c| _mm512_loadu_ps(w.wrapping_add(c * k + d)));
            for r in 0..R {
                let xv = _mm512_loadu_ps(x.wrapping_add(r * k + d));
                for c in 0..C {
                    acc[r][c] = _mm512_fmadd_ps(xv, wv[c], acc[r][c]);
                }
            }
            d += 16;
        }
        if d < len {
            let mask = tail_mask(len - d);
            let wv: [__m512; C] = std::array::from_fn(|c| _mm512_maskz_loadu_ps(mask, w.wrapping_add(c * k + d)));
            for r in 0..R {
                let xv = _mm512_maskz_loadu_ps(mask, x.wrapping_add(r * k + d));
                for c in 0..C {
                    acc[r][c] = _mm512_fmadd_ps(xv, wv[c], acc[r][c]);
                }
            }
        }
        for r in 0..R {
            for c in 0..C {
                let s = _mm512_reduce_add_ps(acc[r][c]);
                let o = y.add(r * ldy + c);
                *o = if add { *o + s } else { s };
            }
        }
    }

    /// [`dot`] at a run-time shape (`rows` in 1..=4, `cols` in 1..=6).
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn dot_dispatch(rows: usize, cols: usize, x: *const f32, w: *const f32, k: usize, len: usize, y: *mut f32, ldy: usize, add: bool) {
        macro_rules! by_c {
            ($r:literal) => {
                match cols {
                    1 => dot::<$r, 1>(x, w, k, len, y, ldy, add),
                    2 => dot::<$r, 2>(x, w, k, len, y, ldy, add),
                    3 => dot::<$r, 3>(x, w, k, len, y, ldy, add),
                    4 => dot::<$r, 4>(x, w, k, len, y, ldy, add),
                    5 => dot::<$r, 5>(x, w, k, len, y, ldy, add),
                    _ => dot::<$r, 6>(x, w, k, len, y, ldy, add),
                }
            };
        }
        match rows {
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
        for &(m, n, k) in &[(1, 1, 1), (3, 7, 17), (4, 6, 16), (5, 13, 33), (9, 50, 100), (17, 97, 48), (2, 1100, 40), (33, 64, 896), (5, 14, 2100)] {
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
