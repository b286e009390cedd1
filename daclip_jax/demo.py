"""The embedded demo: DA-CLIP and the IR-SDE restorer trained end to end on real photos
that ship with scikit-image, in minutes on a CPU, with no download.

    daclip-jax demo --workdir runs/demo                      # the default (measured in the README)
    daclip-jax demo --workdir /tmp/demo --config :smoke      # a ~1 minute smoke run (the test)
    daclip-jax demo --workdir runs/demo --config.clip.init=open_clip_ViT-B-32.bin   # no stage 1

What it does, in `<workdir>`:
- `data/{train,heldout}/*.png` + `data/captions.json`: the photos (short side scaled to
  `data.short_side`), split BY PHOTO (the held-out ones are named in the config), and a
  caption naming each photo's subject, read through the pipeline's caption-file provider.
  All ten degradation types are synthesised on the fly by the data pipeline.
- `clip/`: stage 1, a small CLIP trained from scratch on the clean patches + captions (no
  pretrained CLIP exists offline). Skipped when `clip.init` names pretrained weights.
- `daclip/`: stage 2, the CLIP frozen and the DA-CLIP controller trained (DaClipLoss).
- `restoration/`: stage 3, a small ConditionalUNet trained with IR-SDE, conditioned on the
  frozen DA-CLIP.
  Each stage dir is a trainer run: orbax `checkpoints/`, TensorBoard `tb/`, `metrics.jsonl`
  and the exported `model/`. Re-running the command resumes an interrupted stage from its
  latest checkpoint and skips finished ones.
- `export/`: PyTorch weights — `daclip.pt` (official DA-CLIP state-dict layout),
  `unet.pth` (official ConditionalUNet layout) and `hf_clip/` (transformers CLIPModel dir).
- `report/report.md` + PNGs: loss curves, zero-shot degradation confusion matrix and
  accuracy per type, PSNR/SSIM of degraded vs restored per type, and a degraded | restored
  | clean grid for every type (see daclip_jax.demo_eval).

Sizes: the default CLIP is a 64 px ViT with 8 px patches; the UNet has nf 16. They were
chosen so the whole run fits in 15 minutes on 2 CPU cores (README has the measured
time); `--config.<stage>.steps=...` etc. trade time for quality.
"""

from __future__ import annotations

import json
import os
import time

import ml_collections
import numpy as np

# (scikit-image loader, file name, caption). All load offline from the installed wheel.
PHOTOS = (
    ("astronaut", "astronaut", "a photo of an astronaut in a space suit with a flag"),
    ("chelsea", "chelsea", "a photo of a ginger tabby cat"),
    ("coffee", "coffee", "a photo of a cup of coffee on a saucer"),
    ("rocket", "rocket", "a photo of a rocket on a launch pad"),
    ("hubble_deep_field", "hubble", "a photo of galaxies in deep space"),
    ("immunohistochemistry", "ihc", "a microscope photo of stained tissue"),
    ("retina", "retina", "a photo of the retina of a human eye"),
    ("colorwheel", "colorwheel", "a colour wheel with a rainbow of hues"),
    ("stereo_motorcycle:0", "motorcycle_left", "a photo of a red motorcycle in a garage"),
    ("stereo_motorcycle:1", "motorcycle_right", "a photo of a motorcycle parked in a workshop"),
    ("camera", "camera", "a photo of a man with a camera on a tripod"),
    ("moon", "moon", "a photo of the surface of the moon"),
    ("coins", "coins", "a photo of old coins on a table"),
    ("clock", "clock", "a photo of a wall clock"),
    ("brick", "brick", "a photo of a brick wall"),
    ("grass", "grass", "a photo of a field of grass"),
    ("gravel", "gravel", "a photo of gravel stones"),
    ("cell", "cell", "a microscope photo of a cell"),
    ("text", "text", "a photo of printed text on a page"),
    ("page", "page", "a scanned page of a book"),
)
# held out of all training: two colour and two grayscale photos of unrelated subjects
HELDOUT = ("coffee", "rocket", "camera", "coins")


def _demo_clip_arch() -> dict:
    """A small ViT CLIP for 64 px views (8 px patches = 8x8 tokens + class token).

    Heads are 64 wide, open_clip's convention, so the exported daclip.pt is read back (by our
    importer and by open_clip's defaults) with the right head counts from its shapes alone."""
    return dict(embed_dim=64, image_size=64, patch_size=8, vision_width=128, vision_layers=4,
                vision_head_width=64, context_length=77, vocab_size=49408, text_width=64,
                text_heads=1, text_layers=3, quick_gelu=False)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The demo's knobs; arg "smoke" shrinks everything to a ~1 minute run."""
    from daclip_jax.train.configlib import parse_arg

    arg = parse_arg(arg, smoke=False)
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.data = ml_collections.ConfigDict(dict(
        photos=tuple(p[1] for p in PHOTOS),   # which of PHOTOS to use (file names)
        heldout=HELDOUT,                      # those kept out of training (evaluation only)
        short_side=160,                       # photos are rescaled so the short side is this
        patch_size=64,                        # training patch = CLIP view side (no resize)
        read_threads=2, prefetch=8))
    c.clip = ml_collections.ConfigDict(dict(
        init="",                              # pretrained CLIP/DA-CLIP (open_clip, HF, .pt): skip stage 1
        arch=_demo_clip_arch(),
        steps=300, batch_size=32, lr=1e-3, warmup_steps=30, weight_decay=0.1, adam_eps=1e-6))
    c.daclip = ml_collections.ConfigDict(dict(
        steps=800, batch_size=32, lr=1e-3, warmup_steps=50, weight_decay=0.05, adam_eps=1e-6))
    c.restoration = ml_collections.ConfigDict(dict(
        unet=ml_collections.ConfigDict(dict(nf=16, ch_mult=(1, 2, 4))),
        steps=500, batch_size=4, lr=1e-3, warmup_steps=0,
        adam_eps=1e-8,                        # torch's default, as the official IR-SDE: the
                                              # matching loss's gradients are ~1e-6 per weight
        ema_decay=0.99,                       # the EMA weights (model_ema) are evaluated and exported
        sde=ml_collections.ConfigDict(dict(max_sigma=50.0, T=100, schedule="cosine", eps=0.005))))
    c.eval = ml_collections.ConfigDict(dict(
        crops_per_photo=8,                    # patches per held-out photo, each with every type
        restore_crops_per_photo=2,            # of those, restored (the sampler is the costly part)
        sample_steps=20, sampler="posterior", batch_size=40,
        clip_x0=True,                         # x0 estimates clipped to [0, 1] (daclip_jax.sampling)
        grid_photos=("coffee", "camera")))    # held-out photos shown in the before/after grid
    c.log_every = 25
    c.export = True
    if arg.smoke:
        c.data.photos = ("astronaut", "chelsea", "brick", "coffee", "camera")
        c.data.heldout = ("coffee", "camera")
        c.data.short_side = 64
        c.data.patch_size = 32
        c.data.read_threads = 1
        c.clip.arch = dict(_demo_clip_arch(), image_size=32, vision_width=64, vision_layers=2,
                           text_layers=1, embed_dim=32)
        c.clip.steps, c.clip.batch_size, c.clip.warmup_steps = 4, 8, 1
        c.daclip.steps, c.daclip.batch_size, c.daclip.warmup_steps = 4, 8, 1
        c.restoration.steps, c.restoration.batch_size = 4, 4
        c.eval.crops_per_photo = 1
        c.eval.restore_crops_per_photo = 1
        c.eval.sample_steps = 2
        c.eval.batch_size = 20
        c.log_every = 2
    return c


# ----------------------------------------------------------------------------- data

def load_photo(loader: str) -> np.ndarray:
    """A scikit-image bundled photo as uint8 HxWx3 (grayscale repeated, alpha dropped)."""
    import skimage.data

    name, _, index = loader.partition(":")
    img = getattr(skimage.data, name)()
    if index:
        img = img[int(index)]
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, -1)
    return np.ascontiguousarray(img[..., :3]).astype(np.uint8)


def _rescale(img: np.ndarray, short_side: int) -> np.ndarray:
    from PIL import Image

    h, w = img.shape[:2]
    s = short_side / min(h, w)
    size = (max(short_side, round(w * s)), max(short_side, round(h * s)))
    return np.asarray(Image.fromarray(img).resize(size, Image.Resampling.LANCZOS))


def prepare_data(cfg, data_dir: str) -> dict:
    """Writes the photos (split by photo) and the caption table; idempotent. Returns paths."""
    from PIL import Image

    table = {p[1]: p for p in PHOTOS}
    unknown = [n for n in list(cfg.data.photos) + list(cfg.data.heldout) if n not in table]
    if unknown:
        raise ValueError(f"unknown demo photos {unknown}; known: {sorted(table)}")
    heldout = [n for n in cfg.data.photos if n in set(cfg.data.heldout)]
    train = [n for n in cfg.data.photos if n not in set(cfg.data.heldout)]
    if not train or not heldout:
        raise ValueError("the demo needs at least one training and one held-out photo")
    captions = {}
    for split, names in (("train", train), ("heldout", heldout)):
        d = os.path.join(data_dir, split)
        os.makedirs(d, exist_ok=True)
        for name in names:
            path = os.path.join(d, f"{name}.png")
            if not os.path.exists(path):
                Image.fromarray(_rescale(load_photo(table[name][0]), cfg.data.short_side)).save(path)
            captions[f"{name}.png"] = table[name][2]
    cap_path = os.path.join(data_dir, "captions.json")
    with open(cap_path, "w") as f:
        json.dump(captions, f, indent=1)
    return dict(train=os.path.join(data_dir, "train"), heldout=os.path.join(data_dir, "heldout"),
                captions=cap_path, train_names=train, heldout_names=heldout)


# ----------------------------------------------------------------------------- stage configs

def trainer_config(task: str, cfg, paths: dict, stage) -> ml_collections.ConfigDict:
    """A shared-trainer config (the keys configs/common.py:base_config defines) for one stage."""
    from daclip_jax.data.pipeline import default_data_config

    c = ml_collections.ConfigDict()
    c.task = task
    c.seed = int(cfg.seed)
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.sharding = ml_collections.ConfigDict(dict(fsdp_min_size=2 ** 16, tensor_rules=None))
    c.distributed = ml_collections.ConfigDict(dict(coordinator_address=None, num_processes=None,
                                                   process_id=None))
    c.model = ml_collections.ConfigDict()
    d = default_data_config()
    d.source.path = paths["train"]
    d.source.min_size = 16
    d.caption.kind = "file"
    d.caption.path = paths["captions"]
    d.patch_size = d.clip_size = int(cfg.data.patch_size)
    d.degradation.mode = "single"     # one of the ten types per patch, as the official CSV
    d.read_threads = int(cfg.data.read_threads)
    d.prefetch = int(cfg.data.prefetch)
    c.data = d
    c.train = ml_collections.ConfigDict(dict(
        steps=int(stage.steps), batch_size=int(stage.batch_size), lr=float(stage.lr),
        warmup_steps=int(stage.get("warmup_steps", 0)), schedule="cosine", end_lr=0.0,
        weight_decay=float(stage.get("weight_decay", 0.0)), b1=0.9, b2=0.98, eps=float(stage.adam_eps),
        grad_clip_norm=0.0, accum_steps=1, log_every=int(cfg.log_every)))
    c.ema = ml_collections.ConfigDict(dict(decay=float(stage.get("ema_decay", 0.0)), every=1,
                                           after=0, inv_gamma=1.0, power=2 / 3))
    every = max(1, int(stage.steps) // 4)   # a few checkpoints: an interrupted run resumes
    c.ckpt = ml_collections.ConfigDict(dict(every=every, keep=1, keep_best=0, best_metric="",
                                            best_mode="max", async_save=False))
    c.eval = ml_collections.ConfigDict(dict(every=0, batches=1, batch_size=int(stage.batch_size)))
    c.export = True
    return c


def _clip_task_cls():
    from daclip_jax.train.clip_task import ClipTask

    class DemoClipTask(ClipTask):
        """The clip task with the demo's own (unnamed) small architecture."""

        def build_model(self, rngs):
            from daclip_jax.models.clip import CLIP, CLIPConfig
            return CLIP(CLIPConfig.from_dict(dict(self.config.model.arch)), rngs=rngs)

    return DemoClipTask


def _restoration_task_cls():
    from daclip_jax.train.restoration_task import Restorer, RestorationTask

    class DemoRestorationTask(RestorationTask):
        """The restoration task with the demo's small UNet (context = the DA-CLIP's width)."""

        def build_model(self, rngs):
            from daclip_jax.convert.daclip import load_daclip
            from daclip_jax.models.unet import ConditionalUNet, UNetConfig
            daclip = load_daclip(self.config.model.daclip)
            ucfg = UNetConfig(**dict(self.config.model.unet), context_dim=daclip.cfg.embed_dim)
            return Restorer(ConditionalUNet(ucfg, rngs=rngs), daclip)

    return DemoRestorationTask


def _stage_done(workdir: str) -> bool:
    return os.path.isfile(os.path.join(workdir, "done.json"))


def _run_stage(name: str, config, workdir: str, task) -> float:
    from daclip_jax.train.core import train

    if _stage_done(workdir):
        print(f"== {name}: already trained ({workdir}/model)", flush=True)
        return 0.0
    print(f"== {name}: {config.train.steps} steps, batch {config.train.batch_size} -> {workdir}",
          flush=True)
    t0 = time.perf_counter()
    train(config, workdir, task)
    if not os.path.isdir(os.path.join(workdir, "model")):
        # resumed from the final checkpoint of a run stopped before its export
        from daclip_jax.train.core import Trainer
        trainer = Trainer(config, workdir, task)
        try:
            trainer.export()
        finally:
            trainer.close()
    seconds = time.perf_counter() - t0
    with open(os.path.join(workdir, "done.json"), "w") as f:
        json.dump(dict(steps=int(config.train.steps), seconds=seconds), f)
    return seconds


def clip_image_size(path: str) -> int:
    """The image side of a pretrained CLIP/DA-CLIP (sets the CLIP view of the data)."""
    from daclip_jax.convert.daclip import load_clip
    return int(load_clip(path).cfg.image_size)


def train_stages(cfg, workdir: str) -> tuple[dict, dict]:
    """Data + the three training stages (each resumable / skipped when finished).

    Returns (paths of the data, seconds each stage took in this call)."""
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    paths = prepare_data(cfg, os.path.join(workdir, "data"))
    print(f"== data: {len(paths['train_names'])} training photos, held out: "
          f"{', '.join(paths['heldout_names'])} ({paths['train']}, {paths['heldout']})", flush=True)
    times = {}

    # stage 1: CLIP from scratch (or the user's pretrained weights)
    clip_dir = os.path.join(workdir, "clip")
    if cfg.clip.init:
        clip_init = cfg.clip.init
        view = clip_image_size(clip_init)
        if view != cfg.data.patch_size:
            cfg = ml_collections.ConfigDict(cfg.to_dict())
            cfg.data.patch_size = view
        print(f"== clip: pretrained {clip_init} ({view} px views); stage 1 skipped", flush=True)
    else:
        c1 = trainer_config("clip", cfg, paths, cfg.clip)
        c1.model.arch = dict(cfg.clip.arch)
        c1.model.name = "demo"
        if int(cfg.clip.arch["image_size"]) != int(cfg.data.patch_size):
            raise ValueError("clip.arch.image_size must equal data.patch_size (the CLIP view)")
        times["clip"] = _run_stage("stage 1/3 CLIP from scratch", c1, clip_dir,
                                   _clip_task_cls()(c1))
        clip_init = os.path.join(clip_dir, "model")

    # stage 2: frozen CLIP + DA-CLIP controller
    daclip_dir = os.path.join(workdir, "daclip")
    c2 = trainer_config("daclip", cfg, paths, cfg.daclip)
    c2.model.name = "daclip_tiny"    # only dtype/remat are read: weights + shape come from init
    c2.model.init = clip_init
    c2.model.controller_init = "zero"
    c2.model.dtype = "float32"
    c2.model.remat = False
    from daclip_jax.train.daclip_task import DaClipTask
    times["daclip"] = _run_stage("stage 2/3 DA-CLIP controller", c2, daclip_dir, DaClipTask(c2))

    # stage 3: ConditionalUNet + IR-SDE on the frozen DA-CLIP
    rc = cfg.restoration
    c3 = trainer_config("restoration", cfg, paths, rc)
    c3.model.daclip = os.path.join(daclip_dir, "model")
    c3.model.unet = dict(rc.unet)
    c3.sde = ml_collections.ConfigDict(dict(rc.sde))
    c3.train.b2 = 0.99
    c3.train.loss_type = "l1"
    times["restoration"] = _run_stage("stage 3/3 IR-SDE restorer", c3,
                                      os.path.join(workdir, "restoration"),
                                      _restoration_task_cls()(c3))
    return paths, times


def run(cfg, workdir: str) -> dict:
    """The whole demo; returns the evaluation summary (also in report/summary.json)."""
    from daclip_jax import demo_eval

    workdir = os.path.abspath(workdir)
    t_start = time.perf_counter()
    paths, times = train_stages(cfg, workdir)
    summary = demo_eval.evaluate_and_report(cfg, workdir, paths, times)
    summary["wall_s"] = time.perf_counter() - t_start
    with open(os.path.join(workdir, "report", "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"== done in {summary['wall_s'] / 60:.1f} min: {workdir}/report/report.md", flush=True)
    return summary
