"""ONNX Runtime, the embedded default backend (CPU; CUDA / TensorRT providers where an
onnxruntime build has them).

- build side: `build.py` (`build_onnxruntime`: ONNX Runtime's portable optimizations,
  vitedge's attention fusions `fusions.py`, the INT8 encoding that is exact on every CPU
  `int8.py`), saved as `.ort.onnx` with the manifest inside;
- run side: `runner.py` (`OnnxRuntimeRunner`), `session.py` (the one session factory every
  part of vitedge uses), `cpu.py` (which INT8 kernels this CPU gets)."""
