"""The official DA-CLIP data assets shipped in `daclip_jax/assets/daclip_uir/` (MIT, see its README).

Read once, on first use, with `np.load(allow_pickle=False)`: the official repository keeps the
PSFs as a pickle, converted to `.npz` so that loading them can never run code. The arrays are
returned read-only since they are shared by every caller in the process.
"""

import functools
import importlib.resources

import numpy as np

ASSET_DIR = ("assets", "daclip_uir")
N_OFFICIAL_MASKS = 100


def _load(name):
    ref = importlib.resources.files("daclip_jax").joinpath(*ASSET_DIR, name)
    with ref.open("rb") as f, np.load(f, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _frozen(a):
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


@functools.cache
def inpainting_masks():
    """uint8 (100, 256, 256), 255 = keep, 0 = hole: `scripts/inpainting_masks/0000NN.png`."""
    masks = _load("inpainting_masks.npz")["masks"]
    if masks.shape != (N_OFFICIAL_MASKS, 256, 256) or masks.dtype != np.uint8:
        raise ValueError(f"unexpected inpainting_masks.npz: {masks.shape} {masks.dtype}")
    return _frozen(masks)


@functools.cache
def motion_psfs():
    """pyblur's 100 motion PSFs (float32, odd square sizes 5-29, each summing to 1), in the
    official dict's key order (`psf.pkl`, keys 0..99)."""
    z = _load("psf.npz")
    keys = [int(k) for k in z["keys"]]
    if keys != list(range(len(keys))):
        raise ValueError("psf.npz: expected keys 0..N-1 in order")
    return tuple(_frozen(z[f"psf_{k:03d}"].astype(np.float32)) for k in keys)
