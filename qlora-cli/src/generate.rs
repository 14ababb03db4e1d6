use std::io::Write;

use anyhow::{Result, bail};
use clap::Args;
use qlora_core::data::{ConversationTemplate, DatasetFormat, response_prompt};
use qlora_core::generate::{SamplingConfig, generate};
use qlora_core::text::Message;
use qlora_core::train::{CONFIG_FILE, TrainConfig};

use crate::model_args::ModelArgs;

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Text to continue, or with --format an instruction to wrap as training wrapped them.
    #[arg(long, conflicts_with = "chat", required_unless_present = "chat")]
    prompt: Option<String>,
    /// How --prompt is wrapped: text (as is), alpaca, input-output, guanaco, oasst or messages,
    /// each exactly as training wrapped its examples, up to where the response starts
    /// [default: the format --adapter was trained on (its training_config.toml), else text].
    #[arg(long, conflicts_with = "chat")]
    format: Option<DatasetFormat>,
    /// With --format oasst: guanaco or chat, as training's --template [default: the adapter's,
    /// else guanaco].
    #[arg(long, requires = "prompt")]
    template: Option<ConversationTemplate>,
    /// Alpaca's `input` field, for an instruction with a context.
    #[arg(long, requires = "prompt")]
    input: Option<String>,
    /// Print the prompt as the model gets it (text and token ids) to stderr first.
    #[arg(long)]
    show_prompt: bool,
    /// A user message, wrapped in the model's chat template.
    #[arg(long)]
    chat: Option<String>,
    /// A system message to put before --chat.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Sample only from the k most likely tokens [default: all].
    #[arg(long)]
    top_k: Option<usize>,
    /// Sample only from the smallest set of tokens whose probability reaches p (nucleus
    /// sampling) [default: 1].
    #[arg(long)]
    top_p: Option<f32>,
    /// Discourage tokens already in the text (CTRL-style, as transformers' repetition_penalty);
    /// 1 is off.
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    /// Seed for sampling.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Stop when this text appears (repeatable); it is not printed.
    #[arg(long = "stop")]
    stop_strings: Vec<String>,
}

/// The format and template `--prompt` is wrapped in: the flags', else those the adapter was
/// trained with, else plain text.
fn prompt_format(args: &GenerateArgs) -> Result<(DatasetFormat, ConversationTemplate)> {
    let trained = match &args.model.adapter {
        Some(dir) if dir.join(CONFIG_FILE).is_file() => {
            Some(TrainConfig::from_toml_file(&dir.join(CONFIG_FILE))?)
        }
        _ => None,
    };
    let format = args
        .format
        .or_else(|| trained.as_ref().and_then(|t| t.format))
        .unwrap_or(if args.input.is_some() {
            DatasetFormat::Alpaca
        } else {
            DatasetFormat::Text
        });
    let template = args
        .template
        .or_else(|| trained.as_ref().map(|t| t.tokenize.template))
        .unwrap_or_default();
    Ok((format, template))
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let config = SamplingConfig {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        repetition_penalty: args.repetition_penalty,
        seed: args.seed,
        stop_strings: args.stop_strings.clone(),
    };
    config.validate()?;
    let (model, tokenizer) = args.model.load()?;
    let prompt_ids = match (&args.prompt, &args.chat) {
        (Some(prompt), _) => {
            let (format, template) = prompt_format(&args)?;
            if format != DatasetFormat::Text {
                eprintln!("[prompt wrapped as training wrapped {format} examples]");
            }
            response_prompt(format, template, prompt, args.input.as_deref(), &tokenizer)?
        }
        (None, Some(chat)) => {
            let mut messages = Vec::new();
            if let Some(system) = &args.system {
                messages.push(Message::new("system", system.as_str()));
            }
            messages.push(Message::new("user", chat.as_str()));
            // The template writes the special tokens itself.
            tokenizer.encode(&tokenizer.apply_chat_template(&messages, true)?, false)?
        }
        (None, None) => bail!("give --prompt or --chat"),
    };
    if args.show_prompt {
        eprintln!("prompt: {:?}", tokenizer.decode(&prompt_ids, false)?);
        eprintln!("prompt ids: {prompt_ids:?}");
    }
    let context = model.config.max_position_embeddings;
    if prompt_ids.len() + config.max_new_tokens > context {
        eprintln!(
            "warning: {} prompt tokens + --max-new-tokens {} go past the model's \
             max_position_embeddings {context}: it was not trained that far, and the text \
             usually degrades there",
            prompt_ids.len(),
            config.max_new_tokens
        );
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut write_error = None;
    let generation = generate(&model, &tokenizer, &prompt_ids, &config, |text| {
        if write_error.is_none()
            && let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush())
        {
            write_error = Some(e);
        }
    })?;
    if let Some(e) = write_error {
        return Err(e.into());
    }
    writeln!(out)?;
    eprintln!(
        "[{} prompt tokens, {} generated, stopped: {:?}]",
        prompt_ids.len(),
        generation.ids.len(),
        generation.stop
    );
    Ok(())
}
