"""The reconstructor service in-process against a real frame stream and a stand-in controller socket: a series
it cannot reconstruct is reported and skipped, the next one is reconstructed, the service keeps running."""

from __future__ import annotations

import threading
import time

import numpy as np
import zmq

from ltemlive.recon_service.config import ReconstructorServiceConfig
from ltemlive.recon_service.service import ReconstructorService
from ltemlive.reconstruct.config import ReconstructionConfig
from ltemlive.sim_bridge import simulate
from ltemlive.stream.server import FrameStreamServer
from ltemlive.wire import control as cm
from ltemlive.wire import frames as fm
from simulator.series import SimulationConfig

DEFOCUS = [-1.6e-3, -0.15e-3, 0.15e-3, 1.6e-3]


def offer(stream, k, images, defocus, px, frame_id0):
    stream.begin_series(fm.Start(series=k, run_id="r", n_planned=len(images), defocus_planned_m=list(defocus),
                                 frame_shape=images[0].shape, pixel_size_m=px, optics=fm.OpticsInfo(voltage_v=200e3)))
    for i, (img, d) in enumerate(zip(images, defocus, strict=True)):
        stream.offer_frame(fm.FrameMsg(series=k, index=i, frame_id=frame_id0 + i, defocus_nominal_m=d,
                                       defocus_planned_m=d, defocus_commanded_m=d, exposure_s=1.0),
                           np.ascontiguousarray(img, dtype=np.float32))
    stream.end_series(k, "complete")


def test_a_bad_series_is_reported_and_skipped(single_thread):
    ctx = zmq.Context()
    sim = simulate(SimulationConfig(shape=(64, 64), specimen="vortex_disc", defocus_m=DEFOCUS, seed=2))
    ctl = ctx.socket(zmq.ROUTER)
    ctl.setsockopt(zmq.LINGER, 0)
    port = ctl.bind_to_random_port("tcp://127.0.0.1")
    stream = FrameStreamServer(context=ctx).start()
    service = ReconstructorService(
        ReconstructorServiceConfig(live=False), ReconstructionConfig(max_iter=10),
        frames_endpoint=stream.endpoint, control_endpoint=f"tcp://127.0.0.1:{port}", context=ctx,
    )
    stop = threading.Event()
    worker = threading.Thread(target=service.run, args=(stop,), daemon=True)
    worker.start()
    results = {}
    try:
        # series 0: every image at the same defocus (nothing to reconstruct); series 1: a good one
        offer(stream, 0, sim.images, [1e-3] * 4, sim.pixel_size_m, 0)
        offer(stream, 1, sim.images, DEFOCUS, sim.pixel_size_m, 4)
        deadline = time.monotonic() + 120
        while len(results) < 2 and time.monotonic() < deadline:
            if ctl.poll(200):
                frames = ctl.recv_multipart(copy=False)
                msg, arrays = cm.TO_CONTROLLER.decode(frames[1:])
                results.setdefault(msg.series, (msg, [a.copy() for a in arrays]))
                ctl.send_multipart([frames[0].bytes, *cm.FROM_CONTROLLER.encode(cm.Ack(series=msg.series))])
        assert worker.is_alive()  # still running after the bad series
    finally:
        stop.set()
        worker.join(10)
        stream.stop()
        ctl.close(0)
        ctx.destroy(linger=0)
    bad, _ = results[0]
    assert bad.status == "error" and "different defocus" in bad.reason
    good, arrays = results[1]
    assert good.status == "ok" and len(arrays) == 2 and arrays[0].shape == (64, 64)
    assert good.parameters["defocus_nominal_m"] == DEFOCUS
    assert good.provenance["frame_ids"] == [4, 5, 6, 7]
