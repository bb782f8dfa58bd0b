"""The parameterised microscope the AD reconstructor fits: unknowns, their units, and the images they make.

Every unknown is stored in a unit that makes one step of size ~1 meaningful, because L-BFGS sees all of
them through one gradient:

- phase = phase0 + P c + a plane (ramp, rad/px), with P a Fourier preconditioner 1 + (q0/q)^2 that boosts
  low frequencies (they otherwise converge slowly); c in rad.
- amplitude = amplitude0 exp(a).
- defocus: df_n = base_n (1 + rel_n). `scale` (default): rel = 0, the common scale is set by the
  solver's data-only fit (which moves base). `per_image`: rel_n = 1e-3 r_n minus its mean, refined by
  gradient on top of that scale; images with base 0 pinned. Per-image values are less well determined
  (the images near focus trade their defocus against the fine detail of the phase).
- theta_c = theta_c0 exp(t).
- astigmatism (a_c, a_s) = 1e-7 m (u, v).
- shifts (dy, dx) in pixels; the reference image is pinned. A linear phase ramp shifts each image by
  lambda df grad(phi) / (2 pi) (a uniform in-plane induction deflects the beam), which a drift growing
  linearly with defocus imitates exactly. Convention (docs/conventions.md): drift has no component
  linear in defocus: `shifts()` projects it out (through the reference image), so whatever moves the
  images in proportion to their defocus is the phase's ramp, which the result reports separately.
- scale_n = exp(k_n), the per-image intensity scale.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ltemlive.optics.forward import ImageModel

ASTIG_UNIT_M = 1e-7
DEFOCUS_REL_UNIT = 1e-3
DEFOCUS_MIN_UNIT_M = 1e-6
THETA_LOG_BOUND = 2.0
RAMP_UNIT = 1e-3  # rad per pixel


class SeriesModel(torch.nn.Module):
    def __init__(
        self,
        image_model: ImageModel,
        defocus_base_m,
        *,
        phase0: torch.Tensor,
        amplitude0: torch.Tensor,
        theta_c0: float,
        astig0: tuple[float, float] = (0.0, 0.0),
        shifts0: torch.Tensor | None = None,
        log_scales0: torch.Tensor | None = None,
        preconditioner_q0: float = 0.02,
        reference: int = 0,
        defocus_mode: str = "scale",
        defocus_nominal_m=None,
    ):
        super().__init__()
        im = image_model
        self.im = im
        dt, dev = im.dtype, im.device
        n = len(defocus_base_m)
        self.n = n
        self.reference = reference
        if defocus_mode not in ("scale", "per_image"):
            raise ValueError(f"defocus_mode must be 'scale' or 'per_image', got {defocus_mode!r}")
        self.defocus_mode = defocus_mode
        base = torch.as_tensor(defocus_base_m, dtype=torch.float64)
        self.register_buffer("defocus_base", base.to(dev, dt))
        unit = torch.clamp(base.abs() * DEFOCUS_REL_UNIT, min=DEFOCUS_MIN_UNIT_M)
        self.register_buffer("defocus_unit", unit.to(dev, dt))
        self.register_buffer("defocus_free", (base != 0).to(dev, dt))
        self.theta_c0 = float(max(theta_c0, 1e-9))
        # The unknown maps live on the whole padded grid under `extend` (the margin is fitted too).
        grid_shape = im.padded_shape if im.padding == "extend" else im.shape
        # A margin that bridges opposite edges (periodic_margin) holds what the start says of the part of the phase
        # the images barely see (a stray field's net step): the prior leaves it alone (regularised_phase), vortex
        # removal counts only the field of view's cores, and every later phase is padded the same way (set_phase).
        self.bridged = bridges(phase0 if phase0.shape == im.shape else im.crop(phase0), im)
        if phase0.shape == im.shape and grid_shape != im.shape:
            phase0, amplitude0 = self._pad_phase(phase0.to(dev, dt)), im.pad(amplitude0.to(dev, dt))
        self.register_buffer("phase0", phase0.to(dev, dt))
        self.register_buffer("amplitude0", amplitude0.to(dev, dt))
        self.register_buffer("precond", _preconditioner(grid_shape, preconditioner_q0, dev, dt))
        self.register_buffer("precond_half", self.precond[:, : grid_shape[1] // 2 + 1].contiguous())

        # Shift projection: s -> s - s_ref - b (df - df_ref), b the least-squares slope over the images.
        x = torch.as_tensor(defocus_base_m if defocus_nominal_m is None else defocus_nominal_m, dtype=torch.float64)
        x = x - x[reference]
        one_ref = torch.zeros(n, dtype=torch.float64)
        one_ref[reference] = 1.0
        proj = torch.eye(n, dtype=torch.float64) - one_ref[None, :]  # s - s_ref
        if float(x.square().sum()) > 0:
            proj = proj - torch.outer(x, x) @ proj / x.square().sum()
        self.register_buffer("shift_proj", proj.to(dev, dt))

        z = dict(device=dev, dtype=dt)
        self.c = torch.nn.Parameter(torch.zeros(grid_shape, **z))
        # The phase's linear ramp, explicit (rad/px in RAMP_UNIT): a plane over the padded grid is not a Fourier mode,
        # so through c alone L-BFGS moves it slowly.
        self.ramp = torch.nn.Parameter(torch.zeros(2, **z))
        hh, ww = grid_shape
        self.register_buffer("plane_y", (torch.arange(hh, **z) - (hh - 1) / 2)[:, None].contiguous())
        self.register_buffer("plane_x", (torch.arange(ww, **z) - (ww - 1) / 2)[None, :].contiguous())
        self.a = torch.nn.Parameter(torch.zeros(grid_shape, **z))
        self.r = torch.nn.Parameter(torch.zeros(n, **z))
        self.t = torch.nn.Parameter(torch.zeros((), **z))
        self.astig_uv = torch.nn.Parameter(torch.tensor(astig0, **z) / ASTIG_UNIT_M)
        self.s = torch.nn.Parameter(torch.zeros(n, 2, **z) if shifts0 is None else shifts0.to(dev, dt).clone())
        self.k = torch.nn.Parameter(torch.zeros(n, **z) if log_scales0 is None else log_scales0.to(dev, dt).clone())
        self._transfer_cache: torch.Tensor | None = None
        self._blur_cache: torch.Tensor | None = None

    # -- derived physical quantities ------------------------------------------------------------------
    def phase(self) -> torch.Tensor:
        # Real transforms: c and the preconditioner are real and even, half the work of complex ones.
        corr = torch.fft.irfft2(torch.fft.rfft2(self.c) * self.precond_half, s=self.c.shape)
        r = self.ramp * RAMP_UNIT
        return self.phase0 + corr + (r[0] * self.plane_y + r[1] * self.plane_x)

    @torch.no_grad()
    def ramp_rad_per_px(self) -> tuple[float, float]:
        """The least-squares plane of the phase over the field of view: (d phi/dy, d phi/dx) per pixel.

        Closed form: on a full grid the centred coordinates are orthogonal to each other and to the constant,
        so each slope is a ratio of sums - the same numbers as a least-squares solve, but reproducible to the
        last bit from one process to the next (LAPACK's lstsq was not)."""
        p = self.phase_fov().double().cpu().numpy()
        h, w = p.shape
        y = np.arange(h, dtype=np.float64) - (h - 1) / 2
        x = np.arange(w, dtype=np.float64) - (w - 1) / 2
        gy = float(np.sum(y[:, None] * p) / (w * np.sum(y * y))) if h > 1 else 0.0
        gx = float(np.sum(x[None, :] * p) / (h * np.sum(x * x))) if w > 1 else 0.0
        return gy, gx

    def regularised_phase(self) -> torch.Tensor:
        """The phase the curvature prior sees: the whole grid, or only the field of view when the margin bridges
        opposite edges. The bridge's curvature would otherwise pull the edges together, and with them the net step
        the images cannot see: on the full-size magnetic needle (simulator/cases.py) the edge step went 17.6 -> 2.9
        rad (truth 15.6) and the RMSE 0.64 -> 4.93 rad (TIE 1.47); with the prior on the field of view, 16.1 rad and
        0.68 rad. The margin is then fixed by the data near the edges only, and beyond them by the start."""
        return self.phase_fov() if self.bridged else self.phase()

    def phase_fov(self) -> torch.Tensor:
        """The phase on the field of view (the camera frame)."""
        p = self.phase()
        return self.im.crop(p) if p.shape != self.im.shape else p

    def amplitude_fov(self) -> torch.Tensor:
        a = self.amplitude()
        return self.im.crop(a) if a.shape != self.im.shape else a

    def amplitude(self) -> torch.Tensor:
        return self.amplitude0 * torch.exp(self.a)

    def defocus(self) -> torch.Tensor:
        if self.defocus_mode == "scale":
            return self.defocus_base
        # The common part of r (a global defocus scale) is removed: together with the phase scale it is
        # nearly invisible in the data, so a gradient step along it follows the regulariser instead
        # (shrinking the phase, inflating the defocus). The solver sets the global scale by a data-only
        # scan; r refines the differences between images (offset, per-image errors).
        free = self.defocus_free
        r = self.r * free
        rel = r * self.defocus_unit / self.defocus_base.abs().clamp_min(DEFOCUS_MIN_UNIT_M)
        common = (rel * free).sum() / free.sum().clamp_min(1)
        return self.defocus_base * (1 + (rel - common) * free)

    def theta_c(self) -> torch.Tensor:
        # Soft bound: within a factor e^2 of the start, so a wild line-search trial cannot reach inf.
        return self.theta_c0 * torch.exp(THETA_LOG_BOUND * torch.tanh(self.t / THETA_LOG_BOUND))

    @torch.no_grad()
    def set_theta_c(self, theta_c_rad: float) -> None:
        """Put theta_c at a value (held just inside the soft bound when beyond it)."""
        x = math.log(max(float(theta_c_rad), 1e-30) / self.theta_c0) / THETA_LOG_BOUND
        self.t.fill_(math.atanh(min(max(x, -0.999999), 0.999999)) * THETA_LOG_BOUND)

    def astig(self) -> torch.Tensor:
        return self.astig_uv * ASTIG_UNIT_M

    def shifts(self) -> torch.Tensor:
        return self.shift_proj @ self.s

    def scales(self) -> torch.Tensor:
        return torch.exp(self.k)

    # -- image formation ------------------------------------------------------------------------------
    def transfer(self) -> torch.Tensor:
        a = self.astig()
        return self.im.transfer(self.defocus(), theta_c_rad=self.theta_c(), astig=(a[0], a[1]))

    def source_blur(self) -> torch.Tensor | None:
        a = self.astig()
        return self.im.source_blur(self.defocus(), theta_c_rad=self.theta_c(), astig=(a[0], a[1]))

    def freeze_optics(self, frozen: bool) -> None:
        """Cache transfer function x shift ramp while the optics (defocus, theta_c, astigmatism, shifts)
        are not being changed: it halves the cost of a phase iteration."""
        if frozen:
            with torch.no_grad():
                self._transfer_cache = self.transfer() * self.im.shift_ramp(self.shifts())
                self._blur_cache = self.source_blur()
        else:
            self._transfer_cache = self._blur_cache = None

    def fused_inputs(self) -> dict | None:
        """While the optics are frozen: the arguments of a fused.FusedDataLoss call (phase and amplitude on the
        padded grid, the cached transfer x shift ramp and source blur, the scales) and the crop offset, such
        that the loss of forward() equals the fused loss to rounding. None otherwise."""
        if self._transfer_cache is None:
            return None
        return dict(
            phase=self.im._on_grid(self.phase(), "phase", fill=0.0),
            amplitude=self.im._on_grid(self.amplitude(), "amplitude", fill=1.0),
            transfer=self._transfer_cache,
            blur=self._blur_cache,
            scales=self.scales(),
            top=self.im.top,
            left=self.im.left,
        )

    def forward(self) -> torch.Tensor:
        spectrum = self.im.wave_spectrum(self.phase(), self.amplitude())
        if self._transfer_cache is not None:
            images = self.im.propagate(spectrum, self._transfer_cache, blur=self._blur_cache)
        else:
            images = self.im.propagate(spectrum, self.transfer(), self.shifts(), self.source_blur())
        return images * self.scales()[:, None, None]

    # -- warm starts and re-basing --------------------------------------------------------------------
    @torch.no_grad()
    def rebase_defocus(self, new_base) -> None:
        """Move the defocus origin (e.g. after a global scan) and reset the relative parameters."""
        base = torch.as_tensor(new_base, dtype=self.defocus_base.dtype, device=self.defocus_base.device)
        self.defocus_base.copy_(base)
        self.defocus_unit.copy_(torch.clamp(base.abs() * DEFOCUS_REL_UNIT, min=DEFOCUS_MIN_UNIT_M))
        self.r.zero_()

    def _pad_phase(self, fov: torch.Tensor) -> torch.Tensor:
        """A field-of-view phase on the model's grid: bridged or mirror-padded, as the start was."""
        return bridged_margin(fov, self.im) if self.bridged else self.im.pad(fov)

    @torch.no_grad()
    def set_amplitude0(self, amplitude_fov: torch.Tensor) -> None:
        """Replace the starting amplitude (field of view, padded as at construction); the fitted part `a` stays."""
        a = amplitude_fov.to(self.amplitude0.device, self.amplitude0.dtype)
        self.amplitude0.copy_(a if a.shape == self.amplitude0.shape else self.im.pad(a))

    @torch.no_grad()
    def set_phase(self, phase: torch.Tensor) -> None:
        """Restart the phase from `phase` (on the model's grid, or on the field of view: then padded)."""
        if phase.shape != self.phase0.shape:
            phase = self._pad_phase(phase)
        self.phase0.copy_(phase)
        self.c.zero_()
        self.ramp.zero_()


# Opposite edges of the field of view whose phases differ by more than this (median along the edge, rad) mark a
# specimen with a net flux or potential step across the field, whose margin must bridge the difference
# (periodic_margin). Measured on the starts of the test suite (simulator/cases.py, seeds 0 and 1): the magnetic
# needle 15.6-17.4 rad (its truth 15.5); every other case 0.1-6.9 rad (their truths 0-0.75: what TIE starts put there).
EDGE_STEP_RAD = 3 * math.pi


def edge_step(fov: torch.Tensor) -> float:
    """The larger median |difference| between opposite edges of a field-of-view phase (rad), left-right or
    top-bottom."""
    fov = fov.detach()
    lr = (fov[:, -1] - fov[:, 0]).abs().median()
    tb = (fov[-1, :] - fov[0, :]).abs().median()
    return float(torch.maximum(lr, tb))


def periodic_margin(fov: torch.Tensor, im) -> torch.Tensor:
    """A field-of-view phase on the padded grid. Mirror padding, unless opposite edges differ by more than
    EDGE_STEP_RAD (3 pi): then the margin is a cubic (value and slope continuous at both edges) from each edge to the
    opposite one across the grid's periodic border, rows first, then the columns of the whole width.

    A mirror-padded phase jumps at the periodic border by the difference between opposite edges (about 16 rad
    across a magnetic needle's field): the wave wraps there, and where the jump's multiple of 2 pi changes along
    the border it has vortex cores, all in the margin. Removing those (vortices.py) subtracted a long-range field
    from the field of view (needle: 1.9 -> 5.0 rad RMSE in one removal). A smooth margin passes the difference on
    and leaves the wave free of them; continuing the edges' slopes keeps the edge rows free of the kink (a
    curvature, which the images see as TIE contrast) that a linear margin puts there. Where opposite edges agree
    (films, isolated objects without net flux), mirror padding with the removal of the border's cores
    converged better (vortex array, stripes, resolution pattern: measured, session 9)."""
    return bridged_margin(fov, im) if bridges(fov, im) else im.pad(fov)


def bridges(fov: torch.Tensor, im) -> bool:
    """Whether periodic_margin bridges this field-of-view phase: a fitted margin (`extend`) and opposite edges that
    differ by more than EDGE_STEP_RAD."""
    return im.padding == "extend" and im.padded_shape != im.shape and edge_step(fov) > EDGE_STEP_RAD


def bridged_margin(fov: torch.Tensor, im) -> torch.Tensor:
    """The cubic margin of periodic_margin, whatever the edges."""
    (hp, wp), (h, w), top, left = im.padded_shape, im.shape, im.top, im.left
    out = fov.new_zeros((hp, wp))
    out[top : top + h, left : left + w] = fov
    out[top : top + h] = _bridge(out[top : top + h], left, w, dim=1)
    return _bridge(out, top, h, dim=0)


def _bridge(x: torch.Tensor, start: int, n: int, dim: int) -> torch.Tensor:
    """Fill x outside [start, start + n) along `dim` (periodic) with cubic Hermite curves from the last to the first
    inside slice, matching their values and slopes (the mean of the last two differences on each side)."""
    x = x.movedim(dim, 0).clone()
    size = x.shape[0]
    gap = size - n
    if gap == 0 or n < 3:
        return x.movedim(0, dim)
    a, b = x[start + n - 1], x[start]
    sa = (x[start + n - 1] - x[start + n - 3]) / 2
    sb = (x[start + 2] - x[start]) / 2
    span = gap + 1
    t = (torch.arange(1, gap + 1, device=x.device, dtype=x.dtype) / span).reshape(-1, *([1] * (x.ndim - 1)))
    h00, h10 = 2 * t**3 - 3 * t**2 + 1, t**3 - 2 * t**2 + t
    h01, h11 = -2 * t**3 + 3 * t**2, t**3 - t**2
    idx = (start + n + torch.arange(gap, device=x.device)) % size
    x[idx] = h00 * a + h10 * span * sa + h01 * b + h11 * span * sb
    return x.movedim(0, dim)


def _preconditioner(shape, q0: float, device, dtype) -> torch.Tensor:
    """1 + (q0/q)^2 with q in cycles per pixel (q = 0 left at 1: the mean phase is irrelevant)."""
    h, w = shape
    qy = torch.fft.fftfreq(h, device=device, dtype=torch.float64)[:, None]
    qx = torch.fft.fftfreq(w, device=device, dtype=torch.float64)[None, :]
    q2 = qx**2 + qy**2
    p = torch.where(q2 > 0, 1 + q0**2 / q2.clamp_min(1e-30), torch.ones_like(q2))
    return p.clamp_max(1e4 if q0 > 0 else 1).to(dtype)
