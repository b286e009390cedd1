"""IR-SDE ConditionalUNet (official `DenoisingUNet_arch.py`), the DA-CLIP restoration network.

The network predicts the noise of the mean-reverting SDE state `xt` given the LQ image `cond`
(`parameterization="noise"`, the official net; or, with `"x0"`, the residual x0_hat - cond of
the clean image, its last conv zero-initialised so an untrained net returns the LQ: see sde.py),
the time step, the DA-CLIP degradation embedding (`text_context`: it modulates the time
embedding through a learned prompt) and the DA-CLIP content embedding (`image_context`: a
single cross-attention token at the deepest level and the middle block).

Layout: `downs[i] = [ResBlock, ResBlock, Residual(PreNorm(attn)), down]`, `ups[0]` is the
DEEPEST level (built with insert(0)). The input is reflect-padded bottom/right to a multiple
of 2**len(ch_mult) (16 for the released nets although they downsample by 8) and the output
cropped back, exactly as the reference, so any image size works and gives the same numbers.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from daclip_jax.models.compiled import jit_when_eager
from daclip_jax.models.unet_blocks import (
    LinearAttention, PreNorm, ResBlock, Residual, SpatialTransformer, Upsample, conv, downsample,
    gelu, linear, sinusoidal_embedding)

PARAMETERIZATIONS = ("noise", "x0")
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    in_nc: int = 3
    out_nc: int = 3
    nf: int = 64
    ch_mult: tuple[int, ...] = (1, 2, 4, 8)
    context_dim: int = 512          # <= 0: no DA-CLIP conditioning at all
    use_degra_context: bool = True  # degradation embedding -> prompt added to the time embedding
    use_image_context: bool = True  # content embedding -> cross-attention (SpatialTransformers)
    scale: float = 1.0              # 0.5: extra 4x4/2 down + up around the U (the wild-IR net)
    dtype: str = "float32"          # compute dtype; parameters are always float32
    remat: bool = False             # rematerialise each block in the backward pass
    # what the output means (sde.py): "noise" (official) | "x0" (the residual x0_hat - cond; the
    # last conv starts at zero, so an untrained net restores nothing and harms nothing)
    parameterization: str = "noise"

    def __post_init__(self):
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        if not isinstance(self.dtype, str):   # accept jnp.bfloat16 / np.dtype too
            object.__setattr__(self, "dtype", jnp.dtype(self.dtype).name)
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
        if self.scale not in (1, 1.0, 0.5):
            raise ValueError(f"scale must be 1 or 0.5 (as the official net), got {self.scale}")
        if self.parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}, "
                             f"got {self.parameterization!r}")
        if self.nf % 8:
            raise ValueError("nf must be a multiple of 8 (GroupNorm(32) at the deepest level)")

    @property
    def jnp_dtype(self):
        return _DTYPES[self.dtype]

    @property
    def pad_multiple(self) -> int:
        return 2 ** len(self.ch_mult)

    @property
    def cross_attention(self) -> bool:
        return self.use_image_context and self.context_dim > 0

    @property
    def degradation_prompt(self) -> bool:
        return self.use_degra_context and self.context_dim > 0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ch_mult"] = list(self.ch_mult)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "UNetConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def named(cls, name: str, **overrides) -> "UNetConfig":
        presets = {
            # config/daclip-sde/options/{train,test}.yml, DA-CLIP ViT-B/32 (embed 512)
            "universal-ir": dict(nf=64, ch_mult=(1, 2, 4, 8), context_dim=512,
                                 use_degra_context=True, use_image_context=True),
            # config/wild-ir/options/test.yml: wild DA-CLIP ViT-L/14 (embed 768), content
            # embedding only, and `scale: 0.5` (one extra down/up pair around the U)
            "wild-ir": dict(nf=64, ch_mult=(1, 2, 4, 8), context_dim=768,
                            use_degra_context=False, use_image_context=True, scale=0.5),
            # tests/golden/unet_tiny.npz
            "tiny": dict(nf=32, ch_mult=(1, 2, 4, 8), context_dim=32,
                         use_degra_context=True, use_image_context=True),
        }
        if name not in presets:
            raise ValueError(f"unknown UNet config {name!r}; known: {sorted(presets)}")
        return cls(**{**presets[name], **overrides})


class ConditionalUNet(nnx.Module):
    HEAD_CHANNELS = 32

    def __init__(self, cfg: UNetConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        dt = cfg.jnp_dtype
        nf, depth, ctx = cfg.nf, len(cfg.ch_mult), cfg.context_dim
        time_dim = 4 * nf
        kw = dict(rngs=rngs, dtype=dt)

        self.init_conv = conv(2 * cfg.in_nc, nf, 7, bias=False, **kw)
        if cfg.scale == 0.5:
            self.downsample = downsample(nf, nf, **kw)
            self.upsample = Upsample(nf, nf, **kw)
        # time_mlp = [SinusoidalPosEmb, Linear, GELU, Linear]
        self.time_mlp = nnx.List([None, linear(nf, time_dim, **kw), None, linear(time_dim, time_dim, **kw)])
        if cfg.degradation_prompt:
            self.prompt = nnx.Param(jax.random.uniform(rngs.params(), (1, time_dim), jnp.float32))
            self.text_mlp = nnx.List([linear(ctx, time_dim, **kw), None, linear(time_dim, time_dim, **kw)])
            self.prompt_mlp = linear(time_dim, time_dim, **kw)

        def attention(dim, deepest):
            if cfg.cross_attention and deepest:
                heads = dim // self.HEAD_CHANNELS
                return SpatialTransformer(dim, heads, self.HEAD_CHANNELS, ctx, **kw)
            return LinearAttention(dim, **kw)

        mult = (1,) + cfg.ch_mult
        downs, ups = [], []
        for i in range(depth):
            din, dout = nf * mult[i], nf * mult[i + 1]
            last = i == depth - 1
            downs.append(nnx.List([
                ResBlock(din, din, time_dim, **kw),
                ResBlock(din, din, time_dim, **kw),
                Residual(PreNorm(din, attention(din, last))),
                downsample(din, dout, **kw) if not last else conv(din, dout, 3, bias=False, **kw),
            ]))
            ups.insert(0, nnx.List([
                ResBlock(dout + din, dout, time_dim, **kw),
                ResBlock(dout + din, dout, time_dim, **kw),
                Residual(PreNorm(dout, attention(dout, last))),
                Upsample(dout, din, **kw) if i != 0 else conv(dout, din, 3, bias=False, **kw),
            ]))
        self.downs, self.ups = nnx.List(downs), nnx.List(ups)

        mid = nf * mult[-1]
        self.mid_block1 = ResBlock(mid, mid, time_dim, **kw)
        self.mid_attn = Residual(PreNorm(mid, attention(mid, True)))
        self.mid_block2 = ResBlock(mid, mid, time_dim, **kw)
        self.final_res_block = ResBlock(2 * nf, nf, time_dim, **kw)
        self.final_conv = conv(nf, cfg.out_nc, 3, **kw)
        if cfg.parameterization == "x0":   # residual starts at 0: the untrained net returns cond
            for p in (self.final_conv.kernel, self.final_conv.bias):
                p[...] = jnp.zeros_like(p[...])

    # -- pieces exposed for tests / debugging ---------------------------------------------
    def pad_input(self, xt, cond):
        """cat([xt - cond, cond]) reflect-padded bottom/right to a multiple of 2**depth."""
        x = jnp.concatenate([xt - cond, cond], axis=-1)
        s = self.cfg.pad_multiple
        h, w = x.shape[1:3]
        return jnp.pad(x, ((0, 0), (0, (-h) % s), (0, (-w) % s), (0, 0)), mode="reflect")

    def time_embedding(self, t):
        emb = sinusoidal_embedding(t, self.cfg.nf).astype(self.cfg.jnp_dtype)
        return self.time_mlp[3](gelu(self.time_mlp[1](emb)))

    def prompt_embedding(self, text_context):
        """prompt_mlp(softmax over the FEATURE axis of text_mlp(ctx) * prompt)."""
        h = self.text_mlp[2](jax.nn.silu(self.text_mlp[0](text_context.astype(self.cfg.jnp_dtype))))
        p = jax.nn.softmax(h.astype(jnp.float32), axis=1) * self.prompt[...]
        return self.prompt_mlp(p.astype(self.cfg.jnp_dtype))

    def _call(self, module, *args):
        if self.cfg.remat:
            return nnx.remat(lambda m, *a: m(*a))(module, *args)
        return module(*args)

    @jit_when_eager("return_debug")
    def __call__(self, xt, cond, t, text_context=None, image_context=None, *, return_debug=False):
        """xt, cond: (B, H, W, in_nc). t: (B,) or scalar time. Returns (B, H, W, out_nc): the
        noise, or for "x0" nets the residual x0_hat - cond (IRSDE.x0_from_output reads both)."""
        cfg = self.cfg
        dt = cfg.jnp_dtype
        H, W = xt.shape[1:3]
        b = xt.shape[0]
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32).reshape(-1), (b,))
        debug = {}

        x = self.pad_input(xt.astype(jnp.float32), cond.astype(jnp.float32))
        debug["padded_input"] = x
        x = self.init_conv(x.astype(dt))
        x_skip = x
        if cfg.scale == 0.5:
            x = self.downsample(x)

        temb = self.time_embedding(t)
        debug["time_mlp_out"] = temb
        if cfg.degradation_prompt and text_context is not None:
            prompt = self.prompt_embedding(text_context)
            debug["prompt_mlp_out"] = prompt
            temb = temb + prompt
        context = None
        if cfg.cross_attention:
            if image_context is None:
                raise ValueError("this UNet cross-attends to the DA-CLIP image embedding: pass image_context")
            context = image_context.astype(dt)[:, None, :]   # one context token

        hs = []
        for b1, b2, attn, down in self.downs:
            x = self._call(b1, x, temb)
            hs.append(x)
            x = self._call(b2, x, temb)
            x = self._call(attn, x, context)
            hs.append(x)
            x = down(x)

        x = self._call(self.mid_block1, x, temb)
        x = self._call(self.mid_attn, x, context)
        x = self._call(self.mid_block2, x, temb)
        debug["mid_block2_out"] = x

        for b1, b2, attn, up in self.ups:
            x = self._call(b1, jnp.concatenate([x, hs.pop()], axis=-1), temb)
            x = self._call(b2, jnp.concatenate([x, hs.pop()], axis=-1), temb)
            x = self._call(attn, x, context)
            x = up(x)
        if cfg.scale == 0.5:
            x = self.upsample(x)

        x = self._call(self.final_res_block, jnp.concatenate([x, x_skip], axis=-1), temb)
        y = self.final_conv(x)[:, :H, :W].astype(jnp.float32)
        return (y, debug) if return_debug else y


@functools.lru_cache(maxsize=8)
def _abstract(cfg: UNetConfig):
    graphdef, state = nnx.split(nnx.eval_shape(lambda: ConditionalUNet(cfg, rngs=nnx.Rngs(0))))
    return graphdef, tuple((tuple(p), v) for p, v in nnx.to_flat_state(state))


def param_shapes(cfg: UNetConfig) -> dict[tuple, jax.ShapeDtypeStruct]:
    """{nnx path: ShapeDtypeStruct} of a config's parameters, without allocating anything."""
    return {p: v.get_value() for p, v in _abstract(cfg)[1]}


def unet_from_params(cfg: UNetConfig, params: dict) -> ConditionalUNet:
    """Build a ConditionalUNet directly from {nnx path: array} (no random init: random init of
    a 12M-parameter net compiles one XLA program per tensor shape, tens of seconds on CPU)."""
    graphdef, abstract = _abstract(cfg)
    flat = []
    for path, var in abstract:
        if path not in params:
            raise KeyError(f"no value for parameter {'.'.join(map(str, path))}")
        want = var.get_value()
        value = jnp.asarray(params[path], jnp.float32)
        if value.shape != want.shape:
            raise ValueError(f"{'.'.join(map(str, path))}: shape {value.shape}, expected {want.shape}")
        flat.append((path, var.replace(value)))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def init_unet(cfg: UNetConfig | str, seed: int = 0) -> ConditionalUNet:
    """A freshly initialised net, fast (numpy; no per-shape XLA compile), torch-default init.

    Conv/Linear weights AND biases ~ U(+-1/sqrt(fan_in)) (torch's defaults), norms 1/0,
    SpatialTransformer proj_out zero (zero_module), prompt ~ U[0, 1) (torch.rand); the final
    conv zero for "x0" nets.
    """
    if isinstance(cfg, str):
        cfg = UNetConfig.named(cfg)
    rng = np.random.default_rng(seed)
    shapes = param_shapes(cfg)
    params = {}
    for path, sds in shapes.items():
        name, parent = path[-1], path[:-1]
        kernel = shapes.get(parent + ("kernel",))
        if name == "prompt":
            v = rng.uniform(0, 1, sds.shape)
        elif "proj_out" in parent or (parent == ("final_conv",) and cfg.parameterization == "x0"):
            v = np.zeros(sds.shape)
        elif name == "kernel" or (name == "bias" and kernel is not None):
            bound = 1 / math.sqrt(math.prod(kernel.shape[:-1]))
            v = rng.uniform(-bound, bound, sds.shape)
        elif name in ("g", "scale"):
            v = np.ones(sds.shape)
        else:   # norm biases
            v = np.zeros(sds.shape)
        params[path] = v.astype(np.float32)
    return unet_from_params(cfg, params)
