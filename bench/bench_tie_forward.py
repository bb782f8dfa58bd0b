"""Issue 2 benchmark: TIE accuracy on the simulator's resolution pattern, and the cost of one batched
forward pass next to the FFTs alone, measured in the same run.

Series: 512x512, 200 kV, 5 nm/px, theta_c 1e-5 rad, the TIE pair at +-df (several df), noise-free and
at 100 electrons/px. Accuracy = normalised cross-correlation with the true phase (means removed).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import best_time, machine
from ltemlive.metrics import phase_accuracy, phase_rmse
from ltemlive.optics.forward import ImageModel
from ltemlive.optics.params import MicroscopeParams
from ltemlive.sim_bridge import simulate
from ltemlive.tie import tie_reconstruct
from simulator.series import SimulationConfig


def tie_table() -> None:
    print("TIE on the resolution pattern, 512x512, 5 nm/px, 200 kV, theta_c 1e-5 rad")
    print(f"{'pair df (um)':>13} {'dose (e/px)':>12} {'q_cut (1/px)':>13} {'accuracy':>9} {'RMSE (rad)':>11}")
    for df in (10e-6, 50e-6, 150e-6):
        for dose in (None, 100.0):
            s = simulate(SimulationConfig(shape=(512, 512), defocus_m=[-df, 0.0, df], dose_e_per_px=dose, seed=11))
            for q_cut in (None, 0.005):
                q = None if q_cut is None else q_cut / s.pixel_size_m
                res = tie_reconstruct(s.images, s.defocus_m, s.pixel_size_m, s.microscope.voltage_v, tikhonov_q_cut=q)
                ph = res.phase.cpu().numpy()
                print(
                    f"{df * 1e6:13.0f} {('none' if dose is None else f'{dose:.0f}'):>12} "
                    f"{('none' if q_cut is None else q_cut):>13} {phase_accuracy(ph, s.truth.phase):9.4f} "
                    f"{phase_rmse(ph, s.truth.phase):11.3f}"
                )


def forward_table(device: str) -> None:
    print(f"\nBatched forward pass on {device} (float32, periodic grid, transfer function computed each call)")
    print(f"{'size':>6} {'N':>3} {'forward (ms)':>13} {'FFTs alone (ms)':>16} {'ratio':>6}")
    sync = device == "cuda"
    for n in (512, 1024):
        for nimg in (3, 5):
            im = ImageModel((n, n), 5e-9, MicroscopeParams(), padding="periodic", device=device)
            phase = torch.randn(n, n, device=device) * 0.5
            amp = torch.ones(n, n, device=device)
            df = torch.linspace(-1.6e-3, 1.6e-3, nimg, device=device)
            t_fwd = best_time(lambda im=im, phase=phase, amp=amp, df=df: im.images(phase, amp, df), sync=sync)
            wave = torch.randn(n, n, dtype=torch.complex64, device=device)
            batch = torch.randn(nimg, n, n, dtype=torch.complex64, device=device)

            def ffts(wave=wave, batch=batch):
                torch.fft.fft2(wave)  # the exit wave, once
                torch.fft.ifft2(batch)  # one inverse FFT per image

            t_fft = best_time(ffts, sync=sync)
            print(f"{n:6d} {nimg:3d} {t_fwd * 1e3:13.1f} {t_fft * 1e3:16.1f} {t_fwd / t_fft:6.2f}")


def main() -> None:
    print(f"machine: {machine()}")
    tie_table()
    forward_table("cpu")
    if torch.cuda.is_available():
        forward_table("cuda")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
