"""Precisions: the one vocabulary of their names. What vitedge makes, what a build, the
quantize stage, a device profile and a manifest take, every other module imports from here;
which precision each target accelerates with each backend is the precision table
(`vitedge.backends.precisions`).

fp32, fp16, bf16, int8 (W8A8 Q/DQ), int8-wo / int4-wo (weight-only GEMMs), fp8 (E4M3),
nvfp4 (E2M1 with E4M3 block scales). vitedge makes fp32, fp16, int8, fp8, nvfp4, and bf16
where the backend computes it from the FP32 graph (OpenVINO on the CPU).
"""

from __future__ import annotations

FP32, BF16, FP16, INT8, FP8, NVFP4 = "fp32", "bf16", "fp16", "int8", "fp8", "nvfp4"
AUTO = "auto"
"""A format per layer, the cheapest the target accelerates within an accuracy budget."""
MIXED = "mixed"
"""What a graph of `--precision auto` on a GPU computes in: a format per layer."""

MADE = (FP32, FP16, INT8, FP8, NVFP4)
"""The precisions vitedge makes for every backend: what a device profile and a build name
(bf16 only a backend that computes it from the FP32 graph makes; the others are in the table
for completeness)."""
BUILD = (FP32, BF16, FP16, INT8, FP8, NVFP4, AUTO)
"""What `vitedge build --precision` takes."""
QUANTIZE = (INT8, FP16, FP8, NVFP4, AUTO)
"""What `vitedge quantize --precision` takes (an FP32 graph is not quantized)."""
RECORDED = (*MADE, BF16, MIXED)
"""What a manifest records its graph as computing in."""
FROM_FP32 = (FP32, BF16)
"""What a backend computes from the FP32 graph as it is: nothing is quantized for them (bf16
where the backend sets its arithmetic itself)."""
LAYER_FORMATS = (FP16, INT8, FP8, NVFP4)
"""The formats one Linear layer of a mixed graph can be in."""
FP8_FAMILY = (FP8, NVFP4)
"""Q/DQ in an FP16 graph (`vitedge.quantize.mixed`), rather than in the FP32 graph."""
ALL_PRECISIONS = (FP32, FP16, BF16, INT8, "int8-wo", "int4-wo", FP8, NVFP4)
"""Every precision the table names."""
CHEAPEST_FIRST = (NVFP4, FP8, INT8, FP16, FP32)
"""Smallest and fastest first, where a target accelerates several (--precision auto)."""


def precision_words(precision: str, float_parts: str | None) -> str:
    """`int8 (float parts bf16)`; just the precision where the float parts are it or unknown."""
    return precision if not float_parts or float_parts == precision else \
        f"{precision} (float parts {float_parts})"
