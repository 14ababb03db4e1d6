//! A dataset folder's splits, found as `datasets.load_dataset` finds them (its
//! `data_files.py`): the `configs:` of the README's YAML header when it has them, else shard
//! names (`data/train-00000-of-00002.parquet`), else split keywords in folder names, then in
//! file names (`train`/`training`, `validation`/`valid`/`dev`/`val`,
//! `test`/`testing`/`eval`/`evaluation`, standing between `-._ ` or digits), else every file is
//! `train`. Hidden files and `README.md`-like metadata are never data; of the rest, qlora reads
//! parquet, JSON Lines and JSON.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};

/// The extensions of the data files read, most preferred first.
pub const DATA_EXTENSIONS: [&str; 3] = ["parquet", "jsonl", "json"];

/// Files of a dataset repo that are never data (`datasets`' `FILES_TO_IGNORE`).
const IGNORED: [&str; 6] = [
    "README.md",
    "config.json",
    "dataset_info.json",
    "dataset_infos.json",
    "dummy_data.zip",
    "dataset_dict.json",
];

/// The default splits and their keywords, in `datasets`' order.
const KEYWORDS: [(&str, &[&str]); 3] = [
    ("train", &["train", "training"]),
    ("validation", &["validation", "valid", "dev", "val"]),
    ("test", &["test", "testing", "eval", "evaluation"]),
];

/// The splits of a dataset folder: each split's name and its files, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Splits {
    /// The README config they come from, if any.
    pub config: Option<String>,
    /// Split name and files (absolute), train, validation and test first.
    pub splits: Vec<(String, Vec<PathBuf>)>,
}

impl Splits {
    /// The files of `split`, or an error naming the splits there are.
    pub fn files(&self, split: &str, root: &Path) -> Result<&[PathBuf]> {
        self.splits
            .iter()
            .find(|(name, _)| name == split)
            .map(|(_, files)| files.as_slice())
            .ok_or_else(|| {
                let names: Vec<&str> = self.splits.iter().map(|(n, _)| n.as_str()).collect();
                Error::invalid(format!(
                    "{}: no split `{split}`{}; its splits: {}",
                    root.display(),
                    self.config
                        .as_ref()
                        .map(|c| format!(" in config `{c}`"))
                        .unwrap_or_default(),
                    names.join(", ")
                ))
            })
    }
}

fn is_data(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    DATA_EXTENSIONS
        .iter()
        .any(|ext| lower.ends_with(&format!(".{ext}")))
}

/// Every file under `root` (links followed), as `/`-separated relative paths, sorted; hidden
/// files and folders (`.x`, `__x`) left out.
fn walk(root: &Path) -> Result<Vec<String>> {
    fn go(dir: &Path, prefix: &str, out: &mut Vec<String>) -> Result<()> {
        let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name.starts_with("__") {
                continue;
            }
            let path = entry.path();
            let relative = format!("{prefix}{name}");
            if path.is_dir() {
                go(&path, &format!("{relative}/"), out)?;
            } else {
                out.push(relative);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    go(root, "", &mut out)?;
    out.sort();
    Ok(out)
}

const SEPARATORS: &str = "-._ 0123456789";

fn is_sep(c: char) -> bool {
    SEPARATORS.contains(c)
}

/// `keyword` within `name` as `datasets`' patterns place it: at the start followed by a
/// separator, or between separators; for a folder name also the whole name or at the end
/// after a separator.
fn names_keyword(name: &str, keyword: &str, folder: bool) -> bool {
    name.match_indices(keyword).any(|(at, _)| {
        let before = name[..at].chars().next_back();
        let after = name[at + keyword.len()..].chars().next();
        let starts = before.is_none_or(is_sep);
        match after {
            Some(c) => starts && is_sep(c),
            None => folder && starts,
        }
    })
}

/// The split a keyword puts `path` in, looking at folder names or at the file name.
fn split_by_keyword(path: &str, folders: bool) -> Option<&'static str> {
    let parts: Vec<&str> = path.split('/').collect();
    let (file, dirs) = parts.split_last()?;
    KEYWORDS.iter().find_map(|(split, keywords)| {
        let hit = keywords.iter().any(|k| {
            if folders {
                dirs.iter().any(|d| names_keyword(d, k, true))
            } else {
                names_keyword(file, k, false)
            }
        });
        hit.then_some(*split)
    })
}

/// Split names with their files (relative paths).
type SplitList = Vec<(String, Vec<String>)>;

/// Splits as `datasets` infers them without a README config.
fn default_splits(files: &[String]) -> SplitList {
    let sharded = regex::Regex::new(r"^data/(\w+(?:\.\w+)*)-[0-9]{5}-of-[0-9]{5}[^/]*\.[^/]*$")
        .expect("valid pattern");
    let mut found: SplitList = Vec::new();
    let mut add = |split: &str, file: &str| match found.iter_mut().find(|(s, _)| s == split) {
        Some((_, files)) => files.push(file.to_string()),
        None => found.push((split.to_string(), vec![file.to_string()])),
    };
    let shards: Vec<(&str, &String)> = files
        .iter()
        .filter_map(|f| Some((sharded.captures(f)?.get(1)?.as_str(), f)))
        .collect();
    if !shards.is_empty() {
        for (split, file) in shards {
            add(split, file);
        }
    } else if files.iter().any(|f| split_by_keyword(f, true).is_some()) {
        for file in files {
            if let Some(split) = split_by_keyword(file, true) {
                add(split, file);
            }
        }
    } else if files.iter().any(|f| split_by_keyword(f, false).is_some()) {
        for file in files {
            if let Some(split) = split_by_keyword(file, false) {
                add(split, file);
            }
        }
    } else {
        for file in files {
            add("train", file);
        }
    }
    let rank = |name: &str| {
        KEYWORDS
            .iter()
            .position(|(s, _)| *s == name)
            .unwrap_or(KEYWORDS.len())
    };
    found.sort_by(|a, b| rank(&a.0).cmp(&rank(&b.0)).then(a.0.cmp(&b.0)));
    found
}

/// The YAML header of a dataset card (`README.md` between `---` lines), if any.
fn card_header(text: Option<&str>, readme: &Path) -> Result<Option<Value>> {
    let Some(text) = text else {
        return Ok(None);
    };
    let Some(rest) = text
        .strip_prefix("---\n")
        .or_else(|| text.strip_prefix("---\r\n"))
    else {
        return Ok(None);
    };
    let end = rest
        .match_indices("\n---")
        .map(|(at, _)| at)
        .find(|&at| {
            let after = &rest[at + 4..];
            after.is_empty() || after.starts_with('\n') || after.starts_with("\r\n")
        })
        .ok_or_else(|| Error::file(readme, "the YAML header has no closing `---`"))?;
    let yaml = &rest[..end + 1];
    let value: Value = serde_saphyr::from_str(yaml).map_err(|e| {
        Error::file(
            readme,
            format!("invalid YAML header: {}", e.to_string().replace('\n', " ")),
        )
    })?;
    Ok(Some(value))
}

fn patterns(value: &Value, readme: &Path, key: &str) -> Result<Vec<String>> {
    match value {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(list) => list
            .iter()
            .map(|v| {
                v.as_str().map(str::to_string).ok_or_else(|| {
                    Error::key(readme, key, "expected a path pattern or a list of them")
                })
            })
            .collect(),
        _ => Err(Error::key(
            readme,
            key,
            "expected a path pattern or a list of them",
        )),
    }
}

/// Split name and patterns of a config's `data_files`: a pattern or a list of them (all
/// `train`), a list of `{split, path}`, or a map of split to patterns.
fn config_patterns(data_files: &Value, readme: &Path, key: &str) -> Result<SplitList> {
    match data_files {
        Value::Array(list) if list.iter().all(Value::is_object) && !list.is_empty() => list
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let at = format!("{key}[{i}]");
                let split = item
                    .get("split")
                    .and_then(Value::as_str)
                    .unwrap_or("train")
                    .to_string();
                let path = item
                    .get("path")
                    .ok_or_else(|| Error::key(readme, format!("{at}.path"), "missing"))?;
                Ok((split, patterns(path, readme, &format!("{at}.path"))?))
            })
            .collect(),
        Value::Object(map) => map
            .iter()
            .map(|(split, v)| {
                Ok((
                    split.clone(),
                    patterns(v, readme, &format!("{key}.{split}"))?,
                ))
            })
            .collect(),
        other => Ok(vec![("train".into(), patterns(other, readme, key)?)]),
    }
}

/// Files among `files` that `pattern` matches (`*` within a folder, `**` across folders).
fn matching(pattern: &str, files: &[String], readme: &Path, key: &str) -> Result<Vec<String>> {
    let pattern = pattern.trim_start_matches("./");
    let glob = glob::Pattern::new(pattern)
        .map_err(|e| Error::key(readme, key, format!("bad pattern `{pattern}`: {e}")))?;
    let options = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: false,
    };
    Ok(files
        .iter()
        .filter(|f| glob.matches_with(f, options))
        .cloned()
        .collect())
}

/// The splits of `config` (or the default one) from the card's `configs:`, if it has them.
fn card_splits(
    card: Option<&str>,
    readme: &Path,
    files: &[String],
    config: Option<&str>,
) -> Result<Option<(String, SplitList)>> {
    let Some(header) = card_header(card, readme)? else {
        return Ok(None);
    };
    let Some(configs) = header.get("configs") else {
        return Ok(None);
    };
    let configs = configs
        .as_array()
        .ok_or_else(|| Error::key(readme, "configs", "expected a list"))?;
    let name_of = |c: &Value| {
        c.get("config_name")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string()
    };
    let names: Vec<String> = configs.iter().map(name_of).collect();
    let chosen = match config {
        Some(wanted) => names.iter().position(|n| n == wanted).ok_or_else(|| {
            Error::key(
                readme,
                "configs",
                format!("no config `{wanted}`; its configs: {}", names.join(", ")),
            )
        })?,
        None => configs
            .iter()
            .position(|c| c.get("default").and_then(Value::as_bool) == Some(true))
            .or_else(|| names.iter().position(|n| n == "default"))
            .or_else(|| (configs.len() == 1).then_some(0))
            .ok_or_else(|| {
                Error::key(
                    readme,
                    "configs",
                    format!(
                        "several configs and none is the default; pick one with --data-config: {}",
                        names.join(", ")
                    ),
                )
            })?,
    };
    let key = format!("configs[{chosen}].data_files");
    let data_files = configs[chosen]
        .get("data_files")
        .ok_or_else(|| Error::key(readme, &key, "missing"))?;
    let mut splits = Vec::new();
    for (split, globs) in config_patterns(data_files, readme, &key)? {
        let mut matched = Vec::new();
        for pattern in &globs {
            let hits = matching(pattern, files, readme, &key)?;
            if hits.is_empty() {
                return Err(Error::key(
                    readme,
                    &key,
                    format!("split `{split}`: no file matches `{pattern}`"),
                ));
            }
            matched.extend(hits);
        }
        matched.sort();
        matched.dedup();
        splits.push((split, matched));
    }
    Ok(Some((names[chosen].clone(), splits)))
}

/// Keep the files of the most common data extension (parquet first on a tie), as `datasets`
/// reads a split with one builder.
fn one_kind(files: Vec<String>) -> Vec<String> {
    let count = |ext: &str| {
        files
            .iter()
            .filter(|f| f.to_ascii_lowercase().ends_with(&format!(".{ext}")))
            .count()
    };
    let best = DATA_EXTENSIONS
        .iter()
        .copied()
        .max_by_key(|ext| {
            (
                count(ext),
                std::cmp::Reverse(DATA_EXTENSIONS.iter().position(|e| e == ext)),
            )
        })
        .expect("extensions");
    files
        .into_iter()
        .filter(|f| f.to_ascii_lowercase().ends_with(&format!(".{best}")))
        .collect()
}

/// The splits of the dataset folder `root` (a snapshot of a dataset repo, or a local folder),
/// with `config` chosen among the card's configs (`--data-config`).
pub fn splits(root: &Path, config: Option<&str>) -> Result<Splits> {
    let card = std::fs::read_to_string(root.join("README.md")).ok();
    splits_of(root, walk(root)?, card.as_deref(), config)
}

/// [`splits`] of a repo whose files are `files` (relative paths) and whose card is `card`,
/// with `root` for their paths (a repo not yet downloaded: the snapshot folder it will be).
pub fn splits_of(
    root: &Path,
    files: Vec<String>,
    card: Option<&str>,
    config: Option<&str>,
) -> Result<Splits> {
    let files: Vec<String> = files
        .into_iter()
        .filter(|f| !IGNORED.contains(&f.as_str()))
        .filter(|f| {
            !f.split('/')
                .any(|p| p.starts_with('.') || p.starts_with("__"))
        })
        .collect();
    let readme = root.join("README.md");
    let (config, found) = match card_splits(card, &readme, &files, config)? {
        Some((name, splits)) => {
            for (split, files) in &splits {
                if let Some(other) = files.iter().find(|f| !is_data(f)) {
                    return Err(Error::file(
                        &readme,
                        format!(
                            "split `{split}` names {other}: qlora reads parquet, JSON Lines and \
                             JSON files"
                        ),
                    ));
                }
            }
            (Some(name), splits)
        }
        None => {
            if let Some(wanted) = config {
                return Err(Error::invalid(format!(
                    "{}: --data-config {wanted}: the folder's README.md declares no configs",
                    root.display()
                )));
            }
            let data: Vec<String> = files.into_iter().filter(|f| is_data(f)).collect();
            (None, default_splits(&data))
        }
    };
    let splits: Vec<(String, Vec<PathBuf>)> = found
        .into_iter()
        .map(|(split, files)| {
            let files = one_kind(files).iter().map(|f| root.join(f)).collect();
            (split, files)
        })
        .filter(|(_, files): &(String, Vec<PathBuf>)| !files.is_empty())
        .collect();
    if splits.is_empty() {
        return Err(Error::invalid(format!(
            "{}: no data files (qlora reads {} files)",
            root.display(),
            DATA_EXTENSIONS.join(", ")
        )));
    }
    Ok(Splits { config, splits })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(found: &[(String, Vec<String>)]) -> Vec<(&str, Vec<&str>)> {
        found
            .iter()
            .map(|(s, f)| (s.as_str(), f.iter().map(String::as_str).collect()))
            .collect()
    }

    #[test]
    fn default_split_rules() {
        let files = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // Shard names give any split name.
        let found = default_splits(&files(&[
            "data/test-00000-of-00001.parquet",
            "data/train-00000-of-00002.parquet",
            "data/train-00001-of-00002.parquet",
            "data/train_sft-00000-of-00001.parquet",
        ]));
        assert_eq!(
            names(&found),
            [
                (
                    "train",
                    vec![
                        "data/train-00000-of-00002.parquet",
                        "data/train-00001-of-00002.parquet"
                    ]
                ),
                ("test", vec!["data/test-00000-of-00001.parquet"]),
                ("train_sft", vec!["data/train_sft-00000-of-00001.parquet"]),
            ]
        );
        // Folder names before file names.
        let found = default_splits(&files(&[
            "default/train/0000.parquet",
            "default/validation/0000.parquet",
            "test.parquet",
        ]));
        assert_eq!(
            names(&found),
            [
                ("train", vec!["default/train/0000.parquet"]),
                ("validation", vec!["default/validation/0000.parquet"]),
            ]
        );
        // File names: keywords between separators, not inside words.
        let found = default_splits(&files(&[
            "my_dev.jsonl",
            "trainer.jsonl",
            "x-training-1.jsonl",
            "eval.json",
        ]));
        assert_eq!(
            names(&found),
            [
                ("train", vec!["x-training-1.jsonl"]),
                ("validation", vec!["my_dev.jsonl"]),
                ("test", vec!["eval.json"]),
            ]
        );
        // No keyword: everything is train.
        let found = default_splits(&files(&["a.parquet", "b/c.parquet"]));
        assert_eq!(names(&found), [("train", vec!["a.parquet", "b/c.parquet"])]);
    }

    #[test]
    fn card_configs_choose_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for f in [
            "data/train-0.parquet",
            "data/test-0.parquet",
            "other/all.jsonl",
            "notes.txt",
        ] {
            std::fs::create_dir_all(root.join(f).parent().unwrap()).unwrap();
            std::fs::write(root.join(f), "").unwrap();
        }
        std::fs::write(
            root.join("README.md"),
            "---\nconfigs:\n- config_name: main\n  default: true\n  data_files:\n  - split: train\n    path: data/train-*\n  - split: test\n    path: \"data/test-*\"\n- config_name: other\n  data_files: other/*.jsonl\n---\n# card\n",
        )
        .unwrap();
        let s = splits(root, None).unwrap();
        assert_eq!(s.config.as_deref(), Some("main"));
        assert_eq!(
            s.files("test", root).unwrap(),
            [root.join("data/test-0.parquet")]
        );
        let s = splits(root, Some("other")).unwrap();
        assert_eq!(
            s.files("train", root).unwrap(),
            [root.join("other/all.jsonl")]
        );
        let err = s.files("test", root).unwrap_err().to_string();
        assert!(
            err.contains("no split `test` in config `other`; its splits: train"),
            "{err}"
        );
        let err = splits(root, Some("nope")).unwrap_err().to_string();
        assert!(
            err.contains("no config `nope`; its configs: main, other"),
            "{err}"
        );
        std::fs::write(
            root.join("README.md"),
            "---\nconfigs:\n- config_name: a\n  data_files: notes.txt\n---\n",
        )
        .unwrap();
        let err = splits(root, None).unwrap_err().to_string();
        assert!(
            err.contains("notes.txt") && err.contains("parquet"),
            "{err}"
        );
    }
}
