"""Does the ONNX model compute what the PyTorch model computes? Run both on random and
on real images and compare the outputs."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

import numpy as np

from vitedge.architecture import ViTConfig
from vitedge.compare import agreement
from vitedge.manifest import Preprocess
from vitedge.runtime.patchify import patches_from_images
from vitedge.runtime.preprocess import crop_pixels, load_image, normalize, preprocess_image

# float32 on both sides: different kernels (and summation orders) across 12-32 blocks
# give about 1e-6 relative; 1e-4 leaves a margin of ~100x while any wrong operator,
# weight or layout gives errors of 1e-2 and more.
FP32_RELATIVE_TOLERANCE = 1e-4


@dataclass
class Comparison:
    case: str
    max_abs: float
    relative: float
    cosine: float
    top1_agreement: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare(case: str, reference: np.ndarray, candidate: np.ndarray) -> Comparison:
    """Max abs error, error relative to the largest reference output, the worst cosine,
    top-1 match (`vitedge.compare`)."""
    a = agreement(reference, candidate)
    return Comparison(case, a.max_abs, a.relative, a.cosine_min, a.top1_agreement)


def photo_files() -> list[Any]:
    """The bundled real photographs, in name order."""
    folder = resources.files("vitedge") / "data" / "photos"
    return sorted((p for p in folder.iterdir() if p.name.endswith(".jpg")), key=lambda p: p.name)


def sample_photos(prep: Preprocess) -> np.ndarray:
    """The bundled real photographs, preprocessed for the model: (n, C, H, W)."""
    return np.stack([preprocess_image(load_image(str(f)), prep) for f in photo_files()])


def verification_inputs(cfg: ViTConfig, prep: Preprocess, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((4, cfg.in_chans, *cfg.img_size)).astype(np.float32)
    cases = {"random": noise}
    if cfg.in_chans in (1, 3):  # a one-channel model sees the photos in gray
        cases["photos"] = sample_photos(prep.with_size(cfg.img_size))
    return cases


def verify_onnx_against_torch(
    model: Any,
    torch_model: Any,
    cfg: ViTConfig,
    prep: Preprocess,
    input_kind: str = "images",
    batch: int | None = None,
) -> list[Comparison]:
    import torch

    from vitedge.sessions import ort_session, run_in_batches

    session = ort_session(model)
    results = []
    raw = input_kind in ("frames", "pixels")
    cases = frame_inputs(cfg, prep) if raw else verification_inputs(cfg, prep)
    for case, x in cases.items():
        images = normalize_frames(x, prep) if raw else x
        if input_kind == "pixels":
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2), np.float32)
        with torch.no_grad():
            reference = torch_model(torch.from_numpy(images)).numpy()
        if input_kind == "patches":
            x = patches_from_images(images, cfg.patch_size)
        results.append(compare(case, reference, run_in_batches(session, input_kind, x, batch)[0]))
    return results


def frame_inputs(cfg: ViTConfig, prep: Preprocess, seed: int = 0) -> dict[str, np.ndarray]:
    """uint8 (n, H, W, C) frames: random pixels, and the photos resized and cropped."""
    rng = np.random.default_rng(seed)
    cases = {"random": rng.integers(0, 256, (4, *cfg.img_size, cfg.in_chans), dtype=np.uint8)}
    if cfg.in_chans in (1, 3):
        sized = prep.with_size(cfg.img_size)
        cases["photos"] = np.stack([crop_pixels(load_image(str(f)), sized) for f in photo_files()])
    return cases


def normalize_frames(frames: np.ndarray, prep: Preprocess) -> np.ndarray:
    """What the frames graph computes in front of the ViT, in numpy (the reference)."""
    return np.stack([normalize(f, prep) for f in frames])
