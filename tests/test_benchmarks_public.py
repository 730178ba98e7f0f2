"""The benchmarks measure vitedge as its users meet it: through the public API (the package
and the stage functions the CLI calls, the backends' registry), never a backend's, the
model's or quantize's internals, and without patching sys.path."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).parents[1] / "benchmarks").glob("*.py"))
PUBLIC = {"vitedge", "vitedge.backends", "vitedge.bench", "vitedge.compare", "vitedge.datasets",
          "vitedge.deploy", "vitedge.errors", "vitedge.evaluate", "vitedge.explain", "vitedge.export",
          "vitedge.model", "vitedge.options", "vitedge.profiles", "vitedge.quantize",
          "vitedge.quantize.calibrate", "vitedge.runtime", "vitedge.serve", "vitedge.sessions", "vitedge.target"}
"""The package front door, the stages' modules and the base modules the CLI's library calls
live in (`vitedge.quantize.calibrate` holds the calibrate stage; `vitedge.sessions` computes
any ONNX graph)."""


@pytest.mark.parametrize("script", BENCHMARKS, ids=[p.name for p in BENCHMARKS])
def test_a_benchmark_uses_the_public_api_only(script):
    tree = ast.parse(script.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vitedge"):
            assert node.module in PUBLIC, f"{script.name}: from {node.module} import ..."
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("vitedge"):
                    assert alias.name in PUBLIC, f"{script.name}: import {alias.name}"
        elif isinstance(node, ast.Attribute) and node.attr in ("insert", "append") and \
                isinstance(node.value, ast.Attribute) and node.value.attr == "path" and \
                getattr(node.value.value, "id", "") == "sys":
            pytest.fail(f"{script.name} patches sys.path")
    for name in ("RUN_SCRIPT",):  # code a benchmark runs in a subprocess
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == name:
                inner = ast.parse(node.value.value)  # type: ignore[attr-defined]
                modules = [n.module for n in ast.walk(inner) if isinstance(n, ast.ImportFrom)]
                assert all(m in PUBLIC for m in modules if m and m.startswith("vitedge")), modules


def test_the_shared_helpers_build_what_they_say(demo_fp32, tmp_path):
    """benchmarks/common.py's profiles really switch the ONNX Runtime settings off."""
    import onnx

    sys.path.insert(0, str(BENCHMARKS[0].parent))
    try:
        from common import build_unverified, cpu_profile
    finally:
        sys.path.pop(0)
    plain = build_unverified(demo_fp32, tmp_path / "plain.ort.onnx",
                             cpu_profile(tmp_path, "plain", fusions=False))
    fused = build_unverified(demo_fp32, tmp_path / "fused.ort.onnx", "cpu")
    ops = {p.name: {n.op_type for n in onnx.load(str(p)).graph.node} for p in (plain, fused)}
    assert "MultiHeadAttention" in ops["fused.ort.onnx"]
    assert "MultiHeadAttention" not in ops["plain.ort.onnx"]
