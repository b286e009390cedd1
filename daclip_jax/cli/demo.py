"""`daclip-jax demo`: train DA-CLIP and the IR-SDE restorer on scikit-image's bundled photos,
evaluate on held-out photos, write a report with pictures and export PyTorch weights.

    daclip-jax demo --workdir runs/demo                         # the default run
    daclip-jax demo --workdir /tmp/demo --config :smoke         # ~1 minute smoke run
    daclip-jax demo --workdir runs/demo --config configs/demo.py --config.restoration.steps=2000
    daclip-jax demo --workdir runs/demo --config.clip.init=open_clip_ViT-B-32.bin  # pretrained CLIP

The default config is embedded in the package (daclip_jax/demo/config.py); `--config FILE[:ARG]`
loads another one (configs/demo.py is the same default as a file), `--config :smoke` the
embedded one with an arg. `--config.a.b=v` overrides any field. Re-running the same command
resumes an interrupted run.
"""

from __future__ import annotations

import argparse

from daclip_jax.cli.train import _OverrideParser, _prepare_runtime


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="the end-to-end demo on bundled photos (train, eval, report, export)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.__class__ = _OverrideParser
    p.add_argument("--workdir", required=True, help="output directory (data, runs, export, report)")
    p.add_argument("--config", default="",
                   help="config FILE[:ARG]; default: the embedded demo config (':smoke' for the smoke size)")
    p.set_defaults(func=run)


def load_demo_config(spec: str, overrides=()):
    from daclip_jax import demo
    from daclip_jax.train.configlib import apply_overrides, load_config, split_spec

    path, arg = split_spec(spec or "")
    config = load_config(spec) if path else demo.get_config(arg)
    return apply_overrides(config, overrides)


def run(args) -> int:
    _prepare_runtime()
    from daclip_jax import demo

    config = load_demo_config(args.config, args.overrides)
    demo.run(config, args.workdir)
    return 0
