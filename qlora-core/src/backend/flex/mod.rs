//! The CPU (Flex) implementations: multi-threaded kernels over the tensors' host memory.

mod attention;
mod kernel;
mod layers;
mod lora;
mod loss;
mod nf4;
mod optim;

use burn::backend::Flex;
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::tensor::DType;

use super::{AdamWStep, AttentionShape, Blockwise8, Nf4Operand, QloraOps, StateMaps, generic};

impl QloraOps for Flex {
    fn nf4_dequantize(weight: Nf4Operand<Self>) -> FloatTensor<Self> {
        nf4::dequantize(weight)
    }

    fn nf4_matmul(x: FloatTensor<Self>, weight: Nf4Operand<Self>) -> FloatTensor<Self> {
        if x.dtype() != DType::F32 {
            // A 16-bit compute dtype: the tensor-op path (the fused kernel is f32).
            let dense = generic::cast_like::<Self>(nf4::dequantize(weight), &x);
            return Self::float_matmul(x, Self::float_transpose(dense));
        }
        nf4::matmul_x_wt(x, weight)
    }

    fn nf4_matmul_transposed(dy: FloatTensor<Self>, weight: Nf4Operand<Self>) -> FloatTensor<Self> {
        if dy.dtype() != DType::F32 {
            let dense = generic::cast_like::<Self>(nf4::dequantize(weight), &dy);
            return Self::float_matmul(dy, dense);
        }
        nf4::matmul_dy_w(dy, weight)
    }

    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        layers::rms_norm(x, weight, eps)
    }

    fn rms_norm_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f64,
        dy: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        layers::rms_norm_backward(x, weight, eps, dy)
    }

    fn rope(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        layers::rope(x, cos, sin)
    }

    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        layers::swiglu(gate, up)
    }

    fn swiglu_backward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        dz: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        layers::swiglu_backward(gate, up, dz)
    }

    fn dropout(x: FloatTensor<Self>, seed: u64, p: f64) -> FloatTensor<Self> {
        layers::dropout(x, seed, p)
    }

    fn lora_forward(
        base: FloatTensor<Self>,
        x: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        scale: f64,
        seed: u64,
        p: f64,
    ) -> FloatTensor<Self> {
        lora::lora_forward(base, x, a, b, scale, seed, p)
    }

    fn lora_backward(
        x: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        dx_base: FloatTensor<Self>,
        scale: f64,
        seed: u64,
        p: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        lora::lora_backward(x, a, b, dy, dx_base, scale, seed, p)
    }

    fn attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        q_ids: IntTensor<Self>,
        k_ids: IntTensor<Self>,
        shape: AttentionShape,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        attention::attention(q, k, v, q_ids, k_ids, shape)
    }

    fn attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        d_out: FloatTensor<Self>,
        q_ids: IntTensor<Self>,
        k_ids: IntTensor<Self>,
        shape: AttentionShape,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        attention::attention_backward(q, k, v, out, lse, d_out, q_ids, k_ids, shape)
    }

    fn adamw_step(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        settings: AdamWStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        optim::adamw_step(param, grad, m, v, settings)
    }

    fn adamw8_step(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        state: Blockwise8<Self>,
        _maps: StateMaps<Self>,
        settings: AdamWStep,
    ) -> (FloatTensor<Self>, Blockwise8<Self>) {
        optim::adamw8_step(param, grad, state, settings)
    }

    fn cross_entropy(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        targets: IntTensor<Self>,
    ) -> FloatTensor<Self> {
        if weight.dtype() != DType::F32 {
            return generic::loss::cross_entropy::<Self>(hidden, weight, targets, false).0;
        }
        loss::cross_entropy(hidden, weight, targets, false).0
    }

    fn cross_entropy_with_grad(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        targets: IntTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (losses, grad) = if weight.dtype() != DType::F32 {
            generic::loss::cross_entropy::<Self>(hidden, weight, targets, true)
        } else {
            loss::cross_entropy(hidden, weight, targets, true)
        };
        (losses, grad.expect("asked for the gradient"))
    }
}
