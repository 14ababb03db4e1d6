//! What an adapter directory records of its training, for what loads it later: the chat
//! template (`chat_template.jinja`) and the eos token it was trained with.

use std::path::Path;

use super::checkpoint::CONFIG_FILE;
use super::config::TrainConfig;
use crate::error::Result;
use crate::text::{CHAT_TEMPLATE_FILE, TextOverrides};

/// The chat template and eos token `dir` (an adapter) was trained with, as settings: its
/// `chat_template.jinja` and the `eos_token` of its `training_config.toml`, where it has them
/// (a PEFT adapter has neither).
pub fn recorded_text(dir: &Path) -> Result<TextOverrides> {
    let template = dir.join(CHAT_TEMPLATE_FILE);
    let chat_template = template.is_file().then(|| template.display().to_string());
    let config = dir.join(CONFIG_FILE);
    let eos_token = if config.is_file() {
        TrainConfig::from_toml_file(&config)?
            .tokenize
            .text
            .eos_token
    } else {
        None
    };
    Ok(TextOverrides {
        chat_template,
        eos_token,
    })
}

/// The settings a command that loads `adapter` uses: what the adapter recorded, with the
/// command's own flags (`flags`) over it.
pub fn text_for(adapter: Option<&Path>, flags: &TextOverrides) -> Result<TextOverrides> {
    match adapter {
        Some(dir) => Ok(recorded_text(dir)?.overridden_by(flags)),
        None => Ok(flags.clone()),
    }
}
