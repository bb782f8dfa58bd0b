"""Coverage of the reported one-sigma uncertainties: do they cover the truth?

One benchmark series, many noise realisations (only the camera noise changes with the seed). For each: the
refined defocus (common scale), theta_c and the phase map against the truth, in units of the reported sigma.
Printed: the fraction of realisations whose truth lies within 2 sigma (goal >= 90 %), the median |error| /
sigma, and for the phase the mean fraction of pixels within 2 sigma (means removed). Run:
    python bench/bench_coverage.py [--runs 20] [--case NAME] [--size test|full]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import machine
from ltemlive.reconstruct import ReconstructionConfig, reconstruct
from ltemlive.sim_bridge import simulate
from simulator.series import SimulationConfig

DEFOCUS = [-1.2e-3, -0.1e-3, 0.1e-3, 1.2e-3]
DEFAULT = dict(
    shape=(128, 128), pixel_size_m=10e-9, oversample=2, defocus_m=DEFOCUS, dose_e_per_px=200.0,
    specimen="vortex_disc",
    specimen_params={"radius_m": 300e-9, "thickness_m": 20e-9, "mean_inner_potential_v": 10.0, "xi0_m": 300e-9},
    defocus_scale_error=0.05,
)


def series_for(case: str | None, size: str, seed: int, oversample: int | None = None):
    if case is None:
        return simulate(SimulationConfig(seed=seed, **{**DEFAULT, **({} if oversample is None else
                                                                      {"oversample": oversample})}))
    from simulator.cases import config

    return simulate(config(case, size=size, seed=seed))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--case", default=None, help="a case of simulator/cases.py (default: a 128^2 vortex disc, "
                    "200 e/px, nominal defocus 5 %% off)")
    ap.add_argument("--size", default="test", choices=["test", "full"])
    ap.add_argument("--max-iter", type=int, default=400)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--oversample", type=int, default=None,
                    help="the default series' simulation oversampling: 2 (default) bins 2x2 sub-pixels into a camera "
                    "pixel, a detector blur the model does not have; 1 is the model's own sampling")
    ap.add_argument("--detector", default="point", choices=["point", "pixel"],
                    help="ReconstructionConfig.detector: pixel models the camera's integration over its pixels")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(machine())
    print(f"series: {args.case or 'vortex disc 128^2, 200 e/px, nominal 5 % off'} ({args.size}, oversample "
          f"{args.oversample or 'default'}; detector model {args.detector}), {args.runs} noise "
          f"realisations, max_iter {args.max_iter}")
    z_df, z_th, cover_phi, times, stops = [], [], [], [], []
    for seed in range(args.runs):
        s = series_for(args.case, args.size, seed, args.oversample)
        t = time.perf_counter()
        r = reconstruct(s, ReconstructionConfig(max_iter=args.max_iter, detector=args.detector))
        times.append(time.perf_counter() - t)
        stops.append(r.stopped_because.split(" (")[0])
        truth = s.truth
        free = truth.defocus_m != 0
        err = (r.defocus_m[free] - truth.defocus_m[free])
        z_df.append(float(np.max(np.abs(err) / r.defocus_sigma_m[free])))
        z_th.append(abs(r.theta_c_rad - s.microscope.theta_c_rad) / r.theta_c_sigma_rad)
        d = r.phase - truth.phase
        d = d - d.mean()
        cover_phi.append(float(np.mean(np.abs(d) <= 2 * r.phase_sigma)))
        rel = np.mean(err / truth.defocus_m[free]) * 100
        print(f"  seed {seed:2d}: defocus |err|/sigma {z_df[-1]:6.2f} (err {rel:+.2f} %, "
              f"sigma {np.mean(r.defocus_sigma_m[free] / np.abs(truth.defocus_m[free])) * 100:.2f} %), theta_c "
              f"{z_th[-1]:6.2f}, phase pixels within 2 sigma {cover_phi[-1] * 100:5.1f} %, {times[-1]:.1f} s, "
              f"{r.stopped_because.split(' (')[0]}")
    z_df, z_th = np.array(z_df), np.array(z_th)
    print(f"defocus: truth within 2 sigma in {np.mean(z_df <= 2) * 100:.0f} % of runs (goal >= 90 %); "
          f"median |err|/sigma {np.median(z_df):.2f}")
    print(f"theta_c: truth within 2 sigma in {np.mean(z_th <= 2) * 100:.0f} % of runs; median |err|/sigma "
          f"{np.median(z_th):.2f}")
    print(f"phase: {np.mean(cover_phi) * 100:.1f} % of pixels within 2 sigma (mean over runs)")
    print(f"time per run: median {np.median(times):.1f} s; stopped: "
          + ", ".join(f"{k} x{stops.count(k)}" for k in sorted(set(stops))))


if __name__ == "__main__":
    main()
