"""uncompleted: free-form hole masks, holes filled with 1.0 (white), as the official
`add_random_mask` does (LQ = m x + (1 - m) with m = 1 on kept pixels).

Masks: LaMa "thick" strokes + boxes (Suvorov et al. 2022) or DeepFill v2 free-form strokes
(Yu et al. 2019), 50/50, with sizes for 256^2 scaled to the image. Severity sets the hole fraction
0.03 + 0.42 s: strokes are added until it is reached, and the mask is redrawn if a stroke pushes it
past 0.5 (the cap of the official 100 masks). Binary throughout (no resampling).
"""

import math

import numpy as np
from PIL import Image, ImageDraw

from ._common import px

MAX_HOLE = 0.5
MIN_HOLE = 0.03


def _lama_stroke(g, draw, h, w, scale, index):
    x, y = float(g.integers(w)), float(g.integers(h))
    for _ in range(1 + int(g.integers(5))):
        angle = 0.01 + g.uniform(0, 4.0)
        if index % 2 == 0:
            angle = 2 * math.pi - angle
        length = (10 + g.integers(200)) * scale
        width = max(int(round((5 + g.integers(100)) * scale)), 1)
        nx = float(np.clip(x + length * math.sin(angle), 0, w))
        ny = float(np.clip(y + length * math.cos(angle), 0, h))
        draw.line([(x, y), (nx, ny)], fill=255, width=width)
        r = width / 2
        draw.ellipse([nx - r, ny - r, nx + r, ny + r], fill=255)   # round joints, like cv2.line
        x, y = nx, ny


def _lama_box(g, draw, h, w, scale):
    margin = int(10 * scale)
    bw = int(g.integers(int(30 * scale), int(150 * scale) + 1))
    bh = int(g.integers(int(30 * scale), int(150 * scale) + 1))
    x0 = int(g.integers(margin, max(w - margin - bw, margin) + 1))
    y0 = int(g.integers(margin, max(h - margin - bh, margin) + 1))
    draw.rectangle([x0, y0, x0 + bw, y0 + bh], fill=255)


def _deepfill_stroke(g, draw, h, w, scale):
    mean_angle, angle_range = 2 * math.pi / 5, 2 * math.pi / 15
    avg_radius = math.sqrt(h * h + w * w) / 8
    n_vertex = int(g.integers(4, 12))
    a_min = mean_angle - g.uniform(0, angle_range)
    a_max = mean_angle + g.uniform(0, angle_range)
    pts = [(float(g.integers(w)), float(g.integers(h)))]
    for i in range(n_vertex):
        a = g.uniform(a_min, a_max)
        if i % 2 == 0:
            a = 2 * math.pi - a
        r = float(np.clip(g.normal(avg_radius, avg_radius / 2), 0, 2 * avg_radius))
        x, y = pts[-1]
        pts.append((float(np.clip(x + r * math.cos(a), 0, w)), float(np.clip(y + r * math.sin(a), 0, h))))
    width = max(int(g.uniform(12, 40) * scale), 1)
    draw.line(pts, fill=255, width=width)
    for x, y in pts:
        draw.ellipse([x - width // 2, y - width // 2, x + width // 2, y + width // 2], fill=255)


def hole_mask(g, shape_hw, target, style):
    """Binary (H, W) float32 mask, 1 = hole, with hole fraction in [target, 0.5]."""
    h, w = shape_hw
    scale = px(1.0, shape_hw)
    target = float(np.clip(target, MIN_HOLE, MAX_HOLE))
    while True:
        canvas = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(canvas)
        frac, i = 0.0, 0
        while frac < target:
            if style == "lama" and g.uniform() < 0.3:
                _lama_box(g, draw, h, w, scale)
            elif style == "lama":
                _lama_stroke(g, draw, h, w, scale, i)
            else:
                _deepfill_stroke(g, draw, h, w, scale)
            i += 1
            m = np.asarray(canvas) > 127
            frac = float(m.mean())
        if frac <= MAX_HOLE:
            return m.astype(np.float32)


def sample_params(rng, severity):
    return {
        "target_hole_fraction": MIN_HOLE + 0.42 * severity,
        "style": "lama" if rng.uniform() < 0.5 else "deepfill",
        "flip_h": bool(rng.uniform() < 0.5),
        "flip_v": bool(rng.uniform() < 0.5),
        "seed": int(rng.integers(2**31)),
    }


def apply(clean, rng, target_hole_fraction, style, flip_h, flip_v, seed):
    del rng
    mask = hole_mask(np.random.default_rng(seed), clean.shape[:2], target_hole_fraction, style)
    if flip_h:
        mask = mask[:, ::-1]
    if flip_v:
        mask = mask[::-1]
    mask = np.ascontiguousarray(mask)
    out = np.where(mask[..., None] > 0, np.float32(1.0), clean).astype(np.float32)
    return out, {"mask": mask}


def uncompleted(clean, rng, severity, **overrides):
    params = sample_params(rng, severity)
    params.update(overrides)
    out, maps = apply(clean, rng, **params)
    params["hole_fraction"] = float(maps["mask"].mean())
    params["maps"] = maps
    return out, params
