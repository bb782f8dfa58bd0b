"""The data misfit of a phase iteration (optics cached) in one pass, with a hand-written backward.

Forward, on the padded grid of M = Hp Wp pixels, for images n = 1..N:

    psi = A exp(i phi),  Psi = fft2(psi),  f_n = ifft2(Psi T_n),  I_n = s_n |f_n|^2 on the crop,
    L = sum_n,r w(r) l(I_n(r), y_n(r)),

with l and w those of loss.poisson_loss and loss.sqrt_gaussian_loss (w = 1 / (N H W), or m / (N sum m)
with a mask m), the same clamp at eps included.

Backward, in PyTorch's convention for a real L of a complex z (grad z = dL/dRe z + i dL/dIm z, so that
dL = Re(conj(grad z) dz), and a linear map z -> K z passes the gradient back as K^H):

    c_n = w l'(I_n)                 (real; zero where the clamp is active)
    grad s_n = sum_r c_n |f_n|^2,   G_n = grad f_n = 2 s_n c_n f_n on the crop, 0 outside
    grad Psi = sum_n conj(T_n) (F^H / M)^H G_n = sum_n conj(T_n) fft2(G_n) / M       (ifft2 = F^H / M)
    grad psi = F^H grad Psi = ifft2(sum_n conj(T_n) fft2(G_n))                        (M and 1/M cancel)
    grad phi = Re(conj(grad psi) i psi) = A Im(grad psi e^{-i phi}),  grad A = Re(grad psi e^{-i phi}).

torch materialises a conjugate view (a full-grid copy) in mul/addcmul, so conj(T_n) and e^{-i phi} are
avoided: with fft2(conj x) = M conj(ifft2(x)),

    grad psi e^{-i phi} = conj(R),   R = fft2(sum_n 2 s_n T_n ifft2(conj(c_n f_n))) e^{i phi},

and conj(c_n f_n) costs one in-place negation of the imaginary part on the crop.

An evaluation therefore performs 2 (1 + N) complex transforms of the padded grid with torch's default
norms: fft2 of the wave and N ifft2 forward, N ifft2 and one fft2 backward.

What makes it cheaper than autograd through the plain composition (bench/bench_eval.py, 2 CPU cores):
- l'(I) is computed in the forward, from the intermediates of l(I); each image's ifft2 output is then
  overwritten in place with conj(c_n f_n) on the crop and zeros outside, which is the input the
  backward's transform needs: no zero-filled full-size gradient buffer, no (N, Hp, Wp) real/imaginary
  gradients;
- on the CPU one image at a time (chunk 1): measured no slower than batched transforms at 640^2 and
  faster at 1152^2 on one thread (smaller temporaries). On a GPU all images in one batch;
- the Poisson deviance as (mu - y) - y log(mu / y) (loss.poisson_loss says why), one pass more than
  (mu - y log mu) - (y - y log y) and 70-260x more precise in float32 (measured at 200-3200 e/px);
- per-image scalars are Python floats (one host transfer per call), folded into the `value` of
  addcmul/addcdiv instead of costing passes; the data-only terms (1 / y, sqrt y, mask weights) are
  prepared once per FusedDataLoss;
- exp(i phi) from cos and sin (torch.polar is several times slower); |f|^2 as re^2 + im^2 (abs takes a
  square root); the clamp's zero gradient is applied only when a pixel is clamped, which the CPU checks by
  a min (torch.where and masks cost more than the min).
Measured and dropped: pruned transforms (1-D passes over only the rows/columns the crop needs) are slower
than MKL's 2-D transform; full-grid buffers kept between calls and filled by `out=` transforms were
slower; view_as_real arithmetic is slower than the complex kernels; the direct form (fft2 of G_n times a
materialised conj(T_n)) was 3-7 % slower.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch.autograd.function import once_differentiable

from ltemlive.reconstruct.loss import _EPS

Kind = Literal["poisson", "sqrt_gaussian"]
KINDS = ("poisson", "sqrt_gaussian")


def fused_data_loss(
    phase: torch.Tensor,
    amplitude: torch.Tensor,
    transfer: torch.Tensor,
    scales: torch.Tensor,
    data: torch.Tensor,
    *,
    top: int,
    left: int,
    kind: Kind,
    dose: float | None = None,
    mask: torch.Tensor | None = None,
    blur: torch.Tensor | None = None,
    chunk: int | None = None,
) -> torch.Tensor:
    """Data misfit (a scalar) of the images of the exit wave `amplitude * exp(i phase)` against `data`.

    Equal, to rounding, to loss.poisson_loss(I, data, dose, mask) for kind "poisson" and to
    loss.sqrt_gaussian_loss(I, data, mask) for "sqrt_gaussian", where
    I = scales[:, None, None] * |ifft2(fft2(psi) * transfer)|^2 cropped to [top : top + H, left : left + W]
    and (H, W) = data.shape[-2:]. With a source blur (real (N, Hp, Wp // 2 + 1), constant) the full-grid
    intensity is filtered first, as ImageModel.propagate does: irfft2(rfft2(|f|^2) * blur, s=(Hp, Wp)).

    phase, amplitude: real (Hp, Wp); transfer: complex (N, Hp, Wp), constant; scales: real (N,);
    data: (N, H, W); mask: broadcastable to (N, H, W), bool or real weights. All on one device, in one
    precision. Differentiable once with respect to phase, amplitude and scales. chunk: images per transform
    call (default 1 on the CPU, N elsewhere). To call repeatedly on the same data, build a FusedDataLoss.
    """
    return FusedDataLoss(data, top=top, left=left, kind=kind, dose=dose, mask=mask)(
        phase, amplitude, transfer, scales, blur=blur, chunk=chunk
    )


class FusedDataLoss:
    """fused_data_loss for fixed data: the data-only terms are prepared once. Call with (phase, amplitude,
    transfer, scales[, blur=])."""

    def __init__(
        self,
        data: torch.Tensor,
        *,
        top: int,
        left: int,
        kind: Kind,
        dose: float | None = None,
        mask: torch.Tensor | None = None,
    ):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if kind == "poisson" and (dose is None or not dose > 0):
            raise ValueError(f"the poisson loss needs a positive dose, got {dose!r}")
        if data.ndim != 3 or data.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"data must be float32 or float64 (N, H, W), got {data.dtype} {tuple(data.shape)}")
        if top < 0 or left < 0:
            raise ValueError(f"the crop offset must be non-negative, got ({top}, {left})")
        self.shape = tuple(data.shape)
        self.top, self.left, self.kind = int(top), int(left), kind
        self.dose = float(dose) if kind == "poisson" else 1.0
        n, h, w = self.shape
        data = data.detach()
        # The weights of loss._mean: 1 / (N H W), or the mask over its sum times N.
        self.weight: torch.Tensor | None = None
        self.scale = 1.0 / (n * h * w)
        if mask is not None:
            if mask.device != data.device:
                raise ValueError(f"mask is on {mask.device}, data on {data.device}")
            m = mask.detach().to(data.dtype)
            self.weight, self.scale = torch.broadcast_to(m / (m.sum() * n), self.shape), 1.0
        self.zero = data.new_zeros(())  # the `input` of addcmul/addcdiv when only the product is wanted
        self.scale_t = data.new_tensor(self.scale)
        self.weighted_target: torch.Tensor | None = None
        self.inv_target: torch.Tensor | None = None
        if kind == "poisson":
            y = data * self.dose
            # 1 / y for the deviance's log(mu / y) (loss.poisson_loss); 1 where y = 0, whose term y log(.) is 0
            # whatever the ratio. y < 0 stays NaN, as in the log.
            self.target, self.inv_target = y, torch.where(y == 0, 1.0, y).reciprocal_()
            if self.weight is not None:  # for w (1 - y / mu) = w - (w y) / mu in one addcdiv
                self.weighted_target = y * self.weight
        else:
            self.target = data.clamp_min(0).sqrt()

    def __call__(
        self,
        phase: torch.Tensor,
        amplitude: torch.Tensor,
        transfer: torch.Tensor,
        scales: torch.Tensor,
        *,
        blur: torch.Tensor | None = None,
        chunk: int | None = None,
    ) -> torch.Tensor:
        n, h, w = self.shape
        if phase.ndim != 2 or amplitude.shape != phase.shape:
            raise ValueError(
                f"phase and amplitude must be equal (Hp, Wp) maps, got {tuple(phase.shape)}, {tuple(amplitude.shape)}"
            )
        hp, wp = phase.shape
        if transfer.shape != (n, hp, wp):
            raise ValueError(f"transfer must have shape ({n}, {hp}, {wp}), got {tuple(transfer.shape)}")
        if scales.shape != (n,):
            raise ValueError(f"scales must have shape ({n},), got {tuple(scales.shape)}")
        if self.top + h > hp or self.left + w > wp:
            raise ValueError(f"a ({h}, {w}) crop at ({self.top}, {self.left}) does not fit the grid ({hp}, {wp})")
        real, dev = self.target.dtype, self.target.device
        cplx = torch.complex128 if real == torch.float64 else torch.complex64
        if any(t.dtype != real or t.device != dev for t in (phase, amplitude, scales)) or (
            transfer.dtype != cplx or transfer.device != dev
        ):
            raise ValueError(
                f"phase, amplitude, scales must be {real} and transfer {cplx}, all on {dev} (the data's), got "
                f"{phase.dtype}/{phase.device}, {amplitude.dtype}/{amplitude.device}, {scales.dtype}/{scales.device}, "
                f"{transfer.dtype}/{transfer.device}"
            )
        if transfer.requires_grad and torch.is_grad_enabled():
            raise ValueError("no gradient with respect to transfer: pass it detached (the optics are cached)")
        if blur is not None:
            if blur.shape != (n, hp, wp // 2 + 1) or blur.dtype != real or blur.device != dev:
                raise ValueError(
                    f"blur must be {real} ({n}, {hp}, {wp // 2 + 1}) on {dev}, got "
                    f"{blur.dtype} {tuple(blur.shape)} on {blur.device}"
                )
            if blur.requires_grad and torch.is_grad_enabled():
                raise ValueError("no gradient with respect to blur: pass it detached (the optics are cached)")
            blur = blur.detach()
        want = torch.is_grad_enabled() and any(t.requires_grad for t in (phase, amplitude, scales))
        chunk = (1 if dev.type == "cpu" else n) if chunk is None else max(1, int(chunk))
        return _Fused.apply(phase, amplitude, scales, transfer.detach(), blur, self, chunk, want)

    def pixel_terms(
        self, f: torch.Tensor | None, n: int, s: float, want: bool, need_q: bool, q: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """For image n with field f on the crop and scale s: its loss sum (0-d), c = w l'(I) if `want`, and
        |f|^2 if `need_q`. Or, with f None, from the unscaled intensity q on the crop (a view, overwritten
        unless `need_q`)."""
        thr, k = _EPS * self.dose, s * self.dose
        if f is None:
            if need_q:
                q = q.contiguous()
                mu = q * k
            else:
                mu = torch.mul(q, k)
        elif need_q:
            re, im = f.real, f.imag
            q = re.square().addcmul_(im, im)
            mu = q * k
        else:  # dose * I = k |f|^2 in two passes
            re, im = f.real, f.imag
            mu = torch.addcmul(self.zero, re, re, value=k).addcmul_(im, im, value=k)
        # The clamp passes no gradient where I < eps. Rare: the CPU looks first; a GPU always clamps (no sync).
        below = None
        if mu.device.type != "cpu" or float(mu.min()) < thr:
            below = (mu < thr) if want else None
            mu.clamp_min_(thr)
        wt = None if self.weight is None else self.weight[n]
        c = None
        if self.kind == "poisson":
            y, inv_y = self.target[n], self.inv_target[n]
            if want:  # w (1 - y / mu)
                c = (
                    torch.addcdiv(self.scale_t, y, mu, value=-self.scale)
                    if wt is None
                    else torch.addcdiv(wt, self.weighted_target[n], mu, value=-1.0)
                )
            per_px = torch.sub(mu, y)
            per_px.addcmul_(y, mu.mul_(inv_y).log_(), value=-1)  # (mu - y) - y log(mu / y); mu is not needed after
            total = per_px.sum() if wt is None else torch.dot(per_px.view(-1), wt.reshape(-1))
        else:
            root = mu.sqrt_()
            res = root - self.target[n]
            total = torch.dot(res.view(-1), res.view(-1)) if wt is None else (res.square() * wt).sum()
            if want:  # d/dI (sqrt(I) - sqrt(y))^2 = res / sqrt(I)
                c = res.div_(root).mul_(self.scale) if wt is None else res.div_(root).mul_(wt)
        if below is not None:
            c.masked_fill_(below, 0.0)
        return total, c, q


class _Fused(torch.autograd.Function):
    @staticmethod
    def forward(ctx, phase, amplitude, scales, transfer, blur, prep: FusedDataLoss, chunk: int, want: bool):
        n, h, w = prep.shape
        top, left = prep.top, prep.left
        need_phase, need_amp, need_scales = (want and ctx.needs_input_grad[i] for i in range(3))
        need_field = need_phase or need_amp
        want = need_field or need_scales
        s_all = scales.tolist()  # host copies of the scales, for `value=` arguments (one transfer per call)

        unit = torch.complex(torch.cos(phase), torch.sin(phase))
        spectrum = torch.fft.fft2(unit * amplitude)
        total = phase.new_zeros(())
        grad_scales, buffers = [], []
        grid = phase.shape
        for i in range(0, n, chunk):
            fields = torch.fft.ifft2(spectrum * transfer[i : i + chunk])
            if blur is not None:
                # The blurred full-grid intensity, cropped: B |f|^2 with B = irfft2(rfft2(.) * G).
                g = blur[i : i + chunk]
                blurred = torch.fft.irfft2(
                    torch.fft.rfft2(fields.real.square().addcmul_(fields.imag, fields.imag)).mul_(g), s=grid
                )
                pad = blurred.new_zeros(blurred.shape) if need_field else None
            for j in range(fields.shape[0]):
                if blur is None:
                    f = fields[j, top : top + h, left : left + w]
                    part, c, q = prep.pixel_terms(f, i + j, s_all[i + j], want, need_scales)
                else:
                    crop = blurred[j, top : top + h, left : left + w]
                    part, c, q = prep.pixel_terms(None, i + j, s_all[i + j], want, need_scales, q=crop)
                total = total + part
                if need_scales:
                    grad_scales.append(torch.dot(c.view(-1), q.view(-1)))
                if need_field:
                    if blur is None:
                        f.mul_(c).imag.neg_()  # conj(G_n) / (2 s_n); the factor goes into the backward's addcmul
                    else:
                        pad[j, top : top + h, left : left + w] = c
            if need_field and blur is None:
                fields[:, :top].zero_()
                fields[:, top + h :].zero_()
                fields[:, top : top + h, :left].zero_()
                fields[:, top : top + h, left + w :].zero_()
                buffers.append(fields)
            elif need_field:
                # B is real and symmetric (a real filter on the half spectrum): its own adjoint, so
                # grad |f|^2 = s_n B c_n (c_n zero-padded), and conj(grad f_n) / (2 s_n) = conj(f_n) B c_n.
                back = torch.fft.irfft2(torch.fft.rfft2(pad).mul_(g), s=grid)
                fields.mul_(back).imag.neg_()
                buffers.append(fields)
        if want:
            ctx.need, ctx.scales = (need_phase, need_amp, need_scales), s_all
            ctx.grad_scales = torch.stack(grad_scales) if need_scales else None
            ctx.save_for_backward(unit, amplitude, transfer, *buffers)
        return total * (prep.scale / prep.dose)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        need_phase, need_amp, need_scales = ctx.need
        unit, amplitude, transfer, *buffers = ctx.saved_tensors
        go = float(grad_out)
        grad_phase = grad_amp = grad_scales = None
        if need_scales:
            grad_scales = ctx.grad_scales * go
        if need_phase or need_amp:
            # sum_n T_n ifft2(conj G_n), one fused multiply-add per image
            acc = torch.zeros_like(unit)
            n = 0
            for g in buffers:
                for y in torch.fft.ifft2(g):
                    acc.addcmul_(y, transfer[n], value=2.0 * ctx.scales[n] * go)
                    n += 1
            r = torch.fft.fft2(acc).mul_(unit)  # conj(grad psi e^{-i phi})
            if need_phase:
                grad_phase = r.imag * amplitude
                grad_phase.neg_()
            if need_amp:
                grad_amp = r.real.clone()
        return grad_phase, grad_amp, grad_scales, None, None, None, None, None
