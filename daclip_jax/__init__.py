"""daclip-jax: DA-CLIP and IR-SDE universal image restoration in JAX/Flax.

Public API (names are a contract; imported lazily so `import daclip_jax` and the
CLI start fast):

      model = daclip_jax.load_daclip(path)
      tokens = daclip_jax.tokenize(["hazy", "a photo of a cat"])
      x = daclip_jax.preprocess(pil_image)
      content, degradation = model.encode_image(x[None], control=True)
      probs = daclip_jax.classify_degradation(model, x[None])
      unet = daclip_jax.load_unet(path)
      sde = daclip_jax.IRSDE(max_sigma=50, T=100, schedule="cosine", eps=0.005)
      restored = daclip_jax.restore_image(model, unet, lq, sde, steps=100)
"""

import importlib

from daclip_jax.labels import DEGRADATIONS
from daclip_jax.platforms import prefer_cpu_without_chips
# `preprocess` is both a submodule and the function it exports: bind the function eagerly, or
# the first `import daclip_jax.preprocess` anywhere would replace it with the module.
from daclip_jax.preprocess import preprocess

__version__ = "0.1.0"

# libtpu (the `tpu` extra) on a host without TPU chips: start on CPU directly instead of
# probing for chips (platforms.py says what the probe costs)
prefer_cpu_without_chips()

# public name -> module that defines it
_LAZY = {
    "load_daclip": "daclip_jax.convert.daclip",
    "tokenize": "daclip_jax.tokenizer",
    "classify_degradation": "daclip_jax.classify",
    "load_unet": "daclip_jax.convert.unet",
    "IRSDE": "daclip_jax.sde",
    "restore_image": "daclip_jax.restore",
}

__all__ = ["DEGRADATIONS", "preprocess", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'daclip_jax' has no attribute {name!r}")
