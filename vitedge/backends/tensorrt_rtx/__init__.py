"""TensorRT for RTX (1.x), the inference library for desktop and laptop RTX GPUs: a third
backend beside ONNX Runtime and TensorRT, sharing TensorRT's builder and runner code
(`vitedge.backends.tensorrt.flavours` says where the two differ).

- `backend.py`: the `Backend` the registry lists, TensorRT's with the RTX flavour
  (profile table `[tensorrt_rtx]`, compute-capability targets);
- build side: `build.py` (`build_rtx_engine`: a strongly typed engine for chosen compute
  capabilities, built ahead of time on a machine without a GPU); `parser.py` (its real ONNX
  parser, which checks every ONNX model vitedge writes when tensorrt_rtx is installed);
- run side: `runner.py` (`TensorRTRTXRunner`: the runtime's own validity check, JIT
  compilation on the user's GPU with a runtime cache beside the engine).

Linux x86-64 and Windows RTX GPUs only: not Jetson, not data-centre Hopper."""
