//! Vectorized elementwise math on f32 slices: `exp` (through `wide`'s polynomial, sixteen lanes at
//! a time, eight for a slice's tail), the softmax of a row, and SiLU-gated products with their
//! backward. Used by the fused model ops (attention softmax, SwiGLU) and by generation's per-step
//! softmax. `wide::f32x16::exp` is `f32x8::exp`'s code in 16 lanes (AVX-512 where the build has
//! it), so a value's result does not depend on the width; the sums keep the order of eight-lane
//! chunks.
//!
//! `wide::f32x8::exp` is a degree-7 polynomial after a two-constant `ln 2` range reduction: within
//! 2 ulp of the correctly rounded value over the normal range (tested below against f64), `exp(-inf)
//! = 0`, `exp(inf) = inf`, NaN stays NaN, results below the normal range are flushed by the same
//! rules as libm's (subnormals kept). libm's scalar `expf` takes a slow path for every underflowing
//! argument; a masked attention score is one.
use wide::{f32x16, f32x8};

#[inline(always)]
fn load(c: &[f32]) -> f32x8 {
    f32x8::from(<[f32; 8]>::try_from(c).expect("8 lanes"))
}

#[inline(always)]
fn load16(c: &[f32]) -> f32x16 {
    f32x16::from(<[f32; 16]>::try_from(c).expect("16 lanes"))
}

/// The two halves of 16 lanes, in order (sums keep the order of eight-lane chunks).
#[inline(always)]
fn halves(v: f32x16) -> (f32x8, f32x8) {
    let a = v.to_array();
    (load(&a[..8]), load(&a[8..]))
}

/// `out[i] = exp(x[i] * scale + shift)`.
pub fn exp_affine(x: &[f32], scale: f32, shift: f32, out: &mut Vec<f32>) {
    out.resize(x.len(), 0.0);
    let (s16, b16) = (f32x16::splat(scale), f32x16::splat(shift));
    let mut chunks = x.chunks_exact(16);
    let mut outs = out.chunks_exact_mut(16);
    for (c, o) in (&mut chunks).zip(&mut outs) {
        o.copy_from_slice(&load16(c).mul_add(s16, b16).exp().to_array());
    }
    for (o, &v) in outs.into_remainder().iter_mut().zip(chunks.remainder()) {
        *o = (f32x8::splat(v.mul_add(scale, shift)).exp()).to_array()[0];
    }
}

/// `x[i] = exp(x[i] - shift)` in place; returns the sum of the results (f32, eight partial sums).
pub fn exp_sub_sum(x: &mut [f32], shift: f32) -> f32 {
    let (s8, s16) = (f32x8::splat(shift), f32x16::splat(shift));
    let mut acc = f32x8::ZERO;
    let whole = x.len() / 16 * 16;
    for c in x[..whole].chunks_exact_mut(16) {
        let e = (load16(c) - s16).exp();
        let (lo, hi) = halves(e);
        acc += lo;
        acc += hi;
        c.copy_from_slice(&e.to_array());
    }
    let mut chunks = x[whole..].chunks_exact_mut(8);
    for c in &mut chunks {
        let e = (load(c) - s8).exp();
        acc += e;
        c.copy_from_slice(&e.to_array());
    }
    let mut tail = 0f32;
    for v in chunks.into_remainder() {
        *v = (f32x8::splat(*v - shift).exp()).to_array()[0];
        tail += *v;
    }
    acc.reduce_add() + tail
}

/// The largest value (`-inf` for an empty slice). Without NaNs it equals the `f32::max` fold; a NaN
/// lane (`vmaxps` keeps its second operand) may hide that lane's earlier values, so with NaNs the
/// result is unspecified (the NLL that uses it is then NaN through its sum anyway).
pub fn max(x: &[f32]) -> f32 {
    let mut acc = f32x8::splat(f32::NEG_INFINITY);
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        acc = acc.fast_max(load(c));
    }
    let lanes = acc.to_array().into_iter().chain(chunks.remainder().iter().copied());
    lanes.fold(f32::NEG_INFINITY, f32::max)
}

/// `sum exp(x[i] - shift)` (f32, eight partial sums); `x` is not changed.
pub fn sum_exp(x: &[f32], shift: f32) -> f32 {
    let (s8, s16) = (f32x8::splat(shift), f32x16::splat(shift));
    let mut acc = f32x8::ZERO;
    let whole = x.len() / 16 * 16;
    for c in x[..whole].chunks_exact(16) {
        let (lo, hi) = halves((load16(c) - s16).exp());
        acc += lo;
        acc += hi;
    }
    let mut chunks = x[whole..].chunks_exact(8);
    for c in &mut chunks {
        acc += (load(c) - s8).exp();
    }
    let tail: f32 = chunks.remainder().iter().map(|&v| f32x8::splat(v - shift).exp().to_array()[0]).sum();
    acc.reduce_add() + tail
}

/// `out[i] = exp(x[i] - shift) * scale` (equal lengths).
pub fn exp_sub_scale(x: &[f32], shift: f32, scale: f32, out: &mut [f32]) {
    assert_eq!(x.len(), out.len(), "exp_sub_scale: lengths");
    let (s16, k16) = (f32x16::splat(shift), f32x16::splat(scale));
    let (mut xc, mut oc) = (x.chunks_exact(16), out.chunks_exact_mut(16));
    for (c, o) in (&mut xc).zip(&mut oc) {
        o.copy_from_slice(&((load16(c) - s16).exp() * k16).to_array());
    }
    for (o, &v) in oc.into_remainder().iter_mut().zip(xc.remainder()) {
        *o = f32x8::splat(v - shift).exp().to_array()[0] * scale;
    }
}

/// Softmax of one row in place: `exp(x - max) / sum`. A row of `-inf` only gives NaN, as
/// `candle_nn::ops::softmax_last_dim` does.
pub fn softmax_in_place(x: &mut [f32]) {
    let max = max(x);
    let inv = 1.0 / exp_sub_sum(x, max);
    let i8 = f32x8::splat(inv);
    let mut chunks = x.chunks_exact_mut(8);
    for c in &mut chunks {
        c.copy_from_slice(&(load(c) * i8).to_array());
    }
    for v in chunks.into_remainder() {
        *v *= inv;
    }
}

/// `silu(g) * u = g / (1 + e^-g) * u` into `out` (equal lengths).
pub fn silu_mul(g: &[f32], u: &[f32], out: &mut [f32]) {
    assert!(g.len() == u.len() && g.len() == out.len(), "silu_mul: lengths {} / {} / {}", g.len(), u.len(), out.len());
    let one = f32x16::ONE;
    let (mut gc, mut uc, mut oc) = (g.chunks_exact(16), u.chunks_exact(16), out.chunks_exact_mut(16));
    for ((g, u), o) in (&mut gc).zip(&mut uc).zip(&mut oc) {
        let g = load16(g);
        o.copy_from_slice(&(g / (one + (-g).exp()) * load16(u)).to_array());
    }
    for ((g, u), o) in gc.remainder().iter().zip(uc.remainder()).zip(oc.into_remainder()) {
        let e = f32x8::splat(-*g).exp().to_array()[0];
        *o = g / (1.0 + e) * u;
    }
}

/// The backward of [`silu_mul`] for the upstream gradient `d`: `dg = d u (σ (1 - silu) + silu)`,
/// `du = d silu(g)`, with `σ = 1 / (1 + e^-g)` and one exponential per element.
pub fn silu_mul_backward(g: &[f32], u: &[f32], d: &[f32], dg: &mut [f32], du: &mut [f32]) {
    let n = g.len();
    assert!(u.len() == n && d.len() == n && dg.len() == n && du.len() == n, "silu_mul_backward: unequal lengths");
    let one = f32x8::ONE;
    let step = |g: f32x8, u: f32x8, d: f32x8| -> (f32x8, f32x8) {
        let e = (-g).exp();
        let sig = one / (one + e);
        let silu = g / (one + e);
        (d * u * (sig * (one - silu) + silu), d * silu)
    };
    // The same expressions in 16 lanes (the same bits per value).
    let one16 = f32x16::ONE;
    let whole = n - n % 16;
    for i in (0..whole).step_by(16) {
        let (g, u, d) = (load16(&g[i..i + 16]), load16(&u[i..i + 16]), load16(&d[i..i + 16]));
        let e = (-g).exp();
        let sig = one16 / (one16 + e);
        let silu = g / (one16 + e);
        dg[i..i + 16].copy_from_slice(&(d * u * (sig * (one16 - silu) + silu)).to_array());
        du[i..i + 16].copy_from_slice(&(d * silu).to_array());
    }
    let full = n - n % 8;
    for i in (whole..full).step_by(8) {
        let (a, b) = step(load(&g[i..i + 8]), load(&u[i..i + 8]), load(&d[i..i + 8]));
        dg[i..i + 8].copy_from_slice(&a.to_array());
        du[i..i + 8].copy_from_slice(&b.to_array());
    }
    for i in full..n {
        let (a, b) = step(f32x8::splat(g[i]), f32x8::splat(u[i]), f32x8::splat(d[i]));
        dg[i] = a.to_array()[0];
        du[i] = b.to_array()[0];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place between two finite f32 of one sign.
    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    /// The 16-lane loops give the bits of eight-lane ones (the module's code before them): `wide`'s
    /// `f32x16` and `f32x8` run the same `exp`, elementwise results do not depend on the width,
    /// and the sums add the two halves of each 16 values in the order of eight-lane chunks.
    #[test]
    fn sixteen_lanes_give_the_bits_of_eight() {
        let exp8 = |v: f32| f32x8::splat(v).exp().to_array()[0];
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for n in [0usize, 5, 8, 13, 16, 29, 37, 64, 1003] {
            let mut x: Vec<f32> = (0..n).map(|i| ((i * 7919) % 2003) as f32 / 10.0 - 110.0).collect();
            if n > 20 {
                x[3] = f32::NEG_INFINITY;
                x[17] = 88.9; // overflows
                x[19] = -0.0;
            }
            let (g, u, d): (Vec<f32>, Vec<f32>, Vec<f32>) = (x.iter().map(|v| v / 5.0).collect(), x.iter().map(|v| v / 50.0).collect(), x.iter().map(|v| 1.0 - v / 70.0).collect());
            // elementwise: each value as one lane of the eight-lane code
            let mut out = vec![];
            exp_affine(&x, 0.5, 1.0, &mut out);
            assert_eq!(bits(&out), bits(&x.iter().map(|&v| exp8(v.mul_add(0.5, 1.0))).collect::<Vec<_>>()), "exp_affine, n {n}");
            let mut o = vec![0f32; n];
            exp_sub_scale(&x, 2.0, 0.25, &mut o);
            assert_eq!(bits(&o), bits(&x.iter().map(|&v| exp8(v - 2.0) * 0.25).collect::<Vec<_>>()), "exp_sub_scale, n {n}");
            silu_mul(&g, &u, &mut o);
            let want: Vec<f32> = g.iter().zip(&u).map(|(&g, &u)| g / (1.0 + exp8(-g)) * u).collect();
            assert_eq!(bits(&o), bits(&want), "silu_mul, n {n}");
            let (mut dg, mut du) = (vec![0f32; n], vec![0f32; n]);
            silu_mul_backward(&g, &u, &d, &mut dg, &mut du);
            for i in 0..n {
                let e = exp8(-g[i]);
                let (sig, silu) = (1.0 / (1.0 + e), g[i] / (1.0 + e));
                assert_eq!((dg[i].to_bits(), du[i].to_bits()), ((d[i] * u[i] * (sig * (1.0 - silu) + silu)).to_bits(), (d[i] * silu).to_bits()), "silu_mul_backward, n {n}, i {i}");
            }
        }
        // Sums: eight-lane chunks in order, then the tail. Values of one size, and enough of them
        // that a change in the order of the additions shows in the bits.
        for n in [0usize, 13, 29, 37, 40_003] {
            let x: Vec<f32> = (0..n as u64).map(|i| (i * 2_654_435_761 % 1_000_003) as f32 / 166_667.0 - 3.0).collect();
            let full = n / 8 * 8;
            let mut acc = f32x8::ZERO;
            for c in x[..full].chunks_exact(8) {
                acc += (load(c) - f32x8::splat(-1.0)).exp();
            }
            let tail: f32 = x[full..].iter().map(|&v| exp8(v + 1.0)).sum();
            let want = acc.reduce_add() + tail;
            assert_eq!(sum_exp(&x, -1.0).to_bits(), want.to_bits(), "sum_exp, n {n}");
            let mut y = x.clone();
            assert_eq!(exp_sub_sum(&mut y, -1.0).to_bits(), want.to_bits(), "exp_sub_sum, n {n}");
            assert_eq!(bits(&y), bits(&x.iter().map(|&v| exp8(v - -1.0)).collect::<Vec<_>>()), "exp_sub_sum values, n {n}");
        }
    }

    #[test]
    fn exp_is_within_two_ulp_of_f64_and_keeps_the_special_values() {
        let xs: Vec<f32> = (0..200_001).map(|i| -87.0 + 175.0 * i as f32 / 200_000.0).chain([0.0, -0.0, 1e-30, -1e-30]).collect();
        let mut out = vec![];
        exp_affine(&xs, 1.0, 0.0, &mut out);
        let worst = xs.iter().zip(&out).map(|(&x, &e)| ulps(e, (x as f64).exp() as f32)).max().unwrap();
        assert!(worst <= 2, "worst error {worst} ulp");
        exp_affine(&[f32::NEG_INFINITY, f32::INFINITY, f32::NAN, -200.0, 200.0, f32::MIN / 2.0], 1.0, 0.0, &mut out);
        assert_eq!(&out[..2], &[0.0, f32::INFINITY]);
        assert!(out[2].is_nan());
        assert_eq!(&out[3..], &[0.0, f32::INFINITY, 0.0]);
        // The scalar tail (lengths off the lane count) matches the lanes.
        let odd: Vec<f32> = xs[..13].to_vec();
        let mut a = odd.clone();
        let sum = exp_sub_sum(&mut a, 0.5);
        for (i, &x) in odd.iter().enumerate() {
            assert!(ulps(a[i], ((x - 0.5) as f64).exp() as f32) <= 2, "value {i}");
        }
        let s64: f64 = odd.iter().map(|&x| ((x - 0.5) as f64).exp()).sum();
        assert!(((sum as f64 - s64) / s64).abs() < 1e-6, "{sum} vs {s64}");
    }

    #[test]
    fn sum_exp_and_exp_sub_scale_match_f64() {
        for n in [3usize, 8, 1001] {
            let x: Vec<f32> = (0..n).map(|i| ((i as f32) * 1.37).sin() * 20.0).collect();
            let want: f64 = x.iter().map(|&v| ((v - 4.0) as f64).exp()).sum();
            let got = sum_exp(&x, 4.0) as f64;
            assert_eq!(max(&x), x.iter().copied().fold(f32::NEG_INFINITY, f32::max));
            assert!(((got - want) / want).abs() < 2e-6, "n {n}: {got} vs {want}");
            let mut out = vec![0f32; n];
            exp_sub_scale(&x, 4.0, -0.25, &mut out);
            for (i, (&o, &v)) in out.iter().zip(&x).enumerate() {
                let w = -0.25 * ((v - 4.0) as f64).exp();
                assert!((o as f64 - w).abs() <= 1e-6 * w.abs(), "n {n}, {i}: {o} vs {w}");
            }
        }
    }

    #[test]
    fn softmax_matches_f64_and_candle_on_masked_rows() {
        let neg = f32::MIN / 2.0;
        for n in [1usize, 7, 8, 37, 300] {
            let row: Vec<f32> = (0..n).map(|i| if i % 5 == 3 { neg } else { ((i as f32) * 0.731).sin() * 9.0 }).collect();
            let mut x = row.clone();
            softmax_in_place(&mut x);
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let z: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
            for (i, (&p, &v)) in x.iter().zip(&row).enumerate() {
                let want = (v as f64 - max).exp() / z;
                // 2e-6: `v - max` is rounded to f32 first (|v - max| up to 18 here), as in candle.
                assert!((p as f64 - want).abs() <= 2e-6 * want.max(1e-30) + 1e-30, "n {n}, entry {i}: {p} vs {want}");
            }
            let t = candle_core::Tensor::from_vec(row, (1, n), &candle_core::Device::Cpu).unwrap();
            let c: Vec<f32> = candle_nn::ops::softmax_last_dim(&t).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            for (a, b) in x.iter().zip(&c) {
                assert!((a - b).abs() <= 1e-6 * b.abs().max(1e-30), "{a} vs candle {b}");
            }
        }
    }

    /// `silu_mul` and its backward against f64 arithmetic and against a central finite difference
    /// of the f64 function, over -40..40 (both tails of the sigmoid) and lengths off the lanes.
    #[test]
    fn silu_mul_and_backward_match_f64() {
        let n = 1003;
        let g: Vec<f32> = (0..n).map(|i| -40.0 + 80.0 * i as f32 / (n - 1) as f32).collect();
        let u: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.37).cos() * 2.0).collect();
        let d: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.11).sin()).collect();
        let f = |g: f64, u: f64| g / (1.0 + (-g).exp()) * u;
        let mut y = vec![0f32; n];
        silu_mul(&g, &u, &mut y);
        let (mut dg, mut du) = (vec![0f32; n], vec![0f32; n]);
        silu_mul_backward(&g, &u, &d, &mut dg, &mut du);
        for i in 0..n {
            let (gi, ui, di) = (g[i] as f64, u[i] as f64, d[i] as f64);
            let want = f(gi, ui);
            assert!((y[i] as f64 - want).abs() <= 1e-6 * want.abs() + 1e-30, "value {i}: {} vs {want}", y[i]);
            let h = 1e-4 * gi.abs().max(1.0);
            let dg64 = di * (f(gi + h, ui) - f(gi - h, ui)) / (2.0 * h);
            assert!((dg[i] as f64 - dg64).abs() <= 1e-5 * (di * ui).abs().max(1e-3), "dL/dg {i}: {} vs {dg64}", dg[i]);
            let du64 = di * gi / (1.0 + (-gi).exp());
            assert!((du[i] as f64 - du64).abs() <= 1e-6 * du64.abs() + 1e-30, "dL/du {i}: {} vs {du64}", du[i]);
        }
    }
}
