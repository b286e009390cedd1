"""The official `daclip_{train,val}.csv`, written from the paired layout as the official
`scripts/generate_captions.py` writes it.

That script walks `ROOT/<split>/<degradation>/{GT,LQ}` for the ten degradations in their fixed
order (files sorted, LQ and GT paired by that order), captions each GT image and writes with
pandas `to_csv(sep="\\t", index=False)`: a header `filepath<TAB>title`, one row per LQ image
with its path as joined from ROOT (relative to the working directory) and the title
"caption: degradation". pandas writes through Python's csv module, minimal quoting and "\\n"
line ends, and so does `CaptionCsvWriter`: the two files are the same bytes. The official
trainer splits the title on ": ", so captions lose their colons (`clean_caption`).

A row is flushed as soon as it is captioned, so a run cut short (BLIP over 50k images takes
hours on a CPU) leaves whole rows and at most one cut line, which `resume` drops and continues.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence

from daclip_jax.data import captions as C
from daclip_jax.labels import DEGRADATIONS

HEADER = ("filepath", "title")


def official_rows(root: str, split: str) -> list[tuple[str, str, str]]:
    """(LQ path relative to the working directory, GT path, degradation) of every pair in
    `root/split`, in generate_captions.py's order; raises ValueError if there are none."""
    from daclip_jax.eval.testset import find_test_pairs

    folder = os.path.join(root, split)
    pairs = [p for p in find_test_pairs(folder) if p.degradation in DEGRADATIONS]
    if not pairs:
        raise ValueError(f"{folder}: no <degradation>/LQ and <degradation>/GT folders named after "
                         f"the ten degradations ({', '.join(DEGRADATIONS)})")
    pairs.sort(key=lambda p: DEGRADATIONS.index(p.degradation))  # stable: files stay sorted
    return [(os.path.relpath(p.lq), os.path.relpath(p.gt), p.degradation) for p in pairs]


class _NotInFile(C.Captioner):
    """The end of a caption file's lookup: a missing caption is an error, not "a photo"."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def _caption(self, record):
        raise ValueError(f"{self.path} has no caption for {record['id']} (looked up by its GT "
                         f"path, then its file name); add it, or caption with --blip/--template")


def caption_fn(*, captions: str | None = None, blip: str | None = None,
               template: str | None = None) -> Callable[[str], str]:
    """GT path -> caption, from a caption file, a local BLIP checkpoint or a template whose
    `{label}` is the file's name (the pipeline's captioners)."""
    if captions:
        cap = C.TableCaptioner(captions, fallback=_NotInFile(captions))
        return lambda gt: cap({"id": gt})
    if blip:
        import numpy as np
        from PIL import Image

        cap = C.BlipCaptioner(blip)

        def from_blip(gt):   # as generate_captions.py: the whole GT image, as RGB
            with Image.open(gt) as im:
                return cap({"id": gt, "gt": np.asarray(im.convert("RGB"))})
        return from_blip
    if template is not None:
        cap = C.TemplateCaptioner(template)
        return lambda gt: cap({"id": gt, "label": os.path.splitext(os.path.basename(gt))[0]})
    raise ValueError("no caption source: give a caption file, a BLIP checkpoint or a template")


def _rows_written(path: str, rows: Sequence[tuple[str, str, str]]) -> int:
    """How many of `rows` the half-written `path` holds; cuts off a last, unfinished line."""
    with open(path, "rb") as f:
        data = f.read()
    whole = data[:data.rfind(b"\n") + 1]
    lines = list(csv.reader(whole.decode("utf-8").splitlines(), delimiter="\t"))
    if not lines or tuple(lines[0]) != HEADER:
        raise ValueError(f"{path} does not start with the header filepath<TAB>title; delete it "
                         "to write it anew")
    written = lines[1:]
    for i, (row, (lq, _, _)) in enumerate(zip(written, rows)):
        if row[0] != lq:
            raise ValueError(f"{path}: row {i + 1} is {row[0]}, where the layout has {lq}; it was "
                             "written for other images or from another folder; delete it to "
                             "write it anew")
    if len(written) > len(rows):
        raise ValueError(f"{path} has {len(written)} rows, the layout {len(rows)} pairs; delete it "
                         "to write it anew")
    if len(whole) < len(data):
        with open(path, "r+b") as f:
            f.truncate(len(whole))
    return len(written)


def write_captions_csv(path: str, rows: Sequence[tuple[str, str, str]], caption: Callable[[str], str],
                       *, resume: bool = False, progress: bool = True) -> int:
    """Writes `rows` (from `official_rows`) to `path`; returns how many were captioned now."""
    from tqdm import tqdm

    done = _rows_written(path, rows) if resume and os.path.exists(path) else 0
    with open(path, "a" if done else "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")  # what pandas' to_csv calls
        if not done:
            writer.writerow(HEADER)
        for lq, gt, degradation in tqdm(rows[done:], initial=done, total=len(rows), unit="image",
                                        desc=os.path.basename(path), disable=not progress):
            writer.writerow((lq, f"{caption(gt)}: {degradation}"))
            f.flush()
    return len(rows) - done
