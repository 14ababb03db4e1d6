//! Text in and out of the model: the tokenizer and chat templates.

mod chat_template;
mod tokenizer;

pub use chat_template::{ChatTemplate, Message};
pub use tokenizer::{Encoded, Tokenizer};
