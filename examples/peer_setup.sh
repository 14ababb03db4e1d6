# Sourced by the benchmarks that run the PyTorch peer next to `qlora train`: the peer's venv,
# model and script (PEER_PY, PEER_MODEL: a model directory or a GGUF file; PEER_BENCH; see
# ../shared/bench/README.md), a built
# `qlora` (QLORA_BIN), and a scratch directory WORK removed on exit. The caller sets
# DEFAULT_BENCH, the peer script used when PEER_BENCH is unset.
PEER_PY="${PEER_PY:-$HOME/.cache/qlora-peer/bin/python}"
MODEL="${PEER_MODEL:-$HOME/.cache/qlora-peer/smollm2}"
BENCH="${PEER_BENCH:-$DEFAULT_BENCH}"
if [ -z "${QLORA_BIN:-}" ]; then
  cargo build --release -p qlora-cli
  QLORA_BIN=target/release/qlora
fi
# A GGUF is imported once (bf16: what transformers makes of it) next to the peer's venv, and
# both sides train that directory.
if [[ "$MODEL" == *.gguf ]]; then
  [ -f "$MODEL" ] || { echo "error: $MODEL not found" >&2; exit 1; }
  imported="$HOME/.cache/qlora-peer/$(basename "$MODEL" .gguf)"
  [ -f "$imported/config.json" ] || "$QLORA_BIN" import-gguf "$MODEL" --out "$imported" --dtype bf16 --force
  MODEL="$imported"
fi
for f in "$PEER_PY" "$MODEL/config.json" "$BENCH"; do
  [ -e "$f" ] || { echo "error: $f not found (see ../shared/bench/README.md)" >&2; exit 1; }
done
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
