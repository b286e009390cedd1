"""The models' public methods run compiled when called eagerly (as the README shows), compile
once per shape, and still trace inline inside the trainers' / sampler's own jit."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from daclip_jax.models.clip import CLIPConfig
from daclip_jax.models.daclip import DaCLIP
from daclip_jax.models.unet import ConditionalUNet, UNetConfig, init_unet

CFG = UNetConfig(nf=32, ch_mult=(1, 2), context_dim=8)


def _inputs(b=1, size=16):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(size=(b, size, size, 3)), jnp.float32)
    ctx = jnp.asarray(rng.normal(size=(b, 8)), jnp.float32)
    return x, ctx


def _compiled_calls(method):
    return method.compiled._cache_size()


def test_eager_unet_call_is_one_cached_compile_and_matches_the_traced_call():
    unet = init_unet(CFG, seed=0)
    x, ctx = _inputs()
    before = _compiled_calls(ConditionalUNet.__call__)
    y1 = unet(x, x * 0.5, 10.0, text_context=ctx, image_context=ctx)
    y2 = unet(x + 1, x * 0.5, 20.0, text_context=ctx, image_context=ctx)
    assert _compiled_calls(ConditionalUNet.__call__) == before + 1     # same shapes: no recompile
    unet(x[:, :8, :8], x[:, :8, :8], 10.0, text_context=ctx, image_context=ctx)
    assert _compiled_calls(ConditionalUNet.__call__) == before + 2     # a new shape compiles
    graphdef, state = nnx.split(unet)   # reference: the call traced inside the caller's jit
    ref = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x, x * 0.5, 10.0, ctx, ctx))(state, x)
    np.testing.assert_allclose(np.asarray(y1), np.asarray(ref), rtol=0, atol=1e-5)
    assert not np.allclose(np.asarray(y1), np.asarray(y2))
    y, debug = unet(x, x * 0.5, 10.0, text_context=ctx, image_context=ctx, return_debug=True)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(y1))
    assert set(debug) >= {"padded_input", "time_mlp_out", "mid_block2_out"}


def test_unet_traces_inline_inside_jit_and_grad():
    unet = init_unet(CFG, seed=0)
    graphdef, params = nnx.split(unet)
    x, ctx = _inputs()

    def loss(p):
        return jnp.mean(nnx.merge(graphdef, p)(x, x * 0.5, 10.0, ctx, ctx) ** 2)

    jaxpr = str(jax.make_jaxpr(jax.grad(loss))(params))
    assert "compiled" not in jaxpr        # no nested jit of the eager wrapper
    g = jax.jit(jax.grad(loss))(params)
    assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(g))


def test_eager_daclip_encoders_are_compiled_and_match_op_by_op():
    cfg = CLIPConfig.named("daclip_tiny")
    model = DaCLIP(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(2, cfg.image_size, cfg.image_size, 3)), jnp.float32)
    tokens = np.zeros((2, cfg.context_length), np.int32)
    tokens[:, 0], tokens[:, 3] = 49406, 49407
    before = _compiled_calls(DaCLIP.encode_image)
    content, degra = model.encode_image(images, control=True)
    model.encode_image(images * 2, control=True)
    assert _compiled_calls(DaCLIP.encode_image) == before + 1
    graphdef, state = nnx.split(model)
    ref = jax.jit(lambda s, x: nnx.merge(graphdef, s).encode_image(x, control=True))(state, images)
    np.testing.assert_allclose(np.asarray(content), np.asarray(ref[0]), rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(degra), np.asarray(ref[1]), rtol=0, atol=1e-5)
    plain = model.encode_image(images, normalize=True)        # control=False: the frozen CLIP
    np.testing.assert_allclose(np.linalg.norm(np.asarray(plain), axis=-1), 1, rtol=1e-5)
    text = model.encode_text(tokens)
    ref = jax.jit(lambda s, t: nnx.merge(graphdef, s).encode_text(t))(state, tokens)
    np.testing.assert_allclose(np.asarray(text), np.asarray(ref), rtol=0, atol=1e-5)


def test_changed_weights_are_seen_by_the_next_eager_call():
    unet = init_unet(CFG, seed=0)
    x, ctx = _inputs()
    y1 = unet(x, x, 10.0, ctx, ctx)
    unet.final_conv.bias[...] = unet.final_conv.bias[...] + 1.0
    y2 = unet(x, x, 10.0, ctx, ctx)
    np.testing.assert_allclose(np.asarray(y2), np.asarray(y1) + 1.0, rtol=0, atol=1e-5)
