"""A clean | degraded grid, one row per degradation type, for eyeballing the synthesis.

    daclip-jax data preview --out grid.png                 # scikit-image's bundled photos
    daclip-jax data preview --out grid.png --source DIR    # your own clean images

Each row applies one type (then, optionally, a mixture row and a wild row) to the same centre
crops; every cell's randomness comes from (seed, row, column), so a grid is reproducible.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from daclip_jax.labels import DEGRADATIONS

SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee")
LABEL_WIDTH = 150
PAD = 4


def skimage_photos(names=SKIMAGE_PHOTOS) -> list[np.ndarray]:
    """Photos bundled with scikit-image (no download), as float32 HxWx3 in [0,1]."""
    import skimage.data

    out = []
    for name in names:
        img = np.asarray(getattr(skimage.data, name)())
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, -1)
        out.append(img[..., :3].astype(np.float32) / 255.0)
    return out


def source_images(source, count: int = 3) -> list[np.ndarray]:
    """The first `count` readable clean images of a source."""
    out = []
    for i in range(len(source)):
        try:
            out.append(source[i]["gt"])
        except ValueError:  # ImageReadError: a preview skips bad files
            continue
        if len(out) == count:
            break
    return out


def centre_square(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    crop = img[top:top + s, left:left + s]
    pil = Image.fromarray((np.clip(crop, 0, 1) * 255 + 0.5).astype(np.uint8))
    return np.asarray(pil.resize((size, size), Image.Resampling.BICUBIC), np.float32) / 255.0


def _to_pil(img: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8))


def preview_grid(images: list[np.ndarray], *, kinds=DEGRADATIONS, size: int = 128, seed: int = 0,
                 mixture: bool = True, wild: bool = True) -> Image.Image:
    """Rows: each of `kinds`, then a sampled mixture and a wild row; columns: clean | degraded per image."""
    from daclip_jax.data import degradations as D

    from daclip_jax.data.pipeline import record_rng

    crops = [centre_square(x, size) for x in images]
    rows: list[tuple[str, list[np.ndarray]]] = []
    for r, kind in enumerate(kinds):
        rows.append((kind, [D.degrade(c, [kind], record_rng(seed, r, j))[0] for j, c in enumerate(crops)]))
    if mixture:
        r = len(rows)
        lqs, labels = [], []
        for j, c in enumerate(crops):
            rng = record_rng(seed, r, j)
            ks = D.sample_kinds(rng)
            lqs.append(D.degrade(c, ks, rng)[0])
            labels.append(D.label_text(ks))
        rows.append(("mixture:\n" + "\n".join(labels), lqs))
    if wild:
        from daclip_jax.data.wild import random_degrade

        r = len(rows)
        rows.append(("wild", [random_degrade(c, record_rng(seed, r, j))[0] for j, c in enumerate(crops)]))

    cells = [(label, [x for clean, lq in zip(crops, lqs) for x in (clean, np.asarray(lq))])
             for label, lqs in rows]
    return labelled_grid(cells, size=size)


HEADER_HEIGHT = 14


def labelled_grid(rows: list[tuple[str, list[np.ndarray]]], *, size: int,
                  header: list[str] | None = None) -> Image.Image:
    """A white sheet: per row a text label (may hold newlines) then its images as size x size
    cells (resized with nearest neighbour when they differ, so pixels stay visible);
    `header` optionally titles the columns."""
    cols = max(len(cells) for _, cells in rows)
    top = HEADER_HEIGHT + PAD if header else 0
    width = LABEL_WIDTH + cols * (size + PAD) + PAD
    height = top + len(rows) * (size + PAD) + PAD
    grid = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for j, title in enumerate(header or ()):
        draw.text((LABEL_WIDTH + PAD + j * (size + PAD), PAD), title, fill=(0, 0, 0), font=font)
    for r, (label, cells) in enumerate(rows):
        y = top + PAD + r * (size + PAD)
        draw.multiline_text((PAD, y + PAD), label, fill=(0, 0, 0), font=font)
        for j, cell in enumerate(cells):
            pil = _to_pil(np.asarray(cell))
            if pil.size != (size, size):
                pil = pil.resize((size, size), Image.Resampling.NEAREST)
            grid.paste(pil, (LABEL_WIDTH + PAD + j * (size + PAD), y))
    return grid


def write_preview(out_path: str, images: list[np.ndarray] | None = None, **kwargs) -> str:
    images = images if images else skimage_photos()
    preview_grid(images, **kwargs).save(out_path, format="PNG")
    return out_path
