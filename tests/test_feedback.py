"""Defocus feedback: the fit, the rejection rules, the bounded step, persistence and the closed loop."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from ltemlive.controller.feedback import (
    DefocusCalibration,
    DefocusEstimate,
    DefocusFeedback,
    FeedbackConfig,
    FeedbackDecision,
)

PLAN = np.array([-1.6e-3, -0.15e-3, 0.15e-3, 1.6e-3])


def clock() -> float:
    return 1_700_000_000.0


def make(config: FeedbackConfig | None = None, initial: DefocusCalibration | None = None) -> DefocusFeedback:
    return DefocusFeedback(config or FeedbackConfig(), initial, clock=clock)


def estimate(commanded, true, sigma=None, index: int = 0) -> DefocusEstimate:
    """An estimate of ``true`` at ``commanded``; sigma defaults to 0.1 % of |true| (plus a floor)."""
    commanded = np.asarray(commanded, dtype=float)
    true = np.asarray(true, dtype=float)
    if sigma is None:
        sigma = 1e-3 * np.abs(true) + 1e-9
    sigma = np.broadcast_to(np.asarray(sigma, dtype=float), true.shape)
    return DefocusEstimate(series_index=index, commanded_m=commanded, estimated_true_m=true, sigma_m=sigma)


def series(fb: DefocusFeedback, scale: float, offset: float, index: int = 0, plan=PLAN) -> DefocusEstimate:
    """Command the plan through fb and report the instrument's exact true defocus."""
    commanded = np.array([fb.commanded_for(p) for p in plan])
    return estimate(commanded, scale * commanded + offset, index=index)


def assert_unchanged(fb: DefocusFeedback, decision: FeedbackDecision, before: DefocusCalibration) -> None:
    assert not decision.accepted
    assert decision.before == decision.after == before
    assert fb.calibration == before


# ---- models ---------------------------------------------------------------------------------------


def test_calibration_inverts() -> None:
    cal = DefocusCalibration(scale=1.1, offset_m=5e-6)
    for true in PLAN:
        assert cal.true_from_commanded(cal.commanded_for(true)) == pytest.approx(true, rel=1e-12, abs=1e-18)
    assert cal.commanded_for(5e-6) == 0.0
    with pytest.raises(ValidationError):
        DefocusCalibration(scale=0.0)
    with pytest.raises(ValidationError):
        DefocusCalibration(offset_m=math.nan)


@given(
    scale=st.floats(0.5, 2.0),
    offset=st.floats(-50e-6, 50e-6),
    true=st.floats(-5e-3, 5e-3),
)
def test_commanded_for_inverts_true_from_commanded(scale: float, offset: float, true: float) -> None:
    fb = make(initial=DefocusCalibration(scale=scale, offset_m=offset))
    commanded = fb.commanded_for(true)
    assert fb.calibration.true_from_commanded(commanded) == pytest.approx(true, rel=1e-9, abs=1e-15)


def test_estimate_validation() -> None:
    ok = dict(series_index=0, commanded_m=[1e-3], estimated_true_m=[1.1e-3], sigma_m=[1e-6])
    assert DefocusEstimate(**ok).commanded_m == [1e-3]
    for bad in (
        dict(estimated_true_m=[math.nan]),
        dict(commanded_m=[math.inf]),
        dict(sigma_m=[0.0]),
        dict(sigma_m=[-1e-6]),
        dict(sigma_m=[1e-6, 1e-6]),
        dict(commanded_m=[], estimated_true_m=[], sigma_m=[]),
        dict(extra=1),
    ):
        with pytest.raises(ValidationError):
            DefocusEstimate(**{**ok, **bad})


def test_config_validation() -> None:
    with pytest.raises(ValidationError):
        FeedbackConfig(scale_bounds=(2.0, 0.5))
    with pytest.raises(ValidationError):
        FeedbackConfig(scale_bounds=(0.0, 2.0))
    with pytest.raises(ValidationError):
        FeedbackConfig(offset_bounds_m=(math.nan, 1e-6))
    with pytest.raises(ValidationError):
        FeedbackConfig(max_scale_step=0.0)
    with pytest.raises(ValidationError):
        FeedbackConfig(unknown=1)
    with pytest.raises(ValueError, match="outside the configured bounds"):
        DefocusFeedback(FeedbackConfig(), DefocusCalibration(scale=3.0))


# ---- convergence ----------------------------------------------------------------------------------


def test_converges_from_identity_to_scale_within_two_updates() -> None:
    fb = make()
    for i in range(2):
        decision = fb.update(series(fb, 1.1, 0.0, index=i))
        assert decision.accepted, decision.reason
    assert fb.calibration.scale == pytest.approx(1.1, rel=1e-9)
    assert fb.calibration.offset_m == pytest.approx(0.0, abs=1e-12)
    commanded = np.array([fb.commanded_for(p) for p in PLAN])
    np.testing.assert_allclose(1.1 * commanded, PLAN, rtol=1e-9)


def test_recovers_scale_and_offset_from_per_image_estimates() -> None:
    fb = make()
    decision = fb.update(series(fb, 1.1, 5e-6))
    assert decision.accepted and decision.offset_fitted, decision.reason
    assert decision.estimate_offset_m == pytest.approx(5e-6, abs=1e-12)
    assert decision.sigma_offset_m is not None and decision.sigma_offset_m < 2e-6
    assert fb.calibration.scale == pytest.approx(1.1, rel=1e-9)
    assert fb.calibration.offset_m == pytest.approx(5e-6, abs=1e-12)


def test_large_offset_converges_in_bounded_steps() -> None:
    fb = make()
    offsets = []
    for i in range(4):
        decision = fb.update(series(fb, 1.1, 12e-6, index=i))
        assert decision.accepted, decision.reason
        offsets.append(fb.calibration.offset_m)
    # 5 um per update at most: 5, 10, 12, 12.
    np.testing.assert_allclose(offsets, [5e-6, 10e-6, 12e-6, 12e-6], atol=1e-12)
    assert [d.clipped for d in fb.history] == [True, True, False, False]
    assert "offset step clipped" in fb.history[0].reason


@pytest.mark.parametrize("as_float32", [False, True])
def test_proportional_estimates_keep_the_offset(as_float32: bool) -> None:
    # A pure-scale reconstructor reports estimated_true = s * commanded: no information on the offset.
    fb = make(initial=DefocusCalibration(scale=1.0, offset_m=3e-6))
    true = 1.1 * PLAN
    if as_float32:  # the reconstructor may compute in float32
        true = true.astype(np.float32).astype(np.float64)
    decision = fb.update(estimate(PLAN, true))
    assert decision.accepted, decision.reason
    assert not decision.offset_fitted
    assert decision.estimate_offset_m is None and decision.sigma_offset_m is None
    assert "proportional" in decision.reason
    assert fb.calibration.offset_m == 3e-6
    assert fb.calibration.scale == pytest.approx(1.1, rel=1e-6)


def test_offset_modes() -> None:
    # never: the offset is held even when the estimates carry one.
    fb = make(FeedbackConfig(fit_offset="never"))
    decision = fb.update(series(fb, 1.1, 5e-6))
    assert decision.accepted and not decision.offset_fitted
    assert fb.calibration.offset_m == 0.0
    # auto with two images: too few to check the offset fit, held.
    fb = make()
    two = np.array([-1.6e-3, 1.6e-3])
    decision = fb.update(estimate(two, 1.1 * two + 5e-6))
    assert decision.accepted and not decision.offset_fitted
    assert "fewer than three" in decision.reason
    # always with two distinct images: fitted.
    fb = make(FeedbackConfig(fit_offset="always"))
    decision = fb.update(estimate(two, 1.1 * two + 5e-6))
    assert decision.accepted and decision.offset_fitted
    assert fb.calibration.offset_m == pytest.approx(5e-6, abs=1e-12)
    # always with one commanded value: the line is not separable, rejected.
    fb = make(FeedbackConfig(fit_offset="always"))
    same = np.full(3, 1.6e-3)
    decision = fb.update(estimate(same, 1.1 * same))
    assert_unchanged(fb, decision, DefocusCalibration())
    assert decision.reason.startswith("degenerate")


def test_auto_holds_a_poorly_determined_offset() -> None:
    # Three images on one side, far from zero: the offset is an extrapolation with a large sigma.
    commanded = np.array([1.4e-3, 1.5e-3, 1.6e-3])
    rng = np.random.default_rng(1)
    true = 1.1 * commanded + 5e-6 + rng.normal(0, 0.3e-6, 3)
    fb = make()
    decision = fb.update(estimate(commanded, true, sigma=0.3e-6))
    assert decision.accepted, decision.reason
    assert not decision.offset_fitted
    assert "offset held" in decision.reason and "sigma" in decision.reason
    assert fb.calibration.offset_m == 0.0
    # always: the same estimate is rejected for its offset sigma.
    fb = make(FeedbackConfig(fit_offset="always"))
    decision = fb.update(estimate(commanded, true, sigma=0.3e-6))
    assert_unchanged(fb, decision, DefocusCalibration())
    assert decision.reason.startswith("sigma") and decision.sigma_offset_m > 2e-6


def test_optimistic_sigmas_are_inflated_by_chi2_never_deflated() -> None:
    rng = np.random.default_rng(0)
    commanded = np.tile(PLAN, 3)
    true = 1.1 * commanded + 5e-6
    actual = 1e-3 * np.abs(true)
    noisy = true + rng.normal(0.0, actual)
    honest = make().update(estimate(commanded, noisy, sigma=actual))
    optimistic = make().update(estimate(commanded, noisy, sigma=actual / 10))
    assert optimistic.reduced_chi2 > 10
    # With the inflation the optimistic claim yields about the honest error bar, not 10x less.
    assert optimistic.sigma_scale > 0.3 * honest.sigma_scale
    # Exact data: chi2 ~ 0, the stated sigmas are kept (lower bounds are not shrunk).
    exact = make().update(estimate(commanded, true, sigma=actual))
    assert exact.reduced_chi2 < 1
    assert exact.sigma_scale == pytest.approx(honest.sigma_scale / math.sqrt(max(honest.reduced_chi2, 1)), rel=0.05)


# ---- the bounded step and the rejection rules -----------------------------------------------------


def test_forty_percent_jump_is_rejected_as_a_deviation_by_default() -> None:
    fb = make()
    decision = fb.update(estimate(PLAN, 1.4 * PLAN))
    assert_unchanged(fb, decision, DefocusCalibration())
    assert decision.reason.startswith("deviation")
    assert decision.estimate_scale == pytest.approx(1.4)


def test_forty_percent_jump_is_clipped_when_deviation_allows_it() -> None:
    fb = make(FeedbackConfig(max_deviation=0.5))
    decision = fb.update(estimate(PLAN, 1.4 * PLAN))
    assert decision.accepted and decision.clipped
    assert "scale step clipped" in decision.reason
    assert fb.calibration.scale == pytest.approx(1.15)
    # The next (same) estimate moves another bounded step.
    fb.update(estimate(PLAN, 1.4 * PLAN, index=1))
    assert fb.calibration.scale == pytest.approx(1.15 * 1.15)


def _bad_estimates() -> list[tuple[str, DefocusEstimate]]:
    c, t = list(PLAN), list(1.1 * PLAN)
    s = [1e-6] * 4
    construct = DefocusEstimate.model_construct  # skips validation, as a buggy or remote sender might
    return [
        ("invalid", construct(series_index=1, commanded_m=c, estimated_true_m=[math.nan, *t[1:]], sigma_m=s)),
        ("invalid", construct(series_index=1, commanded_m=c, estimated_true_m=[math.inf, *t[1:]], sigma_m=s)),
        ("invalid", construct(series_index=1, commanded_m=c, estimated_true_m=t, sigma_m=[math.nan] * 4)),
        ("invalid", construct(series_index=1, commanded_m=c, estimated_true_m=t, sigma_m=[0.0] * 4)),
        ("invalid", construct(series_index=1, commanded_m=c, estimated_true_m=t[:3], sigma_m=s)),
        ("invalid", construct(series_index=1, commanded_m=[], estimated_true_m=[], sigma_m=[])),
        ("invalid", construct(series_index=1, commanded_m=["a"] * 4, estimated_true_m=t, sigma_m=s)),
        ("invalid", construct(series_index=1, commanded_m=None, estimated_true_m=t, sigma_m=s)),
        ("degenerate", estimate([0.0, 0.0], [1e-6, 2e-6], sigma=1e-7, index=1)),
        ("sigma", estimate(PLAN, 1.1 * PLAN, sigma=1e-4, index=1)),
    ]


@pytest.mark.parametrize(("keyword", "bad"), _bad_estimates())
def test_bad_estimates_are_rejected_with_a_reason(keyword: str, bad: DefocusEstimate) -> None:
    fb = make(initial=DefocusCalibration(scale=1.05, offset_m=1e-6))
    before = fb.calibration
    decision = fb.update(bad)
    assert_unchanged(fb, decision, before)
    assert decision.reason.startswith(keyword), decision.reason
    assert decision.series_index == 1
    json.dumps(decision.model_dump(mode="json"), allow_nan=False)


def test_garbage_that_is_not_an_estimate_is_rejected() -> None:
    fb = make()
    decision = fb.update(object())  # type: ignore[arg-type]
    assert_unchanged(fb, decision, DefocusCalibration())
    assert decision.reason.startswith("invalid") and decision.series_index == -1


def test_wildly_different_estimate_after_a_stable_history_is_rejected() -> None:
    fb = make()
    for i in range(3):
        assert fb.update(series(fb, 1.1, 0.0, index=i)).accepted
    before = fb.calibration
    # 9 % off: within max_deviation (30 %), but far outside the history's 3 % (and its own 5 sigma).
    decision = fb.update(estimate(PLAN, 1.2 * PLAN, index=3))
    assert_unchanged(fb, decision, before)
    assert decision.reason.startswith("history"), decision.reason
    # A small, well-measured drift is still accepted.
    decision = fb.update(estimate(PLAN, 1.11 * PLAN, index=4))
    assert decision.accepted, decision.reason


def test_history_rule_allows_five_sigma() -> None:
    # A less precise estimate is not rejected for a change within 5 of its sigmas, but is beyond them.
    config = FeedbackConfig(history_tolerance=0.001, max_rel_sigma=0.05)
    sigma = 0.01 * np.abs(1.1 * PLAN)  # 1 % per image: about 0.5 % on the scale
    results = {}
    for scale in (1.12, 1.135):
        fb = make(config)
        for i in range(2):
            assert fb.update(estimate(PLAN, 1.1 * PLAN, index=i)).accepted
        results[scale] = fb.update(estimate(PLAN, scale * PLAN, sigma=sigma, index=2))
    assert 0.02 / 5 < results[1.12].sigma_scale < 0.035 / 5
    assert results[1.12].accepted, results[1.12].reason
    assert results[1.135].reason.startswith("history"), results[1.135].reason


def test_estimates_outside_the_bounds_are_rejected() -> None:
    fb = make(initial=DefocusCalibration(scale=1.9))
    decision = fb.update(estimate(PLAN, 2.1 * PLAN))
    assert_unchanged(fb, decision, DefocusCalibration(scale=1.9))
    assert decision.reason.startswith("bounds")
    fb = make(initial=DefocusCalibration(offset_m=48e-6))
    decision = fb.update(series(fb, 1.0, 60e-6))
    assert decision.reason.startswith("bounds") and "offset" in decision.reason
    assert fb.calibration.offset_m == 48e-6


def test_the_step_never_leaves_the_bounds() -> None:
    fb = make(FeedbackConfig(scale_bounds=(0.5, 1.2)), DefocusCalibration(scale=1.15))
    decision = fb.update(estimate(PLAN, 1.2 * PLAN))
    assert decision.accepted
    assert fb.calibration.scale <= 1.2


# ---- control --------------------------------------------------------------------------------------


def test_freeze_unfreeze_reset_and_disabled() -> None:
    initial = DefocusCalibration(scale=1.05, offset_m=1e-6)
    fb = make(initial=initial)
    fb.freeze()
    assert fb.frozen
    decision = fb.update(series(fb, 1.1, 0.0))
    assert_unchanged(fb, decision, initial)
    assert decision.reason == "frozen"
    fb.unfreeze()
    assert not fb.frozen
    assert fb.update(series(fb, 1.1, 0.0)).accepted
    assert fb.calibration != initial
    assert len(fb.history) == 2
    fb.reset()
    assert fb.calibration == initial and fb.history == []
    # history is a copy: the caller cannot rewrite it.
    fb.history.append(decision)
    assert fb.history == []

    off = make(FeedbackConfig(enabled=False), initial)
    decision = off.update(series(off, 1.1, 0.0))
    assert_unchanged(off, decision, initial)
    assert decision.reason == "disabled"
    assert off.commanded_for(1e-3) == initial.commanded_for(1e-3)


def test_state_round_trip() -> None:
    initial = DefocusCalibration(scale=1.02, offset_m=-1e-6)
    fb = make(initial=initial)
    for i in range(3):
        fb.update(series(fb, 1.1, 4e-6, index=i))
    fb.update(estimate(PLAN, 1.3 * PLAN, index=3))  # rejected by the history rule
    fb.freeze()
    state = json.loads(json.dumps(fb.state(), allow_nan=False))
    restored = DefocusFeedback.from_state(FeedbackConfig(), state, clock=clock)
    assert restored.calibration == fb.calibration
    assert restored.initial == initial
    assert restored.frozen
    assert restored.history == fb.history
    assert restored.state() == fb.state()
    # The restored history still drives the history rule.
    restored.unfreeze()
    fb.unfreeze()
    probe = estimate(PLAN, 1.2 * PLAN, index=4)
    assert restored.update(probe) == fb.update(probe)
    assert not fb.history[-1].accepted
    restored.reset()
    assert restored.calibration == initial

    with pytest.raises(ValueError):
        DefocusFeedback.from_state(FeedbackConfig(), {"version": 99})
    with pytest.raises(ValueError):
        DefocusFeedback.from_state(FeedbackConfig(), {**state, "calibration": {"scale": -1}})
    with pytest.raises(ValueError):
        DefocusFeedback.from_state(FeedbackConfig(scale_bounds=(0.5, 1.05)), state)


# ---- properties -----------------------------------------------------------------------------------

_any_float = st.floats(allow_nan=False, allow_infinity=False)
_value = st.one_of(_any_float, st.floats(-3e-3, 3e-3), st.just(0.0))
# Mostly plausible sigmas, so that the fit and the rules are reached and not only the input checks.
_sigma = st.sampled_from([st.floats(1e-9, 1e-4), st.floats(1e-9, 1e-4), _any_float])


@st.composite
def _raw_estimate(draw) -> DefocusEstimate:
    n = draw(st.integers(1, 6))
    if draw(st.integers(0, 9)) == 0:  # now and then mismatched lengths
        lengths = [draw(st.integers(0, 6)) for _ in range(3)]
    else:
        lengths = [n, n, n]
    c, y, s = (
        draw(st.lists(strat, min_size=k, max_size=k))
        for strat, k in zip((_value, _value, draw(_sigma)), lengths, strict=True)
    )
    shape = draw(st.sampled_from(["arbitrary", "proportional", "line"]))
    if shape != "arbitrary" and lengths[0] == lengths[1]:  # near the physics: y on (or near) a line in c
        g = draw(st.floats(0.3, 2.5))
        o = 0.0 if shape == "proportional" else draw(st.floats(-80e-6, 80e-6))
        noise = draw(st.lists(st.floats(-1e-6, 1e-6), min_size=len(c), max_size=len(c)))
        y = [g * ci + o + (ni if shape == "line" else 0.0) for ci, ni in zip(c, noise, strict=True)]
    return DefocusEstimate.model_construct(
        series_index=draw(st.integers(0, 100)), commanded_m=c, estimated_true_m=y, sigma_m=s
    )


@settings(max_examples=300, deadline=None)
@given(
    mode=st.sampled_from(["auto", "never", "always"]),
    estimates=st.lists(_raw_estimate(), min_size=1, max_size=4),
    initial_scale=st.floats(0.5, 2.0),
    initial_offset=st.floats(-50e-6, 50e-6),
)
def test_any_finite_estimate_keeps_the_calibration_in_bounds(mode, estimates, initial_scale, initial_offset) -> None:
    config = FeedbackConfig(fit_offset=mode, max_deviation=10.0, max_rel_sigma=1.0, history_tolerance=10.0)
    for cfg in (FeedbackConfig(fit_offset=mode), config):
        fb = make(cfg, DefocusCalibration(scale=initial_scale, offset_m=initial_offset))
        for est in estimates:
            decision = fb.update(est)
            cal = fb.calibration
            assert cfg.scale_bounds[0] <= cal.scale <= cfg.scale_bounds[1]
            assert cfg.offset_bounds_m[0] <= cal.offset_m <= cfg.offset_bounds_m[1]
            assert decision.after == cal
            if not decision.accepted:
                assert decision.before == decision.after
            else:
                assert abs(cal.scale / decision.before.scale - 1) <= cfg.max_scale_step + 1e-12
                assert abs(cal.offset_m - decision.before.offset_m) <= cfg.max_offset_step_m + 1e-18
            json.dumps(decision.model_dump(mode="json"), allow_nan=False)


# ---- the closed loop ------------------------------------------------------------------------------


@pytest.mark.parametrize("optimism", [1.0, 10.0])
def test_closed_loop_with_a_noisy_reconstructor(optimism: float) -> None:
    """Instrument true = 1.1 c + 5 um; per-image estimates with 0.1 % noise; reported sigmas honest or 10x
    optimistic. After three series the +-1.6 mm images land within 1 % of the plan."""
    rng = np.random.default_rng(42)
    fb = make()
    for i in range(3):
        commanded = np.array([fb.commanded_for(p) for p in PLAN])
        true = 1.1 * commanded + 5e-6
        noise = 1e-3 * np.abs(true)
        decision = fb.update(estimate(commanded, true + rng.normal(0.0, noise), sigma=noise / optimism, index=i))
        assert decision.accepted, decision.reason
    commanded = np.array([fb.commanded_for(p) for p in PLAN])
    true = 1.1 * commanded + 5e-6
    np.testing.assert_allclose(true[[0, 3]], PLAN[[0, 3]], rtol=0.01)
    assert fb.calibration.scale == pytest.approx(1.1, rel=0.01)
    assert fb.calibration.offset_m == pytest.approx(5e-6, abs=1e-6)
