"""The ViT in PyTorch and the readers that bring timm, Hugging Face, torchvision and
vitedge checkpoints into it. Importing this package does not import torch; the
PyTorch parts load on first use."""

from __future__ import annotations

from typing import Any

from vitedge.architecture import ViTConfig

__all__ = ["ImportOptions", "ImportedViT", "ViTConfig", "VisionTransformer", "load_checkpoint",
           "random_checkpoint"]

_LAZY = {
    "VisionTransformer": "vitedge.model.vit",
    "load_checkpoint": "vitedge.model.importer",
    "ImportOptions": "vitedge.options",
    "ImportedViT": "vitedge.model.importer",
    "random_checkpoint": "vitedge.model.random_init",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)
