"""`daclip-jax restore --daclip CKPT --unet CKPT IN... --out DIR`: universal image restoration."""

from __future__ import annotations

import os
import sys
import time


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "restore", help="restore images with DA-CLIP + the IR-SDE UNet",
        description="Restore images (files or folders) with the DA-CLIP embeddings of each LQ "
                    "image and the IR-SDE reverse process, as the official test.py. Prints the "
                    "degradation DA-CLIP detects in each image; writes <name>.png to --out.")
    add_model_args(p)
    p.add_argument("inputs", nargs="+", metavar="IN", help="image files or folders")
    p.add_argument("--out", required=True, metavar="DIR")
    add_sampling_args(p)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=run)


def add_model_args(p, *, required: bool = True, note: str = "") -> None:
    """--daclip and --unet, as every verb that restores takes them."""
    p.add_argument("--daclip", required=required, metavar="CKPT",
                   help="DA-CLIP weights: official daclip_ViT-B-32.pt or a daclip-jax model dir" + note)
    p.add_argument("--unet", required=required, metavar="CKPT",
                   help="restoration net: official universal-ir.pth / wild-ir.pth or a model dir" + note)


def add_sampling_args(p) -> None:
    """How an image is restored (restore_image's settings), shared by restore and evaluate."""
    p.add_argument("--steps", type=int, default=100,
                   help="reverse steps (<= T = 100; fewer use the official sample_T scaling); "
                        "1 = one network call, for x0-parameterised nets (the fast CPU path)")
    p.add_argument("--sampler", choices=("posterior", "sde", "ode"), default="posterior")
    p.add_argument("--clip-x0", action="store_true",
                   help="clip the posterior sampler's x0 estimates to [0, 1] (not in the official "
                        "sampler; steadies briefly trained nets such as the demo's)")
    p.add_argument("--tile", type=int, default=None,
                   help="tile size in pixels (default: whole image up to 1 Mpx, 512 above)")
    p.add_argument("--overlap", type=int, default=32, help="tile overlap in pixels")
    p.add_argument("--seed", type=int, default=0)


def _image_extensions():
    from PIL import Image

    return {ext.lower() for ext in Image.registered_extensions()}


def expand_inputs(inputs):
    """Files as given; folders walked (sorted) for files with an image extension."""
    exts = None
    for item in inputs:
        if os.path.isdir(item):
            exts = exts or _image_extensions()
            for root, dirs, files in os.walk(item):
                dirs.sort()
                for name in sorted(files):
                    if os.path.splitext(name)[1].lower() in exts:
                        yield os.path.join(root, name)
        else:
            yield item


def _out_path(out_dir, path, used):
    stem = os.path.splitext(os.path.basename(path))[0]
    name, k = stem, 1
    while name in used:
        name, k = f"{stem}_{k}", k + 1
    used.add(name)
    return os.path.join(out_dir, name + ".png")


def run(args) -> int:
    import numpy as np

    from daclip_jax.classify import classify_degradation
    from daclip_jax.imageio import read_image, write_png
    from daclip_jax.labels import DEGRADATIONS
    from daclip_jax.preprocess import clip_view
    from daclip_jax.restore import daclip_contexts, load_models, restore_image
    from daclip_jax.sampling import check_steps

    try:   # the SDE: sde.json next to the UNet weights, else the released nets'
        daclip, unet, sde = load_models(args.daclip, args.unet)
    except (OSError, ValueError, ImportError) as e:
        print(f"error: cannot load the models: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    try:   # the net's parameterization came with it (model dir config / sde.json beside a .pth)
        check_steps(args.steps, unet.cfg.parameterization, sde.T)
    except ValueError as e:
        print(f"error: --steps {args.steps}: {e}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    failed, used = 0, set()
    for path in expand_inputs(args.inputs):
        try:
            lq = read_image(path)
        except (ValueError, OSError) as e:   # ImageReadError is a ValueError
            msg = str(e) if path in str(e) else f"{path}: {' '.join(str(e).split())}"
            print(f"error: {msg}", file=sys.stderr)
            failed += 1
            continue
        tic = time.time()
        size = daclip.cfg.image_size
        probs = classify_degradation(daclip, clip_view(lq, size=size)[None])[0]
        contexts = daclip_contexts(daclip, lq)
        out = restore_image(daclip, unet, lq, sde, steps=args.steps, sampler=args.sampler,
                            seed=args.seed, tile=args.tile, overlap=args.overlap,
                            contexts=contexts, progress=args.progress, clip_x0=args.clip_x0)
        dest = _out_path(args.out, path, used)
        write_png(dest, out)
        top = int(np.argmax(probs))
        print(f"{path}: {DEGRADATIONS[top]} ({probs[top]:.2f}) -> {dest} "
              f"[{lq.shape[1]}x{lq.shape[0]}, {time.time() - tic:.1f} s]")
        sys.stdout.flush()
    return 1 if failed else 0
