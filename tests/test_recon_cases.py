"""The reconstructor on each class of series that broke it (issue 9), simulated by our own simulator at test size
(simulator/cases.py): AD must beat TIE on phase RMSE (means removed, no plane fit), and with an exact nominal
defocus the refined defocus must stay within 0.5 % of it.

Cases that do not meet a goal yet are marked xfail(strict=True) with the measured figures, so a fix shows up as an
XPASS failure and the mark must be removed; bench/baseline_cases.py prints the same table at full size.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ltemlive.metrics import phase_accuracy, phase_rmse
from ltemlive.reconstruct import ReconstructionConfig, Reconstructor, prepare, reconstruct
from ltemlive.sim_bridge import simulate
from ltemlive.tie import tie_reconstruct
from simulator.cases import CASES, config
from simulator.series import SimulationConfig

pytestmark = pytest.mark.usefixtures("single_thread")
MAX_ITER = 300
# The weak film at a 300 cap converges after 252 iterations: the case's setup took 32-36 s on one thread, over the
# suite's 30 s a test. At a 150 cap (the schedule's scale fits come earlier) it stops after 126 iterations, 17 s for
# the fit, RMSE 0.298 (0.301 at 300; TIE 0.344).
CAPS = {"weak_phase_absorbing": 150}

# Measured on 2 cores, seed 0 (AD / TIE RMSE in rad; defocus error of an exact nominal). The dome's and the needle's
# RMSE marks went in session 18, when tv2 stopped charging the curvature's trace-free part in full (loss.py): dome
# 0.177 vs 0.212, needle 1.84 vs 2.07 on an Intel Xeon (0.175 / 1.86 on an AMD EPYC).
NOT_YET = {
    # Met on an Intel Xeon and an AMD EPYC at seed 0 (session 18: -0.21 / 0.00 %, 0.00 / 0.00 %, +0.02 / 0.00 %), but
    # other seeds end at the final check's decision edge (the weak film +1.13 % at seed 1, +0.87 % at seed 2): not
    # strict, as another CPU's rounding may cross it.
    ("bloch_skyrmions", "defocus"): "0.00 % from an exact nominal (session 18); -0.44 % in session 11, +0.68 % with "
    "theta_c free to fit the noise, +0.75 to +0.90 % in session 10",
    ("dome_island", "defocus"): "+0.02 % (session 18, Intel Xeon); +1.14 % with theta_c free to fit the noise",
    ("weak_phase_absorbing", "defocus"): "-0.21 % from an exact nominal (session 18, Intel Xeon); -0.9 to +0.85 % "
    "before, varying with the run and the CPU",
}


# A result that varies across machines within the goal's margin: not strict (it may pass).
UNSTABLE = {("weak_phase_absorbing", "defocus"), ("bloch_skyrmions", "defocus"), ("dome_island", "defocus")}


def _mark(name: str, goal: str):
    reason = NOT_YET.get((name, goal))
    return [pytest.mark.xfail(strict=(name, goal) not in UNSTABLE, reason=reason)] if reason else []


@pytest.fixture(scope="module", params=sorted(CASES))
def case_result(request, single_thread):
    name = request.param
    series = simulate(config(name, size="test", seed=0))
    result = reconstruct(series, ReconstructionConfig(max_iter=CAPS.get(name, MAX_ITER)))
    tie = tie_reconstruct(series.images, series.defocus_m, series.pixel_size_m, series.microscope.voltage_v)
    return name, series, result, tie.phase.cpu().numpy()


def _check_rmse(case_result):
    name, series, result, tie = case_result
    ad, tie_rmse = phase_rmse(result.phase, series.truth.phase), phase_rmse(tie, series.truth.phase)
    assert ad < tie_rmse, f"{name}: AD {ad:.3f} rad, TIE {tie_rmse:.3f} rad"
    # Whatever it did, the fit is at least as consistent with the data as its start.
    assert result.history[-1]["data_loss"] <= result.extras["start_data_loss"] * (1 + 1e-6)


def _check_defocus(case_result):
    name, series, result, _ = case_result
    if CASES[name].nominal_over_true != 1.0:
        pytest.skip("nominal defocus miscalibrated on purpose: the 0.5 % goal is for an exact nominal")
    free = series.truth.defocus_m != 0
    err = np.abs(result.defocus_m[free] / series.truth.defocus_m[free] - 1)
    assert err.max() < 0.005, f"{name}: refined defocus {err.max() * 100:.2f} % from an exact nominal"


def test_ad_beats_tie(case_result, request):
    for m in _mark(case_result[0], "rmse"):
        request.applymarker(m)
    _check_rmse(case_result)


def test_exact_nominal_defocus_stays(case_result, request):
    for m in _mark(case_result[0], "defocus"):
        request.applymarker(m)
    _check_defocus(case_result)


def test_run_reports_why_it_stopped(case_result):
    name, _, result, _ = case_result
    assert result.stopped_because.startswith(("converged", "iteration cap"))
    assert result.iterations <= CAPS.get(name, MAX_ITER)
    assert result.phase_sigma is not None and np.all(np.isfinite(result.phase_sigma))


def test_theta_c_is_not_lowered_to_fit_the_noise(case_result, request):
    """Every case is simulated with its nominal theta_c. A lower one lets more of the phase's fine detail reach the
    images, so it also lets the phase fit the noise: the full-size dome went to 0.04x with a fit at 0.73x the noise's
    misfit (phase RMSE 0.20 rad; 0.079 with the rule, TIE 0.088). Only misfit above the noise counts as evidence
    (ADR 0006: the discrepancy rule in the optics blocks and in the theta_c check)."""
    name, series, result, _ = case_result
    for m in _mark(name, "theta_c"):
        request.applymarker(m)
    assert result.theta_c_rad == pytest.approx(series.microscope.theta_c_rad, rel=0.05), name


def test_start_invents_no_ramp_along_featureless_stripes(single_thread):
    """Straight stripes look the same along their length, so a registration of the +-df pair along it is noise. At
    seed 2 it found 2.6 px there, and its part linear in defocus went into the start as a 0.037 rad/px ramp (4.8 rad
    across the field; the run ended at 1.53 rad RMSE, 0.11 once a plane was removed). The ramp must now beat the same
    start without it by more than its two freedoms explain, and that one does not."""
    series = simulate(config("stripe_domains", size="test", seed=2))
    rec = Reconstructor(series, ReconstructionConfig(max_iter=10))
    shifted = [c for c in rec.start_candidates if c["registration"] > 0]
    assert shifted, "the test needs a registration candidate that moves an image"
    with_ramp = [c for c in shifted if c["ramp"]]
    assert not with_ramp, with_ramp
    slopes = rec.model.ramp_rad_per_px()  # the start's least-squares plane over the field of view
    assert max(abs(g) for g in slopes) < 0.005, slopes  # the truth has none; the invented one was 0.037


def test_amplitude_follows_the_registration(single_thread):
    """Without an in-focus image the starting amplitude is the mean of the innermost +-df pair, so it holds the
    registration it was built with. The resolution pattern's pair registers 1.7 px apart, wrongly (the truth has no
    drift); the amplitude built from it stayed while the shifts were corrected, and the shifts and the phase's ramp bent
    to explain it: 0.34 px left at the end here, and accuracy 0.92-0.93 on the 512^2 paper-like case (0.99 now)."""
    series = simulate(
        SimulationConfig(shape=(192, 192), seed=0, defocus_m=[-1.6e-3, -0.15e-3, 0.15e-3, 1.6e-3], dose_e_per_px=100.0)
    )
    rec = Reconstructor(series, ReconstructionConfig(max_iter=200))
    m = rec.model
    with torch.no_grad():
        aligned = prepare.fourier_shift(rec.data.numpy(), -m.shifts().numpy())
        expected = prepare.starting_amplitude(aligned, series.defocus_m)
        np.testing.assert_allclose(m.im.crop(m.amplitude0).numpy(), expected, rtol=1e-4, atol=1e-5)
    result = rec.run()
    assert np.abs(result.shifts_px).max() < 0.2, result.shifts_px  # the truth has none; 0.34 px before
    assert phase_accuracy(result.phase, series.truth.phase) > 0.97  # 0.966 before
