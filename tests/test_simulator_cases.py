"""The case suite (simulator/cases.py) and the specimens it adds: stated properties and physics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from simulator import E_OVER_HBAR, interaction_constant, magnetic_phase, make_specimen, simulate_series
from simulator.cases import CASES, config
from simulator.field import SpecimenField
from simulator.phase import exit_wave
from simulator.series import SimulationConfig
from simulator.specimens import SPECIMENS, specimen_params

#: phase std (rad) of each case's ground truth over the camera frame: (low, high)
PHASE_STD = {
    "weak_phase_absorbing": (0.2, 0.28),
    "vortex_array": (6.5, 8.0),
    "dome_island": (8.0, 9.0),
    "magnetic_needle": (9.0, 11.0),
    "vortex_disc": (6.0, 7.5),
    "bloch_skyrmions": (0.3, 0.45),
    "stripe_domains": (3.0, 4.0),
}
NOMINAL_OVER_TRUE = {"vortex_array": 0.94, "magnetic_needle": 1.05, "stripe_domains": 1.08}


def _truth(name, size="test"):
    return SpecimenField(config(name, size=size)).truth()


def _max_step(phase):
    return max(np.abs(np.diff(phase, axis=0)).max(), np.abs(np.diff(phase, axis=1)).max())


def _plane(phase):
    """Least-squares plane a + b x + c y of the phase (x, y in pixels); returns (b, c) and the residual."""
    h, w = phase.shape
    yy, xx = np.mgrid[:h, :w]
    a = np.c_[np.ones(h * w), xx.ravel(), yy.ravel()]
    coef = np.linalg.lstsq(a, phase.ravel(), rcond=None)[0]
    return coef[1:], phase - (a @ coef).reshape(h, w)


# ---------------------------------------------------------------------------------------------- the suite


def test_suite_lists_every_class():
    assert set(CASES) == set(PHASE_STD)
    assert sum(c.benign for c in CASES.values()) == 3
    for case in CASES.values():
        assert case.description and "\n" not in case.description
        for size in ("full", "test"):
            cfg = case.config(size)
            assert isinstance(cfg, SimulationConfig) and cfg.specimen in SPECIMENS
    with pytest.raises(ValueError, match="unknown case"):
        config("no_such_case")
    with pytest.raises(ValueError, match="size"):
        config("vortex_disc", size="huge")


def test_full_size_parameters_as_specified():
    c = {n: config(n) for n in CASES}
    assert c["weak_phase_absorbing"].shape == (256, 256) and c["weak_phase_absorbing"].pixel_size_m == 2e-9
    assert c["weak_phase_absorbing"].defocus_m == pytest.approx([-3e-4, -1.5e-4, 0, 1.5e-4, 3e-4])
    assert c["vortex_array"].shape == (512, 512) and c["vortex_array"].voltage_v == 300e3
    assert c["vortex_array"].pixel_size_m == 3e-9 and c["vortex_array"].dose_e_per_px == 200
    assert c["dome_island"].defocus_m == pytest.approx([-4e-4, 0, 4e-4]) and c["dome_island"].dose_e_per_px == 1000
    needle = c["magnetic_needle"]
    assert needle.pixel_size_m == 1.6e-9 and needle.defocus_m == pytest.approx([-15e-6, -3.75e-6, 3.75e-6, 15e-6])
    assert c["bloch_skyrmions"].voltage_v == 300e3 and c["bloch_skyrmions"].dose_e_per_px == 1000


@pytest.mark.parametrize("name", sorted(CASES))
def test_case_truth_properties(name):
    cfg = config(name, size="test")
    sim = simulate_series(cfg)
    assert sim.images.shape == (len(cfg.defocus_m), *cfg.shape)
    assert np.isfinite(sim.images).all()
    lo, hi = PHASE_STD[name]
    assert lo < sim.phase.std() < hi
    # the reconstruction model works on camera pixels: no neighbour may differ by pi or more
    assert _max_step(sim.phase) < 0.8 * np.pi
    ratio = sim.defocus_nominal_m / np.where(sim.defocus_true_m == 0, 1.0, sim.defocus_true_m)
    expected = NOMINAL_OVER_TRUE.get(name, 1.0)
    assert ratio[sim.defocus_true_m != 0] == pytest.approx(expected, rel=1e-9)
    assert CASES[name].nominal_over_true == pytest.approx(expected)
    assert ("exact" in CASES[name].defocus_error) == (expected == 1.0)


@pytest.mark.parametrize("name", ["weak_phase_absorbing", "magnetic_needle"])
def test_test_size_keeps_the_specimen(name):
    """The reduced version samples the same specimen: same field of view, same phase up to binning."""
    full, test = config(name), config(name, size="test")
    assert full.shape[0] * full.pixel_size_m == pytest.approx(test.shape[0] * test.pixel_size_m)
    assert full.specimen_params == test.specimen_params and full.defocus_m == test.defocus_m
    margin_full, margin_test = full.margin_px * full.pixel_size_m, test.margin_px * test.pixel_size_m
    assert margin_full == pytest.approx(margin_test, abs=test.pixel_size_m)


def test_seed_changes_only_the_noise():
    a = simulate_series(config("weak_phase_absorbing", size="test", seed=0))
    b = simulate_series(config("weak_phase_absorbing", size="test", seed=7))
    np.testing.assert_array_equal(a.phase, b.phase)
    np.testing.assert_array_equal(a.amplitude, b.amplitude)
    np.testing.assert_array_equal(a.defocus_true_m, b.defocus_true_m)
    assert not np.array_equal(a.images, b.images)
    assert np.abs(a.images - b.images).mean() > 0.01 * a.images.mean()


def test_weak_phase_absorbing_film_ramp_and_noise():
    cfg = config("weak_phase_absorbing", size="test")
    sim = simulate_series(cfg)
    # uniform absorption over the frame: amplitude 0.889, intensity 0.79 of vacuum in every image
    assert sim.amplitude == pytest.approx(0.889, abs=1e-3)
    level = sim.images.mean(axis=(1, 2)) / cfg.dose_e_per_px
    assert level == pytest.approx(0.79, abs=0.01)
    # Poisson noise ~2 % of the local intensity
    clean = simulate_series(cfg.model_copy(update={"dose_e_per_px": None}))
    rel = (sim.images / cfg.dose_e_per_px - clean.images) / clean.images
    assert 0.018 < rel.std() < 0.022
    # the net phase ramp (tilt) is there: ~0.75 rad across the frame, against ~0.1 rad of lattice contrast
    (bx, by), resid = _plane(sim.phase)
    assert -0.9 < bx * cfg.shape[1] < -0.6 and abs(by * cfg.shape[0]) < 0.05
    assert 0.07 < resid.std() < 0.13


def test_neel_film_patch_ramp_physics():
    """A tilted finite film patch shows a ramp of sign -(e/hbar) B t tan(alpha); an infinite film none."""
    px, n, alpha = 4e-9, 384, np.deg2rad(20.0)
    kw = dict(tilt_x_rad=alpha, b_sat_t=0.6, thickness_m=30e-9, mean_inner_potential_v=0.0)
    inf = magnetic_phase(make_specimen("neel_skyrmion_lattice", (n, n), px, **kw))
    patch_sp = make_specimen("neel_skyrmion_lattice", (n, n), px, film_size_m=900e-9, **kw)
    patch = magnetic_phase(patch_sp)
    c = slice(n // 2 - 32, n // 2 + 32)
    (bx_inf, _), _ = _plane(inf[c, c])
    (bx, by), _ = _plane(patch[c, c])
    full = E_OVER_HBAR * 0.6 * 30e-9 * math.tan(alpha) * px  # rad per pixel for an isolated strip
    assert abs(bx_inf) < 0.01 * full
    assert -0.6 * full < bx < -0.1 * full and abs(by) < 0.05 * full
    assert patch_sp.thickness_m[0, 0] == 0 and patch_sp.thickness_m[n // 2, n // 2] == pytest.approx(
        30e-9 / math.cos(alpha))


# ---------------------------------------------------------------------------------------------- new specimens


def test_new_specimens_registered():
    for name in ("vortex_array", "dome_island", "magnetic_needle"):
        assert name in SPECIMENS and "b_sat_t" in specimen_params(name)
        SimulationConfig(specimen=name, shape=(64, 64), defocus_m=[-1e-4, 1e-4])
    with pytest.raises(ValueError):
        make_specimen("magnetic_needle", (64, 64), 2e-9, width_m=-1.0)
    with pytest.raises(ValueError, match="touch"):
        make_specimen("vortex_array", (64, 64), 2e-9, pitch_m=500e-9, radius_m=300e-9)
    with pytest.raises(ValueError, match="profile"):
        make_specimen("dome_island", (64, 64), 2e-9, profile="cone")


def test_needle_ab_slope_and_stray_field():
    px, n, b, t, w = 4e-9, 512, 2.0, 80e-9, 200e-9
    sp = make_specimen("magnetic_needle", (n, n), px, width_m=w, thickness_m=t, length_m=1.6e-6, tip_y_m=700e-9,
                       b_sat_t=b, mean_inner_potential_v=0.0, edge_width_m=8e-9)
    phase = magnetic_phase(sp)
    ab = E_OVER_HBAR * b * t  # rad / m
    c = n // 2
    iy = c - 25  # y = -100 nm: the middle of the bar, 800 nm from either end
    g = np.gradient(phase[iy], px)
    inside = g[c - 5 : c + 6].mean()
    edge = round((w / 2 + 16e-9) / px)
    outside = 0.5 * (g[c + edge : c + edge + 5].mean() + g[c - edge - 5 : c - edge].mean())
    # Ampere at the bar's edge: the phase gradient jumps by (e/hbar) B t; inside it is close to that slope
    # (the flux returning through vacuum and the grid-mean moment the periodic FFT removes take ~10 %)
    assert inside - outside == pytest.approx(ab, rel=0.05)
    assert inside == pytest.approx(ab, rel=0.15) and inside > 0  # d phi/dx = +(e/hbar) B_y t
    # the stray field beyond the tip: vacuum phase varies by a sizeable part of the bar's flux (e/hbar) B t w
    it = c + round(800e-9 / px)  # 100 nm beyond the tip
    dphi = phase[it, c + 25] - phase[it, c - 25]
    assert 0.1 * ab * w < dphi < 0.3 * ab * w  # B_y > 0 where the flux leaves the tip
    assert sp.thickness_m[it, c] == 0 and np.all(sp.m[:, it, c] == 0)


def test_needle_case_stray_phase_in_the_frame():
    cfg = config("magnetic_needle", size="test")
    sp = SpecimenField(cfg)
    phase, _ = sp.truth()
    spec = make_specimen(cfg.specimen, cfg.shape, cfg.pixel_size_m, **cfg.specimen_params)
    vacuum = spec.thickness_m == 0
    assert 0.3 < vacuum.mean() < 0.8  # the tip is in the frame, the bar runs out of it
    gx = np.gradient(phase, axis=1)
    assert np.abs(gx[vacuum]).mean() > 0.05  # rad / px: a large stray-field phase in vacuum
    row = phase[10]  # near the bottom edge, across the bar
    assert row.max() - row.min() > 20.0  # tens of rad across the needle


@pytest.mark.parametrize("profile", ["paraboloid", "spherical_cap"])
def test_dome_island_electrostatic_and_vortex_phase(profile):
    px, n, r0, t0, b, v0, u = 3e-9, 384, 300e-9, 80e-9, 1.0, 20.0, 200e3
    kw = dict(radius_m=r0, max_thickness_m=t0, profile=profile, b_sat_t=b, mean_inner_potential_v=v0, xi0_m=150e-9,
              core_radius_m=1e-9)  # a core of 1 nm takes < 0.1 rad off the cone
    sp = make_specimen("dome_island", (n, n), px, **kw)
    c = n // 2
    assert sp.thickness_m.max() == pytest.approx(t0, rel=1e-3) and sp.thickness_m[0, 0] == 0
    phase, amp = exit_wave(sp, u)
    magnetic = magnetic_phase(sp)
    electro = phase - magnetic
    # electrostatic phase at the centre: sigma V0 t_max (0 in vacuum)
    centre = electro[c - 1 : c + 1, c - 1 : c + 1].mean()
    assert centre == pytest.approx(interaction_constant(u) * v0 * t0, rel=2e-3)
    assert abs(electro[0, 0]) < 1e-12
    assert amp[c - 1 : c + 1, c - 1 : c + 1].mean() == pytest.approx(math.exp(-t0 / 150e-9), rel=2e-3)
    # vortex: d phi / dr = (e/hbar) B t(r) (chirality +1: a dip), so phi(rim) - phi(0) = (e/hbar) B int_0^R t dr
    if profile == "paraboloid":
        integral = t0 * 2 * r0 / 3
    else:
        rs = (r0**2 + t0**2) / (2 * t0)
        integral = 0.5 * (r0 * math.sqrt(rs**2 - r0**2) + rs**2 * math.asin(r0 / rs)) - (rs - t0) * r0
    rim = magnetic[c, c + int(r0 / px) + 3]
    assert rim - magnetic[c - 1 : c + 1, c - 1 : c + 1].mean() == pytest.approx(E_OVER_HBAR * b * integral, rel=0.02)


def test_vortex_array_cones():
    px, n = 6e-9, 256
    sp = make_specimen("vortex_array", (n, n), px, mean_inner_potential_v=0.0, edge_width_m=12e-9)
    phase = magnetic_phase(sp)
    height = E_OVER_HBAR * 1.0 * 50e-9 * 300e-9
    vac = phase[n // 2, n // 2]  # between the four discs
    centres = [(round(n / 2 + s * 350e-9 / px - 0.5), round(n / 2 + q * 350e-9 / px - 0.5))
               for s in (-1, 1) for q in (-1, 1)]
    signs = []
    for iy, ix in centres:
        d = phase[iy, ix] - vac
        assert abs(d) == pytest.approx(height, rel=0.06)
        signs.append(np.sign(d))
    assert signs == [-1, 1, 1, -1]  # checkerboard chirality, the first disc a dip (chirality +1)
    assert sp.thickness_m.max() == pytest.approx(50e-9)


def test_vortex_disc_edge_width_slopes_the_rim():
    px = 5e-9
    sharp = make_specimen("vortex_disc", (128, 128), px, radius_m=200e-9)
    sloped = make_specimen("vortex_disc", (128, 128), px, radius_m=200e-9, edge_width_m=40e-9)
    assert ((sharp.thickness_m > 0) & (sharp.thickness_m < 50e-9)).sum() < ((sloped.thickness_m > 0)
                                                                             & (sloped.thickness_m < 50e-9)).sum()
    assert sharp.thickness_m.sum() == pytest.approx(sloped.thickness_m.sum(), rel=0.01)  # same volume
