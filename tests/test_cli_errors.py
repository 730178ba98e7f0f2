"""Every bad input ends in one clear line, a non-zero exit code, no traceback and no
output file (not even a half-written one)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from vitedge.cli import main

from .conftest import FIXTURES


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def run_cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_clean_failure(tmp_path, code, err, expected):
    assert code != 0
    assert expected in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out.onnx").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.onnx")]


def make_bad_inputs(tmp_path):
    (tmp_path / "noise.pth").write_bytes(np.random.default_rng(0).bytes(2048))
    (tmp_path / "text.safetensors").write_text("not tensors")
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "bn1.weight": torch.zeros(64),
                "fc.weight": torch.zeros(10, 512)}, tmp_path / "resnet.pth")
    torch.save({"model": {"w": torch.zeros(1)}, "args": argparse.Namespace(lr=0.1)},
               tmp_path / "namespace.pth")
    torch.save({"model": Evil()}, tmp_path / "evil.pth")
    torch.save({"epoch": 3, "note": "no tensors"}, tmp_path / "empty.pth")
    (tmp_path / "labels3.txt").write_text("a\nb\nc\n")
    return tmp_path


BAD_EXPORTS = [
    (["missing.pth"], "no such file or folder"),
    (["noise.pth"], "is not a checkpoint vitedge can read"),
    (["text.safetensors"], "is not a readable safetensors file"),
    (["resnet.pth"], "no Vision Transformer found"),
    (["namespace.pth"], "refuses to unpickle"),
    (["evil.pth"], "refuses to unpickle"),
    (["empty.pth"], "holds no tensors"),
    ([str(FIXTURES / "vit_tiny_160.bin")], "--num-heads 3 is usual for embed dim 192"),
    ([str(FIXTURES / "vit_tiny_160.bin"), "--arch", "vit_tiny_patch16_22"], "did you mean"),
    ([str(FIXTURES / "vit_tiny_160.bin"), "--labels", "labels3.txt", "--num-heads", "3"],
     "3 labels for a model with 10 classes"),
    ([str(FIXTURES / "vit_tiny_160.bin"), "--opset", "13", "--num-heads", "3"], "--opset 13"),
]


@pytest.mark.parametrize("args,expected", BAD_EXPORTS, ids=[e for _, e in BAD_EXPORTS])
def test_bad_export_input(args, expected, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(make_bad_inputs(tmp_path))
    code, _, err = run_cli(["export", *args, "-o", "out.onnx"], capsys)
    assert_clean_failure(tmp_path, code, err, expected)


def test_random_bytes_are_never_an_internal_error(tmp_path):
    """torch.load fails on garbage with many exception types; all must read as one error."""
    from vitedge.errors import CheckpointError
    from vitedge.model.checkpoint import read_checkpoint

    rng = np.random.default_rng(1)
    path = tmp_path / "blob.pth"
    for _ in range(300):
        path.write_bytes(rng.bytes(int(rng.integers(1, 4096))))
        with pytest.raises(CheckpointError, match="is not a checkpoint vitedge can read"):
            read_checkpoint(path)


def test_evil_pickle_is_not_executed(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(make_bad_inputs(tmp_path))
    code, out, err = run_cli(["export", "evil.pth", "-o", "out.onnx"], capsys)
    assert code != 0 and "pwned" not in out + err


def test_misshaped_weights_are_listed(tmp_path, capsys):
    code, _, err = run_cli(["export", str(FIXTURES / "vit_tiny_160.bin"), "--arch",
                            "vit_small_patch16_224", "-o", str(tmp_path / "out.onnx")], capsys)
    assert_clean_failure(tmp_path, code, err, "mis-shaped (checkpoint != model)")
    assert "patch_embed.proj.weight 192x3x16x16 != 384x3x16x16" in err
    listed = err.split("mis-shaped (checkpoint != model): ")[1].split(" (+")[0].split(", ")
    assert len(listed) == 10 and "more)" in err


def test_missing_and_unexpected_keys_are_listed(tmp_path, capsys):
    from vitedge.model.checkpoint import read_checkpoint

    sd = dict(read_checkpoint(FIXTURES / "vit_tiny_160.bin").tensors)
    sd.pop("blocks.0.mlp.fc2.weight")
    sd["blocks.0.attn.q_norm.weight"] = torch.ones(64)
    torch.save(sd, tmp_path / "broken.pth")
    code, _, err = run_cli(["export", str(tmp_path / "broken.pth"), "--num-heads", "3",
                            "-o", str(tmp_path / "out.onnx")], capsys)
    assert_clean_failure(tmp_path, code, err, "missing: blocks.0.mlp.fc2.weight")
    assert "unexpected: blocks.0.attn.q_norm.weight" in err


def test_unsupported_timm_option(tmp_path, capsys):
    import json
    import shutil

    folder = tmp_path / "hub"
    shutil.copytree(FIXTURES / "vit_tiny_hub", folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_args"]["qk_norm"] = True
    (folder / "config.json").write_text(json.dumps(cfg))
    code, _, err = run_cli(["export", str(folder), "-o", str(tmp_path / "out.onnx")], capsys)
    assert_clean_failure(tmp_path, code, err, "unsupported timm model options: qk_norm=True")


@pytest.mark.parametrize("args,expected", [
    (["inspect", "missing.onnx"], "no such file"),
    (["inspect", "noise.pth"], "is not a checkpoint vitedge can read"),  # read as a checkpoint
])
def test_bad_inspect_input(args, expected, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(make_bad_inputs(tmp_path))
    code, _, err = run_cli(args, capsys)
    assert_clean_failure(tmp_path, code, err, expected)


def test_bad_batch_is_a_usage_error(tmp_path, capsys):
    code, _, err = run_cli(["export", "x.pth", "--batch", "0", "-o", "out.onnx"], capsys)
    assert code == 2 and "use 'dynamic' or a positive number" in err


def test_console_script_prints_one_line_and_debug_shows_traceback(tmp_path):
    exe = [sys.executable, "-m", "vitedge"]
    plain = subprocess.run([*exe, "export", str(tmp_path / "nope.pth"), "-o", "o.onnx"],
                           capture_output=True, text=True, cwd=tmp_path)
    assert plain.returncode == 1
    assert plain.stderr.strip().startswith("error: no such file or folder")
    assert "Traceback" not in plain.stderr
    debug = subprocess.run([*exe, "--debug", "export", str(tmp_path / "nope.pth"), "-o", "o.onnx"],
                           capture_output=True, text=True, cwd=tmp_path)
    assert debug.returncode == 1 and "Traceback" in debug.stderr
