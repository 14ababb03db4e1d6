use std::io::Write;

use anyhow::{Result, bail};
use clap::Args;
use qlora_core::data::{ConversationTemplate, DatasetFormat};
use qlora_core::generate::{Prompt, SamplingConfig, generate};
use qlora_core::text::{TemplateKwargs, TextOverrides};

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
    /// Extra variables for the chat template, a JSON object, as transformers'
    /// `apply_chat_template` keyword arguments (Qwen3: '{"enable_thinking": false}').
    #[arg(long, value_name = "JSON", requires = "chat")]
    chat_template_kwargs: Option<TemplateKwargs>,
    #[command(flatten)]
    text: TextOverrides,
    #[command(flatten)]
    sampling: SamplingConfig,
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let config = args.sampling.clone();
    config.validate()?;
    let (model, tokenizer) = args.model.load(&args.text)?;
    let chat_kwargs = args.chat_template_kwargs.clone().unwrap_or_default();
    let prompt = match (&args.prompt, &args.chat) {
        (Some(text), _) => Prompt::Text {
            text,
            input: args.input.as_deref(),
            format: args.format,
            template: args.template,
        },
        (None, Some(message)) => Prompt::Chat {
            message,
            system: args.system.as_deref(),
            kwargs: &chat_kwargs,
        },
        (None, None) => bail!("give --prompt or --chat"),
    };
    let (prompt_ids, format) = prompt.encode(&tokenizer, args.model.adapter.as_deref())?;
    if let Some(format) = format.filter(|f| *f != DatasetFormat::Text) {
        eprintln!("[prompt wrapped as training wrapped {format} examples]");
    }
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
