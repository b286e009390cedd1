"""read_image / write_png on real and odd files built in tmp_path."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from daclip_jax.imageio import ImageReadError, read_image, to_uint8, write_png


@pytest.fixture(scope="module")
def astronaut():
    from skimage import data

    return data.astronaut()  # (512, 512, 3) uint8 photo


def _rng(seed=0):
    return np.random.default_rng(seed)


# --- real photo -----------------------------------------------------------------------------

def test_photo_png_round_trip_is_lossless(tmp_path, astronaut):
    p = tmp_path / "astro.png"
    Image.fromarray(astronaut).save(p)
    img = read_image(p)
    assert img.dtype == np.float32 and img.shape == (512, 512, 3) and img.flags.c_contiguous
    np.testing.assert_array_equal(img, astronaut.astype(np.float32) / 255)
    q = tmp_path / "again.png"
    write_png(q, img)
    np.testing.assert_array_equal(np.asarray(Image.open(q)), astronaut)


def test_photo_jpeg_matches_pillow_decode(tmp_path, astronaut):
    p = tmp_path / "astro.jpg"
    Image.fromarray(astronaut).save(p, quality=90)
    np.testing.assert_array_equal(read_image(p), np.asarray(Image.open(p).convert("RGB")) / np.float32(255))


# --- modes ----------------------------------------------------------------------------------

def test_grayscale_is_replicated(tmp_path):
    g = _rng().integers(0, 256, (5, 7), dtype=np.uint8)
    Image.fromarray(g).save(tmp_path / "g.png")
    img = read_image(tmp_path / "g.png")
    assert img.shape == (5, 7, 3)
    for c in range(3):
        np.testing.assert_array_equal(img[..., c], g / np.float32(255))
    Image.fromarray(g > 128).save(tmp_path / "b.png")  # mode "1"
    np.testing.assert_array_equal(read_image(tmp_path / "b.png")[..., 0], (g > 128).astype(np.float32))


def test_gray16_and_int_and_float_keep_precision(tmp_path):
    g16 = _rng().integers(0, 65536, (6, 5), dtype=np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    np.testing.assert_array_equal(read_image(tmp_path / "g16.png")[..., 1], g16 / np.float32(65535))
    Image.fromarray(g16.astype(np.int32)).save(tmp_path / "i32.tif")
    assert Image.open(tmp_path / "i32.tif").mode == "I"
    np.testing.assert_allclose(read_image(tmp_path / "i32.tif")[..., 2], g16 / 65535, atol=1e-7)
    f = np.linspace(-0.5, 1.5, 30, dtype=np.float32).reshape(6, 5)
    Image.fromarray(f).save(tmp_path / "f.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "f.tif")[..., 0], np.clip(f, 0, 1))


def test_alpha_white_and_drop(tmp_path):
    rgba = _rng().integers(0, 256, (4, 6, 4), dtype=np.uint8)
    rgba[0, 0, 3], rgba[0, 1, 3] = 0, 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    x = rgba.astype(np.float32) / 255
    want = x[..., :3] * x[..., 3:] + (1 - x[..., 3:])
    np.testing.assert_allclose(read_image(tmp_path / "a.png"), want, atol=1e-6)
    np.testing.assert_array_equal(read_image(tmp_path / "a.png")[0, 0], [1, 1, 1])  # transparent -> white
    np.testing.assert_array_equal(read_image(tmp_path / "a.png", alpha="drop"), x[..., :3])
    Image.fromarray(rgba[..., [0, 3]], "LA").save(tmp_path / "la.png")
    la = read_image(tmp_path / "la.png")
    np.testing.assert_allclose(la[..., 1], x[..., 0] * x[..., 3] + 1 - x[..., 3], atol=1e-6)
    with pytest.raises(ValueError):
        read_image(tmp_path / "a.png", alpha="black")


def test_palette_with_transparency(tmp_path):
    idx = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    im = Image.fromarray(idx, "P")
    im.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (3 * 253))
    im.save(tmp_path / "p.png", transparency=1)  # green is transparent
    img = read_image(tmp_path / "p.png")
    np.testing.assert_array_equal(img[0], [[1, 0, 0], [1, 1, 1], [0, 0, 1]])
    im.save(tmp_path / "p_opaque.png")
    np.testing.assert_array_equal(read_image(tmp_path / "p_opaque.png")[0, 1], [0, 1, 0])
    im.save(tmp_path / "p.gif", transparency=1)
    np.testing.assert_array_equal(read_image(tmp_path / "p.gif")[1, 1], [1, 1, 1])


def test_cmyk_goes_through_pillow_conversion(tmp_path):
    cmyk = Image.fromarray(_rng().integers(0, 256, (8, 8, 4), dtype=np.uint8), "CMYK")
    cmyk.save(tmp_path / "c.tif")
    assert Image.open(tmp_path / "c.tif").mode == "CMYK"
    np.testing.assert_array_equal(read_image(tmp_path / "c.tif"), np.asarray(cmyk.convert("RGB")) / np.float32(255))


def _png16(arr: np.ndarray, color_type: int) -> bytes:
    """A 16-bit PNG whose rows cycle through all five filter types (encoded here, so the
    test exercises Pillow's unfiltering of every kind on 16-bit samples)."""
    h, w, c = arr.shape
    bpp = 2 * c
    raw = arr.astype(">u2").reshape(h, w * bpp // 2).view(np.uint8).reshape(h, w * bpp).astype(np.int32)
    rows = []
    for y in range(h):
        cur = raw[y]
        up = raw[y - 1] if y else np.zeros_like(cur)
        left = np.concatenate([np.zeros(bpp, np.int32), cur[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int32), up[:-bpp]])
        f = y % 5
        if f == 0:
            pred = 0
        elif f == 1:
            pred = left
        elif f == 2:
            pred = up
        elif f == 3:
            pred = (left + up) // 2
        else:
            p = left + up - upleft
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - upleft)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
        rows.append(bytes([f]) + ((cur - pred) % 256).astype(np.uint8).tobytes())

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"".join(rows)))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("channels,color_type", [(3, 2), (4, 6), (2, 4)])
def test_png16_colour_is_exact(tmp_path, channels, color_type):
    a = _rng(channels).integers(0, 65536, (11, 9, channels), dtype=np.uint16)
    a[0, 0, -1] = 65535  # keep one opaque pixel so alpha variants have a known value
    p = tmp_path / "c16.png"
    p.write_bytes(_png16(a, color_type))
    x = a.astype(np.float32) / 65535
    got = read_image(p, alpha="drop")
    want = x[..., :3] if channels >= 3 else np.repeat(x[..., :1], 3, -1)
    np.testing.assert_array_equal(got, want)
    assert not np.array_equal(got, np.floor(want * 255) / 255)  # more than 8 bits survived
    if channels != 3:
        al = x[..., -1:]
        np.testing.assert_allclose(read_image(p), want * al + 1 - al, atol=1e-6)


@pytest.mark.parametrize("planar", [False, True])
def test_tiff16_rgb_is_exact(tmp_path, planar):
    import tifffile

    a = _rng().integers(0, 65536, (7, 10, 3), dtype=np.uint16)
    p = tmp_path / "c16.tif"
    tifffile.imwrite(p, np.moveaxis(a, -1, 0) if planar else a, photometric="rgb",
                     planarconfig="separate" if planar else "contig", compression="zlib")
    assert Image.open(p).mode == "RGB"  # Pillow alone would keep 8 bits
    np.testing.assert_array_equal(read_image(p), a / np.float32(65535))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_exif_transpose(tmp_path, orientation):
    a = _rng().integers(0, 256, (5, 8, 3), dtype=np.uint8)
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = orientation
    p = tmp_path / "o.jpg"
    im.save(p, exif=exif, quality=100)
    want = np.asarray(ImageOps.exif_transpose(Image.open(p)).convert("RGB")) / np.float32(255)
    got = read_image(p)
    assert got.shape == want.shape == ((5, 8, 3) if orientation < 5 else (8, 5, 3))
    np.testing.assert_array_equal(got, want)


# --- errors ---------------------------------------------------------------------------------

def _error(path, **kw) -> str:
    with pytest.raises(ImageReadError) as e:
        read_image(path, **kw)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    assert isinstance(e.value, ValueError)
    return msg


def test_errors_are_one_line_and_name_the_file(tmp_path, astronaut):
    assert "no such file" in _error(tmp_path / "missing.png")
    assert "not a regular file" in _error(tmp_path)
    (tmp_path / "empty.png").write_bytes(b"")
    assert "0 bytes" in _error(tmp_path / "empty.png")
    (tmp_path / "notes.jpg").write_text("these are\nnot pixels\n")
    assert "not an image" in _error(tmp_path / "notes.jpg")

    for ext in ("jpg", "png"):
        good = tmp_path / f"good.{ext}"
        Image.fromarray(astronaut).save(good)
        data = good.read_bytes()
        cut = tmp_path / f"cut.{ext}"
        cut.write_bytes(data[: len(data) // 2])
        assert "truncated" in _error(cut)

    png = (tmp_path / "good.png").read_bytes()
    bad = bytearray(png)
    bad[len(png) // 2: len(png) // 2 + 64] = bytes(64)  # garbage inside the IDAT stream
    (tmp_path / "corrupt.png").write_bytes(bytes(bad))
    assert "corrupt" in _error(tmp_path / "corrupt.png")


def test_min_size(tmp_path):
    Image.fromarray(np.zeros((3, 40, 3), np.uint8)).save(tmp_path / "thin.png")
    assert read_image(tmp_path / "thin.png").shape == (3, 40, 3)
    assert "too small: 3x40" in _error(tmp_path / "thin.png", min_size=4)
    assert read_image(tmp_path / "thin.png", min_size=3).shape == (3, 40, 3)


# --- writing --------------------------------------------------------------------------------

def test_to_uint8_and_write_png(tmp_path):
    x = np.array([-0.1, 0.0, 0.5 / 255, 1.5 / 255, 0.5, 1.0, 2.0], np.float32)
    np.testing.assert_array_equal(to_uint8(x), [0, 0, 0, 2, 128, 255, 255])  # half to even
    with pytest.raises(ValueError):
        to_uint8(np.array([np.nan], np.float32))
    g = _rng().random((4, 5, 1), dtype=np.float32)
    write_png(tmp_path / "g.png", g)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "g.png")), to_uint8(g[..., 0]))
    with pytest.raises(ValueError):
        write_png(tmp_path / "bad.png", np.zeros((4, 5, 2), np.float32))
