//! Which CPU instructions the kit's own kernels use (`model::qgemm`): detected once at run time,
//! and capped by `INTERP_KIT_SIMD` so that every path can be run, and compared with the portable
//! reference, on a machine that has the fastest one.
//!
//! | level | needs | used for |
//! |---|---|---|
//! | `portable` | nothing | plain Rust loops, the reference |
//! | `avx2` | AVX2 + FMA | Q8_0 dot products (`vpmaddubsw` + `vpmaddwd`), dequantization |
//! | `avx512vnni` | the above + AVX-512 VNNI and VL, F16C | Q8_0 dot products in one `vpdpbusd` per block; the packed int8 kernels (`model::q8_packed`, `model::kquant`); the f32 gradient path's frozen products (`model::f32mm`, AVX-512F) |
//! | `avx512bf16` | the above + AVX-512 BW and BF16 | the bf16 gemm of the gradient path's opt-in bf16 compute (`model::bf16`) |
//! | `amx` | the above + AMX-TILE, AMX-BF16 and AMX-INT8 (Sapphire Rapids and later), and Linux's leave to use the tile registers (`arch_prctl(ARCH_REQ_XCOMP_PERM)`, asked once here) | that bf16 gemm in 16 x 16 tiles (`tdpbf16ps`); the Q8_0 prefill's integer block sums in int8 tiles (`tdpbssd`, `model::q8_packed`) |
//!
//! `INTERP_KIT_SIMD=portable|avx2|avx512vnni|avx512bf16|amx` lowers the level (it never raises it above what the
//! CPU has); an unknown value is reported once on stderr and ignored. The Q8_0 kernels give
//! bit-identical results at every level (the K-quant kernel's integer sums are exact, its f32 sums
//! in another order than its reference's), and the bf16 kernel sums in the order of its portable
//! reference (the tests compare them); the AMX tiles sum in their own order, tested against an f64
//! sum within the bound that the module states.

use anyhow::{bail, Result};
use std::sync::OnceLock;

/// A kernel level, ordered from the slowest to the fastest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SimdLevel {
    Portable,
    Avx2,
    Avx512Vnni,
    Avx512Bf16,
    Amx,
}

impl SimdLevel {
    /// Every level, slowest first.
    pub const ALL: [SimdLevel; 5] = [SimdLevel::Portable, SimdLevel::Avx2, SimdLevel::Avx512Vnni, SimdLevel::Avx512Bf16, SimdLevel::Amx];

    /// The name `INTERP_KIT_SIMD` takes.
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Portable => "portable",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::Avx512Vnni => "avx512vnni",
            SimdLevel::Avx512Bf16 => "avx512bf16",
            SimdLevel::Amx => "amx",
        }
    }

    /// The levels this one includes (itself and every slower one), slowest first.
    pub fn up_to(self) -> Vec<SimdLevel> {
        SimdLevel::ALL.into_iter().filter(|l| *l <= self).collect()
    }
}

impl std::str::FromStr for SimdLevel {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "portable" | "scalar" => Ok(SimdLevel::Portable),
            "avx2" => Ok(SimdLevel::Avx2),
            "avx512vnni" | "vnni" => Ok(SimdLevel::Avx512Vnni),
            "avx512bf16" | "avx512" | "bf16" => Ok(SimdLevel::Avx512Bf16),
            "amx" => Ok(SimdLevel::Amx),
            other => bail!("INTERP_KIT_SIMD={other:?}: use portable, avx2, avx512vnni, avx512bf16 or amx"),
        }
    }
}

impl std::fmt::Display for SimdLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The fastest level this CPU runs (detected once).
pub fn detected() -> SimdLevel {
    static LEVEL: OnceLock<SimdLevel> = OnceLock::new();
    *LEVEL.get_or_init(detect)
}

#[cfg(target_arch = "x86_64")]
fn detect() -> SimdLevel {
    let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
    let vnni = is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
        && is_x86_feature_detected!("f16c");
    let bf16 = is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512bf16");
    match (avx2, vnni, bf16) {
        (true, true, true) if amx_cpuid() && amx_permitted() => SimdLevel::Amx,
        (true, true, true) => SimdLevel::Avx512Bf16,
        (true, true, false) => SimdLevel::Avx512Vnni,
        (true, false, _) => SimdLevel::Avx2,
        _ => SimdLevel::Portable,
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> SimdLevel {
    SimdLevel::Portable
}

/// CPUID leaf 7 lists AMX-BF16 (EDX bit 22), AMX-TILE (24) and AMX-INT8 (25).
#[cfg(target_arch = "x86_64")]
fn amx_cpuid() -> bool {
    #[allow(unused_unsafe)]
    // SAFETY: CPUID leaf 7 exists on every x86-64 CPU with AVX-512 (checked before this call).
    let edx = unsafe { std::arch::x86_64::__cpuid_count(7, 0) }.edx;
    [22, 24, 25].iter().all(|b| edx >> b & 1 == 1)
}

/// Asks Linux, once per process, for leave to use the AMX tile data registers (their 8 KiB of
/// state is saved per thread only for processes that asked: `ARCH_REQ_XCOMP_PERM` for
/// `XFEATURE_XTILEDATA`); false where it is refused, or on another OS.
pub fn amx_permitted() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        {
            const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
            const XFEATURE_XTILEDATA: libc::c_long = 18;
            // SAFETY: a system call with two integer arguments; it changes no memory of ours.
            unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
        }
        #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
        false
    })
}

/// `detected` lowered to the level `request` names (never raised above it).
pub fn capped(detected: SimdLevel, request: Option<&str>) -> Result<SimdLevel> {
    Ok(match request {
        None => detected,
        Some(r) if r.trim().is_empty() => detected,
        Some(r) => detected.min(r.parse::<SimdLevel>()?),
    })
}

/// The level the kernels use: [`detected`] capped by `INTERP_KIT_SIMD` (read once).
pub fn level() -> SimdLevel {
    static LEVEL: OnceLock<SimdLevel> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let request = std::env::var("INTERP_KIT_SIMD").ok();
        capped(detected(), request.as_deref()).unwrap_or_else(|e| {
            eprintln!("interp_kit: {e:#}; using {}", detected());
            detected()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_lower_the_level_and_never_raise_it() {
        use SimdLevel::*;
        assert_eq!(capped(Avx512Vnni, None).unwrap(), Avx512Vnni);
        assert_eq!(capped(Avx512Bf16, Some("avx512vnni")).unwrap(), Avx512Vnni);
        assert_eq!(capped(Avx512Vnni, Some("avx512bf16")).unwrap(), Avx512Vnni);
        assert_eq!(capped(Amx, Some("avx512bf16")).unwrap(), Avx512Bf16);
        assert_eq!(capped(Avx512Bf16, Some("amx")).unwrap(), Avx512Bf16);
        assert_eq!(capped(Avx512Vnni, Some("")).unwrap(), Avx512Vnni);
        assert_eq!(capped(Avx512Vnni, Some("avx2")).unwrap(), Avx2);
        assert_eq!(capped(Avx512Vnni, Some(" Scalar ")).unwrap(), Portable);
        assert_eq!(capped(Avx2, Some("avx512vnni")).unwrap(), Avx2);
        assert_eq!(capped(Portable, Some("avx2")).unwrap(), Portable);
        let e = capped(Avx2, Some("sse9")).unwrap_err().to_string();
        assert!(e.contains("INTERP_KIT_SIMD") && e.contains("sse9") && e.contains("avx512vnni"), "{e}");
        assert_eq!(Avx2.up_to(), [Portable, Avx2]);
        for l in SimdLevel::ALL {
            assert_eq!(l.name().parse::<SimdLevel>().unwrap(), l);
        }
        assert!(level() <= detected());
    }

    /// Detection agrees with the kernel's own list of flags where Linux shows it.
    #[test]
    fn detection_agrees_with_proc_cpuinfo() {
        let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else { return };
        let Some(flags) = info.lines().find(|l| l.starts_with("flags")) else { return };
        let has = |f: &str| flags.split_whitespace().any(|x| x == f);
        let vnni = has("avx2") && has("fma") && has("avx512f") && has("avx512vl") && has("avx512_vnni") && has("f16c");
        let detected = detected(); // asks for the tile permission where CPUID lists AMX
        // The permission as the kernel records it (`ARCH_GET_XCOMP_PERM`), not as
        // `amx_permitted` remembers it.
        let amx = has("amx_tile") && has("amx_bf16") && has("amx_int8") && tile_data_permitted();
        let want = if vnni && has("avx512bw") && has("avx512_bf16") && amx {
            SimdLevel::Amx
        } else if vnni && has("avx512bw") && has("avx512_bf16") {
            SimdLevel::Avx512Bf16
        } else if vnni {
            SimdLevel::Avx512Vnni
        } else if has("avx2") && has("fma") {
            SimdLevel::Avx2
        } else {
            SimdLevel::Portable
        };
        assert_eq!(detected, want, "{flags}");
    }

    /// Bit 18 (`XFEATURE_XTILEDATA`) of the features this process may use, read back from Linux.
    fn tile_data_permitted() -> bool {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        {
            const ARCH_GET_XCOMP_PERM: libc::c_long = 0x1022;
            let mut mask: u64 = 0;
            // SAFETY: the call writes one u64 through the pointer, which points at `mask`.
            let rc = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_GET_XCOMP_PERM, &mut mask as *mut u64) };
            rc == 0 && mask >> 18 & 1 == 1
        }
        #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
        false
    }
}
