"""Formulations of the UNet's convolutions and self-attention on CPU, timed side by side (issue 14).

    python benchmarks/conv.py                 # conv table + attention chunk table
    python benchmarks/conv.py --only conv     # or: attention, 1x1

Each row is one layer shape of the official (nf 64) or the demo (nf 16) UNet, float32, NHWC.
Columns are median milliseconds per call of one jitted function, variants alternating:

- 3x3 stride-1 forward: XLA's convolution, im2col + one GEMM, 9 shifted GEMMs summed, and
  Winograd F(2x2, 3x3) in jnp (input / filter transforms, 16 batched GEMMs, output transform);
- 3x3 gradient (input + filter): XLA's autodiff lowering vs a custom VJP whose input gradient
  is a convolution with the flipped kernel and whose filter gradient is one GEMM over im2col
  patches (or a convolution with batch and feature swapped), and what models/conv.py ships on
  CPU: oneDNN's convolution and gradients (models/onednn.py; its forward is a column of the
  forward table too);
- 1x1: XLA's convolution vs one GEMM over the pixels (what models/conv.py does on CPU);
- self-attention over n tokens: the query-chunk sizes of CrossAttention.

"rel err" is the largest |difference| / max |reference| against XLA's convolution (and its
jax.grad). The formulations that lose everywhere stay here as the measurement behind the
choice; models/conv.py carries only what won.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

from daclip_jax.models import conv as conv_ops  # noqa: E402
from daclip_jax.models import onednn  # noqa: E402

DN = ("NHWC", "HWIO", "NHWC")


def xla_conv(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=DN)


def _patches(x):
    n, h, w, c = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return jnp.concatenate([xp[:, i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=-1)


def im2col_conv(x, w):
    n, h, wd, c = x.shape
    return (_patches(x).reshape(-1, 9 * c) @ w.reshape(9 * c, -1)).reshape(n, h, wd, -1)


def shifted_gemms(x, w):
    n, h, wd, c = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return sum(jnp.einsum("nhwc,co->nhwo", xp[:, i:i + h, j:j + wd], w[i, j])
               for i in range(3) for j in range(3))


_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float32)
_G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], np.float32)
_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32)


def winograd_f2(x, w):
    """Winograd F(2x2, 3x3): 4x4 input tiles with stride 2, 16 GEMMs of (tiles, C) x (C, O)."""
    n, h, wd, c = x.shape
    o = w.shape[-1]
    th, tw = -(-h // 2), -(-wd // 2)
    xp = jnp.pad(x, ((0, 0), (1, 1 + 2 * th - h), (1, 1 + 2 * tw - wd), (0, 0)))
    tiles = jnp.stack([jnp.stack([xp[:, a:a + 2 * th:2, b:b + 2 * tw:2] for b in range(4)], 3)
                       for a in range(4)], 3)                                  # (n, th, tw, 4, 4, c)
    v = jnp.einsum("ia,nthabc,jb->ijnthc", _BT, tiles, _BT).reshape(4, 4, -1, c)
    u = jnp.einsum("ia,abco,jb->ijco", _G, w, _G)
    m = jnp.einsum("ijpc,ijco->ijpo", v, u).reshape(4, 4, n, th, tw, o)
    y = jnp.einsum("ai,ijnthc,bj->nthabc", _AT, m, _AT)
    return y.transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * th, 2 * tw, o)[:, :h, :wd]


def _custom_vjp_conv(filter_grad):
    @jax.custom_vjp
    def conv(x, w):
        return xla_conv(x, w)

    def fwd(x, w):
        return xla_conv(x, w), (x, w)

    def bwd(res, g):
        x, w = res
        dx = xla_conv(g, jnp.flip(w, (0, 1)).swapaxes(2, 3))   # ordinary conv, flipped kernel
        return dx, filter_grad(x, g)

    conv.defvjp(fwd, bwd)
    return conv


def dw_im2col(x, g):
    c = x.shape[-1]
    return (_patches(x).reshape(-1, 9 * c).T @ g.reshape(-1, g.shape[-1])).reshape(3, 3, c, -1)


def dw_swapped_conv(x, g):
    """Filter gradient as a forward conv: input channels as batch, images as features."""
    return lax.conv_general_dilated(x, g, (1, 1), ((1, 1), (1, 1)),
                                    dimension_numbers=("CHWN", "IHWO", "HWNC"))


def _time(fns, args, repeats):
    """Median ms per call of each jitted fn, alternating."""
    for f in fns.values():
        jax.block_until_ready(f(*args))
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f(*args))
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def _rel(a, b):
    return max(float(jnp.abs(x - y).max() / jnp.abs(y).max())
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# (batch, H, W, Cin, Cout): demo restorer step (b4, 64^2), demo 512x608 forward, official 128^2 step
CONV_SHAPES = [(4, 64, 64, 16, 16), (4, 32, 32, 32, 32), (4, 16, 16, 64, 64), (1, 512, 608, 16, 16),
               (1, 256, 304, 32, 32), (1, 128, 152, 64, 64), (2, 128, 128, 64, 64),
               (2, 64, 64, 128, 128), (2, 32, 32, 256, 256)]
ONE_BY_ONE = [(4, 64, 64, 16, 384), (1, 512, 608, 32, 16), (1, 128, 152, 64, 64), (2, 16, 16, 512, 512)]


def conv_table(repeats):
    rng = np.random.default_rng(0)
    print("\n3x3 stride 1, forward (ms) | gradient: input + filter (ms)")
    print("| shape (n,h,w,cin,cout) | xla | im2col | 9 gemms | winograd F2 | oneDNN (shipped) | max rel err | "
          "xla grad | vjp: flip + im2col gemm | vjp: flip + swapped conv | oneDNN filter grad (shipped) | "
          "max rel err |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    fwd = dict(xla=xla_conv, im2col=im2col_conv, gemms=shifted_gemms, wino=winograd_f2)
    if onednn.available():
        fwd["onednn"] = lambda x, k: conv_ops.onednn_conv(x, k, (1, 1), ((1, 1), (1, 1)))
    grads = dict(xla=xla_conv, im2col=_custom_vjp_conv(dw_im2col), swapped=_custom_vjp_conv(dw_swapped_conv))
    if onednn.available():
        grads["onednn"] = lambda x, k: conv_ops.onednn_conv(x, k, (1, 1), ((1, 1), (1, 1)))
    for n, h, w, ci, co in CONV_SHAPES:
        x = jnp.asarray(rng.normal(size=(n, h, w, ci)), jnp.float32)
        k = jnp.asarray(rng.normal(size=(3, 3, ci, co)) / np.sqrt(9 * ci), jnp.float32)
        g = jnp.asarray(rng.normal(size=(n, h, w, co)), jnp.float32)
        f_jit = {name: jax.jit(f) for name, f in fwd.items()}
        tf = _time(f_jit, (x, k), repeats)
        ef = max(_rel(f_jit[name](x, k), f_jit["xla"](x, k)) for name in fwd)
        g_jit = {name: jax.jit(lambda x, k, g, f=f: jax.vjp(f, x, k)[1](g)) for name, f in grads.items()}
        tg = _time(g_jit, (x, k, g), repeats)
        eg = max(_rel(g_jit[name](x, k, g), g_jit["xla"](x, k, g)) for name in grads)
        print(f"| {(n, h, w, ci, co)} | {tf['xla']:.1f} | {tf['im2col']:.1f} | {tf['gemms']:.1f} | "
              f"{tf['wino']:.1f} | {tf.get('onednn', float('nan')):.1f} | {ef:.0e} | {tg['xla']:.1f} | {tg['im2col']:.1f} | {tg['swapped']:.1f} | "
              f"{tg.get('onednn', float('nan')):.1f} | {eg:.0e} |", flush=True)


def one_by_one_table(repeats):
    rng = np.random.default_rng(0)
    print("\n1x1 convolutions: forward and forward+gradient (ms)")
    print("| shape (n,h,w,cin,cout) | xla conv | gemm | xla conv + grad | gemm + grad |")
    print("|---|---|---|---|---|")
    conv = lambda x, w: lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=DN)
    gemm = lambda x, w: (x.reshape(-1, x.shape[-1]) @ w[0, 0]).reshape(*x.shape[:-1], -1)
    for n, h, w, ci, co in ONE_BY_ONE:
        x = jnp.asarray(rng.normal(size=(n, h, w, ci)), jnp.float32)
        k = jnp.asarray(rng.normal(size=(1, 1, ci, co)), jnp.float32)
        t = _time({"conv": jax.jit(conv), "gemm": jax.jit(gemm)}, (x, k), repeats)
        vg = lambda f: jax.jit(jax.value_and_grad(lambda x, k: jnp.sum(f(x, k) ** 2), (0, 1)))
        tg = _time({"conv": vg(conv), "gemm": vg(gemm)}, (x, k), repeats)
        print(f"| {(n, h, w, ci, co)} | {t['conv']:.1f} | {t['gemm']:.1f} | {tg['conv']:.1f} | "
              f"{tg['gemm']:.1f} |", flush=True)


def attention_table(repeats):
    from flax import nnx

    from daclip_jax.models.unet_blocks import CrossAttention

    print("\nself-attention (SpatialTransformer attn1), forward (ms) by query chunk")
    chunks = (64, 128, 256, 1024)
    print("| tokens x heads | " + " | ".join(f"chunk {c}" for c in chunks) + " |")
    print("|---|" + "---|" * len(chunks))
    rng = np.random.default_rng(0)
    for n, heads in ((1024, 16), (4096, 8), (19456, 2)):  # nf 64 at 256^2 / 512^2, nf 16 at 512x608
        m = CrossAttention(heads * 32, heads * 32, heads, 32, rngs=nnx.Rngs(0), dtype=jnp.float32)
        graphdef, state = nnx.split(m)
        x = jnp.asarray(rng.normal(size=(1, n, heads * 32)), jnp.float32)
        fns = {}
        for c in chunks:
            def f(s, x, c=c):
                mod = nnx.merge(graphdef, s)
                mod.query_chunk = mod.query_chunk_cpu = c
                return mod(x)
            fns[c] = jax.jit(f)
        t = _time(fns, (state, x), repeats)
        print(f"| {n} x {heads} | " + " | ".join(f"{t[c]:.0f}" for c in chunks) + " |", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=("conv", "1x1", "attention"))
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    print(f"CPU float32, {os.cpu_count()} cores, jax {jax.__version__} (shared machine: noisy); "
          f"oneDNN: {'loaded' if onednn.available() else onednn.unavailable_reason()}")
    if args.only in (None, "conv"):
        conv_table(args.repeats)
    if args.only in (None, "1x1"):
        one_by_one_table(args.repeats)
    if args.only in (None, "attention"):
        attention_table(args.repeats)


if __name__ == "__main__":
    main()
