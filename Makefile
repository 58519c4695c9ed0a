# One venv, made by the targets below; every command runs from it.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
CONFIG  ?= configs/local.yaml

.PHONY: install up test lint bench clean

$(BIN)/llmgw: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[embedded,dev]'
	touch $@

install: $(BIN)/llmgw

## Start the gateway on the embedded demo model (no GPU, no downloads).
up: install
	$(BIN)/llmgw up $(CONFIG)

## Run the whole test suite.
test: install
	$(BIN)/ruff check llmgw tests bench
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check llmgw tests bench
	$(BIN)/ruff format --check llmgw tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) .pytest_cache
