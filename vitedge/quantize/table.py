"""The calibration table: each activation's INT8 range (amax) with what it was measured
on (model and data fingerprints, options), and TensorRT's legacy calibration cache made
from it."""

from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitedge.errors import VitedgeError
from vitedge.inputs import read_json
from vitedge.quantize.histogram import INT8_MAX
from vitedge.version import __version__

TABLE_FORMAT = "vitedge.calibration"
TABLE_VERSION = 1
TENSORRT_CACHE_HEADER = "TRT-10300-{}"
"""The cache header names the TensorRT version, major * 1000 + minor * 100 + patch (as
TensorRT 8.2.3 writes TRT-8203): 10.3.0, JetPack 6's, and the calibrator. TensorRT skips a
cache it finds incompatible and calibrates again."""


@dataclass
class CalibrationTable:
    """tensor name -> INT8 range (amax), with what it was measured on."""

    options: dict[str, Any]
    model_sha256: str
    data: dict[str, Any]
    tensors: dict[str, dict[str, float]]
    channel_amax: dict[str, list[float]] = field(default_factory=dict)
    smoothing: dict[str, list[float]] = field(default_factory=dict)
    smoothed_tensors: dict[str, dict[str, float]] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)

    def ranges(self, smoothed: bool) -> dict[str, dict[str, float]]:
        """Each tensor's stats, for the model as given or as equalised."""
        return {**self.tensors, **self.smoothed_tensors} if smoothed else dict(self.tensors)

    def _content(self) -> dict[str, Any]:
        return {"options": self.options, "model_sha256": self.model_sha256, "data": self.data,
                "tensors": self.tensors, "channel_amax": self.channel_amax,
                "smoothing": self.smoothing, "smoothed_tensors": self.smoothed_tensors}

    def checksum(self) -> str:
        """sha256 of what the table says (not its stats): an edited table is refused."""
        return hashlib.sha256(json.dumps(self._content(), sort_keys=True).encode()).hexdigest()

    def to_json(self) -> str:
        return json.dumps({"format": TABLE_FORMAT, "version": TABLE_VERSION,
                           "vitedge_version": __version__, "stats": self.stats,
                           **self._content(), "checksum": self.checksum()}, indent=1)

    @classmethod
    def read(cls, path: str | Path) -> CalibrationTable:
        """The table at `path`, refused in one line when it is not one, was changed since it
        was written, or holds ranges no activation can have (not finite, not positive, or
        beyond MAX_AMAX)."""
        p = Path(path)
        d = read_json(p, "calibration table")
        if not isinstance(d, dict) or d.get("format") != TABLE_FORMAT:
            raise VitedgeError(f"{p} is not a vitedge calibration table",
                               "make one with `vitedge calibrate`")
        if not isinstance(d.get("version", 0), int) or d.get("version", 0) > TABLE_VERSION:
            raise VitedgeError(f"{p} was written by a newer vitedge", "upgrade vitedge")
        try:
            table = cls(d["options"], d["model_sha256"], d["data"], d["tensors"],
                        d.get("channel_amax", {}), d.get("smoothing", {}),
                        d.get("smoothed_tensors", {}), d.get("stats", {}))
        except KeyError as exc:
            raise VitedgeError(f"calibration table {p} lacks '{exc.args[0]}'") from exc
        _check_table(table, p)
        if "checksum" in d and d["checksum"] != table.checksum():
            raise VitedgeError(f"{p} was changed since vitedge wrote it (its checksum does not "
                               "match)", "recalibrate: vitedge calibrate MODEL --data SOURCE")
        return table

    def check_model(self, model_sha256: str, path: str | Path) -> None:
        if self.model_sha256 != model_sha256:
            raise VitedgeError(f"the calibration table was made for another model than {path}",
                               "calibrate this model: vitedge calibrate MODEL --data SOURCE")



def is_table_file(path: Path) -> bool:
    """Whether `path` is a file vitedge wrote as a calibration table (whatever its state)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return f'"format": "{TABLE_FORMAT}"'.encode() in head


MAX_AMAX = 1e6
"""The largest activation range a table may hold: ViT activations reach ~1e3-1e4 (the
residual outliers of ViT-B are about 1400); 1e6 leaves room and catches garbage."""


def _check_table(table: CalibrationTable, path: Path) -> None:
    for field_name in ("options", "data", "tensors", "channel_amax", "smoothing",
                       "smoothed_tensors", "stats"):
        if not isinstance(getattr(table, field_name), dict):
            raise VitedgeError(f"calibration table {path}: '{field_name}' must be an object")
    if not isinstance(table.model_sha256, str):
        raise VitedgeError(f"calibration table {path}: 'model_sha256' must be a string")
    for ranges in (table.tensors, table.smoothed_tensors):
        for name, r in ranges.items():
            amax: Any = r.get("amax") if isinstance(r, dict) else None
            if not _number(amax) or not 0 < amax <= MAX_AMAX:
                raise VitedgeError(f"calibration table {path}: the range of '{name}' is "
                                   f"{amax!r}, not a finite number in (0, {MAX_AMAX:g}]",
                                   "recalibrate: vitedge calibrate MODEL --data SOURCE")
    for factors in (table.smoothing, table.channel_amax):
        for name, values in factors.items():
            if not isinstance(values, list) or not all(_number(v) and v > 0 for v in values):
                raise VitedgeError(f"calibration table {path}: the factors of '{name}' must be "
                                   "positive finite numbers", "recalibrate")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def tensorrt_cache_path(table_path: str | Path) -> Path:
    p = Path(table_path)
    return p.with_name(p.name.removesuffix(".json").removesuffix(".calib") + ".trt-calib.cache")


def tensorrt_cache(table: CalibrationTable) -> str:
    """TensorRT's calibration cache (text): a header line, then `tensor: scale` with the
    scale (amax / 127) as the big-endian hex of a float32. For TensorRT <= 10 implicit
    INT8 builds of the FP32 model as given (not equalised)."""
    kind = {"entropy": "EntropyCalibration2", "minmax": "MinMaxCalibration"}.get(
        table.options["method"], "EntropyCalibration2")
    lines = [TENSORRT_CACHE_HEADER.format(kind)]
    for name, r in table.tensors.items():
        scale = max(r["amax"], 1e-12) / INT8_MAX
        lines.append(f"{name}: {struct.pack('>f', scale).hex()}")
    return "\n".join(lines) + "\n"
