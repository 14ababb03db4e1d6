//! Helpers of the tests that hold an operation against another implementation of it.

use burn::tensor::{Device, Int, Tensor, TensorData};
use qlora_core::backend::AttentionShape;

pub fn t<const D: usize>(v: &[f32], shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), device)
}

pub fn ids(v: &[i64], device: &Device) -> Tensor<1, Int> {
    Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), device)
}

pub fn vec<const D: usize>(x: Tensor<D>) -> Vec<f32> {
    x.into_data().convert::<f32>().try_into_vec().unwrap()
}

/// Largest difference relative to the largest magnitude of `want`.
pub fn rel_diff(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max)
        / scale
}

pub fn assert_close(name: &str, got: &[f32], want: &[f32], tol: f32) {
    let d = rel_diff(got, want);
    assert!(d <= tol, "{name}: relative difference {d:e} > {tol:e}");
}

/// Two rows: the first two packed sequences (ids 0 and 1) and padding (-1), the second two
/// sequences in interleaved runs of three and padding.
pub fn attention_case(q_len: usize, k_len: usize) -> (AttentionShape, Vec<i64>, Vec<i64>) {
    let shape = AttentionShape {
        batch: 2,
        heads: 4,
        kv_heads: 2,
        head_dim: 16,
        q_len,
        k_len,
        scale: 0.25,
        window: None,
        softcap: None,
    };
    let row_ids = |len: usize, b: usize| -> Vec<i64> {
        (0..len)
            .map(|j| match b {
                0 if j < len * 2 / 5 => 0,
                0 if j < len * 9 / 10 => 1,
                // Interleaved runs of one id: a sequence's keys need not be contiguous.
                1 if j < len * 3 / 4 => ((j / 3) % 2) as i64,
                _ => -1,
            })
            .collect()
    };
    let k_ids: Vec<i64> = (0..2).flat_map(|b| row_ids(k_len, b)).collect();
    let q_ids: Vec<i64> = (0..2)
        .flat_map(|b| row_ids(k_len, b)[k_len - q_len..].to_vec())
        .collect();
    (shape, q_ids, k_ids)
}
