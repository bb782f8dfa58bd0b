"""Several live reconstructor workers on one acquisition: series per minute with 1 and with N workers.

A reconstructor-bound session (instant simulated instrument in the controller's process, no feedback wait,
a fixed number of iterations, one torch thread per worker, no live previews) is run with `reconstructor.count`
1 and N; the time from the first frame on disk to the last result in the run file gives series per minute.
Next to it, the bound measured in the same run: one worker's series per minute times N (perfect scaling).

    python bench/bench_workers.py [--workers 2] [--series 8] [--size 128] [--iterations 120]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine  # noqa: E402
from ltemlive.session.config import RunConfig  # noqa: E402
from ltemlive.session.launch import run_session  # noqa: E402


def session_config(out: Path, workers: int, series: int, size: int, iterations: int) -> RunConfig:
    data = yaml.safe_load((ROOT / "config" / "default.yaml").read_text())
    sim = data["instrument"]["simulated"]
    sim["time_scale"] = 0.0
    # The cheap coherence form: the simulated camera must not compete for the cores (reconstructor-bound)
    sim["simulation"].update({"shape": [size, size], "specimen": "vortex_disc", "coherence": "envelope"})
    data["session"]["output_dir"] = str(out)
    data["plan"].update({"repeats": series, "wait_for_feedback_s": 0, "exposure_s": 0.1, "dose_e_per_px": 50.0})
    # The same frames and the same reconstructions whoever does which series: no feedback between series
    # (it would change the next commands with the timing of results) and no warm start from a worker's last.
    data["feedback"] = {**(data.get("feedback") or {}), "enabled": False}
    data["controller"] = {**(data.get("controller") or {}), "instrument_mode": "in_process"}
    data["reconstruction"] = {**(data.get("reconstruction") or {}), "max_iter": iterations}
    data["reconstructor"] = {**(data.get("reconstructor") or {}), "count": workers, "live": False, "threads": 1,
                             "warm_start": False}
    return RunConfig.model_validate(data)


def series_per_minute(run_file: Path) -> tuple[float, float, int]:
    """Overall: from the first frame on disk to the last result (the pipeline's fill and drain included);
    steady: the results after the first ones over the time they took (one per worker starts the clock)."""
    with h5py.File(run_file, "r") as f:
        t_first = float(np.min(f["frames/t_written_epoch_s"][:]))
        n = int(f["reconstructions/series_index"].shape[0])
        kinds = f["events/kind"].asstr()[:]
        t_events = f["events/t_epoch_s"][:]
    results = sorted(float(t) for k, t in zip(kinds, t_events, strict=True) if k == "result")
    overall = 60.0 * n / (results[-1] - t_first)
    return overall, results, n


def phases(run_file: Path) -> dict[int, np.ndarray]:
    with h5py.File(run_file, "r") as f:
        return {int(s): f["reconstructions/phase"][i] for i, s in enumerate(f["reconstructions/series_index"][:])}


def run(workers: int, args) -> tuple[float, float, dict[int, np.ndarray]]:
    from rich.console import Console

    with tempfile.TemporaryDirectory() as tmp:
        cfg = session_config(Path(tmp), workers, args.series, args.size, args.iterations)
        t0 = time.perf_counter()
        code = run_session(cfg, Console(quiet=True), log_level="WARNING", summary=False)
        wall = time.perf_counter() - t0
        if code != 0:
            raise SystemExit(f"session with {workers} worker(s) failed (exit {code})")
        run_file = next(Path(tmp).glob("*.h5"))
        spm, results, n = series_per_minute(run_file)
        assert n == args.series, f"{n} of {args.series} series reconstructed"
        k = workers  # the first result of each worker starts the steady-state clock
        steady = 60.0 * (len(results) - k) / (results[-1] - results[k - 1])
        return spm, steady, wall, phases(run_file)


HW_PROBE = """
import sys, time, torch
torch.set_num_threads(1)
x = torch.randn(128, 128, dtype=torch.complex64)
t0 = time.perf_counter()
n = 0
while time.perf_counter() - t0 < float(sys.argv[1]):
    for _ in range(50):
        x = torch.fft.ifft2(torch.fft.fft2(x) * 0.5) * 2.0
    n += 50
print(n / (time.perf_counter() - t0))
"""


def hardware_scaling(workers: int, seconds: float = 8.0) -> float:
    """The machine's own bound: the FFT throughput of ``workers`` one-thread processes at once over one's."""
    import subprocess

    def run(k: int) -> float:
        procs = [subprocess.Popen([sys.executable, "-c", HW_PROBE, str(seconds)], stdout=subprocess.PIPE, text=True)
                 for _ in range(k)]
        return sum(float(p.communicate()[0]) for p in procs)

    return run(workers) / run(1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--series", type=int, default=8)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--iterations", type=int, default=120)
    args = p.parse_args()
    print(f"machine: {machine()}")
    print(f"{args.series} series of 4 images {args.size}^2, {args.iterations} iterations, 1 thread per worker")
    one, one_steady, wall1, ph1 = run(1, args)
    many, many_steady, wall_n, ph_n = run(args.workers, args)
    print(f"  1 worker : {one:6.1f} series/min overall, {one_steady:6.1f} steady (session {wall1:.1f} s)")
    print(f"  {args.workers} workers: {many:6.1f} series/min overall, {many_steady:6.1f} steady "
          f"(session {wall_n:.1f} s)")
    print(f"  steady-state speed-up {many_steady / one_steady:.2f}x")
    hw = hardware_scaling(args.workers)
    print(f"  speed-up {many / one:.2f}x; bound {args.workers:.0f}x (perfect scaling of the 1-worker figure, "
          f"{one * args.workers:.1f} series/min); this machine's own scaling of {args.workers} one-thread FFT "
          f"processes at once, measured now: {hw:.2f}x")
    same = sorted(ph1) == sorted(ph_n) and all(np.array_equal(ph1[k], ph_n[k]) for k in ph1)
    worst = max(float(np.max(np.abs(ph1[k] - ph_n[k]))) for k in ph1 if k in ph_n)
    print(f"  results identical to one worker's: {same} (largest phase difference {worst:.3g} rad)")


if __name__ == "__main__":
    main()
