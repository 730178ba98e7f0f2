"""Run an OpenVINO IR vitedge built: compiled for this machine's CPU (or OpenVINO's GPU / NPU
where asked and present) with the precision hint its profile chose, one infer request per
thread (several threads may infer at once)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from vitedge.backends.base import Runner, TensorInfo
from vitedge.backends.openvino.build import (  # noqa: F401 - cpu_capabilities: a public name here too
    compile_model,
    cpu_capabilities,
    read_ir,
    require_openvino,
)
from vitedge.errors import VitedgeError
from vitedge.sessions import in_fixed_batches


def inference_precision(precision: str, policy: str, capabilities: list[str]) -> str:
    """The INFERENCE_PRECISION_HINT an artifact of `precision` gets on this CPU. What the
    precision names computes: fp32 (and an fp16 graph, which the CPU computes in FP32) in
    f32, bf16 in bf16 wherever the CPU has it. An int8 artifact's float parts follow what its
    build chose (`policy`: f32 or bf16, measured at build); `auto`, from artifacts built
    before that choice was recorded, is BF16 where the CPU computes it natively."""
    if precision == "bf16":
        return "bf16"
    if precision != "int8":
        return "f32"
    if policy == "auto":
        return "bf16" if "BF16" in capabilities else "f32"
    return policy


def float_parts_name(hint: Any) -> str:
    """vitedge's name for an OpenVINO element type (or its name): f32 -> fp32, bf16, f16 ->
    fp16."""
    text = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint).lower()
    return {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}.get(text, text)


MOVES_DATA = {"Const", "Input", "Output", "Parameter", "Result", "Reshape", "Reorder",
              "Transpose", "ShapeOf", "Split", "Concatenation", "Broadcast", "Gather"}
"""Runtime layer types that move or shape data rather than compute: left out of `runs_as`."""
WEIGHTED = {"Convolution", "FullyConnected", "MatMul", "Gemm"}


def runs_as(compiled: Any) -> dict[str, dict[str, int]]:
    """How OpenVINO executes a compiled model: {runtime precision: {layer type: count}} of
    its computing layers (what it fused, and which ran in INT8, BF16 or FP32 on this CPU)."""
    found: dict[str, dict[str, int]] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str)
        if kind in MOVES_DATA:
            continue
        precision = info["runtimePrecision"].astype(str).lower()
        precision = {"u8": "i8"}.get(precision, precision)
        found.setdefault(precision, {})
        found[precision][kind] = found[precision].get(kind, 0) + 1
    return found


def runs_as_words(found: dict[str, dict[str, int]]) -> str:
    """`i8 26 (Convolution 1, FullyConnected 25), f32 60 (...)`."""
    return "; ".join(f"{p} {sum(kinds.values())} ("
                     + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) + ")"
                     for p, kinds in sorted(found.items()))


class OpenVINORunner(Runner):
    backend = "openvino"
    concurrent = True

    def __init__(self, path: str | Path, threads: int | None = None, device: str | None = None):
        ov = require_openvino()
        self.path = Path(path)
        if not self.path.is_file():
            raise VitedgeError(f"no such file: {self.path}")
        model, self.manifest, self.info = read_ir(self.path)
        self.warnings = []
        core = ov.Core()
        target = "GPU" if device == "gpu" else "CPU"
        if target not in core.available_devices:
            raise VitedgeError(f"OpenVINO has no {target} device here (it has "
                               f"{', '.join(core.available_devices) or 'none'})",
                               "run it on the CPU (drop --device gpu)")
        self.capabilities = cpu_capabilities(core)
        self.precision_hint = inference_precision(
            self.manifest.precision, str(self.manifest.source.get("precision_hint", "auto")),
            self.capabilities)
        self.compiled = compile_model(core, model, target, self.precision_hint, threads,
                                      self.path.name)
        self.device = target
        self.float_parts = float_parts_name(
            self.compiled.get_property("INFERENCE_PRECISION_HINT")) if target == "CPU" else None
        if self.manifest.precision == "bf16" and self.float_parts != "bf16":
            self.warnings.append(f"{self.path.name} is a bf16 model, but this CPU has no BF16 "
                                 "arithmetic (AVX-512 BF16 or AMX): OpenVINO computes it in "
                                 f"{self.float_parts or 'FP32'} here")
        elif self.manifest.precision == "int8" and self.float_parts == "bf16":
            self.warnings.append(f"{self.path.name}: its float parts run in BF16 on this CPU "
                                 "(measured faster than FP32 at build, and verified)")
        # named as the graph names them: a compiled port may carry several names (an fp16
        # model's output also answers to its Cast's), and any one of them may come first
        self.inputs = [_info(p, m) for p, m in zip(self.compiled.inputs, model.inputs, strict=True)]
        self.outputs = [_info(p, m) for p, m in zip(self.compiled.outputs, model.outputs,
                                                    strict=True)]
        self.input_dtype = np.uint8 if self.inputs[0].dtype == "uint8" else np.float32
        first = self.compiled.inputs[0].get_partial_shape()[0]
        self.fixed_batch: int | None = (first.get_length() if first.is_static
                                        and len(self.compiled.inputs) == 1 else None)
        """The batch an IR from a static-batch export takes (a larger one runs in chunks)."""
        self._local = threading.local()

    def _request(self) -> Any:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        return request

    def infer_all(self, x: np.ndarray) -> dict[str, np.ndarray]:
        self._check_open()
        request = self._request()

        def run(chunk: np.ndarray) -> list[np.ndarray]:
            request.infer({0: np.ascontiguousarray(chunk, self.input_dtype)})
            # the request's output buffers are reused by its next inference: copies
            return [np.array(request.get_output_tensor(i).data)
                    for i in range(len(self.output_names))]

        outputs = in_fixed_batches(run, np.asarray(x), self.fixed_batch)
        return dict(zip(self.output_names, outputs, strict=True))

    def infer_named(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._check_open()
        request = self._request()
        request.infer(self._feeds(feeds))
        return {name: np.array(request.get_output_tensor(i).data)
                for i, name in enumerate(self.output_names)}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "device": self.device,
                "precision_hint": self.precision_hint, "float_parts": self.float_parts,
                "openvino_version": self.info.get("openvino_version")}

    def _release(self) -> None:
        self.compiled = None
        self._local = threading.local()


def _info(port: Any, named: Any) -> TensorInfo:
    """The compiled `port`'s shape and type under the name the model's port `named` has."""
    shape = tuple(int(d.get_length()) if d.is_static else "?" for d in port.get_partial_shape())
    dtype = np.dtype(port.get_element_type().to_dtype()).name
    return TensorInfo(named.get_any_name(), shape, dtype)
