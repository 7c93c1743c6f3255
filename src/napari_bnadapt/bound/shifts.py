"""The shifts a calibration applies to labelled images: the toy grid and real-EM grey-value shifts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import BNAdaptError
from ..synthetic.grid import GRID_D, GRID_MU0, GRID_SIGMA


# =================================================================== shifts
@dataclass(frozen=True)
class Shift:
    """One target domain made from the labelled source data.

    Attributes
    ----------
    family : str
        ``"grid"``, ``"inverted"``, ``"faint"`` (toy, class-wise intensities) or
        ``"em"``, ``"em-inverted"`` (grey-value transformations).
    params : dict
        ``classwise``: ``mu0, sigma0, mu1, sigma1`` (target grey values of background
        and objects). Grey-value shifts: any of ``offset`` (fraction of the
        1-99 % range), ``gain`` (contrast around the mean), ``gamma``, ``noise``
        (Gaussian noise sigma, fraction of the range), ``blur`` (Gaussian blur
        sigma, pixels), ``invert`` (bool).
    """

    family: str
    params: dict[str, Any]

    @property
    def classwise(self) -> bool:
        return "mu0" in self.params

    def label(self) -> str:
        """Short text for tables and figures."""
        p = self.params
        if self.classwise:
            return f"{self.family} ({p['mu0']:g},{p['sigma0']:g},{p['mu1']:g},{p['sigma1']:g})"
        neutral = {"offset": 0.0, "gain": 1.0, "gamma": 1.0, "noise": 0.0, "blur": 0.0}
        parts = [f"{k} {p[k]:g}" for k in neutral if k in p and float(p[k]) != neutral[k]]
        if p.get("invert"):
            parts.append("inverted")
        return f"{self.family} ({', '.join(parts) or 'none'})"

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "params": dict(self.params)}


def toy_grid_shifts(
    n_grid: int = 128,
    seed: int = 0,
    *,
    n_inverted: int = 16,
    n_faint: int = 12,
) -> list[Shift]:
    """Targets for a toy model: a random subset of the thesis' 1-800 grid plus failure families.

    Parameters
    ----------
    n_grid : int, default 128
        Grid targets drawn without replacement from the 800 of the 1-800
        experiment: ``mu0`` in 64, 80, ..., 160; ``mu1 = mu0 + d`` with ``d`` in
        24, 32, 42, 55, 73, 97, 128 and ``mu1 <= 192``; ``sigma0, sigma1`` in 6, 12,
        18, 24, 30. ``n_grid >= 800`` takes all.
    seed : int
        Seed of the draw.
    n_inverted : int, default 16
        Inverted contrast (objects DARKER than the background: ``mu1 = mu0 - d``),
        the failure the distances alone do not catch.
    n_faint : int, default 12
        Very low contrast (``d`` in 8, 12, 16 with sigmas 12-30), where even
        perfect adaptation cannot segment well.

    Returns
    -------
    list of Shift
        ``classwise`` shifts (families ``grid``, ``inverted``, ``faint``).
    """
    rng = np.random.default_rng(seed)
    grid = [
        (m0, s0, m0 + d, s1)
        for m0 in GRID_MU0
        for d in GRID_D
        if m0 + d <= 192
        for s0 in GRID_SIGMA
        for s1 in GRID_SIGMA
    ]
    take = rng.permutation(len(grid))[: min(n_grid, len(grid))]
    out = [Shift("grid", dict(zip(("mu0", "sigma0", "mu1", "sigma1"), map(float, grid[i])))) for i in sorted(take)]
    for _ in range(n_inverted):
        d = float(rng.choice(GRID_D[:5]))
        m1 = float(rng.choice((64, 80, 96, 112, 128)))
        m0 = min(192.0, m1 + d)
        out.append(Shift("inverted", {"mu0": m0, "sigma0": float(rng.choice(GRID_SIGMA)), "mu1": m1,
                                      "sigma1": float(rng.choice(GRID_SIGMA))}))
    for _ in range(n_faint):
        d = float(rng.choice((8, 12, 16)))
        m0 = float(rng.choice((80, 96, 112, 128)))
        out.append(Shift("faint", {"mu0": m0, "sigma0": float(rng.choice(GRID_SIGMA[1:])), "mu1": m0 + d,
                                   "sigma1": float(rng.choice(GRID_SIGMA[1:]))}))
    return out


def em_shifts(n: int = 96, seed: int = 0, *, n_inverted: int = 12) -> list[Shift]:
    """Grey-value shifts of real slices (for EM models; they apply to any labelled images).

    One-factor shifts (each factor alone over its range), then random
    combinations: ``offset`` in [-0.3, 0.3] of the 1-99 % range, ``gain`` in
    [0.35, 2.0], ``gamma`` in [0.5, 2.0], Gaussian ``noise`` up to 0.15 of the
    range, Gaussian ``blur`` up to 3 px. ``n_inverted`` more shifts invert the
    grey values (with random other factors): the known failure family.
    """
    rng = np.random.default_rng(seed)
    singles: list[dict[str, Any]] = []
    singles += [{"offset": v} for v in (-0.3, -0.2, -0.1, 0.1, 0.2, 0.3)]
    singles += [{"gain": v} for v in (0.35, 0.5, 0.7, 1.4, 2.0)]
    singles += [{"gamma": v} for v in (0.5, 0.7, 1.5, 2.0)]
    singles += [{"noise": v} for v in (0.03, 0.06, 0.1, 0.15)]
    singles += [{"blur": v} for v in (0.7, 1.2, 2.0, 3.0)]
    out = [Shift("em", p) for p in singles[: max(0, n)]]

    def draw() -> dict[str, Any]:
        p: dict[str, Any] = {}
        if rng.random() < 0.7:
            p["offset"] = round(float(rng.uniform(-0.3, 0.3)), 3)
        if rng.random() < 0.7:
            p["gain"] = round(float(np.exp(rng.uniform(np.log(0.35), np.log(2.0)))), 3)
        if rng.random() < 0.4:
            p["gamma"] = round(float(np.exp(rng.uniform(np.log(0.5), np.log(2.0)))), 3)
        if rng.random() < 0.5:
            p["noise"] = round(float(rng.uniform(0.0, 0.15)), 3)
        if rng.random() < 0.4:
            p["blur"] = round(float(rng.uniform(0.0, 3.0)), 2)
        return p

    while len(out) < n:
        out.append(Shift("em", draw()))
    for _ in range(n_inverted):
        p = draw()
        p["invert"] = True
        out.append(Shift("em-inverted", p))
    return out


def _class_stats(images: np.ndarray, labels: np.ndarray) -> tuple[float, float, float, float]:
    fg = labels > 0
    x = images.astype(np.float64)
    if not fg.any() or fg.all():
        raise BNAdaptError("the calibration labels must contain both background (0) and objects (> 0)")
    b, f = x[~fg], x[fg]
    return float(b.mean()), float(max(b.std(), 1e-6)), float(f.mean()), float(max(f.std(), 1e-6))


def _dtype_range(dtype: np.dtype, sample: np.ndarray) -> tuple[float, float]:
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return float(info.min), float(info.max)
    return float(sample.min()), float(sample.max())


def apply_shift(images: np.ndarray, labels: np.ndarray, shift: Shift, seed: int = 0,
                class_stats: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """The images as the target domain ``shift`` would show them (same dtype, same labels).

    Class-wise shifts map the grey values of background and object pixels
    separately and affinely onto ``N(mu0, sigma0)`` and ``N(mu1, sigma1)``
    (pixels are dequantised by +-0.5 first); for the toy images this is exactly
    the generator with new parameters. Grey-value shifts are applied in the
    order invert, gamma, gain, offset, blur, noise on values scaled by the
    1-99 % range. Integer output is rounded and clipped to the dtype's range.

    Parameters
    ----------
    images, labels : numpy arrays (Z, Y, X) or (Y, X)
    shift : Shift
    seed : int
        Seed of the dequantisation and noise.
    class_stats : (mu0, sigma0, mu1, sigma1), optional
        Source class statistics (computed from the images and labels by default).
    """
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    x = np.asarray(images)
    dtype = x.dtype
    xf = x.astype(np.float64)
    if dtype.kind in "ui":
        xf = xf + rng.uniform(-0.5, 0.5, xf.shape)
    lo_d, hi_d = _dtype_range(dtype, x)
    p = shift.params
    if shift.classwise:
        m0, s0, m1, s1 = class_stats or _class_stats(x, np.asarray(labels))
        fg = np.asarray(labels) > 0
        out = np.where(
            fg,
            p["mu1"] + (xf - m1) / s1 * p["sigma1"],
            p["mu0"] + (xf - m0) / s0 * p["sigma0"],
        )
    else:
        lo, hi = (float(v) for v in np.percentile(x, [1, 99]))
        span = max(hi - lo, 1e-6)
        u = (xf - lo) / span  # ~[0, 1]
        if p.get("invert"):
            u = 1.0 - u
        if p.get("gamma", 1.0) != 1.0:
            u = np.sign(u) * np.abs(u) ** float(p["gamma"])
        if p.get("gain", 1.0) != 1.0:
            mean = float(u.mean())
            u = mean + (u - mean) * float(p["gain"])
        u = u + float(p.get("offset", 0.0))
        if p.get("blur"):
            sig = float(p["blur"])
            u = ndimage.gaussian_filter(u, (0, sig, sig) if u.ndim == 3 else sig)
        if p.get("noise"):
            u = u + rng.normal(0.0, float(p["noise"]), u.shape)
        out = lo + u * span
    if dtype.kind in "ui":
        return np.clip(np.rint(out), lo_d, hi_d).astype(dtype)
    return out.astype(dtype)
