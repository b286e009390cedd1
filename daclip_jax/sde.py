"""IR-SDE: the mean-reverting SDE of Luo et al. (official `utils/sde_utils.py`, class IRSDE).

    dx = theta_t (mu - x) dt + sigma_t dw,   sigma_t^2 / theta_t = 2 max_sigma^2

`mu` is the LQ image. Time steps are integers 1..T (0 is the clean state). Everything is
float32 and follows the reference's order of operations, because the cosine schedule loses
digits to cancellation (1 - alpha_bar) and the golden data is bit-close only that way.

Unlike the reference, `mu` is an explicit argument (no `set_mu` state) and random draws come
from explicit keys/arrays, so every method is a pure function usable inside `jax.jit`.
`IRSDE` is a pytree (schedule arrays = leaves, sizes static), so it can be passed to jit.
"""

from __future__ import annotations

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

f32 = np.float32


def _schedule_thetas(schedule: str, T: int) -> np.ndarray:
    """Theta vector of length T+1 (index 0..T), float32 exactly as torch builds it."""
    if schedule == "cosine":
        n = T + 2                                       # truncated to 1..-1 below
        x = np.arange(n + 1, dtype=f32)                 # torch.linspace(0, n, n+1): exact integers
        s = 0.008
        arg = (((x / f32(n)) + f32(s)) / f32(1 + s) * f32(math.pi)) * f32(0.5)
        # correctly rounded float32 cos; torch's (SLEEF, 1 ulp) differs by 1 ulp on 4 of 103
        a = np.cos(arg.astype(np.float64)).astype(f32) ** 2
        a = (a / a[0]).astype(f32)
        return (f32(1) - a[1:-1]).astype(f32)
    if schedule == "linear":
        n = T + 1
        scale = 1000 / n
        start, end = f32(scale * 0.0001), f32(scale * 0.02)
        step = f32((end - start) / f32(n - 1))
        i = np.arange(n)
        # torch's CPU linspace: start + step*i for the first half, end - step*(n-1-i) after
        return np.where(i < n // 2, start + step * i.astype(f32),
                        end - step * (n - 1 - i).astype(f32)).astype(f32)
    if schedule == "constant":
        return np.ones(T + 1, f32)
    raise ValueError(f"unknown schedule {schedule!r}: cosine, linear or constant")


def _t_index(arr, t, ndim):
    """arr[t] shaped to broadcast against an ndim-D batch (t: int, (B,) or (B,1,1,1))."""
    v = arr[jnp.asarray(t)]
    if v.ndim == 1 and ndim > 1:
        v = v.reshape((-1,) + (1,) * (ndim - 1))
    return v


_ARRAYS = ("thetas", "sigmas", "thetas_cumsum", "sigma_bars", "dt", "sqrt_dt")
_STATIC = ("max_sigma", "T", "schedule", "eps", "time_scale")


@jax.tree_util.register_pytree_node_class
class IRSDE:
    """Schedules (length T+1, index t = 0..T) and the SDE operations.

    `time_scale`: the network is fed `t * time_scale` (official `sample_scale = T/sample_T`;
    1 except for samplers built with `for_sampling(steps < T)`).
    """

    def __init__(self, max_sigma=50, T=100, schedule="cosine", eps=0.005, *, time_scale=1.0):
        max_sigma = max_sigma / 255 if max_sigma >= 1 else max_sigma
        thetas = _schedule_thetas(schedule, T)
        sigmas = np.sqrt(f32(max_sigma ** 2 * 2) * thetas).astype(f32)
        # torch's CPU cumsum accumulates float32 in double; minus theta_0 so it is 0 at t = 0
        cumsum = (np.cumsum(thetas.astype(np.float64)).astype(f32) - thetas[0]).astype(f32)
        # torch: `-1 / cumsum[-1] * log(eps)` runs as reciprocal(c) * -1 * log(eps) in float32
        dt = f32(f32(np.reciprocal(cumsum[-1]) * f32(-1)) * f32(math.log(eps)))
        sigma_bars = np.sqrt(f32(max_sigma ** 2) * (f32(1) - np.exp(f32(-2) * cumsum * dt))).astype(f32)
        # the reference takes sqrt(dt) with math.sqrt (float64) and casts the product to float32
        sqrt_dt = f32(math.sqrt(float(dt)))
        for name, a in zip(_ARRAYS, (thetas, sigmas, cumsum, sigma_bars, dt, sqrt_dt)):
            setattr(self, name, jnp.asarray(a, jnp.float32))
        self.max_sigma, self.T, self.schedule = float(max_sigma), int(T), schedule
        self.eps, self.time_scale = float(eps), float(time_scale)

    def tree_flatten(self):
        return tuple(getattr(self, n) for n in _ARRAYS), tuple(getattr(self, n) for n in _STATIC)

    @classmethod
    def tree_unflatten(cls, aux, leaves):
        obj = object.__new__(cls)
        for n, v in zip(_ARRAYS, leaves):
            setattr(obj, n, v)
        for n, v in zip(_STATIC, aux):
            setattr(obj, n, v)
        return obj

    def __repr__(self):
        return (f"IRSDE(max_sigma={self.max_sigma * 255:g}/255, T={self.T}, schedule={self.schedule!r}, "
                f"eps={self.eps}, time_scale={self.time_scale:g})")

    def to_dict(self) -> dict:
        """The constructor arguments (max_sigma on the 0..255 scale, as the official configs)."""
        return dict(max_sigma=round(self.max_sigma * 255, 6), T=self.T, schedule=self.schedule,
                    eps=self.eps)

    def for_sampling(self, steps: int) -> "IRSDE":
        """The official `sample_T` mechanism: sampling with fewer steps than training.

        The reference (IRSDE(sample_T=S)) rebuilds the whole schedule with S steps: same
        schedule shape, `dt` recomputed so that exp(-Theta_S dt) is still eps, i.e. the same
        start (LQ + max_sigma z) and the same end, covered in S coarser steps; the network is
        fed `t * T/S` so it sees times in its training range [T/S, T].
        """
        steps = int(steps)
        if not 1 <= steps <= self.T:
            raise ValueError(f"steps must be in [1, {self.T}], got {steps}")
        if steps == self.T:
            return self
        return IRSDE(self.max_sigma, steps, self.schedule, self.eps, time_scale=self.T / steps)

    # -- marginals ---------------------------------------------------------------------------
    def mu_bar(self, x0, mu, t):
        return mu + (x0 - mu) * jnp.exp(-_t_index(self.thetas_cumsum, t, jnp.ndim(x0)) * self.dt)

    def sigma_bar(self, t, ndim=0):
        return _t_index(self.sigma_bars, t, ndim)

    # -- drifts ------------------------------------------------------------------------------
    def drift(self, x, mu, t):
        return _t_index(self.thetas, t, x.ndim) * (mu - x) * self.dt

    def sde_reverse_drift(self, x, mu, score, t):
        th, sg = _t_index(self.thetas, t, x.ndim), _t_index(self.sigmas, t, x.ndim)
        return (th * (mu - x) - sg ** 2 * score) * self.dt

    def ode_reverse_drift(self, x, mu, score, t):
        th, sg = _t_index(self.thetas, t, x.ndim), _t_index(self.sigmas, t, x.ndim)
        return (th * (mu - x) - 0.5 * sg ** 2 * score) * self.dt

    def dispersion(self, x, t, z):
        """sigma_t * z * sqrt(dt); the reference takes sqrt(dt) in float64 (math.sqrt)."""
        return _t_index(self.sigmas, t, x.ndim) * (z * self.sqrt_dt)

    # -- steps -------------------------------------------------------------------------------
    def forward_step(self, x, mu, t, z):
        return x + self.drift(x, mu, t) + self.dispersion(x, t, z)

    def reverse_sde_step_mean(self, x, mu, score, t):
        return x - self.sde_reverse_drift(x, mu, score, t)

    def reverse_sde_step(self, x, mu, score, t, z):
        return x - self.sde_reverse_drift(x, mu, score, t) - self.dispersion(x, t, z)

    def reverse_ode_step(self, x, mu, score, t):
        return x - self.ode_reverse_drift(x, mu, score, t)

    def reverse_optimum_step(self, xt, x0, mu, t):
        """Posterior mean of x_{t-1} given x_t and x_0 (optimum reverse step)."""
        n = jnp.ndim(xt)
        A = jnp.exp(-_t_index(self.thetas, t, n) * self.dt)
        B = jnp.exp(-_t_index(self.thetas_cumsum, t, n) * self.dt)
        C = jnp.exp(-_t_index(self.thetas_cumsum, jnp.asarray(t) - 1, n) * self.dt)
        term1 = A * (1 - C ** 2) / (1 - B ** 2)
        term2 = C * (1 - A ** 2) / (1 - B ** 2)
        return term1 * (xt - mu) + term2 * (x0 - mu) + mu

    def reverse_optimum_std(self, t, ndim=0):
        A = jnp.exp(-2 * _t_index(self.thetas, t, ndim) * self.dt)
        B = jnp.exp(-2 * _t_index(self.thetas_cumsum, t, ndim) * self.dt)
        C = jnp.exp(-2 * _t_index(self.thetas_cumsum, jnp.asarray(t) - 1, ndim) * self.dt)
        var = (1 - A) * (1 - C) / (1 - B)
        log_var = jnp.log(jnp.maximum(var, 1e-20 * self.dt))   # the clamp keeps t=1 finite
        return jnp.exp(0.5 * log_var) * jnp.float32(self.max_sigma)

    def reverse_posterior_step(self, xt, mu, noise, t, z, x0_range=None):
        """Official posterior step; `x0_range=(lo, hi)` clips the x0 estimate first (not in
        the reference; DDPM's `clip_denoised`), which bounds what an imprecise network can
        do: x0_hat = (x_t - mu - sigma_bar eps_hat) e^{theta_bar t} + mu multiplies noise errors by
        up to 1/eps at large t."""
        x0 = self.get_init_state_from_noise(xt, mu, noise, t)
        return self.reverse_posterior_step_x0(xt, mu, x0, t, z, x0_range)

    def reverse_posterior_step_x0(self, xt, mu, x0, t, z, x0_range=None):
        """The posterior step from an x0 estimate: a draw from q(x_{t-1} | x_t, x0)."""
        if x0_range is not None:
            x0 = jnp.clip(x0, *x0_range)
        mean = self.reverse_optimum_step(xt, x0, mu, t)
        return mean + self.reverse_optimum_std(t, xt.ndim) * z

    # -- noise / score / x0 conversions ------------------------------------------------------
    def score_from_noise(self, noise, t):
        return -noise / self.sigma_bar(t, jnp.ndim(noise))

    get_score_from_noise = score_from_noise

    def get_real_noise(self, xt, x0, mu, t):
        return (xt - self.mu_bar(x0, mu, t)) / self.sigma_bar(t, xt.ndim)

    def get_real_score(self, xt, x0, mu, t):
        return -(xt - self.mu_bar(x0, mu, t)) / self.sigma_bar(t, xt.ndim) ** 2

    def get_init_state_from_noise(self, xt, mu, noise, t):
        A = jnp.exp(_t_index(self.thetas_cumsum, t, xt.ndim) * self.dt)
        return (xt - mu - self.sigma_bar(t, xt.ndim) * noise) * A + mu

    # -- what the network's output means (UNetConfig.parameterization) ------------------------
    # "noise" (official): the output is the noise eps_hat of x_t; x0 follows by inverting the
    # marginal, which multiplies eps_hat's error by e^{theta_bar_t} (up to 1/eps = 200 at t = T),
    # so a briefly trained net starts its reverse run far off.
    # "x0": the output is the residual x0_hat - mu (the UNet's last conv starts at zero, so an
    # untrained net returns mu, "change nothing"); the posterior step takes x0_hat directly
    # and the score follows from it (get_real_score with x0_hat): no amplification.
    def x0_from_output(self, out, xt, mu, t, parameterization="noise"):
        if parameterization == "x0":
            return mu + out
        return self.get_init_state_from_noise(xt, mu, out, t)

    def score_from_output(self, out, xt, mu, t, parameterization="noise"):
        if parameterization == "x0":
            return self.get_real_score(xt, mu + out, mu, t)
        return self.score_from_noise(out, t)

    # -- start states ------------------------------------------------------------------------
    def noise_state(self, lq, key=None, z=None):
        """Test-time start: LQ + max_sigma * z (max_sigma, not sigma_bar_T, as the reference)."""
        z = jax.random.normal(key, jnp.shape(lq), jnp.float32) if z is None else z
        return lq + z * jnp.float32(self.max_sigma)

    def generate_random_states(self, x0, mu, key, t=None):
        """Training sample: t ~ U{1..T} per sample, x_t = mu_bar(x0, t) + sigma_bar_t * N(0, I).

        Returns (t (B,) int32, x_t).
        """
        kt, kn = jax.random.split(key)
        if t is None:
            t = jax.random.randint(kt, (x0.shape[0],), 1, self.T + 1, dtype=jnp.int32)
        mean = self.mu_bar(x0, mu, t)
        noise = jax.random.normal(kn, mean.shape, jnp.float32)
        return t, noise * self.sigma_bar(t, x0.ndim) + mean

    # -- training objective ------------------------------------------------------------------
    def loss(self, noise_pred, xt, x0, mu, t, loss_type="l1"):
        """Official maximum-likelihood matching loss (DenoisingModel.optimize_parameters).

        pred = x_t - reverse drift with the score of the predicted noise; target = the optimum
        (posterior-mean) x_{t-1}; per-sample mean of |pred - target| (or squared), then mean.
        """
        score = self.score_from_noise(noise_pred, t)
        pred = self.reverse_sde_step_mean(xt, mu, score, t)
        target = self.reverse_optimum_step(xt, x0, mu, t)
        return _reduce(pred - target, loss_type)

    def x0_loss(self, x0_hat, xt, x0, mu, t, loss_type="l1", weighting="ml"):
        """Objective of an "x0" net. weighting "ml": the official maximum-likelihood loss with
        x0_hat where the optimum step uses x0, i.e. |optimum_step(x0_hat) - optimum_step(x0)| =
        c_t |x0_hat - x0| with c_t the posterior mean's x0 coefficient (small at large t);
        "uniform": |x0_hat - x0| at every t (plain L1/L2 on the clean-image estimate)."""
        if weighting == "ml":
            d = self.reverse_optimum_step(xt, x0_hat, mu, t) - self.reverse_optimum_step(xt, x0, mu, t)
        elif weighting == "uniform":
            d = x0_hat - x0
        else:
            raise ValueError(f"invalid x0 loss weighting {weighting!r}: ml or uniform")
        return _reduce(d, loss_type)


def _reduce(d, loss_type):
    """Per-sample mean of |d| (l1) or d^2 (l2), then the batch mean (as the official loss)."""
    if loss_type == "l1":
        per = jnp.abs(d)
    elif loss_type == "l2":
        per = jnp.square(d)
    else:
        raise ValueError(f"invalid loss type {loss_type!r}")
    return jnp.mean(jnp.mean(per.reshape(per.shape[0], -1), axis=1))


# ----------------------------------------------------------------------------- saved settings

SDE_FILE = "sde.json"    # next to trained UNet weights: the SDE they were trained with + what
                         # the net's output means ("parameterization")
RELEASED = dict(max_sigma=50, T=100, schedule="cosine", eps=0.005)   # universal-ir / wild-ir


def save_sde_settings(sde: IRSDE, directory, parameterization: str = "noise") -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, SDE_FILE)
    with open(path, "w") as f:
        json.dump(dict(sde.to_dict(), parameterization=parameterization), f, indent=1)
    return path


def settings_for_weights(path) -> dict | None:
    """The saved settings beside UNet weights: `<dir>/sde.json` when `path` is (or sits in) a
    folder that has one, else None (an official checkpoint: RELEASED, "noise")."""
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    settings = os.path.join(folder, SDE_FILE)
    if not os.path.isfile(settings):
        return None
    with open(settings) as f:
        return json.load(f)


def sde_for_weights(path) -> IRSDE:
    """The SDE a UNet was trained with (settings_for_weights), else the released settings."""
    saved = settings_for_weights(path) or RELEASED
    return IRSDE(**{k: v for k, v in saved.items() if k in RELEASED})
