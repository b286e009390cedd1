"""Official DA-CLIP / open_clip checkpoint import-export, load_daclip, model dirs."""

import pickle
from collections import OrderedDict

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from daclip_jax.convert import daclip as dc
from daclip_jax.convert import open_clip as oc
from daclip_jax.convert.torch_io import CheckpointError, save_state_dict
from daclip_jax.models.clip import CLIPConfig
from daclip_jax.models.daclip import DaCLIP

TINY = CLIPConfig.named("daclip_tiny")


def golden_sd(golden_dir):
    z = np.load(golden_dir / "daclip_tiny.npz")
    return OrderedDict((n[3:], np.asarray(z[n].astype(np.float32) * z["sd_scale/" + n[3:]], np.float32))
                       for n in z.files if n.startswith("sd/"))


def flat(model):
    return {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def assert_same_params(a, b):
    fa, fb = flat(a), flat(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        assert np.array_equal(fa[k], fb[k]), k


def test_vit_b32_layout_matches_official_tsv(golden_dir):
    rows = [l.split("\t") for l in (golden_dir / "keys_daclip_ViT-B-32.tsv").read_text().splitlines()[1:]]
    want = [(r[0], () if r[1] == "scalar" else tuple(int(s) for s in r[1].split("x"))) for r in rows]
    got = list(dc.daclip_layout(CLIPConfig.named("daclip_ViT-B-32")).items())
    assert len(got) == 631
    assert got == want


def test_golden_roundtrip_is_bit_exact(golden_dir, tmp_path):
    sd = golden_sd(golden_dir)
    model = dc.daclip_from_state_dict(sd, TINY)
    out = dc.daclip_state_dict(model)
    assert list(out) == list(sd)  # the official key order, aliases included
    for k in sd:
        assert out[k].dtype == np.float32 and np.array_equal(out[k], sd[k]), k
    path = tmp_path / "daclip.pt"
    dc.export_daclip_pt(model, path)
    loaded = torch.load(path, weights_only=True)
    assert list(loaded) == list(sd)
    assert all(tuple(loaded[k].shape) == sd[k].shape for k in sd)  # what strict loading checks
    # aliases are one stored tensor, as in the official file (no duplicated 350 MB for B-32)
    ptr = lambda k: loaded[k].untyped_storage().data_ptr()
    assert ptr("visual.conv1.weight") == ptr("clip.visual.conv1.weight")
    assert ptr("visual.proj") != ptr("clip.visual.conv1.weight")
    cfg, again = dc.import_daclip(path, TINY)
    assert cfg == TINY
    assert_same_params(model, again)


def test_training_checkpoint_with_module_prefix(golden_dir, tmp_path):
    sd = golden_sd(golden_dir)
    path = tmp_path / "epoch_1.pt"
    torch.save({"epoch": 1, "name": "x",
                "state_dict": OrderedDict(("module." + k, torch.from_numpy(v)) for k, v in sd.items()),
                "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0]}]},
                "scaler": {"scale": 65536.0}}, path)
    # shapes identify daclip_tiny without being told
    model = dc.load_daclip(path)
    assert model.cfg == TINY
    assert_same_params(model, dc.daclip_from_state_dict(sd, TINY))


def test_module_prefix_only_stripped_when_first_key_has_it(golden_dir):
    sd = golden_sd(golden_dir)
    mixed = OrderedDict((("module." + k) if i else k, v) for i, (k, v) in enumerate(sd.items()))
    with pytest.raises(CheckpointError, match="module.clip"):
        dc.daclip_from_state_dict(mixed, TINY)


@pytest.mark.parametrize("edit, message", [
    (lambda sd: sd.pop("visual_control.transformer.zero_modules.1.bias"), "missing key 'visual_control.transformer.zero_modules.1.bias'"),
    (lambda sd: sd.__setitem__("clip.visual.extra", np.zeros(3, np.float32)), "unexpected key 'clip.visual.extra'"),
    (lambda sd: sd.__setitem__("clip.ln_final.bias", np.zeros(5, np.float32)), "key 'clip.ln_final.bias' has shape"),
])
def test_bad_layouts_name_the_key(golden_dir, edit, message):
    sd = golden_sd(golden_dir)
    edit(sd)
    with pytest.raises(CheckpointError, match=message.replace(".", r"\.")):
        dc.daclip_from_state_dict(sd, TINY)


def test_alias_mismatch_is_refused(golden_dir):
    sd = golden_sd(golden_dir)
    sd["visual.proj"] = sd["visual.proj"] + 1
    with pytest.raises(CheckpointError, match="alias 'visual.proj'"):
        dc.daclip_from_state_dict(sd, TINY)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_payload_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"logit_scale": torch.zeros(())}, "x": _Payload(str(marker))}, path)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refused"):
        dc.load_daclip(path)
    assert not marker.exists()
    # plain pickle (not a torch zip) too
    path2 = tmp_path / "evil2.pt"
    with open(path2, "wb") as f:
        pickle.dump(_Payload(str(marker)), f)
    with pytest.raises(CheckpointError):
        dc.load_daclip(path2)
    assert not marker.exists()


@pytest.fixture(scope="module")
def tiny_clip(golden_dir):
    # from the golden weights: a fresh random init spends ~10 s compiling eager initialisers
    return dc.daclip_from_state_dict(golden_sd(golden_dir), TINY).clip


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
def test_open_clip_roundtrip_and_config_inference(tiny_clip, tmp_path, suffix):
    path = tmp_path / ("open_clip_pytorch_model" + suffix)
    oc.export_open_clip(tiny_clip, path)
    again = oc.load_open_clip(path)
    assert again.cfg == TINY
    assert_same_params(tiny_clip, again)


def test_infer_config_of_vit_b32_shapes():
    layout = oc.clip_layout(CLIPConfig.named("ViT-B-32"))
    fake = {k: np.empty(s, np.float32) if len(s) else np.empty((), np.float32) for k, s in layout.items()}
    assert oc.infer_config(fake) == CLIPConfig.named("ViT-B-32")
    assert oc.infer_config(fake, quick_gelu=True) == CLIPConfig.named("ViT-B-32-quickgelu")


def test_load_daclip_from_open_clip_starts_with_zero_control(tiny_clip, tmp_path):
    path = tmp_path / "clip.pt"
    oc.export_open_clip(tiny_clip, path)
    model = dc.load_daclip(path)
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    frozen = nnx.jit(lambda m, x: m.encode_image(x))(model, x)
    content, degra = nnx.jit(lambda m, x: m.encode_image(x, control=True))(model, x)
    np.testing.assert_array_equal(np.asarray(content), np.asarray(frozen))
    # controller = copy of the frozen tower, so degradation features equal them at init
    np.testing.assert_allclose(np.asarray(degra), np.asarray(frozen), atol=1e-6)
    assert float(model.logit_scale[...]) == float(tiny_clip.logit_scale[...])


def test_official_init_bug_is_opt_in(tiny_clip):
    model = DaCLIP.from_clip(tiny_clip, official_init_bug=True)
    zm0 = model.visual_control.transformer.zero_modules[0]
    ln = tiny_clip.visual.ln_post
    torch_weight = np.asarray(zm0.kernel[...]).T  # (out, in): every row = ln_post.weight
    np.testing.assert_array_equal(torch_weight, np.broadcast_to(np.asarray(ln.scale[...]), torch_weight.shape))
    np.testing.assert_array_equal(np.asarray(zm0.bias[...]), np.asarray(ln.bias[...]))
    np.testing.assert_array_equal(np.asarray(model.visual_control.ln_post.scale[...]), 1.0)
    np.testing.assert_array_equal(np.asarray(model.visual_control.ln_post.bias[...]), 0.0)
    assert not np.any(np.asarray(model.visual_control.transformer.zero_modules[1].kernel[...]))
    clean = DaCLIP.from_clip(tiny_clip)
    assert not np.any(np.asarray(clean.visual_control.transformer.zero_modules[0].kernel[...]))


def test_model_dir_roundtrip_and_runtime_overrides(golden_dir, tmp_path):
    model = dc.daclip_from_state_dict(golden_sd(golden_dir), TINY)
    dc.save_daclip(model, tmp_path / "m")
    again = dc.load_daclip(tmp_path / "m")
    assert again.cfg == TINY
    assert_same_params(model, again)
    bf16 = dc.load_daclip(tmp_path / "m", dtype="bfloat16", remat=True)
    assert bf16.cfg.dtype == "bfloat16" and bf16.cfg.remat
    assert_same_params(model, bf16)  # params stay float32


def test_unknown_files_give_clear_errors(tmp_path):
    path = tmp_path / "other.pt"
    save_state_dict({"foo.weight": np.zeros((2, 2), np.float32)}, path)
    with pytest.raises(CheckpointError, match="neither a DA-CLIP nor an open_clip"):
        dc.load_daclip(path)
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(CheckpointError, match="neither a daclip-jax model dir"):
        dc.load_daclip(tmp_path / "emptydir")
