"""Run pictures: each save_* writes a PNG, and its *_figure builder has the expected colour bars and scales."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure

from ltemlive import pictures
from ltemlive.induction import induction_map, save_induction_png

PIXEL = 5e-9
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _all_axes(fig: Figure) -> list:
    out, todo = [], list(fig.axes)
    while todo:
        a = todo.pop(0)
        out.append(a)
        todo.extend(a.child_axes)
    return out


def _colourbars(fig: Figure) -> list:
    """The axes of every colour bar in the figure, found from the public ScalarMappable.colorbar links."""
    bars = []
    for a in _all_axes(fig):
        for im in a.images:
            if im.colorbar is not None and im.colorbar.ax not in bars:
                bars.append(im.colorbar.ax)
    return bars


def _image_axes(fig: Figure) -> list:
    bars = _colourbars(fig)
    return [a for a in fig.axes if a not in bars and a.images]


def _texts(fig: Figure) -> list[str]:
    out = [t.get_text() for t in fig.texts]
    for a in _all_axes(fig):
        out += [a.get_title(), a.xaxis.label.get_text(), a.yaxis.label.get_text()]
        out += [t.get_text() for t in a.texts]
        legend = a.get_legend()
        if legend is not None:
            out += [t.get_text() for t in legend.get_texts()]
    return out


def _assert_png(path) -> None:
    with open(path, "rb") as fh:
        assert fh.read(8) == PNG_MAGIC


def vortex_phase(n: int = 48) -> np.ndarray:
    y, x = np.mgrid[:n, :n] - (n - 1) / 2
    return 2.0 * np.exp(-(x**2 + y**2) / (0.1 * n**2)) + 0.01 * x


def series(n: int = 3, size: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    base = 1 + 0.2 * np.sin(np.arange(size) / 3)[None, :]
    images = np.stack([base * (1 + 0.3 * k) + 0.05 * rng.standard_normal((size, size)) for k in range(n)])
    images[0, 3, 3] = 50.0  # a hot pixel must not set the shared scale
    defocus = np.linspace(-1.6e-3, 1.6e-3, n)
    return images, defocus


def history():
    stages = ["start", "warm-up", "refine", "refine", "defocus scale", "refine", "refine", "defocus scale", "refine"]
    return [
        {"iteration": 10 * i, "loss": 1.0 / (i + 1), "data_loss": 0.8 / (i + 1), "reg_loss": 0.2 / (i + 1), "stage": s}
        for i, s in enumerate(stages)
    ]


def test_series_shared_scale_one_colourbar_with_unit(tmp_path):
    images, defocus = series()
    fig = pictures.series_figure(images, defocus, PIXEL)
    panels = _image_axes(fig)
    assert len(panels) == 3
    clims = {a.images[0].get_clim() for a in panels}
    assert len(clims) == 1
    lo, hi = clims.pop()
    assert hi < 50.0  # robust percentiles over all images, not the hot pixel
    assert lo <= images[0].min() + 0.2 and hi >= images[-1].max() - 0.5
    (cbar,) = _colourbars(fig)
    assert cbar.yaxis.label.get_text() == "normalised intensity"
    titles = [a.get_title() for a in panels]
    assert titles == ["Δf = \u22121.600 mm", "Δf = +0.000 mm", "Δf = +1.600 mm"]
    assert all(a.patches for a in panels)  # scale bars
    assert all(t.get_text().endswith("nm") for a in panels for t in a.texts)

    fig = pictures.series_figure(images, defocus, PIXEL, counts=True)
    assert _colourbars(fig)[0].yaxis.label.get_text() == "counts"
    fig = pictures.series_figure(images, defocus, PIXEL, intensity_unit="e⁻/px")
    assert _colourbars(fig)[0].yaxis.label.get_text() == "e⁻/px"

    _assert_png(pictures.save_series_png(tmp_path / "series.png", images, defocus, PIXEL))
    _assert_png(pictures.save_series_png(tmp_path / "counts.png", images, defocus, PIXEL, counts=True))


def test_series_many_images_wrap_and_share_scale():
    images, defocus = series(n=7, size=16)
    fig = pictures.series_figure(images, defocus, PIXEL)
    assert len(_image_axes(fig)) == 7
    assert len({a.images[0].get_clim() for a in _image_axes(fig)}) == 1
    assert len(_colourbars(fig)) == 1


@pytest.mark.parametrize("scale", ["union", "reference"])
def test_comparison_shared_scale_one_colourbar(tmp_path, scale):
    truth = vortex_phase()
    panels = [("truth", truth), ("TIE start", 0.7 * truth), ("AD", 1.2 * truth)]
    fig = pictures.comparison_figure(panels, PIXEL, scale=scale)
    axes = _image_axes(fig)
    assert [a.get_title() for a in axes] == ["truth", "TIE start", "AD"]
    clims = {a.images[0].get_clim() for a in axes}
    assert len(clims) == 1
    lo, hi = clims.pop()
    if scale == "union":
        assert (lo, hi) == pytest.approx((min(p.min() for _, p in panels), max(p.max() for _, p in panels)))
    else:
        assert (lo, hi) == pytest.approx((truth.min(), truth.max()))
    (cbar,) = _colourbars(fig)
    assert "rad" in cbar.yaxis.label.get_text()
    assert all(a.patches for a in axes)  # scale bars
    _assert_png(pictures.save_comparison_png(tmp_path / f"c_{scale}.png", panels, PIXEL, scale=scale))


def test_comparison_rejects_unknown_scale():
    with pytest.raises(ValueError, match="scale"):
        pictures.comparison_figure([("a", vortex_phase())], PIXEL, scale="each")


def test_phase_png_has_colourbar_and_scale_bar(tmp_path):
    fig = pictures.phase_figure(vortex_phase(), PIXEL, title="AD phase (rad)")
    (cbar,) = _colourbars(fig)
    assert "rad" in cbar.yaxis.label.get_text()
    assert fig.axes[0].patches
    _assert_png(pictures.save_phase_png(tmp_path / "phase.png", vortex_phase(), PIXEL, "AD phase (rad)"))


def test_loss_stages_are_labelled(tmp_path):
    fig = pictures.loss_figure(history())
    (ax,) = fig.axes
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    for stage in ("start", "warm-up", "defocus scale fit", "refine"):
        assert f"stage: {stage}" in legend
    assert {"total", "data", "regulariser"} <= set(legend)
    labels = [t.get_text().strip() for t in ax.texts]
    # one label per stage change; the return to refine after a scale fit is not marked again
    assert labels == ["start", "warm-up", "refine", "defocus scale fit", "defocus scale fit"]
    assert not _colourbars(fig)
    _assert_png(pictures.save_loss_png(tmp_path / "loss.png", history()))
    _assert_png(pictures.save_loss_png(tmp_path / "empty.png", []))


def _induction(n: int = 64):
    return induction_map(vortex_phase(n), PIXEL)


def test_induction_wheel_beside_the_map(tmp_path):
    bx, by = _induction()
    fig, sat = pictures.induction_field_figure(bx, by, PIXEL, title=r"$B_\perp t$")
    assert sat == pytest.approx(pictures.induction_saturation(bx, by, 99.0))
    fig.canvas.draw()
    (ax,) = fig.axes
    data = ax.get_position()
    assert len(ax.child_axes) == 2  # wheel and magnitude ramp
    for child in ax.child_axes:
        box = child.get_position()
        assert not data.overlaps(box)
        assert box.x0 > data.x1
    texts = _texts(fig)
    assert any(f"saturates at the 99th\npercentile of $|B_\\perp t|$:\n{sat / 1e-9:.3g} T·nm" == t for t in texts)
    assert any("magnitude" in t and "T·nm" in t for t in texts)
    assert not any("B_perp" in t for t in texts)


def test_induction_fixed_saturation_is_stated():
    bx, by = _induction()
    fig, sat = pictures.induction_field_figure(bx, by, PIXEL, saturation_scale=2e-9)
    assert sat == 2e-9
    assert any("fixed scale" in t and "2 T·nm" in t for t in _texts(fig))


def test_save_induction_png_title_is_mathtext(tmp_path, monkeypatch):
    bx, by = _induction()
    seen = []
    real = pictures.induction_field_figure

    def spy(*args, **kwargs):
        fig, sat = real(*args, **kwargs)
        seen.append(fig)
        return fig, sat

    monkeypatch.setattr(pictures, "induction_field_figure", spy)
    out = save_induction_png(tmp_path / "induction.png", bx, by, PIXEL, title="B_perp t (colour wheel)")
    _assert_png(out)
    (fig,) = seen
    assert fig.axes[0].get_title() == r"$B_\perp t$ (colour wheel)"
    assert not any("B_perp" in t for t in _texts(fig))


def test_save_induction_png_zero_field(tmp_path):
    z = np.zeros((16, 16))
    _assert_png(save_induction_png(tmp_path / "zero.png", z, z, PIXEL))
    with pytest.raises(ValueError, match="saturation_scale"):
        save_induction_png(tmp_path / "bad.png", z, z, PIXEL, saturation_scale=0.0)


def test_ordinal():
    assert [pictures._ordinal(p) for p in (99, 95, 1, 2, 3, 11, 12, 99.5)] == [
        "99th",
        "95th",
        "1st",
        "2nd",
        "3rd",
        "11th",
        "12th",
        "99.5th",
    ]
