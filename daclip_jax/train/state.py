"""The train state and the pure train step shared by every task.

The model is split once with ``nnx.split(model, task.trainable, ...)`` into a
graph definition, the trainable state and everything else (frozen). Only the
trainable state has optimiser moments and an EMA; the frozen state is an input
of the step, sharded by the same rules but never updated or checkpointed.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import PartitionSpec as P

from daclip_jax import parallel
from daclip_jax.train.optim import ema_update


@struct.dataclass
class TrainState:
    step: jax.Array          # int32: optimiser updates done
    params: Any              # nnx.State of the trainable variables
    opt_state: Any
    ema: Any                 # nnx.State like params, or None
    rng: jax.Array           # uint32[2] raw key; the step key is fold_in(rng, step)


def _microbatches(batch, n: int):
    """(B, ...) -> (n, B/n, ...) taking every n-th example, so each microbatch keeps the
    batch sharding over all data shards (a plain reshape would put microbatch i on
    one shard)."""
    def split(x):
        b = x.shape[0]
        if b % n:
            raise ValueError(f"batch {b} is not divisible by accum_steps {n}")
        x = x.reshape(b // n, n, *x.shape[1:])
        x = jnp.moveaxis(x, 1, 0)
        return parallel.constrain_batch(x, dim=1)
    return jax.tree.map(split, batch)


def make_train_step(graphdef, loss_fn: Callable, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, *, accum_steps: int = 1, ema_cfg=None,
                    project: Callable | None = None):
    """Return ``step(state, frozen, batch) -> (state, metrics)``, a pure function.

    ``loss_fn(model, batch, rng) -> (loss, metrics)`` sees the merged nnx model. The
    loss is computed on the global batch (jit partitions it; a contrastive loss thus
    sees every example of every device without a hand-written gather).
    Non-finite loss or gradient norm: the update is skipped (params, moments and EMA
    stay as they were) and ``metrics['nonfinite']`` is 1 so the host can stop the run.
    ``project(params) -> params`` runs after each update (e.g. open_clip's clamp of
    ``logit_scale`` to [0, ln 100]).
    """

    def model_loss(params, frozen, batch, rng):
        model = nnx.merge(graphdef, params, frozen)
        loss, metrics = loss_fn(model, batch, rng)
        return loss, metrics

    grad_fn = jax.value_and_grad(model_loss, has_aux=True)

    def step(state: TrainState, frozen, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        batch = jax.tree.map(parallel.constrain_batch, batch)
        if accum_steps == 1:
            (loss, metrics), grads = grad_fn(state.params, frozen, batch, rng)
        else:
            mbs = _microbatches(batch, accum_steps)
            first = jax.tree.map(lambda x: x[0], mbs)
            shapes = jax.eval_shape(grad_fn, state.params, frozen, first, rng)
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

            def body(acc, i):
                mb = jax.tree.map(lambda x: x[i], mbs)
                out = grad_fn(state.params, frozen, mb, jax.random.fold_in(rng, i))
                return jax.tree.map(jnp.add, acc, out), None

            total, _ = jax.lax.scan(body, zeros, jnp.arange(accum_steps))
            (loss, metrics), grads = jax.tree.map(lambda x: x / accum_steps, total)

        grad_norm = optax.global_norm(grads)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if project is not None:
            params = project(params)
        ema = state.ema
        if ema is not None:
            ema = ema_update(ema, params, state.step, ema_cfg)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
        new_state = state.replace(step=state.step + 1, params=keep(params, state.params),
                                  opt_state=keep(opt_state, state.opt_state),
                                  ema=None if ema is None else keep(ema, state.ema))
        metrics = dict(metrics, loss=loss, grad_norm=grad_norm, lr=schedule(state.step),
                       nonfinite=(~ok).astype(jnp.int32))
        return new_state, metrics

    return step


def state_shardings(state_shape: TrainState, tx, mesh, rules) -> TrainState:
    """NamedShardings for every leaf of the train state: params/EMA by the rules,
    optimiser moments like their params (``optax.tree_map_params``; counters and other
    scalars replicated), step and RNG replicated."""
    rep = parallel.replicated(mesh)
    p_sh = parallel.tree_shardings(state_shape.params, mesh, rules)
    opt_sh = optax.tree_map_params(tx, lambda _, s: s, state_shape.opt_state, p_sh,
                                   transform_non_params=lambda _: rep)
    return TrainState(step=rep, params=p_sh, opt_state=opt_sh,
                      ema=None if state_shape.ema is None else p_sh, rng=rep)


def init_state(params, tx, rng, *, with_ema: bool, shardings: TrainState) -> TrainState:
    """Create the state directly in its shardings (an eager ``tx.init`` would leave the
    Adam counter on one device)."""
    def make(params, rng):
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                          ema=jax.tree.map(jnp.copy, params) if with_ema else None, rng=rng)
    return jax.jit(make, out_shardings=shardings)(params, rng)
