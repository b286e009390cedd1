"""Example photos for the web page: scikit-image's bundled photos (no download), each
degraded with one of the training degradations (daclip_jax.data.degradations) so that
there is something to detect and restore."""

from __future__ import annotations

import os

import numpy as np

# (scikit-image photo, degradation, severity)
EXAMPLES = (
    ("astronaut", "noisy", 0.6),
    ("chelsea", "hazy", 0.7),
    ("coffee", "jpeg-compressed", 0.8),
    ("rocket", "low-light", 0.6),
)


def write_examples(folder) -> list[str]:
    """Write the examples as PNGs into `folder` (deterministic: one seed each); their paths."""
    import skimage.data

    from daclip_jax.data.degradations import degrade
    from daclip_jax.imageio import write_png

    os.makedirs(folder, exist_ok=True)
    paths = []
    for i, (photo, kind, severity) in enumerate(EXAMPLES):
        clean = getattr(skimage.data, photo)().astype(np.float32) / 255.0
        lq, _ = degrade(clean, kind, np.random.default_rng(i), severity=severity)
        path = os.path.join(folder, f"{photo}_{kind}.png")
        write_png(path, lq)
        paths.append(path)
    return paths
