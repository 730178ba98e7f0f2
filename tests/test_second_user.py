"""What the second new user tripped on (issue 31): the CLI's small promises, each checked
as the user met it."""

from __future__ import annotations

import json
import shutil

from tests.conftest import DEMO_CHECKPOINT, DEMO_TEST_IMAGES, run_cli

IMAGES = sorted(DEMO_TEST_IMAGES.glob("*/*.png"))[:2]


def test_export_refuses_an_engine_name_as_build_does(tmp_path, capsys):
    for name, hint in (("out.engine", "name it out.onnx; `vitedge build out.onnx` makes the "
                                      ".engine"),
                       ("out.ov.xml", "name it out.onnx; `vitedge build out.onnx` makes the "
                                      ".ov.xml")):
        out = tmp_path / name
        code, _, err = run_cli(["export", str(DEMO_CHECKPOINT), "-o", str(out)], capsys)
        assert code == 1
        assert err.strip().splitlines() == [f"error: -o {name} names a "
                                            f"{'tensorrt or tensorrt-rtx' if 'engine' in name else 'openvino'} "
                                            f"artifact ({out.suffix if 'engine' in name else '.ov.xml'}), "
                                            f"but export writes an ONNX model ({hint})"]
        assert not list(tmp_path.iterdir())


def test_explain_skips_a_corrupt_image_and_names_it(demo_fp32, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for i, src in enumerate(IMAGES):
        shutil.copy(src, images / f"good{i}.png")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "ex"
    code, stdout, err = run_cli(["explain", str(demo_fp32), str(images), "-o", str(out), "--json"],
                                capsys)
    assert code == 0, err
    result = json.loads(stdout)
    assert [s["image"] for s in result["skipped"]] == [str(images / "broken.png")]
    assert sorted(p.name for p in out.glob("*.png")) == ["good0.cls.png", "good1.cls.png"]
    assert f"warning: skipped {images / 'broken.png'}: " in err


def test_export_of_the_weights_file_in_a_hugging_face_folder_reads_its_config(tmp_path, capsys):
    import pytest

    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    labels = ["cat", "dog", "owl"]
    config = transformers.ViTConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                                    intermediate_size=96, image_size=32, patch_size=8,
                                    num_labels=3, id2label=dict(enumerate(labels)))
    folder = tmp_path / "hf_vit"
    transformers.ViTForImageClassification(config).eval().save_pretrained(folder)
    out = tmp_path / "m.onnx"
    code, _, err = run_cli(["export", str(folder / "model.safetensors"), "-o", str(out), "--json"],
                           capsys)
    assert code == 0, err
    from vitedge.manifest import manifest_from_file

    manifest = manifest_from_file(out)
    assert manifest.labels == labels and manifest.architecture.num_heads == 4
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(folder / "model.safetensors", alone / "weights.safetensors")
    code, _, err = run_cli(["export", str(alone / "weights.safetensors"), "-o",
                            str(tmp_path / "n.onnx")], capsys)
    assert code == 1
    assert "config.json" in err and "--arch" not in err and "vit_" not in err, err


def _options(command):
    import click

    return [p for p in command.params if isinstance(p, click.Option)]


def test_every_flag_of_every_command_has_help():
    from vitedge.cli import cli

    missing = [f"{name} {p.opts[0]}" for name, command in cli.commands.items()
               for p in _options(command) if not (p.help or "").strip()]
    assert missing == []


def test_flag_help_says_what_build_auto_and_each_batch_do():
    from vitedge.cli import cli

    def help_of(command, flag):
        return next(p.help for p in _options(cli.commands[command]) if flag in p.opts)

    assert "measures them here and keeps the fastest" in help_of("build", "--backend")
    assert ".ov.xml" in help_of("build", "-o")
    batches = {name: help_of(name, "--batch") for name, command in cli.commands.items()
               if any("--batch" in p.opts for p in _options(command))}
    meanings = {k: batches[k] for k in ("export", "calibrate", "build", "embed", "run", "bench",
                                        "eval")}
    assert len(set(meanings.values())) == len(meanings), meanings  # each says its own
    assert batches["quantize"] == batches["calibrate"]
    assert "calibration" in batches["calibrate"].lower()
    assert "optimization-profile" in batches["build"]
    assert "exported model's batch dimension" in batches["export"]


def test_click_s_errors_begin_as_vitedge_s_do(capsys):
    code, _, err = run_cli(["build", "x.onnx", "--no-such-flag"], capsys)
    assert code == 2
    assert err.strip().splitlines() == ["error: no such option '--no-such-flag' (`vitedge build "
                                        "--help` lists what it takes)"]
    code, _, err = run_cli(["build", "missing.onnx"], capsys)
    assert code == 1 and err.strip().startswith("error: ")
