"""The official datasets as a team meets them: the layout datasets/universal/{train,val}/
<degradation>/{LQ,GT}/, its captions CSV as generate_captions.py writes it (pandas), then
`data captions`, DA-CLIP on the CSV, the restorer on the folders and `evaluate` on val."""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pandas as pd   # what the official generate_captions.py writes its CSV with
import pytest
from PIL import Image

from daclip_jax.cli import main
from daclip_jax.labels import DEGRADATIONS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = os.path.join(ROOT, "configs")
ENTRY = "import sys; from daclip_jax.cli import main; sys.exit(main(sys.argv[1:]))"
JAX_CACHE = os.path.join(tempfile.gettempdir(), "daclip-jax-test-jax-cache")
SIZES = ((41, 53), (37, 46))   # odd, and not the patch size


def caption_of(split, kind, k):
    """Captions as BLIP / CLIP Interrogator give them: commas, quotes and colons included."""
    return f'a "{kind}" photo, number {k}: {split}, with a quote\'s comma'


def make_layout(base, pairs=2):
    """`base`/datasets/universal/{train,val}/<type>/{LQ,GT}/ (val: one pair per type) and the
    CSVs the official script would write from `base`, by pandas; returns {split: [rows]}."""
    rows = {}
    for split, n in (("train", pairs), ("val", 1)):
        rows[split] = []
        for t, kind in enumerate(DEGRADATIONS):
            for k in range(n):
                h, w = SIZES[k % len(SIZES)]
                rng = np.random.default_rng(100 * t + k + (split == "val") * 1000)
                gt = (rng.random((h, w, 3)) * 255).astype(np.uint8)
                lq = np.clip(gt.astype(int) + rng.integers(-40, 40, gt.shape), 0, 255).astype(np.uint8)
                rel = f"datasets/universal/{split}/{kind}"
                for sub, img in (("GT", gt), ("LQ", lq)):
                    os.makedirs(os.path.join(base, rel, sub), exist_ok=True)
                    Image.fromarray(img).save(os.path.join(base, rel, sub, f"{k:04d}.png"))
                rows[split].append((f"{rel}/LQ/{k:04d}.png", f"{caption_of(split, kind, k)}: {kind}"))
        frame = pd.DataFrame.from_dict({"filepath": [r[0] for r in rows[split]],
                                        "title": [r[1] for r in rows[split]]})
        frame.to_csv(os.path.join(base, "datasets/universal", f"daclip_{split}.csv"),
                     index=False, sep="\t")
    return rows


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("official"))
    return base, make_layout(base)


def _pandas_csv(path, rows):
    pd.DataFrame.from_dict({"filepath": [r[0] for r in rows], "title": [r[1] for r in rows]}).to_csv(
        path, index=False, sep="\t")
    with open(path, "rb") as f:
        return f.read()


def test_data_captions_writes_what_pandas_writes(layout, tmp_path, monkeypatch):
    base, rows = layout
    work = tmp_path / "copy"
    shutil.copytree(os.path.join(base, "datasets"), work / "datasets")
    monkeypatch.chdir(work)
    universal = "datasets/universal"
    # captions keyed by GT path, with commas and quotes (colons go: the official reader splits on ": ")
    table = {f"{universal}/{s}/{kind}/GT/{k:04d}.png": caption_of(s, kind, k).replace(":", "")
             for s, n in (("train", 2), ("val", 1)) for kind in DEGRADATIONS for k in range(n)}
    (work / "captions.json").write_text(json.dumps(table))
    for s in ("train", "val"):
        os.remove(f"{universal}/daclip_{s}.csv")
    assert main(["data", "captions", universal, "--captions", "captions.json", "--no-progress"]) == 0
    for s in ("train", "val"):
        expected = _pandas_csv(tmp_path / f"pandas_{s}.csv",
                               [(p, f"{table[p.replace('/LQ/', '/GT/')]}: {p.split('/')[3]}")
                                for p, _ in rows[s]])
        assert (work / universal / f"daclip_{s}.csv").read_bytes() == expected
    expected = (work / universal / "daclip_train.csv").read_bytes()

    # cut mid-row (a killed BLIP run): --resume keeps the whole rows and writes the rest
    (work / universal / "daclip_train.csv").write_bytes(expected[:len(expected) * 2 // 3])
    assert main(["data", "captions", universal, "--split", "train", "--captions", "captions.json",
                 "--no-progress"]) == 2   # not over a file that is there, without --resume
    assert main(["data", "captions", universal, "--split", "train", "--captions", "captions.json",
                 "--resume", "--no-progress"]) == 0
    assert (work / universal / "daclip_train.csv").read_bytes() == expected

    # an official CSV is a captions file too: its captions, colons dropped, come back
    os.rename(f"{universal}/daclip_val.csv", "official_val.csv")
    _pandas_csv("official_val.csv", rows["val"])
    assert main(["data", "captions", universal, "--split", "val", "--captions", "official_val.csv",
                 "--no-progress"]) == 0
    written = pd.read_csv(f"{universal}/daclip_val.csv", sep="\t")
    assert list(written["title"]) == [t.replace(": val", " val") for _, t in rows["val"]]
    os.remove(f"{universal}/daclip_val.csv")
    assert main(["data", "captions", universal, "--split", "val", "--template",
                 "--no-progress"]) == 0
    assert set(pd.read_csv(f"{universal}/daclip_val.csv", sep="\t")["title"].str.split(": ").str[0]) == {"a photo"}


def test_data_captions_one_line_errors(layout, tmp_path, monkeypatch, capsys):
    base, _ = layout
    monkeypatch.chdir(base)
    assert main(["data", "captions", str(tmp_path / "none"), "--template", "--no-progress"]) == 2
    assert main(["data", "captions", "datasets/universal", "--captions", str(tmp_path / "x.json"),
                 "--split", "test", "--no-progress"]) == 2
    (tmp_path / "empty.json").write_text("{}")
    assert main(["data", "captions", "datasets/universal", "--split", "val", "--resume",
                 "--captions", str(tmp_path / "empty.json"), "--no-progress"]) == 0  # all there
    os.rename("datasets/universal/daclip_val.csv", tmp_path / "val.csv")
    try:
        assert main(["data", "captions", "datasets/universal", "--split", "val",
                     "--captions", str(tmp_path / "empty.json"), "--no-progress"]) == 2
    finally:
        os.replace(tmp_path / "val.csv", "datasets/universal/daclip_val.csv")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(e.startswith("error: ") for e in err), err
    assert "no such folder" in err[0] and "no such folder" in err[1]
    assert "has no caption for datasets/universal/val/motion-blurry/GT/0000.png" in err[2]


def test_data_captions_with_a_local_blip(layout, tmp_path, monkeypatch):
    sys.path.insert(0, ROOT)
    from tests.test_captions import make_tiny_blip

    from daclip_jax.data.sources import CsvSource

    blip = make_tiny_blip(str(tmp_path / "blip"))
    base, rows = layout
    shutil.copytree(os.path.join(base, "datasets/universal/val"), tmp_path / "universal/val")
    monkeypatch.chdir(tmp_path)
    assert main(["data", "captions", "universal", "--split", "val", "--blip", blip, "--no-progress"]) == 0
    written = pd.read_csv("universal/daclip_val.csv", sep="\t")
    assert list(written["filepath"]) == [p.replace("datasets/", "") for p, _ in rows["val"]]
    captions, kinds = zip(*(t.split(": ") for t in written["title"]))
    assert kinds == DEGRADATIONS and all(captions)
    src = CsvSource("universal/daclip_val.csv")
    assert len(src) == 10 and not src.skipped and src[0]["caption"] == captions[0]


def _cli(cwd, *argv, timeout=900):
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=JAX_CACHE,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
               PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    r = subprocess.run(["timeout", "-k", "5", str(timeout), sys.executable, "-c", ENTRY, *argv],
                       cwd=cwd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r.stdout + r.stderr


def _daclip(csv, workdir, *extra):
    """The README's DA-CLIP command at runlocal size, on the official CSV."""
    return ("train", "--config", f"{CFG}/daclip_vit_b32.py:runlocal", "--workdir", workdir,
            "--config.data.source.kind=csv", f"--config.data.source.path={csv}",
            "--config.eval.every=0", *extra)


@pytest.fixture(scope="module")
def daclip_run(layout):
    """DA-CLIP trained on the pandas-written CSV, from the folder that holds datasets/."""
    base, _ = layout
    _cli(base, *_daclip("datasets/universal/daclip_train.csv", "runs/daclip"))
    return os.path.join(base, "runs", "daclip")


@pytest.mark.slow
def test_daclip_trains_on_the_official_csv_with_every_row(layout, daclip_run, tmp_path):
    base, rows = layout
    assert os.path.isdir(os.path.join(daclip_run, "model"))
    assert not os.path.exists(os.path.join(daclip_run, "skipped.txt"))   # nothing skipped
    records = [json.loads(line) for line in open(os.path.join(daclip_run, "metrics.jsonl"))]
    assert [r["step"] for r in records if "train/loss" in r] == [1, 2, 3, 4]
    # the CSV moved beside datasets/ and the run started elsewhere: found against the CSV's folder
    shutil.copy(os.path.join(base, "datasets/universal/daclip_train.csv"), base)
    os.makedirs(os.path.join(base, "elsewhere"), exist_ok=True)
    _cli(os.path.join(base, "elsewhere"), *_daclip("../daclip_train.csv", str(tmp_path / "moved"),
                                                   "--config.train.steps=1", "--config.export=false"))
    assert not os.path.exists(tmp_path / "moved" / "skipped.txt")
    from daclip_jax.data.sources import CsvSource
    assert len(CsvSource(os.path.join(base, "daclip_train.csv"))) == len(rows["train"])


@pytest.mark.slow
def test_restorer_on_the_official_folders_then_evaluate_on_val(layout, daclip_run):
    base, _ = layout
    _cli(base, "train", "--config", f"{CFG}/universal_ir.py:runlocal", "--workdir", "runs/ir",
         "--config.data.source.kind=paired", "--config.data.source.path=datasets/universal/train",
         f"--config.model.daclip={daclip_run}/model", "--config.eval.every=0",
         "--config.model.unet_overrides={'nf': 32, 'ch_mult': (1, 2)}")
    assert not os.path.exists(os.path.join(base, "runs/ir/skipped.txt"))
    out = _cli(base, "evaluate", "--daclip", "runs/daclip/model", "--unet", "runs/ir/model",
               "--data", "datasets/universal/val", "--steps", "2", "--out", "runs/ir/val.json",
               "--no-progress")
    result = json.load(open(os.path.join(base, "runs/ir/val.json")))
    assert len(result["images"]) == len(DEGRADATIONS)
    assert "| all |" in out or "all" in out
