// Whether the tests on real models can run (shared by `qlora-core` and `qlora-cli`).
//
// They need GGUF files (and the chat templates models ship) that are not in the repository.
// Each is looked for at its variable (`$QLORA_SMOLLM2_GGUF`), at `tests/models/` (where `examples/quickstart.sh` and
// `examples/fetch_models.sh` link the files they downloaded, whatever their `QLORA_CACHE`),
// and in the default cache. Found, the path goes to the tests as `QLORA_TEST_<NAME>` and
// its cfg is set; not found, the tests are compiled as ignored with the reason, so the summary
// counts them, except under `CI=true`, where they run and fail.

use std::path::{Path, PathBuf};

/// (file or directory, the name in the variables, the cfg of its tests).
const MODELS: [(&str, &str, &str); 4] = [
    (
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SMOLLM2_GGUF",
        "real_model",
    ),
    (
        "Qwen2.5-Coder-0.5B-Instruct.gguf",
        "QWEN25_GGUF",
        "real_qwen25",
    ),
    ("gemma-3-270m-q4_k_m.gguf", "GEMMA3_GGUF", "real_gemma3"),
    ("chat-templates", "CHAT_TEMPLATES", "real_chat_templates"),
];

fn var(name: &str) -> Option<String> {
    println!("cargo::rerun-if-env-changed={name}");
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Watch a directory for the file appearing, if the directory exists (a missing path would make
/// Cargo rerun this script, and rebuild the tests, on every build).
fn watch(dir: &Path) {
    if dir.is_dir() {
        println!("cargo::rerun-if-changed={}", dir.display());
    }
}

fn find(file: &str, name: &str) -> Option<PathBuf> {
    if let Some(path) = var(&format!("QLORA_{name}")) {
        // Asked for explicitly: used even if missing, so the tests say so.
        return Some(PathBuf::from(path));
    }
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let models = manifest
        .ancestors()
        .map(|dir| dir.join("tests/models"))
        .find(|dir| dir.join(".gitignore").is_file());
    let cache = var("QLORA_CACHE").map(PathBuf::from).or_else(|| {
        var("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| var("HOME").map(|home| PathBuf::from(home).join(".cache")))
            .map(|dir| dir.join("qlora"))
    });
    let mut dirs = Vec::new();
    dirs.extend(models);
    dirs.extend(cache.map(|dir| dir.join("downloads")));
    dirs.iter().for_each(|dir| watch(dir));
    dirs.into_iter()
        .map(|dir| dir.join(file))
        .find(|path| path.exists())
}

fn main() {
    let ci = var("CI").is_some_and(|v| v == "true" || v == "1");
    for (file, name, cfg) in MODELS {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        let found = find(file, name);
        if found.is_some() || ci {
            println!("cargo::rustc-cfg={cfg}");
        }
        let path = found.map(|p| p.display().to_string()).unwrap_or_default();
        println!("cargo::rustc-env=QLORA_TEST_{name}={path}");
    }
}
