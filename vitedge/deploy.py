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

import vitedge.backends as backends
from vitedge.backends.base import Backend, BuildRequest, BuiltArtifact
from vitedge.errors import VitedgeError
from vitedge.fileio import atomic_path, refuse_overwriting_inputs, sha256_file
from vitedge.graph import load_onnx
from vitedge.manifest import Manifest, require_manifest
from vitedge.options import (
    BUILD_PRECISIONS,
    BuildOptions,
    CalibrationOptions,
    QuantizeOptions,
    VerifyOptions,
)
from vitedge.profiles import BatchRange, Profile, load_profile, suggested_profile
from vitedge.report import Reporter, reporter

__all__ = ["BuildOptions", "BuildResult", "CalibrationOptions", "QuantizeOptions",
           "VerifyOptions", "build", "choose_backend"]

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

    def summary_rows(self) -> list[tuple[str, str]]:
        """The build summary, as rows."""
        rows = [("artifact", f"{self.artifact} ({self.size_bytes / 1e6:.2f} MB)"),
                ("precision", self.precision), ("backend", self.backend),
                ("profile", self.profile), ("device", self.device),
                ("build time", f"{self.seconds:.1f} s")]
        if self.intermediate:
            rows.append(("also wrote", ", ".join(self.intermediate)))
        return rows


def choose_backend(requested: str, profile: Profile) -> tuple[str, str]:
    """(backend, why): the one asked for, else the profile's where it can build here, else
    the embedded default, saying why."""
    if requested != "auto":
        return backends.get(requested).name, "asked for with --backend"
    backend = backends.get(profile.backend)
    why_not = backend.unavailable()
    if why_not is None:
        return backend.name, backend.chosen(profile)
    return backends.EMBEDDED, why_not


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
    profile = load_profile(options.profile or suggested_profile())
    precision = options.precision or profile.precision
    if precision not in PRECISIONS:
        raise VitedgeError(f"unknown precision '{precision}'", f"use one of {', '.join(PRECISIONS)}")
    batch = BatchRange.parse(options.batch) if options.batch else profile.batch
    name, reason = choose_backend(options.backend, profile)
    backend = backends.get(name)
    backend.require()  # fail before any work, with what is missing
    is_onnx = src.suffix == ".onnx"
    stem = src.stem if is_onnx else (src.stem if src.is_file() else src.name)
    output = Path(output) if output else src.parent / f"{stem}.{precision}{backend.suffix}"
    _check_writable(output)
    refuse_overwriting_inputs(output, src, options.data, options.calib)
    intermediates = ([] if is_onnx else [output.parent / f"{stem}.onnx"]) + (
        [output.parent / f"{stem}.{precision}.onnx"] if precision != "fp32" else [])
    if output.resolve() in [p.resolve() for p in intermediates]:
        raise VitedgeError(f"-o {output} is where the build writes an intermediate model",
                           f"choose another name, e.g. {stem}.{precision}{backend.suffix}")
    result = BuildResult(output, name, reason, precision, profile.name, backend.device(), 0)

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
    build_request = BuildRequest(
        model_for_backend, require_manifest(load_onnx(model_for_backend), model_for_backend),
        profile, batch, Path(options.timing_cache) if options.timing_cache else None, rep)
    with atomic_path(output) as tmp:  # the artifact appears only once it is verified
        try:
            built = timed(backend.build_step, lambda: backend.build(build_request, tmp))
            result.details.update(built.details)
            result.notes.extend(built.notes)
            if inputs is not None:
                verification = _verify(backend, built, reference, inputs, options, result, timed)
                backend.record(built, verification)
            backend.finish(built, output)
        finally:
            backend.discard(tmp)
        result.size_bytes = tmp.stat().st_size
    return result


def _verify(backend: Backend, built: BuiltArtifact, reference: Path | None,
            inputs: tuple[Any, str, bool], options: BuildOptions, result: BuildResult,
            timed: Callable[[str, Callable[[], Any]], Any]) -> dict[str, Any]:
    """The built artifact run by its own runner against the graph it came from and FP32;
    what was measured (or why nothing could be) for the artifact to record."""
    skipped = backend.cannot_run_here()
    if skipped is not None:
        result.notes.append(skipped)
        return {"skipped": skipped}
    from vitedge.verification import check_verification, verify_artifact

    def run() -> Any:
        with backend.load_built(built) as runner:
            return verify_artifact(runner, built.graph, built.graph_name, reference, *inputs,
                                   options.verify, backend.name, result.device,
                                   tensorrt_graph=built.portable_graph, cpu=built.cpu)

    verification = timed("verify", run)
    check_verification(verification, lambda v: backend.disagreement(v, built))
    result.verification = verification.to_dict()
    result.notes.extend(verification.notes)
    return result.verification


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
