"""Optimiser, learning-rate schedule and EMA from the ``config.train`` / ``config.ema`` blocks.

Defaults follow the two official recipes:

* DA-CLIP (open_clip ``training/main.py`` + ``multi_train.sh``): AdamW lr 3e-5,
  weight decay 0.05, betas (0.9, 0.98), eps 1e-6 (open_clip's ViT defaults),
  100 linear warm-up steps then cosine to 0; no decay on gains, biases and
  ``logit_scale`` (open_clip excludes ``p.ndim < 2 or 'bn'/'ln'/'bias'/'logit_scale' in name``).
* IR-SDE restoration (``options/train.yml``): AdamW lr 2e-4, betas (0.9, 0.99),
  weight decay 0 (``weight_decay_G`` unset), no warm-up, ``CosineAnnealingLR`` to
  1e-6 over ``niter``; ``ema_pytorch.EMA(beta=0.995, update_every=10)``.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import optax

from daclip_jax.parallel import path_str

# open_clip: `exclude = p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n`
_NO_DECAY = re.compile(r"bn|ln|bias|logit_scale")


def make_schedule(tc) -> optax.Schedule:
    """``tc.schedule``: 'cosine' (warm-up then cosine to ``end_lr``) or 'constant'.

    Warm-up matches open_clip's ``_warmup_lr``: ``lr * (step + 1) / warmup`` so the
    first update already has a non-zero rate.
    """
    lr, warmup, total = float(tc.lr), int(tc.get("warmup_steps", 0)), int(tc.steps)
    end = float(tc.get("end_lr", 0.0))
    kind = tc.get("schedule", "cosine")
    if kind == "constant":
        main = optax.constant_schedule(lr)
    elif kind == "cosine":
        decay_steps = max(total - warmup, 1)
        main = optax.cosine_decay_schedule(lr, decay_steps, alpha=end / lr if lr else 0.0)
    else:
        raise ValueError(f"unknown schedule {kind!r} (use 'cosine' or 'constant')")
    if warmup <= 0:
        return main

    def schedule(step):
        warm = lr * (step + 1) / warmup
        return jnp.where(step < warmup, warm, main(step - warmup))

    return schedule


def decay_mask(params):
    """True where weight decay applies (open_clip's rule: matrices only, not norms/biases)."""
    return jax.tree_util.tree_map_with_path(
        lambda p, x: bool(getattr(x, "ndim", 0) >= 2 and not _NO_DECAY.search(path_str(p))),
        params)


def make_optimizer(tc) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = make_schedule(tc)
    wd = float(tc.get("weight_decay", 0.0))
    chain = []
    if tc.get("grad_clip_norm"):
        chain.append(optax.clip_by_global_norm(float(tc.grad_clip_norm)))
    chain.append(optax.adamw(schedule, b1=float(tc.get("b1", 0.9)), b2=float(tc.get("b2", 0.999)),
                             eps=float(tc.get("eps", 1e-8)), weight_decay=wd,
                             mask=decay_mask if wd else None))
    return optax.chain(*chain), schedule


# ----------------------------------------------------------------------------- EMA

def ema_decay(step, ec):
    """``ema_pytorch.EMA.get_current_decay`` for the update made after optimiser step ``step``.

    ema_pytorch increments its counter before computing the decay, hence ``step + 1``;
    until ``update_after_step`` the EMA is a plain copy (decay 0).
    """
    epoch = jnp.maximum(step + 1 - ec.after - 1, 0).astype(jnp.float32)
    value = 1.0 - (1.0 + epoch / ec.inv_gamma) ** (-ec.power)
    value = jnp.clip(value, ec.get("min_value", 0.0), ec.decay)
    return jnp.where(epoch <= 0, 0.0, value)


def ema_update(ema, params, step, ec):
    """One ``EMA.update()`` call; ``step`` = number of optimiser updates before this one.

    Runs only every ``ec.every`` calls (ema_pytorch ``update_every``). Up to
    ``update_after_step`` the EMA copies the weights, and the first update after it copies
    them once more (ema_pytorch's ``initted`` flag) before averaging, so the average starts
    from the weights of that step, not from the warm-up copy.
    """
    every, after = int(ec.every), int(ec.after)
    first_average = (after // every + 1) * every
    do = (step % every) == 0
    d = jnp.where(step <= first_average, 0.0, ema_decay(step, ec))
    d = jnp.where(do, d, 1.0)
    return jax.tree.map(lambda e, p: (d * e + (1.0 - d) * p).astype(e.dtype), ema, params)
