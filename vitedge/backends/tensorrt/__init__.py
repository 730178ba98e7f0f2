"""TensorRT 10.x / 11.x: Jetson (JetPack's TensorRT), desktop and data-centre GPUs.

- `backend.py`: the `Backend` the registry lists (profile table `[tensorrt]`, doctor
  checks for TensorRT, pycuda and cuda-python, inspect rows, the Triton plan);
- build side: `build.py` (`build_engine`: a strongly typed network from vitedge's Q/DQ or
  FP16 ONNX, optimization profile, timing cache, DLA, compatibility flags) writing a plain
  engine and its description `engine_info.py` (the sidecar, checked at load);
- run side: `runner.py` (`TensorRTRunner`, the runtime API only, so the lean runtime
  serves), `cuda.py` (cuda-python or pycuda buffers, streams, events, CUDA graphs),
  `device.py` (is there a GPU and a TensorRT)."""
