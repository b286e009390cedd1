"""Ahead-of-time compilation for TPU topologies (`daclip-jax compile`, train/aot.py) and the
platform choices that must follow the compiled-for devices, not this host's CPU."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from daclip_jax.models import conv as conv_ops
from daclip_jax.models import onednn
from daclip_jax.train import aot

DN = ("NHWC", "HWIO", "NHWC")
CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")


def _libtpu():
    return pytest.importorskip("libtpu", reason="the `tpu` extra (libtpu) is not installed")


@pytest.mark.parametrize("name, libtpu_name, chip_config, n_devices", [
    ("v4-8", "v4:2x2x1", "megacore", 4),
    ("v4-32", "v4:2x2x4", "megacore", 16),
    ("v5p-32", "v5:2x2x4", "megacore", 16),
    ("v5e-8", "v5e:2x4", "default", 8),
    ("v5e-16", "v5e:4x4", "default", 16),
    ("v5e-64", "v5e:8x8", "default", 64),
    ("v6e-8", "v6e:2x4", "default", 8),
    ("v5e:2x2", "v5e:2x2", "default", 4),
])
def test_topology_names_as_users_say_them(name, libtpu_name, chip_config, n_devices):
    t = aot.parse_topology(name)
    assert (t.libtpu_name, t.chip_config) == (libtpu_name, chip_config)
    _libtpu()
    devices = aot.topology_devices(t)
    assert len(devices) == n_devices and devices[0].platform == "tpu"
    assert aot.chip_spec(devices[0].device_kind) is not None   # every generation has figures


def test_multislice_doubles_the_devices():
    _libtpu()
    devices = aot.topology_devices(aot.parse_topology("v5e-8", num_slices=2))
    assert len(devices) == 16 and {d.slice_index for d in devices} == {0, 1}
    # the hybrid mesh: the slices split `data` (one gradient all-reduce crosses DCN); fsdp and
    # tensor stay inside a slice
    from daclip_jax import parallel
    mesh = parallel.make_mesh({"data": 2, "fsdp": -1}, devices)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 8, "tensor": 1}
    assert [{d.slice_index for d in row.flat} for row in mesh.devices] == [{0}, {1}]
    with pytest.raises(ValueError, match="multiple of the slice count"):
        parallel.make_mesh({"data": 1, "fsdp": -1}, devices)


@pytest.mark.parametrize("bad", ["v5e-7", "v9-8", "tpu", "v4-3"])
def test_unknown_topologies_are_refused_with_the_known_sizes(bad):
    with pytest.raises(ValueError, match="topology"):
        aot.parse_topology(bad)


def test_collectives_are_counted_by_kind_with_their_result_bytes():
    hlo = """
  %all-reduce.1 = f32[256,256]{1,0:T(8,128)} all-reduce(%fusion), channel_id=1, to_apply=%add
  %ag = (bf16[8,128]{1,0}, bf16[64,128]{1,0}) all-gather-start(%p), dimensions={0}
  %agd = bf16[64,128]{1,0} all-gather-done(%ag)
  %rs = f32[32]{0} reduce-scatter(%x), dimensions={0}, to_apply=%add
  ROOT %cp = (f32[4,4]{1,0}, f32[4,4]{1,0}, u32[], u32[]) collective-permute-start(%y)
  %as = ((s32[16]{0}), s32[64]{0}) async-start(%z), calls=%all-to-all.3
  %fusion.2 = f32[128]{0} fusion(%a), kind=kLoop, calls=%fused_all-reduce_like_name
"""
    c = aot.collectives(hlo)
    assert c["all-reduce"] == {"count": 1, "bytes": 256 * 256 * 4}
    assert c["all-gather"] == {"count": 1, "bytes": 64 * 128 * 2}     # the -done is not counted
    assert c["reduce-scatter"] == {"count": 1, "bytes": 32 * 4}
    assert c["collective-permute"]["count"] == 1
    assert c["all-to-all"] == {"count": 1, "bytes": 64 * 4}


def _grad_jaxpr_under(mesh) -> str:
    """The gradient of a 3x3 then a 1x1 convolution, traced with `mesh` in effect."""
    x = np.ones((1, 8, 8, 4), np.float32)

    def loss(k3, k1):
        y = conv_ops.conv_general_dilated(x, k3, (1, 1), ((1, 1), (1, 1)), dimension_numbers=DN)
        return conv_ops.conv_general_dilated(y, k1, (1, 1), "VALID", dimension_numbers=DN).sum()

    kernels = jax.ShapeDtypeStruct((3, 3, 4, 4), jnp.float32), jax.ShapeDtypeStruct((1, 1, 4, 4), jnp.float32)
    with jax.set_mesh(mesh):
        return str(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(*kernels))


def _convs(jaxpr: str) -> int:
    return jaxpr.count("conv_general_dilated[")


def test_platform_choice_follows_the_traced_devices_not_the_default_backend(monkeypatch):
    from daclip_jax import parallel
    cpu_mesh = parallel.make_mesh({"data": 1}, jax.devices("cpu")[:1])
    # the host says TPU, the mesh says CPU: CPU kernels (the 1x1 becomes a GEMM; oneDNN's
    # callback where the library loads)
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    cpu = _grad_jaxpr_under(cpu_mesh)
    assert _convs(cpu) < 5
    assert ("buffer_callback" in cpu) == onednn.available()
    monkeypatch.undo()
    _libtpu()
    tpu_mesh = parallel.make_mesh({"data": -1}, aot.topology_devices(aot.parse_topology("v5e:2x2")))
    assert jax.default_backend() == "cpu"
    # the host says CPU, the mesh says TPU: no callback, no rewrite (2 forward + 4 gradient convs)
    tpu = _grad_jaxpr_under(tpu_mesh)
    assert "callback" not in tpu, [l for l in tpu.splitlines() if "callback" in l]
    assert _convs(tpu) == 5


def _compile_cli(tmp_path, *args, timeout=900):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [
        os.path.join(os.path.dirname(__file__), ".."), os.environ.get("PYTHONPATH")])))
    return subprocess.run(
        [sys.executable, "-c", "import sys; from daclip_jax.cli import main; sys.exit(main())",
         "compile", *args], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=timeout)


@pytest.mark.slow
def test_runlocal_restoration_recipe_compiles_for_v5e_2x2(tmp_path):
    _libtpu()
    out = tmp_path / "ir.json"
    r = _compile_cli(tmp_path, "--config", os.path.join(CONFIGS, "universal_ir.py:runlocal"),
                     "--topology", "v5e:2x2", "--json", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    d = json.loads(out.read_text())
    for key in ("memory", "total_bytes", "hbm_bytes", "fits", "flops", "bytes_accessed",
                "roofline_s", "collectives", "custom_calls", "compile_s", "mesh", "device_kind"):
        assert key in d, key
    assert d["device_kind"] == "TPU v5 lite" and d["n_devices"] == 4 and d["fits"] is True
    assert d["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1}
    assert d["memory"]["argument"] > 0 and d["memory"]["temp"] > 0 and d["flops"] > 0
    # no host callback (oneDNN) or other custom call of ours in the TPU program
    assert not [t for t in d["custom_calls"] if "callback" in t.lower() or "python" in t.lower()]
    # data parallelism: the float32 gradients of the 12 M trained parameters are all-reduced
    # across the chips (all but the few parameters this config's forward leaves unused)
    assert d["collectives"]["all-reduce"]["count"] >= 1
    assert 0.95 * 4 * d["params"] <= d["collectives"]["all-reduce"]["bytes"] <= 1.1 * 4 * d["params"]
    assert "fits" in r.stdout and "roofline bound" in r.stdout and "all-reduce" in r.stdout


@pytest.mark.slow
def test_a_batch_that_cannot_fit_exits_non_zero_naming_the_shortfall(tmp_path):
    _libtpu()
    r = _compile_cli(tmp_path, "--config", os.path.join(CONFIGS, "daclip_vit_b32.py:runlocal"),
                     "--topology", "v5e:2x2", "--config.train.batch_size=4194304")
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "does not fit" in errors[0] and "v5e:2x2" in errors[0]
    assert "daclip_vit_b32.py" in errors[0] and "Traceback" not in r.stderr


def test_compile_mistakes_are_one_line_errors(tmp_path):
    cfg = os.path.join(CONFIGS, "universal_ir.py:runlocal")
    r = _compile_cli(tmp_path, "--config", cfg, "--topology", "v5e-7", timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error:") and "Traceback" not in r.stderr
    _libtpu()
    # 4 chips, a batch of 6 does not split over data=4
    r = _compile_cli(tmp_path, "--config", cfg, "--topology", "v5e:2x2",
                     "--config.train.batch_size=6", timeout=300)
    assert r.returncode == 2 and "does not split" in r.stderr and "Traceback" not in r.stderr


def test_compile_without_libtpu_names_the_extra(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_libtpu(name, *a, **kw):
        if name == "libtpu":
            raise ImportError("No module named 'libtpu'")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_libtpu)
    with pytest.raises(aot.LibtpuMissing, match=r"daclip-jax\[tpu\]"):
        aot.topology_devices(aot.parse_topology("v5e-8"))


def test_gpu_compile_without_the_cuda_plugin_names_the_extra(monkeypatch):
    monkeypatch.setattr(aot, "cuda_plugin_installed", lambda: False)
    with pytest.raises(aot.CudaPluginMissing, match=r"daclip-jax\[gpu-aot\]"):
        aot.topology_devices(aot.parse_topology("h100-8"))


def test_report_arithmetic():
    chip = aot.CHIPS["TPU v5 lite"]
    r = aot.CompileReport(
        config_name="c", topology="v5e-8", device_kind="TPU v5 lite", n_devices=8,
        mesh={"data": 8}, global_batch=16, dtype="bfloat16", remat=False, accum_steps=1,
        memory=dict(argument=10 * aot.GiB, output=9 * aot.GiB, alias=9 * aot.GiB,
                    temp=7.5 * aot.GiB, generated_code=0.5 * aot.GiB),
        flops=197e12 * 0.1, bytes_accessed=819e9 * 0.05, cost_source="compiled", collectives={},
        custom_calls={},
        compile_s=1.0, lower_s=1.0, chip=chip)
    assert r.total_bytes == 18 * aot.GiB and r.fits is False
    assert np.isclose(r.roofline_s(), 0.1) and np.isclose(r.step_s_at_mfu(0.5), 0.2)
    text = aot.format_report(r)
    assert "does not fit by 2.00 GiB" in text


@pytest.mark.slow
def test_gpu_hosts_compile_where_the_cuda_plugin_is_installed(tmp_path):
    """XLA:GPU compiles for a target description (assets/gpu_targets/) without a GPU. The CUDA
    plugin is not in the test extra (pyproject.toml says why): skipped where it is absent."""
    if not aot.cuda_plugin_installed():
        pytest.skip("jax's CUDA plugin (the gpu-aot extra) is not installed")
    out = tmp_path / "gpu.json"
    r = _compile_cli(tmp_path, "--config", os.path.join(CONFIGS, "daclip_vit_b32.py:runlocal"),
                     "--topology", "h100-2", "--json", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    d = json.loads(out.read_text())
    assert d["device_kind"] == "NVIDIA H100 80GB HBM3" and d["n_devices"] == 2 and d["fits"]
    assert d["flops"] > 0 and d["collectives"]["all-reduce"]["count"] >= 1
    assert not [t for t in d["custom_calls"] if "callback" in t.lower()]


@pytest.mark.slow
def test_accelerator_benchmark_runs_on_cpu_at_runlocal_size(tmp_path):
    """benchmarks/accelerator.py must run unchanged on a GPU/TPU host; on CPU (CI) it takes the
    recipes' runlocal sizes, and its step goes through the trainer's own Trainer."""
    out = tmp_path / "acc.json"
    r = subprocess.run([sys.executable, os.path.join(CONFIGS, "..", "benchmarks", "accelerator.py"),
                        "--only", "daclip_b32", "--steps", "1", "--json", str(out)],
                       capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [x["recipe"] for x in rows] == ["daclip_b32"]
    for x in rows:
        assert x["step_s"] > 0 and x["predicted_bytes"] > 0 and np.isfinite(x["loss"])
        assert x["mfu"] is None   # no peak FLOP/s for a CPU
    assert "| daclip_b32 | 4 |" in r.stdout
