"""DA-CLIP: a frozen CLIP plus a trainable image controller (daclip_model.py, ControlTransformer).

The controller is a second ViT with the frozen tower's architecture. After each of its
blocks a Linear(W, W) with bias (`zero_modules[i]`, zero-initialised) maps the residual
stream to a control signal; the frozen tower adds those signals after its own blocks in
REVERSE order (the official `x += control.pop()`), so frozen block i receives the
controller's block L-1-i. The controller's head gives the degradation embedding.

Names mirror the official state dict: `clip` (frozen CLIP), `visual_control.transformer.
{transformer.resblocks[i], zero_modules[i]}`, and the top-level `logit_scale` used by the
forward pass and the loss (`clip.logit_scale` is frozen and unused).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from daclip_jax.models.compiled import jit_when_eager
from daclip_jax.models.clip import CLIP, CLIPConfig, Transformer, VisionTransformer, l2_normalize


class ControlTransformer(nnx.Module):
    """Runs the controller blocks; returns the stream and the per-block control signals."""

    def __init__(self, cfg: CLIPConfig, *, rngs: nnx.Rngs):
        w = cfg.vision_width
        self.transformer = Transformer(w, cfg.vision_layers, cfg.vision_heads, cfg, rngs=rngs)
        self.zero_modules = nnx.List([
            nnx.Linear(w, w, use_bias=True, dtype=cfg.compute_dtype,
                       kernel_init=nnx.initializers.zeros, bias_init=nnx.initializers.zeros,
                       rngs=rngs)
            for _ in range(cfg.vision_layers)])

    def __call__(self, x, control=None):
        if control is not None:
            raise ValueError("the controller itself takes no control input")
        hiddens = []
        for i, zero_module in enumerate(self.zero_modules):
            x = self.transformer.block(i, x)
            hiddens.append(zero_module(x))  # the controller's own stream is not modified
        return x, hiddens


class ControlVisionTransformer(VisionTransformer):
    """The controller ViT: the frozen tower's layout with a ControlTransformer inside."""

    def __init__(self, cfg: CLIPConfig, *, rngs: nnx.Rngs):
        super().__init__(cfg, rngs=rngs, make_transformer=lambda: ControlTransformer(cfg, rngs=rngs))

    def __call__(self, images):
        """-> (degradation features (B, embed), hiddens: list of L (B, seq, W))."""
        x, hiddens = self.transformer(self.embed(images))
        return self.head(x), hiddens


class DaCLIP(nnx.Module):
    def __init__(self, cfg: CLIPConfig, *, rngs: nnx.Rngs, clip: CLIP | None = None):
        self.cfg = cfg
        self.clip = clip if clip is not None else CLIP(cfg, rngs=rngs)
        # the official model deep-copies the frozen tower into the controller at build time:
        # build it abstractly (no random init to throw away) and copy every value in
        self.visual_control = nnx.eval_shape(lambda: ControlVisionTransformer(cfg, rngs=nnx.Rngs(0)))
        init_controller_from_clip(self)
        self.logit_scale = nnx.Param(jnp.asarray(math.log(1 / 0.07), jnp.float32))

    @property
    def visual(self) -> VisionTransformer:
        """The official `DaCLIP.visual` alias of `clip.visual`."""
        return self.clip.visual

    @classmethod
    def from_clip(cls, clip: CLIP, *, official_init_bug: bool = False) -> "DaCLIP":
        """DA-CLIP around a (pretrained) CLIP; controller = copy of its image tower, control
        linears zero, logit_scale = the CLIP's. With `official_init_bug=True` the controller
        is initialised as the official `initial_controller()` did (see init_controller_from_clip);
        use it only to reproduce the official training run."""
        model = cls(clip.cfg, rngs=nnx.Rngs(0), clip=clip)
        init_controller_from_clip(model, official_init_bug=official_init_bug)
        model.logit_scale[...] = jnp.array(clip.logit_scale[...], jnp.float32)
        return model

    @jit_when_eager("control", "normalize")
    def encode_image(self, images, control: bool = False, normalize: bool = False):
        if not control:
            return self.clip.encode_image(images, normalize=normalize)
        degra_features, hiddens = self.visual_control(images)
        image_features = self.clip.visual(images, control=hiddens)
        if normalize:
            return l2_normalize(image_features), l2_normalize(degra_features)
        return image_features, degra_features

    @jit_when_eager("normalize")
    def encode_text(self, tokens, normalize: bool = False):
        return self.clip.encode_text(tokens, normalize=normalize)

    @jit_when_eager()
    def __call__(self, images, text):
        """`text` (B, 2·ctx): caption tokens then degradation tokens, as the official CSV dataset."""
        caption, degradation = jnp.split(jnp.asarray(text), 2, axis=-1)
        image_features, image_degra_features = self.encode_image(images, control=True,
                                                                 normalize=True)
        return dict(image_features=image_features,
                    text_features=self.encode_text(caption, normalize=True),
                    image_degra_features=image_degra_features,
                    text_degra_features=self.encode_text(degradation, normalize=True),
                    logit_scale=jnp.exp(self.logit_scale[...]))


def _is_trainable(path, value) -> bool:
    """Controller parameters and DaCLIP's own logit_scale; never anything under `clip`."""
    if not isinstance(value, nnx.Param) or "clip" in path:
        return False
    return "visual_control" in path or path[-1] == "logit_scale"


# nnx filter for the parameters DA-CLIP training updates (official lock_clip()).
TRAINABLE = _is_trainable


def init_controller_from_clip(model: DaCLIP, *, official_init_bug: bool = False) -> None:
    """Controller ← copy of the frozen image tower; zero_modules ← 0. Every controller
    parameter is (re)written, so the controller may be abstract (nnx.eval_shape) before.

    official_init_bug=True reproduces the official `initial_controller()`, which zips
    clip.visual's parameters against the (longer) controller list: the frozen
    ln_post.weight is broadcast into every row of zero_modules[0].weight, ln_post.bias is
    copied into zero_modules[0].bias, and the controller's ln_post keeps its build-time value
    (LayerNorm default 1/0). So the official training did NOT start with zero control.
    """
    frozen = {p: v.get_value() for p, v in nnx.to_flat_state(nnx.state(model.clip.visual, nnx.Param))}
    new = {}
    for path, var in nnx.to_flat_state(nnx.state(model.visual_control, nnx.Param)):
        shape = var.get_value().shape
        if path[:2] == ("transformer", "zero_modules"):
            new[path] = jnp.zeros(shape, jnp.float32)
        else:  # controller transformer.transformer.* <- frozen transformer.*
            src = path[1:] if path[0] == "transformer" else path
            # own buffers (copy=True): trainers donate the controller, never the frozen tower
            new[path] = jnp.array(frozen[src], jnp.float32, copy=True)
    if official_init_bug:
        w = model.cfg.vision_width
        ln_w, ln_b = frozen[("ln_post", "scale")], frozen[("ln_post", "bias")]
        # torch weight (out, in) with every row = ln_w  →  flax kernel (in, out) = ln_w[:, None]
        new[("transformer", "zero_modules", 0, "kernel")] = jnp.broadcast_to(ln_w[:, None], (w, w))
        new[("transformer", "zero_modules", 0, "bias")] = jnp.array(ln_b, copy=True)
        new[("ln_post", "scale")] = jnp.ones((w,), jnp.float32)
        new[("ln_post", "bias")] = jnp.zeros((w,), jnp.float32)
    nnx.update(model.visual_control, nnx.from_flat_state(new))


def param_counts(model: DaCLIP) -> dict[str, int]:
    """total (with the official visual.* aliases, as the state dict counts), unique, trainable."""
    size = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
    unique = size(nnx.state(model, nnx.Param))
    alias = size(nnx.state(model.clip.visual, nnx.Param))
    return dict(total=unique + alias, unique=unique,
                trainable=size(nnx.state(model, TRAINABLE)))
