# Everything sets itself up: a fresh clone needs only python3 (3.10+) and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

## make run: the example service on http://127.0.0.1:8000 (offline demo upstream unless UPSTREAM_URL is set)
run: $(STAMP)
	$(BIN)/python -m app.demo

## make test: ruff, mypy --strict, and the whole test suite
test: $(STAMP) lint
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check poolclient app tests gunicorn.conf.py
	$(BIN)/mypy

clean:
	rm -rf $(VENV) run .pytest_cache .mypy_cache .ruff_cache
