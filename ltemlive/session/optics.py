"""The microscope's optics (voltage, Cs, beam divergence, focal spread) of a session or of a recorded run: one
place for the controller (what it tells the reconstructor), replay and batch reprocessing (what a run file
recorded). Light on purpose: a Dask worker that reprocesses run files imports this, not the controller."""

from __future__ import annotations

import json

from ltemlive.session.config import ConfigError, RunConfig
from ltemlive.wire.frames import OpticsInfo

__all__ = ["optics_of_config", "optics_of_run"]


def optics_of_config(cfg: RunConfig) -> OpticsInfo:
    """The config's ``optics`` section, else the simulated instrument's own optics; a real instrument needs
    the section (its voltage, Cs and divergence are not guessed)."""
    if cfg.optics is not None:
        return OpticsInfo(**cfg.optics.model_dump())
    sim = (cfg.instrument.get("simulated") or {}).get("simulation") or {}
    if cfg.instrument.get("backend", "simulated") == "simulated":
        from simulator.series import SimulationConfig

        s = SimulationConfig.model_validate(sim)
        return OpticsInfo(
            voltage_v=s.voltage_v, cs_m=s.cs_m, theta_c_rad=s.theta_c_rad, focal_spread_m=s.focal_spread_m
        )
    raise ConfigError("optics: the microscope's voltage, Cs and beam divergence are needed (section 'optics')")


def optics_of_run(attrs: dict, cfg: RunConfig) -> OpticsInfo:
    """A run file's optics (its attributes): the instrument snapshot, else its recorded session config, else
    ``cfg``'s."""
    try:
        snap = json.loads(attrs.get("instrument_json") or "{}")
    except ValueError:
        snap = {}
    if isinstance(snap.get("optics"), dict):
        return OpticsInfo(**snap["optics"])
    recorded = attrs.get("config_yaml") or ""
    if recorded:
        import yaml

        try:
            return optics_of_config(RunConfig.model_validate(yaml.safe_load(recorded)))
        except Exception:  # an old or foreign recorded config: fall back to the given one
            pass
    return optics_of_config(cfg)
