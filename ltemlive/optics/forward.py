"""Batched, differentiable image formation: N defocused images of one exit wave in one pass.

    I_n(r) = | IFFT( FFT(A exp(i phi)) T(q; df_n, theta_c, astig) S_n(q) ) |^2,  cropped

S_n is a Fourier shift ramp (per-image drift, sub-pixel). Partial spatial coherence, two models:
- `blur` (the reconstructor's default): T carries no spatial envelope; each image is the coherent one
  blurred by the source: I_n = G_n * |...|^2 with G_n(q) = exp(-(pi theta_c / lambda)^2 (lambda df q +
  Cs lambda^3 q^3)^2), the Fourier transform of the Gaussian source's tilts seen at defocus df (a tilt alpha
  moves the image by df alpha). That is the incoherent sum over source points -- exact for pure defocus,
  Cs negligible at LTEM frequencies -- and it conserves intensity;
- `envelope`: the quasi-coherent textbook form T = exp(-i chi) E(q) on the wave. Right for weak objects, but
  it damps the strongly deflected beams of strong phase objects: the mean intensity of a 1 T, 50 nm vortex
  disc at 1.6 mm falls to 0.72, and a fit of a physical (incoherent) series compensates with a theta_c
  several times too small (issue 9). The exit wave lives on a grid larger than the
field of view so that features do not wrap around:
- `extend`: the caller gives phase and amplitude on the whole padded grid (a reconstruction treats the
  margin as unknowns too: the specimen does not end at the edge of the camera, and light from outside
  the field of view reaches its edge at large defocus); `pad` fills it by mirroring to start;
- `mirror`: the exit wave is reflected at the edges (for an object given only on the field of view);
- `zero`: vacuum outside (phase 0, amplitude 1), with a validity mask marking the pixels that the
  padding cannot reach;
- `periodic`: no padding; right only for periodic synthetic data.

Everything is differentiable with respect to phase, amplitude, per-image defocus, theta_c, astigmatism
and per-image shift.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from ltemlive.constants import wavelength
from ltemlive.optics.params import MicroscopeParams
from ltemlive.optics.transfer import (
    FrequencyGrid,
    astig_cartesian,
    effective_defocus,
    envelope_from,
    pixel_transfer,
    transfer_function,
)

Padding = Literal["extend", "mirror", "zero", "periodic"]
PADDINGS = ("extend", "mirror", "zero", "periodic")


def fft_friendly(n: int) -> int:
    """Smallest m >= n that is a multiple of 32 (or of 8 below 64) with no prime factor above 5.

    Measured with torch on 2 CPU cores: 640^2 transforms at 15 ns/px, 625^2 (= 5^4 squared) at 25 ns/px;
    powers of two in the size matter more than the size itself.
    """
    step = 32 if n > 64 else 8
    m = max(-(-int(n) // step) * step, step)
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += step


def blur_radius_px(max_abs_defocus_m: float, params: MicroscopeParams, pixel_size_m: float) -> int:
    """How far (pixels) defocus carries the signal sideways: lambda |df| q at the highest q that survives.

    A feature of spatial frequency q is displaced by lambda df q. The spatial-coherence envelope kills
    frequencies beyond q ~ 3 / (pi theta_c |df|) (E < 1e-4), and nothing exceeds Nyquist.
    """
    lam = wavelength(params.voltage_v)
    q_max = 0.5 / pixel_size_m
    if params.theta_c_rad > 0 and max_abs_defocus_m > 0:
        q_max = min(q_max, 3.0 / (math.pi * params.theta_c_rad * max_abs_defocus_m))
    return math.ceil(lam * max_abs_defocus_m * q_max / pixel_size_m)


def _check_defocus(defocus_m: torch.Tensor) -> None:
    if defocus_m.ndim != 1:
        raise ValueError(
            f"defocus_m must be a 1-D list of per-image values, got shape {tuple(defocus_m.shape)}"
        )
    if not torch.isfinite(defocus_m).all():
        raise ValueError(f"defocus_m must be finite, got {defocus_m.tolist()}")


class ImageModel:
    """Image formation for one field of view (H, W) on a fixed padded grid.

    Build once per series geometry; call `images` (or `propagate` with a cached transfer function) every
    iteration. Tensors are created on `device` in `dtype` (float32 by default, float64 on request).
    """

    def __init__(
        self,
        shape: tuple[int, int],
        pixel_size_m: float,
        params: MicroscopeParams,
        *,
        max_abs_defocus_m: float = 2e-3,
        padding: Padding = "mirror",
        pad_px: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        coherence: Literal["envelope", "blur"] = "envelope",
        detector: Literal["point", "pixel"] = "point",
    ):
        if coherence not in ("envelope", "blur"):
            raise ValueError(f"coherence must be 'envelope' or 'blur', got {coherence!r}")
        if detector not in ("point", "pixel"):
            raise ValueError(f"detector must be 'point' or 'pixel', got {detector!r}")
        self.coherence = coherence
        self.detector = detector
        if len(shape) != 2 or min(shape) < 2:
            raise ValueError(f"shape must be (H, W) with H, W >= 2, got {shape}")
        if not (math.isfinite(pixel_size_m) and pixel_size_m > 0):
            raise ValueError(f"pixel_size_m must be a finite positive length in metres, got {pixel_size_m}")
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        self.shape = (int(shape[0]), int(shape[1]))
        self.pixel_size_m = float(pixel_size_m)
        self.params = params
        self.padding = padding
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = dtype
        self.wavelength_m = wavelength(params.voltage_v)

        h, w = self.shape
        if padding == "periodic":
            pad = 0
        elif pad_px is None:
            pad = blur_radius_px(max_abs_defocus_m, params, pixel_size_m) + 2
        else:
            pad = int(pad_px)
        hp = fft_friendly(h + 2 * pad) if pad else h
        wp = fft_friendly(w + 2 * pad) if pad else w
        # Put the image at (top, left); the rest of the padded grid is the pad on both sides.
        self.top, self.left = (hp - h) // 2, (wp - w) // 2
        self.padded_shape = (hp, wp)
        self.pad_px = pad
        self.grid = FrequencyGrid.build(self.padded_shape, pixel_size_m, device=self.device, dtype=dtype)
        # The half spectrum of a real image (rfft2: qx >= 0, the Nyquist column positive), for the source blur.
        half = wp // 2 + 1
        g = self.grid
        qx_h = g.qx[:, :half].abs()
        q2_h = g.q2[:, :half]
        safe = torch.where(q2_h > 0, q2_h, torch.ones_like(q2_h))
        self.half_grid = FrequencyGrid(
            qx=qx_h, qy=g.qy, q2=q2_h, q=g.q[:, :half], cos2=g.cos2[:, :half], sin2=2 * qx_h * g.qy / safe,
            pixel_size_m=pixel_size_m,
        )
        # A camera pixel integrates the intensity over its square (transfer.pixel_transfer, on the half spectrum);
        # "point" samples the intensity at the pixel centres.
        self.pixel_mtf = pixel_transfer(self.half_grid) if detector == "pixel" else None

        # Pixels whose image the padding can reach are not trustworthy under zero padding.
        valid = torch.ones(self.shape, dtype=torch.bool, device=self.device)
        if padding == "zero":
            r = min(blur_radius_px(max_abs_defocus_m, params, pixel_size_m), (min(h, w) - 1) // 2)
            if r > 0:
                valid[:r] = valid[-r:] = False
                valid[:, :r] = valid[:, -r:] = False
        self.valid_mask = valid

        # Gather indices for mirror padding: symmetric reflection (edge pixel repeated), valid for any pad
        # width, so the FFT-friendly rounding never has to shrink the pad.
        self._mirror_iy = _mirror_index(hp, h, self.top, self.device)
        self._mirror_ix = _mirror_index(wp, w, self.left, self.device)

    # -- geometry -------------------------------------------------------------------------------------
    def pad(self, x: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """Put a real (..., H, W) map onto the padded grid by the model's padding rule."""
        if self.padded_shape == self.shape:
            return x
        if self.padding in ("mirror", "extend"):
            return x[..., self._mirror_iy[:, None], self._mirror_ix[None, :]]
        hp, wp = self.padded_shape
        h, w = self.shape
        pads = (self.left, wp - w - self.left, self.top, hp - h - self.top)
        return F.pad(x, pads, mode="constant", value=fill)

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.shape
        return x[..., self.top : self.top + h, self.left : self.left + w]

    # -- optics ---------------------------------------------------------------------------------------
    def as_tensor(self, x, dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.as_tensor(x, dtype=dtype or self.dtype, device=self.device)

    def wave_spectrum(self, phase: torch.Tensor, amplitude: torch.Tensor | None = None) -> torch.Tensor:
        """FFT of the padded exit wave A exp(i phi), complex (Hp, Wp).

        phase and amplitude are (H, W) field-of-view maps, padded here by the model's rule, or already
        (Hp, Wp) maps of the whole grid (required for `extend`, accepted for any padding).
        """
        phase = self._on_grid(self.as_tensor(phase), "phase", fill=0.0)
        if amplitude is None:
            amplitude = torch.ones_like(phase)
        else:
            amplitude = self._on_grid(self.as_tensor(amplitude), "amplitude", fill=1.0)
        return torch.fft.fft2(torch.polar(amplitude, phase))

    def _on_grid(self, x: torch.Tensor, name: str, fill: float) -> torch.Tensor:
        if x.shape == self.padded_shape:
            return x
        if x.shape == self.shape and self.padding != "extend":
            return self.pad(x, fill=fill)
        want = self.padded_shape if self.padding == "extend" else f"{self.shape} or {self.padded_shape}"
        raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")

    def transfer(self, defocus_m, *, theta_c_rad=None, astig=None) -> torch.Tensor:
        """T(q) for each defocus, complex (N, Hp, Wp).

        theta_c_rad: scalar (float or tensor); default the microscope's value.
        astig: (a_c, a_s) in metres, Cartesian form (see transfer.astig_cartesian); default the microscope's.
        """
        df = self.as_tensor(defocus_m).reshape(-1)
        _check_defocus(df)
        p = self.params
        if theta_c_rad is None:
            theta_c_rad = p.theta_c_rad
        if astig is None:
            astig = astig_cartesian(p.astig_m, p.astig_azimuth_rad)
        return transfer_function(
            self.grid,
            self.wavelength_m,
            df,
            cs_m=p.cs_m,
            theta_c_rad=theta_c_rad if self.coherence == "envelope" else 0.0,
            focal_spread_m=p.focal_spread_m,
            a_c=astig[0],
            a_s=astig[1],
            aperture_q_max=p.aperture_q_max,
        )

    def source_blur(self, defocus_m, *, theta_c_rad=None, astig=None) -> torch.Tensor | None:
        """G_n(q) on the half spectrum (N, Hp, Wp // 2 + 1), real, under `blur`; None under `envelope`. Both times
        the detector's pixel integration when `detector="pixel"` (a filter on the image, like the source blur)."""
        if self.coherence == "envelope":
            if self.pixel_mtf is None:
                return None
            n = self.as_tensor(defocus_m).reshape(-1).numel()
            return self.pixel_mtf.expand(n, *self.pixel_mtf.shape).contiguous()
        df = self.as_tensor(defocus_m).reshape(-1)
        p = self.params
        if theta_c_rad is None:
            theta_c_rad = p.theta_c_rad
        if astig is None:
            astig = astig_cartesian(p.astig_m, p.astig_azimuth_rad)
        g = self.half_grid
        df_eff = effective_defocus(g, df, astig[0], astig[1])
        blur = envelope_from(g, self.wavelength_m, df_eff, p.cs_m, theta_c_rad, 0.0)
        return blur if self.pixel_mtf is None else blur * self.pixel_mtf

    def shift_ramp(self, shifts_px: torch.Tensor) -> torch.Tensor:
        """exp(-2 pi i q.s) for per-image shifts (N, 2) = (dy, dx) in pixels, complex (N, Hp, Wp)."""
        s = self.as_tensor(shifts_px).reshape(-1, 2) * self.pixel_size_m
        g = self.grid
        arg = -2 * math.pi * (s[:, 0, None, None] * g.qy + s[:, 1, None, None] * g.qx)
        return torch.polar(torch.ones_like(arg), arg)

    def propagate(
        self,
        spectrum: torch.Tensor,
        transfer: torch.Tensor,
        shifts_px: torch.Tensor | None = None,
        blur: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Cropped intensities (N, H, W) from a wave spectrum and a (cached) transfer function and source blur."""
        t = transfer if shifts_px is None else transfer * self.shift_ramp(shifts_px)
        field = torch.fft.ifft2(spectrum * t)
        intensity = field.real.square() + field.imag.square()
        if blur is not None:
            intensity = torch.fft.irfft2(torch.fft.rfft2(intensity) * blur, s=intensity.shape[-2:])
        return self.crop(intensity)

    def images(
        self,
        phase,
        amplitude=None,
        defocus_m=(0.0,),
        *,
        theta_c_rad=None,
        astig=None,
        shifts_px=None,
    ) -> torch.Tensor:
        """Intensities (N, H, W), vacuum = 1, for the given exit wave and per-image defocus (m)."""
        t = self.transfer(defocus_m, theta_c_rad=theta_c_rad, astig=astig)
        blur = self.source_blur(defocus_m, theta_c_rad=theta_c_rad, astig=astig)
        return self.propagate(self.wave_spectrum(phase, amplitude), t, shifts_px, blur)


def _mirror_index(padded: int, n: int, offset: int, device) -> torch.Tensor:
    """Source index of each padded position under symmetric reflection about the image edges."""
    k = torch.arange(padded, device=device) - offset
    k = torch.remainder(k, 2 * n)
    return torch.where(k >= n, 2 * n - 1 - k, k)
