//! The GPU path's CubeCL kernels against the generic tensor-op defaults they replace, on the
//! same wgpu device in the same run: each operation of the training step at SmolLM2-135M's
//! sizes (the defaults called directly, `backend::generic::*::<Dispatch>`), then whole training
//! steps of a SmolLM2-shaped model cut to a few layers (kernels in f32 and f16; the defaults in
//! f32 on the device's autodiff form, where every operation but the NF4 dequantization runs its
//! trait's default). On lavapipe (Mesa's CPU Vulkan driver) absolute figures mean little:
//! compare the ratios.
//!
//! Between the two, the kernels the GPU path replaced in the same run: the NF4 products through
//! the scratch buffer against a fresh dense weight a call, and the tiled attention against the
//! untiled kernels (`backend::set_baselines`).
//!
//! Run: `cargo run --release --features wgpu --example wgpu_bench [-- --layers 4 --seq 256]`;
//! `--steps-only ROW[,ROW]` runs only those training-step rows (`defaults`, `kernels`,
//! `kernels-f16`, `baselines`: the kernels with fresh NF4 buffers and untiled attention) and no
//! operations, so the device's peak memory is that row's alone.

#[cfg(feature = "wgpu")]
#[cfg(feature = "wgpu")]
fn main() {
    use std::time::Instant;

    use burn::backend::Dispatch;
    use burn::backend::ops::FloatTensorOps;
    use burn::tensor::{Device, DeviceKind, Distribution, Int, Tensor, TensorData};
    use qlora_core::ComputeDtype;
    use qlora_core::backend::generic::{attention, layers, loss, nf4, optim};
    use qlora_core::backend::{
        AdamWArithmetic, AdamWStep, AttentionShape, Baselines, Nf4Weight, ops, set_baselines,
    };
    use qlora_core::lora::LoraConfig;
    use qlora_core::model::{CausalLm, DropoutStream, LoadOptions, TrainBatch};
    use qlora_core::quant::{Nf4Config, Nf4Tensor};
    use qlora_core::train::{AdamWConfig, OptimizerKind, PagedAdamW};
    use support::synthetic::SyntheticModel;

    let (mut layers, mut seq) = (4usize, 256usize);
    let mut steps_only: Option<Vec<String>> = None;
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let value = pair.get(1).map(String::as_str).unwrap_or_default();
        match pair[0].as_str() {
            "--layers" => layers = value.parse().expect("--layers N"),
            "--seq" => seq = value.parse().expect("--seq N"),
            "--steps-only" => steps_only = Some(value.split(',').map(String::from).collect()),
            other => panic!("unknown argument {other}"),
        }
    }
    let device = Device::wgpu(DeviceKind::DefaultDevice);
    let random = |shape: [usize; 2]| Tensor::<2>::random(shape, Distribution::Default, &device);
    // Seconds of `f`, the mean of five runs after one that compiles (and autotunes).
    let time = |f: &dyn Fn()| {
        f();
        device.sync().expect("sync");
        let reps = 5;
        let start = Instant::now();
        for _ in 0..reps {
            f();
        }
        device.sync().expect("sync");
        start.elapsed().as_secs_f64() / reps as f64
    };
    // A tensor as the generic defaults take it.
    let p = |t: &Tensor<2>| t.clone().into_dispatch();
    let row = |name: &str, new: f64, old: f64| {
        println!(
            "  {name:<34} {:>9.2} ms {:>9.2} ms {:>7.1}x",
            new * 1e3,
            old * 1e3,
            old / new
        );
    };
    let compare =
        |name: &str, kernel: &dyn Fn(), default: &dyn Fn()| row(name, time(kernel), time(default));

    let shape = SyntheticModel::SMOLLM2_135M;
    let (h, inter, vocab) = (shape.hidden_size, shape.intermediate_size, shape.vocab_size);
    let (heads, kv_heads, d) = (shape.num_heads, shape.num_kv_heads, shape.head_dim());
    let baselines = Baselines {
        fresh_nf4_buffers: true,
        untiled_attention: true,
    };
    if steps_only.is_none() {
        println!(
            "Operations at SmolLM2-135M's sizes ({seq} tokens, hidden {h}, intermediate {inter}, \
         vocab {vocab}), f32, on wgpu:"
        );
        println!(
            "  {:<34} {:>12} {:>12} {:>8}",
            "", "kernel", "tensor ops", "speed-up"
        );
        let w: Vec<f32> = (0..inter * h)
            .map(|i| ((i * 2_654_435_761) % 1000) as f32 * 1e-4 - 0.05)
            .collect();
        let state = Nf4Tensor::quantize(
            &w,
            &[inter, h],
            qlora_core::FloatDtype::F32,
            Nf4Config::default(),
        )
        .expect("quantize");
        let weight = Nf4Weight::new(&state, &device);
        let x = random([seq, h]);
        let dense = || nf4::dequantize::<Dispatch>(&weight.operand());
        compare(
            "NF4 dequantization 1536x576",
            &|| drop(weight.dequantize()),
            &|| drop(dense()),
        );
        let linear = || drop(weight.linear(x.clone()));
        compare("NF4 matmul x·Wᵀ", &linear, &|| {
            drop(Dispatch::float_matmul(
                p(&x),
                Dispatch::float_transpose(dense()),
            ))
        });
        let dy = random([seq, inter]);
        let input_grad = || drop(weight.input_grad(dy.clone()));
        compare("NF4 matmul dy·W", &input_grad, &|| {
            drop(Dispatch::float_matmul(p(&dy), dense()))
        });
        let s = AttentionShape::new(1, [heads, kv_heads, d], seq, seq);
        let ids = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64; seq], [seq]), &device);
        let pi = |t: &Tensor<1, Int>| t.clone().into_dispatch();
        let (q, k, v) = (
            random([seq, h]),
            random([seq, kv_heads * d]),
            random([seq, kv_heads * d]),
        );
        let forward = || {
            drop(ops::attention(
                q.clone(),
                k.clone(),
                v.clone(),
                &ids,
                &ids,
                s,
            ))
        };
        compare("attention forward", &forward, &|| {
            drop(attention::attention::<Dispatch>(
                p(&q),
                p(&k),
                p(&v),
                pi(&ids),
                pi(&ids),
                s,
            ))
        });
        let (out, lse) = ops::attention(q.clone(), k.clone(), v.clone(), &ids, &ids, s);
        let d_out = random([seq, h]);
        let backward = || {
            drop(ops::attention_backward(
                q.clone(),
                k.clone(),
                v.clone(),
                out.clone(),
                lse.clone(),
                d_out.clone(),
                &ids,
                &ids,
                s,
            ))
        };
        compare("attention backward", &backward, &|| {
            drop(attention::attention_backward::<Dispatch>(
                p(&q),
                p(&k),
                p(&v),
                p(&out),
                lse.clone().into_dispatch(),
                p(&d_out),
                pi(&ids),
                pi(&ids),
                s,
            ))
        });
        // The kernels against those they replaced, in this run.
        let replaced = |name: &str, new: &dyn Fn()| {
            let new_time = time(new);
            set_baselines(baselines);
            let old = time(new);
            set_baselines(Baselines::default());
            row(name, new_time, old);
        };
        println!(
            "  {:<34} {:>12} {:>12} {:>8}",
            "kernels against those they replaced:", "new", "replaced", "speed-up"
        );
        replaced("NF4 x·Wᵀ, scratch vs fresh buffer", &linear);
        replaced("NF4 dy·W, scratch vs fresh buffer", &input_grad);
        replaced("attention forward, tiled vs untiled", &forward);
        replaced("attention backward, tiled/untiled", &backward);
        println!();
        let head = random([vocab, h]);
        let targets = Tensor::<1, Int>::from_data(
            TensorData::new(
                (0..seq as i64).map(|i| i * 97 % vocab as i64).collect(),
                [seq],
            ),
            &device,
        );
        compare(
            "cross-entropy and its gradient",
            &|| drop(ops::cross_entropy_with_grad(x.clone(), &head, &targets)),
            &|| {
                drop(loss::cross_entropy::<Dispatch>(
                    p(&x),
                    p(&head),
                    pi(&targets),
                    true,
                ))
            },
        );
        let norm = Tensor::<1>::ones([h], &device);
        let pn = || norm.clone().into_dispatch();
        compare(
            "RMSNorm forward and backward",
            &|| {
                drop(ops::rms_norm(x.clone(), &norm, 1e-5));
                drop(ops::rms_norm_backward(x.clone(), &norm, 1e-5, x.clone()));
            },
            &|| {
                drop(layers::rms_norm::<Dispatch>(p(&x), pn(), 1e-5));
                drop(layers::rms_norm_backward::<Dispatch>(
                    p(&x),
                    pn(),
                    1e-5,
                    p(&x),
                ));
            },
        );
        let (cos, sin) = (random([seq, d]), random([seq, d]));
        compare("RoPE", &|| drop(ops::rope(q.clone(), &cos, &sin)), &|| {
            drop(layers::rope::<Dispatch>(p(&q), p(&cos), p(&sin)))
        });
        let (gate, up) = (random([seq, inter]), random([seq, inter]));
        compare(
            "SwiGLU forward and backward",
            &|| {
                drop(ops::swiglu(gate.clone(), up.clone()));
                drop(ops::swiglu_backward(gate.clone(), up.clone(), gate.clone()));
            },
            &|| {
                drop(layers::swiglu::<Dispatch>(p(&gate), p(&up)));
                drop(layers::swiglu_backward::<Dispatch>(
                    p(&gate),
                    p(&up),
                    p(&gate),
                ));
            },
        );
        compare(
            "dropout",
            &|| drop(ops::dropout(gate.clone(), 7, 0.05)),
            &|| drop(layers::dropout::<Dispatch>(p(&gate), 7, 0.05)),
        );
        let n = 64 * (h + inter);
        let param = Tensor::<1>::random([n], Distribution::Default, &device);
        let p1 = || param.clone().into_dispatch();
        let step = AdamWStep {
            arithmetic: AdamWArithmetic::Torch,
            lr: 2e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            step: 3,
            grad_scale: 1.0,
        };
        compare(
            "AdamW 32-bit (an r 64 adapter pair)",
            &|| {
                drop(ops::adamw_step(
                    param.clone(),
                    param.clone(),
                    param.clone(),
                    param.clone(),
                    step,
                ))
            },
            &|| drop(optim::adamw_step::<Dispatch>(p1(), p1(), p1(), p1(), step)),
        );
        // The 8-bit state lives inside the optimizer: its default runs on the autodiff form of the
        // device, where the optimizer's operations are the trait's defaults.
        let eight_bit = |device: &Device| {
            let optimizer = std::cell::RefCell::new(PagedAdamW::new(
                OptimizerKind::AdamW8,
                AdamWConfig::default(),
                &[n],
                None,
                device,
            ));
            let param = param.clone().to_device(device);
            move || {
                let mut o = optimizer.borrow_mut();
                o.begin_step();
                drop(o.update(0, param.clone(), param.clone(), 1.0, 2e-4));
            }
        };
        compare(
            "AdamW 8-bit (the same pair)",
            &eight_bit(&device),
            &eight_bit(&device.clone().autodiff()),
        );
    }

    // Whole steps of a SmolLM2-shaped model with `layers` layers.
    let model_shape = SyntheticModel {
        num_layers: layers,
        ..shape
    };
    let dir = tempfile::tempdir().expect("temp dir");
    model_shape.write(dir.path(), 7).expect("write model");
    println!(
        "\nTraining steps of a SmolLM2-shaped model with {layers} layers ({} parameters), NF4 \
         base, LoRA r 64 on all linears, checkpointing, AdamW 32-bit, {seq} tokens, on wgpu:",
        model_shape.parameters()
    );
    println!(
        "  {:<34} {:>12} {:>10} {:>14} {:>14}",
        "", "step", "tokens/s", "memory in use", "peak memory"
    );
    let ids: Vec<u32> = (0..seq as u32)
        .map(|i| (i * 7919 + 13) % vocab as u32)
        .collect();
    let batch = TrainBatch::new(
        vec![ids.clone()],
        vec![ids.iter().map(|&i| i64::from(i)).collect()],
        vec![vec![true; seq]],
    );
    let mut baseline = None;
    for (row, name, on, compute) in [
        (
            "defaults",
            "tensor-op defaults, f32",
            device.clone().autodiff(),
            ComputeDtype::F32,
        ),
        (
            "baselines",
            "kernels replaced, f32",
            device.clone(),
            ComputeDtype::F32,
        ),
        (
            "kernels",
            "CubeCL kernels, f32",
            device.clone(),
            ComputeDtype::F32,
        ),
        (
            "kernels-f16",
            "CubeCL kernels, f16",
            device.clone(),
            ComputeDtype::F16,
        ),
    ] {
        if steps_only
            .as_ref()
            .is_some_and(|rows| !rows.iter().any(|r| r == row))
        {
            continue;
        }
        set_baselines(if row == "baselines" {
            baselines
        } else {
            Baselines::default()
        });
        let mut model = CausalLm::load(
            dir.path(),
            &LoadOptions {
                device: on.clone(),
                compute,
                ..LoadOptions::default()
            },
        )
        .expect("model");
        model.attach_lora(&LoraConfig::default(), 42).expect("lora");
        let sizes = model.adapter_sizes();
        let mut optimizer = PagedAdamW::new(
            OptimizerKind::AdamW32,
            AdamWConfig::default(),
            &sizes,
            None,
            &on,
        );
        let mut seconds = Vec::new();
        for step in 0..3 {
            let t = Instant::now();
            let stream = DropoutStream { seed: 42, step };
            let result = model
                .loss_and_grads(&batch, true, Some(&stream))
                .expect("step");
            optimizer.step_adapters(&mut model, result.grads.grads, 1.0, 2e-4);
            device.sync().expect("sync");
            // The first step compiles the kernels.
            if step > 0 {
                seconds.push(t.elapsed().as_secs_f64());
            }
        }
        let mean = seconds.iter().sum::<f64>() / seconds.len() as f64;
        let (in_use, peak) = qlora_core::device::device_memory(&device).unwrap_or_default();
        let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
        let speedup = baseline.map_or(String::new(), |b: f64| format!("  ({:.1}x)", b / mean));
        baseline.get_or_insert(mean);
        println!(
            "  {name:<34} {:>10.2} s {:>10.1} {:>10.1} MiB {:>10.1} MiB{speedup}",
            mean,
            seq as f64 / mean,
            mib(in_use),
            mib(peak)
        );
    }
}

#[cfg(not(feature = "wgpu"))]
fn main() {
    eprintln!("build with --features wgpu");
}
