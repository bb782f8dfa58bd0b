"""Data misfit, regularisers and the noise level that sets the regularisation weight.

All terms are means per pixel, so weights do not depend on the image size.

Data misfit (data normalised so that an unscattered beam is 1):
- Poisson: (mu - y log mu) - (y - y log y) per pixel, divided by the dose (half the Poisson deviance per
  electron of dose); at the truth it averages about 1 / (2 D).
- sqrt_gaussian: (sqrt(model) - sqrt(data))^2; variance-stabilised, about 1 / (4 D) at the truth for
  Poisson data of D electrons per pixel. Used when the dose is unknown.
"""

from __future__ import annotations

import torch

_EPS = 1e-6


def poisson_loss(model: torch.Tensor, data: torch.Tensor, dose: float, mask: torch.Tensor | None = None):
    mu = model.clamp_min(_EPS) * dose
    y = data * dose
    # y log y is a constant that makes the loss read as a deviance (0 for a perfect fit of noise-free data).
    ylogy = torch.xlogy(y, y)
    per_px = (mu - y * torch.log(mu)) - (y - ylogy)
    return _mean(per_px, mask) / dose


def sqrt_gaussian_loss(model: torch.Tensor, data: torch.Tensor, mask: torch.Tensor | None = None):
    r = model.clamp_min(_EPS).sqrt() - data.clamp_min(0).sqrt()
    return _mean(r.square(), mask)


def _mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return x.mean()
    m = mask.to(x.dtype)
    return (x * m).sum() / (m.sum() * x.shape[0])


def tv2(phase: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Smoothed second-order total variation: mean sqrt(phi_xx^2 + phi_yy^2 + 2 phi_xy^2 + eps^2) - eps.

    Curvature, not slope, is penalised: linear phase ramps (uniform in-plane induction) cost nothing,
    which first-order TV gets wrong on large smooth magnetic phases. Units: rad / px^2.
    """
    pxx = phase[:, 2:] - 2 * phase[:, 1:-1] + phase[:, :-2]
    pyy = phase[2:, :] - 2 * phase[1:-1, :] + phase[:-2, :]
    pxy = phase[1:, 1:] - phase[1:, :-1] - phase[:-1, 1:] + phase[:-1, :-1]
    s = pxx[1:-1, :].square() + pyy[:, 1:-1].square() + 2 * pxy[:-1, :-1].square() + eps**2
    return s.sqrt().mean() - eps


def tv(phase: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Smoothed isotropic first-order total variation, rad / px."""
    gx = phase[:-1, 1:] - phase[:-1, :-1]
    gy = phase[1:, :-1] - phase[:-1, :-1]
    return (gx.square() + gy.square() + eps**2).sqrt().mean() - eps


REGULARIZERS = {"tv2": tv2, "tv": tv}


def expected_misfit(kind: str, dose: float | None, noise_var_sqrt: float) -> float:
    """Mean per-pixel data loss at the truth, for the discrepancy rule and the regulariser weight."""
    if kind == "poisson":
        assert dose is not None
        return 1.0 / (2.0 * dose)
    return noise_var_sqrt


def estimate_sqrt_noise_variance(data: torch.Tensor) -> float:
    """Noise variance of sqrt(data), from the high-pass residual of each image (robust, MAD-based).

    d = x - mean of its 4 neighbours has variance 1.25 sigma^2 for white noise; smooth signal cancels.
    """
    s = data.clamp_min(0).sqrt()
    d = s[:, 1:-1, 1:-1] - 0.25 * (s[:, :-2, 1:-1] + s[:, 2:, 1:-1] + s[:, 1:-1, :-2] + s[:, 1:-1, 2:])
    d = d.reshape(d.shape[0], -1)
    mad = (d - d.median(dim=1, keepdim=True).values).abs().median(dim=1).values
    sigma = 1.4826 * mad / 1.25**0.5
    return float(sigma.square().mean())
