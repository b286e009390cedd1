"""End-to-end smoke runs of the three tasks through `daclip-jax train` (runlocal configs):
train, evaluate, checkpoint, export, and load the exported model with the public loaders."""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = os.path.join(ROOT, "configs")
ENTRY = "import sys; from daclip_jax.cli import main; sys.exit(main(sys.argv[1:]))"
JAX_CACHE = os.path.join(tempfile.gettempdir(), "daclip-jax-test-jax-cache")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    sys.path.insert(0, ROOT)
    from tests.test_train_helpers import make_image_folder
    return make_image_folder(str(tmp_path_factory.mktemp("imgs") / "images"), n=16, size=48)


def _cli(*argv, timeout=600):
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=JAX_CACHE,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    r = subprocess.run(["timeout", "-k", "5", str(timeout), sys.executable, "-c", ENTRY, *argv],
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r.stdout


def _records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(l) for l in f]


def _param_tree(model):
    from flax import nnx
    return {"/".join(map(str, p)): np.asarray(v.get_value())
            for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


@pytest.mark.slow
def test_daclip_train_eval_export(tmp_path, images):
    folder, captions = images
    work = str(tmp_path / "run")
    out = _cli("train", "--config", f"{CFG}/daclip_vit_b32.py:runlocal,data={folder}",
               "--workdir", work, f"--config.data.caption.path={captions}")
    assert "[4/4]" in out and "eval" in out
    recs = _records(work)
    assert [r["step"] for r in recs if "train/loss" in r] == [1, 2, 3, 4]
    assert any("val/accuracy" in r and "val/image_to_text_R@1" in r for r in recs)
    assert os.listdir(os.path.join(work, "tb"))

    from daclip_jax.classify import classify_degradation
    from daclip_jax.convert.daclip import load_daclip
    from daclip_jax.train.configlib import load_config
    from daclip_jax.train.daclip_task import DaClipTask
    from flax import nnx
    trained = load_daclip(os.path.join(work, "model"))
    probs = classify_degradation(trained, np.zeros((2, 32, 32, 3), np.float32))
    assert probs.shape == (2, 10) and np.allclose(probs.sum(-1), 1, atol=1e-5)
    # what is frozen stayed frozen, what trains moved
    cfg = load_config(f"{CFG}/daclip_vit_b32.py:runlocal,data={folder}")
    start = _param_tree(DaClipTask(cfg).build_model(nnx.Rngs(0)))
    end = _param_tree(trained)
    for k in start:
        if k.startswith("clip/"):
            np.testing.assert_array_equal(start[k], end[k], err_msg=k)
    moved = [k for k in start if k.startswith("visual_control/") and
             not np.array_equal(start[k], end[k])]
    assert any("zero_modules" in k for k in moved) and len(moved) > 10

    scores = _json_tail(_cli("eval", "--config", f"{CFG}/daclip_vit_b32.py:runlocal,data={folder}",
                             "--workdir", work, f"--config.data.caption.path={captions}",
                             "--step", "best"))
    assert 0.0 <= scores["val/accuracy"] <= 1.0


def _json_tail(out):
    return json.loads(out[out.rindex("\n{") + 1:] if "\n{" in out else out[out.index("{"):])


@pytest.mark.slow
def test_clip_from_scratch_feeds_daclip(tmp_path, images):
    folder, captions = images
    work = str(tmp_path / "clip")
    _cli("train", "--config", f"{CFG}/clip_scratch.py:runlocal,data={folder}", "--workdir", work,
         f"--config.data.caption.path={captions}")
    assert any("val/image_to_text_R@1" in r for r in _records(work))
    from daclip_jax.convert.daclip import load_daclip
    from daclip_jax.model_io import load_model_dir
    kind, _, params = load_model_dir(os.path.join(work, "model"))
    assert kind == "clip"
    daclip = load_daclip(os.path.join(work, "model"))  # wrapped with a fresh controller
    np.testing.assert_array_equal(np.asarray(daclip.clip.visual.proj[...]),
                                  params["visual"]["proj"])


@pytest.mark.slow
def test_restoration_train_eval_export(tmp_path, images):
    folder, captions = images
    work = str(tmp_path / "ir")
    _cli("train", "--config", f"{CFG}/universal_ir.py:runlocal,data={folder}", "--workdir", work,
         f"--config.data.caption.path={captions}", "--config.model.unet_overrides={'nf': 32, 'ch_mult': (1, 2)}",
         "--config.ema.after=1", "--config.ema.every=1")
    recs = _records(work)
    assert [r["step"] for r in recs if "train/loss" in r] == [1, 2, 3, 4]
    val = [r for r in recs if "val/psnr" in r]
    assert val and 0 < val[-1]["val/psnr"] < 100 and -1 <= val[-1]["val/ssim"] <= 1
    from daclip_jax.convert.unet import load_unet
    raw = _param_tree(load_unet(os.path.join(work, "model")))
    ema = _param_tree(load_unet(os.path.join(work, "model_ema")))
    assert raw.keys() == ema.keys()
    assert any(not np.array_equal(raw[k], ema[k]) for k in raw)  # the EMA lags the weights
