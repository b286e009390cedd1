"""Device mesh, parameter partitioning rules and multi-host setup.

One mesh with three axes, ``data``, ``fsdp`` and ``tensor`` (any may be 1):

* the batch is split over ``('data', 'fsdp')`` (FSDP is data parallelism whose
  parameters and optimiser state are sharded too);
* large parameters are split along ``fsdp`` on their largest divisible dimension;
* attention / MLP kernels (and conv output channels) are split along ``tensor``,
  Megatron style: column-parallel in-projections, row-parallel out-projections.

Axis types are ``Auto`` on purpose: the models are written without sharding
annotations, so GSPMD propagation (the classic pjit behaviour) decides the
activation layouts from the parameter and batch shardings. ``jax.make_mesh``
defaults to ``Explicit`` in this JAX, which would ask every matmul with a sharded
contracting dimension for an explicit ``out_sharding``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "tensor")
# The batch dimension of every input and activation.
BATCH_AXES = ("data", "fsdp")

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- multi-host

def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None,
                           local_device_ids: Sequence[int] | None = None) -> None:
    """Start JAX's distributed runtime when more than one process takes part.

    With no arguments JAX auto-detects the cluster (TPU pod metadata, SLURM
    ``SLURM_*`` variables, Open MPI); explicit arguments are for local processes
    (``launch/local_multiprocess.sh``). A single plain process is left alone so
    laptops and tests don't wait for a coordinator. Safe to call twice.
    """
    if jax.distributed.is_initialized():
        return
    explicit = coordinator_address is not None or num_processes not in (None, 1)
    if not explicit and not _in_cluster():
        return
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               local_device_ids=local_device_ids)
    log.info("jax.distributed: process %d of %d, %d local / %d global devices",
             jax.process_index(), jax.process_count(), jax.local_device_count(),
             jax.device_count())


def _in_cluster() -> bool:
    env = os.environ
    if env.get("DACLIP_JAX_DISTRIBUTED") == "1":  # launchers that rely on auto-detection
        return True
    if int(env.get("SLURM_NTASKS", "1")) > 1 or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return True
    # TPU pod slices: several workers listed by the TPU runtime.
    return len([w for w in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if w]) > 1


def is_main_process() -> bool:
    """Host 0 writes logs, TensorBoard events and exported models."""
    return jax.process_index() == 0


# ----------------------------------------------------------------------------- mesh

def mesh_shape(axes: Mapping[str, int], n_devices: int) -> tuple[int, ...]:
    """Resolve ``{'data': -1, 'fsdp': 2, 'tensor': 1}`` against the device count."""
    unknown = set(axes) - set(AXES)
    if unknown:
        raise ValueError(f"unknown mesh axes {sorted(unknown)}; use {AXES}")
    sizes = [int(axes.get(a, 1)) for a in AXES]
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {dict(zip(AXES, sizes))}")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if n_devices % known:
            raise ValueError(f"{n_devices} devices are not divisible by {known}")
        sizes[sizes.index(-1)] = n_devices // known
    if int(np.prod(sizes)) != n_devices:
        raise ValueError(f"mesh {dict(zip(AXES, sizes))} needs {int(np.prod(sizes))} devices, "
                         f"there are {n_devices}")
    return tuple(sizes)


def make_mesh(axes: Mapping[str, int] | None = None, devices=None) -> Mesh:
    """A ``(data, fsdp, tensor)`` mesh over all (global) devices, Auto axis types.

    Devices of several TPU slices (multi-slice, joined by the data-centre network) get a
    hybrid mesh: the slices split the ``data`` axis (its outer part crosses DCN: one gradient
    all-reduce per step), while ``fsdp`` and ``tensor``, whose collectives run every layer,
    stay inside a slice on its fast interconnect."""
    devices = jax.devices() if devices is None else list(devices)
    shape = mesh_shape(dict(axes or {"data": -1}), len(devices))
    types = (AxisType.Auto,) * len(AXES)
    n_slices = len({getattr(d, "slice_index", 0) for d in devices})
    if n_slices == 1:
        return jax.make_mesh(shape, AXES, axis_types=types, devices=devices)
    if shape[0] % n_slices:
        raise ValueError(f"mesh {dict(zip(AXES, shape))} over {n_slices} slices: the data axis "
                         f"({shape[0]}) must be a multiple of the slice count")
    from jax.experimental import mesh_utils
    ici = (shape[0] // n_slices, *shape[1:])
    grid = mesh_utils.create_hybrid_device_mesh(ici, (n_slices, 1, 1), devices)
    return Mesh(grid, AXES, axis_types=types)


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_size_per_shard(mesh: Mesh, global_batch: int) -> int:
    n = mesh.shape["data"] * mesh.shape["fsdp"]
    if global_batch % n:
        raise ValueError(f"global batch {global_batch} is not divisible by data*fsdp = {n}")
    return global_batch // n


def constrain_batch(x, dim: int = 0):
    """Pin an activation's batch dim (``dim``) to the data axes of the current mesh.

    A no-op outside a mesh context, so model code may call it unconditionally.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(BATCH_AXES) <= set(mesh.axis_names):
        return x

    def one(a):
        spec = [None] * a.ndim
        spec[dim] = BATCH_AXES
        return jax.lax.with_sharding_constraint(a, P(*spec))
    return jax.tree.map(one, x)


def put(tree, shardings):
    """Place host values (identical on every process) onto global shardings.

    ``make_array_from_callback`` only touches the local shards, so it works the same
    with one process or many.
    """
    def one(x, s):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])
    return jax.tree.map(one, tree, shardings)


def fetch(tree):
    """Global arrays -> full numpy arrays on every process (an all-gather across hosts)."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, jax.device_get(tree))
    from jax.experimental import multihost_utils
    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


# ----------------------------------------------------------------------------- rules

@dataclasses.dataclass(frozen=True)
class ShardingRules:
    """How parameters map onto the mesh.

    ``tensor_rules``: (regex on the '/'-joined parameter path, dim) pairs; the first
    match puts ``tensor`` on that dim of a rank>=2 parameter (dims count from the
    end: -1 = output features of a Linear kernel (in, out) / output channels of an
    HWIO conv, -2 = input features). Linear kernels come first so attention and MLP
    follow Megatron's column/row split; the last rule gives any 4-d conv kernel
    ``tensor`` on its output channels (MaxDiffusion's ``out_channels`` rule).

    ``fsdp_min_size``: parameters with fewer elements stay replicated (sharding a
    LayerNorm scale costs more in collectives than it saves in memory).
    """

    tensor_rules: tuple[tuple[str, int], ...] = (
        # column-parallel: q/k/v, fused in-projections, first MLP layer
        (r"(in_proj|q_proj|k_proj|v_proj|qkv|to_q|to_k|to_v|c_fc|fc1|mlp/layers/0|"
         r"ff/.*proj|query|key|value)(/|$)", -1),
        # row-parallel: attention output, second MLP layer
        (r"(out_proj|c_proj|fc2|to_out|mlp/layers/2|ff/net/2|attention_out)(/|$)", -2),
        (r"conv", -1),
    )
    fsdp_min_size: int = 2 ** 16

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> "ShardingRules":
        if not cfg:
            return cls()
        kw = {}
        if cfg.get("tensor_rules") is not None:
            kw["tensor_rules"] = tuple((str(r), int(d)) for r, d in cfg["tensor_rules"])
        if cfg.get("fsdp_min_size") is not None:
            kw["fsdp_min_size"] = int(cfg["fsdp_min_size"])
        return cls(**kw)


def path_str(path) -> str:
    """'/'-joined readable name of a pytree key path (nnx's trailing `.value` dropped)."""
    parts = []
    for k in path:
        if isinstance(k, jax.tree_util.DictKey):
            parts.append(str(k.key))
        elif isinstance(k, jax.tree_util.SequenceKey):
            parts.append(str(k.idx))
        elif isinstance(k, jax.tree_util.GetAttrKey):
            if k.name != "value":
                parts.append(k.name)
        else:
            parts.append(str(k).strip(".[]'"))
    return "/".join(parts)


def param_spec(name: str, shape: Sequence[int], mesh_axes: Mapping[str, int],
               rules: ShardingRules = ShardingRules()) -> P:
    """PartitionSpec for one parameter. Dims that don't divide stay unsharded."""
    spec: list[Any] = [None] * len(shape)
    tensor, fsdp = mesh_axes.get("tensor", 1), mesh_axes.get("fsdp", 1)
    if tensor > 1 and len(shape) >= 2:
        for pattern, dim in rules.tensor_rules:
            if re.search(pattern, name):
                d = dim % len(shape)
                if shape[d] % tensor == 0:
                    spec[d] = "tensor"
                break
    if fsdp > 1 and int(np.prod(shape, dtype=np.int64)) >= rules.fsdp_min_size:
        free = [d for d in range(len(shape)) if spec[d] is None and shape[d] % fsdp == 0]
        if free:
            spec[max(free, key=lambda d: (shape[d], d))] = "fsdp"
    while spec and spec[-1] is None:  # P(None, None) -> P(): one spelling per layout
        spec.pop()
    return P(*spec)


def tree_shardings(tree, mesh: Mesh, rules: ShardingRules = ShardingRules()):
    """NamedShardings for a pytree of parameter-like leaves (arrays or ShapeDtypeStructs).

    Scalars and non-array leaves are replicated.
    """
    axes = dict(mesh.shape)

    def one(path, leaf):
        shape = getattr(leaf, "shape", ())
        if not shape:
            return NamedSharding(mesh, P())
        return NamedSharding(mesh, param_spec(path_str(path), shape, axes, rules))

    return jax.tree_util.tree_map_with_path(one, tree)


def describe(tree, shardings) -> str:
    """One line per parameter: name, shape, spec (for the run log)."""
    lines = []
    for (path, leaf), sh in zip(jax.tree_util.tree_leaves_with_path(tree),
                                jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))):
        lines.append(f"{path_str(path):70s} {str(tuple(leaf.shape)):20s} {sh.spec}")
    return "\n".join(lines)
