"""`vitedge calibrate`: run real images through the FP32 model in ONNX Runtime and record
each activation's INT8 range, streamed batch by batch.

Two passes when equalisation is on: the first collects every activation's histogram and
the per-channel maxima of the Linear inputs that can be equalised; the second runs the
equalised model and re-measures only the tensors equalisation changes. The table keeps
both, so the same table serves the plain and the equalised quantization.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from vitedge.datasets import ImageSource, batches, image_source, model_inputs
from vitedge.errors import VitedgeError
from vitedge.fileio import sha256_file, write_text_atomic
from vitedge.graph import load_onnx
from vitedge.inputs import refuse_overwriting_inputs
from vitedge.manifest import Manifest, require_manifest
from vitedge.options import CalibrationOptions
from vitedge.quantize import equalize
from vitedge.quantize.graph import with_outputs
from vitedge.quantize.histogram import (
    TensorHistogram,
    amax_from_histogram,
)
from vitedge.quantize.qdq import calibration_tensors
from vitedge.quantize.table import (
    CalibrationTable,
    is_table_file,
    tensorrt_cache,
    tensorrt_cache_path,
)
from vitedge.report import Reporter, reporter
from vitedge.sessions import ort_session

Progress = Callable[[int, int], None]


@dataclass
class CalibrationResult:
    table: CalibrationTable
    output: Path
    cache: Path
    reused: bool

    seconds: float = 0.0
    """This run's time (a reused table takes none to make)."""

    def to_dict(self) -> dict[str, object]:
        t = self.table
        return {"output": str(self.output), "tensorrt_cache": str(self.cache),
                "reused": self.reused, "tensors": len(t.tensors),
                "equalized_inputs": len(t.smoothing), "data": t.data,
                "options": t.options, "seconds": self.seconds,
                "stats": None if self.reused else t.stats}


def default_table_path(model_path: str | Path) -> Path:
    p = Path(model_path)
    return p.with_name(p.stem + ".calib.json")


def calibrate(model_path: str | Path, output: str | Path | None = None,
              options: CalibrationOptions | None = None,
              report: Reporter | None = None, made_by: str = "calibrate") -> CalibrationResult:
    """Measure the activation ranges of the FP32 model at `model_path` on `options.data`
    and write the table (JSON; default MODEL.calib.json) and a TensorRT calibration cache
    beside it. A table at `output` that was made from the same model, data and options is
    reused. `options.data` may be a chosen `ImageSource` (the build calibrates on what it
    does not hold out for verification). `made_by` is recorded in the table's stats (a
    table `vitedge build` made is its own to make again; a user's is never replaced)."""
    began = time.perf_counter()
    options = options or CalibrationOptions()
    rep = reporter(report)
    data = options.data
    refuse_overwriting_inputs(output, model_path,
                              None if isinstance(data, ImageSource) or data is None else data)
    if data is None:
        raise VitedgeError("calibration needs images", "give --data SOURCE")
    model = load_onnx(model_path)
    manifest = require_manifest(model, model_path)
    if manifest.precision != "fp32":
        raise VitedgeError(f"{model_path} is already {manifest.precision}",
                           "calibrate the FP32 export")
    out = Path(output) if output else default_table_path(model_path)
    source = calibration_source(options)
    batch = min(options.batch, max(source.count, 1))  # a few images make one short batch
    model_sha = sha256_file(model_path)
    data_info = {"source": str(source.path), "kind": source.kind, "count": source.count,
                 "fingerprint": source.fingerprint}
    if out.exists():
        try:
            old = CalibrationTable.read(out)
        except VitedgeError as exc:
            if not is_table_file(out):  # a user's file: never replaced
                raise VitedgeError(f"{out} exists and is not a vitedge calibration table; "
                                   "it is not replaced", "choose another -o") from exc
            old = None  # a vitedge table that is damaged or out of date: made again
        if old and table_matches(old, model_sha, source, options):
            return CalibrationResult(old, out, tensorrt_cache_path(out), reused=True,
                                     seconds=round(time.perf_counter() - began, 2))

    start = time.perf_counter()
    total_steps = source.count * (2 if options.smooth_alpha > 0 else 1)
    progress = _Steps(total_steps, rep)
    names = calibration_tensors(model)
    pairs = equalize.smoothing_pairs(model) if options.smooth_alpha > 0 else []
    hists, channels, seen = _collect(model, manifest, source, names, [p.tensor for p in pairs],
                                     batch, progress, rep.warning)
    table = CalibrationTable(options.key(), model_sha, data_info,
                             _ranges(hists, options), {k: v.tolist() for k, v in channels.items()})
    if pairs:
        factors = equalize.smoothing_factors(model, pairs, channels, options.smooth_alpha)
        smoothed = onnx.ModelProto()
        smoothed.CopyFrom(model)
        equalize.apply_smoothing(smoothed, pairs, factors)
        changed = [n for n in names if n in equalize.changed_tensors(model, pairs)]
        hists2, _, _ = _collect(smoothed, manifest, source, changed, [], batch, progress, None)
        table.smoothing = {k: v.tolist() for k, v in factors.items()}
        table.smoothed_tensors = _ranges(hists2, options)
    broken = list(dict.fromkeys(source.broken))
    table.stats = {
        "images": seen, "broken": broken[:20],
        "seconds": round(time.perf_counter() - start, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "made_by": made_by,
    }
    write_text_atomic(out, table.to_json())
    write_text_atomic(tensorrt_cache_path(out), tensorrt_cache(table))
    return CalibrationResult(table, out, tensorrt_cache_path(out), reused=False,
                             seconds=table.stats["seconds"])


def calibration_source(options: CalibrationOptions) -> ImageSource:
    """The images `options` says to calibrate on (a chosen ImageSource as it is)."""
    data = options.data
    if isinstance(data, ImageSource):
        return data
    return image_source(data, options.num_images, options.seed)


def table_matches(table: CalibrationTable, model_sha: str, source: ImageSource,
                  options: CalibrationOptions) -> bool:
    """Whether `table` is what calibrating that model on that data with those options makes
    (then it is reused, not made again)."""
    return table.model_sha256 == model_sha and table.data.get("fingerprint") == \
        source.fingerprint and table.options == options.key()


def table_differences(table: CalibrationTable, model_sha: str, source: ImageSource,
                      options: CalibrationOptions) -> list[str]:
    """What makes `table` other than what calibrating that model on that data with those
    options makes, in words; [] when it is that."""
    found = []
    if table.model_sha256 != model_sha:
        found.append("it was calibrated on another FP32 model")
    changed = [k for k, v in options.key().items() if table.options.get(k) != v]
    if changed:
        found.append("other options (" + ", ".join(
            f"{k} {table.options.get(k)} here {options.key()[k]}" for k in changed) + ")")
    if table.data.get("fingerprint") != source.fingerprint:
        same_place = Path(str(table.data.get("source", ""))).resolve() == Path(source.path).resolve()
        found.append(f"it was calibrated on {table.data.get('count')} images of "
                     f"{table.data.get('source')}, this calibration takes {source.count} of "
                     f"{source.path}" + (" (the others are held out to verify on)"
                                         if same_place else ""))
    return found


def own_table_for(model_path: str | Path, options: CalibrationOptions) -> Path | None:
    """The table at MODEL.calib.json when it is what `vitedge calibrate MODEL --data D` with
    `options` makes (same model, the same images of D, same options): a build on the same
    data may reuse it instead of calibrating on D less its held-out images."""
    path = default_table_path(model_path)
    if not path.is_file():
        return None
    try:
        table = CalibrationTable.read(path)
    except VitedgeError:
        return None
    if table.stats.get("made_by") == "build":
        return None
    same = table_matches(table, sha256_file(model_path), calibration_source(options), options)
    return path if same else None


class _Steps:
    def __init__(self, total: int, report: Reporter):
        self.done, self.total, self.report = 0, total, report

    def advance(self, n: int) -> None:
        self.done += n
        self.report.progress(self.done, self.total)


def _collect(model: onnx.ModelProto, manifest: Manifest, source: ImageSource, names: list[str],
             channel_names: list[str], batch: int, progress: _Steps,
             on_warning: Callable[[str], None] | None
             ) -> tuple[dict[str, TensorHistogram], dict[str, np.ndarray], int]:
    same_as = {k: v for k, v in value_aliases(model).items() if k not in channel_names}
    measured = list(dict.fromkeys([*(same_as.get(n, n) for n in names), *channel_names]))
    session = ort_session(with_outputs(model, measured), optimization="basic",
                          arena=False)
    input_name = session.get_inputs()[0].name
    fixed = session.get_inputs()[0].shape[0]
    hists = {n: TensorHistogram() for n in measured}
    channels: dict[str, np.ndarray] = {}
    seen = 0
    for x in batches(model_inputs(source, manifest, on_warning), batch):
        for chunk, real in _fit_batch(x, fixed):
            outputs = session.run(measured, {input_name: chunk})
            for name, value in zip(measured, outputs, strict=True):
                value = value[:real]
                hists[name].add(value)
                if name in channel_names:
                    cmax = np.abs(value).reshape(-1, value.shape[-1]).max(axis=0)
                    channels[name] = np.maximum(channels.get(name, cmax), cmax)
        seen += len(x)
        progress.advance(len(x))
    if seen == 0:
        raise VitedgeError(f"no image in {source.path} could be read")
    progress.advance(source.count - seen)
    return {n: hists[same_as.get(n, n)] for n in names}, channels, seen


def value_aliases(model: onnx.ModelProto) -> dict[str, str]:
    """Tensors that hold exactly the values of another (outputs of Reshape, Transpose,
    Identity), mapped to the tensor first computed: measured once."""
    root: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type in ("Reshape", "Transpose", "Identity"):
            root[node.output[0]] = root.get(node.input[0], node.input[0])
    return root


def _fit_batch(x: np.ndarray, fixed: Any) -> list[tuple[np.ndarray, int]]:
    """(chunk, rows that are real images) for a model exported with a static batch size:
    chunks of that size, the last padded by repeating its last image; the padding's
    activations are not counted."""
    if not isinstance(fixed, int) or fixed == len(x):
        return [(x, len(x))]
    chunks = []
    for i in range(0, len(x), fixed):
        chunk = x[i:i + fixed]
        real = len(chunk)
        if real < fixed:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed - real, axis=0)])
        chunks.append((chunk, real))
    return chunks


def _ranges(hists: dict[str, TensorHistogram], options: CalibrationOptions
            ) -> dict[str, dict[str, float]]:
    return {name: {"amax": amax_from_histogram(h, options.method, options.percentile),
                   "absmax": h.amax} for name, h in hists.items() if h.total}
