"""Wild-IR `random_degrade` (port of the official deg_util.random_degrade)."""

import collections

import numpy as np
import pytest
import skimage.data

from daclip_jax.data import wild
from daclip_jax.data.degradations._resize import resize_matrix


def photo():
    img = skimage.data.astronaut()[::2, ::2][64:192, 64:192]
    return (img / 255.0).astype(np.float32)


def test_random_degrade_shape_words_and_determinism():
    x = photo()
    counts = collections.Counter()
    r = np.random.default_rng(0)
    for _ in range(60):
        y, words = wild.random_degrade(x, r)
        assert y.shape == x.shape and y.dtype == np.float32
        assert y.min() >= 0 and y.max() <= 1
        np.testing.assert_array_equal(y * 255, np.round(y * 255))
        assert words and len(set(words)) == len(words)
        assert set(words) <= set(wild.WORDS)
        counts.update(words)
    # Every word shows up; blur (p .8 per blur stage, plus resizing) is the most common.
    assert set(counts) == set(wild.WORDS)
    assert counts["blur"] == max(counts.values())
    a, wa = wild.random_degrade(x, np.random.default_rng(5))
    b, wb = wild.random_degrade(x, np.random.default_rng(5))
    c, _ = wild.random_degrade(x, np.random.default_rng(6))
    assert a.tobytes() == b.tobytes() and wa == wb
    assert a.tobytes() != c.tobytes()


def test_odd_sizes_keep_resolution():
    x = photo()[:101, :77]
    r = np.random.default_rng(1)
    for _ in range(10):
        y, _ = wild.random_degrade(x, r)
        assert y.shape == x.shape


@pytest.mark.parametrize("k", [5, 7, 9, 13, 19])
def test_kernels_normalised(k):
    g = np.random.default_rng(k)
    for _ in range(30):
        kern, kind = wild.mixed_kernel(g, k, (0.2, 2.2))
        assert kern.ndim == 2 and kern.shape[0] == kern.shape[1] and kern.shape[0] % 2 == 1
        assert abs(kern.sum() - 1) < 1e-5 and kern.min() >= 0, kind
    s = wild.sinc_kernel(g, k)
    assert abs(s.sum() - 1) < 1e-5 and s.min() < 0          # sinc rings
    assert wild.line_kernel(g, 19).shape == (9, 9)          # large line kernels shrink by 10
    assert abs(wild.defocus_kernel(k).sum() - 1) < 1e-6


def test_filter2d_is_reflect101_correlation():
    import scipy.ndimage
    x = photo()[:50, :60]
    k = np.random.default_rng(0).uniform(size=(7, 7)).astype(np.float32)
    k /= k.sum()
    ref = np.stack([scipy.ndimage.correlate(x[..., c], k, mode="mirror") for c in range(3)], -1)
    np.testing.assert_allclose(wild.filter2d(x, k), ref, atol=1e-5)


def test_kernel_mix_is_the_official_one():
    # predefined_mixed_kernel's ten types and probabilities, 'psf' included (no renormalisation).
    assert wild.KERNEL_LIST[-1] == "psf" and len(wild.KERNEL_LIST) == 10
    np.testing.assert_array_equal(wild.KERNEL_PROB, [0.35, 0.2, 0.1, 0.03, 0.1, 0.03, 0.1, 0.03, 0.03, 0.03])


def test_kernel_types_drawn_with_the_official_probabilities():
    g = np.random.default_rng(7)
    n = 100_000
    counts = collections.Counter(wild.kernel_type(g) for _ in range(n))
    observed = np.array([counts[k] for k in wild.KERNEL_LIST])
    expected = n * wild.KERNEL_PROB
    # psf: 0.03 +- 5 standard deviations (0.0027); renormalised without it it would be 0.
    assert abs(observed[-1] / n - 0.03) < 5 * np.sqrt(0.03 * 0.97 / n)
    chi2 = ((observed - expected) ** 2 / expected).sum()
    assert chi2 < 33.7                       # chi-square, 9 degrees of freedom, p = 1e-4


def test_psf_kernels_are_the_official_motion_psfs():
    from daclip_jax.data.degradations._official_assets import motion_psfs
    psfs = motion_psfs()
    assert len(psfs) == 100
    for p in psfs:
        assert p.dtype == np.float32 and p.shape[0] == p.shape[1] and p.shape[0] % 2 == 1
        assert 5 <= p.shape[0] <= 29 and p.min() >= 0
        assert abs(float(p.sum(dtype=np.float64)) - 1) < 1e-5
    g = np.random.default_rng(0)
    drawn = []
    while len(drawn) < 5:
        kern, kind = wild.mixed_kernel(g, 7, (0.2, 2.2))
        if kind == "psf":
            drawn.append(kern)
    for kern in drawn:                       # its own size, not the drawn 7, and still sums to 1
        assert any(np.array_equal(kern, p) for p in psfs)
        assert abs(float(kern.sum(dtype=np.float64)) - 1) < 1e-5
    assert len({kern.tobytes() for kern in drawn}) > 1
    x = photo()
    y = wild.filter2d(x, drawn[0])
    assert y.shape == x.shape and abs(y.mean() - x.mean()) < 0.01


def test_wiener_deblur_inverts_blur():
    x = photo()
    g = np.random.default_rng(3)
    k = wild.gaussian_kernel(g, 5, (1.0, 1.01), True)
    from daclip_jax.data.degradations._common import convolve_reflect
    blurred = convolve_reflect(x, k)
    sharp = wild.wiener_deblur(blurred, k)
    err = lambda a: np.abs(a - x)[8:-8, 8:-8].mean()
    assert err(sharp) < err(blurred)


def test_noise_and_jpeg_stages_quantise():
    x = photo()
    g = np.random.default_rng(4)
    y = wild.random_noise(g, x)
    np.testing.assert_array_equal(y * 255, np.round(y * 255))
    z = wild.random_jpeg(g, x, (60, 95))
    assert z.shape == x.shape and np.abs(z - x).mean() < 0.05


def test_poisson_sampler_moments():
    g = np.random.default_rng(0)
    for lam in (0.5, 8.0, 49.0, 51.0, 200.0):
        x = wild._poisson(g, np.full(200_000, lam, np.float32))
        assert np.all(x == np.round(x)) and x.min() >= 0
        assert abs(x.mean() - lam) < 0.02 * lam + 0.01
        assert abs(x.var() - lam) < 0.03 * lam + 0.01


def test_poisson_table_sampler_matches_the_poisson_pmf():
    # The inverse-CDF sampler used for quantised images: exact Poisson below lam 50.
    from scipy import stats

    g = np.random.default_rng(0)
    for vals, q in ((1.0, 255), (16.0, 3), (64.0, 40), (256.0, 1), (256.0, 49), (256.0, 0)):
        lam = float(np.float32(q) / np.float32(255.0) * np.float32(vals))
        x = wild._poisson_table(g, np.full(100_000, q), vals)
        assert np.all(x == np.round(x)) and x.min() >= 0
        observed = np.bincount(x.astype(np.int64), minlength=128)[:128] / x.size
        expected = stats.poisson.pmf(np.arange(128), lam)
        assert 0.5 * np.abs(observed - expected).sum() < 0.01, (vals, q)
    # Through _poisson: the same law as numpy's sampler on the quantised levels.
    q = g.integers(0, 256, 100_000)
    lam = (q.astype(np.float32) / np.float32(255.0)) * np.float32(64.0)
    x = wild._poisson(g, lam, levels=(q, 64.0))
    assert abs(x.mean() - lam.mean()) < 0.05 and abs((x - lam).var() - lam.mean()) < 0.05 * lam.mean()


def test_cv2_resize_semantics():
    # Known cv2.resize results on a ramp: half-pixel centres, replicated border, no antialiasing.
    r = np.tile(np.arange(8, dtype=np.float32)[None, :, None], (2, 1, 3))
    np.testing.assert_allclose(wild.cv2_resize(r, (2, 4), "linear")[0, :, 0], [0.5, 2.5, 4.5, 6.5])
    np.testing.assert_allclose(wild.cv2_resize(r, (2, 4), "area")[0, :, 0], [0.5, 2.5, 4.5, 6.5])
    up = wild.cv2_resize(r, (2, 16), "linear")[0, :, 0]
    np.testing.assert_allclose(up[:4], [0, 0.25, 0.75, 1.25])
    assert up[-1] == 7
    np.testing.assert_allclose(wild.cv2_resize(r, (2, 16), "area")[0, :4, 0], [0, 0, 1, 1])
    x = photo()
    for mode in ("linear", "cubic", "area"):
        for size in ((100, 90), (183, 183), (300, 257)):
            y = wild.cv2_resize(x, size, mode)
            assert y.shape == size + (3,)
            assert abs(y.mean() - x.mean()) < 0.01
            m = resize_matrix(x.shape[0], size[0], mode if mode != "area" or size[0] <= 128 else "area_up")
            np.testing.assert_allclose(np.asarray(m.sum(1)).ravel(), 1, atol=1e-5)
