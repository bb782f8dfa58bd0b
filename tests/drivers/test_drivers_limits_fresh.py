"""Safety limits from a fresh read-back, with sane bounds, a stage step limit, guarded lens mode and blanker,
a simulated instrument that refuses defocus its field is not made for, and a watchdog that leaves a recovered
server alone (issue 12, findings 5 and 6)."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest
import yaml
from drivers_testlib import sim_config
from pydantic import ValidationError

from drivers.client import InstrumentClient, RemoteMicroscope
from drivers.errors import LimitViolation, OutOfRange
from drivers.factory import build_backend
from drivers.interface import LensMode, StageMove
from drivers.limits import LimitedMicroscope, SafetyLimits
from drivers.supervisor import Supervisor

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def sim():
    backend = build_backend(sim_config())
    yield backend
    backend.close()


def limited(backend, **limits) -> LimitedMicroscope:
    return LimitedMicroscope(backend.microscope.inner, SafetyLimits(**limits))


def test_defocus_step_is_measured_from_a_fresh_read_back(sim):
    """The focus moved outside the service (by hand, by the vendor software): a 1 mm step used to pass a
    0.6 mm limit because the wrapper measured from the last value it had set itself."""
    m = limited(sim, max_defocus_step_m=6e-4)
    m.set_defocus(5e-4)
    sim.microscope.inner.set_defocus(-5e-4)  # outside the wrapper
    with pytest.raises(LimitViolation, match="step"):
        m.set_defocus(5e-4)
    assert sim.microscope.inner.get_defocus() == pytest.approx(-5e-4)


@pytest.mark.parametrize(
    "fields",
    [
        {"defocus_max_m": 1e300},
        {"defocus_min_m": -1.0},
        {"max_defocus_step_m": 1.0},
        {"stage_x_m": (-1e300, 1e300)},
        {"stage_alpha_rad": (-3.0, 3.0)},
        {"max_stage_step_m": 1.0},
    ],
)
def test_limits_have_sanity_bounds(fields):
    with pytest.raises(ValidationError):
        SafetyLimits(**fields)


def test_stage_steps_are_limited_from_a_fresh_read_back(sim):
    m = limited(sim, max_stage_step_m=1e-4, max_tilt_step_rad=0.1)
    m.move_stage(StageMove(x_m=5e-5))
    with pytest.raises(LimitViolation, match="x_m step"):
        m.move_stage(StageMove(x_m=2e-4))  # a 150 um step > 100 um, inside the +-1 mm range
    with pytest.raises(LimitViolation, match="alpha_rad step"):
        m.move_stage(StageMove(alpha_rad=0.2))
    sim.microscope.inner.move_stage(StageMove(x_m=-1e-4))  # outside the wrapper
    with pytest.raises(LimitViolation, match="x_m step"):
        m.move_stage(StageMove(x_m=5e-5))
    assert m.move_stage(StageMove(x_m=-5e-5)).x_m == pytest.approx(-5e-5, abs=1e-9)


def test_lens_mode_and_blanker_are_guarded(sim):
    m = limited(sim)
    with pytest.raises(LimitViolation, match="lens mode 'tem' not allowed"):
        m.set_lens_mode(LensMode.TEM)  # the objective's field would wipe out the magnetic state
    assert m.set_lens_mode(LensMode.LORENTZ) is LensMode.LORENTZ
    assert limited(sim, lens_modes=("lorentz", "tem")).set_lens_mode(LensMode.TEM) is LensMode.TEM
    locked = limited(sim, allow_unblank=False)
    with pytest.raises(LimitViolation, match="allow_unblank"):
        locked.set_beam_blanked(False)
    assert locked.set_beam_blanked(True) is True
    with pytest.raises(LimitViolation, match="True or False"):
        m.set_beam_blanked("off")  # type: ignore[arg-type]


def test_simulated_instrument_refuses_defocus_its_field_is_not_made_for():
    backend = build_backend(sim_config(limits={"defocus_min_m": -5e-3, "defocus_max_m": 5e-3}))
    try:
        with pytest.raises(OutOfRange, match="simulated field is made for"):
            backend.microscope.set_defocus(2e-3)
    finally:
        backend.close()


@pytest.mark.parametrize("name", ["default.yaml", "instrument-sim.yaml"])
def test_shipped_config_limits_stay_inside_the_simulated_field(name):
    """config/default.yaml allowed +-2 mm while its simulated field was made for +-1.6 mm (x 1.1)."""
    cfg = yaml.safe_load((ROOT / "config" / name).read_text())
    cfg = cfg.get("instrument", cfg)
    backend = build_backend(cfg)
    try:
        lim = SafetyLimits.model_validate(cfg.get("limits") or {})
        phys = backend.microscope.inner._sim.physics
        for df in (lim.defocus_min_m, lim.defocus_max_m):
            assert phys.true_defocus_for(df) <= phys.max_true_defocus_m * (1 + 1e-9), df
    finally:
        backend.close()


@pytest.mark.skipif(sys.platform == "win32", reason="SIGSTOP is POSIX")
def test_watchdog_leaves_a_server_that_recovered_alone(tmp_path):
    """A 3.5 s freeze (longer than the connection's 3 s heartbeat timeout, shorter than the 5 s watchdog): the
    old watchdog's single 5 s ping was answered into a dropped connection and the healthy server killed."""
    sup = Supervisor(sim_config(), f"ipc://{tmp_path}/wd.ipc", watchdog_s=5.0).start()
    try:
        pid = sup.pid
        time.sleep(1.5)  # the watchdog has pinged
        os.kill(pid, signal.SIGSTOP)
        time.sleep(3.5)
        os.kill(pid, signal.SIGCONT)
        time.sleep(4.0)
        assert sup.watchdog_kills == 0 and sup.pid == pid
        m = RemoteMicroscope(InstrumentClient(sup.endpoint, timeout_s=5))
        try:
            assert m.get_defocus() == 0.0
        finally:
            m.close()
    finally:
        sup.stop()


def test_supervisor_keeps_the_config_off_the_command_line(tmp_path):
    sup = Supervisor(sim_config(), f"ipc://{tmp_path}/argv.ipc", watchdog_s=0).start()
    try:
        with open(f"/proc/{sup.pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        assert b"--config-json" not in argv and not any(b"simulation" in a for a in argv), argv
    finally:
        sup.stop()
