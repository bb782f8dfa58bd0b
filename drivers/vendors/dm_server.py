"""The instrument server inside DigitalMicrograph: the *same* :class:`drivers.server.InstrumentServer` every other
backend uses, serving a :class:`~drivers.vendors.gatan.GatanCamera` on DM's ``DigitalMicrograph`` module.

Why the same server and not a small DM-specific one: the wire format (``ltemlive.wire`` framing, raw array frames,
never pickle), request ids, start-by deadlines, per-request limits (``server`` section) and NACKs are then
identical by construction, and the acquisition side needs nothing new - a ``RemoteCamera``. What DM needs is the
checkout (or an installed ltemlive) on its ``sys.path`` plus numpy, pydantic, pyzmq, loguru and pyyaml in its
Python environment; see docs/drivers.md.

Started by ``scripts/ltemlive_dm_server.py`` (run inside DM, ``# $BACKGROUND$`` so DM's UI stays live) or, in
tests, with a fake module: ``serve(dm_module, config)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from drivers.server import Backend, InstrumentServer, ServerConfig, load_config
from drivers.vendors.gatan import GatanCamera, GatanConfig, NoColumn

__all__ = ["DEFAULT_ENDPOINT", "DMServerConfig", "build_dm_backend", "main_in_dm", "serve"]

DEFAULT_ENDPOINT = "tcp://127.0.0.1:7002"


class DMServerConfig(BaseModel):
    """The DM server's config file: ``gatan`` (the camera) and ``server`` (endpoint and per-request caps)."""

    model_config = ConfigDict(extra="forbid")

    gatan: GatanConfig = Field(default_factory=GatanConfig)
    server: ServerConfig = Field(default_factory=lambda: ServerConfig(endpoint=DEFAULT_ENDPOINT))


def build_dm_backend(dm: ModuleType, config: GatanConfig) -> Backend:
    """A camera-only backend: called in the server's owner thread, the only thread that touches DM's camera."""
    return Backend(NoColumn(config.instrument_id), GatanCamera(dm, config))


def serve(dm: ModuleType, config: DMServerConfig | Mapping[str, Any], endpoint: str | None = None) -> InstrumentServer:
    """Start the instrument server on DM's camera in background threads and return it (``stop()`` ends it)."""
    cfg = config if isinstance(config, DMServerConfig) else DMServerConfig.model_validate(dict(config))
    bind = endpoint or cfg.server.endpoint or DEFAULT_ENDPOINT
    factory: Callable[[], Backend] = lambda: build_dm_backend(dm, cfg.gatan)  # noqa: E731
    return InstrumentServer(factory, bind, config=cfg.server).start()


def main_in_dm(config_path: str | Path | None, dm: ModuleType | None = None) -> None:
    """Run inside DM: serve until the operator presses OK in DM's dialog, then stop and release the camera."""
    from drivers.vendors.gatan import import_digitalmicrograph

    dm = dm or import_digitalmicrograph()
    raw = load_config(config_path) if config_path else {}
    server = serve(dm, raw)
    try:
        message = f"ltemlive DM server serving {server.endpoint}\n\nPress OK to stop it."
        dm.Result(f"READY {server.endpoint}\n")
        # A modal OK box in this background script's thread: the simplest stop button DM offers.
        dm.OkDialog(message)
    finally:
        server.stop()
        dm.Result("ltemlive DM server stopped\n")
