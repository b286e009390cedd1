"""Reading and writing PyTorch state dicts without ever executing pickle code.

`torch.load(weights_only=True)` only rebuilds tensors and plain containers and refuses
any other global, so a `.pt` crafted to run code on unpickling fails here with an error
instead of running it. Every importer goes through `load_state_dict`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not match the expected layout."""


def _torch():
    try:
        import torch
    except ImportError as e:  # torch is an optional extra
        raise ImportError(
            "reading/writing PyTorch checkpoints needs torch: pip install 'daclip-jax[torch]'"
        ) from e
    return torch


def load_state_dict(path: str | os.PathLike, *, unwrap_keys=("state_dict",)) -> dict[str, np.ndarray]:
    """Load a torch checkpoint as {key: float32/int numpy array}.

    Accepts a bare state dict or a training checkpoint whose state dict sits under one of
    `unwrap_keys` (other entries such as `optimizer`, `scaler`, `epoch` are ignored).
    Key prefixes are left alone: each format's importer applies its own rule.
    """
    torch = _torch()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for unsafe globals, RuntimeError for corrupt zips
        raise CheckpointError(
            f"{path}: refused or unreadable as a weights-only PyTorch checkpoint "
            f"(no code from it was run): {type(e).__name__}: {str(e).splitlines()[0]}") from e
    if isinstance(obj, Mapping):
        for k in unwrap_keys:
            if k in obj and isinstance(obj[k], Mapping):
                obj = obj[k]
                break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor")
        out[str(k)] = v.detach().cpu().numpy()
    return out


def save_state_dict(state_dict: Mapping[str, np.ndarray], path: str | os.PathLike,
                    *, wrap_key: str | None = None) -> None:
    """Write {key: numpy array} as a torch checkpoint (optionally under `wrap_key`).

    0-d arrays stay 0-d (`logit_scale` must be a scalar for strict loading), and keys that
    hold the same array object (DA-CLIP's `visual.*` = `clip.visual.*` aliases) share one
    tensor, so torch.save stores them once, as the official state_dict does.
    """
    torch = _torch()
    from collections import OrderedDict

    tensors: dict[int, object] = {}
    sd = OrderedDict()
    for k, v in state_dict.items():
        if id(v) not in tensors:
            tensors[id(v)] = torch.from_numpy(np.array(v, order="C"))
        sd[k] = tensors[id(v)]
    obj = {wrap_key: sd} if wrap_key else sd
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save(obj, os.fspath(path))


def check_layout(state_dict: Mapping[str, np.ndarray], expected: Mapping[str, tuple],
                 *, source: str = "checkpoint") -> None:
    """Fail with a message naming the first missing, extra or mis-shaped key."""
    missing = [k for k in expected if k not in state_dict]
    extra = [k for k in state_dict if k not in expected]
    bad = [(k, tuple(state_dict[k].shape), tuple(s)) for k, s in expected.items()
           if k in state_dict and tuple(state_dict[k].shape) != tuple(s)]
    problems = []
    if missing:
        problems.append(f"missing key {missing[0]!r}" + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""))
    if extra:
        problems.append(f"unexpected key {extra[0]!r}" + (f" (+{len(extra) - 1} more)" if len(extra) > 1 else ""))
    if bad:
        k, got, want = bad[0]
        problems.append(f"key {k!r} has shape {got}, expected {want}"
                        + (f" (+{len(bad) - 1} more)" if len(bad) > 1 else ""))
    if problems:
        raise CheckpointError(f"{source}: " + "; ".join(problems))
