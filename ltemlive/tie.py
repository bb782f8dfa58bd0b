"""Transport-of-intensity (TIE) phase reconstruction, in PyTorch (CPU or CUDA).

Sign convention (docs/conventions.md): df > 0 is over-focus and

    dI/d(df) = -(lambda / 2 pi) div(I grad phi).

With k = 2 pi / lambda and an auxiliary potential psi defined by I grad phi = grad psi, the TIE splits into
two Poisson equations, solved in Fourier space:

    lap psi = -k dI/d(df)                 (1)
    lap phi = div( grad psi / I0 )        (2)

The inverse Laplacian is -1 / (4 pi^2 q^2) (q in cycles/m), with the q = 0 term set to 0 (the mean phase is
not measurable), optionally Tikhonov-regularised. See docs/tie.md for the method choice and boundaries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ltemlive.constants import wavelength

__all__ = [
    "FlippedTIEResult",
    "TIEResult",
    "separate_magnetic_electrostatic",
    "tie_reconstruct",
    "tie_reconstruct_flipped",
]

Method = Literal["auto", "symmetric", "least_squares"]
_METHODS = ("auto", "symmetric", "least_squares")

# Two defocus values form a "+-df pair" when |df_a + df_b| <= _PAIR_RTOL * max(|df_a|, |df_b|): instrument
# readouts are rarely exactly opposite. The difference quotient is then taken over the actual spacing, so
# it is the derivative at the pair's midpoint, which lies within 0.5 % of |df| from focus.
_PAIR_RTOL = 1e-2
# A defocus counts as "in focus" when |df| <= _ZERO_RTOL * max|df| of the series.
_ZERO_RTOL = 1e-6


@dataclass(frozen=True)
class TIEResult:
    """Output of :func:`tie_reconstruct`. Tensors are (H, W) on the device and dtype of the computation.

    phase: reconstructed phase (rad), mean removed.
    dIdz: dI/d(df) at focus of the mean-normalised intensity (1/m).
    in_focus: the mean-normalised in-focus intensity used in the second Poisson solve.
    method: "symmetric" or "least_squares" (what "auto" resolved to).
    defocus_used_m: defocus values (m) of the images that entered dIdz.
    boundary: "mirror" or "periodic".
    tikhonov_q_cut: the regularisation cut-off (1/m), or None.
    """

    phase: torch.Tensor
    dIdz: torch.Tensor
    in_focus: torch.Tensor
    method: str
    defocus_used_m: tuple[float, ...]
    boundary: str
    tikhonov_q_cut: float | None


@dataclass(frozen=True)
class FlippedTIEResult:
    """Output of :func:`tie_reconstruct_flipped`: both components and the two underlying reconstructions,
    all in the orientation of the "up" images."""

    phase_magnetic: torch.Tensor
    phase_electrostatic: torch.Tensor
    up: TIEResult
    flipped: TIEResult


# ----------------------------------------------------------------------------------------------------------
# input handling


def _to_tensor(x, dtype: torch.dtype, device: torch.device | str | None) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to(device=device if device is not None else x.device, dtype=dtype)
    # ascontiguousarray: torch refuses the negative strides of flipped numpy views
    return torch.as_tensor(np.ascontiguousarray(x), dtype=dtype, device=device)


def _float_dtype(x) -> torch.dtype:
    """Keep a float32 tensor float32; everything else is computed in float64."""
    return x.dtype if isinstance(x, torch.Tensor) and x.dtype in (torch.float32, torch.float64) else torch.float64


def _stack_images(images, dtype: torch.dtype, device) -> torch.Tensor:
    """A (N, H, W) tensor from an array, a tensor or a list of equally shaped (H, W) images."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("images is empty")
        frames = [_to_tensor(im, dtype, device) for im in images]
        shapes = {tuple(f.shape) for f in frames}
        if len(shapes) > 1:
            raise ValueError(f"images must all have the same shape, got {sorted(shapes)}")
        return torch.stack(frames)
    return _to_tensor(images, dtype, device)


def _check_positive(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite positive number, got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a finite positive number, got {value!r}")
    return v


def _check_images(images: torch.Tensor) -> torch.Tensor:
    """Validate a (N, H, W) intensity stack and normalise each image by its mean."""
    if images.ndim != 3:
        raise ValueError(f"images must be a 3-D (N, H, W) stack, got shape {tuple(images.shape)}")
    if images.shape[0] < 2 or min(images.shape[1:]) < 2:
        raise ValueError(f"images must hold at least 2 images of at least 2x2 pixels, got {tuple(images.shape)}")
    if not bool(torch.isfinite(images).all()):
        raise ValueError("images contain NaN or infinite values")
    if bool((images < 0).any()):
        raise ValueError("images contain negative intensities (subtract the dark level and clip first)")
    means = images.mean(dim=(1, 2), keepdim=True)
    if bool((means <= 0).any()):
        raise ValueError("images: every image needs a positive mean intensity")
    # Per-image normalisation removes dose and gain drift between frames; free propagation conserves the mean.
    return images / means


def _check_defocus(defocus_m, n: int) -> np.ndarray:
    if isinstance(defocus_m, torch.Tensor):
        defocus_m = defocus_m.detach().cpu().numpy()
    df = np.asarray(defocus_m, dtype=np.float64)
    if df.ndim != 1 or df.size != n:
        raise ValueError(f"defocus_m must list one defocus per image ({n}), got shape {df.shape}")
    if not np.isfinite(df).all():
        raise ValueError(f"defocus_m must be finite, got {df.tolist()}")
    return df


# ----------------------------------------------------------------------------------------------------------
# derivative estimates


def _zero_index(df: np.ndarray) -> int | None:
    """Index of the in-focus image (|df| ~ 0), or None."""
    scale = np.abs(df).max()
    if scale == 0:  # all in focus: no derivative to take, and no single in-focus image to prefer
        return None
    hits = np.flatnonzero(np.abs(df) <= _ZERO_RTOL * scale)
    return int(hits[0]) if hits.size else None


def _symmetric_pair(df: np.ndarray) -> tuple[int, int] | None:
    """(i_minus, i_plus) of the +-df pair with the smallest |df| (smallest O(df^2) truncation error)."""
    best = None
    for i in np.flatnonzero(df < 0):  # N is a handful of images: a loop over images, not pixels
        for j in np.flatnonzero(df > 0):
            if abs(df[i] + df[j]) <= _PAIR_RTOL * max(-df[i], df[j]):
                size = df[j] - df[i]
                if best is None or size < best[0]:
                    best = (size, int(i), int(j))
    return None if best is None else best[1:]


def _symmetric_derivative(images: torch.Tensor, df: np.ndarray, in_focus_index: int | None):
    pair = _symmetric_pair(df)
    if pair is None:
        raise ValueError(
            f"defocus_m has no usable +-df pair for method='symmetric' (values {df.tolist()}); "
            "use method='least_squares'"
        )
    im, ip = pair
    dIdz = (images[ip] - images[im]) / float(df[ip] - df[im])
    i0 = in_focus_index if in_focus_index is not None else _zero_index(df)
    in_focus = images[i0] if i0 is not None else 0.5 * (images[ip] + images[im])
    used = (float(df[im]), float(df[ip]))
    return dIdz, in_focus, used


def _n_distinct(df: np.ndarray) -> int:
    scale = np.abs(df).max()
    if scale == 0:
        return 1
    return int(np.unique(np.round(df / scale, 9)).size)


def _least_squares_derivative(images: torch.Tensor, df: np.ndarray, in_focus_index: int | None, degree: int | None):
    """Per-pixel polynomial fit I(df) = c0 + c1 df (+ c2 df^2 ...); dI/d(df) at focus is c1.

    The fit is linear in the data, so c0 and c1 are fixed weighted sums of the images: the pseudo-inverse
    of the small (N x degree+1) Vandermonde matrix gives the weights, and one tensordot applies them.
    """
    n_distinct = _n_distinct(df)
    if n_distinct < 2:
        raise ValueError(f"defocus_m needs at least two distinct values for least squares, got {df.tolist()}")
    if degree is None:
        degree = min(2, n_distinct - 1)
    if not (1 <= degree <= n_distinct - 1):
        raise ValueError(f"ls_degree must lie in [1, {n_distinct - 1}] for this series, got {degree}")
    scale = np.abs(df).max()  # fit in df / scale: keeps the Vandermonde matrix well conditioned
    pinv = np.linalg.pinv(np.vander(df / scale, degree + 1, increasing=True))
    w = torch.as_tensor(pinv[:2], dtype=images.dtype, device=images.device)
    c0, c1 = torch.tensordot(w, images, dims=1)
    dIdz = c1 / scale
    i0 = in_focus_index if in_focus_index is not None else _zero_index(df)
    in_focus = images[i0] if i0 is not None else c0
    return dIdz, in_focus, tuple(float(d) for d in df)


# ----------------------------------------------------------------------------------------------------------
# the Poisson solves


def _mirror(a: torch.Tensor) -> torch.Tensor:
    """Even extension (H, W) -> (2H, 2W): its periodic repeat is continuous, so the FFT sees no edge jumps
    (equivalent to Neumann boundaries, as in PyLorentz)."""
    top = torch.cat([a, a.flip(-1)], dim=-1)
    return torch.cat([top, top.flip(-2)], dim=-2)


def _inverse_q2(h: int, w: int, q_cut_px: float | None, dtype, device):
    """qx, qy in cycles/pixel and the kernel standing in for 1/q^2: exactly 1/q^2, or the Tikhonov form
    q^2 / (q^4 + q_c^4). q = 0 maps to 0 either way. Pixel units keep q^4 far from float32 overflow
    (in 1/m, q^4 reaches 1e35 at 1 nm pixels)."""
    qy = torch.fft.fftfreq(h, dtype=dtype, device=device)[:, None]
    qx = torch.fft.fftfreq(w, dtype=dtype, device=device)[None, :]
    q2 = qx**2 + qy**2
    if q_cut_px is None:
        kernel = torch.where(q2 > 0, 1.0 / torch.where(q2 > 0, q2, 1.0), 0.0)
    else:
        kernel = q2 / (q2**2 + q_cut_px**4)  # already 0 at q = 0
    return qx, qy, kernel


def _solve_tie(
    dIdz: torch.Tensor,
    in_focus: torch.Tensor,
    wavelength_m: float,
    pixel_size_m: float,
    q_cut: float | None,
    mirror: bool,
    eps: float,
) -> torch.Tensor:
    h, w = dIdz.shape
    if mirror:
        dIdz, in_focus = _mirror(dIdz), _mirror(in_focus)
    q_cut_px = None if q_cut is None else q_cut * pixel_size_m
    qx, qy, inv_q2 = _inverse_q2(*dIdz.shape, q_cut_px, dIdz.dtype, dIdz.device)

    # Written with physical q (1/m) = q_px / pixel; the pixel factors are pulled out as scalars.
    # (1): Psi = k D / (4 pi^2 q^2), so grad psi = IFFT(2 pi i q Psi) = IFFT(i q D / (lambda q^2)).
    # Taking the real part of each inverse FFT zeroes the (ill-defined) Nyquist derivative.
    d_hat = torch.fft.fft2(dIdz) * (1j * inv_q2 * (pixel_size_m / wavelength_m))
    gx = torch.fft.ifft2(qx * d_hat).real
    gy = torch.fft.ifft2(qy * d_hat).real

    # grad phi = grad psi / I0; the floor keeps dark pixels (holes, thick regions) from blowing up.
    i0 = in_focus.clamp_min(eps)
    gx, gy = gx / i0, gy / i0

    # (2): Phi = -(2 pi i q . G) / (4 pi^2 q^2) = -i (q . G) / (2 pi q^2).
    phi_hat = (qx * torch.fft.fft2(gx) + qy * torch.fft.fft2(gy)) * (-1j * inv_q2 * (pixel_size_m / (2 * math.pi)))
    phase = torch.fft.ifft2(phi_hat).real[:h, :w]
    return phase - phase.mean()


# ----------------------------------------------------------------------------------------------------------
# public API


def tie_reconstruct(
    images,
    defocus_m,
    pixel_size_m: float,
    voltage_v: float,
    *,
    method: Method = "auto",
    tikhonov_q_cut: float | None = None,
    mirror: bool = True,
    in_focus_index: int | None = None,
    eps: float = 1e-3,
    ls_degree: int | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> TIEResult:
    """Reconstruct the phase from a through-focus series with the transport-of-intensity equation.

    images: (N, H, W) intensities in any units (numpy or torch); each is normalised by its mean.
    defocus_m: N defocus values in metres, df > 0 over-focus (docs/conventions.md).
    pixel_size_m, voltage_v: sampling in the specimen plane and accelerating voltage.
    method: "symmetric" uses the +-df pair with the smallest |df|; "least_squares" fits a polynomial in df
        per pixel over the whole (possibly uneven) series; "auto" takes "symmetric" for 2 images, or 3 with
        one in focus, when they form a +-df pair, and "least_squares" otherwise.
    tikhonov_q_cut: regularisation cut-off q_c (cycles/m): 1/q^2 -> q^2 / (q^4 + q_c^4) in both solves.
    mirror: even (mirror) extension to 2H x 2W before the FFTs (default); False for periodic boundaries.
    in_focus_index: image to use as the in-focus intensity; default the df = 0 image, else the mean of the
        symmetric pair, or the fitted constant term for least squares.
    eps: floor on the mean-normalised in-focus intensity in the division between the two solves.
    ls_degree: polynomial degree for least squares; default 2, or 1 with only two distinct defocus values.
    dtype, device: the computation's; device defaults to that of a tensor input, else the CPU.
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    pixel = _check_positive("pixel_size_m", pixel_size_m)
    voltage = _check_positive("voltage_v", voltage_v)
    eps = _check_positive("eps", eps)
    q_cut = None if tikhonov_q_cut is None else _check_positive("tikhonov_q_cut", tikhonov_q_cut)

    stack = _check_images(_stack_images(images, dtype, device))
    n = stack.shape[0]
    df = _check_defocus(defocus_m, n)
    if in_focus_index is not None and not (-n <= int(in_focus_index) < n):
        raise ValueError(f"in_focus_index must index one of the {n} images, got {in_focus_index}")

    if method == "auto":
        has_zero = _zero_index(df) is not None
        symmetric_ok = (n == 2 or (n == 3 and has_zero)) and _symmetric_pair(df) is not None
        method = "symmetric" if symmetric_ok else "least_squares"
    if method == "symmetric":
        dIdz, in_focus, used = _symmetric_derivative(stack, df, in_focus_index)
    else:
        dIdz, in_focus, used = _least_squares_derivative(stack, df, in_focus_index, ls_degree)

    phase = _solve_tie(dIdz, in_focus, wavelength(voltage), pixel, q_cut, mirror, eps)
    return TIEResult(
        phase=phase,
        dIdz=dIdz,
        in_focus=in_focus,
        method=method,
        defocus_used_m=used,
        boundary="mirror" if mirror else "periodic",
        tikhonov_q_cut=q_cut,
    )


def _check_flip_axis(flip_axis: int | None, ndim: int) -> int | None:
    if flip_axis is None:
        return None
    if flip_axis not in (0, 1, -1, -2):
        raise ValueError(f"flip_axis must be 0 (rows, y), 1 (columns, x) or None, got {flip_axis!r}")
    return flip_axis % 2 + (ndim - 2)  # axis counted in the trailing (H, W) dimensions


def separate_magnetic_electrostatic(phase_up, phase_flipped, flip_axis: int | None = 1):
    """Split phases into magnetic and electrostatic parts from a flip-over pair.

    Turning the specimen over reverses the magnetic phase and keeps the electrostatic one, so once the
    flipped reconstruction is mirrored back into the "up" orientation, phi_flipped = phi_E - phi_M and

        phi_M = (phi_up - phi_flipped) / 2,    phi_E = (phi_up + phi_flipped) / 2.

    flip_axis: the (H, W) axis along which the flipped data are mirrored relative to "up" (1: left-right,
    0: up-down), or None when phase_flipped is already in the "up" orientation. Returns torch tensors.
    """
    up = _to_tensor(phase_up, _float_dtype(phase_up), None)
    flipped = _to_tensor(phase_flipped, up.dtype, up.device)
    if up.ndim != 2 or up.shape != flipped.shape:
        raise ValueError(
            f"phase_up and phase_flipped must be 2-D of equal shape, got {tuple(up.shape)} and {tuple(flipped.shape)}"
        )
    axis = _check_flip_axis(flip_axis, 2)
    if axis is not None:
        flipped = flipped.flip(axis)
    return 0.5 * (up - flipped), 0.5 * (up + flipped)


def tie_reconstruct_flipped(
    images_up,
    images_flipped,
    defocus_m,
    pixel_size_m: float,
    voltage_v: float,
    *,
    flip_axis: int | None = 1,
    defocus_flipped_m=None,
    **kwargs,
) -> FlippedTIEResult:
    """TIE on the "up" and the flipped series, then :func:`separate_magnetic_electrostatic`.

    images_flipped are mirrored back along flip_axis (of each (H, W) image) before the reconstruction, so
    both reconstructions share the "up" orientation and boundaries. defocus_flipped_m defaults to
    defocus_m. Other keyword arguments go to :func:`tie_reconstruct`.
    """
    dtype = kwargs.get("dtype", torch.float64)
    flipped = _stack_images(images_flipped, dtype, kwargs.get("device"))
    if flipped.ndim != 3:
        raise ValueError(f"images_flipped must be a 3-D (N, H, W) stack, got shape {tuple(flipped.shape)}")
    axis = _check_flip_axis(flip_axis, 3)
    if axis is not None:
        flipped = flipped.flip(axis)
    up = tie_reconstruct(images_up, defocus_m, pixel_size_m, voltage_v, **kwargs)
    if flipped.shape[1:] != up.phase.shape:
        raise ValueError(
            f"images_flipped must have the same image shape as images_up, got {tuple(flipped.shape[1:])} "
            f"and {tuple(up.phase.shape)}"
        )
    df_flipped = defocus_m if defocus_flipped_m is None else defocus_flipped_m
    down = tie_reconstruct(flipped, df_flipped, pixel_size_m, voltage_v, **kwargs)
    phi_m, phi_e = separate_magnetic_electrostatic(up.phase, down.phase.to(up.phase.device), flip_axis=None)
    return FlippedTIEResult(phase_magnetic=phi_m, phase_electrostatic=phi_e, up=up, flipped=down)
