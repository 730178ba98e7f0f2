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
