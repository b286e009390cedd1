"""Building blocks of the IR-SDE ConditionalUNet (official `module_util.py` + `attention.py`).

Activations are NHWC. Attribute names follow the official PyTorch modules (`block1.proj`,
`to_qkv`, `to_out`, `fn.norm.g`, `transformer_blocks`, `ff.net`...) so that the checkpoint
converter is a mechanical renaming and a reader can hold the two side by side.

Parameters are float32; `dtype` is the compute dtype (activations and matmul inputs). Norm
statistics are always taken in float32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from daclip_jax.models import conv as conv_ops

# torch's default Conv2d/Linear weight init is kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in));
# variance_scaling(1/3, fan_in, uniform) is exactly that distribution.
torch_default_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def gelu(x):
    """Exact (erf) GELU, as torch's nn.GELU() / F.gelu."""
    return jax.nn.gelu(x, approximate=False)


def conv(cin, cout, k, *, rngs, dtype, stride=1, padding=None, bias=True):
    """torch `nn.Conv2d(cin, cout, k, stride, padding=k//2)` in NHWC."""
    p = k // 2 if padding is None else padding
    return nnx.Conv(cin, cout, (k, k), strides=(stride, stride), padding=((p, p), (p, p)),
                    use_bias=bias, dtype=dtype, kernel_init=torch_default_init, rngs=rngs,
                    conv_general_dilated=conv_ops.conv_general_dilated)


def linear(cin, cout, *, rngs, dtype, bias=True):
    return nnx.Linear(cin, cout, use_bias=bias, dtype=dtype, kernel_init=torch_default_init,
                      rngs=rngs)


def sinusoidal_embedding(t, dim):
    """`SinusoidalPosEmb`: [sin(t f), cos(t f)], f_k = exp(-k ln(1e4)/(half-1)). Sin first."""
    half = dim // 2
    scale = math.log(10000) / (half - 1)
    freqs = jnp.exp(jnp.arange(half, dtype=jnp.float32) * jnp.float32(-scale))
    emb = t.astype(jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(emb), jnp.cos(emb)], axis=-1)


class ChannelLayerNorm(nnx.Module):
    """`module_util.LayerNorm`: normalise over channels at each pixel, gain `g`, no bias."""

    def __init__(self, dim, eps=1e-5):
        self.g = nnx.Param(jnp.ones((dim,), jnp.float32))
        self.eps = eps

    def __call__(self, x):
        xf = x.astype(jnp.float32)
        mean = jnp.mean(xf, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
        return ((xf - mean) * jax.lax.rsqrt(var + self.eps) * self.g[...]).astype(x.dtype)


class Block(nnx.Module):
    """conv3x3 (no bias) -> optional (scale + 1, shift) -> SiLU."""

    def __init__(self, cin, cout, *, rngs, dtype):
        self.proj = conv(cin, cout, 3, bias=False, rngs=rngs, dtype=dtype)

    def __call__(self, x, scale_shift=None):
        x = self.proj(x)
        if scale_shift is not None:
            scale, shift = scale_shift
            x = x * (scale + 1) + shift
        return jax.nn.silu(x)


class ResBlock(nnx.Module):
    """Time-modulated residual block. No normalisation and no conv bias (as the official one)."""

    def __init__(self, cin, cout, time_dim, *, rngs, dtype):
        # torch: mlp = Sequential(SiLU, Linear); index 1 holds the weights.
        self.mlp = nnx.List([None, linear(time_dim, 2 * cout, rngs=rngs, dtype=dtype)])
        self.block1 = Block(cin, cout, rngs=rngs, dtype=dtype)
        self.block2 = Block(cout, cout, rngs=rngs, dtype=dtype)
        self.res_conv = conv(cin, cout, 1, bias=False, rngs=rngs, dtype=dtype) if cin != cout else None

    def __call__(self, x, t):
        emb = self.mlp[1](jax.nn.silu(t))[:, None, None, :]
        scale, shift = jnp.split(emb, 2, axis=-1)  # scale first
        h = self.block1(x, (scale, shift))
        h = self.block2(h)
        return h + (x if self.res_conv is None else self.res_conv(x))


class LinearAttention(nnx.Module):
    """`module_util.LinearAttention` (4 heads x 32, hidden 128 whatever the dim).

    q is softmaxed over its channels, k over the positions, v divided by H*W; the context is a
    per-head 32x32 matrix, so cost is linear in the number of pixels.
    """

    def __init__(self, dim, *, rngs, dtype, heads=4, dim_head=32):
        self.heads, self.dim_head = heads, dim_head
        hidden = heads * dim_head
        self.to_qkv = conv(dim, 3 * hidden, 1, bias=False, rngs=rngs, dtype=dtype)
        self.to_out = nnx.List([conv(hidden, dim, 1, rngs=rngs, dtype=dtype), ChannelLayerNorm(dim)])

    def __call__(self, x, context=None):
        b, h, w, c = x.shape
        n, hid = h * w, self.heads * self.dim_head
        dt = self.to_qkv.dtype or x.dtype
        # to_qkv as three GEMMs over the pixels from column blocks of its kernel: no
        # (pixels, 3*hid) tensor to slice (and to assemble again in the backward pass)
        x2 = x.reshape(b * n, c).astype(dt)
        w_qkv = self.to_qkv.kernel[...].reshape(c, 3, hid).astype(dt)
        q, k, v = (jnp.dot(x2, w_qkv[:, i]).reshape(b, n, hid) for i in range(3))
        q = jax.nn.softmax(q.reshape(b, n, self.heads, self.dim_head), axis=-1).reshape(b, n, hid)
        q = q * (self.dim_head ** -0.5)
        # softmax of k over the pixels and v / n, both normalisations applied to the small
        # (hid x hid) context instead of the (pixels x hid) tensors: ctx[d, e] =
        # sum_n exp(k[n, d] - max_d) v[n, e] / (n * sum_n exp(k[n, d] - max_d))
        ek = jnp.exp(k - jax.lax.stop_gradient(k.max(axis=1, keepdims=True)))
        # Per-head context as ONE (hid x hid) GEMM masked to its block diagonal, and to_out's
        # 1x1 conv folded into it: plain GEMMs over the pixels instead of head-batched einsums
        # that XLA CPU runs through transposes.
        ctx = jnp.einsum("bnd,bne->bde", ek, v)
        ctx = ctx / (n * ek.sum(axis=1, dtype=jnp.float32)[:, :, None]).astype(ctx.dtype)
        head = jnp.arange(hid) // self.dim_head
        ctx = jnp.where(head[:, None] == head[None, :], ctx, 0)
        w_out = self.to_out[0].kernel[...].reshape(hid, c).astype(ctx.dtype)
        out = jnp.einsum("bnd,bdc->bnc", q, jnp.einsum("bde,ec->bdc", ctx, w_out))
        out = out + self.to_out[0].bias[...].astype(out.dtype)
        return self.to_out[1](out.reshape(b, h, w, c))


class CrossAttention(nnx.Module):
    """Multi-head attention, q/k/v without bias, `to_out.0` with bias (dropout p=0)."""

    # queries per chunk for long sequences: keeps the (heads, q, k) score tensor bounded. On
    # CPU a small chunk keeps each score tile near the cache (chunk 128 vs 1024: 2x faster at
    # 1024 and 19456 tokens, benchmarks/conv.py); accelerators keep large chunks.
    query_chunk = 1024
    query_chunk_cpu = 128

    def __init__(self, query_dim, context_dim, heads, dim_head, *, rngs, dtype):
        inner = heads * dim_head
        self.heads, self.dim_head = heads, dim_head
        self.to_q = linear(query_dim, inner, bias=False, rngs=rngs, dtype=dtype)
        self.to_k = linear(context_dim, inner, bias=False, rngs=rngs, dtype=dtype)
        self.to_v = linear(context_dim, inner, bias=False, rngs=rngs, dtype=dtype)
        self.to_out = nnx.List([linear(inner, query_dim, rngs=rngs, dtype=dtype)])

    def __call__(self, x, context=None):
        context = x if context is None else context
        b, n, _ = x.shape
        if context.shape[1] == 1:
            # one context token: softmax over a single key is exactly 1, so the output is v
            # broadcast over the queries (to_q / to_k are dead weights, as in the reference).
            out = jnp.broadcast_to(self.to_v(context), (b, n, self.heads * self.dim_head))
            return self.to_out[0](out)
        # heads-major (b, h, n, d): the score tile (b, h, q, k) is then row-major in k, so the
        # softmax reductions run along contiguous memory and neither GEMM needs a transpose
        split = lambda t: t.reshape(t.shape[0], t.shape[1], self.heads, self.dim_head).transpose(0, 2, 1, 3)
        q = split(self.to_q(x)) * (self.dim_head ** -0.5)
        k, v = split(self.to_k(context)), split(self.to_v(context))

        def attend(qc):
            s = jnp.einsum("bhqd,bhkd->bhqk", qc, k).astype(jnp.float32)
            p = jnp.exp(s - jax.lax.stop_gradient(s.max(axis=-1, keepdims=True)))
            # normalise after the second GEMM: one divide per output, not per score
            o = jnp.einsum("bhqk,bhkd->bhqd", p.astype(v.dtype), v).astype(jnp.float32)
            return (o / p.sum(axis=-1, keepdims=True)).astype(v.dtype)

        c = self.query_chunk_cpu if conv_ops.cpu_kernels() else self.query_chunk
        if n <= c:
            out = attend(q)
        else:  # chunk the queries so peak memory is O(c * keys), not O(n * keys)
            nc = -(-n // c)
            qp = jnp.pad(q, ((0, 0), (0, 0), (0, nc * c - n), (0, 0)))
            qp = jnp.moveaxis(qp.reshape(b, self.heads, nc, c, self.dim_head), 2, 0)
            out = jax.lax.map(attend, qp)                                  # (nc, b, h, c, d)
            out = jnp.moveaxis(out, 0, 2).reshape(b, self.heads, nc * c, self.dim_head)[:, :, :n]
        out = out.transpose(0, 2, 1, 3).reshape(b, n, self.heads * self.dim_head)
        return self.to_out[0](out)


class GEGLU(nnx.Module):
    def __init__(self, dim_in, dim_out, *, rngs, dtype):
        self.proj = linear(dim_in, 2 * dim_out, rngs=rngs, dtype=dtype)

    def __call__(self, x):
        a, gate = jnp.split(self.proj(x), 2, axis=-1)  # a is the first half
        return a * gelu(gate)


class FeedForward(nnx.Module):
    """`FeedForward(glu=True)`: net = [GEGLU, Dropout(0), Linear]."""

    def __init__(self, dim, *, rngs, dtype, mult=4):
        inner = dim * mult
        self.net = nnx.List([GEGLU(dim, inner, rngs=rngs, dtype=dtype), None,
                             linear(inner, dim, rngs=rngs, dtype=dtype)])

    def __call__(self, x):
        return self.net[2](self.net[0](x))


class BasicTransformerBlock(nnx.Module):
    def __init__(self, dim, heads, dim_head, context_dim, *, rngs, dtype):
        mk_ln = lambda: nnx.LayerNorm(dim, epsilon=1e-5, dtype=dtype, use_fast_variance=False, rngs=rngs)
        self.attn1 = CrossAttention(dim, dim, heads, dim_head, rngs=rngs, dtype=dtype)
        self.ff = FeedForward(dim, rngs=rngs, dtype=dtype)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head, rngs=rngs, dtype=dtype)
        self.norm1, self.norm2, self.norm3 = mk_ln(), mk_ln(), mk_ln()

    def __call__(self, x, context):
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nnx.Module):
    """GroupNorm(32, eps 1e-6) -> proj_in 1x1 -> transformer block -> proj_out 1x1 (zero init) -> + input."""

    def __init__(self, dim, heads, dim_head, context_dim, *, rngs, dtype, depth=1):
        inner = heads * dim_head
        self.norm = nnx.GroupNorm(dim, num_groups=32, epsilon=1e-6, dtype=dtype,
                                  use_fast_variance=False, rngs=rngs)
        self.proj_in = conv(dim, inner, 1, rngs=rngs, dtype=dtype)
        self.transformer_blocks = nnx.List([
            BasicTransformerBlock(inner, heads, dim_head, context_dim, rngs=rngs, dtype=dtype)
            for _ in range(depth)])
        self.proj_out = nnx.Conv(inner, dim, (1, 1), dtype=dtype, kernel_init=nnx.initializers.zeros,
                                 rngs=rngs, conv_general_dilated=conv_ops.conv_general_dilated)

    def __call__(self, x, context=None):
        b, h, w, _ = x.shape
        y = self.proj_in(self.norm(x))
        y = y.reshape(b, h * w, y.shape[-1])
        for block in self.transformer_blocks:
            y = block(y, context)
        return self.proj_out(y.reshape(b, h, w, -1)) + x


class PreNorm(nnx.Module):
    def __init__(self, dim, fn):
        self.fn = fn
        self.norm = ChannelLayerNorm(dim)

    def __call__(self, x, context=None):
        return self.fn(self.norm(x), context)


class Residual(nnx.Module):
    def __init__(self, fn):
        self.fn = fn

    def __call__(self, x, context=None):
        return self.fn(x, context) + x


class Upsample(nnx.Module):
    """nearest x2 then conv3x3 with bias (torch Sequential index 1 holds the conv)."""

    def __init__(self, cin, cout, *, rngs, dtype):
        self.layers = nnx.List([None, conv(cin, cout, 3, rngs=rngs, dtype=dtype)])

    def __call__(self, x):
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return self.layers[1](x)


def downsample(cin, cout, *, rngs, dtype):
    """4x4 stride-2 conv, padding 1, with bias."""
    return conv(cin, cout, 4, stride=2, padding=1, rngs=rngs, dtype=dtype)
