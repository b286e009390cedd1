"""`daclip-jax classify --checkpoint CKPT IMAGE... [--json]`: degradation probabilities."""

from __future__ import annotations

import json
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "classify", help="probability of each degradation type for each image",
        description="Print, per image, the probability of each of the ten degradation words "
                    "(softmax of 100·cos between DA-CLIP's degradation embedding and the text "
                    "embedding of each word, as the official README).")
    p.add_argument("--checkpoint", required=True,
                   help="DA-CLIP weights: official .pt, daclip-jax model dir, open_clip CLIP "
                        "checkpoint or Hugging Face CLIP dir")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.add_argument("--batch-size", type=int, default=8)
    p.set_defaults(func=run)


def run(args) -> int:
    from daclip_jax.classify import classify_files
    from daclip_jax.convert.daclip import load_daclip
    from daclip_jax.labels import DEGRADATIONS

    try:
        model = load_daclip(args.checkpoint)
    except (OSError, ValueError, ImportError) as e:
        print(f"error: cannot load {args.checkpoint}: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    results, failed = [], 0
    for path, probs, error in classify_files(model, args.images, batch_size=args.batch_size):
        if error is not None:
            failed += 1
            print(f"error: {error}", file=sys.stderr)
            results.append({"path": path, "error": error})
            continue
        ranked = dict(zip(DEGRADATIONS, map(float, probs)))
        top = max(ranked, key=ranked.get)
        results.append({"path": path, "top": top, "probabilities": ranked})
        if not args.json:
            print(path)
            for word, p in ranked.items():
                print(f"  {word:<16} {p:.4f}" + ("  <" if word == top else ""))
            sys.stdout.flush()
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        print()
    return 1 if failed else 0
