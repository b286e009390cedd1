"""CLIP from scratch: the same trainer with the plain CLIP contrastive loss on clean
images and their captions (the demo needs a CLIP where no pretrained one is available
offline; ``daclip`` training then starts from this run's exported ``model`` dir).
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from flax import nnx

from daclip_jax import parallel
from daclip_jax.eval import metrics as M
from daclip_jax.train.core import Task, jit_init
from daclip_jax.train.daclip_task import clamp_logit_scale, clip_config


@functools.partial(jax.jit, static_argnums=0)
def _clip_features(graphdef, state, images, captions):
    model = nnx.merge(graphdef, state)
    return (model.encode_image(images, normalize=True),
            model.encode_text(captions, normalize=True))


class ClipTask(Task):
    name = "clip"
    trainable = nnx.Param
    batch_keys = ("clean_clip", "caption_tokens")

    def build_model(self, rngs):
        from daclip_jax.models.clip import CLIP
        cfg, seed = clip_config(self.config.model), int(self.config.get("seed", 0))
        return jit_init(lambda: CLIP(cfg, rngs=nnx.Rngs(seed)))

    def loss(self, model, batch, rng):
        from daclip_jax.losses import clip_loss
        out = model(batch["clean_clip"], batch["caption_tokens"])
        img = parallel.constrain_batch(out["image_features"])
        txt = parallel.constrain_batch(out["text_features"])
        loss = clip_loss(img, txt, out["logit_scale"])
        return loss, dict(logit_scale=out["logit_scale"])

    def project(self, params):
        return clamp_logit_scale(params)

    def evaluate(self, model, batches, mesh):
        graphdef, state = nnx.split(model)
        imgs, txts = [], []
        for b in batches:
            i, t = parallel.fetch(_clip_features(graphdef, state, b["clean_clip"],
                                                 b["caption_tokens"]))
            imgs.append(i)
            txts.append(t)
        return M.recall_at_k(np.concatenate(imgs), np.concatenate(txts), k=1), {}

    def export(self, model, path):
        """Our model dir of kind 'clip' (``load_daclip`` wraps it with a fresh controller)."""
        from daclip_jax.convert.daclip import save_clip
        save_clip(model, path)  # collective under orbax
