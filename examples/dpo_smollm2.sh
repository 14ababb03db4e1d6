#!/usr/bin/env bash
# DPO on a real model: SmolLM2-135M-Instruct (the quickstart's GGUF, imported once) learns the
# preference of datasets/preference_train.jsonl (answers that follow an instruction over answers
# that ignore it), and is scored on the held-out datasets/preference_eval.jsonl before and
# after: the base model's own preference (the share of pairs whose chosen answer has the higher
# mean log-probability, `qlora eval --method simpo`), then DPO's held-out reward accuracy and
# margin against the base as reference (`qlora eval --method dpo --adapter`).
#
#   examples/dpo_smollm2.sh            # STEPS (default 18: two passes of 9 steps of 8 pairs)
#
# QLORA_BIN: a built `qlora` (default: cargo build --release); QLORA_CACHE as the quickstart's.
set -euo pipefail
cd "$(dirname "$0")/.."

GGUF="tests/models/SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE="${QLORA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qlora}"
WORK="$CACHE/dpo-smollm2"
STEPS="${STEPS:-18}"
if [ -z "${QLORA_BIN:-}" ]; then
  cargo build --release -p qlora-cli
  QLORA_BIN=target/release/qlora
fi
qlora() { "$QLORA_BIN" "$@"; }
[ -e "$GGUF" ] || { echo "error: $GGUF not found (examples/quickstart.sh --fetch-only)" >&2; exit 1; }
mkdir -p "$WORK"
[ -f "$WORK/model/config.json" ] || qlora import-gguf "$GGUF" --out "$WORK/model" --force >/dev/null
MODEL="$WORK/model"
EVAL=datasets/preference_eval.jsonl

summary() {
  python3 -c '
import json, sys
m = json.load(sys.stdin)
acc, margin, loss, pairs = m["rewards/accuracies"], m["rewards/margins"], m["loss"], m["pairs"]
print(f"rewards/accuracies {acc:.3f}  rewards/margins {margin:.4f}  loss {loss:.4f}  over {pairs} pairs")
'
}

echo "== the base model's own preference on the held-out pairs (mean log-probability)"
qlora eval --model "$MODEL" --data "$EVAL" --method simpo --json 2>/dev/null | summary

echo "== DPO: $STEPS steps on datasets/preference_train.jsonl (NF4 base, r 16, beta 0.1)"
rm -rf "$WORK/adapter"
qlora train --model "$MODEL" --data datasets/preference_train.jsonl --eval-data "$EVAL" \
  --method dpo --precompute-ref --out "$WORK/adapter" --no-packing --batch-size 8 \
  --grad-accum 1 --rank 16 --alpha 32 --lr 2e-4 --max-steps "$STEPS" --eval-steps 6 \
  --logging-steps 3 2>&1 | grep -E '^(step|eval loss|trained|scoring)'

echo "== held-out pairs with the adapter: DPO's rewards (the base as reference)"
qlora eval --model "$MODEL" --adapter "$WORK/adapter" --data "$EVAL" --method dpo --json 2>/dev/null | summary
echo "== and the adapter's own preference (mean log-probability)"
qlora eval --model "$MODEL" --adapter "$WORK/adapter" --data "$EVAL" --method simpo --json 2>/dev/null | summary
