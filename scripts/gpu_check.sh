#!/usr/bin/env bash
# The GPU check of issue #15, prepared here and run on a lent GPU machine in one command.
#
#   scripts/gpu_check.sh prepare      # here, with network: packs .cache/gpu-check (see below)
#   scripts/gpu_check.sh run          # on the GPU machine: build, stand-in, measure
#   scripts/gpu_check.sh run --cpu    # the rehearsal on this CPU: same steps, no CUDA build,
#                                     # the scaled-down stand-in; under 5 minutes
#
# The GPU machine starts bare (Python 3.12 with numpy and jinja2, CUDA with nvcc, cmake, ninja;
# no network) and takes at most 64 MiB of working tree, so `prepare` packs what it lacks into
# .cache/gpu-check (ignored by git, carried by the device tool's `carry`):
#   llama.cpp.tar.xz   the llama.cpp our llama-cpp-python vendors, without its models, docs,
#                      tests and the backends we do not build
#   llama_cpp.tar.xz   llama-cpp-python's Python package with this machine's CPU libraries:
#                      they quantize the stand-in while the CUDA build runs
#   wheels/            our dependencies as Python 3.12 wheels (numpy is on the machine)
#
# `run` writes $OUT/gpu-check.json (the figures, the goals, each stage's seconds) and the logs.
# Budget on 16 cores (15 minutes of device time in all): CUDA build of only our libraries and
# llama-batched-bench for one architecture, with the full-size stand-in written and quantized
# on the CPU meanwhile, about 5-6 minutes; the measurements about 3.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STOP_AT=$(($(date +%s) + ${GPU_CHECK_BUDGET_S:-560}))
PACK="$ROOT/.cache/gpu-check"
STAGE=${1:-}
shift || true

log() { printf '[gpu_check %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

prepare() {
  local py="$ROOT/.venv/bin/python" version sdist work
  version=$("$py" -c 'import importlib.metadata as m; print(m.version("llama_cpp_python"))')
  rm -rf "$PACK" && mkdir -p "$PACK/wheels"
  work=$(mktemp -d) && trap 'rm -rf "$work"' RETURN
  "$py" -m pip download --quiet --no-deps --no-binary :all: --dest "$work" "llama_cpp_python==$version"
  tar -xzf "$work/llama_cpp_python-$version.tar.gz" -C "$work"
  sdist="$work/llama_cpp_python-$version/vendor/llama.cpp"
  rm -rf "$sdist"/{models,docs,tests,benches,examples,scripts,conversion,gguf-py,media,.github,tools/server/public*}
  for backend in "$sdist"/ggml/src/ggml-*/; do
    case $(basename "$backend") in ggml-cpu | ggml-cuda) ;; *) rm -rf "$backend" ;; esac
  done
  tar -cJf "$PACK/llama.cpp.tar.xz" -C "$(dirname "$sdist")" llama.cpp
  tar -cJf "$PACK/llama_cpp.tar.xz" -C "$("$py" -c 'import llama_cpp, os; print(os.path.dirname(os.path.dirname(llama_cpp.__file__)))')" \
    --exclude=__pycache__ --exclude=server llama_cpp
  "$py" -m pip download --quiet --dest "$PACK/wheels" --only-binary :all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_31_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform linux_x86_64 \
    fastapi uvicorn sse-starlette pydantic pydantic-settings jsonschema redis prometheus-client gguf httpx \
    sentencepiece "llguidance==1.9.1" mistral-common
  rm -f "$PACK"/wheels/numpy-* "$PACK"/wheels/pillow-* "$PACK"/wheels/tiktoken-* "$PACK"/wheels/opencv*
  # mistral-common only for the tokenizer file it ships; its image and tiktoken extras stay out.
  du -sh "$PACK"
}

run() {
  local cpu=0
  [ "${1:-}" = "--cpu" ] && cpu=1
  local out=${OUT:-$ROOT/gpu-check-out} work=${GPU_CHECK_WORK:-/tmp/leafresh-gpu-check}
  local py threads model bench_bin="" started=$SECONDS built=0
  mkdir -p "$out" "$work"
  threads=$(nproc)
  export TMPDIR="$work"
  if [ "$cpu" = 1 ]; then
    py="$ROOT/.venv/bin/python"
    model="$work/standin-scaled-Q4_K_M.gguf"
    log "rehearsal on the CPU: no CUDA build; the scaled-down stand-in"
    check_carried_size
    [ -f "$model" ] || "$py" -m service.tools.commands standin --layers 2 --width 256 --out "$model" >"$out/standin.log" 2>&1
    local peer_cache=${LEAFRESH_PEER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/leafresh/peer}
    bench_bin=$(find "$peer_cache" -name llama-batched-bench -type f 2>/dev/null | head -1 || true)
    measure "$py" "$model" "$out" "$bench_bin" --cpu --sizes 1,4,8 --runs 2
  else
    log "setting up Python from the packed wheels"
    # Unzipped, not installed: no pip or venv needed (the wheels were chosen for its Python 3.12).
    py=python3
    mkdir -p "$work/site" "$work/py"
    for wheel in "$PACK"/wheels/*.whl; do "$py" -m zipfile -e "$wheel" "$work/site"; done
    tar -xJf "$PACK/llama_cpp.tar.xz" -C "$work/py"
    export PYTHONPATH="$work/py:$work/site:$ROOT"
    build_cuda "$work" "$threads" >"$out/build.log" 2>&1 &
    local build_pid=$!
    model="$work/Mistral-7B-Instruct-v0.3-standin-Q4_K_M.gguf"
    log "writing the full-size stand-in and quantizing it (CPU, meanwhile)"
    if ! "$py" -m service.tools.commands standin --out "$model" --threads "$threads" >"$out/standin.log" 2>&1; then
      log "stand-in on the CPU libraries failed; again after the build (see standin.log)"
      wait "$build_pid" || { tail -30 "$out/build.log" >&2; exit 1; }
      built=1
      LLAMA_CPP_LIB_PATH="$work/build/bin" LD_LIBRARY_PATH="$work/build/bin" "$py" -m service.tools.commands standin --out "$model" --threads "$threads" \
        >>"$out/standin.log" 2>&1
    fi
    log "stand-in ready at $((SECONDS - started)) s; waiting for the build"
    [ "$built" = 1 ] || wait "$build_pid" || { tail -30 "$out/build.log" >&2; exit 1; }
    log "CUDA build done at $((SECONDS - started)) s"
    export LLAMA_CPP_LIB_PATH="$work/build/bin" LD_LIBRARY_PATH="$work/build/bin:${LD_LIBRARY_PATH:-}"
    measure "$py" "$model" "$out" "$work/build/bin/llama-batched-bench" --sizes 1,4,8,16,32 --runs 3
  fi
  log "done in $((SECONDS - started)) s: $out/gpu-check.json"
}

check_carried_size() {
  # What the device tool carries: the tracked and untracked-but-not-ignored files, and the pack.
  local bytes
  [ -d "$PACK/wheels" ] || { log "no $PACK: run 'scripts/gpu_check.sh prepare' first"; exit 1; }
  bytes=$( (cd "$ROOT" && git ls-files -co --exclude-standard -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1) )
  bytes=$((bytes + $(du -sb "$PACK" | cut -f1)))
  log "carried tree: $((bytes / 1048576)) MiB of 64"
  [ "$bytes" -lt $((64 * 1048576)) ] || { log "over 64 MiB: the device tool would refuse it"; exit 1; }
}

build_cuda() {
  local work=$1 threads=$2 arch
  arch=${CUDA_ARCH:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d .)}
  arch=${arch:-90}  # H100 and H200 are both sm_90
  tar -xJf "$PACK/llama.cpp.tar.xz" -C "$work"
  cmake -S "$work/llama.cpp" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$arch" -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=ON \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=ON \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DCMAKE_RUNTIME_OUTPUT_DIRECTORY="$work/build/bin" \
    -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$work/build/bin"
  cmake --build "$work/build" --target llama llama-batched-bench -j "$threads"
}

measure() {
  local py=$1 model=$2 out=$3 bench_bin=$4
  shift 4
  local extra=()
  [ -n "$bench_bin" ] && extra=(--batched-bench "$bench_bin")
  log "measuring"
  # Stop starting new work in time for the device tool's 600 s limit on one command.
  (cd "$ROOT" && "$py" -m scripts.gpu_check --model "$model" --out "$out/gpu-check.json" \
    --stop-at "$STOP_AT" "${extra[@]}" "$@")
}

case $STAGE in
  prepare) prepare ;;
  run) run "$@" ;;
  *) sed -n '2,10p' "$0" >&2; exit 2 ;;
esac
