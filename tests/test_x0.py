"""The x0 parameterisation of the restorer (UNetConfig.parameterization = "x0"): the net outputs
the residual x0_hat - mu, starts at zero, and every sampler, loader, exporter and the CLI read it."""

import os
import warnings

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from flax import nnx
from PIL import Image

from daclip_jax.models.unet import ConditionalUNet, UNetConfig, init_unet
from daclip_jax.sampling import SAMPLERS, sample
from daclip_jax.sde import IRSDE

TINY_X0 = UNetConfig.named("tiny", parameterization="x0")


class OracleResidual(nnx.Module):
    """The perfect x0 net: returns the true residual x0 - mu whatever x_t and t are."""

    cfg = TINY_X0

    def __init__(self, x0):
        self.x0 = nnx.Variable(x0)

    def __call__(self, xt, cond, t_model, text_context=None, image_context=None):
        return self.x0[...] - cond


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x0 = jnp.asarray(rng.uniform(size=(2, 16, 12, 3)), jnp.float32)
    lq = jnp.clip(x0 + 0.3 * jnp.asarray(rng.normal(size=x0.shape), jnp.float32), 0, 1)
    return x0, lq


@pytest.mark.parametrize("steps", [1, 20, 100])
def test_oracle_x0_net_returns_x0(data, steps):
    x0, lq = data
    out = sample(OracleResidual(x0), IRSDE(), lq, key=jax.random.key(3), steps=steps)
    np.testing.assert_allclose(np.asarray(out), np.asarray(x0), atol=2e-5)
    assert float(jnp.abs(lq - x0).max()) > 0.3


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_oracle_x0_net_with_sde_and_ode_samplers(data, sampler):
    """The score of x0_hat drives the sde/ode samplers: they end near x0 (Euler, not exact)."""
    x0, lq = data
    out = sample(OracleResidual(x0), IRSDE(), lq, key=jax.random.key(1), sampler=sampler)
    err = float(jnp.abs(out - x0).mean())
    assert err < 0.05 * float(jnp.abs(lq - x0).mean()), (sampler, err)


def test_x0_head_starts_at_zero_in_both_initialisers():
    for unet in (init_unet(TINY_X0, seed=0), ConditionalUNet(TINY_X0, rngs=nnx.Rngs(0))):
        assert float(jnp.abs(unet.final_conv.kernel[...]).max()) == 0
        assert float(jnp.abs(unet.final_conv.bias[...]).max()) == 0
    noise_net = init_unet("tiny", seed=0)
    assert float(jnp.abs(noise_net.final_conv.kernel[...]).max()) > 0   # official init untouched


@pytest.mark.parametrize("sampler,steps", [("posterior", 1), ("posterior", 5), ("sde", 5), ("ode", 5)])
def test_untrained_x0_net_returns_the_degraded_input(data, sampler, steps):
    """Zero residual = "change nothing": every sampler ends at mu up to the last step's noise."""
    _, lq = data
    unet = init_unet(TINY_X0, seed=0)
    ctx = jnp.zeros((lq.shape[0], TINY_X0.context_dim), jnp.float32)
    sde = IRSDE()
    out = sample(unet, sde, lq, ctx, ctx, key=jax.random.key(0), steps=steps, sampler=sampler)
    s = sde.for_sampling(steps)
    # the last step's own noise: the posterior std at t = 1 (~1e-11: the posterior sampler
    # lands on x0_hat), sigma_1 sqrt(dt) for the sde sampler, and for the ode (no noise) the
    # same scale of what its Euler steps leave of the start noise
    last = (float(s.reverse_optimum_std(1)) if sampler == "posterior"
            else float(s.sigmas[1] * s.sqrt_dt))
    err = float(jnp.abs(out - lq).max())
    assert err <= 6 * last + 1e-5, (sampler, steps, err, last)


def test_one_step_is_refused_for_noise_nets(data):
    x0, lq = data
    unet = init_unet("tiny", seed=0)
    with pytest.raises(ValueError, match="x0-parameterised"):
        sample(unet, IRSDE(), lq, steps=1)


def test_x0_losses():
    """"ml" = the official maximum-likelihood loss with x0_hat in place of x0 (the posterior
    mean's x0 coefficient times the error); "uniform" = plain L1 on x0_hat."""
    rng = np.random.default_rng(1)
    sde = IRSDE()
    x0, mu, xh = (jnp.asarray(rng.uniform(size=(3, 8, 8, 3)), jnp.float32) for _ in range(3))
    t = jnp.asarray([1, 50, 100], jnp.int32)
    _, xt = sde.generate_random_states(x0, mu, jax.random.key(0), t=t)
    uniform = sde.x0_loss(xh, xt, x0, mu, t, weighting="uniform")
    np.testing.assert_allclose(float(uniform), float(jnp.mean(jnp.abs(xh - x0))), rtol=1e-6)
    ml = sde.x0_loss(xh, xt, x0, mu, t, weighting="ml")
    # c_t = the x0 coefficient of the posterior mean, from the schedule
    e = lambda a: np.exp(-np.asarray(a, np.float64) * float(sde.dt))
    th, cs = np.asarray(sde.thetas)[np.asarray(t)], np.asarray(sde.thetas_cumsum)
    A, B, C = e(th), e(cs[np.asarray(t)]), e(cs[np.asarray(t) - 1])
    c = (C * (1 - A ** 2) / (1 - B ** 2)).reshape(-1, 1, 1, 1)
    want = np.mean(np.abs(c * (np.asarray(xh) - np.asarray(x0))).reshape(3, -1).mean(1))
    np.testing.assert_allclose(float(ml), want, rtol=1e-4)
    # ~ the official loss fed the noise that x0_hat implies (which takes an Euler step of the
    # reverse SDE where this takes the exact posterior mean)
    noise = sde.get_real_noise(xt, xh, mu, t)
    np.testing.assert_allclose(float(ml), float(sde.loss(noise, xt, x0, mu, t)), rtol=1e-2)
    assert float(sde.x0_loss(x0, xt, x0, mu, t)) == 0
    with pytest.raises(ValueError):
        sde.x0_loss(xh, xt, x0, mu, t, weighting="snr")


def test_parameterization_travels_with_the_weights(tmp_path):
    """Model dir config; .pth export (official keys, a warning, sde.json beside it); reload."""
    from daclip_jax.convert.unet import (X0_EXPORT_WARNING, export_unet_pth, load_unet, save_unet,
                                         torch_layout)
    from daclip_jax.convert import torch_io
    from daclip_jax.sde import sde_for_weights

    unet = init_unet(TINY_X0, seed=3)
    save_unet(unet, tmp_path / "dir")
    assert load_unet(str(tmp_path / "dir")).cfg.parameterization == "x0"

    trained = IRSDE(max_sigma=20, T=40)
    with pytest.warns(UserWarning, match="official sampler"):
        export_unet_pth(unet, tmp_path / "pth" / "unet.pth",
                        dict(trained.to_dict(), parameterization="x0"))
    sd = torch_io.load_state_dict(str(tmp_path / "pth" / "unet.pth"))
    assert list(sd) == list(torch_layout(TINY_X0))            # the official keys, same order
    back = load_unet(str(tmp_path / "pth" / "unet.pth"))
    assert back.cfg.parameterization == "x0"
    assert sde_for_weights(str(tmp_path / "pth" / "unet.pth")).to_dict() == trained.to_dict()
    assert "official sampler" in X0_EXPORT_WARNING

    with warnings.catch_warnings():
        warnings.simplefilter("error")                        # no warning for the official kind
        export_unet_pth(init_unet("tiny", seed=0), tmp_path / "official" / "unet.pth")
    assert not os.path.exists(tmp_path / "official" / "sde.json")
    assert load_unet(str(tmp_path / "official" / "unet.pth")).cfg.parameterization == "noise"


@pytest.fixture(scope="module")
def daclip(golden_state_dict):
    from daclip_jax.convert.daclip import daclip_from_state_dict

    sd = golden_state_dict("daclip_tiny")
    return daclip_from_state_dict(sd)


def test_cli_restore_reads_x0_and_refuses_one_step_noise(tmp_path, daclip, capsys):
    from daclip_jax.cli import main
    from daclip_jax.convert.daclip import save_daclip
    from daclip_jax.convert.unet import save_unet
    from daclip_jax.imageio import read_image
    from daclip_jax.restore import restore_image
    from daclip_jax.sde import save_sde_settings

    rng = np.random.default_rng(0)
    img = rng.uniform(size=(20, 24, 3)).astype(np.float32)
    Image.fromarray((img * 255).astype(np.uint8)).save(tmp_path / "in.png")
    save_daclip(daclip, tmp_path / "daclip")
    x0_net = init_unet(TINY_X0, seed=1)
    # a trained-looking head, so the output differs from the input
    x0_net.final_conv.bias[...] = jnp.full((3,), 0.05, jnp.float32)
    save_unet(x0_net, tmp_path / "x0")
    save_sde_settings(IRSDE(), tmp_path / "x0", "x0")
    args = ["restore", "--daclip", str(tmp_path / "daclip"), str(tmp_path / "in.png"),
            "--steps", "1", "--no-progress"]
    assert main(args[:3] + ["--unet", str(tmp_path / "x0")] + args[3:] + ["--out", str(tmp_path / "o")]) == 0
    got = read_image(str(tmp_path / "o" / "in.png"))
    lq = read_image(str(tmp_path / "in.png"))
    want = restore_image(daclip, x0_net, lq, IRSDE(), steps=1, progress=False)
    np.testing.assert_allclose(got, np.round(want * 255) / 255, atol=1.01 / 255)
    assert np.abs(want - np.clip(lq + 0.05, 0, 1)).max() < 1e-5   # one call: lq + the residual

    save_unet(init_unet("tiny", seed=1), tmp_path / "noise")
    capsys.readouterr()
    code = main(args[:3] + ["--unet", str(tmp_path / "noise")] + args[3:] + ["--out", str(tmp_path / "n")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "x0-parameterised" in err
    assert not os.path.exists(tmp_path / "n" / "in.png")
