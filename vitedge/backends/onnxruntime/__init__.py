"""ONNX Runtime, the embedded default backend (CPU; CUDA / TensorRT providers where an
onnxruntime build has them).

- `backend.py`: the `Backend` the registry lists (its profile table `[onnxruntime]`, doctor
  checks, inspect rows, Triton model, the build and what verification compares it with);
- build side: `build.py` (`build_onnxruntime`: ONNX Runtime's portable optimizations,
  vitedge's attention fusions `fusions.py`, the INT8 encoding that is exact on every CPU
  `int8.py`, from `vitedge.backends.cpu_int8`, which the CPU backends share), saved as
  `.ort.onnx` with the manifest inside;
- run side: `runner.py` (`OnnxRuntimeRunner`, on `vitedge.sessions`, the one session
  factory)."""
