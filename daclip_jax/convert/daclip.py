"""Official DA-CLIP checkpoints (`daclip_ViT-B-32.pt`) <-> DaCLIP, and `load_daclip`.

Import follows the official loader (open_clip `load_checkpoint`, strict=True): a bare state
dict or `{'state_dict': ...}` (optimizer/scaler/epoch/name ignored); `module.` is removed
from every key only if the FIRST key starts with `module`. The `visual.*` keys are aliases
of `clip.visual.*` (DaCLIP keeps `self.visual = clip.visual`): they are checked to be equal
and then dropped. Export writes every key, aliases included, so the official code loads the
file with strict=True.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np
from flax import nnx

from daclip_jax.convert import open_clip as oc
from daclip_jax.convert import torch_io
from daclip_jax.convert.torch_io import CheckpointError, check_layout
from daclip_jax.models.clip import CLIP, CLIPConfig
from daclip_jax.models.daclip import DaCLIP

MODEL_KIND = "daclip"
CLIP_KIND = "clip"


def daclip_key_table(cfg: CLIPConfig):
    """[(torch key, parameter path, transform)] without the `visual.*` aliases, in state-dict
    order (the aliases come between `clip.*` and `visual_control.*`)."""
    return [("logit_scale", ("logit_scale",), "id"),
            *oc.clip_key_table(cfg, "clip.", ("clip",)),
            *oc.vision_key_table(cfg, "visual_control.", ("visual_control",), control=True)]


def _alias_rows(cfg: CLIPConfig):
    return oc.vision_key_table(cfg, "visual.", ("clip", "visual"))


def _abstract(cfg: CLIPConfig) -> DaCLIP:
    return nnx.eval_shape(lambda: DaCLIP(cfg, rngs=nnx.Rngs(0)))


def daclip_layout(cfg: CLIPConfig, abstract: DaCLIP | None = None) -> "OrderedDict[str, tuple]":
    """Every key and torch shape of the official DaCLIP state dict for `cfg` (631 keys for
    ViT-B-32), in the official order, computed from our model's parameter shapes."""
    abstract = abstract if abstract is not None else _abstract(cfg)
    main = oc.expected_layout(daclip_key_table(cfg), abstract)
    aliases = oc.expected_layout(_alias_rows(cfg), abstract)
    keys = list(main)
    cut = keys.index("visual_control.class_embedding")
    return OrderedDict([*((k, main[k]) for k in keys[:cut]), *aliases.items(),
                        *((k, main[k]) for k in keys[cut:])])


def strip_module_prefix(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The official rule: only if the first key starts with `module`, cut 7 characters off
    every key."""
    if sd and next(iter(sd)).startswith("module"):
        return {k[7:]: v for k, v in sd.items()}
    return dict(sd)


def is_daclip_state_dict(sd: Mapping) -> bool:
    return any(k.startswith(("visual_control.", "module.visual_control.")) for k in sd)


def daclip_from_state_dict(sd: Mapping[str, np.ndarray], cfg: CLIPConfig | None = None, *,
                           source: str = "checkpoint") -> DaCLIP:
    sd = strip_module_prefix(sd)
    cfg = cfg or oc.infer_config(sd, "clip.")
    abstract = _abstract(cfg)
    check_layout(sd, daclip_layout(cfg, abstract), source=source)
    for key, _, _ in _alias_rows(cfg):
        if not np.array_equal(sd[key], sd["clip." + key]):
            raise CheckpointError(f"{source}: alias {key!r} differs from {'clip.' + key!r} "
                                  "(they are one tensor in the official model)")
    return oc.module_from_table(abstract, sd, daclip_key_table(cfg), source=source)


def import_daclip(path, cfg: CLIPConfig | None = None) -> tuple[CLIPConfig, DaCLIP]:
    """Official DA-CLIP .pt -> (config, DaCLIP). Nothing in the file is executed."""
    from daclip_jax.convert.torch_io import load_state_dict

    sd = load_state_dict(path)
    if not is_daclip_state_dict(strip_module_prefix(sd)):
        raise CheckpointError(f"{os.fspath(path)}: not a DA-CLIP checkpoint (no visual_control.* keys)")
    model = daclip_from_state_dict(sd, cfg, source=os.fspath(path))
    return model.cfg, model


def daclip_state_dict(model: DaCLIP) -> "OrderedDict[str, np.ndarray]":
    """The official `DaCLIP.state_dict()` (all keys incl. the visual.* aliases) as numpy.
    Each alias is the same array object as its clip.visual.* key, so a torch.save of it
    stores the tensor once, as the official file does."""
    main = oc.state_dict_from_table(model, daclip_key_table(model.cfg))
    return OrderedDict((k, main[k] if k in main else main["clip." + k])
                       for k in daclip_layout(model.cfg))


def export_daclip_pt(model: DaCLIP, path, *, wrap_state_dict: bool = False) -> None:
    """Write an official-format DA-CLIP checkpoint; `open_clip.create_model_from_pretrained(
    'daclip_ViT-B-32', pretrained=path)` loads it (strict). wrap_state_dict=True writes
    {'state_dict': ...} as the official trainer does."""
    torch_io.save_state_dict(daclip_state_dict(model), path,
                             wrap_key="state_dict" if wrap_state_dict else None)


# ---------------------------------------------------------------- our model directories

def _flat_params(model: nnx.Module) -> dict[str, np.ndarray]:
    return {"/".join(map(str, p)): np.asarray(v.get_value())
            for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _nest(flat: dict[str, np.ndarray]) -> dict:
    out: dict = {}
    for key, v in flat.items():
        *parents, leaf = key.split("/")
        d = out
        for p in parents:
            d = d.setdefault(p, {})
        d[leaf] = v
    return out


def _flatten(tree, prefix=""):
    if isinstance(tree, Mapping):
        out = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}/"))
        return out
    return {prefix[:-1]: np.asarray(tree)}


def restore_params(abstract: nnx.Module, params: Mapping, *, source: str) -> nnx.Module:
    """Fill an abstract module from a nested param dict (string keys, as our model dirs)."""
    import jax.numpy as jnp

    flat_in = _flatten(params)
    graphdef, state = nnx.split(abstract)
    flat = dict(nnx.to_flat_state(state))
    names = {"/".join(map(str, p)): p for p in flat}
    check_layout(flat_in, {n: tuple(flat[p].get_value().shape) for n, p in names.items()},
                 source=source)
    for n, p in names.items():
        flat[p].set_value(jnp.asarray(flat_in[n], jnp.float32))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def save_daclip(model: DaCLIP, path) -> None:
    """Our model dir (kind "daclip"): config json + orbax params."""
    from daclip_jax.model_io import save_model_dir

    save_model_dir(path, MODEL_KIND, model.cfg.to_dict(), _nest(_flat_params(model)))


def save_clip(clip: CLIP, path) -> None:
    """Our model dir (kind "clip"): a CLIP alone (e.g. imported open_clip / HF weights).
    `load_daclip` turns it into a DA-CLIP with a fresh controller."""
    from daclip_jax.model_io import save_model_dir

    save_model_dir(path, CLIP_KIND, clip.cfg.to_dict(), _nest(_flat_params(clip)))


def load_clip(path, cfg: CLIPConfig | None = None, **cfg_overrides) -> CLIP:
    """The CLIP of any source `load_daclip` accepts (for a DA-CLIP: its frozen CLIP)."""
    from daclip_jax.model_io import is_model_dir, load_model_dir

    path = os.fspath(path)
    if is_model_dir(path):
        kind, config, params = load_model_dir(path)
        if kind == CLIP_KIND:
            ccfg = CLIPConfig.from_dict(config).replace(**cfg_overrides)
            return restore_params(nnx.eval_shape(lambda: CLIP(ccfg, rngs=nnx.Rngs(0))), params,
                                  source=path)
    elif os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json")):
        from daclip_jax.convert.hf_clip import load_hf_clip

        return load_hf_clip(path, **cfg_overrides)
    elif os.path.isfile(path):
        sd = oc.read_state_dict(path)
        if not is_daclip_state_dict(strip_module_prefix(sd)) and oc.is_open_clip_state_dict(sd):
            clip = oc.clip_from_state_dict(sd, cfg, source=path)
            return _with_runtime(clip, CLIP, clip.cfg.replace(**cfg_overrides)) if cfg_overrides else clip
    return load_daclip(path, cfg, **cfg_overrides).clip


def _load_model_dir(path, cfg_overrides) -> DaCLIP:
    from daclip_jax.model_io import load_model_dir

    kind, config, params = load_model_dir(path)
    cfg = CLIPConfig.from_dict(config).replace(**cfg_overrides)
    if kind == MODEL_KIND:
        return restore_params(_abstract(cfg), params, source=os.fspath(path))
    if kind == CLIP_KIND:  # a CLIP trained/converted by us: wrap it with a fresh controller
        clip = restore_params(nnx.eval_shape(lambda: CLIP(cfg, rngs=nnx.Rngs(0))), params,
                              source=os.fspath(path))
        return DaCLIP.from_clip(clip)
    raise CheckpointError(f"{path}: holds a {kind!r} model, not a DA-CLIP/CLIP")


def load_daclip(path, cfg: CLIPConfig | None = None, **cfg_overrides) -> DaCLIP:
    """Any DA-CLIP source -> DaCLIP:

    - our model dir (`save_daclip`, or a trainer's export),
    - an official DA-CLIP .pt (`daclip_ViT-B-32.pt`),
    - an open_clip CLIP checkpoint (.pt/.bin/.pth/.safetensors) -> DaCLIP.from_clip,
    - a Hugging Face CLIP directory (config.json + model.safetensors) -> DaCLIP.from_clip.

    `cfg_overrides` set runtime knobs (dtype="bfloat16", remat=True); `cfg` gives the
    architecture when it cannot be inferred from shapes (head counts of unusual sizes).
    """
    from daclip_jax.model_io import is_model_dir

    path = os.fspath(path)
    if os.path.isdir(path):
        if is_model_dir(path):
            return _load_model_dir(path, cfg_overrides)
        if os.path.isfile(os.path.join(path, "config.json")):
            from daclip_jax.convert.hf_clip import load_hf_clip

            return DaCLIP.from_clip(load_hf_clip(path, **cfg_overrides))
        raise CheckpointError(f"{path}: directory is neither a daclip-jax model dir nor a "
                              "Hugging Face CLIP dir (config.json)")
    sd = oc.read_state_dict(path)
    if is_daclip_state_dict(strip_module_prefix(sd)):
        model = daclip_from_state_dict(sd, cfg, source=path)
    elif oc.is_open_clip_state_dict(sd):
        model = DaCLIP.from_clip(oc.clip_from_state_dict(sd, cfg, source=path))
    else:
        first = next(iter(sd), None)
        raise CheckpointError(f"{path}: neither a DA-CLIP nor an open_clip CLIP state dict "
                              f"(first key {first!r})")
    if cfg_overrides:
        model = _with_runtime(model, DaCLIP, model.cfg.replace(**cfg_overrides))
    return model


def _with_runtime(model, cls, cfg):
    """Same weights, new runtime knobs (dtype / remat are not part of the weights)."""
    abstract = nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(0)))
    return restore_params(abstract, _nest(_flat_params(model)), source="model")
