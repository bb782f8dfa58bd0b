"""The acquisition controller in-process on the simulated instrument (no reconstructor): plans and hooks, the
calibration applied to commands, step-limited moves, persisted run state and the report of an interrupted run."""

from __future__ import annotations

import json
import threading

import h5py
import numpy as np
import pytest
import zmq

from drivers.factory import build
from drivers.interface import StageMove
from ltemlive.controller.controller import Controller, RunState
from ltemlive.controller.feedback import DefocusCalibration, DefocusFeedback, FeedbackConfig
from ltemlive.controller.plan import Plan, SeriesHook
from ltemlive.controller.state import RunStateFile
from ltemlive.wire.frames import OpticsInfo

INSTRUMENT = {
    "backend": "simulated",
    "limits": {"defocus_min_m": -2e-3, "defocus_max_m": 2e-3, "max_defocus_step_m": 2e-3},
    "simulated": {"time_scale": 0.0, "simulation": {"shape": [64, 64], "specimen": "vortex_disc", "seed": 3,
                                                     "defocus_scale_error": 0.1}},
}


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def controller(tmp_path, ctx, plan: Plan, calibration: DefocusCalibration | None = None, **kw) -> Controller:
    mic, cam = build(INSTRUMENT)
    return Controller(
        mic, cam, plan, DefocusFeedback(FeedbackConfig(), calibration), session="t", output_dir=tmp_path,
        optics=OpticsInfo(voltage_v=200e3), context=ctx, drain_timeout_s=0.5, max_defocus_step_m=2e-3, **kw,
    )


def test_plan_with_hooks_and_calibrated_commands(tmp_path, ctx):
    plan = Plan(
        defocus_m=[-1.6e-3, 1.6e-3], repeats=2, exposure_s=0.1,
        hooks=[SeriesHook(stage=StageMove(x_m=1e-6), labels={"field_t": 0.1}), SeriesHook(labels={"field_t": 0.2})],
    )
    c = controller(tmp_path, ctx, plan, DefocusCalibration(scale=1.1, offset_m=0.0))
    assert c.run() == RunState.DONE and c.outcome == "complete"
    with h5py.File(c.run_path, "r") as f:
        planned = f["frames/defocus_planned_m"][:]
        commanded = f["frames/defocus_commanded_m"][:]
        np.testing.assert_allclose(commanded, planned / 1.1)  # the plan is the TRUE defocus
        truth = [json.loads(t)["truth"]["true_defocus_m"] for t in f["frames/metadata_json"].asstr()[:]]
        # the simulated lens really is 10 % strong: with the right calibration the truth is the plan
        np.testing.assert_allclose(truth, planned, atol=2e-6)
        plans = [json.loads(t) for t in f["series/plan_json"].asstr()[:]]
        assert [p["hook"]["labels"]["field_t"] for p in plans] == [0.1, 0.2]
        kinds = list(f["events/kind"].asstr()[:])
        assert kinds.count("hook") >= 3  # stage move + two label records
        assert list(f["series/status"].asstr()[:]) == ["complete", "complete"]


def test_large_moves_go_in_steps_within_the_limit(tmp_path, ctx):
    # -1.6 -> +1.6 mm is 3.2 mm, beyond the 2 mm step limit: the controller moves in steps, the driver's limit
    # (checked against a fresh read-back) is never violated and the run completes.
    c = controller(tmp_path, ctx, Plan(defocus_m=[-1.6e-3, 1.6e-3], repeats=2, exposure_s=0.1))
    assert c.run() == RunState.DONE and c.outcome == "complete"
    with h5py.File(c.run_path, "r") as f:
        assert "error" not in list(f["events/kind"].asstr()[:])


def test_abort_before_the_first_frame_restores_defocus(tmp_path, ctx):
    c = controller(tmp_path, ctx, Plan(defocus_m=[-1e-3, 1e-3], repeats=3, exposure_s=0.1, interval_s=30))
    t = threading.Thread(target=c.run)
    t.start()
    import time

    deadline = time.monotonic() + 10
    while c.frames_written < 2 and time.monotonic() < deadline:  # first series, then a 30 s wait
        time.sleep(0.02)
    c.abort("test")
    t.join(10)
    assert not t.is_alive() and c.outcome == "aborted"
    assert c.microscope.get_defocus() == 0.0


def test_a_restarted_controller_reports_where_the_last_one_stood(tmp_path, ctx):
    state = RunStateFile(tmp_path / "t.state.json")
    state.write({"run_id": "t-old", "run_file": str(tmp_path / "t-old.h5"), "state": "acquiring", "series_index": 4,
                 "frame_index": 2, "frames_written": 19})
    c = controller(tmp_path, ctx, Plan(defocus_m=[-1e-3, 1e-3], repeats=1, exposure_s=0.1))
    assert c.previous is not None and "interrupted" in c.previous["summary"]
    assert "series 4 frame 2" in c.previous["summary"]
    c.run()
    with h5py.File(c.run_path, "r") as f:
        events = dict(zip(f["events/kind"].asstr()[:], f["events/message"].asstr()[:], strict=False))
    assert "interrupted" in events["previous_run"]
    after = state.read()
    assert after["state"] == "done" and after["run_id"] == c.run_id and after["frames_written"] == 2


def _faulty(tmp_path, ctx, prob, repeats):
    import copy

    inst = copy.deepcopy(INSTRUMENT)
    inst["simulated"]["faults"] = {"drop_frame_prob": prob}
    mic, cam = build(inst)
    c = Controller(
        mic, cam, Plan(defocus_m=[-1e-3, 1e-3], repeats=repeats, exposure_s=0.1), DefocusFeedback(FeedbackConfig()),
        session="t", output_dir=tmp_path, optics=OpticsInfo(voltage_v=200e3), context=ctx, drain_timeout_s=0.2,
    )
    return c, c.run()


def test_a_camera_that_always_fails_ends_the_run_in_error_with_the_defocus_restored(tmp_path, ctx):
    c, state = _faulty(tmp_path, ctx, 1.0, repeats=5)
    assert state == RunState.ERROR and "in a row failed" in c.error
    assert c.microscope.get_defocus() == 0.0
    with h5py.File(c.run_path, "r") as f:
        assert list(f["series/status"].asstr()[:]) == ["error"] * 3
        assert any("frame dropped" in m for m in f["series/reason"].asstr()[:])


def test_an_occasional_camera_fault_costs_one_series_not_the_run(tmp_path, ctx):
    c, state = _faulty(tmp_path, ctx, 0.25, repeats=6)
    assert state == RunState.DONE and c.outcome == "complete"
    with h5py.File(c.run_path, "r") as f:
        statuses = list(f["series/status"].asstr()[:])
    assert len(statuses) == 6 and "complete" in statuses and "error" in statuses, statuses
