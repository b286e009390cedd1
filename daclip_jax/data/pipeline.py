"""The training data pipeline on grain: source -> crop -> flips -> degrade -> CLIP views -> tokens -> batch.

    cfg = default_data_config(); cfg.source.kind = "folder"; cfg.source.path = "/data/DIV2K"
    ds = build_pipeline(cfg, split="train", seed=0, global_batch_size=256)
    it = iter(ds)
    batch = next(it)            # dict of numpy arrays, this process's share of the global batch
    state = it.get_state()      # exact resume: it.set_state(state), or grain.checkpoint with orbax

Order of operations and why:
- The global order is a grain shuffle of record indices, reshuffled every epoch, identical on
  every process; each process then takes every `process_count`-th element starting at
  `process_index` (disjoint shards whose union is the stream), so the per-process batch is
  `global_batch_size // process_count`.
- All randomness of one sample (crop, flips, degradation) comes from
  `np.random.Generator(np.random.Philox(SeedSequence([seed, epoch, record_index])))`: the bytes
  do not depend on worker count, thread scheduling or restarts. No global RNG state is touched.
- Crop first, degrade the patch: synthesis cost scales with pixels, and a patch-sized degradation
  is what the model sees. Sources hand out compact records (uint8 for 8-bit data, see
  data/sources/); the crop and flips work on those and only the patch is converted to float, and
  decoded images are kept in a per-process LRU (`source.cache_mb`) so a photo that fits in it
  is decoded once, not once per patch. Images smaller than the patch are *upscaled* (PIL bicubic, short side
  to the patch size) rather than reflect-padded: mirrored borders would give the degradations
  (haze depth, rain streaks, shadows) and the CLIP view seams that real photos never have.
- Paired sources (real LQ) take the same crop/flips on LQ and GT.
- CLIP views (`daclip_jax.preprocess.clip_view`) are made of the degraded patch (`lq_clip`, the
  DA-CLIP image input) and the clean patch (`clean_clip`, for CLIP pretraining).
- Captions are per clean image id (see captions.py); degradation words are C's `label_text`.

Throughput (benchmarks/pipeline.py, 256^2 pairs, one core): a pair costs about 5 ms of synthesis
for the mixed stream (raindrop ~11 ms, wild ~10 ms, noise/JPEG ~1.5 ms), ~2.6 ms for the two
CLIP views (PIL bicubic, bit-exact with the official transform; `clean_clip=False` halves it)
and ~1 ms for crop, flips and batching; decoding is paid once per image while it stays in the
`source.cache_mb` LRU. `tune_malloc` (on by default) matters: without it glibc returns each
~1 MB temporary to the OS and the page faults cost as much as the arithmetic.
"""

from __future__ import annotations

import hashlib
import logging
import os

import ml_collections
import numpy as np
from PIL import Image

from daclip_jax.data.sources import as_float
from daclip_jax.labels import DEGRADATIONS

log = logging.getLogger(__name__)

DEFAULT_NUM_KINDS_PROBS = (0.5, 0.35, 0.15)


def default_data_config() -> ml_collections.ConfigDict:
    """Every knob of the data pipeline, with defaults."""
    c = ml_collections.ConfigDict()

    # Where the images come from.
    c.source = ml_collections.ConfigDict()
    c.source.kind = "folder"        # folder | paired | csv | tfds | array_record
    c.source.path = ""              # folder root / paired root / CSV file / shard dir or file
    c.source.root = ""              # csv: base for relative filepaths ("": working dir, then CSV's folder)
    c.source.name = ""              # tfds: dataset name (e.g. "div2k" or "my_ds:1.0.0")
    c.source.data_dir = ""          # tfds: data_dir holding the prepared ArrayRecord dataset
    c.source.tfds_split = "train"   # tfds: split expression, e.g. "train[:90%]"
    c.source.image_key = "image"    # tfds: image feature
    c.source.label_key = ""         # tfds: label feature for template captions (optional)
    c.source.id_key = ""            # tfds: feature with a stable id (optional; else name/split/index)
    c.source.validate = "header"    # header: check every file's header at index time | none
                                    # (every host indexes the whole source; for millions of files
                                    # pack to ArrayRecord once and read that instead)
    c.source.min_size = 64          # images with a side below this are skipped (counted, reported)
    c.source.balance_types = True   # paired: every degradation type equally often (official MDDataset)
    c.source.cache_mb = 512         # LRU of decoded images, MiB *per process* (each grain worker has
                                    # its own: total = max(1, worker_count) x cache_mb); 8-bit images
                                    # are kept as uint8 (a 512 px photo 0.75 MiB, a 2K DIV2K one
                                    # ~8 MiB). Decoding is skipped for cached images, the biggest cost
                                    # of a folder source; 0 = off (e.g. data sets far larger than RAM
                                    # read in random order, where it only holds memory)

    # Geometry and augmentation.
    c.patch_size = 256              # training patch (LQ/GT), square
    c.clip_size = 224               # CLIP view side
    c.clean_clip = True             # also emit `clean_clip` (CLIP pretraining); False saves ~2.5 ms/pair
    c.small_images = "upscale"      # images smaller than the patch: upscale (bicubic) | skip
    c.hflip = True
    c.vflip = True
    c.rot90 = True                  # random transpose / quarter turn, as the official augment()

    # Degradations.
    c.degradation = ml_collections.ConfigDict()
    c.degradation.mode = "mixture"  # mixture: 1-3 types | single: one type | wild: random_degrade
    c.degradation.kinds = tuple(DEGRADATIONS)  # types to draw from
    c.degradation.weights = ()      # per-type weights (same order as kinds); () = uniform
    c.degradation.num_kinds_probs = DEFAULT_NUM_KINDS_PROBS  # P(k=1,2,3) in mixture mode
    c.degradation.use_real_lq = True  # records with a real LQ (paired/csv/packed) use it as is
    # uncompleted: the official 100 masks | procedural strokes (for patches much larger than 256 px)
    c.degradation.mask_source = "official"

    # Captions (see captions.make_captioner).
    c.caption = ml_collections.ConfigDict()
    c.caption.kind = "auto"         # auto | record | file | template | blip | constant
    c.caption.path = ""             # caption file (official CSV or filepath->caption CSV/TSV/JSON)
    c.caption.template = ""         # e.g. "a photo of a {label}"
    c.caption.blip_dir = ""         # local BLIP checkpoint dir (model + processor)
    c.caption.max_new_tokens = 30
    c.caption.num_beams = 1
    c.caption.text = "a photo"      # constant kind

    # Held-out split: by a hash of the clean image id, so it is stable across runs and hosts.
    c.holdout_fraction = 0.0        # fraction of ids in split "val"; 0 = no held-out split
    c.num_epochs = -1               # -1: repeat forever (train) / 1 pass (val)
    c.shuffle = True                # train only; val is read in order

    # Performance.
    c.worker_count = 0              # grain multiprocessing workers (0 = in-process threads)
    c.worker_buffer_size = 2        # batches each worker prefetches
    c.read_threads = 4              # threads mapping records inside each process/worker
    c.prefetch = 16                 # records prefetched by those threads
    c.tune_malloc = True            # keep freed memory in the process heap (see tune_malloc): the
                                    # synthesis allocates ~1 MB temporaries by the dozen per sample,
                                    # and glibc's defaults hand them back to the OS each time

    c.workdir = ""                  # if set, skipped files are listed in workdir/skipped.txt
    return c


# --------------------------------------------------------------------------- allocator

# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MALLOC_TUNED = False


def tune_malloc(mmap_threshold: int = 32 << 20, trim_threshold: int = 256 << 20) -> bool:
    """Stops glibc from returning every freed ~1 MB numpy temporary to the OS.

    A 256^2 RGB float32 image is 768 KiB, above glibc's default mmap threshold (128 KiB, raised
    only lazily), so each temporary of the synthesis was a fresh mmap and its first touch cost
    one page fault per 4 KiB: measured 1041 faults and 2.7 ms of kernel time in a 1.5 ms FFT
    blur. With blocks up to `mmap_threshold` served from the heap and up to `trim_threshold`
    of free heap kept, the same memory is reused (the mixed stream runs ~1.8x faster per
    CPU-second). Process-wide and idempotent; the pipeline calls it in every process that runs
    the per-record transform (grain workers included). Returns False where mallopt does not
    exist (not glibc).
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)))
    except (OSError, AttributeError):
        return False
    _MALLOC_TUNED = ok
    return ok


_BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"   # jax._src.dispatch
_TRIM_AFTER_COMPILES = False


def trim_heap_after_compiles() -> bool:
    """After each XLA compilation, return the heap the compiler freed to the OS (malloc_trim).

    Under tune_malloc's thresholds that memory stayed in the heap, where an XLA CPU program's
    large buffers (above the mmap threshold, mapped afresh) cannot reuse it: the UNet training
    step 2 x 128^2 (benchmarks/unet.py train2) peaked at 3.27 GiB RSS, 2.65 GiB with the trim.
    Once per compilation, so the steps' own reuse of freed buffers is untouched. Idempotent;
    False where malloc_trim does not exist (not glibc)."""
    global _TRIM_AFTER_COMPILES
    if _TRIM_AFTER_COMPILES:
        return True
    try:
        import ctypes

        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return False
    import jax.monitoring

    jax.monitoring.register_event_duration_secs_listener(
        lambda event, _secs, **_: event == _BACKEND_COMPILE_EVENT and trim(0))
    _TRIM_AFTER_COMPILES = True
    return True


# --------------------------------------------------------------------------- small pure helpers

def record_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The one RNG of one sample: Philox keyed by (seed, epoch, record index)."""
    return np.random.Generator(np.random.Philox(np.random.SeedSequence([seed, epoch, index])))


def id_fraction(record_id: str) -> float:
    """A stable number in [0,1) from an id (sha1), for the held-out split."""
    h = hashlib.sha1(record_id.encode("utf-8")).digest()
    return int.from_bytes(h[:8], "little") / 2.0**64


def split_indices(source, split: str, holdout_fraction: float) -> np.ndarray:
    n = len(source)
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if holdout_fraction <= 0:
        if split == "val":
            raise ValueError("split='val' needs data_cfg.holdout_fraction > 0")
        return np.arange(n)
    held = np.array([id_fraction(source.record_id(i)) < holdout_fraction for i in range(n)], bool)
    return np.flatnonzero(held if split == "val" else ~held)


def _resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    """Bicubic resize of a float HxWx3 image, channel by channel in PIL's float mode."""
    chans = [np.asarray(Image.fromarray(img[..., c]).resize((w, h), Image.Resampling.BICUBIC))
             for c in range(img.shape[-1])]
    return np.clip(np.stack(chans, -1), 0.0, 1.0).astype(np.float32)


def ensure_min_side(img: np.ndarray, size: int) -> np.ndarray:
    """Upscales so the short side is >= size (keeps the aspect ratio).

    Compact (uint8) images that need upscaling are converted to float first; others are
    returned unchanged, in their own dtype.
    """
    h, w = img.shape[:2]
    if min(h, w) >= size:
        return img
    s = size / min(h, w)
    return _resize(as_float(img), max(size, round(w * s)), max(size, round(h * s)))


def _writable(x: np.ndarray) -> np.ndarray:
    # A float patch can be a view of a cached (read-only, shared) image: give the sample its own.
    return x if x.flags.writeable else x.copy()


def random_crop(images: list, size: int, rng: np.random.Generator) -> list:
    """The same random size x size window from every image in `images` (all the same shape)."""
    h, w = images[0].shape[:2]
    top = int(rng.integers(0, h - size + 1))
    left = int(rng.integers(0, w - size + 1))
    return [x[top:top + size, left:left + size] for x in images]


def random_flips(images: list, rng: np.random.Generator, hflip=True, vflip=True, rot90=True) -> list:
    """hflip / vflip / transpose with p=0.5 each (the official `augment`), same for every image."""
    do_h, do_v, do_t = rng.random(3) < 0.5
    out = []
    for x in images:
        if hflip and do_h:
            x = x[:, ::-1]
        if vflip and do_v:
            x = x[::-1]
        if rot90 and do_t:
            x = x.transpose(1, 0, 2)
        out.append(np.ascontiguousarray(x))
    return out


def sample_weighted_kinds(rng, kinds, weights, num_kinds_probs) -> list[str]:
    """k ~ num_kinds_probs, then k distinct types drawn with `weights` (no replacement)."""
    k = 1 + int(rng.choice(len(num_kinds_probs), p=np.asarray(num_kinds_probs) / np.sum(num_kinds_probs)))
    k = min(k, len(kinds))
    p = np.asarray(weights if len(weights) else np.ones(len(kinds)), np.float64)
    idx = rng.choice(len(kinds), size=k, replace=False, p=p / p.sum())
    return [kinds[i] for i in idx]


def degradation_targets(words: list[str]) -> tuple[np.ndarray, int]:
    """multi-hot over DEGRADATIONS and the single-type index (-1 for mixtures / other words)."""
    hot = np.zeros(len(DEGRADATIONS), np.float32)
    for w in words:
        if w in DEGRADATIONS:
            hot[DEGRADATIONS.index(w)] = 1.0
    index = DEGRADATIONS.index(words[0]) if len(words) == 1 and words[0] in DEGRADATIONS else -1
    return hot, index


# --------------------------------------------------------------------------- the per-record transform

class MakeExample:
    """(epoch, record_index) -> one training example (dict of numpy arrays).

    Module-level and picklable so grain multiprocessing workers can run it; heavy state
    (captioner, tokenizer) is created lazily in the process that uses it.
    """

    def __init__(self, source, data_cfg, seed: int):
        self.source = source
        self.cfg = data_cfg.to_dict() if hasattr(data_cfg, "to_dict") else dict(data_cfg)
        self.caption_cfg = ml_collections.ConfigDict(self.cfg["caption"])
        self.seed = int(seed)
        self._captioner = None
        deg = self.cfg["degradation"]
        self.kinds = tuple(deg["kinds"])
        unknown = [k for k in self.kinds if k not in DEGRADATIONS]
        if unknown or not self.kinds:
            raise ValueError(f"degradation.kinds must be a non-empty subset of {DEGRADATIONS}; bad: {unknown}")
        self.weights = tuple(deg["weights"])
        if self.weights and len(self.weights) != len(self.kinds):
            raise ValueError("degradation.weights must have one weight per entry of degradation.kinds")
        if deg["mode"] not in ("mixture", "single", "wild"):
            raise ValueError(f"degradation.mode must be mixture|single|wild, got {deg['mode']!r}")
        mask_source = deg.get("mask_source", "official")
        if mask_source not in ("official", "procedural"):
            raise ValueError(f"degradation.mask_source must be official|procedural, got {mask_source!r}")
        self.degrade_options = {"uncompleted": {"mask_source": mask_source}}
        if self.cfg.get("tune_malloc", True):
            tune_malloc()

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_captioner"] = None  # rebuilt in each worker (BLIP models do not pickle cheaply)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if self.cfg.get("tune_malloc", True):
            tune_malloc()  # a grain worker process: its own allocator

    @property
    def captioner(self):
        if self._captioner is None:
            from daclip_jax.data.captions import make_captioner
            self._captioner = make_captioner(self.caption_cfg)
        return self._captioner

    def _sample_kinds(self, rng) -> list[str]:
        from daclip_jax.data import degradations as D

        deg = self.cfg["degradation"]
        if deg["mode"] == "single":
            p = np.asarray(self.weights or np.ones(len(self.kinds)), np.float64)
            return [self.kinds[int(rng.choice(len(self.kinds), p=p / p.sum()))]]
        default = (self.kinds == tuple(DEGRADATIONS) and not self.weights
                   and tuple(deg["num_kinds_probs"]) == DEFAULT_NUM_KINDS_PROBS)
        if default:
            return list(D.sample_kinds(rng))
        return list(D.ordered(sample_weighted_kinds(rng, self.kinds, self.weights, deg["num_kinds_probs"])))

    def _degrade(self, gt, rng) -> tuple[np.ndarray, str, list[str]]:
        """Synthesised LQ, its degradation text and the words for the multi-hot."""
        mode = self.cfg["degradation"]["mode"]
        if mode == "wild":
            from daclip_jax.data.wild import random_degrade

            for _ in range(16):  # an empty deg_list is resampled (design notes, section 3)
                lq, deg_list = random_degrade(gt, rng)
                words = list(dict.fromkeys(deg_list))
                if words:
                    return lq, ", ".join(words), []
            return lq, "", []
        from daclip_jax.data import degradations as D

        kinds = self._sample_kinds(rng)
        lq, _meta = D.degrade(gt, kinds, rng, options=self.degrade_options)
        return lq, D.label_text(kinds), list(kinds)

    def __call__(self, item) -> dict:
        from daclip_jax.preprocess import clip_view
        from daclip_jax.tokenizer import tokenize

        epoch, index = int(item[0]), int(item[1])
        rng = record_rng(self.seed, epoch, index)
        load = getattr(self.source, "load", None)
        rec = load(index) if load is not None else self.source[index]   # compact images
        caption = self.captioner(rec)
        size = self.cfg["patch_size"]

        real = rec.get("lq") is not None and self.cfg["degradation"]["use_real_lq"]
        images = [rec["gt"], rec["lq"]] if real else [rec["gt"]]
        images = [ensure_min_side(x, size) for x in images]
        images = random_crop(images, size, rng)
        images = random_flips(images, rng, self.cfg["hflip"], self.cfg["vflip"], self.cfg["rot90"])
        images = [_writable(as_float(x)) for x in images]
        gt = images[0]
        if real:
            lq = images[1]
            text = rec.get("degradation", "")
            words = [w.strip() for w in text.split(",") if w.strip()]
        else:
            lq, text, words = self._degrade(gt, rng)
        lq = np.asarray(lq, np.float32)
        hot, deg_index = degradation_targets(words)
        clip_size = self.cfg["clip_size"]
        tokens = tokenize([caption, text])
        example = {
            "lq": lq,
            "gt": np.asarray(gt, np.float32),
            "lq_clip": np.asarray(clip_view(lq, size=clip_size), np.float32),
            "caption_tokens": np.asarray(tokens[0], np.int32),
            "degradation_tokens": np.asarray(tokens[1], np.int32),
            "degradation_multihot": hot,
            "degradation_index": np.int32(deg_index),
        }
        if self.cfg.get("clean_clip", True):
            example["clean_clip"] = np.asarray(clip_view(gt, size=clip_size), np.float32)
        return example


def example_spec(cfg) -> dict:
    """``{key: (shape, dtype)}`` of one example as `MakeExample` yields it for data config
    ``cfg``: what the train step is compiled for when there is no data at hand
    (`daclip-jax compile`). tests/test_aot.py holds it to a real example."""
    from daclip_jax.labels import DEGRADATIONS
    from daclip_jax.tokenizer import CONTEXT_LENGTH

    p, c = int(cfg["patch_size"]), int(cfg["clip_size"])
    spec = {
        "lq": ((p, p, 3), np.float32),
        "gt": ((p, p, 3), np.float32),
        "lq_clip": ((c, c, 3), np.float32),
        "caption_tokens": ((CONTEXT_LENGTH,), np.int32),
        "degradation_tokens": ((CONTEXT_LENGTH,), np.int32),
        "degradation_multihot": ((len(DEGRADATIONS),), np.float32),
        "degradation_index": ((), np.int32),
    }
    if cfg.get("clean_clip", True):
        spec["clean_clip"] = ((c, c, 3), np.float32)
    return spec


class _EpochAndIndex:
    """Global stream position -> (epoch, record index); picklable for workers."""

    def __init__(self, n: int):
        self.n = n

    def __call__(self, position, record_index):
        return (position // self.n, record_index)


def index_dataset(n: int, *, seed: int, shuffle: bool = True, num_epochs: int | None = None,
                  process_index: int = 0, process_count: int = 1):
    """grain MapDataset of (epoch, record_index) for this process.

    One global order (shuffled per epoch, the same on every process), then this process's
    elements `[process_index::process_count]`: disjoint shards whose union is the stream.
    """
    import grain

    ds = grain.MapDataset.range(n)
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs)  # reseeds the shuffle every epoch
    ds = ds.map_with_index(_EpochAndIndex(n))
    return ds[process_index::process_count]


def build_source(data_cfg, *, split: str = "train", report: bool = True):
    """The (split, bad-file-safe) source the pipeline reads; also reports skipped files.

    With `data_cfg.workdir` set, the train split's skips go to `workdir/skipped.txt`, started
    anew (the val split indexes the same files, at every evaluation); `report=False` (every
    process but the first) writes nothing.
    """
    from daclip_jax.data import sources as S

    report_path = None
    if data_cfg.get("workdir") and split == "train" and report:
        report_path = os.path.join(data_cfg.workdir, "skipped.txt")
        if os.path.exists(report_path):
            os.remove(report_path)
    skipped = S.SkipReport(path=report_path)
    src_cfg = ml_collections.ConfigDict(data_cfg.source.to_dict())
    if data_cfg.get("small_images", "upscale") == "skip":
        src_cfg.min_size = max(src_cfg.get("min_size", 0), data_cfg.patch_size)
    base = S.make_source(src_cfg, skipped=skipped)
    cache_mb = data_cfg.source.get("cache_mb", 0)
    if cache_mb and cache_mb > 0:
        base = S.CachedSource(base, int(cache_mb * 2**20))
    idx = split_indices(base, split, data_cfg.get("holdout_fraction", 0.0))
    if len(idx) == 0:
        raise S.NoUsableImagesError(f"split {split!r} of the source is empty")
    src = base if len(idx) == len(base) else S.SubsetSource(base, idx)
    types = S.record_types(src) if data_cfg.source.get("balance_types", True) else None
    if types is not None and split == "train":
        src = S.TypeBalancedSource(src, types)
    log.info("data: %d record(s) in split %r from %s (%s)", len(src), split, base.name, skipped.summary())
    return S.SafeSource(src)


def build_pipeline(data_cfg, *, split: str = "train", seed: int = 0, global_batch_size: int,
                   process_index: int | None = None, process_count: int | None = None,
                   source=None):
    """A grain IterDataset of batches (dicts, see contracts) for this process.

    process_index/process_count default to jax.process_index()/jax.process_count().
    `source` overrides the one `data_cfg.source` describes (tests, custom sources).
    """
    import grain

    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if global_batch_size % process_count:
        raise ValueError(f"global_batch_size {global_batch_size} is not divisible by {process_count} processes")
    per_process = global_batch_size // process_count

    if source is None:
        source = build_source(data_cfg, split=split, report=process_index == 0)
    n = len(source)
    train = split == "train"
    epochs = data_cfg.get("num_epochs", -1)
    epochs = None if (epochs is None or epochs < 0) and train else (1 if epochs is None or epochs < 0 else epochs)

    ds = index_dataset(n, seed=seed, shuffle=train and data_cfg.get("shuffle", True), num_epochs=epochs,
                       process_index=process_index, process_count=process_count)
    ds = ds.map(MakeExample(source, data_cfg, seed))
    ds = ds.batch(per_process, drop_remainder=True)
    read = grain.ReadOptions(num_threads=max(1, data_cfg.get("read_threads", 4)),
                             prefetch_buffer_size=max(1, data_cfg.get("prefetch", 16)))
    it = ds.to_iter_dataset(read)
    workers = data_cfg.get("worker_count", 0)
    if workers > 0:
        from absl import flags

        # grain's multiprocessing reads absl flags; a program that does not run under
        # absl.app.run (a notebook, a plain script) would otherwise fail on the first batch.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=workers, per_worker_buffer_size=max(1, data_cfg.get("worker_buffer_size", 2))))
    return it
