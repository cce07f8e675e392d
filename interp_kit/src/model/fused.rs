//! Fused differentiable ops for the gradient path on host f32 tensors: each forward is paired
//! with its backward, and each is tested against candle's composed ops (values and gradients,
//! through candle's autograd) in this file.
//!
//! Why: candle records every elementary op of a composed expression as a graph node, and its
//! backward pass allocates a zero tensor for each node's gradient and adds into it. For the
//! embedded model that is ~60 full-size tensors per layer (the attention softmax alone is eight
//! ops of `[B, H, T, S]`, whose max has its own backward). One op per expression keeps the graph
//! to the tensors the math needs.
//!
//! | op | replaces (gradient path) | where |
//! |---|---|---|
//! | [`rms_norm`] | `x / sqrt(mean(x²) + eps) * w`: seven ops | [`super::layers::RmsNorm`] |
//! | [`rope`] | NeoX "rotate half": cat, narrow, neg, two products, a sum | [`super::layers::Rope::apply`] |
//! | [`attention`] | scores, scale, mask, softmax, GQA value mix (the backward recomputes the probabilities) | [`super::layers::Attention`] |
//! | [`swiglu`] | `silu(g) * u` (also on the inference path) | [`super::layers::Mlp`] |
//! | [`attention_infer`] | the inference path's attention ops (no backward) | [`super::layers::Attention`] |
//! | `head_nll` | the output head, then the NLL of the targets (the `[n, V]` logits stay inside) | [`crate::grad`]'s loss |
//!
//! They run on candle's worker pool (the kit's CPU kernels use it too), not on rayon: candle's
//! pool workers spin for a while after each op, and rayon's threads would compete with them for
//! the cores. The attention is one task per query block with single-threaded `gemm` products;
//! the frozen f32 linear's products (`xwt_pooled`, `xw_pooled`) are split the same way.
//!
//! Each has an `*_applies` test of its inputs (host f32); elsewhere (f64 models, GPUs, bf16
//! models) the layers keep candle's composed ops.
use super::qgemm::SendPtr;
use crate::base::vmath;
use anyhow::Result;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Storage, Tensor};
use std::sync::Arc;

/// Whether every tensor is host f32 (what the fused ops take).
pub fn applies(ts: &[&Tensor]) -> bool {
    ts.iter().all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// The host f32 values of a tensor (made contiguous), read in place.
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> candle_core::Result<R>) -> candle_core::Result<R> {
    let t = t.contiguous()?;
    let (st, l) = t.storage_and_layout();
    match (&*st, l.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => f(&v[a..b]),
        _ => candle_core::bail!("fused op: host f32 tensors only"),
    }
}

/// The contiguous f32 slice of a storage.
fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        (CpuStorage::F32(_), None) => candle_core::bail!("{what}: input must be contiguous"),
        _ => candle_core::bail!("{what}: f32 input only, got {:?}", s.dtype()),
    }
}

/// Fills `K` outputs of `rows x width` on candle's worker pool, a block of whole rows per task:
/// `f(first_row, blocks)` writes every value of rows `first_row..` of every output (the blocks
/// are that long; they arrive unzeroed).
pub(crate) fn par_rows<const K: usize>(rows: usize, width: usize, f: impl Fn(usize, [&mut [f32]; K]) + Sync) -> [Vec<f32>; K] {
    const CHUNK: usize = 1 << 14;
    let per = (CHUNK / width.max(1)).max(1);
    let n = rows * width;
    // Not zeroed first (a `memset` on the calling thread: ~2 % of an int8 prefill, in SwiGLU's
    // output): every caller writes each value of its rows.
    let mut outs: [Vec<f32>; K] = std::array::from_fn(|_| super::qgemm::uninit(n));
    let ptrs: [SendPtr<f32>; K] = std::array::from_fn(|i| SendPtr(outs[i].as_mut_ptr()));
    candle_core::utils::barrier_pool().execute_chunked(rows.div_ceil(per), |ts| {
        let ps = &ptrs;
        for t in ts {
            let (r0, r1) = (t * per, rows.min((t + 1) * per));
            let (a, b) = (r0 * width, r1 * width);
            // SAFETY: rows r0..r1 of every output are written by this task alone.
            f(r0, std::array::from_fn(|i| unsafe { std::slice::from_raw_parts_mut(ps[i].0.add(a), b - a) }));
        }
    });
    outs
}

/// `[f(0), .., f(n - 1)]` on candle's worker pool, one item per task (for items that each cost
/// a long pass, e.g. a row of logits).
pub(crate) fn par_map(n: usize, f: impl Fn(usize) -> f32 + Sync) -> Vec<f32> {
    let mut out = vec![0f32; n];
    let p = SendPtr(out.as_mut_ptr());
    candle_core::utils::barrier_pool().execute_chunked(n, |items| {
        let p = &p;
        for i in items {
            // SAFETY: item i < n is written by this task alone.
            unsafe { *p.0.add(i) = f(i) };
        }
    });
    out
}

/// [`par_rows`] with rows of one element.
pub(crate) fn par_fill<const K: usize>(n: usize, f: impl Fn(usize, [&mut [f32]; K]) + Sync) -> [Vec<f32>; K] {
    par_rows(n, 1, f)
}

fn host(v: Vec<f32>, shape: impl Into<Shape>) -> candle_core::Result<Tensor> {
    Tensor::from_vec(v, shape.into(), &candle_core::Device::Cpu)
}

// ---------------------------------------------------------------------------------------------
// RMSNorm

/// `y = x / sqrt(mean(x²) + eps) * w` over the last dim, `w` frozen (no gradient): the
/// expressions of the composed path, in its order, with the row sum in f32.
struct RmsNormOp {
    /// `[d]`, host f32 (read in place).
    w: Tensor,
    eps: f32,
}

impl CustomOp1 for RmsNormOp {
    fn name(&self) -> &'static str {
        "rms-norm-fused"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice(s, l, "rms-norm")?;
        let d = self.w.elem_count();
        if l.dims().last() != Some(&d) {
            candle_core::bail!("rms-norm: input {:?} does not end in the weight's {d}", l.dims())
        }
        let [y] = with_f32(&self.w, |w| {
            Ok(par_rows(x.len() / d, d, |r0, [out]| {
                for (i, o) in out.chunks_exact_mut(d).enumerate() {
                    let xr = &x[(r0 + i) * d..(r0 + i + 1) * d];
                    let den = (xr.iter().map(|v| v * v).sum::<f32>() / d as f32 + self.eps).sqrt();
                    for ((o, &v), &w) in o.iter_mut().zip(xr).zip(w) {
                        *o = (v / den) * w;
                    }
                }
            }))
        })?;
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }
    /// `dx_j = (g_j w_j) / den - x_j (Σ_i g_i w_i x_i) / (d den³)`, `den = sqrt(mean(x²) + eps)`.
    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let d = self.w.elem_count();
        let dx = with_f32(x, |x| {
            with_f32(grad, |g| {
                with_f32(&self.w, |w| {
                    let [dx] = par_rows(x.len() / d, d, |r0, [out]| {
                        for (i, o) in out.chunks_exact_mut(d).enumerate() {
                            let (xr, gr) = (&x[(r0 + i) * d..(r0 + i + 1) * d], &g[(r0 + i) * d..(r0 + i + 1) * d]);
                            let den = (xr.iter().map(|v| v * v).sum::<f32>() / d as f32 + self.eps).sqrt();
                            let dot: f32 = xr.iter().zip(gr).zip(w).map(|((x, g), w)| g * w * x).sum();
                            let c = dot / (d as f32 * den * den * den);
                            for (((o, &x), &g), &w) in o.iter_mut().zip(xr).zip(gr).zip(w) {
                                *o = g * w / den - x * c;
                            }
                        }
                    });
                    Ok(dx)
                })
            })
        })?;
        host(dx, x.shape().clone()).map(Some)
    }
}

/// RMSNorm of `x` (`[.., d]`) with the frozen weight `w` (`[d]`), differentiable in `x`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    anyhow::ensure!(applies(&[x, w]) && w.rank() == 1, "rms-norm: host f32 input and a 1-d f32 weight, got {:?} and {:?}", x.dtype(), w.dims());
    Ok(x.contiguous()?.apply_op1_arc(Arc::new(Box::new(RmsNormOp { w: w.contiguous()?, eps: eps as f32 })))?)
}

// ---------------------------------------------------------------------------------------------
// Rotary embedding

/// NeoX ("rotate half") rotary embedding of `x` `[B, H, T, d]` by the tables `cos`, `sin`
/// `[B, T, d/2]`: `(x1 cos - x2 sin, x2 cos + x1 sin)`. The backward is the inverse rotation,
/// `(g1 cos + g2 sin, g2 cos - g1 sin)`.
struct RopeOp {
    /// `[B, T, d/2]` host f32 each (read in place).
    cos: Tensor,
    sin: Tensor,
    /// `(B, H, T, d)`
    dims: (usize, usize, usize, usize),
}

impl RopeOp {
    /// Rotates every `[d]` row of `x` by `sign` times the angle.
    fn rotate(&self, x: &[f32], sign: f32) -> candle_core::Result<Vec<f32>> {
        with_f32(&self.cos, |cos| with_f32(&self.sin, |sin| Ok(self.rotate_by(x, sign, cos, sin))))
    }

    fn rotate_by(&self, x: &[f32], sign: f32, cos_t: &[f32], sin_t: &[f32]) -> Vec<f32> {
        let (_, h, t, d) = self.dims;
        let half = d / 2;
        let [y] = par_rows(x.len() / d, d, |r0, [out]| {
            for (i, o) in out.chunks_exact_mut(d).enumerate() {
                let r = r0 + i;
                // Row r is (b, head, pos) with pos fastest; the tables are [B, T, half].
                let (b, pos) = (r / (h * t), r % t);
                let cs = (b * t + pos) * half;
                let (cos, sin) = (&cos_t[cs..cs + half], &sin_t[cs..cs + half]);
                let xr = &x[r * d..(r + 1) * d];
                let (x1, x2) = xr.split_at(half);
                let (o1, o2) = o.split_at_mut(half);
                for j in 0..half {
                    let s = sign * sin[j];
                    o1[j] = x1[j] * cos[j] - x2[j] * s;
                    o2[j] = x2[j] * cos[j] + x1[j] * s;
                }
            }
        });
        y
    }
}

impl CustomOp1 for RopeOp {
    fn name(&self) -> &'static str {
        "rope-fused"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice(s, l, "rope")?;
        if l.shape().dims4()? != self.dims {
            candle_core::bail!("rope: input {:?}, tables for {:?}", l.dims(), self.dims)
        }
        Ok((CpuStorage::F32(self.rotate(x, 1.0)?), l.shape().clone()))
    }
    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let dx = with_f32(grad, |g| self.rotate(g, -1.0))?;
        host(dx, x.shape().clone()).map(Some)
    }
}

/// Rotary embedding of `x` `[B, H, T, d]` (`d` even) with tables `cos`, `sin` `[B, T, d/2]`,
/// differentiable in `x`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let dims = x.dims4()?;
    let (b, _, t, d) = dims;
    anyhow::ensure!(d % 2 == 0, "rope: head dim {d} is odd");
    anyhow::ensure!(
        cos.dims() == [b, t, d / 2] && sin.dims() == [b, t, d / 2],
        "rope: tables {:?} / {:?} for input {:?} (expected [{b}, {t}, {}])",
        cos.dims(),
        sin.dims(),
        x.dims(),
        d / 2
    );
    anyhow::ensure!(applies(&[x, cos, sin]), "rope: host f32 tensors only");
    let op = RopeOp { cos: cos.contiguous()?, sin: sin.contiguous()?, dims };
    Ok(x.contiguous()?.apply_op1_arc(Arc::new(Box::new(op)))?)
}

// ---------------------------------------------------------------------------------------------
// Attention

/// `softmax(q kᵀ · scale + mask) v` with grouped-query heads: query head `h` reads kv head
/// `h / (H / H_kv)`. The forward runs candle's matmuls and fused last-dim softmax on the host
/// tensors; the backward recomputes the probabilities `p` (cheaper than keeping `[B, H, T, S]`
/// per layer alive until the backward) and applies
/// `dv = pᵀ dy`, `dp = dy vᵀ`, `ds = p (dp - Σ p dp)`, `dq = ds k · scale`, `dk = dsᵀ q · scale`,
/// with the sums over a kv head's query heads done by the grouped matmuls.
struct AttentionOp {
    /// `[B, 1, T, S]` additive mask.
    mask: Tensor,
    scale: f64,
}

/// Query rows per task of [`attention_rows`].
const ATTENTION_ROWS: usize = 32;

/// A mask value below this marks a key the query cannot see: `exp(score + mask - max)` is 0 in
/// f32 whenever the row has one visible key (the kit's masks use `f32::MIN / 2`).
const MASKED: f32 = -1e30;

/// Where [`attention_rows`] writes head `h`, query `t` of batch row `b`: element
/// `b * batch + h * head + t * row` (then the `d` values of the head).
#[derive(Clone, Copy, Debug)]
pub(crate) struct OutStrides {
    pub batch: usize,
    pub head: usize,
    pub row: usize,
}

impl OutStrides {
    /// `[B, H, T, d]`.
    pub fn heads_first(h: usize, t: usize, d: usize) -> Self {
        OutStrides { batch: h * t * d, head: t * d, row: d }
    }
    /// `[B, T, H * d]`: what the output projection reads.
    pub fn tokens_first(h: usize, t: usize, d: usize) -> Self {
        OutStrides { batch: t * h * d, head: d, row: h * d }
    }
}

thread_local! {
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Softmax attention on host f32 slices: `q` `[B, H, T, d]`, `k` and `v` `[B, H_kv, S, d]`
/// (query head `h` reads kv head `h / (H / H_kv)`), the additive `mask` `[B, 1, T, S]`:
/// `softmax(scale q kᵀ + mask) v`, written at `out` strides.
///
/// The same arithmetic as candle's composed ops (scores, `* scale`, `+ mask`, `softmax_last_dim`,
/// `matmul`), without the `[B, H, T, S]` intermediates and on candle's worker pool: one task per
/// batch row, head and block of [`ATTENTION_ROWS`] queries, each running the `gemm` crate
/// single-threaded for its two products and [`vmath::softmax_in_place`] for its rows. Keys after
/// the last one that some query of the block can see are skipped (half the products of a causal
/// mask); their probabilities would be exactly 0. A block with a query that sees no key computes
/// every key, as candle does.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_rows(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: &[f32],
    (b, h, kvh, t, s, d): (usize, usize, usize, usize, usize, usize),
    scale: f32,
    at: OutStrides,
    out: &mut [f32],
) {
    assert!(
        kvh > 0 && h % kvh == 0 && q.len() == b * h * t * d && k.len() == b * kvh * s * d && v.len() == k.len() && mask.len() == b * t * s,
        "attention_rows: q {} / k {} / v {} / mask {} values for [b {b}, h {h}, kv {kvh}, t {t}, s {s}, d {d}]",
        q.len(),
        k.len(),
        v.len(),
        mask.len()
    );
    assert!(b * h * t == 0 || out.len() >= (b - 1) * at.batch + (h - 1) * at.head + (t - 1) * at.row + d, "attention_rows: output too short");
    let (rep, blocks) = (h / kvh, t.div_ceil(ATTENTION_ROWS));
    let op = SendPtr(out.as_mut_ptr());
    candle_core::utils::barrier_pool().execute_chunked(b * h * blocks, |tasks| {
        let op = &op;
        SCORES.with_borrow_mut(|sc| {
            for task in tasks {
                let (bi, hi, blk) = (task / (h * blocks), task / blocks % h, task % blocks);
                let (r0, r1) = (blk * ATTENTION_ROWS, t.min((blk + 1) * ATTENTION_ROWS));
                let rows = r1 - r0;
                let mrow = |r: usize| &mask[(bi * t + r) * s..(bi * t + r + 1) * s];
                let mut keys = 0;
                for r in r0..r1 {
                    match mrow(r).iter().rposition(|&m| m > MASKED) {
                        Some(j) => keys = keys.max(j + 1),
                        None => {
                            keys = s;
                            break;
                        }
                    }
                }
                if keys == 0 {
                    continue;
                }
                sc.resize(rows * keys, 0.0);
                let qp = q[((bi * h + hi) * t + r0) * d..].as_ptr();
                let kv0 = (bi * kvh + hi / rep) * s * d;
                // SAFETY: every pointer and stride stays inside its slice (checked above); the
                // task writes rows r0..r1 of head hi of batch row bi of `out`, and no other task does.
                unsafe {
                    probabilities(sc, (rows, keys, d), qp, k[kv0..].as_ptr(), scale, |i| mrow(r0 + i));
                    // out[rows, d] = p[rows, keys] v[keys, d]
                    let dst = op.0.add(bi * at.batch + hi * at.head + r0 * at.row);
                    gemm::gemm(
                        rows, d, keys, dst, 1, at.row as isize, false,
                        sc.as_ptr(), 1, keys as isize, v[kv0..].as_ptr(), 1, d as isize,
                        0.0, 1.0, false, false, false, gemm::Parallelism::None,
                    );
                }
            }
        })
    });
}

/// `p [rows, keys] = softmax(scale q kᵀ + mask)` row by row: `rows` queries at `qp` against the
/// first `keys` keys at `kp` (both with row stride `d`), the mask of query `i` being `mask(i)`
/// (its first `keys` entries are used). The attention's forward and its backward (which
/// recomputes the probabilities) both call this, so they cannot differ.
///
/// # Safety
/// `qp` holds `rows x d` values and `kp` `keys x d`; `p` holds at least `rows x keys`.
unsafe fn probabilities<'m>(
    p: &mut [f32],
    (rows, keys, d): (usize, usize, usize),
    qp: *const f32,
    kp: *const f32,
    scale: f32,
    mask: impl Fn(usize) -> &'m [f32],
) {
    gemm::gemm(
        rows, keys, d, p.as_mut_ptr(), 1, keys as isize, false,
        qp, 1, d as isize, kp, d as isize, 1,
        0.0, scale, false, false, false, gemm::Parallelism::None,
    );
    for (i, row) in p[..rows * keys].chunks_exact_mut(keys).enumerate() {
        for (x, &m) in row.iter_mut().zip(mask(i)) {
            *x += m;
        }
        vmath::softmax_in_place(row);
    }
}

/// [`attention_rows`] on tensors (the checks of [`attention`]): `[B, T, H * d]`, the layout the
/// output projection reads. No backward: the inference path.
pub fn attention_infer(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    let (b, h, t, d) = q.dims4()?;
    let (_, kvh, s, _) = check_attention(q, k, v, mask)?;
    let mut out = vec![0f32; b * t * h * d];
    with_f32(q, |qs| {
        with_f32(k, |ks| {
            with_f32(v, |vs| {
                with_f32(mask, |ms| {
                    attention_rows(qs, ks, vs, ms, (b, h, kvh, t, s, d), scale as f32, OutStrides::tokens_first(h, t, d), &mut out);
                    Ok(())
                })
            })
        })
    })?;
    Ok(host(out, (b, t, h * d))?)
}

/// Blocks of output columns per product in [`xwt_pooled`] / [`xw_pooled`]: about eight, of at
/// least 64 columns, a multiple of 16.
fn column_blocks(cols: usize) -> usize {
    (cols.div_ceil(8).div_ceil(16) * 16).max(64)
}

/// An `m x cols` row-major output filled on candle's worker pool, one task per block of
/// [`column_blocks`] columns: `f(out, c0, c1)` writes columns `c0..c1` of every row through `out`
/// (row stride `cols`).
fn by_column_blocks(m: usize, cols: usize, f: impl Fn(*mut f32, usize, usize) + Sync) -> Vec<f32> {
    let mut y = vec![0f32; m * cols];
    if m * cols == 0 {
        return y;
    }
    let cb = column_blocks(cols);
    let yp = SendPtr(y.as_mut_ptr());
    candle_core::utils::barrier_pool().execute_chunked(cols.div_ceil(cb), |blocks| {
        let yp = &yp;
        for blk in blocks {
            f(yp.0, blk * cb, cols.min((blk + 1) * cb));
        }
    });
    y
}

/// `y = x Wᵀ` (`x` `[m, k]`, `W` `[n, k]` row-major) on candle's worker pool: one task per block
/// of W's rows, each a single-threaded `gemm` call. candle's own matmul runs the `gemm` crate on
/// rayon, where each thread packs the weight panels it reads, so both threads pack the same
/// panels of `W` (the forward's weight is the packed operand: its rows are not contiguous along
/// the output); split by weight rows, each panel is packed once, and no rayon thread competes
/// with the pool's workers.
///
/// On CPUs with AVX-512 the kit's own kernel runs it instead, reading `W` in place with no
/// packing ([`super::f32mm::xwt`]).
pub(crate) fn xwt_pooled(x: &[f32], m: usize, w: &[f32], n: usize, k: usize) -> Vec<f32> {
    assert!(x.len() == m * k && w.len() == n * k, "xwt_pooled: x {} / W {} values for m {m}, n {n}, k {k}", x.len(), w.len());
    let level = crate::base::cpu::level();
    if super::f32mm::applies(level) {
        // every value is written by the kernel
        let mut y = super::qgemm::uninit(m * n);
        super::f32mm::xwt(level, x, m, w, n, k, &mut y);
        return y;
    }
    by_column_blocks(m, n, |y, c0, c1| {
        // SAFETY: columns c0..c1 of `y` (m x n) belong to this task; strides stay in the slices.
        unsafe {
            gemm::gemm(
                m, c1 - c0, k, y.add(c0), 1, n as isize, false,
                x.as_ptr(), 1, k as isize, w.as_ptr().add(c0 * k), k as isize, 1,
                0.0, 1.0, false, false, false, gemm::Parallelism::None,
            )
        }
    })
}

/// `dx = g W` (`g` `[m, n]`, `W` `[n, k]` row-major) on candle's worker pool: one task per block
/// of W's columns (each reads all of `g`, so keep this to moderate `n`).
/// On CPUs with AVX-512, [`super::f32mm::xw`] instead.
pub(crate) fn xw_pooled(g: &[f32], m: usize, w: &[f32], n: usize, k: usize) -> Vec<f32> {
    assert!(g.len() == m * n && w.len() == n * k, "xw_pooled: g {} / W {} values for m {m}, n {n}, k {k}", g.len(), w.len());
    let level = crate::base::cpu::level();
    if super::f32mm::applies(level) {
        // every value is written by the kernel
        let mut dx = super::qgemm::uninit(m * k);
        super::f32mm::xw(level, g, m, w, n, k, &mut dx);
        return dx;
    }
    by_column_blocks(m, k, |dx, c0, c1| {
        // SAFETY: columns c0..c1 of `dx` (m x k) belong to this task; strides stay in the slices.
        unsafe {
            gemm::gemm(
                m, c1 - c0, n, dx.add(c0), 1, k as isize, false,
                g.as_ptr(), 1, n as isize, w.as_ptr().add(c0), 1, k as isize,
                0.0, 1.0, false, false, false, gemm::Parallelism::None,
            )
        }
    })
}

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "attention-fused"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (q, k, v) = (slice(s1, l1, "attention q")?, slice(s2, l2, "attention k")?, slice(s3, l3, "attention v")?);
        let (b, h, t, d) = l1.shape().dims4()?;
        let (_, kvh, s, _) = l2.shape().dims4()?;
        let mut y = vec![0f32; b * h * t * d];
        with_f32(&self.mask, |m| {
            attention_rows(q, k, v, m, (b, h, kvh, t, s, d), self.scale as f32, OutStrides::heads_first(h, t, d), &mut y);
            Ok(())
        })?;
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }
    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, h, t, d) = q.dims4()?;
        let (_, kvh, s, _) = k.dims4()?;
        let (mut dq, mut dk, mut dv) = (vec![0f32; b * h * t * d], vec![0f32; b * kvh * s * d], vec![0f32; b * kvh * s * d]);
        with_f32(q, |q| {
            with_f32(k, |k| {
                with_f32(v, |v| {
                    with_f32(dy, |dy| {
                        with_f32(&self.mask, |m| {
                            let io = AttentionGrads { q, k, v, mask: m, dy, dq: &mut dq, dk: &mut dk, dv: &mut dv };
                            attention_backward_rows(io, (b, h, kvh, t, s, d), self.scale as f32);
                            Ok(())
                        })
                    })
                })
            })
        })?;
        Ok((Some(host(dq, (b, h, t, d))?), Some(host(dk, (b, kvh, s, d))?), Some(host(dv, (b, kvh, s, d))?)))
    }
}

/// The inputs and gradient outputs of [`attention_backward_rows`] (host f32, contiguous).
struct AttentionGrads<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    mask: &'a [f32],
    dy: &'a [f32],
    dq: &'a mut [f32],
    dk: &'a mut [f32],
    dv: &'a mut [f32],
}

thread_local! {
    static GRAD_SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// The backward of [`attention_rows`] on candle's worker pool, one task per batch row and kv
/// head (its query heads one after the other, so that no two tasks add into one `dk` / `dv`).
/// Per query head, with `single-threaded gemm` products: the probabilities `P` again (scores,
/// mask, softmax as the forward), `dV += Pᵀ dY`, `dP = dY Vᵀ`, `dS = P ∘ (dP - rowsum(P ∘ dP))`,
/// `dQ = scale dS K`, `dK += scale dSᵀ Q`. A masked key has `P = 0` exactly, so its `dK` and `dV`
/// stay exactly 0.
fn attention_backward_rows(io: AttentionGrads, (b, h, kvh, t, s, d): (usize, usize, usize, usize, usize, usize), scale: f32) {
    let AttentionGrads { q, k, v, mask, dy, dq, dk, dv } = io;
    assert!(
        kvh > 0 && h % kvh == 0 && q.len() == b * h * t * d && dy.len() == q.len() && dq.len() == q.len()
            && k.len() == b * kvh * s * d && [v.len(), dk.len(), dv.len()].iter().all(|&n| n == k.len()) && mask.len() == b * t * s,
        "attention backward: buffer sizes do not match [b {b}, h {h}, kv {kvh}, t {t}, s {s}, d {d}]"
    );
    let rep = h / kvh;
    let (dqp, dkp, dvp) = (SendPtr(dq.as_mut_ptr()), SendPtr(dk.as_mut_ptr()), SendPtr(dv.as_mut_ptr()));
    candle_core::utils::barrier_pool().execute_chunked(b * kvh, |tasks| {
        let (dqp, dkp, dvp) = (&dqp, &dkp, &dvp);
        GRAD_SCRATCH.with_borrow_mut(|(p, dp)| {
            p.resize(t * s, 0.0);
            dp.resize(t * s, 0.0);
            for task in tasks {
                let bi = task / kvh;
                let kv0 = task * s * d;
                let (kp, vp) = (k[kv0..].as_ptr(), v[kv0..].as_ptr());
                for hi in (task % kvh) * rep..(task % kvh + 1) * rep {
                    let q0 = (bi * h + hi) * t * d;
                    let (qp, dyp) = (q[q0..].as_ptr(), dy[q0..].as_ptr());
                    // SAFETY: all strides stay inside the slices checked above; this task alone
                    // writes head hi of `dq` and kv head `task` of `dk` and `dv`.
                    unsafe {
                        use gemm::{gemm, Parallelism::None as One};
                        // P [t, s] = softmax(scale Q Kᵀ + mask), as the forward computed it
                        probabilities(p, (t, s, d), qp, kp, scale, |i| &mask[(bi * t + i) * s..(bi * t + i + 1) * s]);
                        // dV [s, d] += Pᵀ dY
                        gemm(s, d, t, dvp.0.add(kv0), 1, d as isize, true, p.as_ptr(), s as isize, 1, dyp, 1, d as isize, 1.0, 1.0, false, false, false, One);
                        // dP [t, s] = dY Vᵀ
                        gemm(t, s, d, dp.as_mut_ptr(), 1, s as isize, false, dyp, 1, d as isize, vp, d as isize, 1, 0.0, 1.0, false, false, false, One);
                        for (pr, dr) in p.chunks_exact(s).zip(dp.chunks_exact_mut(s)) {
                            let dot: f32 = pr.iter().zip(dr.iter()).map(|(p, d)| p * d).sum();
                            for (o, &p) in dr.iter_mut().zip(pr) {
                                *o = p * (*o - dot);
                            }
                        }
                        // dQ [t, d] = scale dS K
                        gemm(t, d, s, dqp.0.add(q0), 1, d as isize, false, dp.as_ptr(), 1, s as isize, kp, 1, d as isize, 0.0, scale, false, false, false, One);
                        // dK [s, d] += scale dSᵀ Q
                        gemm(s, d, t, dkp.0.add(kv0), 1, d as isize, true, dp.as_ptr(), s as isize, 1, qp, 1, d as isize, 1.0, scale, false, false, false, One);
                    }
                }
            }
        })
    });
}

/// Attention of `q` `[B, H, T, d]` over `k`, `v` `[B, H_kv, S, d]` (`H` a multiple of `H_kv`)
/// with the additive `mask` `[B, 1, T, S]`: `[B, H, T, d]`, differentiable in `q`, `k` and `v`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    check_attention(q, k, v, mask)?;
    let op = AttentionOp { mask: mask.to_dtype(DType::F32)?.contiguous()?, scale };
    Ok(q.contiguous()?.apply_op3_arc(&k.contiguous()?, &v.contiguous()?, Arc::new(Box::new(op)))?)
}

/// The shapes [`attention`] takes; `k`'s dims.
fn check_attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Result<(usize, usize, usize, usize)> {
    let (b, h, t, d) = q.dims4()?;
    let (kb, kvh, s, kd) = k.dims4()?;
    anyhow::ensure!(
        kb == b && kd == d && kvh > 0 && h % kvh == 0 && v.dims() == k.dims(),
        "attention: q {:?}, k {:?}, v {:?} (need k = v = [B, H_kv, S, d] with H a multiple of H_kv)",
        q.dims(),
        k.dims(),
        v.dims()
    );
    anyhow::ensure!(mask.dims() == [b, 1, t, s], "attention: mask {:?} for scores [{b}, {h}, {t}, {s}]", mask.dims());
    Ok((kb, kvh, s, kd))
}

// ---------------------------------------------------------------------------------------------
// SwiGLU

/// `silu(g) * u` fused, for the gated MLP: one pass forward and one pass backward for both
/// gradients. candle's composed `silu` then `*` write about ten full-size intermediates in the
/// backward (for the embedded model, 4 x 64 tokens: 5 MB each, per layer). The arithmetic is
/// candle's, expression for expression (`g / (1 + e^-g)`; the backward's
/// `sigmoid (1 - silu) + silu`), so the values are those of the composed ops.
struct SwiGluOp;

/// Whether [`swiglu`] takes these: host f32 of one shape.
pub fn swiglu_applies(g: &Tensor, u: &Tensor) -> bool {
    applies(&[g, u]) && g.shape() == u.shape()
}

impl CustomOp2 for SwiGluOp {
    fn name(&self) -> &'static str {
        "swiglu"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (g, u) = (slice(s1, l1, "swiglu gate")?, slice(s2, l2, "swiglu up")?);
        if l1.shape() != l2.shape() {
            candle_core::bail!("swiglu: gate {:?} and up {:?} differ", l1.shape(), l2.shape())
        }
        let [y] = par_fill(g.len(), |a, [out]| vmath::silu_mul(&g[a..a + out.len()], &u[a..a + out.len()], out));
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }
    fn bwd(&self, g: &Tensor, u: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dg, du) = with_f32(g, |g| {
            with_f32(u, |u| {
                with_f32(grad, |d| {
                    // One pass, one exponential per element for both gradients.
                    let [dg, du] = par_fill(g.len(), |a, [dg, du]| {
                        let r = a..a + dg.len();
                        vmath::silu_mul_backward(&g[r.clone()], &u[r.clone()], &d[r], dg, du)
                    });
                    Ok((dg, du))
                })
            })
        })?;
        let shape = g.shape().clone();
        Ok((Some(host(dg, shape.clone())?), Some(host(du, shape)?)))
    }
}

/// `silu(g) * u`, differentiable in both (host f32; see [`SwiGluOp`]).
pub fn swiglu(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    Ok(g.contiguous()?.apply_op2_arc(&u.contiguous()?, Arc::new(Box::new(SwiGluOp)))?)
}

/// The output head's weight for [`head_nll`]: `W` `[V, d]`, as the gradient path multiplies it.
pub(crate) enum HeadWeight {
    /// f32 compute: the dense f32 `W` (host, contiguous).
    F32(Tensor),
    /// bf16 compute: `W` packed for the kit's bf16 kernel ([`super::bf16`]).
    Bf16(Arc<super::bf16::Bf16Weight>),
}

/// `-log softmax(h W^T)[target]` per row of `h` (`[n, d]` host f32), the output head and the NLL
/// in one op (see [`head_nll`]).
struct HeadNllOp {
    w: HeadWeight,
    targets: Vec<u32>,
    /// Whether the input is in a graph: the forward then also computes `dNLL_i/dh_i`.
    want_grad: bool,
    /// `dNLL_i/dh_i = (softmax(z_i) - onehot(t_i)) W` per row (`[n, d]`), set by the forward.
    grad: std::sync::OnceLock<Vec<f32>>,
}

impl HeadNllOp {
    /// `z = h W^T` (`[n, V]`) as the head's frozen linear computes it in this compute dtype.
    fn logits(&self, h: &[f32], n: usize, d: usize) -> candle_core::Result<(Vec<f32>, usize)> {
        let err = |e: anyhow::Error| candle_core::Error::Msg(format!("head nll: {e:#}"));
        match &self.w {
            HeadWeight::F32(w) => {
                let v = w.dims2()?.0;
                with_f32(w, |wv| Ok((xwt_pooled(h, n, wv, v, d), v)))
            }
            HeadWeight::Bf16(w) => match &**w {
                super::bf16::Bf16Weight::Packed { n: v, fwd, .. } => {
                    let level = crate::base::cpu::level();
                    let a = super::bf16::PackedA::new_at(level, h, n, d).map_err(err)?;
                    let mut z = super::qgemm::uninit(n * v);
                    super::bf16::gemm_into(level, &a, fwd, &mut z).map_err(err)?;
                    Ok((z, *v))
                }
                super::bf16::Bf16Weight::Tensor(_) => candle_core::bail!("head nll: the bf16 head is not packed"),
            },
        }
    }

    /// `P W` for `P = softmax(z) - onehot(t)` (`[n, V]`, consumed): `[n, d]`.
    fn p_times_w(&self, p: Vec<f32>, n: usize, v: usize) -> candle_core::Result<Vec<f32>> {
        let err = |e: anyhow::Error| candle_core::Error::Msg(format!("head nll: {e:#}"));
        match &self.w {
            // As the f32 head's backward (`FrozenLinearOp`): candle's matmul at this depth.
            HeadWeight::F32(w) => Tensor::from_vec(p, (n, v), &candle_core::Device::Cpu)?.matmul(w)?.flatten_all()?.to_vec1(),
            HeadWeight::Bf16(w) => match &**w {
                super::bf16::Bf16Weight::Packed { k: d, bwd, .. } => {
                    let level = crate::base::cpu::level();
                    let a = super::bf16::PackedA::new_at(level, &p, n, v).map_err(err)?;
                    drop(p);
                    let mut g = vec![0f32; n * d];
                    super::bf16::gemm_into(level, &a, bwd, &mut g).map_err(err)?;
                    Ok(g)
                }
                super::bf16::Bf16Weight::Tensor(_) => candle_core::bail!("head nll: the bf16 head is not packed"),
            },
        }
    }
}

impl CustomOp1 for HeadNllOp {
    fn name(&self) -> &'static str {
        "head-nll"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, d) = l.shape().dims2()?;
        if n != self.targets.len() {
            candle_core::bail!("head nll: {n} hidden rows for {} targets", self.targets.len())
        }
        let h = slice(s, l, "head nll")?;
        let (mut z, v) = self.logits(h, n, d)?;
        if let Some(&bad) = self.targets.iter().find(|&&t| t as usize >= v) {
            candle_core::bail!("head nll: target id {bad} is outside the head's {v} rows")
        }
        // Per row: the NLL from the row's log-sum-exp and, for the gradient, the row replaced in
        // place by `softmax(z) - onehot(t)` (the row stays in cache across the passes).
        let zp = SendPtr(z.as_mut_ptr());
        let want = self.want_grad;
        let nll = par_map(n, |r| {
            // SAFETY: row r (v values) of `z` is read and written by this item alone.
            let row = unsafe { zp.row(r, v) };
            let t = self.targets[r] as usize;
            let max = vmath::max(row);
            let lse = max + vmath::sum_exp(row, max).ln();
            let nll = lse - row[t];
            if want {
                vmath::exp_sub_sum(row, lse);
                row[t] -= 1.0;
            }
            nll
        });
        if want {
            let _ = self.grad.set(self.p_times_w(z, n, v)?);
        }
        Ok((CpuStorage::F32(nll), Shape::from(n)))
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let Some(gh) = self.grad.get() else {
            candle_core::bail!("head nll: backward through a forward that ran outside a graph")
        };
        let (n, d) = arg.dims2()?;
        let g: Vec<f32> = grad_res.to_dtype(DType::F32)?.to_vec1()?;
        let out: Vec<f32> = gh.chunks_exact(d).zip(&g).flat_map(|(row, &gr)| row.iter().map(move |&x| x * gr)).collect();
        Tensor::from_vec(out, (n, d), arg.device()).map(Some)
    }
}

/// `-log softmax(h W^T)[targets]` (`[n]`) for final hidden states `h` (`[n, d]`, host f32) and
/// the output head `W` (`[V, d]`): the head and the NLL as one op of the graph.
///
/// The `[n, V]` logits exist only inside the op. When `h` is in a graph, the forward also turns
/// each row of logits into `softmax - onehot` in place and multiplies it by `W` at once, keeping
/// `dNLL/dh` (`[n, d]`); the backward scales its rows by the incoming gradient. The composed
/// path (head, then [`crate::grad`]'s NLL op) holds the logits, their gradient, candle's zero
/// tensor for it and the sum of the two, each `[n, V]` (155 MB each for a LoRA batch of 4 x 64
/// tokens on a 152k vocabulary). The arithmetic is the head's own (f32: `xwt_pooled` forward,
/// candle's matmul backward; bf16: the packed kernel both ways); only the incoming gradient is
/// applied after the product instead of before it (equal within rounding; tested against the
/// composed ops below).
pub(crate) fn head_nll(h: &Tensor, w: HeadWeight, targets: Vec<u32>) -> Result<Tensor> {
    let want_grad = h.track_op();
    let op = HeadNllOp { w, targets, want_grad, grad: std::sync::OnceLock::new() };
    Ok(h.contiguous()?.apply_op1_arc(Arc::new(Box::new(op)))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::rng::Rng;
    use candle_core::{Device, Var, D};

    fn randn(rng: &mut Rng, shape: &[usize], s: f64) -> Var {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| (rng.normal() * s) as f32).collect();
        Var::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn vals(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// Max |a - b| over max |b|.
    fn rel(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        let num = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        num / b.iter().map(|y| y.abs()).fold(0f32, f32::max)
    }

    /// `y` and the gradients of `sum(y * w)` with respect to `vars`, through candle's autograd.
    fn run(y: Tensor, w: &Tensor, vars: &[&Var]) -> Vec<Vec<f32>> {
        let gr = (y.clone() * w).unwrap().sum_all().unwrap().backward().unwrap();
        let mut out = vec![vals(&y)];
        out.extend(vars.iter().map(|v| vals(gr.get(v).expect("a gradient reached the input"))));
        out
    }

    fn assert_close(fused: &[Vec<f32>], composed: &[Vec<f32>], names: &[&str], tol: f32) {
        for ((a, b), name) in fused.iter().zip(composed).zip(names) {
            let e = rel(a, b);
            assert!(e < tol, "{name}: max relative difference {e} (tolerance {tol})");
        }
    }

    /// RMSNorm fused against the composed path (`layers::RmsNorm` with gradients), on rows of
    /// very different scales, a 3-d batch and a 4-d per-head input.
    #[test]
    fn rms_norm_equals_the_composed_ops() {
        let mut rng = Rng::new(3);
        for shape in [vec![2usize, 7, 96], vec![1, 3, 5, 64]] {
            let d = *shape.last().unwrap();
            let x = randn(&mut rng, &shape, 3.0);
            let w = randn(&mut rng, &[d], 1.0);
            let up = randn(&mut rng, &shape, 1.0);
            let eps = 1e-6;
            let composed = {
                let ms = x.as_tensor().sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
                let y = x.as_tensor().broadcast_div(&(ms + eps).unwrap().sqrt().unwrap()).unwrap();
                run(y.broadcast_mul(w.as_tensor()).unwrap(), up.as_tensor(), &[&x])
            };
            let fused = run(rms_norm(x.as_tensor(), w.as_tensor(), eps).unwrap(), up.as_tensor(), &[&x]);
            assert_close(&fused, &composed, &["value", "dL/dx"], 2e-6);
            assert!(fused[1].iter().any(|v| *v != 0.0));
        }
        let x = Tensor::zeros((2, 5), DType::F32, &Device::Cpu).unwrap();
        let err = rms_norm(&x, &Tensor::ones(4, DType::F32, &Device::Cpu).unwrap(), 1e-6).unwrap_err();
        assert!(format!("{err:#}").contains("does not end in the weight's 4"), "{err:#}");
    }

    /// Rope fused against the composed "rotate half" of `layers::Rope` on the gradient path,
    /// with per-row (batched) tables; and its backward is the inverse rotation: rotating the
    /// gradient forward again gives it back (the rotation is orthogonal).
    #[test]
    fn rope_equals_the_composed_ops() {
        let mut rng = Rng::new(5);
        let (b, h, t, d) = (2, 3, 6, 16);
        let x = randn(&mut rng, &[b, h, t, d], 1.0);
        let ang: Vec<f32> = (0..b * t * d / 2).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let a = Tensor::from_vec(ang, (b, t, d / 2), &Device::Cpu).unwrap();
        let (cos, sin) = (a.cos().unwrap(), a.sin().unwrap());
        let up = randn(&mut rng, &[b, h, t, d], 1.0);
        let composed = {
            let c = Tensor::cat(&[&cos, &cos], D::Minus1).unwrap().unsqueeze(1).unwrap();
            let s = Tensor::cat(&[&sin, &sin], D::Minus1).unwrap().unsqueeze(1).unwrap();
            let x1 = x.as_tensor().narrow(D::Minus1, 0, d / 2).unwrap();
            let x2 = x.as_tensor().narrow(D::Minus1, d / 2, d / 2).unwrap();
            let rot = Tensor::cat(&[&x2.neg().unwrap(), &x1], D::Minus1).unwrap();
            let y = (x.as_tensor().broadcast_mul(&c).unwrap() + rot.broadcast_mul(&s).unwrap()).unwrap();
            run(y, up.as_tensor(), &[&x])
        };
        let fused = run(rope(x.as_tensor(), &cos, &sin).unwrap(), up.as_tensor(), &[&x]);
        assert_close(&fused, &composed, &["value", "dL/dx"], 1e-6);
        let back = vals(&rope(&host(fused[1].clone(), (b, h, t, d)).unwrap(), &cos, &sin).unwrap());
        assert_close(&[back], &[vals(up.as_tensor())], &["rope(dL/dx) = upstream"], 1e-6);
        assert!(rope(x.as_tensor(), &cos.narrow(1, 0, 5).unwrap(), &sin).is_err());
    }

    /// The inference path runs `rms_norm` and `rope` in place of candle-nn's ops (which run on
    /// rayon): the same bits, on rows enough for candle-nn's parallel branch (> 32 rows).
    #[test]
    fn rms_norm_and_rope_are_candle_nns_bit_for_bit() {
        let mut rng = Rng::new(9);
        let bits = |t: &Tensor| vals(t).into_iter().map(f32::to_bits).collect::<Vec<_>>();
        let (b, h, t, d) = (2, 3, 40, 64);
        let x = randn(&mut rng, &[b, t, 96], 3.0);
        let w = randn(&mut rng, &[96], 1.0);
        let theirs = candle_nn::ops::rms_norm(x.as_tensor(), w.as_tensor(), 1e-6).unwrap();
        assert_eq!(bits(&rms_norm(x.as_tensor(), w.as_tensor(), 1e-6).unwrap()), bits(&theirs));
        let x = randn(&mut rng, &[b, h, t, d], 1.0);
        let ang: Vec<f32> = (0..b * t * d / 2).map(|i| (i as f32 * 0.61).cos() * 40.0).collect();
        let a = Tensor::from_vec(ang, (b, t, d / 2), &Device::Cpu).unwrap();
        let (cos, sin) = (a.cos().unwrap(), a.sin().unwrap());
        let theirs = candle_nn::rotary_emb::rope(x.as_tensor(), &cos, &sin).unwrap();
        assert_eq!(bits(&rope(x.as_tensor(), &cos, &sin).unwrap()), bits(&theirs));
    }

    /// Attention fused against candle's composed ops (as `layers::Attention` runs them on the
    /// gradient path) with grouped-query heads, left padding, a sliding window and a cached
    /// prefix (`S > T`): value and the gradients of `q`, `k` and `v`.
    #[test]
    fn attention_equals_the_composed_ops() {
        let mut rng = Rng::new(9);
        let (b, h, kvh, t, past, d) = (2, 6, 2, 5, 3, 8);
        let s = past + t;
        let q = randn(&mut rng, &[b, h, t, d], 1.5);
        let k = randn(&mut rng, &[b, kvh, s, d], 1.5);
        let v = randn(&mut rng, &[b, kvh, s, d], 1.0);
        let up = randn(&mut rng, &[b, h, t, d], 1.0);
        // Row 1 has 2 padding columns; a window of 4 keys.
        let neg = f32::MIN / 2.0;
        let mut m = vec![neg; b * t * s];
        for (r, pad) in [0usize, 2].into_iter().enumerate() {
            for c in 0..t {
                let g = past + c;
                for col in pad.max((g + 1).saturating_sub(4))..=g {
                    m[(r * t + c) * s + col] = 0.0;
                }
            }
        }
        let mask = Tensor::from_vec(m, (b, 1, t, s), &Device::Cpu).unwrap();
        let scale = 1.0 / (d as f64).sqrt();
        let composed = {
            let qg = q.as_tensor().reshape((b, kvh, (h / kvh) * t, d)).unwrap();
            let att = (qg.matmul(&k.as_tensor().t().unwrap()).unwrap() * scale).unwrap().reshape((b, h, t, s)).unwrap();
            let att = att.broadcast_add(&mask).unwrap();
            let p = candle_nn::ops::softmax(&att, D::Minus1).unwrap().reshape((b, kvh, (h / kvh) * t, s)).unwrap();
            let y = p.matmul(v.as_tensor()).unwrap().reshape((b, h, t, d)).unwrap();
            run(y, up.as_tensor(), &[&q, &k, &v])
        };
        let fused = run(attention(q.as_tensor(), k.as_tensor(), v.as_tensor(), &mask, scale).unwrap(), up.as_tensor(), &[&q, &k, &v]);
        assert_close(&fused, &composed, &["value", "dL/dq", "dL/dk", "dL/dv"], 1e-5);
        // Masked keys get no gradient: row 1's padding columns of k.
        let dk = &fused[2];
        for head in 0..kvh {
            for col in 0..2 {
                let at = ((b - 1) * kvh + head) * s * d + col * d;
                assert!(dk[at..at + d].iter().all(|v| *v == 0.0), "padding key {col} of head {head} got a gradient");
            }
        }
        let bad = attention(q.as_tensor(), k.as_tensor(), v.as_tensor(), &mask.narrow(3, 0, s - 1).unwrap(), scale).unwrap_err();
        assert!(format!("{bad:#}").contains("mask"), "{bad:#}");
    }

    /// The inference attention (`[B, T, H * d]` out) against candle's composed ops over several
    /// query blocks: causal with a cached prefix, left padding, a sliding window, GQA, and one query
    /// that sees no key (its block computes every key, as candle does). Skipping the keys no query
    /// of a block sees changes nothing.
    #[test]
    fn attention_infer_equals_the_composed_ops() {
        let mut rng = Rng::new(21);
        let (b, h, kvh, t, past, d) = (2, 4, 2, 2 * ATTENTION_ROWS + 7, 5, 16);
        let s = past + t;
        let q = randn(&mut rng, &[b, h, t, d], 1.5);
        let k = randn(&mut rng, &[b, kvh, s, d], 1.5);
        let v = randn(&mut rng, &[b, kvh, s, d], 1.0);
        let neg = f32::MIN / 2.0;
        let mut m = vec![neg; b * t * s];
        for (r, (pad, window)) in [(0usize, usize::MAX), (9, 20)].into_iter().enumerate() {
            for c in 0..t {
                let g = past + c;
                for col in pad.max((g + 1).saturating_sub(window))..=g {
                    m[(r * t + c) * s + col] = 0.0;
                }
            }
        }
        // Batch row 1, query 40: no visible key.
        m[(t + 40) * s..(t + 41) * s].fill(neg);
        let mask = Tensor::from_vec(m, (b, 1, t, s), &Device::Cpu).unwrap();
        let scale = 1.0 / (d as f64).sqrt();
        let composed = {
            let qg = q.as_tensor().reshape((b, kvh, (h / kvh) * t, d)).unwrap();
            let att = (qg.matmul(&k.as_tensor().t().unwrap()).unwrap() * scale).unwrap().reshape((b, h, t, s)).unwrap();
            let p = candle_nn::ops::softmax_last_dim(&att.broadcast_add(&mask).unwrap()).unwrap();
            let y = p.reshape((b, kvh, (h / kvh) * t, s)).unwrap().matmul(v.as_tensor()).unwrap();
            y.reshape((b, h, t, d)).unwrap().transpose(1, 2).unwrap().reshape((b, t, h * d)).unwrap()
        };
        let fused = attention_infer(q.as_tensor(), k.as_tensor(), v.as_tensor(), &mask, scale).unwrap();
        assert_eq!(fused.dims(), &[b, t, h * d]);
        assert_close(&[vals(&fused)], &[vals(&composed)], &["value"], 1e-5);
        assert!(attention_infer(q.as_tensor(), k.as_tensor(), v.as_tensor(), &mask.narrow(2, 0, t - 1).unwrap(), scale).is_err());
    }

    /// The pooled products against candle's matmul, on shapes off the column blocks and the
    /// kernel's tiles, one of them empty.
    #[test]
    fn pooled_products_equal_candle_matmul() {
        let mut rng = Rng::new(31);
        for (m, n, k) in [(1usize, 1usize, 1usize), (3, 130, 70), (100, 896, 64), (7, 1000, 33), (0, 5, 4)] {
            let x = randn(&mut rng, &[m, k], 1.0);
            let w = randn(&mut rng, &[n, k], 1.0);
            let g = randn(&mut rng, &[m, n], 1.0);
            let want = vals(&x.as_tensor().matmul(&w.as_tensor().t().unwrap()).unwrap());
            let got = xwt_pooled(&vals(x.as_tensor()), m, &vals(w.as_tensor()), n, k);
            let want_dx = vals(&g.as_tensor().matmul(w.as_tensor()).unwrap());
            let got_dx = xw_pooled(&vals(g.as_tensor()), m, &vals(w.as_tensor()), n, k);
            if m == 0 {
                assert!(got.is_empty() && got_dx.is_empty());
                continue;
            }
            assert_close(&[got, got_dx], &[want, want_dx], &["x Wᵀ", "g W"], 2e-6);
        }
    }

    /// The fused SwiGLU equals candle's composed `silu(g) * u` in value and in both gradients on
    /// values from -30 to 30 and a 3-d batch, within the vectorized `exp`'s rounding (candle calls
    /// libm's `expf`; `vmath` tests the arithmetic against f64).
    #[test]
    fn swiglu_equals_the_composed_ops() {
        let mut rng = Rng::new(11);
        let n = 2 * 3 * 40_000; // several chunks of the pool
        let shape = [2, 3, 40_000];
        let (g, u) = (randn(&mut rng, &shape, 10.0), randn(&mut rng, &shape, 1.0));
        let w = randn(&mut rng, &shape, 1.0);
        let fused = run(swiglu(g.as_tensor(), u.as_tensor()).unwrap(), w.as_tensor(), &[&g, &u]);
        let composed = run((g.as_tensor().silu().unwrap() * u.as_tensor()).unwrap(), w.as_tensor(), &[&g, &u]);
        // dL/dg = d u (σ (1 - silu) + silu) cancels for large g: its rounding scales with the
        // terms, |d u| (1 + |g|), not with the result.
        let (gv, uv, wv) = (vals(g.as_tensor()), vals(u.as_tensor()), vals(w.as_tensor()));
        for (j, ((a, b), what)) in fused.iter().zip(&composed).zip(["value", "dL/dg", "dL/du"]).enumerate() {
            let bad = (0..n)
                .filter(|&i| {
                    let scale = if j == 1 { (wv[i] * uv[i]).abs() * (1.0 + gv[i].abs()) } else { b[i].abs() };
                    (a[i] - b[i]).abs() > 2e-6 * scale.max(1e-3)
                })
                .count();
            assert_eq!(bad, 0, "{what}: {bad} of {n} values differ by more than 2e-6 of their scale");
        }
        assert!(swiglu(&Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap(), &Tensor::zeros((3, 2), DType::F32, &Device::Cpu).unwrap()).is_err());
    }
}
