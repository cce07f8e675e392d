//! Device and dtype choice: one call, `interp_kit::device("cpu" | "cuda" | "cuda:1" | "auto")`.
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};

/// Picks a device by name. `auto` (or an empty name) reads `INTERP_KIT_DEVICE`, else uses CUDA
/// when this build has it and a GPU answers, else the CPU.
pub fn device(name: &str) -> Result<Device> {
    let name = name.trim().to_ascii_lowercase();
    match name.as_str() {
        "cpu" => Ok(Device::Cpu),
        "" | "auto" => match std::env::var("INTERP_KIT_DEVICE") {
            Ok(v) if !v.is_empty() && v != "auto" => device(&v),
            _ if candle_core::utils::cuda_is_available() => Ok(cuda(0).unwrap_or(Device::Cpu)),
            _ => Ok(Device::Cpu),
        },
        s if s.starts_with("cuda") => {
            let ord: usize = s
                .strip_prefix("cuda")
                .and_then(|r| r.strip_prefix(':'))
                .map_or(Ok(0), |r| r.parse())
                .with_context(|| format!("device {s:?}: expected cuda or cuda:N"))?;
            if !candle_core::utils::cuda_is_available() {
                bail!("device {s:?}: this build has no CUDA support; rebuild with `--features cuda` on a CUDA host");
            }
            cuda(ord).with_context(|| format!("device {s:?}: no usable GPU {ord}"))
        }
        other => bail!("unknown device {other:?}: use cpu, cuda, cuda:N or auto"),
    }
}

/// One candle device per GPU for the whole process. candle gives each `Device::new_cuda` its own
/// id and stream, and refuses ops between tensors of two such devices ("device mismatch") although
/// both are the same GPU: a config check, a model load and a notebook cell that each call
/// [`device`] must get the same device.
fn cuda(ord: usize) -> Result<Device> {
    use std::collections::BTreeMap;
    use std::sync::{Mutex, OnceLock};
    static CUDA: OnceLock<Mutex<BTreeMap<usize, Device>>> = OnceLock::new();
    let mut devs = CUDA.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(d) = devs.get(&ord) {
        return Ok(d.clone());
    }
    let d = Device::new_cuda(ord)?;
    devs.insert(ord, d.clone());
    Ok(d)
}

/// f32 on the CPU; bf16 on CUDA unless `INTERP_KIT_DTYPE=f32`.
pub fn default_dtype(device: &Device) -> DType {
    match (device, std::env::var("INTERP_KIT_DTYPE").as_deref()) {
        (_, Ok("f32")) => DType::F32,
        (_, Ok("bf16")) => DType::BF16,
        (Device::Cpu, _) => DType::F32,
        _ => DType::BF16,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_devices_or_clear_errors() {
        assert!(device("cpu").unwrap().is_cpu());
        assert!(device(" CPU ").unwrap().is_cpu());
        let e = format!("{:#}", device("tpu").unwrap_err());
        assert!(e.contains("unknown device \"tpu\""), "{e}");
        let e = format!("{:#}", device("cuda:x").unwrap_err());
        assert!(e.contains("cuda:x"), "{e}");
        if !candle_core::utils::cuda_is_available() {
            let e = format!("{:#}", device("cuda:1").unwrap_err());
            assert!(e.contains("no CUDA support") && e.contains("--features cuda"), "{e}");
        }
    }
}
