//! The AdamW update of one parameter, as `torch.optim.AdamW` computes it.

use burn::tensor::Tensor;

use super::AdamWConfig;

/// One step `t` (1-based) of AdamW on flat tensors: the updated parameter and moments.
pub(super) fn step(
    param: Tensor<1>,
    grad: Tensor<1>,
    m: Tensor<1>,
    v: Tensor<1>,
    config: &AdamWConfig,
    t: u64,
    lr: f64,
) -> (Tensor<1>, Tensor<1>, Tensor<1>) {
    let AdamWConfig {
        beta1,
        beta2,
        eps,
        weight_decay,
    } = *config;
    let bias1 = 1.0 - beta1.powi(t as i32);
    let bias2 = 1.0 - beta2.powi(t as i32);
    let m = m * beta1 + grad.clone() * (1.0 - beta1);
    let v = v * beta2 + grad.clone() * grad * (1.0 - beta2);
    // torch.optim.AdamW: decay, then p -= lr / bias1 * m / (sqrt(v) / sqrt(bias2) + eps).
    let decayed = if weight_decay > 0.0 {
        param * (1.0 - lr * weight_decay)
    } else {
        param
    };
    let denom = v.clone().sqrt() / bias2.sqrt() + eps;
    let updated = decayed - m.clone() / denom * (lr / bias1);
    (updated, m, v)
}
