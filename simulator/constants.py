"""Physical constants and electron-optical quantities from CODATA (scipy.constants), SI units.

The simulator computes these itself rather than importing ``ltemlive.constants`` so that the
reconstructor can be tested against an independent implementation.
"""

from __future__ import annotations

import numpy as np
from scipy import constants as _c

E_CHARGE = _c.e  # C
H_PLANCK = _c.h  # J s
HBAR = _c.hbar  # J s
M_ELECTRON = _c.m_e  # kg
C_LIGHT = _c.c  # m/s

#: e / hbar in rad / (T m^2): the Aharonov-Bohm phase per unit enclosed flux.
E_OVER_HBAR = E_CHARGE / HBAR
#: Magnetic flux quantum h / e in T m^2 (one h/e of enclosed flux is a 2 pi phase).
FLUX_QUANTUM_H_OVER_E = H_PLANCK / E_CHARGE


def _check_voltage(voltage_v: float) -> float:
    v = float(voltage_v)
    if not np.isfinite(v) or v <= 0:
        raise ValueError(f"voltage_v must be a positive finite number of volts, got {voltage_v!r}")
    return v


def wavelength_m(voltage_v: float) -> float:
    """Relativistic electron wavelength lambda = h / sqrt(2 m0 e U (1 + e U / (2 m0 c^2))) in metres."""
    u = _check_voltage(voltage_v)
    eu = E_CHARGE * u
    return H_PLANCK / np.sqrt(2.0 * M_ELECTRON * eu * (1.0 + eu / (2.0 * M_ELECTRON * C_LIGHT**2)))


def lorentz_gamma(voltage_v: float) -> float:
    """Relativistic factor gamma = 1 + e U / (m0 c^2)."""
    u = _check_voltage(voltage_v)
    return 1.0 + E_CHARGE * u / (M_ELECTRON * C_LIGHT**2)


def interaction_constant(voltage_v: float) -> float:
    """Interaction constant sigma = 2 pi gamma m0 e lambda / h^2 in rad / (V m).

    The electrostatic phase of a film is sigma * V0 * t.
    """
    lam = wavelength_m(voltage_v)
    return 2.0 * np.pi * lorentz_gamma(voltage_v) * M_ELECTRON * E_CHARGE * lam / H_PLANCK**2
