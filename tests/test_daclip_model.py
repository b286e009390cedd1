"""Runtime knobs of the towers: remat, bfloat16 compute, named configs, pruned last block."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from daclip_jax.convert.daclip import daclip_from_state_dict, restore_params, _flat_params, _nest
from daclip_jax.losses import daclip_loss
from daclip_jax.models.clip import CLIPConfig
from daclip_jax.models.daclip import TRAINABLE, DaCLIP

TINY = CLIPConfig.named("daclip_tiny")


@pytest.fixture(scope="module")
def golden(golden_dir, golden_state_dict):
    z = np.load(golden_dir / "daclip_tiny.npz")
    return daclip_from_state_dict(golden_state_dict("daclip_tiny"), TINY), z


def with_cfg(model, **kw):
    cfg = model.cfg.replace(**kw)
    return restore_params(nnx.eval_shape(lambda: DaCLIP(cfg, rngs=nnx.Rngs(0))),
                          _nest(_flat_params(model)), source="test")


def loss_and_grads(model, images, text):
    graphdef, trainable, frozen = nnx.split(model, TRAINABLE, ...)

    @jax.jit
    def f(trainable):
        return daclip_loss(nnx.merge(graphdef, trainable, frozen)(images, text))[0]

    return jax.value_and_grad(f)(trainable)


def test_remat_gives_the_same_loss_and_grads(golden):
    model, z = golden
    images, text = z["in/images"].transpose(0, 2, 3, 1), z["in/text_for_forward"]
    l0, g0 = loss_and_grads(model, images, text)
    l1, g1 = loss_and_grads(with_cfg(model, remat=True), images, text)
    np.testing.assert_allclose(l1, l0, atol=1e-6)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(b, a, atol=1e-6)


def test_bfloat16_compute_keeps_float32_params_and_is_close(golden):
    model, z = golden
    bf = with_cfg(model, dtype="bfloat16")
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(bf, nnx.Param)))
    images = z["in/images"].transpose(0, 2, 3, 1)
    img, deg = nnx.jit(lambda m, x: m.encode_image(x, control=True, normalize=True))(bf, images)
    assert img.dtype == jnp.float32
    ref = z["out/encode_image_control_true_normalized/degra_features"]
    assert np.abs(np.asarray(deg) - ref).max() < 0.05  # bf16 has ~3 significant digits
    txt = nnx.jit(lambda m, t: m.encode_text(t, normalize=True))(bf, z["in/caption_tokens"])
    ref = z["out/encode_text_caption"] / np.linalg.norm(z["out/encode_text_caption"], axis=-1, keepdims=True)
    assert np.abs(np.asarray(txt) - ref).max() < 0.05


def test_pruned_last_block_equals_full_block(golden):
    """Towers compute only the pooled token in their last block; check against the full one."""
    model, z = golden
    tokens = jnp.asarray(z["in/caption_tokens"])
    clip = model.clip
    x = clip.token_embedding(tokens) + clip.positional_embedding[...]
    full = clip.transformer(x, causal=True)
    eot = jnp.argmax(tokens, -1)
    pruned = clip.transformer(x, causal=True, query_index=eot)
    np.testing.assert_allclose(pruned[:, 0], full[jnp.arange(4), eot], atol=1e-6)


def test_named_configs():
    b32 = CLIPConfig.named("ViT-B-32")
    assert (b32.vision_heads, b32.text_heads, b32.grid_size) == (12, 8, 7)
    assert CLIPConfig.named("daclip_ViT-B-32") == b32
    assert CLIPConfig.named("ViT-L-14-336-quickgelu").quick_gelu
    assert CLIPConfig.named("ViT-L-14-336").image_size == 336
    assert CLIPConfig.named("ViT-B-16").patch_size == 16
    assert CLIPConfig.from_dict(b32.to_dict()) == b32
    assert (TINY.vision_heads, TINY.text_heads, TINY.embed_dim) == (2, 2, 32)
    with pytest.raises(ValueError, match="unknown CLIP config"):
        CLIPConfig.named("ViT-H-99")


def test_fresh_model_has_zero_control(golden):
    """A DaCLIP built from scratch starts as the official one: controller = frozen tower copy."""
    model, z = golden
    fresh = DaCLIP.from_clip(model.clip)
    images = z["in/images"].transpose(0, 2, 3, 1)
    img, deg = nnx.jit(lambda m, x: m.encode_image(x, control=True))(fresh, images)
    np.testing.assert_allclose(img, z["out/encode_image_control_false"], atol=1e-5)
    np.testing.assert_allclose(deg, z["out/encode_image_control_false"], atol=1e-5)
