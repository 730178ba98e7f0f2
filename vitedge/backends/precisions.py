"""Which precisions each target accelerates, per backend: the table `vitedge build` checks a
precision against before it builds, and `vitedge profiles NAME` / `doctor` show.

A target is a GPU compute capability ("8.9") or "cpu". A backend's column is one of
COLUMNS (`Backend.precision_column` says which applies). For each (target, column) the table
lists what the hardware runs natively; `SLOW` says what builds but is not accelerated, and
what it becomes. Sources: docs/sources.md#precisions (NVIDIA's TensorRT and TensorRT for RTX
support matrices, the CUDA compute-capability list, the JetPack release notes).

The precisions' names are `vitedge.precisions`' (`ALL_PRECISIONS` every one the table
names, `MADE` those vitedge makes).
"""

from __future__ import annotations

from dataclasses import dataclass

from vitedge.errors import VitedgeError
from vitedge.precisions import MADE

COLUMNS = ("tensorrt-10", "tensorrt-11", "tensorrt-rtx", "onnxruntime", "openvino")
COLUMN_NAMES = {"tensorrt-10": "TensorRT 10.x", "tensorrt-11": "TensorRT 11.x",
                "tensorrt-rtx": "TensorRT for RTX", "onnxruntime": "ONNX Runtime (CPU)",
                "openvino": "OpenVINO (CPU)"}

_TRT_AMPERE = "fp32 fp16 bf16 int8"
_TRT_FP8 = _TRT_AMPERE + " fp8"
_TRT_FP4 = _TRT_FP8 + " nvfp4"
_RTX = "fp32 fp16 bf16 int8-wo int4-wo"


@dataclass(frozen=True)
class Target:
    """One row: a compute capability and the devices that have it."""

    id: str
    devices: str
    runs: dict[str, str]
    """Column -> the precisions it accelerates there (space-separated); absent: the backend
    does not support the target at all."""
    source: str


SOURCE_TRT = ("TensorRT support matrix, hardware and precision; CUDA GPUs compute-capability "
              "list (docs/sources.md#precisions)")
SOURCE_RTX = "TensorRT for RTX 1.0-1.5 support matrix (docs/sources.md#precisions)"

TARGETS: tuple[Target, ...] = (
    Target("7.5", "Turing: T4, RTX 20xx, Quadro RTX",
           {"tensorrt-10": "fp32 fp16 int8", "tensorrt-11": "fp32 fp16 int8",
            "tensorrt-rtx": "fp32 fp16 int8-wo int4-wo"},
           f"{SOURCE_TRT}; {SOURCE_RTX} (7.5 only as an explicit target)"),
    Target("8.0", "Ampere data centre: A100, A30",
           {"tensorrt-10": _TRT_AMPERE, "tensorrt-11": _TRT_AMPERE, "tensorrt-rtx": _RTX},
           f"{SOURCE_TRT}; TensorRT for RTX CPU-only build page (8.0 among its targets)"),
    Target("8.6", "Ampere: RTX 30xx, A10, A40, RTX A-series",
           {"tensorrt-10": _TRT_AMPERE, "tensorrt-11": _TRT_AMPERE, "tensorrt-rtx": _RTX},
           f"{SOURCE_TRT}; {SOURCE_RTX}"),
    Target("8.7", "Jetson Orin (Nano, NX, AGX)",
           {"tensorrt-10": _TRT_AMPERE, "tensorrt-11": _TRT_AMPERE},
           f"{SOURCE_TRT}; JetPack 6 release notes (TensorRT for RTX has no Jetson build)"),
    Target("8.9", "Ada: RTX 40xx, L4, L40S, RTX 6000 Ada",
           {"tensorrt-10": _TRT_FP8, "tensorrt-11": _TRT_FP8, "tensorrt-rtx": _RTX + " fp8"},
           f"{SOURCE_TRT}; {SOURCE_RTX}"),
    Target("9.0", "Hopper: H100, H200, GH200",
           {"tensorrt-10": _TRT_FP8, "tensorrt-11": _TRT_FP8},
           f"{SOURCE_TRT} (TensorRT for RTX does not support SM 9.0)"),
    Target("10.0", "Blackwell data centre: B200, GB200",
           {"tensorrt-10": _TRT_FP4, "tensorrt-11": _TRT_FP4},
           f"{SOURCE_TRT}; NVFP4 from TensorRT 10.8"),
    Target("11.0", "Jetson AGX Thor (Blackwell, no DLA)",
           {"tensorrt-10": _TRT_FP4, "tensorrt-11": _TRT_FP4},
           f"{SOURCE_TRT}; JetPack 7.0/7.1 (TensorRT 10.13), TensorRT 11.4.1 from JetPack 7.2.2"),
    Target("12.0", "Blackwell: RTX 50xx, RTX PRO Blackwell",
           {"tensorrt-10": _TRT_FP4, "tensorrt-11": _TRT_FP4,
            "tensorrt-rtx": _RTX + " fp8 nvfp4"},
           f"{SOURCE_TRT}; {SOURCE_RTX}"),
    Target("12.1", "Blackwell: GB10 (DGX Spark)",
           {"tensorrt-10": _TRT_FP4, "tensorrt-11": _TRT_FP4,
            "tensorrt-rtx": _RTX + " fp8 nvfp4"},
           f"{SOURCE_TRT}; {SOURCE_RTX} (12.1 from 1.5)"),
    Target("cpu", "x86-64 and Arm CPUs",
           {"onnxruntime": "fp32 int8", "openvino": "fp32 bf16 int8"},
           "ONNX Runtime's and OpenVINO's CPU kernels: integer GEMMs (VNNI / AMX / AVX2 / "
           "NEON), no FP8 or FP4 math; FP16 runs through casts on most x86 CPUs; OpenVINO "
           "computes BF16 (--precision bf16, or an INT8 build's float parts where measured "
           "faster) on CPUs with AVX-512 BF16 or AMX and refuses it elsewhere"),
)

SLOW: dict[tuple[str, str], str] = {
    ("tensorrt-rtx", "int8"): (
        "INT8 activation GEMMs are not in TensorRT for RTX's support matrix: the Q/DQ graph "
        "builds, but its INT8 layers may run as weight-only INT8 or in FP16; measure it on the "
        "GPU (vitedge bench ENGINE_FP16 ENGINE_INT8) before shipping it"),
    ("onnxruntime", "fp16"): (
        "ONNX Runtime's CPU kernels compute FP16 through casts on most x86 CPUs: no faster than "
        "FP32"),
    ("openvino", "fp16"): (
        "OpenVINO's CPU plugin computes an FP16 graph in FP32 (or BF16): no faster than FP32"),
}
"""(column, precision) -> what a precision that builds there but is not accelerated becomes."""


def target(target_id: str) -> Target:
    for t in TARGETS:
        if t.id == target_id:
            return t
    raise VitedgeError(f"unknown target '{target_id}'",
                       f"one of {', '.join(t.id for t in TARGETS)}")


def accelerated(column: str, target_id: str) -> tuple[str, ...]:
    """What `target_id` runs natively with the backend of `column` (() where that backend
    does not support the target)."""
    return tuple(target(target_id).runs.get(column, "").split())


@dataclass(frozen=True)
class Verdict:
    """How one precision fares on one target with one backend."""

    target: str
    precision: str
    accelerated: bool
    builds: bool
    note: str = ""


def verdict(column: str, target_id: str, precision: str) -> Verdict:
    runs = accelerated(column, target_id)
    if precision in runs:
        return Verdict(target_id, precision, True, True)
    slow = SLOW.get((column, precision))
    if runs and slow:
        return Verdict(target_id, precision, False, True, slow)
    return Verdict(target_id, precision, False, False)


def check_precision(column: str, targets: tuple[str, ...], precision: str,
                    where: str, elsewhere: tuple[str, ...] = ()) -> list[str]:
    """Refuse `precision` in one line where a target of `where` (a profile) cannot run it
    with the backend of `column`, naming the profiles that do (`elsewhere`); the warnings
    where it builds but is not accelerated."""
    slow: dict[str, list[str]] = {}
    for t in targets:
        v = verdict(column, t, precision)
        if not v.builds:
            runs = [p for p in accelerated(column, t) if p in MADE]
            if not runs:
                raise VitedgeError(f"{where} targets {_what(t)}, which "
                                   f"{COLUMN_NAMES[column]} does not support",
                                   "choose a profile for this device (vitedge profiles)")
            raise VitedgeError(
                f"{where} targets {_what(t)}, which cannot run {precision} with "
                f"{COLUMN_NAMES[column]}; it runs {', '.join(runs)}",
                f"--precision {runs[-1]}, or a profile whose targets run {precision} "
                f"({', '.join(elsewhere) or 'none shipped'})")
        if not v.accelerated:
            slow.setdefault(v.note, []).append(t)
    return [f"{precision} on compute capabilit{'ies' if len(ts) > 1 else 'y'} {', '.join(ts)}: "
            f"{note}" if ts != ["cpu"] else f"{precision} on the CPU: {note}"
            for note, ts in slow.items()]


def _what(target_id: str) -> str:
    return "the CPU" if target_id == "cpu" else f"compute capability {target_id} ({target(target_id).devices})"


def table_rows(column: str, targets: tuple[str, ...]) -> list[tuple[str, str]]:
    """`vitedge profiles NAME` / `doctor`: each target's accelerated precisions, in rows."""
    rows = []
    for t in targets:
        runs = accelerated(column, t)
        slow = [p for (c, p) in SLOW if c == column and runs and p not in runs]
        text = ", ".join(runs) if runs else f"not supported by {COLUMN_NAMES[column]}"
        if slow:
            text += f" (builds, not accelerated: {', '.join(slow)})"
        rows.append((f"precisions, {t}", f"{text} [{COLUMN_NAMES[column]}]"))
    return rows
