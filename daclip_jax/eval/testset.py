"""The official paired test layout: ROOT/<degradation>/{LQ,GT}/ or a single ROOT/{LQ,GT}/.

As the official LQGT dataset, LQ and GT files are paired by sorted order (`get_image_paths`
sorts each folder) and the counts must agree; an image is named after its GT file, as test.py
names its outputs. The degradation folder name is the label of DA-CLIP's degradation
accuracy; a single LQ/GT pair of folders takes its label from ROOT's own name (test.yml's
`datasets/universal/<deg_type>/{LQ,GT}`), and names that are not one of the ten words give
no accuracy.
"""

from __future__ import annotations

import dataclasses
import os

from daclip_jax.labels import DEGRADATIONS


@dataclasses.dataclass(frozen=True)
class ImagePair:
    name: str                 # "<degradation folder>/<GT file name>", unique in the set
    degradation: str          # folder name ("" for an unnamed single pair)
    lq: str
    gt: str

    @property
    def label(self) -> int:
        """Index in DEGRADATIONS, or -1 when the folder is not one of the ten words."""
        return DEGRADATIONS.index(self.degradation) if self.degradation in DEGRADATIONS else -1


def _image_files(folder: str) -> list[str]:
    from PIL import Image

    exts = {e.lower() for e in Image.registered_extensions()}
    return sorted(os.path.join(folder, n) for n in os.listdir(folder)
                  if os.path.splitext(n)[1].lower() in exts and os.path.isfile(os.path.join(folder, n)))


def _pairs_in(folder: str, degradation: str) -> list[ImagePair]:
    lqs, gts = _image_files(os.path.join(folder, "LQ")), _image_files(os.path.join(folder, "GT"))
    if len(lqs) != len(gts):
        raise ValueError(f"{folder}: LQ has {len(lqs)} images but GT has {len(gts)}; the "
                         "official protocol pairs them by sorted order, so the counts must agree")
    if not gts:
        raise ValueError(f"{folder}: no images in LQ/ and GT/")
    prefix = f"{degradation}/" if degradation else ""
    return [ImagePair(prefix + os.path.basename(g), degradation, lq, g) for lq, g in zip(lqs, gts)]


def _has_pair(folder: str) -> bool:
    return all(os.path.isdir(os.path.join(folder, sub)) for sub in ("LQ", "GT"))


def find_test_pairs(root: str | os.PathLike) -> list[ImagePair]:
    """Every (LQ, GT) pair under `root`, degradation folders in sorted order."""
    root = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root):
        raise ValueError(f"{root}: no such folder")
    if _has_pair(root):
        return _pairs_in(root, os.path.basename(root))
    types = sorted(d for d in os.listdir(root) if _has_pair(os.path.join(root, d)))
    if not types:
        raise ValueError(f"{root}: expected LQ/ and GT/ folders, or <degradation>/LQ and "
                         "<degradation>/GT folders (the official test layout)")
    return [p for d in types for p in _pairs_in(os.path.join(root, d), d)]


def mismatched_names(pairs: list[ImagePair]) -> list[ImagePair]:
    """Pairs whose LQ and GT file stems differ (paired by order anyway, as the official code)."""
    stem = lambda p: os.path.splitext(os.path.basename(p))[0]   # noqa: E731
    return [p for p in pairs if stem(p.lq) != stem(p.gt)]
