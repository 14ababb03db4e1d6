//! `--model ORG/NAME[@REVISION]` and `--data ORG/NAME`: repos in the Hugging Face cache, found
//! as `huggingface_hub` finds them. The cache is `$HF_HUB_CACHE` (or the older
//! `$HUGGINGFACE_HUB_CACHE`), else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else
//! `~/.cache/huggingface/hub`; a model repo lives in `models--ORG--NAME/` (a dataset in
//! `datasets--ORG--NAME/`), a revision name in `refs/REV` holds its commit, and the commit's
//! files are under `snapshots/COMMIT/` (links into `blobs/`). A 40-hex revision is the commit
//! itself. [`splits`] finds a dataset's files for a split as `datasets` does.

#[cfg(feature = "download")]
pub mod download;
pub mod splits;

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// What a repo holds: the Hub keeps models and datasets apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoKind {
    /// A model (`models--ORG--NAME`).
    Model,
    /// A dataset (`datasets--ORG--NAME`).
    Dataset,
}

impl RepoKind {
    /// The cache folder's prefix and the Hub's URL path segment (`models`, `datasets`).
    pub fn plural(self) -> &'static str {
        match self {
            RepoKind::Model => "models",
            RepoKind::Dataset => "datasets",
        }
    }

    /// `hf download`'s arguments for a repo of this kind.
    fn download_command(self, repo: &str) -> String {
        match self {
            RepoKind::Model => format!("hf download {repo}"),
            RepoKind::Dataset => format!("hf download --repo-type dataset {repo}"),
        }
    }
}

/// The Hugging Face hub cache directory, as `huggingface_hub` computes it.
pub fn hub_cache() -> Option<PathBuf> {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(|v| expand_home(Path::new(&v)))
    };
    if let Some(dir) = var("HF_HUB_CACHE").or_else(|| var("HUGGINGFACE_HUB_CACHE")) {
        return Some(dir);
    }
    let home = var("HF_HOME").or_else(|| {
        var("XDG_CACHE_HOME")
            .or_else(|| var("HOME").map(|h| h.join(".cache")))
            .map(|c| c.join("huggingface"))
    })?;
    Some(home.join("hub"))
}

/// [`hub_cache`], or an error saying which variables set it.
pub fn require_hub_cache() -> Result<PathBuf> {
    hub_cache()
        .ok_or_else(|| Error::invalid("no Hugging Face cache: set HF_HUB_CACHE, HF_HOME or HOME"))
}

fn expand_home(path: &Path) -> PathBuf {
    match (path.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => path.to_path_buf(),
    }
}

/// A model repo id and the revision asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoRef {
    /// `ORG/NAME`.
    pub repo: String,
    /// A branch, tag or commit [default: `main`].
    pub revision: Option<String>,
}

fn is_name(part: &str) -> bool {
    !part.is_empty()
        && part.len() <= 96
        && !part.starts_with(['.', '-'])
        && !part.contains("..")
        && !part.contains("--")
        && part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// `ORG/NAME` or `ORG/NAME@REVISION`, if `text` has that shape.
pub fn parse_repo_id(text: &str) -> Option<RepoRef> {
    let (repo, revision) = match text.split_once('@') {
        Some((repo, rev)) if !rev.is_empty() => (repo, Some(rev.to_string())),
        Some(_) => return None,
        None => (text, None),
    };
    let (org, name) = repo.split_once('/')?;
    (is_name(org) && is_name(name)).then(|| RepoRef {
        repo: repo.to_string(),
        revision,
    })
}

/// A resolved snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// A model's or a dataset's.
    pub kind: RepoKind,
    /// `ORG/NAME`.
    pub repo: String,
    /// The commit.
    pub commit: String,
    /// `.../models--ORG--NAME/snapshots/COMMIT`.
    pub dir: PathBuf,
}

pub(crate) fn is_commit(rev: &str) -> bool {
    rev.len() == 40 && rev.chars().all(|c| c.is_ascii_hexdigit())
}

/// The repo's folder in the cache.
pub fn repo_dir(cache: &Path, kind: RepoKind, repo: &str) -> PathBuf {
    cache.join(format!("{}--{}", kind.plural(), repo.replace('/', "--")))
}

/// `name -> commit` of every revision name in `refs/` (nested names such as `pr/1` included),
/// then the commits in `snapshots/`, for messages.
fn cached_revisions(repo_dir: &Path) -> String {
    fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut entries: Vec<_> = entries.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
            if entry.path().is_dir() {
                walk(&entry.path(), &format!("{name}/"), out);
            } else if let Ok(commit) = std::fs::read_to_string(entry.path()) {
                out.push(format!("{name} -> {}", commit.trim()));
            }
        }
    }
    let mut found = Vec::new();
    walk(&repo_dir.join("refs"), "", &mut found);
    if let Ok(entries) = std::fs::read_dir(repo_dir.join("snapshots")) {
        let mut commits: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        commits.sort();
        found.push(format!("snapshots {}", commits.join(", ")));
    }
    if found.is_empty() {
        "none".into()
    } else {
        found.join("; ")
    }
}

/// The model snapshot `wanted` names in `cache`, with `config.json` in it.
pub fn resolve_snapshot_in(cache: &Path, wanted: &RepoRef) -> Result<Snapshot> {
    let found = resolve_in(cache, RepoKind::Model, wanted)?;
    if !found.dir.join("config.json").is_file() {
        return Err(found.missing("config.json"));
    }
    Ok(found)
}

/// The snapshot of the `kind` repo `wanted` names in `cache`.
pub fn resolve_in(cache: &Path, kind: RepoKind, wanted: &RepoRef) -> Result<Snapshot> {
    let repo = &wanted.repo;
    let dir = repo_dir(cache, kind, repo);
    if !dir.is_dir() {
        return Err(Error::invalid(format!(
            "{repo} is not a path, and not in the Hugging Face cache at {} (no {}); download \
             it first (`{}`), or set HF_HUB_CACHE or HF_HOME to the cache that holds it",
            cache.display(),
            dir.file_name().unwrap_or_default().to_string_lossy(),
            kind.download_command(repo),
        )));
    }
    let revision = wanted.revision.as_deref().unwrap_or("main");
    let commit = if is_commit(revision) {
        revision.to_string()
    } else {
        let reference = dir.join("refs").join(revision);
        match std::fs::read_to_string(&reference) {
            Ok(text) if is_commit(text.trim()) => text.trim().to_string(),
            Ok(_) => {
                return Err(Error::file(
                    &reference,
                    format!("{repo}: revision `{revision}` does not hold a commit hash"),
                ));
            }
            Err(_) => {
                return Err(Error::invalid(format!(
                    "{repo}: revision `{revision}` is not in the Hugging Face cache at {}; \
                     cached revisions: {}",
                    dir.display(),
                    cached_revisions(&dir)
                )));
            }
        }
    };
    let snapshot = dir.join("snapshots").join(&commit);
    let found = Snapshot {
        kind,
        repo: repo.clone(),
        commit,
        dir: snapshot,
    };
    if !found.dir.is_dir() {
        return Err(found.missing("its snapshot folder"));
    }
    Ok(found)
}

impl Snapshot {
    /// The repo's folder: `snapshots/COMMIT`'s grandparent.
    fn repo_dir(&self) -> &Path {
        self.dir
            .parent()
            .and_then(Path::parent)
            .unwrap_or(&self.dir)
    }

    /// An error: the snapshot lacks `what`.
    pub fn missing(&self, what: &str) -> Error {
        // huggingface_hub records a file the repo does not have at a commit in `.no_exist/`.
        let absent = self
            .repo_dir()
            .join(".no_exist")
            .join(&self.commit)
            .join(what);
        if !what.is_empty() && absent.is_file() {
            return Error::invalid(format!(
                "{}@{} has no {what}: the Hugging Face cache records that the repo has none at \
                 this commit (.no_exist); qlora needs it",
                self.repo, self.commit
            ));
        }
        Error::invalid(format!(
            "{}@{} in the Hugging Face cache ({}) lacks {what}; download it again \
             (`{}`); cached revisions: {}",
            self.repo,
            self.commit,
            self.dir.display(),
            self.kind.download_command(&self.repo),
            cached_revisions(self.repo_dir())
        ))
    }

    /// Check that the files a model needs are there (links into `blobs/` that resolve): the
    /// tokenizer, and the weights (every shard `model.safetensors.index.json` names, or
    /// `model.safetensors`).
    pub fn check_model_files(&self) -> Result<()> {
        let has = |name: &str| self.dir.join(name).is_file();
        let index = "model.safetensors.index.json";
        if has(index) {
            let path = self.dir.join(index);
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            let value: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Error::file(&path, format!("invalid JSON: {e}")))?;
            let map = value["weight_map"]
                .as_object()
                .ok_or_else(|| Error::key(&path, "weight_map", "expected an object"))?;
            let mut shards: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
            shards.sort();
            shards.dedup();
            if let Some(shard) = shards.iter().find(|s| !has(s)) {
                return Err(self.missing(&format!("{shard} (named by {index})")));
            }
        } else if !has("model.safetensors") {
            return Err(self.missing("model.safetensors (or model.safetensors.index.json)"));
        }
        if !has("tokenizer.json") {
            return Err(self.missing("tokenizer.json"));
        }
        Ok(())
    }
}

/// Whether `text` ends with one of the file `extensions`: a path that is not there, not a repo
/// id (`data/train.jsonl`).
fn names_file(text: &str, extensions: &[&str]) -> bool {
    Path::new(text)
        .extension()
        .is_some_and(|e| extensions.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// Fetches one file of a revision into the cache and returns its path.
pub type FetchFile<'a> = dyn FnMut(&str) -> Result<PathBuf> + 'a;

/// Picks the files to download from a revision's file list (fetching any it must read first).
pub type SelectFiles<'a> = dyn FnMut(&[String], &mut FetchFile) -> Result<Vec<String>> + 'a;

/// Fetch `select`'s files of `wanted` into `cache` when the cache could not give them
/// (`cached`, why), unless `HF_HUB_OFFLINE` is set (or downloads are not built in); returns the
/// commit downloaded.
#[allow(unused_variables)]
fn fetch(
    cache: &Path,
    kind: RepoKind,
    wanted: &RepoRef,
    cached: Error,
    select: &mut SelectFiles,
) -> Result<RepoRef> {
    #[cfg(feature = "download")]
    if !download::offline() {
        let hub = download::Hub::from_env(cache);
        let mut progress = download::stderr_progress();
        let commit = hub
            .snapshot(kind, wanted, select, &mut progress)
            .map_err(|e| {
                Error::invalid(format!(
                    "{e}; {} is not (whole) in the Hugging Face cache at {}",
                    wanted.repo,
                    cache.display()
                ))
            })?;
        return Ok(RepoRef {
            repo: wanted.repo.clone(),
            revision: Some(commit),
        });
    }
    Err(cached)
}

/// The weights (and tokenizer and configuration) of a model repo, or only its `config.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFiles {
    /// Everything a model loads from.
    All,
    /// `config.json` (what `qlora plan` reads).
    Config,
}

/// Of a model repo's `files`: its JSON and Jinja files and its safetensors weights (the index's
/// shards, read through `fetch`, or `model.safetensors`).
fn model_files(
    repo: &str,
    which: ModelFiles,
    files: &[String],
    fetch: &mut FetchFile,
) -> Result<Vec<String>> {
    let has = |name: &str| files.iter().any(|f| f == name);
    if which == ModelFiles::Config {
        return Ok(vec!["config.json".to_string()]);
    }
    let mut chosen: Vec<String> = files
        .iter()
        .filter(|f| !f.contains('/') && (f.ends_with(".json") || f.ends_with(".jinja")))
        .cloned()
        .collect();
    let index = "model.safetensors.index.json";
    if has(index) {
        let path = fetch(index)?;
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::file(&path, format!("invalid JSON: {e}")))?;
        let mut shards: Vec<String> = value["weight_map"]
            .as_object()
            .ok_or_else(|| Error::key(&path, "weight_map", "expected an object"))?
            .values()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        shards.sort();
        shards.dedup();
        chosen.extend(shards);
    } else if has("model.safetensors") {
        chosen.push("model.safetensors".into());
    } else {
        return Err(Error::invalid(format!(
            "{repo} has no safetensors weights (model.safetensors or {index}); qlora reads \
             safetensors, or a GGUF file given as a path"
        )));
    }
    Ok(chosen)
}

/// The model `text` names if it is a repo id and not an existing path: its snapshot in the
/// cache, with its files checked; what the cache lacks is downloaded (unless offline).
pub fn resolve_model_id(text: &str) -> Result<Option<Snapshot>> {
    resolve_model_files(text, ModelFiles::All)
}

/// [`resolve_model_id`] needing only `which` of the model's files.
pub fn resolve_model_files(text: &str, which: ModelFiles) -> Result<Option<Snapshot>> {
    // A model file's name (`models/x.gguf`) is a path that is not there, not a repo.
    if Path::new(text).exists() || names_file(text, &["gguf", "safetensors", "json", "bin"]) {
        return Ok(None);
    }
    let Some(wanted) = parse_repo_id(text) else {
        return Ok(None);
    };
    let cache = require_hub_cache()?;
    let cached = |wanted: &RepoRef| {
        let snapshot = resolve_snapshot_in(&cache, wanted)?;
        if which == ModelFiles::All {
            snapshot.check_model_files()?;
        }
        Ok(snapshot)
    };
    match cached(&wanted) {
        Ok(snapshot) => Ok(Some(snapshot)),
        Err(why) => {
            let mut select = |files: &[String], fetch: &mut FetchFile| {
                model_files(&wanted.repo, which, files, fetch)
            };
            let downloaded = fetch(&cache, RepoKind::Model, &wanted, why, &mut select)?;
            cached(&downloaded).map(Some)
        }
    }
}

/// The dataset `text` names if it is a repo id and not an existing path: its snapshot in the
/// cache and its splits (of `config`); what the cache lacks of that config is downloaded
/// (unless offline).
pub fn resolve_dataset_id(
    text: &str,
    config: Option<&str>,
) -> Result<Option<(Snapshot, splits::Splits)>> {
    // A data file's name (`data/train.jsonl`) is a path that is not there, not a repo.
    if Path::new(text).exists() || names_file(text, &["jsonl", "json", "parquet", "csv", "txt"]) {
        return Ok(None);
    }
    let Some(wanted) = parse_repo_id(text) else {
        return Ok(None);
    };
    let cache = require_hub_cache()?;
    let cached = |wanted: &RepoRef| {
        let snapshot = resolve_in(&cache, RepoKind::Dataset, wanted)?;
        let found = splits::splits(&snapshot.dir, config)?;
        if let Some(missing) = found
            .splits
            .iter()
            .flat_map(|(_, files)| files)
            .find(|f| !f.is_file())
        {
            return Err(snapshot.missing(&missing.display().to_string()));
        }
        Ok((snapshot, found))
    };
    match cached(&wanted) {
        Ok(found) => Ok(Some(found)),
        Err(why) => {
            let mut select = |files: &[String], fetch: &mut FetchFile| {
                let card = match files.iter().any(|f| f == "README.md") {
                    true => {
                        let path = fetch("README.md")?;
                        Some(std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?)
                    }
                    false => None,
                };
                let found =
                    splits::splits_of(Path::new(""), files.to_vec(), card.as_deref(), config)?;
                Ok(found
                    .splits
                    .into_iter()
                    .flat_map(|(_, files)| files)
                    .map(|f| f.to_string_lossy().into_owned())
                    .collect())
            };
            let downloaded = fetch(&cache, RepoKind::Dataset, &wanted, why, &mut select)?;
            cached(&downloaded).map(Some)
        }
    }
}

/// The repo id and commit of a snapshot folder (`.../models--ORG--NAME/snapshots/COMMIT`), to
/// record where a model came from, as PEFT records `base_model_name_or_path` and `revision`.
pub fn snapshot_origin(dir: &Path) -> Option<(String, String)> {
    let commit = dir.file_name()?.to_str()?;
    let snapshots = dir.parent()?;
    if snapshots.file_name()? != "snapshots" || !is_commit(commit) {
        return None;
    }
    let repo = snapshots
        .parent()?
        .file_name()?
        .to_str()?
        .strip_prefix("models--")?;
    let (org, name) = repo.split_once("--")?;
    (is_name(org) && is_name(name)).then(|| (format!("{org}/{name}"), commit.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids() {
        let r = parse_repo_id("Qwen/Qwen2.5-0.5B@v1.0").unwrap();
        assert_eq!(
            (r.repo.as_str(), r.revision.as_deref()),
            ("Qwen/Qwen2.5-0.5B", Some("v1.0"))
        );
        assert_eq!(parse_repo_id("a/b").unwrap().revision, None);
        for bad in ["a", "a/b/c", "/b", "a/", "../b", "a/b@", "a b/c", "a--x/b"] {
            assert_eq!(parse_repo_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn origin_of_a_snapshot_folder() {
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let dir = PathBuf::from(format!("/c/hub/models--Org--My.Model/snapshots/{commit}"));
        assert_eq!(
            snapshot_origin(&dir),
            Some(("Org/My.Model".to_string(), commit.to_string()))
        );
        assert_eq!(snapshot_origin(Path::new("/tmp/model")), None);
    }
}
