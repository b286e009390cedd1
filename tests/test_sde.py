"""IR-SDE vs the official `utils/sde_utils.py` (tests/golden/irsde.npz, README section 6).

Tolerance: 1e-6 absolute, scaled by the magnitude for arrays whose values exceed 1 (scores
reach ~770, thetas_cumsum ~48, get_init_state_from_noise ~190: float32 there has an ulp of
6e-5, 3.8e-6 and 1.5e-5, so a fixed 1e-6 would demand better than float32 itself).
"""

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from daclip_jax.sampling import reverse_loop
from daclip_jax.sde import IRSDE


def close(got, ref, tol=1e-6):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    err = np.abs(got - ref).max()
    assert err <= tol * max(1.0, np.abs(ref).max()), err


def nhwc(a):
    a = np.asarray(a)
    return jnp.asarray(np.moveaxis(a, -3, -1)) if a.ndim >= 4 and a.shape[-3] == 3 else jnp.asarray(a)


@pytest.fixture(scope="module")
def z(golden_dir):
    return np.load(golden_dir / "irsde.npz")


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_schedules_and_tables(z, schedule):
    sde = IRSDE(max_sigma=50, T=100, schedule=schedule, eps=0.005)
    for name in ("thetas", "sigmas", "thetas_cumsum", "sigma_bars", "dt"):
        close(getattr(sde, name), z[f"{schedule}/{name}"])
    assert sde.max_sigma == pytest.approx(float(z[f"{schedule}/max_sigma"]), abs=0)
    t = z[f"{schedule}/table/t"]
    one, zero = jnp.ones(100), jnp.zeros(100)
    close(sde.mu_bar(one, zero, t), z[f"{schedule}/table/mu_bar_x0_coef"])
    close(sde.reverse_optimum_step(one, zero, zero, t), z[f"{schedule}/table/opt_step_xt_coef"])
    close(sde.reverse_optimum_step(zero, one, zero, t), z[f"{schedule}/table/opt_step_x0_coef"])
    close(sde.reverse_optimum_std(t), z[f"{schedule}/table/reverse_optimum_std"])


def test_every_op_batched_t(z):
    sde = IRSDE()
    g = lambda k: nhwc(z["ops/" + k])
    x0, mu, eps, xt, t = g("x0"), g("mu"), g("noise_pred"), g("xt"), z["ops/t"].reshape(-1)
    ref = lambda k: nhwc(z["ops/" + k])
    close(g("gen_noise") * sde.sigma_bar(t, 4) + sde.mu_bar(x0, mu, t), ref("xt"))
    _, xt_gen = sde.generate_random_states(x0, mu, jax.random.key(0), t=t)
    assert xt_gen.shape == x0.shape
    close(sde.mu_bar(x0, mu, t), ref("mu_bar"))
    close(sde.sigma_bar(t, 4), z["ops/sigma_bar"])
    score = sde.score_from_noise(eps, t)
    close(score, ref("get_score_from_noise"))
    close(sde.reverse_sde_step_mean(xt, mu, score, t), ref("reverse_sde_step_mean"))
    close(sde.reverse_optimum_step(xt, x0, mu, t), ref("reverse_optimum_step"))
    close(sde.reverse_optimum_std(t, 4), z["ops/reverse_optimum_std"])
    close(sde.get_init_state_from_noise(xt, mu, eps, t), ref("get_init_state_from_noise"))
    close(sde.get_init_state_from_noise(xt, mu, g("gen_noise"), t), ref("get_init_state_from_true_noise"))
    close(sde.get_real_noise(xt, x0, mu, t), ref("get_real_noise"))
    close(sde.get_real_score(xt, x0, mu, t), ref("get_real_score"))
    close(sde.drift(xt, mu, t), ref("drift"))
    close(sde.sde_reverse_drift(xt, mu, score, t), ref("sde_reverse_drift"))
    close(sde.ode_reverse_drift(xt, mu, score, t), ref("ode_reverse_drift"))
    close(sde.reverse_ode_step(xt, mu, score, t), ref("reverse_ode_step"))
    close(sde.reverse_posterior_step(xt, mu, eps, t, g("posterior_z")), ref("reverse_posterior_step"))
    # the training loss (official MatchingLoss l1 / l2 on the ML objective)
    close(sde.loss(eps, xt, x0, mu, t), z["ops/loss_l1"])
    close(sde.loss(eps, xt, x0, mu, t, loss_type="l2"), z["ops/loss_l2"])


def test_ops_with_python_int_t(z):
    sde = IRSDE()
    g = lambda k: nhwc(z["ops/" + k])
    x0, mu, eps, xt = g("x0"), g("mu"), g("noise_pred"), g("xt")
    ref = lambda k: nhwc(z["ops_t50/" + k])
    close(sde.mu_bar(x0, mu, 50), ref("mu_bar"))
    close(sde.sigma_bar(50), z["ops_t50/sigma_bar"])
    close(sde.reverse_optimum_step(xt, x0, mu, 50), ref("reverse_optimum_step"))
    close(sde.reverse_optimum_std(50), z["ops_t50/reverse_optimum_std"])
    score = sde.score_from_noise(eps, 50)
    close(score, ref("get_score_from_noise"))
    close(sde.reverse_sde_step_mean(xt, mu, score, 50), ref("reverse_sde_step_mean"))
    close(sde.get_init_state_from_noise(xt, mu, eps, 50), ref("get_init_state_from_noise"))


@pytest.mark.parametrize("mode", ["posterior", "sde"])
def test_full_100_step_loops_with_recorded_draws(z, mode):
    sde = IRSDE()
    lq, x0_star = nhwc(z["sample/lq"]), nhwc(z["sample/x0_target"])
    x_T = sde.noise_state(lq, z=nhwc(z["sample/noise_state_z"]))
    close(x_T, nhwc(z["sample/noise_state"]))

    def fake_net(x, t_model):   # README: deterministic, well-conditioned stand-in network
        t = jnp.round(t_model).astype(jnp.int32)
        return (x - sde.mu_bar(x0_star, lq, t)) / sde.sigma_bar(t) + 0.1 * jnp.tanh(x - lq)

    draws = nhwc(z[f"sample/{mode}/draws"])
    run = jax.jit(lambda x: reverse_loop(fake_net, sde, x, lq, sampler=mode, draws=draws))
    close(run(x_T), nhwc(z[f"sample/{mode}/result"]))


def test_generate_random_states_distribution():
    sde = IRSDE()
    x0 = jnp.zeros((4000, 1, 1, 1)) + 0.25
    mu = jnp.ones_like(x0)
    t, xt = sde.generate_random_states(x0, mu, jax.random.key(1))
    t = np.asarray(t)
    assert t.dtype == np.int32 and t.min() == 1 and t.max() == 100     # uniform on 1..T
    assert abs(np.bincount(t, minlength=101)[1:].std() / 40 - 0.16) < 0.1
    n = (np.asarray(xt) - np.asarray(sde.mu_bar(x0, mu, t))) / np.asarray(sde.sigma_bar(t, 4))
    assert abs(n.mean()) < 0.06 and abs(n.std() - 1) < 0.05


def test_for_sampling_official_sample_T():
    sde = IRSDE()
    assert sde.for_sampling(100) is sde
    s25 = sde.for_sampling(25)
    assert s25.T == 25 and s25.time_scale == 4.0
    # same end points: sigma_bar_T (and the eps decay) do not depend on the step count
    close(s25.sigma_bars[-1], sde.sigma_bars[-1])
    close(jnp.exp(-s25.thetas_cumsum[-1] * s25.dt), 0.005)
    with pytest.raises(ValueError):
        sde.for_sampling(101)


def test_sde_settings_travel_with_the_weights(tmp_path):
    from daclip_jax.sde import RELEASED, save_sde_settings, sde_for_weights

    assert sde_for_weights(str(tmp_path)).to_dict() == IRSDE(**RELEASED).to_dict()   # no file
    sde = IRSDE(max_sigma=10, T=40, schedule="cosine", eps=0.01)
    save_sde_settings(sde, tmp_path)
    (tmp_path / "unet.pth").write_bytes(b"")
    for where in (tmp_path, tmp_path / "unet.pth"):   # a model dir, or a file beside sde.json
        got = sde_for_weights(str(where))
        assert got.to_dict() == dict(max_sigma=10, T=40, schedule="cosine", eps=0.01)
        np.testing.assert_array_equal(np.asarray(got.sigma_bars), np.asarray(sde.sigma_bars))
