#!/usr/bin/env bash
# What switching optimizer states saves where users look: peak RSS (as `top`, a cgroup limit and
# the OOM killer count it) of `qlora train` with adamw_32bit, adamw_8bit and paged_adamw_8bit,
# default settings otherwise (packing on, rows of SEQ tokens, r 64 on all seven projections; one
# micro-batch a step, --grad-accum 1, to keep it short),
# STEPS steps, all in one run on this machine; against the 6 bytes a trainable value the 8-bit
# states should save (2 x 4 bytes of f32 moments against 2 x 1 byte and a scale per block).
#
#   examples/optim_rss.sh [--model DIR] [SEQ ...]      # default: SmolLM2-135M, 2048 512
#
# QLORA_BIN: a built `qlora` (default: a release build); STEPS (default 3). The model defaults
# to the peer benchmark's (`PEER_MODEL`, ../shared/bench/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL="${PEER_MODEL:-$HOME/.cache/qlora-peer/smollm2}"
if [ "${1:-}" = "--model" ]; then
  MODEL="$2"
  shift 2
fi
SEQS=("$@")
[ ${#SEQS[@]} -gt 0 ] || SEQS=(2048 512)
STEPS="${STEPS:-3}"
if [ -z "${QLORA_BIN:-}" ]; then
  cargo build --release -p qlora-cli
  QLORA_BIN=target/release/qlora
fi
[ -e "$MODEL/config.json" ] || { echo "error: $MODEL/config.json not found" >&2; exit 1; }
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

trainable=$("$QLORA_BIN" plan --model "$MODEL" --data /dev/null --out "$WORK/plan" --rank 64 2>&1 \
  | sed -n 's/.* \([0-9]*\) trainable.*/\1/p' | head -n 1)
[ -n "$trainable" ] || { echo "error: qlora plan gave no trainable count" >&2; exit 1; }
echo "model $MODEL: $trainable trainable values; 6 bytes each: $((trainable * 6 / 1048576)) MiB"
printf '%-6s %-17s %13s %16s %12s\n' seq optimizer "peak RSS MiB" "saved MiB (%)" "tokens/s"
for seq in "${SEQS[@]}"; do
  # Texts of random words, enough to pack STEPS rows of SEQ tokens.
  python3 - "$WORK/data.jsonl" "$seq" "$STEPS" <<'PY'
import json, random, sys
path, seq, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(0)
words = ["model", "train", "adapter", "token", "gradient", "layer", "the", "of", "quantized", "memory"]
with open(path, "w") as f:
    for _ in range(4 * steps * seq // 200):
        f.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(200))}) + "\n")
PY
  base=""
  for optim in adamw_32bit adamw_8bit paged_adamw_8bit; do
    out="$WORK/run-$seq-$optim"
    "$QLORA_BIN" train --model "$MODEL" --data "$WORK/data.jsonl" --format text --out "$out" \
      --max-seq-len "$seq" --max-steps "$STEPS" --grad-accum 1 --optim "$optim" --rank 64 --save-steps 1000 \
      --seed 0 >/dev/null 2>"$WORK/log"
    read -r rss tps < <(python3 - "$out/metrics.jsonl" <<'PY'
import json, sys
steps = [json.loads(l) for l in open(sys.argv[1])]
steady = steps[1:] or steps
rate = len(steady) / sum(1.0 / s["tokens_per_s"] for s in steady)
print(f"{steps[-1]['peak_rss_bytes'] / 2**20:.1f} {rate:.1f}")
PY
)
    if [ -z "$base" ]; then
      base=$rss
      saved="-"
    else
      saved=$(python3 -c "d=$base-$rss; print(f'{d:.1f} ({100*d*2**20/($trainable*6):.0f}%)')")
    fi
    printf '%-6s %-17s %13s %16s %12s\n' "$seq" "$optim" "$rss" "$saved" "$tps"
  done
done
