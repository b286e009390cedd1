"""hazy: atmospheric scattering I = J t + A (1 - t), t = exp(-beta d) (RESIDE ITS ranges).

No depth network is available offline, so d is a proxy: a vertical ramp (far at the top) with a
random horizon and tilt plus low-frequency fractal noise, or a constant (homogeneous fog) with
p = 0.2. Composited in sRGB as RESIDE did.
"""

import numpy as np

from ._common import fractal_noise, gaussian_blur, px


def depth_proxy(rng, shape_hw):
    h, w = shape_hw
    if rng.uniform() < 0.2:
        return np.full((h, w), rng.uniform(0.6, 1.0), np.float32), "constant"
    horizon = rng.uniform(0.15, 0.6)            # fraction of the height that is "sky"
    tilt = np.tan(np.deg2rad(rng.uniform(-15, 15)))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy = yy / max(h - 1, 1) + tilt * (xx / max(w - 1, 1) - 0.5)
    d = np.clip((1.0 - yy) / (1.0 - horizon), 0.0, 1.0)
    d = d + rng.uniform(0.0, 0.3) * fractal_noise(rng, (h, w))
    d = gaussian_blur(d, px(5.0, (h, w)))
    d = (d - d.min()) / max(float(d.max() - d.min()), 1e-6)
    return d.astype(np.float32), "ramp"


def sample_params(rng, severity, shape_hw):
    gray = rng.uniform(0.7, 1.0)
    tint = rng.uniform(-0.03, 0.03, 3)
    d, kind = depth_proxy(rng, shape_hw)
    return {
        "beta": 0.3 + 1.5 * severity,
        "airlight": [float(v) for v in np.clip(gray + tint, 0.0, 1.0)],
        "depth_kind": kind,
        "depth": d,
    }


def apply(clean, rng, beta, airlight, depth, depth_kind=None):
    del rng, depth_kind
    t = np.exp(-beta * depth).astype(np.float32)[..., None]
    a = np.asarray(airlight, np.float32)
    out = clean * t + a * (1.0 - t)
    return out.astype(np.float32), {"t": t[..., 0], "depth": depth}


def hazy(clean, rng, severity, **overrides):
    params = sample_params(rng, severity, clean.shape[:2])
    params.update(overrides)
    out, maps = apply(clean, rng, **params)
    params.pop("depth")
    params["mean_haze"] = float(1.0 - maps["t"].mean())
    params["maps"] = maps
    return out, params
