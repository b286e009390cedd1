"""uncompleted: holes filled with 1.0 (white), LQ = m x + (1 - m) with m = 1 on kept pixels, as
the official `add_random_mask` does (universal-image-restoration/data/deg_util.py).

mask_source "official" (the default): the official 100 brush-stroke masks (256^2, MIT, shipped in
daclip_jax/assets/daclip_uir/), applied as `add_random_mask` applies them: the mask, in [0, 1],
is resized with cv2.INTER_AREA to the image's H x W, or, given `mask_size`, to that size and an
H x W window cut from it at offsets drawn like np.random.randint(0, size - H) (the last offset is
never drawn, as there). A 256^2 image gets the binary mask itself; other sizes get INTER_AREA's
fractional weights on hole borders, blended by the same formula. Differences from the official:
- Severity picks the mask: the 100 sorted by hole fraction (3.5 % ... 49.9 %), rank
  floor(100 s). With s ~ U(0, 1), `degrade`'s draw for one type, that is the official uniform
  choice, and the hole fraction never decreases with s (mixtures, s x 0.7, use the 70 lightest).
  A fixed severity therefore pins the mask; only a `mask_size` window is then drawn.
- mask_size equal to the image size gives offset 0 (np.random.randint(0, 0) raises there).
- scripts/generate_masked_face.py passes (H, W) where cv2 wants (W, H), which transposes the
  mask of a non-square image; deg_util.py's order, (W, H), is the one followed.

mask_source "procedural", for images much larger than 256 px where an upscaled 256 px mask has
blocky holes: LaMa "thick" strokes + boxes (Suvorov et al. 2022) or DeepFill v2 free-form
strokes (Yu et al. 2019), 50/50, with sizes for 256^2 scaled to the image. Severity sets the hole
fraction 0.03 + 0.42 s: strokes are added until it is reached, and the mask is redrawn if a
stroke pushes it past 0.5 (the cap of the official 100 masks). Binary throughout (no resampling).

`params["mask_source"]` says which was used; `params["maps"]["mask"]` is the hole weight 1 - m
(H x W float32, 1 = hole).
"""

import functools
import math

import numpy as np
from PIL import Image, ImageDraw

from ._common import px
from ._official_assets import inpainting_masks
from ._resize import cv2_resize

MASK_SOURCES = ("official", "procedural")
MAX_HOLE = 0.5
MIN_HOLE = 0.03


# ------------------------------------------------------------------ official masks
@functools.cache
def masks_by_hole_fraction():
    """(ids of the official masks in increasing hole fraction, hole fraction of each id)."""
    fraction = (inpainting_masks() == 0).mean(axis=(1, 2))
    return np.argsort(fraction, kind="stable"), fraction


def official_mask_id(severity):
    """The official mask for `severity` in [0, 1]: rank floor(100 s) by hole fraction."""
    order, _ = masks_by_hole_fraction()
    rank = int(float(np.clip(severity, 0.0, 1.0)) * len(order))
    return int(order[min(rank, len(order) - 1)])


def official_keep_mask(mask_id, shape_hw, mask_size=None, window=(0, 0)):
    """m (H x W float32 in [0, 1], 1 = keep) as `add_random_mask` makes it: official mask
    `mask_id` resized with INTER_AREA to `shape_hw`, or to `mask_size` and cut at `window`."""
    h, w = shape_hw
    m = inpainting_masks()[mask_id].astype(np.float32) / np.float32(255.0)   # exactly 0 or 1
    size = (h, w) if mask_size is None else tuple(mask_size)
    if size != m.shape:
        m = cv2_resize(m[..., None], size, "area")[..., 0]
    top, left = window
    return np.ascontiguousarray(m[top:top + h, left:left + w])


def _sample_official(rng, severity, shape_hw, mask_size):
    window = (0, 0)
    if mask_size is not None:
        if any(s < n for s, n in zip(mask_size, shape_hw)):
            raise ValueError(f"mask_size {tuple(mask_size)} is smaller than the image {tuple(shape_hw)}")
        window = tuple(int(rng.integers(0, s - n)) if s > n else 0 for s, n in zip(mask_size, shape_hw))
        mask_size = tuple(int(s) for s in mask_size)
    return {"mask_source": "official", "mask_id": official_mask_id(severity),
            "mask_size": mask_size, "window": window}


def _apply_official(clean, mask_id, mask_size, window):
    m = official_keep_mask(mask_id, clean.shape[:2], mask_size, window)
    out = m[..., None] * clean + (np.float32(1.0) - m[..., None])
    return out.astype(np.float32), {"mask": np.float32(1.0) - m}


# ------------------------------------------------------------------ procedural masks
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


def _sample_procedural(rng, severity):
    return {
        "mask_source": "procedural",
        "target_hole_fraction": MIN_HOLE + 0.42 * severity,
        "style": "lama" if rng.uniform() < 0.5 else "deepfill",
        "flip_h": bool(rng.uniform() < 0.5),
        "flip_v": bool(rng.uniform() < 0.5),
        "seed": int(rng.integers(2**31)),
    }


def _apply_procedural(clean, target_hole_fraction, style, flip_h, flip_v, seed):
    mask = hole_mask(np.random.default_rng(seed), clean.shape[:2], target_hole_fraction, style)
    if flip_h:
        mask = mask[:, ::-1]
    if flip_v:
        mask = mask[::-1]
    mask = np.ascontiguousarray(mask)
    out = np.where(mask[..., None] > 0, np.float32(1.0), clean).astype(np.float32)
    return out, {"mask": mask}


# ------------------------------------------------------------------ the type
def uncompleted(clean, rng, severity, mask_source="official", mask_size=None, **overrides):
    """White holes from the official masks (default) or procedural ones (see the module doc).

    mask_size: official masks only, (h, w) >= the image: resize the mask to it and cut a random
    window (the official `size` argument); None resizes it to the image.
    """
    if mask_source == "official":
        params = _sample_official(rng, severity, clean.shape[:2], mask_size)
    elif mask_source == "procedural":
        if mask_size is not None:
            raise ValueError("mask_size applies to the official masks only")
        params = _sample_procedural(rng, severity)
    else:
        raise ValueError(f"mask_source must be one of {MASK_SOURCES}, got {mask_source!r}")
    params.update(overrides)
    apply = _apply_official if mask_source == "official" else _apply_procedural
    out, maps = apply(clean, **{k: v for k, v in params.items() if k != "mask_source"})
    params["hole_fraction"] = float(maps["mask"].mean())
    params["maps"] = maps
    return out, params
