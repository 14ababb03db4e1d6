#!/usr/bin/env bash
# `qlora export-gguf` checked by the tools that read GGUF: the quickstart's SmolLM2 model with
# a QLoRA adapter trained on datasets/identity_train.jsonl, exported as f16, then
#   - read back by the `gguf` Python package (gguf-py, llama.cpp's own reader): every key;
#   - loaded by transformers (`from_pretrained(..., gguf_file=...)`), whose loss on the
#     quickstart's held-out conversations (rendered with the chat template, every token scored)
#     is compared with `qlora eval` of the merged model on the same text.
#
#   examples/gguf_export_check.sh
#
# Needs the quickstart's GGUF (examples/quickstart.sh --fetch-only) and the peer's virtual
# environment (../shared/bench/README.md) with the `gguf` package: PEER_PY (default
# ~/.cache/qlora-peer/bin/python). QLORA_BIN: a built `qlora`. STEPS: training steps (20).
set -euo pipefail
cd "$(dirname "$0")/.."

PEER_PY="${PEER_PY:-$HOME/.cache/qlora-peer/bin/python}"
CACHE="${QLORA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qlora}"
GGUF="$CACHE/downloads/SmolLM2-135M-Instruct.Q4_1.gguf"
STEPS="${STEPS:-20}"
for f in "$PEER_PY" "$GGUF"; do
  [ -e "$f" ] || { echo "error: $f not found (see the comments at the top)" >&2; exit 1; }
done
"$PEER_PY" -c 'import gguf, transformers' 2>/dev/null \
  || { echo "error: $PEER_PY lacks the gguf or transformers package" >&2; exit 1; }
if [ -z "${QLORA_BIN:-}" ]; then
  cargo build --release -p qlora-cli
  QLORA_BIN=target/release/qlora
fi
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
qlora() { "$QLORA_BIN" "$@"; }

qlora import-gguf "$GGUF" --out "$WORK/model" 2>/dev/null
qlora train --model "$WORK/model" --format messages --data datasets/identity_train.jsonl \
  --out "$WORK/adapter" --rank 16 --alpha 32 --lr 1e-3 --batch-size 4 --grad-accum 1 \
  --max-steps "$STEPS" --logging-steps 100 2>/dev/null
qlora export-gguf --model "$WORK/model" --adapter "$WORK/adapter" --out "$WORK/model.gguf" --type f16
qlora merge --model "$WORK/model" --adapter "$WORK/adapter" --out "$WORK/merged" --dtype f32 2>/dev/null

# The held-out conversations as plain text, rendered by the model's chat template.
"$PEER_PY" examples/chat_as_text.py "$WORK/merged" datasets/identity_eval.jsonl "$WORK/eval_text.jsonl"
ours=$(qlora eval --model "$WORK/merged" --bits 16 --data "$WORK/eval_text.jsonl" --format text --json 2>/dev/null)

"$PEER_PY" - "$WORK" "$ours" <<'EOF'
import json, sys
import gguf, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
work, ours = sys.argv[1], json.loads(sys.argv[2])
reader = gguf.GGUFReader(f"{work}/model.gguf")
keys = list(reader.fields)
print(f"gguf-py read {len(keys)} keys and {len(reader.tensors)} tensors, e.g. "
      f"{', '.join(k for k in keys if not k.startswith('GGUF.'))[:200]}...")
model = AutoModelForCausalLM.from_pretrained(work, gguf_file="model.gguf", dtype=torch.float32)
tok = AutoTokenizer.from_pretrained(work, gguf_file="model.gguf")
total, count = 0.0, 0
with open(f"{work}/eval_text.jsonl") as f:
    for line in f:
        ids = tok(json.loads(line)["text"], return_tensors="pt").input_ids
        with torch.no_grad():
            loss = model(ids, labels=ids).loss.item()
        total += loss * (ids.shape[1] - 1)
        count += ids.shape[1] - 1
theirs = total / count
rel = abs(theirs - ours["loss"]) / ours["loss"]
print(f"eval loss: transformers on the GGUF {theirs:.6f} ({count} tokens), "
      f"qlora eval on the merged model {ours['loss']:.6f} ({ours['tokens']} tokens): "
      f"relative difference {rel:.2e}")
sys.exit(0 if rel <= 1e-3 and count == ours["tokens"] else 1)
EOF
