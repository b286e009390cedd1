"""Training data: image sources, captions, degradation synthesis and the grain pipeline.

    from daclip_jax.data import DEGRADATIONS, degrade
    from daclip_jax.data.pipeline import build_pipeline, default_data_config

Submodules:
    degradations  on-the-fly synthesis of the ten DA-CLIP degradation types (`degrade`).
    wild          Real-ESRGAN-style "wild" degradations (`random_degrade`).
    sources       random-access image sources (folders, official paired layout/CSV, TFDS, ArrayRecord).
    captions      caption providers (caption files, templates, local BLIP, "a photo" fallback).
    pipeline      `build_pipeline(data_cfg, ...)`: a grain IterDataset of training batches.
    pack          pack any source into ArrayRecord shards.
    preview       a clean | degraded grid for eyeballing the synthesis.
    global_batch  per-process numpy batches -> global jax.Arrays.

Heavy submodules are imported lazily so `import daclip_jax.data` is cheap and never fails.
"""

import importlib

from daclip_jax.labels import DEGRADATIONS

# public name -> module that defines it
_LAZY = {
    "degrade": "daclip_jax.data.degradations",
}

__all__ = ["DEGRADATIONS", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'daclip_jax.data' has no attribute {name!r}")
