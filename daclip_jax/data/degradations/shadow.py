"""shadowed: soft polygon matte times per-channel affine darkening (Le & Samaras; SynShadow).

I = m * clip(a J + b) + (1 - m) * J. Darkening per SynShadow (Inoue & Yamasaki 2021): the line
through (x0, 0) and (1, y1) per channel, with the red x-intercept shifted up and the blue one
down (bluish skylight in the umbra). SynShadow renders mattes from 3D occluders; here 1-3 random
polygons (4-12 vertices, radius 0.15-0.5 of the image, may cross the border) stand in for them,
resampled until they cover 5-50 %, with a Gaussian penumbra and an opacity U(0.7, 1).
"""

import math

import numpy as np
from PIL import Image, ImageDraw

from ._common import gaussian_blur, px


def polygon_matte(g, shape_hw, max_tries=20):
    h, w = shape_hw
    size = min(h, w)
    for _ in range(max_tries):
        canvas = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(canvas)
        n_poly = int(g.integers(1, 4))
        for _ in range(n_poly):
            n_vert = int(g.integers(4, 13))
            cy, cx = g.uniform(0, h), g.uniform(0, w)
            radius = g.uniform(0.15, 0.5) * size
            angles = np.sort(g.uniform(0, 2 * math.pi, n_vert))
            radii = radius * g.uniform(0.5, 1.0, n_vert)
            pts = [(float(cx + r * math.cos(a)), float(cy + r * math.sin(a)))
                   for a, r in zip(angles, radii)]
            draw.polygon(pts, fill=255)
        m = np.asarray(canvas, np.float32) / 255.0
        if 0.05 <= m.mean() <= 0.5:
            return m, n_poly
    return m, n_poly


def sample_params(rng, severity):
    x0 = rng.uniform(0.0, 0.25)
    return {
        "y1": 0.9 - 0.8 * severity,
        "x0": float(x0),
        "x0_red_shift": float(rng.normal(0.05, 0.025)),
        "x0_blue_shift": float(rng.normal(0.05, 0.025)),
        "penumbra_px": float(rng.uniform(1.0, 10.0)),
        "opacity": float(rng.uniform(0.7, 1.0)),
        "seed": int(rng.integers(2**31)),
    }


def darkening(y1, x0, x0_red_shift, x0_blue_shift):
    """Per-channel slope a and intercept b of the shadow line through (x0_c, 0) and (1, y1)."""
    # A negative blue intercept lifts dark blues; bounded at -0.03 so the lift stays < 0.03
    # (the spec's check: output <= input + 0.03).
    x0c = np.maximum(np.array([x0 + x0_red_shift, x0, x0 - x0_blue_shift], np.float32), -0.03)
    a = y1 / (1.0 - x0c)
    return a.astype(np.float32), (-a * x0c).astype(np.float32)


def apply(clean, rng, y1, x0, x0_red_shift, x0_blue_shift, penumbra_px, opacity, seed):
    del rng
    g = np.random.default_rng(seed)
    shape = np.asarray(polygon_matte(g, clean.shape[:2])[0])
    matte = np.clip(gaussian_blur(shape, px(penumbra_px, clean.shape)), 0.0, 1.0)
    matte[matte < 1e-6] = 0.0      # FFT round-off far from any polygon: leave those pixels untouched
    a, b = darkening(y1, x0, x0_red_shift, x0_blue_shift)
    shadow = np.clip(clean * a + b, 0.0, 1.0)
    m = (matte * opacity)[..., None]
    out = m * shadow + (1.0 - m) * clean
    return out.astype(np.float32), {"matte": matte}


def shadowed(clean, rng, severity, **overrides):
    params = sample_params(rng, severity)
    params.update(overrides)
    out, maps = apply(clean, rng, **params)
    params["coverage"] = float(maps["matte"].mean())
    params["maps"] = maps
    return out, params
