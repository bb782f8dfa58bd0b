"""The instrument server and its client: typed errors over the wire, malformed input, stale requests,
liveness (busy backend vs dead or frozen server), supervision and clean shutdown."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time

import numpy as np
import pytest
import zmq
from drivers_testlib import Spy, sim_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.client import InstrumentClient, RemoteCamera, RemoteMicroscope, connect
from drivers.errors import (
    InstrumentTimeout,
    LimitViolation,
    NotAvailable,
    OutOfRange,
    ServerUnreachable,
)
from drivers.factory import build_backend
from drivers.protocol import PROTOCOL_ID, Reply, decode_header
from drivers.server import InstrumentServer
from drivers.supervisor import Supervisor

pytestmark = pytest.mark.timeout(30)


class Served:
    """An in-thread server on an ipc endpoint plus the spy below its safety limits."""

    def __init__(self, tmp_path, **sim):
        self.spies: list[Spy] = []

        def factory():
            backend = build_backend(sim_config(**sim))
            spy = Spy(backend.microscope.inner)
            backend.microscope.inner = spy
            self.spies.append(spy)
            return backend

        self.server = InstrumentServer(factory, f"ipc://{tmp_path}/instrument.ipc").start()
        self.spies[0].calls.clear()  # start-up queries (capabilities for hello) are not under test

    @property
    def calls(self) -> list[str]:
        return self.spies[0].calls

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.server.stop()


def _raw_socket(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    return s


def _recv_reply(sock: zmq.Socket, timeout_ms: int = 2000) -> Reply:
    assert sock.poll(timeout_ms), "no reply from the server"
    frames = sock.recv_multipart()
    assert frames[0] == PROTOCOL_ID
    return decode_header(frames[1], Reply)


def test_typed_errors_cross_the_wire(tmp_path):
    with Served(tmp_path) as s:
        m, c = connect(s.server.endpoint, timeout_s=5)
        try:
            with pytest.raises(LimitViolation):
                m.set_defocus(0.9e-2)
            with pytest.raises(OutOfRange):
                c.acquire(1.0, binning=3)
            with pytest.raises(OutOfRange):
                c.acquire(-1.0)
            assert m.set_defocus(1e-4) == pytest.approx(1e-4)  # and the server carries on
        finally:
            m.close()
            c.close()
        assert s.server.stats["errors"] >= 2


def test_ping_reports_server_state(tmp_path):
    with Served(tmp_path) as s, InstrumentClient(s.server.endpoint) as client:
        pong = client.ping()
        assert pong["server_id"] == s.server.server_id
        assert pong["pid"] == os.getpid()
        assert pong["busy_method"] is None
        hello = client.hello()
        assert hello["instrument_id"] == "sim-ltem"
        assert "defocus" in hello["microscope_capabilities"]


@pytest.mark.timeout(30 + int(os.environ.get("LTEMLIVE_FUZZ_EXAMPLES", 0)) // 40)
def test_malformed_messages_are_counted_and_nacked(tmp_path):
    valid_methods = ["microscope.set_defocus", "camera.acquire", "ping", "nope", ""]
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
        max_leaves=8,
    )
    headers = st.fixed_dictionaries(
        {},
        optional={
            "v": st.sampled_from([0, 1, 2, "1", None]),
            "id": st.text(max_size=80),
            "method": st.sampled_from(valid_methods) | st.text(max_size=30),
            "args": json_values,
            "timeout_s": st.sampled_from([0, -1, 1e9, "5", None]) | st.floats(),
        },
    ).map(lambda d: json.dumps(d).encode())
    messages = st.one_of(
        st.lists(st.binary(max_size=200), min_size=1, max_size=4),
        headers.map(lambda h: [PROTOCOL_ID, h]),
        headers.map(lambda h: [b"WRONG", h]),
        headers.map(lambda h: [PROTOCOL_ID, h, b"extra"]),
        st.binary(max_size=300).map(lambda b: [PROTOCOL_ID, b]),
    )

    with Served(tmp_path) as s:
        ctx = zmq.Context()
        sock = _raw_socket(ctx, s.server.endpoint)
        sent = {"n": 0}
        try:

            @settings(  # LTEMLIVE_FUZZ_EXAMPLES=10000 for the reliability goal (10k examples)
                max_examples=int(os.environ.get("LTEMLIVE_FUZZ_EXAMPLES", 300)),
                deadline=None, suppress_health_check=list(HealthCheck),
            )
            @given(messages)
            def check(frames):
                sock.send_multipart(frames)
                sent["n"] += 1
                reply = _recv_reply(sock)
                if reply.ok:  # hypothesis found a valid request (e.g. a well-formed ping): fine
                    return
                assert reply.error is not None and reply.error.type == "ProtocolError"

            t0 = time.monotonic()
            check()
            assert time.monotonic() - t0 < 20 * max(1.0, sent["n"] / 300)  # NACKs come fast, never a hang
            print(f"\n{sent['n']} malformed requests, {s.server.stats['malformed']} counted and NACKed, "
                  f"{len(s.calls)} instrument calls, {time.monotonic() - t0:.1f} s")
            assert s.server.stats["malformed"] >= sent["n"] * 0.9
            assert s.calls == []  # nothing reached the instrument
            sock.send_multipart(
                [PROTOCOL_ID, json.dumps({"v": 1, "id": "ok-1", "method": "ping", "args": {}, "timeout_s": 1}).encode()]
            )
            assert _recv_reply(sock).ok  # still alive and serving
        finally:
            sock.close()
            ctx.term()


def test_nan_in_json_is_rejected(tmp_path):
    with Served(tmp_path) as s:
        ctx = zmq.Context()
        sock = _raw_socket(ctx, s.server.endpoint)
        try:
            raw = b'{"v":1,"id":"x1","method":"microscope.set_defocus","args":{"defocus_m":NaN},"timeout_s":1}'
            sock.send_multipart([PROTOCOL_ID, raw])
            reply = _recv_reply(sock)
            assert not reply.ok and reply.error.type == "ProtocolError" and reply.id == "x1"
            assert s.calls == []
        finally:
            sock.close()
            ctx.term()


def test_stale_request_is_not_executed(tmp_path):
    """A command that waited in the queue beyond its budget is answered with a timeout, never executed late."""
    with Served(tmp_path, simulated={"faults": {"camera_timeout_prob": 1.0}}) as s:
        ctx = zmq.Context()
        busy = _raw_socket(ctx, s.server.endpoint)
        late = _raw_socket(ctx, s.server.endpoint)
        try:
            busy.send_multipart(
                [
                    PROTOCOL_ID,
                    json.dumps(
                        {
                            "v": 1,
                            "id": "busy",
                            "method": "camera.acquire",
                            "args": {"exposure_s": 0.1, "timeout_s": 0.5},
                            "timeout_s": 2,
                            "start_by_s": time.monotonic() + 10,  # same host: one monotonic clock
                        }
                    ).encode(),
                ]
            )
            time.sleep(0.1)
            late.send_multipart(
                [
                    PROTOCOL_ID,
                    json.dumps(
                        {
                            "v": 1,
                            "id": "late",
                            "method": "microscope.set_defocus",
                            "args": {"defocus_m": 1e-4},
                            "timeout_s": 0.1,
                            "start_by_s": time.monotonic() + 10,
                        }
                    ).encode(),
                ]
            )
            assert _recv_reply(busy).error.type == "InstrumentTimeout"
            reply = _recv_reply(late)
            assert not reply.ok and reply.error.type == "InstrumentTimeout" and "not executed" in reply.error.message
            assert "set_defocus" not in s.calls
            assert s.server.stats["expired"] == 1
        finally:
            busy.close()
            late.close()
            ctx.term()


def test_pings_keep_a_long_call_alive(tmp_path):
    """The backend is busy longer than the liveness window: pings answered by the I/O loop prove the server
    alive, so the client waits for the real (typed) outcome instead of declaring the server dead."""
    with Served(tmp_path, simulated={"faults": {"camera_timeout_prob": 1.0}}) as s:
        client = InstrumentClient(s.server.endpoint, heartbeat_s=0.1, liveness_s=0.4)
        cam = RemoteCamera(client)
        try:
            t0 = time.monotonic()
            with pytest.raises(InstrumentTimeout) as info:
                cam.acquire(0.1, timeout_s=1.2)
            assert not isinstance(info.value, ServerUnreachable)
            assert 1.2 <= time.monotonic() - t0 < 3.0
        finally:
            cam.close()


def test_unknown_server_times_out_quickly(tmp_path):
    client = InstrumentClient(f"ipc://{tmp_path}/nobody.ipc", liveness_s=0.5)
    m = RemoteMicroscope(client)
    try:
        t0 = time.monotonic()
        with pytest.raises(InstrumentTimeout):
            m.get_defocus()
        assert time.monotonic() - t0 < 1.5
    finally:
        m.close()


def test_backend_start_failure_is_reported(tmp_path):
    def broken():
        raise NotAvailable("no microscope here")

    server = InstrumentServer(broken, f"ipc://{tmp_path}/broken.ipc")
    with pytest.raises(NotAvailable):
        server.start()
    assert not any(t.name.startswith("instrument-") and t.is_alive() for t in threading.enumerate())


@pytest.fixture
def supervised(tmp_path):
    sup = Supervisor(sim_config(), f"ipc://{tmp_path}/supervised.ipc", backoff_s=0.05).start()
    yield sup
    sup.stop()


def test_dead_server_detected_within_liveness(tmp_path):
    sup = Supervisor(sim_config(), f"ipc://{tmp_path}/dead.ipc", max_restarts=0).start()
    m = RemoteMicroscope(InstrumentClient(sup.endpoint, timeout_s=10, liveness_s=1.0, heartbeat_s=0.2))
    try:
        assert m.set_defocus(1e-4) == pytest.approx(1e-4)
        os.kill(sup.pid, signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(ServerUnreachable):
            m.get_defocus()
        assert time.monotonic() - t0 < 1.0 + 0.5  # well before the 10 s call timeout
        deadline = time.monotonic() + 5
        while not sup.gave_up and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sup.gave_up and sup.restarts == 0
    finally:
        m.close()
        sup.stop()


def test_supervisor_restarts_dead_server(supervised):
    sup = supervised
    m, c = connect(sup.endpoint, timeout_s=5, liveness_s=1.0, heartbeat_s=0.2)
    try:
        assert m.set_defocus(1e-4) == pytest.approx(1e-4)
        frame = c.acquire(0.5)
        assert frame.data.shape == (64, 64) and frame.data.dtype == np.float32
        old = sup.pid
        os.kill(old, signal.SIGKILL)
        new = sup.wait_restarted(old, timeout_s=20)
        assert new != old and sup.restarts == 1
        # Same endpoint, fresh backend: the client reconnects by itself.
        assert m.get_defocus() == 0.0
        assert c.acquire(0.1).data.shape == (64, 64)
    finally:
        m.close()
        c.close()


def test_call_in_flight_when_server_dies_fails_fast(tmp_path):
    cfg = sim_config(simulated={"faults": {"camera_timeout_prob": 1.0}})
    sup = Supervisor(cfg, f"ipc://{tmp_path}/inflight.ipc", backoff_s=0.0).start()
    cam = RemoteCamera(InstrumentClient(sup.endpoint, liveness_s=1.0, heartbeat_s=0.1))
    try:
        cam.client.ping()
        killer = threading.Timer(0.3, os.kill, (sup.pid, signal.SIGKILL))
        killer.start()
        t0 = time.monotonic()
        try:
            with pytest.raises(ServerUnreachable):
                cam.acquire(0.1, timeout_s=10.0)  # the backend "hangs" 10 s; the server dies at 0.3 s
        finally:
            killer.join()
        assert time.monotonic() - t0 < 0.3 + 2.0
    finally:
        cam.close()
        sup.stop()


@pytest.mark.skipif(sys.platform == "win32", reason="SIGSTOP is POSIX")
def test_frozen_server_detected(supervised):
    sup = supervised
    client = InstrumentClient(sup.endpoint, liveness_s=0.8, heartbeat_s=0.2)
    m = RemoteMicroscope(client)
    try:
        m.get_defocus()
        os.kill(sup.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            with pytest.raises(ServerUnreachable):
                m.get_defocus()
            assert time.monotonic() - t0 < 0.8 + 0.5
        finally:
            with contextlib.suppress(ProcessLookupError):  # a supervisor may have replaced it meanwhile
                os.kill(sup.pid, signal.SIGCONT)
        assert m.get_defocus() == 0.0  # thawed: the client re-creates its socket and carries on
    finally:
        m.close()


def test_supervisor_reports_start_failure(tmp_path):
    sup = Supervisor({"backend": "thermo", "thermo": {"module": "no_such_vendor_pkg"}}, f"ipc://{tmp_path}/x.ipc")
    from drivers.errors import HardwareFault

    with pytest.raises(HardwareFault, match="NotAvailable"):
        sup.start()
    sup.stop()


@pytest.mark.skipif(sys.platform == "win32", reason="SIGSTOP is POSIX")
def test_watchdog_restarts_frozen_server(tmp_path):
    sup = Supervisor(sim_config(), f"ipc://{tmp_path}/frozen.ipc", backoff_s=0.0, watchdog_s=0.5).start()
    try:
        old = sup.pid
        os.kill(old, signal.SIGSTOP)  # alive but frozen: only the application ping can tell
        new = sup.wait_restarted(old, timeout_s=15)
        assert new != old and sup.watchdog_kills == 1 and sup.restarts == 1
        with InstrumentClient(sup.endpoint) as client:
            assert client.ping()["pid"] == new
    finally:
        sup.stop()


def test_watchdog_ignores_a_busy_backend(tmp_path):
    cfg = sim_config(simulated={"faults": {"camera_timeout_prob": 1.0}})
    sup = Supervisor(cfg, f"ipc://{tmp_path}/busy.ipc", watchdog_s=0.3).start()
    cam = RemoteCamera(InstrumentClient(sup.endpoint, liveness_s=1.0))
    try:
        with pytest.raises(InstrumentTimeout):
            cam.acquire(0.1, timeout_s=1.5)  # the backend is stuck for 1.5 s, 5x the watchdog
        assert sup.watchdog_kills == 0 and sup.restarts == 0
    finally:
        cam.close()
        sup.stop()
