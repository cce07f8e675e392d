//! Device and dtype choice: one call, `interp_kit::device("cpu" | "cuda" | "cuda:1" | "auto")`.
use anyhow::{bail, Result};
use candle_core::{DType, Device};

/// Picks a device by name. `auto` (or an empty name) reads `INTERP_KIT_DEVICE`, else uses CUDA
/// when this build has it and a GPU answers, else the CPU.
pub fn device(name: &str) -> Result<Device> {
    let name = name.trim().to_ascii_lowercase();
    match name.as_str() {
        "cpu" => Ok(Device::Cpu),
        "" | "auto" => match std::env::var("INTERP_KIT_DEVICE") {
            Ok(v) if !v.is_empty() && v != "auto" => device(&v),
            _ => Ok(Device::cuda_if_available(0).unwrap_or(Device::Cpu)),
        },
        s if s.starts_with("cuda") => {
            let ord: usize = s.strip_prefix("cuda").and_then(|r| r.strip_prefix(':')).map_or(Ok(0), |r| r.parse())?;
            if !candle_core::utils::cuda_is_available() {
                bail!("device {s:?}: this build has no CUDA support; rebuild with `--features cuda` on a CUDA host");
            }
            Ok(Device::new_cuda(ord)?)
        }
        other => bail!("unknown device {other:?}: use cpu, cuda, cuda:N or auto"),
    }
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
