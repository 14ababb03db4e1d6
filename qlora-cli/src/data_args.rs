//! Dataset options shared by `eval` and `train`.

use anyhow::Result;
use clap::Args;
use qlora_core::data::{
    ConversationTemplate, DataOptions, DatasetFormat, OasstOptions, TokenizeOptions,
};

#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Most prompt tokens kept per example.
    #[arg(long, default_value_t = 1024)]
    pub source_max_len: usize,
    /// Most response tokens kept per example.
    #[arg(long, default_value_t = 256)]
    pub target_max_len: usize,
    /// Learn (and score) the prompt tokens too.
    #[arg(long)]
    pub train_on_source: bool,
    /// How conversations are written: guanaco (`### Human: ...### Assistant: ...`) or chat
    /// (the model's chat template).
    #[arg(long, default_value = "guanaco")]
    pub template: ConversationTemplate,
    /// OpenAssistant: keep only replies ranked first.
    #[arg(long)]
    pub oasst_top_ranked: bool,
    /// OpenAssistant: keep only these languages (comma-separated, e.g. en,de).
    #[arg(long, value_delimiter = ',')]
    pub lang: Vec<String>,
}

impl DataArgs {
    pub fn options(&self, format: Option<DatasetFormat>) -> Result<DataOptions> {
        if self.source_max_len == 0 || self.target_max_len == 0 {
            anyhow::bail!("--source-max-len and --target-max-len must be positive");
        }
        Ok(DataOptions {
            format,
            tokenize: TokenizeOptions {
                source_max_len: self.source_max_len,
                target_max_len: self.target_max_len,
                train_on_source: self.train_on_source,
                template: self.template,
            },
            oasst: OasstOptions {
                top_ranked: self.oasst_top_ranked,
                languages: self.lang.clone(),
            },
        })
    }
}
