"""Compiled samplers (daclip_jax.sampling) with an oracle network that knows x0."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from flax import nnx

from daclip_jax.sampling import pixel_noise, sample
from daclip_jax.sde import IRSDE


class OracleNoise(nnx.Module):
    """Predicts the true noise of x_t w.r.t. a known x0 (the perfect IR-SDE network)."""

    def __init__(self, x0, sde):
        self.x0 = nnx.Variable(x0)
        self.steps, self.time_scale = sde.T, sde.time_scale   # (the SDE it samples with)

    def __call__(self, xt, cond, t_model, text_context=None, image_context=None):
        sde = IRSDE(T=self.steps)
        t = jnp.round(t_model / self.time_scale).astype(jnp.int32)
        return sde.get_real_noise(xt, self.x0[...], cond, t)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x0 = jnp.asarray(rng.uniform(size=(2, 12, 10, 3)), jnp.float32)
    lq = jnp.clip(x0 + 0.3 * jnp.asarray(rng.normal(size=x0.shape), jnp.float32), 0, 1)
    return x0, lq


@pytest.mark.parametrize("steps", [100, 20])
def test_posterior_with_oracle_returns_x0(data, steps):
    x0, lq = data
    sde = IRSDE()
    oracle = OracleNoise(x0, sde.for_sampling(steps))
    out = sample(oracle, sde, lq, key=jax.random.key(3), steps=steps)
    # the last posterior step has mean exactly x0 and std ~1e-11
    np.testing.assert_allclose(np.asarray(out), np.asarray(x0), atol=2e-5)
    assert float(jnp.abs(lq - x0).max()) > 0.3


def test_ode_and_sde_with_oracle_get_close_to_x0(data):
    """Euler discretisations: not exact, but they must end near x0 (vs LQ error ~0.3)."""
    x0, lq = data
    sde = IRSDE()
    for sampler in ("ode", "sde"):
        out = sample(OracleNoise(x0, sde), sde, lq, key=jax.random.key(1), sampler=sampler)
        err = float(jnp.abs(out - x0).mean())
        assert err < 0.05 * float(jnp.abs(lq - x0).mean()), (sampler, err)


@pytest.mark.parametrize("sampler", ["sde", "ode", "posterior"])
def test_deterministic_given_the_seed(data, sampler):
    x0, lq = data
    sde = IRSDE()
    net = OracleNoise(x0 * 0.5, sde)   # an imperfect net, so the noise matters
    a = sample(net, sde, lq, key=jax.random.key(7), steps=10, sampler=sampler)
    b = sample(net, sde, lq, key=jax.random.key(7), steps=10, sampler=sampler)
    c = sample(net, sde, lq, key=jax.random.key(8), steps=10, sampler=sampler)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(jnp.abs(a - c).max()) > 1e-4     # the start state x_T is always random


def test_return_path(data):
    x0, lq = data
    sde = IRSDE()
    out, path = sample(OracleNoise(x0, sde), sde, lq, steps=5, return_path=True)
    assert path.shape == (5,) + lq.shape
    np.testing.assert_array_equal(np.asarray(path[-1]), np.asarray(out))


def test_pixel_noise_is_crop_consistent():
    key = jax.random.key(0)
    full = pixel_noise(key, (2, 10, 20, 3))
    crop = pixel_noise(key, (2, 5, 7, 3), offset=jnp.array([3, 4]), full_width=20)
    np.testing.assert_array_equal(np.asarray(crop), np.asarray(full[:, 3:8, 4:11]))
    assert abs(float(full.std()) - 1) < 0.15


def test_bad_arguments(data):
    x0, lq = data
    sde = IRSDE()
    with pytest.raises(ValueError):
        sample(OracleNoise(x0, sde), sde, lq, sampler="ddim")
    with pytest.raises(ValueError):
        sample(OracleNoise(x0, sde), sde, lq, steps=0)


def test_progress_hook_counts_steps(data):
    from daclip_jax import sampling

    x0, lq = data
    sde = IRSDE()
    seen = []
    sampling.set_progress(seen.append)
    try:
        out = sample(OracleNoise(x0, sde), sde, lq, steps=6, progress=True)
        jax.block_until_ready(out)
        jax.effects_barrier()
    finally:
        sampling.set_progress(None)
    assert sorted(seen) == [1, 2, 3, 4, 5, 6]


class ConstantNoise(nnx.Module):
    """A badly wrong network: the same large noise everywhere."""

    def __call__(self, xt, cond, t_model, text_context=None, image_context=None):
        return jnp.full_like(xt, 3.0)


def test_clip_x0_keeps_the_oracle_exact_and_bounds_a_bad_network(data):
    x0, lq = data
    sde = IRSDE()
    oracle = OracleNoise(x0, sde.for_sampling(20))
    out = sample(oracle, sde, lq, key=jax.random.key(3), steps=20, clip_x0=True)
    np.testing.assert_allclose(np.asarray(out), np.asarray(x0), atol=2e-5)   # x0 is in [0, 1]

    raw = sample(ConstantNoise(), sde, lq, key=jax.random.key(0), steps=20)
    clipped = sample(ConstantNoise(), sde, lq, key=jax.random.key(0), steps=20, clip_x0=True)
    assert float(jnp.abs(raw).max()) > 2          # the official step leaves the image range
    assert -0.05 <= float(clipped.min()) and float(clipped.max()) <= 1.05
    with pytest.raises(ValueError, match="posterior"):
        sample(oracle, sde, lq, steps=20, sampler="ode", clip_x0=True)
