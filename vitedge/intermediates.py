"""The files a build makes on the way to its artifact (the export, the calibration table
and its TensorRT cache, the quantized model), each reused where it matches what this build
would make, and never one the user made replaced (without --force)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from vitedge.build_result import BuildResult, timed
from vitedge.errors import VitedgeError
from vitedge.fileio import sha256_file
from vitedge.manifest import Manifest
from vitedge.options import BuildOptions, CalibrationOptions, ExportOptions
from vitedge.precisions import AUTO
from vitedge.report import Reporter
from vitedge.target import Target

T = TypeVar("T")


class Intermediates:
    """The files a build makes on the way: the export, the calibration table (and its
    TensorRT cache), the quantized model. Each is reused where it matches what this build
    would make; made again where an earlier build made it; and where the user made it (a
    `vitedge export`, `calibrate` or `quantize` of their own), left alone: the build's
    goes beside it under a name with the build's fingerprint, or replaces it with --force.
    Every file written and reused is listed in the result."""

    def __init__(self, folder: Path, force: bool, result: BuildResult, report: Reporter,
                 target: Target):
        self.folder, self.force, self.result, self.report = folder, force, result, report
        self.target = target
        """What the build is for: NVFP4's activation form and --precision auto's formats
        follow its targets."""

    def timed(self, name: str, fn: Callable[[], T]) -> T:
        return timed(self.result, self.report, name, fn)

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

    def export(self, checkpoint: Path, stem: str, export: ExportOptions | None = None,
               merge_timer: Any = None, step: str = "export") -> Path:
        """STEM.onnx: the checkpoint exported with `export` (default: a dynamic batch);
        --merge auto's schedules timed by `merge_timer` (`merge_choice.ScheduleTimer`), and
        an export reused only where they were timed the same way."""
        from vitedge.export import export_onnx

        export = export or ExportOptions(batch=None)
        sha = sha256_file(checkpoint) if checkpoint.is_file() else None
        timed_on = None
        if export.merge == "auto" and merge_timer is not None:
            from vitedge.export.merge_choice import timed_on as merge_timed_on

            timed_on = merge_timed_on(merge_timer, export.batch)

        def matches(p: Path) -> bool:
            m = manifest_of(p)
            return m is not None and m.source.get("file") == checkpoint.name and (
                sha is None or m.source.get("sha256") == sha) and \
                m.source.get("export") == export.key() and (
                timed_on is None or m.source.get("merge_auto", {}).get("timed_on") == timed_on)

        path, reused = self.place(self.folder / f"{stem}.onnx", [sha, export.key(), timed_on],
                                  matches, _made_by_build)
        if reused:
            there = manifest_of(path)
            choice = there.source.get("merge_auto") if there is not None else None
            if choice is not None:
                self.result.notes.append(f"{path.name} reused: its --merge auto schedule "
                                         f"{choice['schedule']} was chosen on the same images "
                                         f"and timed the same way ({timed_on})")
        else:
            made = self.timed(step, lambda: export_onnx(checkpoint, path, export, self.report,
                                                        made_by=BUILD, merge_timer=merge_timer))
            self.result.notes.extend(n for n in made.notes if n.startswith("--merge auto"))
        self._record(path, reused)
        return path

    def calibrate(self, fp32: Path, options: CalibrationOptions) -> str:
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

        auto = precision == AUTO  # measures its layers on --data, as many as it can
        profile = self.target.profile
        request = QuantizeRequest(precision=precision, calib=calib,
                                  data=options.data if auto else None,
                                  calibration=options.calibration, qdq=options.qdq,
                                  profile=profile.path or profile.name, max_drop=options.max_drop,
                                  min_fp32_agreement=options.verify.min_fp32_agreement,
                                  check_source=None if auto else held_out)
        fp32_sha = sha256_file(fp32)
        key = request.key(CalibrationTable.read(calib).checksum() if calib else None)

        def matches(p: Path) -> bool:
            m = manifest_of(p)
            return m is not None and m.source.get("fp32_sha256") == fp32_sha and \
                m.source.get("quantize") == key

        path, reused = self.place(self.folder / f"{stem}.{precision}.onnx", [fp32_sha, key],
                                  matches, _made_by_build)
        if reused:
            self.result.notes.append(f"{path.name} reused (same FP32 model, calibration and "
                                     "options)")
        else:
            q = self.timed("quantize", lambda: quantize_model(fp32, path, request, self.report,
                                                              made_by=BUILD, target=self.target))
            self.result.notes.extend(q.notes)
            self.result.quantization = {"summary": q.summary_lines(), "check_lines": q.check_lines(),
                                        "check": q.check.to_dict() if q.check else None,
                                        "formats": q.formats, "auto": q.auto}
        self._record(path, reused)
        return path


BUILD = "build"
"""What a file `vitedge build` made records as its maker."""


def manifest_of(path: Path) -> Manifest | None:
    from vitedge.manifest import manifest_from_file

    try:
        return manifest_from_file(path)
    except VitedgeError:
        return None


def _made_by_build(path: Path) -> bool:
    m = manifest_of(path)
    return m is not None and m.source.get("made_by") == BUILD


def _stem(path: Path) -> str:
    return path.name[: -len(_suffix(path))] if _suffix(path) else path.name


def _suffix(path: Path) -> str:
    """`.calib.json`, `.onnx`: what follows the model's name in an intermediate's name."""
    return ".calib.json" if path.name.endswith(".calib.json") else path.suffix
