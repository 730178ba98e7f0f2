"""What this machine offers vitedge, and what to install where something is missing: the
machine's own checks here, each backend's from its `Backend.doctor`."""

from __future__ import annotations

import importlib
import platform
import shutil
import subprocess
import sys
from dataclasses import replace

from vitedge.backends.base import Check
from vitedge.machine import jetson_model
from vitedge.version import __version__

__all__ = ["Check", "jetson_model", "run_checks"]


def _version(module: str) -> str | None:
    try:
        mod = importlib.import_module(module)
    except Exception:  # noqa: BLE001 - a broken install is reported, not raised
        return None
    return str(getattr(mod, "__version__", None) or "installed")


def _precisions(profile_name: str) -> Check:
    """What the suggested profile's targets accelerate (the precision table)."""
    from vitedge.backends.precisions import table_rows
    from vitedge.target import load_profile, target_for

    target = target_for(load_profile(profile_name))
    rows = table_rows(target.column, target.targets)
    return Check("precisions", True, "; ".join(f"{k.removeprefix('precisions, ')}: {v}"
                                               for k, v in rows) or "no target known")


def _gpu() -> Check:
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name,compute_cap,driver_version",
                                  "--format=csv,noheader"], capture_output=True, text=True,
                                 timeout=10, check=False).stdout.strip()
            if out:
                return Check("gpu", True, out.splitlines()[0])
        except (OSError, subprocess.SubprocessError):
            pass
    jetson = jetson_model()
    if jetson:
        return Check("gpu", True, f"{jetson} (integrated)")
    return Check("gpu", False, "no NVIDIA GPU found",
                 "vitedge runs on the CPU with ONNX Runtime; TensorRT needs an NVIDIA GPU")


def run_checks() -> list[Check]:
    from vitedge.backends import all_backends
    from vitedge.target import suggest_profile

    checks = [
        Check("python", sys.version_info >= (3, 10), platform.python_version(),
              "vitedge needs Python 3.10 or newer"),
        Check("vitedge", True, __version__),
    ]
    torch = _version("torch")
    checks.append(Check("torch", torch is not None, torch or "missing (needed only for export)",
                        "" if torch else "pip install 'vitedge[export]'"))
    for backend in all_backends():
        checks += backend.doctor()
    gpu = _gpu()
    checks.append(gpu)
    jetson = jetson_model()
    checks.append(Check("jetson", jetson is not None, jetson or "not a Jetson"))
    name = suggest_profile(jetson, gpu.detail if gpu.ok and not jetson else None)
    checks.append(Check("profile", True, f"{name} (vitedge build --profile {name}; "
                        "`vitedge profiles` lists all)"))
    checks.append(_precisions(name))
    return [c if not c.ok else replace(c, fix="") for c in checks]  # a fix only where needed
