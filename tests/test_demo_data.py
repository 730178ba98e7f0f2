"""`vitedge demo-data DIR` gives a pip user the tour's files: the demo checkpoint and the
calibration and evaluation images, the same pixels and names as the repository's (issue
31, item 12)."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from tests.conftest import DEMO_CALIBRATION, DEMO_CHECKPOINT, DEMO_TEST_IMAGES, run_cli


def test_demo_data_writes_the_repository_s_demo_files(tmp_path, capsys):
    folder = tmp_path / "tour"
    code, out, err = run_cli(["demo-data", "-o", str(folder), "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["images"] == {"calibration/fashion-mnist": 512,
                                         "evaluation/fashion-mnist": 2000}
    assert (folder / "vit_fmnist.safetensors").read_bytes() == DEMO_CHECKPOINT.read_bytes()
    for ours, theirs in ((folder / "calibration" / "fashion-mnist", DEMO_CALIBRATION),
                         (folder / "evaluation" / "fashion-mnist", DEMO_TEST_IMAGES)):
        names = sorted(p.relative_to(theirs) for p in theirs.glob("*/*.png"))
        assert sorted(p.relative_to(ours) for p in ours.glob("*/*.png")) == names
        for name in names[::97]:
            assert np.array_equal(np.asarray(Image.open(ours / name)),
                                  np.asarray(Image.open(theirs / name).convert("L")))
        assert (ours / "README.md").read_text() == (theirs / "README.md").read_text()
    code, _, err = run_cli(["demo-data", "-o", str(folder)], capsys)
    assert code == 1 and "is already there (choose an empty folder)" in err
