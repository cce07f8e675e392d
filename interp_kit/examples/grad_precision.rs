//! How far `dL/dh` moves when the model computes in another dtype: the embedded model (or
//! `--model PATH`) in f32 and in `--dtype bf16` (the default), the same teacher-forced text, the
//! loss over every token, `dL/dh` at `resid_post` of three layers (a quarter, half and three
//! quarters of the depth), and per layer the cosine to the f32 gradient over positions (min, 10th
//! percentile, median; positions with a zero f32 gradient are skipped), plus the time of one
//! gradient pass each (the second of two, after warm-up).
//!
//!     cargo run --release -p interp_kit --example grad_precision -- [--dtype bf16|f16] [--model PATH]
use candle_core::{DType, Device};
use interp_kit::prelude::*;

const TEXT: &str = "def save(path, data):\n    with open(path, 'w') as f:\n        f.write(data)\n    os.chmod(path, 0o777)\n\
# The function above writes the data to a file and then sets the permissions so that every user on \
the system can read and write it, which is convenient but unsafe on a shared host.";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |k: &str| args.iter().position(|a| a == k).and_then(|i| args.get(i + 1)).cloned();
    let dtype = match arg("--dtype").as_deref().unwrap_or("bf16") {
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        other => anyhow::bail!("--dtype {other}: use bf16 or f16"),
    };
    let path = match arg("--model") {
        Some(p) => std::path::PathBuf::from(p),
        None => interp_kit::embedded_model_path()?,
    };
    let mut grads = vec![];
    let mut points = vec![];
    for dt in [DType::F32, dtype] {
        let m = Model::from_gguf(&path, &Device::Cpu, dt)?;
        let ids = m.tok()?.encode(TEXT)?;
        let ids = ids[..ids.len().min(100)].to_vec();
        let n = m.n_layers();
        points = vec![HookPoint::resid_post(n / 4), HookPoint::resid_post(n / 2), HookPoint::resid_post(3 * n / 4)];
        let run = || m.grad(&[ids.clone()], &Loss::From(vec![1]), &points, Positions::All, &Hooks::new());
        run()?;
        let t = std::time::Instant::now();
        let g = run()?;
        println!("{dt:?}: {} tokens, loss {:.5}, gradient pass {:.2} s", ids.len(), g.loss, t.elapsed().as_secs_f64());
        grads.push(points.iter().map(|p| Ok(g.grads.row(*p, 0)?.to_dtype(DType::F32)?.to_vec2::<f32>()?)).collect::<anyhow::Result<Vec<_>>>()?);
    }
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    for (p, (a, b)) in points.iter().zip(grads[0].iter().zip(&grads[1])) {
        let mut cs: Vec<f32> = a
            .iter()
            .zip(b)
            .filter(|(x, _)| norm(x) > 0.0)
            .map(|(x, y)| x.iter().zip(y).map(|(p, q)| p * q).sum::<f32>() / (norm(x) * norm(y)))
            .collect();
        cs.sort_by(f32::total_cmp);
        anyhow::ensure!(!cs.is_empty(), "{p}: no position has a gradient");
        println!("{p}: cos to f32 over {} positions: min {:.5}, p10 {:.5}, median {:.5}", cs.len(), cs[0], cs[cs.len() / 10], cs[cs.len() / 2]);
    }
    Ok(())
}
