//! Text in and out of the model: the tokenizer and chat templates.

mod chat_template;
mod overrides;
mod tokenizer;

pub use chat_template::{ChatTemplate, Message, TemplateKwargs};
pub use overrides::{TOKENIZER_DEFAULT, TextOverrides, turn_end};
pub use tokenizer::{
    CHAT_TEMPLATE_FILE, Encoded, GENERATION_CONFIG_FILE, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE,
    Tokenizer,
};
