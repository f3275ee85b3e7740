#!/usr/bin/env bash
# Builds llama.cpp's own tools from the llama.cpp that the llama-cpp-python sdist we depend on
# vendors, so that they run the same ggml as our engine:
#   llama-server         the peer `make bench-peer` measures us against
#   llama-batched-bench  the batched-decoding ceiling scripts/gpu_check.sh compares with
#
#   scripts/build_peer.sh [TARGET...]     # default: both; prints the first one's path last
#
# The binaries go to a cache outside the checkout, keyed by that version, and are reused; only
# the missing ones are built (about 12 minutes for llama-server on 2 cores).
set -euo pipefail

PY=${PY:-.venv/bin/python}
CACHE=${LEAFRESH_PEER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/leafresh/peer}
VERSION=$("$PY" -c 'import importlib.metadata as m; print(m.version("llama_cpp_python"))')
BIN="$CACHE/$VERSION/bin"
# The same portable CPU flags as the Makefile's build of our engine.
CPU_FLAGS=${LLAMA_CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON}
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(llama-server llama-batched-bench)

MISSING=()
for target in "${TARGETS[@]}"; do
  [ -x "$BIN/$target" ] || MISSING+=("$target")
done

if [ ${#MISSING[@]} -gt 0 ]; then
  mkdir -p "$BIN"
  WORK=$(mktemp -d "$CACHE/$VERSION/build.XXXXXX")
  trap 'rm -rf "$WORK"' EXIT
  echo "fetching the llama-cpp-python $VERSION sdist" >&2
  "$PY" -m pip download --quiet --no-deps --no-binary :all: --dest "$WORK" "llama_cpp_python==$VERSION" >&2
  tar -xzf "$WORK"/llama_cpp_python-"$VERSION".tar.gz -C "$WORK"
  echo "building ${MISSING[*]} $VERSION (minutes on 2 cores)" >&2
  # shellcheck disable=SC2086  # CPU_FLAGS is a list of cmake arguments
  cmake -S "$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF $CPU_FLAGS >&2
  cmake --build "$WORK/build" --target "${MISSING[@]}" -j "$(nproc)" >&2
  for target in "${MISSING[@]}"; do
    cp "$WORK/build/bin/$target" "$BIN/"
  done
fi
echo "$BIN/${TARGETS[0]}"
