"""The LTEM transfer function: phase-plate chi(q) and partial-coherence envelope E(q).

Conventions (docs/conventions.md): df > 0 is over-focus (the image of the plane df downstream of the exit
surface), T = exp(-i chi) E Aperture with

    chi = pi lambda (df + Ca cos 2(theta_q - phi_a)) q^2 + (pi/2) Cs lambda^3 q^4

Astigmatism is carried in Cartesian form (a_c, a_s) = Ca (cos 2 phi_a, sin 2 phi_a) so that a fit can
pass through Ca = 0 without the azimuth becoming singular.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class FrequencyGrid:
    """Spatial-frequency quantities of one grid, built once and reused every iteration."""

    qx: torch.Tensor  # (1, W) 1/m
    qy: torch.Tensor  # (H, 1) 1/m
    q2: torch.Tensor  # (H, W) |q|^2
    q: torch.Tensor  # (H, W) |q|
    cos2: torch.Tensor  # (H, W) cos 2 theta_q (0 at q = 0)
    sin2: torch.Tensor  # (H, W) sin 2 theta_q (0 at q = 0)
    pixel_size_m: float

    @classmethod
    def build(cls, shape: tuple[int, int], pixel_size_m: float, *, device=None, dtype=torch.float32):
        h, w = shape
        qy = torch.fft.fftfreq(h, d=pixel_size_m, device=device, dtype=torch.float64)[:, None]
        qx = torch.fft.fftfreq(w, d=pixel_size_m, device=device, dtype=torch.float64)[None, :]
        q2 = qx**2 + qy**2
        safe = torch.where(q2 > 0, q2, torch.ones_like(q2))
        # cos 2theta = (qx^2 - qy^2) / q^2, sin 2theta = 2 qx qy / q^2: no atan2 needed.
        fields = dict(qx=qx, qy=qy, q2=q2, q=q2.sqrt(), cos2=(qx**2 - qy**2) / safe, sin2=2 * qx * qy / safe)
        return cls(**{k: v.to(dtype) for k, v in fields.items()}, pixel_size_m=pixel_size_m)


def astig_cartesian(astig_m: float, azimuth_rad: float) -> tuple[float, float]:
    """(Ca, phi_a) -> (a_c, a_s) = Ca (cos 2 phi_a, sin 2 phi_a)."""
    return astig_m * math.cos(2 * azimuth_rad), astig_m * math.sin(2 * azimuth_rad)


def astig_polar(a_c: float, a_s: float) -> tuple[float, float]:
    """(a_c, a_s) -> (Ca, phi_a) with phi_a in [0, pi)."""
    return math.hypot(a_c, a_s), (0.5 * math.atan2(a_s, a_c)) % math.pi


def _as_batch(defocus_m, like: torch.Tensor) -> torch.Tensor:
    d = torch.as_tensor(defocus_m, dtype=like.dtype, device=like.device).reshape(-1, 1, 1)
    return d


def effective_defocus(grid: FrequencyGrid, defocus_m, a_c=0.0, a_s=0.0) -> torch.Tensor:
    """df + Ca cos 2(theta_q - phi_a), shape (N, H, W)."""
    df = _as_batch(defocus_m, grid.q2)
    return df + a_c * grid.cos2 + a_s * grid.sin2


def chi_from(grid: FrequencyGrid, wavelength_m: float, df_eff: torch.Tensor, cs_m=0.0) -> torch.Tensor:
    lam = wavelength_m
    return (math.pi * lam) * df_eff * grid.q2 + (0.5 * math.pi * cs_m * lam**3) * grid.q2.square()


def envelope_from(
    grid: FrequencyGrid,
    wavelength_m: float,
    df_eff: torch.Tensor,
    cs_m=0.0,
    theta_c_rad=0.0,
    focal_spread_m=0.0,
) -> torch.Tensor:
    """Partial-coherence envelope E(q) in (0, 1] for a given effective defocus.

    Gaussian source of semi-angle theta_c and Gaussian focal spread Delta (quasi-coherent, mixed term via
    u(q)). The spatial term is (theta_c / 2 lambda)^2 |d chi / d q|^2 written with the effective
    (astigmatic) defocus, so it follows the sign convention of chi. Both terms enter with a minus sign: an
    envelope that grows with q (a bug of earlier codes) cannot happen here.
    """
    lam = wavelength_m
    q2, q = grid.q2, grid.q
    theta_c = torch.as_tensor(theta_c_rad, dtype=q2.dtype, device=q2.device)
    delta = torch.as_tensor(focal_spread_m, dtype=q2.dtype, device=q2.device)
    u = 1 + 2 * (math.pi * theta_c * delta) ** 2 * q2
    temporal = 0.5 * (math.pi * lam * delta * q2) ** 2
    slope = lam * df_eff * q + (cs_m * lam**3) * q2 * q  # (d chi / d q) / (2 pi)
    spatial = (math.pi * theta_c / lam) ** 2 * slope.square()
    return torch.exp(-(temporal + spatial) / u)


def pixel_transfer(grid: FrequencyGrid) -> torch.Tensor:
    """The transfer of a camera pixel that integrates the intensity over its square: sinc(qx px) sinc(qy px)
    (normalised sinc; 1 at q = 0, 2/pi per axis at Nyquist), on the grid's own frequencies."""
    px = grid.pixel_size_m
    return torch.sinc(grid.qx * px) * torch.sinc(grid.qy * px)


def chi(grid: FrequencyGrid, wavelength_m: float, defocus_m, *, cs_m=0.0, a_c=0.0, a_s=0.0) -> torch.Tensor:
    """Aberration phase chi(q) in rad, shape (N, H, W)."""
    return chi_from(grid, wavelength_m, effective_defocus(grid, defocus_m, a_c, a_s), cs_m)


def envelope(
    grid: FrequencyGrid,
    wavelength_m: float,
    defocus_m,
    *,
    cs_m=0.0,
    theta_c_rad=0.0,
    focal_spread_m=0.0,
    a_c=0.0,
    a_s=0.0,
) -> torch.Tensor:
    """Partial-coherence envelope E(q), shape (N, H, W); see envelope_from."""
    df_eff = effective_defocus(grid, defocus_m, a_c, a_s)
    return envelope_from(grid, wavelength_m, df_eff, cs_m, theta_c_rad, focal_spread_m)


def transfer_function(
    grid: FrequencyGrid,
    wavelength_m: float,
    defocus_m,
    *,
    cs_m=0.0,
    theta_c_rad=0.0,
    focal_spread_m=0.0,
    a_c=0.0,
    a_s=0.0,
    aperture_q_max: float | None = None,
) -> torch.Tensor:
    """T(q) = exp(-i chi) E(q) Aperture(q), complex, shape (N, H, W)."""
    df_eff = effective_defocus(grid, defocus_m, a_c, a_s)
    e = envelope_from(grid, wavelength_m, df_eff, cs_m, theta_c_rad, focal_spread_m)
    if aperture_q_max is not None:
        e = e * (grid.q <= aperture_q_max).to(e.dtype)
    return torch.polar(e, -chi_from(grid, wavelength_m, df_eff, cs_m))
