"""`daclip-jax evaluate --daclip CKPT --unet CKPT --data ROOT`: the official test protocol."""

from __future__ import annotations

import os
import sys

from daclip_jax.cli import error


def register(subparsers) -> None:
    from daclip_jax.cli.restore import add_model_args, add_sampling_args

    p = subparsers.add_parser(
        "evaluate", help="restore a paired test set and score it as the official test.py",
        description="Restore every LQ image of a paired test set (ROOT/<degradation>/{LQ,GT}/ or "
                    "ROOT/{LQ,GT}/) as `restore` does, and score it against its GT with the "
                    "official test protocol: PSNR, SSIM, PSNR-Y, SSIM-Y (uint8, 4 px border "
                    "cropped), LPIPS-Alex with --lpips, and DA-CLIP's degradation accuracy "
                    "(the folder name is the label). Prints a markdown table; writes the JSON "
                    "(--out) after every batch, which --resume continues from.")
    add_model_args(p, required=False, note=" (required unless --identity)")
    p.add_argument("--data", required=True, metavar="ROOT", help="paired test set root")
    p.add_argument("--out", default="results.json", metavar="JSON",
                   help="results file (default results.json; a .md table is written beside it)")
    p.add_argument("--resume", action="store_true",
                   help="continue the evaluation recorded in --out (same settings required)")
    add_sampling_args(p)
    p.add_argument("--lpips", metavar="ALEX_WEIGHTS",
                   help="torchvision AlexNet state dict (.pth) for LPIPS; without it LPIPS is "
                        "left out (the weights cannot be bundled)")
    p.add_argument("--crop-border", type=int, default=None,
                   help="pixels cropped from every side before PSNR/SSIM (official: 4)")
    p.add_argument("--identity", action="store_true",
                   help="score the LQ images as they are, no restoration (the 'input' row)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per step (default: the number of local devices)")
    p.add_argument("--save-images", metavar="DIR",
                   help="also write the restored images to DIR/<degradation>/<name>.png")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=run)


def run(args) -> int:
    import jax

    from daclip_jax.eval import results as R
    from daclip_jax.eval.evaluate import BatchRestorer, evaluate
    from daclip_jax.eval.image_quality import OFFICIAL_CROP_BORDER
    from daclip_jax.eval.testset import find_test_pairs, mismatched_names

    if not args.identity and not (args.daclip and args.unet):
        return error("--daclip and --unet are required (or --identity to score the LQ images)")
    if jax.process_count() > 1:
        return error("evaluate runs in one process (over all of its local devices)")
    crop_border = OFFICIAL_CROP_BORDER if args.crop_border is None else args.crop_border
    if args.crop_border is not None and args.crop_border != OFFICIAL_CROP_BORDER:
        print(f"note: --crop-border {crop_border} differs from the official protocol's "
              f"{OFFICIAL_CROP_BORDER}; the numbers are not comparable with the paper's",
              file=sys.stderr)
    try:
        pairs = find_test_pairs(args.data)
    except (ValueError, OSError) as e:
        return error(e)
    odd = mismatched_names(pairs)
    if odd:
        print(f"note: {len(odd)} LQ/GT pair(s) have different file names (e.g. {odd[0].lq} and "
              f"{odd[0].gt}); paired by sorted order, as the official loader", file=sys.stderr)

    from daclip_jax.convert.daclip import load_daclip
    from daclip_jax.restore import load_models

    try:   # the same loaders and SDE settings as `restore` (identity: DA-CLIP only, if given)
        if args.identity:
            daclip, unet, sde = (load_daclip(args.daclip) if args.daclip else None), None, None
        else:
            daclip, unet, sde = load_models(args.daclip, args.unet)
        lpips_model = None
        if args.lpips:
            from daclip_jax.models.lpips import load_lpips
            lpips_model = load_lpips(args.lpips)
    except (OSError, ValueError, ImportError) as e:
        return error(f"cannot load the models: {e}")
    from daclip_jax.sampling import check_steps, parameterization_of

    if sde is not None:
        try:   # as `restore`: the net's parameterization came with it
            check_steps(args.steps, parameterization_of(unet), sde.T)
        except ValueError as e:
            return error(f"--steps {args.steps}: {e}")

    absolute = lambda p: os.path.abspath(p) if p else None   # noqa: E731
    settings = dict(data=absolute(args.data), daclip=absolute(args.daclip),
                    unet=None if args.identity else absolute(args.unet), identity=args.identity,
                    steps=None if args.identity else args.steps,
                    sampler=None if args.identity else args.sampler,
                    seed=None if args.identity else args.seed,
                    clip_x0=bool(args.clip_x0) and not args.identity,
                    tile=args.tile, overlap=args.overlap,
                    sde=None if sde is None else sde.to_dict(),
                    parameterization=None if unet is None else parameterization_of(unet),
                    crop_border=crop_border, lpips=absolute(args.lpips))
    if args.resume:
        if not os.path.isfile(args.out):
            return error(f"--resume: {args.out} does not exist")
        try:
            result = R.load_result(args.out)
        except (OSError, ValueError) as e:
            return error(e)
        changed = sorted(k for k in set(settings) | set(result["settings"])
                         if settings.get(k) != result["settings"].get(k))
        if changed:
            return error(f"--resume: {args.out} was made with other settings ({', '.join(changed)})")
        print(f"resuming: {len(result['images'])} of {len(pairs)} images already scored", file=sys.stderr)
    else:
        if os.path.exists(args.out):
            return error(f"{args.out} exists: pass --resume to continue it, or another --out")
        result = R.new_result(settings)

    restorer = None
    if not args.identity:
        restorer = BatchRestorer(daclip, unet, sde, steps=args.steps, sampler=args.sampler,
                                 seed=args.seed, clip_x0=args.clip_x0, tile=args.tile,
                                 overlap=args.overlap)
    batch_size = args.batch_size or (len(restorer.devices) if restorer else 1)
    try:
        result = evaluate(pairs, result, args.out, daclip=daclip, restorer=restorer,
                          lpips_model=lpips_model, crop_border=crop_border, batch_size=batch_size,
                          save_images=args.save_images, progress=args.progress)
    except (ValueError, OSError) as e:   # unreadable image, LQ/GT size mismatch: stop, resumable
        print(f"error: {' '.join(str(e).split())} (results so far are in {args.out}; "
              "--resume continues)", file=sys.stderr)
        return 1
    table = R.markdown(result)
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
        f.write(table + "\n")
    print(table)
    return 0
