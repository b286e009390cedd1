"""Reading any photo a user hands us as float32 RGB in [0, 1], and writing PNGs.

Decoding is Pillow's. Everything that is not plain 8-bit RGB is converted here so the
rest of the code sees one layout (H, W, 3) float32:

- grayscale (1, L, I;16, I, F) is replicated to three channels;
- palette images become RGB, or RGBA when the palette has a transparent entry;
- CMYK / YCbCr / LAB / HSV go through Pillow's own conversion to RGB (ICC profiles are
  not applied);
- alpha is composited onto white by default (`alpha="white"`): what every viewer shows
  for a transparent photo, and it does not depend on the arbitrary colours a writer left
  under fully transparent pixels. `alpha="drop"` keeps the RGB planes as they are, which
  is what the official code does (`cv2.imread(..., IMREAD_UNCHANGED)[..., :3]`);
- 16-bit files keep their precision (value / 65535). Pillow reduces 16-bit RGB(A) PNGs
  and TIFFs to 8 bits, so those two are read around it (see `_png16`, `_tiff16`);
- the EXIF orientation is applied, as `PIL.ImageOps.exif_transpose` would.

Anything unreadable raises `ImageReadError` with one line naming the file and the reason,
so a CLI can print it and move on to the next file. Truncated files are errors: the whole
image is decoded up front and `ImageFile.LOAD_TRUNCATED_IMAGES` is left off, so a cut-off
JPEG never turns into a grey bottom half that a model would happily "restore".
"""

from __future__ import annotations

import os
import struct
import warnings
import zlib

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["ImageReadError", "read_image", "write_png", "to_uint8"]

_ORIENTATION_TAG = 0x0112


class ImageReadError(ValueError):
    """A file that cannot be used as an image; the message is one line naming the file."""


def _fail(path: str, reason: str) -> ImageReadError:
    return ImageReadError(f"{path}: {' '.join(str(reason).split())}")


def _reason(e: Exception) -> str:
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def read_image(path: str | os.PathLike, *, min_size: int = 1, alpha: str = "white") -> np.ndarray:
    """Decode `path` into a float32 (H, W, 3) RGB array in [0, 1].

    min_size: smallest accepted height and width (the default only rejects empty images;
        callers that crop patches pass their patch size).
    alpha: "white" composites transparent images onto white, "drop" ignores the alpha plane.
    Raises ImageReadError (a ValueError) for a missing, empty, non-image, truncated or
    corrupt file, or one smaller than min_size.
    """
    if alpha not in ("white", "drop"):
        raise ValueError(f"alpha must be 'white' or 'drop', got {alpha!r}")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise _fail(path, "no such file")
    if not os.path.isfile(path):
        raise _fail(path, "not a regular file")
    if os.path.getsize(path) == 0:
        raise _fail(path, "empty file (0 bytes)")
    try:
        with Image.open(path) as im:
            fmt, tile = im.format, list(im.tile)
            im.load()  # decode everything now: truncation and bad data surface here
            orientation = _orientation(im)
            array, maxval = _decode16(path, im, fmt, tile)
            if array is None:
                array, maxval = _pil_array(im)
    except UnidentifiedImageError:
        raise _fail(path, "not an image file Pillow can read") from None
    except Image.DecompressionBombError as e:
        raise _fail(path, _reason(e)) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError,
            struct.error, zlib.error) as e:
        # Pillow reports corrupt data with any of these (truncated: OSError; bad CRC or
        # header: SyntaxError; broken chunk lengths: ValueError/EOFError/struct errors).
        raise _fail(path, f"corrupt or truncated image ({_reason(e)})") from None
    img = _finish(array, maxval, alpha)
    img = _apply_orientation(img, orientation)
    h, w = img.shape[:2]
    if min(h, w) < max(1, min_size):
        raise _fail(path, f"too small: {h}x{w} pixels (H x W), need at least {min_size} on each side")
    return img


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # a broken EXIF block must not make a good photo unreadable
        return 1


def _apply_orientation(a: np.ndarray, orientation: int) -> np.ndarray:
    """The EXIF Orientation transposes of `ImageOps.exif_transpose`, on an (H, W, C) array."""
    if orientation == 2:  # FLIP_LEFT_RIGHT
        a = a[:, ::-1]
    elif orientation == 3:  # ROTATE_180
        a = a[::-1, ::-1]
    elif orientation == 4:  # FLIP_TOP_BOTTOM
        a = a[::-1]
    elif orientation == 5:  # TRANSPOSE
        a = a.transpose(1, 0, 2)
    elif orientation == 6:  # ROTATE_270 (counter-clockwise), i.e. 90 clockwise
        a = np.rot90(a, -1)
    elif orientation == 7:  # TRANSVERSE
        a = a[::-1, ::-1].transpose(1, 0, 2)
    elif orientation == 8:  # ROTATE_90 (counter-clockwise)
        a = np.rot90(a, 1)
    return np.ascontiguousarray(a)


def _pil_array(im: Image.Image) -> tuple[np.ndarray, float]:
    """An (H, W, C) array with C in {1, 2, 3, 4} (gray, gray+alpha, RGB, RGBA) and its max value."""
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(im).astype(np.float32)[..., None], 65535.0
    if mode == "I":  # 32-bit ints: 16-bit data in practice (PGM, some TIFFs)
        a = np.asarray(im)
        return a.astype(np.float64)[..., None], 65535.0 if a.max(initial=0) <= 65535 else float(2**31 - 1)
    if mode == "F":  # float TIFFs are taken to be in [0, 1]
        return np.asarray(im, np.float32)[..., None], 1.0
    if mode == "1":
        im = im.convert("L")
    elif mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in im.info
        im = im.convert("RGBA" if has_alpha else "RGB")
    elif mode == "La":
        im = im.convert("LA")
    elif mode == "RGBa":
        im = im.convert("RGBA")
    elif mode not in ("L", "LA", "RGB", "RGBA"):  # CMYK, YCbCr, LAB, HSV, RGBX, ...
        im = im.convert("RGB")
    a = np.asarray(im)
    return (a[..., None] if a.ndim == 2 else a), 255.0


def _finish(a: np.ndarray, maxval: float, alpha: str) -> np.ndarray:
    x = a.astype(np.float32) / np.float32(maxval)  # uint8: exactly the official uint8 / 255.
    if a.dtype not in (np.uint8, np.uint16):  # 32-bit int and float sources may leave [0, 1]
        x = np.clip(x, np.float32(0), np.float32(1))
    c = x.shape[-1]
    color, a_plane = (x[..., :1], None) if c == 1 else (x[..., :1], x[..., 1:2]) if c == 2 \
        else (x[..., :3], x[..., 3:4] if c >= 4 else None)
    if a_plane is not None and alpha == "white":
        color = color * a_plane + (1.0 - a_plane)
    if color.shape[-1] == 1:
        color = np.repeat(color, 3, axis=-1)
    return np.ascontiguousarray(color, dtype=np.float32)


# --- 16-bit colour files that Pillow would reduce to 8 bits -------------------------------

# Pillow's PNG decoder undoes the row filters on the full 16-bit samples and only then keeps
# the high byte ("RGB;16B"). Decoding the same stream a second time with the little-endian
# raw mode keeps the other byte of every sample instead, so hi * 256 + lo is exact, with
# Pillow doing all the decompression, unfiltering and de-interlacing both times.
_PNG16_LOW_BYTE = {"RGB;16B": "RGB;16L", "RGBA;16B": "RGBA;16L"}


def _decode16(path: str, im: Image.Image, fmt: str | None, tile) -> tuple[np.ndarray | None, float]:
    if fmt == "PNG" and len(tile) == 1:
        raw = tile[0].args
        if raw in _PNG16_LOW_BYTE:
            return _png16(path, im, raw), 65535.0
        if raw == "LA;16B":  # 16-bit gray+alpha: the same 32 bits/pixel read as raw bytes
            b = _redecode(path, "RGBA").astype(np.uint16)
            return np.stack([b[..., 0] << 8 | b[..., 1], b[..., 2] << 8 | b[..., 3]], -1), 65535.0
    if fmt == "TIFF" and im.mode in ("RGB", "RGBA"):
        bits = getattr(im, "tag_v2", {}).get(258, (8,))
        if max(np.atleast_1d(bits)) == 16:
            return _tiff16(path, im), 65535.0
    return None, 255.0


def _redecode(path: str, rawmode: str) -> np.ndarray:
    with Image.open(path) as im2:
        im2.tile = [t._replace(args=rawmode) for t in im2.tile]
        if rawmode == "RGBA" and im2.mode != "RGBA":
            raise ValueError(f"unexpected PNG mode {im2.mode}")
        im2.load()
        return np.asarray(im2)


def _png16(path: str, im: Image.Image, raw: str) -> np.ndarray:
    hi = np.asarray(im).astype(np.uint16)
    lo = _redecode(path, _PNG16_LOW_BYTE[raw]).astype(np.uint16)
    return hi << 8 | lo


def _tiff16(path: str, im: Image.Image) -> np.ndarray:
    try:
        import tifffile  # a scikit-image dependency

        with tifffile.TiffFile(path) as tf:
            page = tf.pages[0]
            a = page.asarray()
            if page.axes.startswith("S"):  # planar configuration: samples first
                a = np.moveaxis(a, 0, -1)
    except Exception as e:  # e.g. a compression tifffile cannot decode without imagecodecs
        warnings.warn(f"{path}: 16-bit TIFF read at 8 bits by Pillow ({_reason(e)})", stacklevel=3)
        return np.asarray(im).astype(np.uint16) * 257
    if a.ndim != 3 or a.shape[-1] < 3 or a.dtype != np.uint16:
        warnings.warn(f"{path}: unexpected 16-bit TIFF layout {a.shape} {a.dtype}; read at 8 bits", stacklevel=3)
        return np.asarray(im).astype(np.uint16) * 257
    return a[..., :4] if im.mode == "RGBA" else a[..., :3]


# --- writing -------------------------------------------------------------------------------

def to_uint8(img: np.ndarray) -> np.ndarray:
    """Float image in [0, 1] -> uint8, clipped and rounded half-to-even (as torch's .round())."""
    img = np.asarray(img)
    if img.dtype == np.uint8:
        return img
    if not np.all(np.isfinite(img)):
        raise ValueError("image has NaN or infinite values")
    return np.rint(np.clip(img.astype(np.float32), 0.0, 1.0) * np.float32(255.0)).astype(np.uint8)


def write_png(path: str | os.PathLike, img: np.ndarray) -> None:
    """Write an (H, W, 3), (H, W, 1) or (H, W) image in [0, 1] (or uint8) as an 8-bit PNG."""
    a = to_uint8(img)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise ValueError(f"expected an (H, W[, 1|3|4]) image, got shape {a.shape}")
    Image.fromarray(a).save(os.fspath(path), format="PNG")
