"""The AD reconstructor: fit the microscope to a through-focus series. The outer loop lives here; each job
has its own module:

- start.py: registration, amplitude, the TIE start (candidates; the data pick), the ramp convention;
- objective.py: data misfit + regulariser, the noise level, the likelihood scale and its inflation;
- lbfgs.py: persistent L-BFGS per parameter group, with rollback of bad steps;
- calibration.py: the common defocus scale from data-only fits with a prior, and the significance test;
- stopping.py: when the phase and the parameters have stopped changing by more than their uncertainty;
- uncertainty.py: one-sigma values of defocus, theta_c and the phase map;
- vortices.py: removal of the phase vortices L-BFGS can settle into.

Schedule (`Reconstructor.steps`):
1. start (best candidate), a warm-up phase block, registration to the model's predictions;
2. blocks alternating the optics (theta_c, shifts, scales, per-image defocus if asked; the phase held) and
   the phase (the optics cached); vortices removed after a phase block; the regulariser relaxes to its
   target; the common defocus scale fitted by data alone when the refinement settles (and at the latest
   at fixed fractions of the budget);
3. stop when the stopping rule says so, or at the iteration cap (exactly max_iter phase iterations);
4. checks that the data support what moved (defocus, theta_c, each against its nominal value after the
   same re-fit block of the phase: else back to nominal), that the fit is at
   least as consistent with the data as its start and keeps its large-scale shape unless the data say
   otherwise (else the better is returned, with a warning).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
from scipy import ndimage

from ltemlive.optics.forward import ImageModel
from ltemlive.reconstruct import prepare
from ltemlive.reconstruct.calibration import EVIDENCE_PER_PARAMETER, fit_global_scale, profile_sigma, significant
from ltemlive.reconstruct.config import ReconstructionConfig
from ltemlive.reconstruct.lbfgs import GroupOptimiser
from ltemlive.reconstruct.objective import Objective
from ltemlive.reconstruct.result import ReconstructionResult, Snapshot
from ltemlive.reconstruct.start import StartBuilder, register_to_model
from ltemlive.reconstruct.stopping import StoppingRule
from ltemlive.reconstruct.uncertainty import debiased_theta_c, parameter_uncertainty, phase_sigma_map
from ltemlive.reconstruct.vortices import plaquettes_inside, remove_vortices, residue_count
from ltemlive.series import Series

__all__ = ["ReconstructionResult", "Reconstructor", "Snapshot", "reconstruct"]

SCALE_FIT_AT = (0.3, 0.45, 0.6, 0.75)  # latest points (fractions of max_iter) for the scale fits
SCALE_RANGES = (0.05, 0.02, 0.01)  # after the first fit at cfg.defocus_scan_range
LARGE_SCALE_MIN_CORRELATION = 0.9
# Phase re-fits per final check: one at the refined values and one at the nominal ones, from the same state. A
# re-fit of the nominal alone gave it a block the refined values did not get: at the iteration cap, where the phase
# is still converging, that block alone was worth more evidence than a true 10 % defocus error (weak vortex disc,
# 120 iterations: "gain -123", nominal kept; the 10 % found at 150).
CHECK_BLOCKS = 2


class Reconstructor:
    """One reconstruction of one series. Call `run()`, or iterate `steps()` to watch it progress."""

    def __init__(
        self,
        series: Series,
        config: ReconstructionConfig | None = None,
        *,
        warm_start: ReconstructionResult | None = None,
    ):
        self.series = series
        self.cfg = cfg = config or ReconstructionConfig()
        if series.n_images < 2 and cfg.free.phase:
            raise ValueError("a phase reconstruction needs at least two images at different defocus")
        if len(set(np.round(series.defocus_m, 12))) < 2:
            raise ValueError(f"defocus_m must contain at least two different values, got {series.defocus_m.tolist()}")
        self.dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
        self.device = torch.device(cfg.device)
        self.t0 = time.perf_counter()

        nominal = series.defocus_m
        data, self.divisor = prepare.normalise(series)
        data, self.hot_pixels = prepare.remove_hot_pixels(data)
        self.reference = prepare.reference_index(nominal)
        self.data = self.tensor(data)
        self.warm = warm_start is not None
        self.im = ImageModel(
            series.shape,
            series.pixel_size_m,
            series.microscope,
            max_abs_defocus_m=float(np.abs(nominal).max()) * 1.3,
            padding=cfg.padding,
            device=self.device,
            dtype=self.dtype,
            coherence=cfg.coherence,
            detector=cfg.detector,
        )
        mask = self.im.valid_mask if cfg.padding == "zero" else None
        self.objective = Objective(self.data, series.dose_e_per_px, cfg, mask=mask, warm=self.warm)
        builder = StartBuilder(self)
        if warm_start is not None:
            self.model, self.tie_phase = builder.warm(data, warm_start)
            self.start_candidates: list[dict] = []
        else:
            self.model, self.tie_phase, self.start_candidates = builder.fresh(data)

        self.history: list[dict] = []
        self.scans: list[dict] = []
        self.vortex_removals: list[dict] = []
        self.reregistrations = 0
        self.warnings: list[str] = []
        self.iterations = 0
        self.stopped_because = "not run"
        self.scale_sigma = math.inf
        self.defocus_profile_sigma = math.nan
        self.defocus_refined = False
        self.theta_c_refined = False
        self._start_state: dict | None = None
        self._optimisers: list[GroupOptimiser] = []
        self._phase_opt: GroupOptimiser | None = None
        self._check_block = self._reserve = 0

    def tensor(self, a) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a), dtype=self.dtype, device=self.device)

    # Kept for callers that read them (CLI, service): the objective's settings.
    @property
    def loss_kind(self) -> str:
        return self.objective.kind

    @property
    def reg_weight(self) -> float:
        return self.objective.reg_weight

    @property
    def noise_level(self) -> float:
        return self.objective.noise_level

    # -- objective with the priors on the instrument parameters ---------------------------------------
    def _theta_prior(self) -> torch.Tensor:
        """Gaussian prior on ln(theta_c / nominal), in the objective's units (per-pixel loss, inflated)."""
        m = self.model
        theta_nom = self.series.microscope.theta_c_rad
        log_ratio = torch.log(m.theta_c() / theta_nom) if theta_nom > 0 else m.t * 0
        nll = 0.5 * (log_ratio / self.cfg.theta_c_prior) ** 2
        return nll * self._inflation / self.objective.nll_per_loss()

    def _total(self) -> torch.Tensor:
        loss, _, _ = self.objective(self.model)
        if self.cfg.free.theta_c and self.model.t.requires_grad:
            loss = loss + self._theta_prior()
        return loss

    # -- parameter groups -----------------------------------------------------------------------------
    def phase_params(self) -> list[torch.nn.Parameter]:
        m, f = self.model, self.cfg.free
        return [p for p, on in ((m.c, f.phase), (m.ramp, f.phase), (m.a, f.amplitude)) if on]

    def optics_params(self) -> list[torch.nn.Parameter]:
        m, f = self.model, self.cfg.free
        # scale: the common scale is set by data-only fits (calibration.py); per_image: the per-image differences
        # are refined by gradient on top, once the first scale fit has been made.
        per_image = f.defocus and self.cfg.defocus_model == "per_image" and self._defocus_on
        # theta_c only once the phase has settled at the nominal value (the first scale fit, or 30 % of the budget):
        # freed from the start it compensated early phase errors and ran to its bound (dome island: 0.14x).
        theta = f.theta_c and self._theta_on
        pairs = ((m.r, per_image), (m.t, theta), (m.astig_uv, f.astigmatism), (m.s, f.shifts), (m.k, f.scales))
        return [p for p, on in pairs if on]

    # -- records --------------------------------------------------------------------------------------
    def _record(self, stage: str) -> Snapshot:
        with torch.no_grad():
            loss, d, r = self.objective(self.model)
        snap = self.snapshot(stage, float(loss), float(d), float(r))
        self.history.append(
            {
                "iteration": self.iterations,
                "stage": stage,
                "loss": snap.loss,
                "data_loss": snap.data_loss,
                "reg_loss": snap.reg_loss,
                "elapsed_s": snap.elapsed_s,
            }
        )
        return snap

    def snapshot(self, stage: str, loss: float, d: float, r: float) -> Snapshot:
        m = self.model
        with torch.no_grad():
            a = m.astig()
            return Snapshot(
                iteration=self.iterations,
                stage=stage,
                loss=loss,
                data_loss=d,
                reg_loss=r,
                defocus_m=m.defocus().double().cpu().numpy(),
                theta_c_rad=float(m.theta_c()),
                astig_m=(float(a[0]), float(a[1])),
                shifts_px=m.shifts().cpu().numpy(),
                scales=m.scales().cpu().numpy(),
                elapsed_s=time.perf_counter() - self.t0,
            )

    @torch.no_grad()
    def _data_loss(self) -> float:
        return float(self.objective.data_loss(self.model()))

    @torch.no_grad()
    def _save_state(self) -> dict:
        m = self.model
        return {
            "phase": m.phase().detach().clone(),
            "base": m.defocus_base.detach().clone(),
            "params": {k: v.detach().clone() for k, v in m.named_parameters()},
        }

    @torch.no_grad()
    def _load_state(self, state: dict) -> None:
        m = self.model
        m.rebase_defocus(state["base"])
        for k, v in m.named_parameters():
            v.copy_(state["params"][k])
        m.set_phase(state["phase"])

    # -- the schedule ---------------------------------------------------------------------------------
    def steps(self) -> Iterator[Snapshot]:
        """Run the reconstruction, yielding a snapshot after each block of iterations."""
        cfg, m = self.cfg, self.model
        self._defocus_on = False
        self._theta_on = False
        self._inflation = 1.0
        yield self._record("start")
        self._start_state = self._save_state()
        self._start_loss = self._data_loss()
        all_params = list(m.parameters())
        phase_params = self.phase_params()
        if not phase_params and not self.optics_params():
            self.stopped_because = "nothing to refine"
            self._finish()
            return
        block = max(1, min(cfg.block_iter, cfg.max_iter))
        phase_opt = GroupOptimiser(phase_params, all_params, block) if phase_params else None
        self._optimisers = [phase_opt] if phase_opt else []
        optics_opt = None
        refine_defocus = cfg.free.defocus and phase_opt is not None
        scale_ranges = ([] if self.warm else [cfg.defocus_scan_range]) + list(SCALE_RANGES) if refine_defocus else []
        # Phase frozen: the per-image defocus (per_image model) is refined by gradient from the start.
        self._defocus_on = cfg.free.defocus and phase_opt is None
        stopping = StoppingRule(self)

        # Each final check re-fits the phase for one short block at the refined and at the nominal defocus / theta_c
        # (CHECK_BLOCKS blocks a check): reserved in the budget, so that max_iter is exact.
        n_checks = int(refine_defocus) + int(cfg.free.theta_c and phase_opt is not None)
        self._check_block = min(block, cfg.max_iter // (4 * CHECK_BLOCKS * max(n_checks, 1))) if n_checks else 0
        self._reserve = self._check_block * CHECK_BLOCKS * n_checks
        self._phase_opt = phase_opt

        def budget_left() -> int:
            return cfg.max_iter - self._reserve - self.iterations

        def phase_block() -> None:
            self._phase_iterations(min(block, budget_left()))
            if cfg.free.phase and self._remove_vortices():
                phase_opt.reset()

        def optics_block() -> None:
            nonlocal optics_opt
            params = self.optics_params()
            if not params:
                return
            if optics_opt is None or optics_opt.params != params:
                optics_opt = GroupOptimiser(params, all_params, cfg.optics_iter)
                self._optimisers.append(optics_opt)
            with torch.no_grad():
                loss = self._data_loss()
            self._inflation = self.objective.inflation(loss)
            below_noise = loss <= self.objective.noise_floor()
            t_before = m.t.detach().clone()
            taken = optics_opt.step(self._total)
            if below_noise and bool(m.t < t_before):
                # The discrepancy principle (ADR 0006): with the fit below the noise's misfit, theta_c may not fall.
                # Less blur lets the phase fit the noise, so such a gain is no evidence. More blur takes capacity away
                # and stays allowed (a camera pixel's blur, unmodelled by the point detector, goes there).
                with torch.no_grad():
                    m.t.copy_(t_before)
                optics_opt.reset()
            if phase_opt is None:
                self.iterations += taken

        max_shift = 2.0 if self.warm else 16.0  # a warm start knows its shifts to a pixel
        if phase_opt is not None:
            phase_block()
            yield self._record("warm-up")
            if cfg.free.shifts:
                register_to_model(m, self.data, self.series.defocus_m, max_shift)
                phase_opt.reset()

        retries = 0
        while budget_left() > 0:
            optics_block()
            if phase_opt is not None and budget_left() > 0:
                phase_block()
            snap = self._record("refine")
            yield snap
            if budget_left() <= 0:
                break
            if not self.objective.relaxed:
                self.objective.relax()
                self._reregister(max_shift)
                phase_opt and phase_opt.reset()
                stopping.reset()
                continue
            settled = stopping.update()
            late = self.iterations >= SCALE_FIT_AT[0] * cfg.max_iter
            if not self._theta_on and (settled or late or not refine_defocus):
                self._theta_on = True
                if settled:
                    stopping.reset()
                    continue
            due = bool(scale_ranges) and self.iterations >= SCALE_FIT_AT[-len(scale_ranges)] * cfg.max_iter
            if refine_defocus and scale_ranges and (settled or due):
                fit = fit_global_scale(
                    m, self.objective, scale_ranges[0], nominal_m=self.series.defocus_m, prior=cfg.defocus_prior
                )
                fit["iteration"] = self.iterations
                self.scans.append(fit)
                self.scale_sigma = fit["sigma_g"]
                retries = retries + 1 if not fit["inside"] else 0
                if fit["inside"] or retries > 2:
                    scale_ranges.pop(0)
                    retries = 0
                    # A fit that no longer moves the scale (within a fifth of its sigma) ends the scale fits.
                    if abs(fit["g"]) < 0.2 * fit["sigma_g"] and math.isfinite(fit["sigma_g"]):
                        scale_ranges.clear()
                self._defocus_on = True
                self._theta_on = True
                self._reregister(max_shift)
                phase_opt.reset()
                stopping.reset()
                yield self._record("defocus scale")
                continue
            if stopping.converged():
                self.stopped_because = stopping.reason
                break
        if self.stopped_because == "not run":
            self.stopped_because = "iteration cap"
            needed = self._check_block * CHECK_BLOCKS * (int(self._defocus_moved()) + int(self._theta_moved()))
            if phase_opt is not None and cfg.max_iter - needed - self.iterations > 0:
                self._reserve = needed  # checks that will not run leave their budget to the phase
                phase_block()
        self._finish()
        yield self._record("checked")

    @torch.no_grad()
    def _reregister(self, max_shift_px: float) -> bool:
        """Register the images again to the fit's predictions (register_to_model also rebuilds the starting
        amplitude from the images so aligned), kept only if the data loss falls. Called when the regulariser relaxes
        and after each scale fit. The shifts, the phase's ramp and the phase are coupled: once the phase has followed
        a wrong start, moving them back together is a slow mode for the gradient (the stopping rule saw nothing
        move), while a cross-correlation with a better prediction jumps there (paper-like case, seed 23: 0.15 px
        left on the shifts and a 1 rad ramp across the field at the cap, accuracy 0.951; registered again, 0.989)."""
        m = self.model
        if not self.cfg.free.shifts or self._phase_opt is None:
            return False
        before, s0, a0 = self._data_loss(), m.s.detach().clone(), m.amplitude0.clone()
        register_to_model(m, self.data, self.series.defocus_m, max_shift_px)
        if self._data_loss() < before:
            self.reregistrations += 1
            for opt in self._optimisers:
                opt.reset()  # their curvature pairs describe the old shifts
            return True
        m.s.copy_(s0)
        m.amplitude0.copy_(a0)
        return False

    @torch.no_grad()
    def _remove_vortices(self) -> bool:
        phase = self.model.phase()
        im = self.model.im
        region = None
        if self.model.bridged:
            # A margin that bridges opposite edges (model.periodic_margin): where the phase still wraps at the grid's
            # periodic border, in the margin, the wrap's cores are not vortices; only the field of view's count.
            region = plaquettes_inside(tuple(phase.shape), im.top, im.left, im.shape)
        cores = residue_count(phase, region)
        if cores == 0:
            return False
        self.model.set_phase(remove_vortices(phase, region))
        self.vortex_removals.append({"iteration": self.iterations, "residues": cores})
        return True

    # -- final checks ---------------------------------------------------------------------------------
    @torch.no_grad()
    def _defocus_moved(self) -> bool:
        nom = self.tensor(self.series.defocus_m)
        return self.cfg.free.defocus and bool((self.model.defocus() - nom).abs().max() > 1e-12 * float(nom.abs().max()))

    def _theta_moved(self) -> bool:
        nom = self.series.microscope.theta_c_rad
        return self.cfg.free.theta_c and nom > 0 and abs(float(self.model.theta_c()) / nom - 1) > 1e-6

    def _refit_state(self) -> tuple[dict, float]:
        """The state after one check block of phase iterations from the current one, and its data loss."""
        self._refit_phase()
        return self._save_state(), self._data_loss()

    def _against_nominal(
        self, to_nominal: Callable[[dict], None], to_refined: Callable[[dict], None] | None = None, *,
        above_noise: bool = False,
    ) -> tuple[float, dict, dict]:
        """Evidence gain of the refined values over the nominal ones, each after the same re-fit block of the
        phase from the current state (the phase co-adapted to the refined values: the nominal ones get the same
        chance); `to_nominal(before)` moves the model from the state `before` to the nominal values, and
        `to_refined(before)`, if given, prepares the refined side the same way. Returns (gain, refined state,
        nominal state); the inflation is set from the better fit of the two. `above_noise`: only misfit above what
        the noise alone leaves counts (the discrepancy principle; see the theta_c check)."""
        before = self._save_state()
        if to_refined is not None:
            to_refined(before)
        refined, refined_loss = self._refit_state()
        self._load_state(before)
        to_nominal(before)
        nominal_state, nominal_loss = self._refit_state()
        obj = self.objective
        self._inflation = inflation = obj.inflation(min(refined_loss, nominal_loss))
        if above_noise:
            floor = obj.noise_floor()
            refined_loss, nominal_loss = max(refined_loss, floor), max(nominal_loss, floor)
        return obj.evidence(nominal_loss, inflation) - obj.evidence(refined_loss, inflation), refined, nominal_state

    def _refit_phase(self) -> bool:
        """One check block of phase iterations (from the reserve); False when none is left."""
        n = min(self._check_block, self.cfg.max_iter - self.iterations)
        if self._phase_opt is None or n <= 0:
            return False
        self._phase_opt.reset()
        with torch.enable_grad():
            self._phase_iterations(n)
        return True

    def _phase_iterations(self, n: int) -> None:
        """n phase iterations with the optics cached."""
        self._phase_opt.set_block(n)
        self.model.freeze_optics(True)
        self.iterations += self._phase_opt.step(self._total)
        self.model.freeze_optics(False)

    @torch.no_grad()
    def _finish(self) -> None:
        """What moved must be supported by the data; the fit must not be worse than its start."""
        m, cfg, obj = self.model, self.cfg, self.objective
        for p in m.parameters():
            p.requires_grad_(False)
        nominal = self.series.defocus_m

        # Defocus: the refined values against the nominal ones, the phase rescaled to keep df * phi (the best of a
        # few phase scales, as in the scale fit).
        if self._defocus_moved():
            nom = self.tensor(nominal)
            free = nom != 0
            ratio = float((m.defocus()[free] / nom[free]).mean()) if bool(free.any()) else 1.0

            def best_phase_scale(phase: torch.Tensor) -> None:
                # Both sides of the check get the best of the same few phase scales before their re-fit: the
                # phase's scale is the nuisance that trades against the defocus scale (calibration.py).
                best = None
                for u in np.linspace(-0.03, 0.03, 7):
                    m.set_phase(phase * (1 + u))
                    d = self._data_loss()
                    if best is None or d < best[0]:
                        best = (d, u)
                m.set_phase(phase * (1 + best[1]))

            def to_nominal(before: dict) -> None:
                m.rebase_defocus(nom)  # per-image terms too
                best_phase_scale(before["phase"] * ratio)

            # Not the discrepancy rule here: the nominal side's phase, rescaled and re-fitted, also fits below the
            # noise's misfit when the nominal is wrong (the vortex array, 6 % low: kept at -6 %, RMSE 0.20 -> 0.52).
            gain, refined, nominal_state = self._against_nominal(
                to_nominal, lambda before: best_phase_scale(before["phase"])
            )
            n_free = 1 if cfg.defocus_model == "scale" else int(free.sum())
            if significant(gain, n_free):
                self._load_state(refined)
                self.defocus_refined = True
                # The common scale's sigma: the wider of the scale fit's (the phase's shape held) and the profile's
                # through the refined and the nominal value (the phase re-fitted at both).
                self.defocus_profile_sigma = profile_sigma(ratio - 1.0, gain)
                if cfg.defocus_model == "scale":
                    self.scale_sigma = max(self.scale_sigma, self.defocus_profile_sigma)
            else:
                self._load_state(nominal_state)
                # The run's own estimate and the nominal value both stay within two sigma of what is reported: a
                # nominal kept is not a measurement of the nominal (a capped run's tiny scale-fit sigma passed for one,
                # and the live feedback accepted "scale 1.000 +- 0.4 %" from a series whose truth was 1.10).
                self.defocus_profile_sigma = abs(ratio - 1.0) / 2
                if cfg.defocus_model == "scale":
                    self.scale_sigma = max(self.scale_sigma, self.defocus_profile_sigma)
                self.warnings.append(
                    f"defocus: the data do not support moving it from the nominal values (evidence gain {gain:.1f}, "
                    f"needed {EVIDENCE_PER_PARAMETER * n_free:.1f}); nominal kept"
                )
        # theta_c against its nominal value.
        theta_nom = self.series.microscope.theta_c_rad
        if self._theta_moved():
            # Less source blur lets more of the phase's fine detail reach the images, so a lower theta_c also lets the
            # phase fit the noise (a higher one does not: it is checked as before). On the full-size dome the nominal
            # (true) theta_c already left 0.89x the noise's misfit, and theta_c 0.04x "won" by 14254 units at 0.73x
            # (phase RMSE 0.20 rad; 0.079 with the rule, TIE 0.088). A fit below the noise level is not evidence; only
            # what it gains above that counts (ADR 0006).
            lowered = float(m.theta_c()) < theta_nom
            gain, refined, nominal_state = self._against_nominal(
                lambda _: m.set_theta_c(theta_nom), above_noise=lowered
            )
            if significant(gain):
                self._load_state(refined)
                self.theta_c_refined = True
            else:
                self._load_state(nominal_state)
                self.warnings.append(
                    f"theta_c: the data do not support moving it from {theta_nom:.3g} rad (evidence gain {gain:.1f}); "
                    "nominal kept"
                )
        final_loss = self._data_loss()
        inflation = obj.inflation(final_loss)
        self._inflation = inflation
        e_final = obj.evidence(final_loss, inflation)

        # Never worse than the start; keep its large-scale shape unless the data say otherwise.
        start = self._start_state
        if start is None:
            return
        final_phase = m.phase_fov().detach().double().cpu().numpy()
        start_phase = start["phase"] if start["phase"].shape == m.im.shape else m.im.crop(start["phase"])
        start_fov = start_phase.double().cpu().numpy()
        if final_loss > self._start_loss:
            self.warnings.append(
                f"the fit did not improve on its start (data misfit {final_loss:.4g} vs {self._start_loss:.4g}); "
                "the start is returned"
            )
            self._load_state(start)
            self.defocus_refined = self.theta_c_refined = False
            return
        corr = _large_scale_correlation(final_phase, start_fov)
        self.large_scale_correlation = corr
        if corr < LARGE_SCALE_MIN_CORRELATION:
            # The start's large-scale shape with the fit's detail: if it explains the data as well, keep it.
            state = self._save_state()
            sigma = max(final_phase.shape) / 16
            low = ndimage.gaussian_filter(final_phase, sigma, mode="reflect")
            hybrid = final_phase - low + ndimage.gaussian_filter(start_fov, sigma, mode="reflect")
            m.set_phase(self.tensor(hybrid))
            gain = obj.evidence(self._data_loss(), inflation) - e_final
            if significant(gain):
                self._load_state(state)
                self.warnings.append(
                    f"the large-scale phase departs from the TIE start (correlation {corr:.2f}); the data support it"
                )
            else:
                self.warnings.append(
                    f"the fit's large-scale phase departed from its start (correlation {corr:.2f}) without support "
                    "from the data; the start's large-scale shape was restored"
                )

    def run(self, callback: Callable[[Snapshot], None] | None = None) -> ReconstructionResult:
        for snap in self.steps():
            if callback is not None:
                callback(snap)
        return self.result()

    def _uncertainties(self) -> tuple[float, dict, np.ndarray | None]:
        """theta_c as reported, the one-sigma values of the parameters, and the phase's sigma map."""
        m, cfg, obj = self.model, self.cfg, self.objective
        inflation = getattr(self, "_inflation", 1.0)
        free_df = [i for i in range(m.n) if cfg.free.defocus and bool(m.defocus_free[i])]
        theta = float(m.theta_c().detach())
        if cfg.free.theta_c and self.theta_c_refined:
            # The fit's theta_c makes up for the regulariser's damping of the phase's fine detail: report the
            # value the data give with the band contrasts free (uncertainty.debiased_theta_c).
            theta = debiased_theta_c(m, data=self.data, kind=obj.kind, dose=obj.dose, mask=obj.mask,
                                     inflation=inflation, nominal=self.series.microscope.theta_c_rad)
        sig = parameter_uncertainty(
            m, data=self.data, kind=obj.kind, dose=obj.dose, mask=obj.mask, free_defocus=free_df,
            theta_c=cfg.free.theta_c, inflation=inflation, theta_c_rad=theta,
        )
        if cfg.free.defocus and math.isfinite(self.scale_sigma):
            # The common scale is known only as well as its data-only fit says (the Fisher estimate holds the phase
            # shape fixed and is too optimistic along the scale/phase-scale valley).
            scale_part = np.abs(m.defocus().double().cpu().numpy()) * self.scale_sigma
            sig["defocus_m"] = np.sqrt(np.nan_to_num(sig["defocus_m"]) ** 2 + scale_part**2)
        phase_sigma = phase_sigma_map(
            m, sqrt_var=obj.sqrt_var, inflation=inflation, curvature_scale=obj.curvature_scale
        ) if cfg.free.phase else None
        return theta, sig, phase_sigma

    def result(self, uncertainties: bool = True) -> ReconstructionResult:
        """The fit as it stands. `uncertainties=False` skips what costs more than a block of iterations (the
        one-sigma values, the phase sigma map, theta_c's debiasing): the state a warm start needs, with the
        fit's own theta_c and NaN sigmas."""
        m, cfg = self.model, self.cfg
        if uncertainties:
            theta, sig, phase_sigma = self._uncertainties()
        else:
            theta, phase_sigma = float(m.theta_c().detach()), None
            sig = {"defocus_m": np.full(m.n, math.nan), "theta_c_rad": math.nan}
        inflation = getattr(self, "_inflation", 1.0)
        obj = self.objective
        gy, gx = m.ramp_rad_per_px()
        px = self.series.pixel_size_m
        with torch.no_grad():
            phase = m.phase_fov().double().cpu().numpy()
            phase = phase - phase.mean()
            shifts = m.shifts().double().cpu().numpy()
            if cfg.ramp == "drift":
                # The same fit, read the other way: the plane is drift growing with defocus (start.ramp_per_px).
                h, w = phase.shape
                yy, xx = np.mgrid[:h, :w]
                phase = phase - gy * (yy - (h - 1) / 2) - gx * (xx - (w - 1) / 2)
                phase = phase - phase.mean()
                slope = np.array([gy, gx]) * m.im.wavelength_m / (2 * math.pi * px**2)  # px per metre of defocus
                df = m.defocus().double().cpu().numpy()
                shifts = shifts + slope[None, :] * (df - df[self.reference])[:, None]
                gy = gx = 0.0
            a = m.astig()
            return ReconstructionResult(
                phase=phase,
                amplitude=m.amplitude_fov().double().cpu().numpy(),
                defocus_m=m.defocus().double().cpu().numpy(),
                defocus_sigma_m=sig["defocus_m"],
                defocus_nominal_m=self.series.defocus_m.copy(),
                theta_c_rad=theta,
                theta_c_sigma_rad=sig["theta_c_rad"],
                astig_m=(float(a[0]), float(a[1])),
                shifts_px=shifts,
                scales=m.scales().double().cpu().numpy(),
                tie_phase=np.asarray(self.tie_phase),
                history=self.history,
                stopped_because=self.stopped_because,
                iterations=self.iterations,
                elapsed_s=time.perf_counter() - self.t0,
                loss_kind=obj.kind,
                reg_weight=obj.reg_weight,
                noise_level=obj.noise_level,
                padding=cfg.padding,
                hot_pixels_replaced=self.hot_pixels,
                phase_sigma=phase_sigma,
                ramp_rad_per_m=(gy / px, gx / px),
                defocus_refined=self.defocus_refined,
                theta_c_refined=self.theta_c_refined,
                warnings=list(self.warnings),
                extras={
                    "defocus_scans": self.scans,
                    "rejected_steps": sum(o.rejected for o in self._optimisers),
                    "vortex_removals": self.vortex_removals,
                    "reregistrations": self.reregistrations,
                    "reference": self.reference,
                    "start_candidates": self.start_candidates,
                    "inflation": inflation,
                    "theta_c_fit_rad": float(m.theta_c()),  # the fit's own, before debiased_theta_c
                    "start_data_loss": getattr(self, "_start_loss", math.nan),
                    # relative sigma of the common scale from the final check's two-point profile (NaN: not made)
                    "defocus_profile_sigma": self.defocus_profile_sigma,
                },
            )


def _large_scale_correlation(a: np.ndarray, b: np.ndarray) -> float:
    sigma = max(a.shape) / 16
    la = ndimage.gaussian_filter(a, sigma, mode="reflect")
    lb = ndimage.gaussian_filter(b, sigma, mode="reflect")
    la, lb = la - la.mean(), lb - lb.mean()
    den = math.sqrt(float((la * la).sum() * (lb * lb).sum()))
    return 1.0 if den == 0 else float((la * lb).sum() / den)


def reconstruct(
    series: Series,
    config: ReconstructionConfig | None = None,
    *,
    warm_start: ReconstructionResult | None = None,
    callback: Callable[[Snapshot], None] | None = None,
) -> ReconstructionResult:
    """Fit phase and microscope parameters to a series; see Reconstructor."""
    return Reconstructor(series, config, warm_start=warm_start).run(callback)
