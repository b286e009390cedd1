"""Small numerical helpers shared by the degradation types (host numpy/scipy/PIL, float32)."""

import functools

import numpy as np
import scipy.fft
import scipy.ndimage
from PIL import Image

# Every pixel size in the spec is for a 256x256 patch; it scales with min(H, W).
REFERENCE_SIZE = 256.0
# Rec.601 luma, the weights libjpeg and OpenCV use.
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def px(value, shape):
    """A spec pixel size (given for 256^2) scaled to an image of `shape` (H, W, ...)."""
    return float(value) * min(shape[0], shape[1]) / REFERENCE_SIZE


def quantize(x):
    """Round (not truncate) to 8 bit: values k/255, float32."""
    return (np.rint(np.clip(x, 0.0, 1.0) * 255.0) / 255.0).astype(np.float32)


def to_uint8(x):
    return np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def standard_normal(rng, shape):
    """float32 N(0, 1) samples by Box-Muller on float32 uniforms.

    Twice as fast as `rng.standard_normal(dtype=float32)` (numpy's ziggurat spends ~10 ns a
    draw; this is two uniforms and vectorised log/sqrt/cos/sin per pair). The uniforms have
    24 bits, so |z| <= sqrt(48 ln 2) = 5.77: a tail of probability 8e-9 is cut, about one
    pixel in 600 images, invisible after clipping to [0, 1] and 8-bit rounding.
    """
    n = int(np.prod(shape))
    m = (n + 1) // 2
    u = rng.random((2, m), dtype=np.float32)
    r = np.sqrt(np.float32(-2.0) * np.log1p(-u[0]))     # 1 - u in (0, 1]: log is finite
    theta = np.float32(2.0 * np.pi) * u[1]
    z = np.empty(2 * m, np.float32)
    np.multiply(r, np.cos(theta), out=z[:m])
    np.multiply(r, np.sin(theta), out=z[m:])
    return z[:n].reshape(shape)


def luma(x):
    return (x @ LUMA).astype(np.float32)


def gaussian_blur(x, sigma, mode="reflect"):
    """Gaussian smoothing over the two spatial axes of an HxW or HxWxC array.

    scipy.ndimage.gaussian_filter's filter (truncated at 3 sigma, normalised). From sigma 2 px
    on (mode "reflect"), one FFT convolution with the same 2D kernel and the same
    half-sample-symmetric border is faster than the two 1D passes (2.5x at sigma 10; equal up
    to float32 round-off, ~3e-7).
    """
    if sigma <= 0:
        return x
    if mode == "reflect" and sigma >= 2.0:
        radius = int(3.0 * sigma + 0.5)
        t = np.arange(-radius, radius + 1, dtype=np.float64)
        k = np.exp(-0.5 * (t / sigma) ** 2)
        k /= k.sum()
        return convolve_reflect(np.asarray(x, np.float32), np.outer(k, k).astype(np.float32), symmetric=True)
    sig = (sigma, sigma) + (0,) * (x.ndim - 2)
    return scipy.ndimage.gaussian_filter(x, sig, mode=mode, truncate=3.0).astype(np.float32)


@functools.lru_cache(maxsize=256)
def _dft_rows(n_fft, n_taps, half=False):
    """(n_freq, n_taps) DFT matrix: the FFT of a short zero-padded signal as a small matmul."""
    n_freq = n_fft // 2 + 1 if half else n_fft
    u = np.arange(n_freq)[:, None]
    return np.exp(-2j * np.pi * u * np.arange(n_taps)[None, :] / n_fft).astype(np.complex64)


@functools.lru_cache(maxsize=1024)
def _reflect_index(n_out, before, n, symmetric=False):
    """Source indices of a length-n axis padded by `before` and extended to n_out.

    reflect-101 (dcb|abcd|cba, OpenCV's default, numpy "reflect") or, with `symmetric`,
    half-sample symmetric (cba|abcd|dcb, scipy.ndimage "reflect", numpy "symmetric").
    """
    t = np.arange(n_out) - before
    if symmetric:
        t = t % (2 * n)
        return np.where(t >= n, 2 * n - 1 - t, t).astype(np.intp)
    if n == 1:
        return np.zeros(n_out, np.intp)
    t = np.abs(t) % (2 * n - 2)
    return np.where(t >= n, 2 * n - 2 - t, t).astype(np.intp)


def convolve_reflect(img, kernel, symmetric=False):
    """Convolve HxWxC (or HxW) with a small 2D kernel, reflect (101) padding, via FFT.

    FFT is ~10x faster than a direct 2D filter for kernels above ~9x9 at these sizes, and
    reflect-101 is OpenCV's filter2D border, so a wild-IR blur matches the official one.
    `symmetric`: half-sample symmetric border instead (scipy.ndimage's "reflect").
    """
    kh, kw = kernel.shape
    ph, pw = kh // 2, kw // 2
    squeeze = img.ndim == 2
    x = img[None] if squeeze else img.transpose(2, 0, 1)
    c, h, w = x.shape
    fh = scipy.fft.next_fast_len(h + 2 * ph, real=True)
    fw = scipy.fft.next_fast_len(w + 2 * pw, real=True)
    # Channel-first and contiguous (pocketfft over the last two axes is ~5x faster than over
    # (0, 1)), reflect-padded straight to the FFT size: xp[i] = x[reflect101(i - ph)]. Past the
    # kernel's reach the padding is never read by the valid window, whatever it holds.
    xp = np.take(np.take(x, _reflect_index(fh, ph, h, symmetric), axis=1),
                 _reflect_index(fw, pw, w, symmetric), axis=2)
    fx = scipy.fft.rfft2(xp)
    fx *= _dft_rows(fh, kh) @ kernel.astype(np.complex64) @ _dft_rows(fw, kw, half=True).T
    y = scipy.fft.irfft2(fx, s=(fh, fw))
    # Full linear convolution of the padded image; the "valid" window starts at the kernel size - 1.
    y = y[:, kh - 1:kh - 1 + h, kw - 1:kw - 1 + w]
    if squeeze:
        return y[0].astype(np.float32)
    # Back to HWC, C-contiguous: one strided write per channel is ~5x faster than a transposed copy.
    out = np.empty((h, w, c), np.float32)
    for ch in range(c):
        out[..., ch] = y[ch]
    return out


def circular_spectrum(kernel, shape_hw):
    """rfft2 of a centred odd kernel wrapped onto an h x w grid (its centre at (0, 0)).

    One real FFT of the grid: for kernels above ~15 taps cheaper than the DFT-matrix product,
    and reusable when the same kernel blurs several fields (snow's two rendering passes).
    Taps that wrap onto each other (a kernel larger than the grid) add up.
    """
    h, w = shape_hw
    kh, kw = kernel.shape
    grid = np.zeros((h, w), np.float32)
    rows = (np.arange(kh) - kh // 2) % h
    cols = (np.arange(kw) - kw // 2) % w
    if kh <= h and kw <= w:
        grid[np.ix_(rows, cols)] = kernel
    else:
        np.add.at(grid, np.ix_(rows, cols), kernel.astype(np.float32))
    return scipy.fft.rfft2(grid)


@functools.lru_cache(maxsize=64)
def _squared_frequencies(h, w):
    fy = np.fft.fftfreq(h).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(w).astype(np.float32)[None, :]
    return fy * fy + fx * fx


def gaussian_transfer(shape_hw, sigma):
    """Frequency response, on the rfft2 grid, of a circular Gaussian blur of std `sigma` px."""
    if sigma <= 0:
        return np.float32(1.0)
    return np.exp(np.float32(-2.0 * np.pi ** 2 * sigma ** 2) * _squared_frequencies(*shape_hw))


def convolve_circular(x, kernel=None, spectrum=None):
    """Circular (wrap-around) convolution of an HxW field with a centred odd kernel.

    Used for procedural layers (rain streaks, snow flakes) whose seeds are stationary noise:
    wrapping makes the pattern continue across the border instead of fading out. Pass either
    the kernel or its `circular_spectrum` (precomputed, possibly times a `gaussian_transfer`).
    """
    h, w = x.shape
    if spectrum is None:
        spectrum = circular_spectrum(kernel, (h, w))
    return scipy.fft.irfft2(scipy.fft.rfft2(x) * spectrum, s=(h, w)).astype(np.float32)


def splat_bilinear(xs, ys, size, weights=None):
    """Accumulate points (xs, ys) onto a size x size canvas by bilinear splatting."""
    x0 = np.floor(xs).astype(np.int64)
    y0 = np.floor(ys).astype(np.int64)
    fx = xs - x0
    fy = ys - y0
    wts = np.ones_like(xs) if weights is None else weights
    idx, val = [], []
    for dy, dx, wgt in ((0, 0, (1 - fx) * (1 - fy)), (0, 1, fx * (1 - fy)),
                        (1, 0, (1 - fx) * fy), (1, 1, fx * fy)):
        idx.append(np.clip(y0 + dy, 0, size) * (size + 1) + np.clip(x0 + dx, 0, size))
        val.append(wgt * wts)
    # One bincount adds in the same order as four sequential np.add.at passes (bit-identical),
    # ~20x faster.
    canvas = np.bincount(np.concatenate(idx), weights=np.concatenate(val), minlength=(size + 1) ** 2)
    return canvas.reshape(size + 1, size + 1)[:size, :size]


def line_kernel(length, angle_rad, width_sigma=0.0):
    """Anti-aliased line of `length` px through the centre, angle from the x axis, sum 1.

    Drawn by bilinear splatting of densely spaced points; optional Gaussian width.
    """
    half = int(np.ceil(length / 2 + 3 * width_sigma)) + 1
    size = 2 * half + 1
    n = max(int(np.ceil(length * 4)), 2)
    t = np.linspace(-length / 2, length / 2, n)
    xs = half + t * np.cos(angle_rad)
    ys = half - t * np.sin(angle_rad)          # image rows grow downwards
    k = splat_bilinear(xs, ys, size)
    if width_sigma > 0:
        k = scipy.ndimage.gaussian_filter(k, width_sigma, mode="constant")
    return (k / k.sum()).astype(np.float32)


def resize_float(x, size_hw, resample=Image.BILINEAR):
    """Resize an HxW or HxWxC float32 array with PIL (mode "F" per channel, no 8-bit rounding)."""
    h, w = size_hw
    if x.ndim == 2:
        return np.asarray(Image.fromarray(np.ascontiguousarray(x, dtype=np.float32)).resize((w, h), resample))
    return np.stack([resize_float(x[..., c], size_hw, resample) for c in range(x.shape[2])], -1)


def fractal_noise(rng, shape_hw, octaves=(4, 8, 16), persistence=0.5):
    """Smooth low-frequency noise in about [-1, 1]: sum of bilinearly upsampled random grids."""
    h, w = shape_hw
    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    for cells in octaves:
        grid = rng.uniform(-1.0, 1.0, (cells + 1, cells + 1)).astype(np.float32)
        out += amp * resize_float(grid, (h, w), Image.BICUBIC)
        total += amp
        amp *= persistence
    return out / total
