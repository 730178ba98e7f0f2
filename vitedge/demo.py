"""`vitedge demo-data DIR`: the README tour's demo files for a pip install, which has no
git clone: the Fashion-MNIST checkpoint, 512 calibration images and 2,000 evaluation images
(shipped compressed in the package, 2 MB), written out as the repository has them."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitedge.errors import VitedgeError

PACKED = Path(__file__).parent / "data" / "demo"
CHECKPOINT = "vit_fmnist.safetensors"


@dataclass
class DemoData:
    folder: Path
    checkpoint: Path
    images: dict[str, int] = field(default_factory=dict)
    """Each image folder written (calibration/fashion-mnist, ...) -> its number of images."""

    def to_dict(self) -> dict[str, Any]:
        return {"output": str(self.folder), "checkpoint": str(self.checkpoint),
                "images": {k: v for k, v in self.images.items()}}


def write_demo_data(folder: str | Path) -> DemoData:
    """Write the demo checkpoint and the calibration and evaluation image folders into
    `folder` (made where missing); a folder that already holds any of them is refused
    rather than mixed with other files."""
    import numpy as np
    from PIL import Image

    from vitedge.fileio import make_folder, write_bytes_atomic

    root = Path(folder)
    packed = np.load(PACKED / "fashion-mnist.npz")
    folders = [str(f) for f in packed["folders"]]
    there = [p for p in (root / CHECKPOINT, *(root / f for f in folders)) if p.exists()]
    if there:
        raise VitedgeError(f"{there[0]} is already there", "choose an empty folder")
    make_folder(root)
    result = DemoData(root, root / CHECKPOINT)
    write_bytes_atomic(root / CHECKPOINT, (PACKED / CHECKPOINT).read_bytes())
    for i, name in enumerate(folders):
        target = root / name
        for pixels, rel in zip(packed[f"pixels{i}"], packed[f"names{i}"], strict=True):
            out = io.BytesIO()
            Image.fromarray(pixels, "L").save(out, format="PNG")
            make_folder((target / str(rel)).parent)
            write_bytes_atomic(target / str(rel), out.getvalue())
        write_bytes_atomic(target / "README.md",
                           (PACKED / f"{name.split('/')[0]}.README.md").read_bytes())
        result.images[name] = len(packed[f"names{i}"])
    return result
