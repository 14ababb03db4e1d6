//! What the CPU kernels share: host views of Flex tensors, a safe matrix multiply on strided
//! views (the `gemm` crate, AVX-512 where the CPU has it), vectorizable math (exp, sums), and
//! running a closure with the CPU's widest SIMD enabled.

use std::borrow::Cow;

use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, Shape, TensorData};
use gemm::Parallelism;

/// The f32 values of `t` in row-major order (borrowed when already laid out so).
pub fn floats(t: &FlexTensor) -> Cow<'_, [f32]> {
    assert_eq!(t.dtype(), DType::F32, "the CPU kernels compute in f32");
    match t.as_slice::<f32>() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(
            t.to_contiguous()
                .as_slice::<f32>()
                .expect("contiguous")
                .to_vec(),
        ),
    }
}

/// The values of an int tensor, whatever its int type.
pub fn ints(t: &FlexTensor) -> Vec<i64> {
    t.clone()
        .into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .expect("int values")
}

/// A tensor owning `values` with `shape`.
pub fn tensor(values: Vec<f32>, shape: impl Into<Shape>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape.into()))
}

/// A `Vec` of `n` floats the caller overwrites completely.
pub fn uninit(n: usize) -> Vec<f32> {
    // Zeroed pages come from the OS lazily; this is not a zero-fill pass over memory.
    vec![0f32; n]
}

/// Define `fn $name(args) -> ret { body }` compiled three times: for AVX-512, for AVX2 with
/// FMA, and for the baseline; a call runs the widest the CPU supports (detected once, then an
/// atomic load a call). The body and the math helpers it calls are inlined into each version,
/// so its loops vectorize for it.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma,bmi2")]
                unsafe fn v4($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma,bmi2")]
                unsafe fn v3($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512dq")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                {
                    // SAFETY: the CPU has every feature v4 was compiled for.
                    return unsafe { v4($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("bmi2")
                {
                    // SAFETY: the CPU has every feature v3 was compiled for.
                    return unsafe { v3($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// A matrix view: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> View<'a> {
    /// Rows `rows` of a row-major matrix with row stride `stride`, columns `col..col + cols`.
    pub fn rows(
        data: &'a [f32],
        stride: usize,
        rows: std::ops::Range<usize>,
        col: usize,
        cols: usize,
    ) -> Self {
        View {
            data: &data[rows.start * stride + col..],
            rows: rows.len(),
            cols,
            rs: stride,
            cs: 1,
        }
    }

    pub fn t(self) -> Self {
        View {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    fn check(&self) {
        if self.rows > 0 && self.cols > 0 {
            let last = (self.rows - 1) * self.rs + (self.cols - 1) * self.cs;
            assert!(last < self.data.len(), "matrix view out of bounds");
        }
    }
}

/// `out = alpha · a · b` (or `out += alpha · a · b` with `accumulate`) for `out` with row
/// stride `ldc` and `a.cols == b.rows`; `threads` > 1 splits it on the thread pool.
pub fn matmul(
    out: &mut [f32],
    ldc: usize,
    a: View<'_>,
    b: View<'_>,
    alpha: f32,
    accumulate: bool,
    threads: usize,
) {
    let (m, n) = (a.rows, b.cols);
    if m > 0 && n > 0 {
        assert!((m - 1) * ldc + n <= out.len(), "output out of bounds");
    }
    // SAFETY: the output's extent was checked against `out`.
    unsafe { matmul_raw(out.as_mut_ptr(), ldc, (a, b), alpha, accumulate, threads) }
}

/// [`matmul`] into raw memory, for tasks that each write their own columns of one output.
///
/// # Safety
/// `out` must be valid for writes of rows `0..a.rows` (stride `ldc`), columns `0..b.cols`, and
/// no one else may access those elements meanwhile.
pub unsafe fn matmul_raw(
    out: *mut f32,
    ldc: usize,
    (a, b): (View<'_>, View<'_>),
    alpha: f32,
    accumulate: bool,
    threads: usize,
) {
    assert_eq!(a.cols, b.rows, "inner dimensions");
    a.check();
    b.check();
    let (m, n, k) = (a.rows, b.cols, a.cols);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                // SAFETY: row i of the output, as the caller promised.
                unsafe { std::slice::from_raw_parts_mut(out.add(i * ldc), n).fill(0.0) };
            }
        }
        return;
    }
    let parallelism = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: every index the two views reach was bounds-checked above; the output's by the
    // caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out,
            1,
            ldc as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            alpha,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// All threads of the pool.
pub fn all_threads() -> usize {
    rayon::current_num_threads()
}

/// `exp(x)` to within 2 ulp for normal results (0 below about -87.3, where they would be
/// subnormal; +inf above 88.7), written
/// so that loops over it vectorize.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Round to nearest by adding and subtracting 1.5·2²³ (no call to roundf).
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-88.0, 88.722_83);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    // exp(r) on [-ln2/2, ln2/2]: degree-6 polynomial (Cephes expf).
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5e-1;
    let p = p * (r * r) + r + 1.0;
    // 2^n through the exponent bits (n = 128 is +inf; below -126, 0).
    let bits = ((n as i32 + 127).clamp(0, 255) as u32) << 23;
    let scale = if n < -126.0 {
        0.0
    } else {
        f32::from_bits(bits)
    };
    p * scale
}

/// `sum(x)` with 16 independent partial sums (vectorizes; the order is fixed for given
/// lengths, so results are reproducible).
#[inline(always)]
pub fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    let mut total = chunks.remainder().iter().sum::<f32>();
    for a in acc {
        total += a;
    }
    total
}

/// `sum(a · b)`, vectorizable like [`sum`].
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut ca = a.chunks_exact(16);
    let mut cb = b.chunks_exact(16);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut total: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for a in acc {
        total += a;
    }
    total
}

/// The largest value of `x` (`-inf` when empty).
#[inline(always)]
pub fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a = a.max(*v);
        }
    }
    let mut m = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, v| m.max(*v));
    for a in acc {
        m = m.max(a);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = f64::from(x).exp();
            let got = f64::from(exp(x));
            let ulp = f64::from(f32::EPSILON) * want.abs();
            worst = worst.max((got - want).abs() / ulp);
            x += 0.0137;
        }
        assert!(worst <= 2.0, "{worst} ulp");
        assert_eq!(exp(-200.0), 0.0);
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f32::NEG_INFINITY) == 0.0);
    }

    #[test]
    fn matmul_on_strided_views() {
        // a [2, 3], b = cᵀ with c [2, 3]
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let c = [1.0, 0.0, -1.0, 2.0, 1.0, 0.0];
        let mut out = vec![0f32; 4];
        let av = View::rows(&a, 3, 0..2, 0, 3);
        let bv = View::rows(&c, 3, 0..2, 0, 3).t();
        matmul(&mut out, 2, av, bv, 1.0, false, 1);
        assert_eq!(out, [-2.0, 4.0, -2.0, 13.0]);
        matmul(&mut out, 2, av, bv, 0.5, true, 2);
        assert_eq!(out, [-3.0, 6.0, -3.0, 19.5]);
    }
}
