"""The README cannot rot: every `daclip-jax` command it shows parses with the real CLI (and
training commands load their config with the overrides applied), and its Python snippet runs
end to end on tiny random checkpoints written in the released files' formats."""

import os
import pathlib
import re
import shlex

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def _commands():
    """(argv after `daclip-jax`) for every command line in the README's bash blocks."""
    out = []
    for block in _blocks("bash"):
        for line in block.splitlines():
            line = line.split(" #")[0].strip()
            if "daclip-jax" not in line or line.startswith("#"):
                continue
            words = shlex.split(line)
            # the part after the last `daclip-jax` word (launchers pass the verb through)
            idx = max(i for i, w in enumerate(words) if w.endswith("daclip-jax")
                      or w.startswith("launch/"))
            argv = words[idx + 1:]
            if argv and argv[0] in ("&&",):
                continue
            out.append(argv)
    return out


COMMANDS = _commands()


def test_readme_shows_the_main_verbs():
    verbs = {a[0] for a in COMMANDS if a}
    assert {"demo", "restore", "classify", "import", "export", "train", "eval", "sweep",
            "data", "serve", "compile"} <= verbs


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(a)[:60] for a in COMMANDS])
def test_readme_command_parses(argv, monkeypatch):
    from daclip_jax.cli import build_parser

    monkeypatch.chdir(ROOT)
    args = build_parser().parse_args(argv)
    assert callable(args.func)
    if argv[0] in ("train", "eval", "sweep", "compile"):
        from daclip_jax.train.configlib import apply_overrides, load_config

        config = apply_overrides(load_config(args.config), args.overrides)
        assert config.task in ("clip", "daclip", "restoration")


@pytest.mark.slow
def test_readme_python_snippet_runs(tmp_path, monkeypatch):
    import skimage.data
    from flax import nnx
    from PIL import Image

    from daclip_jax.convert.daclip import export_daclip_pt
    from daclip_jax.convert.unet import export_unet_pth
    from daclip_jax.models.clip import CLIPConfig
    from daclip_jax.models.daclip import DaCLIP
    from daclip_jax.models.unet import ConditionalUNet, UNetConfig

    # tiny stand-ins for the released files, in their exact formats (224 px CLIP view; widths
    # multiples of 64 so the importer infers the heads from shapes as for real checkpoints)
    cfg = CLIPConfig(embed_dim=32, image_size=224, patch_size=32, vision_width=64,
                     vision_layers=2, vision_head_width=64, text_width=64, text_heads=1,
                     text_layers=2)
    export_daclip_pt(DaCLIP(cfg, rngs=nnx.Rngs(0)), tmp_path / "daclip_ViT-B-32.pt")
    export_unet_pth(ConditionalUNet(UNetConfig.named("tiny", nf=8, context_dim=32), rngs=nnx.Rngs(1)),
                    tmp_path / "universal-ir.pth")
    Image.fromarray(skimage.data.astronaut()[::12, ::10]).save(tmp_path / "photo.jpg")

    snippet = _blocks("python")[0]
    # the released sampler runs 100 steps; 4 keep the test fast and use the same code path
    snippet = snippet.replace("steps=100", "steps=4")
    monkeypatch.chdir(tmp_path)
    env: dict = {}
    exec(compile(snippet, "README.md", "exec"), env)
    assert env["tokens"].shape == (2, 77) and env["tokens"].dtype == np.int32
    assert env["x"].shape == (224, 224, 3)
    assert env["probs"].shape == (1, 10)
    np.testing.assert_allclose(np.asarray(env["probs"]).sum(-1), 1.0, rtol=1e-5)
    assert env["content"].shape == env["degradation"].shape == (1, 32)
    assert env["restored"].shape == env["lq"].shape
    assert np.isfinite(np.asarray(env["restored"])).all()
