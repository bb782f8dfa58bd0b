"""Exit wave of a specimen: magnetic (Aharonov-Bohm) and electrostatic phase, and amplitude.

Sign conventions follow docs/conventions.md: electrons travel along +z, phi_M = -(e/hbar) int A.dl,
so d phi/dx = +(e/hbar) B_y t and d phi/dy = -(e/hbar) B_x t.
"""

from __future__ import annotations

import numpy as np
from scipy import fft as sfft

from .constants import E_CHARGE, H_PLANCK, interaction_constant
from .specimens import Specimen

__all__ = ["electrostatic_phase", "exit_wave", "magnetic_phase"]


def magnetic_phase(specimen: Specimen) -> np.ndarray:
    """Magnetic phase by the Mansuripur formula at zero tilt (periodic on the specimen grid).

        Phi_M(q) = -i (e B0 / h) (q_x [t m_y](q) - q_y [t m_x](q)) / |q|^2,   Phi_M(0) = 0

    with t m the thickness-weighted magnetisation, i.e. m integrated through the film. Only the curl of
    the in-plane magnetisation contributes; m_z adds nothing at zero tilt.
    """
    h, w = specimen.shape
    px = specimen.pixel_size_m
    tmx = sfft.fft2(specimen.m[0] * specimen.thickness_m, workers=-1)
    tmy = sfft.fft2(specimen.m[1] * specimen.thickness_m, workers=-1)
    qy = sfft.fftfreq(h, d=px)[:, None]
    qx = sfft.fftfreq(w, d=px)[None, :]
    q2 = qx**2 + qy**2
    q2[0, 0] = 1.0  # avoid 0/0; the mean phase is arbitrary and set to zero below
    phi_q = -1j * (E_CHARGE * specimen.b_sat_t / H_PLANCK) * (qx * tmy - qy * tmx) / q2
    phi_q[0, 0] = 0.0
    return sfft.ifft2(phi_q, workers=-1).real


def electrostatic_phase(thickness_m: np.ndarray, v0_v: float, voltage_v: float) -> np.ndarray:
    """Electrostatic phase sigma V0 t (positive for a positive mean inner potential)."""
    return interaction_constant(voltage_v) * float(v0_v) * np.asarray(thickness_m, dtype=np.float64)


def exit_wave(specimen: Specimen, voltage_v: float) -> tuple[np.ndarray, np.ndarray]:
    """(phase, amplitude) of the exit wave psi0 = A exp(i phi), phi = phi_E + phi_M, A = exp(-t / xi0) or 1."""
    phase = magnetic_phase(specimen)
    if specimen.mean_inner_potential_v != 0:
        phase += electrostatic_phase(specimen.thickness_m, specimen.mean_inner_potential_v, voltage_v)
    if specimen.xi0_m is None:
        amplitude = np.ones(specimen.shape)
    else:
        amplitude = np.exp(-specimen.thickness_m / specimen.xi0_m)
    return phase, amplitude
