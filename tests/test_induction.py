"""Induction from phase (conventions.md signs) and the colour-wheel picture."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch

from ltemlive.constants import E_CHARGE, E_OVER_HBAR, HBAR
from ltemlive.induction import colour_wheel, colour_wheel_legend, induction_map, save_induction_png

PIXEL_M = 5e-9
SLOPE = 2e6  # rad/m: 0.01 rad per 5 nm pixel


def _grid(h=32, w=40):
    y, x = np.mgrid[:h, :w] * PIXEL_M
    return y, x


def test_phase_along_x_gives_positive_by():
    _, x = _grid()
    bx_t, by_t = induction_map(SLOPE * x, PIXEL_M)
    np.testing.assert_allclose(by_t, (HBAR / E_CHARGE) * SLOPE, rtol=1e-10)  # edges included
    np.testing.assert_allclose(bx_t, 0.0, atol=1e-12 * abs(by_t).max())


def test_phase_along_y_gives_negative_bx():
    y, _ = _grid()
    bx_t, by_t = induction_map(torch.from_numpy(SLOPE * y), PIXEL_M)  # torch input, numpy output
    assert isinstance(bx_t, np.ndarray)
    np.testing.assert_allclose(bx_t, -SLOPE / E_OVER_HBAR, rtol=1e-10)
    np.testing.assert_allclose(by_t, 0.0, atol=1e-12 * abs(bx_t).max())


def test_uniform_film_round_trip():
    """B = 1 T along +x in a 50 nm film: d phi/dy = -(e/hbar) B t (the AB slope), and back."""
    b_t = 1.0 * 50e-9
    y, _ = _grid()
    bx_t, by_t = induction_map(-E_OVER_HBAR * b_t * y, PIXEL_M)
    np.testing.assert_allclose(bx_t, b_t, rtol=1e-10)
    np.testing.assert_allclose(by_t, 0.0, atol=1e-12 * b_t)


def test_curved_phase_is_second_order_at_edges():
    _, x = _grid()
    phase = 1e13 * x**2  # quadratic: central and second-order one-sided differences are exact
    _, by_t = induction_map(phase, PIXEL_M)
    np.testing.assert_allclose(by_t, 2e13 * x / E_OVER_HBAR, rtol=1e-9, atol=1e-20)


def _hue_deg(rgb):
    h, _, _ = colorsys.rgb_to_hsv(*(np.asarray(rgb, dtype=float) / 255))
    return 360.0 * h


@pytest.mark.parametrize(
    ("bx", "by", "hue"),
    [(1.0, 0.0, 0.0), (0.0, 1.0, 90.0), (-1.0, 0.0, 180.0), (0.0, -1.0, 270.0)],
)
def test_colour_wheel_directions(bx, by, hue):
    rgb = colour_wheel(np.full((4, 4), bx), np.full((4, 4), by))
    assert rgb.dtype == np.uint8
    assert rgb.shape == (4, 4, 3)
    assert _hue_deg(rgb[0, 0]) == pytest.approx(hue, abs=1.0)
    assert rgb[0, 0].max() == 255  # full magnitude is full value


def test_colour_wheel_plus_x_is_red_and_zero_is_black():
    bx = np.array([[1.0, 0.0], [0.5, 0.0]])
    by = np.zeros((2, 2))
    rgb = colour_wheel(bx, by, saturation_scale=1.0)
    np.testing.assert_array_equal(rgb[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(rgb[0, 1], [0, 0, 0])
    np.testing.assert_array_equal(rgb[1, 0], [128, 0, 0])  # value scales with magnitude
    np.testing.assert_array_equal(colour_wheel(np.zeros((3, 3)), np.zeros((3, 3))), 0)  # all-zero field


def test_colour_wheel_robust_scale_ignores_a_hot_pixel():
    bx = np.ones((20, 20))
    bx[0, 0] = 1e3
    rgb = colour_wheel(bx, np.zeros_like(bx))
    assert rgb[5, 5, 0] == 255  # not darkened by the outlier


def test_legend_matches_screen_axes():
    size = 65
    legend = colour_wheel_legend(size)
    c = size // 2
    assert legend.shape == (size, size, 3)
    assert legend.dtype == np.uint8
    assert _hue_deg(legend[c, size - 3]) == pytest.approx(0.0, abs=2.0)  # right of centre: +x, red
    assert _hue_deg(legend[size - 3, c]) == pytest.approx(90.0, abs=2.0)  # below centre: +y (rows)
    assert legend[c, c].max() < 10  # zero field at the centre: black
    np.testing.assert_array_equal(legend[0, 0], [255, 255, 255])  # outside the disc


def test_save_induction_png(tmp_path):
    y, x = _grid(48, 64)
    bx_t, by_t = induction_map(np.sin(x / (8 * PIXEL_M)) + np.cos(y / (6 * PIXEL_M)), PIXEL_M)
    out = save_induction_png(tmp_path / "b.png", bx_t, by_t, PIXEL_M, title="test")
    with open(out, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: induction_map(np.zeros((2, 8, 8)), PIXEL_M), "phase"),
        (lambda: induction_map(np.full((8, 8), np.nan), PIXEL_M), "phase"),
        (lambda: induction_map(np.zeros((8, 8)), 0.0), "pixel_size_m"),
        (lambda: induction_map(np.zeros((8, 8)), -1e-9), "pixel_size_m"),
        (lambda: colour_wheel(np.zeros((4, 4)), np.zeros((4, 5))), "by"),
        (lambda: colour_wheel(np.zeros((4, 4)), np.zeros((4, 4)), saturation_scale=0.0), "saturation_scale"),
        (lambda: colour_wheel_legend(1), "size"),
    ],
)
def test_bad_input_names_parameter(call, name):
    with pytest.raises(ValueError, match=name):
        call()
