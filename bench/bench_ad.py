"""Issue 3 benchmark: the AD reconstructor against TIE on the simulator's resolution pattern.

512x512, 200 kV, 5 nm/px, theta_c 1e-5 rad, oversample 2 (images formed at 2.5 nm, binned):
  (a) 4 images at -1.6, -0.15, +0.15, +1.6 mm, 100 e/px;
  (b) 2 images at +-1.6 mm, 40 e/px;
  (c) case (a) with the nominal defocus given 10 % too large and 5 um off, and drift between frames.
Printed: accuracy (NCC with the true phase, means removed) and RMSE for AD and TIE; time to reach accuracy
0.98; iterations per second next to the cost of the FFTs one iteration needs; recovered defocus and
theta_c errors with their reported one-sigma uncertainties. Run: python bench/bench_ad.py [--size N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_eval import blur_bound, fft_bound
from bench.common import best_time, machine
from ltemlive.metrics import phase_accuracy, phase_rmse
from ltemlive.reconstruct import ReconstructionConfig, Reconstructor
from ltemlive.series import Series
from ltemlive.sim_bridge import simulate
from ltemlive.tie import tie_reconstruct
from simulator.series import SimulationConfig

CASES = {
    "a": dict(defocus_m=[-1.6e-3, -0.15e-3, 0.15e-3, 1.6e-3], dose_e_per_px=100.0),
    "b": dict(defocus_m=[-1.6e-3, 1.6e-3], dose_e_per_px=40.0),
    "c": dict(defocus_m=[-1.6e-3, -0.15e-3, 0.15e-3, 1.6e-3], dose_e_per_px=100.0, drift_px_per_frame=1.5),
}


def fft_cost_per_iteration(rec: Reconstructor, device: str) -> float:
    """The transforms one phase evaluation performs (forward and backward), no more: the exit wave's fft2 and N
    image ifft2 each way (one image per call on the CPU, all N on a GPU, as fused.py does), the source blur's rfft2 +
    irfft2 per image each way when the model blurs (coherence "blur", the default), and the preconditioner's real
    pair each way (model.phase). bench_eval.py times the data term against the same bound without the
    preconditioner."""
    n = rec.model.n
    shape = rec.im.padded_shape
    chunk = 1 if device == "cpu" else n
    data_part = (blur_bound if rec.im.coherence == "blur" else fft_bound)(shape, n, chunk, device)
    real = torch.randn(shape, device=device)
    half = torch.fft.rfft2(real)

    def ffts():
        data_part()
        for _ in range(2):  # the preconditioner's pair, forward and in the backward
            torch.fft.rfft2(real)
            torch.fft.irfft2(half, s=shape)

    return best_time(ffts, sync=device == "cuda")


def eval_cost(rec: Reconstructor) -> float:
    """Measured cost of one objective + gradient with the optics cached (a phase iteration's evaluation)."""
    m = rec.model
    for p in m.parameters():
        p.requires_grad_(p is m.c)
    m.freeze_optics(True)

    def ev():
        m.c.grad = None
        loss, _, _ = rec.objective(rec.model)
        loss.backward()

    t = best_time(ev, sync=rec.device.type == "cuda")
    m.freeze_optics(False)
    return t


def run_case(name: str, size: int, device: str, max_iter: int) -> None:
    sim_cfg = SimulationConfig(shape=(size, size), seed=21, **CASES[name])
    series = simulate(sim_cfg)
    truth = series.truth
    nominal = series.defocus_m
    if name == "c":
        nominal = nominal * 1.10 + 5e-6
        series = Series(
            images=series.images, defocus_m=nominal, pixel_size_m=series.pixel_size_m,
            microscope=series.microscope, dose_e_per_px=series.dose_e_per_px, truth=truth,
        )
    tie_method = "symmetric"
    tie = tie_reconstruct(
        series.images, series.defocus_m, series.pixel_size_m, series.microscope.voltage_v,
        method=tie_method, tikhonov_q_cut=0.005 / series.pixel_size_m,
    ).phase.cpu().numpy()

    # (c) has an offset as well as a scale error: per-image defocus is refined on top of the common scale.
    defocus_model = "per_image" if name == "c" else "scale"
    cfg = ReconstructionConfig(max_iter=max_iter, device=device, defocus_model=defocus_model)
    rec = Reconstructor(series, cfg)
    t_eval = eval_cost(rec)
    t_fft = fft_cost_per_iteration(rec, device)
    rec.t0 = time.perf_counter()  # the clock starts after the cost probes
    metric_time = 0.0
    t98 = None
    it98 = None
    for snap in rec.steps():
        t = time.perf_counter()
        acc = phase_accuracy(rec.model.phase_fov().detach().cpu().numpy(), truth.phase)
        metric_time += time.perf_counter() - t
        if t98 is None and acc >= 0.98:
            t98, it98 = snap.elapsed_s - metric_time, snap.iteration
    res = rec.result()
    elapsed = res.elapsed_s - metric_time
    acc_ad, acc_tie = phase_accuracy(res.phase, truth.phase), phase_accuracy(tie, truth.phase)
    df_err = (res.defocus_m / truth.defocus_m - 1) * 100
    df_sig = res.defocus_sigma_m / np.abs(truth.defocus_m) * 100
    nominal_err = (nominal / truth.defocus_m - 1) * 100
    th_err = (res.theta_c_rad / sim_cfg.theta_c_rad - 1) * 100
    th_sig = res.theta_c_sigma_rad / sim_cfg.theta_c_rad * 100
    extra = ", nominal 10 % large + 5 um, drift 1.5 px/frame, defocus_model per_image" if name == "c" else ""
    print(f"\ncase ({name}): {len(nominal)} images at {np.round(truth.defocus_m * 1e3, 3).tolist()} mm (true), "
          f"{sim_cfg.dose_e_per_px:.0f} e/px{extra}")
    print(f"  accuracy  AD {acc_ad:.4f}   TIE ({tie_method}, Tikhonov) {acc_tie:.4f}")
    print(f"  RMSE      AD {phase_rmse(res.phase, truth.phase):.3f} rad   TIE {phase_rmse(tie, truth.phase):.3f} rad")
    print("  time to accuracy 0.98: " + (f"{t98:.1f} s (iteration {it98})" if t98 is not None else "not reached"))
    print(f"  total {elapsed:.1f} s, {res.iterations} phase iterations ({res.stopped_because}), "
          f"{res.iterations / elapsed:.1f} it/s overall")
    print(f"  one evaluation (loss + gradient, optics cached) {t_eval * 1e3:.1f} ms; the FFTs it needs "
          f"{t_fft * 1e3:.1f} ms (ratio {t_eval / t_fft:.2f}); padded grid {rec.im.padded_shape}")
    print(f"  defocus error (%) nominal {np.round(nominal_err, 2).tolist()} -> refined {np.round(df_err, 2).tolist()} "
          f"± {np.round(df_sig, 3).tolist()}")
    print(f"  theta_c error {th_err:+.1f} % ± {th_sig:.2f} %")
    print(f"  phase vortices removed {len(res.extras['vortex_removals'])} times; defocus-scale fits: "
          + ", ".join(f"{d['g'] * 100:+.2f} %" for d in res.extras["defocus_scans"]))
    if name == "c":
        true_shift = truth.shifts_px - truth.shifts_px[res.extras["reference"]]
        print(f"  drift (px) true {np.round(true_shift, 2).tolist()}")
        print(f"            found {np.round(res.shifts_px, 2).tolist()}")


def iteration_cost(size: int, device: str) -> None:
    """Cost of one phase-iteration evaluation (loss + gradient, optics cached) next to its FFTs."""
    series = simulate(SimulationConfig(shape=(size, size), seed=21, oversample=1, **CASES["a"]))
    rec = Reconstructor(series, ReconstructionConfig(device=device))
    t_eval, t_fft = eval_cost(rec), fft_cost_per_iteration(rec, device)
    print(f"\niteration cost at {size}x{size} (padded {rec.im.padded_shape}, N=4, {device}): "
          f"{t_eval * 1e3:.1f} ms per evaluation, FFTs alone {t_fft * 1e3:.1f} ms, ratio {t_eval / t_fft:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--cases", default="abc", help="cases to run; '' for the iteration cost alone")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--max-iter", type=int, default=400)
    args = ap.parse_args()
    print(f"machine: {machine()}")
    for c in args.cases:
        run_case(c, args.size, args.device, args.max_iter)
    for size in (512, 1024):
        iteration_cost(size, args.device)


if __name__ == "__main__":
    main()
