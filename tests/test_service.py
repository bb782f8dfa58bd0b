"""Integration tests of the live service: real processes (publisher, controller, reconstructor; instrument
in-process or through its server) on loopback with random ports."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from service_util import ROOT, Session, read_run, small, write_config

pytestmark = pytest.mark.timeout(300)


def test_frames_reach_disk_and_every_series_is_reconstructed(tmp_path):
    s = Session(small(tmp_path, plan={"repeats": 3}), tmp_path)
    try:
        assert s.wait_controller_exit(120) == 0
    finally:
        s.close()
    run = read_run(s.run_file)
    assert run["n_frames"] == 12
    assert run["series_status"] == ["complete"] * 3
    assert sorted(run["recon_series"]) == [0, 1, 2]
    for prov in run["provenance"]:
        k = prov["series_index"]
        assert prov["frame_ids"] == [i for i in range(12) if run["series_index"][i] == k]
        assert len(prov["parameters"]["defocus_m"]) == 4


# The reliability table asks for >= 20 kills: that many is a soak test (about 3 min); 2 run by default (each
# restart imports torch: seconds).
@pytest.mark.parametrize(("n_kills", "n_series"), [(2, 3), pytest.param(20, 26, marks=pytest.mark.soak)])
def test_reconstructor_killed_many_times_loses_nothing(tmp_path, n_kills, n_series):
    # Slow enough acquisition that kills land mid-series: series of 4 frames at ~0.25 s per frame.
    data = small(
        tmp_path,
        instrument={"simulated": {"time_scale": 1.0, "readout_time_s": 0.05}},
        plan={"repeats": n_series, "exposure_s": 0.2},
        reconstruction={"max_iter": 15},
    )
    s = Session(data, tmp_path)
    rng = random.Random(8)
    kills = 0
    n_frames = 4 * n_series
    try:
        while kills < n_kills:
            time.sleep(rng.uniform(0.2, 0.8))
            child = s.children["reconstructor"]
            child.proc.send_signal(signal.SIGKILL)
            child.proc.wait(5)
            child.stop()
            kills += 1
            s.start("reconstructor")
        st = s.wait(lambda st: st["frames_written"] == n_frames, 120, "the last frame")
        replayed = st["stream"]["stats"].get("series_replayed", 0)
        code = s.wait_controller_exit(180)
        st_ok = code == 0
    finally:
        s.close()
    run = read_run(s.run_file)
    assert st_ok
    assert run["n_frames"] == n_frames  # 0 frames lost
    assert run["series_status"] == ["complete"] * n_series
    assert sorted(run["recon_series"]) == list(range(n_series))  # every series reconstructed, each once
    for prov in run["provenance"]:
        k = prov["series_index"]
        assert prov["frame_ids"] == [i for i in range(n_frames) if run["series_index"][i] == k]
    assert replayed >= 1  # what a killed reconstructor had in hand was replayed to the next one
    print(f"\n{kills} kills: {replayed} series replayed, {n_frames}/{n_frames} frames on disk, "
          f"{n_series}/{n_series} series reconstructed once")


def test_pause_resume_abort_restore_defocus(tmp_path):
    data = small(
        tmp_path,
        instrument={"simulated": {"time_scale": 1.0}},
        plan={"repeats": 5, "exposure_s": 0.2},
    )
    s = Session(data, tmp_path)
    try:
        s.wait(lambda st: st["frames_written"] >= 2, 60, "two frames")
        # the operator's command line: freeze the feedback
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        cli = subprocess.run([sys.executable, "-m", "ltemlive.cli", "control", s.ready["controller"]["control"],
                              "freeze_feedback"], capture_output=True, text=True, env=env, timeout=60)
        assert cli.returncode == 0 and "frozen" in cli.stdout, cli.stdout + cli.stderr
        assert s.status()["feedback_frozen"] is True
        r = s.control.command("pause")
        assert r.ok
        st = s.wait(lambda st: st["state"] == "paused", 10, "paused")
        n = st["frames_written"]
        time.sleep(1.5)
        assert s.status()["frames_written"] == n  # nothing acquired while paused
        assert s.control.command("resume").ok
        # abort while paused, mid-series (paused after the first or second frame of a series)
        s.wait(lambda st: st["frames_written"] > n and st["frames_written"] % 4 in (1, 2), 20, "mid-series")
        s.control.command("pause")
        s.wait(lambda st: st["state"] == "paused", 10, "paused again")
        assert s.control.command("abort").ok
        code = s.wait_controller_exit(30)
    finally:
        s.close()
    assert code == 1  # the plan did not complete
    run = read_run(s.run_file)
    statuses = run["series_status"]
    assert statuses[-1] == "aborted" and all(x == "complete" for x in statuses[:-1])
    kinds = [k for k, _ in run["events"]]
    assert "defocus" in kinds
    restored = [m for k, m in run["events"] if k == "defocus"][-1]
    assert "restored to +0.0000 mm" in restored
    aborted = len(statuses) - 1
    # downstream too: the reconstructor got END(aborted) and reported the series aborted, not reconstructed
    assert any(k == "result" and f"series {aborted}: reconstruction aborted" in m for k, m in run["events"])
    assert aborted not in run["recon_series"]


def test_sigint_stops_every_process_cleanly(tmp_path):
    data = small(
        tmp_path,
        instrument={"simulated": {"time_scale": 1.0}},
        plan={"repeats": 20, "exposure_s": 0.3},
        controller={"instrument_mode": "remote"},
    )
    cfg = write_config(tmp_path, data)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ltemlive.cli", "run", "--config", str(cfg), "--no-summary"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path,
    )
    runs = tmp_path / "runs"
    deadline = time.monotonic() + 120
    run_file = None
    while time.monotonic() < deadline and run_file is None:
        found = sorted(runs.glob("demo-*.h5")) if runs.exists() else []
        if found:
            try:
                if read_run(found[0])["n_frames"] >= 5:
                    run_file = found[0]
            except (OSError, KeyError):
                pass
        time.sleep(0.2)
    assert run_file is not None, "no frames appeared"
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=15)  # no hang; the time itself is a figure, printed, not asserted
    took = time.monotonic() - t0
    print(f"\nSIGINT -> every process stopped in {took:.2f} s")
    assert proc.returncode == 130, out[-2000:]
    assert "interrupted" in out
    import re

    pids = [int(m) for log in runs.glob("logs/*/*.log") for m in re.findall(r"'pid': (\d+)", log.read_text())]
    assert pids, "no role reported its pid"
    for pid in pids:  # every role process is gone (and reaped)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    run = read_run(run_file)  # a valid file, readable with h5py alone
    assert run["series_status"][-1] == "aborted"
    assert all(x in ("complete", "aborted") for x in run["series_status"])
    with h5py.File(run_file, "r") as f:  # closed properly: a plain (non-SWMR) reader opens it too
        assert f.attrs["format"] == "ltemlive-run"


def _closed_loop(tmp_path, scale_error, offset_m, max_iter=200):
    data = small(
        tmp_path,
        # A weak vortex disc well inside the field, whose defocus scale this reconstructor finds from one series
        # (to ~0.6 %, sigma 0.55 %, at 120-150 iterations): the loop is under test here, not the reconstructor on hard
        # specimens (on a strong 128^2 resolution pattern the first estimate was 1.03 for a true 1.10).
        instrument={"simulated": {"simulation": {"shape": [128, 128], "pixel_size_m": 10e-9, "specimen": "vortex_disc",
                                                 "specimen_params": {"radius_m": 300e-9, "thickness_m": 20e-9,
                                                                     "mean_inner_potential_v": 10.0, "xi0_m": 300e-9},
                                                 "oversample": 1, "source_points": 3,  # quick frames
                                                 "defocus_scale_error": scale_error,
                                                 "defocus_offset_m": offset_m, "dose_e_per_px": 200.0}}},
        plan={"repeats": 3, "exposure_s": 0.5, "dose_e_per_px": 100.0, "wait_for_feedback_s": 300},
        reconstruction={"max_iter": max_iter},
    )
    s = Session(data, tmp_path, publisher=False)
    try:
        assert s.wait_controller_exit(600) == 0
    finally:
        s.close()
    run = read_run(s.run_file)
    rel = (run["true"] - run["planned"]) / run["planned"] * 100
    lines = [f"closed loop, scale error {scale_error:+.0%}, offset {offset_m * 1e6:+.1f} um, {max_iter} iterations:"]
    for k in range(3):
        sel = run["series_index"] == k
        lines.append(
            f"  series {k}: calibration scale {run['calibration_scale'][k - 1] if k else 1.0:.5f}; "
            "true-vs-plan error per image (%) "
            + ", ".join(f"{p * 1e3:+.2f} mm: {e:+.3f}" for p, e in zip(run["planned"][sel], rel[sel], strict=True))
        )
    print("\n" + "\n".join(lines))
    return run, rel


@pytest.mark.slow
@pytest.mark.timeout(900)
# With the offset the scale must be right to ~0.1 %: at 200 iterations the reconstructed scale is ~0.7 % low and
# the +1.6 mm image ends at +0.98 %; at 400 iterations at +0.80 % (measured; the offset itself is not observable
# by the scale-only reconstruction model, see the note in docs/adr/0004-live-service.md).
# The offset case takes ~2x the other (400 iterations a series, 100-200 s on 2 cores): a soak test, run with -m soak.
@pytest.mark.parametrize(
    ("scale_error", "offset_m", "max_iter"),
    [(0.10, 0.0, 120), pytest.param(0.10, 5e-6, 400, marks=pytest.mark.soak)],
)
def test_feedback_brings_true_defocus_to_the_plan(tmp_path, scale_error, offset_m, max_iter):
    run, rel = _closed_loop(tmp_path, scale_error, offset_m, max_iter)
    third = run["series_index"] == 2
    large = third & (np.abs(run["planned"]) > 1e-3)
    assert large.sum() == 2, f"the third series was not acquired: {run['series_status']}"
    assert np.all(np.abs(rel[large]) < 1.0), rel[large]
    first_large = (run["series_index"] == 0) & (np.abs(run["planned"]) > 1e-3)
    assert np.all(np.abs(rel[first_large]) > 5)  # it really started miscalibrated
    assert all(run["calibration_accepted"])


def test_send_path_never_waits_for_an_absent_frozen_or_slow_reconstructor(tmp_path):
    data = small(
        tmp_path,
        instrument={"simulated": {"time_scale": 1.0, "readout_time_s": 0.05, "lens_settle_time_s": 0.02}},
        plan={"repeats": 14, "exposure_s": 0.1},
        reconstruction={"max_iter": 400},  # slow: one series takes longer than acquiring several
        reconstructor={"window": 1},
    )
    s = Session(data, tmp_path, reconstructor=False)
    phases = {}
    try:
        t0 = time.time()
        s.wait(lambda st: st["frames_written"] >= 8, 60, "frames with no reconstructor")
        phases["absent"] = (t0, time.time())
        rec = s.start("reconstructor")
        s.wait(lambda st: any(w["series"] for w in st["stream"]["workers"].values()), 60, "a busy reconstructor")
        os.kill(rec.proc.pid, signal.SIGSTOP)
        t1 = time.time()
        n1 = s.status()["frames_written"]
        time.sleep(3.0)
        n2 = s.status()["frames_written"]
        phases["frozen"] = (t1, time.time())
        os.kill(rec.proc.pid, signal.SIGCONT)
        t2 = time.time()
        st = s.wait(lambda st: st["state"] in ("done",) or st["frames_written"] >= 56, 120, "the plan")
        phases["slow"] = (t2, time.time())
        p99, offer_p99, offer_median = st["frame_time_p99_s"], st["offer_time_p99_s"], st["offer_time_median_s"]
        s.control.command("stop")
        s.wait_controller_exit(30)
    finally:
        s.close()
    run = read_run(s.run_file)
    assert run["n_frames"] == 56
    assert n2 - n1 >= 4, "frames stopped reaching the run file while the reconstructor was frozen"
    lines = [f"controller per-frame time (run file + flush + offer): p99 {p99 * 1e3:.2f} ms; the offer alone (the "
             f"send path): median {offer_median * 1e3:.2f} ms, p99 {offer_p99 * 1e3:.2f} ms (goal <= 10 ms)"]
    tw = run["t_written"]
    medians = {}
    for name, (a, b) in phases.items():
        sel = (tw >= a) & (tw <= b)
        gaps = np.diff(tw[sel])
        if gaps.size:
            medians[name] = float(np.median(gaps))
            lines.append(f"  {name:6s}: {sel.sum():2d} frames, interval median {medians[name]:.3f} s, "
                         f"max {gaps.max():.3f} s; camera end -> on disk p99 "
                         f"{np.percentile((tw - run['t_end'])[sel], 99) * 1e3:.1f} ms")
    print("\n" + "\n".join(lines))  # absolute times are figures, not assertions (tests never assert times)
    # ...but the acquisition's pace with the reconstructor frozen or slow must be its pace without one: a send
    # path that waits for the consumer (0.2 s per offer, say) slows every frame (measured: 0.22 -> 0.42 s).
    for name in ("frozen", "slow"):
        assert medians[name] <= 1.5 * medians["absent"], (name, medians)
    # ...and the offer itself must not wait at all (a wait in every phase alike keeps the paces equal: a 0.2 s
    # sleep per offer gave a median of 205 ms). A non-blocking send takes about a millisecond; the median, not
    # the p99, so that a loaded machine's scheduling hiccups do not count.
    assert offer_median < 0.02, f"the send path waits: median offer {offer_median * 1e3:.0f} ms"


def test_ltemlive_run_exits_0_and_writes_a_run_file_and_summary(tmp_path):
    data = small(tmp_path, plan={"repeats": 2}, controller={"instrument_mode": "remote"})
    cfg = write_config(tmp_path, data)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "ltemlive.cli", "run", "--config", str(cfg)], capture_output=True,
                       text=True, env=env, cwd=tmp_path, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    files = sorted((tmp_path / "runs").glob("demo-*.h5"))
    assert len(files) == 1
    with h5py.File(files[0], "r") as f:  # h5py alone, plain mode: the file was closed properly
        assert f["frames/data"].shape == (8, 128, 128)
        assert [x.decode() for x in f["series/status"][:]] == ["complete", "complete"]
        assert f["reconstructions/phase"].shape[0] == 2
    summary = files[0].with_suffix("")
    for name in ("phase.png", "induction.png", "calibration.png", "summary.yaml"):
        assert (summary / name).stat().st_size > 1000
    assert "reconstructed" in r.stdout and "refined defocus" in r.stdout


def test_replay_streams_a_recorded_run_through_the_reconstructor_again(tmp_path):
    # Recorded without a reconstructor: the replay reconstructs the frames again, and a third process start (torch
    # and its optimiser imports, ~6 s on a slow 2-core machine) kept this test near 30 s.
    s = Session(small(tmp_path, plan={"repeats": 2}, controller={"drain_timeout_s": 0}), tmp_path, reconstructor=False,
                publisher=False)
    try:
        assert s.wait_controller_exit(120) == 0
    finally:
        s.close()
    before = s.run_file.read_bytes()
    cfg = write_config(tmp_path, small(tmp_path))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "ltemlive.cli", "replay", str(s.run_file), "--config", str(cfg),
                        "--max-iter", "10", "--out", str(tmp_path / "replayed")], capture_output=True, text=True,
                       env=env, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert s.run_file.read_bytes() == before  # the recorded run is only read
    out = sorted((tmp_path / "replayed").glob("*-replay-*.h5"))
    assert len(out) == 1
    run = read_run(out[0])
    src = read_run(s.run_file)
    assert run["n_frames"] == src["n_frames"] == 8
    np.testing.assert_array_equal(run["readback"], src["readback"])
    assert sorted(run["recon_series"]) == [0, 1]
    assert len(run["calibration_scale"]) == 2  # what the feedback would have done, recorded (advisory)
