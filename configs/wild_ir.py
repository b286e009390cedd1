"""Wild restoration (config/wild-ir/options/train.yml): the wild DA-CLIP ViT-L/14
conditions a ConditionalUNet (context 768, content cross-attention only — no degradation
prompt — and the extra half-scale down/up, `scale: 0.5`) on real-world / randomly mixed
degradations; posterior sampling. AdamW lr 2e-4, betas (0.9, 0.99), cosine to 1e-6 over
500k iterations, batch 16 x 256^2, EMA 0.995/10, validation every 5k iterations.

    daclip-jax train --config configs/wild_ir.py --workdir runs/wild_ir \\
        --config.model.daclip=pretrained/wild-daclip_ViT-L-14.pt \\
        --config.data.source.path=/datasets/clean_images

Degradations come from `daclip_jax.data.wild.random_degrade` (data.degradation.mode=wild)
unless the source is paired (real LQ). Expect val/psnr to keep rising through the first
100k iterations; this run is ~3x slower per step than universal_ir (ViT-L/14 context).

Smoke run: `--config configs/wild_ir.py:runlocal,data=/path/to/images`.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from universal_ir import restoration_base, runlocal_restoration  # noqa: E402

from daclip_jax.train.configlib import parse_arg  # noqa: E402


def get_config(arg=None):
    arg = parse_arg(arg, runlocal=False, data="", batch=16)
    c = restoration_base(arg)
    c.model.unet = "wild-ir"
    c.model.daclip_name = "ViT-L-14"
    c.data.degradation.mode = "wild"
    c.train.steps = 500_000
    c.eval.every = 5_000
    c.ckpt.every = 10_000
    c.eval.sampler = "posterior"
    if arg.runlocal:
        runlocal_restoration(c, arg.data)
        c.model.unet = "tiny"   # the tiny preset keeps both contexts (no wild-sized tiny net)
    return c
