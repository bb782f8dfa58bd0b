"""The AD reconstructor: fit the microscope to a through-focus series.

Stages (each measured to help on simulated series; see docs/reconstruction.md):
1. prepare: normalise, remove hot pixels, starting amplitude and TIE phase for each candidate
   registration, the candidate whose start explains the data best kept;
2. warm-up: a few phase-only L-BFGS steps at the nominal optics (transfer function cached);
3. defocus scan: one global defocus scale, scanned and fitted with a parabola (the phase rescaled to
   keep df * phi, the quantity the images fix to first order);
4. joint refinement, alternating two persistent L-BFGS optimisers: phase (and amplitude) with the
   optics cached, then the optics (per-image defocus, theta_c, astigmatism, shifts, scales) with the
   phase held; phase vortices removed after each phase block (reconstruct/vortices.py); until the
   discrepancy or relative-change rule, or the iteration cap.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from ltemlive.optics.forward import ImageModel
from ltemlive.reconstruct import prepare
from ltemlive.reconstruct.config import ReconstructionConfig
from ltemlive.reconstruct.loss import (
    REGULARIZERS,
    estimate_sqrt_noise_variance,
    expected_misfit,
    poisson_loss,
    sqrt_gaussian_loss,
)
from ltemlive.reconstruct.model import SeriesModel
from ltemlive.reconstruct.vortices import branch_cut_count, remove_vortices
from ltemlive.series import Series
from ltemlive.tie import tie_reconstruct

# Prior scale of the phase curvature (rad / px^2) in the MAP reading of the regulariser weight:
# weight = reg_factor * 2 * sigma^2 / (N * CURVATURE_SCALE). Measured on the simulator's specimens.
CURVATURE_SCALE = 0.02
MIN_DOSE = 2000.0
SCALE_FIT_AT = (0.3, 0.45, 0.6, 0.75)  # latest points (fractions of max_iter) for the scale fits
REG_START = 8.0
U_RANGE = 0.05  # relative phase-scale range sampled with the defocus scale
# Tikhonov cut-off of the starting TIE, cycles per pixel: TIE's 1/q^2 amplifies low-frequency noise.
TIE_Q_CUT_PER_PX = 0.005


@dataclass
class Snapshot:
    """The state of a running reconstruction, cheap to publish."""

    iteration: int
    stage: str
    loss: float
    data_loss: float
    reg_loss: float
    defocus_m: np.ndarray
    theta_c_rad: float
    astig_m: tuple[float, float]
    shifts_px: np.ndarray
    scales: np.ndarray
    elapsed_s: float
    phase: np.ndarray | None = None


@dataclass
class ReconstructionResult:
    phase: np.ndarray
    amplitude: np.ndarray
    defocus_m: np.ndarray
    defocus_sigma_m: np.ndarray
    defocus_nominal_m: np.ndarray
    theta_c_rad: float
    theta_c_sigma_rad: float
    astig_m: tuple[float, float]  # Cartesian (a_c, a_s)
    shifts_px: np.ndarray
    scales: np.ndarray
    tie_phase: np.ndarray
    history: list[dict]
    stopped_because: str
    iterations: int
    elapsed_s: float
    loss_kind: str
    reg_weight: float
    noise_level: float
    padding: str
    hot_pixels_replaced: int = 0
    extras: dict = field(default_factory=dict)

    def parameters(self) -> dict:
        """The refined microscope parameters with uncertainties, in SI units (for parameters.yaml)."""
        ac, as_ = self.astig_m
        return {
            "defocus_m": [float(d) for d in self.defocus_m],
            "defocus_sigma_m": [float(s) for s in self.defocus_sigma_m],
            "defocus_nominal_m": [float(d) for d in self.defocus_nominal_m],
            "theta_c_rad": float(self.theta_c_rad),
            "theta_c_sigma_rad": float(self.theta_c_sigma_rad),
            "astig_m": float(math.hypot(ac, as_)),
            "astig_azimuth_rad": float((0.5 * math.atan2(as_, ac)) % math.pi),
            "shifts_px": [[float(v) for v in s] for s in self.shifts_px],
            "intensity_scales": [float(s) for s in self.scales],
            "loss": self.loss_kind,
            "reg_weight": float(self.reg_weight),
            "iterations": int(self.iterations),
            "stopped_because": self.stopped_because,
            "elapsed_s": float(self.elapsed_s),
            "padding": self.padding,
        }


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
        torch.manual_seed(cfg.seed)

        nominal = series.defocus_m
        data, self.divisor = prepare.normalise(series)
        data, self.hot_pixels = prepare.remove_hot_pixels(data)
        self.reference = prepare.reference_index(nominal)

        self.data = self._tensor(data)
        self.mask = None
        # Loss and the regulariser weight, both from the noise level.
        self.loss_kind = cfg.loss
        if self.loss_kind == "auto":
            self.loss_kind = "poisson" if series.dose_e_per_px is not None else "sqrt_gaussian"
        if self.loss_kind == "poisson" and series.dose_e_per_px is None:
            raise ValueError("loss='poisson' needs the dose (dose_e_per_px) of the series")
        self.dose = series.dose_e_per_px
        sqrt_var = 1.0 / (4 * self.dose) if self.dose else estimate_sqrt_noise_variance(self.data)
        self.noise_level = expected_misfit(self.loss_kind, self.dose, sqrt_var)
        # Variance-stabilised noise variance, the same for either loss; floored at the level of MIN_DOSE
        # electrons/px because clean data still need some curvature penalty to keep the fit out of the
        # local minima of strong phase gradients (and the scale fit a finite likelihood scale).
        self.sqrt_var = max(sqrt_var, 1.0 / (4 * MIN_DOSE))

        mic = series.microscope
        self.warm = warm_start is not None
        self.im = ImageModel(
            series.shape,
            series.pixel_size_m,
            mic,
            max_abs_defocus_m=float(np.abs(nominal).max()) * 1.3,
            padding=cfg.padding,
            device=self.device,
            dtype=self.dtype,
        )
        if cfg.padding == "zero":
            self.mask = self.im.valid_mask
        if warm_start is not None:
            # Images seen before keep their shifts; new ones are registered to the model in steps().
            shifts0 = np.zeros((series.n_images, 2))
            k = min(len(warm_start.shifts_px), series.n_images)
            shifts0[:k] = warm_start.shifts_px[:k]
            self.model, self.tie_phase = self._start_model(data, shifts0, warm_start)
        elif not cfg.free.shifts:
            self.model, self.tie_phase = self._start_model(data, np.zeros((series.n_images, 2)), None)
        else:
            # Each candidate registration gives a TIE start; the images it left unregistered are
            # registered to that start's predictions, and the start that explains the data best is kept.
            best = None
            for shifts0 in prepare.registration_candidates(data, nominal):
                model, tie_phase = self._start_model(data, shifts0, None)
                self.model = model
                self._scales_init()
                self._register_to_model(16.0)
                with torch.no_grad():
                    misfit = float(self.data_loss(model()))
                if best is None or misfit < best[0]:
                    best = (misfit, model, tie_phase)
            _, self.model, self.tie_phase = best
        self.scale_sigma = math.inf
        if cfg.reg_weight == "auto":
            self.reg_weight = cfg.reg_factor * 2 * self.sqrt_var / (series.n_images * CURVATURE_SCALE)
        else:
            self.reg_weight = float(cfg.reg_weight)
        # Continuation: start smoother (REG_START x), halve each block down to the target weight; a warm
        # start is already near the optimum and starts at the target.
        self.reg_target = self.reg_weight
        self.reg_weight = self.reg_target * (1.0 if self.warm else REG_START)
        self.regularizer = REGULARIZERS.get(cfg.regularization)

        self.history: list[dict] = []
        self.scans: list[dict] = []
        self.rejected_steps = 0
        self.vortex_removals: list[dict] = []
        self.iterations = 0
        self.stopped_because = "not run"
        self._last_loss = math.inf

    def _tensor(self, a) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a), dtype=self.dtype, device=self.device)

    def _start_model(self, data: np.ndarray, shifts0: np.ndarray, warm_start) -> tuple[SeriesModel, np.ndarray]:
        """The starting model for given initial shifts: amplitude and TIE phase from the aligned images
        (or the previous result's phase and calibration for a warm start)."""
        cfg, series, nominal = self.cfg, self.series, self.series.defocus_m
        mic = series.microscope
        aligned = prepare.fourier_shift(data, -shifts0)
        amplitude0 = prepare.starting_amplitude(aligned, nominal)
        if warm_start is not None:
            tie_phase = warm_start.tie_phase
            phase0 = warm_start.phase  # the model pads it by mirroring
            defocus0 = calibrated_defocus(warm_start, nominal)
            theta_c0 = warm_start.theta_c_rad
            astig0 = warm_start.astig_m
        else:
            tie = tie_reconstruct(
                np.clip(aligned, 1e-6, None),
                nominal,
                series.pixel_size_m,
                mic.voltage_v,
                # The innermost +-df pair is the most linear (TIE-like); a longer series is fitted otherwise.
                method="symmetric" if prepare.has_symmetric_pair(nominal) else "least_squares",
                tikhonov_q_cut=TIE_Q_CUT_PER_PX / series.pixel_size_m,
            )
            tie_phase = phase0 = tie.phase.cpu().numpy()
            defocus0 = nominal
            theta_c0 = mic.theta_c_rad
            astig0 = (0.0, 0.0)
        model = SeriesModel(
            self.im,
            defocus0,
            phase0=self._tensor(phase0),
            amplitude0=self._tensor(amplitude0),
            theta_c0=theta_c0 if theta_c0 > 0 else 1e-6,
            astig0=astig0,
            shifts0=self._tensor(shifts0),
            preconditioner_q0=cfg.preconditioner_q0,
            reference=self.reference,
            defocus_mode=cfg.defocus_model,
            remove_ramp=cfg.free.shifts,
        )
        return model, tie_phase

    # -- objective ------------------------------------------------------------------------------------
    def data_loss(self, images: torch.Tensor) -> torch.Tensor:
        if self.loss_kind == "poisson":
            return poisson_loss(images, self.data, self.dose, self.mask)
        return sqrt_gaussian_loss(images, self.data, self.mask)

    def objective(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        d = self.data_loss(self.model())
        r = self.regularizer(self.model.phase()) if self.regularizer and self.reg_weight > 0 else d.new_zeros(())
        return d + self.reg_weight * r, d, r

    def _lbfgs(self, params, max_iter: int) -> torch.optim.LBFGS:
        return torch.optim.LBFGS(
            params,
            lr=1.0,
            max_iter=max_iter,
            history_size=20,
            line_search_fn="strong_wolfe",
            tolerance_grad=1e-12,
            tolerance_change=1e-14,
        )

    def _step(self, opt: torch.optim.Optimizer, params) -> None:
        """One optimiser call (max_iter L-BFGS iterations). A step that produces a non-finite loss or
        parameter (a line-search trial too far out) is undone and the optimiser's memory cleared."""

        def closure():
            opt.zero_grad(set_to_none=True)
            loss, _, _ = self.objective()
            loss.backward()
            return loss

        defocus_params = (self.model.r,)
        for p in self.model.parameters():
            held = any(p is d for d in defocus_params) and not self._defocus_on
            p.requires_grad_(any(p is q for q in params) and not held)
        backup = [p.detach().clone() for p in params]
        try:
            loss = opt.step(closure)
        except ValueError:  # the optics refused a non-finite trial point (e.g. defocus)
            loss = None
        bad = loss is None or not torch.isfinite(torch.as_tensor(loss)).all()
        bad = bad or any(not torch.isfinite(p).all() for p in params)
        if bad:
            with torch.no_grad():
                for p, b in zip(params, backup, strict=True):
                    p.copy_(b)
            opt.state.clear()
            self.rejected_steps += 1

    # -- parameter groups -----------------------------------------------------------------------------
    def phase_params(self) -> list[torch.nn.Parameter]:
        m, f = self.model, self.cfg.free
        return [p for p, on in ((m.c, f.phase), (m.a, f.amplitude)) if on]

    def optics_params(self) -> list[torch.nn.Parameter]:
        m, f = self.model, self.cfg.free
        # scale: the common scale is set by data-only fits (see _fit_global_scale); per_image: the
        # per-image differences are refined by gradient on top.
        per_image = f.defocus and self.cfg.defocus_model == "per_image"
        pairs = ((m.r, per_image), (m.t, f.theta_c), (m.astig_uv, f.astigmatism), (m.s, f.shifts), (m.k, f.scales))
        return [p for p, on in pairs if on]

    # -- stages ---------------------------------------------------------------------------------------
    def _record(self, stage: str) -> Snapshot:
        with torch.no_grad():
            loss, d, r = self.objective()
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

    def _scales_init(self) -> None:
        """Per-image scales by least squares against the starting model, before anything else."""
        with torch.no_grad():
            self.model.k.zero_()
            img = self.model()
            ratio = (self.data * img).sum(dim=(1, 2)) / img.square().sum(dim=(1, 2))
            self.model.k.copy_(torch.log(ratio.clamp_min(1e-6)))

    @torch.no_grad()
    def _register_to_model(self, max_shift_px: float = 16.0) -> None:
        """Correct each image's shift by cross-correlating it with the model's prediction of it."""
        m = self.model
        pred = m().cpu().numpy()
        data = self.data.cpu().numpy()
        delta = np.zeros((m.n, 2))
        for i in range(m.n):
            if i != self.reference:
                delta[i] = prepare.cross_correlation_shift(data[i], pred[i], max_shift_px)
        m.s.add_(torch.as_tensor(delta, dtype=m.s.dtype, device=m.s.device))

    @torch.no_grad()
    def _fit_global_scale(self, rng: float, stage: str) -> bool:
        """Set the global defocus scale g from the data alone.

        Along the path df -> df (1 + g), phi -> phi (1 + u) / (1 + g) the images change only at second
        order in g (TIE fixes df * phi), so a regulariser would decide g (shrinking the phase and
        inflating the defocus) if g were left to the gradient. Instead the data misfit is sampled on a
        5 x 5 grid of (g, u) and fitted by a quadratic surface; u absorbs the regulariser's shrinkage of
        the phase so that it does not bias g. The scale moves by a trust-region step (at most the sampled
        range) and only when the surface is convex and pins g down; otherwise it stays.
        """
        m = self.model
        base = m.defocus().detach().clone()
        phase = m.phase().detach().clone()
        gs = np.linspace(-rng, rng, 5)
        us = np.linspace(-U_RANGE, U_RANGE, 5)
        rows, losses = [], []
        for g in gs:
            m.rebase_defocus(base * (1 + g))
            m.freeze_optics(True)
            for u in us:
                m.set_phase(phase * (1 + u) / (1 + g))
                losses.append(float(self.objective()[1]))
                rows.append((1.0, g, u, g * g, g * u, u * u))
        a = np.asarray(rows)
        y = np.asarray(losses) * self._nll_per_loss()  # total negative log-likelihood units
        coef = np.linalg.lstsq(a, y, rcond=None)[0]
        hess = np.array([[2 * coef[3], coef[4]], [coef[4], 2 * coef[5]]])
        g_best = u_best = 0.0
        sigma_g = math.inf
        g_fit = u_fit = math.nan
        inside = True  # a surface that pins nothing down is final: no retry
        if np.all(np.linalg.eigvalsh(hess) > 0):
            g_fit, u_fit = np.linalg.solve(hess, -coef[1:3])
            sigma_g = float(np.sqrt(np.linalg.inv(hess)[0, 0]))
            # Move only when the data pin the scale down better than the sampled range (with few or noisy
            # images the surface is shallow and its vertex is noise). The quadratic model is trusted inside
            # the sampled box; a vertex outside it (seen while the phase is still poor: -17 % with a true
            # 0 % on two images) earns a step of a third of the range towards it and a repeat of the fit.
            if sigma_g <= 0.5 * rng:
                inside = abs(g_fit) <= rng and abs(u_fit) <= U_RANGE
                step = rng if inside else rng / 3
                g_best = float(np.clip(g_fit, -step, step))
                u_best = float(np.clip(u_fit, -U_RANGE, U_RANGE))
        m.rebase_defocus(base * (1 + g_best))
        m.set_phase(phase * (1 + u_best) / (1 + g_best))
        m.freeze_optics(False)
        self.scale_sigma = sigma_g
        self.scans.append(
            {
                "stage": stage,
                "range": rng,
                "g": float(g_best),
                "u": float(u_best),
                "sigma_g": sigma_g,
                "g_vertex": float(g_fit),
                "u_vertex": float(u_fit),
            }
        )
        return inside

    def _nll_per_loss(self) -> float:
        """Factor from the mean per-pixel data loss to the total negative log-likelihood."""
        n_pix = self.data.numel() if self.mask is None else int(self.mask.sum()) * self.data.shape[0]
        if self.loss_kind == "poisson":
            return float(self.dose) * n_pix
        return n_pix / (2.0 * self.sqrt_var)

    def steps(self) -> Iterator[Snapshot]:
        """Run the reconstruction, yielding a snapshot after each block of iterations.

        Schedule: register, warm up the phase, refine with the defocus held while the regulariser
        relaxes to its target; then fit the global defocus scale and free the per-image defocus,
        re-fitting the scale with a shrinking range whenever the refinement has settled.
        """
        cfg, m = self.cfg, self.model
        self._scales_init()
        yield self._record("start")
        phase_params = self.phase_params()
        optics_params = self.optics_params()
        if not phase_params and not optics_params:
            self.stopped_because = "nothing to refine"
            return
        # A block never takes more than half the budget: --max-iter 3 runs 3 iterations, not two 15-step blocks.
        block = max(1, min(cfg.block_iter, cfg.max_iter // 2))
        new_phase_opt = lambda: self._lbfgs(phase_params, block) if phase_params else None  # noqa: E731
        phase_opt = new_phase_opt()
        optics_opt = self._lbfgs(optics_params, cfg.optics_iter) if optics_params else None
        refine_defocus = cfg.free.defocus and phase_opt is not None
        scale_ranges = [cfg.defocus_scan_range, 0.05, 0.02, 0.01] if not self.warm else [0.05, 0.02, 0.01]
        if not (refine_defocus and cfg.defocus_scan):
            scale_ranges = []
        self._defocus_on = not refine_defocus and cfg.free.defocus  # phase fixed: defocus from the start

        def phase_block():
            nonlocal phase_opt
            m.freeze_optics(True)
            before = self._n_iter(phase_opt)
            self._step(phase_opt, phase_params)
            self.iterations += max(self._n_iter(phase_opt) - before, 1)
            m.freeze_optics(False)
            if cfg.free.phase and self._remove_vortices():
                phase_opt = new_phase_opt()

        # A warm start knows its shifts to a pixel: only small corrections, so that a poorly matched
        # detail cannot pull an image onto a wrong correlation peak.
        max_shift = 2.0 if self.warm else 16.0
        if cfg.free.shifts:
            self._register_to_model(max_shift)
        if phase_opt is not None:
            phase_block()
            yield self._record("warm-up")
        if cfg.free.shifts:
            self._register_to_model(max_shift)
            phase_opt = new_phase_opt()

        prev = math.inf
        retries = 0
        while True:
            if optics_opt is not None:
                self._step(optics_opt, optics_params)
                if phase_opt is None:
                    self.iterations += cfg.optics_iter
            if phase_opt is not None:
                phase_block()
            snap = self._record("refine")
            yield snap
            if self.iterations >= cfg.max_iter:
                self.stopped_because = "iteration cap"
                break
            if self.reg_weight > self.reg_target:
                self.reg_weight = max(self.reg_target, 0.5 * self.reg_weight)
                prev = math.inf  # the objective changed: no convergence test on this block
                continue
            rel = (prev - snap.loss) / max(abs(snap.loss), 1e-30)
            prev = snap.loss
            settled = 0 <= rel < cfg.rtol * cfg.block_iter * 10
            # Scale fits when the refinement has settled, and at the latest at fixed fractions of the
            # iteration budget, so that a capped run gets them too (the cap is never exceeded by more
            # than a block).
            due = scale_ranges and self.iterations >= SCALE_FIT_AT[-len(scale_ranges)] * cfg.max_iter
            if refine_defocus and scale_ranges and (settled or due):
                # A fit whose vertex fell outside its box is repeated at the same range (twice at most).
                confirmed = self._fit_global_scale(scale_ranges[0], "scale")
                retries = retries + 1 if not confirmed else 0
                if confirmed or retries > 2:
                    scale_ranges.pop(0)
                    retries = 0
                self._defocus_on = True
                phase_opt, prev = new_phase_opt(), math.inf
                yield self._record("defocus scale")
                continue
            if cfg.discrepancy > 0 and snap.data_loss <= cfg.discrepancy * self.noise_level:
                self.stopped_because = "discrepancy"
                break
            if 0 <= rel < cfg.rtol * cfg.block_iter:
                self.stopped_because = "converged (relative change)"
                break
        for p in m.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def _remove_vortices(self) -> bool:
        phase = self.model.phase()
        cuts = branch_cut_count(phase)
        if cuts == 0:
            return False
        self.model.set_phase(remove_vortices(phase))
        self.vortex_removals.append({"iteration": self.iterations, "branch_cut_pixels": cuts})
        return True

    @staticmethod
    def _n_iter(opt) -> int:
        if opt is None:
            return 0
        return int(opt.state[opt._params[0]].get("n_iter", 0))

    def run(self, callback: Callable[[Snapshot], None] | None = None) -> ReconstructionResult:
        for snap in self.steps():
            if callback is not None:
                callback(snap)
        return self.result()

    def result(self) -> ReconstructionResult:
        from ltemlive.reconstruct.uncertainty import parameter_uncertainty

        m = self.model
        sig = parameter_uncertainty(self)
        if self.cfg.free.defocus and math.isfinite(self.scale_sigma):
            # The common scale is known only as well as its data-only fit says (the Fisher estimate holds
            # the phase shape fixed and is far too optimistic along the scale/phase-scale valley).
            scale_part = np.abs(m.defocus().double().cpu().numpy()) * self.scale_sigma
            sig["defocus_m"] = np.sqrt(np.nan_to_num(sig["defocus_m"]) ** 2 + scale_part**2)
        with torch.no_grad():
            phase = m.phase_fov()
            phase = phase - phase.mean()
            a = m.astig()
            return ReconstructionResult(
                phase=phase.double().cpu().numpy(),
                amplitude=m.amplitude_fov().double().cpu().numpy(),
                defocus_m=m.defocus().double().cpu().numpy(),
                defocus_sigma_m=sig["defocus_m"],
                defocus_nominal_m=self.series.defocus_m.copy(),
                theta_c_rad=float(m.theta_c()),
                theta_c_sigma_rad=sig["theta_c_rad"],
                astig_m=(float(a[0]), float(a[1])),
                shifts_px=m.shifts().double().cpu().numpy(),
                scales=(m.scales().double().cpu().numpy()),
                tie_phase=np.asarray(self.tie_phase),
                history=self.history,
                stopped_because=self.stopped_because,
                iterations=self.iterations,
                elapsed_s=time.perf_counter() - self.t0,
                loss_kind=self.loss_kind,
                reg_weight=self.reg_weight,
                noise_level=self.noise_level,
                padding=self.cfg.padding,
                hot_pixels_replaced=self.hot_pixels,
                extras={
                    "defocus_scans": self.scans,
                    "rejected_steps": self.rejected_steps,
                    "vortex_removals": self.vortex_removals,
                    "reference": self.reference,
                },
            )


def calibrated_defocus(previous: ReconstructionResult, nominal: np.ndarray) -> np.ndarray:
    """Carry a refined defocus calibration over to new nominal values: fit refined = a * nominal + b on
    the previous result (or a pure scale if its nominal values cannot separate the two) and apply it."""
    x, y = np.asarray(previous.defocus_nominal_m), np.asarray(previous.defocus_m)
    if len(np.unique(x)) >= 2:
        a, b = np.polyfit(x, y, 1)
    else:
        a, b = (y[0] / x[0] if x[0] != 0 else 1.0), 0.0
    return a * np.asarray(nominal) + b


def reconstruct(
    series: Series,
    config: ReconstructionConfig | None = None,
    *,
    warm_start: ReconstructionResult | None = None,
    callback: Callable[[Snapshot], None] | None = None,
) -> ReconstructionResult:
    """Fit phase and microscope parameters to a series; see Reconstructor."""
    return Reconstructor(series, config, warm_start=warm_start).run(callback)
