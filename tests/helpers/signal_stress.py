"""Signals at random moments: run as `python tests/helpers/signal_stress.py WORK TRIALS SEED`
(tests/test_signals.py does). Imports vitedge (and torch) once, then for each trial forks a
child that runs one vitedge command (export, quantize, calibrate, build, run --output) over
an output that already exists, and sends it SIGTERM or SIGINT at a random moment of its
run. Prints one JSON line per trial: command, signal, delay, exit code, seconds from the
signal to the end, whether the previous output is intact or a complete new one, and what
was left (temporary files beside the output, scratch folders)."""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from pathlib import Path

WORK = Path(sys.argv[1])
TRIALS = int(sys.argv[2])
SEED = int(sys.argv[3])
DATA = str(WORK / "calib")
SCRATCH = WORK / "scratch"
os.environ["VITEDGE_SCRATCH"] = str(SCRATCH)

import torch  # noqa: E402,F401 - imported once here, not in every child

import vitedge.__main__  # noqa: E402
import vitedge.export  # noqa: E402,F401
import vitedge.quantize.quantizer  # noqa: E402,F401

COMMANDS = {
    "export": ["export", str(WORK / "vit.safetensors"), "-o", "{out}", "--no-verify"],
    "quantize": ["quantize", str(WORK / "fp32.onnx"), "--precision", "fp16", "-o", "{out}"],
    "calibrate": ["calibrate", str(WORK / "fp32.onnx"), "--data", DATA, "--num-images", "32",
                  "--percentile", "{percentile}", "-o", "{out}"],
    "build": ["build", str(WORK / "fp32.onnx"), "--precision", "fp32", "--no-verify", "-o",
              "{out}"],
    "run": ["run", str(WORK / "fp32.onnx"), "--source", DATA, "--max-frames", "40",
            "--output", "{out}"],
}
SUFFIX = {"export": ".onnx", "quantize": ".onnx", "calibrate": ".calib.json",
          "build": ".ort.onnx", "run": ".avi"}


def child(argv: list[str]) -> None:
    """In the forked child: the command, as the `vitedge` console script runs it. It never
    returns into this script's loop: a SIGINT that lands before vitedge set its handlers
    ends it as an uncaught KeyboardInterrupt ends Python (death by SIGINT)."""
    try:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115
        sys.argv = ["vitedge", *argv]
        vitedge.__main__.entry()
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    finally:
        os._exit(1)


def wait(pid: int, limit: float) -> tuple[int | None, float]:
    start = time.monotonic()
    while time.monotonic() - start < limit:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), time.monotonic() - start
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None, time.monotonic() - start


def run(name: str, sig: int, delay: float) -> dict:
    folder = WORK / f"out-{name}"
    folder.mkdir(exist_ok=True)
    out = folder / f"result{SUFFIX[name]}"
    before = out.read_bytes()
    argv = [a.replace("{out}", str(out)).replace("{percentile}", f"{99 + delay / 10:.4f}")
            for a in COMMANDS[name]]  # another table each time: none is reused
    ready, started = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(ready)
        os.write(started, b"1")  # Python runs in the child: its after-fork handling is done
        os.close(started)
        child(argv)
    os.close(started)
    os.read(ready, 1)  # the delay counts from there, however loaded the machine
    os.close(ready)
    time.sleep(delay)
    ended_before = os.waitpid(pid, os.WNOHANG)[0] != 0  # then the signal meets no process
    if ended_before:
        return {"command": name, "signal": sig, "delay": round(delay, 3), "ended_before": True}
    os.kill(pid, sig)
    code, seconds = wait(pid, 10.0)
    after = out.read_bytes() if out.exists() else b""
    left = [p.name for p in folder.iterdir() if p.name != out.name and ".vitedge-" in p.name]
    scratch = [p.name for p in SCRATCH.iterdir()] if SCRATCH.exists() else []
    return {"command": name, "signal": sig, "delay": round(delay, 3), "code": code,
            "seconds": round(seconds, 3), "intact": after == before,
            "complete": after != before and complete(name, out), "left": left,
            "scratch": scratch}


def complete(name: str, out: Path) -> bool:
    """A new output that is whole: it loads as what it should be."""
    try:
        if name == "calibrate":
            from vitedge.quantize.table import CalibrationTable

            CalibrationTable.read(out)
        elif name == "run":
            import cv2

            cap = cv2.VideoCapture(str(out))
            ok = cap.isOpened() and cap.read()[0]
            cap.release()
            return bool(ok)
        else:
            from vitedge.manifest import manifest_from_file

            return manifest_from_file(out) is not None
    except Exception:  # noqa: BLE001 - anything that does not load is not complete
        return False
    return True


def main() -> None:
    rng = random.Random(SEED)
    durations = {}
    for name in COMMANDS:  # each command once without a signal: its output, its duration
        folder = WORK / f"out-{name}"
        folder.mkdir(exist_ok=True)
        out = folder / f"result{SUFFIX[name]}"
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            child([a.replace("{out}", str(out)).replace("{percentile}", "99.99")
                   for a in COMMANDS[name]])
        code, _ = wait(pid, 120.0)
        assert code == 0 and out.exists(), (name, code)
        durations[name] = time.monotonic() - start
    print(json.dumps({"durations": durations}), flush=True)
    names = list(COMMANDS)
    for i in range(TRIALS):
        name = names[i % len(names)]
        sig = signal.SIGTERM if i % 2 == 0 else signal.SIGINT
        # the delay counts from the child's first Python line: a signal in the instant after
        # fork() is dropped by Python's after-fork handling, which a process started by exec
        # never goes through (on a loaded machine that instant lasts)
        print(json.dumps(run(name, sig, rng.uniform(0.005, durations[name]))), flush=True)


if __name__ == "__main__":
    main()
