//! Downloads from a Hub that the test serves on 127.0.0.1 (`HF_ENDPOINT`), speaking the
//! endpoints `huggingface_hub` uses: the revision API, `resolve` with its headers (ETag,
//! X-Repo-Commit, X-Linked-Etag/-Size and a redirect to storage for large files) and ranged
//! downloads. A fresh download, a cut connection resumed, `HF_HUB_OFFLINE=1`, a gated repo, a
//! dataset repo, and the cache read back by `huggingface_hub` where Python has it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::common::{python_has, python_json, qlora_env};

const COMMIT: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678";
const TOKEN: &str = "hf_test_secret";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A file of a served repo.
struct Served {
    bytes: Vec<u8>,
    /// Served from "storage" through a redirect (as LFS files are).
    large: bool,
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: BTreeMap<String, String>,
}

struct Hub {
    /// repo id (with `datasets/` for a dataset) -> files.
    repos: BTreeMap<String, BTreeMap<String, Served>>,
    /// Repos that need the token.
    gated: Vec<String>,
    seen: Mutex<Vec<Seen>>,
    /// Cut the next un-ranged download of a large file halfway.
    cut_next: AtomicBool,
}

fn etag(bytes: &[u8]) -> String {
    // FNV-1a, twice over, as a stand-in for the Hub's hashes.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut g: u64 = 0x8422_2325_cbf2_9ce4;
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        g = (g ^ u64::from(b))
            .wrapping_mul(0x100_0000_01b3)
            .rotate_left(7);
    }
    format!("{h:016x}{g:016x}")
}

fn respond(stream: &mut TcpStream, status: &str, headers: &[(String, String)], body: &[u8]) {
    let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
}

impl Hub {
    fn files(&self, repo: &str) -> Option<&BTreeMap<String, Served>> {
        self.repos.get(repo)
    }

    fn handle(&self, mut stream: TcpStream, base: &str) {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let mut headers = BTreeMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        self.seen.lock().unwrap().push(Seen {
            method: method.clone(),
            path: path.clone(),
            headers: headers.clone(),
        });
        let authorized = headers.get("authorization") == Some(&format!("Bearer {TOKEN}"));
        let body = |b: &[u8]| {
            if method == "HEAD" {
                Vec::new()
            } else {
                b.to_vec()
            }
        };

        // The revision API.
        if let Some(rest) = path.strip_prefix("/api/") {
            let (kind, rest) = rest.split_once('/').unwrap();
            let (repo, _revision) = rest.split_once("/revision/").unwrap();
            let key = if kind == "datasets" {
                format!("datasets/{repo}")
            } else {
                repo.to_string()
            };
            if self.gated.contains(&key) && !authorized {
                let h = [("X-Error-Code".to_string(), "GatedRepo".to_string())];
                return respond(&mut stream, "401 Unauthorized", &h, b"");
            }
            let Some(files) = self.files(&key) else {
                return respond(&mut stream, "404 Not Found", &[], b"");
            };
            let siblings: Vec<_> = files
                .keys()
                .map(|f| serde_json::json!({ "rfilename": f }))
                .collect();
            let json = serde_json::json!({"sha": COMMIT, "siblings": siblings}).to_string();
            let h = [("Content-Length".to_string(), json.len().to_string())];
            return respond(&mut stream, "200 OK", &h, &body(json.as_bytes()));
        }
        // Storage: ranged.
        if let Some(tag) = path.strip_prefix("/storage/") {
            let served = self
                .repos
                .values()
                .flat_map(|f| f.values())
                .find(|s| etag(&s.bytes) == tag)
                .unwrap();
            let bytes = &served.bytes;
            if let Some(range) = headers.get("range") {
                let start: usize = range
                    .trim_start_matches("bytes=")
                    .trim_end_matches('-')
                    .parse()
                    .unwrap();
                let h = [
                    (
                        "Content-Length".to_string(),
                        (bytes.len() - start).to_string(),
                    ),
                    (
                        "Content-Range".to_string(),
                        format!("bytes {start}-{}/{}", bytes.len() - 1, bytes.len()),
                    ),
                ];
                return respond(
                    &mut stream,
                    "206 Partial Content",
                    &h,
                    &body(&bytes[start..]),
                );
            }
            let h = [("Content-Length".to_string(), bytes.len().to_string())];
            if method == "GET" && self.cut_next.swap(false, Ordering::SeqCst) {
                // Headers for the whole file, half of it, and the connection is gone.
                return respond(&mut stream, "200 OK", &h, &bytes[..bytes.len() / 2]);
            }
            return respond(&mut stream, "200 OK", &h, &body(bytes));
        }
        // resolve/{commit}/{file}
        let Some((repo, file)) = path.split_once(&format!("/resolve/{COMMIT}/")) else {
            return respond(&mut stream, "404 Not Found", &[], b"");
        };
        let repo = repo.trim_start_matches('/');
        if self.gated.contains(&repo.to_string()) && !authorized {
            let h = [("X-Error-Code".to_string(), "GatedRepo".to_string())];
            return respond(&mut stream, "401 Unauthorized", &h, b"");
        }
        let Some(served) = self.files(repo).and_then(|f| f.get(file)) else {
            let h = [("X-Error-Code".to_string(), "EntryNotFound".to_string())];
            return respond(&mut stream, "404 Not Found", &h, b"");
        };
        let tag = etag(&served.bytes);
        let commit = ("X-Repo-Commit".to_string(), COMMIT.to_string());
        if served.large {
            let h = [
                commit,
                ("X-Linked-Etag".to_string(), format!("\"{tag}\"")),
                ("X-Linked-Size".to_string(), served.bytes.len().to_string()),
                ("Location".to_string(), format!("{base}/storage/{tag}")),
                ("Content-Length".to_string(), "0".to_string()),
            ];
            return respond(&mut stream, "302 Found", &h, b"");
        }
        let h = [
            commit,
            ("ETag".to_string(), format!("\"{tag}\"")),
            ("Content-Length".to_string(), served.bytes.len().to_string()),
        ];
        respond(&mut stream, "200 OK", &h, &body(&served.bytes))
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

/// The tiny model as `Org/Tiny` (and the same files as the gated `Org/Gated`), the dataset
/// `Org/Data`, served on a port of 127.0.0.1; returns the endpoint.
fn serve() -> (Arc<Hub>, String) {
    let fixture = root().join("tests/fixtures/tiny-llama");
    let model = || -> BTreeMap<String, Served> {
        let mut files = BTreeMap::new();
        for name in [
            "config.json",
            "generation_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "chat_template.jinja",
            "model.safetensors",
        ] {
            files.insert(
                name.to_string(),
                Served {
                    bytes: std::fs::read(fixture.join(name)).unwrap(),
                    large: name.ends_with(".safetensors"),
                },
            );
        }
        // Files a model loads nothing from are never fetched.
        files.insert(
            "onnx/model.onnx".into(),
            Served {
                bytes: b"not needed".to_vec(),
                large: true,
            },
        );
        files.insert(
            "pytorch_model.bin".into(),
            Served {
                bytes: b"not needed either".to_vec(),
                large: true,
            },
        );
        files
    };
    let mut data = BTreeMap::new();
    let parquet = |name: &str| std::fs::read(root().join("tests/reference/parquet").join(name));
    data.insert(
        "README.md".to_string(),
        Served {
            bytes: b"---\nconfigs:\n- config_name: pc\n  data_files:\n  - split: train\n    path: pc/train-*\n- config_name: chat\n  data_files: chat/*.parquet\n---\n"
                .to_vec(),
            large: false,
        },
    );
    data.insert(
        "pc/train-00000-of-00001.parquet".into(),
        Served {
            bytes: parquet("prompt_completion.parquet").unwrap(),
            large: true,
        },
    );
    data.insert(
        "chat/data.parquet".into(),
        Served {
            bytes: parquet("chat_completion.parquet").unwrap(),
            large: true,
        },
    );
    let mut repos = BTreeMap::new();
    repos.insert("Org/Tiny".to_string(), model());
    repos.insert("Org/Gated".to_string(), model());
    repos.insert("datasets/Org/Data".to_string(), data);
    let hub = Arc::new(Hub {
        repos,
        gated: vec!["Org/Gated".into()],
        seen: Mutex::new(Vec::new()),
        cut_next: AtomicBool::new(false),
    });
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = hub.clone();
    let served_base = base.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let server = server.clone();
            let base = served_base.clone();
            std::thread::spawn(move || server.handle(stream, &base));
        }
    });
    (hub, base)
}

fn eval(model: &str, env: &[(&str, &Path)]) -> (i32, String, String) {
    let data = root().join("datasets/parity_eval.jsonl");
    qlora_env(
        &[
            "eval",
            "--model",
            model,
            "--data",
            data.to_str().unwrap(),
            "--format",
            "alpaca",
            "--json",
        ],
        env,
    )
}

fn loss(stdout: &str) -> f64 {
    serde_json::from_str::<serde_json::Value>(stdout.trim()).unwrap()["loss"]
        .as_f64()
        .unwrap()
}

/// Checks with Python's `huggingface_hub`, if it is installed (CI installs it): each file
/// reads back from the cache as huggingface_hub resolves it offline, and `scan_cache_dir`
/// finds the repo and its revision with no warning.
fn huggingface_hub_reads(cache: &Path, repo: &str, files: &[&str]) {
    if !python_has("huggingface_hub") {
        return;
    }
    const SCRIPT: &str = r#"
import json, sys
from huggingface_hub import hf_hub_download, scan_cache_dir
cache, repo, commit = sys.argv[1], sys.argv[2], sys.argv[3]
paths = {f: hf_hub_download(repo, f, cache_dir=cache, local_files_only=True) for f in sys.argv[4:]}
info = scan_cache_dir(cache)
repos = {r.repo_id: sorted(rev.commit_hash for rev in r.revisions) for r in info.repos}
print(json.dumps({"paths": paths, "repos": repos, "warnings": [str(w) for w in info.warnings]}))
"#;
    let mut args: Vec<&std::ffi::OsStr> = vec![cache.as_os_str(), repo.as_ref(), COMMIT.as_ref()];
    args.extend(files.iter().map(std::ffi::OsStr::new));
    let report = python_json(SCRIPT, &args);
    assert_eq!(report["warnings"], serde_json::json!([]), "{report}");
    assert_eq!(
        report["repos"][repo],
        serde_json::json!([COMMIT]),
        "{report}"
    );
    let fixture = root().join("tests/fixtures/tiny-llama");
    for file in files {
        let path = report["paths"][file].as_str().unwrap();
        assert_eq!(
            std::fs::read(path).unwrap(),
            std::fs::read(fixture.join(file)).unwrap(),
            "{file}"
        );
    }
}

#[test]
fn models_download_into_the_hugging_face_cache_and_resume() {
    let (hub, endpoint) = serve();
    let dir = tempfile::tempdir().unwrap();
    let fixture = root().join("tests/fixtures/tiny-llama");
    let (code, stdout, stderr) = eval(fixture.to_str().unwrap(), &[]);
    assert_eq!(code, 0, "{stderr}");
    let expected = loss(&stdout);
    let endpoint = PathBuf::from(&endpoint);

    // Offline: no request at all, and the cache's own error.
    let cache = dir.path().join("hub");
    let env = [
        ("HF_HUB_CACHE", cache.as_path()),
        ("HF_ENDPOINT", endpoint.as_path()),
        ("HF_HUB_OFFLINE", Path::new("1")),
    ];
    let (code, _, stderr) = eval("Org/Tiny", &env);
    assert_eq!(code, 1);
    assert!(stderr.contains("not in the Hugging Face cache"), "{stderr}");
    assert_eq!(hub.count(), 0, "HF_HUB_OFFLINE=1 made a request");

    // A fresh download, in huggingface_hub's layout; what models do not load is left.
    let env = [
        ("HF_HUB_CACHE", cache.as_path()),
        ("HF_ENDPOINT", endpoint.as_path()),
    ];
    let (code, stdout, stderr) = eval("Org/Tiny", &env);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(loss(&stdout), expected);
    assert!(stderr.contains("downloading model.safetensors"), "{stderr}");
    let repo = cache.join("models--Org--Tiny");
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main")).unwrap(),
        COMMIT
    );
    let weights = repo
        .join("snapshots")
        .join(COMMIT)
        .join("model.safetensors");
    let target = std::fs::read_link(&weights).unwrap();
    let tag = etag(&std::fs::read(fixture.join("model.safetensors")).unwrap());
    assert_eq!(target, Path::new("../../blobs").join(&tag));
    assert!(!repo.join("snapshots").join(COMMIT).join("onnx").exists());
    assert!(
        !repo
            .join("snapshots")
            .join(COMMIT)
            .join("pytorch_model.bin")
            .exists()
    );
    huggingface_hub_reads(
        &cache,
        "Org/Tiny",
        &["config.json", "tokenizer.json", "model.safetensors"],
    );
    // Once whole in the cache, no request.
    let before = hub.count();
    let (code, _, stderr) = eval("Org/Tiny", &env);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(hub.count(), before);

    // A connection cut halfway through the weights: an error naming what to do, the part kept,
    // and the next run resumes from it with a Range request.
    let cache = dir.path().join("hub2");
    let env = [
        ("HF_HUB_CACHE", cache.as_path()),
        ("HF_ENDPOINT", endpoint.as_path()),
    ];
    hub.cut_next.store(true, Ordering::SeqCst);
    let (code, _, stderr) = eval("Org/Tiny", &env);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("run again to resume"), "{stderr}");
    assert_eq!(
        stderr
            .trim_end()
            .lines()
            .last()
            .unwrap()
            .matches("error:")
            .count(),
        1
    );
    let partial = cache
        .join("models--Org--Tiny/blobs")
        .join(format!("{tag}.incomplete"));
    let kept = std::fs::metadata(&partial).unwrap().len();
    let size = std::fs::metadata(fixture.join("model.safetensors"))
        .unwrap()
        .len();
    assert_eq!(kept, size / 2);
    let (code, stdout, stderr) = eval("Org/Tiny", &env);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(loss(&stdout), expected);
    assert!(!partial.exists());
    let ranged = hub
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter_map(|s| s.headers.get("range").cloned())
        .collect::<Vec<_>>();
    assert_eq!(ranged, [format!("bytes={kept}-")]);

    // A gated repo: a one-line error saying to set HF_TOKEN; with the token, it downloads.
    let (code, _, stderr) = eval("Org/Gated", &env);
    assert_eq!(code, 1);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("gated") && stderr.contains("HF_TOKEN"),
        "{stderr}"
    );
    let token = PathBuf::from(TOKEN);
    let with_token = [
        ("HF_HUB_CACHE", cache.as_path()),
        ("HF_ENDPOINT", endpoint.as_path()),
        ("HF_TOKEN", token.as_path()),
    ];
    let (code, stdout, stderr) = eval("Org/Gated", &with_token);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(loss(&stdout), expected);
    let requests = hub.seen.lock().unwrap().clone();
    assert!(
        requests
            .iter()
            .filter(|s| s.path.contains("Org/Gated"))
            .all(|s| s.method == "GET" || s.method == "HEAD")
    );
}

#[test]
fn dataset_repos_download_the_files_of_their_config() {
    let (_hub, endpoint) = serve();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("hub");
    let endpoint = PathBuf::from(endpoint);
    let env = [
        ("HF_HUB_CACHE", cache.as_path()),
        ("HF_ENDPOINT", endpoint.as_path()),
    ];
    let model = root().join("tests/fixtures/tiny-llama");
    let run = |data: &str, config: &str| {
        qlora_env(
            &[
                "eval",
                "--model",
                model.to_str().unwrap(),
                "--data",
                data,
                "--data-config",
                config,
                "--format",
                "prompt-completion",
                "--json",
            ],
            &env,
        )
    };
    let (code, stdout, stderr) = run("Org/Data", "pc");
    assert_eq!(code, 0, "{stderr}");
    let snapshot = cache.join("datasets--Org--Data/snapshots").join(COMMIT);
    assert!(snapshot.join("pc/train-00000-of-00001.parquet").is_file());
    assert!(
        !snapshot.join("chat").exists(),
        "another config's files were fetched"
    );
    let twin = root().join("tests/reference/parquet/prompt_completion.jsonl");
    let (code, twin_out, stderr2) = qlora_env(
        &[
            "eval",
            "--model",
            model.to_str().unwrap(),
            "--data",
            twin.to_str().unwrap(),
            "--format",
            "prompt-completion",
            "--json",
        ],
        &[],
    );
    assert_eq!(code, 0, "{stderr2}");
    assert_eq!(loss(&stdout), loss(&twin_out));
    // The other config comes down when asked for.
    let (code, _, stderr) = run("Org/Data", "chat");
    assert_eq!(code, 0, "{stderr}");
    assert!(snapshot.join("chat/data.parquet").is_file());

    // `plan` needs a model's config.json, and downloads nothing else.
    let (code, _, stderr) = qlora_env(&["plan", "--model", "Org/Tiny"], &env);
    assert_eq!(code, 0, "{stderr}");
    let files: Vec<_> = std::fs::read_dir(cache.join("models--Org--Tiny/snapshots").join(COMMIT))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(files, ["config.json"]);
}
