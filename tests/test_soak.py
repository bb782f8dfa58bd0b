"""Soak (issue 12, scope 4; not in the default run: ``pytest -m soak tests/test_soak.py``): a session at its
nominal rate for LTEMLIVE_SOAK_S seconds (default 1800) with a fault every 30 s - the reconstructor killed,
frozen for 5 s - then: 0 frames lost, the controller's memory slope under 1 MB/min, a constant number of open
file descriptors."""

from __future__ import annotations

import os
import random
import signal
import time

import numpy as np
import pytest
from service_util import Session, read_run, rss_mb, small

pytestmark = [pytest.mark.soak, pytest.mark.timeout(int(os.environ.get("LTEMLIVE_SOAK_S", "1800")) + 600)]


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_soak_with_a_fault_every_30_s(tmp_path):
    duration_s = float(os.environ.get("LTEMLIVE_SOAK_S", "1800"))
    data = small(
        tmp_path,
        instrument={"simulated": {"time_scale": 1.0, "readout_time_s": 0.05}},
        plan={"repeats": 100_000, "exposure_s": 0.5},
        reconstruction={"max_iter": 20},
        reconstructor={"live": True, "preview_interval_s": 1.0},
    )
    s = Session(data, tmp_path)
    rng = random.Random(12)
    ctl_pid = s.children["controller"].proc.pid
    samples: list[tuple[float, float, int]] = []
    faults: list[str] = []
    t0 = time.monotonic()
    try:
        s.wait(lambda st: st["frames_written"] >= 4, 120, "the first series")
        next_fault = time.monotonic() + 30
        while time.monotonic() - t0 < duration_s:
            time.sleep(1.0)
            if len(samples) == 0 or time.monotonic() - t0 >= 30 * len(samples):
                samples.append((time.monotonic() - t0, rss_mb(ctl_pid), fds(ctl_pid)))
            if time.monotonic() >= next_fault:
                next_fault += 30
                recon = s.children["reconstructor"]
                kind = rng.choice(["kill", "freeze"])
                faults.append(kind)
                if kind == "kill":
                    recon.proc.send_signal(signal.SIGKILL)
                    recon.proc.wait(5)
                    recon.stop()
                    s.start("reconstructor")
                else:
                    recon.proc.send_signal(signal.SIGSTOP)
                    time.sleep(5)
                    recon.proc.send_signal(signal.SIGCONT)
            assert s.children["controller"].proc.poll() is None, "the controller died"
        st = s.status()
        s.control.command("stop")
        s.wait_controller_exit(120)  # a stop ends the run with its series aborted: the file is what counts
    finally:
        s.close()
    run = read_run(s.run_file)
    t, rss, nfd = (np.array(v, dtype=float) for v in zip(*samples, strict=True))
    warm = t >= min(120.0, t[-1] / 3)  # after the caches (frame cache, h5py chunk cache) have filled
    slope = float(np.polyfit(t[warm] / 60, rss[warm], 1)[0]) if warm.sum() >= 3 else float("nan")
    print(f"\nsoak {duration_s:.0f} s: {len(faults)} faults ({faults.count('kill')} kills, "
          f"{faults.count('freeze')} freezes), {run['n_frames']} frames on disk ({st['frames_written']} written "
          f"at the last status), controller RSS {rss[0]:.0f} -> {rss[-1]:.0f} MB (slope {slope:+.2f} MB/min after "
          f"warm-up), open fds {int(nfd.min())}-{int(nfd.max())}")
    print("  t (s), RSS (MB), fds: " + ", ".join(f"{a:.0f} {b:.0f} {int(c)}" for a, b, c in samples))
    assert run["n_frames"] >= st["frames_written"]  # 0 frames lost: every frame written is on disk
    assert all(x in ("complete", "aborted") for x in run["series_status"])
    assert slope < 1.0, f"memory grows {slope:.2f} MB/min"
    assert nfd[warm].max() - nfd[warm].min() <= 2, f"file descriptors {nfd.tolist()}"
