//! Downloading from the Hugging Face Hub into its cache, in the cache's own layout, as
//! `huggingface_hub` downloads (so transformers finds our files and we find its files):
//!
//! - the revision's commit and files come from `GET {endpoint}/api/{models|datasets}/{repo}/revision/{rev}`;
//! - each file's metadata from `HEAD {endpoint}/[datasets/]{repo}/resolve/{commit}/{file}`
//!   (`X-Repo-Commit`; `X-Linked-Etag` or `ETag`; `X-Linked-Size` or `Content-Length`; a
//!   redirect's `Location` for files in LFS storage);
//! - its bytes go to `blobs/{etag}.incomplete`, resumed with a `Range` request after a cut
//!   connection, renamed to `blobs/{etag}` when whole, and linked (a relative link) from
//!   `snapshots/{commit}/{file}`; `refs/{rev}` holds the commit.
//!
//! `HF_ENDPOINT` names the Hub (default `https://huggingface.co`), `HF_TOKEN` (else the token
//! file `HF_TOKEN_PATH`, else `$HF_HOME/token`, as `hf auth login` writes it) authenticates,
//! and `HF_HUB_OFFLINE=1` makes no request at all.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::{RepoKind, RepoRef, SelectFiles, repo_dir};
use crate::error::{Error, Result};

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Whether `HF_HUB_OFFLINE` forbids any request (`1`, `ON`, `YES`, `TRUE`).
pub fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_uppercase().as_str(),
            "1" | "ON" | "YES" | "TRUE"
        )
    })
}

fn token() -> Option<String> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    if let Some(token) = var("HF_TOKEN") {
        return Some(token.trim().to_string());
    }
    let path = var("HF_TOKEN_PATH").map(PathBuf::from).or_else(|| {
        var("HF_HOME")
            .map(PathBuf::from)
            .or_else(|| {
                var("XDG_CACHE_HOME")
                    .map(PathBuf::from)
                    .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache")))
                    .map(|c| c.join("huggingface"))
            })
            .map(|home| home.join("token"))
    })?;
    std::fs::read_to_string(path)
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// `%`-encode `text` for a URL path segment (what Python's `quote(text, safe="")` leaves).
fn quote(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A file's path in a URL: each segment encoded, the slashes kept.
fn quote_path(path: &str) -> String {
    path.split('/').map(quote).collect::<Vec<_>>().join("/")
}

/// What a revision of a repo holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoFiles {
    /// The revision's commit.
    pub commit: String,
    /// Its files (relative paths).
    pub files: Vec<String>,
}

/// A client of the Hub: its endpoint, the token, and the cache it downloads into.
pub struct Hub {
    endpoint: String,
    token: Option<String>,
    cache: PathBuf,
    /// No redirects followed: a HEAD shows where an LFS file is.
    head: ureq::Agent,
    /// Redirects followed (to the storage an LFS file is served from).
    get: ureq::Agent,
}

/// Why a request failed: the Hub was not reached, or it answered with an error.
enum Failure {
    Unreachable(String),
    Answer(Error),
}

impl Hub {
    /// A client for `HF_ENDPOINT` and the token of the environment, downloading into `cache`.
    pub fn from_env(cache: &Path) -> Self {
        let endpoint = std::env::var("HF_ENDPOINT")
            .ok()
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.into())
            .trim_end_matches('/')
            .to_string();
        let agent = |redirects: u32| -> ureq::Agent {
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .max_redirects(redirects)
                .timeout_connect(Some(Duration::from_secs(10)))
                .timeout_recv_response(Some(Duration::from_secs(30)))
                .user_agent(format!("qlora/{}", env!("CARGO_PKG_VERSION")))
                .build()
                .into()
        };
        Hub {
            endpoint,
            token: token(),
            cache: cache.to_path_buf(),
            head: agent(0),
            get: agent(10),
        }
    }

    /// The endpoint requests go to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn authorize(&self, request: Request) -> Request {
        match &self.token {
            Some(token) => request.header("Authorization", format!("Bearer {token}")),
            None => request,
        }
    }

    /// The error for an answer other than success, naming what was asked for.
    fn refused(&self, what: &str, response: &ureq::http::Response<ureq::Body>) -> Error {
        let status = response.status().as_u16();
        let code = response
            .headers()
            .get("x-error-code")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        const TOKEN: &str = "set HF_TOKEN to an access token \
                             (https://huggingface.co/settings/tokens) or run `hf auth login`";
        let message = match (status, code) {
            (401 | 403, "GatedRepo") => format!(
                "{what}: the repo is gated ({status}): accept its terms on the Hub with your \
                 account, then {TOKEN}"
            ),
            (401 | 403, _) if self.token.is_none() => format!(
                "{what}: the Hub refused ({status}{}): the repo does not exist, or it is private \
                 or gated; to use it, {TOKEN}",
                if code.is_empty() {
                    String::new()
                } else {
                    format!(" {code}")
                }
            ),
            (401 | 403, _) => format!(
                "{what}: the Hub refused HF_TOKEN ({status}): the token lacks access to this repo"
            ),
            (404, "RevisionNotFound") => format!("{what}: no such revision on the Hub"),
            (404, "EntryNotFound") => format!("{what}: no such file in the repo"),
            (404, _) => format!("{what}: not found on the Hub ({})", self.endpoint),
            _ => format!("{what}: the Hub answered {status}"),
        };
        Error::invalid(message)
    }

    fn call(&self, request: Request) -> RequestResult<ureq::http::Response<ureq::Body>> {
        request
            .call()
            .map_err(|e| Failure::Unreachable(format!("cannot reach {}: {e}", self.endpoint)))
    }

    /// The commit and files of `revision` of `repo`.
    fn repo_files(&self, kind: RepoKind, repo: &str, revision: &str) -> RequestResult<RepoFiles> {
        let url = format!(
            "{}/api/{}/{repo}/revision/{}",
            self.endpoint,
            kind.plural(),
            quote(revision)
        );
        let what = format!("{repo}@{revision}");
        let mut response = self.call(self.authorize(self.get.get(&url)))?;
        if !response.status().is_success() {
            return Err(Failure::Answer(self.refused(&what, &response)));
        }
        let bad = |e: &dyn std::fmt::Display| {
            Failure::Answer(Error::invalid(format!(
                "{what}: bad answer from the Hub: {e}"
            )))
        };
        let text = response.body_mut().read_to_string().map_err(|e| bad(&e))?;
        let value: Value = serde_json::from_str(&text).map_err(|e| bad(&e))?;
        let commit = value["sha"]
            .as_str()
            .filter(|c| super::is_commit(c))
            .ok_or_else(|| Failure::Answer(Error::invalid(format!("{what}: no commit in answer"))))?
            .to_string();
        let files = value["siblings"]
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|f| f["rfilename"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        Ok(RepoFiles { commit, files })
    }

    fn resolve_url(&self, kind: RepoKind, repo: &str, commit: &str, file: &str) -> String {
        let prefix = match kind {
            RepoKind::Model => "",
            RepoKind::Dataset => "datasets/",
        };
        format!(
            "{}/{prefix}{repo}/resolve/{commit}/{}",
            self.endpoint,
            quote_path(file)
        )
    }

    /// Download `file` of `repo` at `commit` into the cache (unless it is there), and return
    /// its path in the snapshot.
    fn file(
        &self,
        kind: RepoKind,
        repo: &str,
        commit: &str,
        file: &str,
        progress: &mut dyn FnMut(&str, u64, u64),
    ) -> RequestResult<PathBuf> {
        // A file name that climbs out of the snapshot (a rogue mirror's) is refused.
        let plain = Path::new(file)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !plain || file.is_empty() {
            return Err(Failure::Answer(Error::invalid(format!(
                "{repo}@{commit}: the Hub listed the file `{file}`, which is not a plain \
                 relative path"
            ))));
        }
        let dir = repo_dir(&self.cache, kind, repo);
        let pointer = dir.join("snapshots").join(commit).join(file);
        if pointer.is_file() {
            return Ok(pointer);
        }
        let what = format!("{repo}@{commit}: {file}");
        let mut url = self.resolve_url(kind, repo, commit, file);
        let mut response = self.call(
            self.authorize(self.head.head(&url))
                .header("Accept-Encoding", "identity"),
        )?;
        // Relative redirects (a renamed repo) are followed; an absolute one is the storage.
        for _ in 0..5 {
            let location = response
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            match location {
                Some(to) if response.status().is_redirection() && to.starts_with('/') => {
                    url = format!("{}{to}", self.endpoint);
                    response = self.call(
                        self.authorize(self.head.head(&url))
                            .header("Accept-Encoding", "identity"),
                    )?;
                }
                _ => break,
            }
        }
        let status = response.status();
        if !(status.is_success() || status.is_redirection()) {
            return Err(Failure::Answer(self.refused(&what, &response)));
        }
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let etag = header("x-linked-etag")
            .or_else(|| header("etag"))
            .map(|e| e.trim_start_matches("W/").trim_matches('"').to_string())
            .filter(|e| !e.is_empty() && !e.contains(['/', '\\']) && e != "." && e != "..")
            .ok_or_else(|| {
                Failure::Answer(Error::invalid(format!("{what}: the Hub sent no ETag")))
            })?;
        let size = header("x-linked-size")
            .or_else(|| {
                (!status.is_redirection())
                    .then(|| header("content-length"))
                    .flatten()
            })
            .and_then(|s| s.parse::<u64>().ok());
        let location = header("location").unwrap_or(url);
        let blob = dir.join("blobs").join(&etag);
        if !blob.is_file() {
            self.fetch_blob(&location, &blob, size, &what, file, progress)?;
        }
        link(&blob, &pointer).map_err(Failure::Answer)?;
        Ok(pointer)
    }

    /// Download `url` into `blob`, through `blob.incomplete` (resumed where it stopped).
    fn fetch_blob(
        &self,
        url: &str,
        blob: &Path,
        size: Option<u64>,
        what: &str,
        file: &str,
        progress: &mut dyn FnMut(&str, u64, u64),
    ) -> RequestResult<()> {
        let io = |path: &Path, e: std::io::Error| Failure::Answer(Error::io(path, e));
        let parent = blob.parent().expect("blobs/ETAG");
        std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
        let partial = blob.with_file_name(format!(
            "{}.incomplete",
            blob.file_name().unwrap_or_default().to_string_lossy()
        ));
        let mut have = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        let mut request = self.authorize(self.get.get(url));
        if have > 0 {
            request = request.header("Range", format!("bytes={have}-"));
        }
        let response = self.call(request)?;
        let status = response.status().as_u16();
        let mut out = match status {
            206 => File::options()
                .append(true)
                .open(&partial)
                .map_err(|e| io(&partial, e))?,
            200 => {
                have = 0;
                File::create(&partial).map_err(|e| io(&partial, e))?
            }
            // Nothing left to send: the partial file is whole.
            416 if size == Some(have) => {
                return std::fs::rename(&partial, blob).map_err(|e| io(blob, e));
            }
            _ => return Err(Failure::Answer(self.refused(what, &response))),
        };
        let total = size.unwrap_or(0);
        let mut reader = response.into_body().into_reader();
        let mut buffer = vec![0u8; 1 << 16];
        progress(file, have, total);
        loop {
            let n = match reader.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    return Err(Failure::Unreachable(format!(
                        "{what}: the download stopped after {have} of {total} bytes ({e}); run \
                         again to resume"
                    )));
                }
            };
            out.write_all(&buffer[..n]).map_err(|e| io(&partial, e))?;
            have += n as u64;
            progress(file, have, total);
        }
        out.sync_all().map_err(|e| io(&partial, e))?;
        if let Some(size) = size.filter(|&s| s != have) {
            return Err(Failure::Unreachable(format!(
                "{what}: the download stopped after {have} of {size} bytes; run again to resume"
            )));
        }
        std::fs::rename(&partial, blob).map_err(|e| io(blob, e))
    }

    /// Download the files `select` picks of `wanted` (given the revision's files and a way to
    /// fetch one first, for files that name others) and return the revision's commit.
    pub fn snapshot(
        &self,
        kind: RepoKind,
        wanted: &RepoRef,
        select: &mut SelectFiles,
        progress: &mut dyn FnMut(&str, u64, u64),
    ) -> Result<String> {
        let revision = wanted.revision.as_deref().unwrap_or("main");
        let repo = &wanted.repo;
        let listed = self
            .repo_files(kind, repo, revision)
            .map_err(Failure::into_error)?;
        let commit = listed.commit.clone();
        if revision != commit {
            let reference = repo_dir(&self.cache, kind, repo)
                .join("refs")
                .join(revision);
            write_ref(&reference, &commit)?;
        }
        let mut fetch = |file: &str| -> Result<PathBuf> {
            self.file(kind, repo, &commit, file, progress)
                .map_err(Failure::into_error)
        };
        for file in select(&listed.files, &mut fetch)? {
            fetch(&file)?;
        }
        Ok(commit)
    }
}

type RequestResult<T> = std::result::Result<T, Failure>;

impl Failure {
    fn into_error(self) -> Error {
        match self {
            Failure::Unreachable(message) => Error::invalid(message),
            Failure::Answer(error) => error,
        }
    }
}

/// A request without a body (HEAD, GET).
type Request = ureq::RequestBuilder<ureq::typestate::WithoutBody>;

/// `refs/REV` holding `commit`, written whole.
fn write_ref(path: &Path, commit: &str) -> Result<()> {
    if std::fs::read_to_string(path).is_ok_and(|c| c.trim() == commit) {
        return Ok(());
    }
    let parent = path.parent().expect("refs/REV");
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let staged = path.with_extension("qlora-partial");
    std::fs::write(&staged, commit).map_err(|e| Error::io(&staged, e))?;
    std::fs::rename(&staged, path).map_err(|e| Error::io(path, e))
}

/// Link `pointer` (in `snapshots/COMMIT/`) to `blob` by a relative path, as huggingface_hub
/// links them (a copy where links cannot be made).
fn link(blob: &Path, pointer: &Path) -> Result<()> {
    let snapshots = pointer
        .ancestors()
        .find(|a| a.file_name().is_some_and(|n| n == "snapshots"))
        .expect("a snapshot path");
    let depth = pointer
        .strip_prefix(snapshots)
        .map(|p| p.components().count())
        .unwrap_or(2);
    let mut target = PathBuf::new();
    for _ in 0..depth {
        target.push("..");
    }
    target.push("blobs");
    target.push(blob.file_name().expect("blobs/ETAG"));
    let parent = pointer.parent().expect("snapshots/COMMIT/FILE");
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let _ = std::fs::remove_file(pointer);
    #[cfg(unix)]
    let linked = std::os::unix::fs::symlink(&target, pointer);
    #[cfg(not(unix))]
    let linked = std::fs::copy(blob, pointer).map(|_| ());
    linked.map_err(|e| Error::io(pointer, e))
}

/// Progress of downloads on stderr: a bar per file on a terminal, else a line per file.
pub fn stderr_progress() -> impl FnMut(&str, u64, u64) {
    use std::io::IsTerminal;
    let terminal = std::io::stderr().is_terminal();
    let mut current: Option<(String, indicatif::ProgressBar)> = None;
    move |file: &str, done: u64, total: u64| {
        if current.as_ref().is_none_or(|(f, _)| f != file) {
            if let Some((_, bar)) = current.take() {
                bar.finish();
            }
            let bar = if terminal {
                let bar = indicatif::ProgressBar::new(total);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{msg:30!} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} {eta}",
                    )
                    .expect("valid template"),
                );
                bar.set_message(file.to_string());
                bar
            } else {
                crate::stderr::line(format_args!(
                    "downloading {file} ({})",
                    if total > 0 {
                        format!("{:.1} MB", total as f64 / 1e6)
                    } else {
                        "size unknown".into()
                    }
                ));
                indicatif::ProgressBar::hidden()
            };
            current = Some((file.to_string(), bar));
        }
        if let Some((_, bar)) = &current {
            bar.set_position(done);
            if total > 0 && done >= total {
                bar.finish();
            }
        }
    }
}
