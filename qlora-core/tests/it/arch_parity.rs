//! Each architecture's switches against transformers, peft and bitsandbytes, on the tiny
//! models of `tests/reference/tiny-ARCH` (made by `tests/reference/make_tiny_model.py ARCH`):
//! logits within 1e-4 and loss within 1e-5 of transformers in f32, with and without a PEFT
//! adapter on every projection; the adapters' gradients of the loss (our written-out
//! backward, checkpointing on and off) within 1e-4 of PyTorch's autograd; the adapter merged as
//! peft's `merge_and_unload()` merges it; NF4 weights byte-identical to bitsandbytes' checkpoint
//! of the model; and an f32 GGUF under llama.cpp's name of the architecture that imports back
//! to the same model.
//!
//! - Mistral: a sliding window of 6 keys on every layer over 16 tokens, untied head.
//! - Qwen 2: q/k/v biases (and none on o), tied embeddings, a full and a sliding-window layer.
//! - Qwen 3: per-head q/k RMSNorm, `head_dim` 32 with hidden 64 and 4 heads, tied embeddings, a
//!   full and a sliding-window layer of 6 keys over 16 tokens.
//! - Gemma 3: `(1 + w)` norms, four a layer and on the q/k heads, GeGLU, embeddings scaled by
//!   `sqrt(hidden)`, scores by `query_pre_attn_scalar`, five sliding layers with a local RoPE
//!   base and a global layer with linear RoPE scaling, tied embeddings.
//! - Phi-3: fused `qkv_proj` and `gate_up_proj` (adapters on the fused modules, NF4 of the
//!   fused weights), LongRoPE on half of every head with the long factors over 16 tokens and the
//!   short ones over 8, a sliding window of 6 keys on every layer, untied head.

use std::path::Path;

use qlora_core::FloatDtype;
use qlora_core::config::{
    Activation, Architecture, ModelConfig, NormForm, Projection, RopeKind, RopeScaling,
};
use qlora_core::export::{ExportOptions, GgufType, export_gguf};
use qlora_core::gguf::{GgufFile, ImportOptions, import_gguf};
use qlora_core::lora::{apply_adapter, read_adapter};
use qlora_core::merge::{MergeBase, MergeOptions, merge_model};
use qlora_core::model::{Bits, CausalLm, LoadOptions, TrainBatch};
use qlora_core::quantize_model::{QuantizeOptions, quantize_model};
use safetensors::Dtype;
use support::{f32s, load_tensors_at, reference};

type Tensors = std::collections::HashMap<String, (Dtype, Vec<usize>, Vec<u8>)>;

fn dense() -> LoadOptions {
    LoadOptions {
        bits: Bits::Sixteen,
        ..LoadOptions::default()
    }
}

fn max_diff(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max)
}

/// The reference's `input_ids` as rows of ids, and as labels.
fn inputs(r: &Tensors) -> (Vec<Vec<u32>>, Vec<Vec<i64>>) {
    let (_, shape, bytes) = &r["input_ids"];
    let flat: Vec<u32> = bytes
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32)
        .collect();
    let ids: Vec<Vec<u32>> = flat.chunks(shape[1]).map(<[u32]>::to_vec).collect();
    let labels = ids
        .iter()
        .map(|row| row.iter().map(|&id| i64::from(id)).collect())
        .collect();
    (ids, labels)
}

/// The model's logits of `ids`, flat.
fn logits_of(model: &CausalLm, ids: &[Vec<u32>]) -> Vec<f32> {
    model
        .forward(ids, None, None)
        .unwrap()
        .into_data()
        .try_into_vec()
        .unwrap()
}

/// The model's logits and mean loss on the reference's inputs against `r[logits_key]` and
/// `r[loss_key]`.
fn check_logits(model: &CausalLm, r: &Tensors, logits_key: &str, loss_key: &str) {
    let (ids, labels) = inputs(r);
    let logits = model.forward(&ids, None, None).unwrap();
    let values: Vec<f32> = logits.clone().into_data().try_into_vec().unwrap();
    let diff = max_diff(&values, &f32s(&r[logits_key].2));
    let loss = model.loss_sum(logits, &labels).unwrap();
    let mean = loss.sum.into_scalar::<f32>() / loss.tokens as f32;
    let want = f32s(&r[loss_key].2)[0];
    eprintln!("{logits_key}: max |diff| {diff:.2e}, loss {mean} vs {want}");
    assert!(diff <= 1e-4, "{logits_key}: max |logit diff| {diff}");
    assert!((mean - want).abs() <= 1e-5, "{loss_key}: {mean} vs {want}");
}

/// Logits of the model and of the model with the PEFT adapter, and the adapter's gradients.
fn matches_transformers_and_peft(dir: &Path) -> Tensors {
    let r = load_tensors_at(&dir.join("reference.safetensors"));
    let mut model = CausalLm::load(dir, &dense()).unwrap();
    check_logits(&model, &r, "logits", "loss");

    let adapter = read_adapter(&dir.join("adapter")).unwrap();
    apply_adapter(&mut model, adapter).unwrap();
    check_logits(&model, &r, "lora_logits", "lora_loss");

    let (ids, labels) = inputs(&r);
    let width = ids[0].len();
    let batch = TrainBatch::new(ids.clone(), labels, vec![vec![true; width]; ids.len()]);
    let lora_loss = f32s(&r["lora_loss"].2)[0];
    for checkpointing in [true, false] {
        let mut worst = 0f32;
        let out = model.loss_and_grads(&batch, checkpointing, None).unwrap();
        let tokens = out.tokens as f32;
        let mean = out.loss_sum as f32 / tokens;
        assert!((mean - lora_loss).abs() <= 1e-5, "loss {mean}");
        let projections = model.config.architecture.projections().len();
        assert_eq!(out.grads.paths.len(), projections * model.layers.len());
        for (path, (da, db)) in out.grads.paths.iter().zip(out.grads.grads) {
            for (name, grad) in [("lora_A", da), ("lora_B", db)] {
                let ours: Vec<f32> = grad.into_data().try_into_vec().unwrap();
                let ours: Vec<f32> = ours.iter().map(|g| g / tokens).collect();
                let want = f32s(&r[&format!("grad.{path}.{name}")].2);
                let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
                let diff = max_diff(&ours, &want);
                worst = worst.max(diff / scale);
                assert!(
                    diff <= 1e-4 * scale,
                    "checkpointing {checkpointing}, {path}.{name}: max diff {diff} (scale {scale})"
                );
            }
        }
        eprintln!("gradients, checkpointing {checkpointing}: max relative diff {worst:.2e}");
    }
    r
}

/// The decoder linears of the model in `dir`.
fn linears(dir: &Path) -> usize {
    let config = ModelConfig::load(dir).unwrap();
    config.architecture.projections().len() * config.num_hidden_layers
}

/// The adapter merged into the base (f32) gives peft's merged logits.
fn merge_matches_peft(dir: &Path, r: &Tensors) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("merged");
    let options = MergeOptions {
        base: Some(MergeBase::Original),
        dtype: Some(FloatDtype::F32),
        quantize_nf4: false,
        max_shard_bytes: 5_000_000_000,
        overwrite: false,
    };
    let report = merge_model(dir, &dir.join("adapter"), &out, &options).unwrap();
    assert_eq!(report.merged, linears(dir));
    let merged = CausalLm::load(&out, &dense()).unwrap();
    check_logits(&merged, r, "merged_logits", "merged_loss");
}

/// `quantize_model` writes bitsandbytes' NF4 checkpoint of the model byte for byte (every
/// quantized tensor and its statistics; dense tensors equal in value), and that checkpoint's
/// logits on the inputs of `inputs` are bitsandbytes'.
fn nf4_matches_bitsandbytes(dir: &Path, bnb: &Path, inputs: &Tensors) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("nf4");
    let options = QuantizeOptions {
        dtype: Some(FloatDtype::F32),
        ..QuantizeOptions::default()
    };
    let report = quantize_model(dir, &out, &options).unwrap();
    assert_eq!(report.quantized_tensors, linears(dir));
    let ours = load_tensors_at(&out.join("model.safetensors"));
    let theirs = load_tensors_at(&bnb.join("model.safetensors"));
    let mut names: Vec<_> = theirs.keys().collect();
    names.sort();
    let mut our_names: Vec<_> = ours.keys().collect();
    our_names.sort();
    assert_eq!(our_names, names);
    for name in names {
        assert_eq!(ours[name], theirs[name], "{name}");
    }
    let mut r = load_tensors_at(&bnb.join("reference.safetensors"));
    r.insert("input_ids".into(), inputs["input_ids"].clone());
    let model = CausalLm::load(bnb, &LoadOptions::default()).unwrap();
    check_logits(&model, &r, "logits", "loss");
}

/// An f32 GGUF export under llama.cpp's name of the architecture, imported back: the same
/// weights (the GGUF's rows as transformers has them, unpermuted) and the same logits. With
/// `windows_kept`, llama.cpp runs the layers' sliding windows and the import keeps them;
/// otherwise (Qwen) it runs them without, and so does the imported config.
fn gguf_round_trip(dir: &Path, gguf_arch: &str, windows_kept: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("model.gguf");
    export_gguf(dir, None, &file, &f32_export()).unwrap();
    let gguf = GgufFile::open(&file).unwrap();
    assert_eq!(
        gguf.string("general.architecture").unwrap(),
        Some(gguf_arch)
    );
    // The first projection (q_proj, or Phi-3's qkv_proj): rows as they are.
    let arch = ModelConfig::load(dir).unwrap().architecture;
    let first = arch.projections()[0].weight_name(0);
    let crossing = qlora_core::config::tensors::gguf_name(&first, arch).unwrap();
    let q = gguf.dequantize(&crossing.name).unwrap();
    let ours = load_tensors_at(&dir.join("model.safetensors"));
    let hf: Vec<f32> = qlora_core::dtype::decode_f32(&ours[&first].2, FloatDtype::BF16);
    assert_eq!(q, hf, "{first}: rows as they are");
    let back = tmp.path().join("back");
    let import = ImportOptions {
        dtype: FloatDtype::F32,
        ..ImportOptions::default()
    };
    import_gguf(&file, &back, &import).unwrap();
    let before = ModelConfig::load(dir).unwrap();
    let after = ModelConfig::load(&back).unwrap();
    assert_eq!(after.architecture, before.architecture);
    assert_eq!(after.spec.bias, before.spec.bias);
    assert_eq!(after.spec.qk_norm, before.spec.qk_norm);
    assert_eq!(after.head_dim, before.head_dim);
    if windows_kept {
        assert_eq!(after.spec, before.spec);
    }
    let r = load_tensors_at(&dir.join("reference.safetensors"));
    let (ids, _) = inputs(&r);
    let logits = |d: &Path| -> Vec<f32> {
        let mut model = CausalLm::load(d, &dense()).unwrap();
        if !windows_kept {
            model
                .layers
                .iter_mut()
                .for_each(|l| l.self_attn.window = None);
        }
        logits_of(&model, &ids)
    };
    assert_eq!(logits(dir), logits(&back), "logits after export and import");
}

fn windows(config: &ModelConfig) -> Vec<Option<usize>> {
    config.spec.layers.iter().map(|l| l.window).collect()
}

#[test]
fn tiny_qwen2_matches_transformers_peft_and_bitsandbytes() {
    let dir = reference("tiny-qwen2");
    let config = ModelConfig::load(&dir).unwrap();
    assert_eq!(config.architecture, Architecture::Qwen2);
    let biased: Vec<_> = Projection::ALL
        .into_iter()
        .filter(|&p| config.spec.has_bias(p))
        .collect();
    assert_eq!(biased, [Projection::Q, Projection::K, Projection::V]);
    assert!(config.spec.tied_head && !config.spec.qk_norm);
    assert_eq!(windows(&config), [None, Some(6)]);
    let r = matches_transformers_and_peft(&dir);
    merge_matches_peft(&dir, &r);
    nf4_matches_bitsandbytes(&dir, &reference("tiny-qwen2-bnb-nf4"), &r);
    gguf_round_trip(&dir, "qwen2", false);
}

#[test]
fn tiny_qwen3_matches_transformers_peft_and_bitsandbytes() {
    let dir = reference("tiny-qwen3");
    let config = ModelConfig::load(&dir).unwrap();
    assert_eq!(config.architecture, Architecture::Qwen3);
    assert!(config.spec.qk_norm && config.spec.tied_head);
    assert_eq!(windows(&config), [None, Some(6)]);
    let r = matches_transformers_and_peft(&dir);
    merge_matches_peft(&dir, &r);
    nf4_matches_bitsandbytes(&dir, &reference("tiny-qwen3-bnb-nf4"), &r);
    gguf_round_trip(&dir, "qwen3", false);
}

#[test]
fn tiny_mistral_matches_transformers_peft_and_bitsandbytes() {
    let dir = reference("tiny-mistral");
    let config = ModelConfig::load(&dir).unwrap();
    assert_eq!(config.architecture, Architecture::Mistral);
    assert!(!config.spec.tied_head);
    assert_eq!(windows(&config), [Some(6), Some(6)]);
    let r = matches_transformers_and_peft(&dir);
    merge_matches_peft(&dir, &r);
    nf4_matches_bitsandbytes(&dir, &reference("tiny-mistral-bnb-nf4"), &r);

    // The window changes the logits of these 16 tokens: the fixture tests it.
    let mut full = CausalLm::load(&dir, &dense()).unwrap();
    full.layers
        .iter_mut()
        .for_each(|l| l.self_attn.window = None);
    let (ids, _) = inputs(&r);
    let diff = max_diff(&logits_of(&full, &ids), &f32s(&r["logits"].2));
    assert!(diff > 1e-2, "without the window: {diff}");
}

#[test]
fn tiny_gemma3_matches_transformers_peft_and_bitsandbytes() {
    let dir = reference("tiny-gemma3");
    let config = ModelConfig::load(&dir).unwrap();
    assert_eq!(config.architecture, Architecture::Gemma3);
    let spec = &config.spec;
    assert!(spec.qk_norm && spec.sandwich_norms && spec.tied_head);
    assert_eq!(spec.norm, NormForm::OnePlusWeight);
    assert_eq!(spec.activation, Activation::GeluTanh);
    assert_eq!(spec.embedding_scale, Some(8.0));
    assert_eq!(spec.attention_scale, 24f64.powf(-0.5));
    let mut expected = vec![Some(6); 5];
    expected.push(None);
    assert_eq!(windows(&config), expected);
    let ropes: Vec<RopeKind> = spec.layers.iter().map(|l| l.rope).collect();
    assert_eq!(ropes[4..], [RopeKind::Local, RopeKind::Global]);
    assert_eq!(spec.local_rope_theta, Some(10000.0));
    assert_eq!(config.rope.theta, 1e6);
    assert_eq!(config.rope.scaling, RopeScaling::Linear { factor: 8.0 });
    let r = matches_transformers_and_peft(&dir);
    merge_matches_peft(&dir, &r);
    nf4_matches_bitsandbytes(&dir, &reference("tiny-gemma3-bnb-nf4"), &r);

    // llama.cpp scales Gemma 3's scores by 1/sqrt(head_dim) (and hard-codes the pattern of
    // six and the local base of 10000, which the fixture has): the scalar of 24 has no GGUF
    // spelling, and export says so.
    let tmp = tempfile::tempdir().unwrap();
    let err = export_gguf(&dir, None, &tmp.path().join("m.gguf"), &f32_export()).unwrap_err();
    assert!(err.to_string().contains("query_pre_attn_scalar"), "{err}");
    let same_scale = tmp.path().join("scalar-32");
    copy_with_config(&dir, &same_scale, |c| {
        c["query_pre_attn_scalar"] = 32.into()
    });
    gguf_round_trip(&same_scale, "gemma3", true);
}

#[test]
fn tiny_phi3_matches_transformers_peft_and_bitsandbytes() {
    let dir = reference("tiny-phi3");
    let config = ModelConfig::load(&dir).unwrap();
    assert_eq!(config.architecture, Architecture::Phi3);
    let spec = &config.spec;
    assert!(spec.fused_qkv && spec.fused_gate_up && !spec.tied_head);
    assert_eq!(spec.bias, [false; 9]);
    assert_eq!(windows(&config), [Some(6), Some(6)]);
    assert_eq!(config.rope.rotary_dim(config.head_dim), 8);
    let RopeScaling::LongRope {
        original_max_position_embeddings,
        attention_factor,
        ..
    } = config.rope.scaling
    else {
        panic!("LongRoPE: {:?}", config.rope.scaling)
    };
    assert_eq!(original_max_position_embeddings, 8);
    // sqrt(1 + ln(256 / 8) / ln(8)).
    assert!((attention_factor - (1.0 + 32f64.ln() / 8f64.ln()).sqrt()).abs() < 1e-12);
    let r = matches_transformers_and_peft(&dir);

    // The first 8 tokens, within the pretraining length: the short factors.
    let model = CausalLm::load(&dir, &dense()).unwrap();
    let (ids, _) = inputs(&r);
    let short: Vec<Vec<u32>> = ids.iter().map(|row| row[..8].to_vec()).collect();
    let diff = max_diff(&logits_of(&model, &short), &f32s(&r["short_logits"].2));
    eprintln!("short_logits: max |diff| {diff:.2e}");
    assert!(diff <= 1e-4, "short_logits: {diff}");

    merge_matches_peft(&dir, &r);
    nf4_matches_bitsandbytes(&dir, &reference("tiny-phi3-bnb-nf4"), &r);
    gguf_round_trip(&dir, "phi3", false);
}

/// `dir`'s model, tokenizer and reference in `out`, its `config.json` changed by `edit`.
fn copy_with_config(dir: &Path, out: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    std::fs::create_dir_all(out).unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, out.join(path.file_name().unwrap())).unwrap();
        }
    }
    let file = out.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(&file, config.to_string()).unwrap();
}

fn f32_export() -> ExportOptions {
    ExportOptions {
        kind: GgufType::F32,
        base: None,
        name: None,
        overwrite: false,
    }
}
