"""Blocks shared by the configs in this folder (imported by path-loaded config files)."""

import ml_collections


def base_config(task: str) -> ml_collections.ConfigDict:
    """Every knob the shared trainer reads; configs override what their recipe sets."""
    from daclip_jax.data.pipeline import default_data_config

    c = ml_collections.ConfigDict()
    c.task = task
    c.seed = 0
    # mesh axes: any may be 1; -1 takes the remaining devices
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    # parameters with fewer elements stay replicated; tensor_rules=None keeps the defaults
    c.sharding = ml_collections.ConfigDict(dict(fsdp_min_size=2 ** 16, tensor_rules=None))
    # jax.distributed: None = auto-detect (TPU pod / SLURM); set for local processes
    c.distributed = ml_collections.ConfigDict(dict(
        coordinator_address=ml_collections.FieldReference(None, field_type=str),
        num_processes=ml_collections.FieldReference(None, field_type=int),
        process_id=ml_collections.FieldReference(None, field_type=int)))
    c.model = ml_collections.ConfigDict()
    c.data = default_data_config()
    c.train = ml_collections.ConfigDict(dict(
        steps=1000, batch_size=16, lr=1e-4, warmup_steps=0, schedule="cosine", end_lr=0.0,
        weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8, grad_clip_norm=0.0,
        accum_steps=1,       # gradient accumulation: micro-batches of batch_size/accum_steps
        log_every=50))
    # EMA of the trained weights (ema_pytorch semantics); decay 0 = off
    c.ema = ml_collections.ConfigDict(dict(decay=0.0, every=10, after=100, inv_gamma=1.0,
                                           power=2 / 3))
    c.ckpt = ml_collections.ConfigDict(dict(every=1000, keep=3, keep_best=1, best_metric="",
                                            best_mode="max", async_save=True))
    c.eval = ml_collections.ConfigDict(dict(every=0, batches=4, batch_size=16, use_ema=False))
    c.export = True
    return c


def runlocal(c: ml_collections.ConfigDict, data: str) -> ml_collections.ConfigDict:
    """Shrink a config to a few-second smoke run on CPU over a folder of images."""
    c.data.source.path = data
    c.data.source.min_size = 16
    c.data.holdout_fraction = 0.25
    c.data.read_threads = 1
    c.data.prefetch = 2
    c.train.steps = 4
    c.train.batch_size = 4
    c.train.warmup_steps = min(c.train.warmup_steps, 2)
    c.train.log_every = 1
    c.ckpt.every = 2
    c.eval.every = 4
    c.eval.batches = 1
    c.eval.batch_size = 4
    return c
