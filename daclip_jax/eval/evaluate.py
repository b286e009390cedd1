"""The official test protocol (`config/daclip-sde/test.py`) over a paired test set.

For every (LQ, GT) pair: DA-CLIP's embeddings of the LQ's CLIP view (content -> the UNet's
image context, degradation -> its text context, and the degradation DA-CLIP predicts), the
IR-SDE reverse process from LQ + max_sigma z, then PSNR / SSIM / PSNR-Y / SSIM-Y (and LPIPS)
of the result against the GT (daclip_jax.eval.image_quality).

Restoration runs the code `restore` uses (`sampling.sample` per image with key(seed); large
images through `restore_image`'s tiling), spread over the local devices:

* images of one size are stacked and the batch is sharded over a ``data`` mesh (parameters
  replicated), as the trainers shard theirs; each image is vmapped through its own reverse
  process, so its noise and result do not depend on the batch it is in;
* an image whose size no other image in the chunk shares goes to a device of its own; all
  are dispatched before any result is awaited, so the devices run at once.

Results are written after every chunk, so `--resume` continues a killed run where it stopped.
"""

from __future__ import annotations

import collections
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from daclip_jax import parallel, sampling
from daclip_jax.eval import results as R
from daclip_jax.eval.image_quality import image_scores
from daclip_jax.eval.testset import ImagePair
from daclip_jax.imageio import read_image, write_png
from daclip_jax.labels import DEGRADATIONS
from daclip_jax.restore import AUTO_TILE_PIXELS, daclip_contexts, restore_image


class BatchRestorer:
    """`restore_image(..., seed)` for lists of images, batched and sharded over devices."""

    def __init__(self, daclip, unet, sde, *, steps, sampler="posterior", seed=0, clip_x0=False,
                 tile=None, overlap=32, devices=None):
        self.daclip, self.unet, self.sde = daclip, unet, sde
        self.kw = dict(steps=steps, sampler=sampler, seed=seed, clip_x0=clip_x0)
        self.tile, self.overlap = tile, overlap
        self.devices = list(jax.local_devices() if devices is None else devices)
        self.mesh = parallel.make_mesh({"data": -1}, self.devices)
        graphdef, state = nnx.split(unet)
        self._state = state
        self._replicated = None
        self._on = {}
        key = jax.random.key(seed)

        def batch(state, lq, text_context, image_context):
            net = nnx.merge(graphdef, state)

            def one(x, t, i):   # exactly restore_image's whole-image call, per image
                return sampling.sample(net, sde, x[None], t[None], i[None], key, steps, sampler,
                                       clip_x0=clip_x0)[0]
            return jnp.clip(jax.vmap(one)(lq, text_context, image_context), 0, 1)

        self._batch = jax.jit(batch)
        # how the images went: "sharded" batches over the mesh, "one_per_device", "tiled"
        self.dispatch = collections.Counter()

    def _tiled(self, lq) -> bool:
        h, w = lq.shape[:2]
        if self.tile is not None:
            return h > self.tile or w > self.tile
        return h * w > AUTO_TILE_PIXELS

    def _sharded(self, lqs, contexts):
        if self._replicated is None:
            self._replicated = jax.device_put(self._state, parallel.replicated(self.mesh))
        n = len(self.devices)
        pad = (-len(lqs)) % n                 # fill the mesh by repeating the last image
        x = np.stack(lqs + [lqs[-1]] * pad)
        img = np.concatenate([np.asarray(c[0]) for c in contexts] + [np.asarray(contexts[-1][0])] * pad)
        txt = np.concatenate([np.asarray(c[1]) for c in contexts] + [np.asarray(contexts[-1][1])] * pad)
        x, txt, img = parallel.put((x, txt, img), (parallel.batch_sharding(self.mesh, 4),
                                                   parallel.batch_sharding(self.mesh, 2),
                                                   parallel.batch_sharding(self.mesh, 2)))
        return self._batch(self._replicated, x, txt, img), len(lqs)

    def _on_device(self, lq, contexts, device):
        if device not in self._on:
            self._on[device] = jax.device_put(self._state, device)
        x, txt, img = jax.device_put((lq[None], np.asarray(contexts[1]), np.asarray(contexts[0])), device)
        return self._batch(self._on[device], x, txt, img), 1

    def restore(self, lqs: list[np.ndarray], contexts: list[tuple]) -> list[np.ndarray]:
        """Restored float32 (H, W, 3) images in [0, 1]; contexts[i] = daclip_contexts(lqs[i])."""
        out: list = [None] * len(lqs)
        by_size = collections.defaultdict(list)
        for i, lq in enumerate(lqs):
            if self._tiled(lq):
                out[i] = restore_image(self.daclip, self.unet, lq, self.sde, tile=self.tile,
                                       overlap=self.overlap, contexts=contexts[i], progress=False,
                                       **self.kw)
                self.dispatch["tiled"] += 1
            else:
                by_size[lq.shape].append(i)
        n = len(self.devices)
        jobs, singles = [], []
        for idx in by_size.values():
            if len(idx) == 1 and n > 1:
                singles += idx
            else:   # one batch over the mesh, padded to a multiple of the device count
                self.dispatch["sharded"] += 1
                jobs.append((idx, self._sharded([lqs[i] for i in idx], [contexts[i] for i in idx])))
        self.dispatch["one_per_device"] += len(singles)
        for k, i in enumerate(singles):       # one image per device, all dispatched before any wait
            jobs.append(([i], self._on_device(lqs[i], contexts[i], self.devices[k % n])))
        for idx, (arr, count) in jobs:
            arr = parallel.fetch(arr)[:count]
            for i, a in zip(idx, arr):
                out[i] = a
        return out


def _read_pair(pair: ImagePair):
    # alpha dropped, as the official read_img keeps the first three planes
    lq, gt = read_image(pair.lq, alpha="drop"), read_image(pair.gt, alpha="drop")
    if lq.shape != gt.shape:
        raise ValueError(f"{pair.lq} is {lq.shape[0]}x{lq.shape[1]} but its GT {pair.gt} is "
                         f"{gt.shape[0]}x{gt.shape[1]}; the protocol scores same-size pairs")
    return lq, gt


def _classify(daclip, lqs):
    from daclip_jax.classify import classify_degradation
    from daclip_jax.preprocess import clip_view

    size = daclip.cfg.image_size
    return classify_degradation(daclip, np.stack([clip_view(x, size=size) for x in lqs]))


def evaluate(pairs: list[ImagePair], result: dict, out_path: str, *, daclip=None, restorer=None,
             lpips_model=None, crop_border=4, batch_size=1, save_images=None, progress=True) -> dict:
    """Score every pair not yet in `result['images']`, saving `result` to `out_path` after each
    chunk of `batch_size` images. restorer=None scores the LQ itself (the identity)."""
    from daclip_jax.models.lpips import lpips_distance

    done = {r["name"] for r in result["images"]}
    todo = [p for p in pairs if p.name not in done]
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(pairs), initial=len(pairs) - len(todo), unit="img", desc="evaluate",
                   dynamic_ncols=True)
    timing = result["timing"]
    timing["devices"] = len(restorer.devices) if restorer is not None else 1
    try:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            tic = time.perf_counter()
            lqs, gts = zip(*[_read_pair(p) for p in chunk])
            probs = _classify(daclip, lqs) if daclip is not None else None
            if restorer is None:
                outs = list(lqs)
            else:
                outs = restorer.restore(list(lqs), [daclip_contexts(daclip, x) for x in lqs])
            for k, (pair, gt, out) in enumerate(zip(chunk, gts, outs)):
                rec = {"name": pair.name, "degradation": pair.degradation, "label": pair.label,
                       "lq": pair.lq, "gt": pair.gt, "size": list(gt.shape[:2])}
                rec.update(image_scores(gt, out, crop_border))
                if lpips_model is not None:   # test.py: on the float images, not the uint8 ones
                    rec["lpips"] = lpips_distance(lpips_model, gt, out)
                if probs is not None:
                    top = int(np.argmax(probs[k]))
                    rec["predicted"], rec["confidence"] = DEGRADATIONS[top], float(probs[k][top])
                result["images"].append(rec)
                if save_images:
                    dest = os.path.join(save_images, pair.degradation,
                                        os.path.splitext(os.path.basename(pair.gt))[0] + ".png")
                    os.makedirs(os.path.dirname(dest), exist_ok=True)
                    write_png(dest, out)
            timing["seconds"] += time.perf_counter() - tic
            timing["images"] += len(chunk)
            if restorer is not None:
                timing["dispatch"] = dict(restorer.dispatch)
            result["summary"] = R.summarize(result["images"], lpips_model is not None)
            R.save_result(result, out_path)
            if bar is not None:
                bar.update(len(chunk))
                bar.set_postfix_str(f"PSNR {result['summary']['all']['psnr']:.2f}", refresh=False)
    finally:
        if bar is not None:
            bar.close()
    result["summary"] = R.summarize(result["images"], lpips_model is not None)
    result["complete"] = len(result["images"]) == len(pairs)
    R.save_result(result, out_path)
    return result
