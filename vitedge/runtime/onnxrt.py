"""Run a vitedge ONNX model with ONNX Runtime: the embedded default backend, and how the
quantized and FP16 models are measured on a CPU. Needs only onnxruntime and numpy (the
manifest is read from the file's metadata without parsing the graph)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from vitedge.errors import VitedgeError, require
from vitedge.manifest import Manifest, manifest_from_file

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def ort_session(model: Any, threads: int | None = None, optimize: bool = True,
                arena: bool = True, providers: list[str] | None = None,
                optimization: str | None = None) -> Any:
    """An InferenceSession for a path or serialized model bytes, on the CPU unless
    `providers` says otherwise. `arena=False` returns memory after each run (calibration
    asks for every activation at once). `optimization` ("all", "extended", "basic",
    "none") overrides `optimize`."""
    ort = require("onnxruntime", "export", "running ONNX models")
    levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = levels[optimization or ("all" if optimize else "basic")]
    if threads:
        so.intra_op_num_threads = threads
    if not arena:
        so.enable_cpu_mem_arena = False
        so.enable_mem_pattern = False
    # Idle worker threads sleep instead of spinning: a camera application decodes and
    # preprocesses on the same cores, and spinning threads of one session slow the next
    # (ViT-S INT8 on 2 cores: 27 ms alone either way; 43 ms against 30 ms when two
    # sessions alternate). VITEDGE_ORT_SPIN=1 turns spinning back on.
    so.add_session_config_entry("session.intra_op.allow_spinning",
                                "1" if os.environ.get("VITEDGE_ORT_SPIN") == "1" else "0")
    try:
        return ort.InferenceSession(model if isinstance(model, bytes) else str(model), so,
                                    providers=providers or ["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise VitedgeError(f"ONNX Runtime cannot load {model if isinstance(model, (str, Path)) else 'the model'}: "
                           f"{str(exc).splitlines()[0]}") from exc


def default_providers(use_gpu: bool = True) -> list[str]:
    """TensorRT / CUDA execution providers first where this onnxruntime has them, then CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers() if use_gpu else []
    return [p for p in GPU_PROVIDERS if p in available] + ["CPUExecutionProvider"]


def is_built(manifest: Manifest) -> bool:
    """A `vitedge build` ONNX Runtime artifact (optimized, CPU-exact INT8), as its manifest
    records, whatever the file is called."""
    return manifest.source.get("backend") == "onnxruntime"


def cpu_exact_graph(path: Path) -> bytes:
    """A raw Q/DQ INT8 model with its weights in the encoding ONNX Runtime's integer
    kernels compute exactly on every CPU (`vitedge.build.onnxruntime_int8`): the same
    numbers on an AVX2 laptop as on a VNNI server."""
    import onnx

    from vitedge.build.onnxruntime_int8 import seven_bit_weights

    graph = onnx.load(str(path))
    seven_bit_weights(graph)
    return graph.SerializeToString()


def int8_warnings(manifest: Manifest, name: str) -> list[str]:
    """Why a built INT8 artifact may compute wrong numbers on this CPU (one line each)."""
    from vitedge.runtime.cpu import cpu_int8

    bits = int(manifest.source.get("int8_weight_bits", 8))
    cpu = cpu_int8()
    if bits <= 7 or not cpu.saturates:
        return []
    return [f"{name} has 8-bit weights (built by vitedge {manifest.vitedge_version}) and this "
            f"CPU ({', '.join(cpu.features) or cpu.arch}, no VNNI) adds INT8 products in "
            "saturating 16-bit lanes, so its results can differ from its Q/DQ graph; "
            "rebuild it with `vitedge build` (7-bit weights, exact on every CPU)"]


class OnnxRuntimeModel:
    """A vitedge model in ONNX Runtime: `infer` takes a batch of model inputs (any size;
    a model exported with a static batch is fed in padded chunks) and returns the output."""

    concurrent = True
    """ONNX Runtime's `run` is thread-safe: several threads may infer at once."""

    def __init__(self, path: str | Path, threads: int | None = None, use_gpu: bool = False):
        self.path = Path(path)
        if not self.path.is_file():
            raise VitedgeError(f"no such file: {self.path}")
        manifest = manifest_from_file(self.path)
        if manifest is None:
            raise VitedgeError(f"{self.path} has no vitedge manifest",
                               "export it with `vitedge export`")
        self.manifest = manifest
        self.warnings: list[str] = []
        """One line each: what about this model on this machine the user should know."""
        # a `vitedge build` artifact is optimized already: no work at start-up. Its manifest
        # records the profile's thread count (source.onnxruntime_threads) for the
        # application to pass as `threads`.
        built = is_built(manifest)
        model: Path | bytes = self.path
        if manifest.precision == "int8" and not built:
            model = cpu_exact_graph(self.path)
        elif manifest.precision == "int8":
            self.warnings += int8_warnings(manifest, self.path.name)
        self.session = ort_session(model, threads, providers=default_providers(use_gpu),
                                   optimization="none" if built else "all")
        self.providers = self.session.get_providers()
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        self.fixed_batch = first.shape[0] if isinstance(first.shape[0], int) else None
        self.input_dtype = np.uint8 if first.type == "tensor(uint8)" else np.float32
        self.output_name = self.manifest.output_name

    def infer(self, x: np.ndarray) -> np.ndarray:
        return run_in_batches(self.session, self.input_name, np.asarray(x, self.input_dtype),
                              self.fixed_batch, self.output_name)


def run_in_batches(session: Any, input_name: str, x: np.ndarray, batch: int | None,
                   output: str | None = None) -> np.ndarray:
    """One output of `session` on `x`; with a static `batch`, in chunks (the last padded)."""
    names = [output] if output else None
    if batch is None:
        return session.run(names, {input_name: x})[0]
    outs = []
    for start in range(0, len(x), batch):
        chunk = x[start:start + batch]
        pad = batch - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
        outs.append(session.run(names, {input_name: chunk})[0][:batch - pad])
    return np.concatenate(outs)
