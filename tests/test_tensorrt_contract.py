"""Contract with the real TensorRT runtime API, without a GPU: every TensorRT attribute and
method `vitedge/backends/tensorrt/runner.py` uses exists in TensorRT 11's runtime bindings
(`tensorrt_lean_bindings`, the real compiled module), and every method call passes a
number of arguments one of its signatures accepts. The builder side is checked by mypy
against the TensorRT 10.x stubs (`make typecheck`)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

trt = pytest.importorskip("tensorrt_lean_bindings")

BACKENDS = Path(__file__).parents[1] / "vitedge" / "backends"
SOURCE = BACKENDS / "tensorrt" / "runner.py"


def roots(module: object) -> dict[tuple[str, ...], object]:
    """How the runners name each TensorRT object -> the class it is in `module`."""
    return {("trt",): module, ("self", "trt"): module,
            ("self", "engine"): module.ICudaEngine,  # type: ignore[attr-defined]
            ("self", "context"): module.IExecutionContext,  # type: ignore[attr-defined]
            ("self", "runtime"): module.Runtime,  # type: ignore[attr-defined]
            **({("config",): module.IRuntimeConfig,  # type: ignore[attr-defined]
                ("self", "runtime_cache"): module.IRuntimeCache}  # type: ignore[attr-defined]
               if hasattr(module, "IRuntimeCache") else {})}


def contracts() -> list[tuple[str, Path, object]]:
    """(name, runner source, real bindings): TensorRT's runner against TensorRT 11's lean
    runtime; it and TensorRT for RTX's runner (which inherits it) against tensorrt_rtx."""
    found = [("tensorrt 11", SOURCE, trt)]
    try:
        import tensorrt_rtx
    except ImportError:
        return found
    return found + [("tensorrt-rtx", SOURCE, tensorrt_rtx),
                    ("tensorrt-rtx", BACKENDS / "tensorrt_rtx" / "runner.py", tensorrt_rtx)]


def chain(node: ast.AST) -> list[str] | None:
    """`self.context.set_input_shape` -> ['self', 'context', 'set_input_shape']."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(parts)]
    return None


def uses(source: Path = SOURCE, module: object = trt
         ) -> list[tuple[object, list[str], int | None, int]]:
    """(TensorRT object, attribute path, positional arguments if called, line)."""
    ROOTS = roots(module)  # noqa: N806
    tree = ast.parse(source.read_text())
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


ALL_USES = [(name, src, use) for name, src, module in contracts() for use in uses(src, module)]


@pytest.mark.parametrize("name, source, use", ALL_USES,
                         ids=[f"{n}:{s.parent.name}/{s.name}:line{u[3]}:{'.'.join(u[1])}"
                              for n, s, u in ALL_USES])
def test_every_runtime_call_exists_in_the_real_bindings(name, source, use):
    obj, path, nargs, line = use
    target = obj
    for attr in path:
        assert hasattr(target, attr), f"{source.name} line {line}: {'.'.join(path)} is not in {name}"
        target = getattr(target, attr)
    if nargs is not None and callable(target) and not isinstance(target, type):
        if path[-1] == "__init__":
            nargs -= 1  # Base.__init__(self) from a subclass passes self explicitly
        accepted = arities(target)
        if accepted:  # properties and enums have no signature
            assert any(nargs in r for r in accepted), \
                f"line {line}: {'.'.join(path)} called with {nargs} arguments; {name} " \
                f"takes {[(r.start, r.stop - 1) for r in accepted]}"


def test_layer_information_refuses_the_lean_runtime():
    """TensorRT 11's lean bindings return an unexposed IEngineInspector: on them the runner
    says what to install instead of failing inside TensorRT."""
    from vitedge.backends.tensorrt.runner import TensorRTRunner
    from vitedge.errors import VitedgeError

    assert hasattr(trt.ICudaEngine, "create_engine_inspector")
    runner = object.__new__(TensorRTRunner)  # no GPU here: only the guard is exercised
    runner.trt = trt
    with pytest.raises(VitedgeError, match="full runtime"):
        runner.layer_information()


def test_layer_profiler_is_a_real_tensorrt_profiler():
    """The profiler subclasses TensorRT 11's IProfiler, constructs, and adds up what
    TensorRT reports through the callback name the bindings declare."""
    from vitedge.backends.tensorrt.runner import layer_profiler

    totals: dict[str, float] = {}
    profiler = layer_profiler(trt, totals)
    assert isinstance(profiler, trt.IProfiler)
    assert hasattr(trt.IProfiler, "report_layer_time")
    profiler.report_layer_time("blocks.0.attn", 0.25)
    profiler.report_layer_time("blocks.0.attn", 0.5)
    assert totals == {"blocks.0.attn": 0.75}
