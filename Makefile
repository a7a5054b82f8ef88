# Kascade developer entry points. `make run` and `make test` are the README's two commands.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# llama.cpp is compiled by pip (no prebuilt CPU wheels on PyPI): portable flags, no native tuning.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2
export FORCE_CMAKE ?= 1

.PHONY: deps venv run test test-unit lint fmt crds crds-check cluster-up cluster-down bench clean

## System packages (redis-server, cmake, g++, python3-venv): installed when run as root.
deps:
	.ci/debian-packages

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml | deps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[operator,serving,dev]"
	touch $@

## Run Kascade locally (embedded mode) on the quickstart.
run: venv
	KASCADE=$(VENV)/bin/kascade examples/quickstart/run

## The whole test suite: static checks, unit, integration and e2e on a real control plane.
test: deps venv lint crds-check
	e2e/cluster/build >/dev/null
	$(PY) -m pytest -q -p no:cacheprovider tests e2e

test-unit: venv
	$(PY) -m pytest -q tests/unit

lint: venv
	$(VENV)/bin/ruff check operator tests e2e bench conftest.py
	$(VENV)/bin/ruff format --check operator tests e2e bench conftest.py
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

fmt: venv
	$(VENV)/bin/ruff format operator tests e2e bench conftest.py
	$(VENV)/bin/ruff check --fix operator tests e2e bench conftest.py

crds: venv
	$(PY) -m kascade.api.crdgen

crds-check: venv
	$(PY) -m kascade.api.crdgen --check

cluster-up:
	e2e/cluster/up

cluster-down:
	e2e/cluster/down

bench: venv
	$(PY) bench/gateway.py
	$(PY) bench/serving.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
