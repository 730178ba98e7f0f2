"""`vitedge build INPUT --precision P`: checkpoint or ONNX in, a deployable artifact out.

Steps, each timed: export (when INPUT is a checkpoint), quantize (INT8 / FP16, reusing a
matching calibration table), then the backend's build: a TensorRT engine where TensorRT
and a GPU are present, else ONNX Runtime's optimized model.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import vitedge.backends as backends
from vitedge.backends.base import Backend, BuildRequest, BuiltArtifact
from vitedge.errors import VitedgeError
from vitedge.fileio import (
    refuse_overwriting_inputs,
    release,
    sha256_file,
    temporary_path,
    write_error,
)
from vitedge.graph import load_onnx
from vitedge.manifest import Manifest, require_manifest
from vitedge.options import (
    BUILD_PRECISIONS,
    BuildOptions,
    CalibrationOptions,
    QuantizeOptions,
    VerifyOptions,
)
from vitedge.placement import place_artifact
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
    """Every file the build wrote besides the artifact (export, calibration table and cache,
    quantized model)."""
    reused: list[str] = field(default_factory=list)
    """Intermediates that were there already and were what this build makes."""
    details: dict[str, Any] = field(default_factory=dict)
    verification: dict[str, Any] = field(default_factory=dict)
    """What `vitedge.verification` measured; empty with --no-verify."""
    quantization: dict[str, Any] = field(default_factory=dict)
    """The quantize step's own account: `summary` (what went into which format, in lines) and
    `check` (its graph against FP32 on the CPU, which also runs where the artifact cannot);
    empty where nothing was quantized or the quantized model was reused."""
    notes: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return round(sum(self.steps.values()), 2)

    def to_dict(self) -> dict[str, Any]:
        d = {**asdict(self), "seconds": self.seconds}
        d["output"] = str(d.pop("artifact"))  # the file written: `output` in every command
        return d

    def summary_rows(self) -> list[tuple[str, str]]:
        """The build summary, as rows."""
        rows = [("artifact", f"{self.artifact} ({self.size_bytes / 1e6:.2f} MB)"),
                ("precision", self.precision), ("backend", self.backend),
                ("profile", self.profile), ("device", self.device),
                ("build time", f"{self.seconds:.1f} s")]
        if self.intermediate:
            rows.append(("also wrote", ", ".join(self.intermediate)))
        if self.reused:
            rows.append(("reused", ", ".join(self.reused)))
        return rows


def choose_backend(requested: str, profile: Profile) -> tuple[str, str]:
    """(backend, why): the one asked for, else the profile's; a profile whose backend cannot
    build here is refused in one line (never another backend in its place) saying what is
    missing and which profiles do build here."""
    if requested != "auto":
        return backends.get(requested).name, "asked for with --backend"
    backend = backends.get(profile.backend)
    why_not = backend.unavailable()
    if why_not is None:
        return backend.name, backend.chosen(profile)
    raise VitedgeError(f"profile {profile.name} builds for {backend.product}, which cannot build "
                       f"here: {why_not}", _profiles_that_build_here())


def _profiles_that_build_here() -> str:
    from vitedge.profiles import available

    here = [name for name in available()
            if backends.get(load_profile(name).backend).unavailable() is None]
    return f"profiles that build on this machine: {', '.join(here)} (`vitedge profiles`)"


def build(input_path: str | Path, output: str | Path | None = None,
          options: BuildOptions | None = None, report: Reporter | None = None) -> BuildResult:
    """INPUT (a checkpoint, or a vitedge ONNX model) to the artifact at `output` (default
    INPUT.PRECISION.engine or INPUT.PRECISION.ort.onnx beside INPUT), verified; nothing is
    written at `output` unless the verification passes. The intermediates (the export, the
    calibration table, the quantized model) are reused where they match; a file the user
    made is never replaced (without --force): the build's own goes beside it."""
    options = options or BuildOptions()
    rep = reporter(report)
    src = Path(input_path)
    if not src.exists():
        raise VitedgeError(f"no such file or folder: {src}")
    named = _backend_named_by(output, options)
    if named is not None:  # -o x.ov.xml: the user's choice among the CPU backends
        options = replace(options, backend=named.name)
    profile, name, reason = choose_profile_and_backend(options)
    if named is not None:
        reason = (f"-o {Path(str(output)).name} names an {named.product} artifact "
                  f"({named.suffix}): your choice, not measured against the other CPU backends")
    backend = backends.get(name)
    measure = options.backend == "auto" and options.profile is None and backend.runs_on_cpu
    precision = options.precision or profile.precision
    if precision not in PRECISIONS:
        raise VitedgeError(f"unknown precision '{precision}'", f"use one of {', '.join(PRECISIONS)}")
    precision_notes = _check_precision(backend, profile, precision)
    _check_profile_precision_has_ranges(options, profile, precision, src)
    batch = BatchRange.parse(options.batch) if options.batch else profile.batch
    backend.require()  # fail before any work, with what is missing
    is_onnx = src.suffix == ".onnx"
    stem = src.stem if is_onnx else (src.stem if src.is_file() else src.name)
    if is_onnx:  # fm.int8.onnx builds fm.int8.ort.onnx, not fm.int8.int8.ort.onnx
        stem = stem.removesuffix(f".{precision}")
    explicit = output is not None
    output = Path(output) if output else src.parent / f"{stem}.{precision}{backend.suffix}"
    _check_output_names_backend(output, backend)
    _check_writable(output)
    refuse_overwriting_inputs(output, src, options.data, options.calib)
    placed: list[str] = []  # an artifact for another target there is never replaced silently
    output = place_artifact(output, name, profile.name, backend.suffix, explicit, options.force,
                            placed)
    intermediates = ([] if is_onnx else [output.parent / f"{stem}.onnx"]) + (
        [output.parent / f"{stem}.{precision}.onnx"] if precision != "fp32" else [])
    if output.resolve() in [p.resolve() for p in intermediates]:
        raise VitedgeError(f"-o {output} is where the build writes an intermediate model",
                           f"choose another name, e.g. {stem}.{precision}{backend.suffix}")
    result = BuildResult(output, name, reason, precision, profile.name, backend.device(), 0)
    result.notes.extend(precision_notes + placed)
    files = Intermediates(output.parent, options.force, result, rep,
                          profile.path or profile.name)
    fp32 = src if is_onnx else files.export(src, stem)
    manifest = require_manifest(load_onnx(fp32), fp32)
    if manifest.precision not in ("fp32", precision):
        raise VitedgeError(f"{fp32} is already {manifest.precision}; cannot build {precision}",
                           "start from the FP32 export")
    calibrating = precision != "fp32" and manifest.precision == "fp32" and options.calib is None
    if calibrating and precision != "auto" and options.data is not None and not options.force:
        options = _reuse_own_table(fp32, options, result)  # `vitedge calibrate` on the same data
        calibrating = options.calib is None
    calib_source, held_out = _split_data(options, calibrating)
    model_for_backend = fp32
    if precision != "fp32" and manifest.precision == "fp32":
        calib = options.calib
        if calib is None and calib_source is not None:
            calib = files.calibrate(fp32, replace(options.calibration, data=calib_source))
        model_for_backend = files.quantize(fp32, stem, precision, calib, options, held_out)
    reference = fp32 if manifest.precision == "fp32" and model_for_backend != fp32 else None
    inputs = _verification_inputs(options, manifest, held_out)
    candidates: list[Any] = []
    quantized_manifest = require_manifest(load_onnx(model_for_backend), model_for_backend)
    contenders = [(backend, profile, output)]
    if measure:
        for b, prof, out in _cpu_contenders(backend, precision, src.parent, stem):
            if explicit:  # -o m.int8 or m.onnx: m.int8.ov.xml, m.ov.xml for OpenVINO
                out = output.with_name(output.name.removesuffix(".onnx") + b.suffix)
            contenders.append((b, prof, place_artifact(out, b.name, prof.name, b.suffix,
                                                       explicit, options.force, result.notes)))
    made = []
    try:
        for b, prof, out in contenders:
            build_request = BuildRequest(
                model_for_backend, replace_manifest(quantized_manifest), prof,
                batch if b is backend else prof.batch,
                Path(options.timing_cache) if options.timing_cache else None, rep)
            tmp = temporary_path(out)  # an artifact appears only once it is verified
            made.append((b, tmp))
            several = f" ({b.name})" if len(contenders) > 1 else ""
            try:
                built = files.timed(b.build_step, partial(b.build, build_request, tmp))
                verification = ({"skipped": "not verified (--no-verify)"} if inputs is None else
                                _verify(b, built, reference, inputs, options, result,
                                        files.timed, "verify" + several))
            except VitedgeError as exc:
                if len(contenders) == 1:
                    raise
                result.notes.append(f"{b.name} not kept: {exc.message}")
                continue
            candidates.append((b, prof, out, tmp, built, verification))
        if not candidates:
            raise VitedgeError("no CPU backend built a verified artifact",
                               "; ".join(result.notes[-len(contenders):]))
        chosen = _fastest(candidates, inputs, result, files.timed) if len(candidates) > 1 \
            else candidates[0]
        b, prof, out, tmp, built, verification = chosen
        result.artifact, result.backend, result.profile = out, b.name, prof.name
        result.device = b.device()
        result.verification = verification
        result.details.update(built.details)
        result.notes.extend(built.notes)
        result.notes.extend(verification.get("notes", []))  # the kept contender's only
        b.record(built, verification)
        result.size_bytes = b.artifact_size(tmp)
        try:
            b.finish(built, out)
        except OSError as exc:
            raise write_error(out, exc) from exc
    finally:
        for b, tmp in made:
            b.discard(tmp)
            release(tmp)
    return result


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


def replace_manifest(manifest: Manifest) -> Manifest:
    """A copy of `manifest` a backend may amend (each contender records its own build)."""
    return Manifest.from_json(manifest.to_json())


def _cpu_contenders(chosen: Backend, precision: str, folder: Path, stem: str
                    ) -> list[tuple[Backend, Profile, Path]]:
    """The other CPU backends that can build this precision here, each with its own default
    profile and artifact name (`--backend auto` on the CPU measures them all)."""
    from vitedge.backends.precisions import accelerated

    found = []
    for other in backends.all_backends():
        if other is chosen or not other.runs_on_cpu or other.unavailable() is not None:
            continue
        prof = load_profile(other.default_profile)
        targets = other.targets(prof)
        if targets and all(precision in accelerated(other.precision_column(prof), t)
                           for t in targets):
            found.append((other, prof, folder / f"{stem}.{precision}{other.suffix}"))
    return found


MEASURE_SECONDS = 1.0
"""Time each contender runs batch-1 inferences for, after its warm-up."""


def _fastest(candidates: list[Any], inputs: Any, result: BuildResult,
             timed: Callable[[str, Callable[[], Any]], Any]) -> Any:
    """The candidate whose runner takes the least time per image at batch 1 on this
    machine (median); the measurement goes into the result and the artifact's record."""
    import statistics

    x = inputs[0][:1] if inputs is not None else None

    def measure() -> dict[str, float]:
        times: dict[str, float] = {}
        for b, _prof, _out, _tmp, built, _v in candidates:
            with b.load_built(built) as runner:
                sample = x if x is not None else _zeros_input(runner)
                for _ in range(3):
                    runner.infer(sample)
                laps: list[float] = []
                end = time.perf_counter() + MEASURE_SECONDS
                while time.perf_counter() < end or len(laps) < 5:
                    t = time.perf_counter()
                    runner.infer(sample)
                    laps.append((time.perf_counter() - t) * 1e3)
                times[b.name] = round(statistics.median(laps), 3)
        return times

    times = timed("measure", measure)
    winner = min(candidates, key=lambda c: times[c[0].name])
    words = ", ".join(f"{name} {ms:.2f} ms" for name, ms in sorted(times.items(),
                                                                   key=lambda kv: kv[1]))
    result.backend_reason = (f"the fastest CPU backend here, measured on the verified artifacts "
                             f"(median per image at batch 1: {words})")
    record = {"backends_ms": times, "kept": winner[0].name}
    result.details["measured"] = record
    winner[5]["chosen_by_measurement"] = record
    return winner


def _zeros_input(runner: Any) -> Any:
    import numpy as np

    shape = [1 if not isinstance(d, int) or d < 1 else d for d in runner.inputs[0].shape]
    return np.zeros(shape, np.uint8 if runner.inputs[0].dtype == "uint8" else np.float32)


def _check_precision(backend: Backend, profile: Profile, precision: str) -> list[str]:
    """Refuse, in one line, a precision a target of the profile cannot run with this
    backend (the precision table, `vitedge.backends.precisions`); the notes where it builds
    but is not accelerated."""
    from vitedge.backends.precisions import check_precision
    from vitedge.profiles import profiles_running

    targets = backend.targets(profile)
    if precision == "auto" or not targets:
        return []
    return check_precision(backend.precision_column(profile), targets, precision,
                           f"profile {profile.name}", profiles_running(precision))


def choose_profile_and_backend(options: BuildOptions) -> tuple[Profile, str, str]:
    """(profile, backend, why). A profile given is built for as it says, or refused where
    its backend cannot build here; a backend given brings its own default profile; with
    neither, this machine's profile, or the CPU's where that one's backend is missing."""
    if options.profile:
        profile = load_profile(options.profile)
        return (profile, *choose_backend(options.backend, profile))
    if options.backend != "auto":
        backend = backends.get(options.backend)
        profile = load_profile(backend.default_profile)
        return profile, backend.name, (f"asked for with --backend (profile {profile.name}, "
                                       f"the {backend.name} backend's default)")
    profile = load_profile(suggested_profile())
    why_not = backends.get(profile.backend).unavailable()
    if why_not is None:
        return (profile, *choose_backend("auto", profile))
    fallback = load_profile(backends.embedded().default_profile)
    name, _ = choose_backend("auto", fallback)
    return fallback, name, (f"this machine's profile {profile.name} builds for "
                            f"{backends.get(profile.backend).product}, but {why_not}; building "
                            f"for the CPU (profile {fallback.name})")


def _backend_named_by(output: str | Path | None, options: BuildOptions) -> Backend | None:
    """The CPU backend whose artifact suffix `-o` ends with (`.ort.onnx`, `.ov.xml`),
    where neither --backend nor --profile chose one: the name is the user's choice."""
    if output is None or options.backend != "auto" or options.profile is not None:
        return None
    named = [b for b in backends.all_backends() if Path(output).name.endswith(b.suffix)]
    return named[0] if len(named) == 1 and named[0].runs_on_cpu else None


def _check_profile_precision_has_ranges(options: BuildOptions, profile: Profile, precision: str,
                                        src: Path) -> None:
    """The profile's precision, not asked for, needs activation ranges the build was not
    given: say that the profile chose it, before any work (an export) is done."""
    if options.precision is not None or precision in ("fp32", "fp16") or options.data or \
            options.calib:
        return
    if src.suffix == ".onnx" and src.is_file():
        there = _manifest_of(src)
        if there is not None and there.precision == precision:
            return  # quantized already: nothing to calibrate
    raise VitedgeError(f"profile {profile.name} builds {precision.upper()} when no --precision "
                       "is given, and that needs activation ranges from images",
                       "give --data IMAGES (or --calib TABLE), or choose --precision fp16 or fp32")


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


class Intermediates:
    """The files a build makes on the way: the export, the calibration table (and its
    TensorRT cache), the quantized model. Each is reused where it matches what this build
    would make; made again where an earlier build made it; and where the user made it (a
    `vitedge export`, `calibrate` or `quantize` of their own), left alone: the build's
    goes beside it under a name with the build's fingerprint, or replaces it with --force.
    Every file written and reused is listed in the result."""

    def __init__(self, folder: Path, force: bool, result: BuildResult, report: Reporter,
                 profile: str | None = None):
        self.folder, self.force, self.result, self.report = folder, force, result, report
        self.profile = profile
        """The device profile (name or TOML path): NVFP4's activation form and --precision
        auto's formats follow its targets."""

    def timed(self, name: str, fn: Callable[[], Any]) -> Any:
        self.report.step(name)
        t = time.perf_counter()
        value = fn()
        self.result.steps[name] = round(time.perf_counter() - t, 2)
        self.report.step_done(name, self.result.steps[name])
        return value

    def place(self, path: Path, key: Any, matches: Callable[[Path], bool],
              ours: Callable[[Path], bool], why: Callable[[Path], str | None] | None = None
              ) -> tuple[Path, bool]:
        """(where to write, whether what is there already is it); `why`: what makes the
        file there other than this build's, for the note."""
        if not path.exists() or self.force:
            return path, False
        if matches(path):
            return path, True
        if ours(path):
            return path, False
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
        mine = path.with_name(f"{_stem(path)}.{digest[:8]}{_suffix(path)}")
        differs = (why(path) if why else None) or "yours, from other options or data"
        self.result.notes.append(f"{path.name} is not what this build makes ({differs}): left "
                                 f"as it is; the build's is {mine.name}")
        return mine, mine.exists() and matches(mine)

    def _record(self, path: Path, reused: bool, also: tuple[Path, ...] = ()) -> None:
        target = self.result.reused if reused else self.result.intermediate
        target.extend(str(p) for p in (path, *also))

    def export(self, checkpoint: Path, stem: str) -> Path:
        from vitedge.export import ExportOptions, export_onnx

        export = ExportOptions(batch=None)
        sha = sha256_file(checkpoint) if checkpoint.is_file() else None

        def matches(p: Path) -> bool:
            m = _manifest_of(p)
            return m is not None and m.source.get("file") == checkpoint.name and (
                sha is None or m.source.get("sha256") == sha) and \
                m.source.get("export") == export.key()

        path, reused = self.place(self.folder / f"{stem}.onnx", [sha, export.key()], matches,
                                  _made_by_build)
        if not reused:
            self.timed("export", lambda: export_onnx(checkpoint, path, export, self.report,
                                                     made_by=BUILD))
        self._record(path, reused)
        return path

    def calibrate(self, fp32: Path, options: Any) -> str:
        from vitedge.quantize.calibrate import (
            calibrate,
            calibration_source,
            default_table_path,
            table_differences,
            table_matches,
            tensorrt_cache_path,
        )
        from vitedge.quantize.table import CalibrationTable

        source = calibration_source(options)
        model_sha = sha256_file(fp32)

        def table(p: Path) -> CalibrationTable | None:
            try:
                return CalibrationTable.read(p)
            except VitedgeError:
                return None

        def matches(p: Path) -> bool:
            t = table(p)
            return t is not None and table_matches(t, model_sha, source, options)

        def ours(p: Path) -> bool:
            t = table(p)
            return t is not None and t.stats.get("made_by") == BUILD

        def why(p: Path) -> str | None:
            t = table(p)
            return "; ".join(table_differences(t, model_sha, source, options)) if t else None

        path, reused = self.place(default_table_path(fp32),
                                  [model_sha, source.fingerprint, options.key()], matches, ours,
                                  why)
        made = self.timed("calibrate", lambda: calibrate(fp32, path, options, self.report,
                                                         made_by=BUILD))
        self._record(path, made.reused, (tensorrt_cache_path(path),))
        return str(path)

    def quantize(self, fp32: Path, stem: str, precision: str, calib: str | None,
                 options: BuildOptions, held_out: Any = None) -> Path:
        from vitedge.quantize.quantizer import QuantizeRequest, quantize_model
        from vitedge.quantize.table import CalibrationTable

        auto = precision == "auto"  # measures its layers on --data, as many as it can
        request = QuantizeRequest(precision=precision, calib=calib,
                                  data=options.data if auto else None,
                                  calibration=options.calibration, qdq=options.qdq,
                                  profile=self.profile, max_drop=options.max_drop,
                                  check_source=None if auto else held_out)
        fp32_sha = sha256_file(fp32)
        key = request.key(CalibrationTable.read(calib).checksum() if calib else None)

        def matches(p: Path) -> bool:
            m = _manifest_of(p)
            return m is not None and m.source.get("fp32_sha256") == fp32_sha and \
                m.source.get("quantize") == key

        path, reused = self.place(self.folder / f"{stem}.{precision}.onnx", [fp32_sha, key],
                                  matches, _made_by_build)
        if reused:
            self.result.notes.append(f"{path.name} reused (same FP32 model, calibration and "
                                     "options)")
        else:
            q = self.timed("quantize", lambda: quantize_model(fp32, path, request, self.report,
                                                              made_by=BUILD))
            self.result.notes.extend(q.notes)
            self.result.quantization = {"summary": q.summary_lines(), "check_lines": q.check_lines(),
                                        "check": q.check.to_dict() if q.check else None,
                                        "formats": q.formats, "auto": q.auto}
        self._record(path, reused)
        return path


BUILD = "build"
"""What a file `vitedge build` made records as its maker."""


def _manifest_of(path: Path) -> Manifest | None:
    from vitedge.manifest import manifest_from_file

    try:
        return manifest_from_file(path)
    except VitedgeError:
        return None


def _made_by_build(path: Path) -> bool:
    m = _manifest_of(path)
    return m is not None and m.source.get("made_by") == BUILD


def _stem(path: Path) -> str:
    return path.name[: -len(_suffix(path))] if _suffix(path) else path.name


def _suffix(path: Path) -> str:
    """`.calib.json`, `.onnx`: what follows the model's name in an intermediate's name."""
    return ".calib.json" if path.name.endswith(".calib.json") else path.suffix


def _verify(backend: Backend, built: BuiltArtifact, reference: Path | None,
            inputs: tuple[Any, str, bool], options: BuildOptions, result: BuildResult,
            timed: Callable[[str, Callable[[], Any]], Any], step: str = "verify"
            ) -> dict[str, Any]:
    """The built artifact run by its own runner against the graph it came from and FP32;
    what was measured (or why nothing could be) for the artifact to record."""
    skipped = backend.cannot_run_here()
    if skipped is not None:
        return {"skipped": skipped}
    from vitedge.verification import check_verification, verify_artifact

    def run() -> Any:
        with backend.load_built(built) as runner:
            return verify_artifact(runner, built.graph, built.graph_name, reference, *inputs,
                                   options.verify, backend.name, result.device,
                                   tensorrt_graph=built.portable_graph, cpu=built.cpu)

    verification = timed(step, run)
    check_verification(verification, lambda v: backend.disagreement(v, built))
    return verification.to_dict()


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
