"""`daclip-jax compile`: compile a recipe's train step for a TPU topology (or GPU hosts), on any
machine.

    daclip-jax compile --config configs/universal_ir.py --topology v5e-8 \\
        --config.model.dtype=bfloat16 [--num-slices 2] [--json out.json]

Prints per-chip memory against the chip's HBM (fits / does not fit by X GiB), FLOPs and
bytes per step, a roofline bound on the step time, the collectives, and the compile time
(daclip_jax/train/aot.py says how). Weight paths in the config are not read: the shapes come
from the architecture names. Exit codes: 0 fits, 1 does not fit (or XLA ran out of memory
compiling), 2 a mistake in the command. Needs libtpu (pip install 'daclip-jax[tpu]') for TPU
targets, jax's CUDA plugin (pip install 'daclip-jax[gpu-aot]') for GPU targets.
"""

from __future__ import annotations

import argparse
import json
import sys

from daclip_jax.cli import error


def register(subparsers) -> None:
    from daclip_jax.cli.train import _OverrideParser
    p = subparsers.add_parser("compile", help="compile a recipe's train step for a TPU topology or GPU hosts",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.__class__ = _OverrideParser
    p.add_argument("--config", required=True,
                   help="config file and optional arg, e.g. configs/universal_ir.py")
    p.add_argument("--topology", required=True,
                   help="TPU slice: v5e-8, v5e-16, v4-8, v5p-32, v6e-8, or libtpu's v5e:2x4; "
                        "GPU host: h100-8, h200-8, a100-8")
    p.add_argument("--num-slices", type=int, default=1,
                   help="TPU slices joined by DCN (multi-slice), or GPU hosts")
    p.add_argument("--json", default=None, metavar="OUT", help="also write the figures as JSON")
    p.add_argument("--debug", action="store_true", help="show the traceback of an input error")
    p.set_defaults(func=run)


def run(args) -> int:
    import jax

    from daclip_jax.cli.train import _config, _user_errors
    from daclip_jax.train import aot, preflight

    try:
        topology = aot.parse_topology(args.topology, args.num_slices)
        config = _config(args)
        devices = aot.topology_devices(topology)
        # the same checks as `train` (a mesh or batch that does not divide the devices)
        preflight.check_devices(config, len(devices))
    except (aot.LibtpuMissing, aot.CudaPluginMissing, *_user_errors()) as e:
        if args.debug:
            raise
        return error(e)
    except jax.errors.JaxRuntimeError as e:   # libtpu / the CUDA plugin refused the topology
        if args.debug:
            raise
        return error(f"--topology {args.topology}: {' '.join(str(e).split())[:300]}")
    target = args.topology + (f"x{args.num_slices}" if args.num_slices > 1 else "")
    label = f"{args.config} on {target}"
    try:
        report = aot.compile_train_step(config, devices, config_name=args.config, topology=target)
    except aot.DoesNotFit as e:
        print(f"error: {label} does not fit: {e}", file=sys.stderr)
        if args.json:
            _write_json(args.json, dict(config=args.config, topology=args.topology,
                                        fits=False, error=str(e)))
        return 1
    print(aot.format_report(report), flush=True)
    if args.json:
        _write_json(args.json, report.to_json())
    if report.fits is False:
        over = (report.total_bytes - report.chip.hbm_bytes) / aot.GiB
        print(f"error: {label} does not fit: {report.total_bytes / aot.GiB:.2f} GiB per chip, "
              f"{report.chip.hbm_bytes / aot.GiB:.0f} GiB HBM (over by {over:.2f} GiB); try "
              f"--config.mesh.fsdp, --config.model.remat=True or --config.train.accum_steps",
              file=sys.stderr)
        return 1
    return 0


def _write_json(path: str, data: dict) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2, default=float)
        f.write("\n")
