"""OpenVINO: the CPU backend of new x86 edge boxes and servers (Intel Core Ultra, Xeon,
AMD Zen 4+), where its kernels run the float parts of a model in BF16 (AVX-512 BF16, AMX)
and its INT8 in VNNI / AMX.

- `backend.py`: the `Backend` the registry lists (profile table `[openvino]`, doctor checks
  with OpenVINO's devices, inspect rows, the build and what verification compares it with);
- build side: `build.py` (`build_openvino`: vitedge's own FP32 or Q/DQ graph, not NNCF's,
  converted to an OpenVINO IR `.ov.xml` + `.ov.bin`, INT8 weights in the encoding every CPU
  computes exactly, the manifest in the IR's runtime information);
- run side: `runner.py` (`OpenVINORunner`: the precision hint chosen for this CPU at load,
  one infer request per thread)."""
