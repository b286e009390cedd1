"""`CsvSource`: the official daclip_{train,val}.csv (tab-separated filepath / "caption: degradation"),
with the two helpers the caption cache shares: `split_official_title` and `gt_path_for`."""

from __future__ import annotations

import os

from daclip_jax.data.sources.base import Source
from daclip_jax.data.sources.paired import _read_pair
from daclip_jax.data.sources.skips import NoUsableImagesError, SkipReport, check_pair


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
