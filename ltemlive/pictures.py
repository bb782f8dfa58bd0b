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


# ----------------------------------------------------------------------------------------------------------
# Reusable pieces for the run summary (and a later dashboard): scale bar, phase and induction figures,
# calibration convergence. Each *_figure function returns a Figure with an Agg canvas attached; write it
# with save_figure.

_NM = 1e-9
_UM = 1e-6


def nice_length(target_m: float) -> float:
    """The 1, 2 or 5 x 10^n length (m) nearest to target_m on a log scale."""
    t = float(target_m)
    if not np.isfinite(t) or t <= 0:
        raise ValueError(f"target_m must be a finite positive length, got {target_m!r}")
    decade = 10.0 ** np.floor(np.log10(t))
    candidates = np.array([1.0, 2.0, 5.0, 10.0]) * decade
    return float(candidates[np.argmin(np.abs(np.log(candidates / t)))])


def format_length(length_m: float) -> str:
    """'500 nm', '2 µm', '0.5 nm': nm below one micrometre, µm from there."""
    if abs(length_m) >= _UM:
        return f"{length_m / _UM:g} µm"
    return f"{length_m / _NM:g} nm"


def format_defocus(defocus_m: float, unit: str | None = None) -> str:
    """Signed defocus with a typographic minus, in mm or µm: '+1.600 mm', '−250.0 µm'.

    unit None picks mm from 1 mm up and µm below; pass the same unit for every entry of a legend.
    """
    if unit is None:
        unit = "mm" if abs(defocus_m) >= 1e-3 else "µm"
    if unit == "mm":
        text = f"{defocus_m * 1e3:+.3f} mm"
    elif unit == "µm":
        text = f"{defocus_m / _UM:+.1f} µm"
    else:
        raise ValueError(f"unit must be 'mm' or 'µm', got {unit!r}")
    return text.replace("-", "\u2212")


def add_scale_bar(
    ax,
    pixel_size_m: float,
    shape,
    *,
    fraction: float = 0.2,
    length_m: float | None = None,
    color: str = "white",
    edge_color: str = "black",
):
    """Draw a scale bar with its length written above it in the lower right corner of an image axes.

    Works whatever units the image was drawn in (pixels, nm, ...): the data units per pixel are read from the
    axes limits, which imshow sets to the image extent, and shape (H, W) is the image's size in pixels. The
    length is a round 1/2/5 x 10^n value near `fraction` of the field width unless length_m is given.
    Returns (length_m, label).
    """
    from matplotlib import patheffects
    from matplotlib.patches import Rectangle

    h, w = int(shape[0]), int(shape[1])
    pixel = float(pixel_size_m)
    if not np.isfinite(pixel) or pixel <= 0:
        raise ValueError(f"pixel_size_m must be a finite positive number, got {pixel_size_m!r}")
    if length_m is None:
        length_m = nice_length(fraction * w * pixel)
    label = format_length(length_m)
    x0, x1 = ax.get_xlim()
    y0, y1 = ax.get_ylim()
    ux = (x1 - x0) / w  # data units per pixel along x, signed
    uy = (y1 - y0) / h
    bar_px = length_m / pixel
    margin_px = 0.05 * min(h, w)
    thick_px = max(0.018 * min(h, w), 1.0)
    right = x0 + ux * (w - margin_px)
    left = right - ux * bar_px
    bottom = y0 + uy * margin_px  # y0 is the bottom edge of the view (h for an upper-origin image)
    top = bottom + uy * thick_px
    rect = Rectangle(
        (min(left, right), min(bottom, top)),
        abs(right - left),
        abs(top - bottom),
        facecolor=color,
        edgecolor=edge_color,
        linewidth=0.6,
        zorder=5,
    )
    ax.add_patch(rect)
    text = ax.text(
        (left + right) / 2,
        top + uy * 0.6 * thick_px,
        label,
        color=color,
        ha="center",
        va="bottom",
        fontsize=10,
        fontweight="bold",
        zorder=6,
    )
    text.set_path_effects([patheffects.withStroke(linewidth=2.0, foreground=edge_color)])
    return length_m, label


def _bare_image_axes(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_linewidth(0.6)


def phase_figure(
    phase: np.ndarray,
    pixel_size_m: float,
    *,
    title: str | None = None,
    cmap: str = "gray",
    show_axes: bool = False,
    width_in: float = 5.2,
) -> Figure:
    """Phase map with a colour bar in rad beside it and a scale bar on it.

    show_axes=True also labels the axes in nm; by default the scale bar alone gives the size.
    """
    phi = np.asarray(phase, dtype=np.float64)
    if phi.ndim != 2:
        raise ValueError(f"phase must be a 2-D (H, W) array, got shape {phi.shape}")
    h, w = phi.shape
    fig = Figure(figsize=(width_in, width_in * h / w * 0.86 + (0.35 if title else 0.1)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    finite = phi[np.isfinite(phi)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    im = ax.imshow(
        phi, cmap=cmap, extent=_extent_nm(phi.shape, pixel_size_m), vmin=vmin, vmax=vmax, interpolation="nearest"
    )
    if show_axes:
        ax.set_xlabel("x (nm)")
        ax.set_ylabel("y (nm)")
    else:
        _bare_image_axes(ax)
    if title:
        ax.set_title(title, fontsize=11)
    cax = ax.inset_axes((1.03, 0.0, 0.045, 1.0))
    cbar = fig.colorbar(im, cax=cax)
    cbar.set_label("phase (rad)")
    cbar.outline.set_linewidth(0.6)
    add_scale_bar(ax, pixel_size_m, phi.shape)
    return fig


def induction_saturation(bx, by, percentile: float = 99.0) -> float:
    """The |B_perp t| (T m) at which the colour wheel reaches full brightness: the given percentile."""
    return float(np.percentile(np.hypot(np.asarray(bx), np.asarray(by)), percentile))


def induction_figure(
    phase: np.ndarray,
    pixel_size_m: float,
    *,
    title: str | None = None,
    saturation_scale: float | None = None,
    width_in: float = 6.2,
) -> tuple[Figure, float]:
    """Colour-wheel picture of the in-plane induction of a phase map, with the wheel and a magnitude ramp
    in a side panel (outside the data) and a scale bar on the image.

    The saturation (|B_perp t| in T m at full brightness) defaults to the 99th percentile of the magnitude;
    returns (figure, saturation used), 0.0 for a zero field (all black).
    """
    from ltemlive.induction import colour_wheel, colour_wheel_legend, induction_map

    bx, by = induction_map(phase, pixel_size_m)
    sat = induction_saturation(bx, by) if saturation_scale is None else float(saturation_scale)
    rgb = colour_wheel(bx, by, saturation_scale=sat if sat > 0 else None)
    h, w = rgb.shape[:2]
    fig = Figure(figsize=(width_in, (width_in - 1.6) * h / w + (0.35 if title else 0.1)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(rgb, extent=_extent_nm((h, w), pixel_size_m), interpolation="nearest")
    _bare_image_axes(ax)
    if title:
        ax.set_title(title, fontsize=11)
    add_scale_bar(ax, pixel_size_m, (h, w))

    # Side panel, to the right of the data: the wheel with its screen axes, then the brightness ramp.
    wheel_ax = ax.inset_axes((1.06, 0.50, 0.34, 0.34))
    wheel_ax.imshow(colour_wheel_legend(161), interpolation="bilinear")
    wheel_ax.set_axis_off()
    wheel_ax.text(1.04, 0.5, "+x", transform=wheel_ax.transAxes, ha="left", va="center", fontsize=9)
    wheel_ax.text(0.5, -0.04, "+y", transform=wheel_ax.transAxes, ha="center", va="top", fontsize=9)
    wheel_ax.set_title("direction", fontsize=9)

    ramp_ax = ax.inset_axes((1.06, 0.27, 0.34, 0.045))
    ramp_ax.imshow(np.linspace(0, 1, 256)[None, :], cmap="gray", aspect="auto", extent=(0, 1, 0, 1))
    ramp_ax.set_yticks([])
    sat_tnm = sat / _NM
    ramp_ax.set_xticks([0, 1])
    ramp_ax.set_xticklabels(["0", f"{sat_tnm:.3g}" if sat > 0 else ""], fontsize=8)
    ramp_ax.tick_params(length=2, pad=2)
    for spine in ramp_ax.spines.values():
        spine.set_linewidth(0.6)
    ramp_ax.set_title("|B⊥t| (T·nm)", fontsize=9)
    note = f"saturates at\n|B⊥t| = {sat_tnm:.3g} T·nm" if sat > 0 else "zero field"
    ramp_ax.text(0.5, -1.9, note, transform=ramp_ax.transAxes, ha="center", va="top", fontsize=8)
    return fig, sat


def calibration_figure(
    series_index: Sequence[int],
    scale: Sequence[float],
    offset_m: Sequence[float],
    accepted: Sequence[bool],
    *,
    estimate_scale: Sequence[float] | None = None,
    estimate_offset_m: Sequence[float] | None = None,
    sigma_scale: Sequence[float] | None = None,
    sigma_offset_m: Sequence[float] | None = None,
    truth_error_pct: dict[float, tuple[Sequence[int], Sequence[float]]] | None = None,
    guide_pct: float = 1.0,
) -> Figure:
    """Calibration convergence against series index.

    Calibration panels (when there are records): the calibration in force after each record as a step line,
    and each record's estimate (NaN where unknown: the value in force is shown instead) with its one-sigma
    bar, filled for accepted records and open red for rejected ones; scale on top, offset (µm) below.
    Truth panel (when truth_error_pct is given: {planned defocus m: (series indices, relative error %)}):
    (true - planned) / planned against series index, one line per planned defocus, with ±guide_pct guides.
    """
    x = np.asarray(series_index, dtype=np.float64)
    has_cal = x.size > 0
    has_truth = bool(truth_error_pct)
    n_panels = 2 * has_cal + has_truth
    if n_panels == 0:
        raise ValueError("nothing to plot: no calibration records and no truth")
    fig = Figure(figsize=(7.0, 2.3 * n_panels + 0.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_panels, 1, sharex=True, squeeze=False)[:, 0]
    fig.subplots_adjust(hspace=0.12)
    panel = 0
    acc = np.asarray(accepted, dtype=bool)

    def series_or(values, fallback):
        if values is None:
            return np.asarray(fallback, dtype=np.float64)
        v = np.asarray(values, dtype=np.float64)
        return np.where(np.isfinite(v), v, fallback)

    if has_cal:
        order = np.argsort(x, kind="stable")
        for key, in_force, est, sig, unit, factor in (
            ("scale", scale, estimate_scale, sigma_scale, "scale", 1.0),
            ("offset", offset_m, estimate_offset_m, sigma_offset_m, "offset (µm)", 1e6),
        ):
            a = axes[panel]
            panel += 1
            f = np.asarray(in_force, dtype=np.float64) * factor
            e = series_or(est, f / factor) * factor
            s = None if sig is None else np.asarray(sig, dtype=np.float64) * factor
            a.step(x[order], f[order], where="post", color="0.35", lw=1.2, label="in force", zorder=2)
            for mask, style in (
                (acc, {"fmt": "o", "color": "tab:blue", "mfc": "tab:blue", "label": "accepted"}),
                (~acc, {"fmt": "o", "color": "tab:red", "mfc": "white", "label": "rejected"}),
            ):
                if not mask.any():
                    continue
                yerr = None if s is None else np.where(np.isfinite(s[mask]), s[mask], 0.0)
                a.errorbar(x[mask], e[mask], yerr=yerr, ms=6, mew=1.3, elinewidth=1.0, capsize=2.5, zorder=3, **style)
            a.set_ylabel(unit)
            a.grid(True, color="0.9", lw=0.6)
            a.set_axisbelow(True)
            if key == "scale":
                a.legend(fontsize=8, frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5))
                a.set_title("calibration convergence", fontsize=11)

    if has_truth:
        a = axes[panel]
        df_unit = "mm" if max(abs(p) for p in truth_error_pct) >= 1e-3 else "µm"
        for planned, (xs, err) in sorted(truth_error_pct.items()):
            xs = np.asarray(xs, dtype=np.float64)
            err = np.asarray(err, dtype=np.float64)
            keep = np.isfinite(err)
            a.plot(xs[keep], err[keep], "o-", ms=4, lw=1.2, label=format_defocus(planned, df_unit))
        for g in (-guide_pct, guide_pct):
            a.axhline(g, color="0.4", ls="--", lw=0.9, zorder=1, label=f"±{guide_pct:g} %" if g > 0 else None)
        a.axhline(0.0, color="0.7", lw=0.6, zorder=1)
        a.set_ylabel("true − planned\n(% of planned)")
        a.grid(True, color="0.9", lw=0.6)
        a.set_axisbelow(True)
        a.legend(
            title="planned defocus",
            fontsize=8,
            title_fontsize=8,
            frameon=False,
            loc="center left",
            bbox_to_anchor=(1.01, 0.5),
        )
        if not has_cal:
            a.set_title("defocus error against simulator truth", fontsize=11)
    axes[-1].set_xlabel("series index")
    from matplotlib.ticker import MaxNLocator

    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


def save_figure(fig: Figure, path: str | Path, *, dpi: int = 150, overwrite: bool = True) -> Path:
    """Write a figure (tight bounding box) and return its path; FileExistsError if it exists and not overwrite."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    if fig.canvas is None or not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight", facecolor="white")
    return path
