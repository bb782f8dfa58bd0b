"""The simulated instrument against the simulator's ground truth: images, miscalibration, hysteresis,
timing, seeding and fault injection."""

from __future__ import annotations

import time

import numpy as np
import pytest
from drivers_testlib import sim_config

from drivers.factory import build_backend
from drivers.simulated import FaultConfig, SimulatedInstrument, SimulatedInstrumentConfig
from simulator.imaging import image_series

pytestmark = pytest.mark.timeout(20)

MISCAL = {"defocus_scale_error": 0.05, "defocus_offset_m": 3e-6}


def _backend(**simulated):
    return build_backend(sim_config(simulated=simulated))


def _reference(instrument: SimulatedInstrument, defocus_m: float) -> np.ndarray:
    s = instrument.config.simulation
    phase, amplitude = instrument.physics.ground_truth()
    return image_series(
        phase,
        amplitude,
        s.pixel_size_m,
        [defocus_m],
        s.voltage_v,
        s.cs_m,
        s.theta_c_rad,
        s.focal_spread_m,
        s.astig_m,
        s.astig_azimuth_rad,
    )[0]


@pytest.mark.parametrize("nominal", [-3e-4, 1e-4, 3e-4])
def test_true_defocus_is_miscalibrated_command(nominal):
    b = _backend(simulation=MISCAL)
    try:
        readback = b.microscope.set_defocus(nominal)
        frame = b.camera.acquire(1.0)
    finally:
        b.close()
    assert readback == pytest.approx(nominal)  # the instrument reports the nominal value ...
    assert frame.metadata.defocus_readback_m == pytest.approx(nominal)
    expected = nominal * (1 + MISCAL["defocus_scale_error"]) + MISCAL["defocus_offset_m"]
    # ... while the specimen sees the miscalibrated one (hysteresis 0 here).
    assert frame.metadata.truth["true_defocus_m"] == pytest.approx(expected, rel=1e-12)


def test_hysteresis_depends_on_approach_direction():
    h = 4e-6
    b = _backend(simulation=MISCAL, hysteresis_m=h)
    sim = b.camera._sim
    try:
        b.microscope.set_defocus(-2e-4)
        b.microscope.set_defocus(1e-4)  # approached from below
        from_below = b.camera.acquire(1.0).metadata.truth["true_defocus_m"]
        b.microscope.set_defocus(4e-4)
        b.microscope.set_defocus(1e-4)  # approached from above
        from_above = b.camera.acquire(1.0).metadata.truth["true_defocus_m"]
    finally:
        b.close()
    calibrated = 1e-4 * (1 + MISCAL["defocus_scale_error"]) + MISCAL["defocus_offset_m"]
    assert from_below == pytest.approx(calibrated - h / 2, rel=1e-12)
    assert from_above == pytest.approx(calibrated + h / 2, rel=1e-12)
    assert sim.physics.nominal_defocus_m == pytest.approx(1e-4)


def test_image_equals_ground_truth_at_true_defocus_exact():
    """margin_px = 0: the simulator's field is the frame itself, so the image must equal
    image_series(ground truth) at the TRUE defocus to float32 precision, and differ at the nominal one."""
    b = _backend(simulation={**MISCAL, "margin_px": 0})
    sim = b.camera._sim
    try:
        b.microscope.set_defocus(2e-4)
        frame = b.camera.acquire(1.0)
    finally:
        b.close()
    true_df = frame.metadata.truth["true_defocus_m"]
    np.testing.assert_allclose(frame.data, _reference(sim, true_df), atol=1e-5)
    assert np.abs(frame.data - _reference(sim, 2e-4)).max() > 0.1


def test_image_matches_ground_truth_interior_with_margin():
    """Default (padded, non-periodic) field: the frame interior matches the periodic reference closely."""
    b = _backend(simulation=MISCAL)
    sim = b.camera._sim
    try:
        b.microscope.set_defocus(2e-4)
        frame = b.camera.acquire(1.0)
    finally:
        b.close()
    inner = (slice(16, 48), slice(16, 48))
    true_err = np.abs(frame.data - _reference(sim, frame.metadata.truth["true_defocus_m"]))[inner].max()
    nominal_err = np.abs(frame.data - _reference(sim, 2e-4))[inner].max()
    assert true_err < 0.05
    assert nominal_err > 10 * true_err


def test_binning_and_roi_match_physics():
    b = _backend(simulation={"margin_px": 0})
    try:
        from drivers.interface import Roi

        full = b.camera.acquire(1.0, binning=2)
        roi = b.camera.acquire(1.0, binning=2, roi=Roi(y0=16, x0=8, height=32, width=48))
    finally:
        b.close()
    assert full.data.shape == (32, 32)
    assert roi.data.shape == (16, 24)
    np.testing.assert_array_equal(roi.data, full.data[8:24, 4:28])
    assert roi.metadata.pixel_size_m == pytest.approx(2 * 5e-9)


def test_seeded_noise_is_reproducible():
    frames = []
    for _ in range(2):
        b = _backend(simulation={"dose_e_per_px": 50.0, "drift_px_per_frame": 0.5})
        try:
            frames.append([b.camera.acquire(1.0).data for _ in range(2)])
        finally:
            b.close()
    np.testing.assert_array_equal(frames[0][0], frames[1][0])
    np.testing.assert_array_equal(frames[0][1], frames[1][1])
    assert not np.array_equal(frames[0][0], frames[0][1])


def test_time_scale_models_settling_and_exposure():
    cfg = SimulatedInstrumentConfig.model_validate(
        sim_config(simulated={"time_scale": 1.0, "lens_settle_time_s": 0.15, "readout_time_s": 0.05})["simulated"]
    )
    inst = SimulatedInstrument(cfg)
    try:
        t0 = time.monotonic()
        inst.microscope.set_defocus(1e-4)
        settle = time.monotonic() - t0
        t0 = time.monotonic()
        inst.camera.acquire(0.1)
        acquire = time.monotonic() - t0
    finally:
        inst.close()
    assert 0.15 <= settle < 1.0  # confirm waited for the lens, polling the read-back
    assert 0.15 <= acquire < 1.0  # exposure + readout


def test_readback_lags_during_settle():
    cfg = SimulatedInstrumentConfig.model_validate(
        sim_config(simulated={"time_scale": 1.0, "lens_settle_time_s": 0.2})["simulated"]
    )
    inst = SimulatedInstrument(cfg)
    try:
        inst.write_defocus(1e-4)
        assert inst.read_defocus() == 0.0
        time.sleep(0.25)
        assert inst.read_defocus() == pytest.approx(1e-4)
    finally:
        inst.close()


def test_fault_config_validation():
    with pytest.raises(ValueError):
        FaultConfig(drop_frame_prob=1.5)
    with pytest.raises(ValueError):
        FaultConfig.model_validate({"no_such_fault": 1})


def test_partial_fault_probability_is_seeded():
    outcomes = []
    for _ in range(2):
        b = _backend(faults={"drop_frame_prob": 0.5}, fault_seed=3)
        seq = []
        try:
            for _ in range(12):
                try:
                    b.camera.acquire(0.1)
                    seq.append(True)
                except Exception:
                    seq.append(False)
        finally:
            b.close()
        outcomes.append(seq)
    assert outcomes[0] == outcomes[1]
    assert any(outcomes[0]) and not all(outcomes[0])
