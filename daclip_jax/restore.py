"""Universal image restoration: DA-CLIP embeddings of the LQ + IR-SDE sampling with the UNet.

As the official test.py / app.py: the LQ's CLIP view goes through
`encode_image(view, control=True)` -> (content, degradation) (both unnormalised), the content
embedding is the UNet's `image_context`, the degradation embedding its `text_context`; the
reverse process starts at LQ + max_sigma * z and runs the posterior sampler.

Large images are restored in overlapping tiles (same embeddings for all tiles, computed from
the whole image, and the same per-pixel noise field as a whole-image run), blended with
linear ramps over the overlaps, so memory is bounded by the tile size, not the image.
"""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from daclip_jax import sampling

# above this many pixels restore_image tiles automatically (tile=None)
AUTO_TILE_PIXELS = 1024 * 1024
AUTO_TILE = 512


@functools.partial(jax.jit, static_argnums=0)
def _encode(graphdef, state, views):
    return nnx.merge(graphdef, state).encode_image(views, control=True)


def daclip_contexts(daclip_model, lq):
    """(image_context, text_context), each (1, embed): DA-CLIP content and degradation
    embeddings of the LQ's CLIP view (unnormalised, as the reference feeds the UNet)."""
    from daclip_jax.preprocess import clip_view

    size = getattr(getattr(daclip_model, "cfg", None), "image_size", 224)
    view = jnp.asarray(clip_view(np.asarray(lq, np.float32), size=size))[None]
    graphdef, state = nnx.split(daclip_model)
    content, degradation = _encode(graphdef, state, view)
    return content, degradation


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Starts of tiles of `tile` covering [0, length) with at least `overlap` shared pixels."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def _ramp(size: int, overlap: int, left: bool, right: bool) -> np.ndarray:
    """1 inside, linear ramps over `overlap` pixels on the sides that meet another tile."""
    i = np.arange(size, dtype=np.float32) + 0.5
    w = np.ones(size, np.float32)
    if overlap > 0:
        if left:
            w = np.minimum(w, i / overlap)
        if right:
            w = np.minimum(w, (size - i) / overlap)
    return w


@contextlib.contextmanager
def _progress_bar(total, enabled, desc):
    if not enabled:
        yield
        return
    if callable(enabled):   # a caller's own display (the web page): fn(steps done, total)
        done = [0]

        def tick(_t):
            done[0] += 1
            enabled(done[0], total)

        sampling.set_progress(tick)
        try:
            yield
        finally:
            sampling.set_progress(None)
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="step", leave=False)
    sampling.set_progress(lambda _t: bar.update(1))
    try:
        yield
    finally:
        sampling.set_progress(None)
        bar.close()


def restore_image(daclip_model, unet, lq, sde, steps=100, sampler="posterior", seed=0, tile=None,
                  overlap=32, *, contexts=None, progress=True, clip_x0=False):
    """Restore one LQ image.

    lq: float32 (H, W, 3) RGB in [0, 1], any size. sde: an `IRSDE` (the training one; `steps`
    < sde.T uses the official sample_T scaling). tile: tile size in pixels (None: whole image
    up to AUTO_TILE_PIXELS, tiles of AUTO_TILE above). contexts: precomputed
    (image_context, text_context) instead of running `daclip_model`. clip_x0: clip the
    sampler's x0 estimates to [0, 1] (daclip_jax.sampling; for briefly trained networks).
    progress: True for a tqdm bar, or a callable `fn(steps done, total)` called after each
    sampling step (total counts every tile's steps).
    Returns float32 (H, W, 3) in [0, 1].
    """
    lq = np.asarray(lq, np.float32)
    if lq.ndim != 3 or lq.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {lq.shape}")
    H, W, _ = lq.shape
    image_context, text_context = daclip_contexts(daclip_model, lq) if contexts is None else contexts
    key = jax.random.key(seed)
    if tile is None and H * W > AUTO_TILE_PIXELS:
        tile = AUTO_TILE
    if tile is not None and overlap >= tile:
        raise ValueError(f"overlap ({overlap}) must be smaller than the tile ({tile})")

    def run(crop, offset):
        return sampling.sample(unet, sde, crop[None], text_context, image_context, key, steps,
                               sampler, offset=offset, full_width=W, progress=bool(progress),
                               clip_x0=clip_x0)[0]

    if tile is None or (H <= tile and W <= tile):
        with _progress_bar(steps, progress, "restore"):
            out = np.asarray(run(jnp.asarray(lq), (0, 0)))
        return np.clip(out, 0, 1)

    ys, xs = tile_starts(H, tile, overlap), tile_starts(W, tile, overlap)
    th, tw = min(tile, H), min(tile, W)
    acc = np.zeros((H, W, 3), np.float32)
    wsum = np.zeros((H, W, 1), np.float32)
    with _progress_bar(steps * len(ys) * len(xs), progress, f"restore {len(ys) * len(xs)} tiles"):
        for y in ys:
            wy = _ramp(th, overlap, y > 0, y + th < H)
            for x in xs:
                wx = _ramp(tw, overlap, x > 0, x + tw < W)
                out = np.asarray(run(jnp.asarray(lq[y:y + th, x:x + tw]), (y, x)))
                w = (wy[:, None] * wx[None, :])[..., None]
                acc[y:y + th, x:x + tw] += out * w
                wsum[y:y + th, x:x + tw] += w
    return np.clip(acc / wsum, 0, 1)


def load_models(daclip_path, unet_path):
    """(daclip, unet, sde) from any checkpoints `daclip-jax restore` accepts (official .pt/.pth
    or our model dirs). The SDE, and the net's parameterization (in unet.cfg), come with the
    UNet weights (sde.json beside them), else they are the released nets'. Loading errors are
    OSError / ValueError / ImportError; one place, so the CLI and the web app agree."""
    from daclip_jax.convert.daclip import load_daclip
    from daclip_jax.convert.unet import load_unet
    from daclip_jax.sde import sde_for_weights

    return load_daclip(daclip_path), load_unet(unet_path), sde_for_weights(unet_path)
