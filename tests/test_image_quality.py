"""The official test protocol's PSNR / SSIM / PSNR-Y / SSIM-Y against the golden values the
official functions (utils.calculate_psnr / calculate_ssim, data.util.bgr2ycbcr) gave."""

import json

import numpy as np
import pytest

from daclip_jax.eval import image_quality as Q
from daclip_jax.eval import metrics as M

CASES = json.loads((__import__("pathlib").Path(__file__).parent / "golden" / "metrics" /
                    "metrics.json").read_text())


@pytest.fixture(scope="module")
def pairs(golden_dir):
    return np.load(golden_dir / "metrics" / "metrics.npz")


def test_golden_protocol_is_the_default():
    assert CASES["crop_border"] == Q.OFFICIAL_CROP_BORDER == 4


@pytest.mark.parametrize("case", CASES["cases"], ids=lambda c: c["key"])
def test_matches_official_metrics(pairs, case):
    gt, out = pairs[case["key"] + "/gt"], pairs[case["key"] + "/out"]
    assert gt.dtype == np.uint8 and gt.shape == tuple(case["shape"])
    got = Q.image_scores(gt, out)
    assert abs(got["psnr"] - case["psnr"]) <= 1e-6
    assert abs(got["psnr_y"] - case["psnr_y"]) <= 1e-6
    assert abs(got["ssim"] - case["ssim"]) <= 1e-6
    assert abs(got["ssim_y"] - case["ssim_y"]) <= 1e-6
    # float images in [0, 1] (what the restorer returns) give the same numbers: tensor2img rounds
    f_gt, f_out = gt / np.float32(255), out / np.float32(255)
    assert M.psnr(f_gt, f_out) == pytest.approx(case["psnr"], abs=1e-6)
    assert M.ssim(f_gt, f_out) == pytest.approx(case["ssim"], abs=1e-6)


def test_float_output_is_clamped_and_rounded_like_tensor2img():
    x = np.array([-0.2, 0.0, 0.5 / 255, 1.5 / 255, 0.499, 1.0, 1.7], np.float32)
    np.testing.assert_array_equal(Q.to_uint8(x), [0, 0, 0, 2, 127, 255, 255])   # half to even


def test_luma_is_bt601_on_the_255_scale():
    img = np.zeros((1, 3, 3), np.uint8)
    img[0, 0], img[0, 1], img[0, 2] = (255, 0, 0), (0, 255, 0), (0, 0, 255)   # RGB
    np.testing.assert_allclose(Q.luma(img)[0] * 255, [16 + 65.481, 16 + 128.553, 16 + 24.966])


def test_crop_border_and_size_errors():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 256, (30, 40, 3), np.uint8)
    out = gt.copy()
    out[:4] = 0                                        # only inside the official 4 px border
    assert Q.psnr(gt, out) == float("inf") and Q.ssim(gt, out) == pytest.approx(1.0)
    assert Q.psnr(gt, out, crop_border=0) < 30
    with pytest.raises(ValueError, match="11x11"):
        Q.ssim(gt[:18], out[:18])                      # 10 rows left after the crop
    with pytest.raises(ValueError, match="shape"):
        Q.psnr(gt, out[:, :20])
