"""The web dashboard without a browser: the gateway fed synthetic events, the app through Starlette's
TestClient (httpx, no sockets), the shared picture functions, and the command's refusal of a dead address."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from service_util import ROOT

from ltemlive import pictures
from ltemlive.dashboard.gateway import Gateway
from ltemlive.dashboard.server import create_app
from ltemlive.wire.updates import Event

TOKEN = "s3cret-token"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PIXEL = 5e-9


def vortex_phase(n: int = 48, k: float = 1.0) -> np.ndarray:
    y, x = np.mgrid[:n, :n] - (n - 1) / 2
    return (k * np.exp(-(x**2 + y**2) / (0.1 * n**2)) + 0.01 * x).astype(np.float32)


class Feed:
    """Synthetic update events with increasing seq, as a Subscriber would return them."""

    def __init__(self, gw: Gateway):
        self.gw, self.seq = gw, 0

    def __call__(self, topic: str, payload: dict, arrays=()) -> None:
        self.seq += 1
        ev = Event(topic=topic, source="test", seq=self.seq, t_epoch_s=time.time(), payload=payload)
        self.gw.feed([(ev, list(arrays))])


def running_run(gw: Gateway) -> Feed:
    feed = Feed(gw)
    feed("status", {"state": "running", "run_id": "run-1"})
    feed("progress", {"series": 0, "frame": -1, "n_series": 3, "n_frames": 4})
    feed("frame", {"series": 0, "index": 2, "n_series": 3, "n_frames": 4})
    feed("recon", {"series": 0, "stage": "refine", "iteration": 5, "loss": 0.5, "data_loss": float("nan"),
                   "pixel_size_m": PIXEL, "history": [[1, 1.0, 0.9], [3, 0.7, 0.6], [5, 0.5, 0.4]]},
         [vortex_phase()])
    feed("log", {"kind": "run", "message": "run run-1 started"})
    return feed


class FakeController:
    def __init__(self):
        self.calls: list[str] = []

    def __call__(self, action: str):
        self.calls.append(action)
        return True, f"{action}d", {"state": "paused" if action == "pause" else "running"}


@pytest.fixture
def app_parts():
    gw = Gateway(min_interval_s=0.0, dpi=50, control=True, address="tcp://test:1")
    fake = FakeController()
    app = create_app(gw, "tcp://127.0.0.1:9", TOKEN, sender=fake)
    with TestClient(app) as client:
        yield gw, fake, client


# -- the state -------------------------------------------------------------------------------------------------


def test_state_json_follows_the_events_and_has_no_nan(app_parts):
    gw, _, client = app_parts
    assert client.get("/api/state").json()["state"] == "unknown"
    running_run(gw)
    r = client.get("/api/state")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert "NaN" not in r.text  # the live data_loss is NaN: null in JSON, as browsers need
    s = r.json()
    assert s["state"] == "running" and s["status"]["run_id"] == "run-1"
    assert s["frame"]["index"] == 2 and s["progress"]["n_series"] == 3
    assert s["pictures"]["phase"]["final"] is False
    assert s["loss"][-1][:3] == [0, 5, 0.5]
    assert s["gateway"]["control"] is True


def test_pictures_are_served_versioned_and_404_before_the_first(app_parts):
    gw, _, client = app_parts
    assert client.get("/api/picture/phase.png").status_code == 404
    assert client.get("/api/picture/nonsense.png").status_code == 404
    feed = running_run(gw)
    assert set(gw.render_due()) == {"phase", "induction", "loss"}
    assert gw.render_due() == []  # nothing changed: nothing redrawn
    r = client.get("/api/picture/phase.png?v=1")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content[:8] == PNG_MAGIC
    assert client.get("/api/picture/induction.png").content[:8] == PNG_MAGIC
    v1 = client.get("/api/state").json()["images"]["phase"]["version"]

    # A finished series: phase and amplitude at once, then a calibration decision.
    feed("result", {"series": 0, "pixel_size_m": PIXEL, "defocus_m": [-1.01e-3, 1.02e-3],
                    "defocus_nominal_m": [-1e-3, 1e-3], "defocus_sigma_m": [1e-7, 1e-7], "history": [[1, 2.0, 1.0]]},
         [vortex_phase(k=2.0), np.ones((48, 48), np.float32)])
    feed("calibration", {"series_index": 0, "accepted": True, "reason": "accepted",
                         "history": [{"series": 0, "accepted": True, "reason": "accepted", "estimate_scale": 1.01,
                                      "sigma_scale": 0.002, "scale": 1.01, "offset_m": 0.0, "t_epoch_s": 1.0}]})
    assert {"phase", "induction", "amplitude", "calibration"} <= set(gw.render_due())
    s = client.get("/api/state").json()
    assert s["images"]["phase"]["version"] == v1 + 1
    assert s["pictures"]["phase"]["final"] is True
    assert "history" not in s["result"]  # the curve is a picture; the rows stay out of the state
    for name in ("amplitude", "calibration"):
        assert client.get(f"/api/picture/{name}.png").content[:8] == PNG_MAGIC


def test_renders_are_throttled_per_picture():
    gw = Gateway(min_interval_s=30.0, dpi=40)
    feed = running_run(gw)
    assert "phase" in gw.render_due()
    feed("recon", {"series": 0, "iteration": 6, "loss": 0.4, "pixel_size_m": PIXEL}, [vortex_phase(k=3.0)])
    assert gw.render_due() == []  # changed, but drawn less than 30 s ago: waits (the newest wins later)
    assert gw.picture("phase").version == 1


def test_a_picture_that_cannot_be_drawn_is_reported_not_raised():
    gw = Gateway(min_interval_s=0.0, dpi=40)
    feed = Feed(gw)
    feed("recon", {"series": 0, "pixel_size_m": PIXEL}, [np.zeros((4, 4, 3), np.float32)])  # not a 2-D map
    gw.render_due()
    s = gw.state_dict()
    assert "phase" in s["image_errors"] and gw.picture("phase") is None
    assert gw.render_due() == []  # the same bad source is not retried


# -- the websocket --------------------------------------------------------------------------------------------


def test_websocket_sends_the_snapshot_first_then_changes(app_parts):
    gw, _, client = app_parts
    feed = running_run(gw)
    with client.websocket_connect("/ws") as ws:
        first = ws.receive_json()
        assert first["type"] == "state" and first["state"]["state"] == "running"
        assert first["state"]["status"]["run_id"] == "run-1"
        feed("status", {"state": "paused"})
        second = ws.receive_json()
        assert second["type"] == "state" and second["seq"] > first["seq"]
        assert second["state"]["state"] == "paused"
    # A page that comes back later gets the present at once, not the past.
    with client.websocket_connect("/ws") as ws:
        assert ws.receive_json()["state"]["state"] == "paused"


def test_websocket_from_a_foreign_origin_is_refused(app_parts):
    _, _, client = app_parts
    from starlette.websockets import WebSocketDisconnect

    foreign = {"origin": "http://evil.example"}
    with pytest.raises(WebSocketDisconnect), client.websocket_connect("/ws", headers=foreign) as ws:
        ws.receive_json()


# -- commands -------------------------------------------------------------------------------------------------


def test_command_without_or_with_a_wrong_token_is_refused_and_nothing_is_sent(app_parts):
    _, fake, client = app_parts
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": "Bearer"}, {"Authorization": f"Bearer {TOKEN}x"}):
        r = client.post("/api/command/pause", headers=headers)
        assert r.status_code == 401, headers
        assert r.json()["ok"] is False and "WWW-Authenticate" in r.headers
        assert TOKEN not in r.text
    assert fake.calls == []


def test_command_with_the_token_is_forwarded(app_parts):
    _, fake, client = app_parts
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = client.post("/api/command/pause", headers=auth, content=b"ignored body")
    assert r.status_code == 200 and r.json() == {"ok": True, "message": "paused", "state": "paused"}
    assert client.post("/api/command/resume", headers=auth).status_code == 200
    assert fake.calls == ["pause", "resume"]


def test_other_actions_are_not_commands(app_parts):
    _, fake, client = app_parts
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for action in ("status", "freeze_feedback", "shutdown"):
        assert client.post(f"/api/command/{action}", headers=auth).status_code == 404
    assert client.get("/api/command/pause").status_code == 405  # read-only by GET
    assert fake.calls == []


def test_controller_refusal_silence_and_no_control():
    gw = Gateway()

    def silent(action):
        raise TimeoutError("no reply within 3 s")

    auth = {"Authorization": f"Bearer {TOKEN}"}
    with TestClient(create_app(gw, "tcp://127.0.0.1:9", TOKEN, sender=silent)) as client:
        assert client.post("/api/command/pause", headers=auth).status_code == 503
    with TestClient(create_app(gw, "tcp://127.0.0.1:9", TOKEN, sender=lambda a: (False, "not running", {}))) as c:
        r = c.post("/api/command/resume", headers=auth)
        assert r.status_code == 409 and r.json()["message"] == "not running"
    with TestClient(create_app(gw, None, TOKEN)) as client:
        assert client.post("/api/command/pause", headers=auth).status_code == 503
        assert client.post("/api/command/pause").status_code == 401  # the token is checked first


def test_page_and_assets_ship_with_the_package_and_headers_are_strict(app_parts):
    _, _, client = app_parts
    page = client.get("/?token=abc")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "abc" not in page.text  # the token is never echoed into the page
    for needle in ('id="run-state"', 'id="img-phase"', 'id="btn-pause"', "/static/app.js", "/static/style.css"):
        assert needle in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing from the internet
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and page.headers["x-content-type-options"] == "nosniff"
    assert "access-control-allow-origin" not in page.headers
    for asset in ("app.js", "style.css"):
        r = client.get(f"/static/{asset}")
        assert r.status_code == 200
        assert "https://" not in r.text and "http://" not in r.text
    assert client.get("/docs").status_code == 404  # no API explorer (it would load assets from a CDN)


# -- the shared pictures --------------------------------------------------------------------------------------


def _colourbar_labels(fig) -> list[str]:
    out = []
    for a in fig.axes:
        for a2 in [a, *a.child_axes]:
            for im in a2.images:
                if im.colorbar is not None:
                    out.append(im.colorbar.ax.get_ylabel())
    return out


def test_amplitude_and_image_figures_have_their_own_colour_bar_label():
    fig = pictures.amplitude_figure(np.ones((32, 40)) + 0.1 * np.eye(32, 40), PIXEL, title="amplitude")
    assert _colourbar_labels(fig) == ["amplitude (relative)"]
    assert pictures.figure_png(fig, dpi=40)[:8] == PNG_MAGIC
    fig = pictures.image_figure(vortex_phase(), PIXEL, label="counts")
    assert _colourbar_labels(fig) == ["counts"]
    assert _colourbar_labels(pictures.phase_figure(vortex_phase(), PIXEL)) == ["phase (rad)"]
    with pytest.raises(ValueError, match="2-D"):
        pictures.image_figure(np.zeros((2, 3, 4)), PIXEL, label="x")


def test_calibration_history_figure_from_the_compact_rows():
    rows = [{"series": k, "accepted": k != 2, "reason": "accepted", "estimate_scale": 1.0 + 0.01 * k,
             "sigma_scale": 0.003 if k else None, "scale": 1.0 + 0.005 * k, "offset_m": 0.0, "t_epoch_s": k}
            for k in range(4)]
    fig = pictures.calibration_history_figure(rows)
    ylabels = [a.get_ylabel() for a in fig.axes]
    assert ylabels == ["scale", "offset (µm)"]
    assert pictures.figure_png(fig, dpi=40)[:8] == PNG_MAGIC


def test_loss_figure_draws_rows_without_stages():
    fig = pictures.loss_figure([{"iteration": i, "loss": 1 / (i + 1), "data_loss": 0.5 / (i + 1)} for i in range(5)],
                               title="reconstruction loss, series 3")
    assert fig.axes[0].get_title() == "reconstruction loss, series 3"
    assert pictures.figure_png(fig, dpi=40)[:8] == PNG_MAGIC


# -- the command line -----------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dashboard_with_nothing_at_the_address_exits_2_with_one_line():
    address = f"tcp://127.0.0.1:{_free_port()}"
    proc = subprocess.run(
        [sys.executable, "-m", "ltemlive.cli", "dashboard", address, "--port", "0", "--timeout", "0.5"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: nothing answers at " + address), proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_state_text_is_compact_json():
    gw = Gateway()
    running_run(gw)
    seq, text = gw.state()
    assert seq >= 1 and json.loads(text)["state"] == "running"


def test_the_dashboard_process_loads_no_torch_and_no_acquisition_code():
    # The static rule is in test_boundaries.py; this one also sees what the imports import.
    heavy = "('ltemlive.reconstruct', 'ltemlive.controller.controller', 'ltemlive.recon_service.service')"
    code = ("import sys, ltemlive.dashboard.server, ltemlive.dashboard.gateway; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'drivers', 'simulator') "
            f"or m.startswith({heavy})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
