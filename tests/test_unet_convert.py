"""Official ConditionalUNet checkpoint import/export (universal-ir.pth / wild-ir.pth layout)."""

import numpy as np
import pytest
import torch
import jax
import jax.numpy as jnp
from flax import nnx

from daclip_jax.convert import torch_io
from daclip_jax.convert import unet as cu
from daclip_jax.models.unet import UNetConfig, init_unet


@pytest.fixture(scope="module")
def golden_sd(golden_state_dict):
    return golden_state_dict("unet_tiny")


def _tsv(golden_dir):
    rows = [l.rstrip("\n").split("\t") for l in open(golden_dir / "keys_universal-ir.tsv")][1:]
    return [(r[0], tuple(int(x) for x in r[1].split("x"))) for r in rows]


def test_import_export_import_bit_exact(golden_sd, tmp_path):
    src = tmp_path / "tiny.pth"
    torch_io.save_state_dict(golden_sd, src)          # bare OrderedDict, as save_network writes
    unet = cu.import_unet(src)
    assert unet.cfg == UNetConfig.named("tiny")
    out = tmp_path / "out.pth"
    cu.export_unet_pth(unet, out)
    back = torch.load(out, map_location="cpu", weights_only=True)
    assert type(back).__name__ == "OrderedDict" and list(back) == list(golden_sd)   # torch order too
    for k, v in golden_sd.items():
        np.testing.assert_array_equal(back[k].numpy(), v)
    again = cu.import_unet(out)
    for a, b in zip(jax.tree.leaves(nnx.state(unet)), jax.tree.leaves(nnx.state(again))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_module_prefix_and_wrapper_are_accepted(golden_sd, tmp_path):
    p = tmp_path / "ddp.pth"
    torch_io.save_state_dict({"module." + k: v for k, v in golden_sd.items()}, p, wrap_key="state_dict")
    unet = cu.load_unet(p)
    np.testing.assert_array_equal(np.asarray(unet.prompt[...]), golden_sd["prompt"])
    np.testing.assert_array_equal(np.asarray(unet.downs[0][0].block1.proj.kernel[...]),
                                  golden_sd["downs.0.0.block1.proj.weight"].transpose(2, 3, 1, 0))


def test_bad_checkpoints_name_the_key(golden_sd, tmp_path):
    sd = dict(golden_sd)
    del sd["mid_attn.fn.norm.g"]
    sd["extra.weight"] = np.zeros(3, np.float32)
    p = tmp_path / "bad.pth"
    torch_io.save_state_dict(sd, p)
    with pytest.raises(torch_io.CheckpointError, match="mid_attn.fn.norm.g"):
        cu.import_unet(p)
    sd = dict(golden_sd)
    sd["final_conv.bias"] = np.zeros(4, np.float32)
    torch_io.save_state_dict(sd, p)
    with pytest.raises(torch_io.CheckpointError, match="final_conv.bias"):
        cu.import_unet(p)


def test_official_universal_ir_layout(golden_dir, tmp_path):
    """A real-size (nf 64, ctx 512) export has exactly the keys, shapes and order of the
    released universal-ir.pth (keys_universal-ir.tsv), and loads back with the config inferred."""
    expected = _tsv(golden_dir)
    cfg = UNetConfig.named("universal-ir")
    assert list(cu.torch_layout(cfg).items()) == expected
    unet = init_unet(cfg, seed=0)
    p = tmp_path / "universal-ir.pth"
    cu.export_unet_pth(unet, p)
    sd = torch.load(p, map_location="cpu", weights_only=True)
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == expected
    assert sum(v.numel() for v in sd.values()) == 48_975_747
    assert cu.config_from_state_dict({k: v.numpy() for k, v in sd.items()}) == cfg


def test_wild_ir_style_net_roundtrip(tmp_path):
    """Image-context-only net with the extra scale-0.5 down/up pair (wild-ir.pth layout)."""
    # depth 2 (ch_mult (2, 4)) keeps every block kind and compiles fast
    cfg = UNetConfig(nf=16, ch_mult=(2, 4), context_dim=32, use_degra_context=False,
                     use_image_context=True, scale=0.5)
    unet = init_unet(cfg, seed=3)
    sd = cu.state_dict_from_unet(unet)
    assert "prompt" not in sd and "downsample.weight" in sd and "upsample.1.weight" in sd
    assert sd["mid_attn.fn.fn.transformer_blocks.0.attn2.to_k.weight"].shape == (64, 32)
    back = cu.unet_from_state_dict(sd)
    assert back.cfg == cfg
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(size=(1, 35, 20, 3)), jnp.float32)
    img = jnp.asarray(rng.normal(size=(1, 32)), jnp.float32)
    y = jax.jit(lambda s: nnx.merge(nnx.graphdef(back), s)(x, x * 0.5, 40.0, None, img))(nnx.state(back))
    assert y.shape == (1, 35, 20, 3) and np.isfinite(np.asarray(y)).all()


def test_model_dir_roundtrip(tmp_path, golden_sd):
    unet = cu.unet_from_state_dict(golden_sd)
    cu.save_unet(unet, tmp_path / "m")
    back = cu.load_unet(tmp_path / "m", remat=True)
    assert back.cfg == UNetConfig.named("tiny", remat=True)
    for a, b in zip(jax.tree.leaves(nnx.state(unet)), jax.tree.leaves(nnx.state(back))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(FileNotFoundError):
        cu.load_unet(tmp_path)
