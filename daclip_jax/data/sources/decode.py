"""Image decoding for the sources: files and bytes to compact (uint8) or float32 RGB arrays.

`read_image` and `decode_image` give float32 HxWx3 in [0,1]; `read_compact` and
`decode_compact` keep plain 8-bit data as uint8 (value / 255, see `as_float`), which is what
`Source.load` returns; `float_record` turns such a record into the documented float layout.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def _imageio():
    # Imported lazily: sources must be importable (for tests of indexing) on their own.
    from daclip_jax import imageio
    return imageio


def read_image(path_or_file, *, min_size: int = 0, name: str | None = None) -> np.ndarray:
    """Reads an image through `daclip_jax.imageio.read_image`; any failure -> ImageReadError."""
    imageio = _imageio()
    try:
        return imageio.read_image(path_or_file, min_size=min_size)
    except imageio.ImageReadError:
        raise
    except Exception as e:  # noqa: BLE001 - any decoder failure is a bad file, not a crash
        raise imageio.ImageReadError(f"{name or path_or_file}: {type(e).__name__}: {e}") from e


def as_float(x: np.ndarray) -> np.ndarray:
    """A compact image (uint8 = value / 255, or float32) as float32 in [0,1].

    uint8 / 255 in float32 is exactly how `imageio.read_image` converts 8-bit files.
    """
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255.0)
    return np.asarray(x, np.float32)


def float_record(rec: dict) -> dict:
    """A record from `Source.load` with float32 images (the documented record layout)."""
    out = dict(rec)
    for key in ("gt", "lq"):
        x = out.get(key)
        if x is not None:
            y = as_float(x)
            # Cached float images are read-only and shared: hand out a private copy.
            out[key] = y if y.flags.writeable and y is not x else np.array(y, np.float32)
    return out


def _gray_to_rgb(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(a[..., None], 3, axis=-1)) if a.ndim == 2 else a


def _plain_8bit(im: Image.Image) -> bool:
    """8-bit RGB or gray PNG/JPEG: the layouts `read_image` turns into uint8 / 255 unchanged."""
    if im.format not in ("PNG", "JPEG") or im.mode not in ("RGB", "L") or len(im.tile) != 1:
        return False
    args = im.tile[0].args
    rawmode = args[0] if isinstance(args, tuple) else args
    return isinstance(rawmode, str) and ";16" not in rawmode   # 16-bit PNGs need read_image


def read_compact(path: str, *, min_size: int = 0) -> np.ndarray:
    """`read_image` without the float conversion for plain 8-bit RGB/gray PNG and JPEG files.

    Returns uint8 HxWx3 (as_float gives exactly read_image's result) for those, and read_image's
    float32 for every other layout (16-bit, alpha, palette, CMYK...). Any failure, and any image
    smaller than min_size, goes through read_image, which raises the one-line ImageReadError.
    """
    imageio = _imageio()
    try:
        with Image.open(path) as im:
            if _plain_8bit(im):
                im.load()
                orientation = imageio._orientation(im)
                a = _gray_to_rgb(np.asarray(im))
                if orientation != 1:
                    a = imageio._apply_orientation(a, orientation)
                if min(a.shape[:2]) >= max(1, min_size):
                    return a
    except Exception:  # noqa: BLE001 - read_image below names the file and the reason
        pass
    return read_image(path, min_size=min_size)


def decode_image(data: bytes, *, min_size: int = 0, name: str = "<bytes>") -> np.ndarray:
    """Decodes encoded image bytes (PNG/JPEG/...) to float32 HxWx3 in [0,1]."""
    return as_float(decode_compact(data, min_size=min_size, name=name))


def decode_compact(data: bytes, *, min_size: int = 0, name: str = "<bytes>") -> np.ndarray:
    """Decodes encoded image bytes to a compact image (uint8 for 8-bit RGB/L, else float32).

    Plain 8-bit RGB/L images (what `pack` writes) decode in memory; any other layout goes
    through `imageio.read_image` via a temporary file so conversions stay in one place.
    """
    imageio = _imageio()
    if not data:
        raise imageio.ImageReadError(f"{name}: empty image data (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.mode in ("RGB", "L"):
                im.load()
                arr = _gray_to_rgb(np.asarray(im))
                if min(arr.shape[:2]) < max(1, min_size):
                    raise imageio.ImageReadError(
                        f"{name}: too small ({arr.shape[1]}x{arr.shape[0]}, min_size {min_size})")
                return arr
    except imageio.ImageReadError:
        raise
    except Exception as e:  # noqa: BLE001
        raise imageio.ImageReadError(f"{name}: corrupt or truncated image ({type(e).__name__}: {e})") from e
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".img") as f:
        f.write(data)
        f.flush()
        try:
            return read_image(f.name, min_size=min_size, name=name)
        except imageio.ImageReadError as e:
            raise imageio.ImageReadError(str(e).replace(f.name, name)) from None


def _array_to_compact(arr: np.ndarray, min_size: int, name: str) -> np.ndarray:
    """Like `_array_to_float`, but 8-bit RGB/gray arrays stay uint8 (compact form)."""
    arr = np.asarray(arr)
    if arr.dtype == np.uint8 and (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (1, 3))):
        a = _gray_to_rgb(arr[..., 0] if arr.ndim == 3 and arr.shape[-1] == 1 else arr)
        if min(a.shape[:2]) < min_size:
            raise _imageio().ImageReadError(f"{name}: too small ({a.shape[1]}x{a.shape[0]}, min_size {min_size})")
        return a
    return _array_to_float(arr, min_size, name)


def _array_to_float(arr: np.ndarray, min_size: int, name: str) -> np.ndarray:
    """uint8/uint16/float HxW[xC] array (as TFDS decodes) -> float32 HxWx3 in [0,1]."""
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 2, 3, 4):
        raise _imageio().ImageReadError(f"{name}: not an image array, shape {arr.shape}")
    if arr.dtype == np.uint8:
        x = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        x = arr.astype(np.float32) / 65535.0
    else:
        x = np.clip(arr.astype(np.float32), 0.0, 1.0)
    if x.shape[-1] in (2, 4):  # drop alpha, composited on white like imageio does for files
        alpha = x[..., -1:]
        x = x[..., :-1] * alpha + (1.0 - alpha)
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    if min(x.shape[:2]) < min_size:
        raise _imageio().ImageReadError(f"{name}: too small ({x.shape[1]}x{x.shape[0]}, min_size {min_size})")
    return np.ascontiguousarray(x)
