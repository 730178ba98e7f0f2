"""`vitedge inspect`: parameter count against the reference model, GMACs against the
published figures, tokens, op histogram."""

from __future__ import annotations

import json

import pytest
import torch

from vitedge.cli import main
from vitedge.describe import describe_onnx
from vitedge.export import export_onnx
from vitedge.model.archs import find_arch
from vitedge.model.formats import config_from_timm_args

from .conftest import FIXTURES


@pytest.mark.parametrize("arch,published", [
    ("vit_tiny_patch16_224", 1.26), ("vit_small_patch16_224", 4.61),
    ("vit_base_patch16_224", 17.58),
])
def test_gmacs_match_published_figures(arch, published):
    cfg = config_from_timm_args(find_arch(arch).args)
    assert cfg.macs() / 1e9 == pytest.approx(published, rel=0.01)


def test_inspect_reports_the_model(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    export_onnx(FIXTURES / "vit_tiny_hub", out)
    info = describe_onnx(out)
    from vitedge.model import load_checkpoint

    ref_params = sum(p.numel() for p in load_checkpoint(FIXTURES / "vit_tiny_hub").model.parameters())
    # the exported graph folds cls_token into one prefix-token tensor: same count
    assert info["parameters"] == ref_params
    assert info["tokens"] == {"patches": 196, "prefix": 1, "total": 197, "grid": [14, 14]}
    assert info["op_histogram"]["LayerNormalization"] == 2 * 2 + 1
    assert info["op_histogram"]["Softmax"] == 2
    assert info["precision"]["qdq_nodes"] == 0
    assert info["inputs"][0]["shape"] == ["batch", 3, 224, 224]

    assert main(["inspect", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["gmacs"] == info["gmacs"]
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "GMACs" in text and "t-shirt" in text


def test_inspect_without_manifest(tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(g), str(tmp_path / "plain.onnx"))
    assert main(["inspect", str(tmp_path / "plain.onnx")]) == 0
    assert "not made by vitedge" in capsys.readouterr().out


def test_pos_embed_resampling_matches_timm_formula():
    """Resampling to the same grid is the identity; to a new grid keeps the prefix."""
    from vitedge.model.vit import resample_pos_embed

    pos = torch.randn(1, 1 + 14 * 14, 8)
    assert torch.equal(resample_pos_embed(pos, (14, 14), (14, 14), 1), pos)
    out = resample_pos_embed(pos, (14, 14), (18, 18), 1)
    assert out.shape == (1, 1 + 18 * 18, 8) and torch.equal(out[:, :1], pos[:, :1])
