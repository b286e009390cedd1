"""ConditionalUNet / IR-SDE benchmark on CPU, float32, the official universal-IR config
(nf 64, ch_mult [1,2,4,8], context 512), side by side with the official PyTorch numbers of
/work/shared/design/performance.md.

    python benchmarks/unet.py                 # the table (each item in a fresh subprocess)
    python benchmarks/unet.py --large         # + tiled restore of a 4000x3000 photo (slow)
    python benchmarks/unet.py --item train2   # one item, prints a JSON line

Each item runs in its own process so that its peak resident memory (ru_maxrss) is its own.
Times are medians after one warm-up (compile) call. The machine is shared: numbers are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

OFFICIAL = {  # performance.md, torch 2.14.1, 2 threads, same machine kind
    "train2": (1.63, "1.1"), "train4": (3.19, "2.1"), "fwd256": (0.948, "0.63"),
    "fwd512": (9.99, "6.7"), "sample256": (96.3, "64"),
}
ITEMS = ("train2", "train4", "fwd256", "fwd512", "sample256")
TITLES = {
    "train2": "training step (IR-SDE loss, backward, AdamW, EMA), batch 2 x 128^2",
    "train4": "training step, batch 4 x 128^2",
    "fwd256": "forward, 1 x 256^2, no grad",
    "fwd512": "forward, 1 x 512^2, no grad",
    "sample256": "100-step posterior sampling, 1 x 256^2",
    "large": "tiled restore 4000x3000 (tile 512, overlap 32), 1 step",
    "large-tiny": "tiled restore 4000x3000 (tile 512, overlap 32), 2 steps, tiny net (nf 32)",
}


def _maxrss_gib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def _timeit(fn, repeats):
    import jax

    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times) if times else first


def _flops(compiled):
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan"))) if cost else float("nan")


def run_item(item, repeats):
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    from daclip_jax.models.unet import init_unet
    from daclip_jax.sde import IRSDE

    unet = init_unet("tiny" if item == "large-tiny" else "universal-ir", seed=0)
    graphdef, params = nnx.split(unet)
    sde = IRSDE(max_sigma=50, T=100, schedule="cosine", eps=0.005)
    rng = np.random.default_rng(0)
    res = {"item": item}

    if item.startswith("train"):
        b = int(item[5:])
        gt = jnp.asarray(rng.uniform(size=(b, 128, 128, 3)), jnp.float32)
        lq = jnp.asarray(rng.uniform(size=(b, 128, 128, 3)), jnp.float32)
        txt, img = (jnp.asarray(rng.normal(size=(b, 512)), jnp.float32) for _ in range(2))
        # the official trainer: AdamW lr 2e-4, betas (0.9, 0.99), no weight decay; EMA 0.995 every 10
        tx = optax.adamw(2e-4, b1=0.9, b2=0.99, weight_decay=0.0)
        opt_state = tx.init(params)
        ema = params

        def loss_fn(p, key):
            t, xt = sde.generate_random_states(gt, lq, key)
            eps = nnx.merge(graphdef, p)(xt, lq, t.astype(jnp.float32), txt, img)
            return sde.loss(eps, xt, gt, lq, t)

        @jax.jit
        def step(p, opt_state, ema, key, i):
            loss, g = jax.value_and_grad(loss_fn)(p, key)
            upd, opt_state = tx.update(g, opt_state, p)
            p = optax.apply_updates(p, upd)
            ema = jax.lax.cond(i % 10 == 0,
                               lambda: jax.tree.map(lambda e, q: e * 0.995 + q * 0.005, ema, p),
                               lambda: ema)
            return p, opt_state, ema, loss

        key = jax.random.key(0)
        compiled = step.lower(params, opt_state, ema, key, 0).compile()
        res["gflop"] = _flops(compiled) / 1e9
        state = [params, opt_state, ema]
        it = [0]

        def call():
            it[0] += 1
            state[0], state[1], state[2], loss = compiled(*state, jax.random.fold_in(key, it[0]), it[0])
            return loss

        res["first_s"], res["s"] = _timeit(call, repeats)
    elif item.startswith("fwd"):
        n = int(item[3:])
        x = jnp.asarray(rng.uniform(size=(1, n, n, 3)), jnp.float32)
        txt, img = (jnp.asarray(rng.normal(size=(1, 512)), jnp.float32) for _ in range(2))
        fwd = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x, x * 0.5, jnp.float32(50.0), txt, img))
        compiled = fwd.lower(params, x).compile()
        res["gflop"] = _flops(compiled) / 1e9
        res["first_s"], res["s"] = _timeit(lambda: compiled(params, x), repeats)
    elif item == "sample256":
        from daclip_jax.sampling import sample

        lq = jnp.asarray(rng.uniform(size=(1, 256, 256, 3)), jnp.float32)
        txt, img = (jnp.asarray(rng.normal(size=(1, 512)), jnp.float32) for _ in range(2))
        res["first_s"], res["s"] = _timeit(lambda: sample(unet, sde, lq, txt, img, jax.random.key(0)), 0)
        res["s"] = res["first_s"]          # one run; includes one compile of the loop (~1 fwd)
    elif item in ("large", "large-tiny"):
        from daclip_jax.restore import restore_image

        lq = rng.uniform(size=(3000, 4000, 3)).astype(np.float32)
        ctx = unet.cfg.context_dim
        txt, img = (jnp.asarray(rng.normal(size=(1, ctx)), jnp.float32) for _ in range(2))
        t0 = time.perf_counter()
        out = restore_image(None, unet, lq, sde, steps=1 if item == "large" else 2, tile=512,
                            overlap=32, contexts=(img, txt), progress=False)
        res["s"] = time.perf_counter() - t0
        res["tiles"] = 7 * 9
        assert out.shape == lq.shape
    res["maxrss_gib"] = _maxrss_gib()
    if "gflop" in res and res.get("s"):
        res["gflops_per_s"] = res["gflop"] / res["s"]
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--item", choices=ITEMS + ("large", "large-tiny"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--large", action="store_true", help="add the 4000x3000 tiled restore (official net)")
    ap.add_argument("--large-tiny", action="store_true", help="add it with the tiny net")
    ap.add_argument("--only", nargs="*", choices=ITEMS)
    args = ap.parse_args()
    if args.item:
        print(json.dumps(run_item(args.item, args.repeats)))
        return
    items = list(args.only if args.only is not None else ITEMS)
    items += (["large"] if args.large else []) + (["large-tiny"] if args.large_tiny else [])
    rows = []
    for item in items:
        out = subprocess.run([sys.executable, __file__, "--item", item, "--repeats", str(args.repeats)],
                             capture_output=True, text=True, env=os.environ)
        line = [l for l in out.stdout.splitlines() if l.startswith("{")]
        if out.returncode or not line:
            print(f"{item}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(line[-1]))
        r = rows[-1]
        print(f"# {item}: {r['s']:.3f} s (first call {r.get('first_s', float('nan')):.1f} s), "
              f"peak RSS {r['maxrss_gib']:.2f} GiB", file=sys.stderr, flush=True)
    print(f"\nConditionalUNet nf 64 [1,2,4,8] ctx 512, CPU float32, {os.cpu_count()} cores "
          "(shared machine: noisy)\n")
    print("| work | ours | official | target | GFLOP/step | GFLOP/s | peak RSS |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        off, target = OFFICIAL.get(r["item"], (None, "-"))
        ratio = f" ({off / r['s']:.2f}x)" if off else ""
        print(f"| {TITLES[r['item']]} | {r['s']:.3f} s{ratio} | {off if off else '-'} s | <= {target} s | "
              f"{r.get('gflop', float('nan')):.1f} | {r.get('gflops_per_s', float('nan')):.1f} | "
              f"{r['maxrss_gib']:.2f} GiB |")


if __name__ == "__main__":
    main()
