"""`daclip-jax import SRC --to DIR` and `daclip-jax export CKPT --format F --to PATH`.

import detects the source by its content: an official DA-CLIP .pt (visual_control.* keys),
an open_clip CLIP state dict (.pt/.bin/.safetensors), a Hugging Face CLIP directory, or an
official IR-SDE UNet .pth (init_conv/time_mlp keys). The result is a daclip-jax model dir
(kind "daclip", "clip" or "unet") that `classify` / `restore` / the trainers read.

Converters of other formats are imported lazily, so one missing piece (or torch) only
breaks the verbs that need it, with a clear message.
"""

from __future__ import annotations

import os
import sys

EXPORT_FORMATS = ("daclip-pt", "hf", "open-clip", "unet-pth")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "import", help="convert a PyTorch / Hugging Face checkpoint into a daclip-jax model dir",
        description="Detects: official DA-CLIP .pt, open_clip CLIP (.pt/.bin/.safetensors), "
                    "Hugging Face CLIP directory, official IR-SDE UNet .pth.")
    p.add_argument("source", metavar="SRC")
    p.add_argument("--to", required=True, metavar="DIR", help="output model directory")
    p.add_argument("--config", default=None,
                   help="CLIP config name (e.g. ViT-B-32, daclip_tiny) when the attention head "
                        "count cannot be inferred from the shapes")
    p.add_argument("--quick-gelu", action="store_true",
                   help="open_clip checkpoint trained with QuickGELU (OpenAI weights)")
    p.set_defaults(func=run_import)

    e = subparsers.add_parser(
        "export", help="write a daclip-jax model in an external format",
        description="daclip-pt: official DA-CLIP .pt (strict-loadable by the official code); "
                    "hf: Hugging Face CLIPModel dir (the CLIP part: the controller has no HF "
                    "equivalent); open-clip: open_clip CLIP state dict (.pt/.bin/.safetensors); "
                    "unet-pth: official ConditionalUNet .pth.")
    e.add_argument("checkpoint", metavar="CKPT")
    e.add_argument("--format", required=True, choices=EXPORT_FORMATS)
    e.add_argument("--to", required=True, metavar="PATH")
    e.set_defaults(func=run_export)


def _fail(msg: str) -> int:
    print(f"error: {' '.join(str(msg).split())}", file=sys.stderr)
    return 2


def detect(keys) -> str:
    """'daclip' | 'clip' | 'unet' from the keys of a state dict."""
    from daclip_jax.convert.daclip import is_daclip_state_dict, strip_module_prefix
    from daclip_jax.convert.open_clip import is_open_clip_state_dict
    from daclip_jax.convert.torch_io import CheckpointError

    probe = dict.fromkeys(keys)
    if is_daclip_state_dict(strip_module_prefix(probe)):
        return "daclip"
    if is_open_clip_state_dict(probe):
        return "clip"
    bare = {k[7:] if k.startswith("module.") else k for k in probe}
    if "init_conv.weight" in bare and any(k.startswith("time_mlp.") for k in bare):
        return "unet"
    raise CheckpointError(f"unknown checkpoint layout (first keys: {list(probe)[:3]})")


def _import(source: str, cfg, quick_gelu: bool):
    """-> (kind, model, save function)."""
    from daclip_jax.convert.torch_io import CheckpointError

    if os.path.isdir(source):
        from daclip_jax.model_io import is_model_dir

        if is_model_dir(source):
            raise CheckpointError(f"{source}: already a daclip-jax model dir")
        if not os.path.isfile(os.path.join(source, "config.json")):
            raise CheckpointError(f"{source}: directory is not a Hugging Face CLIP dir (no config.json)")
        from daclip_jax.convert.daclip import save_clip
        from daclip_jax.convert.hf_clip import load_hf_clip

        return "hf-clip", load_hf_clip(source), save_clip
    from daclip_jax.convert.open_clip import read_state_dict

    sd = read_state_dict(source)  # once: official DA-CLIP files are ~1.6 GB
    try:
        kind = detect(sd)
    except CheckpointError as e:
        raise CheckpointError(f"{source}: {e}") from None
    if kind == "unet":
        from daclip_jax.convert.unet import config_from_state_dict, save_unet, unet_from_state_dict

        sd = {k[7:] if k.startswith("module.") else k: v for k, v in sd.items()}
        return kind, unet_from_state_dict(sd, config_from_state_dict(sd), source=source), save_unet
    if kind == "daclip":
        from daclip_jax.convert.daclip import daclip_from_state_dict, save_daclip

        return kind, daclip_from_state_dict(sd, cfg, source=source), save_daclip
    from daclip_jax.convert.daclip import save_clip
    from daclip_jax.convert.open_clip import clip_from_state_dict

    return kind, clip_from_state_dict(sd, cfg, quick_gelu=quick_gelu, source=source), save_clip


def run_import(args) -> int:
    from daclip_jax.convert.torch_io import CheckpointError

    try:
        cfg = None
        if args.config:
            from daclip_jax.models.clip import CLIPConfig

            cfg = CLIPConfig.named(args.config, quick_gelu=args.quick_gelu)
        kind, model, save = _import(args.source, cfg, args.quick_gelu)
        save(model, args.to)
    except (CheckpointError, OSError, ValueError, ImportError) as e:
        return _fail(e)
    print(f"imported {kind} checkpoint {args.source} -> {args.to}")
    return 0


def run_export(args) -> int:
    from daclip_jax.convert.torch_io import CheckpointError

    try:
        if args.format == "unet-pth":
            from daclip_jax.convert.unet import export_unet_pth, load_unet
            from daclip_jax.sde import settings_for_weights

            export_unet_pth(load_unet(args.checkpoint), args.to, settings_for_weights(args.checkpoint))
        elif args.format == "daclip-pt":
            from daclip_jax.convert.daclip import export_daclip_pt, load_daclip

            export_daclip_pt(load_daclip(args.checkpoint), args.to)
        else:
            from daclip_jax.convert.daclip import load_clip

            clip = load_clip(args.checkpoint)
            if args.format == "hf":
                from daclip_jax.convert.hf_clip import export_hf_clip

                export_hf_clip(clip, args.to)
            else:
                from daclip_jax.convert.open_clip import export_open_clip

                export_open_clip(clip, args.to)
    except (CheckpointError, OSError, ValueError, ImportError) as e:
        return _fail(e)
    print(f"exported {args.checkpoint} as {args.format} -> {args.to}")
    return 0
