"""Differentiability of ltemlive.optics.forward.ImageModel.images: autograd gradients with respect to phase,
amplitude, per-image defocus, theta_c, astigmatism (a_c, a_s) and per-image shifts are finite and agree with
central finite differences (float64), and torch.autograd.gradcheck passes on a tiny case.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ltemlive.optics import MicroscopeParams
from ltemlive.optics.forward import ImageModel

F64 = torch.float64
PIXEL_M = 5e-9
N = 32
DEFOCUS_M = (-0.4e-3, 0.1e-3, 0.5e-3)
PARAMS = MicroscopeParams(cs_m=1e-3, theta_c_rad=1e-5, focal_spread_m=100e-9, astig_m=3e-8, astig_azimuth_rad=0.4)


pytestmark = pytest.mark.usefixtures("single_thread")


def gauss(n, cy, cx, sigma):
    y, x = np.mgrid[:n, :n]
    return np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma**2))


@pytest.fixture(scope="module")
def setup():
    gen = torch.Generator().manual_seed(0)
    m = ImageModel((N, N), PIXEL_M, PARAMS, padding="mirror", max_abs_defocus_m=0.5e-3, dtype=F64)
    phase = torch.tensor(1.2 * gauss(N, 14, 17, 4) - 0.6 * gauss(N, 20, 10, 3), dtype=F64)
    amplitude = torch.tensor(1.0 - 0.2 * gauss(N, 16, 16, 6), dtype=F64)
    weights = torch.rand((len(DEFOCUS_M), N, N), generator=gen, dtype=F64)
    return m, phase, amplitude, weights


def loss_fn(m, weights, phase, amplitude, defocus, theta_c=None, astig=None, shifts=None):
    img = m.images(phase, amplitude, defocus, theta_c_rad=theta_c, astig=astig, shifts_px=shifts)
    return (weights * img).sum() + 0.5 * (img - 1.0).square().sum()


def base_args(setup):
    _, phase, amplitude, _ = setup
    return dict(
        phase=phase.clone(),
        amplitude=amplitude.clone(),
        defocus=torch.tensor(DEFOCUS_M, dtype=F64),
        theta_c=torch.tensor(1e-5, dtype=F64),
        astig=(torch.tensor(2e-8, dtype=F64), torch.tensor(-1.5e-8, dtype=F64)),
        shifts=torch.tensor([[0.0, 0.0], [0.4, -0.3], [-1.1, 0.7]], dtype=F64),
    )


def evaluate(setup, args):
    m, _, _, weights = setup
    return loss_fn(
        m, weights, args["phase"], args["amplitude"], args["defocus"], args["theta_c"], args["astig"], args["shifts"]
    )


def directional_fd(setup, name, direction, h, index=None):
    """Central difference of the loss along `direction` of argument `name` (or of astig[index])."""

    def at(sign):
        args = base_args(setup)
        if index is None:
            args[name] = args[name] + sign * h * direction
        else:
            astig = list(args["astig"])
            astig[index] = astig[index] + sign * h * direction
            args["astig"] = tuple(astig)
        with torch.no_grad():
            return evaluate(setup, args).item()

    return (at(+1) - at(-1)) / (2 * h)


def autograd_grads(setup):
    args = base_args(setup)
    args["phase"].requires_grad_(True)
    args["amplitude"].requires_grad_(True)
    args["defocus"].requires_grad_(True)
    args["theta_c"].requires_grad_(True)
    args["shifts"].requires_grad_(True)
    for a in args["astig"]:
        a.requires_grad_(True)
    loss = evaluate(setup, args)
    loss.backward()
    grads = {k: args[k].grad for k in ("phase", "amplitude", "defocus", "theta_c", "shifts")}
    grads["a_c"], grads["a_s"] = args["astig"][0].grad, args["astig"][1].grad
    return grads


@pytest.fixture(scope="module")
def grads(setup):
    return autograd_grads(setup)


def test_all_gradients_exist_and_are_finite(grads):
    for name, g in grads.items():
        assert g is not None, name
        assert torch.isfinite(g).all(), name
        assert g.abs().max() > 0, name


@pytest.mark.parametrize("name", ["phase", "amplitude"])
def test_map_gradients_match_finite_differences(setup, grads, name):
    gen = torch.Generator().manual_seed(1)
    g = grads[name]
    for _ in range(2):
        v = torch.randn((N, N), generator=gen, dtype=F64)
        fd = directional_fd(setup, name, v, h=1e-5)
        assert (g * v).sum().item() == pytest.approx(fd, rel=1e-5)
    # and single pixels (one near the edge, so the mirror-padding gather is exercised)
    for iy, ix in [(14, 17), (0, 3), (N - 1, N - 2)]:
        v = torch.zeros((N, N), dtype=F64)
        v[iy, ix] = 1.0
        fd = directional_fd(setup, name, v, h=1e-5)
        assert g[iy, ix].item() == pytest.approx(fd, rel=1e-4, abs=1e-8 * g.abs().max().item())


def test_defocus_gradient_matches_finite_differences(setup, grads):
    g = grads["defocus"]
    assert g.shape == (len(DEFOCUS_M),)
    for k in range(len(DEFOCUS_M)):
        v = torch.zeros(len(DEFOCUS_M), dtype=F64)
        v[k] = 1.0
        fd = directional_fd(setup, "defocus", v, h=1e-9)  # 1 nm steps on ~0.1-0.5 mm
        assert g[k].item() == pytest.approx(fd, rel=1e-4)


def test_theta_c_gradient_matches_finite_differences(setup, grads):
    fd = directional_fd(setup, "theta_c", torch.tensor(1.0, dtype=F64), h=1e-9)
    assert grads["theta_c"].item() == pytest.approx(fd, rel=1e-4)
    assert grads["theta_c"].item() != 0.0


@pytest.mark.parametrize(("key", "index"), [("a_c", 0), ("a_s", 1)])
def test_astigmatism_gradient_matches_finite_differences(setup, grads, key, index):
    fd = directional_fd(setup, "astig", torch.tensor(1.0, dtype=F64), h=1e-11, index=index)
    assert grads[key].item() == pytest.approx(fd, rel=1e-4)


def test_shift_gradient_matches_finite_differences(setup, grads):
    g = grads["shifts"]
    assert g.shape == (len(DEFOCUS_M), 2)
    for k in range(len(DEFOCUS_M)):
        for j in range(2):
            v = torch.zeros((len(DEFOCUS_M), 2), dtype=F64)
            v[k, j] = 1.0
            fd = directional_fd(setup, "shifts", v, h=1e-5)
            assert g[k, j].item() == pytest.approx(fd, rel=1e-4, abs=1e-8 * g.abs().max().item())


def test_gradient_at_zero_astigmatism_and_zero_theta_c_is_finite():
    """The Cartesian astigmatism form has no singular azimuth at Ca = 0; theta_c = 0 is allowed too."""
    m = ImageModel((16, 16), PIXEL_M, MicroscopeParams(), padding="periodic", dtype=F64)
    phase = torch.tensor(gauss(16, 8, 8, 2), dtype=F64, requires_grad=True)
    a_c = torch.tensor(0.0, dtype=F64, requires_grad=True)
    a_s = torch.tensor(0.0, dtype=F64, requires_grad=True)
    theta = torch.tensor(0.0, dtype=F64, requires_grad=True)
    df = torch.tensor([0.0, 1e-4], dtype=F64, requires_grad=True)
    img = m.images(phase, None, df, theta_c_rad=theta, astig=(a_c, a_s))
    img.square().sum().backward()
    for t in (phase, a_c, a_s, theta, df):
        assert t.grad is not None and torch.isfinite(t.grad).all()


def test_float32_gradients_flow():
    m = ImageModel((16, 16), PIXEL_M, MicroscopeParams(), padding="mirror", pad_px=4)
    phase = torch.tensor(gauss(16, 8, 8, 2), dtype=torch.float32, requires_grad=True)
    df = torch.tensor([-1e-4, 1e-4], dtype=torch.float32, requires_grad=True)
    m.images(phase, None, df).sum().backward()
    assert phase.grad.dtype == torch.float32 and torch.isfinite(phase.grad).all()
    assert df.grad.dtype == torch.float32 and torch.isfinite(df.grad).all()


def test_gradcheck_phase_and_defocus():
    n = 16
    m = ImageModel((n, n), PIXEL_M, PARAMS, padding="mirror", pad_px=4, dtype=F64)
    phase = torch.tensor(gauss(n, 7, 9, 2.5), dtype=F64, requires_grad=True)
    amplitude = torch.tensor(1.0 - 0.1 * gauss(n, 8, 8, 4), dtype=F64)
    defocus_mm = torch.tensor([-0.2, 0.3], dtype=F64, requires_grad=True)  # mm, so eps is a sensible step

    def f(ph, d_mm):
        return m.images(ph, amplitude, d_mm * 1e-3)

    assert torch.autograd.gradcheck(f, (phase, defocus_mm), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)
