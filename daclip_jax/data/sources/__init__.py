"""Random-access image sources for the training pipeline (grain-compatible `__len__`/`__getitem__`).

Every source returns, for index i, a record dict:

    id           str, stable id of the clean image (caption cache key, held-out split key)
    gt           float32 HxWx3 RGB in [0,1], the clean image
    lq           optional float32 HxWx3, a real degraded counterpart (paired sources)
    degradation  optional str, the degradation words of `lq` (paired sources / official CSV)
    caption      optional str, a caption that came with the data (official CSV, packed shards)
    label        optional str, class name / metadata for template captions (TFDS, packed shards)

Compact records. `source.load(i)` returns the same record with its images in their compact
form: uint8 (meaning value / 255, bit for bit what `read_image` would return after `as_float`)
for 8-bit data, float32 otherwise. The pipeline crops and flips the compact images and converts
only the patch, so a 2K photo is never converted to float as a whole; `source[i]` is
`float_record(source.load(i))`.

Sources:
    ImageFolderSource   a folder of clean images (recursive); LQ synthesised on the fly.
    PairedFolderSource  the official layout root/<degradation>/{LQ,GT}/<name> with real pairs.
    CsvSource           the official daclip_train.csv (tab-separated filepath/title="caption: degradation").
    TfdsSource          any TFDS dataset prepared as ArrayRecord, via `tfds.data_source` (no TensorFlow).
    ArrayRecordSource   our own shards written by `daclip_jax.data.pack`.
    CachedSource        a bounded in-memory LRU of decoded (compact) records around any source.

Bad files. File-based sources check every file's header at index time (`validate="header"`,
the default): PIL reads only the first bytes, so this costs about one small read per file and
catches 0-byte files, non-images and images smaller than `min_size` before training starts
instead of hours in. Pixel decoding errors (truncated data) can only be seen when the image is
decoded; `SafeSource` (used by the pipeline) then replaces the record with a deterministic other
one and counts it. Everything skipped is kept in a `SkipReport` (path + reason), logged as a
summary and written to `skipped.txt` in the workdir when one is configured. A source with zero
usable images raises `NoUsableImagesError` at construction.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import logging
import os
import struct
import threading
from collections.abc import Sequence

import numpy as np
from PIL import Image

from daclip_jax.labels import DEGRADATIONS

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif")


class NoUsableImagesError(ValueError):
    """A source was configured but none of its images can be used."""


def _imageio():
    # Imported lazily: sources must be importable (for tests of indexing) on their own.
    from daclip_jax import imageio
    return imageio


def read_image(path_or_file, *, min_size: int = 0, name: str | None = None) -> np.ndarray:
    """Reads an image through `daclip_jax.imageio.read_image`; any failure -> ImageReadError."""
    imageio = _imageio()
    try:
        return imageio.read_image(path_or_file, min_size=min_size)
    except imageio.ImageReadError:
        raise
    except Exception as e:  # noqa: BLE001 - any decoder failure is a bad file, not a crash
        raise imageio.ImageReadError(f"{name or path_or_file}: {type(e).__name__}: {e}") from e


def as_float(x: np.ndarray) -> np.ndarray:
    """A compact image (uint8 = value / 255, or float32) as float32 in [0,1].

    uint8 / 255 in float32 is exactly how `imageio.read_image` converts 8-bit files.
    """
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255.0)
    return np.asarray(x, np.float32)


def float_record(rec: dict) -> dict:
    """A record from `Source.load` with float32 images (the documented record layout)."""
    out = dict(rec)
    for key in ("gt", "lq"):
        x = out.get(key)
        if x is not None:
            y = as_float(x)
            # Cached float images are read-only and shared: hand out a private copy.
            out[key] = y if y.flags.writeable and y is not x else np.array(y, np.float32)
    return out


def _gray_to_rgb(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(a[..., None], 3, axis=-1)) if a.ndim == 2 else a


def _plain_8bit(im: Image.Image) -> bool:
    """8-bit RGB or gray PNG/JPEG: the layouts `read_image` turns into uint8 / 255 unchanged."""
    if im.format not in ("PNG", "JPEG") or im.mode not in ("RGB", "L") or len(im.tile) != 1:
        return False
    args = im.tile[0].args
    rawmode = args[0] if isinstance(args, tuple) else args
    return isinstance(rawmode, str) and ";16" not in rawmode   # 16-bit PNGs need read_image


def read_compact(path: str, *, min_size: int = 0) -> np.ndarray:
    """`read_image` without the float conversion for plain 8-bit RGB/gray PNG and JPEG files.

    Returns uint8 HxWx3 (as_float gives exactly read_image's result) for those, and read_image's
    float32 for every other layout (16-bit, alpha, palette, CMYK...). Any failure, and any image
    smaller than min_size, goes through read_image, which raises the one-line ImageReadError.
    """
    imageio = _imageio()
    try:
        with Image.open(path) as im:
            if _plain_8bit(im):
                im.load()
                orientation = imageio._orientation(im)
                a = _gray_to_rgb(np.asarray(im))
                if orientation != 1:
                    a = imageio._apply_orientation(a, orientation)
                if min(a.shape[:2]) >= max(1, min_size):
                    return a
    except Exception:  # noqa: BLE001 - read_image below names the file and the reason
        pass
    return read_image(path, min_size=min_size)


def decode_image(data: bytes, *, min_size: int = 0, name: str = "<bytes>") -> np.ndarray:
    """Decodes encoded image bytes (PNG/JPEG/...) to float32 HxWx3 in [0,1]."""
    return as_float(decode_compact(data, min_size=min_size, name=name))


def decode_compact(data: bytes, *, min_size: int = 0, name: str = "<bytes>") -> np.ndarray:
    """Decodes encoded image bytes to a compact image (uint8 for 8-bit RGB/L, else float32).

    Plain 8-bit RGB/L images (what `pack` writes) decode in memory; any other layout goes
    through `imageio.read_image` via a temporary file so conversions stay in one place.
    """
    imageio = _imageio()
    if not data:
        raise imageio.ImageReadError(f"{name}: empty image data (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.mode in ("RGB", "L"):
                im.load()
                arr = _gray_to_rgb(np.asarray(im))
                if min(arr.shape[:2]) < max(1, min_size):
                    raise imageio.ImageReadError(
                        f"{name}: too small ({arr.shape[1]}x{arr.shape[0]}, min_size {min_size})")
                return arr
    except imageio.ImageReadError:
        raise
    except Exception as e:  # noqa: BLE001
        raise imageio.ImageReadError(f"{name}: corrupt or truncated image ({type(e).__name__}: {e})") from e
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".img") as f:
        f.write(data)
        f.flush()
        try:
            return read_image(f.name, min_size=min_size, name=name)
        except imageio.ImageReadError as e:
            raise imageio.ImageReadError(str(e).replace(f.name, name)) from None


def _array_to_compact(arr: np.ndarray, min_size: int, name: str) -> np.ndarray:
    """Like `_array_to_float`, but 8-bit RGB/gray arrays stay uint8 (compact form)."""
    arr = np.asarray(arr)
    if arr.dtype == np.uint8 and (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (1, 3))):
        a = _gray_to_rgb(arr[..., 0] if arr.ndim == 3 and arr.shape[-1] == 1 else arr)
        if min(a.shape[:2]) < min_size:
            raise _imageio().ImageReadError(f"{name}: too small ({a.shape[1]}x{a.shape[0]}, min_size {min_size})")
        return a
    return _array_to_float(arr, min_size, name)


def _array_to_float(arr: np.ndarray, min_size: int, name: str) -> np.ndarray:
    """uint8/uint16/float HxW[xC] array (as TFDS decodes) -> float32 HxWx3 in [0,1]."""
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 2, 3, 4):
        raise _imageio().ImageReadError(f"{name}: not an image array, shape {arr.shape}")
    if arr.dtype == np.uint8:
        x = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        x = arr.astype(np.float32) / 65535.0
    else:
        x = np.clip(arr.astype(np.float32), 0.0, 1.0)
    if x.shape[-1] in (2, 4):  # drop alpha, composited on white like imageio does for files
        alpha = x[..., -1:]
        x = x[..., :-1] * alpha + (1.0 - alpha)
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    if min(x.shape[:2]) < min_size:
        raise _imageio().ImageReadError(f"{name}: too small ({x.shape[1]}x{x.shape[0]}, min_size {min_size})")
    return np.ascontiguousarray(x)


# --------------------------------------------------------------------------- skip bookkeeping

@dataclasses.dataclass
class SkipReport:
    """Files that were not used, with why. Thread-safe; shared by index time and read time."""

    entries: list = dataclasses.field(default_factory=list)
    path: str | None = None  # when set, every entry is also appended to this file (skipped.txt)

    def __post_init__(self):
        self._lock = threading.Lock()

    def __getstate__(self):  # sources travel to grain worker processes; locks do not pickle
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def add(self, where: str, reason: str, stage: str = "index"):
        with self._lock:
            self.entries.append((stage, where, reason))
            if self.path:
                os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
                with open(self.path, "a") as f:
                    f.write(f"{stage}\t{where}\t{reason}\n")

    def __len__(self):
        return len(self.entries)

    def count(self, stage: str | None = None) -> int:
        return sum(1 for s, _, _ in self.entries if stage is None or s == stage)

    def summary(self) -> str:
        if not self.entries:
            return "no files skipped"
        reasons: dict[str, int] = {}
        for _, where, reason in self.entries:
            r = reason[len(where) + 2:] if reason.startswith(where + ": ") else reason
            key = r.split("(")[0].strip(" :") or r
            reasons[key] = reasons.get(key, 0) + 1
        top = ", ".join(f"{n}× {r}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:5])
        where = f"; list in {self.path}" if self.path else ""
        return f"skipped {len(self.entries)} file(s): {top}{where}"


def check_header(path: str, min_size: int) -> str | None:
    """Cheap validity check (reads the header only). Returns None if OK, else the reason."""
    try:
        if os.path.getsize(path) == 0:
            return "empty file (0 bytes)"
        with Image.open(path) as im:
            w, h = im.size
    except Exception as e:  # noqa: BLE001
        return f"not a readable image ({type(e).__name__}: {e})"
    if min(w, h) < min_size:
        return f"too small ({w}x{h}, min_size {min_size})"
    return None


def check_pair(gt: str, lq: str, min_size: int, validate: str) -> str | None:
    """Index-time check of a (GT, LQ) pair: the GT must be big enough, the LQ readable."""
    if validate != "header":
        return None
    return check_header(gt, min_size) or check_header(lq, 0)


def _list_images(root: str) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for name in sorted(filenames):
            if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                out.append(os.path.join(dirpath, name))
    return sorted(out)


class Source:
    """Base class: random access records plus a cheap `record_id(i)` that does not read pixels."""

    name = "source"
    skipped: SkipReport

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict:
        """Record `index` with float32 images (see the module docstring)."""
        return float_record(self.load(index))

    def load(self, index: int) -> dict:
        """Record `index` with compact images (uint8 = value / 255, or float32); see `as_float`."""
        if type(self).__getitem__ is not Source.__getitem__:
            return self[index]  # a source that only implements __getitem__ (float records)
        raise NotImplementedError

    def record_id(self, index: int) -> str:
        raise NotImplementedError

    def describe(self, index: int) -> str:
        """Where record `index` comes from, for error messages."""
        return self.record_id(index)

    def _finish_index(self, what: str):
        if self.skipped:
            log.warning("%s %s: %s", self.name, what, self.skipped.summary())
        if len(self) == 0:
            raise NoUsableImagesError(
                f"{self.name} {what}: no usable images"
                + (f" ({self.skipped.summary()})" if self.skipped else ""))


class ImageFolderSource(Source):
    """Clean images anywhere below `root` (sorted, recursive); the index is built once here."""

    name = "image folder"

    def __init__(self, root: str, *, min_size: int = 0, validate: str = "header",
                 skipped: SkipReport | None = None):
        if not os.path.isdir(root):
            raise NoUsableImagesError(f"image folder {root!r} does not exist")
        self.root, self.min_size = root, min_size
        self.skipped = skipped if skipped is not None else SkipReport()
        self.paths = []
        for p in _list_images(root):
            reason = check_header(p, min_size) if validate == "header" else None
            if reason:
                self.skipped.add(p, reason)
            else:
                self.paths.append(p)
        self._finish_index(repr(root))

    def __len__(self):
        return len(self.paths)

    def record_id(self, index):
        return os.path.relpath(self.paths[index], self.root)

    def describe(self, index):
        return self.paths[index]

    def load(self, index):
        path = self.paths[index]
        return {"id": self.record_id(index), "gt": read_compact(path, min_size=self.min_size)}


def _read_pair(gt_path: str, lq_path: str, min_size: int) -> tuple[np.ndarray, np.ndarray]:
    gt = read_compact(gt_path, min_size=min_size)
    lq = read_compact(lq_path)
    if lq.shape != gt.shape:
        raise _imageio().ImageReadError(f"{lq_path}: LQ size {lq.shape[:2]} != GT size {gt.shape[:2]}")
    return gt, lq


class PairedFolderSource(Source):
    """The official universal-IR layout `root/<degradation>/{LQ,GT}/<name>`: real pairs as they are.

    The type comes from the folder name (one of DEGRADATIONS); LQ and GT are paired by file name.
    """

    name = "paired folder"

    def __init__(self, root: str, *, min_size: int = 0, validate: str = "header",
                 degradations: Sequence[str] | None = None, skipped: SkipReport | None = None):
        if not os.path.isdir(root):
            raise NoUsableImagesError(f"paired folder {root!r} does not exist")
        self.root, self.min_size = root, min_size
        self.skipped = skipped if skipped is not None else SkipReport()
        self.items = []  # (degradation, gt_path, lq_path)
        for deg in sorted(os.listdir(root)):
            lq_dir, gt_dir = os.path.join(root, deg, "LQ"), os.path.join(root, deg, "GT")
            if not (os.path.isdir(lq_dir) and os.path.isdir(gt_dir)):
                continue
            if deg not in DEGRADATIONS:
                self.skipped.add(os.path.join(root, deg), f"unknown degradation folder {deg!r}")
                continue
            if degradations is not None and deg not in degradations:
                continue
            gts = {os.path.relpath(p, gt_dir): p for p in _list_images(gt_dir)}
            for lq in _list_images(lq_dir):
                rel = os.path.relpath(lq, lq_dir)
                gt = gts.get(rel)
                if gt is None:
                    self.skipped.add(lq, "no GT with the same file name")
                    continue
                reason = check_pair(gt, lq, min_size, validate)
                if reason:
                    self.skipped.add(lq, reason)
                else:
                    self.items.append((deg, gt, lq))
        self._finish_index(repr(root))

    def __len__(self):
        return len(self.items)

    def record_id(self, index):
        deg, gt, _ = self.items[index]
        return os.path.relpath(gt, self.root)

    def describe(self, index):
        return self.items[index][2]

    def load(self, index):
        deg, gt_path, lq_path = self.items[index]
        gt, lq = _read_pair(gt_path, lq_path, self.min_size)
        return {"id": self.record_id(index), "gt": gt, "lq": lq, "degradation": deg}


def split_official_title(title: str) -> tuple[str, str]:
    """'a cat on a sofa: hazy' -> ('a cat on a sofa', 'hazy'), as the official CsvDataset splits."""
    caption, sep, degradation = str(title).rpartition(": ")
    if not sep:
        return str(title).strip(), ""
    return caption.strip(), degradation.strip()


def gt_path_for(lq_path: str) -> str:
    """The official datasets keep GT next to LQ: .../<type>/LQ/x.png -> .../<type>/GT/x.png."""
    head, sep, tail = lq_path.replace(os.sep, "/").rpartition("/LQ/")
    if not sep:
        raise ValueError(f"{lq_path}: filepath has no /LQ/ directory to find its GT")
    return f"{head}/GT/{tail}"


class CsvSource(Source):
    """The official `daclip_{train,val}.csv`: tab-separated, `filepath` (the LQ) and `title`.

    `title` is "caption: degradation"; the GT is found by replacing `/LQ/` with `/GT/`.
    Relative filepaths are resolved against `root` (default: the CSV's folder).
    """

    name = "csv"

    def __init__(self, csv_path: str, *, root: str | None = None, img_key: str = "filepath",
                 caption_key: str = "title", sep: str = "\t", min_size: int = 0,
                 validate: str = "header", skipped: SkipReport | None = None):
        import csv

        if not os.path.isfile(csv_path):
            raise NoUsableImagesError(f"csv {csv_path!r} does not exist")
        root = root if root is not None else os.path.dirname(os.path.abspath(csv_path))
        self.min_size = min_size
        self.skipped = skipped if skipped is not None else SkipReport()
        self.items = []  # (lq, gt, caption, degradation)
        with open(csv_path, newline="") as f:
            reader = csv.DictReader(f, delimiter=sep)
            missing = {img_key, caption_key} - set(reader.fieldnames or ())
            if missing:
                raise ValueError(f"{csv_path}: missing column(s) {sorted(missing)}; has {reader.fieldnames}")
            for row in reader:
                lq = os.path.join(root, row[img_key])
                caption, degradation = split_official_title(row[caption_key])
                try:
                    gt = gt_path_for(lq)
                except ValueError as e:
                    self.skipped.add(lq, str(e))
                    continue
                reason = check_pair(gt, lq, min_size, validate)
                if reason:
                    self.skipped.add(lq, reason)
                else:
                    self.items.append((lq, gt, caption, degradation))
        self._finish_index(repr(csv_path))

    def __len__(self):
        return len(self.items)

    def record_id(self, index):
        return self.items[index][1]

    def describe(self, index):
        return self.items[index][0]

    def load(self, index):
        lq_path, gt_path, caption, degradation = self.items[index]
        gt, lq = _read_pair(gt_path, lq_path, self.min_size)
        rec = {"id": gt_path, "gt": gt, "lq": lq, "caption": caption}
        if degradation:
            rec["degradation"] = degradation
        return rec


class TfdsSource(Source):
    """A TFDS dataset prepared as ArrayRecord, read with `tfds.data_source` (no TensorFlow needed).

    `image_key` names the image feature (decoded to uint8 by TFDS); `label_key` (optional) a
    ClassLabel/Text feature used as `label` for template captions; `id_key` (optional) a feature
    holding a stable id, else "<name>/<split>/<index>".
    """

    name = "tfds"

    def __init__(self, name: str, *, data_dir: str | None = None, split: str = "train",
                 image_key: str = "image", label_key: str | None = None, id_key: str | None = None,
                 min_size: int = 0, skipped: SkipReport | None = None):
        import tensorflow_datasets as tfds

        self.ds_name, self.split = name, split
        self.image_key, self.label_key, self.id_key, self.min_size = image_key, label_key, id_key, min_size
        self.skipped = skipped if skipped is not None else SkipReport()
        self.data_dir = data_dir
        self.source = tfds.data_source(name, data_dir=data_dir, split=split)
        self._label_names = None
        if label_key is not None:
            feature = self.source.dataset_info.features[label_key]
            if hasattr(feature, "names"):
                self._label_names = list(feature.names)
        self._finish_index(f"{name!r} split {split!r}")

    # Workers reopen the prepared dataset from disk instead of unpickling the builder (which
    # may be a class the worker cannot import); tfds reads it from its dataset_info.json.
    def __getstate__(self):
        state = dict(self.__dict__)
        state["source"] = None
        return state

    def __setstate__(self, state):
        import tensorflow_datasets as tfds

        self.__dict__.update(state)
        self.source = tfds.data_source(self.ds_name, data_dir=self.data_dir, split=self.split)

    def __len__(self):
        return len(self.source)

    def record_id(self, index):
        return f"{self.ds_name}/{self.split}/{index}"

    def load(self, index):
        name = self.record_id(index)
        try:
            ex = self.source[index]
        except Exception as e:  # noqa: BLE001 - a corrupt record is a bad file
            raise _imageio().ImageReadError(f"{name}: {type(e).__name__}: {e}") from e
        rec = {"gt": _array_to_compact(ex[self.image_key], self.min_size, name)}
        rec["id"] = _text(ex[self.id_key]) if self.id_key else name
        if self.label_key is not None:
            value = ex[self.label_key]
            rec["label"] = self._label_names[int(value)] if self._label_names else _text(value)
        return rec


def _text(v) -> str:
    if isinstance(v, (bytes, np.bytes_)):
        return bytes(v).decode("utf-8")
    if isinstance(v, np.ndarray) and v.ndim == 0:
        return _text(v.item())
    return str(v)


# --------------------------------------------------------------------------- our ArrayRecord shards

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


# --------------------------------------------------------------------------- helpers for the pipeline

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


def make_source(cfg, *, skipped: SkipReport | None = None) -> Source:
    """Builds the source `cfg.kind` describes (see pipeline.default_data_config().source)."""
    kind = cfg.kind
    skipped = skipped if skipped is not None else SkipReport()
    common = dict(min_size=cfg.get("min_size", 0), skipped=skipped)
    if kind == "folder":
        return ImageFolderSource(cfg.path, validate=cfg.get("validate", "header"), **common)
    if kind == "paired":
        return PairedFolderSource(cfg.path, validate=cfg.get("validate", "header"), **common)
    if kind == "csv":
        return CsvSource(cfg.path, root=cfg.get("root") or None, validate=cfg.get("validate", "header"),
                         **common)
    if kind == "tfds":
        return TfdsSource(cfg.name, data_dir=cfg.get("data_dir") or None, split=cfg.get("tfds_split", "train"),
                          image_key=cfg.get("image_key", "image"), label_key=cfg.get("label_key") or None,
                          id_key=cfg.get("id_key") or None, **common)
    if kind == "array_record":
        return ArrayRecordSource(cfg.path, **common)
    raise ValueError(f"unknown source kind {kind!r}; one of folder, paired, csv, tfds, array_record")
