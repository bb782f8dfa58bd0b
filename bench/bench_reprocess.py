"""Batch reprocessing throughput: series per minute in one process and on local Dask clusters of 1 and 2 workers.

One run file of N simulated series (vortex disc, 4 images each, with dose) is reconstructed four ways:

  1. single process: ltemlive.batch.process_item called here, one series after the other, 1 torch thread (the
     per-series work of a batch, without Dask; the imports paid before the clock starts);
  2. ``reprocess`` on a LocalCluster of 1 worker process;
  3. ``reprocess`` on a LocalCluster of 2 worker processes;
  4. ``reprocess`` on a LocalCluster of 1 worker process with 2 torch threads per series.

Series per minute is counted from the first task submitted to the last result in (the workers' first task
pays their imports; the cluster's start-up and shut-down, a few seconds, are printed apart). The 1-thread batch
results are checked bit for bit against the single-process ones.
Outputs go to a temporary directory (removed unless --keep). Run:
    python bench/bench_reprocess.py [--series 8] [--size 96] [--max-iter 30] [--keep]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import machine


def write_run(path: Path, n_series: int, size: int) -> Path:
    from ltemlive.sim_bridge import simulate
    from ltemlive.storage.runfile import RunWriter
    from simulator.series import SimulationConfig

    defocus = [-1.2e-3, -0.3e-3, 0.3e-3, 1.2e-3]
    sims = [simulate(SimulationConfig(shape=(size, size), specimen="vortex_disc", dose_e_per_px=300.0, seed=k,
                                      oversample=1, source_points=1, defocus_m=defocus)) for k in range(n_series)]
    mic = sims[0].microscope
    with RunWriter(path, run_id=path.stem, session="bench", frame_shape=(size, size),
                   pixel_size_m=sims[0].pixel_size_m, config_yaml="",
                   instrument={"optics": {"voltage_v": mic.voltage_v, "cs_m": mic.cs_m,
                                          "theta_c_rad": mic.theta_c_rad}}) as w:
        for k, s in enumerate(sims):
            w.begin_series(k, {"defocus_planned_m": defocus, "dose_e_per_px": 300.0})
            for j, df in enumerate(defocus):
                t = time.time()
                w.append_frame(s.images[j], series_index=k, index_in_series=j, defocus_planned_m=df,
                               defocus_commanded_m=df, defocus_readback_m=float(s.defocus_m[j]),
                               calibration_scale=1.0, calibration_offset_m=0.0, exposure_s=0.1,
                               t_start_epoch_s=t, t_end_epoch_s=t + 0.1, metadata={})
            w.end_series(k, "complete")
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=int, default=8)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--max-iter", type=int, default=30)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()

    from rich.console import Console

    from ltemlive.batch import discover, process_item, reprocess

    tmp = Path(tempfile.mkdtemp(prefix="bench-reprocess-"))
    try:
        print(machine())
        print("load average (1, 5, 15 min) at the start: " + ", ".join(f"{v:.2f}" for v in os.getloadavg()))
        print(f"{args.series} series of 4 images {args.size}x{args.size}, max_iter {args.max_iter}, "
              "1 torch thread per series")
        run = write_run(tmp / "run.h5", args.series, args.size)
        overrides = {"max_iter": args.max_iter}

        items = discover([run], out=tmp / "single", config=None, overrides=overrides).items
        process_item(discover([run], out=tmp / "warm", config=None, overrides=overrides).items[0])  # imports
        t = time.perf_counter()
        for it in items:
            assert process_item(it, threads=1)["status"] == "ok"
        single_s = time.perf_counter() - t
        rows = [("single process", single_s, None)]

        for n, threads in ((1, 1), (2, 1), (1, 2)):
            quiet = Console(file=io.StringIO())
            rep = reprocess([run], quiet, out=tmp / f"batch{n}x{threads}", workers=n, threads_per_worker=threads,
                            max_iter=args.max_iter)
            assert rep.exit_code == 0 and len(rep.done) == args.series, quiet.file.getvalue()
            name = f"Dask LocalCluster, {n} worker(s) x {threads} thread(s)"
            rows.append((name, rep.work_s, rep.wall_s - rep.work_s))
            if threads != 1:
                continue  # another thread count may change the last bits: compared with 1 thread only
            for it in items:
                rel = Path(it.out_dir).relative_to(tmp / "single")
                a = tifffile.imread(Path(it.out_dir) / "phase.tif")
                b = tifffile.imread(tmp / f"batch{n}x{threads}" / rel / "phase.tif")
                assert np.array_equal(a, b), f"{it.label}: batch phase differs from the single-process one"

        print(f"{'':48} {'time (s)':>9} {'series/min':>11} {'speed-up':>9} {'cluster start+stop (s)':>23}")
        for name, s, overhead in rows:
            extra = "" if overhead is None else f"{overhead:23.1f}"
            print(f"{name:48} {s:9.1f} {args.series / s * 60:11.1f} {single_s / s:9.2f} {extra}")
        print("batch phases identical to the single-process ones: yes")
        print("load average (1, 5, 15 min) at the end: " + ", ".join(f"{v:.2f}" for v in os.getloadavg())
              + " (other work on the machine slows every row)")
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
