"""The INT8 encoding ONNX Runtime's integer kernels compute exactly on every CPU.

vitedge's Q/DQ graph (what TensorRT builds) has symmetric 8-bit weights. ONNX Runtime runs
it on x86 as u8 activations x s8 weights, and on CPUs without VNNI (AVX2, AVX-512 without
VNNI: AMD Zen 2/3, Intel before Cascade Lake, Atom) its kernels add each pair of products
in a saturating 16-bit lane, so large activations against large weights are clipped and the
model silently computes something else (`vitedge.backends.cpu_int8`). With every weight within
-63..63 no pair can overflow, and the integer kernels give the graph's own numbers on every
CPU class (measured on the demo model under an AVX2 CPU: `benchmarks/RESULTS.md`).

`seven_bit_weights` requantizes each weight channel from its 8-bit integers: the channel's
largest |q| maps to 63 and its scale grows by the same factor. On the demo model and its
outlier-channel copy this changed top-1 agreement with FP32 by less than the noise of 2,000
images (99.60 -> 99.70 % and 99.60 -> 99.60 %), which is why it is the one encoding of the
ONNX Runtime artifact rather than one per CPU class; the Q/DQ graph given to TensorRT
keeps its 8 bits.
"""

from __future__ import annotations

from typing import Any

from vitedge.backends.cpu_int8 import (  # noqa: F401 - the encoding, shared by the CPU backends
    INTEGER_KERNEL_OPS,
    WEIGHT_BITS,
    WEIGHT_MAX,
    cpu_exact_graph,
    largest_integer_weight,
    seven_bit_weights,
)


def saturation_warnings(manifest: Any, name: str) -> list[str]:
    """Why a built INT8 artifact may compute wrong numbers on this CPU (one line each)."""
    from vitedge.backends.cpu_int8 import cpu_int8

    bits = int(manifest.source.get("int8_weight_bits", 8))
    cpu = cpu_int8()
    if manifest.precision != "int8" or bits <= WEIGHT_BITS or not cpu.saturates:
        return []
    return [f"{name} has 8-bit weights (built by vitedge {manifest.vitedge_version}) and this "
            f"CPU ({', '.join(cpu.features) or cpu.arch}, no VNNI) adds INT8 products in "
            "saturating 16-bit lanes, so its results can differ from its Q/DQ graph; "
            "rebuild it with `vitedge build` (7-bit weights, exact on every CPU)"]
