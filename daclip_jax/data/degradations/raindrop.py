"""raindrop: adherent water drops on the lens/glass, I = alpha * drop + (1 - alpha) * B.

After Qian et al. (AttentiveGAN, CVPR 2018) and the ROLE raindrop generator: each drop shows the
surrounding background zoomed out and upside down (refraction), out of focus, with a darker rim.
Deviations, deliberate:
- The spec's count (5-40) and radius (3-20 px) ranges cannot reach its 40 % coverage at s = 1, so
  radii keep their log-uniform 3-20 px range and drops are added until the target coverage
  (0.03 + 0.37 s) is met; the last drop shrinks so coverage does not overshoot.
- The soft edge is an analytic smoothstep over about 0.4 r (the 10-90 % width of a Gaussian blur
  with sigma 0.15 r) rather than a Gaussian blur of the mask, so alpha is exactly 0 outside a drop
  and those pixels stay bit-identical.
"""

import math

import numpy as np

from ._common import gaussian_blur, px

MAX_DROPS = 400


def _drop_alpha(rows, cols, cy, cx, r, aspect, teardrop):
    """Alpha (smoothstep soft edge) and normalised radius rho; rows (n,1), cols (1,m) broadcast."""
    u = (cols - cx) / r
    v = (rows - cy) / (r * aspect)
    if teardrop:
        # Narrower top, round bottom: the top half tapers to half width.
        u = u / np.where(v < 0, np.maximum(1.0 + 0.5 * v, 0.5), 1.0)
    rho = np.sqrt(u * u + v * v)
    width = max(0.4 * r, 1.0)
    a = np.clip((1.0 - rho) * (r / width) + 0.5, 0.0, 1.0)
    a = a * a * (3.0 - 2.0 * a)
    # Drop the far tail so alpha_total (float32) is nonzero wherever a pixel changed.
    a[a < 1e-3] = 0.0
    return a.astype(np.float32), rho


def _bilinear(flat, h, w, r, c):
    """Sample an (h*w, 3) image at float coords (reflected into range), bilinear."""
    r = np.abs(r)
    c = np.abs(c)
    r = (h - 1) - np.abs((h - 1) - np.mod(r, 2 * (h - 1)))
    c = (w - 1) - np.abs((w - 1) - np.mod(c, 2 * (w - 1)))
    r0 = np.minimum(r.astype(np.int64), h - 2)
    c0 = np.minimum(c.astype(np.int64), w - 2)
    fr = (r - r0)[..., None].astype(np.float32)
    fc = (c - c0)[..., None].astype(np.float32)
    i = r0 * w + c0
    top = flat[i] * (1 - fc) + flat[i + 1] * fc
    bot = flat[i + w] * (1 - fc) + flat[i + w + 1] * fc
    return top * (1 - fr) + bot * fr


def sample_params(rng, severity):
    return {
        "target_coverage": 0.03 + 0.37 * severity,
        "background_sigma_px": float(rng.uniform(1.0, 3.0)),
        "seed": int(rng.integers(2**31)),
    }


def apply(clean, rng, target_coverage, background_sigma_px, seed):
    """Render drops; the geometry comes from its own generator seeded by `seed` (a sampled
    parameter), so a test can pin it while the rest of the call consumes `rng` as usual."""
    del rng
    g = np.random.default_rng(seed)
    h, w, _ = clean.shape
    scale = px(1.0, clean.shape)
    background = gaussian_blur(clean, background_sigma_px * scale)
    flat = background.reshape(h * w, 3)
    out = clean.copy()
    alpha_total = np.zeros((h, w), np.float32)
    covered, goal = 0.0, target_coverage * h * w
    drops = []
    while covered < goal * 0.98 and len(drops) < MAX_DROPS:
        r = math.exp(g.uniform(math.log(3.0), math.log(20.0))) * scale
        teardrop = bool(g.uniform() < 0.5)
        aspect = g.uniform(1.0, 1.5) if teardrop else 1.0
        # Approximate area of the shape (a teardrop loses about a tenth to its taper).
        area = math.pi * r * r * aspect * (0.9 if teardrop else 1.0)
        if covered + 0.7 * area > goal * 1.1:
            r *= math.sqrt(max(goal - covered, 0.0) / (0.7 * area))
            if r < 1.0 * scale:
                break
        cy, cx = g.uniform(0, h), g.uniform(0, w)
        zoom = g.uniform(1.5, 3.0)
        gain = g.uniform(0.9, 1.1)
        rim = g.uniform(0.1, 0.4)
        ext = r * aspect + max(0.4 * r, 1.0)
        y0, y1 = max(int(cy - ext), 0), min(int(math.ceil(cy + ext)) + 1, h)
        x0, x1 = max(int(cx - ext), 0), min(int(math.ceil(cx + ext)) + 1, w)
        if y1 <= y0 or x1 <= x0:
            continue
        rows = np.arange(y0, y1, dtype=np.float32)[:, None]
        cols = np.arange(x0, x1, dtype=np.float32)[None, :]
        a, rho = _drop_alpha(rows, cols, cy, cx, r, aspect, teardrop)
        # Refraction: a wider field of view, shrunk and flipped upside down.
        src_r = np.broadcast_to(cy - zoom * (rows - cy), a.shape)
        src_c = np.broadcast_to(cx + zoom * (cols - cx), a.shape)
        content = _bilinear(flat, h, w, src_r, src_c)
        content *= (gain * (1.0 - rim * np.minimum(rho, 1.0) ** 4))[..., None]
        ai = a[..., None]
        # alpha = 0 leaves a pixel bit-identical: x * 1 + 0 * c == x.
        out[y0:y1, x0:x1] = ai * np.clip(content, 0, 1) + (1.0 - ai) * out[y0:y1, x0:x1]
        at = alpha_total[y0:y1, x0:x1]
        covered += float((a * (1.0 - at)).sum())
        alpha_total[y0:y1, x0:x1] = 1.0 - (1.0 - at) * (1.0 - a)
        drops.append((cy, cx, r))
    return out, {"alpha": alpha_total, "n_drops": len(drops)}


def raindrop(clean, rng, severity, **overrides):
    params = sample_params(rng, severity)
    params.update(overrides)
    out, maps = apply(clean, rng, **params)
    params["n_drops"] = maps.pop("n_drops")
    params["coverage"] = float(maps["alpha"].mean())
    params["maps"] = maps
    return out, params
