"""`vitedge build INPUT --precision P`: checkpoint or ONNX in, a deployable artifact out.

Steps, each timed: export (when INPUT is a checkpoint), quantize (INT8 / FP16, reusing a
matching calibration table), then the backend's build: a TensorRT engine where TensorRT
and a GPU are present, else ONNX Runtime's optimized model.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vitedge.artifact import load_onnx, require_manifest
from vitedge.errors import VitedgeError
from vitedge.profiles import BatchRange, Profile, load_profile
from vitedge.quantize.calibrate import CalibrationOptions
from vitedge.quantize.qdq import QuantizeOptions
from vitedge.runtime.cuda_device import gpu_info, tensorrt_module

BACKENDS = ("auto", "tensorrt", "onnxruntime")
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class BuildOptions:
    precision: str | None = None
    """None: the profile's default."""
    data: str | None = None
    calib: str | None = None
    profile: str | None = None
    """A profile name or TOML path; None: the one doctor suggests for this machine."""
    backend: str = "auto"
    batch: str | None = None
    timing_cache: str | None = None
    output: str | None = None
    calibration: CalibrationOptions = CalibrationOptions()
    qdq: QuantizeOptions = QuantizeOptions()


@dataclass
class BuildResult:
    artifact: Path
    backend: str
    backend_reason: str
    precision: str
    profile: str
    device: str
    size_bytes: int
    steps: dict[str, float] = field(default_factory=dict)
    intermediate: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return round(sum(self.steps.values()), 2)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "artifact": str(self.artifact), "seconds": self.seconds}


def choose_backend(requested: str, profile: Profile) -> tuple[str, str]:
    """(backend, why)."""
    if requested not in BACKENDS:
        raise VitedgeError(f"unknown backend '{requested}'", f"use one of {', '.join(BACKENDS)}")
    if requested != "auto":
        return requested, "asked for with --backend"
    if profile.backend == "onnxruntime":
        return "onnxruntime", f"profile {profile.name} builds for ONNX Runtime"
    if tensorrt_module() is None:
        return "onnxruntime", "TensorRT (with its builder) is not installed"
    if gpu_info() is None:
        return "onnxruntime", "TensorRT is installed but no CUDA GPU is visible"
    return "tensorrt", "TensorRT and a GPU are present"


def _suggested_profile() -> str:
    from vitedge.doctor import jetson_model
    from vitedge.profiles import suggest_profile

    gpu = gpu_info()
    return suggest_profile(jetson_model(), gpu[0] if gpu else None)


def build(input_path: str | Path, options: BuildOptions,
          on_step: Callable[[str], None] | None = None,
          on_progress: Callable[[int, int], None] | None = None,
          on_warning: Callable[[str], None] | None = None) -> BuildResult:
    step = on_step or (lambda _s: None)
    src = Path(input_path)
    if not src.exists():
        raise VitedgeError(f"no such file or folder: {src}")
    profile = load_profile(options.profile or _suggested_profile())
    precision = options.precision or profile.precision
    if precision not in PRECISIONS:
        raise VitedgeError(f"unknown precision '{precision}'", f"use one of {', '.join(PRECISIONS)}")
    batch = BatchRange.parse(options.batch) if options.batch else profile.batch
    backend, reason = choose_backend(options.backend, profile)
    if backend == "tensorrt":
        from vitedge.build.tensorrt_build import require_tensorrt

        require_tensorrt()  # fail before any work, with what is missing
    is_onnx = src.suffix == ".onnx"
    stem = src.stem if is_onnx else (src.stem if src.is_file() else src.name)
    suffix = ".engine" if backend == "tensorrt" else ".ort.onnx"
    output = Path(options.output) if options.output else src.parent / f"{stem}.{precision}{suffix}"
    _check_writable(output)
    result = BuildResult(output, backend, reason, precision, profile.name, _device(backend), 0)

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        step(name)
        t = time.perf_counter()
        value = fn()
        result.steps[name] = round(time.perf_counter() - t, 2)
        return value

    work = output.parent
    if is_onnx:
        fp32 = src
    else:
        from vitedge.export import ExportOptions, export_onnx

        fp32 = work / f"{stem}.onnx"
        timed("export", lambda: export_onnx(src, fp32, ExportOptions(batch=None)))
        result.intermediate.append(str(fp32))
    manifest = require_manifest(load_onnx(fp32), fp32)
    model_for_backend = fp32
    if manifest.precision not in ("fp32", precision):
        raise VitedgeError(f"{fp32} is already {manifest.precision}; cannot build {precision}",
                           "start from the FP32 export")
    if precision != "fp32" and manifest.precision == "fp32":
        from vitedge.quantize.quantizer import QuantizeRequest, quantize_model

        quantized = work / f"{stem}.{precision}.onnx"
        request = QuantizeRequest(precision=precision, calib=options.calib, data=options.data,
                                  calibration=options.calibration, qdq=options.qdq)
        q = timed("quantize", lambda: quantize_model(fp32, quantized, request, on_progress,
                                                     on_warning=on_warning))
        result.notes.extend(q.notes)
        if q.check:
            result.details["vs_fp32"] = asdict(q.check)
        result.intermediate.append(str(quantized))
        model_for_backend = quantized
    if backend == "tensorrt":
        from vitedge.build.tensorrt_build import build_engine

        final = require_manifest(load_onnx(model_for_backend), model_for_backend)
        cache = Path(options.timing_cache) if options.timing_cache else None
        info = timed("tensorrt build", lambda: build_engine(
            model_for_backend, output, final, profile, batch, cache, on_progress, on_warning))
        result.details["engine"] = {"tensorrt": info.tensorrt_version, "gpu": info.gpu_name,
                                    "batch": info.batch}
    else:
        from vitedge.build.onnxruntime_build import build_onnxruntime

        if options.timing_cache:
            result.notes.append("--timing-cache applies to TensorRT builds only")
        result.details["onnxruntime"] = timed(
            "onnxruntime optimize", lambda: build_onnxruntime(model_for_backend, output, profile))
    result.size_bytes = output.stat().st_size
    return result


def _device(backend: str) -> str:
    if backend == "tensorrt":
        gpu = gpu_info()
        return f"{gpu[0]} (compute {gpu[1]})" if gpu else "GPU"
    import os
    import platform

    return f"CPU: {platform.machine()}, {os.cpu_count()} cores"


def _check_writable(output: Path) -> None:
    """Fail before the build, not after it, when the artifact cannot be written."""
    import tempfile

    if output.is_dir():
        raise VitedgeError(f"{output} is a folder", "give a file name with -o")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output.parent):
            pass
    except OSError as exc:
        raise VitedgeError(f"cannot write to {output.parent}: {exc.strerror or exc}",
                           "choose another -o") from exc
