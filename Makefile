# Two commands set up a fresh machine: `make serve` and `make test` (see README "Quick start").
# Both create the virtual environment with uv from uv.lock when it is missing or stale.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?=
PYTEST_ARGS ?=
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)

.PHONY: serve test check env lint typecheck bench

env: $(VENV)/.synced

$(UV):
	python3 -m pip install --user --quiet uv || python3 -m pip install --quiet uv

$(VENV)/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen
	touch $@

serve: env
	$(VENV)/bin/cxr-node serve $(if $(CONFIG),--config $(CONFIG),)

test: env
	$(PY) -m pytest $(PYTEST_ARGS)

# Fast feedback, 53-60 s on 2 cores (128 s on a machine 2.5x slower in pure Python; `/usr/bin/time
# make check`, warm mypy cache): ruff, the tests not marked slow / postgres / ohif on two pytest-xdist
# workers, mypy on node and pipelines (its incremental cache makes a re-run take seconds).
# compileall first: uv installs no bytecode and PYTHONDONTWRITEBYTECODE=1 (set on this machine) keeps
# Python from caching it, so each pytest worker and each node process started by the tests compiled
# torch, MONAI, ultralytics and highdicom from source again (129 -> 87 s); once written, checking the
# bytecode is up to date takes about a second. torch's py312_intrinsics.py is Python 3.12 syntax,
# never imported on 3.11.
# The whole suite, one process, is `make test`.
check: env
	$(VENV)/bin/ruff check node pipelines training tests bench
	$(PY) -m compileall -q -x 'py312_intrinsics\.py$$' $(VENV)/lib node pipelines training
	$(PY) -m pytest -q -n 2 -m "not slow and not postgres and not ohif" $(PYTEST_ARGS)
	$(VENV)/bin/mypy

typecheck: env
	$(VENV)/bin/mypy

lint: env
	$(VENV)/bin/ruff check node pipelines training tests bench

bench: env
	$(PY) bench/ingest.py
	$(PY) bench/pipeline.py
