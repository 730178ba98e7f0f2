"""`vitedge inspect CHECKPOINT`: a checkpoint described as `vitedge export` would read it,
before any export."""

from __future__ import annotations

import json
from pathlib import Path

from vitedge.describe import FORMATS, Description, manifest_rows


def describe_checkpoint(path: Path) -> Description:
    """A checkpoint as `vitedge export` would read it: the format and family detected, the
    architecture, the labels and the preprocessing that would travel with the export, and
    the command that exports it (needs torch, as export does)."""
    from vitedge.errors import require

    require("torch", "export", f"inspecting the checkpoint {path.name}")
    from vitedge.model.importer import load_checkpoint

    imported = load_checkpoint(path)
    manifest = json.loads(imported.manifest().to_json())
    cfg = imported.config
    stem = path.stem if path.is_file() and path.name not in ("model.safetensors",
                                                            "pytorch_model.bin") else \
        (path.parent.name if path.is_file() else path.name)
    fmt = imported.source["format"]
    info = {"checkpoint": str(path), "format": fmt, "family": FORMATS.get(fmt, fmt),
            "parameters": cfg.num_params(), "gmacs": round(cfg.macs() / 1e9, 3),
            "tokens": {"patches": cfg.num_patches, "prefix": cfg.num_prefix_tokens,
                       "total": cfg.num_tokens, "grid": list(cfg.grid)},
            "manifest": manifest, "notes": imported.notes,
            "next": f"vitedge export {path} -o {stem}.onnx"}
    rows = [("checkpoint", f"{info['family']} ({fmt} format), not yet exported"),
            ("parameters", f"{info['parameters'] / 1e6:.2f} M"),
            *[r for r in manifest_rows(info, manifest) if r[0] not in ("made by",)],
            *[("note", n) for n in imported.notes],
            ("next", f"{info['next']}, then `vitedge build {stem}.onnx`")]
    return Description(info, f"{path} (a checkpoint)", rows)
