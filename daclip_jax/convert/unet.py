"""Official IR-SDE ConditionalUNet checkpoints (`universal-ir.pth`, `wild-ir.pth`) <-> our UNet.

The official `BaseModel.save_network` writes a bare OrderedDict state dict (no wrapper, no
`module.` prefix); `load_network` strips `module.` from any key that has it, so we do too.
Our nnx attribute names mirror the torch modules, so a parameter's torch key is its nnx path
with four renames: conv/linear `kernel` -> `weight` (HWIO -> OIHW, (in,out) -> (out,in)),
norm `scale` -> `weight`, the Upsample Sequential (`layers.1` -> `1`) and the channel
LayerNorm gain `g` (C,) -> (1, C, 1, 1).
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
from flax import nnx

from daclip_jax import model_io
from daclip_jax.convert import torch_io
from daclip_jax.models.unet import ConditionalUNet, UNetConfig, param_shapes, unet_from_params

KIND = "unet"


def _torch_key(path) -> str:
    key = ".".join(str(p) for p in path)
    key = key.replace(".layers.", ".")          # Upsample = Sequential(Upsample, Conv2d)
    key = re.sub(r"\.kernel$", ".weight", key)
    key = re.sub(r"\.scale$", ".weight", key)    # nn.LayerNorm / nn.GroupNorm
    return key


def _to_torch(key: str, v: np.ndarray) -> np.ndarray:
    if key.endswith(".g"):
        return v.reshape(1, -1, 1, 1)
    if key.endswith(".weight") and v.ndim == 4:
        return v.transpose(3, 2, 0, 1)           # HWIO -> OIHW
    if key.endswith(".weight") and v.ndim == 2:
        return v.T
    return v


def _from_torch(key: str, v: np.ndarray) -> np.ndarray:
    if key.endswith(".g"):
        return v.reshape(-1)
    if key.endswith(".weight") and v.ndim == 4:
        return v.transpose(2, 3, 1, 0)           # OIHW -> HWIO
    if key.endswith(".weight") and v.ndim == 2 and key != "prompt":
        return v.T
    return v


def _flat_params(unet: ConditionalUNet):
    return {tuple(path): var for path, var in nnx.to_flat_state(nnx.state(unet, nnx.Param))}


def torch_layout(cfg: UNetConfig) -> dict[str, tuple[int, ...]]:
    """{official key: torch shape} for a config."""
    out = {}
    for path, sds in param_shapes(cfg).items():
        key = _torch_key(path)
        out[key] = _to_torch(key, np.empty(sds.shape, np.uint8)).shape
    return _official_order(out)


def state_dict_from_unet(unet: ConditionalUNet) -> dict[str, np.ndarray]:
    """Our UNet -> official state dict {key: float32 numpy}, torch key order and layouts."""
    sd = {}
    for path, var in _flat_params(unet).items():
        key = _torch_key(path)
        sd[key] = np.array(_to_torch(key, np.asarray(var[...], np.float32)), order="C")  # writable copy
    return _official_order(sd)


# torch lists parameters in module-registration order; nnx sorts attribute names. These
# ranks restore the torch order (checked against keys_universal-ir.tsv in the tests).
_RANK = {name: i for i, name in enumerate((
    "prompt", "init_conv", "downsample", "upsample", "time_mlp", "text_mlp", "prompt_mlp",
    "downs", "ups", "mid_block1", "mid_attn", "mid_block2", "final_res_block", "final_conv"))}
_RANK.update(mlp=0, block1=1, block2=2, res_conv=3, proj=0,           # ResBlock / Block / GEGLU
             fn=0, norm=1, proj_in=2, transformer_blocks=3, proj_out=4,  # PreNorm, SpatialTransformer
             attn1=0, ff=1, attn2=2, norm1=3, norm2=4, norm3=5,        # BasicTransformerBlock
             to_qkv=0, to_q=0, to_k=1, to_v=2, to_out=3, net=0,        # attentions, FeedForward
             weight=0, g=0, bias=1)


def _official_order(sd):
    key = lambda k: tuple(int(p) if p.isdigit() else _RANK[p] for p in k.split("."))
    return dict(sorted(sd.items(), key=lambda kv: key(kv[0])))


def config_from_state_dict(sd, **overrides) -> UNetConfig:
    """Infer the UNetConfig from official key names and shapes."""
    try:
        nf = sd["init_conv.weight"].shape[0]
        in_nc = sd["init_conv.weight"].shape[1] // 2
        out_nc = sd["final_conv.weight"].shape[0]
    except KeyError as e:
        raise torch_io.CheckpointError(f"not a ConditionalUNet state dict: missing {e.args[0]!r}") from None
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("downs."))
    ch_mult = [sd[f"downs.{i}.3.weight"].shape[0] // nf for i in range(depth)]
    use_degra = "prompt" in sd
    use_image = any(".transformer_blocks." in k for k in sd)
    if use_degra:
        context_dim = sd["text_mlp.0.weight"].shape[1]
    elif use_image:
        context_dim = sd["mid_attn.fn.fn.transformer_blocks.0.attn2.to_k.weight"].shape[1]
    else:
        context_dim = -1
    cfg = dict(in_nc=in_nc, out_nc=out_nc, nf=nf, ch_mult=ch_mult, context_dim=context_dim,
               use_degra_context=use_degra, use_image_context=use_image,
               scale=0.5 if "downsample.weight" in sd else 1.0)
    cfg.update(overrides)
    return UNetConfig(**cfg)


def unet_from_state_dict(sd, cfg: UNetConfig | None = None, *, source="state dict") -> ConditionalUNet:
    """Official state dict -> ConditionalUNet (strict: every key present with the right shape)."""
    sd = {k[7:] if k.startswith("module.") else k: v for k, v in sd.items()}
    cfg = cfg or config_from_state_dict(sd)
    torch_io.check_layout(sd, torch_layout(cfg), source=source)
    params = {}
    for path in param_shapes(cfg):
        key = _torch_key(path)
        params[path] = np.asarray(_from_torch(key, np.asarray(sd[key])), np.float32)
    return unet_from_params(cfg, params)


def import_unet(path, **config_overrides) -> ConditionalUNet:
    """Read an official `.pth` (bare state dict, or under `state_dict`).

    The official layout has no field for what the output means: an `sde.json` beside the file
    (written by our exports) gives the parameterization, else it is the official "noise"."""
    from daclip_jax.sde import settings_for_weights

    sd = torch_io.load_state_dict(path)
    sd = {k[7:] if k.startswith("module.") else k: v for k, v in sd.items()}
    saved = settings_for_weights(path) or {}
    config_overrides = {"parameterization": saved.get("parameterization", "noise"), **config_overrides}
    cfg = config_from_state_dict(sd, **config_overrides)
    return unet_from_state_dict(sd, cfg, source=os.fspath(path))


X0_EXPORT_WARNING = ("this UNet is x0-parameterised: the .pth has the official keys and loads into "
                     "the official ConditionalUNet, but the official sampler reads its output as "
                     "noise and would restore wrongly; daclip-jax reads it right from the "
                     "sde.json written beside it")


def export_unet_pth(unet: ConditionalUNet, path, settings: dict | None = None) -> None:
    """Write the official layout (bare OrderedDict), loadable with strict=True by the reference.

    An "x0" net gets the same keys; the official sampler would misread it (X0_EXPORT_WARNING),
    so its parameterization goes into an sde.json beside the file, which `load_unet` reads
    (with `settings`, the SDE settings the net was trained with, when given)."""
    import warnings

    from daclip_jax.sde import SDE_FILE, settings_for_weights

    torch_io.save_state_dict(state_dict_from_unet(unet), path)
    if unet.cfg.parameterization != "noise":
        warnings.warn(X0_EXPORT_WARNING, stacklevel=2)
        folder = os.path.dirname(os.path.abspath(path))
        saved = dict(settings or settings_for_weights(path) or {},
                     parameterization=unet.cfg.parameterization)
        with open(os.path.join(folder, SDE_FILE), "w") as f:
            json.dump(saved, f, indent=1)


def save_unet(unet: ConditionalUNet, directory) -> None:
    """Our model dir (orbax params + json config), kind "unet"."""
    params = nnx.to_pure_dict(nnx.state(unet, nnx.Param))
    model_io.save_model_dir(directory, KIND, unet.cfg.to_dict(), params)


def load_unet(path, **config_overrides) -> ConditionalUNet:
    """Official `.pth` or our model dir. `config_overrides` e.g. dtype="bfloat16", remat=True."""
    if model_io.is_model_dir(path):
        _, cfg_dict, params = model_io.load_model_dir(path, expected_kind=KIND)
        cfg = UNetConfig.from_dict({**cfg_dict, **config_overrides})
        flat = {}

        def walk(d, prefix):
            for k, v in d.items():
                k = int(k) if isinstance(k, str) and k.isdigit() else k
                if isinstance(v, dict):
                    walk(v, prefix + (k,))
                else:
                    flat[prefix + (k,)] = v
        walk(params, ())
        return unet_from_params(cfg, flat)
    if os.path.isdir(path):
        raise FileNotFoundError(f"{path}: a directory but not a daclip-jax model dir")
    return import_unet(path, **config_overrides)
