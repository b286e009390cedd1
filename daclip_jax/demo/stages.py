"""The demo's three training stages (CLIP from scratch, DA-CLIP controller, IR-SDE
restorer), each a run of the shared trainer, resumable and skipped once finished."""

from __future__ import annotations

import json
import os
import time

import ml_collections

from daclip_jax.demo.data import prepare_data


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
    c2 = daclip_config(cfg, paths, clip_init)
    times["daclip"] = _run_stage("stage 2/3 DA-CLIP controller", c2, daclip_dir, daclip_task(c2))

    # stage 3: ConditionalUNet + IR-SDE on the frozen DA-CLIP
    c3 = restoration_config(cfg, paths, os.path.join(daclip_dir, "model"))
    times["restoration"] = _run_stage("stage 3/3 IR-SDE restorer", c3,
                                      os.path.join(workdir, "restoration"), restoration_task(c3))
    return paths, times


def daclip_config(cfg, paths: dict, clip_init: str) -> ml_collections.ConfigDict:
    """Stage 2's trainer config: the controller on the frozen CLIP `clip_init`."""
    c2 = trainer_config("daclip", cfg, paths, cfg.daclip)
    c2.model.name = "daclip_tiny"    # only dtype/remat are read: weights + shape come from init
    c2.model.init = clip_init
    c2.model.controller_init = "zero"
    c2.model.dtype = "float32"
    c2.model.remat = False
    return c2


def daclip_task(config):
    from daclip_jax.train.daclip_task import DaClipTask
    return DaClipTask(config)


def restoration_config(cfg, paths: dict, daclip_model: str) -> ml_collections.ConfigDict:
    """Stage 3's trainer config: the demo UNet + IR-SDE on the frozen DA-CLIP `daclip_model`."""
    rc = cfg.restoration
    c3 = trainer_config("restoration", cfg, paths, rc)
    c3.model.daclip = daclip_model
    c3.model.unet = dict(rc.unet)
    c3.sde = ml_collections.ConfigDict(dict(rc.sde))
    c3.train.b2 = 0.99
    c3.train.loss_type = "l1"
    c3.train.x0_weighting = rc.x0_weighting
    c3.train.t_max_prob = float(rc.t_max_prob)
    return c3


def restoration_task(config):
    return _restoration_task_cls()(config)
