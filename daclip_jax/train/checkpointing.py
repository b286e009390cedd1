"""Training checkpoints: one orbax ``CheckpointManager`` per run directory.

A checkpoint ``<workdir>/checkpoints/<step>/`` holds three items:

* ``state``: the train state (step, trainable params, optimiser state, EMA, RNG key),
  saved as a nested dict keyed by parameter path so it restores into any mesh;
* ``data_iter``: the grain iterator position, one json per process;
* ``meta``: json with the step, the config and the metrics of that step.

Saves are asynchronous (training continues while the previous step is written);
orbax writes into a temporary directory and renames it when complete, so a crash
mid-write leaves the previous checkpoint as the latest loadable one (the partial
directory is removed on the next start). Retention keeps the newest ``keep``
checkpoints plus the ``keep_best`` best by a validation metric. The frozen towers
are not saved: they are rebuilt from ``config.model`` on resume (a ViT-B/32
DA-CLIP would otherwise add ~600 MB of constant weights to every checkpoint).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from daclip_jax.parallel import path_str

log = logging.getLogger(__name__)


def to_nested(tree) -> dict:
    """Pytree -> nested dict of its leaves keyed by path parts (orbax-friendly, mesh-free)."""
    out: dict = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        parts = path_str(path).split("/") if path else ["_"]
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = leaf
    return out


def from_nested(template, nested: Mapping):
    """Inverse of :func:`to_nested` against a template with the same structure."""
    def get(path, _):
        node = nested
        for p in (path_str(path).split("/") if path else ["_"]):
            node = node[p]
        return node
    return jax.tree_util.tree_map_with_path(get, template)


def _json_safe(metrics: Mapping[str, Any] | None) -> dict:
    out = {}
    for k, v in (metrics or {}).items():
        try:
            out[k] = float(np.asarray(v))
        except (TypeError, ValueError):
            continue
    return out


class Checkpointer:
    """Save/restore ``(state, data iterator, meta)`` under ``directory``."""

    def __init__(self, directory: str, *, keep: int = 3, keep_best: int = 0,
                 best_metric: str | None = None, best_mode: str = "max",
                 async_save: bool = True):
        self.directory = os.path.abspath(directory)
        self.best_metric = best_metric
        policies: list = [pp.LatestN(n=max(int(keep), 1))]
        if best_metric and keep_best:
            if best_mode not in ("max", "min"):
                raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
            policies.append(pp.BestN(get_metric_fn=lambda m: m[best_metric],
                                     reverse=best_mode == "min", n=int(keep_best),
                                     keep_checkpoints_without_metrics=False))
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                preservation_policy=pp.AnyPreservationPolicy(policies),
                # best_fn only makes orbax write the metrics item (retention is the policy's)
                best_fn=(lambda m: m[best_metric]) if best_metric and keep_best else None,
                best_mode=best_mode,
                enable_async_checkpointing=async_save,
                cleanup_tmp_directories=True,
                create=True),
        )

    # ------------------------------------------------------------------ queries
    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def best_step(self) -> int | None:
        """Step with the best ``best_metric`` among kept checkpoints (None if none has it)."""
        if not self.best_metric:
            return None
        scored = []
        for s in self.all_steps():
            m = self.manager.metrics(s) or {}
            if self.best_metric in m:
                scored.append((m[self.best_metric], s))
        return max(scored)[1] if scored else None

    # ------------------------------------------------------------------ save
    def save(self, step: int, state, *, data_iter=None, meta: Mapping | None = None,
             metrics: Mapping | None = None, force: bool = False) -> bool:
        """Start an (async) save; every process must call it. ``metrics`` drive keep-best."""
        items = dict(state=ocp.args.StandardSave(to_nested(state)),
                     meta=ocp.args.JsonSave(dict(meta or {}, step=int(step))))
        if data_iter is not None:
            items["data_iter"] = _grain_save(data_iter)
        metrics = _json_safe(metrics)
        if self.best_metric and self.best_metric not in metrics:
            metrics = None  # no validation at this step: not a keep-best candidate
        saved = self.manager.save(int(step), args=ocp.args.Composite(**items),
                                  metrics=metrics or None, force=force)
        if saved:
            log.info("checkpoint %d -> %s", step, self.directory)
        return saved

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    # ------------------------------------------------------------------ restore
    def restore(self, step: int | None, abstract_state, *, data_iter=None):
        """Restore into ``abstract_state`` (ShapeDtypeStructs carrying the target shardings,
        so a run saved on one mesh restores on another). ``data_iter``, when given, is
        moved to the saved position in place. Returns ``(state, meta)``.
        """
        step = self.latest_step() if step is None else int(step)
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        items = dict(state=ocp.args.StandardRestore(to_nested(abstract_state)),
                     meta=ocp.args.JsonRestore())
        if data_iter is not None:
            items["data_iter"] = _grain_restore(data_iter)
        out = self.manager.restore(step, args=ocp.args.Composite(**items))
        return from_nested(abstract_state, out["state"]), dict(out["meta"])


def _grain_save(it):
    import grain
    return grain.checkpoint.CheckpointSave(it)


def _grain_restore(it):
    import grain
    return grain.checkpoint.CheckpointRestore(it)


def abstract_like(tree, shardings):
    """ShapeDtypeStructs with the given shardings (the restore target)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)
