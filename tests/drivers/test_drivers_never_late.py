"""The instrument is sacred (issue 12, findings 2, 3, 7, 8): a command its caller was told failed never runs
later; one request cannot hold the owner thread for minutes; arguments are taken as typed, never coerced;
bad client arguments and unreadable replies are typed errors at once."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

import pytest
import zmq
from drivers_testlib import sim_config
from test_drivers_server import Served

from drivers.client import InstrumentClient, RemoteMicroscope
from drivers.errors import LimitViolation, OutOfRange, ProtocolError, ServerUnreachable
from drivers.interface import SettleSpec
from drivers.protocol import PROTOCOL_ID, Reply, decode_header
from drivers.supervisor import Supervisor

pytestmark = pytest.mark.timeout(60)


def _raw(ctx: zmq.Context, endpoint: str, request: dict, timeout_ms: int = 3000) -> Reply:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send_multipart([PROTOCOL_ID, json.dumps(request).encode()])
        assert sock.poll(timeout_ms), "no reply"
        return decode_header(sock.recv_multipart()[1], Reply)
    finally:
        sock.close()


@pytest.fixture
def served(tmp_path):
    """An in-thread instrument server (with the spy below its limits) and a context for raw sockets."""
    with Served(tmp_path) as s:
        ctx = zmq.Context()
        try:
            yield s, ctx
        finally:
            ctx.term()


def _request(method: str, args: dict, **extra) -> dict:
    return {"v": 1, "id": f"t-{time.monotonic_ns()}", "method": method, "args": args, "timeout_s": 5,
            "start_by_s": time.monotonic() + 10, **extra}


@pytest.mark.skipif(sys.platform == "win32", reason="SIGSTOP is POSIX")
def test_command_given_up_on_during_a_freeze_never_runs_after_it(tmp_path):
    """Finding 2: the server frozen 2.5 s while a set_defocus is pending; the client is told ServerUnreachable
    after its 1 s liveness; after SIGCONT the lens must NOT move (it did: the budget counted from when the
    thawed server read the request)."""
    sup = Supervisor(sim_config(), f"ipc://{tmp_path}/freeze.ipc", watchdog_s=0).start()
    client = InstrumentClient(sup.endpoint, timeout_s=60, liveness_s=1.0, heartbeat_s=0.2)
    m = RemoteMicroscope(client, write_timeout_s=60)
    try:
        before = m.get_defocus()
        m.set_defocus(before)  # the clock offset is known from here on
        os.kill(sup.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            with pytest.raises(ServerUnreachable, match="start-by time has passed"):
                m.set_defocus(before + 2e-4)
            told_at = time.monotonic() - t0
            time.sleep(max(0.0, 2.5 - told_at))
        finally:
            os.kill(sup.pid, signal.SIGCONT)
        time.sleep(0.5)  # the thawed server reads the request now
        after = m.get_defocus()
        stats = client.ping()["stats"]
        print(f"\ntold ServerUnreachable after {told_at:.2f} s; defocus {before:+.3e} -> {after:+.3e} m; "
              f"server expired={stats.get('expired', 0)}")
        assert after == pytest.approx(before, abs=1e-12), "the command ran after its caller was told it failed"
        assert stats.get("expired", 0) >= 1
    finally:
        m.close()
        sup.stop()


def test_settle_and_call_times_are_capped_by_the_server(tmp_path):
    """Finding 3: settle_s 600 used to hold the owner thread for ten minutes; now refused before it is queued,
    naming the server's limit, and other clients are served at once."""
    with Served(tmp_path) as s:
        client = InstrumentClient(s.server.endpoint, timeout_s=5)
        m = RemoteMicroscope(client)
        try:
            t0 = time.monotonic()
            with pytest.raises(LimitViolation, match=r"settle_s 600 s exceeds this server's limit of 10 s"):
                m.set_defocus(1e-4, SettleSpec(settle_s=600, timeout_s=30))
            with pytest.raises(LimitViolation, match="max_settle_timeout_s"):
                m.set_defocus(1e-4, SettleSpec(settle_s=0, timeout_s=1000))
            with pytest.raises(LimitViolation, match="max_call_s"):
                client.call("microscope.get_defocus", {}, timeout_s=3000)
            assert time.monotonic() - t0 < 2.0
            assert "set_defocus" not in s.calls
            assert m.set_defocus(1e-4) == pytest.approx(1e-4)  # and a sane one is served
        finally:
            m.close()


def test_a_request_without_start_by_or_too_far_ahead_is_refused(served):
    s, ctx = served
    req = _request("microscope.set_defocus", {"defocus_m": 1e-4})
    del req["start_by_s"]
    reply = _raw(ctx, s.server.endpoint, req)
    assert reply.error.type == "ProtocolError" and "start_by_s" in reply.error.message
    reply = _raw(ctx, s.server.endpoint, _request("microscope.set_defocus", {"defocus_m": 1e-4},
                                                  start_by_s=time.monotonic() + 3600))
    assert reply.error.type == "ProtocolError" and "ahead" in reply.error.message
    assert "set_defocus" not in s.calls
    # reads need no start-by
    assert _raw(ctx, s.server.endpoint, {"v": 1, "id": "r1", "method": "microscope.get_defocus",
                                         "args": {}, "timeout_s": 5}).ok


@pytest.mark.parametrize(
    ("method", "args"),
    [
        ("microscope.set_beam_blanked", {"blanked": "off"}),
        ("microscope.set_beam_blanked", {"blanked": "n"}),
        ("microscope.set_beam_blanked", {"blanked": 0}),
        ("microscope.set_defocus", {"defocus_m": "1e-4"}),
        ("microscope.set_defocus", {"defocus_m": 1e-4, "settle": {"timeout_s": "5"}}),
        ("microscope.move_stage", {"target": {"x_m": "1e-6"}}),
        ("camera.acquire", {"exposure_s": "0.1"}),
    ],
)
def test_arguments_are_never_coerced(served, method, args):
    """Finding 7: "off" unblanked the beam, "1e-4" set the defocus."""
    s, ctx = served
    reply = _raw(ctx, s.server.endpoint, _request(method, args))
    assert not reply.ok and reply.error.type == "ProtocolError", reply
    assert s.calls == []


def test_request_header_fields_are_not_coerced(served):
    s, ctx = served
    reply = _raw(ctx, s.server.endpoint, _request("microscope.get_defocus", {}, timeout_s="5"))
    assert reply.error.type == "ProtocolError"


def test_a_retried_request_id_is_not_executed_twice(served):
    s, ctx = served
    req = _request("microscope.set_defocus", {"defocus_m": 1e-4})
    first, again = _raw(ctx, s.server.endpoint, req), _raw(ctx, s.server.endpoint, req)
    assert first.ok and again.ok and again.result == first.result
    assert s.calls.count("set_defocus") == 1
    assert s.server.stats["duplicates"] == 1


def test_bad_client_arguments_are_typed_errors_not_pydantic(tmp_path):
    """Finding 8: a bad argument used to escape as a raw pydantic ValidationError."""
    with Served(tmp_path) as s:
        client = InstrumentClient(s.server.endpoint, timeout_s=5)
        try:
            with pytest.raises(OutOfRange, match="timeout_s"):
                client.call("microscope.get_defocus", {}, timeout_s=-1)
            with pytest.raises(OutOfRange, match="blanked"):
                client.call("microscope.set_beam_blanked", {"blanked": "off"})
            assert "set_beam_blanked" not in s.calls
        finally:
            client.close()


def test_an_unreadable_reply_is_a_protocol_error_at_once(tmp_path):
    """Finding 8: a reply that fails validation ended as a timeout; now a ProtocolError when it arrives."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    endpoint = f"ipc://{tmp_path}/bad-server.ipc"
    router.bind(endpoint)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            if router.poll(50):
                identity, _, header = router.recv_multipart()
                rid = json.loads(header)["id"]
                bad = json.dumps({"v": 1, "id": rid, "ok": "maybe", "result": None}).encode()
                router.send_multipart([identity, PROTOCOL_ID, bad])

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    client = InstrumentClient(endpoint, timeout_s=10, liveness_s=5)
    try:
        t0 = time.monotonic()
        with pytest.raises(ProtocolError, match="invalid reply"):
            client.call("microscope.get_defocus")
        assert time.monotonic() - t0 < 2.0
    finally:
        client.close()
        stop.set()
        t.join(1)
        router.close()
        ctx.term()
