# batchlab: `make run` sets everything up and runs the quick study; `make test` runs the checks.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
FORTUNES := /usr/share/games/fortunes/literature
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
STORE ?= batchlab.db

.PHONY: install dev fmnist data browser run test lint typecheck pytest bench docs docs-serve dist clean

# `install`: what `make run` needs, the package and its dependencies. `dev`: that plus the dev
# extras (pytest, ruff, mypy, mkdocs, build) and every integration the tests cover (ray,
# lightning, wandb, mlflow, tensorboard, hf), for `make test`, `docs` and `dist`.
install: $(STAMP)
dev: $(DEV_STAMP)

# torch 2.13.0 first when torch is absent: its CPU wheel is on disk here, and an unpinned
# torch would pull the CUDA build. The package itself only asks for torch>=2.3.
$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e .
	@touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(DEV_STAMP)

# Fashion-MNIST (the `quick` study's data) comes from the Debian package dataset-fashion-mnist
# (IDX files, no download at run time); the `fortunes` text corpus from the Debian package fortunes.
fmnist:
	@test -f $(FMNIST) || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q dataset-fashion-mnist; }

data: fmnist
	@test -f $(FORTUNES) || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q fortunes; }

# Headless Chromium, for the test that renders a report in a real browser.
browser:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium; }

run: install fmnist
	$(VENV)/bin/batchlab run --preset quick --store $(STORE) --report

lint: dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: dev
	$(VENV)/bin/mypy

pytest: dev data browser
	$(VENV)/bin/pytest -q

test: lint typecheck pytest

bench: install data
	$(PY) benchmarks/engine_speed.py
	$(PY) benchmarks/probe_cost.py

# The docs site (mkdocs, material theme) into site/, strict: a broken link or nav entry fails it.
docs: dev
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

docs-serve: dev
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

# The sdist and wheel into dist/ (the version comes from src/batchlab/_version.py).
dist: dev
	$(PY) -m build --no-isolation

clean:
	rm -rf $(VENV) build dist site reports .mypy_cache .pytest_cache .ruff_cache
