//! Options every command that loads a model shares.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use qlora_core::ComputeDtype;
use qlora_core::device::DeviceChoice;
use qlora_core::gguf::resolve_model;
use qlora_core::lora::{apply_adapter, read_adapter};
use qlora_core::model::{Bits, CausalLm, LoadOptions, Nf4Matmul};
use qlora_core::quant::Nf4Config;
use qlora_core::text::{TextOverrides, Tokenizer};
use qlora_core::train::text_for;

/// `--device`, for every command that computes.
#[derive(Args, Debug, Clone)]
pub struct DeviceArgs {
    /// Where to compute: cpu, wgpu, wgpu:N (discrete GPU N), cuda or cuda:N. Under mpirun,
    /// an unnumbered GPU is the local rank's.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
}

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Hugging Face model directory (config.json, safetensors, tokenizer.json), a repo id in
    /// the Hugging Face cache (ORG/NAME[@REVISION]), or a GGUF file (imported into the cache on
    /// first use).
    #[arg(long)]
    pub model: PathBuf,
    /// Precision of the frozen base: 4 (NF4 with double quantization) or 16 (dense).
    #[arg(long, default_value = "4")]
    pub bits: Bits,
    /// How NF4 layers multiply: f32 (exact dequantization, as bitsandbytes trains) or
    /// bnb-cpu-bf16 (bitsandbytes' CPU bf16 inference kernel, to reproduce transformers +
    /// bitsandbytes inference numbers on CPUs with AVX512-BF16).
    #[arg(long, default_value = "f32")]
    pub nf4_matmul: Nf4Matmul,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// What activations and the base's matmuls compute in: f32, bf16 or f16 [default: bf16 on
    /// GPUs that have it, else f32].
    #[arg(long)]
    pub compute_dtype: Option<ComputeDtype>,
    /// A PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
}

impl ModelArgs {
    /// The model (with --adapter applied) and its tokenizer, with the chat template and eos
    /// token --adapter was trained with, or those of `text` (the command's flags) over them.
    pub fn load(&self, text: &TextOverrides) -> Result<(CausalLm, Tokenizer)> {
        let dir = resolve_model(&self.model)?;
        let mut tokenizer = Tokenizer::load(&dir)?;
        text_for(self.adapter.as_deref(), text)?.apply(&mut tokenizer)?;
        let device = self.device.device.device()?;
        let compute = ComputeDtype::resolve(self.compute_dtype, &device)?;
        let options = LoadOptions {
            bits: self.bits,
            nf4: Nf4Config::default(),
            nf4_matmul: self.nf4_matmul,
            device,
            compute,
        };
        let mut model = CausalLm::load(&dir, &options)
            .with_context(|| format!("cannot load the model in {}", self.model.display()))?;
        if let Some(adapter) = &self.adapter {
            let context = || format!("cannot apply the adapter in {}", adapter.display());
            let file = read_adapter(adapter).with_context(context)?;
            warn_ignored_modules(adapter, &file.ignored);
            apply_adapter(&mut model, file).with_context(context)?;
        }
        Ok((model, tokenizer))
    }
}

/// Say which weights of an adapter file its config does not target (PEFT ignores them with a
/// warning, and so do we).
pub fn warn_ignored_modules(adapter: &std::path::Path, ignored: &[String]) {
    if let Some(first) = ignored.first() {
        eprintln!(
            "warning: {}: target_modules does not cover {} of the file's modules ({first}, ...); \
             they are ignored, as PEFT ignores them",
            adapter.display(),
            ignored.len(),
        );
    }
}
