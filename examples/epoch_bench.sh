#!/usr/bin/env bash
# One epoch of QLoRA over instruction data of realistic, widely varying lengths: `qlora train`
# packed, padded, and padded with --group-by-length, against the PyTorch stack's epoch
# (../shared/bench/hf_epoch_bench.py: batches of 4 in file order, padded to their longest, as
# the QLoRA reference code batches) on the same file, in the same run. SmolLM2-135M, NF4 base,
# r 64 on every linear, gradient checkpointing, AdamW 32-bit, an optimizer step a micro-batch.
#
#   examples/epoch_bench.sh [EXAMPLES]      # default: 96 generated Alpaca records
#
# Needs what examples/peer_bench.sh needs (PEER_PY, PEER_MODEL, PEER_BENCH, QLORA_BIN).
set -euo pipefail
cd "$(dirname "$0")/.."

DEFAULT_BENCH=../shared/bench/hf_epoch_bench.py
COUNT="${1:-96}"
source examples/peer_setup.sh
DATA="$WORK/alpaca.jsonl"

# Alpaca-like lengths: short instructions, a third with an input, answers log-normal around
# 40 words with a long tail (a few pages), everything under 1024 tokens.
python3 - "$DATA" "$COUNT" <<'EOF'
import json, math, random, sys
path, count = sys.argv[1], int(sys.argv[2])
rng = random.Random(7)
vocab = ("the model learns a task from data while adapters train on a frozen quantized base "
         "with gradients memory tokens layers attention answer question example short long "
         "write explain describe list compare summarize because however therefore").split()
words = lambda n: " ".join(rng.choice(vocab) for _ in range(max(1, n)))
with open(path, "w") as f:
    for _ in range(count):
        record = {"instruction": words(int(rng.lognormvariate(math.log(12), 0.5)))}
        if rng.random() < 0.33:
            record["input"] = words(int(rng.lognormvariate(math.log(25), 0.7)))
        record["output"] = words(min(600, int(rng.lognormvariate(math.log(40), 1.0))))
        f.write(json.dumps(record) + "\n")
EOF

# Epoch seconds and real tokens/s from a run's metrics (each step's tokens over its rate).
epoch() {
  python3 - "$1/metrics.jsonl" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
seconds, previous = 0.0, 0
for r in rows:
    seconds += (r["tokens"] - previous) / r["tokens_per_s"]
    previous = r["tokens"]
print(f"{seconds:.1f} {previous} {previous / seconds:.1f} {len(rows)}")
EOF
}

run() {
  local name="$1"; shift
  "$QLORA_BIN" train --model "$MODEL" --data "$DATA" --format alpaca --out "$WORK/$name" \
    --epochs 1 --grad-accum 1 --optim adamw_32bit --rank 64 --alpha 16 --dropout 0.05 \
    --lr 2e-4 --source-max-len 1024 --target-max-len 1024 --save-steps 100000 \
    --logging-steps 100000 "$@" >/dev/null 2>&1
  read -r secs tokens rate steps < <(epoch "$WORK/$name")
  printf '%-34s %9s %12s %12s %7s\n' "$name" "$secs" "$tokens" "$rate" "$steps"
}

printf '%-34s %9s %12s %12s %7s\n' "" "epoch s" "real tokens" "tokens/s" "steps"
run "qlora packed (rows of 2048)" --batch-size 1
run "qlora padded (batch 4)" --batch-size 4 --no-packing
run "qlora padded, group-by-length" --batch-size 4 --no-packing --group-by-length
peer=$("$PEER_PY" "$BENCH" "$MODEL" "$DATA" --batch 4 --max-len 1024 2>/dev/null | tail -n 1)
python3 - "$peer" <<'EOF'
import json, sys
p = json.loads(sys.argv[1])
steps = -(-p["examples"] // p["batch"])
print(f'{"peer, batch 4 in file order":<34} {p["epoch_s"]:>9} {p["real_tokens"]:>12} {p["real_tokens_per_s"]:>12} {steps:>7}')
print(f'peer padding: {100 * (1 - p["real_tokens"] / p["padded_tokens"]):.0f}% of its positions; peak RSS {p["peak_rss_mb"]} MB')
EOF
