"""ArrayRecord packing round trip and TFDS (ArrayRecord, no TensorFlow) sources."""

import importlib.util
import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

from daclip_jax.data import sources as S
from daclip_jax.data.pack import pack
from daclip_jax.data.sources.array_record import _decode_packed


def _rgb(h, w, seed):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def _folder(root):
    os.makedirs(f"{root}/sub", exist_ok=True)
    Image.fromarray(_rgb(40, 48, 0)).save(f"{root}/a.png")
    Image.fromarray(_rgb(48, 40, 1)).save(f"{root}/sub/b.jpg", quality=90)
    Image.fromarray(_rgb(40, 40, 2)).convert("P").save(f"{root}/sub/c.png")  # re-encoded as RGB PNG
    big = f"{root}/sub/d_truncated.png"
    Image.fromarray(_rgb(64, 64, 3)).save(big)
    data = open(big, "rb").read()
    open(big, "wb").write(data[: len(data) // 2])
    return root


def test_pack_folder_round_trip(tmp_path):
    src = S.ImageFolderSource(_folder(str(tmp_path / "imgs")))
    out = str(tmp_path / "shards")
    summary = pack(src, out, num_shards=2, threads=2)
    assert summary["records"] == 3 and summary["skipped"] == 1
    assert "d_truncated.png" in open(os.path.join(out, "skipped.txt")).read()
    ids = json.load(open(os.path.join(out, S.IDS_FILE)))
    assert sum(len(v) for v in ids.values()) == 3 and len(ids) == 2

    packed = S.ArrayRecordSource(out)
    assert len(packed) == 3
    by_id = {packed.record_id(i): packed[i] for i in range(len(packed))}
    assert sorted(by_id) == ["a.png", "sub/b.jpg", "sub/c.png"]
    for i in range(len(src)):
        rid = src.record_id(i)
        if rid in by_id:  # pixel-identical to decoding the original file
            np.testing.assert_array_equal(by_id[rid]["gt"], src[i]["gt"])
    # the JPEG was stored byte for byte, not re-encoded
    header, gt_bytes, _ = S.deserialize_record(packed.source[[packed.record_id(i) for i in range(3)].index("sub/b.jpg")])
    assert gt_bytes == open(tmp_path / "imgs" / "sub" / "b.jpg", "rb").read()
    # without ids.json the ids come from the records themselves
    os.remove(os.path.join(out, S.IDS_FILE))
    assert sorted(S.ArrayRecordSource(out).record_id(i) for i in range(3)) == sorted(by_id)


def test_pack_paired_keeps_lq_and_metadata_and_cli(tmp_path):
    from daclip_jax.cli import main

    root = tmp_path / "train"
    for kind in ("noisy", "rainy"):
        for j in range(2):
            for sub, arr in (("GT", _rgb(32, 32, j)), ("LQ", 255 - _rgb(32, 32, j))):
                os.makedirs(root / kind / sub, exist_ok=True)
                Image.fromarray(arr).save(root / kind / sub / f"{j}.png")
    out = tmp_path / "packed"
    assert main(["data", "pack", str(root), "--out", str(out), "--shards", "3"]) == 0
    packed = S.ArrayRecordSource(str(out))
    assert len(packed) == 4 and len(packed.paths) == 3
    recs = [packed[i] for i in range(4)]
    assert sorted(r["degradation"] for r in recs) == ["noisy", "noisy", "rainy", "rainy"]
    for r in recs:
        np.testing.assert_allclose(r["lq"], 1.0 - r["gt"], atol=1e-6)
    assert main(["data", "pack", str(tmp_path / "nothing"), "--out", str(tmp_path / "o2")]) == 2   # a mistake in the input: exit 2, as every verb


def _tiny_builder_class():
    """Defined once per process (TFDS registers builders by name)."""
    global _TINY
    if _TINY is not None:
        return _TINY
    import tensorflow_datasets as tfds

    class TinyImages(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3)),
                "label": tfds.features.ClassLabel(names=["cat", "golden_retriever"]),
            }))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            import io

            for i in range(6):
                # PIL images and encoded bytes are encoded without TF (numpy arrays are not)
                im = Image.fromarray(_rgb(32 + i, 40, 10 + i))
                if i % 2:
                    buf = io.BytesIO()
                    im.save(buf, format="PNG")
                    im = buf.getvalue()
                yield i, {"image": im, "label": i % 2}

    _TINY = TinyImages
    return _TINY


_TINY = None


def _build_tiny_tfds(data_dir, image_dir=None):
    builder = _tiny_builder_class()(data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare()
    return builder


def test_tfds_array_record_without_tensorflow(tmp_path):
    assert importlib.util.find_spec("tensorflow") is None  # the proof: TF is not even installed
    (tmp_path / "src").mkdir()
    builder = _build_tiny_tfds(str(tmp_path / "tfds"), str(tmp_path / "src"))
    assert "tensorflow" not in sys.modules
    src = S.TfdsSource("tiny_images", data_dir=str(tmp_path / "tfds"), label_key="label")
    assert len(src) == 6
    seen = {}
    for i in range(len(src)):
        rec = src[i]
        assert rec["gt"].dtype == np.float32 and rec["gt"].shape[2] == 3
        seen[rec["gt"].shape[0]] = rec
        assert rec["label"] in ("cat", "golden_retriever")
    # pixels are exactly those written
    np.testing.assert_array_equal(np.round(seen[33]["gt"] * 255).astype(np.uint8), _rgb(33, 40, 11))
    assert seen[33]["label"] == "golden_retriever"
    # split expressions work and the dataset packs into our shards
    assert len(S.TfdsSource("tiny_images", data_dir=str(tmp_path / "tfds"), split="train[:50%]")) == 3
    summary = pack(src, str(tmp_path / "packed"))
    packed = S.ArrayRecordSource(str(tmp_path / "packed"))
    assert summary["records"] == 6 and {packed[i]["label"] for i in range(6)} == {"cat", "golden_retriever"}
    assert builder.info.splits["train"].num_examples == 6


def test_pack_tiles_and_raw_encoding(tmp_path):
    from daclip_jax.data.pack import tile_origins

    assert tile_origins(100, 40, 20) == [0, 20, 40, 60] and tile_origins(90, 40, 30) == [0, 30, 50]
    assert tile_origins(30, 40, 20) == [0]
    root = tmp_path / "big"
    root.mkdir()
    Image.fromarray(_rgb(90, 100, 0)).save(root / "big.png")
    Image.fromarray(_rgb(30, 35, 1)).save(root / "small.png")
    src = S.ImageFolderSource(str(root))
    for encoding in ("raw", "png"):
        out = str(tmp_path / encoding)
        summary = pack(src, out, tile=40, tile_step=30, encoding=encoding)
        assert summary["records"] == 3 * 3 + 1  # 90x100 -> rows 0,30,50 x cols 0,30,60; small stays whole
        packed = S.ArrayRecordSource(out)
        full = {src.record_id(i): src[i]["gt"] for i in range(len(src))}
        for i in range(len(packed)):
            header = S.deserialize_record(packed.source[i])[0]
            rec = packed[i]
            y, x = header.get("tile", [0, 0])
            h, w = rec["gt"].shape[:2]
            np.testing.assert_allclose(rec["gt"], full[rec["id"]][y:y + h, x:x + w], atol=0.5 / 255)
            assert ("gt_raw_shape" in header) == (encoding == "raw")
    # a corrupt raw record is a bad file, not a crash
    blob = S.serialize_record({"id": "x", "gt_raw_shape": [4, 4, 3]}, b"\x00" * 10)
    with pytest.raises(ValueError, match="corrupt raw"):
        _decode_packed(S.deserialize_record(blob)[1], [4, 4, 3], 0, "x")


def test_tfds_source_pickles_for_grain_workers(tmp_path):
    """Workers get the source pickled; they reopen the dataset from disk, not the builder class."""
    import pickle
    import subprocess

    (tmp_path / "src").mkdir()
    _build_tiny_tfds(str(tmp_path / "tfds"), str(tmp_path / "src"))
    src = S.SafeSource(S.TfdsSource("tiny_images", data_dir=str(tmp_path / "tfds"), label_key="label"))
    (tmp_path / "src.pkl").write_bytes(pickle.dumps(src))
    code = ("import pickle, sys; s = pickle.load(open(sys.argv[1], 'rb')); r = s[3]; "
            "print(len(s), r['gt'].shape, r['label'], 'tensorflow' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "src.pkl")], capture_output=True,
                         text=True, timeout=120)
    assert res.stdout.split() == ["6", "(35,", "40,", "3)", "golden_retriever", "False"], res.stderr[-3000:]
