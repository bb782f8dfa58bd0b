"""When to stop: the phase and the parameters have stopped changing by more than their uncertainty.

After each block (once the regulariser has relaxed to its target) the changes since the previous block
are compared with the one-sigma values:
- phase: RMS change over the field of view (mean removed) against the RMS of the phase-sigma map;
- defocus scale: against the sigma of the last data-only scale fit (when the defocus is refined);
- theta_c: change of ln theta_c against its sigma (Fisher, computed once per settled stretch).
The remaining movement is estimated from the last change c and the ratio rho of successive changes as a
geometric tail, c rho / (1 - rho) (rho capped at RHO_MAX: a slow run has a long tail). The run has converged
when the change and its tail stayed below STOP_FRACTION of the sigma for CONSECUTIVE blocks. The iteration cap is the
exception; the result says which rule ended the run.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ltemlive.reconstruct.uncertainty import parameter_uncertainty, phase_sigma_map

STOP_FRACTION = 0.1
CONSECUTIVE = 2
RHO_MAX = 0.95


class StoppingRule:
    def __init__(self, rec):
        self.rec = rec
        self.reason = "iteration cap"
        self.reset()

    def reset(self) -> None:
        self._prev: dict | None = None
        self._last_changes: dict = {}
        self._count = 0
        self._sigma_log_theta: float | None = None

    @torch.no_grad()
    def _state(self) -> dict:
        m = self.rec.model
        phase = m.phase_fov().double()
        nom = torch.as_tensor(self.rec.series.defocus_m, dtype=torch.float64)
        df = m.defocus().double().cpu()
        free = nom != 0
        return {
            "phase": phase - phase.mean(),
            "g": float((df[free] / nom[free]).mean() - 1) if bool(free.any()) else 0.0,
            "log_theta": math.log(float(m.theta_c())),
        }

    @torch.no_grad()
    def update(self) -> bool:
        rec, cfg = self.rec, self.rec.cfg
        now = self._state()
        prev, self._prev = self._prev, now
        if prev is None:
            return False
        inflation = rec.objective.inflation(float(rec.objective.data_loss(rec.model())))
        ratios = {}
        if cfg.free.phase:
            sigma = phase_sigma_map(
                rec.model, sqrt_var=rec.objective.sqrt_var, inflation=inflation,
                curvature_scale=rec.objective.curvature_scale,
            )
            sigma_rms = float(np.sqrt(np.mean(sigma**2)))
            change = float((now["phase"] - prev["phase"]).square().mean().sqrt())
            ratios["phase"] = change / max(sigma_rms, 1e-12)
        if cfg.free.defocus and math.isfinite(rec.scale_sigma) and rec.scale_sigma > 0:
            ratios["defocus"] = abs(now["g"] - prev["g"]) / rec.scale_sigma
        if cfg.free.theta_c:
            if self._sigma_log_theta is None:
                sig = parameter_uncertainty(
                    rec.model, data=rec.data, kind=rec.objective.kind, dose=rec.objective.dose,
                    mask=rec.objective.mask, free_defocus=[], theta_c=True, inflation=inflation,
                )
                theta = math.exp(now["log_theta"])
                s = sig["theta_c_rad"] / theta if math.isfinite(sig["theta_c_rad"]) else math.inf
                self._sigma_log_theta = s if s > 0 else math.inf
            ratios["theta_c"] = abs(now["log_theta"] - prev["log_theta"]) / self._sigma_log_theta
        # Tail of a geometric sequence of changes: what is still to come at the present rate.
        for k, r in list(ratios.items()):
            before = self._last_changes.get(k)
            rho = RHO_MAX if before is None or before <= 0 else min(r / before, RHO_MAX)
            self._last_changes[k] = r
            ratios[k] = r + r * max(rho, 0.0) / (1 - max(rho, 0.0))
        self.last = ratios
        settled = all(r < STOP_FRACTION for r in ratios.values())
        self._count = self._count + 1 if settled else 0
        return settled

    def converged(self) -> bool:
        if self._count < CONSECUTIVE:
            return False
        worst = ", ".join(f"{k} {v:.2f}" for k, v in self.last.items())
        self.reason = f"converged (changes per block below {STOP_FRACTION} sigma: {worst})"
        return True
