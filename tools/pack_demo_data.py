"""Pack the demo data (the Fashion-MNIST checkpoint, its calibration and evaluation images)
into vitedge/data/demo/, the package data `vitedge demo-data DIR` writes out for a pip user:
the checkpoint as it is, the images as one compressed array file (28x28 grayscale pixels,
their folder and file names) with the two folders' README files.

    python tools/pack_demo_data.py
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).parents[1]
OUT = ROOT / "vitedge" / "data" / "demo"
FOLDERS = ("calibration/fashion-mnist", "evaluation/fashion-mnist")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "examples" / "fashion_mnist" / "vit_fmnist.safetensors", OUT)
    arrays = {}
    for i, folder in enumerate(FOLDERS):
        files = sorted((ROOT / folder).glob("*/*.png"))
        arrays[f"pixels{i}"] = np.stack([np.asarray(Image.open(f).convert("L")) for f in files])
        arrays[f"names{i}"] = np.array([f"{f.parent.name}/{f.name}" for f in files])
        shutil.copy(ROOT / folder / "README.md", OUT / f"{folder.split('/')[0]}.README.md")
    np.savez_compressed(OUT / "fashion-mnist.npz", folders=np.array(FOLDERS), **arrays)


if __name__ == "__main__":
    main()
