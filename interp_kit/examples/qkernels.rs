//! Times the CPU paths for `x W^T` with a Q8_0 `W` on the embedded model's shapes, per row count:
//! candle's `QMatMul`, the kit's 8-row Q8_0 kernel (`qgemm`), the packed VNNI kernel
//! (`q8_packed`) and a dequantized copy + gemm; for the 145 MiB output head, which streams from
//! memory as at decode, rows 1 and 8 only. Medians of `--reps` calls, in microseconds, and
//! the rate in GOP/s (2 m n k / time). Random weights, so no model is needed.
//!
//!     cargo run --release --example qkernels -- [--reps 20] [--rows 1,2,4,8,16,64,256]
use anyhow::Result;
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use interp_kit::base::cpu::{level, SimdLevel};
use interp_kit::model::{layers::dequantize_par, q8_packed, qgemm};
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let get = |k: &str| args.iter().position(|a| a == k).and_then(|i| args.get(i + 1)).cloned();
    let reps: usize = get("--reps").map(|s| s.parse()).transpose()?.unwrap_or(20);
    let rows: Vec<usize> = get("--rows").unwrap_or("1,2,4,8,16,64,256".into()).split(',').map(|s| s.trim().parse()).collect::<Result<_, _>>()?;
    let vnni = level() >= SimdLevel::Avx512Vnni;
    println!("kernel level: {}", level());
    println!("| W (n x k) | rows | candle QMatMul | qgemm (8-row) | packed (VNNI) | dequant + gemm | unit |");
    println!("|---|---|---|---|---|---|---|");
    // The embedded model's Q8_0 shapes: q/o, gate/up, k/v, and the output head (145 MiB: the
    // only one that does not stay in cache between calls, as at decode; its rows are timed at
    // 1 and 8 rows only, and without the dequantized copy).
    for (n, k) in [(896usize, 896usize), (4864, 896), (128, 896), (151936, 896)] {
        let head = n > 100_000;
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu)?;
        let q = QTensor::quantize(&w, GgmlDType::Q8_0)?;
        let qmm = QMatMul::from_qtensor(QTensor::quantize(&w, GgmlDType::Q8_0)?)?;
        let packed = q8_packed::PackedQ8::from_qtensor(&q)?;
        for &m in rows.iter().filter(|&&m| !head || m <= 8) {
            let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)?;
            let xv: Vec<f32> = x.flatten_all()?.to_vec1()?;
            let mut y = vec![0f32; m * n];
            let time = |f: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
                f()?;
                let mut ts = vec![];
                for _ in 0..reps {
                    let t = Instant::now();
                    f()?;
                    ts.push(t.elapsed().as_secs_f64() * 1e6);
                }
                Ok(median(ts))
            };
            let t_candle = time(&mut || {
                qmm.forward(&x)?;
                Ok(())
            })?;
            let t_q8 = if m < 16 { Some(time(&mut || qgemm::matmul_xwt(&xv, m, &q, &mut y))?) } else { None };
            let t_packed = if vnni { Some(time(&mut || q8_packed::matmul(&xv, m, &packed, &mut y))?) } else { None };
            let t_dense = if head {
                None
            } else {
                Some(time(&mut || {
                    let wd = dequantize_par(&q)?;
                    x.matmul(&wd.t()?)?;
                    Ok(())
                })?)
            };
            let gops = |t: f64| 2.0 * (m * n * k) as f64 / (t * 1e3);
            let cell = |t: Option<f64>| t.map_or("—".to_string(), |t| format!("{t:.0} ({:.0})", gops(t)));
            println!(
                "| {n} x {k} | {m} | {} | {} | {} | {} | µs (GOP/s) |",
                cell(Some(t_candle)),
                cell(t_q8),
                cell(t_packed),
                cell(t_dense)
            );
        }
    }
    Ok(())
}
