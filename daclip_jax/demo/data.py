"""The demo's data: scikit-image's bundled photos, written to disk split by photo, with a
caption table the pipeline's caption-file provider reads."""

from __future__ import annotations

import json
import os

import numpy as np

from daclip_jax.demo.config import PHOTOS


def load_photo(loader: str) -> np.ndarray:
    """A scikit-image bundled photo as uint8 HxWx3 (grayscale repeated, alpha dropped)."""
    import skimage.data

    name, _, index = loader.partition(":")
    img = getattr(skimage.data, name)()
    if index:
        img = img[int(index)]
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, -1)
    return np.ascontiguousarray(img[..., :3]).astype(np.uint8)


def _rescale(img: np.ndarray, short_side: int) -> np.ndarray:
    from PIL import Image

    h, w = img.shape[:2]
    s = short_side / min(h, w)
    size = (max(short_side, round(w * s)), max(short_side, round(h * s)))
    return np.asarray(Image.fromarray(img).resize(size, Image.Resampling.LANCZOS))


def _scale_suffix(scale: float) -> str:
    return "" if scale == 1 else f"@{scale:g}"


def prepare_data(cfg, data_dir: str) -> dict:
    """Writes the photos (split by photo) and the caption table; idempotent. Returns paths.

    Training photos are written at every scale of `data.train_scales` (short side x scale,
    `<name>@<scale>.png`): 64 px patches of one photo at three scales show three times the
    content (textures, edges, object sizes); held-out photos only at scale 1."""
    from PIL import Image

    table = {p[1]: p for p in PHOTOS}
    unknown = [n for n in list(cfg.data.photos) + list(cfg.data.heldout) if n not in table]
    if unknown:
        raise ValueError(f"unknown demo photos {unknown}; known: {sorted(table)}")
    heldout = [n for n in cfg.data.photos if n in set(cfg.data.heldout)]
    train = [n for n in cfg.data.photos if n not in set(cfg.data.heldout)]
    if not train or not heldout:
        raise ValueError("the demo needs at least one training and one held-out photo")
    captions = {}
    scales = {"train": tuple(cfg.data.get("train_scales", (1.0,))), "heldout": (1.0,)}
    for split, names in (("train", train), ("heldout", heldout)):
        d = os.path.join(data_dir, split)
        os.makedirs(d, exist_ok=True)
        for name in names:
            for scale in scales[split]:
                file = f"{name}{_scale_suffix(scale)}.png"
                path = os.path.join(d, file)
                if not os.path.exists(path):
                    side = round(cfg.data.short_side * scale)
                    Image.fromarray(_rescale(load_photo(table[name][0]), side)).save(path)
                captions[file] = table[name][2]
    cap_path = os.path.join(data_dir, "captions.json")
    with open(cap_path, "w") as f:
        json.dump(captions, f, indent=1)
    return dict(train=os.path.join(data_dir, "train"), heldout=os.path.join(data_dir, "heldout"),
                captions=cap_path, train_names=train, heldout_names=heldout)
