"""Data misfit, regularisers and the noise level that sets the regularisation weight.

All terms are means per pixel, so weights do not depend on the image size.

Data misfit (data normalised so that an unscattered beam is 1):
- Poisson: (mu - y log mu) - (y - y log y) per pixel, divided by the dose (half the Poisson deviance per
  electron of dose); at the truth it averages about 1 / (2 D). Computed as (mu - y) - y log(mu / y): the
  defining form cancels terms of order D log D down to about 1/2 per pixel, which in float32 left the mean
  wrong by 1e-6 to 3e-5 relative on 256^2 series at 200-3200 e/px (against float64 from the same images), as
  large as an L-BFGS step changes it near convergence, so line searches and the stopping rule saw noise. The
  computed form is wrong by about 1e-7 (measured: docs/reconstruction.md, session 10). Its gradient,
  1 - y / mu, is the same.
- sqrt_gaussian: (sqrt(model) - sqrt(data))^2; variance-stabilised, about 1 / (4 D) at the truth for
  Poisson data of D electrons per pixel. Used when the dose is unknown.
"""

from __future__ import annotations

import torch

_EPS = 1e-6


def poisson_loss(model: torch.Tensor, data: torch.Tensor, dose: float, mask: torch.Tensor | None = None):
    mu = model.clamp_min(_EPS) * dose
    y = data * dose
    # The deviance (0 for a perfect fit of noise-free data) without its cancelling terms; where y = 0 the
    # log's factor is 0 and its argument is set to mu (any finite value would do).
    ratio = mu / torch.where(y == 0, 1.0, y)
    per_px = (mu - y) - y * torch.log(ratio)
    return _mean(per_px, mask) / dose


def sqrt_gaussian_loss(model: torch.Tensor, data: torch.Tensor, mask: torch.Tensor | None = None):
    r = model.clamp_min(_EPS).sqrt() - data.clamp_min(0).sqrt()
    return _mean(r.square(), mask)


def _mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return x.mean()
    m = mask.to(x.dtype)
    return (x * m).sum() / (m.sum() * x.shape[0])


# Weight of the curvature's trace-free part against its trace (the Laplacian) in tv2. The images see the Laplacian
# (TIE contrast, lambda df laplacian(phi) / 2 pi); the trace-free part (phi_xx - phi_yy, 2 phi_xy) is what a harmonic
# phase has -- a stray field in vacuum, the part of a large smooth magnetic phase the images barely see. Charged in
# full (the Hessian's Frobenius norm), the prior flattened the unseen stray field of the test-size needle (AD 2.62 rad
# vs TIE 2.07) and held back the dome's and the vortices' smooth phase. 0.25 from a sweep over 0-1 on the seven cases
# (docs/reconstruction.md, session 18). On a periodic grid the two parts' squares integrate to the same (Parseval), so
# the weight changes the prior only through its L1 form and at the field's edges.
TRACE_FREE_WEIGHT = 0.25
# root^2 of a plane wave of unit curvature (the Gaussian reading of the prior in uncertainty.phase_sigma_map):
# L^2 / 2 + w |T|^2 / 2 with |L| = |T| = 1.
PLANE_WAVE_NORM = (1.0 + TRACE_FREE_WEIGHT) / 2
_R2 = 0.5**0.5  # 1 / sqrt 2: L and D enter tv2 as L / sqrt 2, D / sqrt 2


def tv2(phase: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Smoothed second-order total variation: mean sqrt(L^2 / 2 + w (D^2 / 2 + 2 phi_xy^2) + eps^2) - eps, with
    L = phi_xx + phi_yy (the Laplacian), D = phi_xx - phi_yy and w = TRACE_FREE_WEIGHT (w = 1: the Hessian's
    Frobenius norm, sqrt(phi_xx^2 + phi_yy^2 + 2 phi_xy^2)).

    Curvature, not slope, is penalised: linear phase ramps (uniform in-plane induction) cost nothing,
    which first-order TV gets wrong on large smooth magnetic phases. Units: rad / px^2. The mean runs over the
    interior pixels (the border has no centred second difference); phi_xy is the forward mixed difference.
    """
    return _TV2.apply(phase, float(eps))


def _tv2_terms(phase: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L / sqrt 2, D / sqrt 2 (from the centred phi_xx, phi_yy) and phi_xy (forward) on the interior grid."""
    c = phase[1:-1, 1:-1]
    pxx = phase[1:-1, 2:] + phase[1:-1, :-2] - 2 * c
    pyy = phase[2:, 1:-1] + phase[:-2, 1:-1] - 2 * c
    pxy = c - phase[1:-1, :-2] - phase[:-2, 1:-1] + phase[:-2, :-2]
    return (pxx + pyy).mul_(_R2), (pxx - pyy).mul_(_R2), pxy


class _TV2(torch.autograd.Function):
    """tv2 with a hand-written backward: autograd through the slices allocated and zero-filled a full-grid
    buffer per slice and copied into it (measured: a tenth of a whole phase evaluation at 1152^2)."""

    @staticmethod
    def forward(ctx, phase: torch.Tensor, eps: float) -> torch.Tensor:
        lap, dif, pxy = _tv2_terms(phase)
        w = TRACE_FREE_WEIGHT
        free = dif.square().addcmul_(pxy, pxy, value=2.0).mul_(w)
        root = lap.square().add_(free).add_(eps * eps).sqrt_()
        ctx.save_for_backward(lap, dif, pxy, root)
        ctx.grid = phase.shape
        return root.mean() - eps

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        lap, dif, pxy, root = ctx.saved_tensors
        w = TRACE_FREE_WEIGHT
        g = root.reciprocal().mul_(grad_out / root.numel())  # d mean(root) / d s_k = 1 / (2 root N)
        # d root / d phi_xx = (L / sqrt 2 + w D / sqrt 2) / (sqrt 2 root), d / d phi_yy the same with -w D,
        # d / d phi_xy = 2 w phi_xy / root (the saved tensors stay intact for a repeated backward).
        lg, dg = lap * g, (dif * g).mul_(w)
        a, b, c = (lg + dg).mul_(_R2), (lg - dg).mul_(_R2), (pxy * g).mul_(2.0 * w)
        out = a.new_zeros(ctx.grid)
        centre = out[1:-1, 1:-1]
        centre.sub_(a, alpha=2.0).sub_(b, alpha=2.0).add_(c)
        out[1:-1, 2:].add_(a)
        out[1:-1, :-2].add_(a).sub_(c)
        out[2:, 1:-1].add_(b)
        out[:-2, 1:-1].add_(b).sub_(c)
        out[:-2, :-2].add_(c)
        return out, None


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
