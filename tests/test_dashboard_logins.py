"""The dashboard's login uses the keyring's roles (issue 12): reading needs a person's login, commands an
operator's; a monitor's login commands nothing; a revoked key or a replaced login ends access at once; the
cookie the page reads with never commands; and every attempt is in the audit log with the key's name."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient
from loguru import logger
from service_util import ROOT
from starlette.websockets import WebSocketDisconnect
from test_dashboard import FakeController, running_run

from ltemlive.dashboard.gateway import Gateway
from ltemlive.dashboard.server import LOGIN_COOKIE, create_app
from ltemlive.wire.security import Keyring, SecurityError


@pytest.fixture
def ring(tmp_path):
    ring = Keyring(tmp_path / "keys")
    ring.create("alice", "operator")
    ring.create("bob", "monitor")
    ring.create("controller", "acquisition")
    return ring


@pytest.fixture
def audit():
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="INFO",
                      filter=lambda r: r["name"].startswith("ltemlive.dashboard"))
    yield lines
    logger.remove(sink)


@pytest.fixture
def dash(ring):
    gw = Gateway(min_interval_s=0.0, dpi=50, control=True, address="tcp://test:1")
    fake = FakeController()
    with TestClient(create_app(gw, "tcp://127.0.0.1:9", keyring=ring, sender=fake)) as client:
        yield gw, fake, client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_logins_are_for_people_shown_once_and_stored_hashed(ring):
    token = ring.issue_login("alice")
    assert token.startswith("alice.") and len(token) > 40
    path = ring.directory / "alice.login"
    assert token.split(".", 1)[1] not in path.read_text()  # only its hash
    if os.name != "nt":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ring.check_login(token).role == "operator"
    assert ring.check_login(token + "x") is None and ring.check_login("bob." + token.split(".", 1)[1]) is None
    for odd in ("", ".", "alice", "alice.", "../alice.x", "no-such.key", "a" * 200 + ".x"):
        assert ring.check_login(odd) is None, odd
    second = ring.issue_login("alice")
    assert ring.check_login(token) is None and ring.check_login(second) is not None  # a new login replaces
    with pytest.raises(SecurityError, match="a person's key"):
        ring.issue_login("controller")
    ring.revoke("alice")
    assert ring.check_login(second) is None and not (ring.directory / "alice.login").exists()


def test_reading_needs_a_login(ring, dash):
    gw, _, client = dash
    running_run(gw)
    assert client.get("/").status_code == 200  # the page itself: it asks for a login
    assert client.get("/api/whoami").json() == {"logins": True, "name": None, "role": None}
    assert client.get("/api/state").status_code == 401
    assert client.get("/api/picture/phase.png").status_code == 401
    with pytest.raises(WebSocketDisconnect) as closed, client.websocket_connect("/ws") as ws:
        ws.receive_json()
    assert closed.value.code == 4401
    assert client.post("/api/login", headers=bearer("bob.wrong")).status_code == 401
    monitor = ring.issue_login("bob")
    r = client.post("/api/login", headers=bearer(monitor))
    assert r.status_code == 200 and r.json()["role"] == "monitor"
    assert "httponly" in r.headers["set-cookie"].lower() and "samesite=strict" in r.headers["set-cookie"].lower()
    assert client.get("/api/state").status_code == 200  # the cookie now
    assert client.get("/api/whoami").json()["name"] == "bob"
    with client.websocket_connect("/ws") as ws:
        assert ws.receive_json()["state"]["state"] == "running"


def test_only_an_operators_login_commands_and_each_attempt_is_audited(ring, dash, audit):
    _, fake, client = dash
    monitor, operator = ring.issue_login("bob"), ring.issue_login("alice")
    assert client.post("/api/command/pause").status_code == 401
    r = client.post("/api/command/pause", headers=bearer(monitor))
    assert r.status_code == 403 and "read only" in r.json()["message"]
    client.post("/api/login", headers=bearer(operator))  # the operator's cookie alone commands nothing
    assert client.cookies.get(LOGIN_COOKIE) == operator
    assert client.post("/api/command/pause").status_code == 401
    assert fake.calls == []
    assert client.post("/api/command/pause", headers=bearer(operator)).status_code == 200
    assert fake.calls == ["pause"]
    text = "\n".join(audit)
    assert "pause by bob (monitor) from testclient refused: role monitor is read only" in text
    assert "pause by alice (operator) from testclient accepted" in text
    assert "pause from testclient refused: no login" in text
    assert operator not in text and monitor not in text  # tokens never in a log line


def test_a_revoked_key_loses_its_access_at_once(ring, dash):
    gw, fake, client = dash
    feed = running_run(gw)
    operator = ring.issue_login("alice")
    client.post("/api/login", headers=bearer(operator))
    with client.websocket_connect("/ws") as ws:
        ws.receive_json()
        ring.revoke("alice")
        feed("status", {"state": "paused"})  # the next send finds the login gone
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 4401
    assert client.get("/api/state").status_code == 401
    assert client.post("/api/command/abort", headers=bearer(operator)).status_code == 401
    assert fake.calls == []


def _dashboard(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ltemlive.cli", "dashboard", "tcp://127.0.0.1:9", "--timeout",
                           "0.3", "--port", "0", *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_dashboard_options_that_cannot_be_honoured_exit_2_with_one_line(ring):
    keys = str(ring.directory)
    for args, words in ((("--host", "0.0.0.0"), "serving beyond loopback needs the keyring's logins"),
                        (("--keys", keys, "--key", "alice", "--token", "abc"), "--token is for a dashboard without"),
                        (("--keys", keys, "--key", "alice"), "no key there has a dashboard login yet")):
        proc = _dashboard(*args)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and words in lines[0], (args, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_keys_login_prints_the_token_once(ring):
    proc = subprocess.run([sys.executable, "-m", "ltemlive.cli", "keys", "--dir", str(ring.directory), "login", "bob"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    token = proc.stdout.split("shown once: ", 1)[1].split()[0]
    assert ring.check_login(token).name == "bob"
    listing = subprocess.run([sys.executable, "-m", "ltemlive.cli", "keys", "--dir", str(ring.directory), "list"],
                             capture_output=True, text=True, timeout=60, cwd=ROOT).stdout
    assert any(line.startswith("bob") and "dashboard login" in line for line in listing.splitlines()), listing
    proc = subprocess.run([sys.executable, "-m", "ltemlive.cli", "keys", "--dir", str(ring.directory), "login",
                           "controller"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2 and "a person's key" in proc.stderr


def test_a_flood_of_refusals_does_not_flood_the_log(ring, dash, audit):
    _, fake, client = dash
    for _ in range(200):
        assert client.post("/api/command/pause", headers=bearer("alice.guess")).status_code == 401
    refused = [line for line in audit if "refused" in line]
    assert 1 <= len(refused) <= 21 and fake.calls == []  # 20 lines, then a count when the window ends
