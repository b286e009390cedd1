"""The demo's DA-CLIP controller: held-out degradation accuracy against training minutes.

Trains stage 2 of `daclip-jax demo` (the controller on the frozen CLIP of an existing demo run)
with config overrides, then classifies the demo's held-out patches (every type) and prints the
accuracy per type, DA-CLIP and the frozen CLIP alone. This is how the demo's controller
settings were chosen (README, "The demo").

    python benchmarks/demo_daclip.py --demo runs/demo --out /tmp/db --tag steps1200 \\
        --set daclip.steps=1200 --set daclip.lr=2e-3

`--demo` must hold a finished demo's stage-1 CLIP (`clip/model`; or pass `--set clip.init=...`).
Data overrides (e.g. data.train_scales) are written to `<out>/data`, not into the demo. Each
run appends one JSON line to `<out>/results.jsonl`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--demo", required=True, help="a demo workdir with clip/model")
    ap.add_argument("--out", required=True)
    ap.add_argument("--tag", required=True)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)

    from daclip_jax.convert.daclip import load_daclip
    from daclip_jax.demo import evaluate as E
    from daclip_jax.demo.config import get_config
    from daclip_jax.demo.data import prepare_data
    from daclip_jax.demo.stages import _run_stage, daclip_config, daclip_task
    from daclip_jax.eval import metrics as M
    from daclip_jax.labels import DEGRADATIONS
    from daclip_jax.train.configlib import _literal, apply_overrides

    cfg = get_config()
    apply_overrides(cfg, [(k, _literal(v)) for k, v in (s.split("=", 1) for s in args.set)])
    out = os.path.abspath(args.out)
    paths = prepare_data(cfg, os.path.join(out, "data", args.tag))
    clip_init = cfg.clip.init or os.path.join(os.path.abspath(args.demo), "clip", "model")
    run_dir = os.path.join(out, args.tag)
    c2 = daclip_config(cfg, paths, clip_init)
    seconds = _run_stage(f"controller {args.tag}", c2, run_dir, daclip_task(c2))
    if not seconds:
        with open(os.path.join(run_dir, "done.json")) as f:
            seconds = json.load(f)["seconds"]

    daclip = load_daclip(os.path.join(run_dir, "model"))
    data = E.heldout_set(cfg, paths)
    preds, clip_preds = E.classify_heldout(daclip, data, int(cfg.eval.batch_size))
    acc = M.zero_shot_accuracy(M.confusion_matrix(data["kind"], preds, len(DEGRADATIONS)))
    clip_acc = M.zero_shot_accuracy(M.confusion_matrix(data["kind"], clip_preds, len(DEGRADATIONS)))
    row = dict(tag=args.tag, overrides=args.set, steps=int(cfg.daclip.steps),
               train_min=round(seconds / 60, 2), accuracy=round(acc["accuracy"], 3),
               clip_accuracy=round(clip_acc["accuracy"], 3),
               per_type={n: round(acc[f"accuracy/{n}"], 2) for n in DEGRADATIONS})
    with open(os.path.join(out, "results.jsonl"), "a") as f:
        f.write(json.dumps(row) + "\n")
    print(f"\n{row['tag']}: {row['steps']} steps, {row['train_min']} min: held-out accuracy "
          f"{row['accuracy']} (CLIP alone {row['clip_accuracy']})")
    print("  per type:", " ".join(f"{k[:6]} {v:.2f}" for k, v in row["per_type"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
