"""Uncertainty of the refined defocus and theta_c from the curvature of the likelihood at the optimum.

Fisher information F = J^T W J (Gauss-Newton), with J the derivatives of the model images with respect to
theta = (defocus_n, log theta_c, phase scale alpha, log intensity scale_n), by central differences:
- Poisson loss: W = dose / I (counts variance);
- sqrt-domain Gaussian: J of sqrt(I), W = 1 / sigma^2 with sigma^2 the mean squared residual at the
  optimum (so model error inflates the uncertainty instead of hiding).
The covariance is F^-1; its diagonal gives one-sigma errors marginalised over the phase scale and the
intensity scales (the directions the defocus trades off against) but conditional on the phase's shape.
"""

from __future__ import annotations

import math

import numpy as np
import torch


@torch.no_grad()
def parameter_uncertainty(rec) -> dict:
    m = rec.model
    n = m.n
    free_df = [i for i in range(n) if rec.cfg.free.defocus and bool(m.defocus_free[i])]
    want_theta = rec.cfg.free.theta_c
    out = {"defocus_m": np.full(n, np.nan), "theta_c_rad": float("nan")}
    if not free_df and not want_theta:
        return out

    df0 = m.defocus().detach().clone()
    theta0 = m.theta_c().detach().clone()
    a = m.astig()
    phase0 = m.phase().detach()
    mean_phase = phase0.mean()
    amp = m.amplitude().detach()
    shifts = m.shifts().detach()
    scales0 = m.scales().detach()

    def render(df, log_theta, alpha, log_scale):
        t = m.im.transfer(df, theta_c_rad=torch.exp(log_theta), astig=(a[0], a[1]))
        spec = m.im.wave_spectrum(mean_phase + alpha * (phase0 - mean_phase), amp)
        img = m.im.propagate(spec, t, shifts) * torch.exp(log_scale)[:, None, None]
        return img.clamp_min(1e-6)

    base_args = [df0, torch.log(theta0), torch.ones((), dtype=df0.dtype, device=df0.device), torch.log(scales0)]
    columns = []  # (arg index, element index or None, step)
    for i in free_df:
        columns.append((0, i, max(1e-4 * abs(float(df0[i])), 1e-8)))
    if want_theta:
        columns.append((1, None, 1e-2))
    columns.append((2, None, 1e-3))
    columns.extend((3, i, 1e-3) for i in range(n))

    poisson = rec.loss_kind == "poisson"
    transform = (lambda x: x) if poisson else torch.sqrt
    img0 = render(*base_args)
    if poisson:
        weight = rec.dose / img0
    else:
        resid = (img0.sqrt() - rec.data.clamp_min(0).sqrt()).square().mean()
        weight = torch.full_like(img0, 1.0 / max(float(resid), 1e-12))
    if rec.mask is not None:
        weight = weight * rec.mask.to(weight.dtype)

    jac = []
    for arg, idx, h in columns:
        plus = [x.clone() for x in base_args]
        minus = [x.clone() for x in base_args]
        if idx is None:
            plus[arg] = plus[arg] + h
            minus[arg] = minus[arg] - h
        else:
            plus[arg][idx] += h
            minus[arg][idx] -= h
        jac.append(((transform(render(*plus)) - transform(render(*minus))) / (2 * h)).double().reshape(-1))
    j = torch.stack(jac, dim=1)
    w = weight.double().reshape(-1, 1)
    fisher = (j * w).T @ j
    try:
        cov = torch.linalg.inv(fisher)
    except RuntimeError:
        cov = torch.linalg.pinv(fisher)
    var = cov.diagonal().clamp_min(0).cpu().numpy()
    for k, i in enumerate(free_df):
        out["defocus_m"][i] = math.sqrt(var[k])
    if want_theta:
        out["theta_c_rad"] = float(theta0) * math.sqrt(var[len(free_df)])
    return out
