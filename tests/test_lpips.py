"""LPIPS-Alex (daclip_jax.models.lpips) against the PyTorch `lpips` package, on a random
AlexNet trunk saved as a torchvision state dict and read back by both sides.

torchvision on PyPI is the CUDA build; beside the CPU torch wheel its C++ ops library cannot
load (it links libtorch_cuda), and `import torchvision` then stops at registering fake
kernels for `torchvision::nms` / `qnms`, ops that were never defined. `_import_lpips`
defines those two operator schemas (no kernels) first, so the real torchvision Python package
imports with its C++ ops reported missing (`extension._has_ops()` is False): lpips only
uses `torchvision.models.alexnet`, plain Python modules. Nothing of torchvision or lpips is
replaced.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")


def _import_lpips():
    try:
        import torchvision  # noqa: F401
    except RuntimeError as e:
        if "torchvision::nms" not in str(e):
            raise
        import sys
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        lib = torch.library.Library("torchvision", "DEF")   # kept alive for the process
        _import_lpips.lib = lib
        for op in ("nms", "qnms"):
            lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        import torchvision  # noqa: F401
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


@pytest.mark.filterwarnings("ignore:.*(pretrained|weight enum).*:UserWarning")
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
