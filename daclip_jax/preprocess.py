"""The CLIP view of an image: the official `clip_transform`, bit for bit.

DA-CLIP's data loaders and app (`data/util.py clip_transform`) feed CLIP with

    PIL.Image.fromarray((img * 255).astype(uint8))     # truncates, does not round
    -> Resize(size, BICUBIC)                            # shorter side -> size, Pillow's resampler
    -> CenterCrop(size)                                 # top = int(round((H - size) / 2)), half-to-even
    -> ToTensor -> Normalize(OPENAI_MEAN, OPENAI_STD)   # float32

Pillow does the resize here too, so the uint8 intermediates are identical to the
reference's, and the float steps are the same float32 operations in the same order
(uint8 / 255, minus mean, divided by std), so the result is bit-identical. Output is
NHWC-ready (size, size, 3) float32.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["OPENAI_MEAN", "OPENAI_STD", "clip_view", "preprocess", "resize_short_side", "center_crop"]

OPENAI_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
OPENAI_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


def resize_short_side(image: Image.Image, size: int) -> Image.Image:
    """torchvision `Resize(size, BICUBIC)` on a PIL image: shorter side -> size,
    longer side -> int(size * long / short) (truncated)."""
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) == (w, h):
        return image
    return image.resize((new_w, new_h), Image.Resampling.BICUBIC)


def center_crop(a: np.ndarray, size: int) -> np.ndarray:
    """torchvision `CenterCrop(size)` on an (H, W, C) array at least size x size."""
    h, w = a.shape[:2]
    top = int(round((h - size) / 2.0))  # Python round: half to even, as torchvision
    left = int(round((w - size) / 2.0))
    return a[top:top + size, left:left + size]


def _normalize(u8: np.ndarray) -> np.ndarray:
    """ToTensor + Normalize on an (H, W, 3) uint8 array, in float32 like torchvision.

    The mean/std are tiled along whole rows so numpy's inner loop runs over W * 3 values
    instead of 3 (about 6x faster); every element still sees the same three float32 ops.
    """
    h, w, c = u8.shape
    x = u8.astype(np.float32).reshape(h, w * c)
    np.divide(x, np.float32(255), out=x)
    np.subtract(x, np.tile(OPENAI_MEAN, w), out=x)
    np.divide(x, np.tile(OPENAI_STD, w), out=x)
    return x.reshape(h, w, c)


def _clip_view_uint8(u8: np.ndarray, size: int) -> np.ndarray:
    resized = np.asarray(resize_short_side(Image.fromarray(u8), size))
    return _normalize(np.ascontiguousarray(center_crop(resized, size)))


def _float_to_uint8(img: np.ndarray) -> np.ndarray:
    # (img * 255).astype(uint8) truncates, as the reference. Clipping first only changes
    # out-of-range inputs, for which a float->uint8 cast is undefined in C anyway.
    # float32 bounds keep np.clip on its fast path (python-int bounds are ~10x slower).
    x = np.asarray(img, np.float32) * np.float32(255)
    return np.clip(x, np.float32(0), np.float32(255), out=x).astype(np.uint8)


def clip_view(img: np.ndarray, size: int = 224) -> np.ndarray:
    """The official training/test-time `clip_transform` of a float (H, W, 3) RGB image in [0, 1].

    Returns (size, size, 3) float32, normalised with the OpenAI mean/std.
    """
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {img.shape}")
    return _clip_view_uint8(_float_to_uint8(img), size)


def preprocess(image, size: int = 224) -> np.ndarray:
    """CLIP view of a PIL image, a uint8 (H, W[, 3]) array or a float array in [0, 1].

    PIL images of any mode are converted to RGB first; grayscale arrays are replicated.
    Returns (size, size, 3) float32, ready to batch as NHWC for `encode_image`.
    """
    if isinstance(image, Image.Image):
        u8 = np.asarray(image.convert("RGB"))
    else:
        a = np.asarray(image)
        if a.ndim == 2:
            a = a[..., None]
        if a.ndim != 3 or a.shape[-1] not in (1, 3):
            raise ValueError(f"expected an (H, W), (H, W, 1) or (H, W, 3) image, got shape {a.shape}")
        if a.shape[-1] == 1:
            a = np.repeat(a, 3, axis=-1)
        if a.dtype == np.uint8:
            u8 = a
        elif np.issubdtype(a.dtype, np.floating):
            u8 = _float_to_uint8(a)
        else:
            raise TypeError(f"expected uint8 or float pixels, got {a.dtype}")
    return _clip_view_uint8(np.ascontiguousarray(u8), size)
