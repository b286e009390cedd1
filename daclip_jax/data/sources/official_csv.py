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


def filepath_candidates(filepath: str, csv_path: str, root: str | None = None) -> list[str]:
    """Where a CSV's `filepath` may be, in the order tried.

    A relative path is tried against the working directory first, as the official trainer opens
    it (generate_captions.py writes it relative to the folder it ran in), then against the CSV's
    own folder (a CSV moved next to its images); `root`, when set, replaces both.
    """
    if os.path.isabs(filepath):
        return [filepath]
    if root:
        return [os.path.abspath(os.path.join(root, filepath))]
    cwd = os.path.abspath(filepath)
    beside = os.path.join(os.path.dirname(os.path.abspath(csv_path)), filepath)
    return [cwd] if os.path.normpath(beside) == cwd else [cwd, beside]


def _root_that_works(filepath: str, csv_path: str) -> str | None:
    """The nearest folder above the CSV that `filepath` is relative to, if any (for the hint)."""
    folder = os.path.dirname(os.path.abspath(csv_path))
    while True:
        if os.path.isfile(os.path.join(folder, filepath)):
            return folder
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


def _none_found_message(csv_path: str, rows: int, filepath: str, tried: list[str],
                        root: str | None) -> str:
    """One line for a CSV none of whose images exist: the first path as tried, and the fix."""
    where = f"data.source.root {root!r}" if root else "the working directory, then the CSV's folder"
    fix = _root_that_works(filepath, csv_path)
    todo = (f"set --config.data.source.root={fix} (the folder its paths are relative to)" if fix else
            "run from the folder its paths are relative to (where generate_captions.py ran), or "
            "set --config.data.source.root to that folder")
    return (f"csv {csv_path!r}: none of its {rows} image file(s) exists; the first, {filepath!r}, "
            f"was tried against {where}: {', '.join(tried)}; {todo}")


class CsvSource(Source):
    """The official `daclip_{train,val}.csv`: tab-separated, `filepath` (the LQ) and `title`.

    `title` is "caption: degradation"; the GT is found by replacing `/LQ/` with `/GT/`.
    Relative filepaths are found as `filepath_candidates` says: the working directory, then
    the CSV's folder, or `root` alone when given.
    """

    name = "csv"

    def __init__(self, csv_path: str, *, root: str | None = None, img_key: str = "filepath",
                 caption_key: str = "title", sep: str = "\t", min_size: int = 0,
                 validate: str = "header", skipped: SkipReport | None = None):
        import csv

        if not os.path.isfile(csv_path):
            raise NoUsableImagesError(f"csv {csv_path!r} does not exist")
        self.min_size = min_size
        self.skipped = skipped if skipped is not None else SkipReport()
        self.items = []  # (lq, gt, caption, degradation, id)
        rows, nowhere, first_nowhere = 0, 0, None  # rows whose LQ is in no place tried; the first
        with open(csv_path, newline="") as f:
            reader = csv.DictReader(f, delimiter=sep)
            fields = set(reader.fieldnames or ())
            if not {img_key, caption_key} <= fields:
                raise NoUsableImagesError(
                    f"csv {csv_path!r}: missing column(s) {sorted({img_key, caption_key} - fields)}; "
                    f"has {reader.fieldnames} (the official CSV is tab-separated filepath, title)")
            for row in reader:
                rows += 1
                filepath = row[img_key]
                tried = filepath_candidates(filepath, csv_path, root)
                lq = next((p for p in tried if os.path.isfile(p)), None)
                if lq is None:
                    nowhere += 1
                    first_nowhere = first_nowhere or (filepath, tried)
                    self.skipped.add(tried[0], f"no such file; tried {', '.join(tried)}")
                    continue
                caption, degradation = split_official_title(row[caption_key])
                try:
                    gt = gt_path_for(lq)
                except ValueError as e:
                    self.skipped.add(lq, str(e))
                    continue
                reason = check_pair(gt, lq, min_size, validate)
                if reason:
                    self.skipped.add(lq, reason)
                else:  # the id as the CSV names it: the held-out split is the same from anywhere
                    self.items.append((lq, gt, caption, degradation, gt_path_for(filepath)))
        if rows and nowhere == rows:
            raise NoUsableImagesError(_none_found_message(csv_path, rows, *first_nowhere, root))
        self._finish_index(repr(csv_path))

    def __len__(self):
        return len(self.items)

    def record_id(self, index):
        return self.items[index][4]

    def describe(self, index):
        return self.items[index][0]

    def load(self, index):
        lq_path, gt_path, caption, degradation, id_ = self.items[index]
        gt, lq = _read_pair(gt_path, lq_path, self.min_size)
        rec = {"id": id_, "gt": gt, "lq": lq, "caption": caption}
        if degradation:
            rec["degradation"] = degradation
        return rec
