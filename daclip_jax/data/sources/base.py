"""The `Source` base class (grain-compatible random access plus cheap record ids) and the
recursive image listing that the file-based sources index with."""

from __future__ import annotations

import logging
import os

from daclip_jax.data.sources.decode import float_record
from daclip_jax.data.sources.skips import NoUsableImagesError, SkipReport

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif")


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
        if len(self) == 0:  # one line says it all; the list goes with the workdir of a failed run
            raise NoUsableImagesError(
                f"{self.name} {what}: no usable images"
                + (f" ({self.skipped.summary(listed=False)})" if self.skipped else ""))
        if self.skipped:
            log.warning("%s %s: %s", self.name, what, self.skipped.summary())
