"""open_clip CLIP state dicts <-> daclip_jax.models.clip.CLIP.

The key layout is open_clip's `CLIP.state_dict()` (also the `clip.*` part of a DA-CLIP
checkpoint without its prefix): .pt/.bin through torch (weights only), or .safetensors
(no torch needed). This is how DA-CLIP training starts from laion2b ViT-B-32 weights.

The key <-> parameter-path table (`clip_key_table`) is generated from the config in the
torch state-dict order, and shared with the DA-CLIP converter.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from daclip_jax.convert import torch_io
from daclip_jax.convert.torch_io import CheckpointError, check_layout
from daclip_jax.models.clip import CLIP, CLIPConfig

# transform kinds: torch array -> flax array
#   "id": unchanged; "linear": (out, in) -> (in, out); "conv": OIHW -> HWIO
_TO_FLAX = {
    "id": lambda a: a,
    "linear": lambda a: a.T,
    "conv": lambda a: a.transpose(2, 3, 1, 0),
}
_TO_TORCH = {
    "id": lambda a: a,
    "linear": lambda a: a.T,
    "conv": lambda a: a.transpose(3, 2, 0, 1),
}

# keys in some open_clip / OpenAI state dicts that carry no weights
_IGNORED_KEYS = ("attn_mask", "input_resolution", "context_length", "vocab_size")


def _ln(key, path):
    return [(key + ".weight", path + ("scale",), "id"), (key + ".bias", path + ("bias",), "id")]


def _linear(key, path):
    return [(key + ".weight", path + ("kernel",), "linear"), (key + ".bias", path + ("bias",), "id")]


def block_key_table(key, path):
    """One ResidualAttentionBlock."""
    return [
        *_ln(key + "ln_1", path + ("ln_1",)),
        (key + "attn.in_proj_weight", path + ("attn", "in_proj", "kernel"), "linear"),
        (key + "attn.in_proj_bias", path + ("attn", "in_proj", "bias"), "id"),
        *_linear(key + "attn.out_proj", path + ("attn", "out_proj")),
        *_ln(key + "ln_2", path + ("ln_2",)),
        *_linear(key + "mlp.c_fc", path + ("mlp", "c_fc")),
        *_linear(key + "mlp.c_proj", path + ("mlp", "c_proj")),
    ]


def vision_key_table(cfg: CLIPConfig, key, path, *, control: bool = False):
    """A VisionTransformer (or, with control=True, the DA-CLIP controller) in torch order:
    own parameters first, then submodules in registration order."""
    rows = [
        (key + "class_embedding", path + ("class_embedding",), "id"),
        (key + "positional_embedding", path + ("positional_embedding",), "id"),
        (key + "proj", path + ("proj",), "id"),
        (key + "conv1.weight", path + ("conv1", "kernel"), "conv"),
        *_ln(key + "ln_pre", path + ("ln_pre",)),
    ]
    tkey, tpath = key + "transformer.", path + ("transformer",)
    if control:  # ControlTransformer wraps a Transformer: the doubled `transformer.`
        for i in range(cfg.vision_layers):
            rows += block_key_table(f"{tkey}transformer.resblocks.{i}.",
                                    tpath + ("transformer", "resblocks", i))
        for i in range(cfg.vision_layers):
            rows += _linear(f"{tkey}zero_modules.{i}", tpath + ("zero_modules", i))
    else:
        for i in range(cfg.vision_layers):
            rows += block_key_table(f"{tkey}resblocks.{i}.", tpath + ("resblocks", i))
    rows += _ln(key + "ln_post", path + ("ln_post",))
    return rows


def clip_key_table(cfg: CLIPConfig, key: str = "", path: tuple = ()):
    """[(torch key, parameter path, transform)] for an open_clip CLIP, in state-dict order."""
    rows = [
        (key + "positional_embedding", path + ("positional_embedding",), "id"),
        (key + "text_projection", path + ("text_projection",), "id"),
        (key + "logit_scale", path + ("logit_scale",), "id"),
        *vision_key_table(cfg, key + "visual.", path + ("visual",)),
    ]
    for i in range(cfg.text_layers):
        rows += block_key_table(f"{key}transformer.resblocks.{i}.", path + ("transformer", "resblocks", i))
    rows += [(key + "token_embedding.weight", path + ("token_embedding", "embedding"), "id"),
             *_ln(key + "ln_final", path + ("ln_final",))]
    return rows


# ---------------------------------------------------------------- config inference

def _count_blocks(sd: Mapping, prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    ids = {int(m.group(1)) for k in sd for m in [pat.match(k)] if m}
    return max(ids) + 1 if ids else 0


def infer_config(sd: Mapping[str, np.ndarray], key: str = "", *, quick_gelu: bool = False) -> CLIPConfig:
    """CLIPConfig from the shapes of an open_clip CLIP state dict (keys under `key`).

    Head counts are not visible in the shapes: a named config with the same shapes gives
    them (ViT-B/L, daclip_tiny), otherwise open_clip's default head width 64 is assumed.
    """
    try:
        conv = sd[key + "visual.conv1.weight"]
        pos = sd[key + "visual.positional_embedding"]
        grid = int(round((pos.shape[0] - 1) ** 0.5))
        shapes = dict(
            embed_dim=int(sd[key + "visual.proj"].shape[1]),
            image_size=grid * int(conv.shape[2]),
            patch_size=int(conv.shape[2]),
            vision_width=int(conv.shape[0]),
            vision_layers=_count_blocks(sd, key + "visual.transformer.resblocks."),
            context_length=int(sd[key + "positional_embedding"].shape[0]),
            vocab_size=int(sd[key + "token_embedding.weight"].shape[0]),
            text_width=int(sd[key + "token_embedding.weight"].shape[1]),
            text_layers=_count_blocks(sd, key + "transformer.resblocks."),
        )
    except KeyError as e:
        raise CheckpointError(f"not an open_clip CLIP layout: missing key {e.args[0]!r}") from None
    if shapes["vision_layers"] == 0:  # DA-CLIP controller nests one level deeper; never here
        raise CheckpointError(f"no {key}visual.transformer.resblocks.* keys found")
    for cfg in _named_candidates():
        if all(getattr(cfg, f) == v for f, v in shapes.items()):
            return cfg.replace(quick_gelu=quick_gelu)
    if shapes["vision_width"] % 64 or shapes["text_width"] % 64:
        raise CheckpointError(f"cannot infer attention heads for widths {shapes['vision_width']}/"
                              f"{shapes['text_width']}; pass the config explicitly")
    return CLIPConfig(**shapes, vision_head_width=64, text_heads=shapes["text_width"] // 64,
                      quick_gelu=quick_gelu)


def _named_candidates():
    return [CLIPConfig.named(n) for n in ("ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336",
                                          "daclip_tiny")]


# ---------------------------------------------------------------- state dict <-> module

def module_from_table(abstract: nnx.Module, sd: Mapping[str, np.ndarray], table, *,
                      source: str = "checkpoint") -> nnx.Module:
    """Fill an (abstract, from nnx.eval_shape) module from a torch state dict via `table`."""
    graphdef, state = nnx.split(abstract)
    flat = dict(nnx.to_flat_state(state))
    covered = {path for _, path, _ in table}
    if covered != set(flat):  # the table is generated from the same config: a bug if not
        raise AssertionError(f"key table and model disagree: {sorted(set(flat) ^ covered)[:3]}")
    for key, path, kind in table:
        arr = np.asarray(_TO_FLAX[kind](np.asarray(sd[key], np.float32)))
        want = flat[path].get_value().shape
        if arr.shape != tuple(want):
            raise CheckpointError(f"{source}: key {key!r} gives shape {arr.shape}, model expects {want}")
        flat[path].set_value(jnp.asarray(arr))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def state_dict_from_table(module: nnx.Module, table) -> "OrderedDict[str, np.ndarray]":
    flat = dict(nnx.to_flat_state(nnx.state(module, nnx.Param)))
    # np.array(copy) and not np.ascontiguousarray, which turns 0-d logit_scale into shape (1,)
    return OrderedDict(
        (key, np.array(_TO_TORCH[kind](np.asarray(flat[path].get_value(), np.float32)), order="C"))
        for key, path, kind in table)


def expected_layout(table, abstract: nnx.Module) -> "OrderedDict[str, tuple]":
    """{torch key: torch shape} computed from the model's own parameter shapes."""
    flat = dict(nnx.to_flat_state(nnx.state(abstract, nnx.Param)))
    out = OrderedDict()
    for key, path, kind in table:
        shape = tuple(flat[path].get_value().shape)
        out[key] = {"id": shape, "linear": shape[::-1],
                    "conv": (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape}[kind]
    return out


def clip_layout(cfg: CLIPConfig) -> "OrderedDict[str, tuple]":
    return expected_layout(clip_key_table(cfg), nnx.eval_shape(lambda: CLIP(cfg, rngs=nnx.Rngs(0))))


def clip_from_state_dict(sd: Mapping[str, np.ndarray], cfg: CLIPConfig | None = None, *,
                         quick_gelu: bool = False, source: str = "checkpoint") -> CLIP:
    sd = {k: v for k, v in sd.items() if k not in _IGNORED_KEYS}
    if sd and next(iter(sd)).startswith("module."):
        sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    cfg = cfg or infer_config(sd, quick_gelu=quick_gelu)
    abstract = nnx.eval_shape(lambda: CLIP(cfg, rngs=nnx.Rngs(0)))
    table = clip_key_table(cfg)
    check_layout(sd, expected_layout(table, abstract), source=source)
    return module_from_table(abstract, sd, table, source=source)


def clip_state_dict(clip: CLIP) -> "OrderedDict[str, np.ndarray]":
    """The open_clip `CLIP.state_dict()` of `clip` (torch layouts, float32 numpy)."""
    return state_dict_from_table(clip, clip_key_table(clip.cfg))


def read_state_dict(path) -> dict[str, np.ndarray]:
    """A .safetensors file (read without torch) or a torch .pt/.bin/.pth (weights only)."""
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        try:
            return load_file(path)
        except Exception as e:
            raise CheckpointError(f"{path}: unreadable safetensors file: {e}") from e
    from daclip_jax.convert.torch_io import load_state_dict

    return load_state_dict(path)


def is_open_clip_state_dict(sd: Mapping) -> bool:
    keys = {k[len("module."):] if k.startswith("module.") else k for k in sd}
    return "visual.conv1.weight" in keys and "token_embedding.weight" in keys


def load_open_clip(path, cfg: CLIPConfig | None = None, *, quick_gelu: bool = False) -> CLIP:
    """open_clip CLIP checkpoint (.pt/.bin/.pth/.safetensors) -> CLIP."""
    return clip_from_state_dict(read_state_dict(path), cfg, quick_gelu=quick_gelu,
                                source=os.fspath(path))


def export_open_clip(clip: CLIP, path) -> None:
    """Write `clip` as an open_clip state dict (.safetensors or torch .pt/.bin)."""
    sd = clip_state_dict(clip)
    if os.fspath(path).endswith(".safetensors"):
        from safetensors.numpy import save_file

        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        save_file(dict(sd), os.fspath(path))
    else:
        torch_io.save_state_dict(sd, path)
