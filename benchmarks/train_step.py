"""Train-step throughput of the shared trainer's jitted step (one device, synthetic batch).

    python benchmarks/train_step.py [--only tiny,b32,unet2,unet4] [--steps 3] [--dtype float32]

Prints per-step time, examples/s and achieved GFLOP/s (XLA cost analysis of the compiled
step ÷ measured step time). Cases:
  tiny   DA-CLIP daclip_tiny, batch 8 (32² images, 8x154 tokens)
  b32    DA-CLIP ViT-B/32, batch 8 images (224²) + 8x154 tokens: frozen CLIP + controller,
         DaClipLoss, AdamW (the official run's step at batch 8)
  unet2  restoration step, official UNet (universal-ir) + frozen DA-CLIP ViT-B/32, batch 2 x 128²
  unet4  the same at batch 4
The step includes everything the trainer runs: forward/backward, the NaN guard, the AdamW
update, the logit_scale clamp (DA-CLIP) / DA-CLIP context + SDE sampling of t, x_t (IR).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from daclip_jax.train import optim  # noqa: E402
from daclip_jax.train.configlib import load_config  # noqa: E402
from daclip_jax.train.core import get_task  # noqa: E402
from daclip_jax.train.state import TrainState, make_train_step  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _daclip_case(name, size, batch, dtype):
    cfg = load_config(os.path.join(ROOT, "configs/daclip_vit_b32.py"))
    cfg.model.name = name
    cfg.model.dtype = dtype
    rng = np.random.default_rng(0)
    toks = lambda: np.concatenate([rng.integers(1, 49000, (batch, 10)),
                                   np.full((batch, 1), 49407), np.zeros((batch, 66), int)], 1)
    b = {"lq_clip": rng.normal(size=(batch, size, size, 3)).astype(np.float32),
         "caption_tokens": toks().astype(np.int32), "degradation_tokens": toks().astype(np.int32)}
    return cfg, b


def _unet_case(batch, dtype):
    cfg = load_config(os.path.join(ROOT, "configs/universal_ir.py"))
    cfg.model.dtype = dtype
    cfg.model.daclip_dtype = dtype
    rng = np.random.default_rng(0)
    gt = rng.uniform(size=(batch, 128, 128, 3)).astype(np.float32)
    b = {"gt": gt, "lq": np.clip(gt + 0.1 * rng.normal(size=gt.shape), 0, 1).astype(np.float32),
         "lq_clip": rng.normal(size=(batch, 224, 224, 3)).astype(np.float32)}
    return cfg, b


CASES = {
    "tiny": lambda d: (*_daclip_case("daclip_tiny", 32, 8, d), 8),
    "b32": lambda d: (*_daclip_case("ViT-B-32", 224, 8, d), 8),
    "unet2": lambda d: (*_unet_case(2, d), 2),
    "unet4": lambda d: (*_unet_case(4, d), 4),
}
OFFICIAL = {"b32": "2.62 s (target <= 1.75 s)", "unet2": "1.63 s", "unet4": "3.19 s"}


def bench(case: str, steps: int, dtype: str) -> dict:
    cfg, batch, n = CASES[case](dtype)
    task = get_task(cfg.task)(cfg)
    t0 = time.perf_counter()
    model = task.build_model(nnx.Rngs(0))
    graphdef, params, frozen = nnx.split(model, task.trainable, ...)
    tx, schedule = optim.make_optimizer(cfg.train)
    ec = cfg.ema if cfg.ema.decay > 0 else None
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                       ema=jax.tree.map(jnp.copy, params) if ec else None,
                       rng=jax.random.key_data(jax.random.key(0)))
    step = jax.jit(make_train_step(graphdef, task.loss, tx, schedule, ema_cfg=ec,
                                   project=task.project), donate_argnums=(0,))
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled = step.lower(state, frozen, batch).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", 0.0))
    state, m = compiled(state, frozen, batch)
    jax.block_until_ready(m)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, m = compiled(state, frozen, batch)
        jax.block_until_ready((state, m))
        times.append(time.perf_counter() - t0)
    sec = float(np.median(times))
    return dict(case=case, batch=n, step_s=sec, ex_s=n / sec, gflops=flops / 1e9,
                gflop_s=flops / 1e9 / sec, build_s=build_s, compile_s=compile_s,
                loss=float(m["loss"]))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", default="tiny,b32,unet2,unet4")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--dtype", default="float32")
    a = p.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({jax.device_count()} device(s)), "
          f"compute dtype {a.dtype}, median of {a.steps} steps after one warm-up step")
    print(f"{'case':6s} {'batch':>5s} {'step s':>8s} {'ex/s':>8s} {'GFLOP/step':>11s} "
          f"{'GFLOP/s':>8s} {'compile s':>9s}  official")
    for case in a.only.split(","):
        r = bench(case, a.steps, a.dtype)
        print(f"{r['case']:6s} {r['batch']:5d} {r['step_s']:8.3f} {r['ex_s']:8.2f} "
              f"{r['gflops']:11.1f} {r['gflop_s']:8.1f} {r['compile_s']:9.1f}  "
              f"{OFFICIAL.get(case, '')}", flush=True)


if __name__ == "__main__":
    main()
