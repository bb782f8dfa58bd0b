"""Model specimens: magnetisation direction, saturation induction and a thickness map on a pixel grid.

Every builder takes the grid ``shape`` (H, W) and ``pixel_size_m`` and returns a :class:`Specimen`
centred on the grid. Physical sizes are in metres, so the same call on a larger grid (e.g. the camera
frame plus a margin, at an oversampled pixel) shows the same object over a wider field of view.

Switches shared by all builders:

- ``mean_inner_potential_v=0`` removes the electrostatic phase (magnetic phase only);
- ``xi0_m=None`` removes absorption (amplitude 1);
- ``roughness_m > 0`` adds a smooth random thickness variation (rms, metres) of correlation length
  ``roughness_corr_m`` to the magnetic material, drawn from ``seed``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = [
    "SPECIMENS",
    "Specimen",
    "bloch_skyrmion_lattice",
    "dome_island",
    "magnetic_needle",
    "make_specimen",
    "neel_skyrmion_lattice",
    "resolution_pattern",
    "stripe_domains",
    "vortex_array",
    "vortex_disc",
]


@dataclass
class Specimen:
    """A thin magnetic specimen sampled on a regular grid (SI units).

    m: (3, H, W) magnetisation direction (m_x, m_y, m_z): unit vectors inside magnetic material, 0 outside.
    b_sat_t: saturation induction mu0 Ms in tesla.
    thickness_m: (H, W) local thickness; the magnetic phase integrates m * thickness through the film.
    mean_inner_potential_v: V0 of the material (electrostatic phase sigma V0 t).
    xi0_m: absorption length (amplitude exp(-t / xi0)), or None for no absorption.
    """

    m: np.ndarray
    b_sat_t: float
    thickness_m: np.ndarray
    mean_inner_potential_v: float
    xi0_m: float | None
    pixel_size_m: float
    name: str

    def __post_init__(self) -> None:
        self.m = np.asarray(self.m, dtype=np.float64)
        self.thickness_m = np.asarray(self.thickness_m, dtype=np.float64)
        if self.m.ndim != 3 or self.m.shape[0] != 3:
            raise ValueError(f"m must have shape (3, H, W), got {self.m.shape}")
        if self.thickness_m.shape != self.m.shape[1:]:
            raise ValueError(f"thickness_m shape {self.thickness_m.shape} != m grid {self.m.shape[1:]}")
        if not self.pixel_size_m > 0:
            raise ValueError(f"pixel_size_m must be positive, got {self.pixel_size_m}")
        if np.any(self.thickness_m < 0):
            raise ValueError("thickness_m must be non-negative")
        if self.xi0_m is not None and not self.xi0_m > 0:
            raise ValueError(f"xi0_m must be positive or None, got {self.xi0_m}")

    @property
    def shape(self) -> tuple[int, int]:
        return self.thickness_m.shape  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------
# grid helpers


def _axes(shape: tuple[int, int], px: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y column vector, x row vector) in metres, origin at the grid centre."""
    h, w = shape
    y = (np.arange(h) - h / 2 + 0.5) * px
    x = (np.arange(w) - w / 2 + 0.5) * px
    return y[:, None], x[None, :]


def _coverage(sdf: np.ndarray, px: float, edge_m: float = 0.0) -> np.ndarray:
    """Fraction of a pixel inside a shape from its signed distance (negative inside).

    A linear ramp over max(one pixel, edge_m) anti-aliases edges, so sub-pixel feature sizes keep the
    right projected thickness and the sharp edges do not alias into the FFT; edge_m > px models a
    sloped sidewall (lithographic features are not cut with vertical walls).
    """
    return np.clip(0.5 - sdf / max(px, edge_m), 0.0, 1.0)


def _roughness(shape, px, rms_m, corr_m, rng) -> np.ndarray:
    """Smooth Gaussian random field with standard deviation rms_m and correlation length corr_m."""
    if rms_m <= 0:
        return np.zeros(shape)
    noise = rng.standard_normal(shape)
    field = ndimage.gaussian_filter(noise, sigma=max(corr_m / px, 0.5), mode="wrap")
    std = field.std()
    return field * (rms_m / std) if std > 0 else field


def _apply_roughness(thick: np.ndarray, material: np.ndarray, px, rms_m, corr_m, seed) -> np.ndarray:
    if rms_m <= 0:
        return thick
    dt = _roughness(thick.shape, px, rms_m, corr_m, np.random.default_rng(seed))
    return np.clip(thick + dt * material, 0.0, None)


def _check_positive(**kw: float) -> None:
    for k, v in kw.items():
        if not (np.isfinite(v) and v > 0):
            raise ValueError(f"{k} must be positive and finite, got {v!r}")


def _check_non_negative(**kw: float) -> None:
    for k, v in kw.items():
        if not (np.isfinite(v) and v >= 0):
            raise ValueError(f"{k} must be >= 0 and finite, got {v!r}")


def _tangential(y: np.ndarray, x: np.ndarray, sense: float) -> tuple[np.ndarray, np.ndarray]:
    """Unit vector circulating about the origin: sense=+1 turns from +x towards +y, i.e. (-y, x)/r."""
    r = np.hypot(x, y)
    r = np.where(r == 0, 1.0, r)
    return -sense * y / r, sense * x / r


# --------------------------------------------------------------------------------------------------
# builders


def vortex_disc(
    shape: tuple[int, int],
    pixel_size_m: float,
    *,
    radius_m: float = 600e-9,
    thickness_m: float = 50e-9,
    b_sat_t: float = 1.0,
    mean_inner_potential_v: float = 20.0,
    xi0_m: float | None = None,
    chirality: int = 1,
    polarity: int = 1,
    core_radius_m: float = 10e-9,
    edge_width_m: float = 0.0,
    roughness_m: float = 0.0,
    roughness_corr_m: float = 20e-9,
    seed: int = 0,
) -> Specimen:
    """A flat disc (e.g. permalloy) in vacuum in the vortex state.

    The in-plane magnetisation circulates (chirality +1: from +x towards +y); an out-of-plane core
    of radius ``core_radius_m`` with sign ``polarity`` keeps |m| = 1 (it adds no phase at zero tilt).
    ``edge_width_m`` (m) slopes the rim over that width (0: a vertical wall, anti-aliased over one pixel;
    its electrostatic step sigma V0 t, ~7 rad at 50 nm and 20 V, then lies inside one pixel).
    """
    _check_positive(radius_m=radius_m, thickness_m=thickness_m, core_radius_m=core_radius_m)
    _check_non_negative(edge_width_m=edge_width_m)
    y, x = _axes(shape, pixel_size_m)
    r = np.hypot(x, y)
    cover = _coverage(r - radius_m, pixel_size_m, edge_width_m)
    material = cover > 0
    mz = polarity * np.exp(-((r / core_radius_m) ** 2))
    ip = np.sqrt(1.0 - mz**2)
    tx, ty = _tangential(y, x, float(np.sign(chirality) or 1))
    m = np.stack([ip * tx, ip * ty, mz]) * material
    thick = _apply_roughness(thickness_m * cover, material, pixel_size_m, roughness_m, roughness_corr_m, seed)
    return Specimen(m, b_sat_t, thick, mean_inner_potential_v, xi0_m, pixel_size_m, "vortex_disc")


def stripe_domains(
    shape: tuple[int, int],
    pixel_size_m: float,
    *,
    period_m: float = 320e-9,
    wall_width_m: float = 5e-9,
    thickness_m: float = 50e-9,
    b_sat_t: float = 1.0,
    mean_inner_potential_v: float = 20.0,
    xi0_m: float | None = None,
    roughness_m: float = 0.0,
    roughness_corr_m: float = 20e-9,
    seed: int = 0,
) -> Specimen:
    """A continuous film of uniformly magnetised +y / -y stripes (period ``period_m`` along x).

    The domains are separated by Bloch walls of width ``wall_width_m`` (m_y = tanh(d / w), the
    remainder out of plane), so inside each domain |d phi / dx| = (e / hbar) B t: the AB-slope test.
    Equal-width domains have zero mean m_y, so a grid holding an integer number of periods shows
    the exact slope despite the periodic FFT.
    """
    _check_positive(period_m=period_m, wall_width_m=wall_width_m, thickness_m=thickness_m)
    _, x = _axes(shape, pixel_size_m)
    # sin() is +-1 in the domain centres and ~ 2 pi d / P near a wall, so tanh(sin * P / (2 pi w))
    # is a smooth square wave whose walls have the tanh(d / w) profile of width w.
    s = np.sin(2.0 * np.pi * x / period_m) * (period_m / (2.0 * np.pi * wall_width_m))
    my = np.broadcast_to(np.tanh(s), shape)
    mz = np.sqrt(np.clip(1.0 - my**2, 0.0, None))
    m = np.stack([np.zeros(shape), my, mz])
    material = np.ones(shape, dtype=bool)
    thick = _apply_roughness(
        np.full(shape, thickness_m), material, pixel_size_m, roughness_m, roughness_corr_m, seed
    )
    return Specimen(m, b_sat_t, thick, mean_inner_potential_v, xi0_m, pixel_size_m, "stripe_domains")


def _hex_lattice_distance(y, x, period_m, angle_rad, disorder_m, rng):
    """Offset (dy, dx) from every pixel to its nearest site of a (jittered) hexagonal lattice.

    The nearest site of a point lies among the four corners of the lattice cell (parallelogram of the
    60-degree basis) that contains it, so four vectorised candidates replace a loop over sites.
    """
    a1 = period_m * np.array([np.cos(angle_rad), np.sin(angle_rad)])
    a2 = period_m * np.array([np.cos(angle_rad + np.pi / 3), np.sin(angle_rad + np.pi / 3)])
    inv = np.linalg.inv(np.column_stack([a1, a2]))  # (x, y) -> fractional (f1, f2)
    f1 = inv[0, 0] * x + inv[0, 1] * y
    f2 = inv[1, 0] * x + inv[1, 1] * y
    i0, j0 = np.floor(f1).astype(np.int64), np.floor(f2).astype(np.int64)
    imin, jmin = int(i0.min()) - 1, int(j0.min()) - 1
    ni, nj = int(i0.max()) - imin + 3, int(j0.max()) - jmin + 3
    jitter = rng.normal(0.0, disorder_m, size=(2, ni, nj)) if disorder_m > 0 else np.zeros((2, ni, nj))
    best = None
    for di in (0, 1):
        for dj in (0, 1):
            i, j = i0 + di, j0 + dj
            sx = i * a1[0] + j * a2[0] + jitter[0, i - imin, j - jmin]
            sy = i * a1[1] + j * a2[1] + jitter[1, i - imin, j - jmin]
            dx, dy = x - sx, y - sy
            d2 = dx * dx + dy * dy
            if best is None:
                best = [d2, dy, dx]
            else:
                closer = d2 < best[0]
                best = [np.where(closer, d2, best[0]), np.where(closer, dy, best[1]),
                        np.where(closer, dx, best[2])]
    return best[1], best[2]


def _skyrmion_lattice(
    kind: str,
    shape,
    pixel_size_m,
    *,
    lattice_period_m,
    radius_m,
    wall_width_m,
    handedness,
    background_polarity,
    lattice_angle_rad,
    disorder_m,
    thickness_m,
    b_sat_t,
    mean_inner_potential_v,
    xi0_m,
    tilt_x_rad,
    film_size_m,
    film_edge_m,
    roughness_m,
    roughness_corr_m,
    seed,
) -> Specimen:
    _check_positive(lattice_period_m=lattice_period_m, radius_m=radius_m, wall_width_m=wall_width_m,
                    thickness_m=thickness_m)
    if film_size_m is not None:
        _check_positive(film_size_m=film_size_m)
    _check_non_negative(film_edge_m=film_edge_m)
    if radius_m >= 0.5 * lattice_period_m:
        raise ValueError("radius_m must be smaller than half of lattice_period_m (skyrmions would overlap)")
    rng = np.random.default_rng(seed)
    y, x = _axes(shape, pixel_size_m)
    y, x = np.broadcast_arrays(y, x)
    dy, dx = _hex_lattice_distance(y, x, lattice_period_m, lattice_angle_rad, disorder_m, rng)
    r = np.hypot(dx, dy)
    # Domain-wall profile: theta = pi in the core, pi/2 at r = R, -> 0 outside; tapered smoothly to 0
    # before the Voronoi boundary so neighbouring skyrmions join without a jump in m.
    theta = 2.0 * np.arctan(np.exp((radius_m - r) / wall_width_m))
    half = 0.5 * lattice_period_m
    taper = np.clip((half - r) / (half - radius_m), 0.0, 1.0)
    theta *= taper * taper * (3.0 - 2.0 * taper)  # smoothstep
    mz = background_polarity * np.cos(theta)
    ip = np.sin(theta)
    rr = np.where(r == 0, 1.0, r)
    ux, uy = dx / rr, dy / rr  # radial unit vector
    if kind == "bloch":  # in-plane m tangential to the wall
        mx, my = -handedness * uy * ip, handedness * ux * ip
    else:  # neel: in-plane m radial
        mx, my = handedness * ux * ip, handedness * uy * ip
    if tilt_x_rad:
        # Tilting the specimen about x by alpha rotates m into the projection; in the thin-film
        # approximation (lateral shear t tan(alpha) << skyrmion size) the projected in-plane m is the
        # rotated vector and the path length is t / cos(alpha). This makes Neel skyrmions visible.
        ca, sa = np.cos(tilt_x_rad), np.sin(tilt_x_rad)
        my, mz = ca * my - sa * mz, sa * my + ca * mz
        thickness_m = thickness_m / ca
    m = np.stack([mx, my, mz])
    if film_size_m is None:
        cover = np.ones(shape)
    else:
        # A square film patch on vacuum: the projected, tilt-rotated background (m_y = -sin(alpha) m_z) is a
        # uniform in-plane moment whose flux closes outside the patch, so a tilted patch shows a phase ramp.
        half = 0.5 * film_size_m
        cover = _coverage(_sdf_box(half, half)(x, y), pixel_size_m, film_edge_m)
    material = cover > 0
    m = m * material
    thick = _apply_roughness(
        thickness_m * cover, material, pixel_size_m, roughness_m, roughness_corr_m, seed + 1
    )
    return Specimen(m, b_sat_t, thick, mean_inner_potential_v, xi0_m, pixel_size_m, f"{kind}_skyrmion_lattice")


def bloch_skyrmion_lattice(
    shape: tuple[int, int],
    pixel_size_m: float,
    *,
    lattice_period_m: float = 150e-9,
    radius_m: float = 40e-9,
    wall_width_m: float = 12e-9,
    helicity: int = 1,
    background_polarity: int = 1,
    lattice_angle_rad: float = 0.0,
    disorder_m: float = 0.0,
    thickness_m: float = 50e-9,
    b_sat_t: float = 0.5,
    mean_inner_potential_v: float = 20.0,
    xi0_m: float | None = None,
    film_size_m: float | None = None,
    film_edge_m: float = 50e-9,
    roughness_m: float = 0.0,
    roughness_corr_m: float = 20e-9,
    seed: int = 0,
) -> Specimen:
    """A hexagonal lattice of Bloch skyrmions in a film magnetised along +-z (e.g. FeGe, MnSi).

    Core m_z = -background_polarity; in-plane m circulates around each core (helicity +1: from +x
    towards +y). ``disorder_m`` jitters the site positions (Gaussian, rms per axis).
    ``film_size_m`` (m): side of a square film patch centred on the grid with vacuum beyond, its edge
    sloped over ``film_edge_m``; None (default): the film covers the whole grid.
    """
    return _skyrmion_lattice(
        "bloch", shape, pixel_size_m, lattice_period_m=lattice_period_m, radius_m=radius_m,
        wall_width_m=wall_width_m, handedness=float(np.sign(helicity) or 1),
        background_polarity=float(np.sign(background_polarity) or 1), lattice_angle_rad=lattice_angle_rad,
        disorder_m=disorder_m, thickness_m=thickness_m, b_sat_t=b_sat_t,
        mean_inner_potential_v=mean_inner_potential_v, xi0_m=xi0_m, tilt_x_rad=0.0,
        film_size_m=film_size_m, film_edge_m=film_edge_m, roughness_m=roughness_m,
        roughness_corr_m=roughness_corr_m, seed=seed,
    )


def neel_skyrmion_lattice(
    shape: tuple[int, int],
    pixel_size_m: float,
    *,
    lattice_period_m: float = 150e-9,
    radius_m: float = 40e-9,
    wall_width_m: float = 12e-9,
    sense: int = 1,
    background_polarity: int = 1,
    lattice_angle_rad: float = 0.0,
    disorder_m: float = 0.0,
    tilt_x_rad: float = 0.0,
    thickness_m: float = 50e-9,
    b_sat_t: float = 0.5,
    mean_inner_potential_v: float = 20.0,
    xi0_m: float | None = None,
    film_size_m: float | None = None,
    film_edge_m: float = 50e-9,
    roughness_m: float = 0.0,
    roughness_corr_m: float = 20e-9,
    seed: int = 0,
) -> Specimen:
    """A hexagonal lattice of Neel skyrmions (in-plane m radial, sense +1 pointing outwards).

    A radial in-plane field has no curl, so at zero tilt Neel skyrmions give no magnetic phase -- as in
    a real microscope. ``tilt_x_rad`` tilts the specimen about x (thin-film projection approximation)
    to make them visible, as experimentalists do.

    Tilting also turns the uniform background m_z into a uniform projected in-plane moment
    (m_y = -sin(alpha) per unit projected thickness). On a film that covers the whole grid it adds no phase
    (the q = 0 term; an infinite perpendicular film has B = 0); on a finite patch (``film_size_m``, side in m,
    vacuum beyond, edge sloped over ``film_edge_m``) its flux closes outside the patch and the patch shows a
    net phase ramp along x, a fraction of -(e / hbar) B t tan(alpha) set by the patch shape (a square's
    demagnetising share) and the grid-mean moment that the periodic FFT removes (~15 % for a 912 nm square
    on a 1.5 um grid), as a tilted specimen of finite size does.
    """
    if not abs(tilt_x_rad) < np.deg2rad(70):
        raise ValueError(f"tilt_x_rad must be within +-70 degrees, got {tilt_x_rad!r}")
    return _skyrmion_lattice(
        "neel", shape, pixel_size_m, lattice_period_m=lattice_period_m, radius_m=radius_m,
        wall_width_m=wall_width_m, handedness=float(np.sign(sense) or 1),
        background_polarity=float(np.sign(background_polarity) or 1), lattice_angle_rad=lattice_angle_rad,
        disorder_m=disorder_m, thickness_m=thickness_m, b_sat_t=b_sat_t,
        mean_inner_potential_v=mean_inner_potential_v, xi0_m=xi0_m, tilt_x_rad=tilt_x_rad,
        film_size_m=film_size_m, film_edge_m=film_edge_m, roughness_m=roughness_m,
        roughness_corr_m=roughness_corr_m, seed=seed,
    )


class _Canvas:
    """Paints anti-aliased features into a thickness-coverage map and a magnetisation map.

    Each feature is evaluated only inside its bounding box, so a pattern of many small features costs
    about one pass over the grid.
    """

    def __init__(self, shape: tuple[int, int], px: float, edge_m: float = 0.0) -> None:
        self.shape, self.px, self.edge_m = shape, px, edge_m
        y, x = _axes(shape, px)
        self.y, self.x = y[:, 0], x[0, :]
        self.cover = np.zeros(shape)  # thickness relative to the nominal film thickness
        self.m = np.zeros((3, *shape))

    def add(self, cx, cy, half_w, half_h, sdf, mag=None, rel_thickness=1.0) -> None:
        """Paint one feature centred at (cx, cy) within a box of half sizes (half_w, half_h).

        sdf(X, Y) -> signed distance (m) in local coords; mag(X, Y) -> unit in-plane (m_x, m_y) or None for
        non-magnetic material; rel_thickness: thickness relative to the film, a number or f(X, Y).
        """
        pad = 2 * max(self.px, self.edge_m)
        j0, j1 = np.searchsorted(self.x, [cx - half_w - pad, cx + half_w + pad])
        i0, i1 = np.searchsorted(self.y, [cy - half_h - pad, cy + half_h + pad])
        if j1 <= j0 or i1 <= i0:
            return  # outside the field of view
        win = (slice(i0, i1), slice(j0, j1))
        yy, xx = self.y[i0:i1, None] - cy, self.x[None, j0:j1] - cx
        rel = rel_thickness(xx, yy) if callable(rel_thickness) else rel_thickness
        cov = _coverage(sdf(xx, yy), self.px, self.edge_m) * rel
        region = self.cover[win]
        np.maximum(region, cov, out=region)
        if mag is not None:
            inside = cov > 0
            mx, my = (np.broadcast_to(c, cov.shape) for c in mag(xx, yy))
            self.m[0][win][inside] = mx[inside]
            self.m[1][win][inside] = my[inside]


def _sdf_box(hx: float, hy: float) -> Callable:
    def sdf(x, y):
        dx, dy = np.abs(x) - hx, np.abs(y) - hy
        return np.hypot(np.maximum(dx, 0), np.maximum(dy, 0)) + np.minimum(np.maximum(dx, dy), 0)

    return sdf


def _sdf_disc(r: float) -> Callable:
    return lambda x, y: np.hypot(x, y) - r


def _sdf_ring(r_in: float, r_out: float) -> Callable:
    mid, half = 0.5 * (r_in + r_out), 0.5 * (r_out - r_in)
    return lambda x, y: np.abs(np.hypot(x, y) - mid) - half


def _row_positions(widths, gap) -> list[float]:
    """Centres of items of the given widths laid left to right with a gap, the row centred on 0."""
    total = sum(widths) + gap * (len(widths) - 1)
    centres, pos = [], -total / 2
    for w in widths:
        centres.append(pos + w / 2)
        pos += w + gap
    return centres


def resolution_pattern(
    shape: tuple[int, int],
    pixel_size_m: float,
    *,
    thickness_m: float = 20e-9,
    b_sat_t: float = 1.0,
    mean_inner_potential_v: float = 20.0,
    xi0_m: float | None = 300e-9,
    roughness_m: float = 0.0,
    roughness_corr_m: float = 20e-9,
    edge_width_m: float = 10e-9,
    seed: int = 0,
) -> Specimen:
    """A lithographic test chart of magnetic (permalloy-like) and non-magnetic features, 10-200 nm.

    Laid out for a 2.56 um field of view (512 px at 5 nm) centred on the grid, on vacuum:

    - y = -850 nm: groups of three vertical bars of width 160, 80, 40, 20, 10 nm (gap = width),
      magnetised along their long axis, alternately +y / -y (magnetic + electrostatic contrast);
    - y = -400 nm: pairs of non-magnetic dots, diameter 200, 100, 50, 25, 12 nm, gap = diameter
      (electrostatic only);
    - y = 0: magnetic rings in the vortex state (no stray field), outer diameter 240, 120, 60, 30 nm,
      alternating chirality;
    - y = +400 nm: single-domain magnetic dots magnetised along +x, diameter 200, 100, 50, 25, 12 nm;
    - y = +850 nm: a vortex disc (radius 200 nm), a non-magnetic thickness ridge (0 -> t over 320 nm, a
      pure phase ramp, and back to 0 over 80 nm), and a group of horizontal bars (width 40 nm)
      magnetised alternately +-x.

    Features outside a smaller field of view are simply cut off; beyond the chart is vacuum.
    Edges slope over `edge_width_m` (sidewall); a vertical wall (0) puts a phase step of
    sigma V0 t (~6 rad at 40 nm, 20 V) inside one pixel, which no camera-pixel reconstruction can follow.
    """
    _check_positive(thickness_m=thickness_m)
    if not (np.isfinite(edge_width_m) and edge_width_m >= 0):
        raise ValueError(f"edge_width_m must be >= 0 (m), got {edge_width_m!r}")
    nm = 1e-9
    cv = _Canvas(shape, pixel_size_m, edge_width_m)

    # Row A: vertical bar groups, magnetised along the bar (y), alternating sign.
    widths = [160 * nm, 80 * nm, 40 * nm, 20 * nm, 10 * nm]
    length = 300 * nm
    for w, cx in zip(widths, _row_positions([5 * w for w in widths], 100 * nm), strict=True):
        for k in range(3):
            sign = 1.0 if k % 2 == 0 else -1.0
            cv.add(cx + (k - 1) * 2 * w, -850 * nm, w / 2, length / 2, _sdf_box(w / 2, length / 2),
                   mag=lambda x, y, s=sign: (0.0, s))

    # Row B: non-magnetic dot pairs (electrostatic only).
    diams = [200 * nm, 100 * nm, 50 * nm, 25 * nm, 12 * nm]
    for d, cx in zip(diams, _row_positions([3 * d for d in diams], 120 * nm), strict=True):
        for k in (-1, 1):
            cv.add(cx + k * d, -400 * nm, d / 2, d / 2, _sdf_disc(d / 2))

    # Row C: vortex rings, flux-closed: magnetic phase only inside the ring.
    outers = [240 * nm, 120 * nm, 60 * nm, 30 * nm]
    for n, (d, cx) in enumerate(zip(outers, _row_positions(outers, 200 * nm), strict=True)):
        sense = 1.0 if n % 2 == 0 else -1.0
        cv.add(cx, 0.0, d / 2, d / 2, _sdf_ring(0.3 * d / 2, d / 2),
               mag=lambda x, y, s=sense: _tangential(y, x, s))

    # Row D: single-domain dots magnetised along +x.
    for d, cx in zip(diams, _row_positions(diams, 200 * nm), strict=True):
        cv.add(cx, 400 * nm, d / 2, d / 2, _sdf_disc(d / 2), mag=lambda x, y: (1.0, 0.0))

    # Row E: vortex disc, thickness wedge, horizontal bars magnetised +-x.
    cv.add(-750 * nm, 850 * nm, 200 * nm, 200 * nm, _sdf_disc(200 * nm),
           mag=lambda x, y: _tangential(y, x, 1.0))
    cv.add(0.0, 850 * nm, 200 * nm, 150 * nm, _sdf_box(200 * nm, 150 * nm),
           rel_thickness=lambda x, y: np.clip(np.minimum((x + 200 * nm) / (320 * nm), (200 * nm - x) / (80 * nm)),
                                              0.0, 1.0))
    w = 40 * nm
    for k in range(3):
        sign = 1.0 if k % 2 == 0 else -1.0
        cv.add(750 * nm, 850 * nm + (k - 1) * 2 * w, 150 * nm, w / 2, _sdf_box(150 * nm, w / 2),
               mag=lambda x, y, s=sign: (s, 0.0))

    material = cv.cover > 0
    thick = _apply_roughness(thickness_m * cv.cover, material, pixel_size_m, roughness_m, roughness_corr_m, seed)
    return Specimen(cv.m, b_sat_t, thick, mean_inner_potential_v, xi0_m, pixel_size_m, "resolution_pattern")


def vortex_array(
    shape: tuple[int, int],
    pixel_size_m: float,
    *,
    rows: int = 2,
    cols: int = 2,
    pitch_m: float = 700e-9,
    radius_m: float = 300e-9,
    thickness_m: float = 50e-9,
    b_sat_t: float = 1.0,
    mean_inner_potential_v: float = 20.0,
    xi0_m: float | None = None,
    chirality: int = 1,
    alternate_chirality: bool = True,
    polarity: int = 1,
    core_radius_m: float = 10e-9,
    edge_width_m: float = 20e-9,
    roughness_m: float = 0.0,
    roughness_corr_m: float = 20e-9,
    seed: int = 0,
) -> Specimen:
    """A ``rows`` x ``cols`` square array (centre-to-centre ``pitch_m``) of vortex discs in vacuum.

    Each disc is a :func:`vortex_disc` of radius ``radius_m`` with its rim sloped over ``edge_width_m``
    (m); the array is centred on the grid. The first disc (top left, smallest y and x) has
    ``chirality``; with ``alternate_chirality`` its neighbours alternate in a checkerboard. Every disc
    carries a cone of magnetic phase of height (e / hbar) B t R: a strong, smooth, low-frequency phase.
    """
    _check_positive(rows=rows, cols=cols, pitch_m=pitch_m, radius_m=radius_m, thickness_m=thickness_m,
                    core_radius_m=core_radius_m)
    _check_non_negative(edge_width_m=edge_width_m)
    if 2.0 * radius_m + edge_width_m >= pitch_m:
        raise ValueError("pitch_m must exceed 2 radius_m + edge_width_m (the discs would touch)")
    y, x = _axes(shape, pixel_size_m)
    y, x = np.broadcast_arrays(y, x)
    cover = np.zeros(shape)
    m = np.zeros((3, *shape))
    base = float(np.sign(chirality) or 1)
    for i in range(int(rows)):
        for j in range(int(cols)):
            cy, cx = (i - (rows - 1) / 2) * pitch_m, (j - (cols - 1) / 2) * pitch_m
            yy, xx = y - cy, x - cx
            r = np.hypot(xx, yy)
            cov = _coverage(r - radius_m, pixel_size_m, edge_width_m)
            inside = cov > 0
            sense = base * (-1.0) ** (i + j) if alternate_chirality else base
            mz = polarity * np.exp(-((r / core_radius_m) ** 2))
            ip = np.sqrt(1.0 - mz**2)
            tx, ty = _tangential(yy, xx, sense)
            m[:, inside] = np.stack([ip * tx, ip * ty, mz])[:, inside]
            cover = np.maximum(cover, cov)
    material = cover > 0
    thick = _apply_roughness(thickness_m * cover, material, pixel_size_m, roughness_m, roughness_corr_m, seed)
    return Specimen(m, b_sat_t, thick, mean_inner_potential_v, xi0_m, pixel_size_m, "vortex_array")


def dome_island(
    shape: tuple[int, int],
    pixel_size_m: float,
    *,
    radius_m: float = 300e-9,
    max_thickness_m: float = 80e-9,
    profile: str = "paraboloid",
    b_sat_t: float = 1.0,
    mean_inner_potential_v: float = 20.0,
    xi0_m: float | None = 150e-9,
    chirality: int = 1,
    polarity: int = 1,
    core_radius_m: float = 10e-9,
    roughness_m: float = 0.0,
    roughness_corr_m: float = 20e-9,
    seed: int = 0,
) -> Specimen:
    """A dome-shaped magnetic island (e.g. a dewetted or self-assembled particle) in the vortex state.

    The thickness falls from ``max_thickness_m`` at the centre to 0 at the rim r = ``radius_m``: a
    ``"paraboloid"`` t0 (1 - r^2 / R^2) or a ``"spherical_cap"`` (the cap of height t0 and base radius R of a
    sphere of radius (R^2 + t0^2) / (2 t0)). Both meet the substrate-free vacuum at a finite slope, so no
    edge step: the electrostatic phase is a smooth dome sigma V0 t(r) (sigma V0 t0 at the centre), the
    absorption exp(-t / xi0) is thickness dependent, and the vortex gives d phi / dr = -(e / hbar) B t(r)
    (chirality +1 turns from +x towards +y; core of radius ``core_radius_m``, sign ``polarity``).
    """
    _check_positive(radius_m=radius_m, max_thickness_m=max_thickness_m, core_radius_m=core_radius_m)
    y, x = _axes(shape, pixel_size_m)
    r = np.hypot(x, y)
    t0 = max_thickness_m
    if profile == "paraboloid":
        thick = t0 * np.clip(1.0 - (r / radius_m) ** 2, 0.0, None)
    elif profile == "spherical_cap":
        rs = (radius_m**2 + t0**2) / (2.0 * t0)
        thick = np.clip(np.sqrt(np.clip(rs**2 - r**2, 0.0, None)) - (rs - t0), 0.0, None)
    else:
        raise ValueError(f"profile must be 'paraboloid' or 'spherical_cap', got {profile!r}")
    material = thick > 0
    mz = polarity * np.exp(-((r / core_radius_m) ** 2))
    ip = np.sqrt(1.0 - mz**2)
    tx, ty = _tangential(y, x, float(np.sign(chirality) or 1))
    m = np.stack([ip * tx, ip * ty, mz * np.ones_like(tx)]) * material
    thick = _apply_roughness(thick, material, pixel_size_m, roughness_m, roughness_corr_m, seed)
    return Specimen(m, b_sat_t, thick, mean_inner_potential_v, xi0_m, pixel_size_m, "dome_island")


def magnetic_needle(
    shape: tuple[int, int],
    pixel_size_m: float,
    *,
    width_m: float = 150e-9,
    thickness_m: float = 60e-9,
    length_m: float = 600e-9,
    taper_length_m: float = 150e-9,
    tip_x_m: float = 0.0,
    tip_y_m: float = 0.0,
    axis_angle_rad: float = np.pi / 2,
    b_sat_t: float = 2.0,
    mean_inner_potential_v: float = 20.0,
    xi0_m: float | None = None,
    edge_width_m: float = 15e-9,
    roughness_m: float = 0.0,
    roughness_corr_m: float = 20e-9,
    seed: int = 0,
) -> Specimen:
    """A single-domain magnetic needle (e.g. an Fe bar or an MFM tip, B ~ 2 T) in vacuum.

    A flat bar of width ``width_m`` and thickness ``thickness_m`` (sidewalls sloped over ``edge_width_m``)
    whose tip, at (``tip_x_m``, ``tip_y_m``) from the grid centre, points along ``axis_angle_rad``
    (from +x towards +y; default +y). Over the last ``taper_length_m`` the width narrows linearly to the
    point; the bar is ``length_m`` long in total (tip to the flat far end). m is the unit vector along the
    axis, pointing towards the tip. The flux (e / hbar) B t w of the bar (~27 rad at 2 T x 60 nm x 150 nm)
    leaves through the taper and the far end: inside the bar, away from both, d phi / du = (e / hbar) B t
    across it (u the transverse coordinate), and the stray field gives a large smooth phase in vacuum. Let
    the far end lie outside the camera frame (in the simulation margin) for a needle that runs out of view.
    """
    _check_positive(width_m=width_m, thickness_m=thickness_m, length_m=length_m, taper_length_m=taper_length_m)
    _check_non_negative(edge_width_m=edge_width_m)
    if taper_length_m >= length_m:
        raise ValueError("taper_length_m must be shorter than length_m")
    y, x = _axes(shape, pixel_size_m)
    ax, ay = np.cos(axis_angle_rad), np.sin(axis_angle_rad)
    dx, dy = x - tip_x_m, y - tip_y_m
    s = dx * ax + dy * ay  # along the axis, 0 at the tip, negative into the bar
    u = -dx * ay + dy * ax  # across it
    half = 0.5 * width_m * np.clip(-s / taper_length_m, 0.0, 1.0)
    # Distance to the flanks (scaled by the taper's slope, exact on the parallel part), the tip and the far end.
    sdf = np.maximum(np.maximum(np.abs(u) - half, s), -(s + length_m))
    cover = _coverage(sdf, pixel_size_m, edge_width_m)
    material = cover > 0
    m = np.stack([np.full(shape, ax), np.full(shape, ay), np.zeros(shape)]) * material
    thick = _apply_roughness(thickness_m * cover, material, pixel_size_m, roughness_m, roughness_corr_m, seed)
    return Specimen(m, b_sat_t, thick, mean_inner_potential_v, xi0_m, pixel_size_m, "magnetic_needle")


SPECIMENS: dict[str, Callable[..., Specimen]] = {
    "vortex_disc": vortex_disc,
    "vortex_array": vortex_array,
    "dome_island": dome_island,
    "magnetic_needle": magnetic_needle,
    "bloch_skyrmion_lattice": bloch_skyrmion_lattice,
    "neel_skyrmion_lattice": neel_skyrmion_lattice,
    "stripe_domains": stripe_domains,
    "resolution_pattern": resolution_pattern,
}


def specimen_params(name: str) -> list[str]:
    """The physical keyword parameters a registered specimen builder accepts (``seed`` is separate)."""
    builder = _lookup(name)
    params = inspect.signature(builder).parameters.values()
    return [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name != "seed"]


def _lookup(name: str) -> Callable[..., Specimen]:
    try:
        return SPECIMENS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown specimen {name!r}; valid names: {', '.join(sorted(SPECIMENS))}") from None


def make_specimen(name: str, shape, pixel_size_m: float, seed: int = 0, **params) -> Specimen:
    """Build a registered specimen by name; unknown names and parameters raise ValueError."""
    builder = _lookup(name)
    valid = specimen_params(name)
    bad = sorted(set(params) - set(valid))
    if bad:
        raise ValueError(f"specimen {name!r} has no parameter(s) {bad}; valid: {valid}")
    h, w = (int(s) for s in shape)
    return builder((h, w), float(pixel_size_m), seed=seed, **params)
