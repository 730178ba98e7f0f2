"""What several benchmarks share: random-weight models of named architectures, interleaved
latency, and device profiles that turn one ONNX Runtime setting of `vitedge build` off to
measure what it brings. Public vitedge API only (tests/test_benchmarks_public.py)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).parents[1]
CALIBRATION = ROOT / "calibration" / "fashion-mnist"


def export_random(arch: str, folder: Path) -> Path:
    """`folder/fp32.onnx`: a random-weight `arch` (timm initialisation), exported."""
    from vitedge.export import ExportOptions, export_onnx
    from vitedge.model import random_checkpoint

    checkpoint = random_checkpoint(arch, folder / "model.safetensors")
    out = folder / "fp32.onnx"
    export_onnx(checkpoint, out, ExportOptions(arch=arch, verify=False))
    return out


def camera_models(work: Path, skip_vits: bool) -> dict[str, Path]:
    """The models the camera benchmarks run, in `work`: the demo model in FP32, and (unless
    `skip_vits`) a random-weight ViT-S/16 built INT8 for this CPU."""
    from vitedge.deploy import BuildOptions, build
    from vitedge.export import ExportOptions, export_onnx

    demo = work / "demo.onnx"
    export_onnx(ROOT / "examples" / "fashion_mnist" / "vit_fmnist.safetensors", demo,
                ExportOptions())
    models = {"demo model (FP32)": demo}
    if not skip_vits:
        (work / "vits").mkdir()
        vits = export_random("vit_small_patch16_224", work / "vits")
        models["ViT-S/16 INT8"] = build(vits, work / "vits.int8.ort.onnx", BuildOptions(
            precision="int8", data=str(CALIBRATION))).artifact
    return models


def cpu_profile(folder: Path, name: str, **onnxruntime: object) -> str:
    """A copy of the `cpu` device profile with these [onnxruntime] settings (e.g.
    fusions=False, int8_weight_bits=8), as a TOML file `vitedge build --profile` takes."""
    from vitedge.target import load_profile

    base = load_profile("cpu")
    table = "".join(f"{k} = {str(v).lower() if isinstance(v, bool) else v}\n"
                    for k, v in onnxruntime.items())
    path = folder / f"{name}.toml"
    path.write_text(f'description = "{base.description}, {name}"\nbackend = "{base.backend}"\n'
                    f'precision = "{base.precision}"\n[onnxruntime]\n{table}')
    return str(path)


def build_unverified(model: Path, out: Path, profile: str) -> Path:
    """`vitedge build` of an ONNX model (FP32, or already quantized) as it is, with a
    profile and no verification (what is measured is speed, or the benchmark judges the
    artifact itself)."""
    from vitedge.backends import load_runner
    from vitedge.deploy import BuildOptions, build
    from vitedge.options import VerifyOptions

    with load_runner(model) as runner:
        precision = runner.manifest.precision
    build(model, out, BuildOptions(precision=precision, profile=profile,
                                   verify=VerifyOptions(enabled=False)))
    return out


def latency_ms(sessions: dict[str, object], x: np.ndarray, rounds: int = 40) -> dict[str, float]:
    """Median batch-1 latency per model, the models interleaved round by round so that
    machine noise hits them alike."""
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for s in sessions.values():
        for _ in range(3):
            s.run(None, {"images": x})  # type: ignore[attr-defined]
    for _ in range(rounds):
        for name, s in sessions.items():
            start = time.perf_counter()
            s.run(None, {"images": x})  # type: ignore[attr-defined]
            times[name].append((time.perf_counter() - start) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}
