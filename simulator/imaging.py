"""Image formation: the LTEM transfer function and defocused intensities (docs/conventions.md).

    chi(q) = pi lambda (df + Ca cos 2(theta_q - phi_a)) q^2 + (pi/2) Cs lambda^3 q^4
    T(q)   = exp(-i chi(q)) E(q) Aperture(q)
    E(q)   = exp(-[0.5 (pi lambda Delta q^2)^2 + (pi theta_c / lambda)^2 (df_eff lambda q + Cs lambda^3 q^3)^2] / u)
    u(q)   = 1 + 2 (pi theta_c Delta)^2 q^2,   df_eff = df + Ca cos 2(theta_q - phi_a)

df > 0 is over-focus (propagation downstream by df). FFTs are periodic on the grid they are given;
callers that need non-periodic images pass a padded field and crop.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import fft as sfft

from .constants import wavelength_m

__all__ = ["FrequencyGrid", "image_series", "transfer_function"]


class FrequencyGrid:
    """Spatial-frequency arrays (cycles/m) of an (H, W) grid, computed once and reused per defocus.

    The astigmatic term uses Ca cos 2(theta - phi_a) q^2 = Ca [(q_x^2 - q_y^2) cos 2 phi_a
    + 2 q_x q_y sin 2 phi_a], which needs no arctan and is exact at q = 0.
    """

    def __init__(self, shape: tuple[int, int], pixel_size_m: float) -> None:
        h, w = (int(s) for s in shape)
        if h < 1 or w < 1 or not pixel_size_m > 0:
            raise ValueError(f"need a non-empty shape and a positive pixel size, got {shape}, {pixel_size_m}")
        self.shape = (h, w)
        self.pixel_size_m = float(pixel_size_m)
        qy = sfft.fftfreq(h, d=pixel_size_m)[:, None]
        qx = sfft.fftfreq(w, d=pixel_size_m)[None, :]
        self.qy, self.qx = qy, qx
        self.q2 = qx**2 + qy**2
        self.astig_cos = qx**2 - qy**2  # q^2 cos 2 theta_q
        self.astig_sin = 2.0 * qx * qy  # q^2 sin 2 theta_q

    def transfer(
        self,
        defocus_m: float,
        voltage_v: float,
        cs_m: float,
        theta_c_rad: float,
        focal_spread_m: float,
        astig_m: float = 0.0,
        astig_azimuth_rad: float = 0.0,
        aperture_q_max: float | None = None,
        tilt: tuple[float, float] = (0.0, 0.0),
    ) -> np.ndarray:
        """T(q) for this grid; see the module docstring. tilt (ty, tx), cycles/m: T evaluated at q + tilt, the
        transfer seen by a wave whose illumination is tilted by lambda * tilt (source point of a partially
        coherent beam, see `incoherent_source`)."""
        lam = wavelength_m(voltage_v)
        if tilt != (0.0, 0.0):
            qy, qx = self.qy + tilt[0], self.qx + tilt[1]
            q2 = qx**2 + qy**2
            a_cos, a_sin = qx**2 - qy**2, 2.0 * qx * qy
        else:
            q2, a_cos, a_sin = self.q2, self.astig_cos, self.astig_sin
        if astig_m:
            # df_eff q^2 = df q^2 + Ca q^2 cos 2(theta - phi_a)
            c2, s2 = np.cos(2 * astig_azimuth_rad), np.sin(2 * astig_azimuth_rad)
            dfq2 = defocus_m * q2 + astig_m * (a_cos * c2 + a_sin * s2)
        else:
            dfq2 = defocus_m * q2
        chi = np.pi * lam * dfq2 + 0.5 * np.pi * cs_m * lam**3 * q2 * q2
        # Spatial coherence: (pi theta_c / lambda)^2 (df_eff lambda q + Cs lambda^3 q^3)^2
        #                  = (pi theta_c)^2 (df_eff q^2 + Cs lambda^2 q^4)^2 / q^2, written without 1/q.
        grad = dfq2 + cs_m * lam**2 * q2 * q2  # = q^2 (df_eff + Cs lambda^2 q^2)
        with np.errstate(invalid="ignore", divide="ignore"):
            spatial = np.where(q2 > 0, (np.pi * theta_c_rad) ** 2 * grad**2 / np.where(q2 > 0, q2, 1.0), 0.0)
        temporal = 0.5 * (np.pi * lam * focal_spread_m * q2) ** 2
        u = 1.0 + 2.0 * (np.pi * theta_c_rad * focal_spread_m) ** 2 * q2
        envelope = np.exp(-(temporal + spatial) / u)
        t = np.exp(-1j * chi) * envelope
        if aperture_q_max is not None:
            t *= q2 <= aperture_q_max**2
        return t


def incoherent_source(theta_c_rad: float, voltage_v: float, points: int = 5) -> list[tuple[float, float, float]]:
    """Source points (weight, tilt_y, tilt_x in cycles/m) of a Gaussian source of semi-angle theta_c: illumination
    angles alpha distributed as exp(-|alpha|^2 / theta_c^2), by a points x points Gauss-Hermite product rule.

    Summing the intensities of these tilted beams is the physical (incoherent) image of a partially coherent
    source; multiplying the wave by an envelope E(q) is the quasi-coherent approximation of it, which is right
    for weak objects but damps the strongly deflected beams of strong phase objects (losing intensity).
    """
    if theta_c_rad <= 0:
        return [(1.0, 0.0, 0.0)]
    x, w = np.polynomial.hermite.hermgauss(points)  # weight exp(-x^2)
    k = theta_c_rad / wavelength_m(voltage_v)  # alpha = theta_c x -> tilt alpha / lambda
    w = w / np.sqrt(np.pi)
    pairs = list(zip(x, w, strict=True))
    return [(float(wy * wx), float(k * y), float(k * xx)) for y, wy in pairs for xx, wx in pairs]


def transfer_function(
    shape: tuple[int, int],
    pixel_size_m: float,
    defocus_m: float,
    voltage_v: float,
    cs_m: float,
    theta_c_rad: float,
    focal_spread_m: float,
    astig_m: float = 0.0,
    astig_azimuth_rad: float = 0.0,
    aperture_q_max: float | None = None,
) -> np.ndarray:
    """Complex transfer function T(q) (H, W) in numpy FFT order, per docs/conventions.md.

    aperture_q_max: objective-aperture radius in cycles/m, or None for no aperture.
    """
    return FrequencyGrid(shape, pixel_size_m).transfer(
        defocus_m, voltage_v, cs_m, theta_c_rad, focal_spread_m, astig_m, astig_azimuth_rad, aperture_q_max
    )


def image_series(
    phase: np.ndarray,
    amplitude: np.ndarray,
    pixel_size_m: float,
    defocus_m: Sequence[float],
    voltage_v: float,
    cs_m: float = 1e-3,
    theta_c_rad: float = 1e-5,
    focal_spread_m: float = 100e-9,
    astig_m: float = 0.0,
    astig_azimuth_rad: float = 0.0,
    aperture_q_max: float | None = None,
    coherence: str = "incoherent",
    source_points: int = 5,
) -> np.ndarray:
    """Intensities I = |IFFT(FFT(A exp(i phi)) T)|^2, (N, H, W), normalised so vacuum is 1.

    coherence "incoherent": the sum over the points of a Gaussian source (`incoherent_source`); "envelope": the
    quasi-coherent envelope on the wave. The FFT is periodic on the given grid: pass a padded field and crop if
    the object is not periodic.
    """
    phase = np.asarray(phase, dtype=np.float64)
    amplitude = np.broadcast_to(np.asarray(amplitude, dtype=np.float64), phase.shape)
    grid = FrequencyGrid(phase.shape, pixel_size_m)
    psi_q = sfft.fft2(amplitude * np.exp(1j * phase), workers=-1)
    dfs = np.atleast_1d(np.asarray(defocus_m, dtype=np.float64))
    out = np.empty((dfs.size, *phase.shape))
    incoherent = coherence == "incoherent" and theta_c_rad > 0
    source = incoherent_source(theta_c_rad, voltage_v, source_points) if incoherent else [(1.0, 0.0, 0.0)]
    for k, df in enumerate(dfs):
        out[k] = 0.0
        for weight, ty, tx in source:
            t = grid.transfer(df, voltage_v, cs_m, 0.0 if incoherent else theta_c_rad, focal_spread_m, astig_m,
                              astig_azimuth_rad, aperture_q_max, tilt=(ty, tx))
            out[k] += weight * np.abs(sfft.ifft2(psi_q * t, workers=-1)) ** 2
    return out
