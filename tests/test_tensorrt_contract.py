"""Contract with the real TensorRT runtime API, without a GPU: every TensorRT attribute and
method `vitedge/runtime/tensorrt_model.py` uses exists in TensorRT 11's runtime bindings
(`tensorrt_lean_bindings`, the real compiled module), and every method call passes a
number of arguments one of its signatures accepts. The builder side is checked by mypy
against the TensorRT 10.x stubs (`make typecheck`)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

trt = pytest.importorskip("tensorrt_lean_bindings")

SOURCE = Path(__file__).parents[1] / "vitedge" / "runtime" / "tensorrt_model.py"
# how the code names each TensorRT object -> the class it is
ROOTS = {
    ("trt",): trt,
    ("self", "trt"): trt,
    ("self", "engine"): trt.ICudaEngine,
    ("self", "context"): trt.IExecutionContext,
    ("self", "runtime"): trt.Runtime,
}


def chain(node: ast.AST) -> list[str] | None:
    """`self.context.set_input_shape` -> ['self', 'context', 'set_input_shape']."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(parts)]
    return None


def uses() -> list[tuple[object, list[str], int | None, int]]:
    """(TensorRT object, attribute path, positional arguments if called, line)."""
    tree = ast.parse(SOURCE.read_text())
    calls = {id(n.func): len(n.args) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or isinstance(getattr(node, "ctx", None), ast.Store):
            continue
        parts = chain(node)
        if not parts:
            continue
        for root, obj in ROOTS.items():
            if tuple(parts[:len(root)]) == root and len(parts) > len(root):
                found.append((obj, parts[len(root):], calls.get(id(node)), node.lineno))
    # keep the longest path per line and call (trt.Logger.WARNING covers trt.Logger)
    longest: dict[tuple[int, str], tuple[object, list[str], int | None, int]] = {}
    for obj, path, nargs, line in found:
        key = (line, path[0])
        if key not in longest or len(path) > len(longest[key][1]):
            longest[key] = (obj, path, nargs, line)
    return list(longest.values())


def arities(function: object) -> list[range]:
    """For each pybind11 signature, the accepted numbers of positional arguments (self
    excluded; parameters with a default are optional)."""
    doc = getattr(function, "__doc__", "") or ""
    name = getattr(function, "__name__", "")
    accepted = []
    for params in re.findall(rf"{re.escape(name)}\((.*?)\)\s*->", doc):
        names = [p.strip() for p in re.split(r",\s*(?=\w+:)", params) if p.strip() and "*" not in p]
        names = [p for p in names if not p.startswith("self")]
        required = len([p for p in names if "=" not in p])
        accepted.append(range(required, len(names) + 1))
    return accepted


def test_the_code_uses_tensorrt_at_all():
    paths = {".".join(p) for _, p, _, _ in uses()}
    assert {"get_tensor_name", "set_input_shape", "execute_async_v3",
            "deserialize_cuda_engine", "TensorIOMode.INPUT"} <= paths


@pytest.mark.parametrize("use", uses(), ids=lambda u: f"line{u[3]}:{'.'.join(u[1])}")
def test_every_runtime_call_exists_in_tensorrt_11(use):
    obj, path, nargs, line = use
    target = obj
    for attr in path:
        assert hasattr(target, attr), f"line {line}: {'.'.join(path)} is not in TensorRT 11"
        target = getattr(target, attr)
    if nargs is not None and callable(target) and not isinstance(target, type):
        if path[-1] == "__init__":
            nargs -= 1  # Base.__init__(self) from a subclass passes self explicitly
        accepted = arities(target)
        if accepted:  # properties and enums have no signature
            assert any(nargs in r for r in accepted), \
                f"line {line}: {'.'.join(path)} called with {nargs} arguments; TensorRT 11 " \
                f"takes {[(r.start, r.stop - 1) for r in accepted]}"


def test_layer_information_is_guarded_where_the_lean_runtime_lacks_the_inspector():
    """TensorRT 11's lean bindings return an unexposed IEngineInspector, so the code must
    ask for the full runtime before using one."""
    assert hasattr(trt.ICudaEngine, "create_engine_inspector")
    assert not hasattr(trt, "EngineInspector")
    assert 'hasattr(self.trt, "EngineInspector")' in SOURCE.read_text()


def test_profiler_callback_name_matches_tensorrt():
    assert hasattr(trt.IProfiler, "report_layer_time")
    assert "report_layer_time" in SOURCE.read_text()
