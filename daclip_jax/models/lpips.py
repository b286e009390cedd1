"""LPIPS v0.1 with the AlexNet trunk (the `lpips` package's `LPIPS(net="alex")`), in Flax NNX.

The official test.py scores restorations with `lpips.LPIPS(net='alex')(GT * 2 - 1, SR * 2 - 1)`:

    x -> ScalingLayer: (x - shift) / scale
      -> torchvision AlexNet `features`, tapped after relu1..relu5 (lpips' slice1..slice5)
      -> each tap unit-normalised over channels (eps 1e-10 added to the norm)
      -> (f0 - f1)^2 -> lin_k: 1x1 conv to one channel, no bias (dropout is off in eval)
      -> spatial mean -> sum over the five taps

Activations are NHWC. The trunk is torchvision's ImageNet AlexNet, which cannot be
downloaded here: `load_lpips` takes a local torchvision AlexNet state dict. The five linear
heads ship with the `lpips` wheel (weights/v0.1/alex.pth, BSD-2-Clause); they are copied into
daclip_jax/assets/lpips_alex_v0.1.npz (1152 values) so scoring does not need the lpips package.
"""

from __future__ import annotations

import functools
import os
from importlib import resources

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# lpips.ScalingLayer: ImageNet mean/std expressed for inputs in [-1, 1]
SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
SCALE = np.array([0.458, 0.448, 0.450], np.float32)
# torchvision alexnet().features: (index in `features`, in, out, kernel, stride, padding);
# a 3x3/2 max pool precedes the convs at indices 3 and 6
ALEX_CONVS = ((0, 3, 64, 11, 4, 2), (3, 64, 192, 5, 1, 2), (6, 192, 384, 3, 1, 1),
              (8, 384, 256, 3, 1, 1), (10, 256, 256, 3, 1, 1))
POOL_BEFORE = (3, 6)
HEADS_ASSET = "lpips_alex_v0.1.npz"
# smallest side the trunk maps to a non-empty relu5 (11x11/4 conv, two 3x3/2 pools)
MIN_SIZE = 31


class AlexNetFeatures(nnx.Module):
    """torchvision AlexNet's conv trunk; returns the five ReLU outputs LPIPS compares."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.convs = nnx.List([
            nnx.Conv(cin, cout, (k, k), strides=(s, s), padding=((p, p), (p, p)), rngs=rngs)
            for _, cin, cout, k, s, p in ALEX_CONVS])

    def __call__(self, x):
        taps = []
        for (index, *_), conv in zip(ALEX_CONVS, self.convs):
            if index in POOL_BEFORE:
                x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")
            x = jax.nn.relu(conv(x))
            taps.append(x)
        return taps


def _unit_normalize(x, eps=1e-10):
    """lpips.normalize_tensor: x / (||x||_channels + eps)."""
    return x / (jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True)) + eps)


class LPIPS(nnx.Module):
    """Distance between image batches in [-1, 1] (B, H, W, 3) -> (B,)."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.net = AlexNetFeatures(rngs=rngs)
        # lin_k: Conv2d(C_k, 1, 1, bias=False) as a (C_k,) weight vector
        self.lins = nnx.List([nnx.Param(jnp.zeros((cout,), jnp.float32))
                              for _, _, cout, *_ in ALEX_CONVS])

    def __call__(self, in0, in1):
        scale = lambda x: (x - SHIFT) / SCALE      # noqa: E731
        f0, f1 = self.net(scale(in0)), self.net(scale(in1))
        total = 0.0
        for a, b, w in zip(f0, f1, self.lins):
            d = (_unit_normalize(a) - _unit_normalize(b)) ** 2
            total = total + jnp.mean(d @ w[...], axis=(1, 2))
        return total


def default_heads() -> dict[str, np.ndarray]:
    """The lpips v0.1 AlexNet linear heads {'lin0'..'lin4': (C_k,) float32}."""
    with (resources.files("daclip_jax") / "assets" / HEADS_ASSET).open("rb") as f:
        z = np.load(f)
        return {k: np.asarray(z[k], np.float32) for k in z.files}


def lpips_from_state_dicts(alexnet: dict[str, np.ndarray], heads: dict[str, np.ndarray] | None = None,
                           *, source: str = "AlexNet state dict") -> LPIPS:
    """Build LPIPS from a torchvision AlexNet state dict (`features.N.weight/bias`; the
    classifier is ignored) and the linear heads (default: the lpips wheel's v0.1)."""
    from daclip_jax.convert.torch_io import check_layout

    expected = {}
    for index, cin, cout, k, _, _ in ALEX_CONVS:
        expected[f"features.{index}.weight"] = (cout, cin, k, k)
        expected[f"features.{index}.bias"] = (cout,)
    trunk = {k: v for k, v in alexnet.items() if k.startswith("features.")}
    check_layout(trunk, expected, source=source)
    heads = default_heads() if heads is None else heads
    model = LPIPS(rngs=nnx.Rngs(0))
    for (index, *_), conv in zip(ALEX_CONVS, model.net.convs):
        conv.kernel[...] = jnp.asarray(np.transpose(trunk[f"features.{index}.weight"], (2, 3, 1, 0)))
        conv.bias[...] = jnp.asarray(trunk[f"features.{index}.bias"])
    for k, lin in enumerate(model.lins):
        w = np.asarray(heads[f"lin{k}"], np.float32).reshape(-1)
        if w.shape != lin.shape:
            raise ValueError(f"LPIPS head lin{k} has {w.shape[0]} weights, expected {lin.shape[0]}")
        lin[...] = jnp.asarray(w)
    return model


def load_lpips(path: str | os.PathLike) -> LPIPS:
    """LPIPS-Alex from a local torchvision AlexNet checkpoint (.pth; read weights-only)."""
    from daclip_jax.convert.torch_io import load_state_dict

    return lpips_from_state_dicts(load_state_dict(path), source=os.fspath(path))


@functools.partial(jax.jit, static_argnums=0)
def _distance(graphdef, state, in0, in1):
    return nnx.merge(graphdef, state)(in0, in1)


def lpips_distance(model: LPIPS, reference: np.ndarray, image: np.ndarray) -> float:
    """LPIPS between two float (H, W, 3) RGB images in [0, 1], as test.py: both mapped to
    [-1, 1] (x * 2 - 1), no rounding to uint8."""
    if min(np.shape(image)[:2]) < MIN_SIZE:
        raise ValueError(f"LPIPS-Alex needs images of at least {MIN_SIZE}x{MIN_SIZE} pixels, "
                         f"got {np.shape(image)[0]}x{np.shape(image)[1]}")
    graphdef, state = nnx.split(model)
    a = jnp.asarray(reference, jnp.float32)[None] * 2 - 1
    b = jnp.asarray(image, jnp.float32)[None] * 2 - 1
    return float(_distance(graphdef, state, a, b)[0])
