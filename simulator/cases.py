"""A named suite of simulated series, each a class of data that has broken phase reconstructors.

Every case exists in two sizes of the same specimen (same physical field of view, sizes in metres):

- ``"full"``: the benchmark version (bench/baseline_cases.py);
- ``"test"``: for unit tests: fewer, larger camera pixels (the same field of view), no oversampling and
  the same dose per camera pixel (so the same noise level per pixel), so that simulating takes well under
  a second and a reconstruction at that size is cheap, while the failure class (weak phase with a ramp,
  strong phase, miscalibrated defocus, ...) is kept.

``seed`` changes only the random parts: camera noise (and specimen disorder, which no case uses), so
the ground truth of a case is the same for every seed and many noise realisations of one case can be
averaged. Defocus values are nominal (what the operator's lens reading says); ``Case.nominal_over_true``
is the calibration error the reconstructor must find (true = nominal / nominal_over_true).

    from simulator.cases import CASES, config
    cfg = config("magnetic_needle", size="test", seed=3)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .series import SimulationConfig

__all__ = ["CASES", "Case", "Size", "config"]

Size = Literal["full", "test"]


@dataclass(frozen=True)
class Case:
    """One member of the suite.

    name, description: a key and a one-line summary.
    full: SimulationConfig keywords of the full-size version (``seed`` excluded).
    test_side: camera side (px) of the test version; its pixel is pixel_size_m * full side / test_side.
    margin_m: simulation margin beyond the frame (m) on each side, or None for the automatic one; a
        physical length so that both sizes see the same specimen on the same periodic grid.
    benign: a control that a working reconstructor must get right, rather than a known failure class.
    """

    name: str
    description: str
    full: dict[str, Any]
    test_side: int = 128
    margin_m: float | None = None
    benign: bool = False

    @property
    def nominal_over_true(self) -> float:
        """Nominal / true defocus (1: exact calibration; 0.94: the nominal reads 6 % low)."""
        return 1.0 / (1.0 + self.full.get("defocus_scale_error", 0.0))

    @property
    def defocus_error(self) -> str:
        """The nominal defocus error in words."""
        r = self.nominal_over_true
        if abs(r - 1.0) < 1e-12:
            return "nominal exact"
        return f"nominal {abs(r - 1) * 100:.0f} % {'low' if r < 1 else 'high'} (nominal = {r:.2f} x true)"

    def config(self, size: Size = "full", seed: int = 0) -> SimulationConfig:
        kw = dict(self.full)
        side_full = kw["shape"][0]
        if size == "full":
            px = kw["pixel_size_m"]
        elif size == "test":
            px = kw["pixel_size_m"] * side_full / self.test_side
            kw.update(shape=(self.test_side, self.test_side), pixel_size_m=px, oversample=1)
        else:
            raise ValueError(f"size must be 'full' or 'test', got {size!r}")
        if self.margin_m is not None:
            kw["margin_px"] = math.ceil(self.margin_m / px)
        return SimulationConfig(seed=seed, **kw)


def _scale_error(nominal_over_true: float) -> float:
    """defocus_scale_error for true = nominal / nominal_over_true."""
    return 1.0 / nominal_over_true - 1.0



# Case 1: a 20-degree tilt of a thin Neel-skyrmion film. The film is a finite patch (912 nm square, beyond the
# 512 nm frame) so the tilted background's projected moment closes outside it: a net phase ramp of ~0.75 rad
# across the frame on top of a weak lattice contrast (~0.1 rad). Uniform absorption: amplitude 0.889, so the
# film transmits I = 0.79 of the vacuum intensity; dose 3200 e/px gives Poisson noise 1/sqrt(0.79 x 3200) = 2 %.
_TILT = np.deg2rad(20.0)
_T_FILM = 30e-9
_AMPLITUDE = 0.889

CASES: dict[str, Case] = {
    c.name: c
    for c in [
        Case(
            "weak_phase_absorbing",
            "weak phase (std 0.24 rad) with a net ramp: tilted Neel-skyrmion film patch, uniform absorption "
            "(I = 0.79), 2 % noise",
            full=dict(
                specimen="neel_skyrmion_lattice",
                specimen_params=dict(
                    tilt_x_rad=float(_TILT), b_sat_t=0.6, thickness_m=_T_FILM, mean_inner_potential_v=20.0,
                    xi0_m=_T_FILM / math.cos(_TILT) / math.log(1.0 / _AMPLITUDE), film_size_m=912e-9,
                    film_edge_m=50e-9,
                ),
                shape=(256, 256), pixel_size_m=2e-9, oversample=2, voltage_v=200e3,
                defocus_m=[-0.3e-3, -0.15e-3, 0.0, 0.15e-3, 0.3e-3], dose_e_per_px=3200.0,
            ),
            margin_m=486e-9,
        ),
        Case(
            "vortex_array",
            "strong smooth low-frequency phase (std 7 rad, +-22 rad cones): 2x2 vortex discs, alternating "
            "chirality, 300 kV",
            full=dict(
                specimen="vortex_array",
                specimen_params=dict(
                    rows=2, cols=2, pitch_m=700e-9, radius_m=300e-9, thickness_m=50e-9, b_sat_t=1.0,
                    mean_inner_potential_v=20.0, edge_width_m=40e-9,
                ),
                shape=(512, 512), pixel_size_m=3e-9, oversample=2, voltage_v=300e3,
                defocus_m=[-0.5e-3, -0.25e-3, 0.0, 0.25e-3, 0.5e-3], dose_e_per_px=200.0,
                defocus_scale_error=_scale_error(0.94),
            ),
            test_side=192,
        ),
        Case(
            "dome_island",
            "large phase (std 8.5 rad) of a vortex in a dome-shaped island (80 nm at the centre, 0 at the "
            "rim), thickness-dependent absorption",
            full=dict(
                specimen="dome_island",
                specimen_params=dict(
                    radius_m=320e-9, max_thickness_m=80e-9, profile="paraboloid", b_sat_t=1.0,
                    mean_inner_potential_v=20.0, xi0_m=150e-9, chirality=-1,
                ),
                shape=(256, 256), pixel_size_m=3e-9, oversample=2, voltage_v=200e3,
                defocus_m=[-0.4e-3, 0.0, 0.4e-3], dose_e_per_px=1000.0,
            ),
        ),
        Case(
            "magnetic_needle",
            "huge smooth stray-field phase (std 10 rad, ~25 rad step across the bar) of a 2 T needle tip, "
            "um defocus",
            full=dict(
                specimen="magnetic_needle",
                specimen_params=dict(
                    width_m=200e-9, thickness_m=80e-9, length_m=700e-9, taper_length_m=150e-9,
                    tip_y_m=60e-9, b_sat_t=2.0, mean_inner_potential_v=20.0, edge_width_m=25e-9,
                ),
                shape=(256, 256), pixel_size_m=1.6e-9, oversample=2, voltage_v=200e3,
                defocus_m=[-15e-6, -3.75e-6, 3.75e-6, 15e-6], dose_e_per_px=200.0,
                defocus_scale_error=_scale_error(1.05),
            ),
            margin_m=480e-9,
        ),
        Case(
            "vortex_disc",
            "control: one permalloy vortex disc (r = 500 nm), the default defocus series",
            full=dict(
                specimen="vortex_disc",
                specimen_params=dict(radius_m=500e-9, thickness_m=50e-9, b_sat_t=1.0,
                                     mean_inner_potential_v=20.0, edge_width_m=40e-9),
                shape=(256, 256), pixel_size_m=5e-9, oversample=2, voltage_v=200e3,
                defocus_m=[-1.6e-3, -0.15e-3, 0.15e-3, 1.6e-3], dose_e_per_px=200.0,
            ),
            benign=True,
        ),
        Case(
            "bloch_skyrmions",
            "control: hexagonal Bloch-skyrmion lattice (period 150 nm), 300 kV, 1000 e/px",
            full=dict(
                specimen="bloch_skyrmion_lattice",
                specimen_params=dict(lattice_period_m=150e-9, radius_m=40e-9, thickness_m=50e-9,
                                     b_sat_t=0.5, mean_inner_potential_v=20.0),
                shape=(256, 256), pixel_size_m=2.5e-9, oversample=2, voltage_v=300e3,
                defocus_m=[-0.8e-3, -0.2e-3, 0.2e-3, 0.8e-3], dose_e_per_px=1000.0,
            ),
            benign=True,
        ),
        Case(
            "stripe_domains",
            "control: straight +-y stripe domains (period 320 nm), nominal defocus 8 % high",
            full=dict(
                specimen="stripe_domains",
                specimen_params=dict(period_m=320e-9, thickness_m=50e-9, b_sat_t=1.0,
                                     mean_inner_potential_v=20.0),
                shape=(256, 256), pixel_size_m=5e-9, oversample=2, voltage_v=200e3,
                defocus_m=[-1.6e-3, -0.15e-3, 0.15e-3, 1.6e-3], dose_e_per_px=200.0,
                defocus_scale_error=_scale_error(1.08),
            ),
            benign=True,
        ),
    ]
}


def config(name: str, *, size: Size = "full", seed: int = 0) -> SimulationConfig:
    """The SimulationConfig of case ``name`` at ``size`` ("full" or "test") with noise seed ``seed``."""
    try:
        case = CASES[name]
    except KeyError:
        raise ValueError(f"unknown case {name!r}; valid names: {', '.join(CASES)}") from None
    return case.config(size, seed)
