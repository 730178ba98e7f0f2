"""What this machine offers vitedge, and what to install where something is missing."""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from vitedge import __version__


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def _version(module: str) -> str | None:
    try:
        mod = importlib.import_module(module)
    except Exception:  # noqa: BLE001 - a broken install is reported, not raised
        return None
    return str(getattr(mod, "__version__", None) or "installed")


def _tensorrt() -> Check:
    fix = "Jetson: it comes with JetPack; desktop: pip install tensorrt (NVIDIA's index)"
    try:
        trt = importlib.import_module("tensorrt")
    except Exception as exc:  # noqa: BLE001
        return Check("tensorrt", False, f"not importable ({type(exc).__name__})", fix)
    if not hasattr(trt, "Builder"):
        return Check("tensorrt", False, "only type stubs are installed (tensorrt-stubs)", fix)
    return Check("tensorrt", True, str(getattr(trt, "__version__", "?")))


def _tensorrt_rtx() -> Check:
    from vitedge.backends.tensorrt.flavours import TENSORRT_RTX

    trt = TENSORRT_RTX.import_module()
    if trt is None:
        return Check("tensorrt-rtx", False, "not installed",
                     "desktop / laptop RTX: pip install tensorrt-rtx-cu13 (Linux x86-64, Windows)")
    from vitedge.backends.tensorrt.device import gpu_info

    gpu = gpu_info()
    runs = (f"runs engines here on {gpu[0]} (compute {gpu[1]})" if gpu else
            "builds engines here without a GPU (--backend tensorrt-rtx, profile rtx-portable); "
            "they run on RTX GPUs")
    return Check("tensorrt-rtx", True, f"TensorRT for RTX {trt.__version__}: {runs}")


def jetson_model() -> str | None:
    p = Path("/proc/device-tree/model")
    try:
        return p.read_text(errors="replace").strip("\x00\n ") if p.exists() else None
    except OSError:
        return None


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
    checks = [
        Check("python", sys.version_info >= (3, 10), platform.python_version(),
              "vitedge needs Python 3.10 or newer"),
        Check("vitedge", True, __version__),
    ]
    ort = _version("onnxruntime")
    if ort:
        import onnxruntime

        providers = ", ".join(p.replace("ExecutionProvider", "")
                              for p in onnxruntime.get_available_providers())
        checks.append(Check("onnxruntime", True, f"{ort} (providers: {providers})"))
    else:
        checks.append(Check("onnxruntime", False, "missing", "pip install onnxruntime"))
    from vitedge.backends.onnxruntime.cpu import cpu_int8, cpu_name

    cpu = cpu_int8()
    checks.append(Check("cpu", True, f"{cpu_name()}: {cpu.describe()}"))
    torch = _version("torch")
    checks.append(Check("torch", torch is not None, torch or "missing (needed only for export)",
                        "" if torch else "pip install 'vitedge[export]'"))
    checks.append(_tensorrt())
    checks.append(_tensorrt_rtx())
    pycuda = _version("pycuda")
    cuda_python = None
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        cuda_python = importlib.metadata.version("cuda-python")
    checks.append(Check("pycuda", pycuda is not None, pycuda or "missing",
                        "" if pycuda else "Jetson: pip install pycuda (needs CUDA headers)"))
    checks.append(Check("cuda-python", cuda_python is not None, cuda_python or "missing",
                        "" if cuda_python else "pip install cuda-python (alternative to pycuda)"))
    gpu = _gpu()
    checks.append(gpu)
    jetson = jetson_model()
    checks.append(Check("jetson", jetson is not None, jetson or "not a Jetson"))
    from vitedge.profiles import suggest_profile

    name = suggest_profile(jetson, gpu.detail if gpu.ok and not jetson else None)
    checks.append(Check("profile", True, f"{name} (vitedge build --profile {name}; "
                        "`vitedge profiles` lists all)"))
    return checks
