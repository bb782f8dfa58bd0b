"""Pictures people would rather look at than read: phase maps, loss curves, series montages.

The one rendering module: the run summary (files) and the web dashboard (PNG bytes, figure_png) draw with
the same functions. Matplotlib's object API on the Agg canvas (no pyplot state), so it is safe off the main
thread. Nothing in the acquisition or reconstructor processes imports it (tests/test_boundaries.py).
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


def save_phase_png(path, phase: np.ndarray, pixel_size_m: float, title: str = "phase (rad)") -> Path:
    """Phase map with a colour bar (rad) and a scale bar: phase_figure, written to path."""
    return save_figure(phase_figure(_to_numpy(phase), pixel_size_m, title=title), path, dpi=110)


# Colours for the stage markers of loss_figure; other stage names get the next colour of the cycle.
_STAGE_COLOURS = {"start": "0.55", "warm-up": "tab:orange", "defocus scale": "tab:green", "refine": "tab:blue"}
_STAGE_LABELS = {"start": "start", "warm-up": "warm-up", "defocus scale": "defocus scale fit", "refine": "refine"}


def loss_figure(history: Sequence[dict], *, title: str = "reconstruction loss") -> Figure:
    """Total, data and regulariser loss against iteration, with a labelled line at every stage change.

    Each point whose stage differs from the point before (warm-up, defocus scale fit, ...) gets a vertical
    line in that stage's colour, a short label along it and one legend entry per stage name; the return to
    "refine" after each defocus scale fit is not marked again, only the start of the refinement. Points
    without a "stage" (the thinned history a live reconstructor publishes) mark nothing.
    """
    fig = Figure(figsize=(7.0, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("phase iteration")
    ax.set_ylabel("loss per pixel")
    if not history:
        ax.text(0.5, 0.5, "no iterations recorded", transform=ax.transAxes, ha="center", va="center")
        return fig
    it = np.array([h["iteration"] for h in history], dtype=np.float64)
    for key, style, colour, label in (
        ("loss", "-", "k", "total"),
        ("data_loss", "--", "tab:red", "data"),
        ("reg_loss", ":", "tab:purple", "regulariser"),
    ):
        values = np.array([h.get(key, np.nan) for h in history], dtype=np.float64)
        keep = np.isfinite(values) & (values > 0)
        if keep.any():
            ax.semilogy(it[keep], values[keep], style, color=colour, lw=1.3, label=label)

    from matplotlib.lines import Line2D
    from matplotlib.transforms import blended_transform_factory

    cycle = iter(["tab:brown", "tab:pink", "tab:olive", "tab:cyan"])  # for stage names not in _STAGE_COLOURS
    colours: dict[str, str] = {}
    stage_handles: dict[str, Line2D] = {}
    trans = blended_transform_factory(ax.transData, ax.transAxes)
    prev = None
    for h in history:
        if h.get("stage") is None:
            continue
        stage = str(h["stage"])
        # Returning to refine after a one-off fit is no new stage: only its first start is marked.
        if stage != prev and (stage != "refine" or stage not in colours):
            if stage not in colours:
                colours[stage] = _STAGE_COLOURS.get(stage) or next(cycle, "0.3")
            colour = colours[stage]
            ax.axvline(h["iteration"], color=colour, lw=1.0, ls="-.", alpha=0.8, zorder=0)
            ax.text(
                h["iteration"],
                0.98,
                f" {_STAGE_LABELS.get(stage, stage)}",
                transform=trans,
                rotation=90,
                ha="right",
                va="top",
                fontsize=7,
                color=colour,
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.7, "pad": 0.5},
            )
            if stage not in stage_handles:
                stage_handles[stage] = Line2D(
                    [], [], color=colour, lw=1.0, ls="-.", label=f"stage: {_STAGE_LABELS.get(stage, stage)}"
                )
        prev = stage
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(
        handles=handles + list(stage_handles.values()),
        fontsize=8,
        frameon=False,
        loc="center left",
        bbox_to_anchor=(1.01, 0.5),
    )
    ax.grid(True, which="major", color="0.92", lw=0.6)
    ax.set_axisbelow(True)
    return fig


def save_loss_png(path, history: Sequence[dict]) -> Path:
    """Total, data and regulariser terms against iteration, with each stage change labelled (loss_figure)."""
    return save_figure(loss_figure(history), path, dpi=110)


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _finite_range(arrays, lo_pct: float | None = None, hi_pct: float | None = None) -> tuple[float, float]:
    """(low, high) over the finite values of all arrays: min/max, or the given percentiles of the pooled values."""
    finite = np.concatenate([a[np.isfinite(a)].ravel() for a in arrays]) if arrays else np.zeros(0)
    if finite.size == 0:
        return 0.0, 1.0
    if lo_pct is None:
        lo, hi = float(finite.min()), float(finite.max())
    else:
        lo, hi = (float(v) for v in np.percentile(finite, [lo_pct, hi_pct]))
    if not hi > lo:  # flat images: a unit-wide window around the value
        lo, hi = lo - 0.5, hi + 0.5
    return lo, hi


def _image_grid_figure(
    panels: Sequence[tuple[str, np.ndarray]],
    pixel_size_m: float,
    vmin: float,
    vmax: float,
    cbar_label: str,
    *,
    cmap: str = "gray",
    max_cols: int = 5,
    panel_in: float = 3.2,
    extend: str = "neither",
) -> Figure:
    """Image panels on one colour scale (vmin, vmax), a scale bar on each and one colour bar for all."""
    n = len(panels)
    if n == 0:
        raise ValueError("nothing to plot: no panels")
    shapes = {img.shape for _, img in panels}
    for _, img in panels:
        if img.ndim != 2:
            raise ValueError(f"each panel must be a 2-D (H, W) array, got shape {img.shape}")
    cols = min(n, max_cols)
    rows = -(-n // cols)
    h, w = panels[0][1].shape
    aspect = h / w
    fig = Figure(figsize=(panel_in * cols + 0.9, panel_in * aspect * rows + 0.45 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    im = None
    for k, a in enumerate(axes.ravel()):
        if k >= n:
            a.set_axis_off()
            continue
        title, img = panels[k]
        im = a.imshow(
            img, cmap=cmap, vmin=vmin, vmax=vmax, extent=_extent_nm(img.shape, pixel_size_m), interpolation="nearest"
        )
        _bare_image_axes(a)
        a.set_title(title, fontsize=10)
        add_scale_bar(a, pixel_size_m, img.shape)
    used = [a for k, a in enumerate(axes.ravel()) if k < n]
    cbar = fig.colorbar(im, ax=used, shrink=0.9 if rows == 1 else 0.95, pad=0.02, extend=extend)
    cbar.set_label(cbar_label)
    cbar.outline.set_linewidth(0.6)
    if len(shapes) > 1:
        fig.suptitle("panels differ in size; scale bars are per panel", fontsize=8)
    return fig


def comparison_figure(
    panels: Sequence[tuple[str, np.ndarray]],
    pixel_size_m: float,
    *,
    scale: str = "union",
    unit: str = "rad",
    quantity: str = "phase",
    cmap: str = "gray",
) -> Figure:
    """Side-by-side maps (e.g. truth, TIE, AD) on ONE colour scale, one colour bar in `unit`, scale bars.

    scale="union" (default): the range spans the finite min and max over all panels, so nothing is clipped.
    scale="reference": the range of the first panel (put the truth or the reference there); values of other
    panels outside it saturate, which the colour bar shows with arrows.
    """
    arrays = [(str(t), _to_numpy(img)) for t, img in panels]
    if not arrays:
        raise ValueError("nothing to plot: no panels")
    if scale == "union":
        vmin, vmax = _finite_range([a for _, a in arrays])
        extend = "neither"
    elif scale == "reference":
        vmin, vmax = _finite_range([arrays[0][1]])
        lo, hi = _finite_range([a for _, a in arrays])
        extend = {(False, False): "neither", (True, False): "min", (False, True): "max", (True, True): "both"}[
            (lo < vmin, hi > vmax)
        ]
    else:
        raise ValueError(f"scale must be 'union' or 'reference', got {scale!r}")
    label = f"{quantity} ({unit})" if quantity else unit
    return _image_grid_figure(arrays, pixel_size_m, vmin, vmax, label, cmap=cmap, extend=extend)


def save_comparison_png(
    path, panels: Sequence[tuple[str, np.ndarray]], pixel_size_m: float, *, scale: str = "union", unit: str = "rad"
) -> Path:
    """Side-by-side maps on one colour scale with one colour bar and scale bars (comparison_figure)."""
    return save_figure(comparison_figure(panels, pixel_size_m, scale=scale, unit=unit), path, dpi=110)


def series_figure(
    images: np.ndarray,
    defocus_m: Sequence[float],
    pixel_size_m: float,
    *,
    counts: bool = False,
    intensity_unit: str | None = None,
    percentiles: tuple[float, float] = (0.5, 99.5),
) -> Figure:
    """The defocus series on ONE grey scale: the given percentiles of all images pooled (robust to hot
    pixels), one colour bar labelled with the intensity unit, a scale bar on each panel, defocus in each title.

    The unit is intensity_unit when given, else "counts" when counts=True (dose-scaled frames), else
    "normalised intensity".
    """
    imgs = _to_numpy(images)
    if imgs.ndim == 2:
        imgs = imgs[None]
    if imgs.ndim != 3:
        raise ValueError(f"images must be (N, H, W), got shape {imgs.shape}")
    df = [float(d) for d in np.asarray(defocus_m, dtype=np.float64).ravel()]
    if len(df) != imgs.shape[0]:
        raise ValueError(f"defocus_m has {len(df)} entries for {imgs.shape[0]} images")
    unit = intensity_unit or ("counts" if counts else "normalised intensity")
    df_unit = "mm" if max((abs(d) for d in df), default=0.0) >= 1e-3 else "µm"
    panels = [(f"Δf = {format_defocus(d, df_unit)}", img) for img, d in zip(imgs, df, strict=True)]
    vmin, vmax = _finite_range(list(imgs), *percentiles)
    return _image_grid_figure(panels, pixel_size_m, vmin, vmax, unit, extend="both")


def save_series_png(
    path,
    images: np.ndarray,
    defocus_m: Sequence[float],
    pixel_size_m: float,
    *,
    counts: bool = False,
    intensity_unit: str | None = None,
) -> Path:
    """The series montage on one grey scale with a colour bar, scale bars and defocus titles (series_figure)."""
    fig = series_figure(images, defocus_m, pixel_size_m, counts=counts, intensity_unit=intensity_unit)
    return save_figure(fig, path, dpi=110)


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
    return image_figure(
        phase, pixel_size_m, label="phase (rad)", title=title, cmap=cmap, show_axes=show_axes, width_in=width_in
    )


def amplitude_figure(amplitude: np.ndarray, pixel_size_m: float, *, title: str | None = None) -> Figure:
    """Reconstructed amplitude (relative to the unscattered wave) with its colour bar and a scale bar."""
    return image_figure(amplitude, pixel_size_m, label="amplitude (relative)", title=title)


def image_figure(
    image: np.ndarray,
    pixel_size_m: float,
    *,
    label: str,
    title: str | None = None,
    cmap: str = "gray",
    show_axes: bool = False,
    width_in: float = 5.2,
) -> Figure:
    """A 2-D map on its finite min..max with a colour bar labelled `label` beside it and a scale bar on it."""
    phi = np.asarray(image, dtype=np.float64)
    if phi.ndim != 2:
        raise ValueError(f"image must be a 2-D (H, W) array, got shape {phi.shape}")
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
    cbar.set_label(label)
    cbar.outline.set_linewidth(0.6)
    add_scale_bar(ax, pixel_size_m, phi.shape)
    return fig


def induction_saturation(bx, by, percentile: float = 99.0) -> float:
    """The |B_perp t| (T m) at which the colour wheel reaches full brightness: the given percentile."""
    return float(np.percentile(np.hypot(np.asarray(bx), np.asarray(by)), percentile))


def _ordinal(p: float) -> str:
    n = f"{p:g}"
    if not n.isdigit():
        return f"{n}th"
    k = int(n)
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{n}{suffix}"


_BPT = r"$|B_\perp t|$"


def induction_field_figure(
    bx,
    by,
    pixel_size_m: float,
    *,
    title: str | None = None,
    saturation_scale: float | None = None,
    percentile: float = 99.0,
    width_in: float = 6.2,
) -> tuple[Figure, float]:
    """Colour-wheel picture of an in-plane induction (B_x t, B_y t in T m), with the wheel and a magnitude
    ramp in a side panel to the right of the data (never over it) and a scale bar on the image.

    The saturation (|B_perp t| in T m at full brightness) defaults to the given percentile of the magnitude,
    and the figure says so; returns (figure, saturation used), 0.0 for a zero field (all black).
    """
    from ltemlive.induction import colour_wheel, colour_wheel_legend

    bx, by = _to_numpy(bx), _to_numpy(by)
    pixel = float(pixel_size_m)
    if not np.isfinite(pixel) or pixel <= 0:
        raise ValueError(f"pixel_size_m must be a finite positive number, got {pixel_size_m!r}")
    auto = saturation_scale is None
    sat = induction_saturation(bx, by, percentile) if auto else float(saturation_scale)
    rgb = colour_wheel(bx, by, saturation_scale=sat if (sat > 0 or not auto) else None)
    h, w = rgb.shape[:2]
    fig = Figure(figsize=(width_in, (width_in - 1.6) * h / w + (0.35 if title else 0.1)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(rgb, extent=_extent_nm((h, w), pixel), interpolation="nearest")
    _bare_image_axes(ax)
    if title:
        ax.set_title(title, fontsize=11)
    add_scale_bar(ax, pixel, (h, w))

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
    ramp_ax.set_title(f"magnitude {_BPT} (T·nm)", fontsize=9)
    if sat <= 0:
        note = "zero field"
    elif auto:
        note = f"saturates at the {_ordinal(percentile)}\npercentile of {_BPT}:\n{sat_tnm:.3g} T·nm"
    else:
        note = f"saturates at\n{_BPT} = {sat_tnm:.3g} T·nm\n(fixed scale)"
    ramp_ax.text(0.5, -1.9, note, transform=ramp_ax.transAxes, ha="center", va="top", fontsize=8)
    return fig, sat


def induction_figure(
    phase: np.ndarray,
    pixel_size_m: float,
    *,
    title: str | None = None,
    saturation_scale: float | None = None,
    width_in: float = 6.2,
) -> tuple[Figure, float]:
    """induction_field_figure of the in-plane induction of a phase map (rad); returns (figure, saturation)."""
    from ltemlive.induction import induction_map

    bx, by = induction_map(phase, pixel_size_m)
    return induction_field_figure(
        bx, by, pixel_size_m, title=title, saturation_scale=saturation_scale, width_in=width_in
    )


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
    xs = np.unique(np.concatenate([x, *[np.asarray(v[0], dtype=np.float64) for v in (truth_error_pct or {}).values()]]))
    if xs.size == 1:  # one series so far: a unit-wide axis around it, not matplotlib's +-0.05
        axes[-1].set_xlim(xs[0] - 1.0, xs[0] + 1.0)
    return fig


def calibration_history_figure(rows: Sequence[dict]) -> Figure:
    """calibration_figure of the compact feedback decisions a running controller publishes (its "calibration"
    events' history: series, accepted, estimate_scale, sigma_scale, scale, offset_m per decision)."""

    def column(key: str) -> np.ndarray:
        out = []
        for r in rows:
            try:
                out.append(float(r.get(key)))
            except (TypeError, ValueError):
                out.append(np.nan)
        return np.asarray(out, dtype=np.float64)

    series = [int(r.get("series") or 0) for r in rows]
    return calibration_figure(
        series,
        column("scale"),
        column("offset_m"),
        [bool(r.get("accepted")) for r in rows],
        estimate_scale=column("estimate_scale"),
        sigma_scale=column("sigma_scale"),
    )


def figure_png(fig: Figure, *, dpi: int = 100) -> bytes:
    """The figure as PNG bytes (tight bounding box, white background), for a web page rather than a file."""
    import io

    if fig.canvas is None or not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    return buf.getvalue()


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
