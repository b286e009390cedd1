"""`daclip-jax` command line: one module per verb, each with `register(subparsers)`.

A verb module adds its parser and sets `func=run` where `run(args) -> int` is the exit code.
A mistake in what the user typed is answered with `error(msg)`: one line, exit code 2.
"""

import argparse
import importlib
import sys

# verb modules, in the order `--help` lists them
_VERBS = (
    "daclip_jax.cli.classify",   # classify
    "daclip_jax.cli.convert",    # import, export
    "daclip_jax.cli.restore",    # restore
    "daclip_jax.cli.evaluate",   # evaluate
    "daclip_jax.cli.train",      # train, sweep, eval
    "daclip_jax.cli.compile",    # compile (ahead of time, for a TPU topology)
    "daclip_jax.cli.data",       # data pack / preview
    "daclip_jax.cli.demo",       # demo
    "daclip_jax.cli.serve",      # serve (the web app)
)


def error(msg) -> int:
    """A mistake in the user's input: one line on stderr (what, where, what to do), exit code 2."""
    print(f"error: {' '.join(str(msg).split())}", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="daclip-jax",
        description="DA-CLIP + IR-SDE universal image restoration in JAX.")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for name in _VERBS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # verb not built (yet); everything else is a real error
                continue
            raise
        module.register(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
