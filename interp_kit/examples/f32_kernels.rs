//! Times the f32 products with a frozen weight (`model::f32mm`, AVX-512): `y = x Wᵀ` with `W` in
//! place (`xwt`, the gradient path) and given by rows (`xwt_rows`, the f32 prefill on a quantized
//! weight; here each row is copied) and `dx = g W` (`xw`), against the `gemm` crate (what candle's
//! matmul runs, here on 2 rayon threads) on the embedded model's layer shapes at 100 rows (the
//! gradient bench) and 440 rows (a batch-8 prefill): mean of 30 calls, in GFLOP/s (2 m n k / time).
//! Random values, so no model is needed; needs a CPU with AVX-512 (the kit's level `avx512vnni`).
//!
//!     cargo run --release --example f32_kernels
use interp_kit::base::cpu::level;

use interp_kit::model::f32mm;
use std::time::Instant;
fn main() {
    assert!(f32mm::applies(level()), "f32_kernels: needs AVX-512 (kernel level {})", level());
    let mut rng = 1u64;
    let mut rnd = |n: usize| -> Vec<f32> { (0..n).map(|_| { rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); ((rng >> 40) as f32 / 16777216.0) - 0.5 }).collect() };
    for &(m, n, k) in &[(100usize, 4864usize, 896usize), (100, 896, 4864), (100, 896, 896), (100, 128, 896), (440, 4864, 896), (440, 896, 4864)] {
        let x = rnd(m * k); let w = rnd(n * k); let g = rnd(m * n);
        let mut y = vec![0f32; m * n]; let mut dx = vec![0f32; m * k];
        let reps = 30;
        let t = Instant::now(); for _ in 0..reps { f32mm::xwt(level(), &x, m, &w, n, k, &mut y); } let tf = t.elapsed().as_secs_f64() / reps as f64;
        let t = Instant::now(); for _ in 0..reps { f32mm::xw(level(), &g, m, &w, n, k, &mut dx); } let tb = t.elapsed().as_secs_f64() / reps as f64;
        let t = Instant::now(); for _ in 0..reps { unsafe { gemm::gemm(m, n, k, y.as_mut_ptr(), 1, n as isize, false, x.as_ptr(), 1, k as isize, w.as_ptr(), k as isize, 1, 0.0, 1.0, false, false, false, gemm::Parallelism::Rayon(2)) } } let tg = t.elapsed().as_secs_f64() / reps as f64;
        let t = Instant::now(); for _ in 0..reps { unsafe { gemm::gemm(m, k, n, dx.as_mut_ptr(), 1, k as isize, false, g.as_ptr(), 1, n as isize, w.as_ptr(), 1, k as isize, 0.0, 1.0, false, false, false, gemm::Parallelism::Rayon(2)) } } let tgb = t.elapsed().as_secs_f64() / reps as f64;
        let row = |c: usize, out: &mut [f32]| out.copy_from_slice(&w[c * k..(c + 1) * k]);
        let t = Instant::now(); for _ in 0..reps { f32mm::xwt_rows(level(), &x, m, &row, n, k, &mut y); } let tr = t.elapsed().as_secs_f64() / reps as f64;
        let gf = 2.0 * (m * n * k) as f64 / 1e9;
        println!("m{m} n{n} k{k}: fwd kit {:.0} rows {:.0} gemm {:.0} | bwd kit {:.0} gemm {:.0} GFLOP/s (2 threads)", gf / tf, gf / tr, gf / tg, gf / tb, gf / tgb);
    }
}
