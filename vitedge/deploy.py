"""`vitedge build INPUT --precision P`: checkpoint or ONNX in, a deployable artifact out.

Steps, each timed: export (when INPUT is a checkpoint), quantize (INT8 / FP16, reusing a
matching calibration table), then the backend's build: a TensorRT engine where TensorRT
and a GPU are present, else ONNX Runtime's optimized model.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from vitedge.backends.tensorrt.device import gpu_info, tensorrt_module
from vitedge.errors import VitedgeError
from vitedge.fileio import atomic_path, refuse_overwriting_inputs, sha256_file
from vitedge.graph import load_onnx
from vitedge.manifest import Manifest, require_manifest
from vitedge.options import (
    BUILD_BACKENDS,
    BUILD_PRECISIONS,
    BuildOptions,
    CalibrationOptions,
    QuantizeOptions,
    VerifyOptions,
)
from vitedge.profiles import BatchRange, Profile, load_profile
from vitedge.report import Reporter, reporter

__all__ = ["BuildOptions", "BuildResult", "CalibrationOptions", "QuantizeOptions",
           "VerifyOptions", "build", "choose_backend"]

BACKENDS = BUILD_BACKENDS
PRECISIONS = BUILD_PRECISIONS


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
    verification: dict[str, Any] = field(default_factory=dict)
    """What `vitedge.verification` measured; empty with --no-verify."""
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
    if profile.backend == "tensorrt-rtx":  # only where a profile asks for it, never by guess
        from vitedge.backends.tensorrt.flavours import TENSORRT_RTX

        if TENSORRT_RTX.import_module() is None:
            return "onnxruntime", (f"profile {profile.name} builds for TensorRT for RTX, which "
                                   "is not installed (pip install tensorrt-rtx-cu13)")
        targets = ", ".join(profile.tensorrt_rtx.compute_capabilities)
        return "tensorrt-rtx", (f"profile {profile.name} builds for TensorRT for RTX (compute "
                                f"capabilities {targets}; no GPU is needed to build)")
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


def build(input_path: str | Path, output: str | Path | None = None,
          options: BuildOptions | None = None, report: Reporter | None = None) -> BuildResult:
    """INPUT (a checkpoint, or a vitedge ONNX model) to the artifact at `output` (default
    INPUT.PRECISION.engine or INPUT.PRECISION.ort.onnx beside INPUT), verified; nothing is
    written at `output` unless the verification passes."""
    options = options or BuildOptions()
    rep = reporter(report)
    step = rep.step
    src = Path(input_path)
    if not src.exists():
        raise VitedgeError(f"no such file or folder: {src}")
    profile = load_profile(options.profile or _suggested_profile())
    precision = options.precision or profile.precision
    if precision not in PRECISIONS:
        raise VitedgeError(f"unknown precision '{precision}'", f"use one of {', '.join(PRECISIONS)}")
    batch = BatchRange.parse(options.batch) if options.batch else profile.batch
    backend, reason = choose_backend(options.backend, profile)
    if backend in ("tensorrt", "tensorrt-rtx"):
        from vitedge.backends.tensorrt.build import require_tensorrt
        from vitedge.backends.tensorrt.flavours import FLAVOURS

        require_tensorrt(FLAVOURS[backend])  # fail before any work, with what is missing
    is_onnx = src.suffix == ".onnx"
    stem = src.stem if is_onnx else (src.stem if src.is_file() else src.name)
    suffix = ".ort.onnx" if backend == "onnxruntime" else ".engine"
    output = Path(output) if output else src.parent / f"{stem}.{precision}{suffix}"
    _check_writable(output)
    refuse_overwriting_inputs(output, src, options.data, options.calib)
    intermediates = ([] if is_onnx else [output.parent / f"{stem}.onnx"]) + (
        [output.parent / f"{stem}.{precision}.onnx"] if precision != "fp32" else [])
    if output.resolve() in [p.resolve() for p in intermediates]:
        raise VitedgeError(f"-o {output} is where the build writes an intermediate model",
                           f"choose another name, e.g. {stem}.{precision}{suffix}")
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
        _claim(fp32, src, options.force, lambda m: m.source.get("file") == src.name and (
            not src.is_file() or m.source.get("sha256") == sha256_file(src)))
        timed("export", lambda: export_onnx(src, fp32, ExportOptions(batch=None)))
        result.intermediate.append(str(fp32))
    manifest = require_manifest(load_onnx(fp32), fp32)
    model_for_backend = fp32
    if manifest.precision not in ("fp32", precision):
        raise VitedgeError(f"{fp32} is already {manifest.precision}; cannot build {precision}",
                           "start from the FP32 export")
    calib_source, held_out = _split_data(options)
    if precision != "fp32" and manifest.precision == "fp32":
        from vitedge.quantize.calibrate import calibrate, default_table_path
        from vitedge.quantize.quantizer import QuantizeRequest, quantize_model

        calib = options.calib
        if calib is None and calib_source is not None:
            table = timed("calibrate", lambda: calibrate(
                fp32, default_table_path(fp32), replace(options.calibration, data=calib_source),
                rep))
            calib = str(table.output)
            if table.reused:
                result.notes.append(f"calibration table {table.output} reused (same model, "
                                    "data, options)")
        quantized = work / f"{stem}.{precision}.onnx"
        fp32_sha = sha256_file(fp32)
        _claim(quantized, fp32, options.force, lambda m: m.precision == precision and
               m.source.get("fp32_sha256") == fp32_sha)
        request = QuantizeRequest(precision=precision, calib=calib, calibration=options.calibration,
                                  qdq=options.qdq)
        q = timed("quantize", lambda: quantize_model(fp32, quantized, request, rep))
        result.notes.extend(q.notes)
        result.intermediate.append(str(quantized))
        model_for_backend = quantized
    reference = fp32 if manifest.precision == "fp32" and model_for_backend != fp32 else None
    inputs = _verification_inputs(options, manifest, held_out)
    with atomic_path(output) as tmp:  # the artifact appears only once it is verified
        if backend != "onnxruntime":
            verification = _build_tensorrt(backend,options, model_for_backend, tmp, profile, batch,
                                           reference, inputs, result, timed, rep)
        else:
            verification = _build_onnxruntime(options, model_for_backend, tmp, profile,
                                              reference, inputs, result, timed)
        if verification is not None:
            result.verification = verification.to_dict()
            result.notes.extend(verification.notes)
        result.size_bytes = tmp.stat().st_size
    return result


def _split_data(options: BuildOptions) -> tuple[Any, Any]:
    """(calibration images, held-out images) of --data: the held-out ones never set a range."""
    if options.data is None:
        return None, None
    from vitedge.datasets import split_source

    held = options.verify.images if options.verify.enabled else 0
    return split_source(options.data, held, options.calibration.num_images,
                        options.calibration.seed)


def _verification_inputs(options: BuildOptions, manifest: Manifest, held_out: Any
                         ) -> tuple[Any, str, bool] | None:
    if not options.verify.enabled:
        return None
    from vitedge.verification import verification_inputs

    return verification_inputs(manifest, held_out)


def _build_onnxruntime(options: BuildOptions, model: Path, tmp: Path, profile: Profile,
                       reference: Path | None, inputs: tuple[Any, str, bool] | None,
                       result: BuildResult, timed: Callable[[str, Callable[[], Any]], Any]
                       ) -> Any:
    from vitedge.backends.onnxruntime.build import build_onnxruntime
    from vitedge.manifest import set_onnx_manifest

    if options.timing_cache:
        result.notes.append("--timing-cache applies to TensorRT builds only")
    built = timed("onnxruntime optimize", lambda: build_onnxruntime(model, tmp, profile))
    result.details["onnxruntime"] = built.details
    if inputs is None:
        return None
    from vitedge.backends.onnxruntime.cpu import cpu_int8
    from vitedge.backends.onnxruntime.runner import OnnxRuntimeRunner
    from vitedge.verification import check_verification, verify_artifact

    def run() -> Any:
        with OnnxRuntimeRunner(tmp, profile.onnxruntime.threads or None) as runner:
            int8 = runner.manifest.precision == "int8"
            graph = "its Q/DQ graph (7-bit weights) computed in float" if int8 else \
                "the ONNX model it was built from"
            return verify_artifact(
                runner, built.graph, graph, reference, *inputs, options.verify, "onnxruntime",
                result.device, tensorrt_graph=model.read_bytes() if int8 else None,
                cpu=cpu_int8().to_dict())

    verification = timed("verify", run)
    check_verification(verification, built.model)
    manifest = built.manifest
    manifest.source = {**manifest.source, "verification": verification.to_dict()}
    set_onnx_manifest(built.model, manifest)
    tmp.write_bytes(built.model.SerializeToString())
    return verification


def _build_tensorrt(backend: str, options: BuildOptions, model: Path, tmp: Path, profile: Profile,
                    batch: BatchRange, reference: Path | None,
                    inputs: tuple[Any, str, bool] | None, result: BuildResult,
                    timed: Callable[[str, Callable[[], Any]], Any],
                    rep: Reporter) -> Any:
    import os

    from vitedge.backends import runner_class
    from vitedge.backends.tensorrt.build import build_engine
    from vitedge.backends.tensorrt.engine_info import sidecar_path
    from vitedge.fileio import write_text_atomic

    final = require_manifest(load_onnx(model), model)
    cache = Path(options.timing_cache) if options.timing_cache else None
    try:
        if backend == "tensorrt-rtx":
            from vitedge.backends.tensorrt_rtx.build import build_rtx_engine

            info = timed("tensorrt-rtx build", lambda: build_rtx_engine(
                model, tmp, final, profile, batch, rep))
            if cache is not None:
                result.notes.append("--timing-cache has no effect with TensorRT for RTX")
        else:
            info = timed("tensorrt build", lambda: build_engine(
                model, tmp, final, profile, batch, cache, rep))
        result.details["engine"] = {"backend": backend, "version": info.tensorrt_version,
                                    "gpu": info.gpu_name, "batch": info.batch,
                                    "compute_capabilities": info.compute_capabilities}
        verification = None
        if inputs is not None and gpu_info() is None:
            skipped = (f"not verified: the {backend} engine runs only on a GPU and this machine "
                       "has none (its graph passed the real parser and builder); build it on the "
                       "GPU machine to have it verified there")
            result.notes.append(skipped)
            info.verification = {"skipped": skipped}
            write_text_atomic(sidecar_path(tmp), info.to_json())
        elif inputs is not None:
            from vitedge.verification import check_verification, verify_artifact

            def run() -> Any:
                with runner_class(backend)(tmp) as runner:  # type: ignore[call-arg]
                    return verify_artifact(
                        runner, model.read_bytes(), "ONNX Runtime on the same graph (Q/DQ in "
                        "float)", reference, *inputs, options.verify, backend, result.device)

            verification = timed("verify", run)
            check_verification(verification)
            info.verification = verification.to_dict()
            write_text_atomic(sidecar_path(tmp), info.to_json())
        os.replace(sidecar_path(tmp), sidecar_path(result.artifact))
        return verification
    finally:
        if sidecar_path(tmp).exists():
            sidecar_path(tmp).unlink()


def _device(backend: str) -> str:
    if backend in ("tensorrt", "tensorrt-rtx"):
        gpu = gpu_info()
        if gpu:
            return f"{gpu[0]} (compute {gpu[1]})"
        return "no GPU (ahead-of-time build)" if backend == "tensorrt-rtx" else "GPU"
    import os

    from vitedge.backends.onnxruntime.cpu import cpu_int8, cpu_name

    return f"CPU: {cpu_name()}, {os.cpu_count()} cores, INT8 kernels {cpu_int8().kernel}"


def _claim(path: Path, made_from: Path, force: bool, ours: Callable[[Manifest], bool]) -> None:
    """May the build write its intermediate at `path`? Yes when nothing is there, when what
    is there is what this build would make from `made_from` (vitedge made it from the same
    input: it is made again), or with --force; a user's file is never replaced otherwise."""
    from vitedge.manifest import manifest_from_file

    if force or not path.exists():
        return
    try:
        manifest = manifest_from_file(path, verify=False)
    except VitedgeError:
        manifest = None
    if manifest is not None and ours(manifest):
        return
    raise VitedgeError(f"{path} exists and is not what this build makes from {made_from.name}; "
                       "it is not replaced", "move it, build elsewhere with -o, or pass --force")


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
