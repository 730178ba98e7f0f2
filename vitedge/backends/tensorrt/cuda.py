"""The few CUDA calls a TensorRT engine needs (device and pinned host memory, async copies,
a stream, events, CUDA graphs) behind one small interface, with two implementations:
cuda-python (NVIDIA's own samples use it since TensorRT OSS 10.14) and pycuda (what many
Jetson images have). `cuda_api()` picks what is installed, cuda-python first;
VITEDGE_CUDA=pycuda or VITEDGE_CUDA=cuda-python overrides.

Every failure is a VitedgeError that names the call and CUDA's error."""

from __future__ import annotations

import ctypes
import os
from typing import Any, Protocol

import numpy as np

from vitedge.errors import MissingDependency, VitedgeError
from vitedge.machine import import_cudart


class CudaApi(Protocol):
    name: str

    def malloc(self, nbytes: int) -> int: ...
    def free(self, ptr: int) -> None: ...
    def pinned_empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray: ...
    def stream(self) -> Any: ...
    def stream_handle(self, stream: Any) -> int: ...
    def htod_async(self, dst: int, src: np.ndarray, stream: Any) -> None: ...
    def dtoh_async(self, dst: np.ndarray, src: int, stream: Any) -> None: ...
    def synchronize(self, stream: Any) -> None: ...
    def event(self) -> Any: ...
    def record(self, event: Any, stream: Any) -> None: ...
    def elapsed_ms(self, start: Any, end: Any) -> float: ...
    def begin_capture(self, stream: Any) -> None: ...
    def end_capture(self, stream: Any) -> Any: ...
    def launch_graph(self, graph: Any, stream: Any) -> None: ...
    def destroy_event(self, event: Any) -> None: ...
    def destroy_stream(self, stream: Any) -> None: ...
    def free_host_buffers(self) -> None: ...


class CudaPython:
    """cuda-python's runtime bindings (`cuda.bindings.runtime`)."""

    name = "cuda-python"

    def __init__(self) -> None:
        self.rt = import_cudart()
        if self.rt is None:
            raise MissingDependency("CUDA from Python needs cuda-python or pycuda",
                                    "pip install cuda-python")

    def _ok(self, call: str, result: Any) -> Any:
        err, *values = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            name = self.rt.cudaGetErrorName(err)[1]
            name = name.decode() if isinstance(name, bytes) else str(name)
            raise VitedgeError(f"CUDA {call} failed: {name} ({int(err)})",
                               "check the GPU and driver with nvidia-smi")
        return values[0] if len(values) == 1 else values

    def malloc(self, nbytes: int) -> int:
        return int(self._ok("cudaMalloc", self.rt.cudaMalloc(nbytes)))

    def free(self, ptr: int) -> None:
        self._ok("cudaFree", self.rt.cudaFree(ptr))

    def pinned_empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        ptr = int(self._ok("cudaMallocHost", self.rt.cudaMallocHost(max(nbytes, 1))))
        buffer = (ctypes.c_byte * max(nbytes, 1)).from_address(ptr)
        array = np.frombuffer(buffer, dtype=dtype, count=int(np.prod(shape))).reshape(shape)
        self._pinned = getattr(self, "_pinned", []) + [ptr]  # freed by free_host_buffers
        return array

    def free_host_buffers(self) -> None:
        """Every pinned buffer this object allocated (the arrays must no longer be used)."""
        for ptr in getattr(self, "_pinned", []):
            self._ok("cudaFreeHost", self.rt.cudaFreeHost(ptr))
        self._pinned = []

    def stream(self) -> Any:
        return self._ok("cudaStreamCreate", self.rt.cudaStreamCreate())

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def htod_async(self, dst: int, src: np.ndarray, stream: Any) -> None:
        self._ok("cudaMemcpyAsync", self.rt.cudaMemcpyAsync(
            dst, src.ctypes.data, src.nbytes, self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream))

    def dtoh_async(self, dst: np.ndarray, src: int, stream: Any) -> None:
        self._ok("cudaMemcpyAsync", self.rt.cudaMemcpyAsync(
            dst.ctypes.data, src, dst.nbytes, self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream))

    def synchronize(self, stream: Any) -> None:
        self._ok("cudaStreamSynchronize", self.rt.cudaStreamSynchronize(stream))

    def event(self) -> Any:
        return self._ok("cudaEventCreate", self.rt.cudaEventCreate())

    def record(self, event: Any, stream: Any) -> None:
        self._ok("cudaEventRecord", self.rt.cudaEventRecord(event, stream))

    def elapsed_ms(self, start: Any, end: Any) -> float:
        return float(self._ok("cudaEventElapsedTime", self.rt.cudaEventElapsedTime(start, end)))

    def begin_capture(self, stream: Any) -> None:
        self._ok("cudaStreamBeginCapture", self.rt.cudaStreamBeginCapture(
            stream, self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal))

    def end_capture(self, stream: Any) -> Any:
        graph = self._ok("cudaStreamEndCapture", self.rt.cudaStreamEndCapture(stream))
        return self._ok("cudaGraphInstantiate", self.rt.cudaGraphInstantiate(graph, 0))

    def launch_graph(self, graph: Any, stream: Any) -> None:
        self._ok("cudaGraphLaunch", self.rt.cudaGraphLaunch(graph, stream))

    def destroy_event(self, event: Any) -> None:
        self._ok("cudaEventDestroy", self.rt.cudaEventDestroy(event))

    def destroy_stream(self, stream: Any) -> None:
        self._ok("cudaStreamDestroy", self.rt.cudaStreamDestroy(stream))


class PyCuda:
    """pycuda (`pycuda.driver`), with its own context on device 0."""

    name = "pycuda"

    def __init__(self) -> None:
        try:
            import pycuda.autoinit  # noqa: F401 - creates the context
            import pycuda.driver as driver
        except ImportError:
            raise MissingDependency("CUDA from Python needs pycuda or cuda-python",
                                    "pip install pycuda (needs the CUDA headers)") from None
        except Exception as exc:  # pycuda raises its own errors when there is no GPU
            raise VitedgeError(f"pycuda cannot start CUDA: {exc}", "check nvidia-smi") from exc
        self.cuda = driver

    def malloc(self, nbytes: int) -> int:
        allocation = self.cuda.mem_alloc(nbytes)
        self._keep = getattr(self, "_keep", {})
        self._keep[int(allocation)] = allocation
        return int(allocation)

    def free(self, ptr: int) -> None:
        allocation = getattr(self, "_keep", {}).pop(ptr, None)
        if allocation is not None:
            allocation.free()

    def pinned_empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        return self.cuda.pagelocked_empty(shape, dtype)

    def stream(self) -> Any:
        return self.cuda.Stream()

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)

    def htod_async(self, dst: int, src: np.ndarray, stream: Any) -> None:
        self.cuda.memcpy_htod_async(dst, src, stream)

    def dtoh_async(self, dst: np.ndarray, src: int, stream: Any) -> None:
        self.cuda.memcpy_dtoh_async(dst, src, stream)

    def synchronize(self, stream: Any) -> None:
        stream.synchronize()

    def event(self) -> Any:
        return self.cuda.Event()

    def record(self, event: Any, stream: Any) -> None:
        event.record(stream)

    def elapsed_ms(self, start: Any, end: Any) -> float:
        end.synchronize()
        return float(start.time_till(end))

    def begin_capture(self, stream: Any) -> None:
        raise VitedgeError("CUDA graphs need cuda-python (pycuda has no stream capture)",
                           "pip install cuda-python, or run without CUDA graphs")

    def end_capture(self, stream: Any) -> Any:
        raise VitedgeError("CUDA graphs need cuda-python")

    def launch_graph(self, graph: Any, stream: Any) -> None:
        raise VitedgeError("CUDA graphs need cuda-python")

    def destroy_event(self, event: Any) -> None:
        pass  # pycuda frees an Event when the object goes

    def destroy_stream(self, stream: Any) -> None:
        pass  # likewise for a Stream

    def free_host_buffers(self) -> None:
        pass  # pagelocked arrays are freed with the array


IMPLEMENTATIONS: dict[str, type] = {"cuda-python": CudaPython, "pycuda": PyCuda}


def cuda_api() -> CudaApi:
    """The CUDA implementation to use: VITEDGE_CUDA if set, else cuda-python, else pycuda."""
    wanted = os.environ.get("VITEDGE_CUDA")
    if wanted:
        if wanted not in IMPLEMENTATIONS:
            raise VitedgeError(f"VITEDGE_CUDA={wanted} is not one of {', '.join(IMPLEMENTATIONS)}")
        api: CudaApi = IMPLEMENTATIONS[wanted]()
        return api
    errors = []
    for cls in IMPLEMENTATIONS.values():
        try:
            found: CudaApi = cls()
            return found
        except MissingDependency as exc:
            errors.append(str(exc))
    raise MissingDependency("running a TensorRT engine needs cuda-python or pycuda",
                            "pip install cuda-python (or pycuda on a Jetson)")
