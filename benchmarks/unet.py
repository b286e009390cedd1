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

The official figures above were measured on other days, and the machine drifts by tens of
percent. `--official PATH` measures the official PyTorch code today, beside ours:

    python benchmarks/unet.py --only fwd256 train2 --official ~/src/daclip-uir

PATH is a checkout of github.com/Algolzw/daclip-uir (the golden data's commit is c2cc141);
the benchmark imports universal-image-restoration/config/daclip-sde/models/modules/
(DenoisingUNet_arch.py, module_util.py, attention.py; they need `einops`) and
universal-image-restoration/utils/sde_utils.py (tqdm, scipy; torchvision only if installed)
from it. None of that code is part of this repository. For api256, fwd256, fwd512, train2,
train4 and sample256 a second process per item loads one set of weights (our universal-IR
init, exported to the official layout) into both nets, runs the official item once before jax
is loaded (its peak RSS), checks that the two forwards agree (max abs diff printed), then times
the two alternately (torch with 2 threads): the table gets "official today", ours beside it in
that process and their ratio, next to performance.md's figure.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

# performance.md, side by side run of 2026-12-01 (torch, 2 threads, same machine kind):
# official seconds, issue 14's goal; demo items: today's figure of issue 14 (no official one)
OFFICIAL = {
    "api256": (1.40, "0.9"), "fwd256": (1.40, "0.9"), "fwd512": (10.8, "7"),
    "train2": (1.56, "1.05"), "train4": (3.19, "2.1"), "sample256": (150.0, "100"),
}
# peak RSS (GiB) of the official code: forward 512^2, performance.md (goal <= 1.7); training step
# 2 x 128^2, `--official` on 2026-12-06 (issue 20; the same run gave ours 4.14)
OFFICIAL_RSS = {"fwd512": 3.26, "train2": 1.82}
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


def _matmul_rate(matmul, n, repeats):
    """GFLOP/s of the fastest of `repeats` calls of `matmul()` (an n x n product; after a warm-up)."""
    matmul()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        matmul()
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def matmul_gflops(n=2048, repeats=5):
    """The machine's float32 matmul rate right now (jax, n x n), GFLOP/s."""
    import jax
    import jax.numpy as jnp

    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    return _matmul_rate(lambda: jax.block_until_ready(f(a)), n, repeats)


def _flops(compiled):
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan"))) if cost else float("nan")


def _mallopt(mmap_threshold, trim_threshold):
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, int(mmap_threshold))   # M_MMAP_THRESHOLD
    libc.mallopt(-1, int(trim_threshold))   # M_TRIM_THRESHOLD


def _convs():
    """Which convolutions ours ran: oneDNN's (models/onednn.py) or XLA's, and why."""
    from daclip_jax.models import onednn

    return "oneDNN convolutions" if onednn.available() else f"XLA convolutions ({onednn.unavailable_reason()})"


def _variants(ab, malloc_ab):
    """{name: (CPU rewrites: True | "xla convs" (on, but XLA's convolutions instead of oneDNN's)
    | False, malloc thresholds to set before each call or None)}."""
    if malloc_ab:
        return {"tuned malloc": (True, (32 << 20, 256 << 20)),
                "fixed 128 KiB thresholds": (True, (128 << 10, 128 << 10))}
    if ab:
        return {"cpu rewrites + oneDNN": (True, None), "cpu rewrites, XLA convs": ("xla convs", None),
                "plain lax": (False, None)}
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

            # params, optimizer state and EMA donated, as the trainer (train/core.py) donates its state
            @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
            def step(p, opt_state, ema, key, i):
                loss, g = jax.value_and_grad(loss_fn)(p, key)
                upd, opt_state = tx.update(g, opt_state, p)
                p = optax.apply_updates(p, upd)
                ema = jax.lax.cond(i % 10 == 0,
                                   lambda: jax.tree.map(lambda e, q: e * 0.995 + q * 0.005, ema, p),
                                   lambda: ema)
                return p, opt_state, ema, loss
            return step

        return make, (params, tx.init(params), jax.tree.map(jnp.copy, params), jax.random.key(0), 1)
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
            with conv_ops.force_cpu_kernels(bool(rewrites)), \
                    conv_ops.force_onednn(False if rewrites == "xla convs" else None):
                fns[name] = make().lower(*args).compile()
        # counted on XLA's own convolutions: the cost analysis does not see into oneDNN's calls
        with conv_ops.force_onednn(False):
            cost = make().lower(*args).cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        res["gflop"] = float(cost.get("flops", float("nan"))) / 1e9 if cost else float("nan")
        variants = _variants(ab, malloc_ab)
        is_train = item.startswith("train") or item == "demotrain"
        # a training step donates its state: every variant after the first gets its own copy
        state = {name: list(args) if not (i and is_train)
                 else [*jax.tree.map(jnp.copy, args[:3]), *args[3:]] for i, name in enumerate(fns)}

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


# --- the official PyTorch code beside ours (--official PATH) -------------------------------
# Items with an official counterpart; everything of the official code is imported from the
# checkout the user names, nothing of it is in this repository.
OFFICIAL_ITEMS = ("api256", "fwd256", "fwd512", "train2", "train4", "sample256")
OFFICIAL_MODULES = "universal-image-restoration/config/daclip-sde/models/modules"
OFFICIAL_SDE = "universal-image-restoration/utils/sde_utils.py"


def _load_official(path):
    """(ConditionalUNet, IRSDE) classes from a daclip-uir checkout at `path`.

    models/modules is imported as a package of its own (private name), so neither the
    checkout's models/__init__.py nor utils/__init__.py runs (they pull the trainer's and the
    data code's dependencies). sde_utils imports torchvision only to save pictures of states;
    without torchvision a stand-in module is present while it is imported, then removed."""
    import importlib
    import importlib.util
    import types

    mod_dir = os.path.join(path, OFFICIAL_MODULES)
    sde_file = os.path.join(path, OFFICIAL_SDE)
    for f in (os.path.join(mod_dir, "DenoisingUNet_arch.py"), sde_file):
        if not os.path.isfile(f):
            raise SystemExit(f"--official {path}: {f} not found (point at a daclip-uir checkout)")
    pkg = types.ModuleType("_daclip_uir_official")
    pkg.__path__ = [mod_dir]
    sys.modules[pkg.__name__] = pkg
    arch = importlib.import_module(pkg.__name__ + ".DenoisingUNet_arch")

    stubs = {}
    if importlib.util.find_spec("torchvision") is None:
        tv = types.ModuleType("torchvision")
        tv.utils = types.ModuleType("torchvision.utils")
        stubs = {"torchvision": tv, "torchvision.utils": tv.utils}
    sys.modules.update(stubs)
    try:
        spec = importlib.util.spec_from_file_location("_daclip_uir_official_sde", sde_file)
        sde_mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sde_mod)
    finally:
        for name in stubs:
            sys.modules.pop(name, None)
    return arch.ConditionalUNet, sde_mod.IRSDE


def write_weights(path):
    """The weights both sides load: our universal-IR init (seed 0), exported to the official
    layout (bare state dict, as universal-ir.pth). The zero-initialised SpatialTransformer
    proj_out tensors get small random values, so the parity check covers those blocks too."""
    from daclip_jax.convert import torch_io
    from daclip_jax.convert.unet import state_dict_from_unet
    from daclip_jax.models.unet import UNetConfig, init_unet

    sd = state_dict_from_unet(init_unet(UNetConfig.named("universal-ir"), seed=0))
    rng = np.random.default_rng(1)
    for k in sd:
        if ".proj_out." in k:
            sd[k] = (0.02 * rng.normal(size=sd[k].shape)).astype(np.float32)
    torch_io.save_state_dict(sd, path)


def _arrays(item, ctx=512):
    """The item's inputs, NHWC numpy: the same draws as _case / run_item make."""
    rng = np.random.default_rng(0)
    if item.startswith("train"):
        b, px = int(item[5:]), 128
        gt = rng.uniform(size=(b, px, px, 3)).astype(np.float32)
        lq = rng.uniform(size=(b, px, px, 3)).astype(np.float32)
        txt, img = (rng.normal(size=(b, ctx)).astype(np.float32) for _ in range(2))
        return dict(gt=gt, lq=lq, txt=txt, img=img)
    size = {"api256": (256, 256), "fwd256": (256, 256), "fwd512": (512, 512),
            "sample256": (256, 256)}[item]
    x = rng.uniform(size=(1, *size, 3)).astype(np.float32)
    txt, img = (rng.normal(size=(1, ctx)).astype(np.float32) for _ in range(2))
    return dict(x=x, txt=txt, img=img)


def _official_call(item, net, sde, a):
    """() -> output (NCHW): one call of the official code as its own scripts make it.

    Forwards: eval mode, no_grad, time a Python float (as the sampler passes it). Training
    step: as DenoisingModel.optimize_parameters after train.py's generate_random_states --
    IR-SDE noise-matching loss (l1, per-sample mean, then mean) on a random t, backward,
    AdamW lr 2e-4 betas (0.9, 0.99) no weight decay, and an EMA (0.995) of the weights every
    10 steps (ema_pytorch's EMA(beta=0.995, update_every=10): one lerp per tensor). The
    sampler: noise_state, then reverse_posterior (test.yml's sampling_mode posterior)."""
    import torch

    t_ = lambda v: torch.from_numpy(np.ascontiguousarray(v.transpose(0, 3, 1, 2)))
    txt, img = torch.from_numpy(a["txt"]), torch.from_numpy(a["img"])
    if item.startswith("train"):
        gt, lq = t_(a["gt"]), t_(a["lq"])
        net.train()
        sde.set_model(net)
        params = [p for p in net.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=2e-4, betas=(0.9, 0.99), weight_decay=0.0)
        ema = [p.detach().clone() for p in params]
        step = [1]

        def call():
            timesteps, states = sde.generate_random_states(x0=gt, mu=lq)
            sde.set_mu(lq)
            opt.zero_grad()
            noise = sde.noise_fn(states, timesteps.squeeze(), text_context=txt, image_context=img)
            score = sde.get_score_from_noise(noise, timesteps)
            pred = sde.reverse_sde_step_mean(states, score, timesteps)
            target = sde.reverse_optimum_step(states, gt, timesteps)
            loss = (pred - target).abs().flatten(1).mean(1).mean()
            loss.backward()
            opt.step()
            if step[0] % 10 == 0:
                with torch.no_grad():
                    for e, p in zip(ema, params):
                        e.lerp_(p, 0.005)
            step[0] += 1
            return loss.detach()
        return call
    x = t_(a["x"])
    net.eval()
    if item == "sample256":
        def call():
            sde.set_model(net)
            sde.set_mu(x)
            with torch.no_grad():
                return sde.reverse_posterior(sde.noise_state(x), text_context=txt, image_context=img)
        return call

    def call():
        with torch.no_grad():
            return net(x, x * 0.5, 50.0, text_context=txt, image_context=img)
    return call


def _ours_call(item, unet, sde, a):
    """() -> output (NHWC): our side of the item, as run_item times it (compiled before)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from daclip_jax.models import conv as conv_ops

    j = {k: jnp.asarray(v) for k, v in a.items()}
    if item == "api256":
        return lambda: unet(j["x"], j["x"] * 0.5, 50.0, text_context=j["txt"], image_context=j["img"])
    if item == "sample256":
        from daclip_jax.sampling import sample

        return lambda: sample(unet, sde, j["x"], j["txt"], j["img"], jax.random.key(0))
    graphdef, params = nnx.split(unet)
    make, args = _case(item, graphdef, params, sde, unet.cfg)
    with conv_ops.force_cpu_kernels(True):
        fn = make().lower(*args).compile()
    state = list(args)
    if not item.startswith("train"):
        return lambda: fn(*state)

    def call():
        out = fn(*state)
        state[:3] = out[:3]
        state[4] += 1
        return out[3]
    return call


def torch_matmul_gflops(n=2048, repeats=5):
    import torch

    a = torch.from_numpy(np.random.default_rng(0).normal(size=(n, n)).astype(np.float32))
    return _matmul_rate(lambda: a @ a, n, repeats)


def run_official(item, repeats, path, weights):
    """The item twice in one process: the official torch code (2 threads) and ours, on the
    same weights (`weights`, official layout) and inputs.

    1. The official net loads the weights and runs the item once before jax is imported:
       that call's ru_maxrss is the official code's own peak (torch + net + activations).
    2. Ours loads the same file (daclip_jax's importer) and is compiled and warmed up.
    3. Parity: both nets' forward on the item's inputs (the forward items: their warm-up
       outputs; training and sampling: a forward at t = 10..90 (50 for one image) on the
       initial weights, the official one before step 1).
    4. `repeats` timed calls of each, alternating (and swapping which goes first each round),
       so load changes on a shared machine hit both alike. sample256 runs once each."""
    os.environ.setdefault("TQDM_DISABLE", "1")     # the official sampler's progress bar
    import torch

    torch.set_num_threads(2)
    torch.manual_seed(0)
    Net, OfficialSDE = _load_official(path)
    a = _arrays(item)
    res = {"item": item, "official": os.path.abspath(path)}
    net = Net(3, 3, 64, ch_mult=[1, 2, 4, 8], context_dim=512, use_degra_context=True,
              use_image_context=True)
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
    osde = OfficialSDE(max_sigma=50, T=100, schedule="cosine", eps=0.005, device=torch.device("cpu"))
    tc = lambda v: torch.from_numpy(np.ascontiguousarray(v.transpose(0, 3, 1, 2)))
    check = None
    if item.startswith("train") or item == "sample256":  # a forward on the item's inputs, before
        b = a["txt"].shape[0]                              # any training step changes the weights
        x, cond = (a["gt"], a["lq"]) if item.startswith("train") else (a["x"], a["x"] * 0.5)
        tt = np.linspace(10, 90, b).astype(np.float32) if b > 1 else np.float32(50.0)
        check = (x, cond, tt)
        with torch.no_grad():
            ref = net(tc(x), tc(cond), torch.as_tensor(tt).reshape(-1), text_context=torch.from_numpy(a["txt"]),
                      image_context=torch.from_numpy(a["img"])).numpy()
    off = _official_call(item, net, osde, a)
    t0, c0 = time.perf_counter(), time.process_time()
    off_out = off()
    res["official_first_s"], off_first_cpu = time.perf_counter() - t0, time.process_time() - c0
    res["official_maxrss_gib"] = _maxrss_gib()
    res["torch_matmul_gflops"] = torch_matmul_gflops()

    import jax
    import jax.numpy as jnp

    from daclip_jax.convert.unet import load_unet
    from daclip_jax.models.unet import UNetConfig
    from daclip_jax.sde import IRSDE

    res["matmul_gflops"] = matmul_gflops()
    unet = load_unet(weights)
    assert unet.cfg == UNetConfig.named("universal-ir"), unet.cfg
    sde = IRSDE(max_sigma=50, T=100, schedule="cosine", eps=0.005)
    ours = _ours_call(item, unet, sde, a)
    t0, c0 = time.perf_counter(), time.process_time()
    our_out = jax.block_until_ready(ours())
    res["ours_first_s"], ours_first_cpu = time.perf_counter() - t0, time.process_time() - c0

    if check is not None:
        x, cond, tt = check
        got = np.asarray(unet(jnp.asarray(x), jnp.asarray(cond), tt, text_context=jnp.asarray(a["txt"]),
                              image_context=jnp.asarray(a["img"])))
    else:
        ref, got = off_out.numpy(), np.asarray(our_out)
    ref = ref.transpose(0, 2, 3, 1)
    res["parity_max_abs_diff"] = float(np.max(np.abs(got - ref)))
    res["parity_max_abs_ref"] = float(np.max(np.abs(ref)))

    if item == "sample256":      # one run each, as run_item times ours (first call, compile included)
        res["official_s"], res["official_cpu_s"] = res["official_first_s"], off_first_cpu
        res["ours_s"], res["ours_cpu_s"] = res["ours_first_s"], ours_first_cpu
    else:
        calls = {"ours": lambda: jax.block_until_ready(ours()), "official": off}
        times = {name: ([], []) for name in calls}
        for r in range(repeats):
            for name in (("ours", "official") if r % 2 == 0 else ("official", "ours")):
                t0, c0 = time.perf_counter(), time.process_time()
                calls[name]()
                times[name][0].append(time.perf_counter() - t0)
                times[name][1].append(time.process_time() - c0)
        for name, (wall, cpu) in times.items():
            res[name + "_times"] = [round(t, 4) for t in wall]
            res[name + "_s"] = statistics.median(wall) if wall else float("nan")
            res[name + "_cpu_s"] = statistics.median(cpu) if cpu else float("nan")
    res["ratio"] = res["official_s"] / res["ours_s"]
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
                    help="also time each jitted item with XLA's convolutions instead of oneDNN's, and with all of "
                         "models/conv.py's CPU rewrites off (alternating)")
    ap.add_argument("--malloc-ab", action="store_true",
                    help="also time each jitted item with malloc thresholds fixed at 128 KiB (glibc's initial values, without its adaptation; alternating)")
    ap.add_argument("--official", metavar="PATH",
                    help="a daclip-uir checkout: also time its PyTorch ConditionalUNet on the same weights "
                         f"and inputs, alternating with ours ({', '.join(OFFICIAL_ITEMS)})")
    ap.add_argument("--weights", metavar="PTH", help=argparse.SUPPRESS)        # --official's shared weights
    ap.add_argument("--write-weights", metavar="PTH", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.write_weights:
        write_weights(args.write_weights)
        return
    if args.item and args.official:
        if args.item not in OFFICIAL_ITEMS:
            raise SystemExit(f"--official: no official counterpart for {args.item}")
        with tempfile.TemporaryDirectory() as tmp:
            weights = args.weights
            if not weights:    # written by another process: jax must not be loaded before step 1
                weights = os.path.join(tmp, "universal-ir.pth")
                subprocess.run([sys.executable, __file__, "--write-weights", weights], check=True)
            print(json.dumps(run_official(args.item, args.repeats, args.official, weights)))
        return
    if args.item:
        print(json.dumps(run_item(args.item, args.repeats, args.ab, args.malloc_ab)))
        return
    if args.official:
        return main_official(args)
    items = list(args.only if args.only is not None else ITEMS)
    items += (["large"] if args.large else []) + (["large-tiny"] if args.large_tiny else [])
    flags = ["--ab"] * args.ab + ["--malloc-ab"] * args.malloc_ab
    rows = []
    for item in items:
        r = _ours_row(item, args.repeats, flags)
        if r is not None:
            rows.append(r)
    print(f"\nConditionalUNet, CPU float32, {os.cpu_count()} cores (shared machine: noisy), {_convs()}. Official: "
          "performance.md side-by-side run (torch, 2 threads); demo items: issue 14's figure before.\n")
    print("| work | ours (wall) | cpu time | official | ratio | goal | matmul GFLOP/s now | "
          "GFLOP/call | GFLOP/s | peak RSS |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        c = _cells(r)
        rss = c["rss"]
        if r["item"] in OFFICIAL_RSS:
            off = OFFICIAL_RSS[r["item"]]
            rss += f" (official {off} GiB: {r['maxrss_gib'] / off:.2f}x)"
        print(f"| {c['title']} | {c['official']} | {c['ratio']} | {c['rates']} | {rss} |")
    for r in rows:
        names = [k[1:-3] for k in r if k.startswith("[") and k.endswith("] s")]
        if len(names) >= 2:   # --ab / --malloc-ab variants, in the order they ran
            print(f"A/B {r['item']}: " + ", ".join(
                f"[{n}] {r[f'[{n}] s']:.3f} s wall, {r[f'[{n}] cpu_s']:.3f} s cpu" for n in names))


def _subprocess_row(cmd):
    out = subprocess.run([sys.executable, __file__, *cmd], capture_output=True, text=True, env=os.environ)
    line = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if out.returncode or not line:
        print(f"{' '.join(cmd)}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(line[-1])


def _ours_row(item, repeats, flags):
    """Our item in its own process (its own peak RSS), reported on stderr as it finishes."""
    r = _subprocess_row(["--item", item, "--repeats", str(repeats), *flags])
    if r is not None:
        print(f"# {item}: {r['s']:.3f} s (first call {r.get('first_s', float('nan')):.1f} s), "
              f"peak RSS {r['maxrss_gib']:.2f} GiB", file=sys.stderr, flush=True)
    return r


def _cells(r):
    """The table cells of one of our rows: title + our times, the performance.md (or before)
    figure, its ratio, the rates, our peak RSS."""
    off, goal = OFFICIAL.get(r["item"], (BEFORE.get(r["item"]), "-"))
    ref = "" if r["item"] in OFFICIAL else " (before)"
    return {
        "title": f"{TITLES[r['item']]} | {r['s']:.3f} s | {_fmt(r.get('cpu_s'))} s",
        "official": f"{_fmt(off)} s{ref}",
        "ratio": f"{off / r['s']:.2f}x" if off else "-",
        "rates": f"<= {goal} s | {r['matmul_gflops']:.0f} | {_fmt(r.get('gflop'), '.1f')} | "
                 f"{_fmt(r.get('gflops_per_s'), '.1f')}",
        "rss": f"{r['maxrss_gib']:.2f} GiB",
    }


def main_official(args):
    """The table with the official code measured today beside ours (--official PATH)."""
    items = list(args.only if args.only is not None else ITEMS)
    items += (["large"] if args.large else []) + (["large-tiny"] if args.large_tiny else [])
    flags = ["--ab"] * args.ab + ["--malloc-ab"] * args.malloc_ab
    rows, pairs = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, "universal-ir.pth")
        subprocess.run([sys.executable, __file__, "--write-weights", weights], check=True)
        for item in items:
            r = _ours_row(item, args.repeats, flags)
            if r is None:
                continue
            rows.append(r)
            if item not in OFFICIAL_ITEMS:
                continue
            p = _subprocess_row(["--item", item, "--repeats", str(args.repeats), "--official",
                                 args.official, "--weights", weights])
            if p is None:
                continue
            pairs[item] = p
            print(f"# {item} beside the official code: official {p['official_s']:.3f} s, ours "
                  f"{p['ours_s']:.3f} s ({p['ratio']:.2f}x), official peak RSS "
                  f"{p['official_maxrss_gib']:.2f} GiB, parity max abs diff "
                  f"{p['parity_max_abs_diff']:.2e}", file=sys.stderr, flush=True)
    print(f"\nConditionalUNet, CPU float32, {os.cpu_count()} cores (shared machine: noisy), {_convs()}. Official today: "
          f"{args.official} run in the same process as ours (torch, 2 threads, same weights and inputs, "
          "calls alternating; 'ours beside it' is ours in that process); official (performance.md): its "
          "side-by-side run of 2026-12-01; demo items: issue 14's figure before.\n")
    print("| work | ours (wall) | cpu time | official today | ours beside it | ratio today | "
          "official (performance.md) | ratio (performance.md) | goal | matmul GFLOP/s now | GFLOP/call | "
          "GFLOP/s | peak RSS | official peak RSS today |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        c = _cells(r)
        rss = c["rss"]
        if r["item"] in OFFICIAL_RSS:
            rss += f" (earlier run: official {OFFICIAL_RSS[r['item']]} GiB)"
        p = pairs.get(r["item"], {})
        today = (f"{p['official_s']:.3f} s | {p['ours_s']:.3f} s | {p['ratio']:.2f}x" if p
                 else "- | - | -")
        off_rss = f"{p['official_maxrss_gib']:.2f} GiB" if p else "-"
        print(f"| {c['title']} | {today} | {c['official']} | {c['ratio']} | {c['rates']} | {rss} | {off_rss} |")
    for item, p in pairs.items():
        print(f"{item}: parity max |ours - official| = {p['parity_max_abs_diff']:.2e} (max |official| "
              f"{p['parity_max_abs_ref']:.2f}); cpu per call official {_fmt(p['official_cpu_s'])} s, ours "
              f"{_fmt(p['ours_cpu_s'])} s; first calls official {p['official_first_s']:.2f} s, ours "
              f"{p['ours_first_s']:.2f} s; matmul 2048^2 now: torch {p['torch_matmul_gflops']:.0f}, "
              f"jax {p['matmul_gflops']:.0f} GFLOP/s")
    for r in rows:
        ab = sorted(k for k in r if k.startswith("[") and k.endswith("] s"))
        if len(ab) == 2:
            (a, b) = [k[1:-3] for k in ab]
            print(f"A/B {r['item']}: " + ", ".join(
                f"[{n}] {r[f'[{n}] s']:.3f} s wall, {r[f'[{n}] cpu_s']:.3f} s cpu" for n in (a, b)))


if __name__ == "__main__":
    main()
