"""DA-CLIP / CLIP towers against the official PyTorch outputs (tests/golden/daclip_tiny.npz).

The golden weights go through the official-format importer, so this also checks the key
mapping (transposes, fused in_proj, doubled `transformer.`, aliases)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from daclip_jax.convert.daclip import daclip_from_state_dict
from daclip_jax.losses import daclip_loss
from daclip_jax.models.clip import CLIPConfig
from daclip_jax.models.daclip import TRAINABLE

TOL = 1e-5


@pytest.fixture(scope="module")
def golden(golden_dir):
    return dict(np.load(golden_dir / "daclip_tiny.npz"))


@pytest.fixture(scope="module")
def model(golden_state_dict):
    return daclip_from_state_dict(golden_state_dict("daclip_tiny"), CLIPConfig.named("daclip_tiny"))


@pytest.fixture(scope="module")
def images(golden):
    return jnp.asarray(golden["in/images"].transpose(0, 2, 3, 1))  # NCHW -> NHWC


def close(got, want, tol=TOL):
    got = np.asarray(got)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=tol)


def test_encode_image_frozen(model, golden, images):
    close(model.encode_image(images), golden["out/encode_image_control_false"])
    close(model.encode_image(images, normalize=True), golden["out/encode_image_control_false_normalized"])


@pytest.mark.parametrize("normalize", [False, True])
def test_encode_image_control(model, golden, images, normalize):
    suffix = "_normalized" if normalize else ""
    img, deg = model.encode_image(images, control=True, normalize=normalize)
    close(img, golden[f"out/encode_image_control_true{suffix}/image_features"])
    close(deg, golden[f"out/encode_image_control_true{suffix}/degra_features"])


def test_controller_hiddens_and_injection_order(model, golden, images):
    lnd = lambda x: np.asarray(x).transpose(1, 0, 2)  # (B, seq, W) -> (seq, B, W)
    _, hiddens = model.visual_control(images)
    for i, h in enumerate(hiddens):
        close(lnd(h), golden["debug/controller_hiddens_LND"][i])
    # frozen block outputs before injection, with hiddens added in reverse order
    vis = model.clip.visual
    x = vis.embed(images)
    for i in range(len(hiddens)):
        x = vis.transformer.block(i, x)
        close(lnd(x), golden["debug/frozen_block_outputs_before_injection_LND"][i])
        x = x + hiddens[len(hiddens) - 1 - i]


def test_encode_text(model, golden):
    close(model.encode_text(golden["in/caption_tokens"]), golden["out/encode_text_caption"])
    close(model.encode_text(golden["in/degradation_tokens"]), golden["out/encode_text_degradation"])


def test_forward_and_loss(model, golden, images):
    out = model(images, golden["in/text_for_forward"])
    for k in ("image_features", "text_features", "image_degra_features", "text_degra_features",
              "logit_scale"):
        close(out[k], golden[f"out/forward/{k}"])
    total, parts = daclip_loss(out)
    close(total, golden["out/loss/total"])
    close(parts["contrastive_loss"], golden["out/loss/contrastive_loss"])
    close(parts["degra_loss"], golden["out/loss/degra_loss"])


def test_gradients_of_trainable_params(model, golden, images):
    from daclip_jax.convert.daclip import daclip_key_table

    text = golden["in/text_for_forward"]
    graphdef, trainable, frozen = nnx.split(model, TRAINABLE, ...)

    def loss_fn(trainable):
        return daclip_loss(nnx.merge(graphdef, trainable, frozen)(images, text))[0]

    grads = dict(nnx.to_flat_state(jax.jit(jax.grad(loss_fn))(trainable)))
    want = {k[5:] for k in golden if k.startswith("grad/")}
    rows = [r for r in daclip_key_table(model.cfg) if r[0] in want]
    assert len(rows) == len(want) == 51 and set(grads) == {r[1] for r in rows}
    from daclip_jax.convert.open_clip import _TO_TORCH

    for key, path, kind in rows:
        g = _TO_TORCH[kind](np.asarray(grads[path].get_value()))
        close(g, golden[f"grad/{key}"])


def test_trainable_filter_counts(model):
    from daclip_jax.models.daclip import param_counts

    counts = param_counts(model)
    clip_params = sum(x.size for x in jax.tree.leaves(nnx.state(model.clip, nnx.Param)))
    assert counts["unique"] == counts["trainable"] + clip_params
    assert not any("clip" in p for p, _ in nnx.to_flat_state(nnx.state(model, TRAINABLE)))
