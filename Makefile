# Two entry points: `make demo` and `make test`. Both set up .venv first.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PIP     := $(BIN)/python -m pip install --quiet --disable-pip-version-check
DEMO    := build/demo

.PHONY: setup demo test lint typecheck clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(PIP) --upgrade pip
	# The CPU build of torch first (from the local wheel); constraints.txt keeps it.
	$(PIP) torch==2.13.0
	$(PIP) -c constraints.txt -e '.[export,dev]'
	# Type stubs for the full TensorRT 10.x API; --no-deps, see pyproject.toml.
	$(PIP) --no-deps tensorrt-stubs==10.13.0.35.1
	touch $(STAMP)

demo: setup
	@mkdir -p $(DEMO)
	$(BIN)/vitedge export tests/fixtures/timm/vit_tiny_hub -o $(DEMO)/vit_tiny.onnx
	$(BIN)/vitedge inspect $(DEMO)/vit_tiny.onnx

lint: setup
	$(BIN)/ruff check vitedge tests benchmarks

typecheck: setup
	$(BIN)/mypy vitedge

test: setup lint typecheck
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache
