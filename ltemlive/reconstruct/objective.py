"""The objective the AD reconstructor minimises: data misfit + regulariser, with the weight set by the noise.

- data misfit: Poisson deviance when the dose is known, else a square-root-domain Gaussian (loss.py);
- regulariser: smoothed second-order TV (curvature; ramps cost nothing), weight
  `reg_factor * 2 sigma^2 / (N * CURVATURE_SCALE)` with sigma^2 the variance of sqrt(data), floored at the
  level of MIN_DOSE electrons/px; it starts REG_START x larger and halves each block down to that value
  (continuation keeps the early fit out of local minima of strong phase gradients);
- likelihood scale: the factor from the mean per-pixel loss to a negative log-likelihood, and the
  model-error inflation `misfit / expected misfit` (>= 1) that turns it into an honest one: a fit whose
  residuals exceed the noise has less evidence for any parameter than the noise level alone suggests.
"""

from __future__ import annotations

import torch

from ltemlive.reconstruct.config import ReconstructionConfig
from ltemlive.reconstruct.fused import FusedDataLoss
from ltemlive.reconstruct.loss import (
    REGULARIZERS,
    estimate_sqrt_noise_variance,
    expected_misfit,
    poisson_loss,
    sqrt_gaussian_loss,
)

# Prior scale of the phase curvature (rad / px^2) in the MAP reading of the regulariser weight. Measured on the
# simulator's specimens at full size (their truths' tv2: 0.0004 to 0.025). Re-estimating it from the fit (empirical
# Bayes) was measured and not kept: docs/reconstruction.md, session 14.
CURVATURE_SCALE = 0.02
MIN_DOSE = 2000.0
REG_START = 8.0


class Objective:
    def __init__(self, data: torch.Tensor, dose: float | None, cfg: ReconstructionConfig, *, mask=None, warm=False):
        self.data = data
        self.mask = mask
        self.dose = dose
        kind = cfg.loss
        if kind == "auto":
            kind = "poisson" if dose is not None else "sqrt_gaussian"
        if kind == "poisson" and dose is None:
            raise ValueError("loss='poisson' needs the dose (dose_e_per_px) of the series")
        self.kind = kind
        sqrt_var = 1.0 / (4 * dose) if dose else estimate_sqrt_noise_variance(data)
        self.noise_level = expected_misfit(kind, dose, sqrt_var)
        # The same from the images' own high-pass scatter (the loss is ~2 (sqrt(mu) - sqrt(y))^2 per pixel for the
        # Poisson deviance): lower than the dose's when a camera's blur smooths its noise, higher where fine signal
        # remains in the high-pass. The smaller of the two is the floor the discrepancy rule uses.
        measured = sqrt_var if not dose else estimate_sqrt_noise_variance(data)
        self._floor = min(self.noise_level, (2.0 if kind == "poisson" else 1.0) * measured)
        # Variance-stabilised noise variance, the same for either loss; floored because clean data still need
        # some curvature penalty to keep the fit out of the local minima of strong phase gradients.
        self.sqrt_var = max(sqrt_var, 1.0 / (4 * MIN_DOSE))
        # The prior's curvature scale (rad / px^2), which the phase's sigma map must share.
        self.curvature_scale = CURVATURE_SCALE
        if cfg.reg_weight == "auto":
            target = cfg.reg_factor * 2 * self.sqrt_var / (data.shape[0] * self.curvature_scale)
        else:
            target = float(cfg.reg_weight)
        self.reg_target = target
        # A warm start is already near the optimum: no continuation.
        self.reg_weight = target * (1.0 if warm else REG_START)
        self.regularizer = REGULARIZERS.get(cfg.regularization)
        # The data term of a phase iteration (optics frozen) by fused.FusedDataLoss instead of autograd through
        # model(): the same value to rounding, a hand-written backward. Built on first use (it needs the crop).
        self.use_fused = True
        self._fused: FusedDataLoss | None = None

    # -- terms ----------------------------------------------------------------------------------------
    def data_loss(self, images: torch.Tensor) -> torch.Tensor:
        if self.kind == "poisson":
            return poisson_loss(images, self.data, self.dose, self.mask)
        return sqrt_gaussian_loss(images, self.data, self.mask)

    def model_data_loss(self, model) -> torch.Tensor:
        """data_loss(model()), by the fused path while the model's optics are frozen."""
        inputs = model.fused_inputs() if self.use_fused and hasattr(model, "fused_inputs") else None
        if inputs is None:
            return self.data_loss(model())
        top, left = inputs.pop("top"), inputs.pop("left")
        prep = self._fused
        if prep is None or (prep.top, prep.left) != (top, left) or prep.target.dtype != inputs["phase"].dtype:
            prep = self._fused = FusedDataLoss(
                self.data, top=top, left=left, kind=self.kind, dose=self.dose, mask=self.mask
            )
        return prep(**inputs)

    def reg_loss(self, phase: torch.Tensor) -> torch.Tensor:
        if self.regularizer is None or self.reg_weight <= 0:
            return phase.new_zeros(())
        return self.regularizer(phase)

    def __call__(self, model) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        d = self.model_data_loss(model)
        r = self.reg_loss(model.regularised_phase())
        return d + self.reg_weight * r, d, r

    # -- continuation ---------------------------------------------------------------------------------
    @property
    def relaxed(self) -> bool:
        return self.reg_weight <= self.reg_target

    def relax(self) -> None:
        self.reg_weight = max(self.reg_target, 0.5 * self.reg_weight)

    # -- likelihood scale -----------------------------------------------------------------------------
    def n_pixels(self) -> int:
        return self.data.numel() if self.mask is None else int(self.mask.sum()) * self.data.shape[0]

    def nll_per_loss(self) -> float:
        """Factor from the mean per-pixel data loss to the total negative log-likelihood."""
        if self.kind == "poisson":
            return float(self.dose) * self.n_pixels()
        return self.n_pixels() / (2.0 * self.sqrt_var)

    def noise_floor(self) -> float:
        """The mean per-pixel data loss the noise alone leaves at the truth (the discrepancy rule's level: a fit
        below it is fitting noise, so misfit removed below it is no evidence for an instrument parameter)."""
        return self._floor

    def inflation(self, data_loss: float) -> float:
        """Model-error inflation >= 1: the misfit over what the noise alone would leave."""
        floor = self.noise_level if self.kind == "poisson" else self.sqrt_var
        return max(1.0, float(data_loss) / max(floor, 1e-30))

    def evidence(self, data_loss: float, inflation: float) -> float:
        """The data loss as an (inflated) negative log-likelihood: differences of it are evidence."""
        return float(data_loss) * self.nll_per_loss() / inflation
