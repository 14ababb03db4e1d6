//! `qlora selftest`: every kernel of [`crate::backend::QloraOps`] on a device, on seeded random
//! inputs at two sizes, against a reference with the tolerances the tests use. On a GPU the
//! reference is the CPU's kernels; on the CPU it is each operation's tensor-op default
//! ([`ops::reference`]), and for the optimizer the autodiff device's path (the tensor-op
//! default too).
//!
//! Errors are the largest difference relative to the largest magnitude of the reference (as
//! the tests measure them): 1e-5 in f32; in a 16-bit compute dtype the matmuls that run in it
//! may differ by one unit in the last place of their rounded output. Masks, dequantized
//! weights and paged optimizer states must be equal bit for bit.

use std::time::Instant;

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::backend::{AttentionShape, Nf4Weight, ops};
use crate::device::is_gpu;
use crate::dtype::{ComputeDtype, FloatDtype};
use crate::error::Result;
use crate::quant::{Nf4Config, Nf4Tensor};
use crate::train::{AdamWConfig, OptimizerKind, PagedAdamW, SavedMoments};

/// The environment variable that breaks one kernel's output on the tested device (its name as
/// the table prints it): how the tests see that a wrong kernel fails the self-test.
pub const BREAK_VARIABLE: &str = "QLORA_SELFTEST_BREAK";

/// One row of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelCheck {
    /// The kernel, as the table names it.
    pub kernel: &'static str,
    /// The size the inputs had (`small`, `large`).
    pub size: &'static str,
    /// Which of its outputs is the worst (`dq`, `losses`, ...).
    pub output: &'static str,
    /// The largest error of its outputs (relative, or in code steps for 8-bit states).
    pub error: f64,
    /// The most the error may be.
    pub limit: f64,
    /// Seconds of the kernel on the tested device (its second run; the first compiles).
    pub seconds: f64,
}

impl KernelCheck {
    /// Whether the error is within the limit.
    pub fn passed(&self) -> bool {
        self.error <= self.limit
    }
}

/// How an output is compared.
#[derive(Clone, Copy)]
enum Measure {
    /// Largest difference over the reference's largest magnitude, at most this.
    Relative(f64),
    /// Equal bit for bit.
    Exact,
    /// 8-bit codes: at most this many steps of the map apart.
    Codes(f64),
}

/// The outputs of one run of a case: name, values, how to compare them.
type Outputs = Vec<(&'static str, Vec<f32>, Measure)>;

/// The sizes of a case.
#[derive(Clone, Copy)]
struct Size {
    name: &'static str,
    rows: usize,
    hidden: usize,
    intermediate: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    vocab: usize,
    rank: usize,
}

const SIZES: [Size; 2] = [
    // Odd sizes: rows and widths that are no multiple of a block, a cube or a vector.
    Size {
        name: "small",
        rows: 37,
        hidden: 576,
        intermediate: 1000,
        heads: 9,
        kv_heads: 3,
        head_dim: 64,
        vocab: 5000,
        rank: 8,
    },
    // A layer of a half-billion model at a short sequence.
    Size {
        name: "large",
        rows: 256,
        hidden: 1024,
        intermediate: 2816,
        heads: 16,
        kv_heads: 4,
        head_dim: 64,
        // The loss's gradient sums over the vocabulary: at 32000, Burn's matmul on lavapipe
        // (summing in order) differs from the CPU's by 1.5e-5; the tests' 10000 keeps 1e-5.
        vocab: 10000,
        rank: 64,
    },
];

/// Which implementation a case runs.
#[derive(Clone, Copy, PartialEq)]
enum Path {
    /// The device's kernels.
    Kernel,
    /// The tensor-op defaults.
    Reference,
}

/// `n` seeded pseudo-random values uniform in `[-scale, scale)` (xorshift64), the inputs of
/// every check (and of the tests that compare kernels).
pub fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn tensor<const D: usize>(v: &[f32], shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), device)
}

fn int_tensor(v: &[i64], device: &Device) -> Tensor<1, Int> {
    Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), device)
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("a float tensor")
}

/// The worst error of `got` against `want` under `measure`.
fn error(got: &[f32], want: &[f32], measure: Measure) -> (f64, f64) {
    if got.len() != want.len() {
        return (f64::INFINITY, 0.0);
    }
    match measure {
        Measure::Exact => {
            let differing = got
                .iter()
                .zip(want)
                .filter(|(a, b)| a.to_bits() != b.to_bits())
                .count();
            (differing as f64, 0.0)
        }
        Measure::Codes(limit) => {
            let worst = got
                .iter()
                .zip(want)
                .map(|(a, b)| f64::from((a - b).abs()))
                .fold(0.0, f64::max);
            (worst, limit)
        }
        Measure::Relative(limit) => {
            let scale = want.iter().fold(0f64, |m, v| m.max(f64::from(v.abs())));
            let worst = got
                .iter()
                .zip(want)
                .map(|(a, b)| {
                    let d = f64::from(*a) - f64::from(*b);
                    if d.is_nan() { f64::INFINITY } else { d.abs() }
                })
                .fold(0.0, f64::max);
            (worst / scale.max(1e-30), limit)
        }
    }
}

/// The inputs of a case at a size, shared by both runs.
struct Case {
    size: Size,
    compute: ComputeDtype,
}

impl Case {
    /// The tolerance of an output computed in `dtype` (its rounding) or in f32.
    fn limit(&self, in_compute: bool) -> Measure {
        Measure::Relative(match (in_compute, self.compute) {
            (false, _) | (_, ComputeDtype::F32) => 1e-5,
            // One unit in the last place of the output's largest magnitude.
            (true, ComputeDtype::Bf16) => 2f64.powi(-7),
            (true, ComputeDtype::F16) => 2f64.powi(-10),
        })
    }

    fn in_compute<const D: usize>(&self, t: Tensor<D>) -> Tensor<D> {
        match self.compute {
            ComputeDtype::F32 => t,
            other => t.cast(other.burn()),
        }
    }

    fn nf4_state(&self, seed: u64) -> Nf4Tensor {
        let Size {
            hidden,
            intermediate,
            ..
        } = self.size;
        let w = values(intermediate * hidden, seed, 0.05);
        Nf4Tensor::quantize(
            &w,
            &[intermediate, hidden],
            FloatDtype::F32,
            Nf4Config::default(),
        )
        .expect("quantizable")
    }

    fn nf4_dequantize(&self, path: Path, device: &Device) -> Outputs {
        let weight = Nf4Weight::new(&self.nf4_state(1), device);
        let dense = match path {
            Path::Kernel => weight.dequantize(),
            Path::Reference => ops::reference::nf4_dequantize(&weight.operand()),
        };
        vec![("weight", host(dense), Measure::Exact)]
    }

    fn nf4_matmul(&self, path: Path, device: &Device) -> Outputs {
        let Size {
            rows,
            hidden,
            intermediate,
            ..
        } = self.size;
        let weight = Nf4Weight::new(&self.nf4_state(2), device);
        let x = self.in_compute(tensor(
            &values(rows * hidden, 3, 1.0),
            [rows, hidden],
            device,
        ));
        let y = match path {
            Path::Kernel => weight.linear(x),
            Path::Reference => {
                let dense = self.in_compute(ops::reference::nf4_dequantize(&weight.operand()));
                x.matmul(dense.transpose())
            }
        };
        debug_assert_eq!(y.dims(), [rows, intermediate]);
        vec![("y", host(y), self.limit(true))]
    }

    fn nf4_matmul_transposed(&self, path: Path, device: &Device) -> Outputs {
        let Size {
            rows, intermediate, ..
        } = self.size;
        let weight = Nf4Weight::new(&self.nf4_state(4), device);
        let dy = self.in_compute(tensor(
            &values(rows * intermediate, 5, 1.0),
            [rows, intermediate],
            device,
        ));
        let dx = match path {
            Path::Kernel => weight.input_grad(dy),
            Path::Reference => {
                let dense = self.in_compute(ops::reference::nf4_dequantize(&weight.operand()));
                dy.matmul(dense)
            }
        };
        vec![("dx", host(dx), self.limit(true))]
    }

    fn rms_norm(&self, path: Path, device: &Device) -> Outputs {
        let Size { rows, hidden, .. } = self.size;
        let x = tensor(&values(rows * hidden, 21, 2.0), [rows, hidden], device);
        let w = tensor(&values(hidden, 22, 1.5), [hidden], device);
        let dy = tensor(&values(rows * hidden, 23, 1.0), [rows, hidden], device);
        let (y, dx) = match path {
            Path::Kernel => (
                ops::rms_norm(x.clone(), &w, 1e-5),
                ops::rms_norm_backward(x, &w, 1e-5, dy),
            ),
            Path::Reference => (
                ops::reference::rms_norm(x.clone(), &w, 1e-5),
                ops::reference::rms_norm_backward(x, &w, 1e-5, dy),
            ),
        };
        let f32 = self.limit(false);
        vec![("y", host(y), f32), ("dx", host(dx), f32)]
    }

    fn rope(&self, path: Path, device: &Device) -> Outputs {
        let Size {
            rows,
            heads,
            head_dim,
            ..
        } = self.size;
        let (cos, sin): (Vec<f32>, Vec<f32>) = (0..rows * head_dim)
            .map(|i| ((i as f32) * 0.37).sin_cos())
            .map(|(s, c)| (c, s))
            .unzip();
        let x = tensor(
            &values(rows * heads * head_dim, 24, 2.0),
            [rows, heads * head_dim],
            device,
        );
        let (c, s) = (
            tensor(&cos, [rows, head_dim], device),
            tensor(&sin, [rows, head_dim], device),
        );
        let (y, back) = match path {
            Path::Kernel => (ops::rope(x.clone(), &c, &s), ops::rope(x, &c, &s.neg())),
            Path::Reference => (
                ops::reference::rope(x.clone(), &c, &s),
                ops::reference::rope(x, &c, &s.neg()),
            ),
        };
        let f32 = self.limit(false);
        vec![("y", host(y), f32), ("backward", host(back), f32)]
    }

    fn gated(&self, path: Path, device: &Device, gelu: bool) -> Outputs {
        let Size {
            rows, intermediate, ..
        } = self.size;
        let shape = [rows, intermediate];
        let n = rows * intermediate;
        let gate = tensor(&values(n, 25, 3.0), shape, device);
        let up = tensor(&values(n, 26, 2.0), shape, device);
        let dz = tensor(&values(n, 27, 1.0), shape, device);
        let (g, u, d) = (gate.clone(), up.clone(), dz);
        let (z, (dg, du)) = match (path, gelu) {
            (Path::Kernel, false) => (ops::swiglu(gate, up), ops::swiglu_backward(g, u, d)),
            (Path::Kernel, true) => (ops::geglu(gate, up), ops::geglu_backward(g, u, d)),
            (Path::Reference, false) => (
                ops::reference::swiglu(gate, up),
                ops::reference::swiglu_backward(g, u, d),
            ),
            (Path::Reference, true) => (
                ops::reference::geglu(gate, up),
                ops::reference::geglu_backward(g, u, d),
            ),
        };
        let f32 = self.limit(false);
        vec![
            ("z", host(z), f32),
            ("dgate", host(dg), f32),
            ("dup", host(du), f32),
        ]
    }

    fn dropout(&self, path: Path, device: &Device) -> Outputs {
        let Size { rows, hidden, .. } = self.size;
        let x = tensor(&values(rows * hidden, 41, 1.0), [rows, hidden], device);
        let y = match path {
            Path::Kernel => ops::dropout(x, 0xdead_beef_1234_5678, 0.1),
            Path::Reference => ops::reference::dropout(x, 0xdead_beef_1234_5678, 0.1),
        };
        vec![("y", host(y), Measure::Exact)]
    }

    fn lora(&self, path: Path, device: &Device) -> Outputs {
        let Size {
            rows,
            hidden: inp,
            intermediate: out,
            rank: r,
            ..
        } = self.size;
        let x = tensor(&values(rows * inp, 42, 1.0), [rows, inp], device);
        let a = tensor(&values(r * inp, 43, 0.3), [r, inp], device);
        let b = tensor(&values(out * r, 44, 0.3), [out, r], device);
        let base = tensor(&values(rows * out, 45, 1.0), [rows, out], device);
        let dy = tensor(&values(rows * out, 46, 1.0), [rows, out], device);
        let dx_base = tensor(&values(rows * inp, 47, 1.0), [rows, inp], device);
        let (y, (da, db, dx)) = match path {
            Path::Kernel => (
                ops::lora_forward(base, x.clone(), &a, &b, 2.0, 9, 0.1),
                ops::lora_backward(x, &a, &b, dy, dx_base, 2.0, 9, 0.1),
            ),
            Path::Reference => (
                ops::reference::lora_forward(base, x.clone(), &a, &b, 2.0, 9, 0.1),
                ops::reference::lora_backward(x, &a, &b, dy, dx_base, 2.0, 9, 0.1),
            ),
        };
        let f32 = self.limit(false);
        vec![
            ("y", host(y), f32),
            ("dA", host(da), f32),
            ("dB", host(db), f32),
            ("dx", host(dx), f32),
        ]
    }

    /// Two rows: the first packs two sequences and padding, the second interleaves two
    /// sequences' runs and ends in padding; grouped-query heads.
    fn attention_inputs(&self) -> (AttentionShape, Vec<i64>) {
        let Size {
            rows,
            heads,
            kv_heads,
            head_dim,
            ..
        } = self.size;
        let len = rows;
        let shape = AttentionShape {
            batch: 2,
            heads,
            kv_heads,
            head_dim,
            q_len: len,
            k_len: len,
            scale: 1.0 / (head_dim as f64).sqrt(),
            window: None,
            softcap: None,
        };
        let ids = (0..2)
            .flat_map(|b| {
                (0..len).map(move |j| match b {
                    0 if j < len * 2 / 5 => 0,
                    0 if j < len * 9 / 10 => 1,
                    1 if j < len * 3 / 4 => ((j / 3) % 2) as i64,
                    _ => -1,
                })
            })
            .collect();
        (shape, ids)
    }

    fn attention(&self, path: Path, device: &Device, backward: bool) -> Outputs {
        let (s, seq_ids) = self.attention_inputs();
        let q_shape = [s.batch * s.q_len, s.heads * s.head_dim];
        let k_shape = [s.batch * s.k_len, s.kv_heads * s.head_dim];
        let (nq, nk) = (q_shape[0] * q_shape[1], k_shape[0] * k_shape[1]);
        let q = tensor(&values(nq, 11, 1.0), q_shape, device);
        let k = tensor(&values(nk, 12, 1.0), k_shape, device);
        let v = tensor(&values(nk, 13, 1.0), k_shape, device);
        let ids = int_tensor(&seq_ids, device);
        let f32 = self.limit(false);
        let forward = match path {
            Path::Kernel => ops::attention,
            Path::Reference => ops::reference::attention,
        };
        let (out, lse) = forward(q.clone(), k.clone(), v.clone(), &ids, &ids, s);
        if !backward {
            return vec![("output", host(out), f32), ("log-sum-exp", host(lse), f32)];
        }
        let d_out = tensor(&values(nq, 14, 1.0), q_shape, device);
        let backward = match path {
            Path::Kernel => ops::attention_backward,
            Path::Reference => ops::reference::attention_backward,
        };
        let (dq, dk, dv) = backward(q, k, v, out, lse, d_out, &ids, &ids, s);
        vec![
            ("dq", host(dq), f32),
            ("dk", host(dk), f32),
            ("dv", host(dv), f32),
        ]
    }

    fn cross_entropy(&self, path: Path, device: &Device) -> Outputs {
        let Size {
            rows,
            hidden,
            vocab,
            ..
        } = self.size;
        let h = self.in_compute(tensor(
            &values(rows * hidden, 31, 0.5),
            [rows, hidden],
            device,
        ));
        let w = self.in_compute(tensor(
            &values(vocab * hidden, 32, 0.1),
            [vocab, hidden],
            device,
        ));
        let targets: Vec<i64> = (0..rows)
            .map(|r| {
                if r % 7 == 3 {
                    -1
                } else {
                    ((r * 7919) % vocab) as i64
                }
            })
            .collect();
        let t = int_tensor(&targets, device);
        let (losses, grad) = match path {
            Path::Kernel => ops::cross_entropy_with_grad(h, &w, &t),
            Path::Reference => ops::reference::cross_entropy_with_grad(h, &w, &t),
        };
        vec![
            ("losses", host(losses), self.limit(true)),
            ("grad", host(grad), self.limit(true)),
        ]
    }

    /// Three AdamW steps of four parameters (one too small for 8-bit states) with `kind`,
    /// paged with `budget`.
    fn adamw(&self, kind: OptimizerKind, budget: Option<usize>, device: &Device) -> Outputs {
        let n = self.size.hidden * self.size.rank;
        let sizes = [n, n / 2 + 3, 1000, n + 17];
        let mut params: Vec<Tensor<1>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &len)| tensor(&values(len, 60 + i as u64, 0.5), [len], device))
            .collect();
        let mut optim = PagedAdamW::new(kind, AdamWConfig::default(), &sizes, budget, device);
        for step in 0..3u64 {
            optim.begin_step();
            for (i, &len) in sizes.iter().enumerate() {
                let g = tensor(&values(len, 70 + 10 * step + i as u64, 0.5), [len], device);
                params[i] = optim.update(i, params[i].clone(), g, 1.0, 1e-2);
            }
        }
        let mut param_values = Vec::new();
        for p in params {
            param_values.extend(host(p));
        }
        let (mut moments, mut codes, mut absmax) = (Vec::new(), Vec::new(), Vec::new());
        for saved in optim.save().1 {
            match saved {
                SavedMoments::F32 { m, v } => {
                    moments.extend(m);
                    moments.extend(v);
                }
                SavedMoments::U8 {
                    m_codes,
                    m_absmax,
                    v_codes,
                    v_absmax,
                } => {
                    codes.extend(m_codes.iter().chain(&v_codes).map(|&c| f32::from(c)));
                    absmax.extend(m_absmax);
                    absmax.extend(v_absmax);
                }
            }
        }
        let (params_measure, states_measure) = match budget {
            // Paging moves states, so everything equals the unpaged run's bit for bit.
            Some(_) => (Measure::Exact, Measure::Exact),
            None => (self.limit(false), self.limit(false)),
        };
        let codes_measure = match budget {
            Some(_) => Measure::Exact,
            None => Measure::Codes(1.0),
        };
        let mut out = vec![("parameters", param_values, params_measure)];
        if !moments.is_empty() {
            out.push(("moments", moments, states_measure));
        }
        if !codes.is_empty() {
            out.push(("codes", codes, codes_measure));
            out.push(("absmax", absmax, states_measure));
        }
        out
    }
}

/// The kernels in the table's order.
const KERNELS: [&str; 16] = [
    "nf4 dequantize",
    "nf4 matmul x·Wᵀ",
    "nf4 matmul dy·W",
    "rms_norm fwd/bwd",
    "rope fwd/bwd",
    "swiglu fwd/bwd",
    "geglu fwd/bwd",
    "dropout",
    "lora fwd/bwd",
    "attention fwd",
    "attention bwd",
    "cross-entropy",
    "adamw 32-bit",
    "adamw 8-bit",
    "paged adamw 32-bit",
    "paged adamw 8-bit",
];

/// The names of the kernels the self-test checks, in its order.
pub fn kernel_names() -> &'static [&'static str] {
    &KERNELS
}

/// Run `kernel` of `case` on `device` by `path`.
fn run_kernel(case: &Case, kernel: &str, path: Path, device: &Device) -> Outputs {
    // The optimizer's reference on the CPU: the autodiff device takes the tensor-op default.
    let optim_device = if path == Path::Reference {
        device.clone().autodiff()
    } else {
        device.clone()
    };
    match kernel {
        "nf4 dequantize" => case.nf4_dequantize(path, device),
        "nf4 matmul x·Wᵀ" => case.nf4_matmul(path, device),
        "nf4 matmul dy·W" => case.nf4_matmul_transposed(path, device),
        "rms_norm fwd/bwd" => case.rms_norm(path, device),
        "rope fwd/bwd" => case.rope(path, device),
        "swiglu fwd/bwd" => case.gated(path, device, false),
        "geglu fwd/bwd" => case.gated(path, device, true),
        "dropout" => case.dropout(path, device),
        "lora fwd/bwd" => case.lora(path, device),
        "attention fwd" => case.attention(path, device, false),
        "attention bwd" => case.attention(path, device, true),
        "cross-entropy" => case.cross_entropy(path, device),
        "adamw 32-bit" => case.adamw(OptimizerKind::AdamW32, None, &optim_device),
        "adamw 8-bit" => case.adamw(OptimizerKind::AdamW8, None, &optim_device),
        // Paging against the same optimizer unpaged on the same device.
        "paged adamw 32-bit" => match path {
            Path::Kernel => case.adamw(OptimizerKind::PagedAdamW32, Some(0), device),
            Path::Reference => case.adamw(OptimizerKind::PagedAdamW32, None, device),
        },
        "paged adamw 8-bit" => match path {
            Path::Kernel => case.adamw(OptimizerKind::PagedAdamW8, Some(0), device),
            Path::Reference => case.adamw(OptimizerKind::PagedAdamW8, None, device),
        },
        other => unreachable!("no kernel {other}"),
    }
}

fn sync(device: &Device) {
    if is_gpu(device) {
        let _ = device.sync();
    }
}

/// Check every kernel of `device` at both sizes, handing each row to `report` as it is made.
/// `compute` is the dtype the matmuls run in. A kernel named by [`BREAK_VARIABLE`] has its
/// output on the tested device changed (a test's switch).
pub fn selftest(
    device: &Device,
    compute: ComputeDtype,
    report: &mut dyn FnMut(&KernelCheck),
) -> Result<Vec<KernelCheck>> {
    let broken = std::env::var(BREAK_VARIABLE).ok();
    let gpu = is_gpu(device);
    let cpu = Device::flex();
    let mut rows = Vec::new();
    for size in SIZES {
        let case = Case { size, compute };
        for &kernel in kernel_names() {
            let paging = kernel.starts_with("paged");
            // The reference: the CPU's kernels for a GPU; the tensor-op defaults on the CPU;
            // for paging, the same optimizer unpaged on the tested device.
            let want = match (gpu, paging) {
                (true, false) => run_kernel(&case, kernel, Path::Kernel, &cpu),
                _ => run_kernel(&case, kernel, Path::Reference, device),
            };
            // The first run compiles the device's kernels; the second is timed.
            let _ = run_kernel(&case, kernel, Path::Kernel, device);
            sync(device);
            let start = Instant::now();
            let mut got = run_kernel(&case, kernel, Path::Kernel, device);
            let seconds = start.elapsed().as_secs_f64();
            if broken.as_deref() == Some(kernel)
                && let Some(first) = got.first_mut().and_then(|(_, v, _)| v.first_mut())
            {
                *first += 0.01 + first.abs() * 0.01;
            }
            let ratio = |error: f64, limit: f64| {
                if limit > 0.0 {
                    error / limit
                } else if error == 0.0 {
                    0.0
                } else {
                    f64::INFINITY
                }
            };
            // The output that comes closest to its limit (or exceeds it most).
            let (output, error, limit) = got
                .iter()
                .zip(&want)
                .map(|((name, got, measure), (_, want, _))| {
                    let (error, limit) = error(got, want, *measure);
                    (*name, error, limit)
                })
                .max_by(|a, b| ratio(a.1, a.2).total_cmp(&ratio(b.1, b.2)))
                .unwrap_or(("", 0.0, 0.0));
            let check = KernelCheck {
                kernel,
                size: size.name,
                output,
                error,
                limit,
                seconds,
            };
            report(&check);
            rows.push(check);
        }
    }
    Ok(rows)
}
