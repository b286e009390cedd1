"""The official masks and PSFs shipped as package data: read without pickle, shipped in wheels."""

import fnmatch
import pathlib
import pickle
import tomllib

import numpy as np
import pytest

import daclip_jax
from daclip_jax.data import degradations as D
from daclip_jax.data import wild
from daclip_jax.data.degradations import _official_assets, inpainting

ASSETS = pathlib.Path(daclip_jax.__file__).parent / "assets" / "daclip_uir"


def _forbidden(*args, **kwargs):
    raise AssertionError("pickle/torch.load called on the official assets")


def test_assets_are_read_without_pickle(monkeypatch):
    import torch

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, _forbidden)
    monkeypatch.setattr(torch, "load", _forbidden)
    calls = []
    real_load = np.load

    def recording_load(file, *args, **kwargs):
        calls.append((getattr(file, "name", file), kwargs.get("allow_pickle")))
        return real_load(file, *args, **kwargs)

    monkeypatch.setattr(np, "load", recording_load)
    for cached in (_official_assets.inpainting_masks, _official_assets.motion_psfs,
                   inpainting.masks_by_hole_fraction):
        cached.cache_clear()
    try:
        x = np.full((64, 64, 3), 0.5, np.float32)
        D.degrade(x, "uncompleted", np.random.default_rng(0))
        wild.psf_kernel(np.random.default_rng(0))
    finally:
        for cached in (_official_assets.inpainting_masks, _official_assets.motion_psfs,
                       inpainting.masks_by_hole_fraction):
            cached.cache_clear()             # reload with the real functions next time
    names = sorted(pathlib.Path(str(f)).name for f, _ in calls)
    assert names == ["inpainting_masks.npz", "psf.npz"]
    assert all(allow is False for _, allow in calls)


def test_assets_are_package_data_with_their_licence():
    files = sorted(p.name for p in ASSETS.iterdir())
    assert {"inpainting_masks.npz", "psf.npz", "LICENSE_daclip-uir.txt", "README.md"} <= set(files)
    assert "MIT License" in (ASSETS / "LICENSE_daclip-uir.txt").read_text()
    pyproject = pathlib.Path(daclip_jax.__file__).parents[1] / "pyproject.toml"
    if not pyproject.exists():
        pytest.skip("not a source checkout")
    patterns = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-data"]["daclip_jax"]
    for name in files:
        rel = f"assets/daclip_uir/{name}"
        assert any(fnmatch.fnmatch(rel, pat) and pat.count("/") == rel.count("/") for pat in patterns), rel
