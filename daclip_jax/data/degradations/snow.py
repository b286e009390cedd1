"""snowy: multi-layer falling-snow translucency mask, I = z a + J (1 - z) (Snow100K's model).

Procedural, after imgaug's SnowflakesLayer: per layer sparse seeds with opacity U(0.6, 1)
splatted by a Gaussian flake (small/dense, medium, large/sparse size classes), optionally smeared
along a fall direction within +-30 degrees of vertical; layers combine as z = 1 - prod(1 - z_l).
The seed density is solved for the target mean(z) = 0.02 + 0.28 s (one correction pass on the
same uniform field, so the seeds only grow). a ~ U(0.85, 1) with a slight blue tint; optional
veil t ~ U(0.85, 1) towards a. Flakes are convolved circularly (stationary seeds).
"""

import math

import numpy as np
from scipy.signal import fftconvolve

from ._common import circular_spectrum, convolve_circular, line_kernel, px

# Flake radius range (px at 256^2) and share of the target coverage per size class.
SIZE_CLASSES = {"small": (0.5, 1.5), "medium": (1.5, 3.0), "large": (3.0, 6.0)}


def sample_params(rng, severity):
    n_layers = int(rng.integers(1, 4))
    classes = sorted(rng.choice(list(SIZE_CLASSES), size=n_layers, replace=False).tolist(),
                     key=list(SIZE_CLASSES).index)
    a = rng.uniform(0.85, 1.0)
    tint = rng.uniform(0.0, 0.03)
    return {
        "target_coverage": 0.02 + 0.28 * severity,
        "classes": classes,
        "snow_color": [float(a - tint), float(a - tint / 2), float(a)],
        "veil": bool(rng.uniform() < 0.3),
        "veil_t": float(rng.uniform(0.85, 1.0)),
        "seed": int(rng.integers(2**31)),
    }


def flake_kernel(radius, streak_len, streak_deg):
    sigma = max(radius / 2.0, 0.3)
    half = int(math.ceil(3 * sigma + streak_len / 2)) + 1
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float32)
    k = np.exp(-(xx * xx + yy * yy) / (2 * sigma * sigma))
    if streak_len >= 1.0:
        line = line_kernel(streak_len, math.radians(90.0 - streak_deg))
        k = fftconvolve(k, line, mode="same")
    return (k / k.max()).astype(np.float32)     # peak 1: an isolated flake keeps its opacity


def apply(clean, rng, target_coverage, classes, snow_color, veil, veil_t, seed):
    del rng
    g = np.random.default_rng(seed)
    h, w, _ = clean.shape
    fall_deg = g.uniform(-30.0, 30.0)
    layers = []
    for name in classes:
        lo, hi = SIZE_CLASSES[name]
        radius = px(g.uniform(lo, hi), clean.shape)
        streak = px(g.uniform(0.0, 8.0), clean.shape) if g.uniform() < 0.5 else 0.0
        kernel = flake_kernel(radius, streak, fall_deg + g.uniform(-5, 5))
        u = g.uniform(size=(h, w)).astype(np.float32)
        layers.append(dict(class_=name, radius_px=radius, streak_px=streak, u=u, mass=float(kernel.sum()),
                           spectrum=circular_spectrum(kernel, (h, w))))      # reused by both passes
    share = 1.0 / len(layers)

    def render(scale):
        keep = np.ones((h, w), np.float32)
        for L in layers:
            # Expected mean of a sparse layer = density * E[opacity] * kernel mass.
            dens = scale * share * target_coverage / (0.8 * L["mass"])
            # Given u < dens, u / dens is U(0, 1): the same field gives the flake opacity.
            seeds = np.where(L["u"] < dens, 0.6 + 0.4 * L["u"] / dens, 0.0).astype(np.float32)
            keep *= 1.0 - np.clip(convolve_circular(seeds, spectrum=L["spectrum"]), 0.0, 1.0)
        return 1.0 - keep

    z = render(1.0)
    cov = float(z.mean())
    if cov > 0:
        z = render(target_coverage / cov)
    color = np.asarray(snow_color, np.float32)
    zz = z[..., None]
    out = zz * color + (1.0 - zz) * clean
    if veil:
        out = veil_t * out + (1.0 - veil_t) * color
    info = [dict(class_=L["class_"], radius_px=L["radius_px"], streak_px=L["streak_px"]) for L in layers]
    return out.astype(np.float32), {"z": z, "layers": info, "fall_deg": fall_deg}


def snowy(clean, rng, severity, **overrides):
    params = sample_params(rng, severity)
    params.update(overrides)
    out, maps = apply(clean, rng, **params)
    params["layers"] = maps.pop("layers")
    params["fall_deg"] = maps.pop("fall_deg")
    params["coverage"] = float(maps["z"].mean())
    params["maps"] = maps
    return out, params
