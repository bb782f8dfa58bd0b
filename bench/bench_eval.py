"""One phase-objective evaluation (data loss + gradient wrt the phase, optics cached): autograd vs fused.

512^2 and 1024^2 fields of view, N = 4 images at -1.6, -0.15, +0.15, +1.6 mm, 200 kV, 5 nm/px, on the
padded grid ImageModel builds for them (`extend`, max |defocus| 1.6 mm: 640^2 and 1152^2), Poisson loss
at 100 e/px, float32. For the default thread count and for 1 thread:
- FFT bound: exactly the transforms the fused evaluation performs: forward fft2 of the wave and N ifft2
  (`chunk` images per call: 1 on the CPU, N on a GPU), backward N ifft2 and one fft2, on distinct inputs
  with the N image outputs held until the backward, as the evaluation holds them. Also shown: the same
  2 (1 + N) transforms with the N images in one call each way on one reused input (bench_ad.py's count,
  without its preconditioner pair);
- old: autograd through the composition SeriesModel.forward builds with the transfer cached
  (ImageModel.wave_spectrum, propagate, per-image scales) and loss.poisson_loss;
- fused: ltemlive.reconstruct.fused.fused_data_loss, and FusedDataLoss (data terms prepared once, as a
  solver would hold it).
Then the same with the source blur (coherence "blur", the reconstructor's default): the FFT bound adds the
blur's 4 N real transforms (rfft2 + irfft2 of |f_n|^2 forward, of the padded crop gradient backward);
old is autograd through propagate(..., blur=ImageModel.source_blur), fused passes blur=.
Each time is the best of interleaved rounds (the least disturbed by other load on the machine).
Run: python bench/bench_eval.py [--device cuda] [--sizes 512 1024] [--rounds 9]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import machine, timed
from ltemlive.optics.forward import ImageModel
from ltemlive.optics.params import MicroscopeParams
from ltemlive.reconstruct.fused import FusedDataLoss, fused_data_loss
from ltemlive.reconstruct.loss import poisson_loss

DEFOCUS_M = (-1.6e-3, -0.15e-3, 0.15e-3, 1.6e-3)
DOSE = 100.0


def setup(size: int, device: str, max_defocus_m: float):
    """Image model, cached transfer x shift ramp (N, Hp, Wp), a smooth phase on the padded grid, noisy data."""
    params = MicroscopeParams(voltage_v=200e3, theta_c_rad=1e-5)
    im = ImageModel((size, size), 5e-9, params, max_abs_defocus_m=max_defocus_m, padding="extend", device=device)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(im.padded_shape, generator=gen).to(device)
    q2 = im.grid.qx**2 + im.grid.qy**2
    phase = torch.fft.ifft2(torch.fft.fft2(noise) * torch.exp(-q2 / (2 * 2e6**2))).real
    phase = 3 * phase / phase.std()
    amplitude = torch.ones_like(phase)
    with torch.no_grad():
        transfer = im.transfer(DEFOCUS_M) * im.shift_ramp(torch.zeros(len(DEFOCUS_M), 2, device=device))
        clean = im.propagate(im.wave_spectrum(phase, amplitude), transfer)
    data = torch.poisson(clean.cpu() * DOSE, generator=gen).to(device) / DOSE
    scales = torch.ones(len(DEFOCUS_M), device=device)
    return im, transfer, phase, amplitude, scales, data


def fft_bound(shape: tuple[int, int], n: int, chunk: int, device: str) -> Callable[[], None]:
    """The fused evaluation's transforms: fft2 + N ifft2 forward, N ifft2 + fft2 backward."""
    one = torch.randn(shape, dtype=torch.complex64, device=device)
    images = torch.randn(n, *shape, dtype=torch.complex64, device=device)

    def ffts() -> None:
        torch.fft.fft2(one)
        held = [torch.fft.ifft2(images[i : i + chunk]) for i in range(0, n, chunk)]
        for i in range(0, n, chunk):
            torch.fft.ifft2(images[i : i + chunk])
        torch.fft.fft2(one)
        del held

    return ffts


def blur_bound(shape: tuple[int, int], n: int, chunk: int, device: str) -> Callable[[], None]:
    """fft_bound plus the blur's real transforms: rfft2 + irfft2 per image forward and backward."""
    complex_part = fft_bound(shape, n, chunk, device)
    real = torch.randn(n, *shape, device=device)
    half = torch.fft.rfft2(real)

    def ffts() -> None:
        complex_part()
        for _ in range(2):
            for i in range(0, n, chunk):
                torch.fft.rfft2(real[i : i + chunk])
                torch.fft.irfft2(half[i : i + chunk], s=shape)

    return ffts


def batched_bound(shape: tuple[int, int], n: int, device: str) -> Callable[[], None]:
    one = torch.randn(shape, dtype=torch.complex64, device=device)
    batch = torch.randn(n, *shape, dtype=torch.complex64, device=device)

    def ffts() -> None:
        for _ in range(2):  # forward and backward
            torch.fft.fft2(one)
            torch.fft.ifft2(batch)

    return ffts


def interleaved_best(fns: dict[str, Callable[[], None]], rounds: int, sync: bool) -> dict[str, float]:
    """Best wall time (s) of each function over `rounds` rounds that run each once, after one warm-up."""
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            best[name] = min(best[name], timed(fn, sync))
    return best


def run(size: int, device: str, max_defocus_m: float, rounds: int) -> None:
    im, transfer, phase, amplitude, scales, data = setup(size, device, max_defocus_m)
    n, sync = len(DEFOCUS_M), device == "cuda"
    chunk = 1 if device == "cpu" else n
    x = phase.detach().clone().requires_grad_()
    prepared = FusedDataLoss(data, top=im.top, left=im.left, kind="poisson", dose=DOSE)

    def old() -> torch.Tensor:
        images = im.propagate(im.wave_spectrum(x, amplitude), transfer) * scales[:, None, None]
        return poisson_loss(images, data, DOSE)

    def fused() -> torch.Tensor:
        return fused_data_loss(
            x, amplitude, transfer, scales, data, top=im.top, left=im.left, kind="poisson", dose=DOSE
        )

    report(im, n, chunk, device, rounds, sync, x, old, fused, prepared, (transfer, amplitude, scales, None, data))

    # With the source blur (coherence "blur"): a realistic theta_c for the filter's shape; the cost is the same.
    blur_im = ImageModel(
        im.shape, 5e-9, im.params, max_abs_defocus_m=max_defocus_m, padding="extend", device=device, coherence="blur"
    )
    assert blur_im.padded_shape == im.padded_shape
    with torch.no_grad():
        transfer = blur_im.transfer(DEFOCUS_M)
        blur = blur_im.source_blur(DEFOCUS_M, theta_c_rad=5e-6)

    def old_blur() -> torch.Tensor:
        images = blur_im.propagate(blur_im.wave_spectrum(x, amplitude), transfer, blur=blur) * scales[:, None, None]
        return poisson_loss(images, data, DOSE)

    def fused_blur() -> torch.Tensor:
        return fused_data_loss(
            x, amplitude, transfer, scales, data, top=im.top, left=im.left, kind="poisson", dose=DOSE, blur=blur
        )

    inputs = (transfer, amplitude, scales, blur, data)
    report(im, n, chunk, device, rounds, sync, x, old_blur, fused_blur, prepared, inputs)


def report(im, n, chunk, device, rounds, sync, x, old, fused, prepared, inputs) -> None:
    transfer, amplitude, scales, blur, data = inputs
    def evaluation(loss: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def ev() -> None:
            x.grad = None
            loss().backward()

        return ev

    with torch.no_grad():
        a, b = float(old()), float(fused())
        # The float32 values against float64 from the same inputs: how finely a line search can compare steps.
        ref = float(
            FusedDataLoss(data.double(), top=im.top, left=im.left, kind="poisson", dose=DOSE)(
                x.double(), amplitude.double(), transfer.to(torch.complex128), scales.double(),
                blur=None if blur is None else blur.double(),
            )
        )
    t = interleaved_best(
        {
            "bound": (fft_bound if blur is None else blur_bound)(im.padded_shape, n, chunk, device),
            "batched": batched_bound(im.padded_shape, n, device),
            "old": evaluation(old),
            "fused": evaluation(fused),
            "prepared": evaluation(lambda: prepared(x, amplitude, transfer, scales, blur=blur)),
        },
        rounds,
        sync,
    )
    bound = t["bound"]
    hp, wp = im.padded_shape
    extra = "" if blur is None else f" + {4 * n} real"
    print(
        f"  {im.shape[0]}^2 (padded {hp}x{wp}), N={n}, threads {torch.get_num_threads()}, "
        f"{'no blur' if blur is None else 'source blur'}: FFT bound {bound * 1e3:.1f} ms "
        f"({2 * (1 + n)} complex{extra} transforms, {chunk} image(s) per call; "
        f"batched complex only, on one input {t['batched'] * 1e3:.1f} ms)"
    )
    for name, label in (("old", "old (autograd)"), ("fused", "fused"), ("prepared", "fused, FusedDataLoss")):
        print(
            f"    {label:22s} {t[name] * 1e3:7.1f} ms = {t[name] / bound:4.2f}x bound "
            f"({t[name] / t['batched']:4.2f}x batched)"
            + (f", {t['old'] / t[name]:.2f}x faster" if name != "old" else "")
        )
    print(
        f"    loss: old {a:.6g}, fused {b:.6g} (relative difference {abs(a - b) / abs(a):.1e}); relative error "
        f"against float64: old {abs(a / ref - 1):.1e}, fused {abs(b / ref - 1):.1e}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--max-defocus-mm", type=float, default=1.6, help="sets the padding (as ImageModel pads)")
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("CUDA is not available")
    print(f"machine: {machine()}")
    default_threads = torch.get_num_threads()
    for threads in dict.fromkeys((default_threads, 1)):
        torch.set_num_threads(threads)
        for size in args.sizes:
            run(size, args.device, args.max_defocus_mm * 1e-3, args.rounds)
    torch.set_num_threads(default_threads)


if __name__ == "__main__":
    main()
