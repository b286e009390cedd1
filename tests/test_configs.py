"""Configs load with every documented arg, overrides are typed, sweeps expand."""

import os
import subprocess
import sys

import pytest

from daclip_jax.train.configlib import (apply_overrides, load_config, load_sweep, parse_arg,
                                        parse_overrides, product, sweep, zipped)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = os.path.join(ROOT, "configs")


@pytest.mark.parametrize("spec,task,steps", [
    ("daclip_vit_b32.py", "daclip", 1276),
    ("daclip_vit_b32.py:runlocal,data=/x", "daclip", 4),
    ("universal_ir.py", "restoration", 700_000),
    ("universal_ir.py:runlocal", "restoration", 4),
    ("wild_ir.py", "restoration", 500_000),
    ("wild_ir.py:runlocal", "restoration", 4),
    ("clip_scratch.py:data=/x", "clip", 2000),
])
def test_configs_load(spec, task, steps):
    c = load_config(os.path.join(CFG, spec))
    assert c.task == task and c.train.steps == steps
    assert c.train.batch_size % 1 == 0 and c.data.patch_size > 0


def test_official_recipes():
    d = load_config(os.path.join(CFG, "daclip_vit_b32.py"))
    assert (d.train.lr, d.train.weight_decay, d.train.b1, d.train.b2, d.train.eps,
            d.train.warmup_steps, d.train.batch_size) == (3e-5, 0.05, 0.9, 0.98, 1e-6, 100, 3136)
    assert d.model.name == "ViT-B-32"
    u = load_config(os.path.join(CFG, "universal_ir.py"))
    assert (u.train.lr, u.train.b1, u.train.b2, u.train.weight_decay, u.train.end_lr,
            u.train.batch_size, u.data.patch_size) == (2e-4, 0.9, 0.99, 0.0, 1e-6, 16, 256)
    assert (u.ema.decay, u.ema.every) == (0.995, 10)
    assert (u.sde.max_sigma, u.sde.T, u.sde.schedule, u.sde.eps) == (50, 100, "cosine", 0.005)
    w = load_config(os.path.join(CFG, "wild_ir.py"))
    assert w.model.unet == "wild-ir" and w.model.daclip_name == "ViT-L-14"
    assert w.data.degradation.mode == "wild" and w.eval.sampler == "posterior"


def test_overrides_are_typed():
    c = load_config(os.path.join(CFG, "universal_ir.py:runlocal"))
    over, rest = parse_overrides(["--config.train.lr=1e-3", "--workdir", "w",
                                  "--config.train.steps", "7", "--config.ema.decay=0",
                                  "--config.data.hflip=false", "--config.model.unet=universal-ir"])
    assert rest == ["--workdir", "w"]
    apply_overrides(c, over)
    assert c.train.lr == 1e-3 and c.train.steps == 7 and c.ema.decay == 0.0
    assert c.data.hflip is False and c.model.unet == "universal-ir"
    with pytest.raises(KeyError, match="no field 'lrr'"):
        apply_overrides(c, [("train.lrr", "1")])
    with pytest.raises(TypeError):
        apply_overrides(c, [("train.steps", "'many'")])


def test_parse_arg():
    a = parse_arg("runlocal,batch=8", runlocal=False, batch=16, data="")
    assert a.runlocal is True and a.batch == 8 and a.data == ""
    with pytest.raises(ValueError, match="unknown config arg"):
        parse_arg("bogus", runlocal=False)


def test_sweeps_expand():
    assert product([sweep("a", [1, 2]), sweep("b", [3, 4])]) == [
        {"a": 1, "b": 3}, {"a": 1, "b": 4}, {"a": 2, "b": 3}, {"a": 2, "b": 4}]
    assert zipped([sweep("a", [1, 2]), sweep("b", [3, 4])]) == [{"a": 1, "b": 3}, {"a": 2, "b": 4}]
    with pytest.raises(ValueError):
        zipped([sweep("a", [1, 2]), sweep("b", [3])])
    assert len(load_sweep(os.path.join(CFG, "daclip_vit_b32.py"))) == 6
    assert load_sweep(os.path.join(CFG, "wild_ir.py")) == [{}]


def test_sweep_dry_run_cli():
    r = subprocess.run([sys.executable, "-c",
                        "import sys; from daclip_jax.cli import main; sys.exit(main(sys.argv[1:]))",
                        "sweep", "--config", os.path.join(CFG, "universal_ir.py:runlocal"),
                        "--workdir", "/tmp/never", "--dry-run", "--config.train.steps=9"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [l for l in r.stdout.splitlines() if l.startswith("[")]
    assert len(lines) == 3
    assert "--config.train.batch_size=32" in lines[1] and "--config.train.lr=0.0004" in lines[1]
    assert all("--config.train.steps=9" in l for l in lines)
    assert not os.path.exists("/tmp/never")
