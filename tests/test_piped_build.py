"""`vitedge build ... | cat`: a piped log shows each stage as it ends, not everything at the
end, and a Ctrl-C says what it interrupted (issue 31, item 5)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import DEMO_CALIBRATION, DEMO_CHECKPOINT, ROOT


def test_piped_build_output_arrives_stage_by_stage_and_ctrl_c_says_what_it_interrupted(tmp_path):
    ckpt = tmp_path / "fm.safetensors"
    shutil.copy(DEMO_CHECKPOINT, ckpt)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("COLUMNS", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "vitedge", "build", str(ckpt), "--precision", "int8", "--data",
         str(DEMO_CALIBRATION), "--backend", "onnxruntime"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    assert proc.stdout is not None
    first = proc.stdout.readline()  # the export's line, while the build goes on
    assert first.split()[0] == "export" and first.rstrip().endswith(" s"), first
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    (line,) = err.strip().splitlines()
    assert re.fullmatch(r"interrupted while building(, during (calibrate|quantize))? \(finished: "
                        r"export \d+\.\d\d s(, calibrate \d+\.\d\d s)?\); no partial file is left",
                        line), line
    assert "backend:" not in rest  # it never finished
    assert not list(Path(tmp_path).glob(".*"))  # no temporary file left behind
    assert not (tmp_path / "fm.int8.ort.onnx").exists()
