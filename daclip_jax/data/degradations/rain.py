"""rainy: procedural rain streaks (the Photoshop rain recipe behind Rain100H / JORDER).

Per layer: sparse seeds, Gaussian width, anti-aliased line blur along theta0 + U(-5, 5) degrees
(theta0 ~ U(-30, 30) from vertical), scaled so its 99.5th percentile is c. Layers combine by
screen, S = 1 - prod(1 - S_t); O = 1 - (1 - B)(1 - S); with p = 0.5 a veil
O = alpha O + (1 - alpha) A (Rain100H's heavy-rain model).
Streaks are convolved circularly: the seeds are stationary noise, so wrapping just continues the
pattern across the border (no streak-free margin) and costs one FFT per layer. The streak width
(a Gaussian across the line) is a factor on the FFT grid rather than a blur of the kernel.
"""

import math

import numpy as np

from ._common import circular_spectrum, convolve_circular, gaussian_transfer, line_kernel, px


def sample_params(rng, severity):
    s = severity
    return {
        # Severity scales layer count, seed density and streak brightness together.
        "n_layers": int(1 + rng.binomial(4, 0.15 + 0.85 * s)),
        "theta0_deg": float(rng.uniform(-30.0, 30.0)),
        # Deviation: the spec's 0.2-2 % seeds with 15-50 px streaks overlap every pixel several
        # times (90 % of pixels brightened by > 0.05 already at s = 0.6); 0.05-0.4 % keeps
        # distinct streaks, from light rain to a Rain100H-like downpour.
        "density": float(0.0005 + 0.0035 * s),
        "brightness": float(0.4 + 0.5 * s),
        "veil": bool(rng.uniform() < 0.5),
        "veil_alpha": float(rng.uniform(0.8, 1.0)),
        "veil_airlight": float(rng.uniform(0.8, 1.0)),
        "seed": int(rng.integers(2**31)),
    }


def streak_layer(g, shape_hw, density, brightness, theta_deg, length_px, width_px):
    h, w = shape_hw
    # Every pixel is a seed with probability `density`, brightness U(0.5, 1): drawn as a
    # Binomial count of distinct uniform positions, the same law as a Bernoulli field at a
    # hundredth of the random numbers.
    n = int(g.binomial(h * w, min(density, 1.0)))
    seeds = np.zeros(h * w, np.float32)
    seeds[g.choice(h * w, size=n, replace=False)] = 0.5 + 0.5 * g.uniform(size=n)
    # theta is measured from vertical; the line kernel takes the angle from the x axis. The
    # Gaussian width is applied in the frequency domain (exact, and free on the FFT grid).
    line = line_kernel(length_px, math.radians(90.0 - theta_deg))
    spectrum = circular_spectrum(line, (h, w)) * gaussian_transfer((h, w), width_px)
    layer = convolve_circular(seeds.reshape(h, w), spectrum=spectrum)
    # The 99.5th percentile from every 3rd pixel: as good an estimate at a third of the cost.
    sub = layer.ravel()[::3]
    k = max(int(0.995 * sub.size) - 1, 0)
    p995 = float(np.partition(sub, k)[k])
    return np.clip(layer * (brightness / max(p995, 1e-8)), 0.0, 1.0)


def apply(clean, rng, n_layers, theta0_deg, density, brightness, veil, veil_alpha, veil_airlight,
          seed):
    del rng
    g = np.random.default_rng(seed)
    h, w, _ = clean.shape
    keep = np.ones((h, w), np.float32)
    layers = []
    for _ in range(n_layers):
        theta = theta0_deg + g.uniform(-5.0, 5.0)
        length = px(g.uniform(15.0, 50.0), clean.shape)
        width = px(g.uniform(0.3, 1.0), clean.shape)
        dens = density * g.uniform(0.7, 1.3)
        bright = min(brightness * g.uniform(0.9, 1.1), 1.0)
        layer = streak_layer(g, (h, w), dens, bright, theta, length, width)
        keep *= 1.0 - layer
        layers.append(dict(theta_deg=theta, length_px=length, width_px=width, density=dens))
    streaks = 1.0 - keep
    out = 1.0 - (1.0 - clean) * keep[..., None]
    if veil:
        out = veil_alpha * out + (1.0 - veil_alpha) * veil_airlight
    return out.astype(np.float32), {"streaks": streaks, "layers": layers}


def rainy(clean, rng, severity, **overrides):
    params = sample_params(rng, severity)
    params.update(overrides)
    out, maps = apply(clean, rng, **params)
    params["layers"] = maps.pop("layers")
    params["maps"] = maps
    return out, params
