# Every target bootstraps .venv by itself; the stamp re-installs when pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SPEC   ?= sweeps/default.yaml
# PyTorch is the oracle of the tests and a peer in the benchmark, never a dependency: it is
# installed only where pip finds its CPU wheel without an index (a machine that keeps one on
# disk); elsewhere those tests are skipped instead of fetching a multi-GB build.
TORCH  := torch==2.13.0

.PHONY: test test-slow sweep experiment lint bench ui clean clean-cache

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -m pip install -q -e '.[dev]' 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -c "import bpdiag, numba, mlflow, pytest"
	$(BIN)/python -c "import torch" 2>/dev/null || \
	  { $(BIN)/python -m pip install -q --no-index --no-deps '$(TORCH)' 2>/dev/null && \
	    $(BIN)/python -m pip install -q '$(TORCH)'; } || \
	  echo "PyTorch is not at hand without an index: its oracle tests will be skipped"
	touch $@

test: $(STAMP)  # every module's tests but the slow ones (a few minutes)
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: $(STAMP)  # real Dask/PostgreSQL/MLflow clusters, a cold compile, the soak (CI runs them)
	$(BIN)/python -m pytest -q -m slow

sweep: $(STAMP)
	$(BIN)/bpdiag sweep $(SPEC) $(SWEEP_FLAGS)

experiment: $(STAMP)  # make experiment NAME=he2015: one study of experiments/, then its report
	@test -n "$(NAME)" || { echo "usage: make experiment NAME=<study> (a folder of experiments/)"; exit 2; }
	$(BIN)/bpdiag experiment $(NAME) $(EXPERIMENT_FLAGS)

ui: $(STAMP)
	$(BIN)/bpdiag ui

lint: $(STAMP)
	$(BIN)/ruff check bpdiag tests benchmarks
	$(BIN)/ruff format --check bpdiag tests benchmarks

# Some machines pin OpenBLAS to older kernels (OPENBLAS_CORETYPE, with OPENBLAS_L2_SIZE) for
# old OpenBLAS builds that fail on their CPU; a current one runs its own best kernels, and the
# peers (XLA, PyTorch's MKL) are not pinned. The bench lifts the pin for its own command alone
# and prints the kernels it ran; `make bench BENCH_ENV=` keeps the environment as it is.
BENCH_ENV ?= env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE

bench: $(STAMP)  # JAX is a peer where pip can install it (PyPI); skipped where it cannot
	$(BIN)/python -c "import jax, optax" 2>/dev/null || \
	  $(BIN)/python -m pip install -q jax jaxlib optax 2>/dev/null || \
	  echo "JAX could not be installed: its columns will be skipped"
	$(BENCH_ENV) $(BIN)/python benchmarks/bench.py $(BENCH_FLAGS)

clean: clean-cache
	rm -rf $(VENV) .pytest_cache

clean-cache:  # Numba's on-disk cache: stale after a change to a kernel that others call
	find bpdiag tests -name '*.nbi' -delete -o -name '*.nbc' -delete
