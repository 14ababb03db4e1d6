//! `qlora quantize` as a user runs it: success, and one-line errors with exit code 1 and no
//! output left behind for each kind of bad input.

use std::path::{Path, PathBuf};
use std::process::Command;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors, serialize_to_file};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

fn qlora(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_qlora"))
        .args(args)
        .output()
        .expect("run qlora");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A copy of `fixtures/tiny-llama` in a temp dir, to be broken by the test.
fn model_copy(root: &Path) -> PathBuf {
    let dir = root.join("model");
    std::fs::create_dir(&dir).unwrap();
    for entry in std::fs::read_dir(fixture("tiny-llama")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    dir
}

/// Rewrite the model's weights with `edit` applied to the (name, dtype, shape, bytes) list.
fn rewrite_weights(dir: &Path, edit: impl Fn(&mut Vec<(String, Dtype, Vec<usize>, Vec<u8>)>)) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    serialize_to_file(views, None, &path).unwrap();
}

/// Run quantize on `model` and expect a one-line error mentioning every string in `needles`.
fn expect_failure(root: &Path, model: &Path, needles: &[&str]) {
    let out = root.join("out");
    let (code, stderr) = qlora(&[
        "quantize",
        "--model",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "stderr: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "`{needle}` not in: {stderr}");
    }
    assert!(!out.exists(), "no output directory on failure");
    let leftovers: Vec<_> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");
}

#[test]
fn quantizes_the_fixture_model() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("nf4");
    let model = fixture("tiny-llama");
    let (code, stderr) = qlora(&[
        "quantize",
        "--model",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("quantized 14 weights"), "{stderr}");
    assert!(out.join("model.safetensors").is_file());
    // A second run refuses to overwrite without --force.
    let (code, stderr) = qlora(&[
        "quantize",
        "--model",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("--force"), "{stderr}");
}

#[test]
fn missing_model_directory() {
    let root = tempfile::tempdir().unwrap();
    expect_failure(
        root.path(),
        &root.path().join("nope"),
        &["nope", "config.json"],
    );
}

#[test]
fn missing_weights_file() {
    let root = tempfile::tempdir().unwrap();
    let model = model_copy(root.path());
    std::fs::remove_file(model.join("model.safetensors")).unwrap();
    expect_failure(root.path(), &model, &["model.safetensors"]);
}

#[test]
fn missing_config_field() {
    let root = tempfile::tempdir().unwrap();
    let model = model_copy(root.path());
    let config = std::fs::read_to_string(model.join("config.json")).unwrap();
    std::fs::write(
        model.join("config.json"),
        config.replace("\"hidden_size\": 128,", ""),
    )
    .unwrap();
    expect_failure(root.path(), &model, &["config.json", "hidden_size"]);
}

#[test]
fn truncated_safetensors() {
    let root = tempfile::tempdir().unwrap();
    let model = model_copy(root.path());
    let path = model.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 1000]).unwrap();
    expect_failure(
        root.path(),
        &model,
        &["model.safetensors", "not a valid safetensors"],
    );
}

#[test]
fn unknown_dtype() {
    let root = tempfile::tempdir().unwrap();
    let model = model_copy(root.path());
    rewrite_weights(&model, |tensors| {
        let t = tensors
            .iter_mut()
            .find(|t| t.0 == "model.layers.1.mlp.up_proj.weight")
            .unwrap();
        t.1 = Dtype::I16;
    });
    expect_failure(
        root.path(),
        &model,
        &[
            "model.safetensors",
            "model.layers.1.mlp.up_proj.weight",
            "I16",
        ],
    );
}

#[test]
fn shape_mismatch() {
    let root = tempfile::tempdir().unwrap();
    let model = model_copy(root.path());
    rewrite_weights(&model, |tensors| {
        let t = tensors
            .iter_mut()
            .find(|t| t.0 == "model.layers.0.self_attn.k_proj.weight")
            .unwrap();
        t.2 = vec![t.2[1], t.2[0]];
    });
    expect_failure(
        root.path(),
        &model,
        &[
            "model.safetensors",
            "model.layers.0.self_attn.k_proj.weight",
            "expected [64, 128]",
        ],
    );
}

#[test]
fn missing_weight() {
    let root = tempfile::tempdir().unwrap();
    let model = model_copy(root.path());
    rewrite_weights(&model, |tensors| {
        tensors.retain(|t| t.0 != "model.layers.1.self_attn.o_proj.weight");
    });
    expect_failure(
        root.path(),
        &model,
        &["model.layers.1.self_attn.o_proj.weight", "missing"],
    );
}

#[test]
fn non_finite_weight() {
    let root = tempfile::tempdir().unwrap();
    let model = model_copy(root.path());
    rewrite_weights(&model, |tensors| {
        let t = tensors
            .iter_mut()
            .find(|t| t.0 == "model.layers.0.mlp.down_proj.weight")
            .unwrap();
        // bf16 NaN at element 5
        t.3[10] = 0xc0;
        t.3[11] = 0x7f;
    });
    expect_failure(
        root.path(),
        &model,
        &[
            "model.layers.0.mlp.down_proj.weight",
            "non-finite",
            "element 5",
        ],
    );
}
