//! bitsandbytes' 8-bit "dynamic" code maps (`create_dynamic_map`), value for value.
//!
//! The signed map quantizes the NF4 absmax in double quantization and the first Adam moment in
//! 8-bit optimizers; the unsigned one the second moment. Each decade `10^-6 .. 10^0` holds the
//! means of consecutive points of `torch.linspace(0.1, 1, k)` in float32. Torch evaluates
//! linspace from both ends with a fused multiply-add, which we must copy to get the same bits.

/// Float32 `torch.linspace(start, end, steps)` as torch computes it on CPU.
fn torch_linspace(start: f32, end: f32, steps: usize) -> Vec<f32> {
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| {
            if i < halfway {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((steps - i - 1) as f32, end)
            }
        })
        .collect()
}

/// `create_dynamic_map(signed, max_exponent_bits=7, total_bits=8)`: 256 sorted values in [-1, 1]
/// (signed) or [0, 1] (unsigned).
pub fn dynamic_map(signed: bool) -> [f32; 256] {
    const MAX_EXPONENT_BITS: i32 = 7;
    const NON_SIGN_BITS: i32 = 7;
    // Python's `10 ** e` for e = -6..=0, rounded to f32 when torch multiplies.
    const DECADES: [f64; 7] = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0];

    let mut data = Vec::with_capacity(256);
    for (i, decade) in DECADES.iter().enumerate() {
        let exponent = i as i32 + NON_SIGN_BITS - MAX_EXPONENT_BITS + i32::from(!signed);
        let fraction_items = (1usize << exponent) + 1;
        let boundaries = torch_linspace(0.1, 1.0, fraction_items);
        let scale = *decade as f32;
        for pair in boundaries.windows(2) {
            let mean = (pair[0] + pair[1]) / 2.0;
            data.push(scale * mean);
            if signed {
                data.push(-scale * mean);
            }
        }
    }
    data.push(0.0);
    data.push(1.0);
    data.resize(256, 0.0);
    data.sort_by(f32::total_cmp);
    data.try_into().expect("256 values")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_are_sorted_and_bounded() {
        let signed = dynamic_map(true);
        assert_eq!(signed[255], 1.0);
        assert!(signed[0] > -1.0 && signed[0] < -0.99);
        assert!(signed.windows(2).all(|w| w[0] < w[1]));
        let unsigned = dynamic_map(false);
        assert_eq!(unsigned[0], 0.0);
        assert_eq!(unsigned[255], 1.0);
        assert!(unsigned.windows(2).all(|w| w[0] < w[1]));
    }
}
