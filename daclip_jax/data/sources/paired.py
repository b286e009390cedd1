"""`PairedFolderSource`: the official universal-IR layout root/<degradation>/{LQ,GT}/<name>,
real (GT, LQ) pairs as they are; `_read_pair` is shared with the official CSV source."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from daclip_jax.data.sources.base import Source, _list_images
from daclip_jax.data.sources.decode import _imageio, read_compact
from daclip_jax.data.sources.skips import NoUsableImagesError, SkipReport, check_pair
from daclip_jax.labels import DEGRADATIONS


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
