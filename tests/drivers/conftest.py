"""Fixtures of the driver test suite: one harness per backend, so the shared suite runs unchanged against
the simulated backend in-process, through the instrument server over loopback, and the vendor fakes."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from drivers_testlib import FAKES, LIMITS, WRITE_CALLS, Spy, sim_config

from drivers.factory import build_backend
from drivers.interface import Camera, Microscope


@dataclass
class Harness:
    kind: str
    microscope: Microscope
    camera: Camera
    calls: Callable[[], list[str]]
    inject: Callable[[str], None]
    extra: dict[str, Any] = field(default_factory=dict)

    def writes(self) -> list[str]:
        return [c for c in self.calls() if c in WRITES]


#: the write calls of every fake; SerialEM's own names added to the shared table
WRITES = WRITE_CALLS | {"SetDefocus", "MoveStageTo", "TiltTo"}


def _sim_inject(set_faults: Callable[..., None]) -> Callable[[str], None]:
    table = {
        "camera_timeout": {"camera_timeout_prob": 1.0},
        "drop": {"drop_frame_prob": 1.0},
        "corrupt": {"corrupt_frame_prob": 1.0},
        "stuck_stage": {"stuck_stage": True},
    }

    def inject(fault: str) -> None:
        set_faults(table[fault])

    return inject


def _make_sim(stack) -> Harness:
    backend = build_backend(sim_config())
    spy = Spy(backend.microscope.inner)
    backend.microscope.inner = spy
    stack.append(backend.close)
    return Harness(
        "sim", backend.microscope, backend.camera, lambda: spy.calls, _sim_inject(lambda f: backend.set_faults(f))
    )


def _make_remote(stack, endpoint: str) -> Harness:
    from drivers.client import connect
    from drivers.server import InstrumentServer

    spies: list[Spy] = []

    def factory():
        backend = build_backend(sim_config())
        spy = Spy(backend.microscope.inner)
        backend.microscope.inner = spy
        spies.append(spy)
        return backend

    server = InstrumentServer(factory, endpoint).start()
    stack.append(server.stop)
    microscope, camera = connect(server.endpoint, timeout_s=5.0, liveness_s=2.0)
    stack.append(camera.close)
    stack.append(microscope.close)
    client = microscope.client
    return Harness(
        "remote",
        microscope,
        camera,
        lambda: spies[0].calls,
        _sim_inject(lambda f: client.set_faults(**f)),
        {"server": server, "client": client},
    )


@pytest.fixture
def vendor_path(monkeypatch):
    monkeypatch.syspath_prepend(str(FAKES))
    yield
    for name in list(sys.modules):
        if name in ("temscript", "serialem", "DigitalMicrograph") or name.startswith("PyJEM"):
            del sys.modules[name]


def _make_thermo(stack) -> Harness:
    import temscript

    temscript.FAKE.reset()
    cfg = {
        "backend": "thermo",
        "limits": dict(LIMITS),
        "thermo": {
            "calibration": {"scale": 1e-6, "offset_m": 2e-6},
            "camera": "BM-Ceta",
            "stage_settle": {"tolerance": 1e-9, "timeout_s": 2.0, "poll_s": 0.01},
        },
    }
    backend = build_backend(cfg)
    stack.append(backend.close)
    fake = temscript.FAKE

    def inject(fault: str) -> None:
        if fault == "stuck_stage":
            fake.stuck_stage = True
        elif fault == "camera_timeout":
            fake.acquire_delay_s = 0.4
        elif fault == "corrupt":
            fake.corrupt = True
        else:
            pytest.skip(f"{fault} not modelled by the temscript fake")

    return Harness("thermo", backend.microscope, backend.camera, lambda: fake.calls, inject, {"fake": fake})


def _make_jeol(stack) -> Harness:
    from PyJEM._state import FAKE as fake

    fake.reset()
    cfg = {"backend": "jeol", "limits": dict(LIMITS), "jeol": dict(JEOL_TEST_CONFIG)}
    backend = build_backend(cfg)
    stack.append(backend.close)

    def inject(fault: str) -> None:
        if fault == "stuck_stage":
            fake.stuck_stage = True
        elif fault == "camera_timeout":
            fake.snapshot_delay_s = 0.4
        elif fault == "corrupt":
            fake.corrupt = True
        else:
            pytest.skip(f"{fault} not modelled by the PyJEM fake")

    return Harness("jeol", backend.microscope, backend.camera, lambda: fake.calls, inject, {"fake": fake})


JEOL_TEST_CONFIG: dict[str, Any] = {
    "focus_lens": "OM",
    "sensor_shape": [64, 64],
    # 30 nm per DAC count, focus at mid-range: +-0.98 mm reachable.
    "calibration": {"scale": 30e-9, "offset_m": -32768 * 30e-9},
    "defocus_settle": {"tolerance": 16e-9, "timeout_s": 1.0},
    "stage_settle": {"tolerance": 1e-9, "timeout_s": 2.0, "poll_s": 0.01},
}


def gatan_config(endpoint: str, column: str = "jeol", **sections: Any) -> dict[str, Any]:
    """``backend: gatan`` on the DM server at ``endpoint`` with the PyJEM fake's column (the common case)."""
    cfg: dict[str, Any] = {
        "backend": "gatan",
        "limits": dict(LIMITS),
        "gatan": {"endpoint": endpoint, "column": column, "timeout_s": 5.0, "liveness_s": 2.0},
        "jeol": dict(JEOL_TEST_CONFIG),
    }
    cfg.update(sections)
    return cfg


def start_dm_server(stack, **gatan: Any):
    """The instrument server as DM would run it (drivers.vendors.dm_server) on the DigitalMicrograph fake."""
    import DigitalMicrograph as dm

    from drivers.vendors.dm_server import serve

    dm.FAKE.reset()
    server = serve(dm, {"gatan": gatan, "server": {"endpoint": "tcp://127.0.0.1:*"}})
    stack.append(server.stop)
    return server, dm.FAKE


def _make_gatan(stack) -> Harness:
    from PyJEM._state import FAKE as column

    column.reset()
    server, cam = start_dm_server(stack)
    backend = build_backend(gatan_config(server.endpoint))
    stack.append(backend.close)

    def inject(fault: str) -> None:
        if fault == "stuck_stage":
            column.stuck_stage = True
        elif fault == "camera_timeout":
            cam.acquire_delay_s = 0.4
        elif fault == "drop":
            cam.fail = True
        elif fault == "corrupt":
            cam.corrupt = True

    return Harness(
        "gatan", backend.microscope, backend.camera, lambda: column.calls, inject,
        {"camera_fake": cam, "column_fake": column, "server": server},
    )


def serialem_config(**over: Any) -> dict[str, Any]:
    return {
        "backend": "serialem",
        "limits": dict(LIMITS),
        "serialem": {
            "stage_settle": {"tolerance": 1e-9, "timeout_s": 2.0, "poll_s": 0.01},
            "defocus_settle": {"tolerance": 1e-9, "timeout_s": 1.0},
            **over,
        },
    }


def _make_serialem(stack) -> Harness:
    import serialem

    fake = serialem.FAKE
    fake.reset()
    backend = build_backend(serialem_config())
    stack.append(backend.close)

    def inject(fault: str) -> None:
        if fault == "stuck_stage":
            fake.stuck_stage = True
        elif fault == "camera_timeout":
            fake.record_delay_s = 0.4
        elif fault == "drop":
            fake.fail = True
        elif fault == "corrupt":
            fake.corrupt = True

    return Harness("serialem", backend.microscope, backend.camera, lambda: fake.calls, inject, {"fake": fake})


VENDOR_HARNESSES = {"thermo": _make_thermo, "jeol": _make_jeol, "gatan": _make_gatan, "serialem": _make_serialem}


@pytest.fixture(params=["sim", "remote", "thermo", "jeol", "gatan", "serialem"])
def harness(request, tmp_path) -> Iterator[Harness]:
    stack: list[Callable[[], None]] = []
    kind = request.param
    try:
        if kind == "sim":
            h = _make_sim(stack)
        elif kind == "remote":
            h = _make_remote(stack, "tcp://127.0.0.1:*")
        else:
            request.getfixturevalue("vendor_path")
            h = VENDOR_HARNESSES[kind](stack)
        yield h
    finally:
        for fn in reversed(stack):
            fn()


@pytest.fixture(params=["sim", "remote"])
def sim_harness(request) -> Iterator[Harness]:
    """The simulated backend, in-process and through the server (tests that need the physics)."""
    stack: list[Callable[[], None]] = []
    try:
        yield _make_sim(stack) if request.param == "sim" else _make_remote(stack, "tcp://127.0.0.1:*")
    finally:
        for fn in reversed(stack):
            fn()
