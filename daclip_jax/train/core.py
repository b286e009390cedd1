"""The one training loop: config → mesh → data → model → loss → update → checkpoint → eval.

A :class:`Task` says what differs between trainers: how the model is built (and
which pretrained weights it starts from), which variables train, the loss, the
evaluation and the exported model. Everything else — sharding, the jitted step,
gradient accumulation, the non-finite guard, EMA, checkpoints with exact resume,
preemption, TensorBoard and the console — lives here once.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import logging
import os
import shutil
import signal
import time
from typing import Any, Callable, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from daclip_jax import parallel
from daclip_jax.train import checkpointing, optim
from daclip_jax.train.state import TrainState, init_state, make_train_step, state_shardings
from daclip_jax.train.writer import MetricWriter

log = logging.getLogger(__name__)


class NonFiniteError(FloatingPointError):
    """The loss or the gradient norm became NaN/Inf; the run stopped before saving it."""


class Task(abc.ABC):
    """What one trainer specialises. Subclasses keep ``config`` and implement the rest."""

    name: str = "task"
    #: nnx filter of the trained variables; everything else is frozen
    trainable: Any = nnx.Param
    #: batch keys the step uses (others are not sent to the devices)
    batch_keys: tuple[str, ...] = ()

    def __init__(self, config):
        self.config = config

    @abc.abstractmethod
    def build_model(self, rngs: nnx.Rngs) -> nnx.Module:
        """The full model, frozen parts included, with its starting weights."""

    @abc.abstractmethod
    def loss(self, model: nnx.Module, batch: dict, rng) -> tuple[jax.Array, dict]:
        """Scalar loss on the (global) batch and a dict of scalar metrics."""

    def project(self, params):
        """Constraint applied to the trainable state after every update (default: none)."""
        return params

    def evaluate(self, model: nnx.Module, batches: Iterable[dict], mesh) -> tuple[dict, dict]:
        """Validation: ``(scalars, images)``; batches are global jax arrays."""
        return {}, {}

    def export(self, model: nnx.Module, path: str) -> None:
        """Write the trained model as a daclip-jax model dir (called on every process)."""

    def batch_spec(self, global_batch: int) -> dict:
        """``{key: jax.ShapeDtypeStruct}`` of a global batch as the data pipeline yields it (at
        least ``batch_keys``): `daclip-jax compile` lowers the step for it without data."""
        from daclip_jax.data.pipeline import example_spec
        return {k: jax.ShapeDtypeStruct((global_batch, *shape), dtype)
                for k, (shape, dtype) in example_spec(self.config.data).items()}

    # data: the grain pipeline of daclip_jax.data.pipeline.build_pipeline, unless a test or caller
    # overrides dataset()
    def dataset(self, split: str, *, seed: int, process_index: int, process_count: int):
        from daclip_jax.data.pipeline import build_pipeline
        return build_pipeline(self.config.data, split=split, seed=seed,
                              global_batch_size=self.global_batch_size(split),
                              process_index=process_index, process_count=process_count)

    def global_batch_size(self, split: str) -> int:
        if split == "train":
            return int(self.config.train.batch_size)
        return int(self.config.eval.get("batch_size", self.config.train.batch_size))


# ----------------------------------------------------------------------------- helpers

def jit_init(make: Callable[[], nnx.Module]) -> nnx.Module:
    """Build a randomly initialised module in one compiled call.

    Eager nnx construction dispatches every initialiser op by op (over a minute for the
    tiny UNet on a busy 2-core machine); tracing it once is seconds. ``make`` must be
    pure (no file reads); loaded weights go through the converters instead.
    """
    graphdef, _ = nnx.split(nnx.eval_shape(make))
    state = jax.jit(lambda: nnx.split(make())[1])()
    return nnx.merge(graphdef, state)


def to_global(batch: dict, mesh, keys: Iterable[str] | None = None) -> dict:
    """Per-process numpy batch → global jax arrays sharded along ('data', 'fsdp')."""
    from daclip_jax.data.global_batch import to_global as _to_global
    if keys:
        batch = {k: batch[k] for k in keys}
    return _to_global(batch, mesh, parallel.P(parallel.BATCH_AXES))


class _Preemption:
    """SIGTERM → save and stop at the next step boundary.

    With several processes JAX's own preemption notifier owns SIGTERM and the
    decision must be collective, so we ask ``reached_preemption`` (orbax → JAX's
    sync point) instead of a local flag.
    """

    def __init__(self, manager):
        self.manager = manager
        self.flag = False
        self._old = None
        if jax.process_count() == 1:
            try:
                self._old = signal.signal(signal.SIGTERM, self._handle)
            except ValueError:  # not the main thread
                self._old = None

    def _handle(self, signum, frame):
        log.warning("SIGTERM received: saving a checkpoint at the next step")
        self.flag = True

    def reached(self, step: int) -> bool:
        if jax.process_count() > 1:
            return bool(self.manager.reached_preemption(step))
        return self.flag

    def restore(self):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


# ----------------------------------------------------------------------------- the step program

@dataclasses.dataclass
class StepProgram:
    """What the trainer compiles, and how its inputs are laid out on the mesh.

    Built from parameter *shapes* alone, so the trainer (real arrays) and `daclip-jax compile`
    (abstract ones, for a TPU topology on any machine) get the same jitted step with the same
    shardings: what compiles there is what runs here."""
    tx: Any
    schedule: Any
    ema_cfg: Any
    state_shardings: TrainState      # NamedSharding per leaf of the train state
    frozen_shardings: Any            # NamedSharding per leaf of the frozen state
    abstract_state: TrainState       # ShapeDtypeStructs carrying those shardings
    abstract_frozen: Any
    step: Any                        # jax.jit(step, ...): (state, frozen, batch) -> (state, metrics)

    def abstract_batch(self, task: "Task", mesh, split: str = "train") -> dict:
        """The global batch the step sees, as sharded ShapeDtypeStructs (what `to_global` makes)."""
        spec = task.batch_spec(task.global_batch_size(split))
        keys = task.batch_keys or tuple(spec)
        return {k: jax.ShapeDtypeStruct(spec[k].shape, spec[k].dtype,
                                        sharding=parallel.batch_sharding(mesh, len(spec[k].shape)))
                for k in keys}


def build_step_program(config, task: "Task", mesh, rules, graphdef, params, frozen) -> StepProgram:
    """The optimiser, the shardings of state and frozen weights by ``rules``, and the jitted
    train step, from ``params`` / ``frozen`` (arrays or ShapeDtypeStructs: only shapes are read)."""
    tc = config.train
    tx, schedule = optim.make_optimizer(tc)
    ec = config.get("ema")
    ema_cfg = ec if ec is not None and float(ec.get("decay", 0)) > 0 else None
    rng = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0)))
    shape = jax.eval_shape(lambda p, r: TrainState(
        step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p),
        ema=p if ema_cfg else None, rng=r), params, rng)
    shardings = state_shardings(shape, tx, mesh, rules)
    frozen_sh = parallel.tree_shardings(frozen, mesh, rules)
    step_fn = make_train_step(graphdef, task.loss, tx, schedule,
                              accum_steps=int(tc.get("accum_steps", 1)), ema_cfg=ema_cfg,
                              project=task.project)
    step = jax.jit(step_fn, in_shardings=(shardings, frozen_sh, None),
                   out_shardings=(shardings, parallel.replicated(mesh)), donate_argnums=(0,))
    return StepProgram(tx=tx, schedule=schedule, ema_cfg=ema_cfg, state_shardings=shardings,
                       frozen_shardings=frozen_sh,
                       abstract_state=checkpointing.abstract_like(shape, shardings),
                       abstract_frozen=checkpointing.abstract_like(frozen, frozen_sh), step=step)


# ----------------------------------------------------------------------------- trainer

class Trainer:
    """Builds everything for ``task`` from ``config`` and runs :meth:`train`."""

    def __init__(self, config, workdir: str, task: Task, *, resume: str = "latest",
                 dataset_fn: Callable | None = None, devices=None):
        self.config, self.task = config, task
        self.workdir = os.path.abspath(workdir)
        tc = config.train
        self.total_steps = int(tc.steps)
        self.mesh = parallel.make_mesh(dict(config.get("mesh", {"data": -1})), devices)
        self.rules = parallel.ShardingRules.from_config(config.get("sharding"))
        parallel.batch_size_per_shard(self.mesh, task.global_batch_size("train"))
        self._dataset_fn = dataset_fn or task.dataset

        # model → (graphdef, trainable, frozen), all placed by the rules
        model = task.build_model(nnx.Rngs(int(config.get("seed", 0))))
        self.graphdef, params, frozen = nnx.split(model, task.trainable, ...)
        del model
        self.program = build_step_program(config, task, self.mesh, self.rules, self.graphdef,
                                          params, frozen)
        p = self.program
        self.tx, self.schedule, self.ema_cfg = p.tx, p.schedule, p.ema_cfg
        self.shardings, self.abstract_state = p.state_shardings, p.abstract_state
        self.frozen = parallel.put(frozen, p.frozen_shardings)
        params = parallel.put(params, p.state_shardings.params)
        rng = jax.random.key_data(jax.random.key(int(config.get("seed", 0)) + 1))
        with jax.set_mesh(self.mesh):
            self.state = init_state(params, self.tx, rng, with_ema=self.ema_cfg is not None,
                                    shardings=self.shardings)
        self._step = p.step

        # data + checkpoints
        cc = config.get("ckpt", {})
        self.ckpt = checkpointing.Checkpointer(
            os.path.join(self.workdir, "checkpoints"), keep=int(cc.get("keep", 3)),
            keep_best=int(cc.get("keep_best", 1)), best_metric=cc.get("best_metric"),
            best_mode=cc.get("best_mode", "max"), async_save=bool(cc.get("async_save", True)))
        self.train_ds = self._dataset_fn("train", seed=int(config.get("seed", 0)),
                                         process_index=jax.process_index(),
                                         process_count=jax.process_count())
        self.train_iter = iter(self.train_ds)
        self._resume(resume)
        self.writer = MetricWriter(self.workdir, self.total_steps,
                                   enabled=parallel.is_main_process())

    # ------------------------------------------------------------------ resume
    def _resume(self, resume: str | int | None) -> None:
        resume = "latest" if resume is None else str(resume)
        if resume == "skip":  # the caller restores what it needs (eval)
            return
        latest = self.ckpt.latest_step()
        if resume == "none":
            if latest is not None:
                raise FileExistsError(
                    f"{self.ckpt.directory} already holds checkpoints (latest {latest}); "
                    f"use --resume latest or another --workdir")
            return
        step = latest if resume == "latest" else int(resume)
        if step is None:
            return
        self.state, meta = self.ckpt.restore(step, self.abstract_state, data_iter=self.train_iter)
        log.info("resumed from step %d (%s)", step, self.ckpt.directory)
        if parallel.is_main_process():
            print(f"resumed from checkpoint {step} in {self.ckpt.directory}", flush=True)

    def load(self, step: int | None = None) -> int:
        """Restore the train state of checkpoint ``step`` (latest if None), not the data."""
        self.state, _ = self.ckpt.restore(step, self.abstract_state)
        return int(jax.device_get(self.state.step))

    # ------------------------------------------------------------------ pieces
    def model(self, use_ema: bool = False) -> nnx.Module:
        params = self.state.ema if use_ema and self.state.ema is not None else self.state.params
        return nnx.merge(self.graphdef, params, self.frozen)

    def save(self, step: int, metrics: dict | None = None, force: bool = False) -> None:
        meta = dict(task=self.task.name, config=json.loads(self.config.to_json_best_effort()))
        self.ckpt.save(step, self.state, data_iter=self.train_iter, meta=meta,
                       metrics=metrics, force=force)

    def evaluate(self, step: int) -> dict:
        ec = self.config.get("eval", {})
        n = int(ec.get("batches", 1))
        ds = self._dataset_fn("val", seed=int(self.config.get("seed", 0)),
                              process_index=jax.process_index(),
                              process_count=jax.process_count())
        it = iter(ds)
        batches = (to_global(next(it), self.mesh) for _ in range(n))
        t0 = time.perf_counter()
        with jax.set_mesh(self.mesh):
            scalars, images = self.task.evaluate(self.model(bool(ec.get("use_ema", False))),
                                                 batches, self.mesh)
        scalars = {f"val/{k}": float(v) for k, v in scalars.items()}
        self.writer.scalars(step, dict(scalars, **{"perf/eval_s": time.perf_counter() - t0}))
        self.writer.images(step, {f"val/{k}": v for k, v in images.items()})
        if parallel.is_main_process() and scalars:
            print(f"[{step}] eval " + " ".join(f"{k}={v:.4g}" for k, v in scalars.items()),
                  flush=True)
        return scalars

    # ------------------------------------------------------------------ loop
    def train(self) -> TrainState:
        tc, cc, ec = self.config.train, self.config.get("ckpt", {}), self.config.get("eval", {})
        log_every = int(tc.get("log_every", 50))
        ckpt_every = int(cc.get("every", 1000))
        eval_every = int(ec.get("every", 0))
        examples = self.task.global_batch_size("train")
        preempt = _Preemption(self.ckpt.manager)
        step = int(jax.device_get(self.state.step))
        first = step
        pending = None  # metrics of the last dispatched step, read one step late
        try:
            while step < self.total_steps:
                try:
                    local = next(self.train_iter)
                except StopIteration:
                    raise RuntimeError(f"the training data ran out at step {step}; "
                                       f"set data.num_epochs=None (repeat) or fewer train.steps")
                batch = to_global(local, self.mesh, self.task.batch_keys or None)
                with jax.set_mesh(self.mesh):
                    self.state, metrics = self._step(self.state, self.frozen, batch)
                if pending is not None:
                    self._check_and_log(*pending, log_every, examples)
                step += 1
                pending = (step, metrics)
                boundary = step == self.total_steps or step % ckpt_every == 0
                do_eval = eval_every and (step % eval_every == 0 or step == self.total_steps)
                stop = preempt.reached(step)
                if boundary or do_eval or stop:
                    self._check_and_log(*pending, log_every, examples)
                    pending = None
                    scores = self.evaluate(step) if do_eval else None
                    if boundary or stop or scores:
                        self.save(step, metrics=scores, force=stop)
                if stop:
                    self.ckpt.wait()
                    if parallel.is_main_process():
                        print(f"preempted: saved step {step}, exiting", flush=True)
                    break
            if pending is not None:
                self._check_and_log(*pending, log_every, examples)
            self.ckpt.wait()
        finally:
            preempt.restore()
            self.writer.flush()
        if step >= self.total_steps and step > first and self.config.get("export", True):
            self.export()
        return self.state

    def _check_and_log(self, step: int, metrics, log_every: int, examples: int) -> None:
        metrics = jax.device_get(metrics)
        if int(metrics.pop("nonfinite")):
            self.ckpt.wait()  # let an in-flight (good) checkpoint finish; nothing bad is saved
            raise NonFiniteError(
                f"non-finite loss ({float(metrics['loss'])}) or grad norm "
                f"({float(metrics['grad_norm'])}) at step {step}; the update was skipped and "
                f"the last checkpoint ({self.ckpt.latest_step()}) is the last good state")
        if step % log_every == 0 or step == self.total_steps:
            scalars = {f"train/{k}": float(v) for k, v in metrics.items()}
            rates = self.writer.progress(step, scalars, examples)
            self.writer.scalars(step, dict(scalars, **rates))

    def export(self) -> str:
        """``<workdir>/model`` (final weights) and, with an EMA, ``<workdir>/model_ema``:
        daclip-jax model dirs that ``classify`` / ``restore`` / ``load_*`` read directly."""
        rep = parallel.replicated(self.mesh)
        gather = jax.jit(lambda p: p, out_shardings=rep)
        frozen = gather(self.frozen)
        path = os.path.join(self.workdir, "model")
        self.task.export(nnx.merge(self.graphdef, gather(self.state.params), frozen), path)
        if self.state.ema is not None:
            self.task.export(nnx.merge(self.graphdef, gather(self.state.ema), frozen),
                             os.path.join(self.workdir, "model_ema"))
        return path

    def close(self) -> None:
        self.ckpt.close()
        self.writer.close()


TASKS = {
    "daclip": "daclip_jax.train.daclip_task:DaClipTask",
    "clip": "daclip_jax.train.clip_task:ClipTask",
    "restoration": "daclip_jax.train.restoration_task:RestorationTask",
}


def get_task(name: str) -> type[Task]:
    import importlib
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def train(config, workdir: str, task: Task | None = None, *, resume: str = "latest",
          dataset_fn: Callable | None = None) -> TrainState:
    """Run (or resume) a training run described by ``config`` in ``workdir``."""
    dc = config.get("distributed", {})
    parallel.initialize_distributed(dc.get("coordinator_address"), dc.get("num_processes"),
                                    dc.get("process_id"))
    task = task or get_task(config.task)(config)
    if "data" in config and not config.data.get("workdir"):
        config.data.workdir = workdir  # the files the data skipped are listed in the run
    fresh = not os.path.exists(workdir)
    try:
        trainer = Trainer(config, workdir, task, resume=resume, dataset_fn=dataset_fn)
    except BaseException:
        if fresh and parallel.is_main_process():  # a run that never started leaves no workdir
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    try:
        if parallel.is_main_process():
            os.makedirs(trainer.workdir, exist_ok=True)
            with open(os.path.join(trainer.workdir, "config.json"), "w") as f:
                f.write(config.to_json_best_effort(indent=2))
        return trainer.train()
    finally:
        trainer.close()
