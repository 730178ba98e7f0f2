"""vitedge's exact preprocessing against the reference libraries, on real photos: timm's
eval transform (committed fixture, tests/fixtures/make_preprocess_fixtures.py) and Hugging
Face's ViTImageProcessor (run here), to 1e-5 on the normalised tensor. Patchify round
trip, and a patch-input model against the image-input one through the pipeline."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import vitedge
from tests.conftest import DEMO_CHECKPOINT
from vitedge.export import ExportOptions, export_onnx
from vitedge.manifest import Preprocess
from vitedge.runtime.patchify import images_from_patches, patches_from_images
from vitedge.runtime.preprocess import load_image, normalize, preprocess_image

PHOTOS = Path(__file__).parents[1] / "vitedge" / "data" / "photos"
FIXTURE = Path(__file__).parent / "fixtures" / "preprocess" / "timm_transforms.npz"
TOLERANCE = 1e-5


def timm_cases() -> list[str]:
    return list(json.loads(str(np.load(FIXTURE)["settings"])))


@pytest.mark.parametrize("case", timm_cases())
def test_exact_preprocessing_matches_timm_eval_transform(case):
    data = np.load(FIXTURE)
    cfg = json.loads(str(data["settings"]))[case]
    size = tuple(cfg["input_size"][1:])
    prep = Preprocess.from_crop_pct(size, cfg["crop_pct"], cfg["interpolation"],
                                    tuple(cfg["mean"]), tuple(cfg["std"]))
    photos = json.loads(str(data["photos"]))
    ours = np.stack([preprocess_image(load_image(PHOTOS / p), prep) for p in photos])
    assert ours.shape == data[case].shape
    assert np.abs(ours - data[case]).max() < TOLERANCE


@pytest.mark.parametrize("size, resample, mean, std", [
    ((224, 224), 2, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    ((96, 128), 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
])
def test_exact_preprocessing_matches_hugging_face_processor(size, resample, mean, std):
    transformers = pytest.importorskip("transformers")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    processor = transformers.ViTImageProcessor(
        size={"height": size[0], "width": size[1]}, resample=resample, image_mean=list(mean),
        image_std=list(std))
    prep = Preprocess(crop=size, resize=size, resize_mode="exact",
                      interpolation={2: "bilinear", 3: "bicubic"}[resample], mean=mean, std=std)
    for photo in sorted(PHOTOS.glob("*.jpg")):
        image = Image.open(photo).convert("RGB")
        reference = processor(image, return_tensors="np")["pixel_values"][0]
        assert np.abs(preprocess_image(image, prep) - reference).max() < TOLERANCE


@pytest.mark.parametrize("mean, std, shape", [
    ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), (37, 53, 3)),
    ((0.2860,), (0.3530,), (28, 28)),
    ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), (16, 16, 1)),  # a gray frame for an RGB model
])
def test_normalisation_is_the_per_pixel_arithmetic_exactly(mean, std, shape):
    pixels = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    prep = Preprocess(crop=shape[:2], resize=shape[:2], resize_mode="exact",
                      interpolation="bilinear", mean=mean, std=std)
    x = (pixels.reshape(*shape[:2], -1).astype(np.float32) * np.float32(1 / 255)
         - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    np.testing.assert_array_equal(normalize(pixels, prep), x.transpose(2, 0, 1))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 3), st.integers(1, 4), st.sampled_from([2, 4, 16]),
       st.integers(1, 4), st.integers(1, 4))
def test_patchify_round_trip(batch, chans, patch, gh, gw):
    x = np.random.default_rng(0).standard_normal((batch, chans, gh * patch, gw * patch)).astype(np.float32)
    p = patches_from_images(x, patch)
    assert p.shape == (batch, gh * gw, chans * patch * patch)
    # patch (row 0, column 1) holds the pixels of that square, channel by channel
    if gw > 1:
        np.testing.assert_array_equal(p[0, 1], x[0, :, :patch, patch:2 * patch].reshape(-1))
    np.testing.assert_array_equal(images_from_patches(p, patch, (gh, gw)), x)


def test_patch_input_model_matches_image_input_model(demo_fp32, tmp_path):
    patches = tmp_path / "fmnist.patches.onnx"
    export_onnx(DEMO_CHECKPOINT, patches, ExportOptions(input_kind="patches", verify=False))
    with vitedge.open(demo_fp32, keep_logits=True) as images_pipe, \
            vitedge.open(patches, keep_logits=True) as patch_pipe:
        assert patch_pipe.manifest.input == "patches"
        for photo in sorted(PHOTOS.glob("*.jpg")):
            a, b = images_pipe(photo), patch_pipe(photo)
            # every stage of the patch model's pipeline ran and was timed (patchify cuts the
            # image into patches on the host)
            stages = ("decode", "preprocess", "patchify", "infer", "postprocess")
            assert all(b.timings[s] > 0 for s in stages), b.timings
            assert a.class_id == b.class_id
            np.testing.assert_allclose(a.logits, b.logits, rtol=1e-4, atol=1e-5)


def test_frames_model_normalises_and_patchifies_in_the_graph(demo_fp32, tmp_path):
    """uint8 (B, H, W, C) in: the graph's Cast, scale and shift equal the host's
    preprocessing, so its logits equal the float-image model's; it quantizes too."""
    import onnx

    from vitedge.quantize.quantizer import QuantizeRequest, quantize_model

    frames = tmp_path / "fmnist.frames.onnx"
    result = export_onnx(DEMO_CHECKPOINT, frames, ExportOptions(input_kind="frames"))
    assert result.comparisons and all(c.relative < 1e-4 for c in result.comparisons)
    graph_input = onnx.load(str(frames)).graph.input[0]
    assert graph_input.name == "frames"
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    tests = sorted((Path(__file__).parents[1] / "evaluation" / "fashion-mnist").rglob("*.png"))[:20]
    with vitedge.open(demo_fp32, keep_logits=True) as images_pipe, \
            vitedge.open(frames, keep_logits=True) as frames_pipe:
        assert frames_pipe.prepare(tests[:2]).dtype == np.uint8
        for f in tests:
            np.testing.assert_allclose(frames_pipe(f).logits, images_pipe(f).logits,
                                       rtol=1e-4, atol=1e-5)
    calibration = str(Path(__file__).parents[1] / "calibration" / "fashion-mnist")
    for precision in ("int8", "fp16"):
        q = quantize_model(frames, tmp_path / f"f.{precision}.onnx",
                           QuantizeRequest(precision, data=calibration))
        assert q.check is not None and q.check.top1_agreement >= 0.95
