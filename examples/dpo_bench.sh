#!/usr/bin/env bash
# Preference tuning's speed against instruction tuning on the same tokens, same machine and
# run: `qlora train --method dpo` (with --precompute-ref, and with the reference scored every
# step), `orpo` and `simpo`, against `sft` on the pairs' sequences as prompt-completion
# examples (prompt + chosen and prompt + rejected, each its own example: the same tokens, the
# same completions learned). SmolLM2-135M, NF4, r 64 on every linear, AdamW 32-bit,
# checkpointing, f32, a pair (or SFT sequence) a row, STEPS steps; tokens/s counts every token
# of a step (chosen and rejected both), in the steady state after the first two steps.
#
#   examples/dpo_bench.sh [--model DIR|FILE.gguf] [PROMPT_WORDS COMPLETION_WORDS]   # default 120 160
#
# QLORA_BIN: a built `qlora` (default: cargo build --release). The model defaults to the
# quickstart's SmolLM2-135M-Instruct GGUF (tests/models/, imported once into QLORA_CACHE).
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL="tests/models/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ "${1:-}" = "--model" ]; then
  MODEL="$2"
  shift 2
fi
PROMPT_WORDS="${1:-120}"
COMPLETION_WORDS="${2:-160}"
STEPS="${STEPS:-8}"
if [ -z "${QLORA_BIN:-}" ]; then
  cargo build --release -p qlora-cli
  QLORA_BIN=target/release/qlora
fi
[ -e "$MODEL" ] || { echo "error: $MODEL not found (examples/quickstart.sh --fetch-only)" >&2; exit 1; }
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# Pairs of random words, and the same sequences as SFT examples.
python3 - "$WORK" "$PROMPT_WORDS" "$COMPLETION_WORDS" "$STEPS" <<'EOF'
import json, random, sys
work, p, c, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(0)
words = ["model", "train", "adapter", "token", "gradient", "layer", "the", "of", "quantized", "memory",
         "answer", "question", "prefer", "reward", "policy", "reference"]
text = lambda n: " ".join(rng.choice(words) for _ in range(n))
with open(f"{work}/pairs.jsonl", "w") as pairs, open(f"{work}/sft.jsonl", "w") as sft:
    for _ in range(steps):
        prompt, chosen, rejected = text(p), " " + text(c), " " + text(c)
        pairs.write(json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}) + "\n")
        for completion in (chosen, rejected):
            sft.write(json.dumps({"prompt": prompt, "completion": completion}) + "\n")
EOF

# Steady-state tokens/s of a run: every step after the first two (each step's tokens over its
# seconds, summed).
rate() {
  python3 - "$1/metrics.jsonl" <<'EOF'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
steps = list(zip(lines[1:], lines[2:]))
tokens = sum(b["tokens"] - a["tokens"] for a, b in steps)
seconds = sum((b["tokens"] - a["tokens"]) / b["tokens_per_s"] for a, b in steps)
print(f"{tokens / seconds:.1f}")
EOF
}

common=(--model "$MODEL" --no-packing --batch-size 1 --grad-accum 1 --optim adamw_32bit --lr 1e-5
  --rank 64 --alpha 16 --dropout 0.05 --warmup-steps 0 --save-steps 1000 --logging-steps 1000
  --seed 0 --max-seq-len 1024 --source-max-len 1024 --target-max-len 1024)
run() {
  local name="$1"
  shift
  "$QLORA_BIN" train "${common[@]}" --out "$WORK/$name" "$@" >"$WORK/$name.log" 2>&1 \
    || { cat "$WORK/$name.log" >&2; exit 1; }
  rate "$WORK/$name"
}
# SFT sees each pair as two rows: twice the steps for the same tokens.
sft=$(run sft --data "$WORK/sft.jsonl" --format prompt-completion --max-steps "$((2 * STEPS))")
dpo_pre=$(run dpo-pre --data "$WORK/pairs.jsonl" --method dpo --precompute-ref --max-steps "$STEPS")
dpo=$(run dpo --data "$WORK/pairs.jsonl" --method dpo --max-steps "$STEPS")
orpo=$(run orpo --data "$WORK/pairs.jsonl" --method orpo --max-steps "$STEPS")
simpo=$(run simpo --data "$WORK/pairs.jsonl" --method simpo --max-steps "$STEPS")

printf '%-34s %12s %8s\n' run "tokens/s" "x SFT"
for row in "sft:$sft" "dpo --precompute-ref:$dpo_pre" "dpo (reference every step):$dpo" \
  "orpo:$orpo" "simpo:$simpo"; do
  name="${row%%:*}"
  value="${row##*:}"
  printf '%-34s %12s %8s\n' "$name" "$value" "$(python3 -c "print(f'{$value / $sft:.2f}')")"
done
