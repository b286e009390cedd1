"""`daclip-jax evaluate` end to end on a tiny paired test set made here: two degradation
folders, tiny golden DA-CLIP (32 px views) and a tiny random ConditionalUNet."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
from PIL import Image

from daclip_jax.eval import metrics as M
from daclip_jax.eval.testset import find_test_pairs
from daclip_jax.imageio import read_image
from daclip_jax.labels import DEGRADATIONS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JAX_CACHE = os.path.join(tempfile.gettempdir(), "daclip-jax-test-jax-cache")
# (folder, [(H, W), ...]): one size shared by several images (a sharded batch on 4 devices),
# one size alone (a device of its own)
LAYOUT = (("hazy", [(32, 40), (36, 32)]), ("noisy", [(32, 40), (32, 40), (32, 40)]))
SCORES = ("psnr", "ssim", "psnr_y", "ssim_y")
CLI = [sys.executable, "-c", "import sys; from daclip_jax.cli import main; sys.exit(main(sys.argv[1:]))"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, golden_state_dict):
    from skimage import data

    from daclip_jax.convert.daclip import daclip_from_state_dict, save_daclip
    from daclip_jax.convert.unet import export_unet_pth
    from daclip_jax.models.unet import init_unet

    root = tmp_path_factory.mktemp("evaluate")
    sd = golden_state_dict("daclip_tiny")
    save_daclip(daclip_from_state_dict(sd), root / "daclip")
    export_unet_pth(init_unet("tiny", seed=0), root / "unet.pth")
    rng = np.random.default_rng(0)
    photo = data.astronaut()
    for kind, sizes in LAYOUT:
        for k, (h, w) in enumerate(sizes):
            gt = np.asarray(Image.fromarray(photo[40 * k:]).resize((w, h), Image.BICUBIC))
            lq = (np.clip(gt + rng.normal(0, 20, gt.shape), 0, 255) if kind == "noisy"
                  else 0.6 * gt + 0.4 * 200).astype(np.uint8)
            for sub, a in (("LQ", lq), ("GT", gt)):
                (root / "data" / kind / sub).mkdir(parents=True, exist_ok=True)
                Image.fromarray(a).save(root / "data" / kind / sub / f"{k:03d}.png")
    return root


def _env(devices=1):
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
                XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                JAX_COMPILATION_CACHE_DIR=JAX_CACHE, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def _run_args(w, out, *extra):
    return ["evaluate", "--daclip", str(w / "daclip"), "--unet", str(w / "unet.pth"),
            "--data", str(w / "data"), "--steps", "3", "--out", str(out), "--no-progress", *extra]


def _cli(args, devices=1, timeout=600):
    r = subprocess.run(["timeout", "-k", "5", str(timeout), *CLI, *args],
                       env=_env(devices), capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _scores_by_name(result):
    return {r["name"]: r for r in result["images"]}


def test_test_layout(workdir, tmp_path):
    pairs = find_test_pairs(workdir / "data")
    assert [p.name for p in pairs] == ["hazy/000.png", "hazy/001.png", "noisy/000.png",
                                       "noisy/001.png", "noisy/002.png"]
    assert [p.label for p in pairs] == [1, 1, 4, 4, 4]
    single = find_test_pairs(workdir / "data" / "noisy")      # one LQ/GT pair of folders
    assert [p.name for p in single] == ["noisy/000.png", "noisy/001.png", "noisy/002.png"]
    (tmp_path / "x" / "LQ").mkdir(parents=True)
    (tmp_path / "x" / "GT").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "x" / "LQ" / "a.png")
    with pytest.raises(ValueError, match="LQ has 1 images but GT has 0"):
        find_test_pairs(tmp_path / "x")
    with pytest.raises(ValueError, match="official test layout"):
        find_test_pairs(workdir)


def test_identity_scores_lq_against_gt_with_lpips(workdir, tmp_path, capsys):
    """The identity restorer's numbers are the metrics of LQ vs GT; LPIPS appears with --lpips."""
    from daclip_jax.cli import main
    from daclip_jax.convert.torch_io import save_state_dict
    from daclip_jax.models.lpips import ALEX_CONVS, load_lpips, lpips_distance

    rng = np.random.default_rng(1)
    alex = {}
    for index, cin, cout, k, _, _ in ALEX_CONVS:
        alex[f"features.{index}.weight"] = (rng.normal(size=(cout, cin, k, k)) / np.sqrt(cin * k * k)).astype(np.float32)
        alex[f"features.{index}.bias"] = rng.normal(0, 0.1, cout).astype(np.float32)
    save_state_dict(alex, tmp_path / "alexnet.pth")

    out = tmp_path / "identity.json"
    assert main(["evaluate", "--identity", "--data", str(workdir / "data"), "--out", str(out),
                 "--lpips", str(tmp_path / "alexnet.pth"), "--no-progress"]) == 0
    table = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["complete"] and (tmp_path / "identity.md").read_text().strip() == table.strip()
    assert "| LPIPS |" in table and "--identity" in table
    lp = load_lpips(tmp_path / "alexnet.pth")
    for rec in result["images"]:
        lq, gt = read_image(rec["lq"]), read_image(rec["gt"])
        want = M.image_scores(gt, lq)
        for m in SCORES:
            assert rec[m] == want[m]
        assert rec["psnr"] == M.psnr(gt, lq) and rec["ssim"] == M.ssim(gt, lq)
        assert rec["lpips"] == pytest.approx(lpips_distance(lp, gt, lq), abs=1e-7)
        assert rec["lpips"] > 0
    per = result["summary"]["per_type"]
    assert {k: v["images"] for k, v in per.items()} == {"hazy": 2, "noisy": 3}
    noisy = [r["psnr"] for r in result["images"] if r["degradation"] == "noisy"]
    assert per["noisy"]["psnr"] == pytest.approx(np.mean(noisy))
    assert result["summary"]["all"]["images"] == 5 and "accuracy" not in result["summary"]

    # without --lpips the column is absent and the table says why; an existing --out is kept
    assert main(["evaluate", "--identity", "--data", str(workdir / "data"), "--out", str(out),
                 "--no-progress"]) == 2
    out2 = tmp_path / "plain.json"
    assert main(["evaluate", "--identity", "--data", str(workdir / "data"), "--out", str(out2),
                 "--crop-border", "0", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "LPIPS: not computed" in captured.out and "| LPIPS |" not in captured.out
    assert "not comparable with the paper" in captured.err
    rec = json.loads(out2.read_text())["images"][0]
    assert "lpips" not in rec and rec["psnr"] == M.psnr(read_image(rec["gt"]), read_image(rec["lq"]), 0)


def test_accuracy_and_confusion_match_classify(workdir, tmp_path, capsys):
    from daclip_jax.cli import main

    out = tmp_path / "acc.json"
    assert main(["evaluate", "--identity", "--daclip", str(workdir / "daclip"),
                 "--data", str(workdir / "data"), "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    result = json.loads(out.read_text())
    pairs = find_test_pairs(workdir / "data")
    assert main(["classify", "--checkpoint", str(workdir / "daclip"), "--json",
                 *[p.lq for p in pairs]]) == 0
    classified = {c["path"]: c["top"] for c in json.loads(capsys.readouterr().out)}
    recs = _scores_by_name(result)
    cm = np.zeros((10, 10), int)
    for p in pairs:
        assert recs[p.name]["predicted"] == classified[p.lq]
        cm[p.label, DEGRADATIONS.index(classified[p.lq])] += 1
    summary = result["summary"]
    assert summary["confusion"]["matrix"] == cm.tolist()
    assert summary["accuracy"] == pytest.approx(np.trace(cm) / 5)
    for kind in ("hazy", "noisy"):
        k = DEGRADATIONS.index(kind)
        assert summary["per_type"][kind]["accuracy"] == pytest.approx(cm[k, k] / cm[k].sum())


# a run that never gets past reading noisy/001's LQ: the kill lands at a known point
_HANG = """
import sys, time
import daclip_jax.eval.evaluate as E
read = E.read_image
def read_or_hang(path, **kw):
    if path.endswith(sys.argv[1]):
        time.sleep(3600)
    return read(path, **kw)
E.read_image = read_or_hang
from daclip_jax.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_restore_resume_after_kill_and_four_devices(workdir, tmp_path):
    full = tmp_path / "full.json"
    _cli(_run_args(workdir, full, "--save-images", str(tmp_path / "images")))
    a = json.loads(full.read_text())
    assert a["complete"] and len(a["images"]) == 5
    assert {k: v["images"] for k, v in a["summary"]["per_type"].items()} == {"hazy": 2, "noisy": 3}
    assert "| **all** | 5 |" in (tmp_path / "full.md").read_text()
    assert a["settings"]["steps"] == 3 and a["settings"]["sampler"] == "posterior"
    assert a["timing"]["images"] == 5 and a["timing"]["seconds"] > 0

    # the same code as `restore`: the saved outputs are restore_image's, and their metrics
    from daclip_jax.convert.daclip import load_daclip
    from daclip_jax.convert.unet import load_unet
    from daclip_jax.restore import restore_image
    from daclip_jax.sde import sde_for_weights
    daclip, unet = load_daclip(str(workdir / "daclip")), load_unet(str(workdir / "unet.pth"))
    for rec in a["images"][:2]:
        lq, gt = read_image(rec["lq"]), read_image(rec["gt"])
        out = restore_image(daclip, unet, lq, sde_for_weights(str(workdir / "unet.pth")), steps=3,
                            progress=False)
        saved = read_image(tmp_path / "images" / rec["name"])
        np.testing.assert_array_equal(M.image_scores(gt, out)["psnr"], rec["psnr"])
        assert np.abs(saved - out).max() <= 0.5 / 255 + 1e-6

    # killed while reading noisy/001, then resumed: the same JSON as the uninterrupted run
    killed = tmp_path / "killed.json"
    proc = subprocess.Popen([sys.executable, "-c", _HANG, os.path.join("noisy", "LQ", "001.png"),
                             *_run_args(workdir, killed)], env=_env(), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 600
        while time.time() < deadline:
            if killed.exists() and len(json.loads(killed.read_text())["images"]) == 3:
                break
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            time.sleep(0.2)
        else:
            pytest.fail("the run to be killed never got to its third image")
        assert proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    partial = json.loads(killed.read_text())
    assert not partial["complete"] and len(partial["images"]) == 3
    r = _cli(_run_args(workdir, killed, "--resume"))
    assert "resuming: 3 of 5" in r.stderr
    b = json.loads(killed.read_text())
    assert b["complete"] and b["images"] == a["images"] and b["settings"] == a["settings"]
    assert b["summary"] == a["summary"]
    changed = subprocess.run([*CLI, *_run_args(workdir, killed, "--resume", "--seed", "1")],
                             env=_env(), capture_output=True, text=True, cwd=ROOT)
    assert changed.returncode == 2 and "seed" in changed.stderr

    # four devices, batch of four: a sharded batch and images one per device; same numbers
    four = tmp_path / "four.json"
    _cli(_run_args(workdir, four, "--batch-size", "4"), devices=4)
    c = json.loads(four.read_text())
    assert c["timing"]["devices"] == 4
    assert c["timing"]["dispatch"]["sharded"] >= 1 and c["timing"]["dispatch"]["one_per_device"] >= 1
    for x, y in zip(a["images"], c["images"]):
        assert x["name"] == y["name"] and x["predicted"] == y["predicted"]
        for m in SCORES:
            assert y[m] == pytest.approx(x[m], abs=1e-6), (x["name"], m)


def test_unreadable_image_stops_with_its_name_and_resumes(workdir, tmp_path, capsys):
    import shutil

    from daclip_jax.cli import main

    data = tmp_path / "data"
    shutil.copytree(workdir / "data", data)
    bad = data / "noisy" / "LQ" / "001.png"
    good = bad.read_bytes()
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "r.json"
    argv = ["evaluate", "--identity", "--data", str(data), "--out", str(out), "--no-progress"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "--resume" in err
    partial = json.loads(out.read_text())
    assert [r["name"] for r in partial["images"]] == ["hazy/000.png", "hazy/001.png", "noisy/000.png"]
    bad.write_bytes(good)
    assert main(argv + ["--resume"]) == 0
    assert len(json.loads(out.read_text())["images"]) == 5


def test_parameterization_flows_from_the_weights(workdir, tmp_path, capsys):
    """An x0-parameterised net's one-step mode works through evaluate as through restore (the
    net's saved settings decide); a noise net refuses one step, as `restore` does."""
    from daclip_jax.cli import main
    from daclip_jax.convert.daclip import load_daclip
    from daclip_jax.convert.unet import load_unet, save_unet
    from daclip_jax.models.unet import UNetConfig, init_unet
    from daclip_jax.restore import restore_image
    from daclip_jax.sde import sde_for_weights

    save_unet(init_unet(UNetConfig.named("tiny", parameterization="x0"), seed=0), tmp_path / "x0")
    data = workdir / "data" / "noisy"
    base = ["evaluate", "--daclip", str(workdir / "daclip"), "--data", str(data), "--steps", "1",
            "--no-progress"]
    assert main(base + ["--unet", str(workdir / "unet.pth"), "--out", str(tmp_path / "n.json")]) == 2
    assert "x0-parameterised" in capsys.readouterr().err
    assert main(base + ["--unet", str(tmp_path / "x0"), "--out", str(tmp_path / "x0.json")]) == 0
    result = json.loads((tmp_path / "x0.json").read_text())
    assert result["settings"]["parameterization"] == "x0" and "x0-predicting" in capsys.readouterr().out
    daclip, unet = load_daclip(str(workdir / "daclip")), load_unet(str(tmp_path / "x0"))
    rec = result["images"][0]
    lq, gt = read_image(rec["lq"]), read_image(rec["gt"])
    out = restore_image(daclip, unet, lq, sde_for_weights(str(tmp_path / "x0")), steps=1, progress=False)
    assert M.image_scores(gt, out) == {m: rec[m] for m in SCORES}
