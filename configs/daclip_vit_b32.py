"""The official DA-CLIP run: ViT-B/32 (laion2b_s34b_b79k) frozen + trainable controller.

Recipe (da-clip/src/multi_train.sh + open_clip defaults for ViT): DaClipLoss on the
degraded image's CLIP view; AdamW lr 3e-5, weight decay 0.05, betas (0.9, 0.98), eps
1e-6; 100 linear warm-up steps, cosine to 0; global batch 4 x 784 = 3136; 100 epochs;
`logit_scale` clamped to [0, ln 100]; AMP (here: float32 unless --config.model.dtype=bfloat16).

    daclip-jax train --config configs/daclip_vit_b32.py --workdir runs/daclip_b32 \\
        --config.model.init=open_clip_ViT-B-32_laion2b_s34b_b79k.bin \\
        --config.data.source.kind=csv --config.data.source.path=datasets/universal/daclip_train.csv

`n_train` (config arg) is the number of training images: steps = epochs * n_train / batch.
The default 40000 is a placeholder — set it to your dataset's size. What to expect:
train/degra_loss falls much faster than train/contrastive_loss (ten degradation words vs.
free captions) and val/accuracy (zero-shot degradation accuracy on the held-out split)
approaches 1 for single synthetic degradations; val/accuracy/<type> and the confusion
image in TensorBoard show which types are still mixed up.

Smoke run (tiny random CLIP, a folder of any images, ~1 min on 2 CPU cores):

    daclip-jax train --config configs/daclip_vit_b32.py:runlocal,data=/path/to/images \\
        --workdir /tmp/daclip_smoke

Sweep (learning rate x batch): `daclip-jax sweep --config configs/daclip_vit_b32.py --dry-run`.
"""

import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import base_config, runlocal  # noqa: E402

from daclip_jax.train.configlib import parse_arg, product, sweep  # noqa: E402


def get_config(arg=None):
    arg = parse_arg(arg, runlocal=False, data="", batch=3136, epochs=100, n_train=40000)
    c = base_config("daclip")
    c.model.name = "ViT-B-32"
    c.model.init = ""                 # pretrained CLIP (or DA-CLIP) weights to start from
    c.model.controller_init = "zero"  # zero | official (reproduce the released init) | keep
    c.model.dtype = "float32"         # compute dtype; "bfloat16" on TPU/GPU
    c.model.remat = False             # open_clip --grad-checkpointing

    c.data.patch_size = 224
    c.data.clip_size = 224
    c.data.degradation.mode = "single"  # one of the ten types per image, as the official CSV
    c.data.holdout_fraction = 0.01

    c.train.batch_size = arg.batch
    c.train.steps = max(1, math.ceil(arg.epochs * arg.n_train / arg.batch))
    c.train.lr = 3e-5
    c.train.weight_decay = 0.05
    c.train.b1, c.train.b2, c.train.eps = 0.9, 0.98, 1e-6
    c.train.warmup_steps = 100
    c.train.end_lr = 0.0
    c.train.log_every = 20

    c.ckpt.every = 500
    c.ckpt.best_metric = "val/accuracy"
    c.eval.every = 500
    c.eval.batches = 8
    c.eval.batch_size = 256

    if arg.runlocal:
        c.model.name = "daclip_tiny"
        c.data.patch_size = 32
        c.data.clip_size = 32
        runlocal(c, arg.data)
    return c


def get_sweep(arg=None):
    return product([sweep("train.lr", [1e-5, 3e-5, 1e-4]),
                    sweep("train.weight_decay", [0.05, 0.2])])
