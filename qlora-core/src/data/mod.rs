//! Instruction datasets: reading records (JSON Lines or a JSON array), the formats of the QLoRA
//! world (Alpaca, input-output, OpenAssistant, Guanaco, chat messages, plain text), token ids
//! with loss masks, and batches.

mod batch;
mod dataset;
mod format;
mod oasst;
mod prompt;
mod records;
mod tokenize;

pub use batch::{
    Batching, PACKING_WINDOW, collate, collate_rows, epoch_batches, epoch_plan, pack, split_eval,
};
pub use dataset::{DataOptions, LoadedData, effective_template, load_examples};
pub use format::{
    ALPACA_PROMPT_NO_INPUT, ALPACA_PROMPT_WITH_INPUT, ConversationTemplate, DatasetFormat, Located,
    ReadReport, Sample, alpaca_prompt, parse_guanaco, render_guanaco, samples,
};
pub use oasst::{OasstOptions, OasstReport, conversations};
pub use prompt::response_prompt;
pub use records::{Record, read_records};
pub use tokenize::{Example, TokenizeOptions, tokenize};
