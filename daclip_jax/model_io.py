"""Our own model directories: `<dir>/daclip_jax.json` (kind + model config) and
`<dir>/params/` (an orbax checkpoint of the model's pure parameter dict).

Used by every loader (`load_daclip`, `load_unet`) and by `daclip-jax import`; the
trainers write the same layout when exporting the final weights, so anything a
training run produces can be fed straight to `classify` / `restore`.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

META_FILE = "daclip_jax.json"
FORMAT_VERSION = 1


def is_model_dir(path: str | os.PathLike) -> bool:
    return os.path.isfile(os.path.join(path, META_FILE))


def save_model_dir(path, kind: str, config: dict, params: dict) -> None:
    """Write `params` (nested dict of arrays) with orbax and the metadata json."""
    import orbax.checkpoint as ocp

    path = os.path.abspath(path)
    os.makedirs(path, exist_ok=True)
    params = _to_numpy(params)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(os.path.join(path, "params"), params, force=True)
    ckptr.wait_until_finished()
    with open(os.path.join(path, META_FILE), "w") as f:
        json.dump({"format_version": FORMAT_VERSION, "kind": kind, "config": config}, f,
                  indent=2, sort_keys=True)


def load_model_dir(path, expected_kind: str | None = None) -> tuple[str, dict, dict]:
    """Return (kind, config, params) with params as a nested dict of numpy arrays."""
    import orbax.checkpoint as ocp

    path = os.path.abspath(path)
    if not is_model_dir(path):
        raise FileNotFoundError(f"{path}: not a daclip-jax model directory (no {META_FILE})")
    with open(os.path.join(path, META_FILE)) as f:
        meta = json.load(f)
    kind = meta["kind"]
    if expected_kind is not None and kind != expected_kind:
        raise ValueError(f"{path}: holds a {kind!r} model, expected {expected_kind!r}")
    params = ocp.StandardCheckpointer().restore(os.path.join(path, "params"))
    return kind, meta["config"], _to_numpy(params)


def _to_numpy(tree: Any) -> Any:
    import jax

    return jax.tree.map(np.asarray, tree)
