#!/usr/bin/env bash
# A GPU machine's health check from the qlora binary alone (no network, no model, no data):
# the device's description, `qlora selftest` on every GPU device kind the binary has, and
# `qlora bench` at the Llama-3.2-1B and Llama-3.1-8B shapes (seq 2048, r 64, paged 8-bit and
# 32-bit states, bf16 where the device has it) with `qlora plan`'s figure beside each; a
# summary table at the end. Made to finish within 10 minutes on one GPU.
#
#   examples/device_check.sh [path/to/qlora]        (default: ./qlora, then target/release/qlora)
#
# Environment:
#   DEVICE_CHECK_DEVICES  device kinds to try, in order (default "cuda vulkan wgpu")
#   DEVICE_CHECK_SHAPES   shapes to bench (default "llama-3.2-1b llama-3.1-8b"); a config.json
#                         path works too (CI uses the tiny test model's)
#   DEVICE_CHECK_SEQ      tokens a row (default 2048)
#   DEVICE_CHECK_STEPS    timed steps a bench (default 2)
#   DEVICE_CHECK_LIMIT    memory each bench must fit (default 24GiB)
#
# Exit status: 0 when every selftest passed and every bench ran; 1 otherwise (a missing
# device, a failed kernel, a bench that failed), with the reason in the summary.
set -uo pipefail

QLORA="${1:-}"
if [ -z "$QLORA" ]; then
  for candidate in ./qlora target/release/qlora; do
    [ -x "$candidate" ] && QLORA="$candidate" && break
  done
fi
if [ -z "$QLORA" ] || [ ! -x "$QLORA" ]; then
  echo "device_check: no qlora binary (give its path, or build: cargo build --release -p qlora-cli --features cuda)" >&2
  exit 1
fi
DEVICES="${DEVICE_CHECK_DEVICES:-cuda vulkan wgpu}"
SHAPES="${DEVICE_CHECK_SHAPES:-llama-3.2-1b llama-3.1-8b}"
SEQ="${DEVICE_CHECK_SEQ:-2048}"
STEPS="${DEVICE_CHECK_STEPS:-2}"
LIMIT="${DEVICE_CHECK_LIMIT:-24GiB}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
SECONDS=0

echo "== qlora device check: $("$QLORA" --version), $(date -u +%FT%TZ)"
echo "== host: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) threads, $(free -g | awk '/Mem:/ {print $2}') GiB"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader \
    | sed 's/^/== gpu: /'
fi

summary=()
failed=0
found=0
for device in $DEVICES; do
  echo
  echo "== selftest --device $device"
  if "$QLORA" selftest --device "$device" >"$WORK/selftest.out" 2>"$WORK/selftest.err"; then
    cat "$WORK/selftest.out"
    found=$((found + 1))
    checks=$(grep -c ' pass$' "$WORK/selftest.out")
    summary+=("$(printf '%-8s %-26s %s' "$device" "selftest" "pass ($checks checks)")")
  else
    cat "$WORK/selftest.out"
    reason="$(tail -n 1 "$WORK/selftest.err")"
    echo "$reason"
    case "$reason" in
      *"this build has no"*|*"no adapter"*|*"No adapter"*|*"NotFound"*|*"not found"*|*"Unable to find"*)
        summary+=("$(printf '%-8s %-26s %s' "$device" "selftest" "skipped: ${reason#error: }")")
        continue ;;
    esac
    found=$((found + 1))
    failed=1
    summary+=("$(printf '%-8s %-26s %s' "$device" "selftest" "FAILED: ${reason#error: }")")
  fi
  for shape in $SHAPES; do
    for optim in paged_adamw_8bit paged_adamw_32bit; do
      label="$(basename "$shape" .json) $optim"
      echo
      echo "== plan and bench: $shape, $device, seq $SEQ, r 64, $optim"
      "$QLORA" bench --shape "$shape" --device "$device" --seq-len "$SEQ" --rank 64 \
        --optim "$optim" --memory-limit "$LIMIT" --dry-run
      if "$QLORA" bench --shape "$shape" --device "$device" --seq-len "$SEQ" --rank 64 \
        --optim "$optim" --steps "$STEPS" --memory-limit "$LIMIT" >"$WORK/bench.out" 2>"$WORK/bench.err"; then
        cat "$WORK/bench.out"
        tps=$(grep -m1 -o '^[0-9.]* tokens/s' "$WORK/bench.out")
        peak=$(grep -m1 -E '^peak (device memory|RSS)' "$WORK/bench.out" | sed 's/ against.*//')
        summary+=("$(printf '%-8s %-26s %s' "$device" "$label" "$tps; $peak")")
      else
        cat "$WORK/bench.out"
        reason="$(tail -n 1 "$WORK/bench.err")"
        echo "$reason"
        failed=1
        summary+=("$(printf '%-8s %-26s %s' "$device" "$label" "FAILED: ${reason#error: }")")
      fi
    done
  done
done

echo
echo "== summary ($SECONDS s)"
for line in "${summary[@]}"; do
  echo "  $line"
done
if [ "$found" -eq 0 ]; then
  echo "device_check: no device of [$DEVICES] is present or built into $QLORA" >&2
  exit 1
fi
exit "$failed"
