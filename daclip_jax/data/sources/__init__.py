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
    CsvSource           the official daclip_train.csv (tab-separated filepath/title="caption: degradation");
                        relative filepaths as the official trainer opens them (see `filepath_candidates`).
    TfdsSource          any TFDS dataset prepared as ArrayRecord, via `tfds.data_source` (no TensorFlow).
    ArrayRecordSource   our own shards written by `daclip_jax.data.pack`.
    CachedSource        a bounded in-memory LRU of decoded (compact) records around any source.

Modules (this package re-exports every public name, so `sources.X` works for all of them):
    folder.py, paired.py, official_csv.py, tfds.py, array_record.py   one source each
    base.py      the `Source` base class and the recursive image listing
    decode.py    image decoding to compact / float arrays (`read_compact`, `as_float`, ...)
    skips.py     `SkipReport`, `NoUsableImagesError` and the index-time header checks
    wrappers.py  `SubsetSource`, `TypeBalancedSource`, `CachedSource`, `SafeSource`
    factory.py   `make_source`: the source a data config's `source` block describes

Bad files. File-based sources check every file's header at index time (`validate="header"`,
the default): PIL reads only the first bytes, so this costs about one small read per file and
catches 0-byte files, non-images and images smaller than `min_size` before training starts
instead of hours in. Pixel decoding errors (truncated data) can only be seen when the image is
decoded; `SafeSource` (used by the pipeline) then replaces the record with a deterministic other
one and counts it. Everything skipped is kept in a `SkipReport` (path + reason), logged as a
summary and written to `skipped.txt` in the workdir when one is configured. A source with zero
usable images raises `NoUsableImagesError` at construction.
"""

from daclip_jax.data.sources.array_record import (
    IDS_FILE,
    ArrayRecordSource,
    deserialize_record,
    serialize_record,
    shard_paths,
)
from daclip_jax.data.sources.base import IMAGE_EXTENSIONS, Source
from daclip_jax.data.sources.decode import (
    as_float,
    decode_compact,
    decode_image,
    float_record,
    read_compact,
    read_image,
)
from daclip_jax.data.sources.factory import make_source
from daclip_jax.data.sources.folder import ImageFolderSource
from daclip_jax.data.sources.official_csv import CsvSource, gt_path_for, split_official_title
from daclip_jax.data.sources.paired import PairedFolderSource
from daclip_jax.data.sources.skips import NoUsableImagesError, SkipReport, check_header, check_pair
from daclip_jax.data.sources.tfds import TfdsSource
from daclip_jax.data.sources.wrappers import (
    CachedSource,
    SafeSource,
    SubsetSource,
    TypeBalancedSource,
    WrappedSource,
    record_types,
)

__all__ = [
    "IDS_FILE", "IMAGE_EXTENSIONS",
    "ArrayRecordSource", "CachedSource", "CsvSource", "ImageFolderSource", "NoUsableImagesError",
    "PairedFolderSource", "SafeSource", "SkipReport", "Source", "SubsetSource", "TfdsSource",
    "TypeBalancedSource", "WrappedSource",
    "as_float", "check_header", "check_pair", "decode_compact", "decode_image", "deserialize_record",
    "float_record", "gt_path_for", "make_source", "read_compact", "read_image", "record_types",
    "serialize_record", "shard_paths", "split_official_title",
]
