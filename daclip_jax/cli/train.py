"""`daclip-jax train | sweep | eval`: run the shared trainer from a python config.

    daclip-jax train --config configs/universal_ir.py:runlocal,data=imgs \\
        --config.train.lr=1e-4 --workdir runs/x [--resume latest|none|STEP]
    daclip-jax sweep --config configs/daclip_vit_b32.py --workdir runs/sweep --dry-run
    daclip-jax eval  --config configs/daclip_vit_b32.py --workdir runs/x [--step latest|best|N]

`--config.a.b=v` (or `--config.a.b v`) overrides any config field, typed like the field.
A mistake in any of it (config, override, data, checkpoint, workdir, mesh, batch) is one
`error:` line and exit code 2, before a workdir is made; `--debug` shows its traceback.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shlex
import subprocess
import sys

from daclip_jax.cli import error


class _OverrideParser(argparse.ArgumentParser):
    """Collects `--config.a.b=v` into `args.overrides` before normal parsing."""

    def parse_known_args(self, args=None, namespace=None):
        from daclip_jax.train.configlib import ConfigError, parse_overrides
        try:
            overrides, rest = parse_overrides(sys.argv[1:] if args is None else args)
        except ConfigError as e:
            self.exit(error(e))
        namespace, extra = super().parse_known_args(rest, namespace)
        namespace.overrides = list(getattr(namespace, "overrides", None) or []) + overrides
        return namespace, extra


def _common(p):
    p.add_argument("--config", required=True,
                   help="config file and optional arg, e.g. configs/universal_ir.py:runlocal")
    p.add_argument("--workdir", required=True, help="run directory (checkpoints, TensorBoard, model)")
    p.add_argument("--debug", action="store_true",
                   help="show the traceback of every error, mistakes in the input included")


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


def _user_errors() -> tuple[type[Exception], ...]:
    """What a wrong input raises (printed in one line); anything else is a bug (a traceback)."""
    from daclip_jax.convert.torch_io import CheckpointError
    from daclip_jax.data.sources import NoUsableImagesError
    from daclip_jax.train.configlib import ConfigError
    return ConfigError, NoUsableImagesError, CheckpointError


def _one_line_errors(run):
    @functools.wraps(run)
    def wrapped(args) -> int:
        try:
            return run(args)
        except Exception as e:
            if args.debug or not isinstance(e, _user_errors()):
                raise
            return error(e)
    return wrapped


def _checked_config(args, *, resume: str = "latest", need_run: bool = False):
    """The config, with everything the user typed checked before anything is built."""
    import jax

    from daclip_jax import parallel
    from daclip_jax.train import preflight
    preflight.check_workdir(args.workdir, resume=resume, need_run=need_run)
    config = _config(args)
    preflight.check_config(config)
    dc = config.get("distributed", {})
    parallel.initialize_distributed(dc.get("coordinator_address"), dc.get("num_processes"),
                                    dc.get("process_id"))
    preflight.check_devices(config, jax.device_count())
    return config


@_one_line_errors
def run_train(args) -> int:
    _prepare_runtime()
    from daclip_jax.train.core import NonFiniteError, train
    config = _checked_config(args, resume=args.resume)
    try:
        train(config, args.workdir, resume=args.resume)
    except NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    return 0


def sweep_runs(args) -> list[tuple[str, list[str]]]:
    """[(workdir, argv of `daclip-jax train`)] for every sweep point."""
    from daclip_jax.train import preflight
    from daclip_jax.train.configlib import apply_overrides, load_config, load_sweep, run_name
    points = load_sweep(args.config)
    base = [f"--config.{k}={v}" for k, v in args.overrides]
    runs = []
    for point in points:
        # validate every point now, not after hours of the first run (paths: not for a dry run,
        # which may be planned before the data is there)
        config = apply_overrides(load_config(args.config), list(args.overrides) + list(point.items()))
        if not args.dry_run:
            preflight.check_config(config)
        workdir = os.path.join(args.workdir, run_name(point))
        argv = ["train", "--config", args.config, "--workdir", workdir, *base,
                *[f"--config.{k}={v}" for k, v in point.items()], *(["--debug"] * args.debug)]
        runs.append((workdir, argv))
    return runs


_ENTRY = "import sys; from daclip_jax.cli import main; sys.exit(main(sys.argv[1:]))"


@_one_line_errors
def run_sweep(args) -> int:
    runs = sweep_runs(args)
    if args.index is not None:
        if not 0 <= args.index < len(runs):
            return error(f"--index {args.index} outside 0..{len(runs) - 1}")
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


@_one_line_errors
def run_eval(args) -> int:
    _prepare_runtime()
    from daclip_jax import parallel
    from daclip_jax.train.core import Trainer, get_task
    if args.step not in ("latest", "best") and not args.step.isdigit():
        return error(f"--step {args.step}: use latest, best or a step number")
    config = _checked_config(args, resume=args.step if args.step.isdigit() else "latest",
                             need_run=True)
    trainer = Trainer(config, args.workdir, get_task(config.task)(config), resume="skip")
    try:
        step = args.step
        if step == "best":
            step = trainer.ckpt.best_step()
            if step is None:
                return error(f"--step best: no checkpoint in {args.workdir} has the best metric "
                             f"({config.ckpt.get('best_metric') or 'ckpt.best_metric is unset'}); "
                             "use --step latest or a step number")
        trainer.load(None if step == "latest" else int(step))
        scores = trainer.evaluate(int(trainer.state.step))
    finally:
        trainer.close()
    if parallel.is_main_process():
        print(json.dumps(scores, indent=2, sort_keys=True))
    return 0
