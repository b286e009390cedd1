"""`daclip-jax import` / `export` for the CLIP and DA-CLIP formats."""

from collections import OrderedDict

import numpy as np
import pytest
import torch

from daclip_jax.cli import main
from daclip_jax.cli.convert import detect
from daclip_jax.convert import daclip as dc
from daclip_jax.convert import open_clip as oc
from daclip_jax.models.clip import CLIPConfig
from daclip_jax.model_io import load_model_dir

TINY = CLIPConfig.named("daclip_tiny")


@pytest.fixture(scope="module")
def golden(golden_state_dict):
    return OrderedDict(golden_state_dict("daclip_tiny"))


def test_official_pt_import_then_export_is_bit_exact(golden, tmp_path, capsys):
    src = tmp_path / "daclip_tiny.pt"
    torch.save({"epoch": 3, "state_dict": OrderedDict(("module." + k, torch.from_numpy(v)) for k, v in golden.items())}, src)
    assert main(["import", str(src), "--to", str(tmp_path / "m")]) == 0
    kind, config, _ = load_model_dir(tmp_path / "m")
    assert kind == "daclip" and CLIPConfig.from_dict(config) == TINY
    assert main(["export", str(tmp_path / "m"), "--format", "daclip-pt", "--to", str(tmp_path / "out.pt")]) == 0
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    assert list(out) == list(golden)
    for k, v in golden.items():
        assert np.array_equal(out[k].numpy(), v), k
    assert "imported daclip" in capsys.readouterr().out


def test_open_clip_and_hf_roundtrip(golden, tmp_path):
    clip_sd = OrderedDict((k[5:], v) for k, v in golden.items() if k.startswith("clip."))
    src = tmp_path / "open_clip_model.safetensors"
    from safetensors.numpy import save_file

    save_file(dict(clip_sd), str(src))
    assert main(["import", str(src), "--to", str(tmp_path / "c")]) == 0
    assert load_model_dir(tmp_path / "c")[0] == "clip"
    # a CLIP dir is a valid DA-CLIP source (fresh zero controller)
    assert dc.load_daclip(tmp_path / "c").cfg == TINY
    assert main(["export", str(tmp_path / "c"), "--format", "open-clip", "--to", str(tmp_path / "c.bin")]) == 0
    back = oc.read_state_dict(tmp_path / "c.bin")
    assert list(back) == list(clip_sd) and all(np.array_equal(back[k], v) for k, v in clip_sd.items())
    # HF: export the CLIP part of a DA-CLIP, import it again
    assert main(["export", str(tmp_path / "c"), "--format", "hf", "--to", str(tmp_path / "hf")]) == 0
    assert main(["import", str(tmp_path / "hf"), "--to", str(tmp_path / "c2")]) == 0
    again = oc.clip_state_dict(dc.load_clip(tmp_path / "c2"))
    assert all(np.array_equal(again[k], v) for k, v in clip_sd.items())


def test_detect_by_keys(golden_dir, golden):
    unet_keys = [l.split("\t")[0] for l in (golden_dir / "keys_universal-ir.tsv").read_text().splitlines()[1:]]
    assert detect(unet_keys) == "unet"
    assert detect(golden) == "daclip"
    assert detect(["module." + k for k in golden]) == "daclip"
    assert detect([k[5:] for k in golden if k.startswith("clip.")]) == "clip"


def test_unknown_sources_fail_with_one_line(tmp_path, capsys):
    bad = tmp_path / "weird.pt"
    torch.save({"foo.weight": torch.zeros(2)}, bad)
    assert main(["import", str(bad), "--to", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "weird.pt" in err[0] and "unknown checkpoint layout" in err[0]
    assert main(["export", str(tmp_path / "nothing"), "--format", "daclip-pt", "--to", str(tmp_path / "y.pt")]) == 2
    assert "nothing" in capsys.readouterr().err


def test_unet_pth_import_export_through_the_cli(golden_state_dict, tmp_path):
    """The verbs dispatch official UNet .pth files to daclip_jax.convert.unet."""
    pytest.importorskip("daclip_jax.convert.unet")
    sd = OrderedDict(golden_state_dict("unet_tiny"))
    src = tmp_path / "universal-ir-tiny.pth"
    torch.save(OrderedDict((k, torch.from_numpy(v)) for k, v in sd.items()), src)
    assert main(["import", str(src), "--to", str(tmp_path / "u")]) == 0
    assert load_model_dir(tmp_path / "u")[0] == "unet"
    assert main(["export", str(tmp_path / "u"), "--format", "unet-pth", "--to", str(tmp_path / "u.pth")]) == 0
    out = torch.load(tmp_path / "u.pth", weights_only=True)
    assert set(out) == set(sd)
    assert all(np.array_equal(out[k].numpy(), v) for k, v in sd.items())
