"""ONNX Runtime sessions: how vitedge computes any ONNX graph. The one place a session is
made, so that calibration, export verification, quantize's check, the build's verification
(the references every backend is judged against) and the onnxruntime backend's runner all
run a model the same way: CPU provider unless asked, threads that sleep rather than spin,
a named optimization level, and static-batch models fed in padded chunks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from vitedge.errors import MissingDependency, VitedgeError

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
OPTIMIZATIONS = ("all", "extended", "basic", "none")
"""ONNX Runtime's graph optimization levels; "none" runs the graph as written (Q/DQ nodes
computed in float, as TensorRT reads them)."""


def ort_session(model: str | Path | bytes | Any, threads: int | None = None,
                optimization: str = "all", arena: bool = True,
                providers: list[str] | None = None, profile_prefix: str | None = None,
                saved_model: str | Path | None = None,
                disabled_optimizers: tuple[str, ...] = ()) -> Any:
    """An InferenceSession for a path, serialized model bytes or an onnx.ModelProto (one too
    large for a protobuf goes through a file with its weights beside it, in the scratch
    folder), on the CPU unless `providers` says otherwise. `arena=False` returns memory after each run (calibration
    asks for every activation at once); `profile_prefix` turns ONNX Runtime's profiling
    on; `saved_model` writes the optimized graph there (what `vitedge build` keeps);
    `disabled_optimizers`: ONNX Runtime transformers left out, by name."""
    try:
        import onnxruntime as ort
    except ImportError as exc:  # a base dependency, so this is a broken install
        raise MissingDependency("running ONNX models needs onnxruntime, which is not installed",
                                "pip install onnxruntime (or onnxruntime-gpu)") from exc
    if optimization not in OPTIMIZATIONS:
        raise ValueError(f"optimization must be one of {OPTIMIZATIONS}")
    levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = levels[optimization]
    if threads:
        so.intra_op_num_threads = threads
    if not arena:
        so.enable_cpu_mem_arena = False
        so.enable_mem_pattern = False
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    if saved_model:
        so.optimized_model_filepath = str(saved_model)
        # a model over 2 GB can only be saved with its weights beside it
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                    Path(saved_model).name + ".data")
    # Idle worker threads sleep instead of spinning: a camera application decodes and
    # preprocesses on the same cores, and spinning threads of one session slow the next
    # (ViT-S INT8 on 2 cores: 27 ms alone either way; 43 ms against 30 ms when two
    # sessions alternate). VITEDGE_ORT_SPIN=1 turns spinning back on.
    so.add_session_config_entry("session.intra_op.allow_spinning",
                                "1" if os.environ.get("VITEDGE_ORT_SPIN") == "1" else "0")
    extra = {"disabled_optimizers": list(disabled_optimizers)} if disabled_optimizers else {}
    if not isinstance(model, (str, Path, bytes)):
        return _session_for_proto(model, so, providers or ["CPUExecutionProvider"], extra)
    try:
        return ort.InferenceSession(model if isinstance(model, bytes) else str(model), so,
                                    providers=providers or ["CPUExecutionProvider"], **extra)
    except Exception as exc:  # onnxruntime raises its own exception types
        what = model if isinstance(model, (str, Path)) else "the model"
        raise VitedgeError(f"ONNX Runtime cannot load {what}: "
                           f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc


def _session_for_proto(model: Any, options: Any, providers: list[str],
                       extra: dict[str, Any] | None = None) -> Any:
    """A session for an in-memory model: its bytes, or, too large for one protobuf, a copy
    stored with its weights in a data file (scratch folder) that the session reads."""
    import onnxruntime as ort

    from vitedge.graph import needs_external_data, save_onnx

    if not needs_external_data(model):
        return ort_session_from(ort, model.SerializeToString(), options, providers, extra)
    from vitedge.lifetime import scratch_folder

    with scratch_folder("session-") as folder:
        path = Path(folder) / "model.onnx"
        save_onnx(model, path, external=True)
        return ort_session_from(ort, str(path), options, providers, extra)


def ort_session_from(ort: Any, model: str | bytes, options: Any, providers: list[str],
                     extra: dict[str, Any] | None = None) -> Any:
    try:
        return ort.InferenceSession(model, options, providers=providers, **(extra or {}))
    except Exception as exc:  # onnxruntime raises its own exception types
        raise VitedgeError(f"ONNX Runtime cannot load the model: "
                           f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc


def default_providers(use_gpu: bool = True) -> list[str]:
    """TensorRT / CUDA execution providers first where this onnxruntime has them, then CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers() if use_gpu else []
    return [p for p in GPU_PROVIDERS if p in available] + ["CPUExecutionProvider"]


def static_batch(session: Any) -> int | None:
    """The first input's fixed batch size, or None when it is dynamic."""
    first = session.get_inputs()[0].shape[0]
    return first if isinstance(first, int) else None


def run_in_batches(session: Any, input_name: str, x: np.ndarray, batch: int | None,
                   outputs: list[str] | None = None) -> list[np.ndarray]:
    """`outputs` of `session` on `x` (every output when None); with a static `batch`, run in
    chunks of that size (`in_fixed_batches`)."""
    return in_fixed_batches(lambda chunk: list(session.run(outputs, {input_name: chunk})),
                            x, batch)


def in_fixed_batches(run: Any, x: np.ndarray, batch: int | None) -> list[np.ndarray]:
    """`run(x)` (a list of outputs, batch first) for a model that takes any batch (`batch`
    None) or exactly `batch`: then in chunks of that size, the last one padded by repeating
    its last input, the padding's outputs left out. Any backend's static-batch artifact."""
    if batch is None or len(x) == batch:
        return list(run(x))
    parts = []
    for start in range(0, len(x), batch):
        chunk = x[start:start + batch]
        pad = batch - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
        parts.append([o[:batch - pad] for o in run(chunk)])
    return [np.concatenate(col) for col in zip(*parts, strict=True)]


def graph_output(model: str | Path | bytes | Any, x: np.ndarray, optimization: str = "all",
                 threads: int | None = None) -> np.ndarray:
    """A model's first output on `x` through a fresh session (references in checks)."""
    session = ort_session(model, threads, optimization=optimization)
    first = session.get_inputs()[0]
    dtype = np.uint8 if first.type == "tensor(uint8)" else np.float32
    return run_in_batches(session, first.name, np.asarray(x, dtype), static_batch(session),
                          [session.get_outputs()[0].name])[0]
