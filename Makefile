# The commands a newcomer types. `make run` and `make test` set everything up from the project's
# own files first (a .venv installed with pinned constraints), so both work on a fresh clone.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# PyPI's torch wheel for Linux is the CUDA build (several GB); on a CPU-only machine without a local
# CPU wheel, `make install TORCH_INDEX=https://download.pytorch.org/whl/cpu` takes PyTorch's CPU build.
TORCH_INDEX ?=
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= 1

.PHONY: install system-deps run test test-fast lint bench ui clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) -e ".[prod,dev]"
	@touch $(STAMP)

install: $(STAMP)  ## create .venv and install bitune with pinned dependencies

system-deps:  ## Debian packages the tests need (PostgreSQL 15, Chromium); no-op when present
	bash scripts/install-system-deps.sh

run: install  ## the main job: the retrain flow on params/default.yaml
	$(VENV)/bin/bitune run

# Test modules run on TEST_WORKERS processes (pytest-xdist), a module's tests on one of them so its
# fixtures are built once. Most of the suite waits on subprocesses and servers: on a 2-core machine two
# workers took 11 min 20 s where one took 14 min 47 s. TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2
PYTEST := HF_HUB_OFFLINE=1 $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

test: install system-deps  ## the whole test suite
	$(PYTEST) --durations=30

test-fast: install  ## unit tests only (no servers, no browser)
	$(PYTEST) -m "not slow and not production and not browser"

lint: install
	$(VENV)/bin/ruff check bitune flows tasks tests bench
	$(VENV)/bin/mypy

bench: install  ## strategies benchmark on SST-2 (needs ../shared/data)
	HF_HUB_OFFLINE=1 $(PY) bench/strategies.py --data ../shared/data/sst2 --n-train 2000 --out bench/results/strategies.json

ui: install  ## MLflow UI on the project's store
	$(VENV)/bin/bitune ui

clean:
	rm -rf .bitune mlflow.db mlartifacts .dvc-storage
