"""`make_source`: the source a data config's `source` block describes (`kind` picks the class)."""

from __future__ import annotations

from daclip_jax.data.sources.array_record import ArrayRecordSource
from daclip_jax.data.sources.base import Source
from daclip_jax.data.sources.folder import ImageFolderSource
from daclip_jax.data.sources.official_csv import CsvSource
from daclip_jax.data.sources.paired import PairedFolderSource
from daclip_jax.data.sources.skips import SkipReport
from daclip_jax.data.sources.tfds import TfdsSource


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
