"""The official recipes' train step on the accelerator at hand, beside `daclip-jax compile`'s
prediction for the same chip: step time, peak memory and achieved MFU.

    python benchmarks/accelerator.py [--only universal_ir,daclip_b32,wild_ir] [--steps 10]
                                     [--batch N] [--dtype bfloat16] [--json out.json]

Runs unchanged on one GPU or TPU host (all its local devices, the config's mesh, the recipe's
global batch unless --batch), through the trainer's own `Trainer` and jitted step, on
synthetic batches shaped as the data pipeline's (`data.pipeline.example_spec`). For each
recipe it first compiles the step for the local devices as `daclip-jax compile` does
(train/aot.py: memory per chip, FLOPs, roofline bound), then times `--steps` steps after one
warm-up and reads the devices' peak memory (`memory_stats()`; peak RSS on CPU).
MFU = compiled FLOPs per chip / (step time x the chip's peak FLOP/s of the dtype).
On CPU it runs the recipes' runlocal sizes (tiny nets, batch 4) so CI keeps it alive; there is
no peak FLOP/s for a CPU, so no MFU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from daclip_jax.train import aot  # noqa: E402
from daclip_jax.train.configlib import load_config  # noqa: E402
from daclip_jax.train.core import Trainer, get_task  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = {"universal_ir": "universal_ir.py", "daclip_b32": "daclip_vit_b32.py",
           "wild_ir": "wild_ir.py"}


def recipe_config(name: str, *, on_cpu: bool, batch: int | None, dtype: str):
    arg = "runlocal" if on_cpu else None
    config = aot.abstract_config(load_config(os.path.join(ROOT, "configs", RECIPES[name])
                                             + (f":{arg}" if arg else "")))
    if batch:
        config.train.batch_size = batch
    config.model.dtype = dtype
    if "daclip_dtype" in config.model:
        config.model.daclip_dtype = dtype
    config.export = False
    return config


def synthetic_dataset(task):
    """`Task.dataset` stand-in: endless per-process batches of the pipeline's shapes."""
    from daclip_jax.data.pipeline import example_spec

    def make(split, *, seed, process_index, process_count):
        rng = np.random.default_rng(seed + process_index)
        local = task.global_batch_size(split) // process_count
        spec = example_spec(task.config.data)

        def one():
            batch = {}
            for key, (shape, dtype) in spec.items():
                if np.issubdtype(dtype, np.integer):
                    batch[key] = rng.integers(0, 49408 if "tokens" in key else 10,
                                              (local, *shape)).astype(dtype)
                else:
                    batch[key] = rng.uniform(size=(local, *shape)).astype(dtype)
            return batch
        while True:
            yield one()
    return make


def peak_memory() -> tuple[float, str]:
    stats = [d.memory_stats() or {} for d in jax.local_devices()]
    peaks = [s.get("peak_bytes_in_use", 0) for s in stats]
    if any(peaks):
        return float(max(peaks)), "device peak"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0, "process RSS"


def run(name: str, *, steps: int, batch: int | None, dtype: str) -> dict:
    on_cpu = jax.default_backend() == "cpu"
    config = recipe_config(name, on_cpu=on_cpu, batch=batch, dtype=dtype)
    devices = jax.devices()
    predicted = aot.compile_train_step(config, devices, config_name=name,
                                       topology=f"{len(devices)} x {devices[0].device_kind}")
    task = get_task(config.task)(config)
    with tempfile.TemporaryDirectory() as workdir:
        trainer = Trainer(config, workdir, task, resume="none",
                          dataset_fn=synthetic_dataset(task))
        try:
            from daclip_jax.train.core import to_global
            batches = [to_global(next(trainer.train_iter), trainer.mesh, task.batch_keys or None)
                       for _ in range(2)]
            state = trainer.state
            with jax.set_mesh(trainer.mesh):
                t0 = time.perf_counter()
                state, metrics = trainer._step(state, trainer.frozen, batches[0])   # compile + 1
                jax.block_until_ready(metrics)
                first = time.perf_counter() - t0
                t0 = time.perf_counter()
                for i in range(steps):
                    state, metrics = trainer._step(state, trainer.frozen, batches[i % 2])
                jax.block_until_ready(metrics)
                step_s = (time.perf_counter() - t0) / steps
        finally:
            trainer.close()
    peak, peak_kind = peak_memory()
    peak_flops = predicted.peak_flops
    return dict(recipe=name, devices=len(devices), device_kind=devices[0].device_kind,
                global_batch=predicted.global_batch, dtype=dtype, step_s=step_s,
                first_step_s=first, roofline_s=predicted.roofline_s(),
                predicted_bytes=predicted.total_bytes, peak_bytes=peak, peak_kind=peak_kind,
                flops_per_chip=predicted.flops,
                mfu=None if peak_flops is None else predicted.flops / (step_s * peak_flops),
                loss=float(jax.device_get(metrics["loss"])))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=",".join(RECIPES))
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 10; 2 on CPU)")
    p.add_argument("--batch", type=int, default=None, help="global batch (default: the recipe's)")
    p.add_argument("--dtype", default=None, help="bfloat16 (default on GPU/TPU) or float32")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    on_cpu = jax.default_backend() == "cpu"
    steps = args.steps or (2 if on_cpu else 10)
    dtype = args.dtype or ("float32" if on_cpu else "bfloat16")
    rows = [run(n, steps=steps, batch=args.batch, dtype=dtype) for n in args.only.split(",")]
    gib = lambda b: "—" if b is None else f"{b / 2 ** 30:.2f}"
    ms = lambda s: "—" if s is None else f"{1e3 * s:.1f}"
    print(f"{jax.device_count()} x {jax.devices()[0].device_kind}, {dtype}, {steps} timed steps"
          + (" (CPU: runlocal sizes)" if on_cpu else ""))
    print("| recipe | global batch | step ms | roofline ms (compile) | MFU | peak GiB "
          "| compile's GiB per chip | TFLOP per chip |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        mfu = "—" if r["mfu"] is None else f"{100 * r['mfu']:.1f} %"
        print(f"| {r['recipe']} | {r['global_batch']} | {ms(r['step_s'])} | {ms(r['roofline_s'])} "
              f"| {mfu} | {gib(r['peak_bytes'])} ({r['peak_kind']}) | {gib(r['predicted_bytes'])} "
              f"| {r['flops_per_chip'] / 1e12:.4f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
