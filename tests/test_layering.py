"""The import graph as the code has it (every `import` of a vitedge module, at the top or
inside a function; not those under `if TYPE_CHECKING:`, which never run) keeps the layers of
tests/import_rules.toml: no import runs from a layer up to a higher one, and no import
circles back to the module it started from."""

from __future__ import annotations

from tests.test_runtime_imports import MODULES, RULES, imported, matches

LAYERS: list[list[str]] = RULES["layers"]


def layer(module: str) -> int:
    """The index of `module`'s layer (0: the bottom), by its longest matching prefix."""
    found = [(len(prefix), i) for i, group in enumerate(LAYERS) for prefix in group
             if matches(module, prefix)]
    assert found, f"{module} is in no layer of tests/import_rules.toml: add it to one"
    return max(found)[1]


GRAPH = {module: imported(module) - {module} for module in MODULES}


def test_every_module_has_one_layer():
    for module in MODULES:
        layer(module)
    prefixes = [prefix for group in LAYERS for prefix in group]
    assert len(prefixes) == len(set(prefixes)), "a prefix is in two layers"
    for prefix in prefixes:  # a layer naming a module that is gone would pass forever
        assert any(matches(m, prefix) for m in MODULES), prefix


def test_no_import_runs_back_up_a_layer():
    upward = [f"{module} (layer {layer(module)}) imports {target} (layer {layer(target)})"
              for module, targets in sorted(GRAPH.items()) for target in sorted(targets)
              if layer(target) > layer(module)]
    assert not upward, upward


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm,
    iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_circles_are_found():
    """The finder itself, on a graph with one circle of three and a tail."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert circles(graph) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle():
    assert not circles(GRAPH), circles(GRAPH)
