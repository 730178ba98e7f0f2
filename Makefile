# Two entry points: `make demo` and `make test`. Both set up .venv first.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PIP     := $(BIN)/python -m pip install --quiet --disable-pip-version-check
DEMO    := build/demo

.PHONY: setup demo test lint typecheck clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt tools/prepare_tensorrt_stubs.py
	$(PY) -m venv $(VENV)
	$(PIP) --upgrade pip
	# The CPU build of torch first (from the local wheel); constraints.txt keeps it.
	$(PIP) torch==2.13.0
	$(PIP) -c constraints.txt -e '.[export,dev]'
	# Type stubs for the full TensorRT 10.x API; --no-deps, see pyproject.toml.
	$(PIP) --no-deps tensorrt-stubs==10.13.0.35.1
	$(BIN)/python tools/prepare_tensorrt_stubs.py typings
	touch $(STAMP)

# The demo model (a ViT trained on Fashion-MNIST, examples/fashion_mnist): export it,
# calibrate on the shipped images, quantize to INT8, and measure INT8 against FP32 on
# the 2,000 shipped test images with ONNX Runtime on the CPU (the embedded default).
demo: setup
	@mkdir -p $(DEMO)
	$(BIN)/vitedge export examples/fashion_mnist/vit_fmnist.safetensors -o $(DEMO)/fmnist.onnx
	$(BIN)/vitedge calibrate $(DEMO)/fmnist.onnx --data calibration/fashion-mnist
	$(BIN)/vitedge quantize $(DEMO)/fmnist.onnx --precision int8 --calib $(DEMO)/fmnist.calib.json \
		--data calibration/fashion-mnist -o $(DEMO)/fmnist.int8.onnx
	$(BIN)/vitedge eval $(DEMO)/fmnist.int8.onnx --data evaluation/fashion-mnist --reference $(DEMO)/fmnist.onnx
	$(BIN)/vitedge inspect $(DEMO)/fmnist.int8.onnx

lint: setup
	$(BIN)/ruff check vitedge tests benchmarks examples tools

typecheck: setup
	$(BIN)/mypy vitedge

test: setup lint typecheck
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build typings .pytest_cache .mypy_cache .ruff_cache
