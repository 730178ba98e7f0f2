"""`vitedge build cam.stream.onnx`: a streaming graph for token reuse
(`vitedge.export.streaming`) and the full pass its manifest names, built by the same backend
into two artifacts side by side (`cam.stream.fp32.ort.onnx` and `cam.stream.fp32.full.ort.onnx`,
`.ov.xml`, `.engine`), the streaming artifact's manifest naming its built companion, so
`vitedge.runtime.tokens.TokenReuse.open(artifact)` runs the pair.

FP32 only: an INT8 streaming graph would need activation ranges of its state inputs, which
come from real states (a clip run through it), not from images; that calibration does not
exist yet. Verification, where the artifacts run here: on held-out inputs (or the bundled
photos), a sequence of frames; the built full pass against the ONNX full pass in ONNX Runtime
on every frame from a zero state, and the built streaming graph against the ONNX streaming
graph on every later frame, both given the state the ONNX graphs carried to it (so each step
is judged alone, not their drift). The main output and every new state, within the FP32
tolerance of `vitedge export`."""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from vitedge.backends.base import Backend, BuildRequest, BuiltArtifact, Runner
from vitedge.build_result import BuildResult, timed
from vitedge.errors import VitedgeError, write_error
from vitedge.fileio import release, temporary_path
from vitedge.graph import load_onnx, save_onnx
from vitedge.lifetime import scratch_folder
from vitedge.manifest import Manifest, manifest_from_file, require_manifest, set_onnx_manifest
from vitedge.options import BuildOptions
from vitedge.precisions import FP32
from vitedge.report import Reporter, reporter
from vitedge.runtime.tokens import STATE_INPUT, STATE_OUTPUT, full_pass_beside, token_reuse_entry
from vitedge.target import build_target

TOKEN_REUSE_KEY = "token_reuse"
FP32_TOLERANCE = 1e-4
"""Largest difference to the ONNX graph, relative to its largest value (per output): the
FP32 tolerance of `vitedge export`."""


def is_streaming(path: Path) -> bool:
    """Whether `path` is a streaming graph's ONNX model (its manifest says token_reuse)."""
    if path.suffix != ".onnx" or not path.is_file():
        return False
    try:
        manifest = manifest_from_file(path, verify=False)
    except VitedgeError:
        return False
    return manifest is not None and isinstance(manifest.source.get(TOKEN_REUSE_KEY), dict)


def companion_path(artifact: Path, suffix: str) -> Path:
    """The built full pass beside the streaming artifact: `cam.stream.fp32.ort.onnx` ->
    `cam.stream.fp32.full.ort.onnx`."""
    base = artifact.name.removesuffix(suffix) if artifact.name.endswith(suffix) else artifact.stem
    return artifact.with_name(f"{base}.full{suffix}")


def build_streaming(src: Path, output: str | Path | None, options: BuildOptions,
                    report: Reporter | None = None) -> BuildResult:
    """The streaming graph at `src` and its full pass, built by one backend and verified;
    nothing is written unless both verify (the full pass first, then the streaming
    artifact that names it)."""
    rep = reporter(report)
    notes: list[str] = []
    if options.precision not in (None, FP32):
        why = ("its state inputs would need ranges from real states, which calibration does "
               "not collect yet" if options.precision not in ("fp16", "bf16") else
               "that build is not verified for it yet")
        raise VitedgeError(f"a streaming graph (token reuse) builds in FP32 only, not "
                           f"{options.precision}: {why}", "--precision fp32, or build the "
                           f"plain export for {options.precision}")
    if options.precision is None:
        options = replace(options, precision=FP32)
        notes.append("a streaming graph (token reuse) builds in FP32, whatever the profile's "
                     "precision")
    if options.calib:
        raise VitedgeError("--calib is for INT8 builds; a streaming graph builds in FP32",
                           "drop --calib")
    if options.batch not in (None, "1", "1:1:1"):
        raise VitedgeError(f"a streaming graph's batch is fixed at 1 (one state per camera), "
                           f"not {options.batch}", "drop --batch")
    if options.timing_cache:
        notes.append("--timing-cache is not used for a streaming graph's build")
    target = build_target(options, output)
    backend = target.backend
    manifest = require_manifest(load_onnx(src), src)
    entry = token_reuse_entry(manifest, src)
    full_src = full_pass_beside(src, entry)
    stem = src.name.removesuffix(".onnx")
    artifact = Path(output) if output else src.parent / f"{stem}.{FP32}{backend.suffix}"
    if not artifact.name.endswith(backend.suffix):
        raise VitedgeError(f"-o {artifact.name} is not named as a {backend.name} artifact",
                           f"end it with {backend.suffix}")
    from vitedge.inputs import refuse_overwriting_inputs
    from vitedge.placement import built_for, place_artifact

    refuse_overwriting_inputs(artifact, src, full_src, options.data)
    artifact = place_artifact(artifact, backend.name, target.profile.name, backend.suffix,
                              output is not None, options.force, notes)
    paired = full_src != src
    full_artifact = companion_path(artifact, backend.suffix) if paired else artifact
    refuse_overwriting_inputs(full_artifact, src, full_src, options.data)
    if full_artifact.exists() and not options.force and \
            built_for(full_artifact) != (backend.name, target.profile.name):
        raise VitedgeError(f"{full_artifact}, where the full pass of this build goes, holds "
                           "another file", "give another -o, or add --force to replace it")
    result = BuildResult(artifact, backend.name, target.reason, FP32, target.profile.name,
                         backend.device(), 0, notes=[*target.notes, *notes])
    frames = _frames(options, manifest)
    made: list[tuple[Backend, Path]] = []
    try:
        with scratch_folder("stream-") as tmp:
            graphs = [(full_src, full_artifact, "full pass")] if paired else []
            graphs.append((_naming(src, full_artifact.name, Path(tmp)) if paired else src,
                           artifact, "streaming graph"))
            built: list[tuple[BuiltArtifact, Path]] = []
            for graph, final, what in graphs:
                request = BuildRequest(graph, require_manifest(load_onnx(graph), graph),
                                       target.profile, _one(), None, rep)
                part = temporary_path(final)
                made.append((backend, part))
                one = timed(result, rep, f"{backend.build_step} ({what})",
                            partial(backend.build, request, part))
                built.append((one, final))
            verification = _verify(backend, [b for b, _ in built], full_src, src, frames,
                                   result, rep)
            for (one, final), record in zip(built, verification, strict=True):
                backend.record(one, record)
                result.notes.extend(n for n in one.notes if n not in result.notes)
                result.details.update(one.details)
                result.size_bytes += backend.artifact_size(one.path)
                try:
                    backend.finish(one, final)
                except OSError as exc:
                    raise write_error(final, exc) from exc
    finally:
        for b, part in made:
            b.discard(part)
            release(part)
    result.verification = {**verification[-1], **(
        {"full_pass": verification[0]} if paired else {})}
    result.float_parts = result.verification.get("float_parts")
    result.details[TOKEN_REUSE_KEY] = {"k": entry["k"], "tokens": entry["tokens"],
                                       "full": str(full_artifact)}
    if paired:
        result.intermediate.append(str(full_artifact))
        result.notes.append(f"its full pass is {full_artifact.name} beside it (keep them "
                            "together; TokenReuse.open runs the pair)")
    return result


def _one() -> Any:
    from vitedge.profiles import BatchRange

    return BatchRange(1, 1, 1)  # a streaming graph's batch is fixed: one state per camera


def _naming(src: Path, full_name: str, folder: Path) -> Path:
    """A copy of the streaming graph whose manifest names its built full pass, which the
    backend builds from (so every backend's artifact carries the name)."""
    model = load_onnx(src)
    manifest = require_manifest(model, src)
    manifest.source = {**manifest.source, TOKEN_REUSE_KEY: {
        **manifest.source[TOKEN_REUSE_KEY], "full": full_name}}
    set_onnx_manifest(model, manifest)
    copy = folder / src.name
    save_onnx(model, copy)
    return copy


def _frames(options: BuildOptions, manifest: Manifest) -> tuple[np.ndarray, str] | None:
    """The frames verification runs (held-out images of --data, or the bundled photos) and
    what they are, in words."""
    if not options.verify.enabled:
        return None
    from vitedge.verification import verification_inputs

    held = None
    if options.data is not None:
        from vitedge.datasets import image_source

        held = image_source(options.data, options.verify.images, options.calibration.seed)
    x, what, _ = verification_inputs(manifest, held)
    return x, what


def _verify(backend: Backend, built: list[BuiltArtifact], full_src: Path, src: Path,
            frames: tuple[np.ndarray, str] | None, result: BuildResult, rep: Reporter) -> list[dict[str, Any]]:
    """One verification record per artifact (the full pass first where there are two)."""
    if frames is None:
        return [{"skipped": "not verified (--no-verify)"} for _ in built]
    reason = backend.cannot_run_here()
    if reason is not None:
        return [{"skipped": reason} for _ in built]

    def run() -> list[dict[str, Any]]:
        from vitedge.sessions import ort_session

        full_ref, stream_ref = ort_session(str(full_src)), ort_session(str(src))
        runners = [backend.load_built(b) for b in built]
        try:
            return _compare(runners[0], runners[-1], full_ref, stream_ref, frames[0], len(built))
        finally:
            for r in runners:
                r.close()

    records: list[dict[str, Any]] = timed(result, rep, "verify", run)
    lines = [f"verified on {frames[1]} as a sequence of frames ({backend.name}, "
             f"{result.device}), against ONNX Runtime on the ONNX graphs with the same states:"]
    for r in records:
        r["line"] = (f"{r['graph']}: {r['frames']} frames, worst difference "
                     f"{r['worst_relative']:.2e} of its largest value in {r['worst']} "
                     f"(tolerance {r['tolerance_relative']:.0e}), top-1 agreement "
                     f"{r['top1_agreement']:.0%}, cosine min {r['cosine_min']:.6f}")
        lines.append("  " + r["line"])
    for r in records:
        r["lines"] = lines
        r["line"] += f" ({backend.name} against ONNX Runtime on {frames[1]})"
        if r["worst_relative"] > r["tolerance_relative"]:
            raise VitedgeError(
                f"the built {r['graph']} differs from its ONNX graph by "
                f"{r['worst_relative']:.2e} relative in {r['worst']} (tolerance "
                f"{r['tolerance_relative']:.0e}; float parts {r['float_parts'] or 'fp32'})",
                f"{backend.product} computes something else than the graph; please report it, "
                "or build with --backend onnxruntime")
    return records


def _compare(full: Runner, stream: Runner, full_ref: Any, stream_ref: Any, frames: np.ndarray,
             artifacts: int) -> list[dict[str, Any]]:
    names = [i.name for i in full_ref.get_inputs()]
    outputs = [o.name for o in full_ref.get_outputs()]
    zeros = [np.zeros(i.shape, np.float32) for i in full_ref.get_inputs()[1:]]
    state = zeros
    diffs: dict[str, dict[str, float]] = {k: {} for k in ("full", "stream", "one")}
    mains: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {
        k: ([], []) for k in ("full", "stream", "one")}
    for i, frame in enumerate(frames):
        x = frame[None].astype(np.float32)
        steps = [("full", full, full_ref, zeros)]
        if i:
            steps.append(("stream", stream, stream_ref, state))
        for kind, runner, ref_session, given in steps:
            want = dict(zip(outputs, ref_session.run(None, dict(zip(names, [x, *given],
                                                                     strict=True))),
                            strict=True))
            got = runner.infer_named(dict(zip(names, [x, *given], strict=True)))
            for name in outputs:
                scale = max(float(np.abs(want[name]).max()), 1e-12)
                rel = float(np.abs(got[name].astype(np.float64) - want[name]).max()) / scale
                diffs[kind][name] = max(diffs[kind].get(name, 0.0), rel)
            mains[kind][0].append(want[outputs[0]])
            mains[kind][1].append(got[outputs[0]])
            if kind == "stream" or i == 0:
                chained = want  # the state the ONNX graphs carry to the next frame
        state = [chained[STATE_OUTPUT + n.removeprefix(STATE_INPUT)] for n in names[1:]]
    from vitedge.compare import agreement

    def record(kind: str, runner: Runner, graph: str) -> dict[str, Any]:
        worst = max(diffs[kind], key=lambda n: diffs[kind][n])
        a = agreement(np.concatenate(mains[kind][0]), np.concatenate(mains[kind][1]))
        return {"graph": graph, "frames": len(mains[kind][0]), "float_parts": runner.float_parts,
                "max_abs": a.max_abs, "relative": a.relative, "cosine_min": a.cosine_min,
                "top1_agreement": a.top1_agreement, "worst": worst,
                "worst_relative": diffs[kind][worst], "tolerance_relative": FP32_TOLERANCE,
                "state_compared": True,
                "against": "ONNX Runtime on the ONNX graph, the same frames and states"}

    if artifacts == 1:  # one graph, from a zero state and with its state carried
        for kind in ("full", "stream"):
            for name, rel in diffs[kind].items():
                diffs["one"][name] = max(diffs["one"].get(name, 0.0), rel)
            mains["one"][0].extend(mains[kind][0])
            mains["one"][1].extend(mains[kind][1])
        return [record("one", full, "streaming graph (every token)")]
    return [record("full", full, "full pass"), record("stream", stream, "streaming graph")]
