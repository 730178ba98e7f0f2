"""INT8 accuracy by CPU class: the demo model and its outlier-channel stress copy, built to
the ONNX Runtime INT8 artifact as `vitedge build` does (7-bit weights) and as it did before
(8-bit weights), run on this CPU and on an emulated AMD Zen 2 (QEMU user mode, `-cpu
EPYC-Rome`: AVX2, no AVX-512, no VNNI: the class whose integer kernels saturate), on the
2,000 shipped test images. Each is compared with the labels, with the FP32 export and with
its own Q/DQ graph computed in float (ONNX Runtime with every optimization off), which is
what TensorRT reads. Accuracy only: emulated times mean nothing.

Run on demand (needs `apt-get install qemu-user`; about 30 minutes on 2 cores, almost all
of it under emulation):
    .venv/bin/python benchmarks/int8_cpu_classes.py [--images N]
Appends a section to benchmarks/RESULTS.md."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import CALIBRATION, ROOT, build_unverified, cpu_profile
from results import machine, publish

TEST_IMAGES = ROOT / "evaluation" / "fashion-mnist"
CHECKPOINT = ROOT / "examples" / "fashion_mnist" / "vit_fmnist.safetensors"
EMULATED = "EPYC-Rome"

RUN_SCRIPT = """
import sys, numpy as np, onnxruntime as ort
from vitedge.bench import machine_info
x = np.load(sys.argv[1]); out = {"kernel": np.array(machine_info()["int8_kernels"])}
so = ort.SessionOptions(); so.intra_op_num_threads = 2
for i, path in enumerate(sys.argv[3:]):
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    out[f"m{i}"] = np.concatenate([s.run(["logits"], {s.get_inputs()[0].name: x[j:j + 200]})[0]
                                   for j in range(0, len(x), 200)])
np.savez(sys.argv[2], **out)
"""
"""Runs each model on ONNX Runtime's integer kernels as they are (the built artifacts are
already optimized), in a process of its own so that QEMU can emulate it."""


def logits_on(models: list[Path], x: np.ndarray, work: Path, emulate: str | None
              ) -> tuple[str, list[np.ndarray]]:
    np.save(work / "x.npy", x)
    (work / "run.py").write_text(RUN_SCRIPT)
    cmd = [sys.executable, str(work / "run.py"), str(work / "x.npy"), str(work / "out.npz"),
           *map(str, models)]
    if emulate:
        cmd = [shutil.which("qemu-x86_64") or shutil.which("qemu-x86_64-static")
               or "qemu-x86_64", "-cpu", emulate, *cmd]
    subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    out = np.load(work / "out.npz")
    return str(out["kernel"]), [out[f"m{i}"] for i in range(len(models))]


def float_graph(path: Path, x: np.ndarray) -> np.ndarray:
    from vitedge.sessions import ort_session

    s = ort_session(path, optimization="none")
    return s.run(["logits"], {s.get_inputs()[0].name: x})[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=2000, help="test images (of 2,000)")
    args = parser.parse_args()

    import onnx

    from vitedge.backends import get, load_runner
    from vitedge.compare import agreement
    from vitedge.datasets import image_source, labelled_folder, model_inputs
    from vitedge.deploy import BuildOptions, build
    from vitedge.export import ExportOptions, export_onnx
    from vitedge.quantize import with_outlier_channels

    if not (shutil.which("qemu-x86_64") or shutil.which("qemu-x86_64-static")):
        sys.exit("needs QEMU's user-mode emulator: apt-get install qemu-user")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        demo = work / "demo.onnx"
        export_onnx(CHECKPOINT, demo, ExportOptions())
        stress = work / "stress.onnx"
        stress.write_bytes(with_outlier_channels(onnx.load(str(demo))).SerializeToString())
        with load_runner(demo) as runner:
            manifest = runner.manifest
        eight_bit = cpu_profile(work, "8-bit", int8_weight_bits=8)
        items = labelled_folder(TEST_IMAGES, manifest.labels).items[: args.images]
        labels = np.array([label for _, label in items])
        (work / "test.txt").write_text("".join(f"{path}\n" for path, _ in items))
        x = np.stack(list(model_inputs(image_source(work / "test.txt"), manifest)))
        for name, fp32 in (("demo", demo), ("stress copy", stress)):
            seven = work / f"{fp32.stem}.int8.ort.onnx"
            build(fp32, str(seven), BuildOptions(precision="int8", data=str(CALIBRATION)))
            qdq = work / f"{fp32.stem}.int8.onnx"
            eight = work / f"{fp32.stem}.int8.8bit.ort.onnx"
            build_unverified(qdq, eight, eight_bit)  # saturates on this CPU class: not verified
            graph7 = get("onnxruntime").cpu_exact(onnx.load(str(qdq)))  # type: ignore[attr-defined]
            (work / "graph7.onnx").write_bytes(graph7.SerializeToString())
            reference = float_graph(fp32, x)
            graphs = {"8-bit": float_graph(qdq, x), "7-bit": float_graph(work / "graph7.onnx", x)}
            models = {"8-bit (before)": eight, "7-bit (vitedge build)": seven}
            for emulate in (None, EMULATED):
                kernel, outs = logits_on(list(models.values()), x, work, emulate)
                cpu = f"emulated {EMULATED} ({kernel})" if emulate else f"this CPU ({kernel})"
                for (label, _), logits in zip(models.items(), outs, strict=True):
                    own = graphs[label.split()[0]]
                    rows.append((name, label, cpu,
                                 100 * float((logits.argmax(1) == labels).mean()),
                                 agreement(reference, logits), agreement(own, logits)))
            top1 = 100 * float((reference.argmax(1) == labels).mean())
            rows.append((name, "FP32", "this CPU", top1, None, None))
    table = "".join(
        f"| {n} | {label} | {cpu} | {top1:.2f} % | "
        + (f"{100 * fp.top1_agreement:.2f} % | {100 * own.top1_agreement:.2f} % | "
           f"{own.max_abs:.3f} |\n" if fp is not None else "- | - | - |\n")
        for n, label, cpu, top1, fp, own in rows)
    section = (
        "\n## INT8 accuracy by CPU class (`benchmarks/int8_cpu_classes.py`)\n\n"
        f"Machine: {machine()}; the AVX2 class emulated with QEMU user mode (`-cpu {EMULATED}`, "
        f"an AMD Zen 2: AVX2, no AVX-512, no VNNI). {len(labels)} shipped test images "
        "(`evaluation/fashion-mnist`), calibration on the 384 images of "
        "`calibration/fashion-mnist` that `vitedge build` does not hold out. \"vs own graph\" "
        "compares with the same weights' Q/DQ graph computed in float (what TensorRT reads).\n\n"
        "| model | ONNX Runtime artifact weights | CPU (INT8 kernels) | top-1 | top-1 agreement "
        "vs FP32 | top-1 agreement vs own graph | max abs logit error vs own graph |\n"
        "|---|---|---|---|---|---|---|\n" + table)
    publish(section)


if __name__ == "__main__":
    main()
