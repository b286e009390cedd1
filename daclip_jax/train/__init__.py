"""Training: one shared loop (core.py) and thin tasks that differ only in model, loss,
evaluation and what is frozen.

    state.py          TrainState and the pure jitted step (accumulation, NaN guard, EMA)
    optim.py          AdamW + warm-up/cosine schedules, EMA (ema_pytorch semantics)
    checkpointing.py  orbax CheckpointManager: async, keep-N + keep-best, grain state, resume
    writer.py         TensorBoard + metrics.jsonl + console progress/ETA (host 0)
    configlib.py      python configs, --config.a.b=v overrides, sweeps
    core.py           Task, Trainer, train()
    daclip_task.py    DA-CLIP controller training (DaClipLoss)
    clip_task.py      CLIP from scratch (CLIP loss)
    restoration_task.py  IR-SDE ConditionalUNet conditioned by a frozen DA-CLIP
"""
