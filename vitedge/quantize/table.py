"""The calibration table: each activation's INT8 range (amax) with what it was measured
on (model and data fingerprints, options), and TensorRT's legacy calibration cache made
from it."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitedge import __version__
from vitedge.errors import VitedgeError
from vitedge.quantize.histogram import INT8_MAX

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

    def to_json(self) -> str:
        return json.dumps({
            "format": TABLE_FORMAT, "version": TABLE_VERSION, "vitedge_version": __version__,
            "options": self.options, "model_sha256": self.model_sha256, "data": self.data,
            "stats": self.stats, "tensors": self.tensors, "channel_amax": self.channel_amax,
            "smoothing": self.smoothing, "smoothed_tensors": self.smoothed_tensors,
        }, indent=1)

    @classmethod
    def read(cls, path: str | Path) -> CalibrationTable:
        p = Path(path)
        try:
            d = json.loads(p.read_text())
        except FileNotFoundError as exc:
            raise VitedgeError(f"no such calibration table: {p}") from exc
        except (ValueError, UnicodeDecodeError) as exc:
            raise VitedgeError(f"{p} is not a calibration table (not JSON)") from exc
        if not isinstance(d, dict) or d.get("format") != TABLE_FORMAT:
            raise VitedgeError(f"{p} is not a vitedge calibration table",
                               "make one with `vitedge calibrate`")
        if d.get("version", 0) > TABLE_VERSION:
            raise VitedgeError(f"{p} was written by a newer vitedge", "upgrade vitedge")
        try:
            return cls(d["options"], d["model_sha256"], d["data"], d["tensors"],
                       d.get("channel_amax", {}), d.get("smoothing", {}),
                       d.get("smoothed_tensors", {}), d.get("stats", {}))
        except KeyError as exc:
            raise VitedgeError(f"calibration table {p} lacks '{exc.args[0]}'") from exc

    def check_model(self, model_sha256: str, path: str | Path) -> None:
        if self.model_sha256 != model_sha256:
            raise VitedgeError(f"the calibration table was made for another model than {path}",
                               "calibrate this model: vitedge calibrate MODEL --data SOURCE")



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
