//! Times the gradient path's frozen-linear products on the embedded model's shapes: the forward
//! `x W^T` and the backward `g W`, in f32 through candle's gemm and in bf16 through the kit's
//! kernel (`model::bf16`, rounding of the left operand included). Medians of `--reps` calls, in
//! milliseconds, and the rate in GFLOP/s (2 m n k / time). Random weights: no model needed.
//!
//!     cargo run --release --example bf16_kernels -- [--reps 20] [--rows 100,256]
use anyhow::Result;
use candle_core::{Device, Tensor};
use interp_kit::base::cpu::level;
use interp_kit::model::bf16::{gemm_at, PackedA, PackedB};
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let get = |k: &str| args.iter().position(|a| a == k).and_then(|i| args.get(i + 1)).cloned();
    let reps: usize = get("--reps").map(|s| s.parse()).transpose()?.unwrap_or(20);
    let rows: Vec<usize> = get("--rows").unwrap_or("100,256".into()).split(',').map(|s| s.trim().parse()).collect::<Result<_, _>>()?;
    let lv = level();
    println!("kernel level: {lv}");
    println!("| W (n x k) | rows | f32 x W^T | bf16 x W^T | f32 g W | bf16 g W | unit |");
    println!("|---|---|---|---|---|---|---|");
    for (n, k) in [(896usize, 896usize), (128, 896), (4864, 896), (896, 4864), (151936, 896)] {
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu)?;
        let wv: Vec<f32> = w.flatten_all()?.to_vec1()?;
        let (fwd, bwd) = (PackedB::from_w_t(&wv, n, k)?, PackedB::from_w(&wv, n, k)?);
        for &m in &rows {
            let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)?;
            let g = Tensor::randn(0f32, 1.0, (m, n), &Device::Cpu)?;
            let (xv, gv): (Vec<f32>, Vec<f32>) = (x.flatten_all()?.to_vec1()?, g.flatten_all()?.to_vec1()?);
            let time = |f: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
                f()?;
                let mut ts = vec![];
                for _ in 0..reps {
                    let t = Instant::now();
                    f()?;
                    ts.push(t.elapsed().as_secs_f64() * 1e3);
                }
                Ok(median(ts))
            };
            let wt = w.t()?;
            let t = [
                time(&mut || Ok(drop(x.matmul(&wt)?)))?,
                time(&mut || Ok(drop(gemm_at(lv, &PackedA::new_at(lv, &xv, m, k)?, &fwd)?)))?,
                time(&mut || Ok(drop(g.matmul(&w)?)))?,
                time(&mut || Ok(drop(gemm_at(lv, &PackedA::new_at(lv, &gv, m, n)?, &bwd)?)))?,
            ];
            let flop = 2.0 * (m * n * k) as f64;
            let cell = |ms: f64| format!("{ms:.2} ({:.0})", flop / ms / 1e6);
            println!("| {n} x {k} | {m} | {} | {} | {} | {} | ms (GFLOP/s) |", cell(t[0]), cell(t[1]), cell(t[2]), cell(t[3]));
        }
    }
    Ok(())
}
