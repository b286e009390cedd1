"""Sources around another source, used by the pipeline: held-out subsets (`SubsetSource`),
type-balanced epochs (`TypeBalancedSource`), an in-memory LRU of decoded records
(`CachedSource`) and deterministic replacement of unreadable records (`SafeSource`)."""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Sequence

import numpy as np

from daclip_jax.data.sources.base import Source
from daclip_jax.data.sources.decode import _imageio
from daclip_jax.data.sources.paired import PairedFolderSource

log = logging.getLogger(__name__)


class WrappedSource(Source):
    """A source that maps its indices onto another's (`_parent_index`, identity here) and
    delegates length, ids and descriptions; subclasses change the mapping or `load`."""

    def __init__(self, parent: Source):
        self.parent, self.name, self.skipped = parent, parent.name, parent.skipped

    def _parent_index(self, index: int) -> int:
        return index

    def __len__(self):
        return len(self.parent)

    def load(self, index):
        return self.parent.load(self._parent_index(index))

    def record_id(self, index):
        return self.parent.record_id(self._parent_index(index))

    def describe(self, index):
        return self.parent.describe(self._parent_index(index))


class SubsetSource(WrappedSource):
    """A view on `indices` of another source (held-out splits)."""

    def __init__(self, parent: Source, indices: Sequence[int]):
        super().__init__(parent)
        self.indices = np.asarray(indices, dtype=np.int64)

    def _parent_index(self, index: int) -> int:
        return int(self.indices[index])

    def __len__(self):
        return len(self.indices)


class TypeBalancedSource(WrappedSource):
    """Every degradation type equally often, like the official MDDataset's round-robin over types.

    Index i -> type i % T, then that type's (i // T) % n_t-th pair: each epoch has
    T * max_t(n_t) records, shows every pair at least once, and repeats the smaller types.
    The pipeline's global shuffle then mixes the types within batches.
    """

    def __init__(self, parent: Source, types: Sequence[str]):
        if len(types) != len(parent):
            raise ValueError("one type per record is needed")
        super().__init__(parent)
        groups: dict[str, list[int]] = {}
        for i, t in enumerate(types):
            groups.setdefault(t, []).append(i)
        self.types = sorted(groups)
        self.groups = [groups[t] for t in self.types]
        self._len = len(self.types) * max(len(g) for g in self.groups)

    def _parent_index(self, index: int) -> int:
        group = self.groups[index % len(self.groups)]
        return group[(index // len(self.groups)) % len(group)]

    def __len__(self):
        return self._len


def record_types(source: Source) -> list[str] | None:
    """The degradation folder of every record of a paired source (through subsets), else None."""
    if isinstance(source, CachedSource):
        return record_types(source.parent)
    if isinstance(source, PairedFolderSource):
        return [deg for deg, _, _ in source.items]
    if isinstance(source, SubsetSource):
        parent = record_types(source.parent)
        return None if parent is None else [parent[int(i)] for i in source.indices]
    return None


class CachedSource(WrappedSource):
    """A bounded in-memory LRU of decoded records (compact form) around another source.

    Decoding dominates the per-sample cost of file sources (a 512 px PNG takes as long as most
    degradations), and every sample crops a different patch of the same photo: when the data
    set fits in `max_bytes`, each image is decoded once per process. Per process: a pickled copy
    (a grain worker) starts empty and fills its own cache, so the memory bound is per worker.
    Failed reads are not cached (SafeSource sees them every time). Cached arrays are read-only.
    """

    def __init__(self, parent: Source, max_bytes: int):
        super().__init__(parent)
        self.max_bytes = int(max_bytes)
        self._reset()

    def _reset(self):
        self._cache: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()
        self.nbytes = 0
        self.hits = self.misses = 0

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items()
                if k not in ("_cache", "_lock", "nbytes", "hits", "misses")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._reset()

    def load(self, index):
        with self._lock:
            rec = self._cache.get(index)
            if rec is not None:
                self._cache.move_to_end(index)
                self.hits += 1
                return dict(rec)
            self.misses += 1
        rec = dict(self.parent.load(index))
        size = sum(v.nbytes for v in rec.values() if isinstance(v, np.ndarray))
        if size <= self.max_bytes:
            for v in rec.values():
                if isinstance(v, np.ndarray):
                    v.setflags(write=False)
            with self._lock:
                if index not in self._cache:
                    self._cache[index] = rec
                    self.nbytes += size
                while self.nbytes > self.max_bytes:
                    _, old = self._cache.popitem(last=False)
                    self.nbytes -= sum(v.nbytes for v in old.values() if isinstance(v, np.ndarray))
        return dict(rec)


class SafeSource(WrappedSource):
    """Never raises for a bad file: returns a deterministic other record instead and counts it.

    Record i that fails is replaced by the first readable record among i+s, i+2s, ... (mod n)
    with a stride s derived from i, so the replacement depends only on the index (same on every
    worker and after a restore). After `max_tries` failures in a row the error is raised: then
    the data are broken, not one file.
    """

    def __init__(self, parent: Source, *, max_tries: int = 32):
        super().__init__(parent)
        self.max_tries = max_tries
        self._bad: set[int] = set()

    def load(self, index):
        imageio = _imageio()
        n = len(self.parent)
        stride = 1 + (index * 2654435761) % max(n - 1, 1)  # golden-ratio hash: spreads replacements
        last = None
        for k in range(self.max_tries):
            j = (index + k * stride) % n
            if j in self._bad:
                continue
            try:
                rec = dict(self.parent.load(j))
            except imageio.ImageReadError as e:
                self._bad.add(j)
                self.skipped.add(self.parent.describe(j), str(e), stage="read")
                log.warning("skipping unreadable record %d (%s): %s", j, self.parent.describe(j), e)
                last = e
                continue
            rec["index"] = j
            return rec
        raise RuntimeError(f"{self.max_tries} unreadable records in a row from {self.name}: {last}")
