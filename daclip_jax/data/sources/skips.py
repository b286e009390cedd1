"""Bad-file bookkeeping shared by every source: what was skipped and why, and the cheap
index-time header checks that catch empty, non-image and too-small files before training."""

from __future__ import annotations

import dataclasses
import os
import threading

from PIL import Image


class NoUsableImagesError(ValueError):
    """A source was configured but none of its images can be used."""


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

    def summary(self, listed: bool = True) -> str:
        """'skipped N file(s): k× reason, ...', and where the list is when `listed`."""
        if not self.entries:
            return "no files skipped"
        reasons: dict[str, int] = {}
        for _, where, reason in self.entries:
            r = reason[len(where) + 2:] if reason.startswith(where + ": ") else reason
            key = r.split("(")[0].split(";")[0].strip(" :") or r  # the reason without its details
            reasons[key] = reasons.get(key, 0) + 1
        top = ", ".join(f"{n}× {r}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:5])
        where = f"; list in {self.path}" if self.path and listed else ""
        return f"skipped {len(self.entries)} file(s): {top}{where}"


def check_header(path: str, min_size: int) -> str | None:
    """Cheap validity check (reads the header only). Returns None if OK, else the reason."""
    if not os.path.isfile(path):  # a missing file is not an unreadable one: the fix differs
        return "no such file"
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
    """Index-time check of a (GT, LQ) pair: the GT must be big enough, the LQ readable.
    The pair is reported under its LQ, so a GT problem names the GT."""
    if validate != "header":
        return None
    reason = check_header(gt, min_size)
    return f"GT {reason}; GT is {gt}" if reason else check_header(lq, 0)
