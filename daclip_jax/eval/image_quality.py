"""PSNR / SSIM / PSNR-Y / SSIM-Y exactly as the official test protocol computes them.

Official `config/daclip-sde/test.py` (universal-image-restoration), per image:

    output = tensor2img(SR)            # clamp to [0, 1], round(x * 255), uint8
    gt = tensor2img(GT)
    sr, gt = output / 255, gt / 255    # float64
    crop `crop_border` px from every side: opt["crop_border"] is unset in options/test.yml,
        so it falls back to degradation.scale = 4
    psnr = calculate_psnr(sr * 255, gt * 255)   # 20 log10(255 / sqrt(MSE)), float64
    ssim = calculate_ssim(sr * 255, gt * 255)   # 11x11 Gaussian (sigma 1.5) window, 'valid'
                                                # region, mean over pixels and channels
    Y = bgr2ycbcr(img, only_y=True)             # BT.601 luma of the [0, 1] image, on /255 scale
    psnr_y, ssim_y = the same on Y (cropped the same way)

The values are those of utils.calculate_psnr / calculate_ssim, checked against the golden
metrics (tests/golden/metrics) to 1e-6. Inputs here are float (H, W, 3) RGB images in [0, 1]
or uint8 RGB; channel order does not change PSNR / SSIM, and the Y weights are applied to
the right channels.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

# test.yml: crop_border unset -> degradation.scale = 4
OFFICIAL_CROP_BORDER = 4
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
_C1 = (0.01 * 255) ** 2
_C2 = (0.03 * 255) ** 2


def to_uint8(image: np.ndarray) -> np.ndarray:
    """The official `tensor2img`: clamp to [0, 1], round(x * 255) (half to even), uint8.

    uint8 input is returned as it is.
    """
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    x = np.clip(image.astype(np.float32), 0, 1)      # torch: .float().clamp_(0, 1)
    return np.round(x * np.float32(255)).astype(np.uint8)


def luma(image_u8: np.ndarray) -> np.ndarray:
    """`data.util.bgr2ycbcr(img / 255, only_y=True)` for an (H, W, 3) uint8 RGB image: the BT.601
    luma on the /255 scale, float64 ((65.481 R + 128.553 G + 24.966 B) / 255 + 16) / 255."""
    x = _scaled(image_u8)   # the reference's `img *= 255.` of img = output / 255
    # the reference dots BGR with [24.966, 128.553, 65.481]; same sum in the same order
    y = (x[..., 2] * 24.966 + x[..., 1] * 128.553 + x[..., 0] * 65.481) / 255.0 + 16.0
    return y / 255.0


def _scaled(image_u8: np.ndarray) -> np.ndarray:
    """(u8 / 255) * 255 in float64, the values test.py hands to calculate_psnr / _ssim."""
    return image_u8.astype(np.float64) / 255.0 * 255.0


def crop(image: np.ndarray, border: int) -> np.ndarray:
    return image if border == 0 else image[border:-border, border:-border]


def _psnr_255(a: np.ndarray, b: np.ndarray) -> float:
    """utils.calculate_psnr on float64 images on the 0..255 scale."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    if mse == 0:
        return float("inf")
    return 20 * math.log10(255.0 / math.sqrt(mse))


def _gaussian_1d() -> np.ndarray:
    """cv2.getGaussianKernel(11, 1.5): normalised exp(-x^2 / (2 sigma^2)), float64."""
    x = np.arange(SSIM_WINDOW, dtype=np.float64) - (SSIM_WINDOW - 1) / 2
    k = np.exp(-(x * x) / (2 * SSIM_SIGMA ** 2))
    return k / k.sum()


def _filter_valid(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """cv2.filter2D(x, -1, outer(k, k))[5:-5, 5:-5] per channel (the window is separable; the
    border mode never reaches the 'valid' region)."""
    y = ndimage.correlate1d(x, k, axis=0, mode="reflect")
    y = ndimage.correlate1d(y, k, axis=1, mode="reflect")
    r = SSIM_WINDOW // 2
    return y[r:-r, r:-r]


def _ssim_255(a: np.ndarray, b: np.ndarray) -> float:
    """utils.calculate_ssim on float64 images on the 0..255 scale ((H, W) or (H, W, C)): the
    mean of the SSIM map over every pixel and channel."""
    if min(a.shape[:2]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels after the "
                         f"border crop, got {a.shape[0]}x{a.shape[1]}")
    a, b = a.astype(np.float64), b.astype(np.float64)
    k = _gaussian_1d()
    mu1, mu2 = _filter_valid(a, k), _filter_valid(b, k)
    mu1_sq, mu2_sq, mu1_mu2 = mu1 ** 2, mu2 ** 2, mu1 * mu2
    sigma1_sq = _filter_valid(a * a, k) - mu1_sq
    sigma2_sq = _filter_valid(b * b, k) - mu2_sq
    sigma12 = _filter_valid(a * b, k) - mu1_mu2
    ssim_map = ((2 * mu1_mu2 + _C1) * (2 * sigma12 + _C2)) / (
        (mu1_sq + mu2_sq + _C1) * (sigma1_sq + sigma2_sq + _C2))
    return float(ssim_map.mean())


def _pair(reference, image, crop_border):
    ref, img = to_uint8(reference), to_uint8(image)
    if ref.shape != img.shape:
        raise ValueError(f"reference {ref.shape} and image {img.shape} differ in shape")
    if ref.ndim != 3 or ref.shape[-1] != 3:
        raise ValueError(f"expected (H, W, 3) RGB images, got {ref.shape}")
    if min(ref.shape[:2]) <= 2 * crop_border:
        raise ValueError(f"a {ref.shape[0]}x{ref.shape[1]} image has nothing left after "
                         f"cropping {crop_border} px from every side")
    return ref, img


def psnr(reference: np.ndarray, image: np.ndarray, crop_border: int = OFFICIAL_CROP_BORDER) -> float:
    """Official PSNR (dB) of `image` against `reference`: float RGB in [0, 1] or uint8."""
    ref, img = _pair(reference, image, crop_border)
    return _psnr_255(crop(_scaled(ref), crop_border), crop(_scaled(img), crop_border))


def ssim(reference: np.ndarray, image: np.ndarray, crop_border: int = OFFICIAL_CROP_BORDER) -> float:
    """Official SSIM (averaged over RGB) of `image` against `reference`."""
    ref, img = _pair(reference, image, crop_border)
    return _ssim_255(crop(_scaled(ref), crop_border), crop(_scaled(img), crop_border))


def image_scores(reference: np.ndarray, image: np.ndarray,
                 crop_border: int = OFFICIAL_CROP_BORDER) -> dict[str, float]:
    """{'psnr', 'ssim', 'psnr_y', 'ssim_y'} of one image, as the official test.py logs them."""
    ref, img = _pair(reference, image, crop_border)
    r, i = crop(_scaled(ref), crop_border), crop(_scaled(img), crop_border)
    ry, iy = crop(luma(ref), crop_border) * 255, crop(luma(img), crop_border) * 255
    return {"psnr": _psnr_255(r, i), "ssim": _ssim_255(r, i),
            "psnr_y": _psnr_255(ry, iy), "ssim_y": _ssim_255(ry, iy)}
