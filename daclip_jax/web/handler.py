"""What `daclip-jax serve` does with one request, without the web framework.

The page hands over an uploaded file and the sampling controls; `Restorer` reads the file
with the CLI's reader (`imageio.read_image`: every Pillow mode converted the same way),
classifies it with DA-CLIP as `daclip-jax restore` does, restores it with `restore_image`
and writes both images as PNGs into its work directory (a temporary one: nothing else is
written). Anything wrong with the request raises `BadRequest` with one line for the page.

The models are loaded once and shared by all requests; a lock makes one model call at a
time (the page's queue already serialises requests, the lock keeps that true for any
other caller).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable

import numpy as np

# about 2048 x 2048 (16 tiles of 512 px); the cap keeps a phone's 12 Mpx photo (hours
# of CPU sampling with the released nets) from being started by accident.
DEFAULT_MAX_PIXELS = 4_200_000
OVERLAP = 32                      # tile overlap in pixels (the CLI's default)
MAX_SEED = 2**31 - 1
KEEP_RESULTS = 16                 # request folders kept in the work dir (older are removed)


class BadRequest(ValueError):
    """A request the app refuses; the message is one line to show on the page."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """The page's sampling controls, as `restore_image` takes them (tile None: automatic)."""
    steps: int = 100
    sampler: str = "posterior"
    seed: int = 0
    tile: int | None = None
    clip_x0: bool = False


@dataclasses.dataclass
class Result:
    name: str                      # the upload's file name
    size: tuple[int, int]          # (width, height) in pixels
    probs: dict[str, float]        # degradation word -> probability, in DEGRADATIONS order
    input_png: str                 # the image as the models see it (after mode conversion)
    restored_png: str | None = None
    seconds: float = 0.0
    settings: Settings | None = None   # as used (checked)

    @property
    def top(self) -> tuple[str, float]:
        word = max(self.probs, key=self.probs.get)
        return word, self.probs[word]


def one_line(text) -> str:
    return " ".join(str(text).split())


def _whole(name, value) -> int:
    """A control's value as an int (sliders and number boxes send floats or strings)."""
    try:
        f = float(value)
        if f.is_integer():
            return int(f)
    except (TypeError, ValueError, OverflowError):
        pass
    raise BadRequest(f"{name} must be a whole number, got {value!r}")


class Restorer:
    """DA-CLIP + the IR-SDE UNet behind the web page: one instance per server process."""

    def __init__(self, daclip, unet, sde, workdir, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 description: str = ""):
        self.daclip, self.unet, self.sde = daclip, unet, sde
        self.workdir = os.fspath(workdir)
        self.max_pixels = int(max_pixels)
        self.description = description
        self._lock = threading.Lock()
        self._results: list[str] = []

    @classmethod
    def from_checkpoints(cls, daclip_path, unet_path, workdir, **kw) -> "Restorer":
        """Load with the CLI's loader (`restore.load_models`): any checkpoint it accepts."""
        from daclip_jax.restore import load_models

        daclip, unet, sde = load_models(daclip_path, unet_path)
        desc = (f"DA-CLIP {os.path.basename(os.path.normpath(daclip_path))}, UNet "
                f"{os.path.basename(os.path.normpath(unet_path))} ({unet.cfg.parameterization} "
                f"parameterization, T = {sde.T})")
        return cls(daclip, unet, sde, workdir, description=desc, **kw)

    # -- the two requests ----------------------------------------------------------------------
    def inspect(self, path) -> Result:
        """Read an upload and classify its degradation (fast: one DA-CLIP forward)."""
        lq, name = self.read(path)
        with self._lock:
            probs = self._classify(lq)
        folder = self._new_folder()
        return Result(name, (lq.shape[1], lq.shape[0]), probs,
                      self._write(lq, folder, name, "input"))

    def restore(self, path, settings: Settings,
                on_step: Callable[[int, int], None] | None = None) -> Result:
        """Read, classify and restore an upload. on_step(done, total) after each sampling step
        (total counts every tile's steps)."""
        from daclip_jax.restore import restore_image

        settings = self.check(settings)
        lq, name = self.read(path)
        tic = time.perf_counter()
        with self._lock:
            probs = self._classify(lq)
            out = restore_image(self.daclip, self.unet, lq, self.sde, steps=settings.steps,
                                sampler=settings.sampler, seed=settings.seed,
                                tile=settings.tile, overlap=OVERLAP,
                                progress=on_step if on_step is not None else False,
                                clip_x0=settings.clip_x0)
        seconds = time.perf_counter() - tic
        folder = self._new_folder()
        return Result(name, (lq.shape[1], lq.shape[0]), probs,
                      self._write(lq, folder, name, "input"),
                      self._write(out, folder, name, "restored"), seconds, settings)

    # -- validation ------------------------------------------------------------------------------
    def check(self, settings: Settings) -> Settings:
        """The controls as `restore_image` wants them, or BadRequest naming the bad one."""
        from daclip_jax.sampling import SAMPLERS, check_steps

        steps = _whole("steps", settings.steps)
        seed = _whole("seed", settings.seed)
        tile = None if settings.tile in (None, 0) else _whole("tile size", settings.tile)
        try:
            check_steps(steps, self.unet.cfg.parameterization, self.sde.T)
        except ValueError as e:
            raise BadRequest(f"steps: {one_line(e)}") from None
        if settings.sampler not in SAMPLERS:
            raise BadRequest(f"sampler must be one of {', '.join(SAMPLERS)}, got {settings.sampler!r}")
        if settings.clip_x0 and settings.sampler != "posterior":
            raise BadRequest("clipping x0 needs the posterior sampler")
        if not 0 <= seed <= MAX_SEED:
            raise BadRequest(f"seed must be in [0, {MAX_SEED}], got {seed}")
        if tile is not None and tile <= 2 * OVERLAP:
            raise BadRequest(f"tile size must be above {2 * OVERLAP} pixels, got {tile}")
        return Settings(steps, settings.sampler, seed, tile, bool(settings.clip_x0))

    def read(self, path) -> tuple[np.ndarray, str]:
        """(float32 (H, W, 3) in [0, 1], file name) of an upload, or BadRequest.

        The size cap is checked on the header, before anything is decoded."""
        from PIL import Image

        from daclip_jax.imageio import read_image

        if path is None or path == "":
            raise BadRequest("no image: upload a photo first")
        path = os.fspath(path)
        name = os.path.basename(path)
        try:
            with Image.open(path) as im:
                w, h = im.size
        except Exception:   # not an image, or no header: read_image names the problem
            w = h = 0
        if w * h > self.max_pixels:
            raise BadRequest(
                f"{name}: {w}x{h} pixels ({w * h / 1e6:.1f} Mpx) is above this server's limit "
                f"of {self.max_pixels / 1e6:.1f} Mpx; downscale it, or start the server with a "
                f"larger --max-megapixels")
        try:
            lq = read_image(path)
        except (ValueError, OSError) as e:   # ImageReadError: "<path>: <reason>"
            msg = one_line(e)
            if msg.startswith(path + ": "):
                msg = msg[len(path) + 2:]
            raise BadRequest(f"{name}: {msg}") from None
        return lq, name

    # -- helpers ---------------------------------------------------------------------------------
    def _classify(self, lq) -> dict[str, float]:
        from daclip_jax.classify import classify_degradation
        from daclip_jax.labels import DEGRADATIONS
        from daclip_jax.preprocess import clip_view

        view = clip_view(lq, size=self.daclip.cfg.image_size)[None]
        probs = classify_degradation(self.daclip, view)[0]
        return {w: float(p) for w, p in zip(DEGRADATIONS, probs)}

    def _new_folder(self) -> str:
        folder = os.path.join(self.workdir, uuid.uuid4().hex[:12])
        os.makedirs(folder)
        self._results.append(folder)
        while len(self._results) > KEEP_RESULTS:
            shutil.rmtree(self._results.pop(0), ignore_errors=True)
        return folder

    @staticmethod
    def _write(img, folder, name, suffix) -> str:
        from daclip_jax.imageio import write_png

        stem = os.path.splitext(name)[0] or "image"
        dest = os.path.join(folder, f"{stem}_{suffix}.png")
        write_png(dest, img)
        return dest
