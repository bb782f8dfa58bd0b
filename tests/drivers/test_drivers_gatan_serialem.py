"""The Gatan (DigitalMicrograph) and SerialEM backends on fakes of their public APIs: unit mapping, read-backs into
frame metadata, vendor errors turned into typed errors, and a short run through the acquisition controller that
ends in a run file like the simulated instrument's."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest
import zmq
from conftest import gatan_config, serialem_config, start_dm_server
from drivers_testlib import sim_config

from drivers.errors import HardwareFault, InstrumentTimeout, NotAvailable, OutOfRange, ServerUnreachable
from drivers.factory import build, build_backend, check_config
from drivers.interface import Capability, Roi, StageMove

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def gatan(vendor_path):
    from PyJEM._state import FAKE as column

    column.reset()
    stack: list = []
    server, cam = start_dm_server(stack)
    backend = build_backend(gatan_config(server.endpoint))
    yield backend, cam, server
    backend.close()
    for fn in reversed(stack):
        fn()


@pytest.fixture
def sem(vendor_path):
    import serialem

    serialem.FAKE.reset()
    backend = build_backend(serialem_config(port=50000, ip="10.0.0.5"))
    yield backend, serialem.FAKE
    backend.close()


# -- Gatan ---------------------------------------------------------------------------------------------------


def test_gatan_frame_carries_dm_pixel_size_processing_and_column_state(gatan):
    backend, cam, _ = gatan
    backend.microscope.set_defocus(1.2e-4)
    frame = backend.camera.acquire(0.5, binning=2)
    md = frame.metadata
    assert cam.last_params["processing"] == 3 and cam.last_params["binning"] == (2, 2)
    assert cam.last_params["exposure"] == 0.5
    assert md.camera == "OneView [gain_normalized]"  # the processing mode is recorded with every frame
    assert md.pixel_size_m == pytest.approx(2 * 0.5e-9)  # DM's calibration, binning included
    assert md.defocus_readback_m == pytest.approx(1.2e-4, abs=2e-8)  # stamped from the (JEOL) column
    assert md.instrument_id == "jeol+gatan" and frame.data.dtype == np.float32 and md.truth is None


def test_gatan_roi_is_dm_binned_read_area(gatan):
    backend, cam, _ = gatan
    frame = backend.camera.acquire(0.1, binning=2, roi=Roi(y0=8, x0=16, height=32, width=16))
    assert cam.last_params["area"] == (4, 8, 20, 16)  # top, left, bottom, right in binned pixels
    assert frame.data.shape == (16, 8)


def test_gatan_pixel_size_from_the_column_when_dm_is_uncalibrated(gatan):
    backend, cam, _ = gatan
    cam.pixel_nm = 0.0  # DM image in pixels: no calibration
    md = backend.camera.acquire(0.1).metadata
    assert md.pixel_size_m == pytest.approx(15e-6 / 4000)  # JEOL: detector pixel / magnification


def test_gatan_processing_dm_cannot_do_is_refused(gatan):
    backend, cam, _ = gatan
    cam.processing_available = (1, 2)  # no gain reference: DM would silently record dark-subtracted
    with pytest.raises(NotAvailable, match="gain_normalized"):
        backend.camera.acquire(0.1)
    cam.processing_available = (1, 2, 3)
    cam.max_binning = 2
    with pytest.raises(OutOfRange, match="binning 4"):
        backend.camera.acquire(0.1, binning=4)


def test_gatan_busy_camera_is_not_available_and_the_server_carries_on(gatan):
    backend, cam, server = gatan
    cam.busy = True
    with pytest.raises(NotAvailable, match="busy"):
        backend.camera.acquire(0.1)
    cam.busy = False
    assert backend.camera.acquire(0.1).data.shape == (64, 64)
    assert server.stats["served"] >= 2


def test_dm_server_is_the_instrument_server(gatan):
    # The same server: a malformed request is NACKed and counted, and the camera-only backend lists no column.
    _, _, server = gatan
    from drivers.client import connect

    microscope, camera = connect(server.endpoint, timeout_s=5.0, liveness_s=2.0)
    try:
        assert microscope.capabilities() == frozenset()
        assert Capability.ROI in camera.capabilities()
        with pytest.raises(NotAvailable):
            microscope.set_defocus(1e-6)
    finally:
        camera.close()
        microscope.close()
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(server.endpoint)
    s.send_multipart([b"LTEMDRV", b"{not json"])
    assert s.poll(3000)
    s.recv_multipart()
    s.close()
    ctx.term()
    assert server.stats["malformed"] == 1


def test_gatan_without_dm_is_not_available():
    from drivers.vendors.gatan import import_digitalmicrograph

    with pytest.raises(NotAvailable, match="inside DM"):
        import_digitalmicrograph()


def test_gatan_config_checks():
    check_config(gatan_config("tcp://127.0.0.1:7002"))
    with pytest.raises(ValueError, match=r"gatan\.column"):
        check_config(gatan_config("tcp://127.0.0.1:7002", column="gatan"))
    with pytest.raises(ValueError, match=r"jeol\.focus_lens"):
        check_config({**gatan_config("tcp://x:1"), "jeol": {"focus_lens": "XX"}})
    with pytest.raises(ValueError, match=r"remote\.endpoint"):
        check_config(gatan_config("tcp://x:1", column="remote"))


# -- SerialEM ------------------------------------------------------------------------------------------------


def test_serialem_connects_and_maps_units(sem):
    backend, fake = sem
    assert fake.connect_to == (50000, "10.0.0.5") and "NoMessageBoxOnError" in fake.calls
    m = backend.microscope
    assert m.set_defocus(-2.5e-5) == pytest.approx(-2.5e-5)
    assert fake.defocus_um == pytest.approx(-25.0)  # SerialEM: µm, under-focus negative (our sign)
    m.move_stage(StageMove(x_m=3e-6))
    assert fake.stage_um == [pytest.approx(3.0), 0.0, 0.0]  # y and z kept at their read-back
    m.move_stage(StageMove(alpha_rad=math.radians(12)))
    assert fake.tilt_deg == pytest.approx(12.0)
    assert Capability.STAGE_BETA not in m.capabilities() and Capability.LENS_MODE not in m.capabilities()
    assert m.get_pixel_size() == pytest.approx(1.5e-9)


def test_serialem_record_parameters_and_blanker_readback(sem):
    backend, fake = sem
    md = backend.camera.acquire(0.3, binning=2).metadata
    assert fake.exposure["R"] == 0.3 and fake.binning["R"] == 2
    assert md.shape == (32, 32) and md.pixel_size_m == pytest.approx(3e-9)
    assert md.beam_blanked is None  # SerialEM cannot read the blanker: unknown until written, never guessed
    backend.microscope.set_beam_blanked(True)
    assert backend.camera.acquire(0.1).metadata.beam_blanked is True and fake.blanked


@pytest.mark.parametrize(
    ("fault", "error"),
    [("busy", NotAvailable), ("lost", ServerUnreachable), ("timeout", InstrumentTimeout), ("fail", HardwareFault)],
)
def test_serialem_errors_are_typed(sem, fault, error):
    backend, fake = sem
    if fault == "timeout":
        fake.fail, fake.fail_message = True, "Timeout getting image from the camera"
    else:
        setattr(fake, fault, True)
    with pytest.raises(error, match="SerialEM"):
        backend.camera.acquire(0.1)


def test_serialem_stage_limit_is_hardware_fault(sem):
    backend, fake = sem
    fake.stage_limit_um = 10.0
    with pytest.raises(HardwareFault, match="MoveStageTo"):
        backend.microscope.move_stage(StageMove(x_m=5e-5))


def test_serialem_missing_module_is_not_available():
    with pytest.raises(NotAvailable, match="PythonModules"):
        build_backend({"backend": "serialem"})


# -- a short run through the controller ends in a run file like the simulated one ------------------------------


def _run(tmp_path, config) -> tuple[str, dict]:
    from ltemlive.controller.controller import Controller, RunState
    from ltemlive.controller.feedback import DefocusFeedback, FeedbackConfig
    from ltemlive.controller.plan import Plan
    from ltemlive.wire.frames import OpticsInfo

    ctx = zmq.Context()
    mic, cam = build(config)
    try:
        c = Controller(
            mic, cam, Plan(defocus_m=[-1.2e-4, 0.0, 1.2e-4], repeats=1, exposure_s=0.1),
            DefocusFeedback(FeedbackConfig(), None), session="t", output_dir=tmp_path,
            optics=OpticsInfo(voltage_v=200e3), context=ctx, drain_timeout_s=0.5, max_defocus_step_m=6e-4,
        )
        assert c.run() == RunState.DONE and c.outcome == "complete"
        with h5py.File(c.run_path, "r") as f:
            keys: dict = {}
            f.visititems(lambda name, obj: keys.setdefault(name, getattr(obj, "shape", None)))
            commanded = f["frames/defocus_commanded_m"][:]
        np.testing.assert_allclose(commanded, [-1.2e-4, 0.0, 1.2e-4], atol=1e-12)
        return str(c.run_path), keys
    finally:
        cam.close()
        mic.close()
        ctx.destroy(linger=0)


def _layout(keys: dict) -> set[str]:
    # the datasets and groups; shapes differ only where the image size does
    return {k for k in keys if not k.startswith("frames/data")}


@pytest.mark.parametrize("kind", ["gatan", "serialem"])
def test_through_focus_run_file_like_the_simulated_one(tmp_path, vendor_path, kind):
    _, sim_keys = _run(tmp_path / "sim", sim_config())
    stack: list = []
    try:
        if kind == "gatan":
            from PyJEM._state import FAKE as column

            column.reset()
            server, _ = start_dm_server(stack)
            config = gatan_config(server.endpoint)
        else:
            import serialem

            serialem.FAKE.reset()
            config = serialem_config()
        _, keys = _run(tmp_path / kind, config)
    finally:
        for fn in reversed(stack):
            fn()
    assert _layout(keys) == _layout(sim_keys)
