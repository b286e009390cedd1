"""Checks of what the user typed, run before a trainer is built.

A wrong data path, checkpoint path or mesh would otherwise surface as a traceback from deep
inside the construction, minutes in on a pod and after the workdir was made. Each check here
raises `ConfigError` whose message names the setting, what is wrong with it and what to do;
the training verbs print it as one line. They only look at paths and numbers, never read an
image or a weight, so a run that passes them pays nothing.
"""

from __future__ import annotations

import os

from daclip_jax.train.configlib import ConfigError

# data.source.kind -> what its path must be ("dir", "file" or "any")
_SOURCE_PATHS = {"folder": "dir", "paired": "dir", "csv": "file", "array_record": "any"}

_WHAT = {"dir": "folder", "file": "file", "any": "file or folder"}


def _exists(path: str, kind: str) -> bool:
    return {"dir": os.path.isdir, "file": os.path.isfile, "any": os.path.exists}[kind](path)


def _need(key: str, path: str, kind: str, todo: str) -> None:
    if not path:
        raise ConfigError(f"--config.{key} is empty; {todo}")
    if not _exists(path, kind):
        raise ConfigError(f"--config.{key}={path}: no such {_WHAT[kind]} "
                          f"(from {os.getcwd()}); {todo}")


def check_config(config) -> None:
    """The task, the data source and the checkpoint paths of `config` (no devices needed)."""
    from daclip_jax.train.core import TASKS

    if config.get("task") not in TASKS:
        raise ConfigError(f"--config.task={config.get('task')!r} is not a task; "
                          f"use one of {', '.join(sorted(TASKS))}")
    src = config.data.source
    if src.kind not in (*_SOURCE_PATHS, "tfds"):
        raise ConfigError(f"--config.data.source.kind={src.kind!r} is not a source kind; use one "
                          f"of {', '.join((*_SOURCE_PATHS, 'tfds'))}")
    if src.kind in _SOURCE_PATHS:
        _need("data.source.path", src.path, _SOURCE_PATHS[src.kind],
              f"give the training data ({src.kind}), e.g. with the config arg data=PATH or "
              f"--config.data.source.path=PATH")
    if src.kind == "csv" and src.get("root"):
        _need("data.source.root", src.root, "dir",
              "give the folder the CSV's filepaths are relative to, or leave it empty")
    cc = config.data.get("caption", {})
    if cc.get("path"):
        _need("data.caption.path", cc.path, "file", "give a captions file or leave it empty")
    if cc.get("blip_dir"):
        _need("data.caption.blip_dir", cc.blip_dir, "dir",
              "give a local BLIP checkpoint folder or leave it empty")
    mc = config.get("model", {})
    for key, what in (("init", "the weights to start from"),
                      ("daclip", "the DA-CLIP the restorer is conditioned on")):
        if mc.get(key):
            _need(f"model.{key}", mc[key], "any",
                  f"give {what} (an official checkpoint or a run's model folder), "
                  f"or leave it empty for random weights (smoke runs only)")


def check_devices(config, n_devices: int) -> None:
    """The mesh fits `n_devices` and the batches split evenly over its data axes."""
    from daclip_jax import parallel

    axes = dict(config.get("mesh", {"data": -1}))
    try:
        shape = dict(zip(parallel.AXES, parallel.mesh_shape(axes, n_devices)))
    except ValueError as e:
        raise ConfigError(f"--config.mesh: {e}; make the axes multiply to {n_devices} "
                          f"(one of them may be -1: the devices left)") from None
    shards = shape["data"] * shape["fsdp"]
    batches = [("train.batch_size", int(config.train.batch_size))]
    if config.get("eval", {}).get("batch_size") is not None:
        batches.append(("eval.batch_size", int(config.eval.batch_size)))
    for key, size in batches:
        if size % shards:
            raise ConfigError(f"--config.{key}={size} does not split over the mesh's data axes "
                              f"(data x fsdp = {shards} devices); use a multiple of {shards}")


def _checkpoint_steps(workdir: str) -> list[int]:
    """Steps saved in `workdir` (orbax names each finished checkpoint folder by its step;
    listing them here does not create the folder, as opening a CheckpointManager would)."""
    folder = os.path.join(workdir, "checkpoints")
    return sorted(int(d) for d in os.listdir(folder) if d.isdigit()) if os.path.isdir(folder) else []


def check_workdir(workdir: str, *, resume: str = "latest", need_run: bool = False) -> None:
    """`workdir` can hold a run; with `need_run` it must hold one (eval); `resume` is valid."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"--workdir {workdir} is a file; give a folder for the run")
    resume = str(resume)
    if resume not in ("latest", "none", "skip") and not resume.isdigit():
        raise ConfigError(f"--resume {resume}: use latest, none or a step number")
    steps = _checkpoint_steps(workdir)
    if need_run and not steps:
        raise ConfigError(f"--workdir {workdir} holds no training run (no checkpoints in "
                          f"{os.path.join(workdir, 'checkpoints')}); give the workdir of a "
                          f"`daclip-jax train` run")
    if resume == "none" and steps:
        raise ConfigError(f"--resume none: {workdir} already holds checkpoints (latest {steps[-1]}); "
                          f"use --resume latest or another --workdir")
    if resume.isdigit() and int(resume) not in steps:
        raise ConfigError(f"--resume {resume}: no checkpoint of that step in {workdir} "
                          f"(has: {', '.join(map(str, steps)) or 'none'})")
