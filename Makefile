# Two entry points: `make demo` and `make test`. Both set up .venv first.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PIP     := $(BIN)/python -m pip install --quiet --disable-pip-version-check
DEMO    := build/demo
# what `vitedge build` kept: a TensorRT engine, or the faster CPU artifact (ONNX Runtime or
# OpenVINO, measured on this machine)
BUILT   = $$(ls $(DEMO)/fmnist.int8.engine $(DEMO)/fmnist.int8.ov.xml $(DEMO)/fmnist.int8.ort.onnx 2>/dev/null | head -1)

.PHONY: setup system demo test lint typecheck clean test-pythons arm-system test-arm

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
	# NVIDIA Triton Inference Server for `vitedge serve` and its tests: the tritonserver binary
	# (Python backend) from the nvidia-pytriton wheel, without its Python package (which pins
	# numpy<2), and NumPy 1 for its Python-backend stub only (built against NumPy 1).
	$(PIP) --no-deps --target $(VENV)/triton nvidia-pytriton==0.7.0
	$(PIP) --no-deps --target $(VENV)/triton/stub-site 'numpy==1.26.4'
	touch $(STAMP)

# The demo model (a ViT trained on Fashion-MNIST, examples/fashion_mnist), the whole path
# on the machine it runs on (TensorRT where present, else the faster of ONNX Runtime and
# OpenVINO on this CPU): build
# INT8 from the checkpoint with the shipped calibration set, measure it against FP32 on
# the 2,000 shipped test images, benchmark the pipeline stage by stage, classify a photo,
# and draw where INT8 and FP32 look in a test image (build/demo/explain/).
demo: setup
	@mkdir -p $(DEMO)
	cp examples/fashion_mnist/vit_fmnist.safetensors $(DEMO)/fmnist.safetensors
	$(BIN)/vitedge build $(DEMO)/fmnist.safetensors --precision int8 --data calibration/fashion-mnist
	$(BIN)/vitedge eval $(BUILT) \
		--data evaluation/fashion-mnist --reference $(DEMO)/fmnist.onnx
	$(BIN)/vitedge bench $(BUILT) \
		$(DEMO)/fmnist.onnx --batch 1,8 --iterations 50 --json-file $(DEMO)/bench.json
	$(BIN)/vitedge predict $(BUILT) \
		evaluation/fashion-mnist/sneaker/test-00036.png vitedge/data/photos/coffee.jpg
	$(BIN)/vitedge explain $(DEMO)/fmnist.int8.onnx evaluation/fashion-mnist/sneaker/test-00036.png \
		--compare $(DEMO)/fmnist.onnx -o $(DEMO)/explain

lint: setup
	$(BIN)/ruff check vitedge tests benchmarks examples tools

typecheck: setup
	$(BIN)/mypy vitedge

# OS packages the tests start as real services: an MQTT broker (the camera events' tests
# skip, saying so, where it cannot be installed); OpenCV's sample videos (opencv-doc), the
# real footage of the frame-reuse tests, and GStreamer's RTSP server that streams it (the
# system python3 runs tests/helpers/rtsp_server.py; those tests skip likewise).
REUSE_PACKAGES = opencv-doc gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-plugins-base \
	gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly gstreamer1.0-libav
system:
	@command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || \
		{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		  { apt-get install -y -qq mosquitto >/dev/null 2>&1 || \
		    { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq mosquitto >/dev/null 2>&1; }; }; } || \
		echo "note: mosquitto is not installed (apt-get install mosquitto): the MQTT tests will skip"
	@{ [ -f /usr/share/doc/opencv-doc/examples/data/vtest.avi ] && \
	   /usr/bin/python3 -c "import gi; gi.require_version('GstRtspServer', '1.0')" 2>/dev/null; } || \
		{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		  { apt-get install -y -qq $(REUSE_PACKAGES) >/dev/null 2>&1 || \
		    { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq $(REUSE_PACKAGES) >/dev/null 2>&1; }; }; } || \
		echo "note: apt-get install $(REUSE_PACKAGES) failed: the frame-reuse tests on OpenCV's sample videos (and through an RTSP server) will skip"

test: setup system lint typecheck
	$(BIN)/python -m pytest -q

# The runtime where it is deployed: the demo artifacts are built once here, then run by
# Pythons and CPUs that have no torch. `make test-pythons`: Python 3.10 (JetPack 6) and 3.12
# (JetPack 7) from pyenv, each in a runtime-only virtualenv under build/.
# `make test-arm`: arm64 under QEMU's cortex-a72, cortex-a76 and max CPU models (no
# dot-product; dot-product; i8mm + SVE), in a Debian arm64 root file system cached under
# build/arm64 (tests/test_arm.py; results in build/arm64/results.json). Timings under QEMU
# are not performance.
PYTHONS      ?= 3.10 3.12 3.13
RUNTIME_DEMO := build/runtime-demo
ARM          := build/arm64

$(RUNTIME_DEMO)/.built: $(STAMP) examples/fashion_mnist/vit_fmnist.safetensors
	@rm -rf $(RUNTIME_DEMO) && mkdir -p $(RUNTIME_DEMO)
	cp examples/fashion_mnist/vit_fmnist.safetensors $(RUNTIME_DEMO)/fmnist.safetensors
	$(BIN)/vitedge build $(RUNTIME_DEMO)/fmnist.safetensors --precision int8 \
		--data calibration/fashion-mnist --backend onnxruntime \
		-o $(RUNTIME_DEMO)/fmnist.int8.ort.onnx >/dev/null
	touch $@

test-pythons: $(RUNTIME_DEMO)/.built
	@for v in $(PYTHONS); do \
		VITEDGE_DEMO_ARTIFACTS=$(CURDIR)/$(RUNTIME_DEMO) tools/runtime_python.sh $$v || exit 1; \
	done

# mmdebstrap and QEMU's user-mode emulator, from the OS packages; an aarch64 cross compiler
# for the C resampler (optional)
arm-system:
	@command -v mmdebstrap >/dev/null 2>&1 && \
		{ command -v qemu-aarch64-static || command -v qemu-aarch64; } >/dev/null 2>&1 || \
		{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		  { apt-get install -y -qq mmdebstrap qemu-user-static >/dev/null 2>&1 || \
		    { apt-get update -qq >/dev/null 2>&1 && \
		      apt-get install -y -qq mmdebstrap qemu-user-static >/dev/null 2>&1; }; }; } || \
		{ echo "make test-arm needs mmdebstrap and qemu-user-static (apt-get install mmdebstrap qemu-user-static)"; exit 1; }
	@command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || \
		{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		  { apt-get install -y -qq gcc-aarch64-linux-gnu >/dev/null 2>&1 || \
		    { apt-get update -qq >/dev/null 2>&1 && \
		      apt-get install -y -qq gcc-aarch64-linux-gnu >/dev/null 2>&1; }; }; } || \
		echo "note: gcc-aarch64-linux-gnu did not install: the arm64 tests run Pillow's resize, not the C resampler"

test-arm: setup arm-system $(RUNTIME_DEMO)/.built
	tools/arm_root.sh $(ARM) $(BIN)/python
	rm -f $(ARM)/results.json
	VITEDGE_ARM_ROOT=$(CURDIR)/$(ARM) VITEDGE_DEMO_ARTIFACTS=$(CURDIR)/$(RUNTIME_DEMO) \
		VITEDGE_ARM_RESULTS=$(CURDIR)/$(ARM)/results.json $(BIN)/python -m pytest -q tests/test_arm.py

clean:
	rm -rf $(VENV) build typings .pytest_cache .mypy_cache .ruff_cache
