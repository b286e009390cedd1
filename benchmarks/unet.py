"""ConditionalUNet / IR-SDE benchmark on CPU, float32: the official universal-IR config
(nf 64, ch_mult [1,2,4,8], context 512) side by side with the official PyTorch numbers of
/work/shared/design/performance.md (issue 14's table), plus the demo's UNet (nf 16,
ch_mult [1,2,4], context 64: daclip_jax/demo.py) at 256^2 and 512x608 and its restorer
training step (batch 4 x 64^2).

    python benchmarks/unet.py                 # the table (each item in a fresh subprocess)
    python benchmarks/unet.py --large         # + tiled restore of a 4000x3000 photo (slow)
    python benchmarks/unet.py --item train2   # one item, prints a JSON line
    python benchmarks/unet.py --only demotrain --ab   # + the same item with the CPU rewrites
                                                     #   of models/conv.py off, alternating

Each item runs in its own process so that its peak resident memory (ru_maxrss) is its own, and
measures the machine's matmul rate (2048^2 float32, jax) just before it. Times are medians
after one warm-up (compile) call; "cpu" is the process CPU time per call (user + system, both
cores), steadier than wall time on a shared machine. The machine is shared: numbers are noisy.
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

import numpy as np

# performance.md, side by side run of 2026-12-01 (torch, 2 threads, same machine kind):
# official seconds, issue 14's goal; demo items: today's figure of issue 14 (no official one)
OFFICIAL = {
    "api256": (1.40, "0.9"), "fwd256": (1.40, "0.9"), "fwd512": (10.8, "7"),
    "train2": (1.56, "1.05"), "train4": (3.19, "2.1"), "sample256": (150.0, "100"),
}
OFFICIAL_RSS512 = 3.26   # GiB, official UNet forward at 512^2 (goal <= 1.7)
BEFORE = {"demo256": 0.57, "demo512x608": 7.9}   # issue 14, daclip-jax before (quiet machine)
ITEMS = ("api256", "fwd256", "fwd512", "train2", "train4", "sample256", "demo256", "demo512x608",
         "demotrain")
DEMO = dict(nf=16, ch_mult=(1, 2, 4), context_dim=64)   # daclip_jax/demo.py's restorer UNet
TITLES = {
    "api256": "forward 1 x 256^2 called as the README shows (`unet(...)`)",
    "train2": "training step (IR-SDE loss, backward, AdamW, EMA), batch 2 x 128^2",
    "train4": "training step, batch 4 x 128^2",
    "fwd256": "forward, 1 x 256^2, no grad",
    "fwd512": "forward, 1 x 512^2, no grad",
    "sample256": "100-step posterior sampling, 1 x 256^2",
    "demo256": "demo UNet (nf 16) forward, 1 x 256^2",
    "demo512x608": "demo UNet (nf 16) forward, 1 x 512x608",
    "demotrain": "demo restorer step (nf 16, IR-SDE loss, AdamW), batch 4 x 64^2",
    "large": "tiled restore 4000x3000 (tile 512, overlap 32), 1 step",
    "large-tiny": "tiled restore 4000x3000 (tile 512, overlap 32), 2 steps, tiny net (nf 32)",
}


def _maxrss_gib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def _timeit(fn, repeats):
    """(first call s, median wall s, median process CPU s) of `fn` (blocked on its result)."""
    import jax

    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    if not times:
        return first, first, float("nan")
    return first, statistics.median(times), statistics.median(cpu)


def matmul_gflops(n=2048, repeats=5):
    """The machine's float32 matmul rate right now (jax, n x n), GFLOP/s."""
    import jax
    import jax.numpy as jnp

    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    jax.block_until_ready(f(a))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(a))
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def _flops(compiled):
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan"))) if cost else float("nan")


def _mallopt(mmap_threshold, trim_threshold):
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, int(mmap_threshold))   # M_MMAP_THRESHOLD
    libc.mallopt(-1, int(trim_threshold))   # M_TRIM_THRESHOLD


def _variants(ab, malloc_ab):
    """{name: (use the CPU rewrites?, malloc thresholds to set before each call or None)}."""
    if malloc_ab:
        return {"tuned malloc": (True, (32 << 20, 256 << 20)),
                "fixed 128 KiB thresholds": (True, (128 << 10, 128 << 10))}
    if ab:
        return {"cpu rewrites": (True, None), "plain lax": (False, None)}
    return {"": (True, None)}


def _case(item, graphdef, params, sde, cfg):
    """(make: () -> jitted fn, args) for an item."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    rng = np.random.default_rng(0)
    ctx = cfg.context_dim
    if item.startswith("train") or item == "demotrain":
        b, px = (4, 64) if item == "demotrain" else (int(item[5:]), 128)
        gt = jnp.asarray(rng.uniform(size=(b, px, px, 3)), jnp.float32)
        lq = jnp.asarray(rng.uniform(size=(b, px, px, 3)), jnp.float32)
        txt, img = (jnp.asarray(rng.normal(size=(b, ctx)), jnp.float32) for _ in range(2))
        # the official trainer: AdamW lr 2e-4, betas (0.9, 0.99), no weight decay; EMA 0.995 every 10
        tx = optax.adamw(2e-4, b1=0.9, b2=0.99, weight_decay=0.0)

        def make():
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
            return step

        return make, (params, tx.init(params), params, jax.random.key(0), 1)
    size = {"api256": (256, 256), "fwd256": (256, 256), "fwd512": (512, 512),
            "demo256": (256, 256), "demo512x608": (512, 608)}[item]
    x = jnp.asarray(rng.uniform(size=(1, *size, 3)), jnp.float32)
    txt, img = (jnp.asarray(rng.normal(size=(1, ctx)), jnp.float32) for _ in range(2))
    make = lambda: jax.jit(lambda p, x: nnx.merge(graphdef, p)(x, x * 0.5, jnp.float32(50.0), txt, img))
    return make, (params, x)


def run_item(item, repeats, ab=False, malloc_ab=False):
    import jax
    import jax.numpy as jnp

    from daclip_jax.models import conv as conv_ops
    from daclip_jax.models.unet import UNetConfig, init_unet
    from daclip_jax.sde import IRSDE

    res = {"item": item, "matmul_gflops": matmul_gflops()}
    cfg = UNetConfig.named("tiny" if item == "large-tiny" else "universal-ir")
    if item.startswith("demo"):
        cfg = UNetConfig(**DEMO)
    unet = init_unet(cfg, seed=0)
    from flax import nnx

    graphdef, params = nnx.split(unet)
    sde = IRSDE(max_sigma=50, T=100, schedule="cosine", eps=0.005)
    rng = np.random.default_rng(0)

    if item == "api256":    # the public call: an eager `unet(...)` (compiled once, cached)
        x = jnp.asarray(rng.uniform(size=(1, 256, 256, 3)), jnp.float32)
        txt, img = (jnp.asarray(rng.normal(size=(1, 512)), jnp.float32) for _ in range(2))
        res["first_s"], res["s"], res["cpu_s"] = _timeit(
            lambda: unet(x, x * 0.5, 50.0, text_context=txt, image_context=img), repeats)
    elif item == "sample256":
        from daclip_jax.sampling import sample

        lq = jnp.asarray(rng.uniform(size=(1, 256, 256, 3)), jnp.float32)
        txt, img = (jnp.asarray(rng.normal(size=(1, 512)), jnp.float32) for _ in range(2))
        c0 = time.process_time()
        res["first_s"], res["s"], _ = _timeit(lambda: sample(unet, sde, lq, txt, img, jax.random.key(0)), 0)
        res["cpu_s"] = time.process_time() - c0   # one run; includes one compile of the loop (~1 fwd)
    elif item in ("large", "large-tiny"):
        from daclip_jax.restore import restore_image

        lq = rng.uniform(size=(3000, 4000, 3)).astype(np.float32)
        txt, img = (jnp.asarray(rng.normal(size=(1, cfg.context_dim)), jnp.float32) for _ in range(2))
        t0 = time.perf_counter()
        out = restore_image(None, unet, lq, sde, steps=1 if item == "large" else 2, tile=512,
                            overlap=32, contexts=(img, txt), progress=False)
        res["s"] = time.perf_counter() - t0
        res["tiles"] = 7 * 9
        assert out.shape == lq.shape
    else:
        make, args = _case(item, graphdef, params, sde, cfg)
        fns = {}
        for name, (rewrites, _) in _variants(ab, malloc_ab).items():
            with conv_ops.force_cpu_kernels(rewrites):
                fns[name] = make().lower(*args).compile()
        cost = next(iter(fns.values())).cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        res["gflop"] = float(cost.get("flops", float("nan"))) / 1e9 if cost else float("nan")
        variants = _variants(ab, malloc_ab)
        state = {name: list(args) for name in fns}
        is_train = item.startswith("train") or item == "demotrain"

        def call(name):
            if variants[name][1] is not None:
                _mallopt(*variants[name][1])
            out = fns[name](*state[name])
            if is_train:        # carry params / optimizer / EMA as a training loop does
                state[name][:3] = out[:3]
                state[name][4] += 1
                return out[3]
            return out

        for name in fns:        # first calls (compiled already: this is the warm-up)
            t0 = time.perf_counter()
            jax.block_until_ready(call(name))
            res.setdefault("first_s", time.perf_counter() - t0)
        times = {name: ([], []) for name in fns}
        for _ in range(repeats):   # variants alternate, so load changes hit both alike
            for name in fns:
                t0, c0 = time.perf_counter(), time.process_time()
                jax.block_until_ready(call(name))
                times[name][0].append(time.perf_counter() - t0)
                times[name][1].append(time.process_time() - c0)
        for name, (wall, cpu) in times.items():
            key = f"[{name}] " if name else ""
            res[key + "s"] = statistics.median(wall)
            res[key + "cpu_s"] = statistics.median(cpu)
        if ab or malloc_ab:
            res["s"], res["cpu_s"] = res[f"[{next(iter(fns))}] s"], res[f"[{next(iter(fns))}] cpu_s"]
    res["maxrss_gib"] = _maxrss_gib()
    if "gflop" in res and res.get("s"):
        res["gflops_per_s"] = res["gflop"] / res["s"]
    return res


def _fmt(x, spec=".3f"):
    return "-" if x is None or x != x else format(x, spec)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--item", choices=ITEMS + ("large", "large-tiny"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--large", action="store_true", help="add the 4000x3000 tiled restore (official net)")
    ap.add_argument("--large-tiny", action="store_true", help="add it with the tiny net")
    ap.add_argument("--only", nargs="*", choices=ITEMS)
    ap.add_argument("--ab", action="store_true",
                    help="also time each jitted item with models/conv.py's CPU rewrites off (alternating)")
    ap.add_argument("--malloc-ab", action="store_true",
                    help="also time each jitted item with malloc thresholds fixed at 128 KiB (glibc's initial values, without its adaptation; alternating)")
    args = ap.parse_args()
    if args.item:
        print(json.dumps(run_item(args.item, args.repeats, args.ab, args.malloc_ab)))
        return
    items = list(args.only if args.only is not None else ITEMS)
    items += (["large"] if args.large else []) + (["large-tiny"] if args.large_tiny else [])
    flags = ["--ab"] * args.ab + ["--malloc-ab"] * args.malloc_ab
    rows = []
    for item in items:
        out = subprocess.run([sys.executable, __file__, "--item", item, "--repeats", str(args.repeats),
                              *flags], capture_output=True, text=True, env=os.environ)
        line = [l for l in out.stdout.splitlines() if l.startswith("{")]
        if out.returncode or not line:
            print(f"{item}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(line[-1]))
        r = rows[-1]
        print(f"# {item}: {r['s']:.3f} s (first call {r.get('first_s', float('nan')):.1f} s), "
              f"peak RSS {r['maxrss_gib']:.2f} GiB", file=sys.stderr, flush=True)
    print(f"\nConditionalUNet, CPU float32, {os.cpu_count()} cores (shared machine: noisy). Official: "
          "performance.md side-by-side run (torch, 2 threads); demo items: issue 14's figure before.\n")
    print("| work | ours (wall) | cpu time | official | ratio | goal | matmul GFLOP/s now | "
          "GFLOP/call | GFLOP/s | peak RSS |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        off, goal = OFFICIAL.get(r["item"], (BEFORE.get(r["item"]), "-"))
        ref = "" if r["item"] in OFFICIAL else " (before)"
        ratio = f"{off / r['s']:.2f}x" if off else "-"
        rss = f"{r['maxrss_gib']:.2f} GiB"
        if r["item"] == "fwd512":
            rss += f" (official {OFFICIAL_RSS512} GiB, {OFFICIAL_RSS512 / r['maxrss_gib']:.2f}x less)"
        print(f"| {TITLES[r['item']]} | {r['s']:.3f} s | {_fmt(r.get('cpu_s'))} s | "
              f"{_fmt(off)} s{ref} | {ratio} | <= {goal} s | {r['matmul_gflops']:.0f} | "
              f"{_fmt(r.get('gflop'), '.1f')} | {_fmt(r.get('gflops_per_s'), '.1f')} | {rss} |")
    for r in rows:
        pairs = sorted(k for k in r if k.startswith("[") and k.endswith("] s"))
        if len(pairs) == 2:
            (a, b) = [k[1:-3] for k in pairs]
            print(f"A/B {r['item']}: " + ", ".join(
                f"[{n}] {r[f'[{n}] s']:.3f} s wall, {r[f'[{n}] cpu_s']:.3f} s cpu" for n in (a, b)))


if __name__ == "__main__":
    main()
