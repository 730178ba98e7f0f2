"""Precisions: the one vocabulary of their names. What vitedge makes, what a build, the
quantize stage, a device profile and a manifest take, every other module imports from here;
which precision each target accelerates with each backend is the precision table
(`vitedge.backends.precisions`).

fp32, fp16, bf16, int8 (W8A8 Q/DQ), int8-wo / int4-wo (weight-only GEMMs), fp8 (E4M3),
nvfp4 (E2M1 with E4M3 block scales). vitedge makes fp32, fp16, int8, fp8, nvfp4.
"""

from __future__ import annotations

FP32, FP16, INT8, FP8, NVFP4 = "fp32", "fp16", "int8", "fp8", "nvfp4"
AUTO = "auto"
"""A format per layer, the cheapest the target accelerates within an accuracy budget."""
MIXED = "mixed"
"""What a graph of `--precision auto` on a GPU computes in: a format per layer."""

MADE = (FP32, FP16, INT8, FP8, NVFP4)
"""The precisions vitedge makes: what a device profile and a build name (the others are in
the table for completeness)."""
BUILD = (*MADE, AUTO)
"""What `vitedge build --precision` takes."""
QUANTIZE = (INT8, FP16, FP8, NVFP4, AUTO)
"""What `vitedge quantize --precision` takes (an FP32 graph is not quantized)."""
RECORDED = (*MADE, MIXED)
"""What a manifest records its graph as computing in."""
LAYER_FORMATS = (FP16, INT8, FP8, NVFP4)
"""The formats one Linear layer of a mixed graph can be in."""
FP8_FAMILY = (FP8, NVFP4)
"""Q/DQ in an FP16 graph (`vitedge.quantize.mixed`), rather than in the FP32 graph."""
ALL_PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int8-wo", "int4-wo", "fp8", "nvfp4")
"""Every precision the table names."""
CHEAPEST_FIRST = (NVFP4, FP8, INT8, FP16, FP32)
"""Smallest and fastest first, where a target accelerates several (--precision auto)."""
