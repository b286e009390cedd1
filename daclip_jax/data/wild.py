"""Wild-IR degradations: a port of the official `deg_util.random_degrade`.

Three Real-ESRGAN-style stages at the input resolution (daclip-uir
universal-image-restoration/data/deg_util.py; shared/design/degradations.md section 1):
  1. shuffled {blur p .8, resize (flag p .8, drawn once), noise p .4, JPEG q U(60, 95) p .4};
  2. shuffled {blur p .4 (size 5-9, sigma 0.2-1.5), noise p .2};
  3. shuffled {blur p .8 (sinc p .8, sigma 0.2-1.0), resize back to H x W if flagged,
     JPEG q U(80, 100) p .4}; final 8-bit rounding.
`deg_list` collects 'blur' (resizing counts as blur), 'ringing artifact' (sinc or Wiener
"deblur"), 'noise' and 'jpeg block'.

The ten-kernel mix is the official one, 'psf' included (p .03: one of pyblur's 100 motion
PSFs, uniformly, at its own size 5-29 whatever the drawn kernel size; the official `psf.pkl`,
shipped as `daclip_jax/assets/daclip_uir/psf.npz` and read without pickle).

Differences from the official code, all deliberate:
- ucdpsf.pkl (under-display-camera PSFs, used with p .2 when a first- or second-stage blur is
  skipped) is not in the official repository snapshot: that branch is skipped (it never added a
  word to deg_list).
- Resizing reproduces OpenCV's float cv2.resize (`degradations._resize`: AREA / CUBIC
  a = -0.75 / LINEAR, half-pixel centres, no antialiasing, replicated border), since PIL's
  filters differ (antialiased shrinking, cubic a = -0.5).
- JPEG goes through PIL on RGB, which computes the same Y/Cb/Cr planes as OpenCV on BGR.
- All randomness comes from one numpy Generator instead of `random` + `np.random`; Gaussian
  draws are Box-Muller on float32 uniforms (`_common.standard_normal`, tails past 5.77 sigma
  cut), about twice as fast as numpy's ziggurat; exact Poisson draws (lam < 50) on the quantised
  image are inverse-CDF lookups in per-level tables (`_poisson_table`), ~4x faster than numpy's.
"""

import functools
import math

import numpy as np
import scipy.fft
import scipy.special
from skimage.draw import disk, line

from daclip_jax.data.degradations._common import LUMA, convolve_reflect, standard_normal
from daclip_jax.data.degradations._official_assets import motion_psfs
from daclip_jax.data.degradations._resize import cv2_resize
from daclip_jax.data.degradations.jpeg import encode_decode

WORDS = ("blur", "ringing artifact", "noise", "jpeg block")

# `predefined_mixed_kernel`'s list and probabilities, as the official code has them.
KERNEL_LIST = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso",
               "plateau_aniso", "defocus", "box", "line", "psf")
KERNEL_PROB = np.array([0.35, 0.2, 0.1, 0.03, 0.1, 0.03, 0.1, 0.03, 0.03, 0.03])

RESIZE_MODES = ("area", "cubic", "linear")


# ------------------------------------------------------------------ blur kernels
def _grid(k):
    ax = np.arange(-k // 2 + 1.0, k // 2 + 1.0)
    xx, yy = np.meshgrid(ax, ax)
    return np.stack([xx, yy], -1)


def _sigma_matrix(sig_x, sig_y, theta):
    d = np.diag([sig_x ** 2, sig_y ** 2])
    u = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    return u @ d @ u.T


def _quad_form(k, sig_x, sig_y, theta, isotropic):
    grid = _grid(k)
    sigma = np.diag([sig_x ** 2, sig_x ** 2]) if isotropic else _sigma_matrix(sig_x, sig_y, theta)
    return np.sum((grid @ np.linalg.inv(sigma)) * grid, -1)


def _random_shape(g, sigma_range, isotropic):
    sig_x = g.uniform(*sigma_range)
    if isotropic:
        return sig_x, sig_x, 0.0
    return sig_x, g.uniform(*sigma_range), g.uniform(-math.pi, math.pi)


def _split_beta(g, beta_range):
    # Real-ESRGAN: half the time below 1, half above.
    return g.uniform(beta_range[0], 1.0) if g.uniform() < 0.5 else g.uniform(1.0, beta_range[1])


def _kernel_noise(g, kernel, noise_range=(0.9, 1.1)):
    kernel = kernel * g.uniform(*noise_range, size=kernel.shape)
    return kernel / kernel.sum()


def gaussian_kernel(g, k, sigma_range, isotropic):
    q = _quad_form(k, *_random_shape(g, sigma_range, isotropic), isotropic)
    kernel = np.exp(-0.5 * q)
    return _kernel_noise(g, kernel / kernel.sum())


def generalized_kernel(g, k, sigma_range, beta_range, isotropic):
    q = _quad_form(k, *_random_shape(g, sigma_range, isotropic), isotropic)
    kernel = np.exp(-0.5 * np.power(q, _split_beta(g, beta_range)))
    return _kernel_noise(g, kernel / kernel.sum())


def plateau_kernel(g, k, sigma_range, beta_range, isotropic):
    q = _quad_form(k, *_random_shape(g, sigma_range, isotropic), isotropic)
    kernel = 1.0 / (np.power(q, _split_beta(g, beta_range)) + 1.0)
    return kernel / kernel.sum()                 # the official adds no noise to plateau kernels


def defocus_kernel(k):
    kernel = np.zeros((k, k), np.float32)
    c = k // 2
    rr, cc = disk((c, c), c + 1, shape=(k, k))
    kernel[rr, cc] = 1
    if k in (3, 5):
        kernel[0, 0] = kernel[0, -1] = kernel[-1, 0] = kernel[-1, -1] = 0
    return kernel / np.count_nonzero(kernel)


def box_kernel(k):
    return np.full((k, k), 1.0 / (k * k), np.float32)


def _line_anchors(n):
    """pyblur's LineDictionary for an n x n kernel: 2n - 2 lines in angle order."""
    a, b = (n - 1) // 2, (n + 1) // 2
    lines = [[i, 0, n - 1 - i, n - 1] for i in range(a, n)]
    lines += [[n - 1, j, 0, n - 1 - j] for j in range(1, b)]
    lines += [[0, n - 1 - j, n - 1, j] for j in range(b, n)]
    lines += [[i, 0, n - 1 - i, n - 1] for i in range(1, a)]
    return lines


def line_kernel(g, k):
    if k > 15:                                   # the official shrinks large line kernels
        k -= 10
    n_angles = (k // 2) * 4
    valid = np.linspace(0, 180, n_angles, endpoint=False)
    angle = int(valid[g.integers(0, n_angles)])  # randomAngle truncates to int degrees ...
    idx = int(np.abs(valid - math.fmod(angle, 180.0)).argmin())   # ... then snaps back
    r0, c0, r1, c1 = _line_anchors(k)[idx]
    kernel = np.zeros((k, k), np.float32)
    rr, cc = line(r0, c0, r1, c1)
    kernel[rr, cc] = 1
    return kernel / np.count_nonzero(kernel)


def psf_kernel(g):
    """`psf_kernel`: one of pyblur's 100 motion PSFs, uniformly (`random.choice(psfDictionary)`)."""
    psfs = motion_psfs()
    return psfs[int(g.integers(len(psfs)))]


def kernel_type(g):
    """One of KERNEL_LIST with the official probabilities (`random.choices(kernel_list, kernel_prob)`)."""
    return KERNEL_LIST[g.choice(len(KERNEL_LIST), p=KERNEL_PROB)]


def mixed_kernel(g, k, sigma_range):
    """`predefined_mixed_kernel`: betag (0.5, 2), betap (1, 1.5), kernel noise U(0.9, 1.1).

    A 'psf' kernel has its own size (5-29), not k, as in the official code.
    """
    kind = kernel_type(g)
    if kind in ("iso", "aniso"):
        kernel = gaussian_kernel(g, k, sigma_range, kind == "iso")
    elif kind.startswith("generalized"):
        kernel = generalized_kernel(g, k, sigma_range, (0.5, 2.0), kind == "generalized_iso")
    elif kind.startswith("plateau"):
        kernel = plateau_kernel(g, k, sigma_range, (1.0, 1.5), kind == "plateau_iso")
    elif kind == "defocus":
        kernel = defocus_kernel(k)
    elif kind == "box":
        kernel = box_kernel(k)
    elif kind == "line":
        kernel = line_kernel(g, k)
    else:
        kernel = psf_kernel(g)
    return np.asarray(kernel, np.float32), kind


def sinc_kernel(g, k):
    """`predefined_sinc_kernel`: circular low-pass with a random cutoff."""
    omega_c = g.uniform(math.pi / 3, math.pi) if k < 13 else g.uniform(math.pi / 5, math.pi)
    c = (k - 1) / 2
    yy, xx = np.mgrid[0:k, 0:k]
    r = np.sqrt((xx - c) ** 2 + (yy - c) ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        kernel = omega_c * scipy.special.j1(omega_c * r) / (2 * math.pi * r)
    kernel[k // 2, k // 2] = omega_c ** 2 / (4 * math.pi)
    return (kernel / kernel.sum()).astype(np.float32)


def wiener_deblur(img, kernel, K=0.006, pad=20):
    """The official `wiener_filter` per channel: symmetric pad, FFT deconvolution (ringing)."""
    x = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="symmetric").transpose(2, 0, 1)
    kernel = kernel / kernel.sum()
    sz = (x.shape[1] - kernel.shape[0], x.shape[2] - kernel.shape[1])
    kp = np.pad(kernel, (((sz[0] + 1) // 2, sz[0] // 2), ((sz[1] + 1) // 2, sz[1] // 2)))
    fk = scipy.fft.fft2(scipy.fft.ifftshift(kp))
    fk = np.conj(fk) / (np.abs(fk) ** 2 + K)
    y = np.real(scipy.fft.ifft2(scipy.fft.fft2(x) * fk))
    return y[:, pad:-pad, pad:-pad].transpose(1, 2, 0).astype(np.float32)


def filter2d(img, kernel):
    """cv2.filter2D: correlation with BORDER_REFLECT_101 (the kernel noise breaks symmetry)."""
    return convolve_reflect(img, kernel[::-1, ::-1])


def random_blur(g, img, max_radius, sinc_prob, deblur_prob, sigma_range, deg_list):
    k = int(g.choice([2 * v + 1 for v in range(2, max_radius)]))
    sinc = g.uniform() < sinc_prob
    kernel = sinc_kernel(g, k) if sinc else mixed_kernel(g, k, sigma_range)[0]
    img = filter2d(img, kernel)
    deg_list.append("blur")
    if sinc:
        deg_list.append("ringing artifact")
    elif g.uniform() < deblur_prob and k < 8:
        blurred = img
        img = wiener_deblur(img, kernel)
        deg_list.append("ringing artifact")
        if g.uniform() < 0.1:
            p = g.uniform(0.1, 0.5)
            img = (p * blurred + (1 - p) * img).astype(np.float32)
    return img


# ------------------------------------------------------------------ resize, noise, JPEG
def random_resize(g, img, size_hw=None):
    if size_hw is None:
        h, w = img.shape[:2]
        s = g.uniform(0.5, 1.4)
        size_hw = (int(h / s), int(w / s))
    return cv2_resize(img, size_hw, RESIZE_MODES[g.integers(3)])


EXACT_POISSON_BELOW = 50.0


def _poisson(g, lam, exact_below=EXACT_POISSON_BELOW, levels=None):
    """Poisson samples; above `exact_below` the rounded normal N(lam, lam) stands in.

    numpy's Poisson sampler costs ~30 ns a draw; for lam >= 50 the rounded normal has the same
    mean and variance and a skewness of at most 0.14, invisible in image noise, at ~1/5 the cost.
    `levels` (optional): (q, vals) with lam == float32(q / 255) * vals for integer q in [0, 255],
    as in `_poisson_noise`; the exact draws then come from `_poisson_table` (~6x faster).
    """
    lam = np.asarray(lam, np.float32)
    small = lam < exact_below
    out = np.empty(lam.shape, np.float32)
    big = ~small
    lam_big = lam[big]
    out[big] = np.rint(lam_big + np.sqrt(lam_big) * standard_normal(g, lam_big.shape))
    if levels is None:
        out[small] = g.poisson(lam[small])
    else:
        q, vals = levels
        out[small] = _poisson_table(g, q[small], float(vals))
    return np.maximum(out, 0)


POISSON_TABLE_K = 128      # P(X >= 128 | lam < 50) < 1e-20
POISSON_GUIDE_M = 256


@functools.lru_cache(maxsize=16)
def _poisson_cdf_table(vals):
    """Inverse-CDF tables for Poisson(float32(q / 255) * vals), q = 0..255.

    Returns (cdf, guide, offset): cdf[q, k] = F(k) (the last column 1.5: all remaining mass);
    guide[q, j] = min{k : F(k) >= j / M} (indexed search, Chen & Asau 1974: the answer for
    u in [j/M, (j+1)/M) is at or a little above it); offset = cdf + 2 q, one sorted array over
    all q, for the few draws that land far in a tail (one searchsorted).
    """
    lam = (np.arange(256, dtype=np.float32) / np.float32(255.0) * np.float32(vals)).astype(np.float64)
    k = np.arange(POISSON_TABLE_K, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        logp = k[None, :] * np.log(lam[:, None]) - lam[:, None] - scipy.special.gammaln(k + 1)[None, :]
    pmf = np.exp(logp)
    pmf[lam == 0] = np.eye(1, POISSON_TABLE_K)[0]          # Poisson(0) = 0
    cdf = np.cumsum(pmf, axis=1)
    cdf[:, -1] = 1.5
    j = np.arange(POISSON_GUIDE_M, dtype=np.float64) / POISSON_GUIDE_M
    guide = np.stack([np.searchsorted(row, j, side="left") for row in cdf]).astype(np.intp)
    offset = (cdf + 2.0 * np.arange(256)[:, None]).ravel()
    return cdf.ravel(), guide.ravel(), offset


def _poisson_table(g, q, vals):
    """Exact Poisson draws by inverse-CDF, k = min{k : F(k) >= u}, for lam = float32(q / 255) * vals."""
    cdf, guide, offset = _poisson_cdf_table(vals)
    q = np.asarray(q).astype(np.intp).ravel()
    u = g.random(q.size)
    k = np.take(guide, q * POISSON_GUIDE_M + (u * POISSON_GUIDE_M).astype(np.intp))
    # One step up from the guide settles nearly all draws; the rest (tails) by binary search.
    idx = np.flatnonzero(np.take(cdf, q * POISSON_TABLE_K + k) < u)
    k[idx] += 1
    idx = idx[np.take(cdf, q[idx] * POISSON_TABLE_K + k[idx]) < u[idx]]
    if idx.size:
        qi = q[idx]
        k[idx] = np.searchsorted(offset, u[idx] + 2.0 * qi, side="left") - qi * POISSON_TABLE_K
    return k.astype(np.float32)


def _poisson_noise(g, img, scale, gray):
    if gray:
        img = img @ LUMA                           # cv2 BGR2GRAY weights, applied to RGB
    q = np.clip(np.rint(img * 255.0), 0, 255)
    img = q / 255.0
    # vals = number of distinct 8-bit levels, rounded up to a power of two (np.unique, faster).
    vals = 2 ** np.ceil(np.log2(np.count_nonzero(np.bincount(q.astype(np.int64).ravel()))))
    noise = (_poisson(g, img * vals, levels=(q.astype(np.intp), vals)) / vals - img).astype(np.float32)
    if gray:
        noise = np.repeat(noise[..., None], 3, -1)
    return noise * scale


def random_noise(g, img, gauss_prob=0.6):
    if g.uniform() < gauss_prob:
        sigma = g.uniform(1, 5)
        shape = img.shape[:2] + (1,) if g.uniform() < 0.4 else img.shape
        noise = standard_normal(g, shape) * np.float32(sigma / 255.0)
        img = np.clip(img + noise, 0, 1)
    if g.uniform() < 1 - gauss_prob:
        scale = g.uniform(0.01, 0.5)
        img = np.clip(img + _poisson_noise(g, img, scale, g.uniform() < 0.4), 0, 1)
    return (np.clip(np.rint(img * 255.0), 0, 255) / 255.0).astype(np.float32)


def random_jpeg(g, img, quality_range):
    quality = int(g.uniform(*quality_range))     # cv2 takes int(quality)
    x = np.rint(np.clip(img, 0, 1) * 255.0).astype(np.uint8)
    return encode_decode(x, quality).astype(np.float32) / 255.0


# ------------------------------------------------------------------ the pipeline
def _random_degrade_once(img, g, blur_prob=0.8, resize_prob=0.8, noise_prob=0.4, jpeg_prob=0.4):
    deg_list = []
    h, w = img.shape[:2]
    first = g.permutation(["blur", "resize", "noise", "jpeg"])
    second = g.permutation(["blur", "noise"])
    third = g.permutation(["blur", "resize", "jpeg"])
    resize_flag = g.uniform() < resize_prob

    for kind in first:
        if kind == "blur":
            if g.uniform() < blur_prob:
                img = random_blur(g, img, 10, 0.1, 0.1, (0.2, 2.2), deg_list)
            # else: under-display-camera PSF with p .2 in the official code (ucdpsf.pkl absent)
        elif kind == "resize" and resize_flag:
            deg_list.append("blur")
            img = random_resize(g, img)
        elif kind == "noise" and g.uniform() < noise_prob:
            deg_list.append("noise")
            img = random_noise(g, img)
        elif kind == "jpeg" and g.uniform() < jpeg_prob:
            deg_list.append("jpeg block")
            img = random_jpeg(g, img, (60, 95))

    for kind in second:
        if kind == "blur":
            if g.uniform() < blur_prob * 0.5:
                img = random_blur(g, img, 5, 0.1, 0.1, (0.2, 1.5), deg_list)
        elif kind == "noise" and g.uniform() < noise_prob * 0.5:
            deg_list.append("noise")
            img = random_noise(g, img)

    for kind in third:
        if kind == "blur" and g.uniform() < blur_prob:
            img = random_blur(g, img, 10, 0.8, 0.1, (0.2, 1.0), deg_list)
        elif kind == "resize" and resize_flag:
            deg_list.append("blur")
            img = random_resize(g, img, (h, w))
        elif kind == "jpeg" and g.uniform() < jpeg_prob:
            deg_list.append("jpeg block")
            img = random_jpeg(g, img, (80, 100))

    out = (np.clip(np.rint(img * 255.0), 0, 255) / 255.0).astype(np.float32)
    return out, list(dict.fromkeys(deg_list))


def random_degrade(image, rng):
    """Wild degradation of a float32 HxWx3 RGB image in [0, 1] at the same resolution.

    Returns (degraded float32 in k/255, deg_list): the words among WORDS in first-occurrence
    order, deduplicated. Draws again (from the same rng) until at least one degradation applied.
    """
    image = np.clip(np.asarray(image, np.float32), 0.0, 1.0)
    while True:
        out, deg_list = _random_degrade_once(image, rng)
        if deg_list:
            return out, deg_list
