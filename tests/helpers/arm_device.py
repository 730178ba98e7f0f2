"""Run under QEMU's aarch64 user-mode emulator by tests/test_arm.py, in the arm64 root file
system `make test-arm` prepares: what the emulated CPU is, and the demo INT8 model's logits
on its integer kernels, for the host to compare with the Q/DQ graphs computed in float.

    python arm_device.py CPUINFO IMAGES.npy ARTIFACT QDQ_8BIT OUT.npz
    python arm_device.py CPUINFO          (only write CPUINFO, before other programs run)

QEMU 7.2's user mode shows every emulated program the host's /proc/cpuinfo (x86 lines),
on which ONNX Runtime's CPU detection (pytorch/cpuinfo) crashes; QEMU's -L prefix serves
CPUINFO (the root file system's proc/cpuinfo) in its place. It is written here, before
ONNX Runtime loads, from what the emulated CPU itself reports: its MIDR_EL1 register and
the kernel's HWCAP words (the ones Linux turns into /proc/cpuinfo on a real Arm board)."""

from __future__ import annotations

import contextlib
import ctypes
import io
import json
import mmap
import sys

# Linux's arm64 HWCAP / HWCAP2 bits (arch/arm64/include/uapi/asm/hwcap.h) and the names
# arch/arm64/kernel/cpuinfo.c prints for them, in its order
HWCAP = ["fp", "asimd", "evtstrm", "aes", "pmull", "sha1", "sha2", "crc32", "atomics", "fphp",
         "asimdhp", "cpuid", "asimdrdm", "jscvt", "fcma", "lrcpc", "dcpop", "sha3", "sm3", "sm4",
         "asimddp", "sha512", "sve", "asimdfhm", "dit", "uscat", "ilrcpc", "flagm", "ssbs", "sb",
         "paca", "pacg"]
HWCAP2 = ["dcpodp", "sve2", "sveaes", "svepmull", "svebitperm", "svesha3", "svesm4", "flagm2",
          "frint", "svei8mm", "svef32mm", "svef64mm", "svebf16", "i8mm", "bf16", "dgh", "rng",
          "bti", "mte", "ecv", "afp", "rpres", "mte3", "sme", "smei16i64", "smef64f64",
          "smei8i32", "smef16f32", "smeb16f32", "smef32f32", "smefa64", "wfxt"]


def hwcap_words() -> tuple[int, int]:
    getauxval = ctypes.CDLL(None).getauxval
    getauxval.restype, getauxval.argtypes = ctypes.c_ulong, [ctypes.c_ulong]
    return int(getauxval(16)), int(getauxval(26))


def midr() -> int:
    """MIDR_EL1, read at EL0 as Linux allows where HWCAP_CPUID is set (`mrs x0, midr_el1`)."""
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(bytes.fromhex("000038d5c0035fd6"))  # mrs x0, midr_el1; ret
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    return int(ctypes.CFUNCTYPE(ctypes.c_uint64)(address)())


def cpuinfo_text(cores: int = 2) -> str:
    hwcap, hwcap2 = hwcap_words()
    features = [n for i, n in enumerate(HWCAP) if hwcap >> i & 1] + \
        [n for i, n in enumerate(HWCAP2) if hwcap2 >> i & 1]
    m = midr()
    core = (f"BogoMIPS\t: 50.00\nFeatures\t: {' '.join(features)}\n"
            f"CPU implementer\t: {m >> 24 & 0xFF:#04x}\nCPU architecture: 8\n"
            f"CPU variant\t: {m >> 20 & 0xF:#x}\nCPU part\t: {m >> 4 & 0xFFF:#05x}\n"
            f"CPU revision\t: {m & 0xF}\n\n")
    return "".join(f"processor\t: {i}\n{core}" for i in range(cores))


def main(cpuinfo: str, images: str, artifact: str, qdq: str, out: str) -> None:
    with open(cpuinfo, "w") as f:
        f.write(cpuinfo_text())

    import numpy as np
    import onnxruntime as ort

    import vitedge
    from vitedge.backends.cpu_int8 import cpu_int8, cpu_name
    from vitedge.backends.onnxruntime.runner import OnnxRuntimeRunner
    from vitedge.cli import main as cli

    x = np.load(images)
    # the artifact as vitedge runs it, and the 8-bit Q/DQ graph on ONNX Runtime's integer
    # kernels (its QDQ fusions on): does this CPU class need the 7-bit encoding?
    built = OnnxRuntimeRunner(artifact).infer(x)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(qdq, so, providers=["CPUExecutionProvider"])
    eight = session.run(["logits"], {session.get_inputs()[0].name: x})[0]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = cli(["doctor", "--json"])
    doctor = json.loads(printed.getvalue()) if code == 0 else {"exit": code}
    np.savez(out, artifact=built, eight_bit=eight, facts=json.dumps({
        "cpu": cpu_int8().to_dict(), "name": cpu_name(), "onnxruntime": ort.__version__,
        "python": sys.version.split()[0], "vitedge": vitedge.__file__, "doctor": doctor}))


if __name__ == "__main__":
    if len(sys.argv) == 2:
        with open(sys.argv[1], "w") as f:
            f.write(cpuinfo_text())
    else:
        main(*sys.argv[1:6])
