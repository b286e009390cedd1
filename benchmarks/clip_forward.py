"""DA-CLIP ViT-B/32 forward throughput and parameter counts (random weights).

    python benchmarks/clip_forward.py [--batch 8] [--runs 7] [--dtype float32]

Prints the items of /work/shared/design/performance.md: encode_image(control=True) and the
frozen encode_image at batch 8, 224², no grad; plus total / unique / trainable parameters.
Numbers are only meaningful on a quiet machine (the official ones are medians on 2 threads).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np
from flax import nnx

from daclip_jax.models.clip import CLIPConfig
from daclip_jax.models.daclip import DaCLIP, param_counts

# Official PyTorch code on the 2-core reference machine (performance.md), seconds per batch of 8.
OFFICIAL = {"control=True": 0.739, "control=False": 0.381}
TARGET_IMG_S = {"control=True": 16.0}
REFERENCE_GFLOPS = 253.0  # numpy 2048² matmul on the quiet reference machine (performance.md)


def matmul_gflops(runs: int = 3) -> float:
    """numpy 2048² float32 matmul GFLOP/s now: performance.md's physical reference (253 on a
    quiet reference machine), to tell a slow model from a busy machine."""
    a = np.random.default_rng(0).random((2048, 2048), np.float32)
    a @ a
    best = min(_timed(lambda: a @ a) for _ in range(runs))
    return 2 * 2048 ** 3 / best / 1e9


def _timed(f) -> float:
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def time_call(fn, *args, runs: int) -> list[float]:
    jax.block_until_ready(fn(*args))  # compile + warm-up
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return times


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--model", default="ViT-B-32")
    args = ap.parse_args(argv)

    cfg = CLIPConfig.named(args.model, dtype=args.dtype)
    t = time.perf_counter()
    # jit the init: eager initialisers compile one small program per shape
    model = nnx.jit(lambda: DaCLIP(cfg, rngs=nnx.Rngs(0)))()
    # non-zero control linears, as in a trained model (zero ones could be optimised away)
    for i, zm in enumerate(model.visual_control.transformer.zero_modules):
        zm.kernel[...] = 0.01 * jax.random.normal(jax.random.key(i), zm.kernel[...].shape)
    build_s = time.perf_counter() - t
    graphdef, state = nnx.split(model)
    images = jax.random.normal(jax.random.key(0), (args.batch, cfg.image_size, cfg.image_size, 3))

    @jax.jit
    def control(state, x):
        return nnx.merge(graphdef, state).encode_image(x, control=True)

    @jax.jit
    def frozen(state, x):
        return nnx.merge(graphdef, state).encode_image(x, control=False)

    rows = []
    for name, fn in (("control=True", control), ("control=False", frozen)):
        ref = matmul_gflops()
        times = time_call(fn, state, images, runs=args.runs)
        ref = (ref + matmul_gflops()) / 2
        med = statistics.median(times)
        flops = fn.lower(state, images).compile().cost_analysis()
        flops = flops.get("flops", float("nan")) if isinstance(flops, dict) else float("nan")
        rows.append((name, med, args.batch / med, flops / med / 1e9, ref))

    counts = param_counts(model)
    print(f"DA-CLIP {args.model} encode_image, batch {args.batch}, {cfg.image_size}², {args.dtype}, "
          f"{jax.devices()[0].platform} x{jax.device_count()}, median of {args.runs} "
          f"(model built in {build_s:.1f} s)\n")
    print("| work | time / batch | img/s | GFLOP/s | numpy matmul GFLOP/s now | "
          "img/s scaled to a 253 GFLOP/s machine | official img/s | target img/s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, med, ips, gflops, ref in rows:
        off = args.batch / OFFICIAL[name] if args.batch == 8 else float("nan")
        tgt = TARGET_IMG_S.get(name)
        print(f"| encode_image({name}) | {med:.3f} s | {ips:.1f} | {gflops:.0f} | {ref:.0f} | "
              f"{ips * REFERENCE_GFLOPS / ref:.1f} | {off:.1f} | {'≥ %.0f' % tgt if tgt else '—'} |")
    print("\n(the scaled column assumes the model slows down with the machine as a big matmul "
          "does; it is an estimate, the measured columns are the numbers)")
    print("\n| parameters | count | official |")
    print("|---|---|---|")
    for k, off in (("total", 334_062_850), ("unique", 246_213_634), ("trainable", 94_936_321)):
        print(f"| {k}{' (with visual.* aliases)' if k == 'total' else ''} | {counts[k]:,} | {off:,} |")


if __name__ == "__main__":
    main()
