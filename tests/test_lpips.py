"""LPIPS-Alex (daclip_jax.models.lpips) against the PyTorch `lpips` package, on a random
AlexNet trunk saved as a torchvision state dict and read back by both sides.

The `lpips` package imports `torchvision.models` at import time and uses exactly one thing
from it: `alexnet(pretrained=False).features`, the conv trunk's layer list. PyPI's
torchvision 0.28.0 (the build for torch 2.13.0) is the CUDA build: beside the CPU torch wheel
its C++ ops do not load, `import torchvision` raises ("operator torchvision::nms does not
exist"), and once installed it also breaks `transformers.CLIPModel`, which imports it. So
torchvision is not installed (.ci/run installs lpips with --no-deps), and where it cannot be
imported, `_import_lpips` hands lpips a stand-in `torchvision.models` whose `alexnet()` builds
torchvision's `features` layer list verbatim (torchvision/models/alexnet.py, v0.28.0), only
for the duration of lpips' import. Everything else -- ScalingLayer, the slices, the
normalisation, the heads and their shipped weights, the averaging -- is the lpips package's
own code. (With the real torchvision 0.28.0 made importable by defining its two missing op
schemas, this test gave the same agreement, max abs diff 9.3e-10.)
"""

import sys
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")


def _torchvision_alexnet(pretrained=False, **kwargs):
    """torchvision.models.alexnet's module tree, without the ImageNet weights."""
    from torch import nn

    if pretrained:
        raise RuntimeError("the stand-in has no ImageNet weights")
    net = nn.Module()
    net.features = nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )
    return net


def _import_lpips():
    try:
        import torchvision.models  # noqa: F401  (a torchvision that works: use it)
    except (ImportError, RuntimeError):
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        tv, models = types.ModuleType("torchvision"), types.ModuleType("torchvision.models")
        models.alexnet, tv.models = _torchvision_alexnet, models
        sys.modules.update({"torchvision": tv, "torchvision.models": models})
        try:
            return pytest.importorskip("lpips")
        finally:   # nothing else may mistake the stand-in for torchvision
            del sys.modules["torchvision"], sys.modules["torchvision.models"]
    return pytest.importorskip("lpips")


@pytest.fixture(scope="module")
def lpips_pkg():
    return _import_lpips()


def _torchvision_state_dict(lp):
    """lpips' slices keep torchvision's `features` indices: net.sliceK.N == features.N."""
    return {f"features.{name.split('.', 1)[1]}": t.detach().clone()
            for name, t in lp.net.named_parameters()}


def test_heads_asset_is_the_wheels_alex_v01(lpips_pkg):
    import os

    from daclip_jax.models.lpips import default_heads

    path = os.path.join(os.path.dirname(lpips_pkg.__file__), "weights", "v0.1", "alex.pth")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    heads = default_heads()
    assert sorted(heads) == [f"lin{k}" for k in range(5)]
    for k in range(5):
        np.testing.assert_array_equal(heads[f"lin{k}"], sd[f"lin{k}.model.1.weight"].numpy().reshape(-1))


def test_parity_with_lpips_package(tmp_path, lpips_pkg):
    from daclip_jax.models.lpips import load_lpips, lpips_distance

    torch.manual_seed(0)
    ref = lpips_pkg.LPIPS(net="alex", pnet_rand=True, verbose=False).eval()
    path = tmp_path / "alexnet.pth"
    torch.save(_torchvision_state_dict(ref), path)

    # the torch side reads the saved trunk back into a freshly (differently) initialised LPIPS
    torch.manual_seed(1)
    theirs = lpips_pkg.LPIPS(net="alex", pnet_rand=True, verbose=False).eval()
    saved = torch.load(path, map_location="cpu", weights_only=True)
    names = dict(theirs.net.named_parameters())
    with torch.no_grad():
        for name, p in names.items():
            p.copy_(saved[f"features.{name.split('.', 1)[1]}"])
    ours = load_lpips(path)

    rng = np.random.default_rng(0)
    for h, w in ((64, 64), (97, 130)):
        gt = rng.uniform(size=(h, w, 3)).astype(np.float32)
        out = np.clip(gt + 0.1 * rng.normal(size=gt.shape), 0, 1).astype(np.float32)
        with torch.no_grad():   # test.py: lpips_fn(GT * 2 - 1, SR * 2 - 1)
            t = lambda x: torch.from_numpy(x).permute(2, 0, 1)[None] * 2 - 1   # noqa: E731
            want = float(theirs(t(gt), t(out)).squeeze())
        got = lpips_distance(ours, gt, out)
        assert want > 1e-3
        print(f"LPIPS {h}x{w}: lpips {want:.8f} ours {got:.8f} abs diff {abs(got - want):.2e}")
        assert abs(got - want) <= 1e-5 and got == pytest.approx(want, rel=1e-4), (h, w, got, want)
    assert lpips_distance(ours, gt, gt) == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="31x31"):   # relu5 would be empty (torch errors too)
        lpips_distance(ours, gt[:30], out[:30])


def test_bad_trunk_is_refused(tmp_path):
    from daclip_jax.convert.torch_io import CheckpointError, save_state_dict
    from daclip_jax.models.lpips import load_lpips

    save_state_dict({"features.0.weight": np.zeros((64, 3, 3, 3), np.float32)}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="features.0.weight"):
        load_lpips(tmp_path / "bad.pth")
