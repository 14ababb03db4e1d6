#!/usr/bin/env bash
# A real checkpoint of an architecture end to end, against transformers + peft on the same
# machine:
#   1. `qlora import-gguf --dtype f32`, then `qlora eval` of the held-out conversations
#      (datasets/identity_eval.jsonl rendered by the model's chat template, every token
#      scored) against transformers' loss on the GGUF itself (`gguf_file=`, float32);
#   2. a short QLoRA run (NF4 base, r 16, packing) on datasets/identity_train.jsonl: the
#      held-out loss before and after (a base model without a chat template: on plain
#      transcripts of the conversations, see examples/chat_as_text.py);
#   3. the adapter loaded by peft on transformers' model of the imported directory: its loss
#      against `qlora eval --adapter` (16-bit base, float32).
# Each comparison prints its relative difference; the script fails when one exceeds 1e-4 or
# the held-out loss did not drop.
#
#   examples/arch_check.sh tests/models/Qwen2.5-Coder-0.5B-Instruct.gguf [STEPS]
#
# Needs the peer's virtual environment (../shared/bench/README.md) with `gguf`: PEER_PY
# (default ~/.cache/qlora-peer/bin/python). QLORA_BIN: a built `qlora`. STEPS default 30.
set -euo pipefail
cd "$(dirname "$0")/.."

GGUF="${1:?usage: examples/arch_check.sh MODEL.gguf [STEPS]}"
STEPS="${2:-30}"
PEER_PY="${PEER_PY:-$HOME/.cache/qlora-peer/bin/python}"
for f in "$PEER_PY" "$GGUF"; do
  [ -e "$f" ] || { echo "error: $f not found (see the comments at the top)" >&2; exit 1; }
done
if [ -z "${QLORA_BIN:-}" ]; then
  cargo build --release -p qlora-cli
  QLORA_BIN=target/release/qlora
fi
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
qlora() { "$QLORA_BIN" "$@"; }
GGUF="$(cd "$(dirname "$GGUF")" && pwd)/$(basename "$GGUF")"

qlora import-gguf "$GGUF" --out "$WORK/model" --dtype f32 2>/dev/null
"$PEER_PY" examples/chat_as_text.py "$WORK/model" datasets/identity_eval.jsonl "$WORK/eval_text.jsonl" 2>/dev/null
# evaluate BITS [--adapter DIR]
evaluate() { qlora eval --model "$WORK/model" --bits "$1" --data "$WORK/eval_text.jsonl" --format text --json "${@:2}" 2>/dev/null; }
base=$(evaluate 16)
base_nf4=$(evaluate 4)

# A model with a chat template trains on the conversations; one without (a base model) on
# their plain transcripts.
if grep -q '"chat_template"' "$WORK/model/tokenizer_config.json"; then
  train_data=(--format messages --data datasets/identity_train.jsonl)
else
  "$PEER_PY" examples/chat_as_text.py "$WORK/model" datasets/identity_train.jsonl "$WORK/train_text.jsonl" 2>/dev/null
  train_data=(--format text --data "$WORK/train_text.jsonl")
fi
start=$SECONDS
qlora train --model "$WORK/model" "${train_data[@]}" \
  --out "$WORK/adapter" --rank 16 --alpha 32 --lr 1e-3 --batch-size 2 --grad-accum 1 \
  --max-seq-len 512 --max-steps "$STEPS" --logging-steps 1000 --save-steps 100000 2>/dev/null
train_s=$((SECONDS - start))
tuned=$(evaluate 16 --adapter "$WORK/adapter")
tuned_nf4=$(evaluate 4 --adapter "$WORK/adapter")

"$PEER_PY" - "$WORK" "$GGUF" "$base" "$tuned" "$base_nf4" "$tuned_nf4" "$train_s" "$STEPS" <<'EOF' 2>/dev/null
import json, os, sys
import torch
import transformers, peft
from transformers import AutoModelForCausalLM, AutoTokenizer
work, gguf = sys.argv[1], sys.argv[2]
base, tuned, base_nf4, tuned_nf4 = (json.loads(a) for a in sys.argv[3:7])
train_s, steps = int(sys.argv[7]), int(sys.argv[8])
texts = [json.loads(l)["text"] for l in open(f"{work}/eval_text.jsonl")]

def loss(model, tok):
    total, count = 0.0, 0
    for text in texts:
        # With the special tokens (BOS) the tokenizer adds, as `qlora eval --format text` does.
        ids = tok(text, return_tensors="pt").input_ids
        with torch.no_grad():
            total += model(ids, labels=ids).loss.item() * (ids.shape[1] - 1)
        count += ids.shape[1] - 1
    return total / count, count

failed = False
def compare(what, theirs, count, ours):
    global failed
    rel = abs(theirs - ours["loss"]) / ours["loss"]
    ok = rel <= 1e-4 and count == ours["tokens"]
    failed |= not ok
    print(f"{what}: transformers {theirs:.6f} ({count} tokens), qlora {ours['loss']:.6f} "
          f"({ours['tokens']} tokens): relative difference {rel:.2e}{'' if ok else '  FAIL'}")

d, name = os.path.split(gguf)
tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32)
compare("held-out loss, GGUF (transformers gguf_file=) vs imported (qlora eval)", *loss(model, tok), base)
del model
model = AutoModelForCausalLM.from_pretrained(f"{work}/model", dtype=torch.float32)
model = peft.PeftModel.from_pretrained(model, f"{work}/adapter")
compare("held-out loss with the adapter, peft vs qlora eval --adapter", *loss(model, tok), tuned)
dropped = tuned_nf4["loss"] < base_nf4["loss"]
failed |= not dropped
print(f"QLoRA, {steps} steps in {train_s} s (NF4, r 16, packing): held-out loss (NF4 base) "
      f"{base_nf4['loss']:.4f} -> {tuned_nf4['loss']:.4f}{'' if dropped else '  FAIL: did not drop'}")
print(f"transformers {transformers.__version__}, peft {peft.__version__}, torch {torch.__version__}")
sys.exit(1 if failed else 0)
EOF
