"""Pictures people would rather look at than read: phase maps, loss curves, series montages.

Matplotlib's object API on the Agg canvas (no pyplot state), so it is safe off the main thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _extent_nm(shape, pixel_size_m: float):
    h, w = shape
    return (0, w * pixel_size_m * 1e9, h * pixel_size_m * 1e9, 0)


def _save(fig: Figure, path: str | Path) -> Path:
    FigureCanvasAgg(fig)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def save_phase_png(path, phase: np.ndarray, pixel_size_m: float, title: str = "phase (rad)") -> Path:
    fig = Figure(figsize=(6, 5))
    ax = fig.add_subplot()
    im = ax.imshow(phase, cmap="gray", extent=_extent_nm(phase.shape, pixel_size_m))
    ax.set_xlabel("x (nm)")
    ax.set_ylabel("y (nm)")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="rad")
    return _save(fig, path)


def save_loss_png(path, history: Sequence[dict]) -> Path:
    """Total, data and regulariser terms against iteration, with the stage of each point marked."""
    it = np.array([h["iteration"] for h in history])
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for key, style in (("loss", "-"), ("data_loss", "--")):
        ax.semilogy(it, [h[key] for h in history], style, label=key.replace("_", " "))
    for h in history:
        if h["stage"] not in ("refine",):
            ax.axvline(h["iteration"], color="0.85", lw=0.8, zorder=0)
    ax.set_xlabel("phase iteration")
    ax.set_ylabel("loss per pixel")
    ax.legend()
    ax.set_title("reconstruction loss")
    return _save(fig, path)


def save_comparison_png(path, panels: Sequence[tuple[str, np.ndarray]], pixel_size_m: float) -> Path:
    """Side-by-side maps (e.g. truth, TIE, AD) on one colour scale per panel."""
    fig = Figure(figsize=(4 * len(panels), 4))
    for i, (title, img) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.imshow(img, cmap="gray", extent=_extent_nm(img.shape, pixel_size_m))
        ax.set_title(title)
        ax.set_xlabel("x (nm)")
    return _save(fig, path)


def save_series_png(path, images: np.ndarray, defocus_m: Sequence[float], pixel_size_m: float) -> Path:
    panels = [(f"df = {d * 1e3:+.3f} mm", img) for img, d in zip(images, defocus_m, strict=True)]
    return save_comparison_png(path, panels, pixel_size_m)
