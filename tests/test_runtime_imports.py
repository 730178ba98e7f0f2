"""The runtime must import on a device without torch (a Jetson camera app)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import vitedge
import vitedge.explain
import vitedge.runtime

TORCH_FREE = ["vitedge", "vitedge.manifest", "vitedge.model", "vitedge.model.config",
              "vitedge.artifact", "vitedge.doctor", "vitedge.cli", "vitedge.datasets",
              "vitedge.evaluate", "vitedge.quantize.quantizer", "vitedge.quantize.calibrate",
              "vitedge.bench", "vitedge.build", "vitedge.build.onnxruntime_fusions", "vitedge.profiles",
              *[f"vitedge.runtime.{m.name}" for m in pkgutil.iter_modules(vitedge.runtime.__path__)],
              *[f"vitedge.explain.{m.name}" for m in pkgutil.iter_modules(vitedge.explain.__path__)]]


def test_runtime_imports_without_torch():
    code = (
        "import sys, importlib\n"
        "sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
        f"for name in {TORCH_FREE!r}:\n"
        "    importlib.import_module(name)\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


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
    for mod in pkgutil.walk_packages(vitedge.__path__, "vitedge."):
        __import__(mod.name)
