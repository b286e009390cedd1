"""`daclip-jax train | sweep | eval`: run the shared trainer from a python config.

    daclip-jax train --config configs/universal_ir.py:runlocal,data=imgs \\
        --config.train.lr=1e-4 --workdir runs/x [--resume latest|none|STEP]
    daclip-jax sweep --config configs/daclip_vit_b32.py --workdir runs/sweep --dry-run
    daclip-jax eval  --config configs/daclip_vit_b32.py --workdir runs/x [--step latest|best|N]

`--config.a.b=v` (or `--config.a.b v`) overrides any config field, typed like the field.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys


class _OverrideParser(argparse.ArgumentParser):
    """Collects `--config.a.b=v` into `args.overrides` before normal parsing."""

    def parse_known_args(self, args=None, namespace=None):
        from daclip_jax.train.configlib import parse_overrides
        overrides, rest = parse_overrides(sys.argv[1:] if args is None else args)
        namespace, extra = super().parse_known_args(rest, namespace)
        namespace.overrides = list(getattr(namespace, "overrides", None) or []) + overrides
        return namespace, extra


def _common(p):
    p.add_argument("--config", required=True,
                   help="config file and optional arg, e.g. configs/universal_ir.py:runlocal")
    p.add_argument("--workdir", required=True, help="run directory (checkpoints, TensorBoard, model)")


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train DA-CLIP / CLIP / the restoration UNet",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.__class__ = _OverrideParser
    _common(p)
    p.add_argument("--resume", default="latest",
                   help="latest (default: continue if the workdir has checkpoints), none, or a step")
    p.set_defaults(func=run_train)

    p = subparsers.add_parser("sweep", help="expand / run the sweep a config declares")
    p.__class__ = _OverrideParser
    _common(p)
    p.add_argument("--dry-run", action="store_true", help="print the runs without starting them")
    p.add_argument("--index", type=int, default=None,
                   help="run only this sweep point (e.g. $SLURM_ARRAY_TASK_ID)")
    p.set_defaults(func=run_sweep)

    p = subparsers.add_parser("eval", help="evaluate a checkpoint of a training run")
    p.__class__ = _OverrideParser
    _common(p)
    p.add_argument("--step", default="latest", help="latest, best or a step number")
    p.set_defaults(func=run_eval)


def _prepare_runtime() -> None:
    """absl flags parsed (grain workers read them) and quiet library logging."""
    from absl import flags, logging as absl_logging
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    absl_logging.set_verbosity(absl_logging.WARNING)


def _config(args):
    from daclip_jax.train.configlib import apply_overrides, load_config
    return apply_overrides(load_config(args.config), args.overrides)


def run_train(args) -> int:
    _prepare_runtime()
    from daclip_jax.train.core import NonFiniteError, train
    config = _config(args)
    try:
        train(config, args.workdir, resume=args.resume)
    except NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    return 0


def sweep_runs(args) -> list[tuple[str, list[str]]]:
    """[(workdir, argv of `daclip-jax train`)] for every sweep point."""
    from daclip_jax.train.configlib import apply_overrides, load_config, load_sweep, run_name
    points = load_sweep(args.config)
    base = [f"--config.{k}={v}" for k, v in args.overrides]
    runs = []
    for point in points:
        # validate every point now, not after hours of the first run
        apply_overrides(load_config(args.config), list(args.overrides) + list(point.items()))
        workdir = os.path.join(args.workdir, run_name(point))
        argv = ["train", "--config", args.config, "--workdir", workdir, *base,
                *[f"--config.{k}={v}" for k, v in point.items()]]
        runs.append((workdir, argv))
    return runs


_ENTRY = "import sys; from daclip_jax.cli import main; sys.exit(main(sys.argv[1:]))"


def run_sweep(args) -> int:
    runs = sweep_runs(args)
    if args.index is not None:
        if not 0 <= args.index < len(runs):
            print(f"error: --index {args.index} outside 0..{len(runs) - 1}", file=sys.stderr)
            return 2
        runs = [runs[args.index]]
    for i, (_, argv) in enumerate(runs):
        print(f"[{i}] daclip-jax " + " ".join(shlex.quote(a) for a in argv), flush=True)
    if args.dry_run:
        return 0
    for _, argv in runs:  # one fresh process per run: clean JAX state, own preemption
        rc = subprocess.call([sys.executable, "-c", _ENTRY, *argv])
        if rc:
            return rc
    return 0


def run_eval(args) -> int:
    _prepare_runtime()
    from daclip_jax import parallel
    from daclip_jax.train.core import Trainer, get_task
    config = _config(args)
    dc = config.get("distributed", {})
    parallel.initialize_distributed(dc.get("coordinator_address"), dc.get("num_processes"),
                                    dc.get("process_id"))
    trainer = Trainer(config, args.workdir, get_task(config.task)(config), resume="skip")
    try:
        step = args.step
        if step == "best":
            step = trainer.ckpt.best_step()
            if step is None:
                print("error: no checkpoint with the best metric", file=sys.stderr)
                return 2
        trainer.load(None if step == "latest" else int(step))
        scores = trainer.evaluate(int(trainer.state.step))
    finally:
        trainer.close()
    if parallel.is_main_process():
        print(json.dumps(scores, indent=2, sort_keys=True))
    return 0
