use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use qlora_core::data::{
    Batching, DataOptions, DatasetFormat, FieldMap, OasstOptions, PairLimits, SourceOptions,
    TokenizeOptions, load_pairs,
};
use qlora_core::eval::choice::{ChoiceReport, ChoiceStyle, evaluate_choices, read_task};
use qlora_core::eval::{Task, eval_examples, evaluate};
use qlora_core::lora::{apply_adapter, read_adapter};
use qlora_core::preference::{
    Method, PreferenceConfig, evaluate_pairs, pair_rows, score_reference, without_adapters,
};

use crate::model_args::ModelArgs;

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Dataset: a JSON Lines, JSON or parquet file, a folder of them, or a dataset repo id in
    /// the Hugging Face cache (for multiple-choice: a file of records with question, choices,
    /// answer and an optional subject).
    #[arg(long)]
    data: PathBuf,
    #[command(flatten)]
    source: SourceOptions,
    #[command(flatten)]
    fields: FieldMap,
    /// loss (next-token loss and perplexity) or multiple-choice (accuracy).
    #[arg(long, default_value_t = Task::Loss)]
    task: Task,
    /// Multiple-choice template: letters (lm-evaluation-harness's mmlu) or cloze (its
    /// arc_easy).
    #[arg(long, default_value_t = ChoiceStyle::Letters)]
    style: ChoiceStyle,
    /// Multiple-choice: examples before each question, the first K of --fewshot-data.
    #[arg(long, default_value_t = 0)]
    num_fewshot: usize,
    /// Multiple-choice: where the few-shot examples come from.
    #[arg(long)]
    fewshot_data: Option<PathBuf>,
    /// Record format: text, alpaca, input-output, oasst, guanaco or messages (default: text).
    /// `text` scores every token of `{"text": ...}` as `tokenizer(text)` gives them; the
    /// others score the response tokens of each example, as training learns them.
    #[arg(long, default_value = "text")]
    format: DatasetFormat,
    #[command(flatten)]
    tokenize: TokenizeOptions,
    #[command(flatten)]
    oasst: OasstOptions,
    /// Pack whole examples into rows of up to --max-seq-len tokens (each sees only itself):
    /// the same loss, fewer forward passes.
    #[arg(long)]
    packing: bool,
    /// Tokens a packed row holds.
    #[arg(long, default_value_t = 2048)]
    max_seq_len: usize,
    /// Print one JSON object {loss, perplexity, tokens, examples} instead of a sentence
    /// (with --method: {loss, pairs, rewards/..., logps/...}).
    #[arg(long)]
    json: bool,
    /// With --method dpo, orpo or simpo, --data holds preference pairs (prompt, chosen,
    /// rejected), scored as training scores them.
    #[command(flatten)]
    preference: PreferenceConfig,
    /// DPO: the adapter the run started from (its reference) [default: the base model].
    #[arg(long, help_heading = "Preference")]
    ref_adapter: Option<PathBuf>,
}

pub fn run(args: EvalArgs) -> Result<()> {
    if args.task == Task::MultipleChoice {
        return run_choices(args);
    }
    if args.preference.method != Method::Sft {
        return run_pairs(args);
    }
    let (model, tokenizer) = args.model.load(&args.tokenize.text)?;
    let options = DataOptions {
        splits: vec![args.source.data_split],
        config: args.source.data_config,
        fields: args.fields,
        format: Some(args.format),
        tokenize: args.tokenize,
        oasst: args.oasst,
    };
    let (examples, summary) = eval_examples(&args.data, &tokenizer, &options)?;
    if let Some(line) = summary {
        eprintln!("{line}");
    }
    if args.max_seq_len < 2 {
        bail!("--max-seq-len must be at least 2");
    }
    let report = evaluate(
        &model,
        &examples,
        args.packing.then_some(args.max_seq_len),
        |_| {},
    )?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "loss": report.loss,
                "perplexity": report.perplexity,
                "tokens": report.tokens,
                "examples": report.examples,
            })
        );
    } else {
        println!(
            "loss {:.6}  perplexity {:.4}  over {} tokens in {} examples",
            report.loss, report.perplexity, report.tokens, report.examples
        );
    }
    Ok(())
}

fn run_choices(args: EvalArgs) -> Result<()> {
    let (questions, fewshot) = read_task(
        &args.data,
        args.fewshot_data.as_deref(),
        args.num_fewshot,
        args.style,
        ["--num-fewshot", "--fewshot-data"],
    )?;
    let (model, tokenizer) = args.model.load(&args.tokenize.text)?;
    let bar = crate::bar::progress_bar(questions.len() as u64, "questions");
    let report = evaluate_choices(
        &model,
        &tokenizer,
        &questions,
        &fewshot,
        args.style,
        |done| bar.set_position(done as u64),
    )?;
    bar.finish_and_clear();
    if args.json {
        println!("{}", choice_json(&report));
    } else {
        print_choices(&report);
    }
    Ok(())
}

/// A number for JSON (NaN, a standard error of one question, as null).
fn number(v: f64) -> serde_json::Value {
    if v.is_finite() {
        serde_json::json!(v)
    } else {
        serde_json::Value::Null
    }
}

fn choice_json(report: &ChoiceReport) -> serde_json::Value {
    let o = &report.overall;
    let subjects: serde_json::Map<String, serde_json::Value> = report
        .subjects
        .iter()
        .map(|(s, a)| {
            (
                s.clone(),
                serde_json::json!({
                    "questions": a.questions,
                    "acc": a.acc,
                    "acc_stderr": number(a.acc_stderr),
                    "acc_norm": a.acc_norm,
                    "acc_norm_stderr": number(a.acc_norm_stderr),
                }),
            )
        })
        .collect();
    let items: Vec<serde_json::Value> = report
        .items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            serde_json::json!({
                "doc_id": i,
                "subject": item.subject,
                "answer": item.answer,
                "loglikelihoods": item.loglikelihoods,
                "is_greedy": item.is_greedy,
                "pred": item.pred,
                "pred_norm": item.pred_norm,
                "acc": item.acc(),
                "acc_norm": item.acc_norm(),
            })
        })
        .collect();
    serde_json::json!({
        "task": "multiple-choice",
        "style": report.style.name(),
        "num_fewshot": report.num_fewshot,
        "questions": o.questions,
        "acc": o.acc,
        "acc_stderr": number(o.acc_stderr),
        "acc_norm": o.acc_norm,
        "acc_norm_stderr": number(o.acc_norm_stderr),
        "subjects": subjects,
        "first_context": report.first_context,
        "items": items,
    })
}

fn print_choices(report: &ChoiceReport) {
    let row = |name: &str, a: &qlora_core::eval::choice::Accuracy| {
        println!(
            "{name:<24} {:>9} {:>8.4} ± {:<7.4} {:>8.4} ± {:.4}",
            a.questions, a.acc, a.acc_stderr, a.acc_norm, a.acc_norm_stderr
        );
    };
    println!(
        "{:<24} {:>9} {:>18} {:>18}",
        "subject", "questions", "acc", "acc_norm"
    );
    if report.subjects.len() > 1 || !report.subjects.contains_key("") {
        for (subject, accuracy) in &report.subjects {
            row(
                if subject.is_empty() {
                    "(none)"
                } else {
                    subject
                },
                accuracy,
            );
        }
    }
    row("all", &report.overall);
    println!(
        "({} style, {}-shot, scored as lm-evaluation-harness 0.4.13 scores it)",
        report.style, report.num_fewshot
    );
}

/// `--method dpo|orpo|simpo`: the objective and TRL's metrics over a preference set.
fn run_pairs(args: EvalArgs) -> Result<()> {
    let config = &args.preference;
    config.validate()?;
    if args.max_seq_len < 2 {
        bail!("--max-seq-len must be at least 2");
    }
    let (model, tokenizer) = args.model.load(&args.tokenize.text)?;
    let options = DataOptions {
        splits: vec![args.source.data_split.clone()],
        config: args.source.data_config.clone(),
        fields: args.fields.clone(),
        format: None,
        tokenize: args.tokenize.clone(),
        oasst: args.oasst.clone(),
    };
    let limits = PairLimits::of(config, args.max_seq_len);
    let loaded = load_pairs(&args.data, &tokenizer, &options, limits)?;
    eprintln!("{}: {loaded}", loaded.origin);
    let batching = Batching {
        batch_size: 1,
        group_by_length: false,
        packing: args.packing.then_some(args.max_seq_len),
    };
    let pad = tokenizer.pad_id().unwrap_or(0);
    let pairs = &loaded.pairs;
    let reference = if config.needs_reference() {
        let reference = match &args.ref_adapter {
            Some(dir) => {
                let mut base = without_adapters(&model);
                apply_adapter(&mut base, read_adapter(dir)?)?;
                base
            }
            None => without_adapters(&model),
        };
        Some(score_reference(&reference, pairs, &batching, pad)?)
    } else {
        None
    };
    let all: Vec<usize> = (0..pairs.len()).collect();
    let rows = pair_rows(pairs, &all, &batching);
    let sums = evaluate_pairs(&model, reference.as_deref(), pairs, &rows, config, pad)?;
    let loss = sums.loss / sums.pairs.max(1.0);
    let metrics = sums.means();
    if args.json {
        let mut object = serde_json::Map::new();
        object.insert("loss".into(), loss.into());
        object.insert("pairs".into(), pairs.len().into());
        for (name, value) in metrics.entries() {
            object.insert(name.into(), value.into());
        }
        println!("{}", serde_json::Value::Object(object));
    } else {
        println!(
            "{} loss {loss:.6} over {} pairs: rewards/accuracies {:.4} rewards/margins {:.4} \
             (rewards/chosen {:.4}, rewards/rejected {:.4}; logps/chosen {:.2}, \
             logps/rejected {:.2})",
            config.method,
            pairs.len(),
            metrics.rewards_accuracies,
            metrics.rewards_margins,
            metrics.rewards_chosen,
            metrics.rewards_rejected,
            metrics.logps_chosen,
            metrics.logps_rejected
        );
    }
    Ok(())
}
