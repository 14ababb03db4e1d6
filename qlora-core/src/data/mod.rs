//! Instruction datasets: reading records (JSON Lines, a JSON array, parquet; files, folders of
//! shards and dataset repos in the Hugging Face cache), column mapping, the formats of the
//! QLoRA world (Alpaca, input-output, OpenAssistant, Guanaco, chat messages, TRL's
//! prompt/completion, plain text), token ids with loss masks, and batches.

mod batch;
mod dataset;
mod fields;
mod format;
mod oasst;
mod parquet;
mod preference;
mod prompt;
mod records;
mod source;
mod tokenize;

pub use batch::{
    Batching, PACKING_WINDOW, collate, collate_rows, epoch_batches, epoch_plan, pack, split_eval,
};
pub use dataset::{DataOptions, LoadedData, effective_template, load_examples};
pub use fields::FieldMap;
pub use format::{
    ALPACA_PROMPT_NO_INPUT, ALPACA_PROMPT_WITH_INPUT, ConversationTemplate, DatasetFormat, Located,
    ReadReport, Sample, alpaca_prompt, parse_guanaco, render_guanaco, samples,
};
pub use oasst::{OasstOptions, OasstReport, conversations};
pub use parquet::{is_parquet, read_parquet};
pub use preference::{
    LoadedPairs, PairExample, PairLimits, PairSample, PairSkip, is_pair, load_pairs, pair_sample,
    pair_samples, tokenize_pair,
};
pub use prompt::response_prompt;
pub use records::{Place, Record, read_json_records};
pub use source::{DatasetRecords, SourceOptions, dataset_files, read_dataset, read_records};
pub use tokenize::{Example, TokenizeOptions, tokenize};
