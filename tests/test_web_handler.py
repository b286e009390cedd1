"""The web app's request handler (daclip_jax.web.handler) without a browser: what an upload
becomes (sizes, mode conversions as the CLI's reader), the size cap, the controls' checks and
the one-line messages the page shows; plus the page's probability chart and `serve`'s refusal
of bad checkpoints. Tiny golden DA-CLIP (32 px views) and a tiny random UNet."""

import os

import numpy as np
import pytest
from PIL import Image

from daclip_jax.imageio import read_image, to_uint8
from daclip_jax.labels import DEGRADATIONS
from daclip_jax.restore import restore_image
from daclip_jax.sde import IRSDE
from daclip_jax.web.handler import BadRequest, Restorer, Settings


@pytest.fixture(scope="module")
def models(golden_state_dict):
    from daclip_jax.convert.daclip import daclip_from_state_dict
    from daclip_jax.models.unet import UNetConfig, init_unet

    sd = golden_state_dict("daclip_tiny")
    unet = init_unet(UNetConfig.named("tiny", nf=8, context_dim=32), seed=1)
    return daclip_from_state_dict(sd), unet, IRSDE()


@pytest.fixture
def restorer(models, tmp_path):
    return Restorer(*models, tmp_path / "work", max_pixels=64 * 64)


@pytest.fixture(scope="module")
def photo():
    """A real photo, 24 x 20 (H x W), 8-bit RGB."""
    from skimage import data

    return np.asarray(Image.fromarray(data.astronaut()).resize((20, 24), Image.BICUBIC))


def _png(path):
    return np.asarray(Image.open(path))


def test_restore_is_restore_image_with_the_settings(restorer, models, photo, tmp_path):
    path = tmp_path / "up" / "my photo.png"
    path.parent.mkdir()
    Image.fromarray(photo).save(path)
    steps_seen = []
    r = restorer.restore(path, Settings(steps=3, seed=5, sampler="posterior"),
                         on_step=lambda done, total: steps_seen.append((done, total)))
    assert r.name == "my photo.png" and r.size == (20, 24)
    assert list(r.probs) == list(DEGRADATIONS)
    assert sum(r.probs.values()) == pytest.approx(1.0, abs=1e-5)
    assert r.top[0] in DEGRADATIONS and r.top[1] == max(r.probs.values())
    assert steps_seen == [(1, 3), (2, 3), (3, 3)]
    daclip, unet, sde = models
    want = restore_image(daclip, unet, read_image(path), sde, steps=3, seed=5, progress=False)
    got = _png(r.restored_png)
    assert got.shape == (24, 20, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, to_uint8(want))
    np.testing.assert_array_equal(_png(r.input_png), photo)
    assert os.path.basename(r.restored_png) == "my photo_restored.png"
    # everything it wrote is in its work dir
    assert os.path.commonpath([r.restored_png, restorer.workdir]) == restorer.workdir
    # another seed is another draw (the seed reaches the sampler)
    other = restorer.restore(path, Settings(steps=3, seed=6))
    assert np.abs(_png(other.restored_png).astype(int) - got).mean() > 1


@pytest.mark.slow
def test_tiles_reach_restore_image(restorer, models, photo, tmp_path):
    path = tmp_path / "p.png"
    Image.fromarray(np.tile(photo, (3, 4, 1))).save(path)          # 72 x 80 > one 68 px tile
    restorer.max_pixels = 100 * 100
    totals = set()
    r = restorer.restore(path, Settings(steps=2, tile=68),
                         on_step=lambda done, total: totals.add(total))
    assert totals == {2 * 2 * 2}                                     # 2 x 2 tiles, 2 steps each
    daclip, unet, sde = models
    want = restore_image(daclip, unet, read_image(path), sde, steps=2, tile=68, overlap=32,
                         progress=False)
    np.testing.assert_array_equal(_png(r.restored_png), to_uint8(want))


def test_one_pixel_image_is_restored(restorer, tmp_path):
    path = tmp_path / "dot.png"
    Image.fromarray(np.array([[[200, 10, 30]]], np.uint8)).save(path)
    r = restorer.restore(path, Settings(steps=2))
    assert r.size == (1, 1) and _png(r.restored_png).shape == (1, 1, 3)


@pytest.mark.parametrize("kind", ["gray", "gray16", "rgba", "palette", "cmyk", "rgb16"])
def test_modes_are_converted_as_the_cli_reads_them(restorer, photo, tmp_path, kind):
    path = tmp_path / f"{kind}.{'jpg' if kind == 'cmyk' else 'png'}"
    if kind == "gray":
        Image.fromarray(photo[..., 0]).save(path)
    elif kind == "gray16":
        Image.fromarray(photo[..., 0].astype(np.uint16) * 257).save(path)
    elif kind == "rgba":
        Image.fromarray(np.dstack([photo, np.full(photo.shape[:2], 128, np.uint8)])).save(path)
    elif kind == "palette":
        Image.fromarray(photo).convert("P").save(path)
    elif kind == "cmyk":
        Image.fromarray(photo).convert("CMYK").save(path, quality=95)
    else:   # 16-bit RGB PNG (Pillow would reduce it to 8 bits; read_image keeps 16)
        _write_png16(path, photo.astype(np.uint16) * 257 + 3)
    r = restorer.inspect(path)
    assert r.size == (20, 24) and sum(r.probs.values()) == pytest.approx(1.0, abs=1e-5)
    shown = _png(r.input_png)
    assert shown.shape == (24, 20, 3)
    np.testing.assert_array_equal(shown, to_uint8(read_image(path)))
    if kind == "gray":
        assert (shown == photo[..., :1]).all()


def _write_png16(path, rgb16):
    import struct
    import zlib

    h, w, _ = rgb16.shape
    raw = b"".join(b"\0" + rgb16[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _message(restorer, path, settings=None):
    with pytest.raises(BadRequest) as e:
        if settings is None:
            restorer.inspect(path)
        else:
            restorer.restore(path, settings)
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def test_bad_uploads_get_one_line_messages(restorer, photo, tmp_path):
    txt = tmp_path / "notes.png"
    txt.write_text("not an image at all")
    msg = _message(restorer, txt)
    assert msg.startswith("notes.png: ") and "not an image" in msg
    assert str(tmp_path) not in msg                  # the server's paths stay private

    good = tmp_path / "cut.png"
    Image.fromarray(photo).save(good)
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])
    assert "corrupt or truncated" in _message(restorer, good)

    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    assert "empty file" in _message(restorer, empty)
    assert "upload a photo" in _message(restorer, None)
    assert "upload a photo" in _message(restorer, "", Settings(steps=2))


def test_size_cap_is_checked_on_the_header(restorer, tmp_path):
    big = tmp_path / "big.png"
    Image.new("RGB", (80, 60)).save(big)             # 4800 px > 64 * 64
    msg = _message(restorer, big)
    assert msg.startswith("big.png: 80x60 pixels (0.0 Mpx) is above")
    assert "--max-megapixels" in msg
    # refused before decoding: a truncated file over the cap gets the size message
    data = big.read_bytes()
    big.write_bytes(data[:60])
    assert "80x60 pixels" in _message(restorer, big)
    at_cap = tmp_path / "ok.png"
    Image.new("RGB", (80, 60), (90, 120, 30)).save(at_cap)
    restorer.max_pixels = 80 * 60                    # at the cap: accepted
    assert restorer.inspect(at_cap).size == (80, 60)


@pytest.mark.parametrize("settings, words", [
    (Settings(steps=0), "steps"),
    (Settings(steps=101), "steps"),
    (Settings(steps=1), "x0-parameterised"),          # one step needs an x0 net
    (Settings(steps=2, sampler="euler"), "sampler"),
    (Settings(steps=2, sampler="ode", clip_x0=True), "posterior"),
    (Settings(steps=2, seed=-1), "seed"),
    (Settings(steps=2, tile=48), "tile"),
    (Settings(steps="many"), "steps must be a whole number"),
    (Settings(steps=2.5), "steps must be a whole number"),
    (Settings(steps=2, seed=None), "seed must be a whole number, got None"),
])
def test_bad_settings_are_refused_by_name(restorer, photo, tmp_path, settings, words):
    path = tmp_path / "p.png"
    Image.fromarray(photo).save(path)
    assert words in _message(restorer, path, settings)


def test_settings_from_the_page_are_coerced(restorer):
    s = restorer.check(Settings(steps=4.0, seed=3.0, tile="512", sampler="sde"))
    assert s == Settings(steps=4, sampler="sde", seed=3, tile=512, clip_x0=False)
    assert restorer.check(Settings(steps=4, tile=0)).tile is None


def test_old_results_are_removed(restorer, photo, tmp_path, monkeypatch):
    import daclip_jax.web.handler as handler

    monkeypatch.setattr(handler, "KEEP_RESULTS", 2)
    path = tmp_path / "p.png"
    Image.fromarray(photo).save(path)
    shown = [restorer.inspect(path).input_png for _ in range(4)]
    assert [os.path.exists(p) for p in shown] == [False, False, True, True]
    assert len(os.listdir(restorer.workdir)) == 2


def test_probability_chart_is_sorted_and_names_the_top():
    import re

    from daclip_jax.web.page import probabilities_html

    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(10))
    probs = dict(zip(DEGRADATIONS, p.tolist()))
    html = probabilities_html(probs)
    words = re.findall(r'data-word="([^"]+)"', html)
    values = [float(v) for v in re.findall(r'class="value">([0-9.]+)%<', html)]
    assert words == sorted(DEGRADATIONS, key=lambda w: -probs[w])
    assert values == sorted(values, reverse=True) and len(values) == 10
    assert abs(sum(values) / 100 - 1) <= 1e-3
    assert f"Looks <b>{words[0]}</b>" in html


def test_serve_refuses_bad_checkpoints(tmp_path, capsys):
    import tempfile

    from daclip_jax.cli import main

    before = dict(os.environ), tempfile.gettempdir()
    code = main(["serve", "--daclip", str(tmp_path / "missing.pt"), "--unet",
                 str(tmp_path / "missing.pth"), "--port", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot load the models" in err and err.count("\n") == 1
    assert (dict(os.environ), tempfile.gettempdir()) == before   # the process is as it was


def test_one_step_is_allowed_for_an_x0_net(models, tmp_path):
    from daclip_jax.models.unet import UNetConfig, init_unet

    daclip, _, sde = models
    x0_net = init_unet(UNetConfig.named("tiny", nf=8, context_dim=32, parameterization="x0"))
    assert Restorer(daclip, x0_net, sde, tmp_path).check(Settings(steps=1)).steps == 1
