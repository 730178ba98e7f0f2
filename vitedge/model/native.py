"""vitedge's own checkpoint: timm-layout weights in a safetensors file, with the manifest
(architecture, preprocessing, labels) in its metadata, so one file is enough to export."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vitedge.fileio import atomic_path
from vitedge.manifest import Manifest
from vitedge.model.formats import NATIVE_METADATA_KEY


def save_native_checkpoint(path: str | Path, state_dict: Mapping[str, Any],
                           manifest: Manifest) -> Path:
    """Write `state_dict` (torch tensors, timm key layout) and `manifest` atomically."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={NATIVE_METADATA_KEY: manifest.to_json()})
    return Path(path)
