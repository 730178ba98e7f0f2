"""Run a vitedge TensorRT engine behind the one runner interface (`vitedge.backends.base`),
with device buffers and a stream from cuda-python or pycuda (`cuda.py`).

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

from vitedge.backends.base import Runner, TensorInfo
from vitedge.backends.tensorrt.cuda import cuda_api
from vitedge.backends.tensorrt.device import gpu_info, tensorrt_module
from vitedge.backends.tensorrt.engine_info import (
    EngineInfo,
    compatibility_problem,
    rebuild_hint,
    sidecar_path,
)
from vitedge.backends.tensorrt.flavours import TENSORRT, Flavour
from vitedge.errors import MissingDependency, VitedgeError
from vitedge.fileio import sha256_file
from vitedge.manifest import Manifest

NUMPY_DTYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32,
                "INT64": np.int64, "BOOL": np.bool_, "UINT8": np.uint8}


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


def layer_profiler(trt: Any, totals: dict[str, float]) -> Any:
    """A TensorRT IProfiler that adds each layer's milliseconds into `totals`."""

    class Profiler(trt.IProfiler):
        def __init__(self) -> None:
            trt.IProfiler.__init__(self)

        def report_layer_time(self, layer_name: str, ms: float) -> None:
            totals[layer_name] = totals.get(layer_name, 0.0) + ms

    return Profiler()


class TensorRTRunner(Runner):
    """A deserialised engine with an execution context, a stream, device buffers and
    pinned host buffers sized for the engine's largest batch, and CUDA events that time
    the copies and the execution. With `cuda_graph`, each batch size's execution is
    captured once as a CUDA graph and replayed (less launch overhead per layer).

    One execution context: not for concurrent calls from several threads (the pipeline
    serialises its calls; open one model per thread for parallel inference)."""

    backend = "tensorrt"
    concurrent = False
    flavour: Flavour = TENSORRT

    def __init__(self, path: str | Path, cuda_graph: bool = False):
        self.path = Path(path)
        self.warnings = []
        if not self.path.is_file():
            raise VitedgeError(f"no such file: {self.path}")
        trt = self._module()
        gpu = gpu_info()
        if gpu is None:
            raise VitedgeError("no CUDA GPU is visible to run the engine on",
                               "check the driver with nvidia-smi")
        self.info = check_engine(self.path, str(trt.__version__), gpu)
        self.manifest = Manifest.from_json(json.dumps(self.info.manifest))
        self.trt = trt
        self.cuda = cuda_api()
        self.cuda_graph = cuda_graph
        self.graphs: dict[tuple[int, ...], Any] = {}
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        data = self.path.read_bytes()
        self._check_runtime(data)
        self.engine = self.runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise VitedgeError(f"{self.flavour.product} could not load {self.path}",
                               rebuild_hint(self.info))
        self.context = self._create_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.inputs = [self._tensor(n) for n in inputs]
        self.outputs = [self._tensor(n) for n in names if n not in inputs]
        self.max_batch = int(self.info.batch.split(":")[-1])
        self.stream = self.cuda.stream()
        self.events = [self.cuda.event() for _ in range(4)]
        self.buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)
        self.pinned: dict[str, np.ndarray] = {}  # name -> page-locked host buffer
        self.last_timings: dict[str, float] = {}

    def _module(self) -> Any:
        """TensorRT's runtime: the full package, or the lean runtime (enough to run)."""
        trt = tensorrt_module(lean_ok=True)
        if trt is None:
            raise MissingDependency("running a TensorRT engine needs TensorRT's runtime",
                                    "Jetson: JetPack; desktop: pip install tensorrt")
        return trt

    def _check_runtime(self, data: bytes) -> None:
        """What the runtime itself can tell about the engine before deserialising it."""

    def _create_context(self) -> Any:
        return self.engine.create_execution_context()

    def _tensor(self, name: str) -> TensorInfo:
        dims = self.engine.get_tensor_shape(name)
        shape = tuple(int(dims[i]) if int(dims[i]) >= 0 else "batch" for i in range(len(dims)))
        return TensorInfo(name, shape, str(self.engine.get_tensor_dtype(name)).split(".")[-1])

    def _dtype(self, name: str) -> Any:
        return NUMPY_DTYPES[str(self.engine.get_tensor_dtype(name)).split(".")[-1]]

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self.buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                self.cuda.free(ptr)
            ptr = self.cuda.malloc(nbytes)
            self.buffers[name] = (ptr, nbytes)
            self.graphs.clear()  # captured graphs hold the old addresses
        return ptr

    def _host(self, name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """A page-locked host buffer viewed at `shape` (async copies need pinned memory)."""
        count = int(np.prod(shape))
        buf = self.pinned.get(name)
        if buf is None or buf.size < count or buf.dtype != np.dtype(dtype):
            buf = self.cuda.pinned_empty((max(count, 1),), dtype)
            self.pinned[name] = buf
        return buf[:count].reshape(shape)

    def infer_timed(self, x: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        """The output and the device stages' times (ms, CUDA events): host_to_device,
        infer, device_to_host (summed over chunks)."""
        out = self.infer(x)
        return out, dict(self.last_timings)

    def infer_all(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every output for a batch of inputs, run in chunks of at most the engine's batch."""
        self._check_open()
        self.last_timings = {"host_to_device": 0.0, "infer": 0.0, "device_to_host": 0.0}
        step = self.max_batch or len(x)
        chunks = [self._run(x[i:i + step]) for i in range(0, len(x), step)]
        return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}

    def infer_named(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Untested in vitedge's suite (no GPU there): `_run` with every input fed by name."""
        self._check_open()
        self.last_timings = {"host_to_device": 0.0, "infer": 0.0, "device_to_host": 0.0}
        return self._run_feeds(self._feeds(feeds))

    def _run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return self._run_feeds({self.input_name: x})

    def _run_feeds(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cuda, ev = self.cuda, self.events
        hosts: dict[str, np.ndarray] = {}
        for name, x in feeds.items():
            host_in = hosts[name] = self._host(name, x.shape, self._dtype(name))
            host_in[...] = x
            self.context.set_input_shape(name, host_in.shape)
            self.context.set_tensor_address(name, self._buffer(name, host_in.nbytes))
        outputs: dict[str, np.ndarray] = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            outputs[name] = self._host(name, shape, self._dtype(name))
            self.context.set_tensor_address(name, self._buffer(name, outputs[name].nbytes))
        cuda.record(ev[0], self.stream)
        for name, host_in in hosts.items():
            cuda.htod_async(self.buffers[name][0], host_in, self.stream)
        cuda.record(ev[1], self.stream)
        self._execute(hosts[self.input_name].shape)
        cuda.record(ev[2], self.stream)
        for name, host in outputs.items():
            cuda.dtoh_async(host, self.buffers[name][0], self.stream)
        cuda.record(ev[3], self.stream)
        cuda.synchronize(self.stream)
        for stage, (a, b) in (("host_to_device", (0, 1)), ("infer", (1, 2)),
                              ("device_to_host", (2, 3))):
            self.last_timings[stage] += cuda.elapsed_ms(ev[a], ev[b])
        return {k: v.astype(np.float32) if v.dtype == np.float16 else v.copy()
                for k, v in outputs.items()}

    def _execute(self, shape: tuple[int, ...]) -> None:
        handle = self.cuda.stream_handle(self.stream)
        if not self.cuda_graph:
            if not self.context.execute_async_v3(handle):
                raise VitedgeError(f"TensorRT failed to run {self.path.name}")
            return
        graph = self.graphs.get(shape)
        if graph is None:
            # TensorRT needs one plain enqueue after a shape change before capture
            if not self.context.execute_async_v3(handle):
                raise VitedgeError(f"TensorRT failed to run {self.path.name}")
            self.cuda.begin_capture(self.stream)
            captured = self.context.execute_async_v3(handle)
            graph = self.cuda.end_capture(self.stream)  # ends the capture either way
            if not captured:
                raise VitedgeError(f"TensorRT failed to capture {self.path.name} as a CUDA graph",
                                   "run without cuda_graph")
            self.graphs[shape] = graph
        self.cuda.launch_graph(graph, self.stream)

    def layer_times(self, x: np.ndarray, runs: int = 10) -> dict[str, float]:
        """Mean milliseconds per layer over `runs` executions (TensorRT's IProfiler)."""
        totals: dict[str, float] = {}
        self.context.profiler = layer_profiler(self.trt, totals)
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

    def _release(self) -> None:
        """Device buffers, captured graphs, events, the stream, the context and the engine:
        everything this runner made, in reverse order of making."""
        self._before_release()
        for ptr, _ in self.buffers.values():
            self.cuda.free(ptr)
        self.buffers.clear()
        self.pinned.clear()
        self.cuda.free_host_buffers()
        self.graphs.clear()
        for event in self.events:
            self.cuda.destroy_event(event)
        self.events = []
        self.cuda.destroy_stream(self.stream)
        self.context = None
        self.engine = None
        self.runtime = None

    def _before_release(self) -> None:
        """What a backend keeps before the context goes (TensorRT for RTX: its cache)."""

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown
            self.close()
