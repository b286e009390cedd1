"""The oneDNN binding (models/onednn.py) must never crash a run nor grow without bound (issue 20):
every oneDNN call on one thread whatever the calling thread and the instruction set oneDNN
picks its kernels for, a bounded primitive cache, shapes oneDNN refuses left to XLA at trace
time. test_isa_caps reruns this file's in-process tests and test_conv.py's oneDNN parity tests
under ONEDNN_MAX_CPU_ISA=AVX / SSE41 (what a CPU without AVX2 / AVX gets: the `gemm:jit`
kernels that crashed when executed from another thread) and the default, each in a subprocess."""

import os
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax import lax

from daclip_jax.models import conv as conv_ops
from daclip_jax.models import onednn
from tests.test_conv import DN, _grads, _rel, _require_onednn

PAD1 = ((1, 1), (1, 1))
ISA = os.environ.get("ONEDNN_MAX_CPU_ISA", "default")


def _threads():
    return len(os.listdir("/proc/self/task"))


def _two_convs(conv):
    """A loss of two 3x3 convolutions of different sizes (the reproduction of issue 20)."""
    def loss(x1, w1, x2, w2):
        return (jnp.sum(conv(x1, w1, (1, 1), PAD1, dimension_numbers=DN) ** 2)
                + jnp.sum(conv(x2, w2, (1, 1), PAD1, dimension_numbers=DN) ** 2))
    return jax.jit(jax.grad(loss, (0, 1, 2, 3)))


def test_two_convolution_gradient_runs_every_call_on_one_thread(monkeypatch):
    _require_onednn()
    ran_on = set()
    execute = onednn._Library.execute
    monkeypatch.setattr(onednn._Library, "execute",
                        lambda self, *a: (ran_on.add(threading.get_ident()), execute(self, *a))[1])
    rng = np.random.default_rng(0)
    args = [jnp.asarray(rng.normal(size=(1, 64, 64, 64)), jnp.float32),
            jnp.asarray(rng.normal(size=(3, 3, 64, 64)) / 24, jnp.float32),
            jnp.asarray(rng.normal(size=(1, 8, 8, 8)), jnp.float32),
            jnp.asarray(rng.normal(size=(3, 3, 8, 8)) / 8, jnp.float32)]
    with conv_ops.force_cpu_kernels(True), conv_ops.force_onednn(True):
        grads = _two_convs(conv_ops.conv_general_dilated)(*args)
        again = _two_convs(conv_ops.conv_general_dilated)(*args)
    ref = _two_convs(lax.conv_general_dilated)(*args)
    for g, g2, r in zip(grads, again, ref):
        assert _rel(g, r) <= 1e-5
        np.testing.assert_array_equal(g, g2)
    assert ran_on == {onednn._worker(os.getpid()).thread.ident}
    impls = {i for conv in onednn.cache_info()["impls"].values() for i in conv.values()}
    if ISA in ("AVX", "SSE41"):        # the capped runs do exercise the kernels that crashed
        assert any("gemm" in i for i in impls), impls


def test_same_primitive_from_many_threads_200_calls_identical():
    _require_onednn()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 24, 24, 16)).astype(np.float32)
    dy = rng.normal(size=(1, 24, 24, 16)).astype(np.float32)
    key = ((1, 24, 24, 16), (3, 3, 16, 16), (1, 1), PAD1)
    ref = np.empty((3, 3, 16, 16), np.float32)
    onednn.run("backward_weights", *key, x, dy, ref)
    small = ((1, 5, 5, 4), (3, 3, 4, 4), (1, 1), PAD1)
    baseline = _threads()
    results = []

    def work(n):
        for _ in range(n):
            out = np.empty_like(ref)
            onednn.run("backward_weights", *key, x, dy, out)
            s = np.empty((3, 3, 4, 4), np.float32)      # another shape built on this thread
            onednn.run("backward_weights", *small, np.ones(small[0], np.float32),
                       np.ones(small[0], np.float32), s)
            results.append(out)

    at_once = [threading.Thread(target=work, args=(10,)) for _ in range(10)]
    for t in at_once:
        t.start()
    for t in at_once:
        t.join()
    for _ in range(10):                                  # in sequence, a new thread each time
        t = threading.Thread(target=work, args=(10,))
        t.start()
        t.join()
    assert len(results) == 200
    for out in results:
        np.testing.assert_array_equal(out, ref)
    assert _threads() <= baseline, (baseline, _threads())   # no OpenMP team per calling thread


def _rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_cache_stays_within_budget_over_50_image_sizes(monkeypatch):
    """The convolutions a UNet forward runs (7x7 init_conv, 3x3, 4x4 stride-2 Downsample, 3x3
    at half size) at 50 image sizes, as `restore` / `serve` meet them; called directly
    (compiling 50 UNets would take minutes). The budget (1 MiB here) is what
    DACLIP_ONEDNN_CACHE_MB sets."""
    _require_onednn()
    onednn.clear_cache()
    lib = onednn._library()
    monkeypatch.setattr(lib, "budget", 1 << 20)
    pad = ((1, 1), (1, 1))
    rss = []
    for s in range(32, 132, 2):
        for key in [((1, s, s, 3), (7, 7, 3, 16), (1, 1), ((3, 3), (3, 3))),
                    ((1, s, s, 16), (3, 3, 16, 16), (1, 1), pad),
                    ((1, s, s, 16), (4, 4, 16, 32), (2, 2), pad),
                    ((1, s // 2, s // 2, 32), (3, 3, 32, 32), (1, 1), pad)]:
            x, w = np.ones(key[0], np.float32), np.ones(key[1], np.float32)
            onednn.run("forward", *key, x, w, np.empty(onednn.out_shape(*key), np.float32))
            assert onednn.cache_info()["nbytes"] <= lib.budget
        rss.append(_rss())
    info = onednn.cache_info()
    assert 0 < info["entries"] < 50 * 4 and info["arena_bytes"] < 4 << 20
    # growth after the first ten sizes: the arena growing with the image (< 4 MiB) and
    # allocator noise; without the budget it was 23 MiB (~60 KiB per primitive)
    assert rss[-1] - rss[9] < 8 << 20, (rss[9], rss[-1])
    onednn.clear_cache()
    assert onednn.cache_info()["entries"] == 0


def _conv_and_grads(padding):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(1, 9, 10, 4)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(3, 3, 4, 6)) / 6, jnp.float32)
    ours = lambda x, k: conv_ops.conv_general_dilated(x, k, (1, 1), padding, dimension_numbers=DN)
    ref = lambda x, k: lax.conv_general_dilated(x, k, (1, 1), padding, dimension_numbers=DN)
    with conv_ops.force_cpu_kernels(True), conv_ops.force_onednn(True):
        jaxpr = str(jax.make_jaxpr(jax.grad(lambda x, k: ours(x, k).sum(), (0, 1)))(x, k))
        got = _grads(jax.jit(ours), x, k)
    return jaxpr, got, _grads(jax.jit(ref), x, k)


def test_negative_padding_falls_back_to_xla_at_trace_time():
    _require_onednn()
    assert "forward descriptor" in onednn.check((1, 9, 10, 4), (3, 3, 4, 6), (1, 1), ((-1, 1), (1, 1)))
    jaxpr, (y, (gx, gk)), (y_ref, (gx_ref, gk_ref)) = _conv_and_grads(((-1, 1), (1, 1)))
    assert "buffer_callback" not in jaxpr and "conv_general_dilated" in jaxpr
    for a, b in ((y, y_ref), (gx, gx_ref), (gk, gk_ref)):
        np.testing.assert_array_equal(a, b)


def test_refused_backward_descriptor_leaves_the_gradients_to_xla(monkeypatch):
    _require_onednn()
    check = onednn.check
    monkeypatch.setattr(onednn, "check", lambda *a: "refused" if a[-1] == "backward_weights"
                        else check(*a))
    jaxpr, (y, (gx, gk)), (y_ref, (gx_ref, gk_ref)) = _conv_and_grads(PAD1)
    assert jaxpr.count("buffer_callback") == 1 and "conv_general_dilated" in jaxpr
    assert _rel(y, y_ref) <= 1e-5
    np.testing.assert_array_equal(gx, gx_ref)
    np.testing.assert_array_equal(gk, gk_ref)


def test_missing_symbol_falls_back_to_xla_at_trace_time(monkeypatch):
    _require_onednn()
    monkeypatch.setattr(onednn, "_SYMBOLS", onednn._SYMBOLS + ("dnnl_no_such_function",))
    onednn._load.cache_clear()
    try:
        assert not onednn.available() and "dnnl_no_such_function" in onednn.unavailable_reason()
        jaxpr, (y, (gx, gk)), (y_ref, (gx_ref, gk_ref)) = _conv_and_grads(PAD1)
        assert "buffer_callback" not in jaxpr
        np.testing.assert_array_equal(y, y_ref)
    finally:
        monkeypatch.undo()
        onednn._load.cache_clear()
    assert onednn.available()


def _trainer(cfg):
    """() -> two training steps as benchmarks/unet.py's train items (IR-SDE loss, AdamW, EMA
    every step) from the same start: (losses, step-1 gradients, params, ema). Traced now."""
    from daclip_jax.models.unet import init_unet
    from daclip_jax.sde import IRSDE

    graphdef, params = nnx.split(init_unet(cfg, seed=0))
    sde = IRSDE(max_sigma=50, T=100, schedule="cosine", eps=0.005)
    rng = np.random.default_rng(0)
    gt, lq = (jnp.asarray(rng.uniform(size=(2, 16, 16, 3)), jnp.float32) for _ in range(2))
    txt, img = (jnp.asarray(rng.normal(size=(2, cfg.context_dim)), jnp.float32) for _ in range(2))
    tx = optax.adamw(2e-4, b1=0.9, b2=0.99, weight_decay=0.0)

    def loss_fn(p, key):
        t, xt = sde.generate_random_states(gt, lq, key)
        return sde.loss(nnx.merge(graphdef, p)(xt, lq, t.astype(jnp.float32), txt, img), xt, gt, lq, t)

    def step(p, opt, ema, key):
        loss, g = jax.value_and_grad(loss_fn)(p, key)
        upd, opt = tx.update(g, opt, p)
        p = optax.apply_updates(p, upd)
        return p, opt, jax.tree.map(lambda e, q: e * 0.995 + q * 0.005, ema, p), loss, g

    opt = tx.init(params)
    step = jax.jit(step).lower(params, opt, params, jax.random.key(0)).compile()

    def run():
        p, o, ema, losses, first = params, opt, params, [], None
        for i in range(2):
            p, o, ema, loss, g = step(p, o, ema, jax.random.key(i))
            losses.append(float(loss))
            first = g if first is None else first
        return losses, first, p, ema
    return run


def test_unet_training_step_matches_xla_and_repeats_bit_identically():
    _require_onednn()
    from daclip_jax.models.unet import UNetConfig

    # one level (no Downsample: test_conv.py covers its 4x4 stride-2 shape): compiles in ~10 s
    cfg = UNetConfig(nf=32, ch_mult=(1,), context_dim=0, use_degra_context=False,
                     use_image_context=False)
    with conv_ops.force_cpu_kernels(True):
        with conv_ops.force_onednn(True):
            ours = _trainer(cfg)
        with conv_ops.force_onednn(False):
            ref = _trainer(cfg)()
    first, again = ours(), ours()
    assert np.allclose(first[0], ref[0], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(first[1]), jax.tree.leaves(ref[1])):
        if np.abs(np.asarray(b)).max() > 0:
            assert _rel(a, b) <= 1e-5
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(again)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
@pytest.mark.skipif("DACLIP_ISA_CHILD" in os.environ, reason="the subprocess itself")
@pytest.mark.parametrize("isa", ["AVX", "SSE41", "default"])
def test_isa_caps(isa):
    _require_onednn()
    env = dict(os.environ, DACLIP_ISA_CHILD="1", JAX_PLATFORMS="cpu")
    if isa != "default":
        env["ONEDNN_MAX_CPU_ISA"] = isa
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
         "tests/test_onednn.py", "tests/test_conv.py", "-k", "onednn and not isa_caps"],
        cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
