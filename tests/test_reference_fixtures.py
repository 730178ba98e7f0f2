"""Parity against timm's and torchvision's own outputs, through committed fixtures made
by tests/fixtures/make_reference_fixtures.py (needs timm; not run in CI)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from vitedge.export import ExportOptions, export_onnx
from vitedge.model import load_checkpoint

from .conftest import FIXTURES, images_from_pixels, reference_cases, relative_error

TOL = 1e-4
CASES = reference_cases()


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_reference_logits(case, tmp_path):
    data = np.load(FIXTURES / case["expected"])
    x = images_from_pixels(data["pixels"])
    ref = data["logits"]
    imported = load_checkpoint(FIXTURES / case["checkpoint"], _import_options(case["options"]))
    with torch.no_grad():
        ours = imported.model(torch.from_numpy(x)).numpy()
    assert relative_error(ref, ours) <= TOL

    out = tmp_path / "model.onnx"
    export_onnx(FIXTURES / case["checkpoint"], out, ExportOptions(**case["options"]))
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    onnx_out = sess.run(None, {"images": x})[0]
    assert relative_error(ref, onnx_out) <= TOL
    assert (onnx_out.argmax(-1) == ref.argmax(-1)).all()


def _import_options(options):
    from vitedge.model.importer import ImportOptions

    return ImportOptions(**options)


def test_timm_hub_folder_brings_preprocessing_and_labels():
    imported = load_checkpoint(FIXTURES / "vit_tiny_hub")
    assert imported.source["format"] == "timm"
    assert imported.labels is not None and imported.labels[0] == "t-shirt"
    p = imported.preprocess
    # timm's eval transform for vit_tiny_patch16_224: bicubic, crop 0.9, mean/std 0.5
    assert (p.crop, p.resize, p.interpolation) == ((224, 224), (248, 248), "bicubic")
    assert p.mean == (0.5, 0.5, 0.5)


def test_float16_checkpoint_is_loaded_as_float32():
    imported = load_checkpoint(FIXTURES / "vit_tiny_fp16.safetensors",
                               _import_options({"num_heads": 3}))
    assert imported.source["stored_dtype"] == "float16"
    assert all(p.dtype == torch.float32 for p in imported.model.parameters())


def test_bfloat16_checkpoint_loads(tmp_path):
    from safetensors.torch import save_file

    base = load_checkpoint(FIXTURES / "vit_tiny_fp16.safetensors", _import_options({"num_heads": 3}))
    sd = {k: v.to(torch.bfloat16).contiguous() for k, v in base.model.state_dict().items()}
    save_file(sd, tmp_path / "bf16.safetensors")
    imported = load_checkpoint(tmp_path / "bf16.safetensors", _import_options({"num_heads": 3}))
    assert imported.source["stored_dtype"] == "bfloat16"
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        a, b = base.model(x), imported.model(x)
    assert torch.allclose(a, b, rtol=0.05, atol=0.05 * a.abs().max().item())


def test_resized_model_keeps_timm_crop_fraction():
    """At another image size the resize follows timm's floor(size / crop_pct), with the
    checkpoint's crop_pct (0.9 gives 320 at 288; the sizes 224/248 alone would give 319)."""
    import json
    import math

    pc = json.loads((FIXTURES / "vit_tiny_hub" / "config.json").read_text())["pretrained_cfg"]
    imported = load_checkpoint(FIXTURES / "vit_tiny_hub", _import_options({"img_size": 288}))
    expected = math.floor(288 / pc["crop_pct"])
    assert imported.preprocess.crop == (288, 288)
    assert imported.preprocess.resize == (expected, expected)
