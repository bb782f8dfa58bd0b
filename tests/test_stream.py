"""Frame stream: ROUTER (acquisition) and DEALER (reconstructor) over loopback with random ports."""

from __future__ import annotations

import time

import numpy as np
import pytest
import zmq

from ltemlive.stream.client import FrameStreamClient
from ltemlive.stream.server import FrameStreamServer
from ltemlive.wire import frames as fm

OPTICS = fm.OpticsInfo(voltage_v=200e3)


def start_msg(series: int, n: int = 3) -> fm.Start:
    return fm.Start(
        series=series, run_id="r1", n_planned=n, defocus_planned_m=[1e-3 * (i - 1) for i in range(n)],
        frame_shape=(8, 8), pixel_size_m=5e-9, optics=OPTICS,
    )


def frame(series: int, index: int, frame_id: int) -> tuple[fm.FrameMsg, np.ndarray]:
    msg = fm.FrameMsg(
        series=series, index=index, frame_id=frame_id, defocus_nominal_m=1e-3, defocus_planned_m=1e-3,
        defocus_commanded_m=1e-3, exposure_s=1.0,
    )
    return msg, np.full((8, 8), frame_id, dtype=np.float32)


def publish_series(server, series, n=3, first_id=0, end=True):
    server.begin_series(start_msg(series, n))
    for i in range(n):
        server.offer_frame(*frame(series, i, first_id + i))
    if end:
        server.end_series(series, "complete")


def collect(client, until, timeout=5.0, consume=True):
    items = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not until(items):
        got = client.poll(0.05)
        items += got
        if consume and got:
            client.consumed(len([i for i in got if i.kind != "reset"]))
    return items


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)  # a failed test must not hang on a socket it left open


def test_series_arrive_in_order_with_data(ctx):
    with FrameStreamServer(context=ctx) as server:
        publish_series(server, 0)
        publish_series(server, 1, first_id=3)
        client = FrameStreamClient(server.endpoint, "w1", context=ctx)
        items = collect(client, lambda it: sum(i.kind == "end" for i in it) == 2)
        kinds = [(i.kind, i.msg.series) for i in items]
        assert kinds == [("start", 0), *[("frame", 0)] * 3, ("end", 0), ("start", 1), *[("frame", 1)] * 3, ("end", 1)]
        assert [float(i.data[0, 0]) for i in items if i.kind == "frame"] == [0, 1, 2, 3, 4, 5]
        client.close()


def test_credit_bounds_what_is_in_flight(ctx):
    with FrameStreamServer(context=ctx) as server:
        publish_series(server, 0, n=10)
        client = FrameStreamClient(server.endpoint, "w1", window=2, context=ctx)
        items = collect(client, lambda it: False, timeout=0.5, consume=False)
        assert len(items) == 2  # START + one frame; nothing more without credit
        client.consumed(2)
        items += collect(client, lambda it: any(i.kind == "end" for i in it))
        assert sum(i.kind == "frame" for i in items) == 10
        client.close()


def test_the_acquisition_never_waits_without_a_consumer(ctx):
    with FrameStreamServer(context=ctx) as server:
        t0 = time.perf_counter()
        for s in range(20):
            publish_series(server, s, n=4, first_id=4 * s)
        assert time.perf_counter() - t0 < 2.0  # generous: nothing here touches the network
        assert server.pending() == list(range(20))


def test_a_dead_worker_series_is_replayed_to_the_next(ctx):
    with FrameStreamServer(context=ctx, peer_timeout_s=0.5, heartbeat_s=0.1) as server:
        publish_series(server, 0, n=4, end=False)
        first = FrameStreamClient(server.endpoint, "w1", context=ctx)
        got = collect(first, lambda it: sum(i.kind == "frame" for i in it) >= 2)
        assert sum(i.kind == "frame" for i in got) >= 2
        first.close(say_bye=False)  # as if killed: no BYE
        second = FrameStreamClient(server.endpoint, "w2", context=ctx)
        server.end_series(0, "complete")
        items = collect(second, lambda it: any(i.kind == "end" for i in it))
        assert [i.msg.index for i in items if i.kind == "frame"] == [0, 1, 2, 3]
        assert server.stats["series_replayed"] == 1
        second.close()


def test_replay_reads_back_frames_that_left_the_cache(ctx):
    store = {i: np.full((8, 8), i, dtype=np.float32) for i in range(6)}
    with FrameStreamServer(context=ctx, read_frame=store.__getitem__, cache_bytes=1) as server:
        publish_series(server, 0, n=6)
        client = FrameStreamClient(server.endpoint, "w1", context=ctx)
        items = collect(client, lambda it: any(i.kind == "end" for i in it))
        assert [float(i.data[0, 0]) for i in items if i.kind == "frame"] == list(range(6))
        assert server.stats["read_back"] >= 4
        client.close()


def test_done_series_are_not_sent_and_a_stranger_is_reset(ctx):
    with FrameStreamServer(context=ctx) as server:
        publish_series(server, 0)
        publish_series(server, 1, first_id=3)
        server.series_done(0)
        client = FrameStreamClient(server.endpoint, "w1", context=ctx)
        items = collect(client, lambda it: any(i.kind == "end" for i in it))
        assert {i.msg.series for i in items} == {1}
        client.close()
        stranger = ctx.socket(zmq.DEALER)
        stranger.setsockopt(zmq.LINGER, 0)
        stranger.connect(server.endpoint)
        stranger.send_multipart(fm.UPSTREAM.encode(fm.Credit(credit=3)))
        assert stranger.poll(2000)
        msg, _ = fm.DOWNSTREAM.decode(stranger.recv_multipart())
        assert isinstance(msg, fm.Reset)
        stranger.close()


def test_duplicates_are_dropped_and_counted(ctx):
    with FrameStreamServer(context=ctx) as server:
        client = FrameStreamClient(server.endpoint, "w1", context=ctx)
        publish_series(server, 0)
        items = collect(client, lambda it: any(i.kind == "end" for i in it))
        assert len(items) == 5
        # the same FRAME again (as after a retransmission) is dropped
        msg, data = frame(0, 1, 1)
        item = client._accept([*fm.DOWNSTREAM.encode(msg.model_copy(update={"seq": 99}), [data])])
        assert item is None and client.stats["duplicates"] == 1
        client.close()
