"""Caption providers: one small interface, `captioner(record) -> str`, cached per clean image id.

A caption describes the *clean* image (DA-CLIP captions the GT with BLIP and stores it next to
the LQ), so it depends only on the record's `id` and is computed once per id, never per sample.
Captions never mention the degradation: the official "caption: degradation" titles are split
and only the caption kept, and every caption has ":" removed (the official CSV format splits on
": ", so a colon inside a caption would corrupt it).

Providers (`make_captioner(cfg)` picks one from `default_data_config().caption`):
    RecordCaptioner    the caption that came with the record (official CSV, packed shards).
    TableCaptioner     a caption file: the official CSV ("caption: degradation" titles), or a
                       plain filepath->caption table as CSV/TSV (columns filepath, caption|title)
                       or JSON ({path: caption} or [{filepath, caption}]).
    TemplateCaptioner  "a photo of a {label}" from a record's label/metadata (TFDS classes...).
    BlipCaptioner      BLIP (transformers BlipForConditionalGeneration + BlipProcessor) from a
                       LOCAL checkpoint dir, run once per clean image.
    ConstantCaptioner  "a photo": used only when nothing else is configured (logged once).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import threading

import numpy as np

log = logging.getLogger(__name__)

FALLBACK_CAPTION = "a photo"


def clean_caption(text: str) -> str:
    """Removes ':' (the CSV's caption/degradation separator) and squeezes whitespace."""
    return " ".join(str(text).replace(":", " ").split())


class Captioner:
    """Base class: `__call__(record)` caches `_caption(record)` by `record['id']`."""

    def __init__(self):
        self._cache: dict[str, str] = {}
        self._lock = threading.Lock()

    def __call__(self, record: dict) -> str:
        key = record["id"]
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None:
            return hit
        caption = clean_caption(self._caption(record)) or FALLBACK_CAPTION
        with self._lock:
            self._cache[key] = caption
        return caption

    def _caption(self, record: dict) -> str:
        raise NotImplementedError


class ConstantCaptioner(Captioner):
    def __init__(self, text: str = FALLBACK_CAPTION):
        super().__init__()
        self.text = text

    def _caption(self, record):
        return self.text


_warned_fallback = False


def _fallback(reason: str) -> str:
    global _warned_fallback
    if not _warned_fallback:
        _warned_fallback = True
        log.warning("captions: %s; using %r for such images (logged once)", reason, FALLBACK_CAPTION)
    return FALLBACK_CAPTION


class RecordCaptioner(Captioner):
    """The caption carried by the record; `fallback` (another captioner) for records without."""

    def __init__(self, fallback: Captioner | None = None):
        super().__init__()
        self.fallback = fallback

    def _caption(self, record):
        if record.get("caption"):
            return record["caption"]
        if self.fallback is not None:
            return self.fallback(record)
        return _fallback("no caption configured and the data carry none")


def _split_title(title: str) -> str:
    from daclip_jax.data.sources import split_official_title

    return split_official_title(title)[0]


def load_caption_table(path: str) -> dict[str, str]:
    """path -> caption from a CSV/TSV (filepath + caption|title columns) or a JSON file.

    Official titles "caption: degradation" keep only the caption. Official filepaths point at
    the LQ; the GT path (/LQ/ -> /GT/) is added too so clean-image ids find their caption.
    """
    from daclip_jax.data.sources import gt_path_for

    rows: list[tuple[str, str]] = []
    if path.lower().endswith(".json"):
        with open(path) as f:
            data = json.load(f)
        if isinstance(data, dict):
            rows = [(str(k), str(v)) for k, v in data.items()]
        else:
            for item in data:
                key = item.get("filepath") or item.get("path") or item.get("id")
                rows.append((str(key), str(item.get("caption") or item.get("title") or "")))
    else:
        with open(path, newline="") as f:
            head = f.readline()
            f.seek(0)
            sep = "\t" if "\t" in head else ","
            reader = csv.DictReader(f, delimiter=sep)
            fields = reader.fieldnames or []
            key_col = next((c for c in ("filepath", "path", "id", "file") if c in fields), None)
            cap_col = next((c for c in ("caption", "title", "text") if c in fields), None)
            if key_col is None or cap_col is None:
                raise ValueError(f"{path}: need a filepath and a caption/title column, got {fields}")
            rows = [(r[key_col], r[cap_col]) for r in reader]
    table: dict[str, str] = {}
    for key, text in rows:
        caption = _split_title(text)
        table[key] = caption
        table.setdefault(os.path.basename(key), caption)
        if "/LQ/" in key.replace(os.sep, "/"):
            gt = gt_path_for(key)
            table.setdefault(gt, caption)
    return table


class TableCaptioner(Captioner):
    """Looks the record up by id, then by file name; falls back to `fallback` if absent."""

    def __init__(self, path: str, fallback: Captioner | None = None):
        super().__init__()
        self.path = path
        self.table = load_caption_table(path)
        self.fallback = fallback

    def _caption(self, record):
        key = record["id"]
        for k in (key, os.path.basename(key), os.path.abspath(key)):
            if k in self.table:
                return self.table[k]
        if record.get("caption"):
            return record["caption"]
        if self.fallback is not None:
            return self.fallback(record)
        return _fallback(f"some images are not in {self.path}")


class TemplateCaptioner(Captioner):
    """`template.format(label=record['label'])`, e.g. "a photo of a {label}" for class labels."""

    def __init__(self, template: str = "a photo of a {label}"):
        super().__init__()
        self.template = template

    def _caption(self, record):
        label = record.get("label")
        if label is None:
            return _fallback("template captions need a label and this record has none")
        return self.template.format(label=str(label).replace("_", " "))


class BlipCaptioner(Captioner):
    """BLIP image captioning from a local transformers checkpoint directory.

    The model is loaded lazily in the process that first needs it (each grain worker loads its
    own copy) and runs once per clean image (the full image, as the official captions are).
    """

    def __init__(self, model_dir: str, *, max_new_tokens: int = 30, num_beams: int = 1,
                 prompt: str | None = None):
        super().__init__()
        if not os.path.isdir(model_dir):
            raise FileNotFoundError(f"BLIP checkpoint dir {model_dir!r} does not exist")
        self.model_dir, self.max_new_tokens, self.num_beams, self.prompt = (
            model_dir, max_new_tokens, num_beams, prompt)
        self._model = self._processor = None
        self._load_lock = threading.Lock()

    def _load(self):
        with self._load_lock:
            if self._model is None:
                import transformers

                transformers.logging.set_verbosity_error()
                self._processor = transformers.BlipProcessor.from_pretrained(self.model_dir)
                model = transformers.BlipForConditionalGeneration.from_pretrained(self.model_dir)
                self._model = model.eval()
        return self._model, self._processor

    def _caption(self, record):
        import torch
        from PIL import Image

        model, processor = self._load()
        gt = record["gt"]  # float32 in [0,1], or a compact uint8 image (value / 255) from Source.load
        img = Image.fromarray(gt if gt.dtype == np.uint8 else (np.clip(gt, 0, 1) * 255.0 + 0.5).astype(np.uint8))
        kwargs = {"images": img, "return_tensors": "pt"}
        if self.prompt:
            kwargs["text"] = self.prompt
        inputs = processor(**kwargs)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=self.max_new_tokens, num_beams=self.num_beams)
        return processor.decode(out[0], skip_special_tokens=True).strip()


def make_captioner(cfg) -> Captioner:
    """From `default_data_config().caption`: kind in auto|record|file|template|blip|constant.

    "auto": the record's own caption when it has one, else the caption file / template / BLIP
    dir if one is set, else the constant fallback (logged once).
    """
    kind = cfg.get("kind", "auto")
    path, template, blip_dir = cfg.get("path", ""), cfg.get("template", ""), cfg.get("blip_dir", "")
    if kind == "constant":
        return ConstantCaptioner(cfg.get("text", FALLBACK_CAPTION) or FALLBACK_CAPTION)
    if kind == "record":
        return RecordCaptioner()
    if kind == "file":
        return TableCaptioner(path)
    if kind == "template":
        return TemplateCaptioner(template or "a photo of a {label}")
    if kind == "blip":
        return BlipCaptioner(blip_dir, max_new_tokens=cfg.get("max_new_tokens", 30),
                             num_beams=cfg.get("num_beams", 1))
    if kind != "auto":
        raise ValueError(f"unknown caption kind {kind!r}")
    inner = None
    if path:
        inner = TableCaptioner(path)
    elif blip_dir:
        inner = BlipCaptioner(blip_dir, max_new_tokens=cfg.get("max_new_tokens", 30),
                              num_beams=cfg.get("num_beams", 1))
    elif template:
        inner = TemplateCaptioner(template)
    return RecordCaptioner(fallback=inner)
