"""`vitedge build cam.stream.onnx`: a streaming graph for token reuse
(`vitedge.export.streaming`) and the full pass its manifest names, built by the same backend
into two artifacts side by side (`cam.stream.fp32.ort.onnx` and `cam.stream.fp32.full.ort.onnx`,
`.ov.xml`, `.engine`), the streaming artifact's manifest naming its built companion, so
`vitedge.runtime.tokens.TokenReuse.open(artifact)` runs the pair.

FP32, or INT8 with --data (`vitedge.quantize.streaming`): the ranges of both graphs come
from the FP32 pair run over the frames of --data in order (a video's consecutive frames, a
folder's images in name order: one camera's sequence), as token reuse runs them, so the
states the streaming graph reads are real ones; one scale per layer for both graphs.
Verification, where the artifacts run here: FP32, on held-out inputs (or the bundled
photos) as a sequence of frames; the built full pass against the ONNX full pass in ONNX
Runtime on every frame from a zero state, and the built streaming graph against the ONNX
streaming graph on every later frame, both given the state the ONNX graphs carried to it
(so each step is judged alone, not their drift). The main output and every new state,
within the FP32 tolerance of `vitedge export`. INT8: the built pair against the FP32 ONNX
pair on the frames after those calibrated on (held out), each pair carrying its own state
as token reuse does; judged by --min-fp32-agreement as the plain INT8 build is."""

from __future__ import annotations

from dataclasses import dataclass, replace
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
from vitedge.precisions import FP32, INT8
from vitedge.report import Reporter, reporter
from vitedge.runtime.tokens import (
    STATE_INPUT,
    STATE_OUTPUT,
    TOKEN_REUSE_KEY,
    full_pass_beside,
    token_reuse_entry,
    with_zero_state,
)
from vitedge.target import build_target

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
    if options.precision not in (None, FP32, INT8):
        raise VitedgeError(f"a streaming graph (token reuse) builds in FP32 or INT8 only, not "
                           f"{options.precision}: that build is not verified for it yet",
                           f"--precision fp32 or int8, or build the plain export for "
                           f"{options.precision}")
    if options.precision is None:
        options = replace(options, precision=FP32)
        notes.append("a streaming graph (token reuse) builds in FP32, whatever the profile's "
                     "precision (--precision int8 --data FRAMES for INT8)")
    precision = options.precision
    assert precision is not None
    if options.calib:
        raise VitedgeError("a streaming graph calibrates on a sequence of frames (its states), "
                           "not from a calibration table", "drop --calib; give --data FRAMES"
                           if precision == INT8 else "drop --calib")
    if precision == INT8 and options.data is None:
        raise VitedgeError("INT8 for a streaming graph needs frames to measure its states on",
                           "give --data VIDEO or IMAGES (taken in order, as one camera's frames)")
    if precision == INT8 and options.qdq.scheme != "vit":
        raise VitedgeError(f"a streaming graph quantizes with the vit scheme only, not "
                           f"{options.qdq.scheme} (it would quantize the gates' state "
                           "arithmetic)", "drop --scheme")
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
    artifact = Path(output) if output else src.parent / f"{stem}.{precision}{backend.suffix}"
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
    result = BuildResult(artifact, backend.name, target.reason, precision, target.profile.name,
                         backend.device(), 0, notes=[*target.notes, *notes])
    sequence = _sequence(options, manifest) if precision == INT8 else None
    frames = _frames(options, manifest) if sequence is None else (
        (sequence.held, sequence.held_what) if options.verify.enabled else None)
    made: list[tuple[Backend, Path]] = []
    try:
        with scratch_folder("stream-") as tmp:
            sources = (full_src, src) if sequence is None else _quantized(
                full_src, src, sequence, options, Path(tmp), result, rep)
            graphs = [(sources[0], full_artifact, "full pass")] if paired else []
            graphs.append((_naming(sources[1], full_artifact.name, Path(tmp)) if paired
                           else sources[1], artifact, "streaming graph"))
            built: list[tuple[BuiltArtifact, Path]] = []
            for graph, final, what in graphs:
                request = BuildRequest(graph, require_manifest(load_onnx(graph), graph),
                                       target.profile, _one(), None, rep)
                part = temporary_path(final)
                made.append((backend, part))
                one = timed(result, rep, f"{backend.build_step} ({what})",
                            partial(backend.build, request, part))
                built.append((one, final))
            verify = _verify if sequence is None else partial(
                _verify_int8, min_fp32=options.verify.min_fp32_agreement,
                classifier=manifest.is_classifier)
            verification = verify(backend, [b for b, _ in built], full_src, src, frames,
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


@dataclass
class _Sequence:
    """The frames of --data in order: those calibrated on, then those held out."""

    calib: np.ndarray
    held: np.ndarray
    what: str
    held_what: str


def _sequence(options: BuildOptions, manifest: Manifest) -> _Sequence:
    """The first frames of --data (up to --num-images) to calibrate on and the next ones
    (--verify-images, at most a quarter of the source) to verify on, in order: a video's
    consecutive frames, a folder's or list's images by name, an array's rows."""
    from vitedge.datasets import HELD_OUT_SHARE, ImageSource, image_source, model_inputs

    assert options.data is not None
    source = image_source(options.data)
    total = len(source.items) if source.kind in ("folder", "list") else source.count
    held = min(options.verify.images, total // HELD_OUT_SHARE) if options.verify.enabled else 0
    calib = min(options.calibration.num_images, total - held)
    if calib < 2:
        raise VitedgeError(f"{options.data} holds {total} frames: too few to calibrate a "
                           "streaming graph on", "give a video or a folder of consecutive frames")
    if source.kind == "video":
        frames = np.stack(list(_video_start(source.path, calib + held, manifest)))
    else:
        part = ImageSource(source.path, source.kind, source.items[:calib] + source.items[
            total - held:total], source.fingerprint, count=calib + held,
            rows=list(range(calib)) + list(range(total - held, total)))
        frames = np.stack(list(model_inputs(part, manifest)))
    video = source.kind == "video"
    where = "frames" if video else "images in name order"
    return _Sequence(frames[:calib], frames[calib:],
                     f"the first {calib} {where} of {source.path}",
                     f"the {len(frames) - calib} {where} of {source.path} "
                     + ("after those calibrated on" if video else "at its end (held out)"))


def _video_start(path: Path, count: int, manifest: Manifest) -> Any:
    """The first `count` frames of a video, prepared for the model."""
    from vitedge.errors import require

    cv2 = require("cv2", "video", "reading video")
    from PIL import Image

    from vitedge.datasets import model_input

    cap = cv2.VideoCapture(str(path))
    try:
        for _ in range(count):
            ok, frame = cap.read()
            if not ok:
                break
            yield model_input(Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)), manifest)
    finally:
        cap.release()


def _quantized(full_src: Path, src: Path, sequence: _Sequence, options: BuildOptions,
               folder: Path, result: BuildResult, rep: Reporter) -> tuple[Path, Path]:
    """The INT8 full pass and streaming graph, calibrated on `sequence.calib`, in `folder`."""
    from vitedge.quantize.streaming import describe, quantize_pair

    full, stream = load_onnx(full_src), load_onnx(src)
    manifests = require_manifest(full, full_src), require_manifest(stream, src)

    def run() -> Any:
        return quantize_pair(full, stream, sequence.calib, options.calibration, options.qdq,
                             manifests, rep.progress)

    pair = timed(result, rep, f"calibrate on {len(sequence.calib)} frames in sequence and "
                 "quantize", run)
    out = folder / "int8"
    out.mkdir()
    paths = out / full_src.name, out / src.name
    save_onnx(pair.full, paths[0])
    if src != full_src:
        save_onnx(pair.stream, paths[1])
    result.notes.append(describe(pair) + f", on {sequence.what}")
    result.details["quantization"] = {**pair.info, "calibrated_on": sequence.what,
                                      "method": options.calibration.method}
    return paths


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


def _verify_int8(backend: Backend, built: list[BuiltArtifact], full_src: Path, src: Path,
                 frames: tuple[np.ndarray, str] | None, result: BuildResult, rep: Reporter,
                 min_fp32: float, classifier: bool) -> list[dict[str, Any]]:
    """The built INT8 pair against the FP32 ONNX pair (ONNX Runtime) over the held-out
    frames, each pair carrying its own state as token reuse does (refreshed every REFRESH
    frames): one record per artifact (the full pass on its frames, the streaming graph on
    its), judged together by --min-fp32-agreement, as the plain INT8 build is."""
    if frames is None:
        return [{"skipped": "not verified (--no-verify)"} for _ in built]
    reason = backend.cannot_run_here()
    if reason is not None:
        return [{"skipped": reason} for _ in built]
    from vitedge.compare import COLLAPSE_COSINE, agreement, judge
    from vitedge.quantize.streaming import REFRESH, ort_step, run_sequence
    from vitedge.sessions import ort_session
    from vitedge.verification import MIN_JUDGED, VerificationError

    def run() -> tuple[list[tuple[bool, np.ndarray]], list[np.ndarray], list[str | None]]:
        refs = ort_session(str(full_src)), ort_session(str(src))
        main = refs[0].get_outputs()[0].name
        runners = [backend.load_built(b) for b in built]
        try:
            want = [(f, o[main]) for f, o in run_sequence(ort_step(refs[0]), ort_step(refs[1]),
                                                         frames[0], REFRESH)]
            got = [o[main] for _, o in run_sequence(_runner_step(runners[0]),
                                                    _runner_step(runners[-1]), frames[0],
                                                    REFRESH)]
            return want, got, [r.float_parts for r in runners]
        finally:
            for r in runners:
                r.close()

    want, got, float_parts = timed(result, rep, "verify", run)
    overall = agreement(np.concatenate([w for _, w in want]), np.concatenate(got))
    judged = len(want) >= MIN_JUDGED
    kept = judge(overall, min_fp32, COLLAPSE_COSINE, classifier, worst=False)
    what = f"{frames[1]}, as one camera's sequence (a full pass every {REFRESH} frames)"
    records: list[dict[str, Any]] = []
    kinds = [("full pass", True), ("streaming graph", False)][-len(built):] if len(built) == 2 \
        else [("streaming graph (every token)", None)]
    for (graph, full), parts in zip(kinds, float_parts, strict=True):
        pick = [i for i, (f, _) in enumerate(want) if full is None or f == full]
        a = agreement(np.concatenate([want[i][1] for i in pick]),
                      np.concatenate([got[i] for i in pick])) if pick else overall
        records.append({
            "graph": graph, "frames": len(pick), "float_parts": parts, "precision": INT8,
            "top1_agreement": a.top1_agreement, "cosine": a.cosine, "cosine_min": a.cosine_min,
            "mean_kl": a.mean_kl, "max_abs": a.max_abs, "relative": a.relative,
            "min_fp32_agreement": min_fp32, "judged": judged, "state_compared": False,
            "against": "the FP32 pair (ONNX Runtime on the ONNX graphs), each pair carrying "
                       "its own state",
            "line": f"{graph}: {len(pick)} frames, top-1 agreement with FP32 "
                    f"{a.top1_agreement:.1%}, cosine mean {a.cosine:.5f}, min "
                    f"{a.cosine_min:.5f}"})
    lines = [f"verified on {what} ({backend.name}, {result.device}), against the FP32 pair "
             "in ONNX Runtime, each pair carrying its own state:"]
    lines += ["  " + r["line"] for r in records]
    lines.append(f"  together: {kept.measure}" + ("" if judged else
                                                   f" (not judged: fewer than {MIN_JUDGED} frames)"))
    for r in records:
        r["lines"] = lines
        r["line"] += f" ({backend.name}, INT8 pair against the FP32 pair on {frames[1]})"
        r["fp32_judgement"] = kept.measure
    if judged and not kept.ok:
        raise VerificationError(
            f"the INT8 streaming pair agrees with the FP32 pair on {what} by only "
            f"{kept.measure}: quantization collapsed the model",
            "recalibrate (more frames, --method entropy), or build --precision fp32; "
            "--min-fp32-agreement lowers the bar")
    return records


def _runner_step(runner: Runner) -> Any:
    """A built artifact as `run_sequence` calls it (a missing state: zeros)."""
    def step(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = runner.infer_named(with_zero_state(runner.inputs, feed))
        return out

    return step
