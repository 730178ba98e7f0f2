"""The CPU's instruction sets that decide how the CPU backends' integer (INT8) kernels add
up products, and so whether an INT8 model computes what its Q/DQ graph says; and the INT8
weight encoding that every CPU class computes exactly. Shared by the CPU backends: ONNX
Runtime's MLAS kernels and OpenVINO's oneDNN kernels use the same instructions (measured:
on an AVX2 CPU both lose top-1 agreement on the demo model's 8-bit weights, neither on 7).

ONNX Runtime runs a u8 activation x s8 weight GEMM (what its QDQ fusions make on x86)
with one of these kernels (MLAS, `qgemm_kernel_*`):
- AVX2 or AVX-512 without VNNI: `vpmaddubsw` multiplies byte pairs and adds each pair in a
  saturating 16-bit lane. 255 * 127 * 2 = 64770 does not fit in int16, so large
  activations against large weights are clipped: the result is not the Q/DQ graph's.
  With weights in -64..64 (7 bits) a pair is at most 2 * 255 * 64 = 32640, which fits.
- AVX-512 VNNI, AVX-VNNI (`vpdpbusd`) and AMX accumulate in 32 bits: exact.
- ARM64 with the dot-product extension (SDOT/UDOT, Jetson's Cortex-A78AE) and the plain
  NEON kernels widen to 16/32 bits before adding: exact.

Read through numpy's own CPUID-based dispatch table (numpy is already here, and it asks
the processor rather than the OS, so it is right under emulation too); AVX-VNNI and AMX,
which numpy does not list, come from Linux's /proc/cpuinfo when that agrees with numpy.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

SAFE_WEIGHT_MAX = 64
"""|int8 weight| at most this: no u8 x s8 pair overflows a 16-bit lane (2 * 255 * 64)."""


@dataclass(frozen=True)
class CpuInt8:
    """What this CPU offers ONNX Runtime's INT8 kernels."""

    arch: str
    features: tuple[str, ...]
    """The instruction sets that matter here, e.g. ("AVX2", "AVX512F", "AVX512_VNNI")."""
    kernel: str
    """The class of u8 x s8 kernel ONNX Runtime picks: avx2, avx512, avx512-vnni,
    avx-vnni, amx, arm64-dotprod, arm64, sse, other."""
    saturates: bool
    """True where that kernel adds product pairs in saturating 16-bit lanes."""

    def describe(self) -> str:
        names = ", ".join(self.features) or "no SIMD extension vitedge knows"
        if self.saturates:
            return (f"{self.arch} with {names}: ONNX Runtime's INT8 kernels add pairs of "
                    f"products in saturating 16-bit lanes here ({self.kernel}, no VNNI); 8-bit "
                    "weights can clip, 7-bit weights (vitedge build's CPU artifact) cannot")
        return (f"{self.arch} with {names}: ONNX Runtime's INT8 kernels accumulate in 32 "
                f"bits here ({self.kernel}); 7-bit and 8-bit weights are both exact")

    def to_dict(self) -> dict[str, object]:
        return {"arch": self.arch, "features": list(self.features), "kernel": self.kernel,
                "saturates": self.saturates}


def _numpy_features() -> dict[str, bool]:
    import importlib

    for name in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):  # 2.x, 1.x
        try:
            found = importlib.import_module(name).__cpu_features__
        except (ImportError, AttributeError):
            continue
        return {k: bool(v) for k, v in found.items()}
    return {}


def _linux_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def classify(arch: str, numpy_features: dict[str, bool], linux_flags: set[str]) -> CpuInt8:
    """The kernel class from what numpy's CPUID dispatch and /proc/cpuinfo report."""
    arch = {"AMD64": "x86_64", "arm64": "aarch64"}.get(arch, arch)
    has = {k for k, v in numpy_features.items() if v}
    if arch == "aarch64":
        dot = "ASIMDDP" in has or "asimddp" in linux_flags
        return CpuInt8(arch, ("NEON", "DOTPROD") if dot else ("NEON",),
                       "arm64-dotprod" if dot else "arm64", False)
    if arch not in ("x86_64", "i686", "x86"):
        return CpuInt8(arch, (), "other", False)
    # /proc/cpuinfo describes the host; under an emulator numpy's CPUID may say less.
    # Trust its extra flags (AVX-VNNI, AMX) only when it agrees with numpy on AVX-512.
    agrees = ("avx512f" in linux_flags) == ("AVX512F" in has) and \
        ("avx2" in linux_flags) == ("AVX2" in has)
    features = [name for name, key in (("AVX2", "AVX2"), ("AVX512F", "AVX512F"),
                                       ("AVX512_VNNI", "AVX512VNNI")) if key in has]
    if agrees:
        features += [name for name, flag in (("AVX_VNNI", "avx_vnni"), ("AMX_INT8", "amx_int8"))
                     if flag in linux_flags]
    if "AMX_INT8" in features:
        kernel = "amx"
    elif "AVX512_VNNI" in features:
        kernel = "avx512-vnni"
    elif "AVX_VNNI" in features:
        kernel = "avx-vnni"
    elif "AVX512F" in features:
        kernel = "avx512"
    elif "AVX2" in features:
        kernel = "avx2"
    else:
        kernel = "sse"
    # SSE-only x86 is rare; its kernels are not known to be exact, so it counts as saturating
    return CpuInt8("x86_64", tuple(features), kernel, kernel in ("avx2", "avx512", "sse"))


def cpu_name() -> str:
    """The processor's model name, e.g. 'Intel(R) Xeon(R) Platinum 8488C'."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@lru_cache(maxsize=1)
def cpu_int8() -> CpuInt8:
    """This machine's answer (asked once per process)."""
    return classify(platform.machine(), _numpy_features(), _linux_flags())


# --- the INT8 encoding every CPU class computes exactly --------------------------------------

WEIGHT_BITS = 7
WEIGHT_MAX = 2 ** (WEIGHT_BITS - 1) - 1
"""63: |w| <= 63 keeps 2 * 255 * |w| within a 16-bit lane (see above)."""
INTEGER_KERNEL_OPS = ("MatMulIntegerToFloat", "QAttention", "MatMulInteger", "QLinearMatMul",
                      "QLinearConv", "ConvInteger", "QGemm", "DynamicQuantizeMatMul")
"""Ops whose int8 weight ONNX Runtime multiplies in integers (after its QDQ fusions)."""


def seven_bit_weights(model: onnx.ModelProto) -> int:
    """Every constant int8 weight behind a symmetric DequantizeLinear requantized, in place,
    to at most |63| per channel (its scale raised to match); returns how many changed."""
    inits = {t.name: t for t in model.graph.initializer}
    changed = 0
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx"):
            continue
        weight = inits.get(node.input[0])
        scale = inits.get(node.input[1]) if len(node.input) > 1 else None
        zero = inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if weight is None or scale is None or weight.data_type != TensorProto.INT8:
            continue
        if zero is not None and numpy_helper.to_array(zero).any():
            continue  # asymmetric: not a vitedge graph's weight
        q = numpy_helper.to_array(weight).astype(np.int32)
        s = numpy_helper.to_array(scale).astype(np.float32)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % max(q.ndim, 1)
        shape = [1] * q.ndim
        if s.ndim == 1 and q.ndim:
            shape[axis] = -1
        reduce = tuple(i for i in range(q.ndim) if i != axis) if s.ndim == 1 else None
        peak = np.abs(q).max(axis=reduce) if q.size else np.zeros_like(s)
        factor = np.maximum(peak.astype(np.float32), WEIGHT_MAX) / WEIGHT_MAX
        if not (factor > 1).any():
            continue
        q7 = np.clip(np.round(q / factor.reshape(shape)), -WEIGHT_MAX, WEIGHT_MAX).astype(np.int8)
        weight.CopyFrom(numpy_helper.from_array(q7, weight.name))
        scale.CopyFrom(numpy_helper.from_array((s * factor).astype(np.float32), scale.name))
        changed += 1
    return changed


def largest_integer_weight(model: onnx.ModelProto) -> int:
    """The largest |int8 weight| that an integer kernel (or a weight DequantizeLinear)
    reads: at most WEIGHT_MAX means no CPU's kernels saturate on this model."""
    inits = {t.name: t for t in model.graph.initializer}
    largest = 0
    for node in model.graph.node:
        if node.op_type not in (*INTEGER_KERNEL_OPS, "DequantizeLinear"):
            continue
        for name in node.input:
            t = inits.get(name)
            if t is not None and t.data_type == TensorProto.INT8 and t.dims:
                largest = max(largest, int(np.abs(numpy_helper.to_array(t).astype(np.int32)).max()))
    return largest


def cpu_exact_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """A raw Q/DQ INT8 model (not built) with the weights ONNX Runtime's integer kernels
    compute exactly on every CPU, in place: the same numbers on an AVX2 laptop as on a
    VNNI server. Returns the model."""
    seven_bit_weights(model)
    return model
