"""`ArrayRecordSource`: our own shards written by `daclip_jax.data.pack`, and the record format
they share (`serialize_record` / `deserialize_record`, the ids.json table of record ids)."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence

import numpy as np

from daclip_jax.data.sources.base import Source
from daclip_jax.data.sources.decode import _array_to_compact, _imageio, decode_compact
from daclip_jax.data.sources.skips import NoUsableImagesError, SkipReport

# One packed record = [u32 little-endian header length][JSON header][gt bytes][lq bytes].
# The header holds id/caption/degradation/label and the byte lengths; images stay encoded
# (PNG/JPEG as they were, or PNG) so shards are as small as the originals.

def serialize_record(meta: dict, gt_bytes: bytes, lq_bytes: bytes = b"") -> bytes:
    header = dict(meta, gt_len=len(gt_bytes), lq_len=len(lq_bytes))
    h = json.dumps(header, sort_keys=True).encode("utf-8")
    return struct.pack("<I", len(h)) + h + gt_bytes + lq_bytes


def deserialize_record(blob: bytes) -> tuple[dict, bytes, bytes]:
    (n,) = struct.unpack_from("<I", blob, 0)
    header = json.loads(blob[4:4 + n].decode("utf-8"))
    start = 4 + n
    gt = blob[start:start + header["gt_len"]]
    lq = blob[start + header["gt_len"]:start + header["gt_len"] + header["lq_len"]]
    return header, gt, lq


def shard_paths(path: str | Sequence[str]) -> list[str]:
    """A shard file, a list of them, or a directory holding *.array_record files."""
    if isinstance(path, (list, tuple)):
        return [str(p) for p in path]
    if os.path.isdir(path):
        return sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".array_record"))
    return [path]


IDS_FILE = "ids.json"  # written by pack next to the shards: {shard file name: [record ids]}


def _packed_ids(paths: Sequence[str]) -> list[str] | None:
    """Record ids from the shards' ids.json, so splits need not read every record."""
    ids = []
    tables: dict[str, dict] = {}
    for p in paths:
        table_path = os.path.join(os.path.dirname(os.path.abspath(p)), IDS_FILE)
        if table_path not in tables:
            if not os.path.isfile(table_path):
                return None
            with open(table_path) as f:
                tables[table_path] = json.load(f)
        shard_ids = tables[table_path].get(os.path.basename(p))
        if shard_ids is None:
            return None
        ids.extend(shard_ids)
    return ids


class ArrayRecordSource(Source):
    """Shards written by `daclip_jax.data.pack` (directory, file or list of files)."""

    name = "array_record"

    def __init__(self, path: str | Sequence[str], *, min_size: int = 0, skipped: SkipReport | None = None):
        import grain

        self.paths = shard_paths(path)
        self.min_size = min_size
        self.skipped = skipped if skipped is not None else SkipReport()
        missing = [p for p in self.paths if not os.path.isfile(p)]
        if not self.paths or missing:
            raise NoUsableImagesError(f"array_record shards not found: {missing or path!r}")
        self.source = grain.sources.ArrayRecordDataSource(self.paths)
        self._ids = _packed_ids(self.paths)
        self._finish_index(repr(path))

    def __len__(self):
        return len(self.source)

    def record_id(self, index):
        if self._ids is not None:
            return self._ids[index]
        return deserialize_record(self.source[index])[0]["id"]

    def load(self, index):
        header, gt_bytes, lq_bytes = deserialize_record(self.source[index])
        name = header["id"] + (f" tile {header['tile']}" if header.get("tile") else "")
        rec = {"id": header["id"],
               "gt": _decode_packed(gt_bytes, header.get("gt_raw_shape"), self.min_size, name)}
        if lq_bytes:
            rec["lq"] = _decode_packed(lq_bytes, header.get("lq_raw_shape"), 0, name + " (LQ)")
            if rec["lq"].shape != rec["gt"].shape:
                raise _imageio().ImageReadError(f"{name}: LQ size != GT size")
        for key in ("caption", "degradation", "label"):
            if header.get(key):
                rec[key] = header[key]
        return rec


def _decode_packed(data: bytes, raw_shape, min_size: int, name: str) -> np.ndarray:
    """A packed image in compact form (uint8 for 8-bit data)."""
    if raw_shape is None:
        return decode_compact(data, min_size=min_size, name=name)
    try:
        arr = np.frombuffer(data, np.uint8).reshape(raw_shape)
    except ValueError as e:
        raise _imageio().ImageReadError(f"{name}: corrupt raw record ({e})") from None
    return _array_to_compact(arr, min_size, name)
