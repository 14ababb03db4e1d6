//! The default of every operation, built from Burn's backend operations so that every backend
//! runs it (and, on an autodiff backend, differentiates it): the reference the fast kernels
//! are tested against.

pub mod attention;
pub mod layers;
pub mod loss;
pub mod nf4;
pub mod optim;

use std::ops::{Add, Mul, Neg, Sub};

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, TensorMetadata};
use burn::tensor::{FloatDType, Scalar, Shape, Slice};

/// `t` in the dtype of `like` (itself when it is).
pub fn cast_like<B: Backend>(t: FloatTensor<B>, like: &FloatTensor<B>) -> FloatTensor<B> {
    let dtype = like.dtype();
    if t.dtype() == dtype {
        t
    } else {
        B::float_cast(t, dtype.into())
    }
}

/// A float primitive with operators, so the defaults read like the math they compute.
pub struct F<B: Backend>(pub FloatTensor<B>);

impl<B: Backend> Clone for F<B> {
    fn clone(&self) -> Self {
        F(self.0.clone())
    }
}

impl<B: Backend> F<B> {
    /// The shape.
    pub fn dims(&self) -> Vec<usize> {
        self.0.shape().to_vec()
    }

    /// The same values in shape `dims`.
    pub fn reshape(self, dims: &[usize]) -> Self {
        F(B::float_reshape(self.0, Shape::from(dims.to_vec())))
    }

    /// Dimensions `a` and `b` swapped.
    pub fn swap(self, a: usize, b: usize) -> Self {
        F(B::float_swap_dims(self.0, a, b))
    }

    /// The matrix product (batched over leading dimensions).
    pub fn matmul(self, rhs: Self) -> Self {
        F(B::float_matmul(self.0, rhs.0))
    }

    /// Every value times `s`.
    pub fn scale(self, s: f64) -> Self {
        F(B::float_mul_scalar(self.0, Scalar::from(s)))
    }

    /// Every value plus `s`.
    pub fn add_scalar(self, s: f64) -> Self {
        F(B::float_add_scalar(self.0, Scalar::from(s)))
    }

    /// `e^x` of every value.
    pub fn exp(self) -> Self {
        F(B::float_exp(self.0))
    }

    /// The natural logarithm of every value.
    pub fn log(self) -> Self {
        F(B::float_log(self.0))
    }

    /// The square root of every value.
    pub fn sqrt(self) -> Self {
        F(B::float_sqrt(self.0))
    }

    /// `1 / x` of every value.
    pub fn recip(self) -> Self {
        F(B::float_recip(self.0))
    }

    /// The logistic sigmoid of every value.
    pub fn sigmoid(self) -> Self {
        F(B::sigmoid(self.0))
    }

    /// The hyperbolic tangent of every value.
    pub fn tanh(self) -> Self {
        F(B::float_tanh(self.0))
    }

    /// Every value clamped to `min..=max`.
    pub fn clamp(self, min: f64, max: f64) -> Self {
        F(B::float_clamp(self.0, Scalar::from(min), Scalar::from(max)))
    }

    /// The absolute value of every value.
    pub fn abs(self) -> Self {
        F(B::float_abs(self.0))
    }

    /// Sums along `dim` (kept, of size 1).
    pub fn sum_dim(self, dim: usize) -> Self {
        F(B::float_sum_dim(self.0, dim))
    }

    /// Means along `dim` (kept, of size 1).
    pub fn mean_dim(self, dim: usize) -> Self {
        F(B::float_mean_dim(self.0, dim))
    }

    /// Maxima along `dim` (kept, of size 1).
    pub fn max_dim(self, dim: usize) -> Self {
        F(B::float_max_dim(self.0, dim))
    }

    /// Broadcast to `dims`.
    pub fn expand(self, dims: &[usize]) -> Self {
        F(B::float_expand(self.0, Shape::from(dims.to_vec())))
    }

    /// `self[.., start..start + len, ..]` along `dim`.
    pub fn narrow(self, dim: usize, start: usize, len: usize) -> Self {
        let dims = self.dims();
        let slices: Vec<Slice> = (0..dims.len())
            .map(|d| {
                if d == dim {
                    Slice::from(start..start + len)
                } else {
                    Slice::from(0..dims[d])
                }
            })
            .collect();
        F(B::float_slice(self.0, &slices))
    }

    /// `parts` joined along `dim`.
    pub fn cat(parts: Vec<Self>, dim: usize) -> Self {
        F(B::float_cat(parts.into_iter().map(|p| p.0).collect(), dim))
    }

    /// `log(sum(exp(x)))` along `dim` (kept), stable.
    pub fn logsumexp(self, dim: usize) -> Self {
        let max = self.clone().max_dim(dim);
        let sum = (self - max.clone()).exp().sum_dim(dim);
        sum.log() + max
    }

    /// Integers as floats.
    pub fn from_int(ints: IntTensor<B>) -> Self {
        F(B::int_into_float(ints, FloatDType::F32))
    }
}

impl<B: Backend> Add for F<B> {
    type Output = F<B>;
    fn add(self, rhs: Self) -> Self {
        F(B::float_add(self.0, rhs.0))
    }
}

impl<B: Backend> Sub for F<B> {
    type Output = F<B>;
    fn sub(self, rhs: Self) -> Self {
        F(B::float_sub(self.0, rhs.0))
    }
}

impl<B: Backend> Mul for F<B> {
    type Output = F<B>;
    fn mul(self, rhs: Self) -> Self {
        F(B::float_mul(self.0, rhs.0))
    }
}

impl<B: Backend> Neg for F<B> {
    type Output = F<B>;
    fn neg(self) -> Self {
        F(B::float_neg(self.0))
    }
}
