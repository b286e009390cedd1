"""CLIP view == official clip_transform (tests/golden/preprocess.*), intermediates included."""

import json

import numpy as np
import pytest
from PIL import Image

from daclip_jax.preprocess import (OPENAI_MEAN, OPENAI_STD, center_crop, clip_view, preprocess,
                                   resize_short_side)


@pytest.fixture(scope="module")
def golden(golden_dir):
    meta = json.loads((golden_dir / "preprocess.json").read_text())
    z = np.load(golden_dir / "preprocess.npz")
    return meta, {k: z[k] for k in z.files}


def test_constants_match_golden(golden):
    meta, _ = golden
    np.testing.assert_array_equal(OPENAI_MEAN, np.float32(meta["mean"]))
    np.testing.assert_array_equal(OPENAI_STD, np.float32(meta["std"]))


@pytest.mark.parametrize("i", range(4))
def test_intermediates_and_output_are_bit_exact(golden, i):
    meta, z = golden
    info = meta["images"][i]
    u8 = z[f"img{i}/input_uint8_HWC_RGB"]
    img = u8.astype(np.float32) / 255  # what read_img + BGR->RGB hands clip_transform

    np.testing.assert_array_equal((img * 255).astype(np.uint8), u8)  # truncation is lossless here
    resized = np.asarray(resize_short_side(Image.fromarray(u8), 224))
    np.testing.assert_array_equal(resized, z[f"img{i}/resized_uint8_HWC"])
    assert list(resized.shape[:2]) == info["resized_hw"]
    cropped = center_crop(resized, 224)
    np.testing.assert_array_equal(cropped, z[f"img{i}/cropped_uint8_HWC"])

    want = z[f"img{i}/clip_transform_CHW"].transpose(1, 2, 0)
    got = clip_view(img, 224)
    assert got.dtype == np.float32 and got.shape == (224, 224, 3)
    np.testing.assert_array_equal(got, want)
    # the user-facing entry point gives the same from every input kind
    np.testing.assert_array_equal(preprocess(u8), want)
    np.testing.assert_array_equal(preprocess(Image.fromarray(u8)), want)
    np.testing.assert_array_equal(preprocess(img), want)

    np.testing.assert_array_equal(clip_view(img, 32), z[f"img{i}/clip_transform_res32"].transpose(1, 2, 0))


def test_crop_offsets_use_half_to_even(golden):
    meta, _ = golden
    for info in meta["images"]:
        h, w = info["resized_hw"]
        a = np.arange(h * w).reshape(h, w, 1)
        top, left = info["crop_top_left"]
        assert center_crop(a, 224)[0, 0, 0] == top * w + left
    assert center_crop(np.zeros((224, 339, 1)), 224).shape == (224, 224, 1)
    assert center_crop(np.arange(339)[None, :, None].repeat(224, 0), 224)[0, 0, 0] == 58  # round(57.5)


def test_float_input_truncates_not_rounds():
    img = np.full((8, 8, 3), 0.9999 / 255 + 100 / 255, np.float32)  # 100.9999 -> 100
    np.testing.assert_array_equal(clip_view(img, 8), preprocess(np.full((8, 8, 3), 100, np.uint8), 8))
    over = np.full((8, 8, 3), 1.7, np.float32)  # out of range is clipped, not wrapped
    np.testing.assert_array_equal(clip_view(over, 8), preprocess(np.full((8, 8, 3), 255, np.uint8), 8))


def test_other_inputs():
    rng = np.random.default_rng(0)
    g = rng.integers(0, 256, (40, 30), np.uint8)
    want = preprocess(np.repeat(g[..., None], 3, -1), 16)
    np.testing.assert_array_equal(preprocess(g, 16), want)
    np.testing.assert_array_equal(preprocess(Image.fromarray(g), 16), want)  # "L" -> RGB
    rgba = Image.fromarray(rng.integers(0, 256, (40, 30, 4), np.uint8), "RGBA")
    assert preprocess(rgba, 16).shape == (16, 16, 3)
    with pytest.raises(ValueError):
        clip_view(np.zeros((8, 8), np.float32))
    with pytest.raises(TypeError):
        preprocess(np.zeros((8, 8, 3), np.int64))
