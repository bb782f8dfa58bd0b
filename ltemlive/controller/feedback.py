"""Closed-loop defocus calibration: advisory, bounded, and robust to bad estimates.

The instrument does not produce the defocus it is told to: its true defocus is
``true = g * commanded + o`` (a lens scale error g of about 1.1 and an offset o of a few um).
After each through-focus series the reconstructor reports, per image, the commanded defocus
(what was sent), its estimate of the true defocus and a one-sigma uncertainty. This module keeps
a calibration ``(g, o)`` and turns a planned true defocus into the command for the next series,
``commanded = (planned_true - o) / g``.

The rule, in words:

1. **Fit.** A weighted least-squares line ``estimated_true_i = g * commanded_i + o`` (weights
   ``1 / sigma_i**2``), or, when the offset is not fitted, ``g`` alone through the origin with the
   current offset held (``estimated_true_i - o_current = g * commanded_i``). The fit is *absolute*:
   it estimates the instrument's (g, o) from the (commanded, true) pairs, not a correction to the
   current calibration, so a late or out-of-order estimate describes the instrument just as well as a
   fresh one, and exact estimates converge in one accepted update (a repeated one only counts twice in
   the history rule below).
   Standard errors come from the weighted normal equations. The reported sigmas are known to be
   optimistic lower bounds (5-30x too small), so when there are more images than unknowns and the
   reduced chi-square exceeds 1, the covariance is multiplied by it: the scatter of the residuals is
   then the better measure of the error. It is never scaled *down* (chi-square < 1 with a handful of
   images is luck, and the stated sigmas are already lower bounds).
2. **Is the offset determined?** ``fit_offset="auto"`` fits the offset only when the estimates can
   determine it: at least three images (one more than the two unknowns, so the chi-square can expose
   optimistic sigmas), at least two distinct commanded values (the line's two parameters are separable),
   estimates that are not exactly proportional to the commands, and a fitted offset sigma (after the
   chi-square inflation) no larger than ``max_offset_sigma_m``. Otherwise it keeps the current offset
   and fits the scale alone. The proportionality test matters: a reconstructor with a pure-scale defocus
   model reports ``estimated_true = s * commanded`` exactly, which says nothing about the offset; a free
   line through such points would "find" an offset of 0 with a fake, tiny sigma. "Exactly" allows for
   float32 round-off (relative 1e-6), since the reconstructor may compute in float32.
   ``"always"`` fits it whenever the line is separable and rejects the estimate when the offset sigma is
   too large; ``"never"`` always holds it.
3. **Reject** an estimate, leaving the calibration unchanged, when it is malformed (non-finite values,
   non-positive sigmas, mismatched lengths, no non-zero command), when the fit is degenerate, when the
   scale's relative sigma exceeds ``max_rel_sigma``, when its scale differs from the current one by more
   than ``max_deviation`` (relative: "wildly off" is a failed reconstruction far more often than a lens
   that changed), when, after at least two accepted estimates, it differs from the median of the last
   ``history_window`` accepted ones by more than ``max(history_tolerance * median, 5 * sigma_scale)``
   (a glitch against a stable record), or when it lies outside ``scale_bounds`` / ``offset_bounds_m``.
   Rejecting is cheap: the next series simply runs with the calibration that was good enough before,
   whereas one accepted garbage estimate would defocus every later series. The price: a genuine change
   of the optics (another lens mode) is rejected too, until :meth:`DefocusFeedback.reset` is called.
4. **Bounded step.** The calibration moves from its current value towards the estimate by at most
   ``max_scale_step`` (relative) in scale and ``max_offset_step_m`` in offset per accepted update, and
   the decision says when it was clipped. A bad estimate that slips past the rejection rules can then do
   only bounded harm, and good estimates still get there in a few updates (one, once within a step).
5. **Clamp** the result to the bounds (belt and braces: the step moves between two in-bounds points).

Why advisory: the feedback only changes the *next* commands, it never moves the instrument itself, and
``update`` never raises for a bad estimate - it returns a rejected :class:`FeedbackDecision` with a
reason. The driver's own safety limits still refuse any command outside its range. Every decision,
accepted or not, is kept in :attr:`DefocusFeedback.history` for the run log.

The ``reason`` of a decision starts with one keyword: ``accepted``, ``disabled``, ``frozen``,
``invalid``, ``degenerate``, ``sigma``, ``deviation``, ``history`` or ``bounds``; details follow it.

Pure logic: numpy and pydantic only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "DefocusCalibration",
    "DefocusEstimate",
    "DefocusFeedback",
    "FeedbackConfig",
    "FeedbackDecision",
]

STATE_VERSION = 1

# Relative residual below which estimates count as exactly proportional to the commands. float32
# round-off of s * c (or of the commands themselves) is ~1e-7 relative; a real per-image estimate departs
# from proportionality by the offset and noise, i.e. tens of nm out of mm (>= 1e-5).
_PROPORTIONAL_RTOL = 1e-6
# 1 - rho**2 of the normalised normal matrix below which commanded values are not distinct enough to
# separate scale and offset (all commands equal, up to round-off).
_MIN_SEPARABILITY = 1e-9
# A rejection of an estimate that differs from the history median by less than this many of its sigmas
# would reject real, well-measured drift.
_HISTORY_SIGMAS = 5.0


def _finite_pair(v: tuple[float, float], name: str) -> tuple[float, float]:
    lo, hi = v
    if not (math.isfinite(lo) and math.isfinite(hi)) or not lo < hi:
        raise ValueError(f"{name} must be finite with low < high, got {v}")
    return v


class FeedbackConfig(BaseModel):
    """How the defocus feedback fits, rejects and steps. Defaults suit a lens scale near 1.1."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="apply accepted estimates; False: every update is rejected")
    fit_offset: Literal["auto", "never", "always"] = Field(
        "auto",
        description="auto: fit the offset only when the estimates determine it (>= 3 images, >= 2 distinct "
        "commands, not exactly proportional, offset sigma <= max_offset_sigma_m), else hold it; never: hold "
        "it; always: fit it, reject the estimate when it is undetermined",
    )
    max_scale_step: float = Field(
        0.15, gt=0, le=1.0, description="largest relative change of the scale per accepted update (clipped)"
    )
    max_offset_step_m: float = Field(
        5e-6, ge=0, le=1e-3, description="largest change of the offset per accepted update (m, clipped)"
    )
    max_rel_sigma: float = Field(
        0.02, gt=0, le=1.0, description="reject when the estimated scale's relative sigma exceeds this"
    )
    max_offset_sigma_m: float = Field(
        2e-6, gt=0, le=1e-3, description="largest fitted offset sigma (m) for the offset to count as determined"
    )
    max_deviation: float = Field(
        0.3, gt=0, le=10.0, description="reject a scale that differs from the current one by more than this (rel.)"
    )
    history_window: int = Field(
        5, ge=2, le=1000, description="number of recent accepted estimates whose median the history rule uses"
    )
    history_tolerance: float = Field(
        0.03,
        gt=0,
        le=10.0,
        description="after >= 2 accepted estimates, reject a scale further than max(this (relative), 5 sigma) "
        "from the median of the last history_window accepted ones",
    )
    scale_bounds: tuple[float, float] = Field(
        (0.5, 2.0), description="the calibrated scale never leaves these; estimates outside are rejected"
    )
    offset_bounds_m: tuple[float, float] = Field(
        (-50e-6, 50e-6), description="the calibrated offset (m) never leaves these; estimates outside are rejected"
    )

    @field_validator("scale_bounds")
    @classmethod
    def _scale_bounds_ok(cls, v: tuple[float, float]) -> tuple[float, float]:
        _finite_pair(v, "scale_bounds")
        if v[0] <= 0:
            raise ValueError(f"scale_bounds must be positive, got {v}")
        return v

    @field_validator("offset_bounds_m")
    @classmethod
    def _offset_bounds_ok(cls, v: tuple[float, float]) -> tuple[float, float]:
        _finite_pair(v, "offset_bounds_m")
        if max(abs(v[0]), abs(v[1])) > 1e-2:
            raise ValueError(f"offset_bounds_m must lie within +-1 cm, got {v}")
        return v


class DefocusCalibration(BaseModel):
    """``true = scale * commanded + offset_m`` (metres, df > 0 over-focus)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scale: float = Field(1.0, gt=0, description="true defocus per commanded defocus")
    offset_m: float = Field(0.0, description="true defocus at zero command (m)")

    @field_validator("scale", "offset_m")
    @classmethod
    def _finite(cls, v: float, info) -> float:
        if not math.isfinite(v):
            raise ValueError(f"{info.field_name} must be finite, got {v}")
        return v

    def true_from_commanded(self, commanded_m: float) -> float:
        return self.scale * commanded_m + self.offset_m

    def commanded_for(self, true_m: float) -> float:
        """The command that produces ``true_m`` under this calibration (inverse of true_from_commanded)."""
        return (true_m - self.offset_m) / self.scale


class DefocusEstimate(BaseModel):
    """What the reconstructor reports for one series, one entry per image (metres)."""

    model_config = ConfigDict(extra="forbid")

    series_index: int = Field(ge=0, description="the series these images belong to")
    commanded_m: list[float] = Field(description="defocus sent to the instrument (its read-back)")
    estimated_true_m: list[float] = Field(description="the reconstructor's estimate of the true defocus")
    sigma_m: list[float] = Field(description="one-sigma uncertainty of each estimate (optimistic lower bound)")

    @field_validator("commanded_m", "estimated_true_m", "sigma_m", mode="before")
    @classmethod
    def _from_array(cls, v: Any) -> Any:
        # Accept numpy arrays from the reconstructor as well as lists.
        return v.tolist() if isinstance(v, np.ndarray) else v

    @field_validator("commanded_m", "estimated_true_m", "sigma_m")
    @classmethod
    def _all_finite(cls, v: list[float], info) -> list[float]:
        if not all(math.isfinite(x) for x in v):
            raise ValueError(f"{info.field_name} must be finite")
        return v

    @field_validator("sigma_m")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if not all(x > 0 for x in v):
            raise ValueError("sigma_m must be > 0")
        return v

    @classmethod
    def from_parameters(cls, series_index: int, parameters: dict[str, Any]) -> DefocusEstimate:
        """From a reconstruction's refined parameters (ReconstructionResult.parameters(): defocus_nominal_m is
        what the instrument was told, defocus_m its estimate of the truth). Raises ValueError/KeyError."""
        return cls(
            series_index=series_index,
            commanded_m=parameters["defocus_nominal_m"],
            estimated_true_m=parameters["defocus_m"],
            sigma_m=parameters["defocus_sigma_m"],
        )

    @model_validator(mode="after")
    def _same_lengths(self) -> DefocusEstimate:
        n = {len(self.commanded_m), len(self.estimated_true_m), len(self.sigma_m)}
        if len(n) != 1 or 0 in n:
            raise ValueError("commanded_m, estimated_true_m and sigma_m must have the same length >= 1")
        return self


class FeedbackDecision(BaseModel):
    """The outcome of one update: what was estimated, whether it was applied, and why. JSON-able."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    series_index: int = Field(description="series_index of the estimate (-1 when unreadable)")
    accepted: bool = Field(description="whether the calibration was updated from this estimate")
    reason: str = Field(description="a keyword (accepted, disabled, frozen, invalid, ...) then details")
    clipped: bool = Field(False, description="the bounded step (or the bounds) limited the change")
    estimate_scale: float | None = Field(None, description="fitted scale (None when no fit was possible)")
    estimate_offset_m: float | None = Field(None, description="fitted offset (m); None when not fitted")
    sigma_scale: float | None = Field(None, description="standard error of the fitted scale")
    sigma_offset_m: float | None = Field(None, description="standard error of the fitted offset (m)")
    offset_fitted: bool = Field(False, description="False: the offset was held at its current value")
    reduced_chi2: float | None = Field(None, description="of the fit; None when there were no spare images")
    before: DefocusCalibration
    after: DefocusCalibration
    t_epoch_s: float = Field(description="when the decision was made (Unix time)")


@dataclass(frozen=True)
class _Fit:
    """A WLS fit in the caller's units; offset fields are None when the offset was held."""

    scale: float
    sigma_scale: float
    offset: float | None
    sigma_offset: float | None
    reduced_chi2: float | None


def _wls(c: np.ndarray, y: np.ndarray, s: np.ndarray, held_offset: float | None) -> _Fit | None:
    """Weighted least squares of y = g c + o (held_offset None) or y - held_offset = g c.

    Returns None when the design is degenerate or the numbers do not survive (overflow, underflow).
    """
    with np.errstate(all="ignore"):
        sw = 1.0 / s
        if held_offset is None:
            x = np.column_stack([c * sw, sw])
            t = y * sw
        else:
            x = (c * sw)[:, None]
            t = (y - held_offset) * sw
        # Normalise the columns so the normal matrix has a unit diagonal: its conditioning then reflects
        # only how distinct the commands are, not the units.
        d = np.sqrt(np.sum(x * x, axis=0))
        if not (np.all(np.isfinite(d)) and np.all(d > 0) and np.all(np.isfinite(t))):
            return None
        xn = x / d
        normal = xn.T @ xn
        if held_offset is None and 1.0 - normal[0, 1] ** 2 < _MIN_SEPARABILITY:
            return None
        cov_n = np.linalg.inv(normal)
        # lstsq for the values (better conditioned than solving the normal equations).
        beta_n = np.linalg.lstsq(xn, t, rcond=None)[0]
        beta = beta_n / d
        cov = cov_n / np.outer(d, d)
        r = t - x @ beta
        n, p = x.shape
        red = float(r @ r) / (n - p) if n > p else None
        if red is not None and red > 1.0:
            # The sigmas are lower bounds: when the residuals scatter more than they claim, trust the scatter.
            cov = cov * red
        sig = np.sqrt(np.diag(cov))
    values = [*beta.tolist(), *sig.tolist()] + ([red] if red is not None else [])
    if not all(math.isfinite(v) for v in values):
        return None
    if held_offset is None:
        return _Fit(float(beta[0]), float(sig[0]), float(beta[1]), float(sig[1]), red)
    return _Fit(float(beta[0]), float(sig[0]), None, None, red)


def _to_metres(fit: _Fit | None, length: float) -> _Fit | None:
    """Undo the normalisation by ``length`` (the scale is dimensionless); None when that overflows."""
    if fit is None:
        return None
    offset = None if fit.offset is None else fit.offset * length
    sigma_offset = None if fit.sigma_offset is None else fit.sigma_offset * length
    if not all(math.isfinite(v) for v in (offset or 0.0, sigma_offset or 0.0)):
        return None
    return _Fit(fit.scale, fit.sigma_scale, offset, sigma_offset, fit.reduced_chi2)


def _proportional(c: np.ndarray, y: np.ndarray) -> bool:
    """True when y = s * c exactly (up to float32 round-off): a pure-scale model's output."""
    with np.errstate(all="ignore"):
        cc = float(c @ c)
        if not cc > 0:
            return False
        s = float(c @ y) / cc
        r = np.max(np.abs(y - s * c))
        return bool(r <= _PROPORTIONAL_RTOL * np.max(np.abs(y)))


class DefocusFeedback:
    """Keeps the defocus calibration and updates it from the reconstructor's estimates (see module doc).

    Not thread-safe: call it from the controller's one state-machine thread.
    """

    def __init__(
        self,
        config: FeedbackConfig,
        initial: DefocusCalibration | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._initial = initial if initial is not None else DefocusCalibration()
        self._check_in_bounds(self._initial, "initial calibration")
        self._calibration = self._initial
        self._frozen = False
        self._history: list[FeedbackDecision] = []
        self._clock = clock

    # ---- read-only views -------------------------------------------------------------------------
    @property
    def config(self) -> FeedbackConfig:
        return self._config

    @property
    def calibration(self) -> DefocusCalibration:
        return self._calibration

    @property
    def initial(self) -> DefocusCalibration:
        return self._initial

    @property
    def frozen(self) -> bool:
        return self._frozen

    @property
    def history(self) -> list[FeedbackDecision]:
        """Every decision since the start or the last reset, oldest first (a copy)."""
        return list(self._history)

    # ---- control ---------------------------------------------------------------------------------
    def freeze(self) -> None:
        """Hold the calibration: updates are rejected ("frozen") until unfreeze()."""
        self._frozen = True

    def unfreeze(self) -> None:
        self._frozen = False

    def reset(self) -> None:
        """Back to the initial calibration with the history cleared (use after changing the optics, e.g. the
        lens mode: the history rule would otherwise reject the new, genuinely different scale). Leaves the
        frozen flag as it is: freezing is the operator's decision."""
        self._calibration = self._initial
        self._history = []

    def commanded_for(self, planned_true_m: float) -> float:
        """The defocus to command so that the true defocus is ``planned_true_m`` (current calibration)."""
        return self._calibration.commanded_for(planned_true_m)

    # ---- the update ------------------------------------------------------------------------------
    def update(self, estimate: DefocusEstimate) -> FeedbackDecision:
        """Fit, judge and (maybe) apply one series' estimate. Never raises for a bad estimate."""
        decision = self._decide(estimate)
        self._history.append(decision)
        self._calibration = decision.after
        return decision

    def _decide(self, estimate: DefocusEstimate) -> FeedbackDecision:
        cfg = self._config
        before = self._calibration
        series_index = self._series_index(estimate)

        def reject(reason: str, fit: _Fit | None = None) -> FeedbackDecision:
            return self._decision(series_index, False, reason, False, fit, before, before)

        if not cfg.enabled:
            return reject("disabled")
        if self._frozen:
            return reject("frozen")

        arrays = self._arrays(estimate)
        if isinstance(arrays, str):
            return reject(f"invalid estimate: {arrays}")
        c, y, s = arrays

        try:
            fit, rejection, why_held = self._fit(c, y, s, before.offset_m)
        except (np.linalg.LinAlgError, ArithmeticError, ValueError) as exc:
            # Finite inputs should not get here; if they do, the feedback is advisory and must not take the
            # controller down.
            return reject(f"degenerate: the fit failed ({exc})")
        if rejection is not None or fit is None:
            return reject(rejection or "degenerate: no fit", fit)
        g, sg = fit.scale, fit.sigma_scale
        o = before.offset_m if fit.offset is None else fit.offset

        # Rejection rules. Comparisons are written so that a NaN would fail them (all values are finite here,
        # but the habit is cheap).
        rel_sigma = sg / abs(g) if g != 0 else math.inf
        if not rel_sigma <= cfg.max_rel_sigma:
            return reject(f"sigma: scale relative sigma {rel_sigma:.3g} > {cfg.max_rel_sigma:.3g}", fit)
        deviation = abs(g / before.scale - 1.0)
        if not deviation <= cfg.max_deviation:
            return reject(
                f"deviation: scale {g:.6g} differs from the current {before.scale:.6g} by {deviation:.1%} "
                f"> {cfg.max_deviation:.1%}",
                fit,
            )
        recent = [d.estimate_scale for d in self._history if d.accepted and d.estimate_scale is not None]
        recent = recent[-cfg.history_window :]
        if len(recent) >= 2:
            median = float(np.median(recent))
            allowed = max(cfg.history_tolerance * median, _HISTORY_SIGMAS * sg)
            if not abs(g - median) <= allowed:
                return reject(
                    f"history: scale {g:.6g} differs from the median {median:.6g} of the last {len(recent)} "
                    f"accepted estimates by more than {allowed:.3g}",
                    fit,
                )
        lo, hi = cfg.scale_bounds
        if not lo <= g <= hi:
            return reject(f"bounds: scale {g:.6g} outside [{lo:g}, {hi:g}]", fit)
        olo, ohi = cfg.offset_bounds_m
        if not olo <= o <= ohi:
            return reject(f"bounds: offset {o:.4g} m outside [{olo:g}, {ohi:g}] m", fit)

        # Bounded step from the current calibration towards the estimate, then the bounds.
        g_new = min(max(g, before.scale * (1.0 - cfg.max_scale_step)), before.scale * (1.0 + cfg.max_scale_step))
        o_new = min(max(o, before.offset_m - cfg.max_offset_step_m), before.offset_m + cfg.max_offset_step_m)
        g_new = min(max(g_new, lo), hi)
        o_new = min(max(o_new, olo), ohi)
        notes = []
        # Tolerances so that round-off at the limit (an estimate of exactly +5 um, say) is not reported as clipping.
        if abs(g_new - g) > 1e-12 * abs(g):
            notes.append(f"scale step clipped to {g_new / before.scale - 1.0:+.1%}")
        if abs(o_new - o) > 1e-15:
            notes.append(f"offset step clipped to {o_new - before.offset_m:+.3g} m")
        clipped = bool(notes)
        if why_held:
            notes.append(f"offset held: {why_held}")
        reason = "accepted" + (f" ({'; '.join(notes)})" if notes else "")
        after = DefocusCalibration(scale=g_new, offset_m=o_new)
        return self._decision(series_index, True, reason, clipped, fit, before, after)

    def _fit(
        self, c: np.ndarray, y: np.ndarray, s: np.ndarray, held_offset_m: float
    ) -> tuple[_Fit | None, str | None, str | None]:
        """Choose the model per fit_offset and fit it.

        Returns (the fit in metres or None, a rejection reason or None, why the offset was held or None).
        """
        # Work in units of the largest command so that the fit's numbers are O(1) whatever the magnitudes.
        length = float(np.max(np.abs(c)))
        if not length > 0:
            return None, "degenerate: every commanded defocus is zero, so the scale is undetermined", None
        with np.errstate(all="ignore"):  # an overflow here makes _wls return None: a degenerate fit
            cn, yn, sn = c / length, y / length, s / length
        max_sigma_offset = self._config.max_offset_sigma_m
        mode = self._config.fit_offset
        why_held: str | None = None
        if mode == "always":
            full = _to_metres(_wls(cn, yn, sn, None), length)
            if full is None:
                return None, "degenerate: the offset is undetermined (needs two distinct commanded values)", None
            assert full.sigma_offset is not None
            if not full.sigma_offset <= max_sigma_offset:
                return full, f"sigma: offset sigma {full.sigma_offset:.3g} m > {max_sigma_offset:.3g} m", None
            return full, None, None
        if mode == "never":
            why_held = "fit_offset is never"
        elif len(c) < 3:
            why_held = "fewer than three images, too few to check the offset's fit"
        elif _proportional(cn, yn):
            why_held = "the estimates are proportional to the commands, so they do not determine the offset"
        else:
            full = _to_metres(_wls(cn, yn, sn, None), length)
            if full is None:
                why_held = "the commanded values are not distinct enough to separate scale and offset"
            elif not (full.sigma_offset or 0.0) <= max_sigma_offset:
                why_held = f"its fitted sigma {full.sigma_offset:.3g} m > {max_sigma_offset:.3g} m"
            else:
                return full, None, None
        held_fit = _to_metres(_wls(cn, yn, sn, held_offset_m / length), length)
        if held_fit is None:
            return None, "degenerate: the scale fit failed (non-finite or singular)", None
        return held_fit, None, why_held

    # ---- helpers ---------------------------------------------------------------------------------
    @staticmethod
    def _series_index(estimate: Any) -> int:
        try:
            return int(getattr(estimate, "series_index", -1))
        except (TypeError, ValueError, OverflowError):
            return -1

    @staticmethod
    def _arrays(estimate: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray] | str:
        """The estimate's three arrays as float64, or why they are unusable. Re-checks what the model validates:
        an estimate may have been built with model_construct or mutated after validation."""
        try:
            c, y, s = (
                np.asarray(getattr(estimate, name), dtype=np.float64).ravel()
                for name in ("commanded_m", "estimated_true_m", "sigma_m")
            )
        except (AttributeError, TypeError, ValueError, OverflowError) as exc:
            return f"not numeric arrays ({exc})"
        if not (len(c) == len(y) == len(s)) or len(c) == 0:
            return f"lengths {len(c)}, {len(y)}, {len(s)} must be equal and >= 1"
        if not (np.all(np.isfinite(c)) and np.all(np.isfinite(y)) and np.all(np.isfinite(s))):
            return "non-finite values"
        if not np.all(s > 0):
            return "sigma must be > 0"
        return c, y, s

    def _decision(
        self,
        series_index: int,
        accepted: bool,
        reason: str,
        clipped: bool,
        fit: _Fit | None,
        before: DefocusCalibration,
        after: DefocusCalibration,
    ) -> FeedbackDecision:
        return FeedbackDecision(
            series_index=series_index,
            accepted=accepted,
            reason=reason,
            clipped=clipped,
            estimate_scale=None if fit is None else fit.scale,
            estimate_offset_m=None if fit is None else fit.offset,
            sigma_scale=None if fit is None else fit.sigma_scale,
            sigma_offset_m=None if fit is None else fit.sigma_offset,
            offset_fitted=fit is not None and fit.offset is not None,
            reduced_chi2=None if fit is None else fit.reduced_chi2,
            before=before,
            after=after,
            t_epoch_s=float(self._clock()),
        )

    def _check_in_bounds(self, cal: DefocusCalibration, what: str) -> None:
        lo, hi = self._config.scale_bounds
        olo, ohi = self._config.offset_bounds_m
        if not (lo <= cal.scale <= hi and olo <= cal.offset_m <= ohi):
            raise ValueError(f"{what} {cal} lies outside the configured bounds")

    # ---- persistence -----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The run state as plain JSON types (no NaN): calibration, initial, frozen flag and history."""
        return {
            "version": STATE_VERSION,
            "initial": self._initial.model_dump(mode="json"),
            "calibration": self._calibration.model_dump(mode="json"),
            "frozen": self._frozen,
            "history": [d.model_dump(mode="json") for d in self._history],
        }

    @classmethod
    def from_state(
        cls, config: FeedbackConfig, state: dict[str, Any], *, clock: Callable[[], float] = time.time
    ) -> DefocusFeedback:
        """Rebuild from state(). Raises ValueError for a malformed state or one outside config's bounds."""
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ValueError(f"not a feedback state of version {STATE_VERSION}")
        try:
            initial = DefocusCalibration.model_validate(state["initial"])
            calibration = DefocusCalibration.model_validate(state["calibration"])
            history = [FeedbackDecision.model_validate(d) for d in state["history"]]
            frozen = state["frozen"]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed feedback state: {exc!r}") from exc
        if not isinstance(frozen, bool):
            raise ValueError("malformed feedback state: frozen must be a bool")
        fb = cls(config, initial, clock=clock)
        fb._check_in_bounds(calibration, "persisted calibration")
        fb._calibration = calibration
        fb._frozen = frozen
        fb._history = history
        return fb
