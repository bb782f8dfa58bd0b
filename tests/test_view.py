"""RunView: events folded into what a watcher shows, and the alerts, on synthetic events (no sockets)."""

from __future__ import annotations

import numpy as np

from ltemlive.publisher.view import RunView
from ltemlive.wire.updates import Event

T0 = 1_700_000_000.0


def ev(topic: str, t: float, seq: int, source: str = "controller", **payload) -> Event:
    return Event(topic=topic, source=source, seq=seq, t_epoch_s=T0 + t, payload=payload)


def fold(events, **kw) -> RunView:
    view = RunView(**kw)
    for e in events:
        view.apply(e)
    return view


def keys(view: RunView, now: float, **kw) -> set[str]:
    return {a.key for a in view.alerts(now=T0 + now, **kw)}


def test_no_frame_alert_only_while_acquiring():
    running = [ev("status", 0, 1, state="running", run_id="r1"),
               ev("progress", 0, 2, series=0, frame=-1, n_series=2, n_frames=4),
               ev("frame", 1, 3, series=0, index=0)]
    view = fold(running, no_frame_s=10)
    assert "no_frame" not in keys(view, 5)
    assert "no_frame" in keys(view, 12)
    view.apply(ev("status", 12, 4, state="paused"))
    assert "no_frame" not in keys(view, 30)  # a paused run is not stalled


def test_series_aborted_until_the_next_series():
    view = fold([ev("status", 0, 1, state="running"),
                 ev("log", 1, 2, kind="series", series=0, status="aborted", message="series 0 aborted: operator")])
    alerts = view.alerts(now=T0 + 2)
    assert [a.message for a in alerts if a.key == "series_aborted"] == ["series 0 aborted: operator"]
    view.apply(ev("progress", 3, 3, series=1, frame=-1, n_series=2, n_frames=4))
    assert "series_aborted" not in keys(view, 4)


def test_an_abort_after_the_last_series_is_still_said():
    """The abort came while the controller waited for reconstructions: no series was cut short, the run was."""
    view = fold([ev("status", 0, 1, state="aborting"),
                 ev("log", 1, 2, kind="series", series=11, status="complete", message="series 11 complete"),
                 ev("status", 2, 3, state="done", outcome="aborted", abort_reason="aborted by the operator")])
    assert [(a.key, a.message) for a in view.alerts(now=T0 + 3)] == [("run_aborted",
                                                                       "run aborted: aborted by the operator")]
    view.apply(ev("status", 4, 4, state="done", outcome="complete"))
    assert keys(view, 5) == set()


def test_reconstructor_down_from_its_silence_or_its_word():
    view = fold([ev("status", 0, 1, state="running"),
                 ev("worker", 0, 2, source="recon-1", worker="recon-1", state="idle", interval_s=1.0)])
    assert "reconstructor_down" not in keys(view, 2)
    assert "reconstructor_down" in keys(view, 10)
    view.apply(ev("worker", 10, 3, source="recon-1", worker="recon-1", state="stopped", interval_s=1.0))
    assert "reconstructor_down" in keys(view, 10)
    view.apply(ev("status", 11, 4, state="done"))
    assert "reconstructor_down" not in keys(view, 30)  # nobody needs one after the run


def test_feedback_rejected_but_not_when_frozen_on_purpose():
    view = fold([ev("calibration", 0, 1, series_index=2, accepted=False, reason="invalid: sigma too large",
                    history=[{"series": 2, "accepted": False}])])
    assert "feedback_rejected" in keys(view, 1)
    assert view.calibration_history == [{"series": 2, "accepted": False}]
    view.apply(ev("calibration", 2, 2, series_index=3, accepted=False, reason="frozen: by the operator"))
    assert "feedback_rejected" not in keys(view, 3)


def test_publisher_silence_and_run_error():
    view = fold([ev("status", 0, 1, state="error", error="camera timeout")])
    assert keys(view, 1, publisher_alive=False) == {"publisher_silent", "run_error"}


def test_loss_history_from_the_source_is_merged_once():
    history = [[1, 10.0, 9.0], [2, 5.0, 4.0]]
    view = fold([ev("recon", 0, 1, source="recon-1", series=0, iteration=2, loss=5.0, data_loss=4.0,
                    history=history),
                 ev("recon", 1, 2, source="recon-1", series=0, iteration=3, loss=4.0, data_loss=3.5,
                    history=[*history, [3, 4.0, 3.5]])])
    assert [r[1] for r in view.loss] == [1, 2, 3]
    # the result's history has the iterations after the last preview
    view.apply(ev("result", 2, 3, source="recon-1", series=0, history=[*history, [3, 4.0, 3.5], [9, 1.0, 0.9]]))
    assert [r[1] for r in view.loss] == [1, 2, 3, 9]


def test_preview_pixels_are_scaled_to_the_downsampled_size():
    view = RunView()
    e = ev("recon", 0, 5, source="recon-1", series=0, iteration=1, loss=1.0, pixel_size_m=2e-9, shape=[512, 512])
    view.apply(e, [np.zeros((128, 128), np.float32)])
    pic = view.pictures["phase"]
    assert pic.version == 5 and not pic.final
    assert np.isclose(pic.pixel_size_m, 8e-9)
    # an older preview never replaces a newer picture
    view.apply(ev("result", 0, 7, source="recon-1", series=0, pixel_size_m=2e-9, shape=[512, 512]),
               [np.ones((128, 128), np.float32), np.ones((128, 128), np.float32)])
    view.apply(e, [np.zeros((128, 128), np.float32)])
    assert view.pictures["phase"].final and view.pictures["amplitude"].version == 7


def test_odd_payloads_never_raise():
    view = RunView()
    view.apply(ev("recon", 0, 1, source="x", series=0, iteration="not a number", loss=None))
    view.apply(ev("recon", 0, 2, source="x", history=[["a"], None, [1, "b", 2]]))
    view.apply(ev("calibration", 0, 3, history="nope"))
    s = view.summary(now=T0)
    assert s["last_seq"] == 3 and isinstance(s["alerts"], list)
