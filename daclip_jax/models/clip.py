"""CLIP image and text towers, ported from open_clip (the fork inside DA-CLIP).

Parameter names follow the open_clip state dict (conv1, class_embedding, ln_pre,
transformer.resblocks[i].{ln_1, attn, ln_2, mlp.c_fc, mlp.c_proj}, ln_post, proj;
token_embedding, positional_embedding, ln_final, text_projection, logit_scale) so a
checkpoint maps onto this tree key by key (see daclip_jax.convert.daclip). The one
layout change is the usual one for Flax: Linear kernels are (in, out), the patch
conv is HWIO, and activations are NHWC / (batch, seq, width) instead of torch's LND.

Attention keeps torch MultiheadAttention's fused `in_proj` (rows [q; k; v]), so
conversion is a transpose and the three projections stay one matmul.

Params are always float32; `cfg.dtype` is the compute dtype (e.g. "bfloat16").
`cfg.remat` rematerialises each residual block in the backward pass.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from daclip_jax.models.compiled import jit_when_eager

LN_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
    embed_dim: int = 512
    # vision tower
    image_size: int = 224
    patch_size: int = 32
    vision_width: int = 768
    vision_layers: int = 12
    vision_head_width: int = 64
    # text tower
    context_length: int = 77
    vocab_size: int = 49408
    text_width: int = 512
    text_heads: int = 8
    text_layers: int = 12
    # OpenAI's original weights use x·sigmoid(1.702x); laion / DA-CLIP use exact GELU
    quick_gelu: bool = False
    # runtime knobs (not part of the checkpoint)
    dtype: str = "float32"
    remat: bool = False

    @property
    def vision_heads(self) -> int:
        return self.vision_width // self.vision_head_width

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    def replace(self, **kw) -> "CLIPConfig":
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["dtype"] = str(jnp.dtype(d["dtype"]))
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CLIPConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown CLIPConfig fields: {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def named(cls, name: str, **overrides) -> "CLIPConfig":
        """open_clip model names ("ViT-B-32", "daclip_ViT-B-32", "ViT-L-14-quickgelu", ...)."""
        base = name[len("daclip_"):] if name.startswith("daclip_") and name != "daclip_tiny" else name
        quick = base.endswith("-quickgelu")
        if quick:
            base = base[: -len("-quickgelu")]
        if base not in _NAMED:
            raise ValueError(f"unknown CLIP config {name!r}; known: {sorted(_NAMED)} (+ '-quickgelu')")
        cfg = _NAMED[base]
        if quick:
            cfg = cfg.replace(quick_gelu=True)
        return cfg.replace(**overrides)


# open_clip/model_configs/*.json
_NAMED = {
    "ViT-B-32": CLIPConfig(),
    "ViT-B-16": CLIPConfig(patch_size=16),
    "ViT-L-14": CLIPConfig(embed_dim=768, patch_size=14, vision_width=1024, vision_layers=24,
                           text_width=768, text_heads=12),
    "ViT-L-14-336": CLIPConfig(embed_dim=768, image_size=336, patch_size=14, vision_width=1024,
                               vision_layers=24, text_width=768, text_heads=12),
    # tests/golden/daclip_tiny.json
    "daclip_tiny": CLIPConfig(embed_dim=32, image_size=32, patch_size=8, vision_width=64,
                              vision_layers=3, vision_head_width=32, text_width=32, text_heads=2,
                              text_layers=2),
}


def _normal(std):
    return nnx.initializers.normal(stddev=std)


def layer_norm(width: int, cfg: CLIPConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(width, epsilon=LN_EPS, dtype=cfg.compute_dtype, param_dtype=jnp.float32,
                         rngs=rngs)


def l2_normalize(x, eps: float = 1e-12):
    """torch.nn.functional.normalize(x, dim=-1)."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


class MultiheadAttention(nnx.Module):
    """torch.nn.MultiheadAttention (batch first, no dropout): fused q/k/v in-projection."""

    def __init__(self, width: int, heads: int, cfg: CLIPConfig, *, rngs: nnx.Rngs,
                 out_std: float | None = None):
        self.heads = heads
        dt = cfg.compute_dtype
        self.in_proj = nnx.Linear(width, 3 * width, dtype=dt, kernel_init=_normal(width ** -0.5),
                                  bias_init=nnx.initializers.zeros, rngs=rngs)
        self.out_proj = nnx.Linear(width, width, dtype=dt,
                                   kernel_init=_normal(out_std or width ** -0.5),
                                   bias_init=nnx.initializers.zeros, rngs=rngs)

    def __call__(self, x, causal: bool = False, query_index=None):
        """`query_index` (B,): compute the output at that one position only, (B, 1, W)
        (keys/values still come from every position): the last block of a tower whose
        output is pooled at one token needs nothing else."""
        b, n, w = x.shape
        h = self.heads
        if query_index is None:
            q, k, v = jnp.split(self.in_proj(x), 3, axis=-1)
        else:
            kernel = self.in_proj.kernel[...].astype(x.dtype)
            bias = self.in_proj.bias[...].astype(x.dtype)
            xq = jnp.take_along_axis(x, query_index[:, None, None], axis=1)
            q = xq @ kernel[:, :w] + bias[:w]
            k, v = jnp.split(x @ kernel[:, w:] + bias[w:], 2, axis=-1)
        q, k, v = (t.reshape(b, -1, h, w // h) for t in (q, k, v))
        q = q * (w // h) ** -0.5  # torch scales q before the product
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
        if causal:  # -inf above the diagonal (open_clip build_attention_mask)
            qpos = jnp.arange(n)[None, :] if query_index is None else query_index[:, None]
            mask = jnp.arange(n)[None, None, :] <= qpos[:, :, None]  # (B or 1, Q, K)
            logits = jnp.where(mask[:, None], logits, -jnp.inf)
        attn = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", attn, v).reshape(b, -1, w)
        return self.out_proj(out)


class MLP(nnx.Module):
    def __init__(self, width: int, cfg: CLIPConfig, *, rngs: nnx.Rngs, proj_std: float):
        dt = cfg.compute_dtype
        self.quick_gelu = cfg.quick_gelu
        self.c_fc = nnx.Linear(width, 4 * width, dtype=dt, kernel_init=_normal((2 * width) ** -0.5),
                               bias_init=nnx.initializers.zeros, rngs=rngs)
        self.c_proj = nnx.Linear(4 * width, width, dtype=dt, kernel_init=_normal(proj_std),
                                 bias_init=nnx.initializers.zeros, rngs=rngs)

    def __call__(self, x):
        x = self.c_fc(x)
        x = x * jax.nn.sigmoid(1.702 * x) if self.quick_gelu else jax.nn.gelu(x, approximate=False)
        return self.c_proj(x)


class ResidualAttentionBlock(nnx.Module):
    """Pre-LN block: x + attn(ln_1 x), then x + mlp(ln_2 x). No LayerScale."""

    def __init__(self, width: int, heads: int, layers: int, cfg: CLIPConfig, *, rngs: nnx.Rngs):
        proj_std = width ** -0.5 * (2 * layers) ** -0.5
        self.ln_1 = layer_norm(width, cfg, rngs)
        self.attn = MultiheadAttention(width, heads, cfg, rngs=rngs, out_std=proj_std)
        self.ln_2 = layer_norm(width, cfg, rngs)
        self.mlp = MLP(width, cfg, rngs=rngs, proj_std=proj_std)

    def __call__(self, x, causal: bool = False, query_index=None):
        """With `query_index` (B,), only that position's output is computed: (B, 1, W)."""
        h = self.ln_1(x)
        if query_index is not None:
            x = jnp.take_along_axis(x, query_index[:, None, None], axis=1)
        x = x + self.attn(h, causal=causal, query_index=query_index)
        return x + self.mlp(self.ln_2(x))


def _run_block(block: ResidualAttentionBlock, x, causal: bool, query_index=None):
    return block(x, causal, query_index)


def _run_block_remat(block: ResidualAttentionBlock, x, causal: bool, query_index=None):
    """The block under jax.checkpoint: its activations are recomputed in the backward pass.
    Blocks hold no mutable state, so a pure split/merge is enough (and, unlike nnx.remat,
    works on modules merged inside an outer jax.jit)."""
    graphdef, state = nnx.split(block)

    def pure(state, x, query_index):
        return nnx.merge(graphdef, state)(x, causal, query_index)

    return jax.checkpoint(pure)(state, x, query_index)


class Transformer(nnx.Module):
    def __init__(self, width: int, layers: int, heads: int, cfg: CLIPConfig, *, rngs: nnx.Rngs):
        self.remat = cfg.remat
        self.resblocks = nnx.List(
            [ResidualAttentionBlock(width, heads, layers, cfg, rngs=rngs) for _ in range(layers)])

    def block(self, i: int, x, causal: bool = False, query_index=None):
        fn = _run_block_remat if self.remat else _run_block
        return fn(self.resblocks[i], x, causal, query_index)

    def __call__(self, x, causal: bool = False, control=None, query_index=None):
        """`control`: optional list of L residual additions; as in the official
        `x += control.pop()`, block i receives control[L-1-i] (reverse order), added after
        the whole block.

        `query_index` (B,): the caller pools one token per sequence, so the last block
        computes only that token (saves ~1/L of the work); the result is then (B, 1, W)."""
        n = len(self.resblocks)
        if control is not None and len(control) != n:
            raise ValueError(f"control has {len(control)} entries, the transformer has {n} blocks")
        for i in range(n):
            last = query_index if i == n - 1 else None
            x = self.block(i, x, causal, last)
            if control is not None:
                c = control[n - 1 - i]
                if last is not None:
                    c = jnp.take_along_axis(c, last[:, None, None], axis=1)
                x = x + c.astype(x.dtype)
        return x


class VisionTransformer(nnx.Module):
    """open_clip VisionTransformer: patchify → [cls] + patches + pos → ln_pre → blocks →
    ln_post(token 0) @ proj. `make_transformer` lets the DA-CLIP controller swap in its
    ControlTransformer while keeping the rest of the tower (and its names)."""

    def __init__(self, cfg: CLIPConfig, *, rngs: nnx.Rngs, make_transformer=None):
        w, p = cfg.vision_width, cfg.patch_size
        scale = w ** -0.5
        self.cfg = cfg
        self.conv1 = nnx.Conv(3, w, kernel_size=(p, p), strides=(p, p), padding="VALID",
                              use_bias=False, dtype=cfg.compute_dtype, rngs=rngs)
        self.class_embedding = nnx.Param(scale * jax.random.normal(rngs.params(), (w,)))
        self.positional_embedding = nnx.Param(
            scale * jax.random.normal(rngs.params(), (cfg.grid_size ** 2 + 1, w)))
        self.ln_pre = layer_norm(w, cfg, rngs)
        make_transformer = make_transformer or (lambda: Transformer(
            w, cfg.vision_layers, cfg.vision_heads, cfg, rngs=rngs))
        self.transformer = make_transformer()
        self.ln_post = layer_norm(w, cfg, rngs)
        self.proj = nnx.Param(scale * jax.random.normal(rngs.params(), (w, cfg.embed_dim)))

    def embed(self, images):
        """NHWC images → ln_pre(tokens), (B, 1 + gh·gw, W)."""
        dt = self.cfg.compute_dtype
        p = self.cfg.patch_size
        b, hh, ww, c = images.shape
        gh, gw = hh // p, ww // p
        # conv1 (kernel = stride = patch, no bias) as one matmul over flattened patches:
        # XLA's CPU convolution is ~2x slower for this shape. Patch order is row-major over
        # (gh, gw), as torch's flatten; inside a patch (kh, kw, c) matches the HWIO kernel.
        patches = images[:, :gh * p, :gw * p].astype(dt).reshape(b, gh, p, gw, p, c)
        patches = patches.transpose(0, 1, 3, 2, 4, 5).reshape(b, gh * gw, p * p * c)
        kernel = self.conv1.kernel[...].astype(dt)
        x = patches @ kernel.reshape(p * p * c, -1)
        w = x.shape[-1]
        cls = jnp.broadcast_to(self.class_embedding[...].astype(dt), (b, 1, w))
        x = jnp.concatenate([cls, x], axis=1) + self.positional_embedding[...].astype(dt)
        return self.ln_pre(x)

    def head(self, x):
        """Token 0 → ln_post → proj, in float32."""
        x = self.ln_post(x[:, 0])
        return (x @ self.proj[...].astype(x.dtype)).astype(jnp.float32)

    def __call__(self, images, control=None):
        x = self.embed(images)
        cls_only = jnp.zeros((x.shape[0],), jnp.int32)  # only token 0 reaches the head
        return self.head(self.transformer(x, control=control, query_index=cls_only))


class CLIP(nnx.Module):
    """open_clip CLIP: `visual` image tower plus the text tower at the top level."""

    def __init__(self, cfg: CLIPConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        w = cfg.text_width
        self.visual = VisionTransformer(cfg, rngs=rngs)
        self.token_embedding = nnx.Embed(cfg.vocab_size, w, dtype=cfg.compute_dtype,
                                         embedding_init=_normal(0.02), rngs=rngs)
        self.positional_embedding = nnx.Param(
            0.01 * jax.random.normal(rngs.params(), (cfg.context_length, w)))
        self.transformer = Transformer(w, cfg.text_layers, cfg.text_heads, cfg, rngs=rngs)
        self.ln_final = layer_norm(w, cfg, rngs)
        self.text_projection = nnx.Param(
            w ** -0.5 * jax.random.normal(rngs.params(), (w, cfg.embed_dim)))
        self.logit_scale = nnx.Param(jnp.asarray(math.log(1 / 0.07), jnp.float32))

    @jit_when_eager("normalize")
    def encode_image(self, images, normalize: bool = False, control=None):
        x = self.visual(images, control=control)
        return l2_normalize(x) if normalize else x

    @jit_when_eager("normalize")
    def encode_text(self, tokens, normalize: bool = False):
        tokens = jnp.asarray(tokens)
        dt = self.cfg.compute_dtype
        x = self.token_embedding(tokens) + self.positional_embedding[...].astype(dt)
        # pool at the EOT token: the largest id; argmax returns the first one, as torch
        eot = jnp.argmax(tokens, axis=-1).astype(jnp.int32)
        x = self.ln_final(self.transformer(x, causal=True, query_index=eot))[:, 0]
        x = (x @ self.text_projection[...].astype(x.dtype)).astype(jnp.float32)
        return l2_normalize(x) if normalize else x

    @jit_when_eager()
    def __call__(self, images, tokens):
        return dict(image_features=self.encode_image(images, normalize=True),
                    text_features=self.encode_text(tokens, normalize=True),
                    logit_scale=jnp.exp(self.logit_scale[...]))


def count_params(module: nnx.Module, filter_=nnx.Param) -> int:
    """Number of values in `module`'s variables matching `filter_` (shared ones once)."""
    return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(module, filter_)))
