"""A small CLIP trained from scratch on clean images + captions (plain CLIP loss).

For offline demos where no pretrained CLIP exists: the exported `<workdir>/model` (kind
"clip") is what `configs/daclip_vit_b32.py` starts from via `--config.model.init`.

    daclip-jax train --config configs/clip_scratch.py:data=/path/to/images \\
        --workdir runs/clip_small --config.data.caption.kind=file \\
        --config.data.caption.path=/path/to/captions.json

What to expect: train/loss starts near ln(batch) and falls; val/image_to_text_R@1 rises
above chance (1/batch) once the towers align. `model.name` picks the architecture
("daclip_tiny" by default, "ViT-B-32" for the real one).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import base_config, runlocal  # noqa: E402

from daclip_jax.train.configlib import parse_arg  # noqa: E402


def get_config(arg=None):
    arg = parse_arg(arg, runlocal=False, data="", batch=64, steps=2000, model="daclip_tiny")
    c = base_config("clip")
    c.model.name = arg.model
    c.model.dtype = "float32"
    c.model.remat = False
    c.data.source.path = arg.data
    c.data.patch_size = 64
    c.data.clip_size = 32 if arg.model == "daclip_tiny" else 224
    c.data.holdout_fraction = 0.1
    c.train.batch_size = arg.batch
    c.train.steps = arg.steps
    c.train.lr = 5e-4
    c.train.weight_decay = 0.2
    c.train.b1, c.train.b2, c.train.eps = 0.9, 0.98, 1e-6
    c.train.warmup_steps = min(100, arg.steps // 10)
    c.ckpt.every = 500
    c.ckpt.best_metric = "val/image_to_text_R@1"
    c.eval.every = 500
    c.eval.batch_size = arg.batch
    if arg.runlocal:
        c.data.patch_size = 32
        runlocal(c, arg.data)
    return c
