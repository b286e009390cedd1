"""Parity of the UNet's CPU rewrites (models/conv.py, the attention blocks) with the plain JAX
formulations, forward and gradient, float32, <= 1e-5 relative; and the platform switch."""

import platform
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from daclip_jax.models import conv as conv_ops
from daclip_jax.models import onednn
from daclip_jax.models.unet_blocks import CrossAttention, LinearAttention

DN = ("NHWC", "HWIO", "NHWC")


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / np.abs(b).max()


def _grads(f, *args):
    """Value and gradients of a random projection of f's output (a full VJP)."""
    out = f(*args)
    proj = jax.random.normal(jax.random.key(1), out.shape, out.dtype)
    return out, jax.grad(lambda *a: jnp.sum(f(*a) * proj), argnums=tuple(range(len(args))))(*args)


def test_cpu_rewrites_are_selected_on_cpu_only():
    assert conv_ops.cpu_kernels("cpu")
    assert not conv_ops.cpu_kernels("gpu")
    assert not conv_ops.cpu_kernels("tpu")
    assert not conv_ops.cpu_kernels("cuda")
    with conv_ops.force_cpu_kernels(False):
        assert not conv_ops.cpu_kernels("cpu")
    assert conv_ops.cpu_kernels("cpu")


@pytest.mark.parametrize("shape", [(2, 9, 11, 16, 48), (1, 8, 8, 128, 16)])
def test_1x1_conv_as_gemm_matches_lax_conv_forward_and_gradient(shape):
    n, h, w, ci, co = shape
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(n, h, w, ci)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(1, 1, ci, co)), jnp.float32)
    ref = lambda x, k: lax.conv_general_dilated(x, k, (1, 1), ((0, 0), (0, 0)), dimension_numbers=DN)
    ours = lambda x, k: conv_ops.conv_general_dilated(x, k, (1, 1), ((0, 0), (0, 0)),
                                                      dimension_numbers=DN)
    with conv_ops.force_cpu_kernels(True):
        jaxpr = str(jax.make_jaxpr(ours)(x, k))
        y, (gx, gk) = _grads(jax.jit(ours), x, k)
    assert "conv_general_dilated" not in jaxpr and "dot_general" in jaxpr
    y_ref, (gx_ref, gk_ref) = _grads(jax.jit(ref), x, k)
    assert _rel(y, y_ref) <= 1e-5 and _rel(gx, gx_ref) <= 1e-5 and _rel(gk, gk_ref) <= 1e-5


def test_off_cpu_every_conv_is_lax_conv():
    x = jnp.ones((1, 4, 4, 8))
    k = jnp.ones((1, 1, 8, 4))
    with conv_ops.force_cpu_kernels(False):
        jaxpr = str(jax.make_jaxpr(lambda x, k: conv_ops.conv_general_dilated(
            x, k, (1, 1), ((0, 0), (0, 0)), dimension_numbers=DN))(x, k))
    assert "conv_general_dilated" in jaxpr


def test_other_convs_pass_through_unchanged_without_onednn():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(1, 8, 8, 4)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(4, 4, 4, 6)), jnp.float32)
    args = ((2, 2), ((1, 1), (1, 1)))
    with conv_ops.force_cpu_kernels(True), conv_ops.force_onednn(False):
        y = conv_ops.conv_general_dilated(x, k, *args, dimension_numbers=DN)
    np.testing.assert_array_equal(y, lax.conv_general_dilated(x, k, *args, dimension_numbers=DN))


def _require_onednn():
    if not (sys.platform.startswith("linux") and platform.machine() == "x86_64"):
        pytest.skip("the onednn-cpu-gomp wheel (a dependency there) is Linux x86-64 only")
    assert onednn.available(), onednn.unavailable_reason()


@pytest.mark.parametrize("shape", [
    # n, h, w, cin, cout, kernel, stride, padding: the UNet's 3x3, its 7x7 init_conv, its 4x4
    # stride-2 Downsample, odd sizes, a larger image (a long reduction over pixels), and a 5x5
    # stride-2 whose input gradient oneDNN computes with gemm:jit even with AVX2 (issue 20)
    (2, 16, 20, 16, 24, 3, 1, 1), (1, 21, 17, 6, 64, 7, 1, 3), (2, 16, 18, 32, 32, 4, 2, 1),
    (1, 96, 80, 16, 16, 3, 1, 1), (2, 19, 17, 8, 16, 5, 2, 2)])
def test_onednn_convolution_matches_lax_conv_forward_and_gradients(shape):
    _require_onednn()
    n, h, w, ci, co, k, s, p = shape
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(n, h, w, ci)), jnp.float32)
    kern = jnp.asarray(rng.normal(size=(k, k, ci, co)) / np.sqrt(k * k * ci), jnp.float32)
    args = ((s, s), ((p, p), (p, p)))
    ref = lambda x, kern: lax.conv_general_dilated(x, kern, *args, dimension_numbers=DN)
    ours = lambda x, kern: conv_ops.conv_general_dilated(x, kern, *args, dimension_numbers=DN)
    with conv_ops.force_cpu_kernels(True), conv_ops.force_onednn(True):
        jaxpr = str(jax.make_jaxpr(jax.grad(lambda x, kern: ours(x, kern).sum(), (0, 1)))(x, kern))
        y, (gx, gk) = _grads(jax.jit(ours), x, kern)
        y2, (gx2, gk2) = _grads(jax.jit(ours), x, kern)
    assert jaxpr.count("buffer_callback") == 3 and "conv_general_dilated" not in jaxpr
    y_ref, (gx_ref, gk_ref) = _grads(jax.jit(ref), x, kern)
    assert _rel(y, y_ref) <= 1e-5 and _rel(gx, gx_ref) <= 1e-5 and _rel(gk, gk_ref) <= 1e-5
    for a, b in ((y, y2), (gx, gx2), (gk, gk2)):   # deterministic: resumes stay bit-identical
        np.testing.assert_array_equal(a, b)


def test_onednn_runs_inside_vmap_and_loops():
    _require_onednn()
    rng = np.random.default_rng(1)
    xs = jnp.asarray(rng.normal(size=(3, 1, 12, 12, 8)), jnp.float32)
    kern = jnp.asarray(rng.normal(size=(3, 3, 8, 8)) / 8, jnp.float32)
    pad = ((1, 1), (1, 1))
    f = lambda conv: lambda x: conv(x, kern, (1, 1), pad, dimension_numbers=DN)
    with conv_ops.force_cpu_kernels(True), conv_ops.force_onednn(True):
        mapped = jax.jit(jax.vmap(f(conv_ops.conv_general_dilated)))(xs)
        looped = jax.jit(lambda x: lax.fori_loop(0, 3, lambda i, y: f(conv_ops.conv_general_dilated)(y), x))(xs[0])
    ref = jax.vmap(f(lax.conv_general_dilated))(xs)
    ref_loop = lax.fori_loop(0, 3, lambda i, y: f(lax.conv_general_dilated)(y), xs[0])
    assert _rel(mapped, ref) <= 1e-5 and _rel(looped, ref_loop) <= 1e-5


def test_onednn_is_off_without_cpu_kernels_or_on_several_devices(monkeypatch):
    x, kern = jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 4, 4))
    grad = lambda: str(jax.make_jaxpr(jax.grad(lambda k: conv_ops.conv_general_dilated(
        x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=DN).sum()))(kern))
    with conv_ops.force_cpu_kernels(False):
        assert "buffer_callback" not in grad()
    monkeypatch.setattr(jax, "device_count", lambda *a: 8)   # a callback is not partitioned
    with conv_ops.force_cpu_kernels(True):
        assert "buffer_callback" not in grad()


def test_onednn_missing_library_is_reported_not_raised(monkeypatch):
    monkeypatch.setattr(onednn, "_candidates", lambda: iter(["/nonexistent/libdnnl.so.3"]))
    onednn._load.cache_clear()
    try:
        assert not onednn.available() and "libdnnl.so.3" in onednn.unavailable_reason()
        with conv_ops.force_cpu_kernels(True):
            assert not conv_ops.onednn_enabled()
    finally:
        onednn._load.cache_clear()


def _linear_attention_reference(m, x):
    """The official formula as written (module_util.LinearAttention), NHWC."""
    b, h, w, c = x.shape
    n, heads, d = h * w, m.heads, m.dim_head
    qkv = lax.conv_general_dilated(x, m.to_qkv.kernel[...], (1, 1), "VALID", dimension_numbers=DN)
    q, k, v = jnp.split(qkv.reshape(b, n, 3 * heads * d), 3, axis=-1)
    split = lambda t: t.reshape(b, n, heads, d)
    q = jax.nn.softmax(split(q), axis=-1) * d ** -0.5
    k = jax.nn.softmax(split(k), axis=1)
    v = split(v) / n
    ctx = jnp.einsum("bnhd,bnhe->bhde", k, v)
    out = jnp.einsum("bhde,bnhd->bnhe", ctx, q).reshape(b, h, w, heads * d)
    out = lax.conv_general_dilated(out, m.to_out[0].kernel[...], (1, 1), "VALID",
                                   dimension_numbers=DN) + m.to_out[0].bias[...]
    return m.to_out[1](out)


def test_linear_attention_matches_the_official_formula_forward_and_gradient():
    m = LinearAttention(24, rngs=nnx.Rngs(0), dtype=jnp.float32)
    graphdef, state = nnx.split(m)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 6, 10, 24)) * 3, jnp.float32)
    ours = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
    ref = jax.jit(lambda s, x: _linear_attention_reference(nnx.merge(graphdef, s), x))
    y, (gs, gx) = _grads(ours, state, x)
    y_ref, (gs_ref, gx_ref) = _grads(ref, state, x)
    assert _rel(y, y_ref) <= 1e-5
    assert _rel(gx, gx_ref) <= 1e-5
    for a, b in zip(jax.tree.leaves(gs), jax.tree.leaves(gs_ref)):
        assert _rel(a, b) <= 1e-5


def _attention_reference(m, x):
    b, n, _ = x.shape
    split = lambda t: t.reshape(b, n, m.heads, m.dim_head)
    q, k, v = split(m.to_q(x)) * m.dim_head ** -0.5, split(m.to_k(x)), split(m.to_v(x))
    p = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k), axis=-1)
    return m.to_out[0](jnp.einsum("bhqk,bkhd->bqhd", p, v).reshape(b, n, -1))


@pytest.mark.parametrize("cpu", [True, False])
def test_chunked_self_attention_matches_plain_softmax_attention(cpu):
    m = CrossAttention(64, 64, 2, 32, rngs=nnx.Rngs(0), dtype=jnp.float32)
    graphdef, state = nnx.split(m)
    n = 300                              # > the CPU chunk (128): padded last chunk
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, n, 64)), jnp.float32)
    with conv_ops.force_cpu_kernels(cpu):
        y, (gs, gx) = _grads(jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)), state, x)
    y_ref, (gs_ref, gx_ref) = _grads(jax.jit(lambda s, x: _attention_reference(nnx.merge(graphdef, s), x)),
                                     state, x)
    assert _rel(y, y_ref) <= 1e-5 and _rel(gx, gx_ref) <= 1e-5
    for a, b in zip(jax.tree.leaves(gs), jax.tree.leaves(gs_ref)):
        if np.abs(np.asarray(b)).max() > 0:
            assert _rel(a, b) <= 1e-5


@pytest.mark.parametrize("platforms, cpu", [("cpu", True), ("cuda", False), ("tpu,cpu", False),
                                            ("gpu", False)])
def test_allocator_tuning_follows_the_platform_without_initialising_a_backend(monkeypatch, platforms, cpu):
    monkeypatch.setenv("JAX_PLATFORMS", platforms)
    assert conv_ops.default_platform_is_cpu() is cpu
    if not cpu:
        assert conv_ops.tune_cpu_allocator() is False
    else:    # thresholds set, and the compiler's freed heap trimmed after each compilation
        from daclip_jax.data import pipeline

        assert conv_ops.tune_cpu_allocator() is True and pipeline._TRIM_AFTER_COMPILES
