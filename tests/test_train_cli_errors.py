"""The training verbs (`train`, `eval`, `sweep`) answer a mistake in their input with one
`error:` line and exit code 2, make no workdir for it, and still show a bug's traceback."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from daclip_jax.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DACLIP = os.path.join(ROOT, "configs", "daclip_vit_b32.py")
IR = os.path.join(ROOT, "configs", "universal_ir.py")


@pytest.fixture
def here(tmp_path, monkeypatch):
    """A working directory with a folder of 8 images, a folder of one non-image, a trained-run
    stand-in and a CSV whose filepaths are relative to a folder that is not here."""
    monkeypatch.chdir(tmp_path)
    os.makedirs("imgs")
    for i in range(8):
        Image.fromarray((np.random.default_rng(i).random((40, 40, 3)) * 255).astype(np.uint8)).save(
            f"imgs/{i}.png")
    os.makedirs("bad")
    with open("bad/x.png", "w") as f:
        f.write("not an image")
    os.makedirs("data")
    with open("data/daclip_train.csv", "w") as f:
        f.write("filepath\ttitle\ndatasets/universal/train/noisy/LQ/1.png\ta cat: noisy\n")
    os.makedirs("run/checkpoints/4")
    return tmp_path


def _train(config, *extra):
    return ["train", "--config", config, "--workdir", "work", *extra]


CASES = {
    "config file": (_train("configs/nope.py"), "config file configs/nope.py not found"),
    "config arg": (_train(f"{DACLIP}:runlocal,data=imgs,batchsize=2"), "unknown config arg 'batchsize'"),
    "override key": (_train(f"{DACLIP}:runlocal,data=imgs", "--config.train.stepz=3"),
                     "--config.train.stepz: no field 'stepz' in train"),
    "override type": (_train(f"{DACLIP}:runlocal,data=imgs", "--config.train.steps=abc"),
                      "--config.train.steps='abc': train.steps takes a value of type int"),
    "override value": (_train(f"{DACLIP}:runlocal,data=imgs", "--config.data.source.kind=zip"),
                       "--config.data.source.kind='zip' is not a source kind"),
    "no data folder": (_train(f"{DACLIP}:runlocal,data=missing"),
                       "--config.data.source.path=missing: no such folder"),
    "no daclip checkpoint": (_train(f"{IR}:runlocal,data=imgs", "--config.model.daclip=daclip.pt"),
                             "--config.model.daclip=daclip.pt: no such file or folder"),
    "mesh": (_train(f"{DACLIP}:runlocal,data=imgs", "--config.mesh.data=3"),
             "--config.mesh: mesh {'data': 3, 'fsdp': 1, 'tensor': 1} needs 3 devices"),
    "resume": (_train(f"{DACLIP}:runlocal,data=imgs", "--resume", "last"), "--resume last"),
    "no usable image": (_train(f"{DACLIP}:runlocal,data=bad"),
                        "image folder 'bad': no usable images (skipped 1 file(s): 1× not a readable"),
    "csv files elsewhere": (_train(f"{DACLIP}:runlocal", "--config.data.source.kind=csv",
                                   "--config.data.source.path=data/daclip_train.csv"),
                            "csv 'data/daclip_train.csv': none of its 1 image file(s) exists"),
    "eval without a run": (["eval", "--config", f"{DACLIP}:runlocal", "--workdir", "work"],
                           "--workdir work holds no training run"),
    "eval step": (["eval", "--config", f"{DACLIP}:runlocal,data=imgs", "--workdir", "run",
                   "--step", "7"], "--resume 7: no checkpoint of that step in run (has: 4)"),
    "sweep": (["sweep", "--config", DACLIP, "--workdir", "work", "--config.train.lr=fast",
               "--dry-run"], "--config.train.lr='fast': train.lr takes a value of type float"),
    "override without value": (_train(f"{DACLIP}:runlocal,data=imgs", "--config.train.steps"),
                               "--config.train.steps needs a value"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_user_error_is_one_line_exit_2_and_no_workdir(here, capsys, case):
    argv, expected = CASES[case]
    try:
        rc = main(argv)
    except SystemExit as e:   # argparse-level mistakes exit from the parser
        rc = e.code
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert expected in err, err
    assert not os.path.exists("work")


def test_batch_not_divisible_over_devices_in_a_real_process(here):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    r = subprocess.run([sys.executable, "-c", "import sys; from daclip_jax.cli import main; "
                        "sys.exit(main(sys.argv[1:]))",
                        *_train(f"{DACLIP}:runlocal,data=imgs", "--config.train.batch_size=3")],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr == (
        "error: --config.train.batch_size=3 does not split over the mesh's data axes "
        "(data x fsdp = 2 devices); use a multiple of 2\n")
    assert not os.path.exists("work")


def test_debug_shows_the_traceback_and_a_bug_is_not_hidden(here, monkeypatch):
    from daclip_jax.train.configlib import ConfigError

    with pytest.raises(ConfigError, match="stepz"):
        main(_train(f"{DACLIP}:runlocal,data=imgs", "--config.train.stepz=3", "--debug"))

    def bug(*args, **kwargs):
        raise ValueError("an internal error")

    monkeypatch.setattr("daclip_jax.train.core.train", bug)
    with pytest.raises(ValueError, match="an internal error"):
        main(_train(f"{DACLIP}:runlocal,data=imgs"))
