//! Building blocks shared by the architectures. Every op has two paths:
//! - inference (`ctx.grad == false`): fused kernels and quantized matmuls, fast, no backward;
//! - gradient (`ctx.grad == true`): differentiable ops only. candle's fused `rms_norm`,
//!   `softmax_last_dim`, `rope` and `QMatMul` have no backward and would silently cut the graph,
//!   so they are never used on this path. On host f32 tensors, RMSNorm, rope, attention and the
//!   gated MLP's `silu(g) * u` are single ops with their own backward ([`super::fused`]);
//!   elsewhere they are composed from candle's ops. Frozen weights go through [`FrozenLinearOp`], whose
//!   backward passes the gradient to the input only (plain matmul backward would also compute
//!   the weight gradient: ~4x the time, 2x the memory).
use super::forward::FwdCtx;
use super::bf16::{Bf16MatMul, Bf16Weight, ComputeDtype};
use super::{fused, kquant, q8_packed, qgemm};
use anyhow::{Context, Result};
use candle_core::backend::BackendStorage;
use candle_core::quantized::{QMatMul, QTensor};
use crate::base::cpu::SimdLevel;
use candle_core::{
    op::BackpropOp, CpuStorage, CustomOp1, DType, Device, DeviceLocation, Layout, Module, Shape, Storage, Tensor, D,
};
use std::sync::{Arc, OnceLock};

/// `y = x W^T` with a frozen `W`: the backward pass returns dL/dx only.
///
/// Devices: `cpu_fwd` runs one gemm on the host storages in place; `cuda_fwd` (feature `cuda`)
/// runs candle's matmul on the GPU (cuBLAS); the backward is plain tensor ops on any device.
/// candle picks the method by the input's storage, so there is no CPU fallback to choose and no
/// host copy; on any other backend candle returns "no <backend> implementation for frozen-linear".
struct FrozenLinearOp {
    /// `[out, in]`
    w: Tensor,
}

// The CUDA path below is not behind `cfg(feature = "cuda")`: candle defines `CudaStorage` and
// `Storage::Cuda` in every build (stubs that only return errors without the feature), so a CPU
// build type-checks this code too, and in it `cuda_fwd` is simply never called.

/// Wraps a backend storage (contiguous, offset 0: ensured by [`frozen_matmul`]) as a tensor.
fn storage_tensor(storage: Storage, layout: &Layout) -> candle_core::Result<Tensor> {
    if layout.start_offset() != 0 || !layout.is_contiguous() {
        candle_core::bail!("frozen-linear: input must be contiguous with offset 0")
    }
    Ok(Tensor::from_storage(storage, layout.shape().clone(), BackpropOp::none(), false))
}

impl FrozenLinearOp {
    fn compute(&self, x: Tensor) -> candle_core::Result<(Storage, Shape)> {
        let y = x.broadcast_matmul(&self.w.t()?)?.contiguous()?;
        let shape = y.shape().clone();
        let (st, layout) = y.storage_and_layout();
        debug_assert_eq!(layout.start_offset(), 0);
        let st = match &*st {
            Storage::Cpu(c) => Storage::Cpu(c.clone()),
            Storage::Cuda(c) => Storage::Cuda(c.try_clone(layout)?),
            _ => candle_core::bail!("frozen-linear: unsupported device"),
        };
        Ok((st, shape))
    }
}

impl CustomOp1 for FrozenLinearOp {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }
    /// One `[rows, in] x [in, out]` gemm over all leading dims, reading `x` and `W` in place.
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = l.shape().dims();
        let (n, k) = self.w.dims2()?;
        if dims.last() != Some(&k) || !l.is_contiguous() {
            candle_core::bail!("frozen-linear: input {:?} (contiguous: {}) does not end in {k}", dims, l.is_contiguous())
        }
        let m = l.shape().elem_count() / k.max(1);
        let lhs = Layout::contiguous_with_offset((m, k), l.start_offset());
        let (ws, wl) = self.w.storage_and_layout();
        let Storage::Cpu(ws) = &*ws else { candle_core::bail!("frozen-linear: device mismatch") };
        let mut out = dims.to_vec();
        *out.last_mut().expect("checked above") = n;
        if let (CpuStorage::F32(xv), CpuStorage::F32(wv), Some((w0, w1))) = (s, ws, wl.contiguous_offsets()) {
            // f32 (the gradient path's default): on the worker pool, each weight panel packed once.
            let x = &xv[l.start_offset()..l.start_offset() + m * k];
            return Ok((CpuStorage::F32(fused::xwt_pooled(x, m, &wv[w0..w1], n, k)), Shape::from(out)));
        }
        let y = s.matmul(ws, (1, m, n, k), &lhs, &wl.transpose(0, 1)?)?;
        Ok((y, Shape::from(out)))
    }
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let x = storage_tensor(Storage::Cuda(s.try_clone(l)?), l)?;
        match self.compute(x)? {
            (Storage::Cuda(c), shape) => Ok((c, shape)),
            _ => candle_core::bail!("frozen-linear: device mismatch"),
        }
    }
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        // dL/dx = dL/dy W (one gemm over all leading dims); no gradient for W.
        let dims = grad_res.dims();
        let (n, k) = self.w.dims2()?;
        let m = grad_res.elem_count() / n.max(1);
        let g = match pooled_dx(grad_res, &self.w, m, n, k)? {
            Some(dx) => Tensor::from_vec(dx, (m, k), grad_res.device())?,
            None => grad_res.reshape((m, n))?.matmul(&self.w)?,
        };
        let mut out = dims.to_vec();
        if let Some(last) = out.last_mut() {
            *last = k;
        }
        g.reshape(out).map(Some)
    }
}

/// Longest depth (`W`'s out-dim) for which the backward `g W` runs on the worker pool; each task
/// reads all of `g`, which for the output head (152k columns) is better left to candle's blocking.
const POOLED_DX_MAX_DEPTH: usize = 16_384;

/// `g W` by [`fused::xw_pooled`] for host f32 `g` and `W` of moderate depth; `None` otherwise.
fn pooled_dx(grad: &Tensor, w: &Tensor, m: usize, n: usize, k: usize) -> candle_core::Result<Option<Vec<f32>>> {
    if n > POOLED_DX_MAX_DEPTH || !grad.device().is_cpu() || grad.dtype() != DType::F32 || w.dtype() != DType::F32 {
        return Ok(None);
    }
    let g = grad.contiguous()?;
    let (gs, gl) = g.storage_and_layout();
    let (ws, wl) = w.storage_and_layout();
    Ok(match (&*gs, &*ws, gl.contiguous_offsets(), wl.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(gv)), Storage::Cpu(CpuStorage::F32(wv)), Some((g0, g1)), Some((w0, w1))) => {
            Some(fused::xw_pooled(&gv[g0..g1], m, &wv[w0..w1], n, k))
        }
        _ => None,
    })
}

/// `x W^T` with a frozen `W` (differentiable in `x` only).
pub fn frozen_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let x = if x.is_contiguous() && x.layout().start_offset() == 0 { x.clone() } else { x.affine(1.0, 0.0)? };
    Ok(x.apply_op1_arc(Arc::new(Box::new(FrozenLinearOp { w: w.contiguous()? })))?)
}

/// Whether [`Weight::bf16`] packs for the kit's bf16 kernel: host memory on a CPU with AVX-512
/// BF16 (at the level `INTERP_KIT_SIMD` allows); otherwise candle multiplies bf16 tensors.
pub fn bf16_packs(loc: DeviceLocation, level: SimdLevel) -> bool {
    loc == DeviceLocation::Cpu && level >= SimdLevel::Avx512Bf16
}

/// [`FrozenLinearOp`] in bf16 compute ([`super::bf16`]): `y = x W^T` and `dL/dx = dL/dy W`, both
/// with the operands rounded to bf16 and f32 sums, `W` packed once per direction.
struct FrozenLinearBf16Op {
    w: Arc<Bf16Weight>,
}

impl CustomOp1 for FrozenLinearBf16Op {
    fn name(&self) -> &'static str {
        "frozen-linear-bf16"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        match &*self.w {
            Bf16Weight::Packed { fwd, .. } => Bf16MatMul(fwd).cpu_fwd(s, l),
            Bf16Weight::Tensor(_) => candle_core::bail!("frozen-linear-bf16: the weight is not packed"),
        }
    }
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        match &*self.w {
            Bf16Weight::Packed { bwd, .. } => grad_res.contiguous()?.apply_op1_no_bwd(&Bf16MatMul(bwd)).map(Some),
            Bf16Weight::Tensor(_) => candle_core::bail!("frozen-linear-bf16: the weight is not packed"),
        }
    }
}

/// `x W^T` with a frozen `W` in bf16 compute (differentiable in `x` only); `x` and the result
/// keep their dtype (f32 on the gradient path).
pub fn frozen_matmul_bf16(x: &Tensor, w: Arc<Bf16Weight>) -> Result<Tensor> {
    match &*w {
        Bf16Weight::Packed { k, .. } if x.dtype() == DType::F32 && x.device().is_cpu() => {
            anyhow::ensure!(x.dims().last() == Some(k), "bf16 linear: input {:?} does not end in the weight's in-dim {k}", x.dims());
            let x = if x.is_contiguous() && x.layout().start_offset() == 0 { x.clone() } else { x.affine(1.0, 0.0)? };
            Ok(x.apply_op1_arc(Arc::new(Box::new(FrozenLinearBf16Op { w: w.clone() })))?)
        }
        Bf16Weight::Tensor(t) => Ok(frozen_matmul(&x.to_dtype(DType::BF16)?, t)?.to_dtype(x.dtype())?),
        Bf16Weight::Packed { .. } => anyhow::bail!("bf16 linear: the packed weight takes f32 host inputs, not {:?} on {:?}", x.dtype(), x.device().location()),
    }
}

/// A weight matrix `[out, in]`, dense or kept quantized (GGUF) for fast inference.
/// Cloning shares the tensors (they are immutable).
#[derive(Clone)]
pub enum Weight {
    /// The matrix, and its bf16 copy for [`ComputeDtype::Bf16`] (made on first use).
    Dense(Tensor, Bf16Slot),
    Quant {
        qmm: QMatMul,
        q: Arc<QTensor>,
        /// f32 (or the model dtype) copy, made on first use by the gradient path.
        dense: OnceLock<Tensor>,
        /// The Q8_0 weight repacked for the VNNI kernel ([`q8_packed`]), made on first use by
        /// [`QuantPath::Q8_0Packed`] and shared by clones.
        packed: Arc<OnceLock<q8_packed::PackedQ8>>,
        /// The bf16 copy for [`ComputeDtype::Bf16`] (made on first use, without the f32 one).
        bf16: Bf16Slot,
        dtype: DType,
    },
}

/// A weight's bf16 copy for the gradient path ([`Weight::bf16`]), shared by clones.
pub type Bf16Slot = Arc<OnceLock<Arc<Bf16Weight>>>;

impl Weight {
    pub fn from_dense(t: Tensor) -> Self {
        Weight::Dense(t, Bf16Slot::default())
    }
    pub fn quant(q: Arc<QTensor>, dtype: DType) -> Result<Self> {
        Ok(Weight::Quant {
            qmm: QMatMul::from_arc(q.clone())?,
            q,
            dense: OnceLock::new(),
            packed: Arc::default(),
            bf16: Bf16Slot::default(),
            dtype,
        })
    }
    /// The dense `[out, in]` matrix (dequantized once and kept, for quantized weights).
    pub fn dense(&self) -> Result<&Tensor> {
        match self {
            Weight::Dense(t, _) => Ok(t),
            Weight::Quant { q, dense, dtype, .. } => {
                if dense.get().is_none() {
                    let t = dequantize_par(q)?.to_dtype(*dtype)?;
                    let _ = dense.set(t);
                }
                Ok(dense.get().expect("set above"))
            }
        }
    }
    /// The matrix in bf16 for the gradient path's bf16 compute, made once: packed for the kit's
    /// kernel on a CPU with AVX-512 BF16 ([`bf16_packs`]), a bf16 tensor elsewhere. A quantized
    /// weight is dequantized for it without keeping the f32 copy.
    pub fn bf16(&self) -> Result<Arc<Bf16Weight>> {
        let (slot, loc) = match self {
            Weight::Dense(t, s) => (s, t.device().location()),
            Weight::Quant { q, bf16, .. } => (bf16, q.device().location()),
        };
        if slot.get().is_none() {
            let packed = bf16_packs(loc, crate::base::cpu::level());
            let w = match self {
                Weight::Dense(t, _) => Bf16Weight::new(t, packed)?,
                Weight::Quant { q, dense, .. } => match dense.get() {
                    Some(t) => Bf16Weight::new(t, packed)?,
                    None => {
                        // Packed straight from the quantized rows where the block type allows:
                        // no f32 copy of the matrix.
                        let from_rows = match (packed, q.shape().dims2()) {
                            (true, Ok((n, k))) => with_dequantized_rows(q, |row| Bf16Weight::packed_from_rows(crate::base::cpu::level(), n, k, row))?,
                            _ => None,
                        };
                        match from_rows {
                            Some(w) => w,
                            None => Bf16Weight::new(&dequantize_par(q)?, packed)?,
                        }
                    }
                },
            };
            let _ = slot.set(Arc::new(w));
        }
        Ok(slot.get().expect("set above").clone())
    }
    pub fn dims(&self) -> Vec<usize> {
        match self {
            Weight::Dense(t, _) => t.dims().to_vec(),
            Weight::Quant { q, .. } => q.shape().dims().to_vec(),
        }
    }
}

/// From this many rows (tokens x batch) on, a quantized linear layer multiplies f32 activations by
/// its dequantized weight ([`QuantPath::DequantGemm`]) instead of quantized dot products, unless
/// `Model::int8_prefill` sends it to the int8 kernels (VNNI CPUs).
pub const DENSE_MIN_ROWS: usize = 16;

/// Without AVX-512 VNNI: from this many rows on (below [`DENSE_MIN_ROWS`]), a Q8_0 linear layer uses
/// [`qgemm::matmul_xwt`]: candle's integer arithmetic, each weight block loaded once for up to
/// 8 rows (batch-8 decode of the embedded model: 38 tok/s through candle, 74 through it). A
/// single row stays on candle, which is as exact and a little faster there (BENCHMARKS.md).
pub const Q8_0_MIN_ROWS: usize = 2;

/// Dequantizes on all cores; candle's `QTensor::dequantize` runs on one thread. Q8_0 goes
/// through [`qgemm::dequantize`] (AVX2, bit-identical to candle's); Q4_K, Q5_K and Q6_K through
/// rayon over chunks of blocks with candle's own `to_float`. Other block types, and every tensor
/// on a GPU, go to candle's `dequantize` for its device (see [`dequant_path`]).
pub fn dequantize_par(q: &QTensor) -> Result<Tensor> {
    use candle_core::quantized::k_quants::{BlockQ4K, BlockQ5K, BlockQ6K, GgmlType};
    use candle_core::quantized::GgmlDType;
    use rayon::prelude::*;
    fn par<T: GgmlType + Sync>(data: &[u8], n_out: usize) -> Option<Vec<f32>> {
        let blocks = as_blocks::<T>(data).filter(|b| b.len() * T::BLCK_SIZE == n_out)?;
        let mut out = vec![0f32; n_out];
        const CHUNK: usize = 64;
        out.par_chunks_mut(T::BLCK_SIZE * CHUNK)
            .zip(blocks.par_chunks(CHUNK))
            .for_each(|(o, b)| T::to_float(b, o));
        Some(out)
    }
    let path = dequant_path(q.device().location(), q.dtype(), q.shape().rank());
    if path == DequantPath::Candle {
        return Ok(q.dequantize(&q.device())?);
    }
    let n_out = q.shape().elem_count();
    let data = q.data()?;
    let out = match q.dtype() {
        GgmlDType::Q8_0 => Some(qgemm::dequantize(q)?),
        GgmlDType::Q4K => par::<BlockQ4K>(&data, n_out),
        GgmlDType::Q5K => par::<BlockQ5K>(&data, n_out),
        GgmlDType::Q6K => par::<BlockQ6K>(&data, n_out),
        _ => None,
    };
    match out {
        Some(v) => Ok(Tensor::from_vec(v, q.shape().dims(), &Device::Cpu)?),
        None => Ok(q.dequantize(&q.device())?),
    }
}

/// The f32 prefill's product `x Wᵀ` with a quantized weight on CPUs with AVX-512
/// ([`QuantPath::DequantGemm`] there): each task of [`super::f32mm::xwt_rows`] dequantizes its
/// rows of `W` by [`with_dequantized_rows`] (the bits of [`dequantize_par`]) into a buffer in
/// cache and multiplies by them, so no f32 copy of the whole weight is written and read back,
/// and no panel is packed. f32 products and sums, in [`super::f32mm`]'s order.
pub struct DequantRowsMatMul<'a>(pub &'a QTensor);

impl DequantRowsMatMul<'_> {
    /// Whether it runs `q`'s product for `x` of dtype `x` (the model's dense dtype `dense`) at
    /// `level`: a 2-d host matrix of a block type [`with_dequantized_rows`] reads, f32 throughout,
    /// and the f32 kernels of [`super::f32mm`]; else the transient copy and the gemm.
    pub fn applies(q: &QTensor, x: DType, dense: DType, level: SimdLevel) -> bool {
        x == DType::F32
            && dense == DType::F32
            && super::f32mm::applies(level)
            && q.shape().rank() == 2
            && dequant_path(q.device().location(), q.dtype(), 2) != DequantPath::Candle
    }
}

impl candle_core::CustomOp1 for DequantRowsMatMul<'_> {
    fn name(&self) -> &'static str {
        "dequant-rows-matmul-f32"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let q = self.0;
        let (n, k) = q.shape().dims2()?;
        let level = crate::base::cpu::level();
        qgemm::cpu_fwd_xwt("dequantized-rows matmul", s, l, n, k, |x, m, y| {
            with_dequantized_rows(q, |row| {
                super::f32mm::xwt_rows(level, x, m, row, n, k, y);
                Ok(())
            })?
            .with_context(|| format!("no row dequantizer for a {:?} weight", q.dtype()))
        })
    }
}

/// `data` as GGML blocks of type `T`, where its length and alignment allow.
fn as_blocks<T: candle_core::quantized::k_quants::GgmlType>(data: &[u8]) -> Option<&[T]> {
    let size = std::mem::size_of::<T>();
    if data.len() % size != 0 || (data.as_ptr() as usize) % std::mem::align_of::<T>() != 0 {
        return None;
    }
    // SAFETY: length and alignment checked above; the block types are plain old data
    // (`#[repr(C)]` structs of integers and f16) and any bit pattern is a valid value.
    Some(unsafe { std::slice::from_raw_parts(data.as_ptr() as *const T, data.len() / size) })
}

/// Calls `f` with a function that writes row `r` of the 2-d host matrix `q` (`[n, k]`),
/// dequantized, into its `k`-value output, by the code [`dequantize_par`] runs (so the same bits),
/// and returns what `f` returns; `None` (without calling `f`) where `dequantize_par` leaves the
/// tensor to candle (other block types, other devices).
pub fn with_dequantized_rows<R>(q: &QTensor, f: impl FnOnce(&(dyn Fn(usize, &mut [f32]) + Sync)) -> Result<R>) -> Result<Option<R>> {
    use candle_core::quantized::k_quants::{BlockQ4K, BlockQ5K, BlockQ6K, GgmlType};
    use candle_core::quantized::GgmlDType;
    if q.shape().rank() != 2 || dequant_path(q.device().location(), q.dtype(), 2) == DequantPath::Candle {
        return Ok(None);
    }
    let (n, k) = q.shape().dims2()?;
    fn rows_of<T: GgmlType + Sync, R>(data: &[u8], n: usize, k: usize, f: impl FnOnce(&(dyn Fn(usize, &mut [f32]) + Sync)) -> Result<R>) -> Result<R> {
        let b = as_blocks::<T>(data).filter(|b| k % T::BLCK_SIZE == 0 && b.len() * T::BLCK_SIZE == n * k);
        let b = b.with_context(|| format!("{:?} matrix {n} x {k}: {} bytes are not whole rows of {}-value blocks", T::DTYPE, data.len(), T::BLCK_SIZE))?;
        let per = k / T::BLCK_SIZE;
        f(&|r, out| T::to_float(&b[r * per..(r + 1) * per], out))
    }
    Ok(Some(match q.dtype() {
        GgmlDType::Q8_0 => {
            let (_, _, data) = qgemm::q8_0_rows(q)?;
            let rb = qgemm::row_bytes(k);
            f(&|r, out| qgemm::dequant_blocks(&data[r * rb..(r + 1) * rb], out))?
        }
        GgmlDType::Q4K => rows_of::<BlockQ4K, R>(&q.data()?, n, k, f)?,
        GgmlDType::Q5K => rows_of::<BlockQ5K, R>(&q.data()?, n, k, f)?,
        GgmlDType::Q6K => rows_of::<BlockQ6K, R>(&q.data()?, n, k, f)?,
        _ => return Ok(None),
    }))
}

/// Which dequantizer [`dequantize_par`] uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DequantPath {
    /// [`qgemm::dequantize`]: the kit's Q8_0 kernel on all cores (host memory).
    Q8_0Parallel,
    /// rayon over chunks of Q4_K / Q5_K / Q6_K blocks with candle's `to_float` (host memory).
    KQuantParallel,
    /// candle's `QTensor::dequantize` on the tensor's own device: one CPU thread, or candle's
    /// dequantize kernels on a GPU (the data never leaves the device).
    Candle,
}

/// The dispatch decision of [`dequantize_par`], on plain values so that it is testable without a
/// GPU: the parallel kernels read host memory, so a tensor on any other device goes to candle.
pub fn dequant_path(loc: DeviceLocation, dtype: candle_core::quantized::GgmlDType, rank: usize) -> DequantPath {
    use candle_core::quantized::GgmlDType;
    match (loc, dtype) {
        (DeviceLocation::Cpu, GgmlDType::Q8_0) if qgemm::kernel_applies(loc, dtype, rank) => DequantPath::Q8_0Parallel,
        (DeviceLocation::Cpu, GgmlDType::Q4K | GgmlDType::Q5K | GgmlDType::Q6K) => DequantPath::KQuantParallel,
        _ => DequantPath::Candle,
    }
}

/// How [`Linear::forward`] multiplies by a quantized weight on the inference path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantPath {
    /// `model.quantized_inference = false`: the dense copy ([`Weight::dense`]), exact.
    Dense,
    /// [`qgemm::Q8_0MatMul`]: the kit's CPU Q8_0 kernel, for [`Q8_0_MIN_ROWS`] up to
    /// [`DENSE_MIN_ROWS`] f32 rows (batched decode).
    Q8_0Kernel,
    /// [`q8_packed`]: the repacked Q8_0 weight and the tiled VNNI kernel, on CPUs with AVX-512
    /// VNNI: every decode batch below [`DENSE_MIN_ROWS`] rows, and prefill too with
    /// `Model::int8_prefill` (activations quantized to 8 bits per 32-value block).
    Q8_0Packed,
    /// [`kquant`]: a Q4_K / Q6_K weight read in its GGUF blocks against int8 activations, on CPUs
    /// with AVX-512 VNNI, for prefill ([`DENSE_MIN_ROWS`] rows or more) with `Model::int8_prefill`.
    KQuantInt8,
    /// f32 activations by the dequantized weight, [`DENSE_MIN_ROWS`] rows or more (prefill): on
    /// CPUs with AVX-512, [`DequantRowsMatMul`] (each task dequantizes its rows into a buffer in
    /// cache); elsewhere a transient dequantized copy ([`dequantize_par`], on the weight's device)
    /// and a gemm.
    DequantGemm,
    /// candle's `QMatMul` on the weight's device (CPU: int8 dot products; CUDA: candle's
    /// quantized mat-vec and matmul kernels).
    CandleQMatMul,
}

/// The dispatch decision of [`Linear::forward`] for a quantized weight of GGML type `w` (rank
/// `w_rank`) on `loc`, given the input dtype, its number of rows, whether exact dense inference
/// was asked for, whether prefill may quantize its activations to int8 (`Model::int8_prefill`)
/// and the CPU's kernel level ([`crate::base::cpu::level`]). On a GPU the kit's Q8_0 CPU kernels
/// never apply ([`qgemm::kernel_applies`]); the other paths run candle's kernels for that device.
pub fn quant_path(
    loc: DeviceLocation,
    w: candle_core::quantized::GgmlDType,
    w_rank: usize,
    x: DType,
    rows: usize,
    dense: bool,
    int8_prefill: bool,
    level: SimdLevel,
) -> QuantPath {
    let q8_cpu = x == DType::F32 && qgemm::kernel_applies(loc, w, w_rank);
    if dense {
        QuantPath::Dense
    } else if q8_cpu && level >= SimdLevel::Avx512Vnni && (rows < DENSE_MIN_ROWS || int8_prefill) {
        QuantPath::Q8_0Packed
    } else if x == DType::F32
        && kquant::kernel_applies(loc, w, w_rank)
        && level >= SimdLevel::Avx512Vnni
        && rows >= DENSE_MIN_ROWS
        && int8_prefill
    {
        QuantPath::KQuantInt8
    } else if q8_cpu && (Q8_0_MIN_ROWS..DENSE_MIN_ROWS).contains(&rows) {
        QuantPath::Q8_0Kernel
    } else if rows >= DENSE_MIN_ROWS {
        QuantPath::DequantGemm
    } else {
        QuantPath::CandleQMatMul
    }
}

/// A linear layer with optional bias.
#[derive(Clone)]
pub struct Linear {
    pub weight: Weight,
    pub bias: Option<Tensor>,
    /// The HF module path (`model.layers.3.self_attn.q_proj`): LoRA adapters are keyed by it.
    pub name: String,
}

impl Linear {
    pub fn in_dim(&self) -> usize {
        self.weight.dims()[1]
    }
    pub fn out_dim(&self) -> usize {
        self.weight.dims()[0]
    }
    /// The same layer with its output rows reordered: output `r` of the result is output
    /// `perm[r]` of `self` (weight rows and bias). Quantized weights are permuted row by row
    /// in their encoded form (a row is a whole number of blocks), so nothing is rounded.
    pub fn permute_rows(self, perm: &[usize]) -> Result<Linear> {
        let out = self.out_dim();
        anyhow::ensure!(
            perm.len() == out && perm.iter().all(|&p| p < out),
            "{}: a row permutation of {} entries for {out} rows",
            self.name,
            perm.len()
        );
        let idx: Vec<u32> = perm.iter().map(|&p| p as u32).collect();
        let weight = match self.weight {
            Weight::Dense(w, _) => {
                let i = Tensor::new(idx.as_slice(), w.device())?;
                Weight::from_dense(w.index_select(&i, 0)?)
            }
            Weight::Quant { q, dtype, .. } => {
                let data = q.data()?;
                anyhow::ensure!(data.len() % out == 0, "{}: {} bytes are not {out} whole rows", self.name, data.len());
                let row = data.len() / out;
                let mut dst = Vec::with_capacity(data.len());
                for &p in perm {
                    dst.extend_from_slice(&data[p * row..(p + 1) * row]);
                }
                let dims = q.shape().dims().to_vec();
                let t = candle_core::quantized::ggml_file::qtensor_from_ggml(q.dtype(), &dst, dims, &q.device())?;
                Weight::quant(Arc::new(t), dtype)?
            }
        };
        let bias = match self.bias {
            Some(b) => {
                let i = Tensor::new(idx.as_slice(), b.device())?;
                Some(b.index_select(&i, 0)?)
            }
            None => None,
        };
        Ok(Linear { weight, bias, name: self.name })
    }
    /// `grad`: differentiable (frozen-weight) path; `dense`: use dense weights even when a
    /// quantized copy exists (exact f32 inference).
    pub fn forward(&self, x: &Tensor, grad: bool, dense: bool) -> Result<Tensor> {
        self.forward_with(x, grad, dense, false, ComputeDtype::F32)
    }

    /// [`Linear::forward`]; `int8_prefill`: on a CPU with AVX-512 VNNI, prefill multiplies by a
    /// Q8_0 weight with int8 activations too (see [`quant_path`]); `compute`: the gradient path's
    /// arithmetic (`Model::compute_dtype`).
    pub fn forward_with(&self, x: &Tensor, grad: bool, dense: bool, int8_prefill: bool, compute: ComputeDtype) -> Result<Tensor> {
        let run = || -> Result<Tensor> {
            Ok(match (&self.weight, grad) {
            (Weight::Quant { qmm, q, dense: cached, packed, dtype, .. }, false) => {
                let rows = x.elem_count() / self.in_dim().max(1);
                let level = crate::base::cpu::level();
                match quant_path(q.device().location(), q.dtype(), q.shape().rank(), x.dtype(), rows, dense, int8_prefill, level) {
                    QuantPath::Dense => x.broadcast_matmul(&self.weight.dense()?.t()?)?,
                    // Batched decode: each Q8_0 weight block loaded once for up to 8 rows.
                    QuantPath::Q8_0Kernel => x.contiguous()?.apply_op1_no_bwd(&qgemm::Q8_0MatMul(q.clone()))?,
                    QuantPath::Q8_0Packed => x.contiguous()?.apply_op1_no_bwd(&q8_packed::PackedMatMul(packed_q8(q, packed)?))?,
                    QuantPath::KQuantInt8 => x.contiguous()?.apply_op1_no_bwd(&kquant::KQuantMatMul(q))?,
                    QuantPath::DequantGemm if DequantRowsMatMul::applies(q, x.dtype(), *dtype, level) => match cached.get() {
                        // The dense copy exists (the gradient path made it): the same kernel reads
                        // it in place, to the same bits, with nothing to dequantize.
                        Some(w) => frozen_matmul(x, w)?,
                        None => x.contiguous()?.apply_op1_no_bwd(&DequantRowsMatMul(q))?,
                    },
                    QuantPath::DequantGemm => {
                        // Prefill: candle's quantized matmul re-reads every weight row per token;
                        // a transient f32 copy and a tiled gemm are several times faster.
                        let w = match cached.get() {
                            Some(w) => w.clone(),
                            None => dequantize_par(q)?.to_dtype(*dtype)?,
                        };
                        x.broadcast_matmul(&w.t()?)?
                    }
                    QuantPath::CandleQMatMul => {
                        let dt = x.dtype();
                        qmm.forward(&x.to_dtype(DType::F32)?)?.to_dtype(dt)?
                    }
                }
            }
            (w, true) => match compute {
                ComputeDtype::F32 => frozen_matmul(x, w.dense()?)?,
                ComputeDtype::Bf16 => frozen_matmul_bf16(x, w.bf16()?)?,
            },
            (Weight::Dense(w, _), false) => x.broadcast_matmul(&w.t()?)?,
            })
        };
        let y = run().with_context(|| format!("linear {}", self.name))?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    /// The packed Q8_0 weight, if the layer inside this forward call is that weight's product
    /// (plus the bias, if any) on [`QuantPath::Q8_0Packed`] for `x`: no gradient, no LoRA adapter
    /// of the call on it. [`Mlp::forward`] then runs the gate and up products as one op, and
    /// [`QkvProj`] its three projections.
    fn packed_q8_alone(&self, x: &Tensor, ctx: &FwdCtx) -> Result<Option<&q8_packed::PackedQ8>> {
        let Weight::Quant { q, packed, .. } = &self.weight else { return Ok(None) };
        if ctx.grad || ctx.lora_targets(&self.name) {
            return Ok(None);
        }
        let rows = x.elem_count() / self.in_dim().max(1);
        let path = quant_path(q.device().location(), q.dtype(), q.shape().rank(), x.dtype(), rows, ctx.dense, ctx.int8_prefill, crate::base::cpu::level());
        Ok(match path {
            QuantPath::Q8_0Packed => Some(packed_q8(q, packed)?),
            _ => None,
        })
    }

    /// The layer inside a forward call: the base output plus the deltas of the call's LoRA
    /// adapters that target this module (see [`FwdCtx::lora_delta`]).
    pub fn forward_ctx(&self, x: &Tensor, ctx: &FwdCtx) -> Result<Tensor> {
        let y = self.forward_with(x, ctx.grad, ctx.dense, ctx.int8_prefill, ctx.compute)?;
        ctx.lora_delta(&self.name, x, y).with_context(|| format!("LoRA on {}", self.name))
    }
}

/// A Q8_0 weight repacked for [`q8_packed`] (made on first use, shared by clones).
fn packed_q8<'a>(q: &QTensor, packed: &'a OnceLock<q8_packed::PackedQ8>) -> Result<&'a q8_packed::PackedQ8> {
    if packed.get().is_none() {
        let _ = packed.set(q8_packed::PackedQ8::from_qtensor(q)?);
    }
    Ok(packed.get().expect("set above"))
}

/// RMSNorm (`x / rms(x) * w`). Gemma's `(1 + w)` is folded into `w` at load time.
#[derive(Clone)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
    /// Gemma: `weight` is kept in f32 and multiplies the f32 normalized value before the cast
    /// back to the model dtype (HF `Gemma2RMSNorm`: `(x * (1 + w)).to(dtype)`); Llama-style norms
    /// cast first and multiply in the model dtype (`w * x.to(dtype)`). Identical in f32.
    pub scale_in_f32: bool,
}

impl RmsNorm {
    pub fn forward(&self, x: &Tensor, grad: bool) -> Result<Tensor> {
        if fused::applies(&[x, &self.weight]) {
            // One op with its backward (`fused::rms_norm`): the same expressions as below, and
            // bit for bit those of `candle_nn::ops::rms_norm` (the inference path's op until
            // now), but on candle's worker pool instead of rayon's: rayon's threads would share
            // the cores with the pool's workers, which spin between ops.
            return fused::rms_norm(x, &self.weight, self.eps);
        }
        if grad || x.dtype() != DType::F32 {
            // The differentiable path: computed in f32 (f64 for an f64 model).
            let dt = x.dtype();
            let x32 = if dt == DType::F64 { x.clone() } else { x.to_dtype(DType::F32)? };
            let ms = x32.sqr()?.mean_keepdim(D::Minus1)?;
            let y = x32.broadcast_div(&(ms + self.eps)?.sqrt()?)?;
            if self.scale_in_f32 {
                Ok(y.broadcast_mul(&self.weight.to_dtype(DType::F32)?)?.to_dtype(dt)?)
            } else {
                Ok(y.to_dtype(dt)?.broadcast_mul(&self.weight.to_dtype(dt)?)?)
            }
        } else {
            let w = self.weight.to_dtype(DType::F32)?;
            Ok(candle_nn::ops::rms_norm(&x.contiguous()?, &w, self.eps as f32)?)
        }
    }
}

/// LayerNorm with weight and bias (GPT-2, GPT-NeoX).
#[derive(Clone)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dt = x.dtype();
        let x = x.to_dtype(DType::F32)?;
        let mean = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        let y = xc.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        Ok(y.to_dtype(dt)?.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)?)
    }
}

#[derive(Clone)]
pub enum Norm {
    Rms(RmsNorm),
    Layer(LayerNorm),
}

impl Norm {
    pub fn forward(&self, x: &Tensor, grad: bool) -> Result<Tensor> {
        match self {
            Norm::Rms(n) => n.forward(x, grad),
            Norm::Layer(n) => n.forward(x),
        }
    }
}

/// Rotary position tables (`cos`, `sin`: `[max_pos, rot_dim/2]`), "rotate half" (NeoX) layout.
#[derive(Clone)]
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
    pub rot_dim: usize,
}

impl Rope {
    /// `inv_freq` has `rot_dim/2` entries (already scaled for llama3-style rope scaling).
    pub fn new(inv_freq: &[f32], max_pos: usize, device: &Device, dtype: DType) -> Result<Self> {
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(max_pos * half);
        let mut sin = Vec::with_capacity(max_pos * half);
        for p in 0..max_pos {
            for f in inv_freq {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (max_pos, half), device)?.to_dtype(dtype)?,
            sin: Tensor::from_vec(sin, (max_pos, half), device)?.to_dtype(dtype)?,
            rot_dim: half * 2,
        })
    }

    /// Standard inverse frequencies `1 / theta^(2i/rot_dim)`.
    pub fn default_inv_freq(rot_dim: usize, theta: f64) -> Vec<f32> {
        (0..rot_dim / 2).map(|i| (1.0 / theta.powf(2.0 * i as f64 / rot_dim as f64)) as f32).collect()
    }

    /// `(cos, sin)` gathered for `positions` (`[B, T]` u32): each `[B, T, rot_dim/2]`.
    pub fn tables(&self, positions: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, t) = positions.dims2()?;
        let max = self.cos.dim(0)?;
        let flat = positions.flatten_all()?;
        let top = flat.max(0)?.to_scalar::<u32>()? as usize;
        anyhow::ensure!(top < max, "position {top} exceeds the model's maximum of {max} positions");
        let cos = self.cos.index_select(&flat, 0)?.reshape((b, t, ()))?;
        let sin = self.sin.index_select(&flat, 0)?.reshape((b, t, ()))?;
        Ok((cos, sin))
    }

    /// Applies rotary embedding to `x` `[B, H, T, hd]`; only the first `rot_dim` dims rotate.
    pub fn apply(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, grad: bool) -> Result<Tensor> {
        let hd = x.dim(D::Minus1)?;
        if self.rot_dim < hd {
            let rot = x.narrow(D::Minus1, 0, self.rot_dim)?;
            let pass = x.narrow(D::Minus1, self.rot_dim, hd - self.rot_dim)?;
            let rot = self.apply(&rot.contiguous()?, cos, sin, grad)?;
            // cat along the last dim can leave odd strides (T = 1): matmul needs contiguity.
            return Ok(Tensor::cat(&[&rot, &pass.contiguous()?], D::Minus1)?.contiguous()?);
        }
        if fused::applies(&[x, cos, sin]) && (grad || x.dim(2)? > 1) {
            // Also at inference, except for one new token (candle's loop, serial): bit for bit
            // `candle_nn::rotary_emb::rope`, on candle's worker pool instead of rayon's (see
            // `RmsNorm::forward`).
            return fused::rope(x, cos, sin);
        }
        if grad {
            let cos = Tensor::cat(&[cos, cos], D::Minus1)?.unsqueeze(1)?;
            let sin = Tensor::cat(&[sin, sin], D::Minus1)?.unsqueeze(1)?;
            let half = hd / 2;
            let x1 = x.narrow(D::Minus1, 0, half)?;
            let x2 = x.narrow(D::Minus1, half, hd - half)?;
            let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
            Ok((x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?)?)
        } else {
            Ok(candle_nn::rotary_emb::rope(&x.contiguous()?, &cos.contiguous()?, &sin.contiguous()?)?)
        }
    }
}

/// Softmax over the last dim (fused on the inference path).
pub fn softmax(x: &Tensor, grad: bool) -> Result<Tensor> {
    if grad {
        Ok(candle_nn::ops::softmax(x, D::Minus1)?)
    } else {
        Ok(candle_nn::ops::softmax_last_dim(&x.contiguous()?)?)
    }
}

/// The query/key/value projections: separate matrices (Llama family) or one fused matrix whose
/// output rows are `[q (n_heads*head_dim) | k (n_kv*head_dim) | v (n_kv*head_dim)]` (GPT-2's
/// `c_attn`; GPT-NeoX's `query_key_value` after its per-head interleave is undone at load time).
#[derive(Clone)]
pub enum QkvProj {
    Split { q: Linear, k: Linear, v: Linear },
    Fused(Linear),
}

impl QkvProj {
    /// `(q, k, v)` projections of `x` `[B, T, d]`, each `[B, T, heads*head_dim]`.
    fn forward(&self, x: &Tensor, ctx: &FwdCtx, q_dim: usize, kv_dim: usize) -> Result<(Tensor, Tensor, Tensor)> {
        Ok(match self {
            QkvProj::Split { q, k, v } => {
                if let (Some(pq), Some(pk), Some(pv)) = (q.packed_q8_alone(x, ctx)?, k.packed_q8_alone(x, ctx)?, v.packed_q8_alone(x, ctx)?) {
                    // All three on the packed Q8_0 kernel: one op (`q8_packed::side_by_side_at`,
                    // the same bits as three), then each bias as `Linear::forward_with` adds it.
                    let y = x.contiguous()?.apply_op1_no_bwd(&q8_packed::PackedSideBySide(vec![pq, pk, pv]))?;
                    let part = |l: &Linear, at: usize, n: usize| -> Result<Tensor> {
                        let y = y.narrow(D::Minus1, at, n)?;
                        Ok(match &l.bias {
                            Some(b) => y.broadcast_add(b)?,
                            None => y,
                        })
                    };
                    let (nq, nk, nv) = (pq.rows(), pk.rows(), pv.rows());
                    return Ok((part(q, 0, nq)?, part(k, nq, nk)?, part(v, nq + nk, nv)?));
                }
                (q.forward_ctx(x, ctx)?, k.forward_ctx(x, ctx)?, v.forward_ctx(x, ctx)?)
            }
            QkvProj::Fused(l) => {
                let y = l.forward_ctx(x, ctx)?;
                (
                    y.narrow(D::Minus1, 0, q_dim)?,
                    y.narrow(D::Minus1, q_dim, kv_dim)?,
                    y.narrow(D::Minus1, q_dim + kv_dim, kv_dim)?,
                )
            }
        })
    }

    /// The projection layers (LoRA targets): `[q, k, v]` or the one fused matrix.
    pub fn linears(&self) -> Vec<&Linear> {
        match self {
            QkvProj::Split { q, k, v } => vec![q, k, v],
            QkvProj::Fused(l) => vec![l],
        }
    }

    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        match self {
            QkvProj::Split { q, k, v } => vec![q, k, v],
            QkvProj::Fused(l) => vec![l],
        }
    }
}

/// Multi-head attention with GQA, optional q/k norms, logit soft-capping and sliding window.
/// Rotary embedding is applied when the model has one ([`FwdCtx::rope`]); GPT-2 has none.
#[derive(Clone)]
pub struct Attention {
    pub qkv: QkvProj,
    pub o: Linear,
    pub q_norm: Option<RmsNorm>,
    pub k_norm: Option<RmsNorm>,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Multiplies q·k (default `1/sqrt(head_dim)`; Gemma-2: `query_pre_attn_scalar^-1/2`).
    pub scale: f64,
    /// Gemma-2: `softcap * tanh(scores / softcap)` before the mask.
    pub softcap: Option<f64>,
    /// Keys further back than this many positions (the query included) are masked.
    pub sliding_window: Option<usize>,
}

impl Attention {
    /// `x`: `[B, T, d]` (already normed). Updates `kv` (the layer's cache entry) in place.
    pub fn forward(
        &self,
        x: &Tensor,
        ctx: &FwdCtx,
        kv: &mut Option<(Tensor, Tensor)>,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let g = ctx.grad;
        let heads = |y: Tensor, n: usize| -> Result<Tensor> {
            Ok(y.reshape((b, t, n, self.head_dim))?.transpose(1, 2)?.contiguous()?)
        };
        let (q, k, v) = self.qkv.forward(x, ctx, self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim)?;
        let mut q = heads(q, self.n_heads)?;
        let mut k = heads(k, self.n_kv_heads)?;
        let v = heads(v, self.n_kv_heads)?;
        if let Some(n) = &self.q_norm {
            q = n.forward(&q, g)?;
        }
        if let Some(n) = &self.k_norm {
            k = n.forward(&k, g)?;
        }
        if let (Some(rope), Some(cos), Some(sin)) = (ctx.rope, &ctx.cos, &ctx.sin) {
            q = rope.apply(&q, cos, sin, g)?;
            k = rope.apply(&k, cos, sin, g)?;
        }
        let (k, v) = match kv.take() {
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
            None => (k, v),
        };
        if ctx.keep_kv {
            *kv = Some((k.detach(), v.detach()));
        }
        // GQA without copying keys and values per query head: query head `h` reads kv head
        // `h / rep`, so `[B, H, t, hd]` is `[B, n_kv, rep * t, hd]` in memory, and one matmul per
        // kv head scores all of its query heads (HF's `repeat_kv` copies K and V `rep` times).
        let (rep, kv_h, hd) = (self.n_heads / self.n_kv_heads, self.n_kv_heads, self.head_dim);
        if g && self.softcap.is_none() && !ctx.wants_attention() && fused::applies(&[&q, &k, &v]) {
            // One op with its backward (`fused::attention`): the same math as below.
            let y = fused::attention(&q, &k, &v, &ctx.mask(self.sliding_window)?, self.scale)?;
            let y = y.transpose(1, 2)?.reshape((b, t, self.n_heads * hd))?;
            return self.o.forward_ctx(&y, ctx);
        }
        if !g && self.softcap.is_none() && !ctx.wants_attention() && fused::applies(&[&q, &k, &v]) {
            // Inference on host f32: the same math on the worker pool, no `[B, H, T, S]` tensors.
            let y = fused::attention_infer(&q, &k, &v, &ctx.mask(self.sliding_window)?, self.scale)?;
            return self.o.forward_ctx(&y, ctx);
        }
        let s = k.dim(2)?;
        let grouped = q.reshape((b, kv_h, rep * t, hd))?;
        let mut att = (grouped.matmul(&k.t()?)? * self.scale)?.reshape((b, self.n_heads, t, s))?;
        if let Some(c) = self.softcap {
            att = ((att / c)?.tanh()? * c)?;
        }
        let mask = ctx.mask(self.sliding_window)?;
        let att = att.broadcast_add(&mask)?;
        let scores = ctx.wants_attention().then(|| att.clone());
        let att = softmax(&att, g)?;
        if let Some(scores) = scores {
            ctx.record_attention(&scores, &att)?;
        }
        let att = att.reshape((b, kv_h, rep * t, s))?;
        let y = att.matmul(&v)?.reshape((b, self.n_heads, t, hd))?;
        let y = y.transpose(1, 2)?.reshape((b, t, self.n_heads * hd))?;
        self.o.forward_ctx(&y, ctx)
    }
}

/// Activation of a gated or plain MLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    /// `silu` (Llama, Qwen).
    Silu,
    /// The tanh approximation of GELU: HF `gelu_pytorch_tanh` (Gemma-2), `gelu_new` (GPT-2).
    GeluTanh,
    /// Exact (erf) GELU: HF `gelu` (GPT-NeoX / Pythia).
    GeluErf,
}

impl Act {
    /// From an HF `hidden_act` / `hidden_activation` / `activation_function` name.
    pub fn from_hf(name: &str) -> Result<Self> {
        Ok(match name {
            "silu" | "swish" => Act::Silu,
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" | "gelu_tanh" => Act::GeluTanh,
            "gelu" => Act::GeluErf,
            other => anyhow::bail!(
                "activation {other:?} is not supported (known: silu, gelu, gelu_new, gelu_pytorch_tanh)"
            ),
        })
    }
}

impl Act {
    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Act::Silu => x.silu()?,
            Act::GeluTanh => x.gelu()?,
            Act::GeluErf => x.gelu_erf()?,
        })
    }
}

/// `down(act(gate(x)) * up(x))`, or `down(act(up(x)))` when there is no gate.
#[derive(Clone)]
pub struct Mlp {
    pub gate: Option<Linear>,
    pub up: Linear,
    pub down: Linear,
    pub act: Act,
}

impl Mlp {
    pub fn forward(&self, x: &Tensor, ctx: &FwdCtx) -> Result<Tensor> {
        let unbiased = self.gate.as_ref().is_some_and(|g| g.bias.is_none()) && self.up.bias.is_none();
        if let (Some(gate), Act::Silu, true) = (&self.gate, self.act, unbiased) {
            if let (Some(g), Some(u)) = (gate.packed_q8_alone(x, ctx)?, self.up.packed_q8_alone(x, ctx)?) {
                // Both products on the packed Q8_0 kernel: one op, the same bits as the two
                // products and `fused::swiglu` below (`q8_packed::swiglu_at`).
                let h = x.contiguous()?.apply_op1_no_bwd(&q8_packed::PackedSwiGlu(g, u))?;
                return self.down.forward_ctx(&h, ctx);
            }
        }
        let up = self.up.forward_ctx(x, ctx)?;
        let h = match &self.gate {
            Some(g) => {
                let g = g.forward_ctx(x, ctx)?;
                if self.act == Act::Silu && fused::swiglu_applies(&g, &up) {
                    fused::swiglu(&g, &up)?
                } else {
                    (self.act.apply(&g)? * up)?
                }
            }
            None => self.act.apply(&up)?,
        };
        self.down.forward_ctx(&h, ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::GgmlDType;

    const CUDA: DeviceLocation = DeviceLocation::Cuda { gpu_id: 0 };

    /// On the CPU, each row count takes the path the constants document; on a GPU the same weight
    /// never reaches the kit's host kernel (Q8_0) and stays on candle's kernels for the device.
    #[test]
    fn quant_path_by_device_and_rows() {
        use QuantPath::*;
        use SimdLevel::{Avx2, Avx512Vnni};
        let cpu = DeviceLocation::Cpu;
        let q8 = GgmlDType::Q8_0;
        // Without VNNI (and with it where only the old paths apply): candle at one row, the
        // 8-row Q8_0 kernel for batched decode, a dequantized copy and gemm for prefill.
        for int8 in [false, true] {
            let path = |loc, w, x, rows, dense| quant_path(loc, w, 2, x, rows, dense, int8, Avx2);
            assert_eq!(path(cpu, q8, DType::F32, 1, false), CandleQMatMul);
            assert_eq!(path(cpu, q8, DType::F32, Q8_0_MIN_ROWS, false), Q8_0Kernel);
            assert_eq!(path(cpu, q8, DType::F32, DENSE_MIN_ROWS - 1, false), Q8_0Kernel);
            assert_eq!(path(cpu, q8, DType::F32, DENSE_MIN_ROWS, false), DequantGemm, "int8 prefill needs VNNI");
            assert_eq!(path(cpu, q8, DType::BF16, 4, false), CandleQMatMul, "the Q8_0 kernel takes f32 rows only");
            assert_eq!(path(cpu, GgmlDType::Q4K, DType::F32, 4, false), CandleQMatMul);
            assert_eq!(path(cpu, q8, DType::F32, 4, true), Dense);
        }
        // With VNNI: the packed kernel for every decode batch, and for prefill when asked.
        let vnni = |w, x, rows, dense, int8| quant_path(cpu, w, 2, x, rows, dense, int8, Avx512Vnni);
        for rows in [1, Q8_0_MIN_ROWS, DENSE_MIN_ROWS - 1] {
            assert_eq!(vnni(q8, DType::F32, rows, false, false), Q8_0Packed, "{rows} rows");
        }
        assert_eq!(vnni(q8, DType::F32, DENSE_MIN_ROWS, false, false), DequantGemm, "f32 prefill is the default");
        assert_eq!(vnni(q8, DType::F32, DENSE_MIN_ROWS, false, true), Q8_0Packed);
        assert_eq!(vnni(q8, DType::F32, 512, true, true), Dense, "dense inference wins");
        assert_eq!(vnni(q8, DType::BF16, 4, false, true), CandleQMatMul);
        for k in [GgmlDType::Q4K, GgmlDType::Q6K] {
            assert_eq!(vnni(k, DType::F32, 64, false, true), KQuantInt8, "{k:?}: int8 prefill");
            assert_eq!(vnni(k, DType::F32, 64, false, false), DequantGemm, "{k:?}: f32 prefill is the default");
            assert_eq!(vnni(k, DType::F32, DENSE_MIN_ROWS - 1, false, true), CandleQMatMul, "{k:?}: decode stays on candle");
            assert_eq!(vnni(k, DType::BF16, 64, false, true), DequantGemm, "{k:?}: f32 rows only");
            assert_eq!(quant_path(CUDA, k, 2, DType::F32, 64, false, true, Avx512Vnni), DequantGemm, "{k:?}: host kernel only");
        }
        assert_eq!(vnni(GgmlDType::Q5K, DType::F32, 64, false, true), DequantGemm, "Q5_K has no int8 kernel");
        for x in [DType::F32, DType::BF16] {
            for (int8, level) in [(false, Avx2), (true, Avx512Vnni)] {
                let path = |rows, dense| quant_path(CUDA, q8, 2, x, rows, dense, int8, level);
                assert_eq!(path(1, false), CandleQMatMul);
                assert_eq!(path(4, false), CandleQMatMul, "{x:?}: no host kernel on a GPU weight");
                assert_eq!(path(DENSE_MIN_ROWS, false), DequantGemm);
                assert_eq!(path(4, true), Dense);
            }
        }
    }

    /// The parallel dequantizers read host memory: CPU Q8_0 and K-quants use them, anything on a
    /// GPU (and other block types) goes to candle's dequantizer for its device.
    /// The bf16 frozen linear, packed (the kit's kernel) and as a bf16 tensor (candle: other
    /// CPUs, GPUs): the forward and `dL/dx` both agree with f32 `x W^T` and `g W` to bf16
    /// rounding, with each other, and neither gives `W` a gradient; a batch of 3-d input works.
    #[test]
    fn frozen_linear_bf16_matches_f32_both_ways() {
        use candle_core::Var;
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.5, (40, 70), &dev).unwrap();
        let g = Tensor::randn(0f32, 1.0, (2, 5, 40), &dev).unwrap();
        let run = |f: &dyn Fn(&Tensor) -> Result<Tensor>| {
            let mut rng = crate::base::rng::Rng::new(7);
            let xv: Vec<f32> = (0..2 * 5 * 70).map(|_| rng.normal() as f32).collect();
            let x = Var::from_vec(xv, (2, 5, 70), &Device::Cpu).unwrap();
            let y = f(x.as_tensor()).unwrap();
            let grads = (y.clone() * &g).unwrap().sum_all().unwrap().backward().unwrap();
            (y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), grads.get(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap())
        };
        let exact = run(&|x| frozen_matmul(x, &w));
        let rel = |a: &[f32], b: &[f32]| {
            let num: f32 = a.iter().zip(b).map(|(p, q)| (p - q).powi(2)).sum::<f32>().sqrt();
            num / b.iter().map(|q| q * q).sum::<f32>().sqrt()
        };
        // bf16 operands: about 2^-9 relative per product, so ~3e-3 on these sums; never exact.
        let close = |a: &[f32], b: &[f32], what: &str| {
            let e = rel(a, b);
            assert!(e < 1e-2 && e > 1e-5, "{what}: relative error {e} (bf16 rounding expected)");
        };
        let mut outs = vec![];
        for packed in [true, false] {
            if packed && !bf16_packs(DeviceLocation::Cpu, crate::base::cpu::level()) {
                continue;
            }
            let wb = Arc::new(Bf16Weight::new(&w, packed).unwrap());
            let got = run(&|x| frozen_matmul_bf16(x, wb.clone()));
            close(&got.0, &exact.0, &format!("forward (packed {packed})"));
            close(&got.1, &exact.1, &format!("dL/dx (packed {packed})"));
            outs.push(got);
        }
        if let [p, t] = &outs[..] {
            assert!(rel(&p.0, &t.0) < 1e-2 && rel(&p.1, &t.1) < 1e-2, "packed vs tensor");
        }
    }

    #[test]
    fn dequant_path_by_device_and_type() {
        use DequantPath::*;
        let cpu = DeviceLocation::Cpu;
        assert_eq!(dequant_path(cpu, GgmlDType::Q8_0, 2), Q8_0Parallel);
        assert_eq!(dequant_path(cpu, GgmlDType::Q8_0, 3), Candle);
        for t in [GgmlDType::Q4K, GgmlDType::Q5K, GgmlDType::Q6K] {
            assert_eq!(dequant_path(cpu, t, 2), KQuantParallel, "{t:?}");
            assert_eq!(dequant_path(CUDA, t, 2), Candle, "{t:?}");
        }
        assert_eq!(dequant_path(cpu, GgmlDType::Q4_0, 2), Candle);
        assert_eq!(dequant_path(CUDA, GgmlDType::Q8_0, 2), Candle);
        assert_eq!(dequant_path(DeviceLocation::Metal { gpu_id: 0 }, GgmlDType::Q8_0, 2), Candle);
    }

    /// A quantized weight's bf16 packing, made row by row from its blocks, has the bits of the
    /// packing of its dequantized copy (Q8_0, Q4_K, Q5_K, Q6_K); other block types are left to
    /// `dequantize_par`.
    #[test]
    fn bf16_weight_from_quantized_rows_equals_packing_the_dense_copy() {
        use candle_core::quantized::GgmlDType;
        let mut rng = crate::base::rng::Rng::new(11);
        let (n, k) = (37, 512);
        let v: Vec<f32> = (0..n * k).map(|_| rng.normal() as f32).collect();
        let x = Tensor::from_vec(v, (n, k), &Device::Cpu).unwrap();
        for t in [GgmlDType::Q8_0, GgmlDType::Q4K, GgmlDType::Q5K, GgmlDType::Q6K] {
            let q = Arc::new(QTensor::quantize(&x, t).unwrap());
            let dense = dequantize_par(&q).unwrap();
            let rows = with_dequantized_rows(&q, |row| {
                let mut out = vec![f32::NAN; n * k];
                for (r, o) in out.chunks_exact_mut(k).enumerate() {
                    row(r, o);
                }
                Ok(out)
            })
            .unwrap()
            .expect("a host 2-d matrix of this type");
            assert_eq!(rows, dense.flatten_all().unwrap().to_vec1::<f32>().unwrap(), "{t:?} rows");
            if !bf16_packs(DeviceLocation::Cpu, crate::base::cpu::level()) {
                continue;
            }
            let w = Weight::quant(q.clone(), DType::F32).unwrap();
            let from_rows = w.bf16().unwrap();
            let from_dense = Bf16Weight::new(&dense, true).unwrap();
            match (&*from_rows, &from_dense) {
                (Bf16Weight::Packed { fwd: a, bwd: b, .. }, Bf16Weight::Packed { fwd: c, bwd: d, .. }) => {
                    assert!(a == c && b == d, "{t:?}: the packings differ")
                }
                _ => panic!("{t:?}: not packed"),
            }
        }
        let q4 = QTensor::quantize(&x, GgmlDType::Q4_0).unwrap();
        assert!(with_dequantized_rows(&q4, |_| Ok(())).unwrap().is_none(), "Q4_0 goes to candle");
    }

    /// The f32 prefill's product on a quantized weight, dequantized a task's rows at a time, gives
    /// the bits of the product by the whole dequantized matrix ([`dequantize_par`], then
    /// `f32mm::xwt`), for each block type it reads, on 3-d input; and is within f32 rounding of
    /// candle's matmul by that matrix.
    #[test]
    fn dequantized_rows_are_the_product_by_the_dequantized_weight() {
        let level = crate::base::cpu::level();
        let mut rng = crate::base::rng::Rng::new(11);
        for (t, n, k) in [(GgmlDType::Q8_0, 100, 96), (GgmlDType::Q4K, 53, 4864), (GgmlDType::Q6K, 7, 256), (GgmlDType::Q5K, 60, 256)] {
            let wv: Vec<f32> = (0..n * k).map(|_| rng.normal() as f32).collect();
            let q = QTensor::quantize(&Tensor::from_vec(wv, (n, k), &Device::Cpu).unwrap(), t).unwrap();
            if !DequantRowsMatMul::applies(&q, DType::F32, DType::F32, level) {
                eprintln!("{t:?}: no AVX-512 here (level {level}): the transient copy and the gemm run");
                continue;
            }
            let m = 2 * 37;
            let xv: Vec<f32> = (0..m * k).map(|_| rng.normal() as f32).collect();
            let x = Tensor::from_vec(xv.clone(), (2, 37, k), &Device::Cpu).unwrap();
            let got = x.apply_op1_no_bwd(&DequantRowsMatMul(&q)).unwrap();
            assert_eq!(got.dims(), &[2, 37, n]);
            let got: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
            let w = dequantize_par(&q).unwrap();
            let wf: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
            let mut want = vec![0f32; m * n];
            super::super::f32mm::xwt(level, &xv, m, &wf, n, k, &mut want);
            assert_eq!(got, want, "{t:?}");
            let gemm: Vec<f32> = x.broadcast_matmul(&w.t().unwrap()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let worst = got.iter().zip(&gemm).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-3, "{t:?}: {worst} from candle's matmul");
            // A layer's f32 prefill: the same bits before and after its dense copy exists (the
            // gradient path makes it; the prefill then reads it instead of dequantizing).
            let layer = Linear { weight: Weight::quant(Arc::new(q), DType::F32).unwrap(), bias: None, name: "test".into() };
            let prefill = || -> Vec<f32> {
                let y = layer.forward_with(&x, false, false, false, ComputeDtype::F32).unwrap();
                y.flatten_all().unwrap().to_vec1().unwrap()
            };
            let differ = |y: Vec<f32>| y.iter().zip(&got).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
            assert_eq!(differ(prefill()), 0, "{t:?}: f32 prefill without the dense copy: values that differ");
            layer.weight.dense().unwrap();
            assert_eq!(differ(prefill()), 0, "{t:?}: f32 prefill from the dense copy: values that differ");
        }
    }

    /// `dequantize_par` agrees with candle on every path it takes on the CPU (the GPU path *is*
    /// candle's), so the dispatch cannot change a result.
    #[test]
    fn dequantize_par_equals_candle_on_each_cpu_path() {
        let mut rng = crate::base::rng::Rng::new(7);
        let v: Vec<f32> = (0..4 * 512).map(|_| rng.normal() as f32).collect();
        let x = Tensor::from_vec(v, (4, 512), &Device::Cpu).unwrap();
        for (t, path) in [
            (GgmlDType::Q8_0, DequantPath::Q8_0Parallel),
            (GgmlDType::Q6K, DequantPath::KQuantParallel),
            (GgmlDType::Q4_0, DequantPath::Candle),
        ] {
            let q = QTensor::quantize(&x, t).unwrap();
            assert_eq!(dequant_path(q.device().location(), q.dtype(), q.shape().rank()), path);
            let got: Vec<f32> = dequantize_par(&q).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let want: Vec<f32> = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(got, want, "{t:?}");
        }
    }
}
