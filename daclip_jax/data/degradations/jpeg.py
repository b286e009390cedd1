"""jpeg-compressed: baseline libjpeg (PIL) at integer quality, 4:2:0 chroma.

The official set used OpenCV imencode on BGR arrays. OpenCV converts BGR->YCbCr itself, so the
chroma planes are the true Cb/Cr; PIL on RGB arrays computes the same planes. (Feeding BGR to PIL
as if it were RGB would subsample the wrong mixtures.) PIL's default subsampling at these
qualities is 4:2:0, as is OpenCV's.
"""

import io

import numpy as np
from PIL import Image

from ._common import to_uint8


def sample_params(rng, severity):
    return {
        "quality": int(np.clip(round(40 - 30 * severity), 10, 40)),  # test set uses q = 10
        # Where the 8x8 grid falls: the patch is usually cut from a larger compressed image.
        "offset_y": int(rng.integers(0, 8)),
        "offset_x": int(rng.integers(0, 8)),
    }


def encode_decode(img_uint8, quality):
    buf = io.BytesIO()
    Image.fromarray(img_uint8, "RGB").save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"))


def apply(clean, rng, quality, offset_y, offset_x):
    del rng
    x = to_uint8(clean)
    h, w, _ = x.shape
    x = np.pad(x, ((offset_y, 0), (offset_x, 0), (0, 0)), mode="edge")
    y = encode_decode(x, quality)[offset_y:offset_y + h, offset_x:offset_x + w]
    return (y.astype(np.float32) / 255.0), {}


def jpeg_compressed(clean, rng, severity, **overrides):
    params = sample_params(rng, severity)
    params.update(overrides)
    out, maps = apply(clean, rng, **params)
    params["maps"] = maps
    return out, params
