"""restore_image (whole / tiled) and the `daclip-jax restore` CLI, with the tiny golden
DA-CLIP (embed 32) and a tiny random ConditionalUNet (context 32)."""

import os

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from PIL import Image

from daclip_jax.models.unet import init_unet
from daclip_jax.restore import _ramp, daclip_contexts, restore_image, tile_starts
from daclip_jax.sde import IRSDE


@pytest.fixture(scope="module")
def unet():
    return init_unet("tiny", seed=0)


@pytest.fixture(scope="module")
def daclip(golden_state_dict):
    from daclip_jax.convert.daclip import daclip_from_state_dict

    sd = golden_state_dict("daclip_tiny")
    return daclip_from_state_dict(sd)


@pytest.fixture(scope="module")
def lq():
    from skimage import data

    img = np.asarray(Image.fromarray(data.astronaut()).resize((80, 96), Image.BICUBIC), np.float32) / 255
    rng = np.random.default_rng(0)
    return np.clip(img + 0.1 * rng.normal(size=img.shape), 0, 1).astype(np.float32)


def test_tile_geometry():
    assert tile_starts(40, 48, 16) == [0]
    assert tile_starts(96, 48, 16) == [0, 32, 48]
    starts = tile_starts(4000, 512, 32)
    assert starts[0] == 0 and starts[-1] == 4000 - 512
    assert all(b - a <= 512 - 32 for a, b in zip(starts, starts[1:]))   # overlap >= 32
    w = _ramp(48, 16, True, False)
    assert w[0] == pytest.approx(0.5 / 16) and w[16:].min() == 1


def test_contexts_are_daclip_embeddings_of_the_clip_view(daclip, lq):
    from daclip_jax.preprocess import clip_view

    img_ctx, txt_ctx = daclip_contexts(daclip, lq)
    view = jnp.asarray(clip_view(lq, size=32))[None]
    ref_img, ref_degra = daclip.encode_image(view, control=True)
    np.testing.assert_allclose(np.asarray(img_ctx), np.asarray(ref_img), atol=1e-5)
    np.testing.assert_allclose(np.asarray(txt_ctx), np.asarray(ref_degra), atol=1e-5)


def test_tiled_matches_whole_away_from_seams(daclip, unet, lq):
    """Tiles use the same embeddings and the same per-pixel noise as the whole-image run, so
    they differ from it only through what the network sees beyond the tile (its receptive
    field and the global linear attention / self-attention context). Bound: the mean
    difference must be < 2% of the change the restoration itself makes (|whole - LQ|), and
    the seams must not show: the mean column-to-column jump at the tile boundaries is within
    10% of the whole image's there. A different seed changes the result by ~100% of the
    change, so these bounds are far from vacuous."""
    sde = IRSDE()
    ctx = daclip_contexts(daclip, lq)
    kw = dict(steps=4, contexts=ctx, progress=False)
    whole = restore_image(daclip, unet, lq, sde, **kw)
    assert whole.shape == lq.shape and whole.dtype == np.float32
    assert whole.min() >= 0 and whole.max() <= 1
    single = restore_image(daclip, unet, lq, sde, tile=96, **kw)     # one tile = whole image
    np.testing.assert_array_equal(single, whole)

    tiled = restore_image(daclip, unet, lq, sde, tile=48, overlap=16, **kw)
    other_seed = restore_image(daclip, unet, lq, sde, seed=1, **kw)
    change = np.abs(whole - lq).mean()
    assert np.abs(tiled - whole).mean() < 0.02 * change
    assert np.abs(other_seed - whole).mean() > 0.5 * change

    def jumps(img, axis):
        return np.abs(np.diff(img, axis=axis)).mean(axis=(1 - axis, 2))

    for axis, starts, n in ((1, tile_starts(80, 48, 16), 80), (0, tile_starts(96, 48, 16), 96)):
        seams = sorted({s - 1 for s in starts[1:]} | {s + 48 - 1 for s in starts[:-1]})
        t, w = jumps(tiled, axis)[seams], jumps(whole, axis)[seams]
        assert np.all(np.abs(t - w) <= 0.1 * w), (axis, t, w)


def test_restore_runs_daclip_itself_and_steps_below_T(daclip, unet, lq):
    small = lq[:40, :36]
    sde = IRSDE()
    a = restore_image(daclip, unet, small, sde, steps=3, progress=False)
    b = restore_image(daclip, unet, small, sde, steps=3, contexts=daclip_contexts(daclip, small),
                      progress=False)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError):
        restore_image(daclip, unet, small[..., :2], sde, steps=3, progress=False)


def test_cli_restore(tmp_path, daclip, unet, lq, capsys):
    from daclip_jax.cli import main
    from daclip_jax.convert.daclip import save_daclip
    from daclip_jax.convert.unet import export_unet_pth

    save_daclip(daclip, tmp_path / "daclip")
    export_unet_pth(unet, tmp_path / "unet.pth")
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    u8 = (lq[:24, :20] * 255).astype(np.uint8)
    Image.fromarray(u8).save(src / "rgb.png")
    Image.fromarray(u8[..., 0]).save(src / "sub" / "gray.png")             # grayscale
    Image.fromarray(np.dstack([u8, np.full(u8.shape[:2], 200, np.uint8)])).save(src / "rgba.png")
    Image.fromarray(u8).convert("P").save(src / "pal.gif")                 # palette
    (src / "notes.txt").write_text("not an image")                         # skipped in folders
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "out"

    code = main(["restore", "--daclip", str(tmp_path / "daclip"), "--unet", str(tmp_path / "unet.pth"),
                 str(src), str(bad), "--out", str(out), "--steps", "2", "--no-progress"])
    cap = capsys.readouterr()
    assert code == 1                                    # one input failed
    assert str(bad) in cap.err and cap.err.count("\n") == 1
    assert sorted(os.listdir(out)) == ["gray.png", "pal.png", "rgb.png", "rgba.png"]
    for name in os.listdir(out):
        im = Image.open(out / name)
        assert im.mode == "RGB" and im.size == (20, 24)
    from daclip_jax.labels import DEGRADATIONS
    lines = [l for l in cap.out.splitlines() if l.strip()]
    assert len(lines) == 4 and all(any(w in l for w in DEGRADATIONS) for l in lines)

    code = main(["restore", "--daclip", str(tmp_path / "daclip"), "--unet", str(tmp_path / "unet.pth"),
                 str(src / "rgb.png"), "--out", str(out / "again"), "--steps", "2", "--tile", "16",
                 "--overlap", "4", "--sampler", "ode", "--no-progress"])
    assert code == 0 and os.listdir(out / "again") == ["rgb.png"]


def test_cli_restore_samples_with_the_sde_saved_beside_the_weights(tmp_path, daclip, unet, lq):
    """A UNet trained with other SDE settings (the demo writes sde.json next to unet.pth) is
    sampled with them; --clip-x0 reaches the sampler."""
    from daclip_jax.cli import main
    from daclip_jax.convert.daclip import save_daclip
    from daclip_jax.convert.unet import export_unet_pth
    from daclip_jax.imageio import read_image
    from daclip_jax.sde import save_sde_settings

    save_daclip(daclip, tmp_path / "daclip")
    export_unet_pth(unet, tmp_path / "unet.pth")
    trained = IRSDE(max_sigma=10, T=20, eps=0.05)
    save_sde_settings(trained, tmp_path)
    Image.fromarray((lq[:24, :20] * 255).astype(np.uint8)).save(tmp_path / "rgb.png")
    code = main(["restore", "--daclip", str(tmp_path / "daclip"), "--unet", str(tmp_path / "unet.pth"),
                 str(tmp_path / "rgb.png"), "--out", str(tmp_path / "out"), "--steps", "4",
                 "--clip-x0", "--no-progress"])
    assert code == 0
    got = read_image(str(tmp_path / "out" / "rgb.png"))
    small = read_image(str(tmp_path / "rgb.png"))
    want = restore_image(daclip, unet, small, trained, steps=4, clip_x0=True, progress=False)
    np.testing.assert_allclose(got, np.round(want * 255) / 255, atol=1.01 / 255)
    released = restore_image(daclip, unet, small, IRSDE(), steps=4, clip_x0=True, progress=False)
    assert np.abs(released - want).max() > 4 / 255      # the settings made a difference
