"""The demo end to end at smoke size: every artefact exists and is valid.

One run (module fixture, ~1-3 min on 2 CPU cores) through the CLI as the README shows it,
then one check per artefact: photos and captions, the three trainer runs (orbax checkpoints,
TensorBoard events, exported model dirs), the PyTorch exports (official DA-CLIP .pt layout
via torch weights_only, UNet .pth, HF CLIP dir via transformers), and the report (all ten
types, PNGs that decode). A second invocation must resume (skip the finished stages).
"""

import glob
import json
import os
import struct

import numpy as np
import pytest
from PIL import Image

from daclip_jax.labels import DEGRADATIONS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    from daclip_jax.cli import main

    workdir = str(tmp_path_factory.mktemp("demo"))
    assert main(["demo", "--workdir", workdir, "--config", ":smoke"]) == 0
    return workdir


def test_data_is_split_by_photo_with_captions(demo_run):
    train = sorted(os.listdir(os.path.join(demo_run, "data", "train")))
    heldout = sorted(os.listdir(os.path.join(demo_run, "data", "heldout")))
    assert heldout == ["camera.png", "coffee.png"]
    assert train and not set(train) & set(heldout)
    with open(os.path.join(demo_run, "data", "captions.json")) as f:
        captions = json.load(f)
    assert set(captions) == set(train) | set(heldout)
    assert "cat" in captions["chelsea.png"]


def _scalars(path):
    """(step, tag, value) of a TensorBoard event file: TFRecord framing (u64 length, u32 crc,
    data, u32 crc) around tensorboardX's Event protos."""
    from tensorboardX.proto import event_pb2

    out = []
    with open(path, "rb") as f:
        while header := f.read(12):
            (length,) = struct.unpack("<Q", header[:8])
            event = event_pb2.Event.FromString(f.read(length))
            f.read(4)
            for v in event.summary.value:
                out.append((event.step, v.tag, v.simple_value))
    return out


@pytest.mark.parametrize("stage", ["clip", "daclip", "restoration"])
def test_each_stage_has_checkpoints_events_and_model(demo_run, stage):
    from daclip_jax import demo

    run = os.path.join(demo_run, stage)
    last = int(demo.get_config("smoke")[stage].steps)
    steps = [int(d) for d in os.listdir(os.path.join(run, "checkpoints")) if d.isdigit()]
    assert max(steps) == last
    events = glob.glob(os.path.join(run, "tb", "events.out.tfevents.*"))
    assert events
    losses = [(step, value) for step, tag, value in _scalars(events[0]) if tag == "train/loss"]
    assert losses[-1][0] == last and all(np.isfinite(v) for _, v in losses)
    assert os.path.isfile(os.path.join(run, "model", "config.json")) or os.listdir(os.path.join(run, "model"))
    assert os.path.isfile(os.path.join(run, "done.json"))


def test_exported_daclip_pt_has_the_official_layout(demo_run):
    import torch

    from daclip_jax.convert.daclip import daclip_layout, load_daclip

    sd = torch.load(os.path.join(demo_run, "export", "daclip.pt"), map_location="cpu", weights_only=True)
    model = load_daclip(os.path.join(demo_run, "daclip", "model"))
    layout = daclip_layout(model.cfg)
    assert list(sd) == list(layout)
    assert {k: tuple(v.shape) for k, v in sd.items()} == {k: tuple(s) for k, s in layout.items()}
    for key in ("logit_scale", "clip.visual.conv1.weight", "visual_control.transformer.zero_modules.0.weight"):
        assert key in sd
    # the exported weights are the trained ones, and the architecture (head counts included)
    # is read back from the shapes alone: same embeddings as the model dir
    back = load_daclip(os.path.join(demo_run, "export", "daclip.pt"))
    assert back.cfg == model.cfg
    views = np.random.default_rng(0).uniform(size=(2, model.cfg.image_size, model.cfg.image_size, 3))
    for a, b in zip(back.encode_image(views.astype(np.float32), control=True),
                    model.encode_image(views.astype(np.float32), control=True)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_exported_unet_pth_loads(demo_run):
    import torch

    from daclip_jax.convert.unet import load_unet

    sd = torch.load(os.path.join(demo_run, "export", "unet.pth"), map_location="cpu", weights_only=True)
    assert "init_conv.weight" in sd and all(isinstance(v, torch.Tensor) for v in sd.values())
    unet = load_unet(os.path.join(demo_run, "export", "unet.pth"))
    ours = load_unet(os.path.join(demo_run, "restoration", "model_ema"))  # the evaluated weights
    assert unet.cfg.nf == ours.cfg.nf and unet.cfg.context_dim == ours.cfg.context_dim
    np.testing.assert_allclose(np.asarray(unet.final_conv.kernel.get_value()),
                               np.asarray(ours.final_conv.kernel.get_value()), atol=1e-6)


def test_the_sde_settings_travel_with_the_unet(demo_run):
    """`restore` must sample with the SDE the demo trained (not the released nets' one)."""
    from daclip_jax import demo
    from daclip_jax.sde import sde_for_weights

    trained = dict(demo.get_config("smoke").restoration.sde)
    for weights in ("export/unet.pth", "restoration/model_ema", "restoration/model"):
        got = sde_for_weights(os.path.join(demo_run, weights)).to_dict()
        assert got == {k: trained[k] for k in got}, weights


def test_exported_hf_clip_loads_with_transformers(demo_run):
    import torch
    import transformers

    model = transformers.CLIPModel.from_pretrained(os.path.join(demo_run, "export", "hf_clip"))
    size = model.config.vision_config.image_size
    with torch.no_grad():
        feats = model.get_image_features(pixel_values=torch.zeros(1, 3, size, size))
    feats = getattr(feats, "pooler_output", feats)
    assert feats.shape[-1] == model.config.projection_dim


def test_readme_restore_command_on_the_demo_weights(demo_run, tmp_path, capsys):
    """The README's `restore` line for the demo's own weights (model dirs + sde.json): the
    one-step mode, the report's restorer."""
    from daclip_jax.cli import main

    photo = os.path.join(demo_run, "data", "heldout", "coffee.png")
    code = main(["restore", "--daclip", os.path.join(demo_run, "daclip", "model"),
                 "--unet", os.path.join(demo_run, "restoration", "model_ema"), photo,
                 "--out", str(tmp_path), "--steps", "1", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and any(w in out for w in DEGRADATIONS), out
    with Image.open(tmp_path / "coffee.png") as im, Image.open(photo) as src:
        assert im.size == src.size


def test_report_lists_every_type_and_its_pictures_decode(demo_run):
    rdir = os.path.join(demo_run, "report")
    with open(os.path.join(rdir, "report.md")) as f:
        text = f.read()
    for name in DEGRADATIONS:
        assert f"| {name} |" in text
    pictures = ["loss_curves.png", "confusion.png", "before_after.png"]
    for png in pictures:
        assert f"]({png})" in text
        with Image.open(os.path.join(rdir, png)) as im:
            im.load()
            assert im.format == "PNG" and min(im.size) > 100
    with Image.open(os.path.join(rdir, "before_after.png")) as im:
        grid = np.asarray(im.convert("RGB"))
    assert grid.std() > 5   # not a blank sheet
    with open(os.path.join(rdir, "summary.json")) as f:
        summary = json.load(f)
    assert set(summary["per_type"]) == set(DEGRADATIONS)
    assert summary["samples"] == 2 * len(DEGRADATIONS)  # 2 held-out photos x 1 patch x 10 types
    assert np.isfinite(summary["overall"]["psnr_in"]) and 0 <= summary["overall"]["accuracy"] <= 1
    assert 0 <= summary["overall"]["clip_accuracy"] <= 1   # the frozen CLIP alone, for contrast
    assert "| CLIP alone | DA-CLIP |" in text
    assert np.asarray(summary["confusion"]).sum() == summary["samples"]
    # every sampling step count is reported; the first is the report's restorer (top level)
    assert list(summary["by_steps"]) == ["1", "2"]
    assert summary["by_steps"]["1"]["overall"]["psnr_out"] == summary["overall"]["psnr_out"]
    for run in summary["by_steps"].values():
        assert set(run["per_type"]) == set(DEGRADATIONS) and np.isfinite(run["overall"]["psnr_gain"])
    assert summary["unet"]["parameterization"] == "x0"
    assert "PSNR out (1 step)" in text and "PSNR out (2 steps)" in text


def test_restorer_does_not_collapse_and_daclip_beats_clip_alone(demo_run):
    """The x0 restorer starts at "change nothing" and its first steps are warm-up steps, so the
    smoke run's restorer stays near the identity: the official noise parameterisation after the
    same 4 steps lost ~10 dB here (its x0 estimate amplifies the net's error by up to 1/eps);
    the bound leaves room for a slightly trained net. The controller, trained on degraded
    views, must classify the held-out degradations better than the frozen CLIP alone."""
    with open(os.path.join(demo_run, "report", "summary.json")) as f:
        summary = json.load(f)
    for steps, run in summary["by_steps"].items():
        assert run["overall"]["psnr_gain"] > -0.5, (steps, run["overall"])
    assert summary["overall"]["accuracy"] > summary["overall"]["clip_accuracy"]


def test_rerun_skips_finished_stages_and_resumes_an_interrupted_one(demo_run, capsys):
    import shutil

    from daclip_jax import demo

    # an interrupted stage 3: its checkpoints are there but it never finished
    os.remove(os.path.join(demo_run, "restoration", "done.json"))
    shutil.rmtree(os.path.join(demo_run, "restoration", "model"))
    capsys.readouterr()
    demo.train_stages(demo.get_config("smoke"), demo_run)
    out = capsys.readouterr().out
    assert out.count("already trained") == 2
    assert "resumed from checkpoint 4" in out
    assert os.path.isfile(os.path.join(demo_run, "restoration", "done.json"))


def test_pretrained_clip_skips_stage_one(demo_run, tmp_path, capsys):
    """`--config.clip.init=PATH` (here the HF CLIP dir the first run exported) replaces stage 1."""
    from daclip_jax import demo
    from daclip_jax.train.configlib import apply_overrides

    cfg = apply_overrides(demo.get_config("smoke"), [
        ("clip.init", os.path.join(demo_run, "export", "hf_clip")),
        ("daclip.steps", "2"), ("restoration.steps", "2")])
    capsys.readouterr()
    demo.train_stages(cfg, str(tmp_path))
    out = capsys.readouterr().out
    assert "stage 1 skipped" in out and not os.path.exists(tmp_path / "clip")
    for stage in ("daclip", "restoration"):
        assert os.path.isfile(tmp_path / stage / "done.json")
