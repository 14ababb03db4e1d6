#!/usr/bin/env bash
# `qlora train` against the PyTorch stack our users leave (transformers + peft + bitsandbytes),
# in the same run on the same machine: QLoRA training tokens/s and peak RSS at the settings of
# ../shared/bench/hf_train_bench.py (SmolLM2-135M, NF4 base with double quantization, r 64 on
# every linear, AdamW 32-bit, clipping 0.3, gradient checkpointing, f32, batch 1, one sequence
# of SEQ tokens a step, every token learned; `--max-seq-len SEQ` so a packed row holds one).
#
#   examples/peer_bench.sh [--model DIR|FILE.gguf] [SEQ ...]   # default: SmolLM2, 512 2048
#   examples/peer_bench.sh --model tests/models/Qwen2.5-Coder-0.5B-Instruct.gguf 512
#
# Needs the peer's venv and the model it loads (see ../shared/bench/README.md):
#   PEER_PY (default ~/.cache/qlora-peer/bin/python), PEER_MODEL (default
#   ~/.cache/qlora-peer/smollm2: `qlora import-gguf --dtype bf16` of the quickstart's GGUF),
#   PEER_BENCH (default ../shared/bench/hf_train_bench.py). QLORA_BIN: a built `qlora`.
set -euo pipefail
cd "$(dirname "$0")/.."

DEFAULT_BENCH=../shared/bench/hf_train_bench.py
STEPS=6
if [ "${1:-}" = "--model" ]; then
  PEER_MODEL="$2"
  shift 2
fi
SEQS=("$@")
[ ${#SEQS[@]} -gt 0 ] || SEQS=(512 2048)

source examples/peer_setup.sh

# Peak RSS (MB) of a command, from GNU time or, without it, Python's resource module.
peak_rss() {
  python3 - "$@" <<'EOF'
import resource, subprocess, sys
code = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
sys.exit(code)
EOF
}

printf '%-6s %14s %14s %7s %14s %14s\n' seq "qlora tok/s" "peer tok/s" ratio "qlora RSS MB" "peer RSS MB"
for seq in "${SEQS[@]}"; do
  # SEQ-token texts: random words, more than enough tokens, cut at --target-max-len.
  python3 - "$WORK/data-$seq.jsonl" "$seq" "$STEPS" <<'EOF'
import json, random, sys
path, seq, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(0)
words = ["model", "train", "adapter", "token", "gradient", "layer", "the", "of", "quantized", "memory"]
with open(path, "w") as f:
    for _ in range(steps):
        f.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(2 * seq))}) + "\n")
EOF
  out="$WORK/run-$seq"
  qlora_rss=$(peak_rss "$QLORA_BIN" train --model "$MODEL" --data "$WORK/data-$seq.jsonl" \
    --format text --out "$out" --target-max-len "$((seq - 1))" --max-seq-len "$seq" --max-steps "$STEPS" \
    --batch-size 1 --grad-accum 1 --optim adamw_32bit --lr 2e-4 --rank 64 --alpha 16 \
    --dropout 0.05 --warmup-steps 0 --save-steps 1000 --logging-steps 1000 --seed 0)
  # Steady state: the steps after the first two, as the peer reports.
  qlora_tps=$(python3 - "$out/metrics.jsonl" <<'EOF'
import json, sys
steady = [json.loads(l) for l in open(sys.argv[1])][2:]
# Every step trains the same number of tokens: the mean rate is the harmonic mean.
print(f"{len(steady) / sum(1.0 / r['tokens_per_s'] for r in steady):.1f}")
EOF
)
  peer=$("$PEER_PY" "$BENCH" "$MODEL" --seq "$seq" --steps "$STEPS" --rank 64 --dtype float32 2>/dev/null | tail -n 1)
  peer_tps=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["tokens_per_s"])' "$peer")
  peer_rss=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["peak_rss_mb"])' "$peer")
  ratio=$(python3 -c "print(f'{$qlora_tps / $peer_tps:.2f}x')")
  printf '%-6s %14s %14s %7s %14.1f %14s\n' "$seq" "$qlora_tps" "$peer_tps" "$ratio" "$qlora_rss" "$peer_rss"
done
