"""Baseline of the reconstructors on the case suite (simulator/cases.py).

For each case and size: simulate (seed given), then the AD reconstructor (ReconstructionConfig(max_iter=...))
and TIE (ltemlive.tie.tie_reconstruct, default arguments: images, nominal defocus, pixel, voltage). Printed per
row: phase RMSE against the truth (rad, means removed, no plane fit) of AD, TIE and AD's own TIE start
(result.tie_phase), and as a diagnostic AD's RMSE once a plane is fitted to its error (AD-pl: how much of the
error is a lost phase ramp); the refined defocus against the true one (mean relative error over the defocused images, %,
next to the nominal's); refined theta_c / true theta_c; AD's stop reason, iterations and time.

Run: python bench/baseline_cases.py [--size test|full|both] [--cases a,b] [--max-iter 400] [--seed 0]
     [--threads 2] [--json out.json]
Against another checkout: PYTHONPATH=/path/to/checkout python /path/to/checkout/bench/baseline_cases.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import machine
from ltemlive.metrics import phase_rmse
from ltemlive.reconstruct import ReconstructionConfig, reconstruct
from ltemlive.sim_bridge import simulate
from ltemlive.tie import tie_reconstruct
from simulator.cases import CASES


def _defocus_error_pct(df: np.ndarray, true: np.ndarray) -> float:
    """Mean of (df / true - 1) over the images with true defocus != 0, in %."""
    nz = np.abs(true) > 0
    return float(np.mean(df[nz] / true[nz] - 1.0) * 100.0)


def rmse_after_plane(phase: np.ndarray, truth: np.ndarray) -> float:
    """Diagnostic only: RMSE once the best-fitting plane of the difference is removed (how much is a lost ramp)."""
    d = np.asarray(phase, dtype=np.float64) - np.asarray(truth, dtype=np.float64)
    h, w = d.shape
    yy, xx = np.mgrid[:h, :w]
    a = np.c_[np.ones(h * w), xx.ravel(), yy.ravel()]
    coef = np.linalg.lstsq(a, d.ravel(), rcond=None)[0]
    return float(np.sqrt(np.mean((d.ravel() - a @ coef) ** 2)))


def run_one(name: str, size: str, seed: int, max_iter: int) -> dict:
    case = CASES[name]
    cfg = case.config(size, seed)
    t0 = time.perf_counter()
    series = simulate(cfg)
    t_sim = time.perf_counter() - t0
    truth = series.truth
    row = dict(case=name, size=size, shape=list(cfg.shape), n_images=len(cfg.defocus_m), seed=seed,
               sim_s=t_sim, truth_std=float(truth.phase.std()),
               nominal_err_pct=_defocus_error_pct(np.asarray(series.defocus_m), truth.defocus_m))

    t0 = time.perf_counter()
    tie = tie_reconstruct(series.images, series.defocus_m, series.pixel_size_m, series.microscope.voltage_v)
    row["tie_s"] = time.perf_counter() - t0
    row["rmse_tie"] = phase_rmse(tie.phase.cpu().numpy(), truth.phase)

    t0 = time.perf_counter()
    try:
        res = reconstruct(series, ReconstructionConfig(max_iter=max_iter))
    except Exception as exc:  # a baseline records failures rather than stopping the table
        row.update(ad_error=f"{type(exc).__name__}: {exc}", ad_s=time.perf_counter() - t0)
        return row
    row["ad_s"] = time.perf_counter() - t0
    row["rmse_ad"] = phase_rmse(res.phase, truth.phase)
    row["rmse_ad_tie_start"] = phase_rmse(res.tie_phase, truth.phase)
    row["rmse_ad_plane"] = rmse_after_plane(res.phase, truth.phase)
    row["defocus_err_pct"] = _defocus_error_pct(np.asarray(res.defocus_m), truth.defocus_m)
    row["theta_c_ratio"] = float(res.theta_c_rad / cfg.theta_c_rad) if cfg.theta_c_rad > 0 else float("nan")
    row["stopped_because"] = res.stopped_because
    row["iterations"] = int(res.iterations)
    return row


HEADER = (f"{'case':22s} {'size':4s} {'shape':>9s} {'std':>6s} | "
          f"{'AD':>7s} {'TIE':>7s} {'ADstart':>7s} {'AD-pl':>6s} | "
          f"{'df nom%':>7s} {'df AD%':>7s} {'thc/true':>8s} | {'stop':24s} {'it':>4s} {'AD s':>6s} {'sim s':>5s}")


def format_row(r: dict) -> str:
    shape = "x".join(str(s) for s in r["shape"])
    head = f"{r['case']:22s} {r['size']:4s} {shape:>9s} {r['truth_std']:6.2f} | "
    if "ad_error" in r:
        return head + f"{'fail':>7s} {r['rmse_tie']:7.3f} {'':>7s} {'':>6s} | AD raised {r['ad_error']}"
    return head + (
        f"{r['rmse_ad']:7.3f} {r['rmse_tie']:7.3f} {r['rmse_ad_tie_start']:7.3f} {r['rmse_ad_plane']:6.3f} | "
        f"{r['nominal_err_pct']:+7.2f} {r['defocus_err_pct']:+7.2f} {r['theta_c_ratio']:8.3f} | "
        f"{r['stopped_because'][:24]:24s} {r['iterations']:4d} {r['ad_s']:6.1f} {r['sim_s']:5.1f}"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=["test", "full", "both"], default="test")
    ap.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    ap.add_argument("--max-iter", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default="", help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = [n for n in args.cases.split(",") if n] or list(CASES)
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        ap.error(f"unknown case(s) {unknown}; valid: {', '.join(CASES)}")
    sizes = ["test", "full"] if args.size == "both" else [args.size]
    print(f"# machine: {machine()}")
    print(f"# AD: ReconstructionConfig(max_iter={args.max_iter}); TIE: tie_reconstruct defaults; seed {args.seed}")
    print("# RMSE in rad (means removed, no plane fit); df %: mean (df / true - 1) over defocused images")
    print(HEADER)
    rows = []
    for size in sizes:
        for name in names:
            r = run_one(name, size, args.seed, args.max_iter)
            rows.append(r)
            print(format_row(r), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
