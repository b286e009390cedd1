"""The demo's restorer: held-out quality against training minutes, for restorer settings.

Trains stage 3 of `daclip-jax demo` (the ConditionalUNet on the frozen DA-CLIP of an existing
demo run) with config overrides, then restores the demo's held-out patches at each sampling
step count and prints PSNR/SSIM in -> out per type and overall, with the training minutes.
This is how the demo's restorer settings were chosen (README, "The demo").

    python benchmarks/demo_restorer.py --demo runs/demo --out /tmp/rb --tag x0-ml \\
        --set restoration.steps=600 --set restoration.x0_weighting=ml
    python benchmarks/demo_restorer.py --demo runs/demo --out /tmp/rb --tag noise \\
        --set restoration.unet.parameterization=noise --eval-steps 20

`--demo` must hold a finished demo's `daclip/model` (the default run's, or any). Each run
appends one JSON line to `<out>/results.jsonl`. Times are wall seconds on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--demo", required=True, help="a demo workdir with daclip/model")
    ap.add_argument("--out", required=True, help="where runs and results.jsonl go")
    ap.add_argument("--tag", required=True, help="name of this run (a folder under --out)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="demo config override, e.g. restoration.steps=800 (repeatable)")
    ap.add_argument("--eval-steps", default="1,20",
                    help="sampling step counts to evaluate; 1 = the one-step mode (from mu); "
                         "'1noise' = one step from mu + max_sigma z instead (for comparison)")
    ap.add_argument("--config", default="", help="demo config arg (e.g. 'smoke')")
    args = ap.parse_args(argv)

    from daclip_jax.convert.unet import load_unet
    from daclip_jax.convert.daclip import load_daclip
    from daclip_jax.demo import evaluate as E
    from daclip_jax.demo.config import get_config
    from daclip_jax.demo.data import prepare_data
    from daclip_jax.demo.stages import _run_stage, restoration_config, restoration_task
    from daclip_jax.labels import DEGRADATIONS
    from daclip_jax.train.configlib import _literal, apply_overrides
    from daclip_jax.train.restoration_task import make_sde

    cfg = get_config(args.config or None)
    apply_overrides(cfg, [(k, _literal(v)) for k, v in (s.split("=", 1) for s in args.set)])
    demo = os.path.abspath(args.demo)
    paths = prepare_data(cfg, os.path.join(demo, "data"))
    daclip_model = os.path.join(demo, "daclip", "model")
    run_dir = os.path.join(os.path.abspath(args.out), args.tag)
    c3 = restoration_config(cfg, paths, daclip_model)
    train_s = _run_stage(f"restorer {args.tag}", c3, run_dir, restoration_task(c3))
    if not train_s:
        with open(os.path.join(run_dir, "done.json")) as f:
            train_s = json.load(f)["seconds"]

    daclip = load_daclip(daclip_model)
    ema = os.path.join(run_dir, "model_ema")
    unet = load_unet(ema if os.path.isdir(ema) else os.path.join(run_dir, "model"))
    sde = make_sde(cfg.restoration.sde)
    data = E.heldout_set(cfg, paths)
    keep = np.asarray([j < int(cfg.eval.restore_crops_per_photo) for _, j in data["photo"]])
    rdata = E.subset(data, keep)
    preds = np.zeros(len(data["kind"]), np.int32)   # classification is not measured here
    rows = []
    for steps in args.eval_steps.split(","):
        t0 = time.perf_counter()
        if steps == "1noise":
            restored = _one_step_from_noise(daclip, unet, sde, rdata)
        else:
            steps = int(steps)
            restored = E.restore_heldout(daclip, unet, sde, rdata, cfg, steps)
        sample_s = time.perf_counter() - t0
        sc = E.scores(data, preds, rdata, {steps: restored})
        ov = sc["overall"]
        per = {n: round(sc["per_type"][n]["psnr_gain"], 2) for n in DEGRADATIONS}
        row = dict(tag=args.tag, overrides=args.set, train_steps=int(cfg.restoration.steps),
                   train_min=round(train_s / 60, 2), sample_steps=steps,
                   sample_s=round(sample_s, 1), psnr_in=round(ov["psnr_in"], 2),
                   psnr_out=round(ov["psnr_out"], 2), gain=round(ov["psnr_gain"], 2),
                   ssim_in=round(ov["ssim_in"], 4), ssim_out=round(ov["ssim_out"], 4),
                   worst=min(per.values()), per_type=per)
        rows.append(row)
        with open(os.path.join(os.path.abspath(args.out), "results.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")
    print("\n| tag | train steps | train min | sample steps | PSNR in -> out (gain) | SSIM in -> out | worst type |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['tag']} | {r['train_steps']} | {r['train_min']} | {r['sample_steps']} | "
              f"{r['psnr_in']} -> {r['psnr_out']} ({r['gain']:+.2f}) | {r['ssim_in']} -> "
              f"{r['ssim_out']} | {r['worst']:+.2f} |")
        print("  per type:", " ".join(f"{k[:6]} {v:+.1f}" for k, v in r["per_type"].items()))
    return 0


def _one_step_from_noise(daclip, unet, sde, rdata):
    import jax
    import jax.numpy as jnp

    from daclip_jax.preprocess import clip_view
    from daclip_jax.sampling import sample

    size = daclip.cfg.image_size
    lq = jnp.asarray(rdata["lq"])
    views = jnp.asarray(np.stack([clip_view(x, size=size) for x in rdata["lq"]]))
    image_context, degra_context = jax.jit(lambda m, v: m.encode_image(v, control=True))(daclip, views)
    x_T = sde.noise_state(lq, jax.random.key(0))
    out = sample(unet, sde, lq, degra_context, image_context, steps=1, x_T=x_T)
    return np.clip(np.asarray(out, np.float32), 0, 1)


if __name__ == "__main__":
    sys.exit(main())
