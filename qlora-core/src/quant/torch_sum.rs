//! Torch's float32 CPU summation order, so `absmax.mean()` gives the exact same offset.
//!
//! `torch.sum` on a contiguous float tensor (AVX2 build) accumulates 8-lane vectors, four of them
//! side by side, through a 4-level cascade that flushes every `2^level_power` rows; the lanes and
//! the scalar tail are then added in a fixed order. Everything stays in f32, so the order decides
//! the last bits. Torch runs this serially below 32768 elements (one absmax per 64 weights, so
//! any layer under ~2M parameters); above that its result depends on its thread count.

const LANES: usize = 8;
const ILP: usize = 4;
const LEVELS: usize = 4;

fn ceil_log2(x: usize) -> usize {
    if x <= 2 {
        1
    } else {
        (usize::BITS - (x - 1).leading_zeros()) as usize
    }
}

fn add<const L: usize>(acc: &mut [f32; L], x: &[f32; L]) {
    for (a, v) in acc.iter_mut().zip(x) {
        *a += v;
    }
}

/// Torch's `multi_row_sum`: sums `rows` (each ILP accumulators of L lanes) in a cascade.
fn multi_row_sum<const L: usize>(rows: &[[[f32; L]; ILP]]) -> [[f32; L]; ILP] {
    let size = rows.len();
    let level_power = 4.max(ceil_log2(size) / LEVELS);
    let level_step = 1usize << level_power;
    let level_mask = level_step - 1;
    let mut acc = [[[0f32; L]; ILP]; LEVELS];

    let mut i = 0;
    while i + level_step <= size {
        for row in &rows[i..i + level_step] {
            for (a, unit) in acc[0].iter_mut().zip(row) {
                add(a, unit);
            }
        }
        i += level_step;
        for j in 1..LEVELS {
            let (lower, upper) = acc.split_at_mut(j);
            for (up, low) in upper[0].iter_mut().zip(lower[j - 1].iter_mut()) {
                add(up, low);
                *low = [0.0; L];
            }
            if i & (level_mask << (j * level_power)) != 0 {
                break;
            }
        }
    }
    for row in &rows[i..] {
        for (a, unit) in acc[0].iter_mut().zip(row) {
            add(a, unit);
        }
    }
    for j in 1..LEVELS {
        let (first, rest) = acc.split_at_mut(1);
        for (a, level) in first[0].iter_mut().zip(&rest[j - 1]) {
            add(a, level);
        }
    }
    acc[0]
}

/// Torch's `row_sum`: ILP-wide cascade over whole groups, then the leftover units.
fn row_sum<const L: usize>(units: &[[f32; L]]) -> [f32; L] {
    let groups = units.len() / ILP;
    let rows: Vec<[[f32; L]; ILP]> = units[..groups * ILP]
        .chunks_exact(ILP)
        .map(|c| c.try_into().expect("ILP units"))
        .collect();
    let mut partial = multi_row_sum(&rows);
    for unit in &units[groups * ILP..] {
        add(&mut partial[0], unit);
    }
    for k in 1..ILP {
        let p = partial[k];
        add(&mut partial[0], &p);
    }
    partial[0]
}

/// `torch.sum(x)` for a contiguous float32 vector, bit for bit.
pub fn torch_sum(x: &[f32]) -> f32 {
    if x.len() < LANES {
        let units: Vec<[f32; 1]> = x.iter().map(|&v| [v]).collect();
        return row_sum(&units)[0];
    }
    let vectors = x.len() / LANES;
    let units: Vec<[f32; LANES]> = x[..vectors * LANES]
        .chunks_exact(LANES)
        .map(|c| c.try_into().expect("lane-sized chunk"))
        .collect();
    let lanes = row_sum(&units);
    let mut total = 0f32;
    for v in &x[vectors * LANES..] {
        total += v;
    }
    for v in lanes {
        total += v;
    }
    total
}

/// `torch.mean(x)`: the sum above divided by the count in f32.
pub fn torch_mean(x: &[f32]) -> f32 {
    torch_sum(x) / x.len() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_small_and_exact_inputs() {
        assert_eq!(torch_sum(&[]), 0.0);
        assert_eq!(torch_sum(&[1.5]), 1.5);
        let ones = vec![1.0f32; 100_000];
        assert_eq!(torch_sum(&ones), 100_000.0);
        assert_eq!(torch_mean(&[1.0, 2.0, 3.0, 6.0]), 3.0);
    }
}
