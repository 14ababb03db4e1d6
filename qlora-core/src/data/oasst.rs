//! OpenAssistant oasst1 exports: rebuild the message trees and turn every root-to-leaf path
//! into a conversation.
//!
//! Two layouts are read: one message per line (`message_id`, `parent_id`, `role`, `text`,
//! `lang`, `rank`, `deleted`, `review_result`, ...) and one tree per line (`message_tree_id`
//! and a `prompt` message whose `replies` nest). Deleted messages and messages that failed
//! review are dropped with their subtrees. A path ending on a prompter message loses that
//! message; a path without an assistant reply is dropped.

use std::collections::{BTreeMap, HashSet};

use clap::{ArgAction, Args};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::records::Record;
use crate::error::{Error, Result};
use crate::text::Message;

/// Which OpenAssistant messages are kept (flags of `train` and `eval`).
#[derive(Debug, Clone, PartialEq, Eq, Args, Serialize, Deserialize)]
#[serde(default)]
pub struct OasstOptions {
    /// OpenAssistant: keep only replies ranked first at every branching (the
    /// openassistant-guanaco choice).
    #[arg(long = "oasst-top-ranked", id = "oasst_top_ranked", action = ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true", default_value_t = false,
          value_name = "BOOL", help_heading = "Data")]
    #[serde(rename = "oasst_top_ranked")]
    pub top_ranked: bool,
    /// OpenAssistant: keep only messages in these languages (comma-separated, e.g. en,de)
    /// [default: all].
    #[arg(
        long = "lang",
        id = "lang",
        value_delimiter = ',',
        help_heading = "Data"
    )]
    #[serde(rename = "lang")]
    pub languages: Vec<String>,
}

impl Default for OasstOptions {
    fn default() -> Self {
        crate::settings::defaults()
    }
}

/// What the rebuild kept and dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OasstReport {
    /// Messages read.
    pub messages: usize,
    /// Conversation trees they form.
    pub trees: usize,
    /// Threads (root-to-leaf paths) kept.
    pub threads: usize,
    /// Messages marked deleted.
    pub deleted: usize,
    /// Messages that failed review.
    pub review_failed: usize,
    /// Messages in a language not asked for.
    pub other_language: usize,
    /// Replies below the top rank (with `--oasst-top-ranked`).
    pub below_top_rank: usize,
    /// Messages whose parent is missing or was dropped (with all their descendants).
    pub orphaned: usize,
}

impl OasstReport {
    /// Each reason messages were left out, with its count (reasons with none left out).
    pub fn dropped(&self) -> Vec<(String, usize)> {
        [
            ("deleted messages", self.deleted),
            ("messages that failed review", self.review_failed),
            ("messages in other languages", self.other_language),
            ("replies not ranked first", self.below_top_rank),
            ("messages under a dropped or missing parent", self.orphaned),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(reason, n)| (reason.to_string(), n))
        .collect()
    }
}

#[derive(Debug, Clone)]
struct Node {
    id: String,
    parent: Option<String>,
    role: String,
    text: String,
    lang: Option<String>,
    rank: Option<i64>,
    deleted: bool,
    review_failed: bool,
    location: String,
}

fn node(fields: &Map<String, Value>, location: &str, parent: Option<String>) -> Result<Node> {
    let err = |field: &str, message: &str| {
        Error::invalid(format!("{location}: field `{field}`: {message}"))
    };
    let string = |field: &str| -> Result<String> {
        fields
            .get(field)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| err(field, "missing or not a string"))
    };
    let role = string("role")?;
    if role != "prompter" && role != "assistant" {
        return Err(err(
            "role",
            &format!("`{role}` is neither prompter nor assistant"),
        ));
    }
    Ok(Node {
        id: string("message_id")?,
        parent,
        role,
        text: string("text")?,
        lang: fields
            .get("lang")
            .and_then(Value::as_str)
            .map(str::to_string),
        rank: fields.get("rank").and_then(Value::as_i64),
        deleted: fields
            .get("deleted")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        review_failed: fields.get("review_result").and_then(Value::as_bool) == Some(false),
        location: location.to_string(),
    })
}

/// Flatten a nested tree (`prompt` with `replies`) into nodes.
fn flatten(
    fields: &Map<String, Value>,
    location: &str,
    parent: Option<String>,
    out: &mut Vec<Node>,
) -> Result<()> {
    let n = node(fields, location, parent)?;
    let id = n.id.clone();
    out.push(n);
    if let Some(replies) = fields.get("replies") {
        let replies = replies.as_array().ok_or_else(|| {
            Error::invalid(format!("{location}: field `replies`: expected an array"))
        })?;
        for reply in replies {
            let reply = reply.as_object().ok_or_else(|| {
                Error::invalid(format!("{location}: field `replies`: expected objects"))
            })?;
            flatten(reply, location, Some(id.clone()), out)?;
        }
    }
    Ok(())
}

/// A conversation and the location (`file:line`) of its root message.
pub type Thread = (String, Vec<Message>);

/// Rebuild the trees and list their conversations.
pub fn conversations(
    records: &[Record],
    options: &OasstOptions,
) -> Result<(Vec<Thread>, OasstReport)> {
    let mut nodes = Vec::new();
    for record in records {
        let location = record.location();
        if let Some(prompt) = record.fields.get("prompt") {
            let prompt = prompt
                .as_object()
                .ok_or_else(|| record.error("prompt", "expected a message object"))?;
            flatten(prompt, &location, None, &mut nodes)?;
        } else {
            let parent = match record.fields.get("parent_id") {
                None | Some(Value::Null) => None,
                Some(Value::String(p)) => Some(p.clone()),
                Some(_) => return Err(record.error("parent_id", "expected a string or null")),
            };
            nodes.push(node(&record.fields, &location, parent)?);
        }
    }
    let mut report = OasstReport {
        messages: nodes.len(),
        ..OasstReport::default()
    };
    let mut seen = HashSet::new();
    for n in &nodes {
        if !seen.insert(n.id.clone()) {
            return Err(Error::invalid(format!(
                "{}: field `message_id`: `{}` appears twice",
                n.location, n.id
            )));
        }
    }

    // Which messages survive on their own.
    let mut kept: BTreeMap<String, &Node> = BTreeMap::new();
    for n in &nodes {
        if n.deleted {
            report.deleted += 1;
        } else if n.review_failed {
            report.review_failed += 1;
        } else if !options.languages.is_empty()
            && !n
                .lang
                .as_ref()
                .is_some_and(|l| options.languages.contains(l))
        {
            report.other_language += 1;
        } else {
            kept.insert(n.id.clone(), n);
        }
    }
    // Children in file order, ranked first when ranks exist.
    let mut children: BTreeMap<&str, Vec<&Node>> = BTreeMap::new();
    let mut roots = Vec::new();
    for n in &nodes {
        if !kept.contains_key(&n.id) {
            continue;
        }
        match &n.parent {
            None => roots.push(*kept.get(&n.id).expect("kept")),
            Some(p) => children.entry(p.as_str()).or_default().push(n),
        }
    }
    for list in children.values_mut() {
        list.sort_by_key(|n| n.rank.unwrap_or(i64::MAX));
    }
    if options.top_ranked {
        for list in children.values_mut() {
            if list.iter().any(|n| n.rank.is_some()) {
                let before = list.len();
                list.retain(|n| n.rank == Some(0));
                report.below_top_rank += before - list.len();
            }
        }
    }
    report.trees = roots.len();

    // Walk every path from each root.
    let mut threads = Vec::new();
    for root in roots {
        if root.role != "prompter" {
            continue;
        }
        let mut stack: Vec<Vec<&Node>> = vec![vec![root]];
        while let Some(path) = stack.pop() {
            let last = *path.last().expect("non-empty path");
            let next = children.get(last.id.as_str()).cloned().unwrap_or_default();
            let next: Vec<&Node> = next.into_iter().filter(|c| c.role != last.role).collect();
            if next.is_empty() {
                let mut turns: Vec<&Node> = path.clone();
                if turns.last().is_some_and(|n| n.role == "prompter") {
                    turns.pop();
                }
                if turns.iter().any(|n| n.role == "assistant") {
                    let messages = turns
                        .iter()
                        .map(|n| {
                            let role = if n.role == "assistant" {
                                "assistant"
                            } else {
                                "user"
                            };
                            Message::new(role, n.text.as_str())
                        })
                        .collect();
                    threads.push((root.location.clone(), messages));
                }
            } else {
                // Reverse so the first (best-ranked) child is walked first.
                for child in next.into_iter().rev() {
                    let mut longer = path.clone();
                    longer.push(child);
                    stack.push(longer);
                }
            }
        }
    }
    let dropped_on_their_own =
        report.deleted + report.review_failed + report.other_language + report.below_top_rank;
    report.orphaned = report.messages - dropped_on_their_own - count_reachable(&kept, &children);
    report.threads = threads.len();
    Ok((threads, report))
}

/// Messages reachable from a prompter root through kept, role-alternating links.
fn count_reachable(kept: &BTreeMap<String, &Node>, children: &BTreeMap<&str, Vec<&Node>>) -> usize {
    let mut count = 0;
    let mut stack: Vec<&Node> = kept
        .values()
        .filter(|n| n.parent.is_none() && n.role == "prompter")
        .copied()
        .collect();
    while let Some(n) = stack.pop() {
        count += 1;
        if let Some(list) = children.get(n.id.as_str()) {
            stack.extend(list.iter().filter(|c| c.role != n.role));
        }
    }
    count
}
