"""Several reconstructor workers on one acquisition (issue 13, item 1): whole series per worker by credit, a
worker killed mid-series has its series finished by another, results written in series order."""

from __future__ import annotations

import signal
import time

import pytest
from service_util import Session, read_run, small

from ltemlive.recon_service.config import worker_names
from ltemlive.session.launch import Child

pytestmark = pytest.mark.timeout(240)


def test_worker_names():
    assert worker_names("recon-1", 1) == ["recon-1"]
    assert worker_names("recon-1", 3) == ["recon-1", "recon-2", "recon-3"]
    assert worker_names("gpu", 2) == ["gpu-1", "gpu-2"]


def _workers(s: Session, *names: str) -> dict[str, Child]:
    """Reconstructor workers, started together (each imports torch: seconds) and then awaited."""
    children = {}
    for name in names:
        cfg = s.cfg.model_copy(update={"reconstructor": s.cfg.reconstructor.model_copy(update={"worker": name})})
        children[name] = s.children[name] = Child("reconstructor", cfg, s.log_dir, log_level="INFO", name=name)
    for child in children.values():
        child.wait_ready(120)
    return children


@pytest.mark.slow
def test_a_worker_killed_mid_series_loses_nothing_and_order_is_kept(tmp_path):
    data = small(
        tmp_path,
        instrument={"simulated": {"time_scale": 1.0, "readout_time_s": 0.05}},
        plan={"repeats": 4, "exposure_s": 0.2},
        reconstruction={"max_iter": 20},
        reconstructor={"live": False},
    )
    s = Session(data, tmp_path, reconstructor=False)
    workers = _workers(s, "recon-a", "recon-b")
    victim = None
    try:
        # Kill whichever worker holds a series while that series is still unreconstructed.
        deadline = time.monotonic() + 90
        while victim is None and time.monotonic() < deadline:
            st = s.status()
            held = {w: v["series"] for w, v in st["stream"]["workers"].items() if v["series"]}
            done = {int(k) for k in st["results"]}
            for name, series in held.items():
                if name in workers and any(k not in done for k in series) and st["series_index"] >= 1:
                    victim = (name, [k for k in series if k not in done])
                    break
            time.sleep(0.05)
        assert victim is not None, "no worker was ever seen holding a series"
        workers[victim[0]].proc.send_signal(signal.SIGKILL)
        st = s.wait(lambda st: st["frames_written"] == 16, 120, "the last frame")
        replayed = st["stream"]["stats"].get("series_replayed", 0)
        code = s.wait_controller_exit(180)
    finally:
        for name, child in workers.items():
            child.stop()
            s.children.pop(name, None)
        s.close()
    run = read_run(s.run_file)
    assert code == 0
    assert run["n_frames"] == 16  # 0 frames lost
    assert run["series_status"] == ["complete"] * 4
    assert run["recon_series"] == list(range(4)), run["recon_series"]  # each once, in series order
    by = {p["series_index"]: p["worker"] for p in run["provenance"]}
    survivor = ({"recon-a", "recon-b"} - {victim[0]}).pop()
    assert all(by[k] == survivor for k in victim[1]), (victim, by)  # the killed one's series: finished by the other
    assert replayed >= 1
    print(f"\nkilled {victim[0]} holding series {victim[1]}; workers per series {by}; replayed {replayed}")
