"""`daclip-jax data pack|preview|captions`: pack sources into ArrayRecord shards; preview
degradations; write the official captions CSV of a paired layout."""

from __future__ import annotations

import logging
import os
import sys

import ml_collections

from daclip_jax.cli import error


def _source_config(spec: str, kind: str | None, *, min_size: int, label_key: str, data_dir: str):
    """SRC -> the `source` block of the data config. Kind is guessed when not given:
    tfds:NAME -> tfds; *.csv -> csv; dir/*.array_record -> array_record;
    dir/<degradation>/{LQ,GT} -> paired; any other dir -> folder."""
    from daclip_jax.data.pipeline import default_data_config
    from daclip_jax.labels import DEGRADATIONS

    cfg = ml_collections.ConfigDict(default_data_config().source.to_dict())
    cfg.min_size = min_size
    if kind is None:
        if spec.startswith("tfds:"):
            kind = "tfds"
        elif spec.lower().endswith((".csv", ".tsv")):
            kind = "csv"
        elif spec.endswith(".array_record") or (os.path.isdir(spec) and any(
                f.endswith(".array_record") for f in os.listdir(spec))):
            kind = "array_record"
        elif os.path.isdir(spec) and any(os.path.isdir(os.path.join(spec, d, "LQ")) for d in DEGRADATIONS):
            kind = "paired"
        else:
            kind = "folder"
    cfg.kind = kind
    if kind == "tfds":
        cfg.name = spec.removeprefix("tfds:")
        cfg.data_dir = data_dir
        cfg.label_key = label_key
    else:
        cfg.path = spec
    return cfg


def register(subparsers):
    p = subparsers.add_parser("data", help="pack data into ArrayRecord shards; preview degradations; "
                                           "write the captions CSV")
    sub = p.add_subparsers(dest="data_verb", metavar="ACTION")
    sub.required = True

    pk = sub.add_parser("pack", help="pack an image source into ArrayRecord shards")
    pk.add_argument("src", help="image folder, paired root, official CSV, shard dir, or tfds:NAME")
    pk.add_argument("--out", required=True, help="output directory for the shards")
    pk.add_argument("--shards", type=int, default=1, help="number of shard files (default 1)")
    pk.add_argument("--kind", choices=("folder", "paired", "csv", "tfds", "array_record"),
                    help="source kind (default: guessed from SRC)")
    pk.add_argument("--min-size", type=int, default=0, help="skip images with a side below this")
    pk.add_argument("--data-dir", default="", help="tfds data_dir")
    pk.add_argument("--label-key", default="", help="tfds label feature stored as the record label")
    pk.add_argument("--threads", type=int, default=4, help="decoding threads")
    pk.add_argument("--tile", type=int, default=0,
                    help="cut images larger than TILE x TILE into tiles (fast reads of big photos)")
    pk.add_argument("--tile-step", type=int, default=0, help="tile stride (default TILE/2)")
    pk.add_argument("--encoding", choices=("auto", "png", "raw"), default="auto",
                    help="auto: original PNG/JPEG bytes when plain 8-bit, else PNG; raw: uint8 pixels")
    pk.set_defaults(func=run)

    pv = sub.add_parser("preview", help="write a clean|degraded grid, one row per degradation type")
    pv.add_argument("--out", required=True, help="output PNG")
    pv.add_argument("--source", default="", help="clean images (folder/...; default: scikit-image photos)")
    pv.add_argument("--count", type=int, default=3, help="images (column pairs) in the grid")
    pv.add_argument("--size", type=int, default=128, help="cell size in pixels")
    pv.add_argument("--seed", type=int, default=0)
    pv.add_argument("--kinds", default="", help="comma-separated types (default: all ten)")
    pv.add_argument("--no-mixture", action="store_true", help="omit the mixture row")
    pv.add_argument("--no-wild", action="store_true", help="omit the wild row")
    pv.set_defaults(func=run)

    cp = sub.add_parser(
        "captions", help="write ROOT/daclip_{train,val}.csv from the official paired layout",
        description="Caption every GT image of ROOT/<split>/<degradation>/{LQ,GT}/ and write "
                    "ROOT/daclip_<split>.csv as the official scripts/generate_captions.py does: "
                    "tab-separated filepath (the LQ, relative to the working directory: run it "
                    "where you will train) and title 'caption: degradation'.")
    cp.add_argument("root", metavar="ROOT", help="the folder holding train/ and val/, e.g. datasets/universal")
    cp.add_argument("--split", default="train,val", help="comma-separated splits (default train,val)")
    src = cp.add_mutually_exclusive_group(required=True)
    src.add_argument("--captions", metavar="FILE",
                     help="captions to use: CSV/TSV/JSON of GT path (or file name) -> caption, or an "
                          "official daclip_*.csv")
    src.add_argument("--blip", metavar="DIR", help="local BLIP checkpoint folder (transformers) to caption with")
    src.add_argument("--template", nargs="?", const="a photo", metavar="TEXT",
                     help="one caption for all, '{label}' standing for the file's name (default 'a photo')")
    cp.add_argument("--resume", action="store_true", help="continue a half-written CSV")
    cp.add_argument("--no-progress", dest="progress", action="store_false")
    cp.set_defaults(func=run)


def _captions(args) -> int:
    from daclip_jax.data.caption_csv import caption_fn, official_rows, write_captions_csv

    splits = [s.strip() for s in args.split.split(",") if s.strip()]
    jobs = []   # check every split before captioning any
    for split in splits:
        out = os.path.join(args.root, f"daclip_{split}.csv")
        if os.path.exists(out) and not args.resume:
            return error(f"{out} exists: pass --resume to continue it, or delete it")
        jobs.append((out, official_rows(args.root, split)))
    caption = caption_fn(captions=args.captions, blip=args.blip, template=args.template)
    for out, rows in jobs:
        now = write_captions_csv(out, rows, caption, resume=args.resume, progress=args.progress)
        print(f"wrote {out}: {len(rows)} row(s), {now} captioned now")
    return 0


def run(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from daclip_jax.data import sources as S

    try:
        if args.data_verb == "captions":
            return _captions(args)
        if args.data_verb == "pack":
            from daclip_jax.data.pack import pack

            cfg = _source_config(args.src, args.kind, min_size=args.min_size,
                                 label_key=args.label_key, data_dir=args.data_dir)
            source = S.make_source(cfg)
            summary = pack(source, args.out, num_shards=args.shards, threads=args.threads,
                           tile=args.tile, tile_step=args.tile_step, encoding=args.encoding)
            skipped = len(source.skipped) + summary["skipped"]
            print(f"packed {summary['records']} record(s) into {len(summary['shards'])} shard(s) in "
                  f"{args.out}; skipped {skipped}"
                  + (f" (see {os.path.join(args.out, 'skipped.txt')})" if summary["skipped"] else ""))
            for where, reason in [(w, r) for _, w, r in source.skipped.entries][:20]:
                print(f"  skipped {where}: {reason}", file=sys.stderr)
            return 0
        if args.data_verb == "preview":
            from daclip_jax.data.preview import source_images, write_preview
            from daclip_jax.labels import DEGRADATIONS

            images = None
            if args.source:
                cfg = _source_config(args.source, None, min_size=0, label_key="", data_dir="")
                images = source_images(S.make_source(cfg), args.count)
            else:
                from daclip_jax.data.preview import SKIMAGE_PHOTOS, skimage_photos

                images = skimage_photos(SKIMAGE_PHOTOS[:max(1, args.count)])
            kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip()) or DEGRADATIONS
            bad = [k for k in kinds if k not in DEGRADATIONS]
            if bad:
                return error(f"unknown degradation(s) {bad}; choose from {', '.join(DEGRADATIONS)}")
            write_preview(args.out, images, kinds=kinds, size=args.size, seed=args.seed,
                          mixture=not args.no_mixture, wild=not args.no_wild)
            print(f"wrote {args.out}")
            return 0
    except (S.NoUsableImagesError, FileNotFoundError, ValueError) as e:
        return error(e)
    return 2
