import os
import pathlib

import numpy as np
import pytest

GOLDEN = pathlib.Path(__file__).parent / "golden"


@pytest.fixture(scope="session")
def golden_dir() -> pathlib.Path:
    return GOLDEN


def _golden_state_dict(name: str) -> dict:
    """The official state dict stored in golden/<name>.npz: float32 tensors under "sd/",
    stored in reduced precision with a per-tensor scale under "sd_scale/"."""
    z = np.load(GOLDEN / f"{name}.npz")
    return {n[3:]: np.asarray(z[n].astype(np.float32) * z["sd_scale/" + n[3:]], np.float32)
            for n in z.files if n.startswith("sd/")}


@pytest.fixture(scope="session")
def golden_state_dict():
    """golden_state_dict("daclip_tiny") -> that golden file's official state dict (a new dict
    of new arrays per call, so a test may change it)."""
    return _golden_state_dict
