"""Build a microscope/camera pair from configuration, with safety limits always applied.

    backend: simulated | remote | thermo | jeol
    limits: {defocus_min_m: ..., max_defocus_step_m: ..., stage_x_m: [lo, hi], ...}   # SafetyLimits
    simulated: {...}   # SimulatedInstrumentConfig
    remote: {endpoint: tcp://host:port, timeout_s: 10, liveness_s: 3}
    thermo: {...}      # drivers.vendors.thermo.ThermoConfig
    jeol: {...}        # drivers.vendors.jeol.JeolConfig
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

BACKENDS = ("simulated", "remote", "thermo", "jeol")


def load_config(path: str | Path) -> dict[str, Any]:
    from drivers.server import load_config as _load

    return _load(path)


def check_config(config: Any) -> None:
    """Validate an instrument config before anything starts; ValueError with one line per problem
    (``section.field: what is wrong``)."""
    from pydantic import ValidationError

    if not isinstance(config, Mapping):
        raise ValueError(f"expected a mapping with 'backend' ({', '.join(BACKENDS)}), got {type(config).__name__}")
    kind = config.get("backend", "simulated")
    if kind not in BACKENDS:
        raise ValueError(f"backend: {kind!r} is not one of {', '.join(BACKENDS)}")
    unknown = sorted(set(config) - {"backend", "limits", "server", "simulated", "remote", "thermo", "jeol"})
    if unknown:
        allowed = ", ".join(("backend", "limits", "server", *BACKENDS))
        raise ValueError(f"unknown section(s) {', '.join(unknown)}; allowed: {allowed}")
    from drivers.server import ServerConfig

    models: list[tuple[str, Any]] = [("limits", SafetyLimits), ("server", ServerConfig)]
    if kind == "simulated":
        from drivers.simulated import SimulatedInstrumentConfig

        models.append(("simulated", SimulatedInstrumentConfig))
    elif kind == "thermo":
        from drivers.vendors.thermo import ThermoConfig

        models.append(("thermo", ThermoConfig))
    elif kind == "jeol":
        from drivers.vendors.jeol import JeolConfig

        models.append(("jeol", JeolConfig))
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
    if kind == "remote":
        raise NotAvailable("a remote backend cannot be served again; point the client at the original server")
    raise NotAvailable(f"unknown backend {kind!r}; expected one of {BACKENDS}")


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
    backend = build_backend(config)
    return backend.microscope, backend.camera
