"""Ahead-of-time compilation of the train step for a TPU topology, from any machine.

The question a team asks before renting a pod — does this recipe fit that slice, with which
mesh, and what bounds its step time — is answered by compiling the *real* train step for the
target (MaxText's ``train_compile.py``, axlearn's ``run_aot_compilation.py`` do the same):

1. libtpu describes the topology's devices on a CPU-only host
   (``jax.experimental.topologies.get_topology_desc``);
2. the model is built abstractly (``nnx.eval_shape``: no weights allocated or read) and the
   trainer's own `build_step_program` gives the jitted step and the state / frozen / batch
   shardings of the config's mesh over those devices;
3. the step is lowered for the config's global batch and compiled by XLA:TPU, which fails with
   the same out-of-memory error the hardware would give.

What XLA reports back is per chip: the memory of the SPMD program (arguments, outputs, aliased
donations, temporaries, code), its FLOPs and bytes accessed (cost analysis), and the
collectives in its HLO. The roofline bound is max(FLOPs / peak FLOP/s, bytes / HBM bandwidth)
of the chip (`CHIPS`); it ignores collectives and overlap, so it bounds the step from below.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import time
from typing import Any

import jax
import numpy as np

from daclip_jax.train.configlib import ConfigError

GiB = 1024 ** 3


# ----------------------------------------------------------------------------- chips

@dataclasses.dataclass(frozen=True)
class ChipSpec:
    name: str
    peak_bf16: float        # FLOP/s, dense
    peak_fp32: float        # FLOP/s of float32 matmuls at JAX's default precision (see below)
    hbm_bytes: float
    hbm_bandwidth: float    # bytes/s
    source: str


# TPU MXUs multiply in bf16: a float32 matmul at JAX's default precision is one bf16 pass (the
# bf16 peak); `precision=HIGHEST` takes 6 passes. The models here use the default precision.
# Figures are the vendors' public specification pages.
CHIPS = {
    "TPU v4": ChipSpec("TPU v4", 275e12, 275e12, 32 * GiB, 1200e9,
                       "https://cloud.google.com/tpu/docs/v4"),
    "TPU v5 lite": ChipSpec("TPU v5e", 197e12, 197e12, 16 * GiB, 819e9,
                            "https://cloud.google.com/tpu/docs/v5e"),
    "TPU v5": ChipSpec("TPU v5p", 459e12, 459e12, 95 * GiB, 2765e9,
                       "https://cloud.google.com/tpu/docs/v5p"),
    "TPU v6 lite": ChipSpec("TPU v6e", 918e12, 918e12, 32 * GiB, 1640e9,
                            "https://cloud.google.com/tpu/docs/v6e"),
    # GPUs: dense tensor-core bf16; fp32 = TF32 tensor cores (XLA:GPU's default for f32 dots)
    "NVIDIA H100 80GB HBM3": ChipSpec("H100 SXM", 989e12, 495e12, 80e9, 3.35e12,
                                      "https://www.nvidia.com/en-us/data-center/h100/"),
    "NVIDIA H200": ChipSpec("H200 SXM", 989e12, 495e12, 141e9, 4.8e12,
                            "https://www.nvidia.com/en-us/data-center/h200/"),
    "NVIDIA A100-SXM4-80GB": ChipSpec("A100 80GB", 312e12, 156e12, 80e9, 2.039e12,
                                      "https://www.nvidia.com/en-us/data-center/a100/"),
}


def chip_spec(device_kind: str) -> ChipSpec | None:
    return CHIPS.get(device_kind)


# ----------------------------------------------------------------------------- topologies

# 3-D tori (v4, v5p): the name counts TensorCores, two per chip (megacore: one JAX device per
# chip). 2-D (v5e, v6e): the name counts chips. Chips -> libtpu's topology string, as
# MaxText's accelerator_to_spec_map lays them out.
_TORUS_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
             256: "4x8x8", 512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}
_TORUS_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
             256: "16x16"}
_GENERATIONS = {  # user-facing prefix -> (libtpu prefix, 3-D?, megacore?)
    "v4": ("v4", True, True),
    "v5p": ("v5", True, True),
    "v5e": ("v5e", False, False),
    "v5litepod": ("v5e", False, False),
    "v6e": ("v6e", False, False),
}


# GPU hosts: `<model>-<GPUs per host>`, hosts = --num-slices; XLA:GPU compiles for a target
# description (assets/gpu_targets/) instead of an attached GPU.
_GPU_TARGETS = {"h100": "h100_sxm", "h200": "h200_sxm", "a100": "a100_sxm_80"}


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str               # as the user wrote it: v5e-16, v4-8, v5e:2x2, h100-8
    libtpu_name: str        # v5e:4x4 (TPU) | 1x1x8 (GPU: slices x hosts x devices per host)
    chip_config: str        # default | megacore (TPU) | the GPU target file's name
    num_slices: int
    platform: str = "tpu"


def parse_topology(name: str, num_slices: int = 1) -> Topology:
    """``v4-8``, ``v5p-32``, ``v5e-16``, ``v6e-8`` (Cloud TPU names), libtpu's own
    ``v5e:2x2`` / ``v4:2x2x1``, or a GPU host ``h100-8`` / ``h200-8`` / ``a100-8``
    (``num_slices`` hosts of that many GPUs)."""
    name = name.strip().lower()
    gpu = re.fullmatch(r"(h100|h200|a100)-(\d+)", name)
    if gpu:
        per_host = int(gpu.group(2))
        if not 1 <= per_host <= 8:
            raise ConfigError(f"--topology {name}: 1 to 8 GPUs per host; more hosts with --num-slices")
        return Topology(name, f"1x{num_slices}x{per_host}", _GPU_TARGETS[gpu.group(1)], 1, "gpu")
    if ":" in name:
        gen = name.split(":")[0]
        megacore = gen in ("v4", "v5")
        return Topology(name, name, "megacore" if megacore else "default", num_slices)
    m = re.fullmatch(r"(v\w+?)-(\d+)", name)
    if not m or m.group(1) not in _GENERATIONS:
        raise ConfigError(f"--topology {name}: not a TPU slice or GPU host; use e.g. v5e-8, v5e-16, v4-8, v5p-32, "
                         f"v6e-8, libtpu's form v5e:2x4, or h100-8")
    prefix, three_d, megacore = _GENERATIONS[m.group(1)]
    count = int(m.group(2))
    chips = count // 2 if megacore else count
    table = _TORUS_3D if three_d else _TORUS_2D
    if chips not in table:
        sizes = sorted(k * 2 if megacore else k for k in table)
        raise ConfigError(f"--topology {name}: no {m.group(1)} slice of {count}; known sizes: {sizes}")
    return Topology(name, f"{prefix}:{table[chips]}", "megacore" if megacore else "default",
                    num_slices)


class LibtpuMissing(RuntimeError):
    """libtpu (the `tpu` extra) is needed to describe TPU devices."""


class CudaPluginMissing(RuntimeError):
    """jax's CUDA plugin (the `gpu-aot` extra) is needed to compile for GPUs."""


def topology_devices(topology: Topology) -> list:
    """The topology's devices (libtpu's or the CUDA plugin's descriptions; no chip needed)."""
    if topology.platform == "gpu":
        return _gpu_devices(topology)
    try:
        import libtpu  # noqa: F401
    except ImportError as e:
        raise LibtpuMissing("libtpu is not installed; install the `tpu` extra: "
                            "pip install 'daclip-jax[tpu]'") from e
    import os

    from daclip_jax.platforms import tpu_chips_present
    # A compile never touches the chips: don't let a training run on this host (which holds
    # libtpu's process lock) stop it from describing them.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    if not tpu_chips_present():
        # no TPU VM around us: libtpu would ask the GCE metadata server what it runs on and print
        # a screen of warnings; these describe "one host, no chips" (the topology to compile
        # for is passed explicitly below and does not depend on them)
        for key, value in (("TPU_SKIP_MDS_QUERY", "1"), ("TPU_WORKER_HOSTNAMES", "localhost"),
                           ("TPU_ACCELERATOR_TYPE", "v5litepod-4"), ("TPU_HOST_BOUNDS", "1,1,1")):
            os.environ.setdefault(key, value)
    from jax.experimental import topologies
    desc = topologies.get_topology_desc(
        platform="tpu", topology_name=topology.libtpu_name, chip_config_name=topology.chip_config,
        chips_per_host_bounds=(2, 2, 1), num_slices=topology.num_slices)
    return list(desc.devices)


def cuda_plugin_installed() -> bool:
    """jax's CUDA plugin (jax_plugins.xla_cuda12) is importable."""
    from importlib.util import find_spec
    try:
        return find_spec("jax_plugins.xla_cuda12") is not None
    except ImportError:   # no jax_plugins namespace at all
        return False


def _gpu_devices(topology: Topology) -> list:
    from importlib.resources import files
    if not cuda_plugin_installed():
        raise CudaPluginMissing("jax's CUDA plugin is not installed; install the `gpu-aot` extra: "
                                "pip install 'daclip-jax[gpu-aot]'")
    from jax.experimental import topologies
    target = files("daclip_jax") / "assets" / "gpu_targets" / f"{topology.chip_config}.txtpb"
    desc = topologies.get_topology_desc(platform="cuda", topology_name=topology.name,
                                        topology=topology.libtpu_name,
                                        target_config=target.read_text())
    return list(desc.devices)


# ----------------------------------------------------------------------------- HLO collectives

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1,
                "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
                "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_ARRAY = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([\d,]*)\]")
# `%name = SHAPE op(` where op is a collective, its async -start half, or an async-start that
# wraps one (`calls=%all-gather...`)
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%\S+\s*=\s*(.+?)\s+([\w-]+)\((.*)$")


def _array_bytes(text: str) -> list[float]:
    out = []
    for dtype, dims in _ARRAY.findall(text):
        n = math.prod(int(d) for d in dims.split(",") if d) if dims else 1
        out.append(n * _DTYPE_BYTES[dtype])
    return out


def collectives(hlo_text: str) -> dict[str, dict[str, float]]:
    """``{kind: {"count", "bytes"}}`` of the collectives in an HLO module's text.

    Bytes are those of each collective's result per device (for an async ``-start``, the last
    array of its tuple: the result buffer). Each instruction counts once: a collective inside a
    loop body (gradient accumulation's scan) is counted once, not per iteration."""
    stats = {k: {"count": 0, "bytes": 0.0} for k in COLLECTIVES}
    for line in hlo_text.splitlines():
        m = _INSTR.match(line)
        if not m:
            continue
        shape, op, rest = m.groups()
        kind = op[:-len("-start")] if op.endswith("-start") else op
        if op == "async-start":
            called = re.search(r"calls=%?([\w-]+)", rest)
            kind = next((k for k in COLLECTIVES if called and called.group(1).startswith(k)), "")
        if kind not in stats:
            continue
        sizes = _array_bytes(shape)
        if not sizes:
            continue
        stats[kind]["count"] += 1
        stats[kind]["bytes"] += sizes[-1] if op.endswith("start") else sum(sizes)
    return stats


def custom_calls(hlo_text: str) -> dict[str, int]:
    """``{custom_call_target: count}`` in an HLO module's text (a host callback would show here)."""
    out: dict[str, int] = {}
    for target in re.findall(r'custom_call_target="([^"]+)"', hlo_text):
        out[target] = out.get(target, 0) + 1
    return out


# ----------------------------------------------------------------------------- compile

class DoesNotFit(RuntimeError):
    """XLA ran out of device memory while compiling (the hardware would too)."""


def abstract_config(config):
    """The config with weight paths cleared: shapes come from the architecture names
    (``model.name``, ``model.unet``, ``model.daclip_name``); no file is read."""
    config = copy.deepcopy(config)
    mc = config.model
    for key in ("init", "daclip"):
        if mc.get(key):
            mc[key] = ""
    if mc.get("controller_init") == "keep":
        mc.controller_init = "zero"
    return config


@dataclasses.dataclass
class CompileReport:
    config_name: str
    topology: str
    device_kind: str
    n_devices: int
    mesh: dict
    global_batch: int
    dtype: str
    remat: bool
    accum_steps: int
    memory: dict               # per chip, bytes
    flops: float               # per chip per step
    bytes_accessed: float
    cost_source: str           # "compiled" (XLA's per-chip analysis) | "global HLO / devices"
    collectives: dict
    custom_calls: dict         # custom_call_target -> count in the compiled HLO
    compile_s: float
    lower_s: float
    chip: ChipSpec | None
    params: int = 0            # trainable parameter count
    frozen: int = 0

    @property
    def total_bytes(self) -> float:
        m = self.memory
        return (m["argument"] + m["output"] - m["alias"] + m["temp"] + m["generated_code"])

    @property
    def fits(self) -> bool | None:
        return None if self.chip is None else self.total_bytes <= self.chip.hbm_bytes

    @property
    def peak_flops(self) -> float | None:
        """The chip's peak FLOP/s for this step's compute dtype."""
        if self.chip is None:
            return None
        return self.chip.peak_bf16 if self.dtype == "bfloat16" else self.chip.peak_fp32

    def roofline_s(self) -> float | None:
        if self.chip is None:
            return None
        return max(self.flops / self.peak_flops, self.bytes_accessed / self.chip.hbm_bandwidth)

    def step_s_at_mfu(self, mfu: float) -> float | None:
        return None if self.chip is None else self.flops / (self.peak_flops * mfu)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["chip"] = None if self.chip is None else dataclasses.asdict(self.chip)
        d.update(total_bytes=self.total_bytes, fits=self.fits, roofline_s=self.roofline_s(),
                 step_s_at_40pct_mfu=self.step_s_at_mfu(0.4),
                 hbm_bytes=None if self.chip is None else self.chip.hbm_bytes)
        return d


def _global_cost(lowered) -> dict:
    """XLA's HLO cost analysis of the lowered (global) module; where the target's plugin has
    none, the host CPU client's analysis of the same module (platform-independent counts)."""
    cost = _first(lowered.cost_analysis())
    if cost.get("flops"):
        return cost
    try:
        from jax._src.lib import xla_client
        module = lowered.compiler_ir("hlo").as_hlo_module()
        cpu = jax.local_devices(backend="cpu")[0].client
        return dict(xla_client._xla.hlo_module_cost_analysis(cpu, module))
    except Exception:   # private API: no figures rather than no report
        return {}


def _first(cost) -> dict:
    """cost_analysis() gives a dict, or a list of one dict per program in older JAX."""
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return dict(cost or {})


def _count(tree) -> int:
    return int(sum(np.prod(x.shape, dtype=np.int64) for x in jax.tree.leaves(tree)))


def compile_train_step(config, devices, *, config_name: str = "", topology: str = "",
                       task=None) -> CompileReport:
    """Compile the trainer's step of ``config`` for ``devices`` (e.g. `topology_devices`)."""
    from flax import nnx

    from daclip_jax import parallel
    from daclip_jax.train.core import build_step_program, get_task

    config = abstract_config(config)
    task = task or get_task(config.task)(config)
    mesh = parallel.make_mesh(dict(config.get("mesh", {"data": -1})), devices)
    rules = parallel.ShardingRules.from_config(config.get("sharding"))
    parallel.batch_size_per_shard(mesh, task.global_batch_size("train"))
    seed = int(config.get("seed", 0))
    model = nnx.eval_shape(lambda: task.build_model(nnx.Rngs(seed)))
    graphdef, params, frozen = nnx.split(model, task.trainable, ...)
    program = build_step_program(config, task, mesh, rules, graphdef, params, frozen)
    batch = program.abstract_batch(task, mesh)
    # traced under the target's mesh, as the trainer runs its step: the platform choices
    # (models/conv.py) follow the TPU devices, not this host's CPU
    with jax.set_mesh(mesh):
        t0 = time.perf_counter()
        lowered = program.step.lower(program.abstract_state, program.abstract_frozen, batch)
        t1 = time.perf_counter()
        try:
            compiled = lowered.compile()
        except Exception as e:   # XLA:TPU's out-of-memory is a compile error
            msg = str(e)
            if "RESOURCE_EXHAUSTED" in msg or "out of memory" in msg:
                raise DoesNotFit(_oom_line(msg)) from e
            raise
        t2 = time.perf_counter()
    mem = compiled.memory_analysis()
    hlo = compiled.as_text()
    cost, cost_source = _first(compiled.cost_analysis()), "compiled"
    if not cost.get("flops"):
        # XLA:GPU reports no cost for a deviceless compile: XLA's HLO cost analysis of the
        # global (unpartitioned) program, split evenly over the devices (exact for data
        # parallelism)
        cost = {k: v / len(devices) for k, v in _global_cost(lowered).items()
                if isinstance(v, (int, float))}
        cost_source = "global HLO / devices"
    mc = config.model
    dtype = str(mc.get("dtype", "float32"))
    return CompileReport(
        config_name=config_name, topology=topology, device_kind=devices[0].device_kind,
        n_devices=len(devices), mesh=dict(mesh.shape), global_batch=task.global_batch_size("train"),
        dtype=dtype, remat=bool(mc.get("remat", False)),
        accum_steps=int(config.train.get("accum_steps", 1)),
        memory=dict(argument=mem.argument_size_in_bytes, output=mem.output_size_in_bytes,
                    alias=mem.alias_size_in_bytes, temp=mem.temp_size_in_bytes,
                    generated_code=mem.generated_code_size_in_bytes),
        flops=float(cost.get("flops", 0.0)), bytes_accessed=float(cost.get("bytes accessed", 0.0)),
        cost_source=cost_source,
        collectives=collectives(hlo), custom_calls=custom_calls(hlo), compile_s=t2 - t1,
        lower_s=t1 - t0,
        chip=chip_spec(devices[0].device_kind), params=_count(params), frozen=_count(frozen))


def _oom_line(msg: str) -> str:
    """XLA's out-of-memory report in one line ('Used X of Y hbm. Exceeded hbm capacity by Z')."""
    for pattern in (r"(Ran out of memory in memory space \w+\.?.*?capacity by [\d.]+\w?)",
                    r"(Used [\d.]+\w? of [\d.]+\w? hbm\.?.*?by [\d.]+\w?)",
                    r"RESOURCE_EXHAUSTED: ([^\n]*)"):
        m = re.search(pattern, msg, flags=re.S)
        if m:
            return " ".join(m.group(1).split())
    return " ".join(msg.split())[:300]


# ----------------------------------------------------------------------------- report

def _gib(b: float) -> str:
    return f"{b / GiB:.2f} GiB"


def format_report(r: CompileReport) -> str:
    lines = [f"{r.config_name} on {r.topology} ({r.n_devices} x {r.device_kind}), mesh "
             + " ".join(f"{k}={v}" for k, v in r.mesh.items())
             + f", global batch {r.global_batch}, {r.dtype}"
             + (", remat" if r.remat else "") + (f", accum {r.accum_steps}" if r.accum_steps > 1 else ""),
             f"  parameters: {r.params / 1e6:.1f} M trained, {r.frozen / 1e6:.1f} M frozen",
             "  memory per chip:"]
    m = r.memory
    for key in ("argument", "output", "alias", "temp", "generated_code"):
        lines.append(f"    {key.replace('_', ' '):15s} {_gib(m[key]):>12s}")
    total = f"    {'total':15s} {_gib(r.total_bytes):>12s}"
    if r.chip is not None:
        hbm = r.chip.hbm_bytes
        verdict = ("fits" if r.fits else f"does not fit by {_gib(r.total_bytes - hbm)}")
        total += f"  of {_gib(hbm)} HBM ({100 * r.total_bytes / hbm:.0f} %): {verdict}"
    lines.append(total)
    lines.append(f"  per chip per step: {r.flops / 1e12:.3f} TFLOP, "
                 f"{r.bytes_accessed / GiB:.2f} GiB accessed ({r.cost_source} cost analysis)")
    if r.chip is not None:
        lines.append(f"  roofline bound: {1e3 * r.roofline_s():.1f} ms/step "
                     f"({r.chip.name}: {r.chip.peak_bf16 / 1e12:.0f} TFLOP/s bf16, "
                     f"{r.chip.hbm_bandwidth / 1e9:.0f} GB/s HBM; {r.chip.source}); "
                     f"at 40 % MFU {1e3 * r.step_s_at_mfu(0.4):.1f} ms/step")
    else:
        lines.append(f"  (no peak figures for {r.device_kind!r}: no roofline)")
    lines.append("  collectives per step (count, bytes per chip):")
    for kind, s in r.collectives.items():
        lines.append(f"    {kind:20s} {s['count']:6d} {_gib(s['bytes']):>12s}")
    calls = ", ".join(f"{k} x{v}" for k, v in sorted(r.custom_calls.items())) or "none"
    lines.append(f"  custom calls: {calls}")
    lines.append(f"  lowering {r.lower_s:.1f} s, compile {r.compile_s:.1f} s")
    return "\n".join(lines)
