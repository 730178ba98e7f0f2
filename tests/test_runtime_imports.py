"""The arrows between vitedge's parts point one way (the rules are data:
tests/import_rules.toml), and everything but the PyTorch model imports without torch, so
the runtime runs on a device that has only numpy, Pillow and onnxruntime or TensorRT."""

from __future__ import annotations

import ast
import fnmatch
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import vitedge

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

RULES = tomllib.loads((Path(__file__).parent / "import_rules.toml").read_text())
PACKAGE = Path(vitedge.__file__).parent
MODULES = sorted(m.name for m in pkgutil.walk_packages(vitedge.__path__, "vitedge."))


def imported(module: str) -> set[str]:
    """Every vitedge module `module` imports, at the top or inside a function (not the
    names imported for type annotations only)."""
    path = PACKAGE.joinpath(*module.split(".")[1:])
    source = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    found: set[str] = set()
    tree = ast.parse(source.read_text())
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and getattr(node.test, "id", "") == "TYPE_CHECKING"
                   for n in ast.walk(node)}  # for annotations only: never imported at run time
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return {n for n in found if n.startswith("vitedge.") and n in MODULES or n == "vitedge"}


def matches(name: str, prefix: str) -> bool:
    pattern = prefix.replace(".", "\\.")
    parts = prefix.split(".")
    head = ".".join(name.split(".")[:len(parts)])
    return fnmatch.fnmatchcase(head, prefix) if "*" in pattern else \
        name == prefix or name.startswith(prefix + ".")


def test_rules_name_real_parts():
    """A rule about a part that does not exist (a typo, a rename) would pass forever."""
    for owner in RULES["forbidden"]:
        assert any(matches(m, owner) for m in MODULES), owner
    assert all(m in MODULES for m in RULES["torch"])


@pytest.mark.parametrize("module", MODULES)
def test_imports_point_one_way(module):
    for owner, banned in RULES["forbidden"].items():
        if not matches(module, owner):
            continue
        for target in imported(module):
            if matches(target, owner):
                continue  # a part may use itself
            wrong = [b for b in banned if matches(target, b)]
            assert not wrong, f"{module} imports {target}, which {owner} must not ({wrong[0]})"


def test_everything_but_the_pytorch_model_imports_without_torch():
    torch_free = [m for m in MODULES if m not in RULES["torch"]]
    code = (
        "import sys, importlib\n"
        "sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
        f"for name in {torch_free!r}:\n"
        "    importlib.import_module(name)\n"
        "print('torch' in sys.modules and sys.modules['torch'] is not None)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_export_without_torch_names_the_extra():
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "from vitedge.cli import main\n"
        "sys.exit(main(['export', 'x.pth', '-o', '/tmp/never.onnx']))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 1
    assert "pip install 'vitedge[export]'" in result.stderr


def test_every_module_imports():
    """The walk found the package (not an empty list), and each module imports, is the module
    of that name, and says what it is for (the PyTorch model's modules where torch is
    installed: a runtime-only environment has none)."""
    import importlib.util

    assert len(MODULES) > 50 and "vitedge.runtime.pipeline" in MODULES
    has_torch = importlib.util.find_spec("torch") is not None
    for name in MODULES:
        if name in RULES["torch"] and not has_torch:
            continue
        module = importlib.import_module(name)
        assert module.__name__ == name and (module.__doc__ or "").strip(), f"{name}: no docstring"


def test_nothing_reaches_back_to_the_package_front_door():
    """`vitedge/__init__.py` (vitedge.open) is for users: no module of vitedge imports it or
    a name from it (its version lives in vitedge.version); submodules it holds are fine."""
    found = []
    for module in MODULES:
        path = PACKAGE.joinpath(*module.split(".")[1:])
        source = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                found += [f"{module}: import vitedge" for a in node.names if a.name == "vitedge"]
            elif isinstance(node, ast.ImportFrom) and node.module == "vitedge" and node.level == 0:
                found += [f"{module}: from vitedge import {a.name}" for a in node.names
                          if f"vitedge.{a.name}" not in MODULES]
    assert not found, found
