"""Camera model, series simulation, configuration validation and the VirtualLTEM instrument."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from simulator import SimulationConfig, VirtualLTEM, record, simulate_series
from simulator.camera import HOT_PIXEL_FACTOR, bin_mean

ROOT = Path(__file__).resolve().parents[1]


def _small_cfg(**kw) -> SimulationConfig:
    base = dict(specimen="vortex_disc", specimen_params={"radius_m": 200e-9}, shape=(64, 64),
                pixel_size_m=5e-9, oversample=2, defocus_m=[-0.2e-3, 0.2e-3])
    return SimulationConfig(**{**base, **kw})


# ---------------------------------------------------------------------------------------------- camera


def test_poisson_mean_and_variance():
    rng = np.random.default_rng(0)
    levels = np.array([0.2, 0.7, 1.0, 1.6])
    intensity = np.repeat(levels, 256 * 64).reshape(256, 256)
    dose = 50.0
    counts = record(intensity, dose, rng).astype(np.float64)
    for lv in levels:
        c = counts[intensity == lv]
        mean = dose * lv
        assert abs(c.mean() - mean) < 4 * np.sqrt(mean / c.size)
        assert c.var() == pytest.approx(mean, rel=0.05)  # Poisson: variance = mean


def test_darkest_pixel_not_systematically_zero():
    """Dose is physical, not a min-max rescale: the darkest pixel gets ~ dose * I_min counts."""
    intensity = np.linspace(0.3, 1.5, 64 * 64).reshape(64, 64)
    darkest = np.unravel_index(np.argmin(intensity), intensity.shape)
    counts = np.array([record(intensity, 100.0, np.random.default_rng(s))[darkest] for s in range(50)])
    assert np.all(counts > 0)
    assert counts.mean() == pytest.approx(30.0, abs=3 * np.sqrt(30 / 50))


def test_gain_read_noise_and_noise_free_modes():
    rng = np.random.default_rng(1)
    intensity = np.full((200, 200), 0.5)
    out = record(intensity, 40.0, rng, gain=2.5, read_noise_e=3.0)
    assert out.dtype == np.float32
    assert out.mean() == pytest.approx(2.5 * 20.0, rel=0.01)
    assert out.var() == pytest.approx(2.5**2 * (20.0 + 9.0), rel=0.05)
    expected = record(intensity, 40.0, rng, gain=2.5, noise=False)
    np.testing.assert_array_equal(expected, np.float32(50.0))
    free = record(intensity * np.arange(200)[None, :] / 100, None, rng)
    np.testing.assert_allclose(free, intensity * np.arange(200)[None, :] / 100, rtol=1e-7)
    with pytest.raises(ValueError, match="read_noise_e"):
        record(intensity, None, rng, read_noise_e=1.0)


def test_binning_blur_and_hot_pixels():
    rng = np.random.default_rng(2)
    a = rng.random((2, 8, 12))
    binned = record(a, None, rng, bin_factor=2)
    assert binned.shape == (2, 4, 6)
    np.testing.assert_allclose(binned[1, 0, 0], a[1, :2, :2].mean(), rtol=1e-6)
    np.testing.assert_allclose(bin_mean(a, 4), a.reshape(2, 2, 4, 3, 4).mean(axis=(2, 4)))
    blurred = record(a, None, rng, blur_px=1.5)
    assert blurred.std() < a.std() and blurred.mean() == pytest.approx(a.mean(), rel=1e-3)
    hot = record(np.ones((200, 200)), 10.0, rng, hot_pixel_fraction=0.01)
    is_hot = hot == np.float32(HOT_PIXEL_FACTOR * 10.0)
    assert 0.006 < is_hot.mean() < 0.014


# ---------------------------------------------------------------------------------------------- config


def test_config_validation_names_fields():
    with pytest.raises(ValidationError, match="defocus_m"):
        SimulationConfig(defocus_m=[0.0, float("nan")])
    with pytest.raises(ValidationError, match="defocus_m"):
        SimulationConfig(defocus_m=[float("inf")])
    for v in (0.0, -200e3):
        with pytest.raises(ValidationError, match=r"voltage_v[\s\S]*greater than"):
            SimulationConfig(voltage_v=v)
    with pytest.raises(ValidationError, match="oversample"):
        SimulationConfig(oversample=0)
    with pytest.raises(ValidationError, match="no_such_knob"):
        SimulationConfig(no_such_knob=1)
    with pytest.raises(ValidationError, match="'bogus'"):
        SimulationConfig(specimen="bogus")
    with pytest.raises(ValidationError, match="radius_mm"):
        SimulationConfig(specimen="vortex_disc", specimen_params={"radius_mm": 1})
    with pytest.raises(ValidationError, match="read_noise_e"):
        SimulationConfig(read_noise_e=2.0)


def test_example_yaml_is_valid():
    cfg = SimulationConfig.from_yaml(ROOT / "config" / "simulate.yaml")
    assert cfg.specimen == "resolution_pattern" and cfg.shape == (512, 512)
    assert cfg.defocus_m == [-1.6e-3, -0.15e-3, 0.15e-3, 1.6e-3] and cfg.dose_e_per_px == 100.0


# ---------------------------------------------------------------------------------------------- series


def test_series_shapes_truth_and_reproducibility():
    cfg = _small_cfg(dose_e_per_px=100.0, drift_px_per_frame=0.5, seed=7)
    a, b = simulate_series(cfg), simulate_series(cfg)
    assert a.images.shape == (2, 64, 64) and a.images.dtype == np.float32
    assert a.phase.shape == (64, 64) and a.amplitude.shape == (64, 64)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.shifts_px, b.shifts_px)
    np.testing.assert_array_equal(a.shifts_px[0], 0.0)
    c = simulate_series(cfg.model_copy(update={"seed": 8}))
    assert not np.array_equal(a.images, c.images)


def test_miscalibrated_defocus():
    cfg = _small_cfg(defocus_m=[-1e-3, -1e-4, 2e-4, 1e-3], defocus_scale_error=0.05, defocus_offset_m=3e-6)
    s = simulate_series(cfg)
    np.testing.assert_array_equal(s.defocus_nominal_m, cfg.defocus_m)
    np.testing.assert_allclose(s.defocus_true_m, np.array(cfg.defocus_m) * 1.05 + 3e-6, rtol=1e-15)


def test_noise_free_series_matches_direct_image_formation():
    """simulate_series (padded, cropped, binned) agrees with image_series on a wide periodic field."""
    from simulator import exit_wave, image_series, make_specimen

    cfg = _small_cfg(margin_px=32)
    s = simulate_series(cfg)
    spec = make_specimen("vortex_disc", (256, 256), 2.5e-9, radius_m=200e-9)  # 640 nm field, centred
    phase, amp = exit_wave(spec, cfg.voltage_v)
    imgs = image_series(phase, amp, 2.5e-9, s.defocus_true_m, cfg.voltage_v, cfg.cs_m, cfg.theta_c_rad,
                        cfg.focal_spread_m)
    crop = imgs[:, 64:192, 64:192]
    ref = crop.reshape(2, 64, 2, 64, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(s.images, ref, atol=2e-3)
    assert np.ptp(s.images[1]) > 0.1  # real contrast, not a trivially flat image


def test_drift_shifts_features_by_the_reported_amount():
    cfg = _small_cfg(defocus_m=[0.2e-3, 0.2e-3], drift_px_per_frame=3.0, seed=3, margin_px=24)
    s = simulate_series(cfg)
    d = s.shifts_px[1] - s.shifts_px[0]
    assert np.hypot(*d) > 1.0
    f0, f1 = (np.fft.fft2(im - im.mean()) for im in s.images)
    xc = np.fft.ifft2(f1 * np.conj(f0)).real
    peak = np.array(np.unravel_index(np.argmax(xc), xc.shape), dtype=float)
    peak = (peak + 32) % 64 - 32  # signed (dy, dx); positive dx moves features to larger x
    np.testing.assert_allclose(peak, d, atol=0.75)


def test_magnification_and_rotation_follow_true_defocus():
    cfg = _small_cfg(mag_change_per_m=10.0, rotation_rad_per_m=20.0)
    s = simulate_series(cfg)
    np.testing.assert_allclose(s.magnification, 1.0 + 10.0 * s.defocus_true_m)
    np.testing.assert_allclose(s.rotation_rad, 20.0 * s.defocus_true_m)
    plain = simulate_series(_small_cfg())
    assert not np.allclose(s.images, plain.images, atol=1e-3)


# ---------------------------------------------------------------------------------------------- instrument


def test_virtual_ltem_hysteresis_and_calibration():
    cfg = _small_cfg(defocus_scale_error=0.02, defocus_offset_m=1e-6)
    h = 4e-6
    scope = VirtualLTEM(cfg, hysteresis_m=h)
    assert scope.true_defocus_m == pytest.approx(1e-6)  # nominal 0, no history
    scope.set_defocus(0.5e-3)  # approached from below
    from_below = scope.true_defocus_m
    assert from_below == pytest.approx(0.5e-3 * 1.02 + 1e-6 - h / 2)
    scope.set_defocus(1e-3)
    scope.set_defocus(0.5e-3)  # approached from above
    assert scope.true_defocus_m - from_below == pytest.approx(h)
    scope.set_defocus(0.5e-3)  # no change keeps the last direction
    assert scope.true_defocus_m == pytest.approx(from_below + h)
    with pytest.raises(ValueError):
        scope.set_defocus(float("nan"))


def test_virtual_ltem_acquire_drift_dose_and_truth():
    cfg = _small_cfg(dose_e_per_px=100.0, drift_px_per_frame=0.5, seed=5)
    scope = VirtualLTEM(cfg)
    scope.set_defocus(0.2e-3)
    f1, t1 = scope.acquire(exposure_s=1.0)
    f2, t2 = scope.acquire(exposure_s=2.0)
    f3, t3 = scope.acquire(exposure_s=1.0, binning=2)
    assert f1.shape == (64, 64) and f1.dtype == np.float32 and f3.shape == (32, 32)
    assert t1["shift_px"] == (0.0, 0.0) and t2["shift_px"] != t1["shift_px"] != t3["shift_px"]
    assert t1["true_defocus_m"] == pytest.approx(0.2e-3)
    assert f2.mean() / f1.mean() == pytest.approx(2.0, rel=0.05)  # dose per second of exposure
    assert f3.mean() / f1.mean() == pytest.approx(4.0, rel=0.05)  # binned pixels collect 4x
    phase, amp = scope.ground_truth()
    s = simulate_series(cfg)
    np.testing.assert_array_equal(phase, s.phase)
    np.testing.assert_array_equal(amp, s.amplitude)


def test_virtual_ltem_without_drift_is_stationary():
    cfg = _small_cfg()  # noise-free
    scope = VirtualLTEM(cfg)
    scope.set_defocus(-0.2e-3)
    a, ta = scope.acquire()
    b, tb = scope.acquire()
    np.testing.assert_array_equal(a, b)
    assert ta["shift_px"] == tb["shift_px"] == (0.0, 0.0)
    # the same true defocus as simulate_series gives the same image
    np.testing.assert_allclose(a, simulate_series(cfg).images[0], rtol=1e-6)
