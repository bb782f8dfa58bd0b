"""AD reconstructor on small simulated series: phase and true defocus recovered, frozen groups frozen,
streaming equal to batch, uncertainties reported, bad input refused."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ltemlive.metrics import phase_accuracy, phase_rmse
from ltemlive.reconstruct import ReconstructionConfig, Reconstructor, reconstruct
from ltemlive.reconstruct.streaming import StreamingReconstruction
from ltemlive.series import Series
from ltemlive.sim_bridge import simulate
from simulator.series import SimulationConfig

DEFOCUS = [-1.2e-3, -0.1e-3, 0.1e-3, 1.2e-3]
PX = 10e-9
# A vortex disc well inside a 1.28 um field, sampled well by 10 nm pixels (no sub-pixel phase steps).
SPECIMEN = {
    "specimen": "vortex_disc",
    "specimen_params": {"radius_m": 300e-9, "thickness_m": 20e-9, "mean_inner_potential_v": 10.0, "xi0_m": 300e-9},
}

# One torch thread: deterministic (a 2-thread run of test_drift_is_removed reached 0.888 instead of > 0.9) and
# fastest at these sizes, also on a busy 2-core machine.
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def clean_series() -> Series:
    """128 px, noise-free, with the nominal defocus 6 % off (a miscalibrated lens)."""
    cfg = SimulationConfig(
        shape=(128, 128), pixel_size_m=PX, oversample=1, defocus_m=DEFOCUS, dose_e_per_px=None, seed=3,
        defocus_scale_error=-0.06, **SPECIMEN,
    )
    return simulate(cfg)


@pytest.fixture(scope="module")
def noisy_series() -> Series:
    cfg = SimulationConfig(
        shape=(128, 128), pixel_size_m=PX, oversample=2, defocus_m=DEFOCUS, dose_e_per_px=200.0, seed=4, **SPECIMEN
    )
    return simulate(cfg)


@pytest.fixture(scope="module")
def clean_result(clean_series, single_thread):
    return reconstruct(clean_series, ReconstructionConfig(max_iter=250))


# Open (issue 9, docs/reconstruction.md): with the low-frequency preconditioner set from the largest defocus, this
# weak disc well inside the field ends below its TIE start (accuracy 0.968 vs 0.997, RMSE 0.23 vs 0.10 rad) while
# fitting the data better than the truth does: the phase beyond the field of view is free and only seen within the
# blur radius, and its low frequencies leak into the field. Tying the margin to the mirrored field fixes this case
# (0.996) but breaks specimens that continue beyond the field (vortex array 0.18 -> 1.7 rad).
LEAKY_MARGIN = pytest.mark.xfail(strict=True, reason="free margin's low frequencies leak into the field (issue 9)")


@LEAKY_MARGIN
def test_recovers_phase_better_than_tie(clean_series, clean_result):
    truth = clean_series.truth.phase
    acc_ad = phase_accuracy(clean_result.phase, truth)
    acc_tie = phase_accuracy(clean_result.tie_phase, truth)
    assert acc_ad > 0.99, acc_ad
    assert acc_ad > acc_tie
    assert phase_rmse(clean_result.phase, truth) < 0.1


def test_recovers_true_defocus_from_miscalibrated_nominal(clean_series, clean_result):
    true = clean_series.truth.defocus_m
    nominal_err = np.abs(clean_series.defocus_m / true - 1)
    err = np.abs(clean_result.defocus_m / true - 1)
    assert nominal_err.min() > 0.05  # the nominal values really are off
    # Stated tolerance on clean 128 px data: within 2 % from 6 % off (measured 1.6 %: the scale fit is
    # biased by the regularised phase shape; docs/reconstruction.md lists this as an open problem).
    assert err.max() < 0.02, err


def test_uncertainties_are_reported(clean_result):
    assert np.all(np.isfinite(clean_result.defocus_sigma_m))
    assert np.all(clean_result.defocus_sigma_m > 0)
    assert np.isfinite(clean_result.theta_c_sigma_rad) and clean_result.theta_c_sigma_rad > 0
    params = clean_result.parameters()
    assert len(params["defocus_m"]) == 4 and len(params["defocus_sigma_m"]) == 4


@pytest.fixture(scope="module")
def noisy_result(noisy_series, single_thread):
    return reconstruct(noisy_series, ReconstructionConfig(max_iter=150))


def test_noisy_series_poisson_loss(noisy_series, noisy_result):
    assert noisy_result.loss_kind == "poisson"
    assert phase_accuracy(noisy_result.phase, noisy_series.truth.phase) > 0.95


def test_phase_sigma_map_covers_the_error(noisy_series, noisy_result):
    """The phase's one-sigma map against the true error (means removed). This series is binned 2x2, which the
    model does not describe, and the run stops at its cap, so the 90 % goal of bench_coverage.py is not asked
    here. Measured 69.3 % of the pixels within 2 sigma at the cap (65.5 % run to convergence); 74.6 % at the cap
    before the Poisson loss's value was made precise (session 10), which moved this run's path; 59.0 % with the map
    from before it counted that the margin's unknowns have no data (uncertainty.phase_sigma_map)."""
    err = noisy_result.phase - noisy_series.truth.phase
    err -= err.mean()
    assert np.mean(np.abs(err) <= 2 * noisy_result.phase_sigma) > 0.65


@LEAKY_MARGIN
def test_noisy_series_beats_its_start(noisy_series, noisy_result):
    truth = noisy_series.truth.phase
    assert phase_accuracy(noisy_result.phase, truth) > phase_accuracy(noisy_result.tie_phase, truth)


def test_sqrt_gaussian_without_dose(noisy_series):
    s = Series(
        images=noisy_series.images * 3.7,  # arbitrary camera units
        defocus_m=noisy_series.defocus_m,
        pixel_size_m=noisy_series.pixel_size_m,
        microscope=noisy_series.microscope,
    )
    rec = Reconstructor(s, ReconstructionConfig(max_iter=60))
    assert rec.loss_kind == "sqrt_gaussian"
    res = rec.run()
    assert phase_accuracy(res.phase, noisy_series.truth.phase) > 0.85


def test_frozen_groups_stay_frozen(clean_series):
    cfg = ReconstructionConfig(
        max_iter=30, free={"defocus": False, "theta_c": False, "shifts": False, "scales": False}
    )
    res = reconstruct(clean_series, cfg)
    np.testing.assert_allclose(res.defocus_m, clean_series.defocus_m, rtol=1e-6)  # float32 round trip
    assert res.theta_c_rad == pytest.approx(clean_series.microscope.theta_c_rad, rel=1e-6)
    np.testing.assert_array_equal(res.shifts_px, 0.0)
    assert np.all(np.isnan(res.defocus_sigma_m))

    frozen_phase = reconstruct(clean_series, ReconstructionConfig(max_iter=20, free={"phase": False}))
    tie = frozen_phase.tie_phase - frozen_phase.tie_phase.mean()
    # With shifts free, only the FOV plane is removed from the phase; nothing else may change.
    assert phase_accuracy(frozen_phase.phase, tie) > 0.999


def test_drift_is_removed():
    cfg = SimulationConfig(
        shape=(128, 128), pixel_size_m=PX, oversample=1, defocus_m=DEFOCUS, seed=5, drift_px_per_frame=1.5, **SPECIMEN
    )
    series = simulate(cfg)
    # The drift grows with defocus in part, which a phase ramp imitates exactly: read as drift.
    res = reconstruct(series, ReconstructionConfig(max_iter=150, ramp="drift"))
    true = series.truth.shifts_px - series.truth.shifts_px[res.extras.get("reference", 1)]
    assert np.abs(res.shifts_px - true).max() < 0.5, (res.shifts_px, true)
    assert phase_accuracy(res.phase, series.truth.phase) > 0.9
    # No branch cut (vortex) is left in the result: neighbours differ by less than pi.
    assert np.abs(np.diff(res.phase, axis=0)).max() < np.pi and np.abs(np.diff(res.phase, axis=1)).max() < np.pi


@pytest.mark.parametrize("cap", [3, 20])
def test_iteration_cap_is_exact(clean_series, cap):
    res = reconstruct(clean_series, ReconstructionConfig(max_iter=cap))
    assert res.stopped_because == "iteration cap"
    assert res.iterations == cap


def test_runs_stop_by_themselves():
    """The same disc and field at 64^2 (a quarter of the work per iteration: 556 iterations took 37 s at 128^2)."""
    cfg = SimulationConfig(
        shape=(64, 64), pixel_size_m=2 * PX, oversample=2, defocus_m=DEFOCUS, dose_e_per_px=200.0, seed=4, **SPECIMEN
    )
    res = reconstruct(simulate(cfg), ReconstructionConfig(max_iter=2000))
    assert res.stopped_because.startswith("converged"), res.stopped_because
    assert res.iterations < 2000


def test_streaming_with_all_images_equals_batch(clean_series):
    cfg = ReconstructionConfig(max_iter=40)
    batch = reconstruct(clean_series, cfg)
    stream = StreamingReconstruction(clean_series.microscope, clean_series.pixel_size_m, config=cfg)
    for img, df in zip(clean_series.images, clean_series.defocus_m, strict=True):
        stream.add_image(img, df)
    res = stream.run()
    np.testing.assert_allclose(res.phase, batch.phase, atol=1e-5)
    np.testing.assert_allclose(res.defocus_m, batch.defocus_m, rtol=1e-7)


def test_streaming_incremental_converges_to_batch(clean_series, clean_result):
    cfg = ReconstructionConfig(max_iter=250)
    stream = StreamingReconstruction(clean_series.microscope, clean_series.pixel_size_m, config=cfg)
    snaps = []
    order = [1, 2, 0, 3]  # near focus first, as a live acquisition might
    for i in order:
        stream.add_image(clean_series.images[i], clean_series.defocus_m[i])
        for _ in range(3):
            s = stream.step()
            if s is not None:
                snaps.append(s)
    res = stream.run()
    assert snaps, "the stream produced no snapshot while images arrived"
    back = np.argsort(order)
    assert phase_accuracy(res.phase, clean_result.phase) > 0.98
    np.testing.assert_allclose(res.defocus_m[back], clean_result.defocus_m, rtol=0.03)

    nxt = stream.next_series()
    for i in range(4):
        nxt.add_image(clean_series.images[i], clean_series.defocus_m[i])
    warm = nxt.run()
    assert warm.iterations < res.iterations + 250
    assert phase_accuracy(warm.phase, clean_series.truth.phase) > 0.95  # 0.96: see LEAKY_MARGIN


def test_streaming_computes_uncertainties_only_when_asked(clean_series, monkeypatch):
    """Each new image warm-starts from the state so far; the uncertainties (more than a block of iterations) are
    computed for a result that is asked for, not on every image."""
    calls = []
    real = Reconstructor._uncertainties
    monkeypatch.setattr(Reconstructor, "_uncertainties", lambda self: calls.append(1) or real(self))
    stream = StreamingReconstruction(
        clean_series.microscope, clean_series.pixel_size_m, config=ReconstructionConfig(max_iter=20)
    )
    for img, df in zip(clean_series.images, clean_series.defocus_m, strict=True):
        stream.add_image(img, df)
        stream.step()
    assert calls == []
    stream.add_image(clean_series.images[0], clean_series.defocus_m[0] * 1.5)
    asked = stream.result()  # right after an image: the images before it, in full
    assert len(calls) == 1 and len(asked.defocus_m) == 4
    assert np.all(np.isfinite(asked.defocus_sigma_m)) and asked.phase_sigma is not None
    assert stream.run().defocus_m.shape == (5,) and len(calls) == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"images": np.ones((3, 32, 32)), "defocus_m": [1e-4, -1e-4]}, "defocus_m has 2 values"),
        ({"images": np.ones((2, 32, 32)), "defocus_m": [np.nan, 1e-4]}, "finite"),
        ({"images": np.full((2, 32, 32), np.nan), "defocus_m": [1e-4, -1e-4]}, "NaN"),
        ({"images": -np.ones((2, 32, 32)), "defocus_m": [1e-4, -1e-4], "dose_e_per_px": 10.0}, "negative"),
    ],
)
def test_bad_input_is_refused(kwargs, message, clean_series):
    with pytest.raises(ValueError, match=message):
        Series(pixel_size_m=5e-9, microscope=clean_series.microscope, **kwargs)


def test_single_defocus_is_refused(clean_series):
    s = Series(
        images=clean_series.images[:2], defocus_m=[1e-4, 1e-4], pixel_size_m=5e-9, microscope=clean_series.microscope
    )
    with pytest.raises(ValueError, match="two different"):
        Reconstructor(s)
    one = Series(
        images=clean_series.images[:1], defocus_m=[1e-4], pixel_size_m=5e-9, microscope=clean_series.microscope
    )
    with pytest.raises(ValueError, match="at least two images"):
        Reconstructor(one)


def test_profile_sigma_from_two_points_of_a_quadratic_profile():
    from ltemlive.reconstruct.calibration import profile_sigma

    # A quadratic profile with sigma 0.02 and its minimum at the refined value, 0.05 from the nominal one.
    sigma, step = 0.02, 0.05
    gain = step**2 / (2 * sigma**2)
    assert profile_sigma(step, gain) == pytest.approx(sigma)
    assert profile_sigma(-step, gain) == pytest.approx(sigma)
    assert profile_sigma(step, 0.0) == math.inf and profile_sigma(step, -3.0) == math.inf


def test_reported_scale_sigma_is_at_least_the_final_checks_profile(clean_result):
    """The defocus sigma covers the scale fit's and the two-point profile's (the phase re-fitted) sigma."""
    prof = clean_result.extras["defocus_profile_sigma"]
    assert np.isfinite(prof) and prof > 0
    rel = clean_result.defocus_sigma_m / np.abs(clean_result.defocus_m)
    assert np.all(rel >= prof * (1 - 1e-6))


def test_a_kept_nominal_is_not_reported_as_a_measurement(clean_series, monkeypatch):
    """When the final check keeps the nominal defocus, the reported sigma still covers the run's own estimate: the
    live feedback took "scale 1.000 +- 0.4 %" from such a run as a measurement, for a true 1.10."""
    from ltemlive.reconstruct import solver

    monkeypatch.setattr(solver, "significant", lambda gain, n=1: False)
    res = reconstruct(clean_series, ReconstructionConfig(max_iter=150, free={"theta_c": False}))
    assert not res.defocus_refined
    np.testing.assert_allclose(res.defocus_m, clean_series.defocus_m, rtol=1e-6)
    assert any(w.startswith("defocus: the data do not support") for w in res.warnings)
    moved = 2 * res.extras["defocus_profile_sigma"]  # how far the run's estimate was from the nominal
    assert moved > 0.02  # the nominal is 6 % off: the run had moved
    rel = res.defocus_sigma_m / np.abs(res.defocus_m)
    assert np.all(rel >= moved / 2 * (1 - 1e-6))


def test_theta_c_off_its_nominal_is_still_refined():
    """The theta_c rule (not lowered while the fit leaves less misfit than the noise; ADR 0006) must not stop a real
    correction: a nominal theta_c 0.3x the true one is brought to the truth (0.96x measured, 150 iterations)."""
    import dataclasses

    cfg = SimulationConfig(
        shape=(128, 128), pixel_size_m=PX, oversample=1, defocus_m=DEFOCUS, dose_e_per_px=200.0, seed=4,
        theta_c_rad=1e-5, **SPECIMEN,
    )
    s = simulate(cfg)
    s = dataclasses.replace(s, microscope=s.microscope.model_copy(update={"theta_c_rad": 0.3e-5}))
    res = reconstruct(s, ReconstructionConfig(max_iter=150))
    assert res.theta_c_refined
    assert res.theta_c_rad == pytest.approx(1e-5, rel=0.15)


def test_noise_floor_follows_a_camera_that_smooths_its_noise():
    """The discrepancy rule's floor is the smaller of the dose's Poisson level and the images' own high-pass scatter:
    a camera whose blur smooths the noise leaves less misfit per pixel than the dose says, and a floor set by the
    dose alone would hold theta_c at nominal whatever the data say."""
    import torch
    from scipy import ndimage

    from ltemlive.reconstruct.objective import Objective

    rng = np.random.default_rng(0)
    dose = 100.0
    raw = rng.poisson(dose, size=(3, 96, 96)) / dose
    cfg = ReconstructionConfig()
    plain = Objective(torch.as_tensor(raw, dtype=torch.float32), dose, cfg)
    assert plain.noise_floor() == pytest.approx(1 / (2 * dose))
    smooth = ndimage.uniform_filter(raw, size=(1, 2, 2), mode="wrap")
    blurred = Objective(torch.as_tensor(smooth, dtype=torch.float32), dose, cfg)
    assert blurred.noise_floor() < 0.6 / (2 * dose)


@pytest.mark.parametrize(("fit", "nominal", "steps", "expected"), [
    (0.75e-5, 1e-5, [8.27, 4.33, 2.06, 0.87], 1e-5),  # the test-size needle: lowered, then pushed to 2.49x
    (0.58e-5, 0.3e-5, [0.3, 0.16, 0.05, 0.0], 0.58e-5 * math.exp(0.51)),  # a large correction away from the nominal
    (1.10e-5, 1e-5, [0.05, 0.01, 0.0005], 1.10e-5 * math.exp(0.0605)),  # a small correction passes unchanged
    (1.10e-5, 1e-5, [-0.3, -0.3], 1e-5),  # never across the nominal from above either
])
def test_debiased_theta_c_corrects_size_not_sign(monkeypatch, fit, nominal, steps, expected):
    """The debiasing corrects the size of the departure the final check accepted, never its sign."""
    import torch

    import ltemlive.reconstruct.uncertainty as unc

    it = iter(steps)
    monkeypatch.setattr(unc, "parameter_uncertainty", lambda *a, **k: {"log_theta_step": next(it, 0.0)})

    class Model:
        def theta_c(self):
            return torch.tensor(fit, dtype=torch.float64)

    got = unc.debiased_theta_c(Model(), data=None, kind="poisson", dose=None, mask=None, inflation=1.0,
                               nominal=nominal)
    assert got == pytest.approx(expected, rel=1e-9)
