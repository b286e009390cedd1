"""`ImageFolderSource`: clean images anywhere below a folder; the pipeline synthesises the LQ."""

from __future__ import annotations

import os

from daclip_jax.data.sources.base import Source, _list_images
from daclip_jax.data.sources.decode import read_compact
from daclip_jax.data.sources.skips import NoUsableImagesError, SkipReport, check_header


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
