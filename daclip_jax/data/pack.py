"""Pack any image source into ArrayRecord shards that `sources.ArrayRecordSource` reads.

    daclip-jax data pack /data/DIV2K --out /data/div2k_ar --shards 64

Each record is `sources.serialize_record`: a JSON header (id, caption, degradation, label)
followed by the encoded GT and optional real LQ. Files that already are plain 8-bit RGB or
grayscale PNG/JPEG are stored byte for byte (no re-encoding, no new JPEG artefacts); anything
else is decoded with `imageio.read_image` and stored as an 8-bit PNG. Records that cannot be
read are skipped and listed in `<out>/skipped.txt`. Shard files are written contiguously
(record i goes to shard i * shards // n) with ArrayRecord `group_size:1` for fast random access;
`<out>/ids.json` lists the ids per shard so splits need not read the records.
"""

from __future__ import annotations

import io
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from daclip_jax.data import sources as S

log = logging.getLogger(__name__)

WRITER_OPTIONS = "group_size:1"


def png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _file_bytes_if_plain(path: str | None) -> bytes | None:
    """The file's bytes when it is an 8-bit RGB/L PNG or JPEG that decodes cleanly."""
    if not path or not os.path.isfile(path):
        return None
    try:
        with Image.open(path) as im:
            if im.format not in ("PNG", "JPEG") or im.mode not in ("RGB", "L"):
                return None
            if im.format == "PNG" and "transparency" in im.info:
                return None
            if im.getexif().get(0x0112, 1) != 1:  # EXIF rotation: store the rotated pixels instead
                return None
    except Exception:  # noqa: BLE001
        return None
    with open(path, "rb") as f:
        return f.read()


def _file_paths(source, index: int) -> tuple[str | None, str | None]:
    """(gt_path, lq_path) for file-based sources, else (None, None)."""
    src = source
    while isinstance(src, (S.SubsetSource, S.SafeSource)):
        if isinstance(src, S.SubsetSource):
            index = int(src.indices[index])
        src = src.parent
    if isinstance(src, S.ImageFolderSource):
        return src.paths[index], None
    if isinstance(src, S.PairedFolderSource):
        _, gt, lq = src.items[index]
        return gt, lq
    if isinstance(src, S.CsvSource):
        lq, gt, _, _ = src.items[index]
        return gt, lq
    return None, None


def encode_record(source, index: int) -> bytes:
    """One source record as packed bytes (raises ImageReadError for a bad file)."""
    rec = source[index]  # decodes: validates the file and gives the metadata
    gt_path, lq_path = _file_paths(source, index)
    gt_bytes = _file_bytes_if_plain(gt_path) or png_bytes(rec["gt"])
    lq_bytes = b""
    if rec.get("lq") is not None:
        lq_bytes = _file_bytes_if_plain(lq_path) or png_bytes(rec["lq"])
    meta = {k: rec[k] for k in ("id", "caption", "degradation", "label") if rec.get(k)}
    return S.serialize_record(meta, gt_bytes, lq_bytes)


def pack(source, out_dir: str, *, num_shards: int = 1, threads: int = 4, prefix: str = "data") -> dict:
    """Writes `source` to `out_dir/<prefix>-XXXXX-of-YYYYY.array_record`; returns a summary dict."""
    from array_record.python.array_record_module import ArrayRecordWriter

    from daclip_jax import imageio

    n = len(source)
    num_shards = max(1, min(num_shards, n))
    os.makedirs(out_dir, exist_ok=True)
    skipped = S.SkipReport(path=os.path.join(out_dir, "skipped.txt"))
    names = [f"{prefix}-{s:05d}-of-{num_shards:05d}.array_record" for s in range(num_shards)]
    ids: dict[str, list[str]] = {name: [] for name in names}
    writers = [ArrayRecordWriter(os.path.join(out_dir, name), WRITER_OPTIONS) for name in names]

    def work(i):
        try:
            return i, encode_record(source, i), None
        except imageio.ImageReadError as e:
            return i, None, str(e)

    written = 0
    try:
        with ThreadPoolExecutor(max(1, threads)) as pool:
            for i, blob, error in pool.map(work, range(n)):  # map keeps the order: shards are reproducible
                if blob is None:
                    skipped.add(source.describe(i), error, stage="pack")
                    continue
                shard = i * num_shards // n
                writers[shard].write(blob)
                ids[names[shard]].append(S.deserialize_record(blob)[0]["id"])
                written += 1
    finally:
        for w in writers:
            w.close()
    with open(os.path.join(out_dir, S.IDS_FILE), "w") as f:
        json.dump(ids, f)
    if skipped:
        log.warning("pack: %s", skipped.summary())
    if written == 0:
        raise S.NoUsableImagesError(f"pack: no usable records in the source ({skipped.summary()})")
    return {"records": written, "skipped": len(skipped), "shards": [os.path.join(out_dir, x) for x in names]}
