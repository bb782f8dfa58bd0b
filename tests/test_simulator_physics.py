"""Physics checks of the simulator against docs/conventions.md and the LTEM reference (section 5)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import fft as sfft

from simulator import (
    E_OVER_HBAR,
    Specimen,
    bloch_skyrmion_lattice,
    electrostatic_phase,
    exit_wave,
    image_series,
    interaction_constant,
    magnetic_phase,
    make_specimen,
    neel_skyrmion_lattice,
    stripe_domains,
    transfer_function,
    wavelength_m,
)

PX = 5e-9


def _axes(n, px):
    c = (np.arange(n) - n / 2 + 0.5) * px
    return c[:, None], c[None, :]


def _gaussian_bump(n=128, px=2e-9, sigma_m=15e-9, height=0.5):
    y, x = _axes(n, px)
    return height * np.exp(-(x**2 + y**2) / (2 * sigma_m**2))


# ---------------------------------------------------------------------------------------------- constants


@pytest.mark.parametrize(
    ("kv", "pm"), [(80, 4.1757), (120, 3.3492), (200, 2.5079), (300, 1.9687)]
)
def test_wavelength_codata(kv, pm):
    assert wavelength_m(kv * 1e3) * 1e12 == pytest.approx(pm, rel=1e-4)


@pytest.mark.parametrize(
    ("kv", "sigma"), [(80, 0.01009), (120, 0.00864), (200, 0.00729), (300, 0.00653)]
)
def test_interaction_constant(kv, sigma):
    # reference values are given to 3 significant figures, in rad / (V nm)
    assert interaction_constant(kv * 1e3) * 1e-9 == pytest.approx(sigma, abs=6e-6)


def test_e_over_hbar():
    assert E_OVER_HBAR * 1e-18 == pytest.approx(1.5193e-3, rel=1e-4)  # rad / (T nm^2)


# ---------------------------------------------------------------------------------------------- exit wave


def _stripes(n=128, b=1.0, t=50e-9):
    # 128 px x 5 nm = 640 nm = two 320 nm periods: zero mean m_y on the periodic grid
    return stripe_domains((n, n), PX, period_m=320e-9, wall_width_m=5e-9, thickness_m=t, b_sat_t=b,
                          mean_inner_potential_v=0.0)


def test_ab_slope_and_sign_y_stripes():
    b, t = 0.8, 60e-9
    spec = _stripes(b=b, t=t)
    phi = magnetic_phase(spec)
    dphi_dx = np.gradient(phi, PX, axis=1)
    my = spec.m[1]
    inside = np.abs(my) > 0.999999  # domain interiors, away from the walls
    expected = E_OVER_HBAR * b * t  # |d phi / dx| = (e / hbar) B t
    ratio = dphi_dx[inside] / (expected * my[inside])  # sign: d phi/dx = +(e/hbar) B_y t
    assert inside.sum() > 1000
    np.testing.assert_allclose(ratio, 1.0, atol=0.02)
    assert np.all(np.abs(np.gradient(phi, PX, axis=0)) < 1e-6 * expected)


def test_ab_slope_and_sign_x_stripes():
    """Transposed stripes (m along +-x, varying in y): d phi / dy = -(e / hbar) B_x t."""
    b, t = 0.5, 40e-9
    s = _stripes(b=b, t=t)
    spec = Specimen(np.stack([s.m[1].T, np.zeros_like(s.m[0]), s.m[2].T]), b, s.thickness_m, 0.0, None, PX, "t")
    phi = magnetic_phase(spec)
    dphi_dy = np.gradient(phi, PX, axis=0)
    inside = np.abs(spec.m[0]) > 0.999999
    ratio = dphi_dy[inside] / (-E_OVER_HBAR * b * t * spec.m[0][inside])
    np.testing.assert_allclose(ratio, 1.0, atol=0.02)


def test_neel_skyrmions_invisible_at_zero_tilt_visible_when_tilted():
    kw = dict(lattice_period_m=150e-9, radius_m=40e-9, mean_inner_potential_v=0.0)
    neel = magnetic_phase(neel_skyrmion_lattice((96, 96), PX, **kw))
    bloch = magnetic_phase(bloch_skyrmion_lattice((96, 96), PX, **kw))
    tilted = magnetic_phase(neel_skyrmion_lattice((96, 96), PX, tilt_x_rad=np.deg2rad(20), **kw))
    inner = (slice(20, -20), slice(20, -20))  # away from the seam of the periodic grid
    assert np.ptp(bloch[inner]) > 0.3
    assert np.ptp(neel[inner]) < 1e-3 * np.ptp(bloch[inner])  # radial m has no curl
    assert np.ptp(tilted) > 0.05 * np.ptp(bloch)


def test_electrostatic_phase_step():
    v0, t, kv = 25.0, 30e-9, 200e3
    thick = np.zeros((64, 64))
    thick[:, 32:] = t
    spec = Specimen(np.zeros((3, 64, 64)), 1.0, thick, v0, 500e-9, PX, "step")
    phase, amp = exit_wave(spec, kv)
    step = phase[:, 40].mean() - phase[:, 10].mean()
    assert step == pytest.approx(interaction_constant(kv) * v0 * t, rel=1e-12)
    assert step == pytest.approx(0.00729e9 * v0 * t, rel=1e-3)
    np.testing.assert_allclose(electrostatic_phase(thick, v0, kv), phase, atol=1e-12)
    assert amp[0, 40] == pytest.approx(np.exp(-t / 500e-9)) and amp[0, 10] == 1.0


# ---------------------------------------------------------------------------------------------- imaging


def test_in_focus_no_aberrations_is_amplitude_squared():
    phi = _gaussian_bump() + 0.3 * np.random.default_rng(1).standard_normal((128, 128))
    amp = 0.5 + 0.5 * np.random.default_rng(2).random((128, 128))
    img = image_series(phi, amp, 2e-9, [0.0], 200e3, cs_m=0.0, theta_c_rad=0.0, focal_spread_m=0.0)[0]
    np.testing.assert_allclose(img, amp**2, rtol=1e-12, atol=1e-13)


def test_propagation_forward_then_back_is_identity():
    rng = np.random.default_rng(3)
    psi = (0.5 + rng.random((96, 96))) * np.exp(1j * rng.standard_normal((96, 96)))
    kw = dict(shape=(96, 96), pixel_size_m=2e-9, voltage_v=300e3, cs_m=1e-3, theta_c_rad=0.0,
              focal_spread_m=0.0, astig_m=2e-6, astig_azimuth_rad=0.4)
    t_fwd = transfer_function(defocus_m=1e-3, **kw)
    # back-propagation: -df, -Ca and -Cs undo the forward phase exactly
    t_back = transfer_function(**{**kw, "cs_m": -1e-3, "astig_m": -2e-6}, defocus_m=-1e-3)
    out = sfft.ifft2(sfft.fft2(psi) * t_fwd * t_back)
    np.testing.assert_allclose(out, psi, atol=1e-12)
    np.testing.assert_allclose(np.abs(t_fwd), 1.0, atol=1e-14)  # no envelope: pure phase


def test_free_space_propagator_sign():
    """T without aberrations is exp(-i pi lambda df q^2) (conventions.md)."""
    t = transfer_function((32, 32), 1e-9, 1e-6, 200e3, 0.0, 0.0, 0.0)
    q = sfft.fftfreq(32, d=1e-9)
    q2 = q[None, :] ** 2 + q[:, None] ** 2
    np.testing.assert_allclose(t, np.exp(-1j * np.pi * wavelength_m(200e3) * 1e-6 * q2), atol=1e-12)


_LTEM = dict(
    df=st.floats(2e-5, 3e-3) | st.floats(-3e-3, -2e-5),  # the LTEM defocus range
    cs=st.floats(0.0, 5e-3),
    theta=st.floats(0.0, 1e-5),
    delta=st.floats(0.0, 500e-9),
    ca_frac=st.floats(-0.25, 0.25),  # Ca as a fraction of df: away from focus in every direction
    phi_a=st.floats(-np.pi, np.pi),
)


@settings(max_examples=40, deadline=None)
@given(**_LTEM, factor=st.floats(1.0, 10.0))
def test_envelope_damps_and_is_monotone(df, cs, theta, delta, ca_frac, phi_a, factor):
    """E <= 1, and more divergence or focal spread never raises it (LTEM parameter ranges).

    The u(q) coupling of the two terms makes E non-monotone (by a negligible amount) outside these
    ranges: in Delta when lambda < 2 pi theta_c^2 |df_eff + Cs lambda^2 q^2| (e.g. theta_c = 2e-5 rad,
    |df| > 1 mm at 200 kV), in theta_c when |df_eff + Cs lambda^2 q^2| < pi lambda Delta^2 q^2 (near focus).
    """
    args = dict(shape=(48, 48), pixel_size_m=1e-9, defocus_m=df, voltage_v=200e3, cs_m=cs,
                astig_m=ca_frac * abs(df), astig_azimuth_rad=phi_a)
    e = np.abs(transfer_function(theta_c_rad=theta, focal_spread_m=delta, **args))
    assert np.all(e <= 1.0 + 1e-15)
    e_theta = np.abs(transfer_function(theta_c_rad=theta * factor + 1e-7, focal_spread_m=delta, **args))
    e_delta = np.abs(transfer_function(theta_c_rad=theta, focal_spread_m=delta * factor + 1e-9, **args))
    assert np.all(e_theta <= e * (1 + 1e-12))
    assert np.all(e_delta <= e * (1 + 1e-12))


def test_envelope_damps_high_frequencies():
    e = np.abs(transfer_function((128, 128), 5e-9, 1.6e-3, 200e3, 1e-3, 1e-5, 100e-9))
    assert e[0, 0] == 1.0
    assert e[0, 40] < 0.05  # damping period ~ pi theta_c df = 50 nm: 40 / 640 nm is well past it


def _principal_axis(img):
    """Orientation (rad, mod pi, from +x towards +y) of the second moments of |img|."""
    w = np.abs(img)
    y, x = np.indices(img.shape, dtype=float)
    cy, cx = (w * y).sum() / w.sum(), (w * x).sum() / w.sum()
    mxx = (w * (x - cx) ** 2).sum()
    myy = (w * (y - cy) ** 2).sum()
    mxy = (w * (x - cx) * (y - cy)).sum()
    return 0.5 * np.arctan2(2 * mxy, mxx - myy), (mxx + myy) / 2, np.hypot(mxx - myy, 2 * mxy) / 2


@pytest.mark.parametrize("phi_a", [0.0, np.pi / 6, np.pi / 2, -np.pi / 3])
def test_astigmatism_elongates_along_azimuth_at_overfocus(phi_a):
    phi = _gaussian_bump(n=128, px=2e-9, sigma_m=8e-9)
    img = image_series(phi, 1.0, 2e-9, [20e-6], 200e3, cs_m=0.0, theta_c_rad=0.0, focal_spread_m=0.0,
                       astig_m=8e-6, astig_azimuth_rad=phi_a)[0]
    angle, mean, aniso = _principal_axis(img - 1.0)
    assert aniso > 0.1 * mean  # clearly anisotropic
    diff = (angle - phi_a + np.pi / 2) % np.pi - np.pi / 2
    assert abs(diff) < np.deg2rad(3)
    # without astigmatism the same object images round
    round_img = image_series(phi, 1.0, 2e-9, [20e-6], 200e3, cs_m=0.0, theta_c_rad=0.0, focal_spread_m=0.0)[0]
    _, mean0, aniso0 = _principal_axis(round_img - 1.0)
    assert aniso0 < 1e-6 * mean0


def test_defocus_sign_positive_bump_bright_over_dark_under():
    phi = _gaussian_bump(n=128, px=2e-9, sigma_m=15e-9, height=0.5)
    imgs = image_series(phi, 1.0, 2e-9, [-50e-6, 50e-6], 200e3)
    c = 64
    assert imgs[1][c - 1 : c + 1, c - 1 : c + 1].mean() > 1.02  # over-focus: bright
    assert imgs[0][c - 1 : c + 1, c - 1 : c + 1].mean() < 0.98  # under-focus: dark


def test_fresnel_fringe_bright_on_hole_side_at_underfocus():
    """A hole in a thin film (phase 0.73 rad in the film, 0 in the hole): at under-focus the brightest
    fringe at the edge lies on the hole side; at over-focus it moves to the film side."""
    n, px = 256, 1e-9
    y, x = _axes(n, px)
    hole_r = 60e-9
    film = np.clip((np.hypot(x, y) - hole_r) / px + 0.5, 0.0, 1.0)  # film outside a round hole
    phi = interaction_constant(200e3) * 5.0 * 20e-9 * film
    under, over = image_series(phi, 1.0, px, [-10e-6, 10e-6], 200e3, cs_m=0.0, theta_c_rad=1e-6,
                               focal_spread_m=0.0)
    rr = x[0, n // 2 :]  # radial profile from the hole centre along +x
    near = np.abs(rr - hole_r) < 10e-9  # a few fringe widths sqrt(lambda |df|) ~ 5 nm
    r_under = rr[near][np.argmax(under[n // 2, n // 2 :][near])]
    r_over = rr[near][np.argmax(over[n // 2, n // 2 :][near])]
    assert r_under < hole_r, "under-focus: bright fringe inside the hole"
    assert under[n // 2, n // 2 :][near].max() > 1.2
    assert r_over > hole_r, "over-focus: bright fringe on the film"


def test_tie_consistency_small_defocus():
    """[I(+df) - I(-df)] / (2 df) = -(lambda / 2 pi) div(I grad phi) to O(df^2)."""
    n, px, kv, df = 256, 2e-9, 200e3, 2e-7  # field wide enough that the Gaussians do not wrap
    y, x = _axes(n, px)
    phi = _gaussian_bump(n, px, sigma_m=25e-9, height=1.0) + 0.5 * np.exp(-((x - 40e-9) ** 2 + y**2) / (2 * 30e-9**2))
    amp = 1.0 - 0.2 * np.exp(-((x + 30e-9) ** 2 + (y - 20e-9) ** 2) / (2 * 35e-9**2))
    ip, im = image_series(phi, amp, px, [df, -df], kv, cs_m=0.0, theta_c_rad=0.0, focal_spread_m=0.0)
    lhs = (ip - im) / (2 * df)

    qy = sfft.fftfreq(n, px)[:, None]
    qx = sfft.fftfreq(n, px)[None, :]

    def d(f, q):
        return sfft.ifft2(2j * np.pi * q * sfft.fft2(f)).real

    i0 = amp**2
    rhs = -(wavelength_m(kv) / (2 * np.pi)) * (d(i0 * d(phi, qx), qx) + d(i0 * d(phi, qy), qy))
    assert np.abs(lhs - rhs).max() < 1e-4 * np.abs(rhs).max()


def test_specimen_builders_sane():
    for name in ("vortex_disc", "bloch_skyrmion_lattice", "neel_skyrmion_lattice", "stripe_domains",
                 "resolution_pattern"):
        s = make_specimen(name, (64, 80), 20e-9, seed=1)
        assert s.m.shape == (3, 64, 80) and s.thickness_m.shape == (64, 80)
        norm = np.linalg.norm(s.m, axis=0)
        magnetic = norm > 0
        assert magnetic.any()
        np.testing.assert_allclose(norm[magnetic], 1.0, atol=1e-9)  # unit inside, 0 outside
        assert np.all(s.thickness_m >= 0) and s.thickness_m.max() <= 300e-9


def test_resolution_pattern_is_mixed_with_small_features():
    s = make_specimen("resolution_pattern", (512, 512), 5e-9)
    _, amp = exit_wave(s, 200e3)
    assert (s.thickness_m > 0).mean() > 0.05 and (s.thickness_m == 0).mean() > 0.5
    non_magnetic_material = (s.thickness_m > 0) & (np.linalg.norm(s.m, axis=0) == 0)
    assert non_magnetic_material.sum() > 100  # electrostatic-only features exist
    assert amp.min() < 1.0
    assert np.ptp(magnetic_phase(s)) > 1.0


def test_unknown_specimen_names_the_bad_name():
    with pytest.raises(ValueError, match=r"'no_such'.*vortex_disc"):
        make_specimen("no_such", (32, 32), PX)
    with pytest.raises(ValueError, match="radius_mm"):
        make_specimen("vortex_disc", (32, 32), PX, radius_mm=1.0)
