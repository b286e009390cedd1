"""Data pipeline throughput: training pairs/s per degradation type and for mixtures.

    python benchmarks/pipeline.py [--patch 256] [--batches 6] [--batch 8] [--workers 0,2] [--types all] [--packed]

One "pair" is a full training example as the trainer receives it: read + decode a clean photo,
crop, flips, degrade, two CLIP views (224) and the two token rows. Images are scikit-image's
bundled photos (astronaut, chelsea, coffee, ... ~512 px) written as PNG files and read through
an image-folder source, so decoding is included.

`workers=0` runs the map on one thread in this process: that is the per-core rate. `workers=N`
uses grain multiprocessing (N processes, one map thread each). A stage breakdown (CPU ms per
pair, single thread, no grain, allocator tuned as the pipeline tunes it) shows where the time
goes. The sources keep decoded images (`source.cache_mb`, default 512 MiB per process), so after
the first pass over the 12 photos no PNG is decoded again; `--cache-mb 0` measures decoding
every time.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
from absl import app, logging


def _photos_folder(d: str, count: int = 12) -> str:
    import skimage.data
    from PIL import Image

    names = ["astronaut", "chelsea", "coffee", "rocket", "cat", "immunohistochemistry"]
    k = 0
    for name in names:
        img = np.asarray(getattr(skimage.data, name)())
        if img.ndim == 2 or img.shape[-1] != 3:
            continue
        for flip in range(2):
            Image.fromarray(img[:, ::-1] if flip else img).save(os.path.join(d, f"{k:03d}.png"))
            k += 1
    return d


def _config(folder, patch, mode, kinds, workers, packed="", cache_mb=None):
    from daclip_jax.data.pipeline import default_data_config

    cfg = default_data_config()
    cfg.source.path, cfg.source.min_size = folder, 64
    if cache_mb is not None:
        cfg.source.cache_mb = cache_mb
    if packed:
        cfg.source.kind, cfg.source.path = "array_record", packed
    cfg.patch_size = patch
    cfg.degradation.mode = mode
    cfg.degradation.kinds = kinds
    cfg.worker_count = workers
    cfg.read_threads = 1
    cfg.prefetch = 2
    cfg.worker_buffer_size = 2
    cfg.caption.kind = "constant"
    return cfg


def _rate(cfg, batch, batches):
    from daclip_jax.data.pipeline import build_pipeline

    it = iter(build_pipeline(cfg, seed=0, global_batch_size=batch, process_index=0, process_count=1))
    next(it)  # warm-up: worker start, tokenizer load, first decode
    t, c = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(it)
    dt, dc = time.perf_counter() - t, time.process_time() - c
    it.close()  # stop the prefetch threads/workers so they do not eat into the next measurement
    # pairs per CPU-second of this process: the per-core rate even on a shared, loaded machine
    # (meaningful for workers=0 only; worker processes' CPU is not counted here)
    return batch * batches / dt, batch * batches / max(dc, 1e-9)


def _stages(folder, patch, reps=12):
    """CPU ms per pair of each stage, single thread."""
    from daclip_jax.data import degradations as D
    from daclip_jax.data.pipeline import random_crop, random_flips, record_rng, tune_malloc
    from daclip_jax.data.sources import CachedSource, ImageFolderSource, as_float
    from daclip_jax.preprocess import clip_view
    from daclip_jax.tokenizer import tokenize

    tune_malloc()
    src = CachedSource(ImageFolderSource(folder), 512 << 20)
    rows = []
    t = time.process_time()
    recs = [src.load(i % len(src)) for i in range(reps)]
    rows.append(("read+decode (PNG)", (time.process_time() - t) / reps))
    t = time.process_time()
    recs = [src.load(i % len(src)) for i in range(reps)]
    rows.append(("read (cache hit)", (time.process_time() - t) / reps))
    t = time.process_time()
    patches = [as_float(random_flips(random_crop([r["gt"]], patch, record_rng(0, 0, i)), record_rng(0, 1, i))[0])
               for i, r in enumerate(recs)]
    rows.append(("crop+flips+to float", (time.process_time() - t) / reps))
    for kind in D.DEGRADATIONS:
        t = time.process_time()
        for i, p in enumerate(patches):
            D.degrade(p, [kind], record_rng(0, 2, i))
        rows.append((f"degrade {kind}", (time.process_time() - t) / reps))
    from daclip_jax.data.wild import random_degrade

    t = time.process_time()
    for i, p in enumerate(patches):
        random_degrade(p, record_rng(0, 3, i))
    rows.append(("degrade wild", (time.process_time() - t) / reps))
    t = time.process_time()
    for p in patches:
        clip_view(p)
        clip_view(p)
    rows.append(("2x clip_view 224", (time.process_time() - t) / reps))
    tokenize(["warm"])
    t = time.process_time()
    for _ in range(reps):
        tokenize(["a photo of a cat on a sofa", "hazy, noisy"])
    rows.append(("tokenize 2x77", (time.process_time() - t) / reps))
    return rows


def _row(name, rates, workers):
    cpu = next((c for (_, c), w in zip(rates, workers) if w == 0), float("nan"))
    print(f"{name:<18}" + "".join(f"{r:14.1f}" for r, _ in rates) + f"{cpu:18.1f}", flush=True)


def main(argv):
    logging.set_verbosity(logging.WARNING)
    p = argparse.ArgumentParser()
    p.add_argument("--patch", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--batches", type=int, default=6)
    p.add_argument("--workers", default="0,2")
    p.add_argument("--types", default="all", help="'all' or comma-separated types (+ 'mixed', 'wild')")
    p.add_argument("--no-stages", action="store_true")
    p.add_argument("--cache-mb", type=int, default=None, help="source.cache_mb (default: the config's)")
    p.add_argument("--packed", action="store_true",
                   help="also time 'mixed' reading raw-encoded ArrayRecord shards (no PNG decode)")
    args = p.parse_args(argv[1:])
    from daclip_jax.labels import DEGRADATIONS

    workers = [int(w) for w in args.workers.split(",")]
    runs = list(DEGRADATIONS) + ["mixed", "wild"] if args.types == "all" else args.types.split(",")
    print(f"pipeline throughput, {args.patch}x{args.patch} patches, batch {args.batch}, "
          f"{args.batches} timed batches, {os.cpu_count()} CPU(s) visible")
    with tempfile.TemporaryDirectory() as d:
        folder = _photos_folder(d)
        if not args.no_stages:
            print("\nstage                   CPU ms/pair (1 thread)")
            for name, sec in _stages(folder, args.patch):
                print(f"  {name:<26}{sec * 1e3:8.1f}")
        print("\n" + f"{'type':<18}" + "".join(f"{f'workers={w}':>14}" for w in workers)
              + f"{'per CPU-s (w=0)':>18}   (pairs/s, wall clock)")
        for run in runs:
            if run == "mixed":
                mode, kinds = "mixture", tuple(DEGRADATIONS)
            elif run == "wild":
                mode, kinds = "wild", tuple(DEGRADATIONS)
            else:
                mode, kinds = "single", (run,)
            rates = [_rate(_config(folder, args.patch, mode, kinds, w, cache_mb=args.cache_mb), args.batch,
                           args.batches) for w in workers]
            _row(run, rates, workers)
        if args.packed:
            from daclip_jax.data.pack import pack
            from daclip_jax.data.sources import ImageFolderSource

            shards = os.path.join(d, "shards")
            pack(ImageFolderSource(folder), shards, encoding="raw")
            rates = [_rate(_config(folder, args.patch, "mixture", tuple(DEGRADATIONS), w, shards), args.batch,
                           args.batches) for w in workers]
            _row("mixed, raw shards", rates, workers)
        # Closed iterators' prefetch threads may still be reading when the folder is deleted:
        # those reads are not part of any measurement, so do not report them as bad files.
        import logging as py_logging

        py_logging.getLogger("daclip_jax.data.sources").setLevel(py_logging.ERROR)


if __name__ == "__main__":
    # absl parses (no) flags so grain workers can read theirs; our options go to argparse
    app.run(lambda _: main(sys.argv), argv=sys.argv[:1])
