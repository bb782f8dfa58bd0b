"""Vendor adapters against fakes of temscript and PyJEM: unit mapping, calibration, lazy import."""

from __future__ import annotations

import math

import pytest

from drivers.errors import HardwareFault, NotAvailable, OutOfRange
from drivers.factory import build_backend
from drivers.interface import Capability, LensMode, StageMove

pytestmark = pytest.mark.timeout(20)


def test_missing_vendor_package_is_not_available():
    with pytest.raises(NotAvailable, match=r"ltemlive\[fei\]"):
        build_backend({"backend": "thermo", "thermo": {"module": "no_such_temscript"}})
    with pytest.raises(NotAvailable, match=r"ltemlive\[jeol\]"):
        build_backend({"backend": "jeol"})  # no PyJEM on this machine (fakes not on sys.path)


def test_drivers_import_without_vendor_packages():
    import sys

    import drivers.vendors.jeol
    import drivers.vendors.thermo  # noqa: F401

    assert "temscript" not in sys.modules and "PyJEM" not in sys.modules


@pytest.fixture
def thermo(vendor_path):
    import temscript

    temscript.FAKE.reset()
    backend = build_backend({"backend": "thermo", "thermo": {"calibration": {"scale": -1e-6, "offset_m": 5e-6}}})
    yield backend, temscript.FAKE
    backend.close()


@pytest.fixture
def jeol(vendor_path):
    from PyJEM._state import FAKE

    FAKE.reset()
    backend = build_backend({"backend": "jeol", "jeol": {"sensor_shape": [64, 64], "focus_lens": "OM"},
                             "limits": {"lens_modes": ["lorentz", "tem", "diffraction", "unknown"]}})
    yield backend, FAKE
    backend.close()


def test_thermo_defocus_through_calibration(thermo):
    backend, fake = thermo
    # A negative scale: this instrument's reading grows towards under-focus (micrometres).
    assert backend.microscope.set_defocus(2e-4) == pytest.approx(2e-4)
    assert fake.defocus == pytest.approx((2e-4 - 5e-6) / -1e-6)
    fake.defocus = 10.0
    assert backend.microscope.get_defocus() == pytest.approx(-1e-5 + 5e-6)


def test_thermo_stage_units_and_capabilities(thermo):
    backend, fake = thermo
    backend.microscope.move_stage(StageMove(x_m=1e-5, alpha_rad=0.1))
    assert fake.stage["x"] == pytest.approx(1e-5) and fake.stage["a"] == pytest.approx(0.1)
    assert Capability.LENS_MODE not in backend.microscope.capabilities()
    assert backend.microscope.get_lens_mode() is LensMode.LORENTZ
    fake.projection_mode = "DIFFRACTION"
    assert backend.microscope.get_lens_mode() is LensMode.DIFFRACTION
    # pixel size: 14 um detector pixel at 5000x
    assert backend.microscope.get_pixel_size() == pytest.approx(14e-6 / 5000)


def test_thermo_camera_parameters(thermo):
    backend, fake = thermo
    frame = backend.camera.acquire(0.25, binning=2)
    assert fake.camera_params == {"exposure(s)": 0.25, "binning": 2, "image_size": "FULL"}
    assert frame.data.shape == (32, 32) and frame.metadata.dtype == "uint16"
    assert frame.metadata.pixel_size_m == pytest.approx(2 * 14e-6 / 5000)
    assert frame.metadata.truth is None  # real instruments never carry simulator truth


def test_jeol_defocus_is_dac_counts(jeol):
    backend, fake = jeol
    # default calibration: 10 nm per count, focus at 0x8000
    assert backend.microscope.set_defocus(1e-4) == pytest.approx(1e-4, abs=6e-9)
    assert fake.lens["OM"] == 0x8000 + 10_000
    assert backend.microscope.set_defocus(-1.234e-5) == pytest.approx(-1.234e-5, abs=6e-9)
    assert fake.lens["OM"] == 0x8000 - 1234
    assert fake.lens["OLf"] == 0x8000  # the objective is left alone in Lorentz mode


def test_jeol_dac_range_is_out_of_range(jeol):
    backend, fake = jeol
    limited = backend.microscope
    inner = limited.inner
    with pytest.raises(OutOfRange, match="DAC"):
        inner.set_defocus(4e-4)  # 40000 counts above mid-range > 65535
    assert "SetOM" not in fake.calls


def test_jeol_stage_units_and_mode(jeol):
    backend, fake = jeol
    backend.microscope.move_stage(StageMove(x_m=2e-6, y_m=-1e-6, alpha_rad=math.radians(10)))
    assert fake.pos[:2] == [pytest.approx(2000.0), pytest.approx(-1000.0)]
    assert fake.pos[3] == pytest.approx(10.0)
    assert backend.microscope.get_lens_mode() is LensMode.LORENTZ  # LowMAG
    assert backend.microscope.set_lens_mode(LensMode.TEM) is LensMode.TEM
    assert fake.function_mode == 0
    with pytest.raises(OutOfRange):
        backend.microscope.set_lens_mode(LensMode.UNKNOWN)
    fake.calls.clear()
    backend.microscope.inner._inst.config.function_modes.pop(4)
    with pytest.raises(NotAvailable):  # no JEOL function mode configured for diffraction
        backend.microscope.set_lens_mode(LensMode.DIFFRACTION)
    assert "SelectFunctionMode" not in fake.calls


def test_jeol_stage_hardware_limit_is_fault(jeol):
    backend, fake = jeol
    fake.status = [0, 2, 0, 0, 0]
    with pytest.raises(HardwareFault):
        backend.microscope.move_stage(StageMove(x_m=1e-6))


def test_jeol_camera_exposure_in_microseconds(jeol):
    backend, fake = jeol
    frame = backend.camera.acquire(0.5)
    assert fake.exposure_us == 500_000
    assert frame.data.shape == (64, 64) and frame.data.dtype.name == "uint16"
    assert frame.metadata.lens_mode is LensMode.LORENTZ
    assert frame.metadata.magnification == 4000.0
