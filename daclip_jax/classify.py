"""Degradation classification with DA-CLIP, as in the official README:

    _, degra = model.encode_image(image, control=True)      # normalised
    text = model.encode_text(tokenize(DEGRADATIONS))        # normalised
    probs = softmax(100 · degra @ textᵀ)

The fixed 100 (not the learned logit scale) is the official choice.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from daclip_jax.labels import DEGRADATIONS

SCALE = 100.0


@functools.partial(jax.jit, static_argnums=(0, 4))
def _probs(graphdef, state, images, word_tokens, control=True):
    model = nnx.merge(graphdef, state)
    if control:
        _, degra = model.encode_image(images, control=True, normalize=True)
    else:   # the frozen CLIP's own image embedding: the baseline the controller improves on
        degra = model.encode_image(images, normalize=True)
    text = model.encode_text(word_tokens, normalize=True)
    return jax.nn.softmax(SCALE * degra @ text.T, axis=-1)


def classify_degradation(model, images, words: Sequence[str] = DEGRADATIONS, *,
                         control: bool = True) -> np.ndarray:
    """(N, H, W, 3) CLIP-preprocessed images -> (N, len(words)) probabilities.

    control=False scores the plain CLIP image embedding instead of the controller's
    degradation embedding (what zero-shot CLIP would answer without DA-CLIP)."""
    from daclip_jax.tokenizer import tokenize

    tokens = jnp.asarray(tokenize(list(words), context_length=model.cfg.context_length))
    graphdef, state = nnx.split(model)
    return np.asarray(_probs(graphdef, state, jnp.asarray(images, jnp.float32), tokens, control))


def classify_files(model, paths: Sequence[str | os.PathLike], *, batch_size: int = 8,
                   words: Sequence[str] = DEGRADATIONS):
    """Yield (path, probs (len(words),) or None, error message or None) per file, in order.

    Unreadable files give a one-line error naming the file; the others are still answered.
    """
    from daclip_jax.imageio import read_image
    from daclip_jax.preprocess import preprocess

    size = model.cfg.image_size
    pending: list[tuple[str, np.ndarray]] = []

    def flush():
        probs = classify_degradation(model, np.stack([x for _, x in pending]), words)
        out = [(p, pr, None) for (p, _), pr in zip(pending, probs)]
        pending.clear()
        return out

    for path in paths:
        path = os.fspath(path)
        try:
            # alpha dropped, not composited: the official README feeds
            # Image.open(path).convert("RGB"), which keeps the RGB planes as they are
            image = read_image(path, alpha="drop")
            view = preprocess(image, size=size)
        except (ValueError, OSError) as e:  # ImageReadError is a ValueError
            msg = str(e) if path in str(e) else f"{path}: {' '.join(str(e).split())}"
            yield from flush() if pending else ()
            yield path, None, msg
            continue
        pending.append((path, view))
        if len(pending) == batch_size:
            yield from flush()
    if pending:
        yield from flush()
