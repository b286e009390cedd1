"""Metrics: zero-shot degradation accuracy + confusion matrix, retrieval recall@K, and
PSNR/SSIM with the official test protocol's definitions (`image_quality`, re-exported here).

All functions take numpy arrays (fetched from devices by the caller) and return plain
Python numbers / numpy arrays, so they are easy to test and to log.
"""

from __future__ import annotations

import numpy as np

from daclip_jax.eval.image_quality import image_scores, psnr, ssim  # noqa: F401  (re-exported)
from daclip_jax.labels import DEGRADATIONS


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) counts, rows = true class, columns = predicted; label -1 ignored."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    keep = labels >= 0
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (labels[keep], predictions[keep]), 1)
    return cm


def zero_shot_accuracy(cm: np.ndarray, names=DEGRADATIONS) -> dict[str, float]:
    """Overall and per-type accuracy from a confusion matrix (types never seen are left out)."""
    out = {}
    total = cm.sum()
    if total:
        out["accuracy"] = float(np.trace(cm) / total)
    for i, name in enumerate(names):
        n = cm[i].sum()
        if n:
            out[f"accuracy/{name}"] = float(cm[i, i] / n)
    return out


def recall_at_k(image_features: np.ndarray, text_features: np.ndarray, k: int = 1) -> dict[str, float]:
    """Pair i of images and texts matches; recall@k both ways on cosine similarity."""
    img = image_features / np.linalg.norm(image_features, axis=-1, keepdims=True)
    txt = text_features / np.linalg.norm(text_features, axis=-1, keepdims=True)
    sim = img @ txt.T
    target = np.arange(len(sim))

    def recall(s):
        # rank of the true match: number of candidates scoring strictly higher
        true = s[target, target][:, None]
        return float(np.mean((s > true).sum(axis=1) < k))

    return {f"image_to_text_R@{k}": recall(sim), f"text_to_image_R@{k}": recall(sim.T)}


class PerTypeMean:
    """Running means of named values, overall and per degradation type (index -1 = mixture)."""

    def __init__(self, names=DEGRADATIONS):
        self.names = names
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, metric: str, value: float, type_index: int) -> None:
        keys = [metric]
        keys.append(f"{metric}/{self.names[type_index]}" if type_index >= 0 else f"{metric}/mixed")
        for k in keys:
            self.sums[k] = self.sums.get(k, 0.0) + float(value)
            self.counts[k] = self.counts.get(k, 0) + 1

    def result(self) -> dict[str, float]:
        return {k: self.sums[k] / self.counts[k] for k in self.sums}


def confusion_image(cm: np.ndarray, names=DEGRADATIONS, cell: int = 12) -> np.ndarray:
    """Row-normalised confusion matrix as an HxWx3 float image (for TensorBoard)."""
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, np.float64), where=rows > 0)
    img = np.kron(norm, np.ones((cell, cell)))
    return np.repeat(img[..., None], 3, axis=-1).astype(np.float32)
