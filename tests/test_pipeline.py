"""The grain pipeline: batch layout, determinism, resume, multi-process shards, bad files, sources."""

import hashlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from daclip_jax.data import pipeline as PL
from daclip_jax.labels import DEGRADATIONS
from daclip_jax.tokenizer import tokenize
from daclip_jax.train.configlib import apply_overrides

KINDS = ("noisy", "hazy", "jpeg-compressed", "low-light")
PATCH = 32


def _rgb(h, w, seed):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("clean")
    for i in range(10):
        Image.fromarray(_rgb(40 + 3 * i, 48, i)).save(root / f"{i:02d}.png")
    return str(root)


def _cfg(path, kind="folder", **kw):
    cfg = PL.default_data_config()
    cfg.source.kind, cfg.source.path, cfg.source.min_size = kind, path, 16
    cfg.patch_size = PATCH
    cfg.clip_size = 224
    cfg.degradation.kinds = KINDS
    cfg.read_threads = 2
    cfg.prefetch = 4
    return apply_overrides(cfg, kw.items())


def _take(it, n):
    return [next(it) for _ in range(n)]


def _digest(batches):
    h = hashlib.sha256()
    for b in batches:
        for k in sorted(b):
            h.update(k.encode())
            h.update(np.ascontiguousarray(b[k]).tobytes())
    return h.hexdigest()


def test_batch_layout_matches_the_contract(folder):
    it = iter(PL.build_pipeline(_cfg(folder), seed=0, global_batch_size=4, process_index=0, process_count=1))
    b = next(it)
    B = 4
    expect = {"lq": ((B, PATCH, PATCH, 3), np.float32), "gt": ((B, PATCH, PATCH, 3), np.float32),
              "lq_clip": ((B, 224, 224, 3), np.float32), "clean_clip": ((B, 224, 224, 3), np.float32),
              "caption_tokens": ((B, 77), np.int32), "degradation_tokens": ((B, 77), np.int32),
              "degradation_multihot": ((B, 10), np.float32), "degradation_index": ((B,), np.int32)}
    assert set(b) == set(expect)
    for k, (shape, dtype) in expect.items():
        assert b[k].shape == shape and b[k].dtype == dtype, k
    # what `daclip-jax compile` lowers the step for, without data, is this batch
    spec = PL.example_spec(_cfg(folder))
    assert {k: ((B, *shape), np.dtype(dtype)) for k, (shape, dtype) in spec.items()} == expect
    assert 0 <= b["lq"].min() and b["lq"].max() <= 1 and 0 <= b["gt"].min() and b["gt"].max() <= 1
    assert not np.array_equal(b["lq"], b["gt"])
    assert b["lq_clip"].min() < -0.5  # CLIP-normalised, not [0,1]
    hot = b["degradation_multihot"]
    assert set(np.flatnonzero(hot.sum(0))) <= {DEGRADATIONS.index(k) for k in KINDS}
    for row, idx in zip(hot, b["degradation_index"]):
        assert (idx == -1) == (row.sum() > 1) and (idx == -1 or row[idx] == 1)
    np.testing.assert_array_equal(b["caption_tokens"], tokenize(["a photo"] * B))
    cfg = _cfg(folder, clean_clip=False)
    assert "clean_clip" not in next(iter(PL.build_pipeline(cfg, seed=0, global_batch_size=2, process_index=0,
                                                           process_count=1)))
    # degradation tokens spell the words of the multi-hot in physical order
    from daclip_jax.data.degradations import label_text
    for row, toks in zip(hot, b["degradation_tokens"]):
        words = [DEGRADATIONS[i] for i in np.flatnonzero(row)]
        np.testing.assert_array_equal(toks, tokenize(label_text(words))[0])


def test_same_seed_same_bytes_other_seed_differs(folder):
    def run(seed):
        ds = PL.build_pipeline(_cfg(folder), seed=seed, global_batch_size=4, process_index=0, process_count=1)
        return _digest(_take(iter(ds), 3))

    assert run(3) == run(3) != run(4)


def test_decoded_image_cache_does_not_change_the_bytes(folder):
    from daclip_jax.data import sources as S

    def run(cache_mb):
        cfg = _cfg(folder, **{"source.cache_mb": cache_mb})
        source = PL.build_source(cfg)
        it = iter(PL.build_pipeline(cfg, seed=5, global_batch_size=4, process_index=0, process_count=1,
                                    source=source))
        return _digest(_take(it, 4)), source

    (cached, source), (uncached, plain) = run(64), run(0)
    assert cached == uncached
    assert isinstance(source.parent, S.CachedSource) and source.parent.hits > 0
    assert not isinstance(plain.parent, S.CachedSource)


def test_resume_mid_epoch_get_set_state_and_orbax(folder, tmp_path):
    import grain
    import orbax.checkpoint as ocp

    cfg = _cfg(folder)
    build = lambda: iter(PL.build_pipeline(cfg, seed=1, global_batch_size=3, process_index=0, process_count=1))
    it = build()
    _take(it, 2)  # mid-epoch (10 records, batch 3)
    state = it.get_state()
    mngr = ocp.CheckpointManager(str(tmp_path / "ckpt"))
    mngr.save(7, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
    expected = _digest(_take(it, 4))  # crosses into the next epoch

    fresh = build()
    fresh.set_state(state)
    assert _digest(_take(fresh, 4)) == expected

    restored = build()
    mngr.restore(7, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointRestore(restored)))
    assert _digest(_take(restored, 4)) == expected
    mngr.close()


def test_two_processes_see_disjoint_shards_whose_union_is_the_data(folder):
    n = 10
    streams = [list(PL.index_dataset(n, seed=5, num_epochs=1, process_index=p, process_count=2)) for p in (0, 1)]
    a, b = ({i for _, i in s} for s in streams)
    assert not a & b and a | b == set(range(n)) and len(streams[0]) == len(streams[1]) == 5
    # second epoch is reshuffled, and still partitioned
    two = [list(PL.index_dataset(n, seed=5, num_epochs=2, process_index=p, process_count=2)) for p in (0, 1)]
    assert [i for e, i in two[0] if e == 0] == [i for _, i in streams[0]]
    assert sorted(i for s in two for e, i in s if e == 1) == list(range(n))

    # batches: per-process batch = global / 2; the two halves are exactly the single-process batch
    cfg = _cfg(folder)
    whole = next(iter(PL.build_pipeline(cfg, seed=2, global_batch_size=4, process_index=0, process_count=1)))
    halves = [next(iter(PL.build_pipeline(cfg, seed=2, global_batch_size=4, process_index=p, process_count=2)))
              for p in (0, 1)]
    assert halves[0]["lq"].shape[0] == 2
    interleaved = np.stack([halves[0]["lq"][0], halves[1]["lq"][0], halves[0]["lq"][1], halves[1]["lq"][1]])
    np.testing.assert_array_equal(interleaved, whole["lq"])
    with pytest.raises(ValueError, match="divisible"):
        PL.build_pipeline(cfg, seed=2, global_batch_size=3, process_index=0, process_count=2)


def test_bad_file_at_read_time_is_replaced_and_counted(tmp_path, folder):
    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(4):
        Image.fromarray(_rgb(40, 40, i)).save(root / f"{i}.png")
    Image.fromarray(_rgb(64, 64, 9)).save(root / "t.png")
    data = open(root / "t.png", "rb").read()
    open(root / "t.png", "wb").write(data[: len(data) // 2])
    open(root / "zero.png", "wb").close()
    cfg = _cfg(str(root), workdir=str(tmp_path / "work"))
    source = PL.build_source(cfg)
    it = iter(PL.build_pipeline(cfg, seed=0, global_batch_size=5, process_index=0, process_count=1, source=source))
    _take(it, 2)  # two full epochs: every record read at least once, none fails the run
    assert source.skipped.count("read") == 1 and source.skipped.count("index") == 1
    listing = (tmp_path / "work" / "skipped.txt").read_text()
    assert "zero.png" in listing and "t.png" in listing


def test_small_images_upscaled_or_skipped(tmp_path):
    root = tmp_path / "small"
    root.mkdir()
    for i in range(3):
        Image.fromarray(_rgb(20, 24 + 8 * i, i)).save(root / f"{i}.png")
    Image.fromarray(_rgb(40, 40, 5)).save(root / "big.png")
    b = next(iter(PL.build_pipeline(_cfg(str(root)), seed=0, global_batch_size=4, process_index=0,
                                    process_count=1)))
    assert b["gt"].shape == (4, PATCH, PATCH, 3)
    source = PL.build_source(_cfg(str(root), small_images="skip"))
    assert len(source) == 1 and source.skipped.count("index") == 3


def _paired(root):
    for kind in ("noisy", "rainy"):
        for j in range(3):
            gt = _rgb(36, 40, j)
            for sub, arr in (("GT", gt), ("LQ", 255 - gt)):
                os.makedirs(f"{root}/{kind}/{sub}", exist_ok=True)
                Image.fromarray(arr).save(f"{root}/{kind}/{sub}/{j}.png")
    return root


def test_paired_source_uses_real_lq_with_the_same_crop(tmp_path):
    root = _paired(str(tmp_path / "train"))
    b = next(iter(PL.build_pipeline(_cfg(root, kind="paired"), seed=0, global_batch_size=6,
                                    process_index=0, process_count=1)))
    np.testing.assert_allclose(b["lq"], 1.0 - b["gt"], atol=1e-6)  # same window and flips
    for idx, toks, hot in zip(b["degradation_index"], b["degradation_tokens"], b["degradation_multihot"]):
        word = DEGRADATIONS[idx]
        assert word in ("noisy", "rainy") and hot.sum() == 1 and hot[idx] == 1
        np.testing.assert_array_equal(toks, tokenize(word)[0])
    # use_real_lq=False synthesises from the GT instead
    b2 = next(iter(PL.build_pipeline(_cfg(root, kind="paired", **{"degradation.use_real_lq": False}), seed=0,
                                     global_batch_size=6, process_index=0, process_count=1)))
    assert not np.allclose(b2["lq"], 1.0 - b2["gt"], atol=0.05)


def test_official_csv_captions_reach_the_batch(tmp_path):
    root = _paired(str(tmp_path / "universal" / "train"))
    csv = tmp_path / "universal" / "daclip_train.csv"
    csv.write_text("filepath\ttitle\n" + "".join(
        f"train/{k}/LQ/{j}.png\tpicture number {j} of {k}s: {k}\n" for k in ("noisy", "rainy") for j in range(3)))
    cfg = _cfg(str(csv), kind="csv")
    b = next(iter(PL.build_pipeline(cfg, seed=0, global_batch_size=6, process_index=0, process_count=1,
                                    split="train")))
    seen = {tuple(t) for t in b["caption_tokens"]}
    want = {tuple(t) for t in tokenize([f"picture number {j} of {k}s" for k in ("noisy", "rainy") for j in range(3)])}
    assert seen == want
    # the caption never carries the degradation word after the colon
    assert not any(tuple(t) in seen for t in tokenize([f"picture number 0 of noisys: noisy"]))


def test_single_mode_and_weights(folder):
    cfg = _cfg(folder, **{"degradation.mode": "single", "degradation.weights": (0.0, 1.0, 0.0, 0.0)})
    b = next(iter(PL.build_pipeline(cfg, seed=0, global_batch_size=8, process_index=0, process_count=1)))
    assert (b["degradation_index"] == DEGRADATIONS.index("hazy")).all()
    np.testing.assert_array_equal(b["degradation_tokens"], tokenize(["hazy"] * 8))
    cfg.degradation.weights = (1.0,)
    with pytest.raises(ValueError, match="weights"):
        next(iter(PL.build_pipeline(cfg, seed=0, global_batch_size=8, process_index=0, process_count=1)))


def test_inpainting_mask_source_config(folder):
    # Official masks resized to the 32 px patch with INTER_AREA blend on hole borders (LQ neither
    # GT nor white there); procedural masks are binary (LQ is GT or white everywhere).
    def batch(**kw):
        cfg = _cfg(folder, **{"degradation.kinds": ("uncompleted",), **kw})
        return next(iter(PL.build_pipeline(cfg, seed=0, global_batch_size=4, process_index=0, process_count=1)))

    for source, blended in (("official", True), ("procedural", False)):
        b = batch(**{"degradation.mask_source": source})
        white, same = b["lq"] == 1.0, np.abs(b["lq"] - b["gt"]) < 0.5 / 255
        assert white.any() and same.any()
        assert (~(white | same)).any() == blended, source
    with pytest.raises(ValueError, match="mask_source"):
        batch(**{"degradation.mask_source": "lama"})


def test_default_mixture_of_all_ten_and_wild_mode(folder):
    cfg = _cfg(folder, **{"degradation.kinds": tuple(DEGRADATIONS)})  # C's sample_kinds path
    b = next(iter(PL.build_pipeline(cfg, seed=0, global_batch_size=6, process_index=0, process_count=1)))
    assert ((b["degradation_multihot"].sum(1) >= 1) & (b["degradation_multihot"].sum(1) <= 3)).all()
    cfg.degradation.mode = "wild"
    b = next(iter(PL.build_pipeline(cfg, seed=0, global_batch_size=4, process_index=0, process_count=1)))
    from daclip_jax.data.wild import WORDS

    assert (b["degradation_index"] == -1).all() and not b["degradation_multihot"].any()
    import itertools

    phrases = [", ".join(p) for k in range(1, 5) for p in itertools.permutations(WORDS, k)]
    allowed = {tuple(t) for t in tokenize(phrases)}
    assert all(tuple(t) in allowed for t in b["degradation_tokens"])
    cfg.degradation.mode = "bogus"
    with pytest.raises(ValueError, match="mode"):
        PL.build_pipeline(cfg, seed=0, global_batch_size=4, process_index=0, process_count=1)


def test_holdout_split_is_stable_and_disjoint(folder):
    cfg = _cfg(folder, holdout_fraction=0.3)
    train, val = PL.build_source(cfg, split="train"), PL.build_source(cfg, split="val")
    ids_t = {train.record_id(i) for i in range(len(train))}
    ids_v = {val.record_id(i) for i in range(len(val))}
    assert ids_t and ids_v and not ids_t & ids_v and len(ids_t | ids_v) == 10
    assert ids_v == {PL.build_source(cfg, split="val").record_id(i) for i in range(len(val))}
    vb = list(PL.build_pipeline(cfg, split="val", seed=0, global_batch_size=1, process_index=0, process_count=1))
    assert len(vb) == len(val)  # val: one ordered pass
    with pytest.raises(ValueError, match="holdout_fraction"):
        PL.build_source(_cfg(folder), split="val")


def test_tiny_blip_caption_through_the_pipeline(folder, tmp_path):
    from test_captions import make_tiny_blip

    from daclip_jax.data.captions import BlipCaptioner
    from daclip_jax.data.sources import ImageFolderSource

    blip = make_tiny_blip(str(tmp_path / "blip"))
    cfg = _cfg(folder, **{"caption.kind": "blip", "caption.blip_dir": blip, "caption.max_new_tokens": 5,
                          "shuffle": False})
    b = next(iter(PL.build_pipeline(cfg, seed=0, global_batch_size=2, process_index=0, process_count=1)))
    src = ImageFolderSource(folder)
    ref = BlipCaptioner(blip, max_new_tokens=5)
    captions = [ref(src[i]) for i in range(2)]  # the full clean image, not the patch
    assert all(isinstance(c, str) and c for c in captions)
    np.testing.assert_array_equal(b["caption_tokens"], tokenize(captions))


def test_to_global_on_a_one_device_mesh():
    import jax

    from daclip_jax.data.global_batch import to_global

    mesh = jax.make_mesh((1, 1), ("data", "fsdp"))
    batch = {"lq": np.ones((2, 4, 4, 3), np.float32), "degradation_index": np.array([1, -1], np.int32)}
    g = to_global(batch, mesh)
    assert isinstance(g["lq"], jax.Array) and g["lq"].shape == (2, 4, 4, 3)
    np.testing.assert_array_equal(np.asarray(g["degradation_index"]), [1, -1])
    mesh2 = jax.make_mesh((1,), ("data",))
    assert to_global(batch, mesh2)["lq"].sharding.spec[0] in ("data", ("data",))


def test_to_global_shards_the_batch_over_8_devices():
    code = textwrap.dedent('''
        import os
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
        import jax, numpy as np
        from daclip_jax.data.global_batch import to_global
        mesh = jax.make_mesh((4, 2), ("data", "fsdp"))
        x = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
        g = to_global({"x": x}, mesh)["x"]
        assert g.shape == (16, 3) and len(g.addressable_shards) == 8
        assert {s.data.shape for s in g.addressable_shards} == {(2, 3)}
        np.testing.assert_array_equal(np.asarray(g), x)
        print("OK")
    ''')
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.stdout.strip().endswith("OK"), res.stderr[-3000:]


# A plain script, not absl.app.run: build_pipeline marks absl flags parsed itself so grain's
# workers start from any program (with app.run they start the same way).
_WORKERS_SCRIPT = textwrap.dedent('''
    import hashlib, sys
    import numpy as np

    def main():
        from daclip_jax.data import pipeline as PL
        cfg = PL.default_data_config()
        cfg.source.path, cfg.source.min_size, cfg.patch_size = sys.argv[1], 16, 32
        cfg.degradation.kinds = ("noisy", "hazy", "jpeg-compressed", "low-light")
        out = []
        for workers in (0, 2):
            cfg.worker_count = workers
            it = iter(PL.build_pipeline(cfg, seed=11, global_batch_size=2, process_index=0, process_count=1))
            h = hashlib.sha256()
            for _ in range(4):
                b = next(it)
                for k in sorted(b):
                    h.update(np.ascontiguousarray(b[k]).tobytes())
            out.append(h.hexdigest())
            it.close()
        # resume with workers: state after 2 batches, a fresh iterator continues identically
        it = iter(PL.build_pipeline(cfg, seed=11, global_batch_size=2, process_index=0, process_count=1))
        next(it); next(it)
        state = it.get_state()
        want = [next(it)["lq"].tobytes() for _ in range(2)]
        it.close()
        it = iter(PL.build_pipeline(cfg, seed=11, global_batch_size=2, process_index=0, process_count=1))
        it.set_state(state)
        got = [next(it)["lq"].tobytes() for _ in range(2)]
        it.close()
        print("RESUME", want == got, flush=True)
        print("DIGESTS", *out, flush=True)

    if __name__ == "__main__":
        main()
''')


@pytest.mark.slow
def test_same_bytes_with_zero_and_two_workers(folder, tmp_path):
    script = tmp_path / "workers.py"
    script.write_text(_WORKERS_SCRIPT)
    res = subprocess.run([sys.executable, str(script), folder], capture_output=True, text=True, timeout=300,
                         cwd=str(tmp_path))
    line = [x for x in res.stdout.splitlines() if x.startswith("DIGESTS")]
    assert line, res.stdout[-2000:] + res.stderr[-4000:]
    _, d0, d2 = line[0].split()
    assert d0 == d2
    assert "RESUME True" in res.stdout
