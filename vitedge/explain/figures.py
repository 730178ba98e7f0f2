"""The PNG figures of `vitedge explain` and `vitedge inspect --pos-embed`, drawn with
matplotlib (the `plot` extra) off-screen, written atomically. Sizes are fixed (PANEL
pixels a panel) so that scripts and tests know what they get."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitedge.errors import require
from vitedge.fileio import write_bytes_atomic

DPI = 100
PANEL = (320, 360)
"""Width, height in pixels of one panel of an explanation figure."""
POS_EMBED_SIZE = (640, 600)


@dataclass(frozen=True)
class Panel:
    """One attention map to draw over the image, with its title."""

    grid: np.ndarray
    title: str


def _pyplot() -> Any:
    matplotlib = require("matplotlib", "plot", "drawing figures")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    _pyplot().close(fig)
    write_bytes_atomic(out, buf.getvalue())


def _show_image(ax: Any, pixels: np.ndarray) -> None:
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        ax.imshow(pixels[:, :, 0], cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(pixels)
    ax.set_axis_off()


def explanation_figure(pixels: np.ndarray, panels: list[Panel], title: str, out: Path) -> None:
    """The image as the model saw it (resized and cropped), then each map upsampled over
    it; `title` (the top-k prediction, a similarity) above."""
    plt = _pyplot()
    n = 1 + len(panels)
    fig, axes = plt.subplots(1, n, figsize=(PANEL[0] * n / DPI, PANEL[1] / DPI), squeeze=False)
    h, w = pixels.shape[:2]
    _show_image(axes[0, 0], pixels)
    axes[0, 0].set_title("input", fontsize=9)
    for ax, panel in zip(axes[0, 1:], panels, strict=True):
        _show_image(ax, pixels)
        grid = panel.grid.astype(np.float64)
        span = grid.max() - grid.min()
        scaled = (grid - grid.min()) / span if span > 0 else np.zeros_like(grid)
        ax.imshow(scaled, cmap="jet", alpha=0.5, extent=(-0.5, w - 0.5, h - 0.5, -0.5),
                  interpolation="bilinear", vmin=0, vmax=1)
        ax.set_title(panel.title, fontsize=9)
    lines = title.count("\n") + 1
    fig.suptitle(title, fontsize=9, y=0.99)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.86 - 0.045 * lines, wspace=0.05)
    _save(fig, out)


def position_embedding_figure(similarity: np.ndarray, out: Path, title: str) -> None:
    """The ViT paper's figure: for each patch position (row, column), a small map of its
    position embedding's cosine similarity with every other position's."""
    plt = _pyplot()
    gh, gw = similarity.shape[:2]
    mosaic = np.full((gh * (gh + 1) - 1, gw * (gw + 1) - 1), np.nan, np.float32)
    for i in range(gh):
        for j in range(gw):
            mosaic[i * (gh + 1):i * (gh + 1) + gh, j * (gw + 1):j * (gw + 1) + gw] = similarity[i, j]
    fig, ax = plt.subplots(figsize=(POS_EMBED_SIZE[0] / DPI, POS_EMBED_SIZE[1] / DPI))
    image = ax.imshow(mosaic, cmap="viridis", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_xticks([j * (gw + 1) + (gw - 1) / 2 for j in range(gw)], [str(j + 1) for j in range(gw)],
                  fontsize=6)
    ax.set_yticks([i * (gh + 1) + (gh - 1) / 2 for i in range(gh)], [str(i + 1) for i in range(gh)],
                  fontsize=6)
    ax.set_xlabel("input patch column")
    ax.set_ylabel("input patch row")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="cosine similarity", fraction=0.046, pad=0.04)
    fig.tight_layout()  # moves the axes inside the fixed canvas; the size stays
    _save(fig, out)
