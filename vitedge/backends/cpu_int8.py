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
- ARM64: the plain NEON kernels (Cortex-A72, Raspberry Pi 4) widen products to 16/32
  bits before adding; the dot-product kernels (SDOT/UDOT, Armv8.2: Cortex-A76 / Raspberry Pi
  5, Jetson Orin's Cortex-A78AE) and the i8mm kernels (SMMLA/UMMLA, Armv8.6: Neoverse V1/V2,
  Graviton 3/4, Jetson Thor) accumulate in 32 bits: exact (measured under QEMU's cortex-a72,
  cortex-a76 and max models on the demo model: `make test-arm`). ONNX Runtime's Arm builds
  also carry KleidiAI kernels, which it uses for 4-bit and dynamically quantized MatMuls,
  not for the static Q/DQ graphs vitedge builds.

On Arm the features come from the kernel's HWCAP words (getauxval), which are right on the
hardware and under QEMU alike (QEMU's user mode shows the host's /proc/cpuinfo).

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
    avx-vnni, amx, arm64-i8mm, arm64-dotprod, arm64, sse, other."""
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


def cpuinfo_flags(text: str) -> set[str]:
    """The first processor's feature flags in /proc/cpuinfo's text ("flags" on x86,
    "Features" on Arm)."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def _linux_flags() -> set[str]:
    try:
        return cpuinfo_flags(Path("/proc/cpuinfo").read_text(errors="replace"))
    except OSError:
        return set()


ARM_FEATURES = (("DOTPROD", "asimddp", "ASIMDDP"), ("I8MM", "i8mm", ""), ("SVE", "sve", "SVE"),
                ("SVE2", "sve2", ""), ("BF16", "bf16", ""), ("SME", "sme", ""))
"""(name vitedge shows, Linux's feature name, numpy's) of the Arm extensions that matter to
INT8: SDOT/UDOT, SMMLA (i8mm), SVE, BF16 and SME (KleidiAI's matrix kernels)."""

HWCAP_BITS = {"asimddp": (1, 20), "sve": (1, 22), "sve2": (2, 1), "i8mm": (2, 13),
              "bf16": (2, 14), "sme": (2, 23)}
"""Linux's feature name -> (HWCAP word 1 or 2, bit): arch/arm64/include/uapi/asm/hwcap.h."""


def hwcap_flags(hwcap: int, hwcap2: int) -> set[str]:
    """Linux's feature names set in the two HWCAP words."""
    words = {1: hwcap, 2: hwcap2}
    return {name for name, (word, bit) in HWCAP_BITS.items() if words[word] >> bit & 1}


def _hwcap_words() -> tuple[int, int]:
    """AT_HWCAP and AT_HWCAP2 of this process (0, 0 where getauxval is missing)."""
    import ctypes

    try:
        getauxval = ctypes.CDLL(None).getauxval
    except (OSError, AttributeError):
        return 0, 0
    getauxval.restype, getauxval.argtypes = ctypes.c_ulong, [ctypes.c_ulong]
    return int(getauxval(16)), int(getauxval(26))


def _onnxruntime_has_kleidiai() -> bool:
    """Whether the installed ONNX Runtime was built with Arm's KleidiAI kernels (its build
    info does not say: its library is searched for them, without importing it)."""
    import importlib.util
    import mmap

    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        return False
    for folder in spec.submodule_search_locations:
        for lib in sorted(Path(folder, "capi").glob("onnxruntime_pybind11_state*.so")):
            try:
                with lib.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                    if m.find(b"ArmKleidiAI") >= 0:
                        return True
            except (OSError, ValueError):
                continue
    return False


def classify(arch: str, numpy_features: dict[str, bool], linux_flags: set[str],
             kleidiai: bool = False) -> CpuInt8:
    """The kernel class from what numpy's CPUID dispatch and /proc/cpuinfo (on Arm also
    HWCAP) report; `kleidiai`: ONNX Runtime's build carries Arm's KleidiAI kernels."""
    arch = {"AMD64": "x86_64", "arm64": "aarch64"}.get(arch, arch)
    has = {k for k, v in numpy_features.items() if v}
    if arch == "aarch64":
        # Linux's names (HWCAP or /proc/cpuinfo "Features"), numpy's where it has one
        found = [name for name, flag, key in ARM_FEATURES
                 if flag in linux_flags or (key and key in has)]
        kernel = "arm64-i8mm" if "I8MM" in found else \
            "arm64-dotprod" if "DOTPROD" in found else "arm64"
        if kleidiai:
            found.append("KleidiAI")
        return CpuInt8(arch, ("NEON", *found), kernel, False)
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


ARM_PARTS = {"0xd03": "Cortex-A53", "0xd07": "Cortex-A57", "0xd08": "Cortex-A72",
             "0xd0b": "Cortex-A76", "0xd0c": "Neoverse-N1", "0xd40": "Neoverse-V1",
             "0xd41": "Cortex-A78", "0xd42": "Cortex-A78AE", "0xd49": "Neoverse-N2",
             "0xd4f": "Neoverse-V2", "0xd83": "Neoverse-V3AE", "0xd84": "Neoverse-V3"}
"""Arm Ltd's CPU part numbers (/proc/cpuinfo "CPU part", implementer 0x41), which Arm Linux
reports instead of a model name."""


def cpu_name() -> str:
    """The processor's model name, e.g. 'Intel(R) Xeon(R) Platinum 8488C', or on Arm the
    core's, e.g. 'Arm Cortex-A78AE'."""
    arm: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
            if key.strip() in ("CPU implementer", "CPU part"):
                arm.setdefault(key.strip(), value.strip().lower())
    except OSError:
        pass
    if "CPU part" in arm:
        part, maker = arm["CPU part"], arm.get("CPU implementer", "")
        if maker == "0x41" and part in ARM_PARTS:
            return f"Arm {ARM_PARTS[part]}"
        return f"Arm CPU (implementer {maker or '?'}, part {part})"
    return platform.processor() or platform.machine()


@lru_cache(maxsize=1)
def cpu_int8() -> CpuInt8:
    """This machine's answer (asked once per process)."""
    arch = platform.machine()
    if arch in ("aarch64", "arm64"):
        return classify(arch, _numpy_features(), _linux_flags() | hwcap_flags(*_hwcap_words()),
                        _onnxruntime_has_kleidiai())
    return classify(arch, _numpy_features(), _linux_flags())


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
