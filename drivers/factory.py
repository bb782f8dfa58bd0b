"""Build a microscope/camera pair from configuration, with safety limits always applied.

    backend: simulated | remote | thermo | jeol | serialem | gatan
    limits: {defocus_min_m: ..., max_defocus_step_m: ..., stage_x_m: [lo, hi], ...}   # SafetyLimits
    simulated: {...}   # SimulatedInstrumentConfig
    remote: {endpoint: tcp://host:port, timeout_s: 10, liveness_s: 3}
    thermo: {...}      # drivers.vendors.thermo.ThermoConfig
    jeol: {...}        # drivers.vendors.jeol.JeolConfig
    serialem: {...}    # drivers.vendors.serialem.SerialEMConfig
    gatan: {endpoint: tcp://dm-pc:7002, column: jeol}   # drivers.vendors.gatan.GatanLinkConfig: the camera of
                       # the DM server (scripts/ltemlive_dm_server.py) + the column of the named backend's section
    server: {endpoint: tcp://127.0.0.1:7001, max_settle_s: 10, max_call_s: 120, ...}   # the server only

Limits are applied even when absent from the config (the defaults of :class:`SafetyLimits`): an instrument
without limits has to be asked for explicitly, with very wide ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from drivers.errors import NotAvailable
from drivers.interface import Camera, Microscope
from drivers.limits import LimitedMicroscope, SafetyLimits
from drivers.server import Backend

__all__ = ["BACKENDS", "build", "build_backend", "check_config", "load_config"]

BACKENDS = ("simulated", "remote", "thermo", "jeol", "serialem", "gatan")


def load_config(path: str | Path) -> dict[str, Any]:
    from drivers.server import load_config as _load

    return _load(path)


def check_config(config: Any) -> None:
    """Validate an instrument config before anything starts; ValueError with one line per problem
    (``section.field: what is wrong``)."""
    if not isinstance(config, Mapping):
        raise ValueError(f"expected a mapping with 'backend' ({', '.join(BACKENDS)}), got {type(config).__name__}")
    kind = config.get("backend", "simulated")
    if kind not in BACKENDS:
        raise ValueError(f"backend: {kind!r} is not one of {', '.join(BACKENDS)}")
    unknown = sorted(set(config) - {"backend", "limits", "server", *BACKENDS})
    if unknown:
        allowed = ", ".join(("backend", "limits", "server", *BACKENDS))
        raise ValueError(f"unknown section(s) {', '.join(unknown)}; allowed: {allowed}")
    from drivers.server import ServerConfig

    models: list[tuple[str, Any]] = [("limits", SafetyLimits), ("server", ServerConfig)]
    if kind == "gatan":
        from drivers.vendors.gatan import GatanLinkConfig

        models.append(("gatan", GatanLinkConfig))
        _validate(config, models)
        models = []
        # the column: its own section, beside the gatan one
        kind = GatanLinkConfig.model_validate(config.get("gatan") or {}).column
    if kind == "simulated":
        from drivers.simulated import SimulatedInstrumentConfig

        models.append(("simulated", SimulatedInstrumentConfig))
    elif kind == "thermo":
        from drivers.vendors.thermo import ThermoConfig

        models.append(("thermo", ThermoConfig))
    elif kind == "jeol":
        from drivers.vendors.jeol import JeolConfig

        models.append(("jeol", JeolConfig))
    elif kind == "serialem":
        from drivers.vendors.serialem import SerialEMConfig

        models.append(("serialem", SerialEMConfig))
    elif kind == "remote" and config.get("backend") == "gatan" and not (config.get("remote") or {}).get("endpoint"):
        raise ValueError("remote.endpoint: required for the column of a gatan backend (gatan.column: remote)")
    _validate(config, models)


def _validate(config: Mapping[str, Any], models: list[tuple[str, Any]]) -> None:
    from pydantic import ValidationError

    for section, model in models:
        try:
            model.model_validate(config.get(section) or {})
        except ValidationError as exc:
            lines = []
            for err in exc.errors():
                where = ".".join(str(p) for p in (section, *err["loc"]))
                lines.append(f"{where}: {err['msg']}" + (f" (got {err['input']!r:.60})" if "input" in err else ""))
            raise ValueError("; ".join(lines)) from None


def _limits(config: Mapping[str, Any]) -> SafetyLimits:
    return SafetyLimits.model_validate(config.get("limits") or {})


def build_backend(config: Mapping[str, Any]) -> Backend:
    """The local (non-remote) backend described by ``config``, its microscope wrapped in safety limits.

    The camera keeps a reference to the unwrapped microscope: it only *reads* optics state for metadata.
    """
    kind = config.get("backend", "simulated")
    limits = _limits(config)
    if kind == "simulated":
        from drivers.simulated import SimulatedInstrument, SimulatedInstrumentConfig

        inst = SimulatedInstrument(SimulatedInstrumentConfig.model_validate(config.get("simulated") or {}))
        return Backend(LimitedMicroscope(inst.microscope, limits), inst.camera, set_faults=inst.set_faults)
    if kind == "thermo":
        from drivers.vendors.thermo import ThermoConfig, ThermoInstrument

        thermo = ThermoInstrument(ThermoConfig.model_validate(config.get("thermo") or {}))
        return Backend(LimitedMicroscope(thermo.microscope, limits), thermo.camera)
    if kind == "jeol":
        from drivers.vendors.jeol import JeolConfig, JeolInstrument

        jeol = JeolInstrument(JeolConfig.model_validate(config.get("jeol") or {}))
        return Backend(LimitedMicroscope(jeol.microscope, limits), jeol.camera)
    if kind == "serialem":
        from drivers.vendors.serialem import SerialEMConfig, SerialEMInstrument

        sem = SerialEMInstrument(SerialEMConfig.model_validate(config.get("serialem") or {}))
        return Backend(LimitedMicroscope(sem.microscope, limits), sem.camera)
    if kind == "gatan":
        from drivers.vendors.gatan import GatanLinkConfig

        link = GatanLinkConfig.model_validate(config.get("gatan") or {})
        if link.column == "remote":
            raise NotAvailable("gatan with a remote column cannot be served again; use factory.build on the client")
        column = build_backend({**config, "backend": link.column})
        try:
            camera = _gatan_camera(link, column.microscope)
        except BaseException:
            column.close()
            raise
        return Backend(column.microscope, camera, set_faults=column.set_faults)
    if kind == "remote":
        raise NotAvailable("a remote backend cannot be served again; point the client at the original server")
    raise NotAvailable(f"unknown backend {kind!r}; expected one of {BACKENDS}")


def _gatan_camera(link: Any, column: Microscope) -> Camera:
    """The DM server's camera (scripts/ltemlive_dm_server.py), its frames stamped with ``column``'s optics."""
    from drivers.client import InstrumentClient, RemoteCamera
    from drivers.vendors.gatan import ColumnCamera

    client = InstrumentClient(link.endpoint, timeout_s=link.timeout_s, liveness_s=link.liveness_s)
    camera = RemoteCamera(client, default_timeout_s=link.timeout_s)
    return ColumnCamera(camera, column, pixel_size_from=link.pixel_size_from)


def build(config: Mapping[str, Any]) -> tuple[Microscope, Camera]:
    """A (microscope, camera) pair for acquisition code. ``remote`` connects to an instrument server and
    applies the limits on the client side too (the server applies its own)."""
    if config.get("backend", "simulated") == "remote":
        from drivers.client import connect

        remote = dict(config.get("remote") or {})
        endpoint = remote.pop("endpoint", None)
        if not endpoint:
            raise NotAvailable("remote backend needs remote.endpoint")
        microscope, camera = connect(endpoint, **remote)
        return LimitedMicroscope(microscope, _limits(config)), camera
    if config.get("backend") == "gatan" and (config.get("gatan") or {}).get("column") == "remote":
        from drivers.vendors.gatan import GatanLinkConfig

        column, _ = build({**config, "backend": "remote"})
        try:
            return column, _gatan_camera(GatanLinkConfig.model_validate(config["gatan"]), column)
        except BaseException:
            column.close()
            raise
    backend = build_backend(config)
    return backend.microscope, backend.camera
