"""Helpers shared by the driver tests (a uniquely named module, so it never collides with another
directory's conftest)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from drivers.interface import Microscope

FAKES = Path(__file__).parent / "fakes"

#: Small and instant: 64 px, time_scale 0, a 1 mm window of limits with a 0.6 mm step limit.
LIMITS = {
    "defocus_min_m": -1e-3,
    "defocus_max_m": 1e-3,
    "max_defocus_step_m": 6e-4,
    "stage_x_m": [-1e-4, 1e-4],
    "stage_y_m": [-1e-4, 1e-4],
}


def sim_config(**overrides: Any) -> dict[str, Any]:
    simulated: dict[str, Any] = {
        "simulation": {
            "shape": [64, 64],
            "pixel_size_m": 5e-9,
            "oversample": 1,
            "defocus_m": [-1e-3, 1e-3],  # the simulated field is made for the largest defocus the tests set
            "dose_e_per_px": None,
            "seed": 7,
        },
        "time_scale": 0.0,
    }
    sim_over = overrides.pop("simulated", {})
    for k, v in sim_over.items():
        if k == "simulation":
            simulated["simulation"].update(v)
        else:
            simulated[k] = v
    return {"backend": "simulated", "limits": dict(LIMITS), "simulated": simulated, **overrides}


class Spy:
    """Wraps the backend microscope *below* the safety limits and logs every call that reaches it."""

    def __init__(self, inner: Microscope) -> None:
        self._inner = inner
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if callable(attr):

            def logged(*a: Any, **kw: Any) -> Any:
                self.calls.append(name)
                return attr(*a, **kw)

            return logged
        return attr

    @property
    def instrument_id(self) -> str:
        return self._inner.instrument_id


WRITE_CALLS = {
    "set_defocus",
    "move_stage",
    "set_lens_mode",
    "set_beam_blanked",  # interface level
    "SetOM",
    "SetOLf",
    "SetOLc",
    "SetX",
    "SetY",
    "SetZ",
    "SetTiltXAngle",
    "SetTiltYAngle",
    "set_stage_position",
    "SetBeamBlank",
}
