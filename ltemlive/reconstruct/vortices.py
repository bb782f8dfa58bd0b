"""Phase vortices: the local minima of phase retrieval on a pixel grid, and their removal.

The images see the wave exp(i phi) sampled on pixels, so the data cannot tell phi from phi + 2 pi n_j
for any integer field n_j. An optimiser that moves the phase in large smooth steps can therefore settle
in a state whose wave carries vortex pairs (points around which the phase winds by +-2 pi) joined by a
branch cut along which neighbouring pixels differ by more than pi. As a real-valued map, such a pair is
phi_true + theta_1 - theta_2 (the azimuths about the two cores): a long-range, dipole-like error with a
2 pi jump along the cut, measured on the resolution pattern as +-15 rad blobs around the strongest bars.
A specimen sampled finely enough for a camera-pixel model has neighbour differences below pi everywhere,
so it has no such cut.

The azimuth fields are divergence-free, so the least-squares integration of the wrapped neighbour
differences (solve laplacian(phi') = div(wrap(grad phi))) drops them and keeps everything else: a phase
without cuts comes back unchanged (up to its mean); one with vortex pairs comes back without them.
Periodic differences, because the model's grid is periodic (FFT propagation).
"""

from __future__ import annotations

import math

import torch


def _wrap(x: torch.Tensor) -> torch.Tensor:
    return torch.remainder(x + math.pi, 2 * math.pi) - math.pi


def branch_cut_count(phase: torch.Tensor) -> int:
    """Neighbour pairs (periodic, both axes) whose phase difference exceeds pi."""
    dy = torch.roll(phase, -1, 0) - phase
    dx = torch.roll(phase, -1, 1) - phase
    return int((dy.abs() > math.pi).sum() + (dx.abs() > math.pi).sum())


def remove_vortices(phase: torch.Tensor) -> torch.Tensor:
    """Least-squares integration of the wrapped neighbour differences (periodic, mean kept)."""
    dy = _wrap(torch.roll(phase, -1, 0) - phase)
    dx = _wrap(torch.roll(phase, -1, 1) - phase)
    div = (dy - torch.roll(dy, 1, 0)) + (dx - torch.roll(dx, 1, 1))
    h, w = phase.shape
    ky = torch.fft.fftfreq(h, device=phase.device, dtype=torch.float64)[:, None]
    kx = torch.fft.fftfreq(w, device=phase.device, dtype=torch.float64)[None, :]
    lap = (2 * torch.cos(2 * math.pi * ky) - 2) + (2 * torch.cos(2 * math.pi * kx) - 2)
    spec = torch.fft.fft2(div.double())
    spec = torch.where(lap != 0, spec / torch.where(lap != 0, lap, torch.ones_like(lap)), torch.zeros_like(spec))
    out = torch.fft.ifft2(spec).real
    return (out - out.mean() + phase.double().mean()).to(phase.dtype)
