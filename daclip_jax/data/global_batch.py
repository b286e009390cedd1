"""Per-process numpy batches -> global jax.Arrays sharded over the mesh's batch axes."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

DEFAULT_SPEC = P(("data", "fsdp"))


def batch_spec(mesh, spec=DEFAULT_SPEC) -> P:
    """`spec` restricted to the axes `mesh` has (a mesh without 'fsdp' shards over 'data' only)."""
    first = spec[0] if len(spec) else None
    if first is None:
        return spec
    axes = first if isinstance(first, tuple) else (first,)
    kept = tuple(a for a in axes if a in mesh.axis_names)
    return P(kept if kept else None, *spec[1:])


def to_global(batch: dict, mesh, spec=DEFAULT_SPEC) -> dict:
    """Each process passes its own rows; every leaf becomes one global array whose leading
    (batch) dimension is the concatenation over processes, sharded by `spec` on `mesh`."""
    sharding = NamedSharding(mesh, batch_spec(mesh, spec))

    def one(x):
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree.map(one, batch)
