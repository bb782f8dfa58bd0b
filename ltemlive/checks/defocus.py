"""Is the instrument's defocus what ltemlive thinks it is? Sign and scale measured from a +-df pair of images.

The defocus feedback loop trusts the calibrated read-back (docs/conventions.md: df > 0 is over-focus). A vendor
calibration with the wrong sign would make every correction push the wrong way, so before any feedback is applied
the operator puts a *known feature* in the middle of the field of view and this check acquires -df, 0, +df
around the current focus through the configured backend and measures, from the images alone:

* the **sign**: the phase reconstructed with the nominal (commanded) values must show the feature with its known
  sign - a particle (material on vacuum or a thinner support: mean inner potential, phase higher than its
  surroundings) or a hole in a film (lower). A pure phase object imaged at -df looks exactly like the
  opposite-phase object at +df, so a reversed convention shows up as a feature of the wrong sign and cannot show
  up any other way; that is why the feature's sign must be known, and why it must be non-magnetic (or its
  magnetic phase small): a vortex's magnetic phase can have either sign;
* the **scale** (true / commanded defocus), from the Fresnel fringes' wave-optical dependence on the absolute
  defocus, by profile likelihood: the phase is re-fitted with the defocus held at each of a few trial scales around
  the AD reconstructor's own refined scale, and the scale is the vertex of the data misfit over them. The refined
  scale alone is not enough on a small field: the phase co-adapts between its scale fits, and on the test's 96^2
  disc they walked +6 % from an exact nominal, so a true scale 10 % low came out 0.97 and was reported consistent
  (session 18); the profile's vertex was within 1-1.5 % at -10 %, 0 and +10 %.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

__all__ = [
    "EXIT_CONSISTENT",
    "EXIT_INCONCLUSIVE",
    "EXIT_INCONSISTENT",
    "DefocusCheck",
    "acquire_and_check",
    "measure",
]

EXIT_CONSISTENT = 0
EXIT_INCONSISTENT = 3  # reversed sign or a scale off by more than the tolerance: do not apply feedback
EXIT_INCONCLUSIVE = 4  # too little contrast (beam blanked, no feature, df too small): nothing was measured

#: the AD scale fit's systematic error on small fields (docs/reconstruction.md, measured 1.6-4 % in the tests):
#: added in quadrature to its statistical sigma so a verdict never rests on a sigma the method cannot deliver
SCALE_SYSTEMATIC = 0.03
#: the feature's phase contrast must exceed this many standard deviations of the surroundings' phase
SIGN_MIN_Z = 3.0
#: spacing of the profile's trial scales, the number either side of the refined one, and the widest range walked
PROFILE_STEP = 0.04
PROFILE_HALF = 1
PROFILE_RANGE = (0.5, 1.5)
#: phase iterations per trial (each from its own TIE start, the defocus held)
PROFILE_ITER = 100

Feature = Literal["particle", "hole"]


@dataclass(frozen=True)
class DefocusCheck:
    sign: int  # +1: the instrument's sign is the project's; -1: reversed; 0: inconclusive
    feature_contrast_rad: float  # phase of the feature minus its surroundings, reconstructed with nominal values
    feature_z: float  # that contrast in standard deviations of the surroundings
    scale: float  # |true / commanded defocus|
    scale_sigma: float
    scale_tolerance: float
    defocus_nominal_m: list[float]
    verdict: str
    exit_code: int

    def as_dict(self) -> dict[str, Any]:
        """The fields, with a value that was not measured (NaN, or an infinite sigma) as None: strict JSON."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}

    def report(self) -> str:
        sign = {1: "same as the convention (df > 0 over-focus)", -1: "REVERSED", 0: "not measured"}[self.sign]
        return (
            f"defocus sign : {sign} (feature phase contrast {self.feature_contrast_rad:+.3g} rad, "
            f"{self.feature_z:.1f} sigma)\n"
            f"defocus scale: {self.scale:.3f} +- {self.scale_sigma:.3f} (true / commanded; tolerance "
            f"+-{self.scale_tolerance:.0%})\n"
            f"verdict      : {self.verdict}"
        )


def _regions(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The feature (central disc, a sixth of the field across) and its surroundings (the field's outer ring)."""
    h, w = shape
    y, x = np.mgrid[:h, :w]
    r = np.hypot((y - (h - 1) / 2) / h, (x - (w - 1) / 2) / w)
    return r < 1 / 12, r > 0.42


def measure(
    images: np.ndarray,
    defocus_m: Sequence[float],
    pixel_size_m: float,
    voltage_v: float,
    *,
    feature: Feature = "particle",
    scale_tolerance: float = 0.05,
    max_iter: int = 100,
) -> DefocusCheck:
    """Sign and scale from a through-focus set whose ``defocus_m`` are the *commanded* values relative to focus."""
    from ltemlive.optics.params import MicroscopeParams
    from ltemlive.reconstruct import ReconstructionConfig, reconstruct
    from ltemlive.series import Series

    images = np.asarray(images, dtype=np.float64)
    nominal = np.asarray(defocus_m, dtype=np.float64)
    means = images.reshape(len(images), -1).mean(axis=1)
    if not np.all(means > 0) or float(np.std(images / means[:, None, None])) < 1e-4:
        return _inconclusive(nominal, scale_tolerance, "no image contrast (beam blanked? no feature in view?)")
    series = Series(
        images=images, defocus_m=nominal, pixel_size_m=float(pixel_size_m),
        microscope=MicroscopeParams(voltage_v=float(voltage_v)),
    )
    # A wide prior and scan: the point is to measure the calibration, not to assume it is nearly right.
    cfg = ReconstructionConfig(
        defocus_model="scale", defocus_prior=1.0, defocus_scan_range=0.5, max_iter=max_iter
    )
    result = reconstruct(series, cfg)
    centre, ring = _regions(result.phase.shape)
    contrast = float(result.phase[centre].mean() - result.phase[ring].mean())
    z = abs(contrast) / max(float(result.phase[ring].std()), 1e-12)
    expected = 1 if feature == "particle" else -1
    sign = 0 if z < SIGN_MIN_Z else (expected if contrast > 0 else -expected)

    free = nominal != 0
    refined = float(np.mean(np.abs(result.defocus_m[free] / nominal[free])))
    scale, stat, _ = scale_profile(series, refined)
    sigma = math.hypot(stat, SCALE_SYSTEMATIC)
    scale_off = abs(scale - 1) > scale_tolerance

    problems = []
    if sign == -1:
        problems.append("the defocus sign is REVERSED: negate the calibration scale before any feedback")
    if scale_off:
        problems.append(f"the defocus scale is off by {scale - 1:+.1%}: multiply the calibration scale by {scale:.3f}")
    if problems:
        verdict, code = "INCONSISTENT - " + "; ".join(problems), EXIT_INCONSISTENT
    elif sign == 0:
        verdict, code = (
            f"INCONCLUSIVE - the feature's phase ({contrast:+.3g} rad) is within {SIGN_MIN_Z:g} sigma of its "
            "surroundings: centre a known feature, or use a larger --defocus"
        ), EXIT_INCONCLUSIVE
    else:
        verdict, code = "consistent with the convention", EXIT_CONSISTENT
    return DefocusCheck(sign, contrast, z, scale, sigma, scale_tolerance, [float(d) for d in nominal], verdict, code)


def scale_profile(series, around: float) -> tuple[float, float, list[tuple[float, float]]]:
    """The common defocus scale (true / commanded) by profile likelihood, and its one-sigma.

    Trial scales PROFILE_STEP apart, PROFILE_HALF either side of ``around`` (walked further while the best one is at
    an end, within PROFILE_RANGE); at each the phase is fitted afresh with the defocus held at the trial's values
    (``series.defocus_m`` times the scale), PROFILE_ITER iterations. The evidence (inflated negative log-likelihood,
    objective.Objective.evidence, one inflation for all: the best trial's) is fitted by a parabola through the best
    trial and its two neighbours: the vertex is the scale, 1 / sqrt(curvature) its sigma. Returns (scale, sigma,
    [(trial scale, data loss), ...])."""
    from ltemlive.reconstruct import ReconstructionConfig, Reconstructor
    from ltemlive.series import Series

    cfg = ReconstructionConfig(free={"defocus": False}, max_iter=PROFILE_ITER)
    losses: dict[int, float] = {}  # trial k (scale around + k PROFILE_STEP) -> its data loss
    objective = None

    def trial(k: int) -> float:
        nonlocal objective
        if k not in losses:
            g = round(around + k * PROFILE_STEP, 6)
            trial_series = Series(images=series.images, defocus_m=series.defocus_m * g,
                                  pixel_size_m=series.pixel_size_m, microscope=series.microscope)
            rec = Reconstructor(trial_series, cfg)
            losses[k] = float(rec.run().history[-1]["data_loss"])
            objective = rec.objective
        return losses[k]

    lo, hi = -PROFILE_HALF, PROFILE_HALF
    for k in range(lo, hi + 1):
        trial(k)
    while True:  # walk the window while the best trial is at one of its ends
        best = min(range(lo, hi + 1), key=trial)
        if best == lo and around + (lo - 1) * PROFILE_STEP >= PROFILE_RANGE[0]:
            lo -= 1
            trial(lo)
        elif best == hi and around + (hi + 1) * PROFILE_STEP <= PROFILE_RANGE[1]:
            hi += 1
            trial(hi)
        else:
            break
    profile = [(round(around + k * PROFILE_STEP, 6), losses[k]) for k in sorted(losses)]
    if best in (lo, hi):  # at the edge of the allowed range: no vertex to fit
        return around + best * PROFILE_STEP, math.inf, profile
    inflation = objective.inflation(min(losses.values()))
    e_minus, e_0, e_plus = (objective.evidence(trial(k), inflation) for k in (best - 1, best, best + 1))
    d2 = e_minus - 2 * e_0 + e_plus
    if not d2 > 0:
        return around + best * PROFILE_STEP, math.inf, profile
    vertex = around + (best + 0.5 * (e_minus - e_plus) / d2) * PROFILE_STEP
    return vertex, PROFILE_STEP / math.sqrt(d2), profile


def _inconclusive(nominal: np.ndarray, tol: float, why: str) -> DefocusCheck:
    return DefocusCheck(0, 0.0, 0.0, math.nan, math.nan, tol, [float(d) for d in nominal], "INCONCLUSIVE - " + why,
                        EXIT_INCONCLUSIVE)


def _voltage(config: Mapping[str, Any], instrument: Mapping[str, Any]) -> float | None:
    optics = config.get("optics") or {}
    if "voltage_v" in optics:
        return float(optics["voltage_v"])
    if instrument.get("backend", "simulated") == "simulated":
        from simulator.series import SimulationConfig

        sim = (instrument.get("simulated") or {}).get("simulation") or {}
        return SimulationConfig.model_validate(sim).voltage_v
    return None


def acquire_and_check(
    config: Mapping[str, Any],
    *,
    defocus_m: float = 1e-3,
    exposure_s: float = 1.0,
    feature: Feature = "particle",
    scale_tolerance: float = 0.05,
    voltage_v: float | None = None,
    pixel_size_m: float | None = None,
) -> DefocusCheck:
    """Acquire focus - d, focus, focus + d around the current read-back through the configured backend (its
    safety limits apply; the starting defocus is restored) and :func:`measure` them.

    ``config`` is an instrument config (``backend: ...``) or a session config with an ``instrument`` section.
    """
    from drivers.acquire import acquire_through_focus
    from drivers.errors import NotAvailable
    from drivers.factory import build, check_config
    from drivers.interface import Capability

    instrument = config.get("instrument", config) if "backend" not in config else config
    check_config(instrument)
    volts = voltage_v if voltage_v is not None else _voltage(config, instrument)
    if volts is None:
        raise ValueError("the accelerating voltage is unknown: give --voltage-v (or optics.voltage_v)")
    microscope, camera = build(instrument)
    try:
        if Capability.BEAM_BLANK in microscope.capabilities():
            try:
                if microscope.get_beam_blanked():
                    raise NotAvailable("the beam is blanked: unblank it on the feature and run the check again")
            except NotAvailable as exc:
                if "blanked" in str(exc):
                    raise
        focus = microscope.get_defocus()
        relative = [-defocus_m, 0.0, defocus_m]
        frames = acquire_through_focus(microscope, camera, [focus + r for r in relative], exposure_s)
    finally:
        camera.close()
        microscope.close()
    px = pixel_size_m if pixel_size_m is not None else frames[0].metadata.pixel_size_m
    if px is None:
        raise ValueError("the camera reports no pixel size: give --pixel-size-m")
    images = np.stack([np.asarray(f.data, dtype=np.float64) for f in frames])
    return measure(images, relative, px, volts, feature=feature, scale_tolerance=scale_tolerance)
