"""Throughput of the degradation synthesis on 256^2 patches, one core (samples/s).

Prints per-type rates (severity ~ U(0, 1)), the mixed stream (sample_kinds + degrade, the
training distribution) and the wild-IR `random_degrade`. Reference (official code, same machine
kind): Gaussian noise 438/s, JPEG q10 3085/s, random_degrade 94/s; targets: mixed >= 50 (aim
200), wild >= 190. Rates use process CPU time (robust to a shared machine), best of `--repeats` runs.

    OMP_NUM_THREADS=1 python benchmarks/degradations.py [--n 100] [--repeats 3] [--default-malloc]

The allocator is tuned as the training pipeline tunes it (`pipeline.tune_malloc`: freed ~1 MB
temporaries stay in the heap instead of costing page faults on every reuse); --default-malloc
measures glibc's defaults instead.

The last column rescales each rate by how fast this machine runs the official noise recipe right
now (numpy float64 randn, clip, uint8 cast, as `generate_LQ.py` does; 438/s on a quiet machine):
a rough quiet-machine estimate when other jobs share the cores.
"""

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import skimage.data  # noqa: E402

from daclip_jax.data import degradations as D  # noqa: E402
from daclip_jax.data.wild import random_degrade  # noqa: E402


def patches(n=8, size=256):
    rng = np.random.default_rng(0)
    out = []
    for name in ("astronaut", "chelsea", "coffee"):
        img = getattr(skimage.data, name)().astype(np.float32) / 255.0
        for _ in range(n):
            y = rng.integers(0, img.shape[0] - size + 1)
            x = rng.integers(0, img.shape[1] - size + 1)
            out.append(np.ascontiguousarray(img[y:y + size, x:x + size]))
    return out


def rate(fn, imgs, n, repeats):
    rng = np.random.default_rng(1)
    fn(imgs[0], rng)                                   # warm-up (imports, caches)
    best = 0.0
    for _ in range(repeats):
        t = time.process_time()
        for i in range(n):
            fn(imgs[i % len(imgs)], rng)
        best = max(best, n / (time.process_time() - t))
    return best


def official_noise(img, rng):
    """The official `add_gaussian_noise(img, 50)` + uint8 save (legacy np.random.randn, float64)."""
    del rng
    noise = np.random.randn(*img.shape) * 50 / 255.0
    return (np.clip(img + noise, 0, 1) * 255).astype(np.uint8)


def main():
    np.random.seed(0)
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--default-malloc", action="store_true", help="do not tune the allocator")
    ap.add_argument("--only", default="", help="comma-separated row names to run (substring match), "
                    "e.g. 'wild,mixed'; the calibration row always runs")
    args = ap.parse_args()
    if not args.default_malloc:
        from daclip_jax.data.pipeline import tune_malloc

        tune_malloc()
    imgs = patches()
    work = [(kind, lambda im, r, k=kind: D.degrade(im, k, r)) for kind in D.APPLY_ORDER]
    work += [
        ("noisy sigma 50 (official 438)", lambda im, r: D.degrade(im, "noisy", r, severity=0.9)),
        ("jpeg q10 (official 3085)", lambda im, r: D.degrade(im, "jpeg-compressed", r, severity=1.0)),
        ("mixed stream (target >= 50, aim 200)", lambda im, r: D.degrade(im, D.sample_kinds(r), r)),
        ("wild random_degrade (official 94, target >= 190)", random_degrade),
    ]
    only = [w for w in args.only.split(",") if w]
    rows = [(name, rate(fn, imgs, args.n, args.repeats)) for name, fn in work
            if not only or any(w in name for w in only)]
    calib = rate(official_noise, imgs, args.n, args.repeats)
    rows.append(("official noise recipe, for calibration (438 quiet)", calib))
    w = max(len(r[0]) for r in rows)
    print(f"{'work (256x256, 1 core)':<{w}}  samples/s  x438/calib")
    for name, r in rows:
        print(f"{name:<{w}}  {r:9.1f}  {r * 438.0 / calib:10.1f}")

if __name__ == "__main__":
    main()
