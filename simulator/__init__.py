"""ltemlive virtual microscope: NumPy/SciPy physics of Lorentz TEM image formation.

Independent of ``ltemlive`` (the reconstructor's optics is tested against it). SI units throughout;
sign conventions in docs/conventions.md; overview in docs/simulator.md.
"""

from .camera import record
from .constants import E_OVER_HBAR, interaction_constant, wavelength_m
from .imaging import image_series, transfer_function
from .instrument import VirtualLTEM
from .phase import electrostatic_phase, exit_wave, magnetic_phase
from .series import SimulatedSeries, SimulationConfig, simulate_series
from .specimens import (
    SPECIMENS,
    Specimen,
    bloch_skyrmion_lattice,
    make_specimen,
    neel_skyrmion_lattice,
    resolution_pattern,
    stripe_domains,
    vortex_disc,
)

__all__ = [
    "E_OVER_HBAR",
    "SPECIMENS",
    "SimulatedSeries",
    "SimulationConfig",
    "Specimen",
    "VirtualLTEM",
    "bloch_skyrmion_lattice",
    "electrostatic_phase",
    "exit_wave",
    "image_series",
    "interaction_constant",
    "magnetic_phase",
    "make_specimen",
    "neel_skyrmion_lattice",
    "record",
    "resolution_pattern",
    "simulate_series",
    "stripe_domains",
    "transfer_function",
    "vortex_disc",
    "wavelength_m",
]
