"""Optimiser pieces against the official definitions: open_clip warm-up + cosine, torch
CosineAnnealingLR, ema_pytorch's EMA, open_clip's weight-decay exclusions; gradient
accumulation equals the full-batch step."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from daclip_jax.train import optim


def _tc(**kw):
    base = dict(steps=1000, lr=3e-5, warmup_steps=100, schedule="cosine", end_lr=0.0)
    return ml_collections.ConfigDict({**base, **kw})


def test_open_clip_warmup_cosine():
    s = optim.make_schedule(_tc())
    for step in (0, 1, 50, 99, 100, 101, 500, 999):
        if step < 100:  # open_clip _warmup_lr: base_lr * (step + 1) / warmup
            want = 3e-5 * (step + 1) / 100
        else:           # open_clip cosine_lr: 0.5 * (1 + cos(pi * e / es)) * base_lr
            want = 0.5 * (1 + math.cos(math.pi * (step - 100) / 900)) * 3e-5
        assert float(s(step)) == pytest.approx(want, rel=1e-5, abs=1e-12), step


def test_torch_cosine_annealing_to_eta_min():
    s = optim.make_schedule(_tc(lr=2e-4, warmup_steps=0, end_lr=1e-6, steps=700))
    for step in (0, 1, 350, 699, 700):
        # torch CosineAnnealingLR closed form: eta_min + (lr - eta_min)(1 + cos(pi t / T)) / 2
        want = 1e-6 + (2e-4 - 1e-6) * (1 + math.cos(math.pi * step / 700)) / 2
        assert float(s(step)) == pytest.approx(want, rel=1e-5), step


def _ema_pytorch_reference(weights, beta=0.995, update_every=10, after=100, inv_gamma=1.0,
                           power=2 / 3):
    """ema_pytorch.EMA.update() over a sequence of online weights, written out literally."""
    ema, counter, initted = None, 0, False
    for w in weights:
        step = counter
        counter += 1
        if step % update_every != 0:
            continue
        if step <= after:
            ema = w.copy()
            continue
        if not initted:
            ema, initted = w.copy(), True
        epoch = max(counter - after - 1, 0)
        decay = 0.0 if epoch <= 0 else min(max(1 - (1 + epoch / inv_gamma) ** -power, 0.0), beta)
        ema = ema * decay + w * (1 - decay)
    return ema


def test_ema_matches_ema_pytorch():
    ec = ml_collections.ConfigDict(dict(decay=0.995, every=10, after=100, inv_gamma=1.0,
                                        power=2 / 3))
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=(5,)).astype(np.float32) for _ in range(400)]
    ema = jnp.zeros(5)
    for step, w in enumerate(weights):
        ema = optim.ema_update(ema, jnp.asarray(w), step, ec)
    np.testing.assert_allclose(np.asarray(ema), _ema_pytorch_reference(weights), rtol=1e-5,
                               atol=1e-6)


def test_weight_decay_mask_follows_open_clip():
    params = {"attn": {"in_proj": {"kernel": jnp.ones((4, 12)), "bias": jnp.ones(12)}},
              "ln_1": {"scale": jnp.ones(4)}, "proj": jnp.ones((4, 2)),
              "positional_embedding": jnp.ones((5, 4)), "logit_scale": jnp.ones(())}
    mask = optim.decay_mask(params)
    assert mask["attn"]["in_proj"] == {"kernel": True, "bias": False}
    assert mask["ln_1"]["scale"] is False and mask["logit_scale"] is False
    assert mask["proj"] is True and mask["positional_embedding"] is True


def test_gradient_accumulation_equals_full_batch():
    from flax import nnx
    from daclip_jax.train.state import TrainState, make_train_step

    class Net(nnx.Module):
        def __init__(self):
            self.lin = nnx.Linear(6, 3, rngs=nnx.Rngs(0))

    def loss_fn(model, batch, rng):
        err = model.lin(batch["x"]) - batch["y"]
        return jnp.mean(err ** 2), {}

    graphdef, params = nnx.split(Net(), nnx.Param)
    tx = optax.sgd(0.1)
    rng = np.random.default_rng(1)
    batch = {"x": jnp.asarray(rng.normal(size=(8, 6)), jnp.float32),
             "y": jnp.asarray(rng.normal(size=(8, 3)), jnp.float32)}
    state = TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params), ema=None,
                       rng=jax.random.key_data(jax.random.key(0)))
    out = {}
    for n in (1, 2, 4):
        step = jax.jit(make_train_step(graphdef, loss_fn, tx, lambda s: 0.1, accum_steps=n))
        new, metrics = step(state, nnx.State({}), batch)
        out[n] = (float(metrics["loss"]), jax.tree.leaves(new.params))
    for n in (2, 4):
        assert out[n][0] == pytest.approx(out[1][0], rel=1e-6)
        for a, b in zip(out[n][1], out[1][1]):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_nonfinite_step_is_skipped():
    from flax import nnx
    from daclip_jax.train.state import TrainState, make_train_step

    class Net(nnx.Module):
        def __init__(self):
            self.lin = nnx.Linear(2, 1, rngs=nnx.Rngs(0))

    graphdef, params = nnx.split(Net(), nnx.Param)
    tx = optax.adam(0.1)
    state = TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params), ema=None,
                       rng=jax.random.key_data(jax.random.key(0)))
    step = jax.jit(make_train_step(graphdef, lambda m, b, r: (jnp.mean(m.lin(b["x"])), {}), tx,
                                   lambda s: 0.1))
    new, metrics = step(state, nnx.State({}), {"x": jnp.array([[1.0, jnp.nan]])})
    assert int(metrics["nonfinite"]) == 1 and int(new.step) == 1
    for a, b in zip(jax.tree.leaves((new.params, new.opt_state)),
                    jax.tree.leaves((state.params, state.opt_state))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
