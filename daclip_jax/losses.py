"""Contrastive losses of open_clip / DA-CLIP (ClipLoss, DaClipLoss), as pure functions.

They take the features of the whole (global) batch: under jit with sharded inputs XLA
inserts the communication, so there is no explicit all-gather as in the torch code.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def clip_loss(image_features, text_features, logit_scale):
    """½[CE(s·I·Tᵀ, arange) + CE(s·T·Iᵀ, arange)], mean over the batch (open_clip ClipLoss)."""
    image_features = image_features.astype(jnp.float32)
    text_features = text_features.astype(jnp.float32)
    logits_per_image = logit_scale * image_features @ text_features.T
    labels = jnp.arange(logits_per_image.shape[0])
    ce = optax.softmax_cross_entropy_with_integer_labels
    return 0.5 * (ce(logits_per_image, labels).mean() + ce(logits_per_image.T, labels).mean())


def daclip_loss(outputs: dict) -> tuple[jax.Array, dict]:
    """DaClipLoss on the DaCLIP forward dict -> (total, {contrastive_loss, degra_loss}).

    Both terms use the same (DaCLIP's) logit_scale; training minimises their sum."""
    s = outputs["logit_scale"]
    contrastive = clip_loss(outputs["image_features"], outputs["text_features"], s)
    degra = clip_loss(outputs["image_degra_features"], outputs["text_degra_features"], s)
    return contrastive + degra, dict(contrastive_loss=contrastive, degra_loss=degra)
