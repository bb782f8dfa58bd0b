"""CURVE keys and roles on every channel (issue 12, finding 1): 0 messages accepted from unknown keys, 0
commands from a monitor key, 0 instrument calls from either; a secured session runs end to end."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from service_util import Session, read_run, small

from drivers.client import InstrumentClient, RemoteMicroscope
from drivers.errors import InstrumentTimeout, PermissionDenied
from drivers.factory import build_backend
from drivers.server import InstrumentServer
from ltemlive.controller.client import ControlClient, ControllerUnreachable
from ltemlive.publisher import EventSink, Publisher, PublisherConfig, Subscriber
from ltemlive.wire import security
from ltemlive.wire.security import Keyring, SecurityError

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def ring(tmp_path):
    ring = Keyring(tmp_path / "keys")
    for name, role in (("instrument", "server"), ("controller", "acquisition"), ("publisher", "server"),
                       ("recon-1", "reconstructor"), ("operator", "operator"), ("monitor", "monitor")):
        ring.create(name, role)
    yield ring
    security.deconfigure()


def stranger(ctx: zmq.Context, kind: int, server_public: bytes, endpoint: str) -> zmq.Socket:
    """A socket with a fresh key pair nobody has heard of."""
    s = ctx.socket(kind)
    s.linger = 0
    public, secret = zmq.curve_keypair()
    s.curve_secretkey, s.curve_publickey, s.curve_serverkey = secret, public, server_public
    s.connect(endpoint)
    return s


def test_keyring_create_list_revoke(ring):
    assert {(k.name, k.role) for k in ring.keys()} >= {("operator", "operator"), ("monitor", "monitor")}
    secret = ring.directory / "operator.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    with pytest.raises(SecurityError, match="exists"):
        ring.create("operator", "operator")
    with pytest.raises(SecurityError, match="role"):
        ring.create("boss", "admin")
    ring.revoke("monitor")
    assert "monitor" not in {k.name for k in ring.keys()}
    os.chmod(ring.directory / "controller.key_secret", 0o644)
    with pytest.raises(SecurityError, match="readable by others"):
        ring.secret("controller")


def test_instrument_server_lets_in_keys_by_role(ring, tmp_path):
    """Unknown key: nothing. Monitor key: reads yes, set_defocus refused with 0 instrument calls. Acquisition
    key: served. Revoked key: refused on the next message."""
    security.configure(ring, "instrument")
    calls: list[float] = []

    def factory():
        backend = build_backend({"backend": "simulated", "simulated": {"time_scale": 0.0, "simulation": {
            "shape": [32, 32], "defocus_m": [-1e-3, 1e-3], "dose_e_per_px": None}}})
        inner = backend.microscope.inner
        real = inner.set_defocus
        inner.set_defocus = lambda df, settle=None: (calls.append(df), real(df, settle))[1]
        return backend

    server = InstrumentServer(factory, "tcp://127.0.0.1:*").start()
    ctx = zmq.Context()
    try:
        endpoint = server.endpoint
        evil = stranger(ctx, zmq.DEALER, ring.key("instrument").public, endpoint)
        evil.send_multipart([b"LTEMDRV", b'{"v":1,"id":"x","method":"ping","args":{},"timeout_s":1}'])
        assert not evil.poll(1000), "a stranger's request was answered"
        assert security.refused_count(server._ctx) >= 2  # the self-test's probe and this one
        evil.close()

        security.configure(ring, "monitor")  # this test process now speaks as the monitor key
        m = RemoteMicroscope(InstrumentClient(endpoint, timeout_s=5, liveness_s=2))
        try:
            assert m.get_defocus() == 0.0
            with pytest.raises(PermissionDenied):
                m.set_defocus(1e-4)
        finally:
            m.close()
        security.configure(ring, "controller")
        m = RemoteMicroscope(InstrumentClient(endpoint, timeout_s=5, liveness_s=2))
        try:
            assert m.set_defocus(1e-4) == pytest.approx(1e-4)
            ring.revoke("controller")
            time.sleep(0.05)
            with pytest.raises(PermissionDenied):  # an open connection of a revoked key: refused per message
                m.set_defocus(2e-4)
        finally:
            m.close()
        assert calls == [1e-4]
        assert server.stats["denied"] == 2
    finally:
        security.configure(ring, "instrument")
        server.stop()
        ctx.destroy(linger=0)  # a failed assertion leaves the stranger's socket open: term() would hang on it


def test_publisher_admits_sources_and_watchers_only_with_keys(ring):
    security.configure(ring, "publisher")
    pub = Publisher(PublisherConfig(heartbeat_s=0.1)).start()
    ctx = zmq.Context()
    evil: list[zmq.Socket] = []
    try:
        public = ring.key("publisher").public
        evil.append(stranger(ctx, zmq.PUSH, public, pub.endpoints["ingest"]))
        evil[0].send_multipart([b"LTEMUPD", b"{}"], zmq.NOBLOCK)
        evil.append(stranger(ctx, zmq.SUB, public, pub.endpoints["updates"]))
        evil[1].setsockopt(zmq.SUBSCRIBE, b"")
        security.configure(ring, "controller")
        with EventSink(pub.endpoints["ingest"], "controller") as sink:
            sink.emit("status", {"state": "acquiring"})  # queued until the handshake is done
            deadline = time.monotonic() + 5
            while not pub.stats["published"] and time.monotonic() < deadline:
                time.sleep(0.02)
        security.configure(ring, "monitor")
        with EventSink(pub.endpoints["ingest"], "monitor") as fake_source:  # a watcher's key may not publish
            fake_source.emit("status", {"state": "error"})
            time.sleep(0.3)
        with Subscriber.at(pub.endpoints["snapshot"], context=ctx) as sub:
            deadline = time.monotonic() + 5
            while not (sub.synced and "status" in sub.state) and time.monotonic() < deadline:
                sub.poll(0.05)
            assert sub.state["status"][0].payload == {"state": "acquiring"}
        assert not evil[1].poll(500), "a stranger received the update stream"
        assert pub.stats["received"] == 2 and pub.stats["published"] == 1 and pub.stats["refused"] == 1
    finally:
        for sock in evil:
            sock.close()
        security.configure(ring, "publisher")
        pub.stop()
        ctx.destroy(linger=0)


def test_instrument_server_refuses_to_bind_beyond_loopback_without_keys(tmp_path):
    cfg = tmp_path / "i.yaml"
    cfg.write_text("backend: simulated\nsimulated: {time_scale: 0.0, simulation: {shape: [32, 32]}}\n")
    out = subprocess.run([sys.executable, "-m", "drivers.server", "--config", str(cfg), "--endpoint",
                          "tcp://0.0.0.0:0"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 2
    assert "beyond loopback needs CURVE keys" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_secured_session_end_to_end_and_no_command_from_a_monitor(ring, tmp_path):
    data = small(tmp_path, plan={"repeats": 2}, controller={"instrument_mode": "remote"},
                 security={"keys_dir": str(ring.directory)}, reconstructor={"live": True})
    security.configure(ring, "monitor")
    from drivers.supervisor import Supervisor
    from ltemlive.session.config import RunConfig

    cfg = RunConfig.model_validate(data)
    inst = {**cfg.instrument, "server": {"keys_dir": str(ring.directory), "key": "instrument"}}
    sup = Supervisor(inst, "tcp://127.0.0.1:*", watchdog_s=0).start()
    data["endpoints"] = {**data.get("endpoints", {}), "instrument": sup.endpoint}
    s = None
    try:
        s = Session(data, tmp_path)  # its ControlClient speaks with the monitor key
        reply = s.control.command("pause")
        assert not reply.ok and "operator" in reply.message
        assert s.control.command("status").ok  # a monitor may ask for the status
        ctx = zmq.Context()
        try:  # a stranger on the control socket: no reply at all
            evil = stranger(ctx, zmq.DEALER, ring.key("controller").public, s.ready["controller"]["control"])
            evil.send_multipart([b"LTEMCTL", b'{"v":1,"type":"command","id":"x","action":"abort"}'])
            assert not evil.poll(1000)
            evil.close()
        finally:
            ctx.destroy(linger=0)
        assert s.wait_controller_exit(120) == 0
    finally:
        if s is not None:
            s.close()
        sup.stop()
    run = read_run(s.run_file)
    assert run["series_status"] == ["complete", "complete"]
    assert sorted(run["recon_series"]) == [0, 1]
    assert not any("abort" in m or "pause requested" in m for _, m in run["events"])
    assert np.isfinite(run["readback"]).all()


def test_control_client_of_an_unsecured_caller_gets_nothing_from_a_secured_controller(ring, tmp_path):
    """Plain (no CURVE) clients of a CURVE socket never complete a handshake: silence, then a clear timeout."""
    security.configure(ring, "controller")
    ctx = zmq.Context()
    srv = ctx.socket(zmq.ROUTER)
    security.serve(srv)
    port = srv.bind_to_random_port("tcp://127.0.0.1")
    security.deconfigure()
    try:
        with ControlClient(f"tcp://127.0.0.1:{port}", timeout_s=0.5) as c, pytest.raises(ControllerUnreachable):
            c.command("status")
        with InstrumentClient(f"tcp://127.0.0.1:{port}", liveness_s=0.5) as client, \
                pytest.raises(InstrumentTimeout):
            client.ping(timeout_s=0.5)
    finally:
        srv.close(0)
        ctx.destroy(linger=0)
