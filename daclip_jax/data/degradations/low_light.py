"""low-light: Lv et al. (MBLLEN) darkening y = beta * (alpha * x)^gamma plus sensor noise.

Noise is heteroscedastic Gaussian, var = shot * y + read, with the shot/read joint prior of
Brooks et al. (Unprocessing, 2019). Deviation: it is added to the darkened sRGB values as Lv et al.
do, not in a re-mosaicked linear raw space; the variance-vs-intensity law is the same.
"""

import numpy as np

from ._common import standard_normal


def sample_params(rng, severity):
    log_shot = rng.uniform(np.log(1e-4), np.log(1.2e-2))
    log_read = 2.18 * log_shot + 1.20 + rng.normal(0.0, 0.26)
    return {
        "alpha": float(rng.uniform(0.9, 1.0)),
        "beta": 1.0 - 0.5 * severity,
        "gamma": 1.5 + 3.5 * severity,
        "shot": float(np.exp(log_shot)),
        "read": float(np.exp(log_read)),
    }


def darken(x, alpha, beta, gamma):
    """Noise-free darkening; y <= x for alpha, beta <= 1 and gamma >= 1."""
    return (beta * np.power(alpha * np.clip(x, 0, 1), gamma)).astype(np.float32)


def apply(clean, rng, alpha, beta, gamma, shot, read):
    dark = darken(clean, alpha, beta, gamma)
    std = np.sqrt(shot * dark + read).astype(np.float32)
    out = dark + std * standard_normal(rng, dark.shape)
    return np.clip(out, 0.0, 1.0).astype(np.float32), {"dark": dark}


def low_light(clean, rng, severity, **overrides):
    params = sample_params(rng, severity)
    params.update(overrides)
    out, maps = apply(clean, rng, **params)
    params["maps"] = maps
    return out, params
