"""`TfdsSource`: any TFDS dataset prepared as ArrayRecord, read through `tfds.data_source`
(no TensorFlow); tensorflow_datasets is imported only when such a source is built."""

from __future__ import annotations

import numpy as np

from daclip_jax.data.sources.base import Source
from daclip_jax.data.sources.decode import _array_to_compact, _imageio
from daclip_jax.data.sources.skips import SkipReport


class TfdsSource(Source):
    """A TFDS dataset prepared as ArrayRecord, read with `tfds.data_source` (no TensorFlow needed).

    `image_key` names the image feature (decoded to uint8 by TFDS); `label_key` (optional) a
    ClassLabel/Text feature used as `label` for template captions; `id_key` (optional) a feature
    holding a stable id, else "<name>/<split>/<index>".
    """

    name = "tfds"

    def __init__(self, name: str, *, data_dir: str | None = None, split: str = "train",
                 image_key: str = "image", label_key: str | None = None, id_key: str | None = None,
                 min_size: int = 0, skipped: SkipReport | None = None):
        import tensorflow_datasets as tfds

        self.ds_name, self.split = name, split
        self.image_key, self.label_key, self.id_key, self.min_size = image_key, label_key, id_key, min_size
        self.skipped = skipped if skipped is not None else SkipReport()
        self.data_dir = data_dir
        self.source = tfds.data_source(name, data_dir=data_dir, split=split)
        self._label_names = None
        if label_key is not None:
            feature = self.source.dataset_info.features[label_key]
            if hasattr(feature, "names"):
                self._label_names = list(feature.names)
        self._finish_index(f"{name!r} split {split!r}")

    # Workers reopen the prepared dataset from disk instead of unpickling the builder (which
    # may be a class the worker cannot import); tfds reads it from its dataset_info.json.
    def __getstate__(self):
        state = dict(self.__dict__)
        state["source"] = None
        return state

    def __setstate__(self, state):
        import tensorflow_datasets as tfds

        self.__dict__.update(state)
        self.source = tfds.data_source(self.ds_name, data_dir=self.data_dir, split=self.split)

    def __len__(self):
        return len(self.source)

    def record_id(self, index):
        return f"{self.ds_name}/{self.split}/{index}"

    def load(self, index):
        name = self.record_id(index)
        try:
            ex = self.source[index]
        except Exception as e:  # noqa: BLE001 - a corrupt record is a bad file
            raise _imageio().ImageReadError(f"{name}: {type(e).__name__}: {e}") from e
        rec = {"gt": _array_to_compact(ex[self.image_key], self.min_size, name)}
        rec["id"] = _text(ex[self.id_key]) if self.id_key else name
        if self.label_key is not None:
            value = ex[self.label_key]
            rec["label"] = self._label_names[int(value)] if self._label_names else _text(value)
        return rec


def _text(v) -> str:
    if isinstance(v, (bytes, np.bytes_)):
        return bytes(v).decode("utf-8")
    if isinstance(v, np.ndarray) and v.ndim == 0:
        return _text(v.item())
    return str(v)
