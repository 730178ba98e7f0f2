"""Images to patch vectors, as in the ViT paper: (B, C, H, W) -> (B, N, C*P*P).

Patches are taken row by row; each vector holds the patch's pixels in (C, P, P) order,
the order of the patch-embedding convolution's weights, so a patch-input model computes
exactly what the image-input model's convolution does."""

from __future__ import annotations

import numpy as np


def patches_from_images(images: np.ndarray, patch: int) -> np.ndarray:
    b, c, h, w = images.shape
    if h % patch or w % patch:
        raise ValueError(f"image {h}x{w} is not a multiple of the patch size {patch}")
    gh, gw = h // patch, w // patch
    x = images.reshape(b, c, gh, patch, gw, patch).transpose(0, 2, 4, 1, 3, 5)
    return np.ascontiguousarray(x.reshape(b, gh * gw, c * patch * patch))


def images_from_patches(patches: np.ndarray, patch: int, grid: tuple[int, int]) -> np.ndarray:
    b, n, dim = patches.shape
    c = dim // (patch * patch)
    gh, gw = grid
    x = patches.reshape(b, gh, gw, c, patch, patch).transpose(0, 3, 1, 4, 2, 5)
    return np.ascontiguousarray(x.reshape(b, c, gh * patch, gw * patch))
