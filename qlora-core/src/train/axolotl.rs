//! `--config run.yml`: an axolotl config read as the settings it describes. The keys of
//! axolotl's QLoRA examples map onto ours; keys that only tune another tool's speed or logging
//! (attention kernels, DeepSpeed, FSDP, Liger, Unsloth, W&B, ...) are ignored and listed in one
//! warning; a key we cannot honour (another `rl:` method, 8-bit LoRA, a custom prompt format)
//! and a key we do not know are errors naming it.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};

/// Key prefixes of settings that only tune another tool's speed, memory layout or logging.
const IGNORED_PREFIXES: [&str; 11] = [
    "fsdp",
    "liger",
    "unsloth_",
    "wandb_",
    "mlflow_",
    "comet_",
    "deepspeed",
    "torch_compile",
    "ddp",
    "dataloader_",
    "hub_",
];

/// Settings ignored whole (the same kind, and loading details we do ourselves).
const IGNORED: [&str; 26] = [
    "flash_attention",
    "flash_attn_cross_entropy",
    "flash_attn_rms_norm",
    "flash_attn_fuse_mlp",
    "sdp_attention",
    "xformers_attention",
    "flex_attention",
    "s2_attention",
    "tf32",
    "bf16",
    "fp16",
    "strict",
    "model_type",
    "tokenizer_type",
    "is_llama_derived_model",
    "is_mistral_derived_model",
    "is_qwen_derived_model",
    "trust_remote_code",
    "dataset_prepared_path",
    "dataset_processes",
    "pad_to_sequence_len",
    "eval_sample_packing",
    "local_rank",
    "debug",
    "gpu_memory_limit",
    "shuffle_merged_datasets",
];

/// An axolotl config read: our settings (keyed by setting id), the checkpoint to resume, and
/// the keys ignored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AxolotlRun {
    /// Settings keyed by their ids (`rank`, `lr`, ...).
    pub table: toml::Table,
    /// `resume_from_checkpoint`.
    pub resume: Option<String>,
    /// Keys ignored, in file order.
    pub ignored: Vec<String>,
}

/// Whether `path` is a YAML file (by its extension).
pub fn is_yaml(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("yml") || e.eq_ignore_ascii_case("yaml"))
}

struct Reader<'a> {
    path: &'a Path,
    run: AxolotlRun,
}

impl Reader<'_> {
    fn bad(&self, key: &str, message: impl std::fmt::Display) -> Error {
        Error::key(self.path, key, message)
    }

    fn set(&mut self, id: &str, value: impl Into<toml::Value>) {
        self.run.table.insert(id.to_string(), value.into());
    }

    fn string<'v>(&self, key: &str, value: &'v Value) -> Result<&'v str> {
        value
            .as_str()
            .ok_or_else(|| self.bad(key, "expected a string"))
    }

    fn bool(&self, key: &str, value: &Value) -> Result<bool> {
        value
            .as_bool()
            .ok_or_else(|| self.bad(key, "expected true or false"))
    }

    fn count(&self, key: &str, value: &Value) -> Result<i64> {
        value
            .as_u64()
            .and_then(|v| i64::try_from(v).ok())
            .ok_or_else(|| self.bad(key, "expected a whole number"))
    }

    fn number(&self, key: &str, value: &Value) -> Result<f64> {
        match value {
            Value::Number(n) => n.as_f64(),
            // PyYAML reads `2e-4` (no dot) as a string; axolotl configs write it so.
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
        .ok_or_else(|| self.bad(key, "expected a number"))
    }

    fn unsupported(&self, key: &str, why: &str) -> Error {
        self.bad(key, format!("qlora cannot honour this: {why}"))
    }

    /// A chat template name of axolotl's, or `jinja` with `chat_template_jinja`.
    fn chat_template(&mut self, key: &str, value: &Value, root: &Value) -> Result<()> {
        let name = self.string(key, value)?;
        let chosen = match name {
            "chatml" | "llama3" | "tokenizer_default" => name.to_string(),
            "jinja" => {
                let jinja = root
                    .get("chat_template_jinja")
                    .ok_or_else(|| self.bad(key, "`jinja` needs chat_template_jinja"))?;
                self.string("chat_template_jinja", jinja)?.to_string()
            }
            other => {
                return Err(self.bad(
                    key,
                    format!(
                        "`{other}` is not a template qlora has: use chatml, llama3, \
                         tokenizer_default (the model's own), or jinja with chat_template_jinja"
                    ),
                ));
            }
        };
        self.set("chat_template", chosen);
        Ok(())
    }

    /// One dataset entry (`datasets[0]`, `test_datasets[0]`): where, which split, what format
    /// and which columns.
    fn dataset(&mut self, key: &str, entry: &Value, eval: bool, root: &Value) -> Result<()> {
        let entry = entry
            .as_object()
            .ok_or_else(|| self.bad(key, "expected a mapping with `path`"))?;
        let (data, split, config) = if eval {
            ("eval_data", "eval_split", None)
        } else {
            ("data", "data_split", Some("data_config"))
        };
        for (name, value) in entry {
            let at = format!("{key}.{name}");
            match name.as_str() {
                "path" => {
                    // `path: json` with `data_files` names the file by its loader.
                    let path = self.string(&at, value)?;
                    if !matches!(path, "json" | "parquet") {
                        self.set(data, path);
                    }
                }
                "data_files" => {
                    let file = match value {
                        Value::Array(list) if list.len() == 1 => &list[0],
                        Value::Array(_) => {
                            return Err(self.unsupported(&at, "give one file, or a folder as path"));
                        }
                        other => other,
                    };
                    let file = self.string(&at, file)?.to_string();
                    self.set(data, file);
                }
                "split" => {
                    let s = self.string(&at, value)?.to_string();
                    self.set(split, s);
                }
                "name" => match config {
                    Some(config) => {
                        let s = self.string(&at, value)?.to_string();
                        self.set(config, s);
                    }
                    None => return Err(self.unsupported(&at, "the held-out data's subset")),
                },
                "type" => self.dataset_type(&at, value)?,
                "ds_type" => {}
                "field_messages" | "field_instruction" | "field_input" | "field_output" => {
                    let s = self.string(&at, value)?.to_string();
                    self.set(name, s);
                }
                "field" => {
                    let s = self.string(&at, value)?.to_string();
                    self.set("field_text", s);
                }
                "message_field_role" => {
                    let s = self.string(&at, value)?.to_string();
                    self.set("field_role", s);
                }
                "message_field_content" => {
                    let s = self.string(&at, value)?.to_string();
                    self.set("field_content", s);
                }
                "message_property_mappings" => {
                    let map = value
                        .as_object()
                        .ok_or_else(|| self.bad(&at, "expected a mapping of role and content"))?;
                    for (ours, theirs) in map {
                        let id = match ours.as_str() {
                            "role" => "field_role",
                            "content" => "field_content",
                            other => {
                                return Err(self.unsupported(
                                    &format!("{at}.{other}"),
                                    "messages are read with a role and a content",
                                ));
                            }
                        };
                        let s = self.string(&at, theirs)?.to_string();
                        self.set(id, s);
                    }
                }
                "chat_template" => self.chat_template(&at, value, root)?,
                "roles_to_train" => {
                    let roles: Vec<&str> = value
                        .as_array()
                        .map(|l| l.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default();
                    if !matches!(roles.as_slice(), ["assistant"] | ["gpt"]) {
                        return Err(self.unsupported(&at, "only the assistant's turns are learned"));
                    }
                }
                "train_on_eos" => {
                    if value.as_str() != Some("turn") {
                        return Err(self.unsupported(
                            &at,
                            "the end of every learned turn is learned (`turn`)",
                        ));
                    }
                }
                _ => return Err(self.bad(&at, "not a dataset key qlora knows")),
            }
        }
        Ok(())
    }

    /// `type:` a format name, or a mapping of Alpaca's fields.
    fn dataset_type(&mut self, key: &str, value: &Value) -> Result<()> {
        if let Some(fields) = value.as_object() {
            for (name, v) in fields {
                let at = format!("{key}.{name}");
                match name.as_str() {
                    "field_instruction" | "field_input" | "field_output" => {
                        let s = self.string(&at, v)?.to_string();
                        self.set(name, s);
                    }
                    "format" | "no_input_format" | "system_prompt" | "system_format"
                    | "field_system" => {
                        return Err(self.unsupported(
                            &at,
                            "custom prompt formats: records are wrapped in the Alpaca prompt",
                        ));
                    }
                    _ => return Err(self.bad(&at, "not a dataset type key qlora knows")),
                }
            }
            self.set("format", "alpaca");
            return Ok(());
        }
        let name = self.string(key, value)?;
        let format = match name {
            "alpaca" => "alpaca",
            "input_output" => "input-output",
            "completion" => "text",
            "chat_template" | "sharegpt" => "messages",
            "oasst" => "oasst",
            other => {
                return Err(self.unsupported(
                    key,
                    &format!(
                        "type `{other}`: qlora reads alpaca, input_output, completion, \
                         chat_template (or sharegpt), oasst, or a mapping of alpaca's fields"
                    ),
                ));
            }
        };
        self.set("format", format);
        Ok(())
    }

    fn key(&mut self, key: &str, value: &Value, root: &Value) -> Result<()> {
        if value.is_null() {
            return Ok(());
        }
        let ignore = |reader: &mut Self| reader.run.ignored.push(key.to_string());
        match key {
            "base_model" | "base_model_config" => {
                let s = self.string(key, value)?.to_string();
                self.set("model", s);
            }
            "tokenizer_config" => {
                if root.get("base_model") != Some(value) {
                    return Err(self.unsupported(key, "the tokenizer is the model's own"));
                }
            }
            "datasets" | "test_datasets" => {
                let list = value
                    .as_array()
                    .ok_or_else(|| self.bad(key, "expected a list of datasets"))?;
                match list.as_slice() {
                    [] => {}
                    [one] => {
                        self.dataset(&format!("{key}[0]"), one, key == "test_datasets", root)?
                    }
                    _ => {
                        return Err(self.unsupported(
                            key,
                            "one dataset a run (merge them into one file or repo)",
                        ));
                    }
                }
            }
            "chat_template" => self.chat_template(key, value, root)?,
            "chat_template_jinja" => {}
            "sequence_len" => {
                // A sample is cut to sequence_len tokens, and packed rows hold that many.
                let n = self.count(key, value)?;
                self.set("max_seq_len", n);
                self.set("source_max_len", n);
                self.set("target_max_len", n);
            }
            "sample_packing" => {
                let b = self.bool(key, value)?;
                self.set("packing", b);
            }
            "adapter" => match self.string(key, value)? {
                "qlora" => self.set("bits", 4),
                "lora" => {
                    let four = root.get("load_in_4bit").and_then(Value::as_bool) == Some(true);
                    self.set("bits", if four { 4 } else { 16 });
                }
                other => {
                    return Err(self.unsupported(key, &format!("adapter `{other}`: qlora or lora")));
                }
            },
            "load_in_4bit" => {
                if self.bool(key, value)? {
                    self.set("bits", 4);
                }
            }
            "load_in_8bit" => {
                if self.bool(key, value)? {
                    return Err(self.unsupported(
                        key,
                        "8-bit LoRA (the base is NF4 with adapter: qlora, or 16-bit with lora)",
                    ));
                }
            }
            "lora_r" => {
                let n = self.count(key, value)?;
                self.set("rank", n);
            }
            "lora_alpha" => {
                let n = self.number(key, value)?;
                self.set("alpha", n);
            }
            "lora_dropout" => {
                let n = self.number(key, value)?;
                self.set("dropout", n);
            }
            "lora_target_linear" => {
                if self.bool(key, value)? {
                    self.set("target_modules", "all-linear");
                }
            }
            "lora_target_modules" => {
                let modules = match value {
                    Value::Array(list) => list
                        .iter()
                        .map(|m| self.string(key, m).map(str::to_string))
                        .collect::<Result<Vec<_>>>()?,
                    other => vec![self.string(key, other)?.to_string()],
                };
                // lora_target_linear wins, as in axolotl.
                if root.get("lora_target_linear").and_then(Value::as_bool) != Some(true) {
                    self.set("target_modules", modules.join(","));
                }
            }
            "lora_model_dir" => {
                let s = self.string(key, value)?.to_string();
                self.set("adapter", s);
            }
            "lora_fan_in_fan_out" | "peft_use_dora" | "peft_use_rslora" => {
                let on = self.bool(key, value)?;
                if key == "peft_use_rslora" {
                    self.set("use_rslora", on);
                } else if on {
                    return Err(self.unsupported(key, "not a LoRA variant qlora trains"));
                }
            }
            "micro_batch_size" => {
                let n = self.count(key, value)?;
                self.set("batch_size", n);
            }
            "gradient_accumulation_steps" => {
                let n = self.count(key, value)?;
                self.set("grad_accum", n);
            }
            "num_epochs" => {
                let n = self.count(key, value)?;
                self.set("epochs", n);
            }
            "max_steps" => {
                let n = self.count(key, value)?;
                self.set("max_steps", n);
            }
            "optimizer" => {
                let ours = match self.string(key, value)? {
                    "paged_adamw_32bit" => "paged_adamw_32bit",
                    "paged_adamw_8bit" => "paged_adamw_8bit",
                    "adamw_torch" | "adamw_torch_fused" | "adamw_hf" => "adamw_32bit",
                    "adamw_bnb_8bit" | "adamw_8bit" => "adamw_8bit",
                    other => {
                        return Err(self.unsupported(
                            key,
                            &format!(
                                "optimizer `{other}`: paged_adamw_32bit, paged_adamw_8bit, \
                                 adamw_torch or adamw_bnb_8bit"
                            ),
                        ));
                    }
                };
                self.set("optim", ours);
            }
            "lr_scheduler" => {
                let ours = match self.string(key, value)? {
                    "cosine" => "cosine",
                    "linear" => "linear",
                    "constant" | "constant_with_warmup" => "constant",
                    other => {
                        return Err(self.unsupported(
                            key,
                            &format!("schedule `{other}`: cosine, linear or constant"),
                        ));
                    }
                };
                self.set("schedule", ours);
            }
            "learning_rate" => {
                let n = self.number(key, value)?;
                self.set("lr", n);
            }
            "warmup_steps" => {
                let n = self.count(key, value)?;
                self.set("warmup_steps", n);
            }
            "warmup_ratio" => {
                let n = self.number(key, value)?;
                self.set("warmup_ratio", n);
            }
            "weight_decay" => {
                let n = self.number(key, value)?;
                self.set("weight_decay", n);
            }
            "max_grad_norm" => {
                let n = self.number(key, value)?;
                self.set("max_grad_norm", n);
            }
            "val_set_size" => {
                let n = self.number(key, value)?;
                if !(0.0..1.0).contains(&n) {
                    return Err(self.unsupported(key, "a fraction of the data below 1"));
                }
                self.set("eval_fraction", n);
            }
            "eval_steps" | "save_steps" | "logging_steps" | "save_total_limit" | "seed"
            | "evals_per_epoch" | "saves_per_epoch" => {
                let n = self.count(key, value)?;
                self.set(key, n);
            }
            "group_by_length" | "gradient_checkpointing" => {
                let b = self.bool(key, value)?;
                self.set(key, b);
            }
            "train_on_inputs" => {
                let b = self.bool(key, value)?;
                self.set("train_on_source", b);
            }
            "special_tokens" => {
                let map = value
                    .as_object()
                    .ok_or_else(|| self.bad(key, "expected a mapping of tokens"))?;
                for (name, token) in map {
                    let at = format!("{key}.{name}");
                    match name.as_str() {
                        "eos_token" => {
                            let s = self.string(&at, token)?.to_string();
                            self.set("eos_token", s);
                        }
                        // Padding is masked by position; its id is never learned.
                        "pad_token" => ignore(self),
                        _ => {
                            return Err(self.unsupported(
                                &at,
                                "only eos_token (the vocabulary is the model's own)",
                            ));
                        }
                    }
                }
            }
            "output_dir" => {
                let s = self.string(key, value)?.to_string();
                self.set("out", s);
            }
            "resume_from_checkpoint" => {
                self.run.resume = Some(self.string(key, value)?.to_string());
            }
            "rl" => {
                let method = self.string(key, value)?;
                return Err(self.unsupported(
                    key,
                    &format!("rl `{method}`: qlora trains by supervised fine-tuning"),
                ));
            }
            _ if IGNORED.contains(&key) || IGNORED_PREFIXES.iter().any(|p| key.starts_with(p)) => {
                ignore(self)
            }
            _ => return Err(self.bad(key, "not an axolotl setting qlora knows")),
        }
        Ok(())
    }
}

/// Read the axolotl config `path`.
pub fn read_axolotl(path: &Path) -> Result<AxolotlRun> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let root: Value = serde_saphyr::from_str(&text).map_err(|e| {
        Error::file(
            path,
            format!("invalid YAML: {}", e.to_string().replace('\n', " ")),
        )
    })?;
    let map = root
        .as_object()
        .ok_or_else(|| Error::file(path, "expected a mapping of settings"))?;
    let mut reader = Reader {
        path,
        run: AxolotlRun::default(),
    };
    for (key, value) in map {
        reader.key(key, value, &root)?;
    }
    Ok(reader.run)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(yaml: &str) -> Result<AxolotlRun> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.yml");
        std::fs::write(&path, yaml).unwrap();
        read_axolotl(&path)
    }

    #[test]
    fn keys_map_ignore_or_refuse() {
        let run = read(
            "base_model: m\nadapter: qlora\nlora_r: 8\nlearning_rate: 2e-4\nflash_attention: true\n\
             wandb_project: x\nlora_target_modules: [q_proj, v_proj]\n",
        )
        .unwrap();
        assert_eq!(run.table["model"].as_str(), Some("m"));
        assert_eq!(run.table["rank"].as_integer(), Some(8));
        assert_eq!(run.table["lr"].as_float(), Some(2e-4));
        assert_eq!(run.table["target_modules"].as_str(), Some("q_proj,v_proj"));
        assert_eq!(run.ignored, ["flash_attention", "wandb_project"]);
        let err = read("rl: dpo\n").unwrap_err().to_string();
        assert!(
            err.contains("`rl`") && err.contains("cannot honour"),
            "{err}"
        );
        let err = read("load_in_8bit: true\n").unwrap_err().to_string();
        assert!(
            err.contains("`load_in_8bit`") && err.contains("8-bit LoRA"),
            "{err}"
        );
        let err = read("lora_rr: 8\n").unwrap_err().to_string();
        assert!(err.contains("`lora_rr`: not an axolotl setting"), "{err}");
        let err = read("datasets:\n  - path: a\n    type: jeopardy\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`datasets[0].type`") && err.contains("jeopardy"),
            "{err}"
        );
    }
}
