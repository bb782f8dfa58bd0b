"""Physical constants (CODATA via scipy.constants) and the electron-optical quantities derived from them.

Nothing here is a rounded literal: wavelength and interaction constant are computed from h, e, m_e, c.
"""

from __future__ import annotations

import math

from scipy import constants as _c

H = _c.h
HBAR = _c.hbar
E_CHARGE = _c.e
M_E = _c.m_e
C_LIGHT = _c.c
MU_0 = _c.mu_0

E_OVER_HBAR = E_CHARGE / HBAR  # rad / (T m^2): AB phase per unit flux
FLUX_QUANTUM = H / E_CHARGE  # T m^2: a flux h/e gives 2 pi


def _check_voltage(voltage_v: float) -> float:
    v = float(voltage_v)
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"voltage_v must be a finite positive accelerating voltage in volts, got {voltage_v!r}")
    return v


def wavelength(voltage_v: float) -> float:
    """Relativistic electron wavelength in metres for an accelerating voltage in volts."""
    u = _check_voltage(voltage_v)
    eu = E_CHARGE * u
    return H / math.sqrt(2.0 * M_E * eu * (1.0 + eu / (2.0 * M_E * C_LIGHT**2)))


def interaction_constant(voltage_v: float) -> float:
    """sigma = 2 pi gamma m0 e lambda / h^2, in rad / (V m)."""
    u = _check_voltage(voltage_v)
    gamma = 1.0 + E_CHARGE * u / (M_E * C_LIGHT**2)
    return 2.0 * math.pi * gamma * M_E * E_CHARGE * wavelength(u) / H**2
