"""noisy: additive white Gaussian noise (DnCNN/FFDNet protocol), sometimes Poisson.

The official set was clip(x + N(0, (50/255)^2)) saved with astype(uint8) (truncation); we round
instead (the spec: truncation biases the mean by -0.5/255). Gaussian draws: `_common.standard_normal`
(Box-Muller, float32).
"""

import numpy as np

from ._common import standard_normal


def sample_params(rng, severity):
    return {
        "sigma": 5.0 + 50.0 * severity,          # covers the test sigma 50 at s = 0.9
        "gray": bool(rng.uniform() < 0.2),
        "model": "poisson" if rng.uniform() < 0.15 else "gaussian",
    }


def apply(clean, rng, sigma, gray, model):
    h, w, _ = clean.shape
    shape = (h, w, 1) if gray else (h, w, 3)
    if model == "gaussian":
        noise = standard_normal(rng, shape) * np.float32(sigma / 255.0)
        noise = np.broadcast_to(noise, clean.shape)
    else:
        # Photon counting with the count scale chosen so the std at x = 0.5 equals sigma/255:
        # sqrt(0.5 / lam) = sigma / 255, so severity means the same for both models.
        lam = 0.5 * (255.0 / sigma) ** 2
        base = clean.mean(-1, keepdims=True) if gray else clean
        noise = (rng.poisson(np.clip(base, 0, 1) * lam) / lam - base).astype(np.float32)
        noise = np.broadcast_to(noise, clean.shape)
    out = np.clip(clean + noise, 0.0, 1.0).astype(np.float32, copy=False)
    return out, {"noise": np.ascontiguousarray(noise)}


def noisy(clean, rng, severity, **overrides):
    params = sample_params(rng, severity)
    params.update(overrides)
    out, maps = apply(clean, rng, **params)
    params["maps"] = maps
    return out, params
