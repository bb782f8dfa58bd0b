"""The fused data loss against autograd through the plain composition it replaces."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ltemlive.optics.forward import ImageModel
from ltemlive.optics.params import MicroscopeParams
from ltemlive.reconstruct.fused import FusedDataLoss, fused_data_loss
from ltemlive.reconstruct.loss import poisson_loss, sqrt_gaussian_loss

DOSE = 50.0
# Non-square padded grid, crop offset away from 0 on both axes.
HP, WP, H, W, TOP, LEFT = 24, 20, 15, 12, 5, 3


def plain(phase, amplitude, transfer, scales, data, *, top, left, kind, dose=None, mask=None, blur=None):
    """The composition SeriesModel.forward + loss build, for autograd to differentiate."""
    field = torch.fft.ifft2(torch.fft.fft2(torch.polar(amplitude, phase)) * transfer)
    intensity = field.real.square() + field.imag.square()
    if blur is not None:
        intensity = torch.fft.irfft2(torch.fft.rfft2(intensity) * blur, s=intensity.shape[-2:])
    h, w = data.shape[-2:]
    images = intensity[..., top : top + h, left : left + w] * scales[:, None, None]
    return poisson_loss(images, data, dose, mask) if kind == "poisson" else sqrt_gaussian_loss(images, data, mask)


def case(n: int, dtype=torch.float64, kind: str = "poisson", seed: int = 0, shape=(HP, WP, H, W)):
    hp, wp, h, w = shape
    g = torch.Generator().manual_seed(seed)
    phase = 0.7 * torch.randn(hp, wp, generator=g, dtype=torch.float64)
    amplitude = 1 + 0.1 * torch.randn(hp, wp, generator=g, dtype=torch.float64)
    transfer = torch.polar(
        torch.rand(n, hp, wp, generator=g, dtype=torch.float64),
        3 * torch.randn(n, hp, wp, generator=g, dtype=torch.float64),
    )
    scales = 1 + 0.2 * torch.rand(n, generator=g, dtype=torch.float64)
    data = torch.poisson(2 * torch.rand(n, h, w, generator=g, dtype=torch.float64) * DOSE, generator=g) / DOSE
    if kind == "sqrt_gaussian":
        data = data - 0.05  # a few negative pixels: sqrt of the clamped data
    mask = torch.rand(h, w, generator=g) > 0.3
    cplx = torch.complex128 if dtype == torch.float64 else torch.complex64
    return phase.to(dtype), amplitude.to(dtype), transfer.to(cplx), scales.to(dtype), data.to(dtype), mask


def both(n, kind, masked, dtype=torch.float64, chunk=None, needs=(True, True, True)):
    phase, amplitude, transfer, scales, data, mask = case(n, dtype, kind)
    kw = dict(top=TOP, left=LEFT, kind=kind, dose=DOSE, mask=mask if masked else None)
    out = []
    for fn in (plain, lambda *a, **k: fused_data_loss(*a, **k, chunk=chunk)):
        inputs = [t.clone().requires_grad_(need) for t, need in zip((phase, amplitude, scales), needs, strict=True)]
        loss = fn(inputs[0], inputs[1], transfer, inputs[2], data, **kw)
        wrt = [t for t in inputs if t.requires_grad]
        out.append((loss, torch.autograd.grad(loss, wrt) if wrt else ()))
    return out


@pytest.mark.parametrize("kind", ["poisson", "sqrt_gaussian"])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_loss_value(kind, masked, dtype, rtol):
    (ref, _), (got, _) = both(4, kind, masked, dtype, needs=(False, False, False))
    assert got.dtype == dtype and got.shape == ()
    torch.testing.assert_close(got, ref, rtol=rtol, atol=0)


@pytest.mark.parametrize("kind", ["poisson", "sqrt_gaussian"])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize(("n", "chunk"), [(1, None), (4, None), (4, 4), (4, 3)])
def test_gradients_match_autograd(kind, masked, n, chunk):
    (ref, ref_grads), (got, grads) = both(n, kind, masked, chunk=chunk)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=0)
    for name, r, g in zip(("phase", "amplitude", "scales"), ref_grads, grads, strict=True):
        assert g.shape == r.shape, name
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-12 * r.abs().max().item(), msg=name)


@pytest.mark.parametrize(
    "needs", [(True, False, False), (False, True, False), (False, False, True), (True, False, True)]
)
def test_only_requested_gradients(needs):
    (_, ref_grads), (_, grads) = both(4, "poisson", False, needs=needs)
    assert len(grads) == sum(needs)
    for r, g in zip(ref_grads, grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-12 * r.abs().max().item())


def test_clamped_pixels_pass_no_gradient():
    # One image so dim that all its intensities are clamped at eps, another partly.
    phase, amplitude, transfer, scales, data, _ = case(3, kind="poisson")
    scales = torch.tensor([1.0, 1e-9, 1e-4], dtype=torch.float64)
    kw = dict(top=TOP, left=LEFT, kind="poisson", dose=DOSE)
    grads = []
    for fn in (plain, fused_data_loss):
        p, s = phase.clone().requires_grad_(), scales.clone().requires_grad_()
        grads.append(torch.autograd.grad(fn(p, amplitude, transfer, s, data, **kw), (p, s)))
    for r, g in zip(*grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-12 * r.abs().max().item())
    assert grads[1][1][1] == 0


@pytest.mark.parametrize("kind", ["poisson", "sqrt_gaussian"])
def test_gradcheck(kind):
    phase, amplitude, transfer, scales, data, mask = case(2, kind=kind, shape=(8, 6, 5, 4))
    inputs = tuple(t.requires_grad_() for t in (phase, amplitude, scales))

    def f(p, a, s):
        return fused_data_loss(p, a, transfer, s, data, top=2, left=1, kind=kind, dose=DOSE, mask=mask)

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-8, rtol=1e-6)


def test_matches_image_model_composition():
    """Against the SeriesModel path (ImageModel.propagate with a cached transfer x shift ramp), float32."""
    im = ImageModel((40, 32), 5e-9, MicroscopeParams(), max_abs_defocus_m=2e-4, padding="extend")
    hp, wp = im.padded_shape
    assert (im.top, im.left) != (0, 0) and hp != wp
    g = torch.Generator().manual_seed(3)
    phase = torch.randn(hp, wp, generator=g)
    amplitude = 1 + 0.05 * torch.rand(hp, wp, generator=g)
    transfer = im.transfer([-2e-4, 0.0, 1e-4]) * im.shift_ramp(torch.tensor([[0.0, 0.0], [0.3, -0.7], [1.2, 0.4]]))
    scales = torch.exp(0.1 * torch.randn(3, generator=g))
    data = torch.poisson(im.propagate(im.wave_spectrum(phase, amplitude), transfer) * DOSE, generator=g) / DOSE
    x1, x2 = (0.9 * phase).requires_grad_(), (0.9 * phase).requires_grad_()
    ref = poisson_loss(im.propagate(im.wave_spectrum(x1, amplitude), transfer) * scales[:, None, None], data, DOSE)
    prep = FusedDataLoss(data, top=im.top, left=im.left, kind="poisson", dose=DOSE)
    got = prep(x2, amplitude, transfer, scales)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=0)
    ref.backward()
    got.backward()
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-3, atol=1e-4 * x1.grad.abs().max().item())
    # The prepared object is reusable, and a second backward through a retained graph gives the same gradient.
    x2.grad = None
    again = prep(x2, amplitude, transfer, scales)
    again.backward(retain_graph=True)
    first = x2.grad.clone()
    again.backward()
    torch.testing.assert_close(x2.grad, 2 * first)


def random_blur(n, hp, wp, dtype=torch.float64, seed=1):
    """A real half-spectrum filter (N, Hp, Wp // 2 + 1): Gaussian-like decay plus noise (not even: the
    backward must not rely on more than its being real)."""
    g = torch.Generator().manual_seed(seed)
    qy = torch.fft.fftfreq(hp, dtype=torch.float64)[:, None]
    qx = torch.fft.rfftfreq(wp, dtype=torch.float64)[None, :]
    width = 0.1 + 0.2 * torch.rand(n, 1, 1, generator=g, dtype=torch.float64)
    env = torch.exp(-(qy**2 + qx**2) / width**2)
    return (env + 0.1 * torch.rand(n, hp, wp // 2 + 1, generator=g, dtype=torch.float64)).to(dtype)


def both_blur(n, kind, masked, shape, chunk=None, needs=(True, True, True), top=TOP, left=LEFT):
    phase, amplitude, transfer, scales, data, mask = case(n, torch.float64, kind, shape=shape)
    blur = random_blur(n, shape[0], shape[1])
    kw = dict(top=top, left=left, kind=kind, dose=DOSE, mask=mask if masked else None, blur=blur)
    out = []
    for fn in (plain, lambda *a, **k: fused_data_loss(*a, **k, chunk=chunk)):
        inputs = [t.clone().requires_grad_(need) for t, need in zip((phase, amplitude, scales), needs, strict=True)]
        loss = fn(inputs[0], inputs[1], transfer, inputs[2], data, **kw)
        wrt = [t for t in inputs if t.requires_grad]
        out.append((loss, torch.autograd.grad(loss, wrt) if wrt else ()))
    return out


@pytest.mark.parametrize("kind", ["poisson", "sqrt_gaussian"])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize(("n", "chunk"), [(1, None), (4, None), (4, 3)])
@pytest.mark.parametrize(
    ("shape", "top", "left"),
    [((HP, WP, H, W), TOP, LEFT), ((23, 21, 15, 12), 5, 3), ((16, 15, 16, 11), 0, 2)],
    ids=["even", "odd", "odd-width-no-top"],
)
def test_blur_matches_autograd(kind, masked, n, chunk, shape, top, left):
    (ref, ref_grads), (got, grads) = both_blur(n, kind, masked, shape, chunk=chunk, top=top, left=left)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=0)
    for name, r, g in zip(("phase", "amplitude", "scales"), ref_grads, grads, strict=True):
        assert g.shape == r.shape, name
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-12 * r.abs().max().item(), msg=name)


@pytest.mark.parametrize("needs", [(True, False, False), (False, True, False), (False, False, True)])
def test_blur_only_requested_gradients(needs):
    (ref, ref_grads), (got, grads) = both_blur(4, "poisson", True, (HP, WP, H, W), needs=needs)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=0)
    assert len(grads) == sum(needs)
    for r, g in zip(ref_grads, grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-12 * r.abs().max().item())


@pytest.mark.parametrize("kind", ["poisson", "sqrt_gaussian"])
def test_blur_gradcheck(kind):
    phase, amplitude, transfer, scales, data, mask = case(2, kind=kind, shape=(8, 7, 5, 4))
    blur = random_blur(2, 8, 7)
    inputs = tuple(t.requires_grad_() for t in (phase, amplitude, scales))

    def f(p, a, s):
        return fused_data_loss(p, a, transfer, s, data, top=2, left=1, kind=kind, dose=DOSE, mask=mask, blur=blur)

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_blur_matches_image_model_propagate(dtype):
    """Against ImageModel.propagate(..., blur=ImageModel.source_blur) under coherence 'blur'."""
    im = ImageModel(
        (40, 31), 5e-9, MicroscopeParams(), max_abs_defocus_m=2e-4, padding="extend", coherence="blur", dtype=dtype
    )
    hp, wp = im.padded_shape
    assert (im.top, im.left) != (0, 0)
    df = [-2e-4, 0.0, 1e-4]
    g = torch.Generator().manual_seed(5)
    phase = torch.randn(hp, wp, generator=g, dtype=torch.float64).to(dtype)
    amplitude = (1 + 0.05 * torch.rand(hp, wp, generator=g, dtype=torch.float64)).to(dtype)
    transfer = im.transfer(df) * im.shift_ramp(torch.tensor([[0.0, 0.0], [0.3, -0.7], [1.2, 0.4]], dtype=dtype))
    blur = im.source_blur(df, theta_c_rad=2e-3)
    assert blur is not None and blur.shape == (3, hp, wp // 2 + 1) and blur.dtype == dtype
    scales = torch.exp(0.1 * torch.randn(3, generator=g, dtype=torch.float64)).to(dtype)
    clean = im.propagate(im.wave_spectrum(phase, amplitude), transfer, blur=blur)
    data = torch.poisson(clean.double().clamp_min(0) * DOSE, generator=g).to(dtype) / DOSE
    x1, x2 = (0.9 * phase).requires_grad_(), (0.9 * phase).requires_grad_()
    images = im.propagate(im.wave_spectrum(x1, amplitude), transfer, blur=blur) * scales[:, None, None]
    ref = poisson_loss(images, data, DOSE)
    got = FusedDataLoss(data, top=im.top, left=im.left, kind="poisson", dose=DOSE)(
        x2, amplitude, transfer, scales, blur=blur
    )
    f64 = dtype == torch.float64
    torch.testing.assert_close(got, ref, rtol=1e-12 if f64 else 1e-5, atol=0)
    ref.backward()
    got.backward()
    rtol, atol = (1e-9, 1e-12) if f64 else (1e-3, 1e-4)
    torch.testing.assert_close(x2.grad, x1.grad, rtol=rtol, atol=atol * x1.grad.abs().max().item())


def test_blur_rejections():
    phase, amplitude, transfer, scales, data, _ = case(2)
    kw = dict(top=TOP, left=LEFT, kind="poisson", dose=DOSE)
    blur = random_blur(2, HP, WP)
    with pytest.raises(ValueError, match="blur"):
        fused_data_loss(phase, amplitude, transfer, scales, data, blur=blur[:, :, :-1], **kw)
    with pytest.raises(ValueError, match="blur"):
        fused_data_loss(phase, amplitude, transfer, scales, data, blur=blur.float(), **kw)
    with pytest.raises(ValueError, match="detached"):
        fused_data_loss(phase, amplitude, transfer, scales, data, blur=blur.requires_grad_(), **kw)
    with torch.no_grad():
        value = fused_data_loss(phase, amplitude, transfer, scales, data, blur=blur, **kw)
    torch.testing.assert_close(value, plain(phase, amplitude, transfer, scales, data, blur=blur, **kw))


class _Recorder(TorchDispatchMode):
    """Records the dtype and device of every tensor every aten op returns."""

    def __init__(self):
        super().__init__()
        self.seen: set[tuple[torch.dtype, str]] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.seen.update((t.dtype, t.device.type) for t in tree_leaves(out) if isinstance(t, torch.Tensor))
        return out


def _check_placement(device: str) -> None:
    phase, amplitude, transfer, scales, data, mask = (t.to(device) for t in case(4, torch.float32))
    p, a, s = (t.clone().requires_grad_() for t in (phase, amplitude, scales))
    with _Recorder() as rec:
        loss = fused_data_loss(p, a, transfer, s, data, top=TOP, left=LEFT, kind="poisson", dose=DOSE, mask=mask)
        loss.backward()
    assert loss.dtype == torch.float32 and loss.device.type == device
    for t in (p, a, s):
        assert t.grad.dtype == torch.float32 and t.grad.device == t.device
    # Nothing in the forward or the backward left the device or went to double precision.
    assert {dev for _, dev in rec.seen} == {device}
    assert not {dt for dt, _ in rec.seen} & {torch.float64, torch.complex128}


def test_stays_on_the_inputs_device_and_precision():
    _check_placement("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    _check_placement("cuda")
    results = []
    for device in ("cpu", "cuda"):
        phase, amplitude, transfer, scales, data, mask = (t.to(device) for t in case(4))
        p = phase.clone().requires_grad_()
        loss = fused_data_loss(
            p, amplitude, transfer, scales, data, top=TOP, left=LEFT, kind="sqrt_gaussian", mask=mask
        )
        loss.backward()
        results.append((loss.cpu(), p.grad.cpu()))
    for c, g in zip(*results, strict=True):
        torch.testing.assert_close(g, c, rtol=1e-9, atol=1e-12)


def test_no_grad_and_rejections():
    phase, amplitude, transfer, scales, data, _ = case(2)
    kw = dict(top=TOP, left=LEFT, kind="poisson", dose=DOSE)
    with torch.no_grad():
        value = fused_data_loss(phase.requires_grad_(), amplitude, transfer, scales, data, **kw)
    assert not value.requires_grad
    torch.testing.assert_close(value, plain(phase.detach(), amplitude, transfer, scales, data, **kw))
    with pytest.raises(ValueError, match="dose"):
        fused_data_loss(phase, amplitude, transfer, scales, data, top=TOP, left=LEFT, kind="poisson")
    with pytest.raises(ValueError, match="transfer"):
        fused_data_loss(phase, amplitude, transfer.to(torch.complex64), scales, data, **kw)
    with pytest.raises(ValueError, match="float64"):
        fused_data_loss(phase.float(), amplitude, transfer, scales, data, **kw)
    with pytest.raises(ValueError, match="fit"):
        fused_data_loss(phase, amplitude, transfer, scales, data, top=HP - H + 1, left=0, kind="poisson", dose=DOSE)
    with pytest.raises(ValueError, match="detached"):
        fused_data_loss(phase, amplitude, transfer.clone().requires_grad_(), scales, data, **kw)


@pytest.mark.parametrize(
    ("padding", "coherence", "dose"),
    [("extend", "blur", 200.0), ("extend", "envelope", None), ("mirror", "blur", None), ("zero", "blur", 200.0)],
)
def test_objective_uses_fused_path_while_optics_frozen(padding, coherence, dose):
    """Objective(model) with frozen optics (a phase block) equals the autograd path through model()."""
    from ltemlive.reconstruct import ReconstructionConfig, Reconstructor
    from ltemlive.sim_bridge import simulate
    from simulator.series import SimulationConfig

    series = simulate(
        SimulationConfig(
            shape=(48, 40), pixel_size_m=5e-9, oversample=1, defocus_m=(-2e-4, 0.0, 2e-4), dose_e_per_px=dose, seed=3
        )
    )
    cfg = ReconstructionConfig(max_iter=10, padding=padding, coherence=coherence, dtype="float64")
    rec = Reconstructor(series, cfg)
    m, obj = rec.model, rec.objective
    with torch.no_grad():
        m.c.add_(0.1 * torch.randn(m.c.shape, generator=torch.Generator().manual_seed(0), dtype=m.c.dtype))
    for p in m.parameters():
        p.requires_grad_(p is m.c or p is m.a)
    m.freeze_optics(True)
    try:
        assert m.fused_inputs() is not None
        results = []
        for fused in (False, True):
            obj.use_fused = fused
            m.zero_grad()
            loss, d, _ = obj(m)
            loss.backward()
            results.append((loss.detach(), d.detach(), m.c.grad.clone(), m.a.grad.clone()))
        assert obj._fused is not None
        for ref, got in zip(*results, strict=True):
            torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-13 * ref.abs().max().item())
    finally:
        obj.use_fused = True
        m.freeze_optics(False)
    assert m.fused_inputs() is None


def _tv2_plain(phase, eps=1e-3):
    """tv2 written as plain slices, for autograd to differentiate (what loss.tv2's backward replaces)."""
    from ltemlive.reconstruct.loss import TRACE_FREE_WEIGHT as w

    pxx = (phase[:, 2:] - 2 * phase[:, 1:-1] + phase[:, :-2])[1:-1, :]
    pyy = (phase[2:, :] - 2 * phase[1:-1, :] + phase[:-2, :])[:, 1:-1]
    pxy = (phase[1:, 1:] - phase[1:, :-1] - phase[:-1, 1:] + phase[:-1, :-1])[:-1, :-1]
    s = 0.5 * (pxx + pyy).square() + w * (0.5 * (pxx - pyy).square() + 2 * pxy.square()) + eps**2
    return s.sqrt().mean() - eps


def test_tv2_charges_the_trace_free_curvature_at_its_weight():
    """A harmonic phase (x^2 - y^2: no Laplacian, what a stray field in vacuum has) costs sqrt(w) of a paraboloid of
    the same curvature magnitudes (x^2 + y^2: what the images see as TIE contrast); a ramp costs nothing."""
    from ltemlive.reconstruct.loss import TRACE_FREE_WEIGHT, tv2

    y, x = torch.meshgrid(torch.arange(12.0, dtype=torch.float64), torch.arange(12.0, dtype=torch.float64),
                          indexing="ij")
    harmonic, bowl = float(tv2(x**2 - y**2, 0.0)), float(tv2(x**2 + y**2, 0.0))
    assert bowl == pytest.approx(8**0.5)  # L = 4: sqrt(L^2 / 2)
    assert harmonic == pytest.approx(TRACE_FREE_WEIGHT**0.5 * bowl)
    assert 0 < TRACE_FREE_WEIGHT < 1
    assert float(tv2(0.3 * x - 0.7 * y, 0.0)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("shape", [(9, 13), (3, 3), (16, 5)])
def test_tv2_backward_matches_autograd(shape):
    from ltemlive.reconstruct.loss import tv2

    g = torch.Generator().manual_seed(1)
    # A ramp (zero curvature) plus noise: both the smooth and the eps-dominated regime.
    x = torch.arange(shape[1], dtype=torch.float64)[None, :].expand(shape)
    phase = (0.3 * x + 0.05 * torch.randn(shape, generator=g, dtype=torch.float64)).requires_grad_()
    value, (grad,) = tv2(phase), torch.autograd.grad(tv2(phase), phase)
    ref_value, (ref_grad,) = _tv2_plain(phase), torch.autograd.grad(_tv2_plain(phase), phase)
    assert torch.allclose(value, ref_value, rtol=1e-12, atol=1e-15)
    assert torch.allclose(grad, ref_grad, rtol=1e-10, atol=1e-14)
    assert torch.autograd.gradcheck(tv2, (phase.detach().clone().requires_grad_(),))
    # A second backward through the same graph gives the same gradient (the saved tensors are left intact).
    out = tv2(phase)
    (first,) = torch.autograd.grad(out, phase, retain_graph=True)
    (second,) = torch.autograd.grad(out, phase)
    assert torch.equal(first, second)


@pytest.mark.parametrize("dose", [200.0, 3200.0])
def test_poisson_value_is_precise_in_float32(dose):
    """Near a fit, a step changes the mean deviance by ~1e-5 relative: float32 must resolve far less than that.
    (mu - y log mu) - (y - y log y) cancels terms of order dose x log(dose) and was off by 1e-5 to 2e-5 here."""
    g = torch.Generator().manual_seed(1)
    clean = (0.79 * (1 + 0.05 * torch.randn(5, 256, 256, generator=g, dtype=torch.float64))).clamp_min(0.1)
    data = torch.poisson(clean * dose, generator=g) / dose
    model = clean * (1 + 1e-3 * torch.randn(clean.shape, generator=g, dtype=torch.float64))
    exact = poisson_loss(model, data, dose)
    both32 = poisson_loss(model.float(), data.float(), dose)
    assert abs(float(both32) / float(exact) - 1) < 1e-6
    # The fused path's form, on the same images: an identity grid whose crop is the model intensity.
    prep = FusedDataLoss(data.float(), top=0, left=0, kind="poisson", dose=dose)
    fused = sum(
        prep.pixel_terms(None, n, 1.0, False, False, q=model[n].float().clone())[0] for n in range(5)
    ) * (prep.scale / prep.dose)
    assert abs(float(fused) / float(exact) - 1) < 1e-6
