# Every target bootstraps .venv by itself; the stamp re-installs when pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SPEC   ?= sweeps/default.yaml
# The PyTorch CPU wheel that these machines keep on disk; used for the oracle tests and benchmarks.
TORCH_WHEEL := $(wildcard /opt/wheels/torch-2.13.0*.whl)

.PHONY: test sweep lint bench ui clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -m pip install -q -e '.[dev]' 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -c "import bpdiag, numba, mlflow, pytest"
ifneq ($(TORCH_WHEEL),)
	$(BIN)/python -c "import torch" 2>/dev/null || \
	  $(BIN)/python -m pip install -q -e '.[dev,bench]' 2>&1 | grep -v "is ignored" || true
endif
	touch $@

test: $(STAMP)
	$(BIN)/python -m pytest -q

sweep: $(STAMP)
	$(BIN)/bpdiag sweep $(SPEC) $(SWEEP_FLAGS)

ui: $(STAMP)
	$(BIN)/bpdiag ui

lint: $(STAMP)
	$(BIN)/ruff check bpdiag tests benchmarks
	$(BIN)/ruff format --check bpdiag tests benchmarks

bench: $(STAMP)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q -e '.[dev,bench]'
	$(BIN)/python benchmarks/bench.py

clean:
	rm -rf $(VENV) .pytest_cache
