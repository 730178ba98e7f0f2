"""`vitedge build INPUT --precision P`: a checkpoint or a vitedge ONNX model in, a verified
artifact out, for one target (`vitedge.target`: the device profile, the backend, the
precision, decided once).

The stages, each timed: export (when INPUT is a checkpoint), calibrate and quantize (INT8,
FP16, FP8, NVFP4, or a format per layer with --precision auto), each intermediate reused
where it matches (`vitedge.intermediates`); then the backend's build (a TensorRT or
TensorRT for RTX engine, an ONNX Runtime model, an OpenVINO IR) and its verification
against the graph it came from and FP32. On the CPU with nothing pinned, every CPU backend
that can build the precision does, and the fastest is kept (`vitedge.cpu_race`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import vitedge.backends as backends
from vitedge.backends.base import Backend, BuildRequest, BuiltArtifact
from vitedge.build_merge import (
    check_onnx_merge,
    merge_record,
    merge_tag,
    merge_timer,
    unmerged_reference,
)
from vitedge.build_result import BuildResult
from vitedge.cpu_race import Candidate, Contender, cpu_contenders, fastest
from vitedge.errors import VitedgeError, write_error
from vitedge.fileio import release, temporary_path
from vitedge.graph import load_onnx
from vitedge.inputs import refuse_overwriting_inputs
from vitedge.intermediates import Intermediates
from vitedge.manifest import Manifest, require_manifest
from vitedge.options import BuildOptions, CalibrationOptions, QuantizeOptions, VerifyOptions
from vitedge.placement import place_artifact
from vitedge.precisions import AUTO, FP16, FP32, FROM_FP32
from vitedge.report import Reporter, reporter
from vitedge.target import Target, build_target

__all__ = ["BuildOptions", "BuildResult", "CalibrationOptions", "QuantizeOptions",
           "VerifyOptions", "build"]


def build(input_path: str | Path, output: str | Path | None = None,
          options: BuildOptions | None = None, report: Reporter | None = None) -> BuildResult:
    """INPUT (a checkpoint, or a vitedge ONNX model) to the artifact at `output` (default
    INPUT.PRECISION.engine or INPUT.PRECISION.ort.onnx beside INPUT), verified; nothing is
    written at `output` unless the verification passes. The intermediates (the export, the
    calibration table, the quantized model) are reused where they match; a file the user
    made is never replaced (without --force): the build's own goes beside it."""
    options = options or BuildOptions()
    src = Path(input_path)
    if not src.exists():
        raise VitedgeError(f"no such file or folder: {src}")
    from vitedge.streaming_build import build_streaming, is_streaming

    if is_streaming(src):  # token reuse: the streaming graph and its full pass, side by side
        return build_streaming(src, output, options, report)
    target = build_target(options, output)
    _check_profile_precision_has_ranges(options, target, src)
    if src.suffix == ".onnx":
        check_onnx_merge(src, options.merge)  # merged at export or not at all
    placed: list[str] = []  # an artifact for another target there is never replaced silently
    stem, artifact = _artifact_path(src, output, target, options, placed)
    result = BuildResult(artifact, target.backend.name, target.reason, target.precision,
                         target.profile.name, target.backend.device(), 0,
                         notes=[*target.notes, *placed])
    files = Intermediates(artifact.parent, options.force, result, reporter(report), target)
    fp32 = src if src.suffix == ".onnx" else files.export(
        src, stem, options.export_options(),
        merge_timer(target, files.report) if options.merge == "auto" else None)
    graph = _graph_for_backend(files, fp32, stem, options, target.precision, result)
    result.merge = merge_record(graph.manifest)
    graph.unmerged = unmerged_reference(files, src, graph.manifest,
                                        stem.removesuffix(merge_tag(options.merge)), options)
    inputs = _verification_inputs(options, graph.manifest, graph.held_out)
    contenders = [Contender(target, artifact)]
    if target.measured:
        for other in cpu_contenders(target, src.parent, stem):
            out = other.output
            if output is not None:  # -o m.int8 or m.onnx: m.int8.ov.xml, m.ov.xml for OpenVINO
                out = artifact.with_name(artifact.name.removesuffix(".onnx")
                                         + other.target.backend.suffix)
            contenders.append(replace(other, output=place_artifact(
                out, other.target.backend.name, other.target.profile.name,
                other.target.backend.suffix, output is not None, options.force, result.notes)))
    _build_verified(files, graph, inputs, contenders, options)
    return result


# --- before the build: the artifact's name ------------------------------------------------


def _artifact_path(src: Path, output: str | Path | None, target: Target,
                   options: BuildOptions, placed: list[str]) -> tuple[str, Path]:
    """(the model's stem, the artifact's path), refused before any work where the artifact
    could not be written, would overwrite an input or an intermediate, or is named as
    another backend's; an artifact for another target already there is never replaced
    silently (`placement.place_artifact`: beside it, or refused for -o; notes in `placed`)."""
    backend, precision = target.backend, target.precision
    is_onnx = src.suffix == ".onnx"
    stem = src.stem if is_onnx else (src.stem if src.is_file() else src.name)
    if is_onnx:  # fm.int8.onnx builds fm.int8.ort.onnx, not fm.int8.int8.ort.onnx
        stem = stem.removesuffix(f".{precision}")
    base = stem  # a merged build's unmerged reference is exported as base.onnx
    stem += "" if is_onnx else merge_tag(options.merge)  # fm.merge8.onnx, never fm.onnx
    artifact = Path(output) if output else src.parent / f"{stem}.{precision}{backend.suffix}"
    _check_output_names_backend(artifact, backend)
    _check_writable(artifact)
    refuse_overwriting_inputs(artifact, src, options.data, options.calib)
    artifact = place_artifact(artifact, backend.name, target.profile.name, backend.suffix,
                              output is not None, options.force, placed)
    intermediates = ([] if is_onnx else [artifact.parent / f"{stem}.onnx"]) + (
        [artifact.parent / f"{stem}.{precision}.onnx"] if precision not in FROM_FP32 else []) + (
        [artifact.parent / f"{base}.onnx"] if base != stem and not is_onnx else [])
    if artifact.resolve() in [p.resolve() for p in intermediates]:
        raise VitedgeError(f"-o {artifact} is where the build writes an intermediate model",
                           f"choose another name, e.g. {stem}.{precision}{backend.suffix}")
    return stem, artifact


def _check_output_names_backend(output: Path, backend: Backend) -> None:
    """-o x.engine names an engine: a build that makes another backend's artifact refuses
    it instead of writing, say, an ONNX Runtime model called .engine."""
    named = [b for b in backends.all_backends() if output.name.endswith(b.suffix)]
    if not named or backend in named:
        return
    which = " or ".join(b.name for b in named)
    here = [b.name for b in named if b.unavailable() is None]
    hint = (f"--backend {here[0]} builds it here" if here else
            f"{named[0].product} is not installed here ({named[0].unavailable()})")
    raise VitedgeError(f"-o {output.name} names a {which} artifact ({named[0].suffix}), but this "
                       f"build makes a {backend.name} one ({backend.suffix})",
                       f"name it {output.name.removesuffix(named[0].suffix)}{backend.suffix}, "
                       f"or {hint}")


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


# --- export, calibrate, quantize: the graph the backend builds from -----------------------------


@dataclass
class Graph:
    """What the backend builds from, and what its artifact is verified against."""

    model: Path
    """The FP32 export, or the quantized graph made from it."""
    manifest: Manifest
    """The FP32 model's."""
    reference: Path | None
    """The FP32 model, where `model` is a quantized graph made from it."""
    held_out: Any
    """The images of --data kept out of calibration to verify on."""
    unmerged: tuple[Path | None, str | None] = (None, None)
    """A merged graph's unmerged FP32 model, or why there is none (`build_merge`)."""


def _graph_for_backend(files: Intermediates, fp32: Path, stem: str, options: BuildOptions,
                       precision: str, result: BuildResult) -> Graph:
    manifest = require_manifest(load_onnx(fp32), fp32)
    if manifest.precision not in (FP32, precision):
        raise VitedgeError(f"{fp32} is already {manifest.precision}; cannot build {precision}",
                           "start from the FP32 export")
    quantizing = precision not in FROM_FP32 and manifest.precision == FP32
    calibrating = quantizing and options.calib is None
    if calibrating and precision != AUTO and options.data is not None and not options.force:
        options = _reuse_own_table(fp32, options, result)  # `vitedge calibrate` on the same data
        calibrating = options.calib is None
    calib_source, held_out = _split_data(options, calibrating)
    model = fp32
    if quantizing:
        calib = options.calib
        if calib is None and calib_source is not None:
            calib = files.calibrate(fp32, replace(options.calibration, data=calib_source))
        model = files.quantize(fp32, stem, precision, calib, options, held_out)
    reference = fp32 if manifest.precision == FP32 and model != fp32 else None
    return Graph(model, manifest, reference, held_out)


def _reuse_own_table(fp32: Path, options: BuildOptions, result: BuildResult) -> BuildOptions:
    """The user's MODEL.calib.json, made by `vitedge calibrate` from the same model, the same
    images of --data and the same options, is this build's calibration (as --calib would
    give it): it differs only in having seen the images the build would hold out."""
    from vitedge.quantize.calibrate import own_table_for

    calibration = replace(options.calibration, data=options.data)
    table = own_table_for(fp32, calibration)
    if table is None:
        return options
    held = options.verify.images if options.verify.enabled else 0
    result.notes.append(f"{table.name} reused: `vitedge calibrate` made it from this model, the "
                        f"same images of {options.data} and the same options; it has seen the "
                        f"images verification uses (instead of holding {held} out, the build "
                        "verifies on a sample of --data, as with --calib)")
    result.reused.append(str(table))
    return replace(options, calib=str(table))


def _check_profile_precision_has_ranges(options: BuildOptions, target: Target, src: Path
                                        ) -> None:
    """The profile's precision, not asked for, needs activation ranges the build was not
    given: say that the profile chose it, before any work (an export) is done."""
    precision = target.precision
    if options.precision is not None or precision in (FP32, FP16) or options.data or \
            options.calib:
        return
    if src.suffix == ".onnx" and src.is_file():
        from vitedge.intermediates import manifest_of

        there = manifest_of(src)
        if there is not None and there.precision == precision:
            return  # quantized already: nothing to calibrate
    raise VitedgeError(f"profile {target.profile.name} builds {precision.upper()} when no "
                       "--precision is given, and that needs activation ranges from images",
                       "give --data IMAGES (or --calib TABLE), or choose --precision fp16 or fp32")


def _split_data(options: BuildOptions, calibrating: bool) -> tuple[Any, Any]:
    """(calibration images, held-out images) of --data: the held-out ones never set a range.
    A build that does not calibrate (FP32, or a table given) verifies on all of --data."""
    if options.data is None:
        return None, None
    from vitedge.datasets import image_source, split_source

    held = options.verify.images if options.verify.enabled else 0
    if not calibrating:
        return None, image_source(options.data, held, options.calibration.seed) if held else None
    return split_source(options.data, held, options.calibration.num_images,
                        options.calibration.seed)


def _verification_inputs(options: BuildOptions, manifest: Manifest, held_out: Any
                         ) -> tuple[Any, str, bool] | None:
    if not options.verify.enabled:
        return None
    from vitedge.verification import verification_inputs

    return verification_inputs(manifest, held_out)


# --- the backend's build, verified; of several on the CPU, the fastest ------------------------


def _build_verified(files: Intermediates, graph: Graph, inputs: tuple[Any, str, bool] | None,
                    contenders: list[Contender], options: BuildOptions) -> None:
    """Each contender built and verified (an artifact appears only once it is verified); of
    several, the fastest kept (`cpu_race.fastest`); the one kept put in place and described
    in the build's result."""
    result = files.result
    manifest = require_manifest(load_onnx(graph.model), graph.model)
    cache = Path(options.timing_cache) if options.timing_cache else None
    candidates: list[Candidate] = []
    made: list[tuple[Backend, Path]] = []
    try:
        for contender in contenders:
            target, backend = contender.target, contender.target.backend
            request = BuildRequest(graph.model, replace_manifest(manifest, target.precision),
                                   target.profile, target.batch, cache, files.report)
            tmp = temporary_path(contender.output)
            made.append((backend, tmp))
            several = f" ({backend.name})" if len(contenders) > 1 else ""
            try:
                built = files.timed(backend.build_step, partial(backend.build, request, tmp))
                verification = ({"skipped": "not verified (--no-verify)"} if inputs is None else
                                _verify(backend, built, graph.reference, inputs, options, result,
                                        files.timed, "verify" + several, graph.unmerged))
            except VitedgeError as exc:
                if len(contenders) == 1:
                    raise
                result.notes.append(f"{backend.name} not kept: {exc.message}")
                continue
            candidates.append(Candidate(contender, tmp, built, verification))
        if not candidates:
            raise VitedgeError("no CPU backend built a verified artifact",
                               "; ".join(result.notes[-len(contenders):]))
        kept = candidates[0]
        if len(candidates) > 1:
            race = fastest(candidates, inputs, files.timed)
            kept, record = race.kept, race.record()
            result.backend_reason = race.reason
            result.details["measured"] = record
            kept.verification["chosen_by_measurement"] = record
        _keep(kept, result)
    finally:
        for backend, tmp in made:
            backend.discard(tmp)
            release(tmp)


def _keep(kept: Candidate, result: BuildResult) -> None:
    """The kept candidate's verification recorded in it, and it put in place."""
    backend, output = kept.contender.target.backend, kept.contender.output
    result.artifact, result.backend = output, backend.name
    result.profile = kept.contender.target.profile.name
    result.device = backend.device()
    result.verification = kept.verification
    result.float_parts = kept.verification.get("float_parts") or \
        kept.built.details.get(backend.name, {}).get("float_parts")
    result.details.update(kept.built.details)
    result.notes.extend(kept.built.notes)
    result.notes.extend(kept.verification.get("notes", []))  # the kept contender's only
    backend.record(kept.built, kept.verification)
    result.size_bytes = backend.artifact_size(kept.tmp)
    try:
        backend.finish(kept.built, output)
    except OSError as exc:
        raise write_error(output, exc) from exc


def replace_manifest(manifest: Manifest, precision: str | None = None) -> Manifest:
    """A copy of `manifest` a backend may amend (each contender records its own build); a
    precision the backend computes from the FP32 graph (bf16) is the artifact's precision."""
    copy = Manifest.from_json(manifest.to_json())
    if precision in FROM_FP32:
        copy.precision = precision
    return copy


def _verify(backend: Backend, built: BuiltArtifact, reference: Path | None,
            inputs: tuple[Any, str, bool], options: BuildOptions, result: BuildResult,
            timed: Callable[[str, Callable[[], Any]], Any], step: str = "verify",
            unmerged: tuple[Path | None, str | None] = (None, None)) -> dict[str, Any]:
    """The built artifact run by its own runner against the graph it came from, FP32 and a
    merged graph's unmerged FP32 model; what was measured (or why nothing could be) for
    the artifact to record."""
    skipped = backend.cannot_run_here()
    if skipped is not None:
        return {"skipped": skipped}
    from vitedge.verification import check_verification, verify_artifact

    def run() -> Any:
        with backend.load_built(built) as runner:
            return verify_artifact(runner, built.graph, built.graph_name, reference, *inputs,
                                   options.verify, backend.name, result.device,
                                   tensorrt_graph=built.portable_graph, cpu=built.cpu,
                                   unmerged=unmerged)

    verification = timed(step, run)
    check_verification(verification, lambda v: backend.disagreement(v, built))
    return verification.to_dict()
