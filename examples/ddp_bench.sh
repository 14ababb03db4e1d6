#!/usr/bin/env bash
# Data parallel on one machine: tokens/s of one process with 2 threads against 2 ranks with 1
# thread each (`mpirun -np 2`), the same global batch, in the same run. SmolLM2-135M-Instruct
# (NF4 base, from the GGUF examples/quickstart.sh fetches), r 64 on every linear, rows of 512
# packed tokens, 4 rows a step (one process: --batch-size 4; two ranks: --batch-size 2 each).
# Prints each run's tokens/s, the all-reduce's share of the step and its bytes a step.
#
#   examples/ddp_bench.sh [STEPS]      # default: 6 steps (the first is left out of the rate)
#
# Needs Open MPI (mpirun) and a release build with MPI, built here if QLORA_BIN is unset:
#   cargo build --release -p qlora-cli --features mpi
set -euo pipefail
cd "$(dirname "$0")/.."

STEPS="${1:-6}"
# The model the GGUF tests use: fetched (sha256-checked) into the cache, linked in tests/models.
examples/quickstart.sh --fetch-only >/dev/null
MODEL="${MODEL:-tests/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
if [ -z "${QLORA_BIN:-}" ]; then
  cargo build --release -q -p qlora-cli --features mpi
  QLORA_BIN=target/release/qlora
fi
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
DATA="$WORK/texts.jsonl"

# Instruction records long enough that rows pack to 512 tokens.
python3 - "$DATA" <<'EOF'
import json, random, sys
rng = random.Random(3)
vocab = ("the model learns a task from data while adapters train on a frozen quantized base "
         "with gradients memory tokens layers attention answer question example").split()
words = lambda n: " ".join(rng.choice(vocab) for _ in range(n))
with open(sys.argv[1], "w") as f:
    for _ in range(400):
        f.write(json.dumps({"instruction": words(20), "output": words(rng.randint(60, 200))}) + "\n")
EOF

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
MPIRUN=(mpirun --bind-to none --oversubscribe --mca btl self,vader
        --mca btl_vader_single_copy_mechanism none)
ARGS=(train --model "$MODEL" --data "$DATA" --max-steps "$STEPS" --rank 64 --alpha 16
      --max-seq-len 512 --grad-accum 1 --lr 2e-4 --save-steps 100000 --logging-steps 1)

# Tokens/s over steps 2..N (the first warms up), from a run's metrics.
rate() {
  python3 - "$1/metrics.jsonl" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])][1:]
tokens = rows[-1]["tokens"] - rows[0]["tokens"] + 0.0
seconds = sum(r2["tokens"] - r1["tokens"] for r1, r2 in zip(rows, rows[1:])) and \
    sum((r2["tokens"] - r1["tokens"]) / r2["tokens_per_s"] for r1, r2 in zip(rows, rows[1:]))
print(f"{tokens / seconds:.1f}")
EOF
}

RAYON_NUM_THREADS=2 "$QLORA_BIN" "${ARGS[@]}" --out "$WORK/one" --batch-size 4 \
  >"$WORK/one.log" 2>&1
RAYON_NUM_THREADS=1 "${MPIRUN[@]}" -np 2 "$QLORA_BIN" "${ARGS[@]}" --out "$WORK/two" \
  --batch-size 2 >"$WORK/two.log" 2>&1

one=$(rate "$WORK/one")
two=$(rate "$WORK/two")
# "all-reduce: X ms a step on average over N steps (B MB a step)"
reduce_ms=$(sed -n 's/.*all-reduce: \([0-9.]*\) ms a step.*/\1/p' "$WORK/two.log")
bytes=$(sed -n 's/.*all-reduce: .*(\([0-9.]* MB\) a step).*/\1/p' "$WORK/two.log")
step_ms=$(python3 -c "print(f'{4 * 512 / $two * 1000:.0f}')")
printf '%-36s %12s\n' "run" "tokens/s"
printf '%-36s %12s\n' "1 process x 2 threads, batch 4" "$one"
printf '%-36s %12s\n' "2 ranks x 1 thread, batch 2 each" "$two"
python3 -c "print(f'2 ranks / 1 process: {$two / $one:.2f}x')"
echo "all-reduce: $reduce_ms ms of a ~$step_ms ms step ($(python3 -c "print(f'{100 * $reduce_ms / $step_ms:.1f}')")%), $bytes a step"
