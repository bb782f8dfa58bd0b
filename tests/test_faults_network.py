"""The frame stream through a misbehaving network (tests/faultproxy.py): a blackholed link is detected within
the peer timeout and its series replayed to another worker; a reset link reconnects and starts over; delay and
throttling slow it down but lose nothing. Every series reaches some worker whole, in order."""

from __future__ import annotations

import time

import numpy as np
import pytest
import zmq
from faultproxy import FaultProxy
from test_stream import publish_series

from ltemlive.stream.client import FrameStreamClient
from ltemlive.stream.server import FrameStreamServer

pytestmark = pytest.mark.timeout(60)
N = 4  # frames per series


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


class Worker:
    """Collects whole series (START, N frames, END after the last START), as a reconstructor does."""

    def __init__(self, endpoint: str, name: str, ctx: zmq.Context, **kw):
        self.client = FrameStreamClient(endpoint, name, context=ctx, **kw)
        self.partial: dict[int, list[int]] = {}
        self.whole: dict[int, list[float]] = {}
        self.resets = 0

    def pump(self, server: FrameStreamServer) -> None:
        items = self.client.poll(0.02)
        n = 0
        for it in items:
            if it.kind == "reset":
                self.partial.clear()
                self.resets += 1
                continue
            n += 1
            s = it.msg.series
            if it.kind == "start":
                self.partial[s] = []
            elif it.kind == "frame" and s in self.partial:
                self.partial[s].append(float(it.data[0, 0]))
            elif it.kind == "end" and s in self.partial:
                self.whole[s] = self.partial.pop(s)
                server.series_done(s)  # its "result" reached the controller
        if n:
            self.client.consumed(n)

    def close(self) -> None:
        self.client.close()


def run_until(server, workers, done, timeout_s: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s and not done():
        for w in workers:
            w.pump(server)
    return time.monotonic() - t0


def expected(series: int) -> list[float]:
    return [float(series * N + i) for i in range(N)]


def test_blackholed_worker_is_detected_and_its_series_replayed(ctx):
    with FrameStreamServer(context=ctx, peer_timeout_s=1.0, heartbeat_s=0.2) as server:
        proxy = FaultProxy("127.0.0.1", int(server.endpoint.rsplit(":", 1)[1])).start()
        workers: list[Worker] = []
        try:
            far = Worker(proxy.endpoint, "far", ctx, window=2, peer_timeout_s=1.0, ping_s=0.2)
            workers.append(far)
            publish_series(server, 0, n=N, first_id=0, end=False)
            run_until(server, [far], lambda: far.partial.get(0), 5)  # far holds series 0 mid-way
            proxy.mode = "blackhole"
            t0 = time.monotonic()
            near = Worker(server.endpoint, "near", ctx)
            workers.append(near)
            server.end_series(0, "complete")
            for s in range(1, 3):
                publish_series(server, s, n=N, first_id=s * N)
            took = run_until(server, [far, near], lambda: set(near.whole) >= {0, 1, 2}, 20)
            detected = time.monotonic() - t0
            print(f"\nblackholed worker: its series replayed and all done {took:.2f} s after the blackhole "
                  f"(peer timeout 1.0 s); replayed {server.stats['series_replayed']}")
            assert {s: near.whole[s] for s in range(3)} == {s: expected(s) for s in range(3)}
            assert server.stats["series_replayed"] >= 1
            assert detected <= 3.0 + 1.0  # the goal: a hung peer detected within 3 s (plus the series' work)
            assert not server.pending()
        finally:
            for w in workers:
                w.close()
            proxy.close()


def test_reset_link_reconnects_and_loses_nothing(ctx):
    with FrameStreamServer(context=ctx, peer_timeout_s=1.0, heartbeat_s=0.2) as server:
        proxy = FaultProxy("127.0.0.1", int(server.endpoint.rsplit(":", 1)[1])).start()
        w = Worker(proxy.endpoint, "w", ctx, window=2, peer_timeout_s=1.0, ping_s=0.2)
        try:
            for s in range(4):
                publish_series(server, s, n=N, first_id=s * N)
            run_until(server, [w], lambda: len(w.whole) >= 1, 10)
            for _ in range(3):  # cut the link three times while series are in flight
                proxy.reset()
                run_until(server, [w], lambda: False, 0.4)
            took = run_until(server, [w], lambda: set(w.whole) >= {0, 1, 2, 3}, 20)
            print(f"\nreset link x3: every series whole {took:.2f} s after the last reset; resets seen {w.resets}, "
                  f"replayed {server.stats['series_replayed']}")
            assert {s: w.whole[s] for s in range(4)} == {s: expected(s) for s in range(4)}
            assert not server.pending()
        finally:
            w.close()
            proxy.close()


def test_delay_and_throttle_lose_nothing_and_keep_order(ctx):
    with FrameStreamServer(context=ctx) as server:
        proxy = FaultProxy("127.0.0.1", int(server.endpoint.rsplit(":", 1)[1])).start()
        proxy.delay_s, proxy.rate_bytes_s = 0.02, 2e6  # 20 ms per chunk, 2 MB/s
        w = Worker(proxy.endpoint, "w", ctx, window=3)
        try:
            for s in range(3):
                publish_series(server, s, n=N, first_id=s * N)
            took = run_until(server, [w], lambda: len(w.whole) == 3, 30)
            print(f"\ndelayed and throttled link: 3 series whole in {took:.2f} s, {proxy.forwarded} bytes")
            assert list(w.whole) == [0, 1, 2]  # in order
            assert {s: w.whole[s] for s in range(3)} == {s: expected(s) for s in range(3)}
            assert np.isfinite(took)
        finally:
            w.close()
            proxy.close()
