"""Degradation classification: numbers against the golden model, and the CLI on odd files."""

import json

import numpy as np
import pytest
from PIL import Image

from daclip_jax.classify import classify_degradation
from daclip_jax.cli import main
from daclip_jax.convert.daclip import daclip_from_state_dict, save_daclip
from daclip_jax.imageio import read_image
from daclip_jax.labels import DEGRADATIONS
from daclip_jax.models.clip import CLIPConfig
from daclip_jax.preprocess import preprocess
from daclip_jax.tokenizer import tokenize

TINY = CLIPConfig.named("daclip_tiny")


def test_probabilities_match_official_formula_on_golden(golden_dir):
    import json as _json

    model, z = golden_model(golden_dir)
    words = _json.loads((golden_dir / "daclip_tiny.json").read_text())["degradations"]
    np.testing.assert_array_equal(tokenize(words), z["in/degradation_tokens"])
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    deg = unit(z["out/encode_image_control_true/degra_features"].astype(np.float64))
    txt = unit(z["out/encode_text_degradation"].astype(np.float64))
    logits = 100 * deg @ txt.T
    want = np.exp(logits - logits.max(-1, keepdims=True))
    want /= want.sum(-1, keepdims=True)
    got = classify_degradation(model, z["in/images"].transpose(0, 2, 3, 1), words)
    np.testing.assert_allclose(got, want, atol=1e-4)  # ×100 amplifies the 1e-6 feature error
    assert got.shape == (4, 4) and np.allclose(got.sum(-1), 1, atol=1e-6)

    # control=False: the frozen CLIP's own image embedding (the baseline the demo reports)
    img = unit(z["out/encode_image_control_false"].astype(np.float64))
    logits = 100 * img @ txt.T
    plain = np.exp(logits - logits.max(-1, keepdims=True))
    plain /= plain.sum(-1, keepdims=True)
    images = z["in/images"].transpose(0, 2, 3, 1)
    np.testing.assert_allclose(classify_degradation(model, images, words, control=False), plain, atol=1e-4)
    # ... which no controller weight can change, while the DA-CLIP answer does change
    proj = model.visual_control.proj
    proj.set_value(np.asarray(proj.get_value()) * -3.0)
    np.testing.assert_allclose(classify_degradation(model, images, words, control=False), plain, atol=1e-4)
    assert np.abs(classify_degradation(model, images, words) - want).max() > 1e-2


def golden_model(golden_dir):
    z = np.load(golden_dir / "daclip_tiny.npz")
    sd = {n[3:]: np.asarray(z[n].astype(np.float32) * z["sd_scale/" + n[3:]], np.float32)
          for n in z.files if n.startswith("sd/")}
    return daclip_from_state_dict(sd, TINY), z


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, golden_dir):
    # the golden weights have non-zero control linears, so the controller path matters
    # (and building from them skips the slow first eager random init)
    model, _ = golden_model(golden_dir)
    d = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_daclip(model, d)
    return d, model


def _images(tmp_path):
    rng = np.random.default_rng(0)
    rgb = (rng.random((40, 56, 3)) * 255).astype(np.uint8)
    files = {}
    files["rgb.png"] = lambda p: Image.fromarray(rgb).save(p)
    files["gray.png"] = lambda p: Image.fromarray(rgb[..., 0]).save(p)
    files["rgba.png"] = lambda p: Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(p)
    files["palette.png"] = lambda p: Image.fromarray(rgb).convert("P").save(p)
    files["cmyk.jpg"] = lambda p: Image.fromarray(rgb).convert("CMYK").save(p)
    files["deep16.png"] = lambda p: Image.fromarray((rgb[..., 1].astype(np.uint16) * 257)).save(p)
    files["tiny1x1.png"] = lambda p: Image.fromarray(rgb[:1, :1]).save(p)
    paths = []
    for name, write in files.items():
        write(tmp_path / name)
        paths.append(tmp_path / name)
    return paths


def test_cli_json_answers_every_readable_image(model_dir, tmp_path, capsys):
    d, model = model_dir
    paths = _images(tmp_path)
    rc = main(["classify", "--checkpoint", str(d), "--json", "--batch-size", "4", *map(str, paths)])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert [r["path"] for r in out] == [str(p) for p in paths]
    views = np.stack([preprocess(read_image(p, alpha="drop"), size=TINY.image_size) for p in paths])
    want = np.concatenate([classify_degradation(model, views[:4]), classify_degradation(model, views[4:])])
    for r, w in zip(out, want):
        assert list(r["probabilities"]) == list(DEGRADATIONS)
        np.testing.assert_allclose(list(r["probabilities"].values()), w, atol=1e-6)
        assert r["top"] == DEGRADATIONS[int(np.argmax(w))]


def test_cli_reports_bad_files_and_continues(model_dir, tmp_path, capsys):
    d, _ = model_dir
    good = _images(tmp_path)[0]
    text = tmp_path / "notes.png"
    text.write_text("not an image at all")
    data = good.read_bytes()
    cut = tmp_path / "truncated.png"
    cut.write_bytes(data[: len(data) // 2])
    missing = tmp_path / "missing.jpg"
    rc = main(["classify", "--checkpoint", str(d), str(text), str(good), str(cut), str(missing)])
    cap = capsys.readouterr()
    assert rc != 0
    errors = cap.err.strip().splitlines()
    assert len(errors) == 3
    for bad, line in zip((text, cut, missing), errors):
        assert str(bad) in line and line.startswith("error: ")
    assert cap.out.splitlines()[0] == str(good)  # the good image is still answered
    assert sum(w in cap.out for w in DEGRADATIONS) == 10


def test_cli_bad_checkpoint_is_one_line(tmp_path, capsys):
    img = _images(tmp_path)[0]
    rc = main(["classify", "--checkpoint", str(tmp_path / "nope.pt"), str(img)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "nope.pt" in err[0]
