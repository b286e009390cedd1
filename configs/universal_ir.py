"""The official universal restoration run (config/daclip-sde/options/train.yml).

ConditionalUNet nf 64, ch_mult (1,2,4,8), context 512, degradation prompt + content
cross-attention, conditioned by the frozen DA-CLIP ViT-B/32; IR-SDE max_sigma 50, T 100,
cosine schedule, eps 0.005; maximum-likelihood L1 loss; AdamW lr 2e-4, betas (0.9, 0.99),
no weight decay, no warm-up, cosine to 1e-6 over 700k iterations; batch 16 of 256x256
patches with flips/rotations; EMA beta 0.995 every 10 steps (ema_pytorch); validation
every 10k iterations.

    daclip-jax train --config configs/universal_ir.py --workdir runs/universal_ir \\
        --config.model.daclip=pretrained/daclip_ViT-B-32.pt \\
        --config.data.source.kind=paired --config.data.source.path=datasets/universal/train

What to expect: train/loss (the L1 between predicted and optimal x_{t-1}) drops fast in
the first thousands of steps, then slowly; val/psnr and val/ssim (per type under
val/psnr/<type>) rise over the run. Validation samples with `eval.sample_steps` = 20
posterior steps for speed, which scores below the 100-step test protocol; evaluate the
final `model_ema` with `daclip-jax eval` at 100 steps for numbers comparable to the paper.

Smoke run (tiny UNet + random tiny DA-CLIP, synthetic degradations, ~1-2 min on CPU):

    daclip-jax train --config configs/universal_ir.py:runlocal,data=/path/to/images \\
        --workdir /tmp/ir_smoke
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import base_config, runlocal  # noqa: E402

import ml_collections  # noqa: E402

from daclip_jax.train.configlib import parse_arg, sweep, zipped  # noqa: E402


def restoration_base(arg):
    c = base_config("restoration")
    c.model.unet = "universal-ir"
    c.model.unet_overrides = {}    # UNetConfig fields over the preset, e.g. {"nf": 32}
    # what the UNet outputs: "noise" (official; the released weights) | "x0" (the clean image's
    # residual: starts from "change nothing", converges in far fewer steps; sde.py)
    c.model.parameterization = "noise"
    c.model.init = ""          # UNet weights to fine-tune from (official .pth or our dir)
    c.model.daclip = ""        # frozen DA-CLIP: official .pt, our model dir, ...
    c.model.daclip_name = "ViT-B-32"   # architecture of a random DA-CLIP when daclip is ""
    c.model.daclip_dtype = "float32"   # the official code runs it under fp16 autocast on GPU
    c.model.dtype = "float32"
    c.model.remat = False
    c.sde = ml_collections.ConfigDict(dict(max_sigma=50.0, T=100, schedule="cosine", eps=0.005))

    c.data.patch_size = 256
    c.data.clip_size = 224
    c.data.degradation.mode = "single"
    c.data.holdout_fraction = 0.01

    c.train.batch_size = arg.batch
    c.train.steps = 700_000
    c.train.lr = 2e-4
    c.train.b1, c.train.b2 = 0.9, 0.99
    c.train.weight_decay = 0.0
    c.train.warmup_steps = 0
    c.train.end_lr = 1e-6
    c.train.loss_type = "l1"
    c.train.x0_weighting = "ml"    # "x0" nets: "ml" (the official loss with x0_hat) | "uniform"
    c.train.t_max_prob = 0.0       # fraction of training states drawn at t = T (0: official uniform)
    c.train.log_every = 200

    c.ema.decay = 0.995
    c.ema.every = 10
    c.ema.after = 100

    c.ckpt.every = 10_000
    c.ckpt.best_metric = "val/psnr"
    c.eval.every = 10_000
    c.eval.batches = 8
    c.eval.batch_size = 8
    c.eval.sampler = "posterior"
    c.eval.sample_steps = 20
    return c


def runlocal_restoration(c, data):
    c.model.unet = "tiny"
    c.model.daclip_name = "daclip_tiny"
    c.data.patch_size = 32
    c.data.clip_size = 32
    runlocal(c, data)
    c.eval.sample_steps = 3
    return c


def get_config(arg=None):
    arg = parse_arg(arg, runlocal=False, data="", batch=16)
    c = restoration_base(arg)
    if arg.runlocal:
        runlocal_restoration(c, arg.data)
    return c


def get_sweep(arg=None):
    # batch and lr scaled together (linear rule), each pair one run
    return zipped([sweep("train.batch_size", [16, 32, 64]),
                   sweep("train.lr", [2e-4, 4e-4, 8e-4])])
