"""DA-CLIP training (official ``da-clip/src/training``, ``--da``): a frozen CLIP, a trainable
image controller + ``logit_scale``, and DaClipLoss on the degraded image's CLIP view:

    loss = ClipLoss(content features, caption) + ClipLoss(degradation features, degradation words)

computed on the global batch under jit (XLA moves the features between devices; there
is no hand-written all-gather). After every update ``logit_scale`` is clamped to
[0, ln 100] as open_clip's train loop does.

Evaluation: zero-shot degradation accuracy (softmax(100·cos) against the ten words, as
the official README / ``classify``) per type on the held-out split with a confusion
matrix, and image↔caption retrieval recall@1 of the content features.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from daclip_jax import parallel
from daclip_jax.eval import metrics as M
from daclip_jax.labels import DEGRADATIONS
from daclip_jax.train.core import Task, jit_init

LOGIT_SCALE_MAX = math.log(100)


def clip_config(mc):
    from daclip_jax.models.clip import CLIPConfig
    return CLIPConfig.named(mc.name, dtype=mc.get("dtype", "float32"),
                            remat=bool(mc.get("remat", False)))


def clamp_logit_scale(params):
    """open_clip: ``logit_scale.clamp_(0, math.log(100))`` after each optimiser step."""
    return jax.tree_util.tree_map_with_path(
        lambda p, x: jnp.clip(x, 0.0, LOGIT_SCALE_MAX)
        if parallel.path_str(p).split("/")[-1] == "logit_scale" else x, params)


@functools.partial(jax.jit, static_argnums=0)
def _daclip_features(graphdef, state, images, captions, words):
    model = nnx.merge(graphdef, state)
    content, degra = model.encode_image(images, control=True, normalize=True)
    text = model.encode_text(captions, normalize=True)
    word_features = model.encode_text(words, normalize=True)
    return content, degra, text, jnp.argmax(degra @ word_features.T, axis=-1)


class DaClipTask(Task):
    name = "daclip"
    batch_keys = ("lq_clip", "caption_tokens", "degradation_tokens")

    @property
    def trainable(self):
        from daclip_jax.models.daclip import TRAINABLE
        return TRAINABLE

    def build_model(self, rngs: nnx.Rngs):
        """``model.init``: a CLIP (open_clip .pt/.bin, HF dir, our 'clip' dir) to start from,
        or a DA-CLIP to fine-tune; empty = random CLIP (smoke tests only).
        ``model.controller_init``: 'zero' (copy of the tower, zero control), 'official'
        (the official init with its ln_post/zero_modules[0] mix-up, to reproduce the
        released run) or 'keep' (use the controller of a DA-CLIP checkpoint)."""
        from daclip_jax.models.daclip import DaCLIP, init_controller_from_clip
        mc = self.config.model
        cfg = clip_config(mc)
        if mc.get("init"):
            from daclip_jax.convert.daclip import load_daclip
            model = load_daclip(mc.init, dtype=cfg.dtype, remat=cfg.remat)
        else:
            seed = int(self.config.get("seed", 0))
            model = jit_init(lambda: DaCLIP(cfg, rngs=nnx.Rngs(seed)))
        how = mc.get("controller_init", "zero")
        if how in ("zero", "official"):
            init_controller_from_clip(model, official_init_bug=how == "official")
        elif how != "keep":
            raise ValueError(f"model.controller_init must be zero|official|keep, got {how!r}")
        return model

    def loss(self, model, batch, rng):
        from daclip_jax.losses import daclip_loss
        text = jnp.concatenate([batch["caption_tokens"], batch["degradation_tokens"]], axis=-1)
        outputs = model(batch["lq_clip"], text)
        outputs = {k: parallel.constrain_batch(v) if v.ndim == 2 else v for k, v in outputs.items()}
        loss, parts = daclip_loss(outputs)
        return loss, dict(parts, logit_scale=outputs["logit_scale"])

    def project(self, params):
        return clamp_logit_scale(params)

    def evaluate(self, model, batches, mesh):
        from daclip_jax.tokenizer import tokenize
        graphdef, state = nnx.split(model)
        words = jnp.asarray(tokenize(list(DEGRADATIONS), context_length=model.cfg.context_length))
        content, degra_img, captions, preds, labels = [], [], [], [], []
        for b in batches:
            c, _, t, p = parallel.fetch(_daclip_features(graphdef, state, b["lq_clip"],
                                                         b["caption_tokens"], words))
            content.append(c)
            captions.append(t)
            preds.append(p)
            labels.append(parallel.fetch(b["degradation_index"]))
        cm = M.confusion_matrix(np.concatenate(labels), np.concatenate(preds), len(DEGRADATIONS))
        scores = M.zero_shot_accuracy(cm)
        scores.update(M.recall_at_k(np.concatenate(content), np.concatenate(captions), k=1))
        return scores, {"confusion": M.confusion_image(cm)}

    def export(self, model, path):
        from daclip_jax.convert.daclip import save_daclip
        save_daclip(model, path)
