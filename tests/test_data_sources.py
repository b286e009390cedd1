"""Image sources: folder / paired / official CSV indexing, bad files, deterministic replacement."""

import os

import numpy as np
import pytest
from PIL import Image

from daclip_jax.data import sources as S
from daclip_jax.imageio import ImageReadError


def _rgb(h=40, w=48, seed=0):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def _save(path, arr, mode=None, **kw):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    im = Image.fromarray(arr) if mode is None else Image.fromarray(arr).convert(mode)
    im.save(path, **kw)
    return path


def make_messy_folder(root):
    """Good images in every odd layout plus one bad file of each kind. Returns {name: path}."""
    p = {}
    p["rgb"] = _save(f"{root}/a/rgb.png", _rgb(seed=1))
    p["rgba"] = _save(f"{root}/a/rgba.png", np.dstack([_rgb(seed=2), np.full((40, 48), 128, np.uint8)]))
    p["gray"] = _save(f"{root}/b/gray.png", _rgb(seed=3)[..., 0])
    p["palette"] = _save(f"{root}/b/palette.png", _rgb(seed=4), mode="P")
    p["cmyk"] = _save(f"{root}/b/deep/cmyk.jpg", _rgb(seed=5), mode="CMYK")
    p["16bit"] = f"{root}/b/deep/gray16.png"
    Image.fromarray((np.random.default_rng(6).random((40, 48)) * 65535).astype(np.uint16)).save(p["16bit"])
    # bad ones
    p["empty"] = f"{root}/bad/empty.png"
    os.makedirs(f"{root}/bad", exist_ok=True)
    open(p["empty"], "wb").close()
    p["text"] = f"{root}/bad/notes.png"
    with open(p["text"], "w") as f:
        f.write("this is not an image\n")
    p["small"] = _save(f"{root}/bad/small.png", _rgb(8, 8, seed=7))
    big = _save(f"{root}/bad/truncated.png", _rgb(64, 64, seed=8))
    data = open(big, "rb").read()
    with open(big, "wb") as f:
        f.write(data[: len(data) // 2])  # header intact, pixel data cut
    p["truncated"] = big
    with open(f"{root}/readme.txt", "w") as f:  # not an image extension: ignored silently
        f.write("hi")
    return p


def test_folder_source_converts_odd_layouts_and_reports_bad_files(tmp_path):
    p = make_messy_folder(str(tmp_path / "imgs"))
    report = tmp_path / "work" / "skipped.txt"
    src = S.ImageFolderSource(str(tmp_path / "imgs"), min_size=16, skipped=S.SkipReport(path=str(report)))
    # index time: 0-byte, non-image and too-small files are out, with their reasons
    reasons = {os.path.basename(w): r for _, w, r in src.skipped.entries}
    assert set(reasons) == {"empty.png", "notes.png", "small.png"}
    assert "0 bytes" in reasons["empty.png"] and "too small" in reasons["small.png"]
    assert "not a readable image" in reasons["notes.png"]
    assert report.read_text().count("\n") == 3
    # sorted, recursive index; the truncated file passes the header check
    ids = [src.record_id(i) for i in range(len(src))]
    assert ids == sorted(ids) and "b/deep/cmyk.jpg" in ids and "bad/truncated.png" in ids
    for i, rid in enumerate(ids):
        if rid == "bad/truncated.png":
            with pytest.raises(ImageReadError):
                src[i]
            continue
        rec = src[i]
        assert rec["id"] == rid
        assert rec["gt"].dtype == np.float32 and rec["gt"].shape == (40, 48, 3)
        assert 0.0 <= rec["gt"].min() and rec["gt"].max() <= 1.0


def test_safe_source_replaces_bad_record_deterministically_and_counts(tmp_path):
    make_messy_folder(str(tmp_path / "imgs"))
    src = S.ImageFolderSource(str(tmp_path / "imgs"), min_size=16)
    bad = [i for i in range(len(src)) if src.record_id(i) == "bad/truncated.png"][0]
    safe1, safe2 = S.SafeSource(src), S.SafeSource(S.ImageFolderSource(str(tmp_path / "imgs"), min_size=16))
    r1, r2 = safe1[bad], safe2[bad]
    assert r1["index"] == r2["index"] != bad
    np.testing.assert_array_equal(r1["gt"], r2["gt"])
    assert safe1.skipped.count("read") == 1
    safe1[bad]  # known bad: not re-read, not double counted
    assert safe1.skipped.count("read") == 1
    assert "truncated" in src.skipped.summary() or "corrupt" in src.skipped.summary()


def test_zero_usable_images_is_a_clear_error(tmp_path):
    (tmp_path / "x").mkdir()
    open(tmp_path / "x" / "empty.png", "wb").close()
    with pytest.raises(S.NoUsableImagesError, match="no usable images"):
        S.ImageFolderSource(str(tmp_path / "x"))
    with pytest.raises(S.NoUsableImagesError, match="does not exist"):
        S.ImageFolderSource(str(tmp_path / "missing"))


def make_paired(root, names=("0001.png", "0002.png"), kinds=("noisy", "hazy")):
    for k, kind in enumerate(kinds):
        for j, name in enumerate(names):
            gt = _rgb(seed=10 * k + j)
            _save(f"{root}/{kind}/GT/{name}", gt)
            _save(f"{root}/{kind}/LQ/{name}", 255 - gt)
    return root


def test_paired_folder_pairs_by_name_and_takes_type_from_folder(tmp_path):
    root = make_paired(str(tmp_path / "train"))
    _save(f"{root}/noisy/LQ/orphan.png", _rgb(seed=99))  # no GT: skipped
    _save(f"{root}/blurry-ish/LQ/0001.png", _rgb(seed=98))  # not one of the ten words: skipped
    _save(f"{root}/blurry-ish/GT/0001.png", _rgb(seed=98))
    src = S.PairedFolderSource(root)
    assert len(src) == 4
    assert sorted(os.path.basename(w) for _, w, _ in src.skipped.entries) == ["blurry-ish", "orphan.png"]
    rec = src[0]
    assert rec["degradation"] == "hazy" and rec["id"] == "hazy/GT/0001.png"
    np.testing.assert_allclose(rec["lq"], 1.0 - rec["gt"], atol=1e-6)
    only_noisy = S.PairedFolderSource(root, degradations=["noisy"])
    assert {only_noisy[i]["degradation"] for i in range(len(only_noisy))} == {"noisy"}


def test_official_csv_source(tmp_path):
    root = make_paired(str(tmp_path / "universal" / "train"))
    csv = tmp_path / "universal" / "daclip_train.csv"
    rows = ["filepath\ttitle",
            "train/noisy/LQ/0001.png\ta cat sitting on a sofa: noisy",
            "train/hazy/LQ/0002.png\ta city street at night: hazy",
            "train/hazy/LQ/missing.png\tnothing here: hazy"]
    csv.write_text("\n".join(rows) + "\n")
    src = S.CsvSource(str(csv))
    assert len(src) == 2 and len(src.skipped) == 1
    rec = src[0]
    assert rec["caption"] == "a cat sitting on a sofa" and rec["degradation"] == "noisy"
    assert rec["id"].endswith("train/noisy/GT/0001.png")
    np.testing.assert_allclose(rec["lq"], 1.0 - rec["gt"], atol=1e-6)
    assert S.split_official_title("a: b: hazy") == ("a: b", "hazy")
    assert S.gt_path_for("/d/x/LQ/LQ/a.png") == "/d/x/LQ/GT/a.png"
    with pytest.raises(ValueError):
        S.gt_path_for("/d/x/a.png")


def _official_csv(path, rows):
    """The official CSV for `rows` [(filepath, title)]: tab-separated, as generate_captions.py."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("filepath\ttitle\n" + "".join(f"{p}\t{t}\n" for p, t in rows))
    return str(path)


def test_csv_filepaths_relative_to_the_working_directory_then_the_csv(tmp_path, monkeypatch):
    # as generate_captions.py writes them: relative to the folder holding datasets/
    make_paired(str(tmp_path / "datasets" / "universal" / "train"))
    rows = [("datasets/universal/train/noisy/LQ/0001.png", "a cat: noisy"),
            ("datasets/universal/train/hazy/LQ/0002.png", "a street: hazy")]
    csv = _official_csv(tmp_path / "datasets" / "universal" / "daclip_train.csv", rows)
    monkeypatch.chdir(tmp_path)
    src = S.CsvSource(csv)
    assert len(src) == 2 and not src.skipped
    assert src.items[0][1] == str(tmp_path / "datasets/universal/train/noisy/GT/0001.png")
    # run from elsewhere, the CSV's own folder is not where they are: one line, the fix in it
    monkeypatch.chdir(tmp_path / "datasets")
    with pytest.raises(S.NoUsableImagesError) as e:
        S.CsvSource(csv)
    msg = str(e.value)
    assert "\n" not in msg and "none of its 2 image file(s) exists" in msg
    assert str(tmp_path / "datasets/datasets/universal/train/noisy/LQ/0001.png") in msg
    assert f"--config.data.source.root={tmp_path}" in msg
    assert len(S.CsvSource(csv, root=str(tmp_path))) == 2
    # a CSV moved next to its images: found beside it
    moved = _official_csv(tmp_path / "elsewhere" / "daclip_train.csv",
                          [("train/noisy/LQ/0001.png", "a cat: noisy")])
    os.rename(tmp_path / "datasets" / "universal" / "train", tmp_path / "elsewhere" / "train")
    assert len(S.CsvSource(moved)) == 1


def test_csv_missing_and_unreadable_files_have_different_reasons(tmp_path, monkeypatch):
    root = make_paired(str(tmp_path / "train"), names=("0001.png", "0002.png", "0003.png"))
    with open(f"{root}/noisy/LQ/0002.png", "w") as f:
        f.write("not an image")
    os.remove(f"{root}/noisy/GT/0003.png")
    csv = _official_csv(tmp_path / "daclip_train.csv", [
        ("train/noisy/LQ/0001.png", "fine: noisy"),
        ("train/noisy/LQ/0002.png", "unreadable LQ: noisy"),
        ("train/noisy/LQ/0003.png", "no GT: noisy"),
        ("train/noisy/LQ/gone.png", "no LQ: noisy")])
    monkeypatch.chdir(tmp_path / "train")   # the working directory is tried first, then the CSV's folder
    report = tmp_path / "work" / "skipped.txt"
    src = S.CsvSource(csv, skipped=S.SkipReport(path=str(report)))
    assert len(src) == 1
    lines = dict(line.split("\t")[1:] for line in report.read_text().splitlines())
    gone = str(tmp_path / "train/train/noisy/LQ/gone.png")
    assert lines[gone] == f"no such file; tried {gone}, {tmp_path / 'train/noisy/LQ/gone.png'}"
    unreadable = lines[str(tmp_path / "train/noisy/LQ/0002.png")]
    assert unreadable.startswith("not a readable image")
    no_gt = lines[str(tmp_path / "train/noisy/LQ/0003.png")]
    assert no_gt == f"GT no such file; GT is {tmp_path / 'train/noisy/GT/0003.png'}"
    assert "1× no such file" in src.skipped.summary() and "1× GT no such file" in src.skipped.summary()


def test_make_source_dispatch_and_unknown_kind(tmp_path):
    import ml_collections

    root = make_paired(str(tmp_path / "train"))
    cfg = ml_collections.ConfigDict(dict(kind="paired", path=root, min_size=0, validate="header"))
    assert len(S.make_source(cfg)) == 4
    cfg.kind = "nope"
    with pytest.raises(ValueError, match="unknown source kind"):
        S.make_source(cfg)


def test_type_balanced_view_round_robins_over_types(tmp_path):
    root = make_paired(str(tmp_path / "train"), names=("1.png", "2.png", "3.png"), kinds=("noisy",))
    make_paired(root, names=("9.png",), kinds=("hazy",))
    src = S.PairedFolderSource(root)
    bal = S.TypeBalancedSource(src, S.record_types(src))
    assert len(bal) == 2 * 3
    degs = [bal[i]["degradation"] for i in range(len(bal))]
    assert degs == ["hazy", "noisy"] * 3
    assert {bal.record_id(i) for i in range(1, 6, 2)} == {f"noisy/GT/{k}.png" for k in (1, 2, 3)}
    sub = S.SubsetSource(src, [0, 3])
    assert S.record_types(sub) == ["hazy", "noisy"] and S.record_types(S.ImageFolderSource(root)) is None


def test_compact_reading_is_read_image_bit_for_bit(tmp_path):
    from daclip_jax.imageio import read_image

    p = make_messy_folder(str(tmp_path / "imgs"))
    rgb48 = np.zeros((40, 48, 3), np.uint16)
    rgb48[...] = (np.random.default_rng(9).random((40, 48, 3)) * 65535).astype(np.uint16)
    p["jpeg"] = _save(f"{tmp_path}/imgs/c/photo.jpg", _rgb(seed=10), quality=80)
    p["gray_jpeg"] = _save(f"{tmp_path}/imgs/c/gray.jpg", _rgb(seed=11)[..., 0])
    rotated = Image.fromarray(_rgb(seed=12))
    exif = rotated.getexif()
    exif[0x0112] = 6  # rotate 90 clockwise on display
    p["exif"] = f"{tmp_path}/imgs/c/exif.jpg"
    rotated.save(p["exif"], exif=exif)
    for name in ("rgb", "rgba", "gray", "palette", "cmyk", "16bit", "jpeg", "gray_jpeg", "exif"):
        compact = S.read_compact(p[name], min_size=16)
        # 8-bit RGB/gray PNG and JPEG stay uint8; everything else is read_image's float32
        plain = name in ("rgb", "gray", "jpeg", "gray_jpeg", "exif")
        assert compact.dtype == (np.uint8 if plain else np.float32), name
        ref = read_image(p[name], min_size=16)
        np.testing.assert_array_equal(S.as_float(compact), ref, err_msg=name)
    assert S.read_compact(p["exif"]).shape == (48, 40, 3)
    for bad in ("empty", "text", "truncated"):  # the same one-line errors as read_image
        with pytest.raises(ImageReadError, match=os.path.basename(p[bad])):
            S.read_compact(p[bad])
    with pytest.raises(ImageReadError, match="too small"):
        S.read_compact(p["small"], min_size=16)


class _CountingSource(S.Source):
    name = "counting"

    def __init__(self, images):
        self.images, self.reads, self.skipped = images, 0, S.SkipReport()

    def __len__(self):
        return len(self.images)

    def record_id(self, index):
        return f"img{index}"

    def load(self, index):
        self.reads += 1
        return {"id": self.record_id(index), "gt": self.images[index].copy()}


def test_cached_source_is_a_bounded_per_process_lru():
    import pickle

    images = [_rgb(40, 48, seed=i) for i in range(4)]      # 5760 bytes each as uint8
    parent = _CountingSource(images)
    cached = S.CachedSource(parent, max_bytes=2 * images[0].nbytes)
    for i in (0, 1, 0, 1):
        rec = cached.load(i)
        np.testing.assert_array_equal(rec["gt"], images[i])
    assert parent.reads == 2 and cached.hits == 2
    assert not rec["gt"].flags.writeable                    # shared: nobody may write into it
    f = cached[1]                                           # float record: private and writable
    assert f["gt"].dtype == np.float32 and f["gt"].flags.writeable
    np.testing.assert_array_equal(f["gt"], images[1].astype(np.float32) / np.float32(255))
    cached.load(2)                                          # evicts 0, the least recently used
    assert cached.nbytes <= 2 * images[0].nbytes and parent.reads == 3
    cached.load(1)
    assert parent.reads == 3
    cached.load(0)
    assert parent.reads == 4
    # A worker gets a copy without the parent's cache (and fills its own).
    clone = pickle.loads(pickle.dumps(cached))
    assert clone.nbytes == 0 and len(clone._cache) == 0
    np.testing.assert_array_equal(clone.load(3)["gt"], images[3])
    # Too big for the budget: read every time, never cached.
    tiny = S.CachedSource(_CountingSource(images), max_bytes=100)
    tiny.load(0), tiny.load(0)
    assert tiny.parent.reads == 2 and tiny.nbytes == 0
