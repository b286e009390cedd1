"""Checks from shared/design/degradations.md for every degradation type, plus mixtures."""

import functools

import numpy as np
import pytest
import skimage.data

from daclip_jax.data import degradations as D
from daclip_jax.labels import DEGRADATIONS


@functools.lru_cache(None)
def _photo(name):
    img = getattr(skimage.data, name)()
    h, w = img.shape[:2]
    s = min(h, w)
    img = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    # 8-bit values, 256^2 (area-ish downscale by striding over a box average).
    f = s // 256
    img = img[:256 * f, :256 * f].reshape(256, f, 256, f, 3).mean((1, 3))
    return (np.round(img) / 255.0).astype(np.float32)


def photo(name="astronaut"):
    return _photo(name).copy()


def smooth_image(size=256):
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.stack([0.5 + 0.3 * np.sin(2 * xx + 1), 0.4 + 0.3 * yy, 0.3 + 0.2 * np.cos(3 * yy * xx)], -1)
    return (np.round(img * 255) / 255).astype(np.float32)


def rng(seed=0):
    return np.random.default_rng(seed)


def lum(x):
    return x @ np.array([0.299, 0.587, 0.114], np.float32)


def laplacian_var(x):
    g = lum(x)
    lap = -4 * g[1:-1, 1:-1] + g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:]
    return float(lap.var())


def psnr(a, b):
    return float(10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b) ** 2)))


def blockiness(x, oy=0, ox=0):
    g = lum(x).astype(np.float64)
    dx = np.abs(np.diff(g, axis=1))          # dx[:, c] = |g[:, c+1] - g[:, c]|
    dy = np.abs(np.diff(g, axis=0))
    cols = np.arange(dx.shape[1])
    rows = np.arange(dy.shape[0])
    bx = (cols + 1 + ox) % 8 == 0
    by = (rows + 1 + oy) % 8 == 0
    across = np.concatenate([dx[:, bx].ravel(), dy[by, :].ravel()]).mean()
    inside = np.concatenate([dx[:, ~bx].ravel(), dy[~by, :].ravel()]).mean()
    return across / (inside + 1e-6)


# ---------------------------------------------------------------- hazy
def test_haze_scattering_model():
    j = photo()
    out, p = D.hazy(j, rng(1), 0.6)
    t = p["maps"]["t"][..., None]
    a = np.asarray(p["airlight"], np.float32)
    np.testing.assert_allclose(out - a, t * (j - a), atol=1e-5)
    lo, hi = np.minimum(j, a) - 1e-6, np.maximum(j, a) + 1e-6
    assert np.all((out >= lo) & (out <= hi))
    assert p["beta"] == pytest.approx(0.3 + 1.5 * 0.6)
    assert lum(out).std() < lum(j).std()
    assert out.min(-1).mean() > j.min(-1).mean() + 0.05       # dark channel rises
    # Homogeneous fog: luminance std shrinks exactly by t.
    flat = np.full(j.shape[:2], 0.7, np.float32)
    out, p = D.hazy(j, rng(1), 0.6, depth=flat)
    t = float(np.exp(-p["beta"] * 0.7))
    assert lum(out).std() == pytest.approx(t * lum(j).std(), rel=1e-4)
    assert p["mean_haze"] == pytest.approx(1 - t, rel=1e-5)


def test_haze_severity_monotone():
    j = photo("chelsea")
    hazes = [D.hazy(j, rng(3), s)[1]["mean_haze"] for s in (0.0, 0.5, 1.0)]
    assert hazes[0] < hazes[1] < hazes[2]


# ---------------------------------------------------------------- jpeg
def test_jpeg_blockiness_and_quality():
    x = smooth_image()
    assert blockiness(x) < 1.2
    out, p = D.jpeg_compressed(x, rng(0), 0.0, quality=15, offset_y=3, offset_x=5)
    assert out.dtype == np.float32 and np.array_equal(out, np.round(out * 255) / 255)
    assert blockiness(out, 3, 5) > 1.2
    img = photo("coffee")
    psnrs = [psnr(D.jpeg_compressed(img, rng(0), 0.0, quality=q)[0], img) for q in (10, 20, 30, 40)]
    assert all(a < b for a, b in zip(psnrs, psnrs[1:]))


def test_jpeg_severity_mapping():
    assert D.jpeg_compressed(photo(), rng(0), 1.0)[1]["quality"] == 10
    assert D.jpeg_compressed(photo(), rng(0), 0.0)[1]["quality"] == 40


# ---------------------------------------------------------------- low-light
def test_low_light_darkening():
    from daclip_jax.data.degradations.low_light import darken
    x = photo()
    out, p = D.low_light(x, rng(2), 0.5)
    dark = p["maps"]["dark"]
    assert np.all(dark <= x)
    half = np.full((4, 4, 3), 0.5, np.float32)
    a, b, g = p["alpha"], p["beta"], p["gamma"]
    np.testing.assert_allclose(darken(half, a, b, g), b * a ** g * 0.5 ** g, rtol=1e-5)
    ratio = lum(out).mean() / lum(x).mean()
    assert 0.01 <= ratio <= 0.8


def test_low_light_noise_variance_linear_in_intensity():
    levels = np.linspace(0.15, 0.65, 6, dtype=np.float32)
    x = np.repeat(levels[None, :, None], 4096, axis=0).repeat(3, -1)
    shot, read = 1e-2, 1e-5
    out, p = D.low_light(x, rng(5), 0.0, alpha=1.0, beta=1.0, gamma=1.0, shot=shot, read=read)
    var = (out - p["maps"]["dark"]).var(axis=(0, 2))
    slope = np.polyfit(levels, var, 1)[0]
    assert slope == pytest.approx(shot, rel=0.1)


def test_low_light_severity_monotone():
    x = photo()
    means = [lum(D.low_light(x, rng(4), s)[1]["maps"]["dark"]).mean() for s in (0.0, 0.5, 1.0)]
    assert means[0] > means[1] > means[2]


# ---------------------------------------------------------------- noisy
@pytest.mark.parametrize("severity", [0.1, 0.5, 0.9])
def test_gaussian_noise_statistics(severity):
    x = np.full((256, 256, 3), 0.5, np.float32)
    out, p = D.noisy(x, rng(7), severity, model="gaussian", gray=False)
    r = out - x
    sigma = p["sigma"] / 255
    assert p["sigma"] == pytest.approx(5 + 50 * severity)
    assert abs(r.std() / sigma - 1) < 0.05
    assert abs(r.mean()) < 0.05 * sigma
    lag1 = np.corrcoef(r[:, 1:, 0].ravel(), r[:, :-1, 0].ravel())[0, 1]
    assert abs(lag1) < 0.02


def test_gray_noise_identical_channels():
    x = photo()
    out, p = D.noisy(x, rng(8), 0.5, model="gaussian", gray=True)
    n = p["maps"]["noise"]
    assert np.array_equal(n[..., 0], n[..., 1]) and np.array_equal(n[..., 1], n[..., 2])
    x = np.full((64, 64, 3), 0.5, np.float32)
    out, _ = D.noisy(x, rng(8), 0.5, model="poisson", gray=True)
    assert np.array_equal(out[..., 0], out[..., 2])


def test_poisson_noise_matches_sigma_at_half():
    x = np.full((256, 256, 3), 0.5, np.float32)
    out, p = D.noisy(x, rng(9), 0.5, model="poisson", gray=False)
    assert abs((out - x).std() / (p["sigma"] / 255) - 1) < 0.05


# ---------------------------------------------------------------- degrade / mixtures
def test_degrade_single_outputs_8bit_and_meta():
    x = photo()
    for kind in D.FUNCTIONS:
        y, meta = D.degrade(x, kind, rng(0))
        assert y.dtype == np.float32 and y.shape == x.shape
        assert y.min() >= 0 and y.max() <= 1
        np.testing.assert_array_equal(y * 255, np.round(y * 255))
        assert meta["kinds"] == [kind] and meta["label"] == kind
        assert 0 <= meta["severity"] <= 1
        assert kind in meta["params"] and kind in meta["maps"]


def test_degrade_deterministic():
    x = photo()
    kinds = list(D.FUNCTIONS)
    a, _ = D.degrade(x, kinds, rng(11))
    b, _ = D.degrade(x, kinds, rng(11))
    c, _ = D.degrade(x, kinds, rng(12))
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()


def test_order_label_multihot():
    kinds = ["jpeg-compressed", "noisy", "hazy", "noisy"]
    assert D.ordered(kinds) == ["hazy", "noisy", "jpeg-compressed"]
    assert D.label_text(kinds) == "hazy, noisy, jpeg-compressed"
    assert D.label_text("low-light") == "low-light"
    mh = D.multi_hot(kinds)
    assert mh.dtype == np.float32 and mh.shape == (10,)
    assert [DEGRADATIONS[i] for i in np.flatnonzero(mh)] == ["hazy", "jpeg-compressed", "noisy"]
    _, meta = D.degrade(photo(), kinds, rng(0), severity=0.5)
    assert meta["kinds"] == ["hazy", "noisy", "jpeg-compressed"]
    assert meta["label"] == "hazy, noisy, jpeg-compressed"
    with pytest.raises(ValueError):
        D.ordered(["blurry"])


def test_order_is_physical():
    order = D.APPLY_ORDER
    assert sorted(order) == sorted(DEGRADATIONS)
    for a, b in [("shadowed", "hazy"), ("hazy", "rainy"), ("raindrop", "motion-blurry"),
                 ("motion-blurry", "low-light"), ("noisy", "jpeg-compressed"),
                 ("jpeg-compressed", "uncompleted")]:
        assert order.index(a) < order.index(b)


def test_mixture_severity_scaled():
    r = rng(3)
    sev_single = [D.degrade(np.zeros((16, 16, 3), np.float32), "noisy", r)[1]["severity"]
                  for _ in range(200)]
    sev_mix = [D.degrade(np.zeros((16, 16, 3), np.float32), ["noisy", "jpeg-compressed"], r)[1]["severity"]
               for _ in range(200)]
    assert max(sev_mix) <= 0.7 and max(sev_single) > 0.9


def test_sample_kinds_distribution():
    r = rng(0)
    draws = [D.sample_kinds(r) for _ in range(4000)]
    counts = np.bincount([len(d) for d in draws], minlength=4)[1:] / len(draws)
    np.testing.assert_allclose(counts, D.KIND_PROBS, atol=0.03)
    for d in draws:
        assert d == D.ordered(d) and len(set(d)) == len(d)
    per_type = np.sum([D.multi_hot(d) for d in draws], 0)
    assert per_type.min() > 0.5 * per_type.max()
    both = np.mean([("rainy" in d and "snowy" in d) for d in draws])
    assert both < 0.01


# ---------------------------------------------------------------- every type
@pytest.mark.parametrize("kind", DEGRADATIONS)
def test_type_deterministic_and_in_range(kind):
    x = photo("chelsea")
    fn = D.FUNCTIONS[kind]
    # An official inpainting mask is pinned by the severity; its window in a larger mask is drawn.
    kw = {"mask_size": (320, 320)} if kind == "uncompleted" else {}
    a, pa = fn(x, rng(21), 0.6, **kw)
    b, _ = fn(x, rng(21), 0.6, **kw)
    c, _ = fn(x, rng(22), 0.6, **kw)
    assert a.dtype == np.float32 and a.shape == x.shape
    assert a.min() >= 0 and a.max() <= 1
    assert a.tobytes() == b.tobytes() and a.tobytes() != c.tobytes()
    assert not np.array_equal(a, x)
    assert all(isinstance(v, np.ndarray) for v in pa["maps"].values())


# ---------------------------------------------------------------- motion-blurry
def test_motion_blur_kernel_and_sharpness():
    x = photo()
    for seed, s in [(0, 0.3), (1, 0.6), (2, 1.0)]:
        out, p = D.motion_blurry(x, rng(seed), s, linear_light=False)
        k = p["maps"]["kernel"]
        assert k.min() >= 0 and abs(k.sum() - 1) < 1e-6
        assert k.shape[0] % 2 == 1 and k.shape[0] == k.shape[1]
        assert p["length"] == pytest.approx(3 + s * 0.15 * 256)
        assert abs(out.mean() - x.mean()) < 2 / 255
        assert laplacian_var(out) < 0.8 * laplacian_var(x)
        # Centred on its centre of mass: no shift between LQ and GT.
        yy, xx = np.mgrid[:k.shape[0], :k.shape[1]]
        c = k.shape[0] // 2
        assert abs((k * yy).sum() - c) < 1e-3 and abs((k * xx).sum() - c) < 1e-3


def test_motion_blur_linear_light_keeps_linear_mean():
    x = photo()
    out, p = D.motion_blurry(x, rng(3), 0.8)
    assert p["linear_light"]
    assert abs((out ** 2.2).mean() - (x ** 2.2).mean()) < 2 / 255
    assert laplacian_var(out) < 0.8 * laplacian_var(x)


def test_motion_blur_severity_monotone():
    x = photo("coffee")
    v = [laplacian_var(D.motion_blurry(x, rng(5), s)[0]) for s in (0.1, 0.5, 1.0)]
    assert v[0] > v[1] > v[2]


# ---------------------------------------------------------------- raindrop
@pytest.mark.parametrize("severity", [0.0, 0.5, 1.0])
def test_raindrop_alpha_and_coverage(severity):
    x = photo()
    out, p = D.raindrop(x, rng(4), severity)
    alpha = p["maps"]["alpha"]
    outside = alpha == 0
    assert np.array_equal(out[outside], x[outside])
    target = 0.03 + 0.37 * severity
    assert abs(alpha.mean() - target) <= 0.3 * target
    inside = alpha > 0.9
    g_out, g_in = lum(out), lum(x)
    hp = lambda g: np.abs(g - __import__("scipy.ndimage").ndimage.uniform_filter(g, 3))
    assert hp(g_out)[inside].mean() < hp(g_in)[inside].mean()


# ---------------------------------------------------------------- rainy
def _orientation_from_vertical(img):
    gy, gx = np.gradient(img.astype(np.float64))
    gy = -gy                                   # rows grow downwards; measure angles visually
    jxx, jyy, jxy = (gx * gx).sum(), (gy * gy).sum(), (gx * gy).sum()
    phi = 0.5 * np.degrees(np.arctan2(2 * jxy, jxx - jyy))   # dominant gradient direction
    theta = -phi                               # streaks run perpendicular to the gradient
    return (theta + 90) % 180 - 90


@pytest.mark.parametrize("theta0", [-25.0, 0.0, 18.0])
def test_rain_screen_and_orientation(theta0):
    x = photo("coffee")
    out, p = D.rainy(x, rng(6), 0.6, veil=False, theta0_deg=theta0)
    assert np.all(out >= x - 1e-6)
    diff = lum(out - x)
    assert abs(_orientation_from_vertical(diff) - theta0) <= 10
    frac = (diff > 0.05).mean()
    assert 0.1 < frac < 0.8


def test_rain_severity_monotone():
    x = photo("coffee")
    fr = [(lum(D.rainy(x, rng(8), s, veil=False)[0] - x) > 0.05).mean() for s in (0.0, 0.5, 1.0)]
    assert fr[0] < fr[1] < fr[2]


# ---------------------------------------------------------------- shadowed
def test_shadow_matte_and_umbra():
    x = photo()
    out, p = D.shadowed(x, rng(9), 0.5, opacity=1.0)
    matte = p["maps"]["matte"]
    assert 0.05 <= (matte > 0.5).mean() <= 0.5
    free = matte == 0
    assert np.array_equal(out[free], x[free])
    umbra = (matte > 0.99) & (lum(x) > 0.1)
    ratio = lum(out)[umbra].mean() / lum(x)[umbra].mean()
    assert 0.1 <= ratio <= 0.9
    br = lambda im: (im[..., 2][umbra] + 1e-3) / (im[..., 0][umbra] + 1e-3)
    assert np.median(br(out)) > np.median(br(x))
    assert np.all(out <= x + 0.03)


def test_shadow_never_brightens_much():
    x = photo("coffee")
    for seed in range(12):
        out, p = D.shadowed(x, rng(seed), float(rng(seed + 100).uniform()))
        assert np.all(out <= x + 0.03)
    black = np.zeros((64, 64, 3), np.float32)
    out, _ = D.shadowed(black, rng(0), 0.0, x0=0.0, x0_blue_shift=0.2, opacity=1.0)
    assert out.max() <= 0.03


def test_shadow_severity_monotone():
    x = photo()
    means = [lum(D.shadowed(x, rng(10), s, opacity=1.0)[0]).mean() for s in (0.0, 0.5, 1.0)]
    assert means[0] > means[1] > means[2]


# ---------------------------------------------------------------- snowy
@pytest.mark.parametrize("severity", [0.0, 0.5, 1.0])
def test_snow_brightening_and_coverage(severity):
    x = photo()
    out, p = D.snowy(x, rng(11), severity, veil=False)
    z = p["maps"]["z"]
    a = np.asarray(p["snow_color"], np.float32)
    where = np.all(a >= x, axis=-1)
    assert np.all(out[where] >= x[where] - 1e-6)
    target = 0.02 + 0.28 * severity
    assert abs(z.mean() - target) <= 0.3 * target


def test_snow_flake_size_classes():
    import scipy.ndimage
    x = photo()
    sizes = {}
    for cls in ("small", "large"):
        _, p = D.snowy(x, rng(12), 0.3, classes=[cls])
        lab, n = scipy.ndimage.label(p["maps"]["z"] > 0.5)
        sizes[cls] = np.bincount(lab.ravel())[1:].mean()
    assert sizes["large"] > 3 * sizes["small"]


# ---------------------------------------------------------------- uncompleted
def _official_keep(mask_id):
    from daclip_jax.data.degradations._official_assets import inpainting_masks
    return inpainting_masks()[mask_id].astype(np.float64) / 255.0


def _area_matrix(n_in, n_out):
    """INTER_AREA shrinking as exact box integration: output i averages [i s, (i + 1) s)."""
    s = n_in / n_out
    lo, hi = np.arange(n_out)[:, None] * s, (np.arange(n_out)[:, None] + 1) * s
    j = np.arange(n_in)[None, :]
    return np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0, None) / s


def _check_composite(x, out, hole):
    keep = 1.0 - hole
    assert np.all(out[hole == 1] == 1.0)                       # holes exactly white
    assert np.array_equal(out[hole == 0], x[hole == 0])        # the rest untouched
    np.testing.assert_allclose(out, keep[..., None] * x + (1 - keep[..., None]), atol=1e-6)


def test_official_mask_is_one_of_the_100_at_256():
    from daclip_jax.data.degradations._official_assets import inpainting_masks
    x = photo("chelsea")
    masks = inpainting_masks()
    for seed, s in [(0, 0.0), (1, 0.37), (2, 0.81), (3, 1.0)]:
        out, p = D.uncompleted(x, rng(seed), s)
        hole = p["maps"]["mask"]
        assert p["mask_source"] == "official" and set(np.unique(hole)) <= {0.0, 1.0}
        same = [i for i in range(100) if np.array_equal(masks[i] == 0, hole == 1)]
        assert same == [p["mask_id"]]
        assert p["hole_fraction"] == pytest.approx(np.mean(masks[p["mask_id"]] == 0))
        _check_composite(x, out, hole)


@pytest.mark.parametrize("shape", [(128, 128), (200, 150)])
def test_official_mask_resized_with_inter_area(shape):
    x = photo("coffee")[:shape[0], :shape[1]]
    out, p = D.uncompleted(x, rng(5), 0.6)
    hole = p["maps"]["mask"]
    want = _area_matrix(256, shape[0]) @ _official_keep(p["mask_id"]) @ _area_matrix(256, shape[1]).T
    np.testing.assert_allclose(1.0 - hole, want, atol=1e-6)
    assert 0 < np.mean((hole > 0) & (hole < 1)) < 0.2          # soft borders only
    _check_composite(x, out, hole)


def test_official_mask_random_window():
    from daclip_jax.data.degradations.inpainting import official_keep_mask
    x = photo("astronaut")
    windows = set()
    for seed in range(12):
        out, p = D.uncompleted(x, rng(seed), 0.5, mask_size=(384, 320))
        top, left = p["window"]
        assert 0 <= top < 384 - 256 and 0 <= left < 320 - 256
        full = official_keep_mask(p["mask_id"], (384, 320))            # the mask at mask_size
        np.testing.assert_array_equal(1.0 - p["maps"]["mask"], full[top:top + 256, left:left + 256])
        _check_composite(x, out, p["maps"]["mask"])
        windows.add((top, left))
    assert len(windows) > 8
    with pytest.raises(ValueError, match="smaller"):
        D.uncompleted(x, rng(0), 0.5, mask_size=(200, 300))


def test_official_mask_severity_monotone_and_uniform():
    from daclip_jax.data.degradations.inpainting import masks_by_hole_fraction, official_mask_id
    _, fraction = masks_by_hole_fraction()
    ids = [official_mask_id(s) for s in np.linspace(0, 1, 301)]
    fr = fraction[ids]
    assert np.all(np.diff(fr) >= 0)
    assert fr[0] == fraction.min() and fr[-1] == fraction.max()
    assert 0.03 < fr[0] < 0.04 and 0.49 < fr[-1] <= 0.5
    assert official_mask_id(-0.2) == ids[0] and official_mask_id(1.5) == ids[-1]
    # Severity ~ U(0, 1) lands on every mask with probability 1/100: the official uniform choice.
    assert sorted(official_mask_id((k + 0.5) / 100) for k in range(100)) == list(range(100))
    x = photo()
    holes = [D.uncompleted(x, rng(0), s)[1]["hole_fraction"] for s in (0.1, 0.3, 0.5, 0.7, 0.9)]
    assert holes == sorted(holes) and holes[-1] > holes[0] + 0.2


@pytest.mark.parametrize("style", ["lama", "deepfill"])
def test_procedural_holes(style):
    x = photo("chelsea")
    for seed, s in [(0, 0.0), (1, 0.5), (2, 1.0)]:
        out, p = D.uncompleted(x, rng(seed), s, mask_source="procedural", style=style)
        m = p["maps"]["mask"]
        assert p["mask_source"] == "procedural"
        assert set(np.unique(m)) <= {0.0, 1.0}
        assert 0.03 <= m.mean() <= 0.5
        assert m.mean() >= p["target_hole_fraction"]
        assert np.all(out[m == 1] == 1.0)
        assert np.array_equal(out[m == 0], x[m == 0])


def test_mask_source_in_meta_and_options():
    x = photo("chelsea")
    _, meta = D.degrade(x, "uncompleted", rng(3))
    assert meta["params"]["uncompleted"]["mask_source"] == "official"
    _, meta = D.degrade(x, ["hazy", "uncompleted"], rng(3),
                        options={"uncompleted": {"mask_source": "procedural"}})
    assert meta["params"]["uncompleted"]["mask_source"] == "procedural"
    _, meta = D.degrade(x, "hazy", rng(3), options={"uncompleted": {"mask_source": "procedural"}})
    assert "uncompleted" not in meta["params"]
    with pytest.raises(ValueError, match="mask_source"):
        D.uncompleted(x, rng(0), 0.5, mask_source="lama")
    with pytest.raises(ValueError, match="unknown degradation"):
        D.degrade(x, "hazy", rng(0), options={"inpainting": {}})


def test_inpainting_through_degrade_keeps_gt_and_mask():
    x = photo("chelsea")
    y, meta = D.degrade(x, "uncompleted", rng(3))
    m = meta["mask"]
    assert m.shape == x.shape[:2]
    assert np.all(y[m == 1] == 1.0) and np.array_equal(y[m == 0], x[m == 0])
    # Holes stay pure white after every other degradation.
    y, meta = D.degrade(x, ["uncompleted", "noisy", "hazy"], rng(4))
    assert meta["kinds"][-1] == "uncompleted"
    assert np.all(y[meta["mask"] == 1] == 1.0)


def test_raindrop_vectorised_composite_matches_painter():
    from daclip_jax.data.degradations.raindrop import render, sample_drops
    x = photo()[:96, :80]
    bg = x[::-1].copy()
    drops = sample_drops(rng(3), x.shape[:2], 0.35)
    n = len(drops["r"])
    assert n > 5
    out, alpha = render(x, bg, drops)
    ref = x.copy()
    for i in range(n):
        one = {k: v[i:i + 1] for k, v in drops.items()}
        c_i, a_i = render(np.zeros_like(x), bg, one)        # c_i = a_i * content_i
        ref = c_i + (1 - a_i[..., None]) * ref
    np.testing.assert_allclose(out, ref, atol=2e-5)
    assert alpha.max() <= 1 and alpha.min() >= 0


def test_convolution_helpers():
    import scipy.ndimage
    from daclip_jax.data.degradations._common import convolve_circular, convolve_reflect
    g = rng(0)
    x = g.uniform(size=(40, 52, 3)).astype(np.float32)
    k = g.uniform(size=(7, 9)).astype(np.float32)
    ref = np.stack([scipy.ndimage.convolve(x[..., c], k, mode="mirror") for c in range(3)], -1)
    np.testing.assert_allclose(convolve_reflect(x, k), ref, rtol=1e-5, atol=1e-5)
    ref = scipy.ndimage.convolve(x[..., 0], k, mode="wrap")
    np.testing.assert_allclose(convolve_circular(x[..., 0], k), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(17, 23), (48, 80), (300, 200)])
def test_every_type_any_size(shape):
    g = rng(1)
    x = g.uniform(size=shape + (3,)).astype(np.float32)
    for kind in D.APPLY_ORDER:
        for s in (0.0, 1.0):
            y, _ = D.degrade(x, kind, g, severity=s)
            assert y.shape == x.shape and np.isfinite(y).all()
