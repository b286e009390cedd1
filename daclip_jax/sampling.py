"""Compiled IR-SDE samplers: the whole reverse loop is ONE jitted `lax.scan`.

Samplers (official `IRSDE.reverse_*`):
- "posterior" (default, test.yml `sampling_mode: posterior`, also the wild-IR sampler):
  x0_hat from the predicted noise, then a draw from the Gaussian posterior q(x_{t-1}|x_t, x0_hat).
- "sde": Euler-Maruyama on the reverse SDE.
- "ode": the probability-flow ODE (deterministic after the start state).

`clip_x0=True` (posterior only; not in the reference, off by default) clips each step's x0
estimate to the image range [0, 1] before the posterior draw, as DDPM's `clip_denoised`:
official weights do not need it; a briefly trained network (the CPU demo) does, because the
x0 estimate multiplies the network's noise error by up to 1/eps early in the reverse run.

x0-parameterised nets (UNetConfig.parameterization = "x0") output the residual x0_hat - mu:
the posterior sampler takes x0_hat directly and the sde/ode samplers the score that follows
from it (IRSDE.x0_from_output / score_from_output). `steps=1` is their one-step mode: one
network call at t = T on the start distribution's mean mu (deterministic), returning x0_hat
(refused for "noise" nets, whose x0 estimate at t = T multiplies the noise error by 1/eps).

Fewer steps than the training T use the official `sample_T` mechanism (`IRSDE.for_sampling`):
the schedule is rebuilt with `steps` steps (dt rescaled so it still ends at eps) and the
network sees `t * T/steps`.

Noise: each step's Gaussian is a function of (key, step, pixel row), `pixel_noise`, so a
crop of the image sees exactly the noise the whole image would see there. That is what makes
tiled restoration (restore.py) agree with whole-image restoration away from tile borders.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from daclip_jax.sde import IRSDE

SAMPLERS = ("posterior", "sde", "ode")

# progress hook: restore/CLI set a callable here; the compiled loop calls it once per step
_progress = {"fn": None}


def set_progress(fn):
    """Install `fn(step)` (e.g. a tqdm update) called after every sampling step; None to clear."""
    _progress["fn"] = fn


def _tick(step):
    fn = _progress["fn"]
    if fn is not None:
        fn(int(step))


def pixel_noise(key, shape, offset=(0, 0), full_width=None):
    """N(0, 1) noise of `shape` (B, h, w, C) cut at `offset` from a virtual (B, H, W, C) field.

    One key per image row (fold_in(key, row)), so the values at a pixel do not depend on the
    crop. `full_width` is W of the virtual field (default: w, i.e. no crop).
    """
    b, h, w, c = shape
    full_width = w if full_width is None else full_width
    rows = offset[0] + jnp.arange(h)

    def row(r):
        return jax.random.normal(jax.random.fold_in(key, r), (b, full_width, c), jnp.float32)

    field = jax.vmap(row, out_axes=1)(rows)                 # (b, h, W, c)
    return jax.lax.dynamic_slice_in_dim(field, offset[1], w, axis=2)


def parameterization_of(net) -> str:
    """What a network's output means: its UNetConfig's, else "noise" (any noise predictor)."""
    return getattr(getattr(net, "cfg", None), "parameterization", "noise")


def check_steps(steps: int, parameterization: str, T: int) -> None:
    """Refuse what cannot work: steps outside [1, T]; one step with a noise-predicting net."""
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be in [1, {T}], got {steps}")
    if steps == 1 and parameterization == "noise":
        raise ValueError("one-step restoration needs an x0-parameterised UNet; this one predicts "
                         "noise (official), whose x0 estimate at t = T multiplies the noise error "
                         "by 1/eps: use more steps")


def reverse_loop(net_fn, sde: IRSDE, x, mu, *, sampler="posterior", noise=None, draws=None,
                 return_path=False, progress=False, clip_x0=False, parameterization="noise"):
    """Run t = T..1 with `net_fn(x, t_model) -> network output` (t_model = t * time_scale):
    the predicted noise, or the residual x0_hat - mu for an "x0" net (`parameterization`).

    The per-step Gaussians come from `draws[k]` (k-th step, t = T-k) when given, else from
    `noise(t) -> z` (a function of the integer step). Returns x_0 (and the (T, ...) path).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if clip_x0 and sampler != "posterior":
        raise ValueError(f"clip_x0 needs the posterior sampler (got {sampler!r})")
    x0_range = (0.0, 1.0) if clip_x0 else None
    ts = jnp.arange(sde.T, 0, -1, dtype=jnp.int32)

    def step(x, inp):
        t, z = inp if draws is not None else (inp, None)
        out = net_fn(x, t.astype(jnp.float32) * jnp.float32(sde.time_scale))
        if sampler == "posterior":
            z = noise(t) if z is None else z
            if parameterization == "noise":   # the official op order (golden parity)
                x = sde.reverse_posterior_step(x, mu, out, t, z, x0_range)
            else:
                x0_hat = sde.x0_from_output(out, x, mu, t, parameterization)
                x = sde.reverse_posterior_step_x0(x, mu, x0_hat, t, z, x0_range)
        elif sampler == "sde":
            z = noise(t) if z is None else z
            x = sde.reverse_sde_step(x, mu, sde.score_from_output(out, x, mu, t, parameterization), t, z)
        else:
            x = sde.reverse_ode_step(x, mu, sde.score_from_output(out, x, mu, t, parameterization), t)
        if progress:
            jax.debug.callback(_tick, t)
        return x, (x if return_path else None)

    x, path = jax.lax.scan(step, x, (ts, draws) if draws is not None else ts)
    return (x, path) if return_path else x


@functools.partial(jax.jit, static_argnames=("graphdef", "sampler", "return_path", "progress", "full_width",
                                             "clip_x0"))
def _sample(graphdef, state, sde, lq, text_context, image_context, key, x_T, offset, *,
            sampler, return_path, progress, full_width, clip_x0):
    unet = nnx.merge(graphdef, state)
    parameterization = parameterization_of(unet)
    b = lq.shape[0]

    def net_fn(x, t_model):
        return unet(x, lq, jnp.broadcast_to(t_model, (b,)), text_context, image_context)

    def noise(t):   # step t's Gaussian; t = T+1 is reserved for the start state
        return pixel_noise(jax.random.fold_in(key, t), lq.shape, offset, full_width)

    if sde.T == 1 and parameterization == "x0":
        # one-step mode: x0_hat from a single call at t = T, deterministic: the state is the
        # start distribution's mean mu (no start noise, which the net would have to suppress:
        # measured better on the demo's held-out patches), whatever the sampler
        x_T = lq if x_T is None else x_T
        x0_hat = lq + net_fn(x_T, jnp.float32(sde.time_scale))
        if clip_x0:
            x0_hat = jnp.clip(x0_hat, 0.0, 1.0)
        if progress:
            jax.debug.callback(_tick, 1)
        return (x0_hat, x0_hat[None]) if return_path else x0_hat
    if x_T is None:
        x_T = sde.noise_state(lq, z=noise(sde.T + 1))
    return reverse_loop(net_fn, sde, x_T, lq, sampler=sampler, noise=noise,
                        return_path=return_path, progress=progress, clip_x0=clip_x0,
                        parameterization=parameterization)


def sample(unet, sde: IRSDE, lq, text_context=None, image_context=None, key=None, steps=None,
           sampler="posterior", *, x_T=None, return_path=False, progress=False,
           offset=(0, 0), full_width=None, clip_x0=False):
    """Restore `lq` (B, H, W, 3) float32 with the compiled reverse process.

    text_context / image_context: the DA-CLIP degradation / content embeddings (B, ctx).
    key: a jax PRNG key (default key(0)). steps: <= sde.T (default sde.T); 1 = the one-step
    mode of "x0" nets (unet.cfg.parameterization), refused for noise-predicting nets.
    x_T: start state (default LQ + max_sigma * z). return_path: also return every
    intermediate state (steps, B, H, W, 3) -- for pictures of small images only.
    offset/full_width: where `lq` sits in a larger image (tiling: the noise is cut from the
    whole image's noise field). clip_x0: clip the x0 estimates to [0, 1] (posterior only;
    see the module docstring).
    """
    key = jax.random.key(0) if key is None else key
    steps = sde.T if steps is None else int(steps)
    check_steps(steps, parameterization_of(unet), sde.T)
    graphdef, state = nnx.split(unet)
    lq = jnp.asarray(lq, jnp.float32)
    return _sample(graphdef, state, sde.for_sampling(steps), lq, text_context, image_context, key,
                   x_T, jnp.asarray(offset, jnp.int32), sampler=sampler, return_path=return_path,
                   progress=progress, full_width=full_width, clip_x0=bool(clip_x0))
