"""Pack any image source into ArrayRecord shards that `sources.ArrayRecordSource` reads.

    daclip-jax data pack /data/DIV2K --out /data/div2k_ar --shards 64

Each record is `sources.serialize_record`: a JSON header (id, caption, degradation, label)
followed by the encoded GT and optional real LQ. With the default `encoding="auto"`, files that
already are plain 8-bit RGB or grayscale PNG/JPEG are stored byte for byte (no re-encoding, no
new JPEG artefacts); anything else is decoded with `imageio.read_image` and stored as an 8-bit
PNG. `encoding="raw"` stores uint8 pixels (no decode at training time) and `tile=N` cuts large
photos into N x N tiles: decoding a 2K PNG costs ~100-200 ms per sample, a 512 tile ~10 ms. Records that cannot be
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
        lq, gt = src.items[index][:2]
        return gt, lq
    return None, None


def _encode(img: np.ndarray, encoding: str) -> tuple[bytes, dict]:
    if encoding == "raw":
        u8 = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        return u8.tobytes(), {"shape": list(u8.shape)}
    return png_bytes(img), {}


def tile_origins(length: int, tile: int, step: int) -> list[int]:
    """Start offsets covering [0, length) with windows of `tile` every `step` (last one flush)."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, step))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def encode_record(source, index: int, *, tile: int = 0, tile_step: int = 0,
                  encoding: str = "auto") -> list[bytes]:
    """One source record as packed blobs (several when tiling); raises ImageReadError for a bad file.

    encoding: auto (original file bytes when plain 8-bit PNG/JPEG, else PNG) | png | raw
    (uint8 pixels: no decode cost at training time, ~2x the size of a PNG).
    tile > 0 cuts images larger than tile x tile into tiles (step `tile_step`, default tile // 2),
    so each training sample decodes a tile instead of a 2K photo. Tiles keep the image's id
    (captions and held-out splits stay per clean image) and record their origin in `tile`.
    """
    if encoding not in ("auto", "png", "raw"):
        raise ValueError(f"encoding must be auto|png|raw, got {encoding!r}")
    rec = source[index]  # decodes: validates the file and gives the metadata
    meta = {k: rec[k] for k in ("id", "caption", "degradation", "label") if rec.get(k)}
    gt, lq = rec["gt"], rec.get("lq")
    h, w = gt.shape[:2]
    if encoding == "auto" and (tile <= 0 or max(h, w) <= tile):
        gt_path, lq_path = _file_paths(source, index)
        gt_bytes = _file_bytes_if_plain(gt_path) or png_bytes(gt)
        lq_bytes = b"" if lq is None else (_file_bytes_if_plain(lq_path) or png_bytes(lq))
        return [S.serialize_record(meta, gt_bytes, lq_bytes)]
    fmt = "raw" if encoding == "raw" else "png"
    if tile <= 0:
        windows = [(0, 0, h, w)]
    else:
        step = tile_step if tile_step > 0 else max(1, tile // 2)
        th, tw = min(tile, h), min(tile, w)
        windows = [(y, x, th, tw) for y in tile_origins(h, tile, step) for x in tile_origins(w, tile, step)]
    blobs = []
    for y, x, th, tw in windows:
        m = dict(meta)
        if tile > 0:
            m["tile"] = [y, x]
        gt_bytes, info = _encode(gt[y:y + th, x:x + tw], fmt)
        if info:
            m["gt_raw_shape"] = info["shape"]
        lq_bytes = b""
        if lq is not None:
            lq_bytes, info = _encode(lq[y:y + th, x:x + tw], fmt)
            if info:
                m["lq_raw_shape"] = info["shape"]
        blobs.append(S.serialize_record(m, gt_bytes, lq_bytes))
    return blobs


def pack(source, out_dir: str, *, num_shards: int = 1, threads: int = 4, prefix: str = "data",
         tile: int = 0, tile_step: int = 0, encoding: str = "auto") -> dict:
    """Writes `source` to `out_dir/<prefix>-XXXXX-of-YYYYY.array_record`; returns a summary dict.

    tile / tile_step / encoding: see `encode_record`.
    """
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
            return i, encode_record(source, i, tile=tile, tile_step=tile_step, encoding=encoding), None
        except imageio.ImageReadError as e:
            return i, None, str(e)

    written = 0
    try:
        chunk = 8 * max(1, threads)  # bounded read-ahead: never the whole dataset in memory
        with ThreadPoolExecutor(max(1, threads)) as pool:
            results = (r for start in range(0, n, chunk)
                       for r in pool.map(work, range(start, min(n, start + chunk))))
            for i, blobs, error in results:  # in index order: shards are reproducible
                if blobs is None:
                    skipped.add(source.describe(i), error, stage="pack")
                    continue
                shard = i * num_shards // n
                for blob in blobs:
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
