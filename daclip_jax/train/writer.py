"""Run logging on host 0: TensorBoard events (tensorboardX), ``metrics.jsonl`` and a
console progress line with throughput and ETA. Other processes get a no-op writer.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Mapping

import numpy as np


class MetricWriter:
    def __init__(self, workdir: str, total_steps: int, *, enabled: bool = True,
                 tensorboard: bool = True, stream=None):
        self.enabled = enabled
        self.total_steps = int(total_steps)
        self.stream = stream or sys.stdout
        self._tb = None
        self._jsonl = None
        self._t0 = self._t_last = time.perf_counter()
        self._step_last: int | None = None
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", buffering=1)
        if tensorboard:
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(os.path.join(workdir, "tb"))

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        values = {k: float(v) for k, v in values.items()}
        self._jsonl.write(json.dumps({"step": int(step), **values}) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(k, v, int(step))

    def images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        """``images``: name -> HxWx3 float in [0, 1] (e.g. an LQ | output | GT grid)."""
        if not self.enabled or self._tb is None:
            return
        for k, img in images.items():
            self._tb.add_image(k, np.clip(np.asarray(img, np.float32), 0, 1), int(step),
                               dataformats="HWC")

    def text(self, step: int, name: str, body: str) -> None:
        if self.enabled and self._tb is not None:
            self._tb.add_text(name, body, int(step))

    def progress(self, step: int, values: Mapping[str, float], examples_per_step: int) -> dict:
        """Console line + throughput scalars since the previous call; returns the rates."""
        now = time.perf_counter()
        rates = {}
        if self._step_last is not None and step > self._step_last:
            dt = now - self._t_last
            steps = step - self._step_last
            rates = {"perf/steps_per_s": steps / dt,
                     "perf/examples_per_s": steps * examples_per_step / dt}
        if self.enabled:
            eta = ""
            if rates:
                left = (self.total_steps - step) / rates["perf/steps_per_s"]
                eta = f" | {rates['perf/steps_per_s']:.2f} it/s, ETA {_hms(left)}"
            shown = " ".join(f"{k.split('/')[-1]}={v:.4g}" for k, v in values.items()
                             if not k.startswith("perf/"))
            print(f"[{step}/{self.total_steps}] {shown}{eta}", file=self.stream, flush=True)
        self._t_last, self._step_last = now, step
        return rates

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._jsonl is not None:
            self._jsonl.close()


def _hms(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
