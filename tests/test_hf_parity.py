"""Parity against Hugging Face's own ViT / DeiT implementations (random init, perturbed),
through vitedge's reader, PyTorch model and exported ONNX on ONNX Runtime."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

transformers = pytest.importorskip("transformers")

from vitedge.export import ExportOptions, export_onnx  # noqa: E402
from vitedge.model import load_checkpoint  # noqa: E402

from .conftest import relative_error  # noqa: E402

TOL = 1e-4

CONFIGS = {
    "p16_64px": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, image_size=64, patch_size=16),
    "p32_96px": dict(hidden_size=96, num_hidden_layers=2, num_attention_heads=3,
                     intermediate_size=192, image_size=96, patch_size=32),
    "p16_80px_no_qkv_bias": dict(hidden_size=48, num_hidden_layers=3, num_attention_heads=2,
                                 intermediate_size=96, image_size=80, patch_size=16, qkv_bias=False),
    "p14_224px": dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=128, image_size=224, patch_size=14),
}


def _perturb(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def _save(model, folder, preprocessor: dict | None = None):
    model.save_pretrained(folder)
    if preprocessor:
        (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return folder


def _images(size: int, n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((n, 3, size, size),
                                                                        dtype=np.float32))


def _check(folder, hf_out: np.ndarray, x: torch.Tensor, tmp_path, input_kind="images"):
    imported = load_checkpoint(folder)
    with torch.no_grad():
        ours = imported.model(x).numpy()
    assert relative_error(hf_out, ours) <= TOL
    out = tmp_path / f"model_{input_kind}.onnx"
    export_onnx(folder, out, ExportOptions(input_kind=input_kind))
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    feed = x.numpy()
    if input_kind == "patches":
        from vitedge.runtime.patchify import patches_from_images

        feed = patches_from_images(feed, imported.config.patch_size)
    onnx_out = sess.run(None, {input_kind: feed})[0]
    assert onnx_out.shape == hf_out.shape
    assert relative_error(hf_out, onnx_out) <= TOL
    return imported


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_vit_for_image_classification(name, tmp_path):
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(num_labels=7, **CONFIGS[name])
    hf = _perturb(transformers.ViTForImageClassification(cfg), 1)
    x = _images(cfg.image_size)
    with torch.no_grad():
        ref = hf(pixel_values=x).logits.numpy()
    imported = _check(_save(hf, tmp_path / "hf"), ref, x, tmp_path)
    assert imported.source["format"] == "hf"
    assert imported.config.patch_size == cfg.patch_size
    assert imported.config.img_size == (cfg.image_size, cfg.image_size)


def test_patch_input_model_matches(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(num_labels=5, **CONFIGS["p32_96px"])
    hf = _perturb(transformers.ViTForImageClassification(cfg), 2)
    x = _images(cfg.image_size)
    with torch.no_grad():
        ref = hf(pixel_values=x).logits.numpy()
    _check(_save(hf, tmp_path / "hf"), ref, x, tmp_path, input_kind="patches")


def test_vit_model_without_head_exports_features(tmp_path):
    cfg = transformers.ViTConfig(**CONFIGS["p16_64px"])
    hf = _perturb(transformers.ViTModel(cfg, add_pooling_layer=True), 3)
    x = _images(cfg.image_size)
    with torch.no_grad():
        ref = hf(pixel_values=x).last_hidden_state[:, 0].numpy()
    imported = _check(_save(hf, tmp_path / "hf"), ref, x, tmp_path)
    assert imported.config.num_classes == 0


@pytest.mark.parametrize("teacher", [True, False])
def test_deit(teacher, tmp_path):
    cfg = transformers.DeiTConfig(num_labels=6, **CONFIGS["p16_64px"])
    cls = (transformers.DeiTForImageClassificationWithTeacher if teacher
           else transformers.DeiTForImageClassification)
    hf = _perturb(cls(cfg), 4)
    x = _images(cfg.image_size)
    with torch.no_grad():
        ref = hf(pixel_values=x).logits.numpy()
    imported = _check(_save(hf, tmp_path / "hf"), ref, x, tmp_path)
    assert imported.config.dist_token
    assert imported.config.dist_head == teacher


def test_hf_labels_and_preprocessing_are_imported(tmp_path):
    cfg = transformers.ViTConfig(id2label={0: "cat", 1: "dog", 2: "bird"},
                                 label2id={"cat": 0, "dog": 1, "bird": 2}, **CONFIGS["p16_64px"])
    hf = transformers.ViTForImageClassification(cfg).eval()
    prep = {"do_resize": True, "size": {"height": 64, "width": 64}, "resample": 3,
            "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
            "do_normalize": True}
    imported = load_checkpoint(_save(hf, tmp_path / "hf", prep))
    assert imported.labels == ["cat", "dog", "bird"]
    p = imported.preprocess
    assert (p.resize_mode, p.resize, p.crop, p.interpolation) == ("exact", (64, 64), (64, 64), "bicubic")
    assert p.mean == (0.485, 0.456, 0.406)


def test_hf_v5_state_dict_names(tmp_path):
    """transformers >= 5 module names, as a torch.save(model.state_dict()) writes them."""
    cfg = transformers.ViTConfig(num_labels=3, **CONFIGS["p16_64px"])
    hf = _perturb(transformers.ViTForImageClassification(cfg), 5)
    folder = tmp_path / "v5"
    folder.mkdir()
    (folder / "config.json").write_text(cfg.to_json_string())
    torch.save(hf.state_dict(), folder / "pytorch_model.bin")
    x = _images(64)
    with torch.no_grad():
        ref = hf(pixel_values=x).logits.numpy()
    _check(folder, ref, x, tmp_path)
