"""Run a vitedge TensorRT engine: the same interface as `OnnxRuntimeModel` (a manifest, and
`infer` on a batch of model inputs), with device buffers and a stream from cuda-python.

Loading checks the engine's description (`ENGINE.json`) against this GPU and TensorRT
first and refuses a mismatch, or an engine file changed since it was built, with one line.
Uses the TensorRT runtime API only (`tensorrt`, or the lean runtime `tensorrt_lean`), so it
runs on a Jetson without the builder; `tests/test_tensorrt_contract.py` checks every call
below against the real TensorRT 11 runtime bindings.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from vitedge.errors import MissingDependency, VitedgeError
from vitedge.fileio import sha256_file
from vitedge.manifest import Manifest
from vitedge.runtime.cuda_device import gpu_info, tensorrt_module
from vitedge.runtime.engine_info import (
    EngineInfo,
    compatibility_problem,
    rebuild_hint,
    sidecar_path,
)

NUMPY_DTYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32,
                "INT64": np.int64, "BOOL": np.bool_, "UINT8": np.uint8}


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            raise MissingDependency("running TensorRT engines needs cuda-python",
                                    "pip install 'vitedge[cuda-python]'") from None
    return cudart


def _check(result: Any) -> Any:
    """cuda-python returns (error, value...): raise on an error, return the value(s)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise VitedgeError(f"CUDA error {int(err)} ({err})")
    return values[0] if len(values) == 1 else values


def check_engine(path: Path, trt_version: str, gpu: tuple[str, str]) -> EngineInfo:
    """The engine's description, after checking it may run here and is the engine built."""
    info = EngineInfo.read(sidecar_path(path))
    problem = compatibility_problem(info, trt_version, *gpu)
    if problem:
        raise VitedgeError(f"{path.name}: {problem}", rebuild_hint(info))
    if sha256_file(path) != info.engine_sha256:
        raise VitedgeError(f"{path} is not the engine {sidecar_path(path).name} describes "
                           "(changed or replaced since it was built)", rebuild_hint(info))
    return info


class TensorRTModel:
    """A deserialised engine with an execution context, a stream and device buffers sized
    for the engine's largest batch."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise VitedgeError(f"no such file: {self.path}")
        trt = tensorrt_module(lean_ok=True)
        if trt is None:
            raise MissingDependency("running a TensorRT engine needs TensorRT's runtime",
                                    "Jetson: JetPack; desktop: pip install tensorrt")
        gpu = gpu_info()
        if gpu is None:
            raise VitedgeError("no CUDA GPU is visible to run the engine on",
                               "check the driver with nvidia-smi")
        self.info = check_engine(self.path, str(trt.__version__), gpu)
        self.manifest = Manifest.from_json(json.dumps(self.info.manifest))
        self.trt = trt
        self.cudart = _cudart()
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise VitedgeError(f"TensorRT could not load {self.path}", rebuild_hint(self.info))
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.input_name = inputs[0]
        self.output_names = [n for n in names if n not in inputs]
        self.output_name = self.manifest.output_name
        self.max_batch = int(self.info.batch.split(":")[-1])
        self.stream = _check(self.cudart.cudaStreamCreate())
        self.buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)

    def _dtype(self, name: str) -> Any:
        return NUMPY_DTYPES[str(self.engine.get_tensor_dtype(name)).split(".")[-1]]

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self.buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                _check(self.cudart.cudaFree(ptr))
            ptr = int(_check(self.cudart.cudaMalloc(nbytes)))
            self.buffers[name] = (ptr, nbytes)
        return ptr

    def infer(self, x: np.ndarray) -> np.ndarray:
        return self.infer_all(x)[self.output_name]

    def infer_all(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every output for a batch of inputs, run in chunks of at most the engine's batch."""
        chunks = [self._run(x[i:i + self.max_batch]) for i in range(0, len(x), self.max_batch)]
        return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}

    def _run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        cudart = self.cudart
        host_in = np.ascontiguousarray(x, dtype=self._dtype(self.input_name))
        self.context.set_input_shape(self.input_name, host_in.shape)
        d_in = self._buffer(self.input_name, host_in.nbytes)
        _check(cudart.cudaMemcpyAsync(d_in, host_in.ctypes.data, host_in.nbytes,
                                      cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream))
        self.context.set_tensor_address(self.input_name, d_in)
        outputs: dict[str, np.ndarray] = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            outputs[name] = np.empty(shape, dtype=self._dtype(name))
            self.context.set_tensor_address(name, self._buffer(name, outputs[name].nbytes))
        if not self.context.execute_async_v3(int(self.stream)):
            raise VitedgeError(f"TensorRT failed to run {self.path.name}")
        for name, host in outputs.items():
            _check(cudart.cudaMemcpyAsync(host.ctypes.data, self.buffers[name][0], host.nbytes,
                                          cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))
        _check(cudart.cudaStreamSynchronize(self.stream))
        return {k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in outputs.items()}

    def layer_times(self, x: np.ndarray, runs: int = 10) -> dict[str, float]:
        """Mean milliseconds per layer over `runs` executions (TensorRT's IProfiler)."""
        trt = self.trt
        totals: dict[str, float] = {}

        class Profiler(trt.IProfiler):  # type: ignore[name-defined]
            def __init__(self) -> None:
                trt.IProfiler.__init__(self)

            def report_layer_time(self, layer_name: str, ms: float) -> None:
                totals[layer_name] = totals.get(layer_name, 0.0) + ms

        self.context.profiler = Profiler()
        try:
            for _ in range(runs):
                self._run(x)
        finally:
            self.context.profiler = None
        return {k: v / runs for k, v in totals.items()}

    def layer_information(self) -> str:
        """The engine inspector's JSON description of every layer (needs an engine built
        with detailed profiling verbosity for more than names). The lean runtime has no
        engine inspector (its Python bindings do not expose the type)."""
        if not hasattr(self.trt, "EngineInspector"):
            raise VitedgeError("layer information needs TensorRT's full runtime; this is the "
                               "lean runtime", "install tensorrt (JetPack has it)")
        inspector = self.engine.create_engine_inspector()
        return str(inspector.get_engine_information(self.trt.LayerInformationFormat.JSON))

    def close(self) -> None:
        for ptr, _ in self.buffers.values():
            self.cudart.cudaFree(ptr)
        self.buffers.clear()
        if self.stream is not None:
            self.cudart.cudaStreamDestroy(self.stream)
            self.stream = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown
            self.close()
