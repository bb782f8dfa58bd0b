"""Unit tests of the building blocks: calibration, set-settle-confirm, limits, wire format, factory."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.errors import (
    ERROR_TYPES,
    HardwareFault,
    InstrumentTimeout,
    LimitViolation,
    NotAvailable,
    OutOfRange,
    ProtocolError,
    error_from_wire,
)
from drivers.interface import Calibration, SettleSpec, StageMove, set_and_confirm
from drivers.limits import SafetyLimits
from drivers.protocol import ArrayHeader, Request, decode_array, decode_header, encode_array, error_info

pytestmark = pytest.mark.timeout(20)
ROOT = Path(__file__).resolve().parents[2]


@settings(max_examples=200, deadline=None)
@given(
    scale=st.floats(1e-12, 1e3) | st.floats(-1e3, -1e-12),
    offset=st.floats(-1e-2, 1e-2),
    df=st.floats(-5e-3, 5e-3),
)
def test_calibration_round_trip(scale, offset, df):
    cal = Calibration(scale=scale, offset_m=offset)
    assert cal.to_metres(cal.to_raw(df)) == pytest.approx(df, rel=1e-9, abs=1e-15 + abs(offset) * 1e-12)


def test_calibration_rejects_zero_and_nan():
    with pytest.raises(ValueError):
        Calibration(scale=0.0)
    with pytest.raises(ValueError):
        Calibration(offset_m=math.nan)


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t

    def sleep(self, dt):
        self.t += dt


def test_set_and_confirm_waits_for_settle_then_confirms():
    clock = FakeClock()
    state = {"target": None, "written_at": None}

    def write(v):
        state["target"], state["written_at"] = v, clock()

    def read():  # the actuator arrives 0.3 s after the write
        return state["target"] if clock() - state["written_at"] >= 0.3 else 0.0

    spec = SettleSpec(tolerance=1e-9, timeout_s=1.0, poll_s=0.05, settle_s=0.1)
    assert set_and_confirm(write, read, 5e-4, spec, sleep=clock.sleep, clock=clock) == 5e-4
    assert 0.3 <= clock.t <= 0.35


def test_set_and_confirm_times_out_with_last_readback():
    clock = FakeClock()
    spec = SettleSpec(tolerance=1e-9, timeout_s=0.5, poll_s=0.1)
    with pytest.raises(InstrumentTimeout, match=r"last read-back 0\.0"):
        set_and_confirm(lambda v: None, lambda: 0.0, 1e-4, spec, sleep=clock.sleep, clock=clock, what="lens")
    assert clock.t == pytest.approx(0.5)


def test_limits_validation_and_checks():
    with pytest.raises(ValueError):
        SafetyLimits(defocus_min_m=1e-3, defocus_max_m=-1e-3)
    with pytest.raises(ValueError):
        SafetyLimits(stage_x_m=(1e-3, -1e-3))
    lim = SafetyLimits(defocus_min_m=-1e-3, defocus_max_m=1e-3, max_defocus_step_m=5e-4)
    lim.check_defocus(4e-4, 0.0)
    with pytest.raises(LimitViolation, match="range"):
        lim.check_defocus(1.1e-3, None)
    with pytest.raises(LimitViolation, match="step"):
        lim.check_defocus(6e-4, 0.0)
    with pytest.raises(OutOfRange):
        lim.check_defocus(math.nan, 0.0)
    with pytest.raises(LimitViolation, match="alpha"):
        lim.check_stage(StageMove(alpha_rad=2.0))
    assert issubclass(LimitViolation, OutOfRange)


@pytest.mark.parametrize("dtype", ["uint16", "float32", "float64", "int32"])
def test_array_round_trip(dtype):
    a = (np.arange(12 * 7) % 251).astype(dtype).reshape(12, 7)
    header, buf = encode_array(a)
    np.testing.assert_array_equal(decode_array(header, bytes(buf)), a)


def test_array_checks():
    a = np.zeros((4, 4), np.float32)
    header, buf = encode_array(a)
    with pytest.raises(ProtocolError, match="payload"):
        decode_array(header, bytes(buf)[:-4])  # truncated in transit
    with pytest.raises(ProtocolError, match="nbytes"):
        decode_array(ArrayHeader(dtype="float32", shape=(4, 4), nbytes=60), bytes(60))
    with pytest.raises(ValueError):
        ArrayHeader(dtype="object", shape=(4, 4), nbytes=128)
    with pytest.raises(ValueError):
        ArrayHeader(dtype="float32", shape=(2, 4, 4), nbytes=128)
    with pytest.raises(ValueError):
        ArrayHeader(dtype="float32", shape=(1 << 20, 4), nbytes=1 << 24)
    with pytest.raises(ValueError):
        encode_array(np.zeros((2, 2), dtype=complex))  # not on the allow-list


def test_header_decoding_is_strict():
    ok = b'{"v":1,"id":"a1","method":"ping","args":{},"timeout_s":1}'
    assert decode_header(ok, Request).method == "ping"
    for bad in [
        b"\xff\xfe",
        b"[1, 2]",
        b'{"v":1,"id":"a1","method":"ping","args":{},"timeout_s":Infinity}',
        b'{"v":1,"id":"a b","method":"ping","args":{},"timeout_s":1}',
        b'{"v":1,"id":"a1","method":"os.system","args":{},"timeout_s":1}',
        b'{"v":1,"id":"a1","method":"ping","args":{},"timeout_s":1,"extra":1}',
        b"{" * 100_000,
    ]:
        with pytest.raises(ProtocolError):
            decode_header(bad, Request)


def test_errors_round_trip_by_name_only():
    for name, cls in ERROR_TYPES.items():
        exc = error_from_wire(name, "msg")
        assert type(exc) is cls and str(exc) == "msg"
    assert type(error_from_wire("SystemExit", "x")) is HardwareFault  # unknown names never become code
    assert error_info(ZeroDivisionError("boom")).type == "HardwareFault"
    assert error_info(NotAvailable("x")).type == "NotAvailable"


def test_factory_builds_from_the_sim_config_file():
    from drivers.factory import build, build_backend, load_config

    cfg = load_config(ROOT / "config" / "instrument-sim.yaml")
    m, c = build(cfg)
    try:
        assert m.instrument_id and c.info().sensor_shape
        # The file's limits are in force.
        with pytest.raises(LimitViolation):
            m.set_defocus(1.0e-2)
    finally:
        m.close()
        c.close()
    with pytest.raises(NotAvailable):
        build_backend({"backend": "nikon"})
    with pytest.raises(NotAvailable):
        build({"backend": "remote", "remote": {}})


def test_factory_remote_applies_client_side_limits(tmp_path):
    from drivers_testlib import sim_config

    from drivers.factory import build, build_backend
    from drivers.server import InstrumentServer

    server = InstrumentServer(lambda: build_backend(sim_config()), f"ipc://{tmp_path}/f.ipc").start()
    try:
        m, c = build(
            {
                "backend": "remote",
                "remote": {"endpoint": server.endpoint, "timeout_s": 5},
                "limits": {"defocus_min_m": -1e-4, "defocus_max_m": 1e-4},
            }
        )
        try:
            with pytest.raises(LimitViolation):
                m.set_defocus(2e-4)  # within the server's limits, outside the client's
            assert m.set_defocus(5e-5) == pytest.approx(5e-5)
        finally:
            m.close()
            c.close()
    finally:
        server.stop()
