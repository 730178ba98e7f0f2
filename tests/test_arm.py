"""The runtime and the demo INT8 artifact on arm64, under QEMU's user-mode emulator with
three Arm CPU models, one per INT8 kernel class of ONNX Runtime's MLAS:
- cortex-a72: plain NEON, no dot-product (Raspberry Pi 4);
- cortex-a76: SDOT/UDOT (Raspberry Pi 5; the class of Jetson Orin's Cortex-A78AE);
- max: i8mm (SMMLA), SVE, SVE2, BF16, SME (the class of Graviton 3/4 and Jetson Thor).
Each runs the artifact on the shipped test images, checked on the host against its own Q/DQ
graph computed in float (ONNX Runtime, optimizations off), as tests/test_int8_cpu.py does
on x86; and the 8-bit Q/DQ graph on the integer kernels, to see whether the class saturates.

`make test-arm` prepares the arm64 root file system (Debian's python3 from the OS mirror,
aarch64 wheels from PyPI, this package's wheel) and sets VITEDGE_ARM_ROOT; without it these
tests skip. Timings under QEMU are not performance: nothing here is timed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.conftest import DEMO_TEST_IMAGES, ROOT
from vitedge.backends.cpu_int8 import seven_bit_weights
from vitedge.backends.onnxruntime.runner import OnnxRuntimeRunner
from vitedge.compare import agreement
from vitedge.datasets import image_source, model_inputs

ARM = Path(os.environ["VITEDGE_ARM_ROOT"]) if os.environ.get("VITEDGE_ARM_ROOT") else None
QEMU = shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")
IMAGES = int(os.environ.get("VITEDGE_ARM_IMAGES", "300"))
"""Images per CPU model: ~0.1-0.3 s each under emulation on a loaded 2-core machine."""
DEVICE = Path(__file__).parent / "helpers" / "arm_device.py"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(ARM is None or QEMU is None,
                       reason="needs the arm64 root file system and QEMU: make test-arm"),
]

MODELS = {
    # QEMU model -> (ONNX Runtime's kernel class, the Arm extensions QEMU documents for it)
    "cortex-a72": ("arm64", ("NEON",)),
    "cortex-a76": ("arm64-dotprod", ("NEON", "DOTPROD")),
    "max": ("arm64-i8mm", ("NEON", "DOTPROD", "I8MM", "SVE", "SVE2", "BF16")),
}


def qemu(model: str, args: list[str], cwd: Path, timeout: float = 1800,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The arm64 root file system's python3 under QEMU's CPU `model`; the host's paths are
    seen as they are (QEMU's -L prefix serves the root file system's files first)."""
    assert ARM is not None and QEMU is not None
    rootfs = ARM / "rootfs"
    environment = {"PATH": "/usr/bin:/bin", "HOME": str(cwd), "LANG": "C.UTF-8",
                   "PYTHONPATH": str((ARM / "site").resolve()),
                   "VITEDGE_SCRATCH": str(cwd / "scratch"), **(env or {})}
    return subprocess.run([QEMU, "-L", str(rootfs), "-cpu", model,
                           str(rootfs / "usr" / "bin" / "python3"), *args],
                          cwd=cwd, env=environment, capture_output=True, text=True,
                          timeout=timeout, check=False)


def cpuinfo_of(model: str, cwd: Path) -> None:
    """The root file system's proc/cpuinfo, as the emulated CPU describes itself."""
    assert ARM is not None
    result = qemu(model, [str(DEVICE), str(ARM / "rootfs" / "proc" / "cpuinfo")], cwd)
    assert result.returncode == 0, result.stderr[-2000:]


def record(model: str, facts: dict[str, object]) -> None:
    """What each CPU model measured, for the report (VITEDGE_ARM_RESULTS, a JSON file)."""
    path = os.environ.get("VITEDGE_ARM_RESULTS")
    if not path:
        return
    target = Path(path)
    found = json.loads(target.read_text()) if target.exists() else {}
    found[model] = facts
    target.write_text(json.dumps(found, indent=2) + "\n")


@pytest.fixture(scope="module")
def inputs(demo_artifacts, tmp_path_factory) -> dict[str, object]:
    """IMAGES shipped test images, preprocessed, and the host's float references."""
    work = tmp_path_factory.mktemp("arm")
    manifest = OnnxRuntimeRunner(demo_artifacts["fp32"]).manifest
    x = np.stack(list(model_inputs(image_source(DEMO_TEST_IMAGES, IMAGES), manifest)))
    np.save(work / "x.npy", x)
    from tests.test_runtime_portable import float_graph

    own = onnx.load(str(demo_artifacts["qdq"]))
    seven_bit_weights(own)
    return {"work": work, "x": work / "x.npy", "own": float_graph(own, x),
            "eight": float_graph(demo_artifacts["qdq"], x)}


@pytest.mark.parametrize("model", list(MODELS))
def test_int8_artifact_computes_its_qdq_graph_on_each_arm_class(demo_artifacts, inputs, model):
    kernel, extensions = MODELS[model]
    work = inputs["work"]
    out = work / f"{model}.npz"
    result = qemu(model, [str(DEVICE), str(ARM / "rootfs" / "proc" / "cpuinfo"),
                          str(inputs["x"]), str(demo_artifacts["artifact"]),
                          str(demo_artifacts["qdq"]), str(out)], work)
    assert result.returncode == 0, result.stderr[-3000:]
    got = np.load(out)
    facts = json.loads(str(got["facts"]))
    built = agreement(inputs["own"], got["artifact"])
    eight = agreement(inputs["eight"], got["eight_bit"])
    cpu = next(c for c in facts["doctor"]["checks"] if c["name"] == "cpu")
    record(model, {"images": IMAGES, "doctor": cpu["detail"], "cpu": facts["cpu"], "name": facts["name"],
                   "onnxruntime": facts["onnxruntime"], "python": facts["python"],
                   "artifact_vs_own_qdq_graph": built.top1_agreement,
                   "artifact_max_abs": built.max_abs,
                   "eight_bit_vs_its_graph": eight.top1_agreement,
                   "eight_bit_max_abs": eight.max_abs})
    assert Path(facts["vitedge"]).is_relative_to((ARM / "site").resolve())  # the wheel
    assert facts["cpu"]["kernel"] == kernel and not facts["cpu"]["saturates"], facts["cpu"]
    assert all(e in facts["cpu"]["features"] for e in extensions), facts["cpu"]
    if model == "cortex-a72":
        assert "DOTPROD" not in facts["cpu"]["features"]
    assert f"({kernel})" in cpu["detail"] and "aarch64 with NEON" in cpu["detail"], cpu
    assert built.top1_agreement >= 0.995, built
    # no Arm class saturates (each widens or accumulates in 32 bits): 8-bit weights too
    assert eight.top1_agreement >= 0.995 and eight.max_abs < 0.1, eight


@pytest.mark.parametrize("model", ["cortex-a76"])
def test_runtime_tests_pass_on_arm(demo_artifacts, tmp_path, model):
    """tests/test_runtime_portable.py (vitedge.open, predict, run on a video, bench, eval,
    doctor) under the emulated CPU, on the installed wheel."""
    cpuinfo_of(model, tmp_path)
    result = qemu(model, ["-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "--import-mode=importlib", "--rootdir", str(ROOT),
                          str(ROOT / "tests" / "test_runtime_portable.py")], tmp_path,
                  env={"VITEDGE_DEMO_ARTIFACTS": str(demo_artifacts["fp32"].parent),
                       "VITEDGE_RUNTIME_IMAGES": "64",
                       "VITEDGE_EXPECT_KERNEL": MODELS[model][0],
                       # the C resampler, where tools/arm_root.sh cross-compiled it
                       "VITEDGE_EXPECT_NATIVE": "1" if (ARM / "native").is_file() else "0"})
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert " passed" in summary and not any(w in summary for w in ("skipped", "failed", "error")), \
        result.stdout[-2000:]


VITS = "vit_small_patch16_224"
VITS_IMAGES = int(os.environ.get("VITEDGE_ARM_VITS_IMAGES", "8"))
"""ViT-S/16 images per CPU model: a few seconds each under emulation."""


@pytest.fixture(scope="module")
def vits(tmp_path_factory) -> dict[str, object]:
    """An INT8 ViT-S/16 (random weights, timm's layout) built on the host for ONNX Runtime,
    its Q/DQ graph, VITS_IMAGES test images at 224, and the host's float references."""
    pytest.importorskip("torch", reason="builds ViT-S/16 on the host")
    from tests.test_runtime_portable import float_graph
    from vitedge.cli import main
    from vitedge.export import ExportOptions, export_onnx
    from vitedge.model import random_checkpoint

    work = tmp_path_factory.mktemp("arm-vits")
    fp32 = work / "vits.onnx"
    export_onnx(random_checkpoint(VITS, work / "vits.safetensors"), fp32,
                ExportOptions(arch=VITS, verify=False))
    artifact = work / "vits.int8.ort.onnx"
    assert main(["build", str(fp32), "--precision", "int8", "--data", str(DEMO_TEST_IMAGES),
                 "--num-images", "64", "--verify-images", "16", "--backend", "onnxruntime",
                 "-o", str(artifact)]) == 0
    qdq = work / "vits.int8.onnx"
    manifest = OnnxRuntimeRunner(fp32).manifest
    x = np.stack(list(model_inputs(image_source(DEMO_TEST_IMAGES, VITS_IMAGES, seed=1),
                                   manifest)))
    np.save(work / "x.npy", x)
    own = onnx.load(str(qdq))
    seven_bit_weights(own)
    return {"work": work, "x": work / "x.npy", "artifact": artifact, "qdq": qdq,
            "own": float_graph(own, x), "eight": float_graph(qdq, x)}


@pytest.mark.parametrize("model", list(MODELS))
def test_int8_vit_s_computes_its_qdq_graph_on_each_arm_class(vits, model):
    """An INT8 ViT-S/16 (vitedge's 7-bit CPU encoding) on each Arm kernel class under QEMU,
    against its own Q/DQ graph computed in float on the host: the same answer on every image
    whose answer is decided, and the logits' cosine of a correct integer computation."""
    work = vits["work"]
    out = work / f"{model}.npz"
    result = qemu(model, [str(DEVICE), str(ARM / "rootfs" / "proc" / "cpuinfo"),
                          str(vits["x"]), str(vits["artifact"]), str(vits["qdq"]), str(out)],
                  work)
    assert result.returncode == 0, result.stderr[-3000:]
    got = np.load(out)
    assert json.loads(str(got["facts"]))["cpu"]["kernel"] == MODELS[model][0]
    built = agreement(vits["own"], got["artifact"])
    eight = agreement(vits["eight"], got["eight_bit"])
    record(f"{model} ViT-S/16", {"images": VITS_IMAGES, "artifact_vs_own_qdq_graph": {
        "top1": built.top1_agreement, "decided": built.decided,
        "decided_top1": built.decided_agreement, "cosine_min": built.cosine_min},
        "eight_bit_vs_its_graph": {"top1": eight.top1_agreement, "cosine_min": eight.cosine_min}})
    assert built.decided_agreement == 1.0 and built.cosine_min > 0.999, built


def test_an_openvino_fp32_ir_built_here_computes_fp32_on_arm(demo_artifacts, inputs, tmp_path):
    """The FP32 demo model built into an OpenVINO IR on this x86 host, run by OpenVINO's
    aarch64 wheel under QEMU (cortex-a76, which has FP16 arithmetic: OpenVINO's Arm default
    would compute in FP16): it computes in FP32, as its precision says, and matches the FP32
    graph to float rounding."""
    assert ARM is not None
    if not (ARM / "site" / "openvino").is_dir():
        pytest.skip("OpenVINO's aarch64 wheel did not install (tools/arm_root.sh said why)")
    pytest.importorskip("openvino")
    from tests.test_runtime_portable import float_graph
    from vitedge.deploy import BuildOptions, build

    ir = tmp_path / "fm.fp32.ov.xml"
    build(demo_artifacts["fp32"], ir, BuildOptions(precision="fp32", backend="openvino"))
    cpuinfo_of("cortex-a76", tmp_path)
    script = tmp_path / "run.py"
    script.write_text(
        "import json, sys, numpy as np\n"
        "from vitedge.backends import load_runner\n"
        "x = np.load(sys.argv[1])[:32]\n"
        "with load_runner(sys.argv[2]) as r:\n"
        "    np.savez(sys.argv[3], logits=r.infer(x), facts=json.dumps({\n"
        "        'backend': r.backend, 'float_parts': r.float_parts}))\n")
    out = tmp_path / "out.npz"
    result = qemu("cortex-a76", [str(script), str(inputs["x"]), str(ir), str(out)], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    got = np.load(out)
    facts = json.loads(str(got["facts"]))
    x = np.load(inputs["x"])[:32]
    same = agreement(float_graph(onnx.load(str(demo_artifacts["fp32"])), x), got["logits"])
    record("cortex-a76 OpenVINO FP32", {"images": len(x), **facts, "relative": same.relative,
                                        "top1": same.top1_agreement})
    assert facts == {"backend": "openvino", "float_parts": "fp32"}, facts
    assert same.top1_agreement == 1.0 and same.relative <= 1e-4, same.describe()
