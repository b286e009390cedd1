"""Throughput of the degradation synthesis on 256^2 patches, one core (samples/s).

Prints per-type rates (severity ~ U(0, 1)), the mixed stream (sample_kinds + degrade, the
training distribution) and the wild-IR `random_degrade`. Reference (official code, same machine
kind): Gaussian noise 438/s, JPEG q10 3085/s, random_degrade 94/s; targets: mixed >= 50 (aim
200), wild >= 190. Rates use process CPU time (robust to a shared machine), best of `--repeats`
rounds; each round runs every row once (in reverse order every other round), so rows compared
with each other (the "before #13" rows: procedural inpainting masks, the wild blur without the
'psf' kernel type) alternate in time, and their samples use the same seeds.

    OMP_NUM_THREADS=1 python benchmarks/degradations.py [--n 100] [--repeats 3] [--default-malloc]

The allocator is tuned as the training pipeline tunes it (`pipeline.tune_malloc`: freed ~1 MB
temporaries stay in the heap instead of costing page faults on every reuse); --default-malloc
measures glibc's defaults instead.

The last column rescales each rate by how fast this machine runs the official noise recipe right
now (numpy float64 randn, clip, uint8 cast, as `generate_LQ.py` does; 438/s on a quiet machine):
a rough quiet-machine estimate when other jobs share the cores.
"""

import argparse
import contextlib
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import skimage.data  # noqa: E402

from daclip_jax.data import degradations as D  # noqa: E402
from daclip_jax.data import wild  # noqa: E402


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


def rates(work, imgs, n, repeats):
    """Best samples per CPU-second of each (name, fn) over `repeats` rounds of all rows.

    Sample i of every row and round draws from its own generator seeded (1, i), so rows that
    differ in one option do the same work wherever that option is not drawn; the row order
    reverses every round so that no row always follows the same one (allocator, caches).
    """
    for name, fn in work:
        fn(imgs[0], np.random.default_rng(0))         # warm-up (imports, caches)
    best = {name: 0.0 for name, _ in work}
    for r in range(repeats):
        for name, fn in (work if r % 2 == 0 else work[::-1]):
            t = time.process_time()
            for i in range(n):
                fn(imgs[i % len(imgs)], np.random.default_rng([1, i]))
            best[name] = max(best[name], n / (time.process_time() - t))
    return best


@contextlib.contextmanager
def without_psf_kernels():
    """The wild blur as it was before #13: 'psf' dropped, the other nine renormalised.

    Zero weight on 'psf' draws the same kernel types from the same uniforms as the old
    nine-entry list did."""
    official = wild.KERNEL_PROB
    p = official.copy()
    p[wild.KERNEL_LIST.index("psf")] = 0.0
    wild.KERNEL_PROB = p / p.sum()
    try:
        yield
    finally:
        wild.KERNEL_PROB = official


def wild_without_psf(im, r):
    with without_psf_kernels():
        return wild.random_degrade(im, r)


def matmul_gflops(n=1024, runs=5):
    """numpy float32 n^2 matmul GFLOP/s on this thread now: how loaded the core is."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


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
    procedural = {"uncompleted": {"mask_source": "procedural"}}
    work = [(kind, lambda im, r, k=kind: D.degrade(im, k, r)) for kind in D.APPLY_ORDER]
    work += [
        ("uncompleted, procedural masks (before #13)", lambda im, r: D.degrade(im, "uncompleted", r, options=procedural)),
        ("noisy sigma 50 (official 438)", lambda im, r: D.degrade(im, "noisy", r, severity=0.9)),
        ("jpeg q10 (official 3085)", lambda im, r: D.degrade(im, "jpeg-compressed", r, severity=1.0)),
        ("mixed stream (target >= 50, aim 200)", lambda im, r: D.degrade(im, D.sample_kinds(r), r)),
        ("wild random_degrade (official 94, target >= 190)", wild.random_degrade),
        ("wild random_degrade, no psf kernel (before #13)", wild_without_psf),
    ]
    only = [w for w in args.only.split(",") if w]
    work = [(name, fn) for name, fn in work if not only or any(w in name for w in only)]
    calib_name = "official noise recipe, for calibration (438 quiet)"
    load, gflops = os.getloadavg()[0], matmul_gflops()
    best = rates(work + [(calib_name, official_noise)], imgs, args.n, args.repeats)
    load, gflops = (load + os.getloadavg()[0]) / 2, (gflops + matmul_gflops()) / 2
    calib = best[calib_name]
    w = max(len(name) for name in best)
    print(f"{'work (256x256, 1 core)':<{w}}  samples/s  x438/calib")
    for name, r in best.items():
        print(f"{name:<{w}}  {r:9.1f}  {r * 438.0 / calib:10.1f}")
    print(f"load average {load:.1f} on {os.cpu_count()} cores; numpy 1024^2 float32 matmul, one "
          f"thread: {gflops:.1f} GFLOP/s (mean of before and after)")


if __name__ == "__main__":
    main()
