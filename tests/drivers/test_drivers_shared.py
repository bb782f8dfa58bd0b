"""The shared suite: every backend (simulated in-process, simulated through the instrument server over
loopback, Thermo and JEOL adapters on their fakes) must pass the parts that apply to it."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from drivers.acquire import acquire_through_focus
from drivers.errors import HardwareFault, InstrumentTimeout, LimitViolation, NotAvailable, OutOfRange
from drivers.interface import Camera, Capability, LensMode, Microscope, SettleSpec, StageMove

pytestmark = pytest.mark.timeout(20)

# The JEOL adapter quantises to DAC counts (30 nm in its test config): keep targets on whole counts.
DEFOCI = [-3e-4, -6e-5, 6e-5, 3e-4]


def test_satisfies_protocols(harness):
    assert isinstance(harness.microscope, Microscope)
    assert isinstance(harness.camera, Camera)
    assert harness.microscope.instrument_id


def test_capability_queries(harness):
    caps = harness.microscope.capabilities()
    assert Capability.DEFOCUS in caps
    assert Capability.STAGE_XY in caps
    assert Capability.ACQUIRE in harness.camera.capabilities()
    info = harness.camera.info()
    assert len(info.sensor_shape) == 2 and 1 in info.binnings
    # A missing control is announced by the capability query and refused as NotAvailable when used anyway.
    if Capability.LENS_MODE not in caps:
        with pytest.raises(NotAvailable):  # (Lorentz: the one mode the default limits allow)
            harness.microscope.set_lens_mode(LensMode.LORENTZ)
    else:
        assert harness.microscope.set_lens_mode(LensMode.LORENTZ) is LensMode.LORENTZ
    if Capability.ROI not in harness.camera.capabilities():
        from drivers.interface import Roi

        with pytest.raises(NotAvailable):
            harness.camera.acquire(0.1, roi=Roi(y0=0, x0=0, height=32, width=32))


def test_set_and_confirm_defocus_readback_in_metadata(harness):
    m, c = harness.microscope, harness.camera
    confirmed = m.set_defocus(1.5e-4)
    assert confirmed == pytest.approx(1.5e-4, abs=1e-8)
    assert m.get_defocus() == pytest.approx(1.5e-4, abs=1e-8)
    frame = c.acquire(0.5)
    md = frame.metadata
    assert md.defocus_readback_m == pytest.approx(1.5e-4, abs=1e-8)
    assert md.defocus_commanded_m == pytest.approx(1.5e-4)
    assert md.exposure_s == 0.5
    assert md.shape == frame.data.shape == tuple(c.info().sensor_shape)
    assert md.t_start_monotonic_s <= md.t_end_monotonic_s
    assert md.t_start_epoch_s <= md.t_end_epoch_s
    assert md.pixel_size_m and md.pixel_size_m > 0
    assert np.isfinite(frame.data).all()


def test_through_focus_series(harness):
    m, c = harness.microscope, harness.camera
    m.set_defocus(0.0)
    frames = acquire_through_focus(m, c, DEFOCI, exposure_s=0.2)
    assert [f.metadata.defocus_commanded_m for f in frames] == DEFOCI
    for f, df in zip(frames, DEFOCI, strict=True):
        assert f.metadata.defocus_readback_m == pytest.approx(df, abs=1e-8)
    seqs = [f.metadata.seq for f in frames]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    starts = [f.metadata.t_start_monotonic_s for f in frames]
    assert starts == sorted(starts)
    assert m.get_defocus() == pytest.approx(0.0, abs=1e-8)  # restored


def test_binning(harness):
    c = harness.camera
    info = c.info()
    if Capability.BINNING not in c.capabilities():
        with pytest.raises(OutOfRange):
            c.acquire(0.1, binning=2)
        return
    b = max(info.binnings)
    frame = c.acquire(0.1, binning=b)
    assert frame.data.shape == (info.sensor_shape[0] // b, info.sensor_shape[1] // b)
    assert frame.metadata.binning == b


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_defocus_refused(harness, bad):
    with pytest.raises(OutOfRange):
        harness.microscope.set_defocus(bad)
    assert harness.writes() == []


def test_defocus_outside_range_refused_before_backend(harness):
    with pytest.raises(LimitViolation):
        harness.microscope.set_defocus(2e-3)
    with pytest.raises(LimitViolation):
        harness.microscope.set_defocus(-5e-3)
    assert harness.writes() == []


def test_defocus_step_refused_before_backend(harness):
    m = harness.microscope
    m.set_defocus(0.0)
    before = len(harness.writes())
    with pytest.raises(LimitViolation):
        m.set_defocus(8.4e-4)  # inside the range, but a 0.84 mm step > 0.6 mm
    assert len(harness.writes()) == before
    # The same target reached in two allowed steps.
    m.set_defocus(4.2e-4)
    assert m.set_defocus(8.4e-4) == pytest.approx(8.4e-4, abs=1e-8)


def test_stage_move_confirmed_and_limited(harness):
    m = harness.microscope
    pos = m.move_stage(StageMove(x_m=2e-5, y_m=-1e-5))
    assert pos.x_m == pytest.approx(2e-5, abs=1e-9)
    assert pos.y_m == pytest.approx(-1e-5, abs=1e-9)
    assert m.get_stage().x_m == pytest.approx(2e-5, abs=1e-9)
    before = len(harness.writes())
    with pytest.raises(LimitViolation):
        m.move_stage(StageMove(x_m=5e-4))
    assert len(harness.writes()) == before


def test_beam_blank(harness):
    m = harness.microscope
    assert m.set_beam_blanked(True) is True
    assert m.get_beam_blanked() is True
    assert harness.camera.acquire(0.1).metadata.beam_blanked is True
    assert m.set_beam_blanked(False) is False


def test_stuck_stage_times_out_on_confirm(harness):
    harness.inject("stuck_stage")
    t0 = time.monotonic()
    with pytest.raises(InstrumentTimeout):
        harness.microscope.move_stage(StageMove(x_m=3e-5), SettleSpec(tolerance=1e-9, timeout_s=0.3, poll_s=0.02))
    assert time.monotonic() - t0 < 0.3 + 1.0


def test_camera_timeout_is_typed_and_bounded(harness):
    harness.inject("camera_timeout")
    t0 = time.monotonic()
    with pytest.raises(InstrumentTimeout):
        harness.camera.acquire(0.1, timeout_s=0.3)
    assert time.monotonic() - t0 < 0.3 + 1.5


def test_dropped_frame_is_hardware_fault(harness):
    harness.inject("drop")
    with pytest.raises(HardwareFault):
        harness.camera.acquire(0.1, timeout_s=2.0)


def test_corrupt_frame_detected(harness):
    harness.inject("corrupt")
    for _ in range(4):  # both corruption modes of the simulator (garbage rows, truncated buffer)
        with pytest.raises(HardwareFault):
            harness.camera.acquire(0.1, timeout_s=2.0)


def test_bad_acquisition_arguments(harness):
    with pytest.raises(OutOfRange):
        harness.camera.acquire(0.0)
    with pytest.raises(OutOfRange):
        harness.camera.acquire(0.1, binning=3)
