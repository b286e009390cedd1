"""Hugging Face `CLIPModel` directories <-> daclip_jax.models.clip.CLIP.

An HF CLIP directory is `config.json` + `model.safetensors` (or a sharded
`model.safetensors.index.json`, or a torch `pytorch_model.bin`). Reading safetensors needs
neither torch nor transformers: the config is parsed here with transformers' documented
defaults, and the weights are renamed into open_clip's state-dict layout, so the
open_clip converter (key table, shape checks) does the rest.

HF and open_clip differ only in names and in two layouts:
- attention: HF has separate q/k/v projections, open_clip one fused `in_proj` ([q; k; v]);
- projections: HF's `visual_projection` / `text_projection` are Linear layers (out, in),
  open_clip's `proj` / `text_projection` are plain (in, out) matrices.

Text pooling: our CLIP pools at `argmax(ids)`, the first EOT because EOT is the largest id.
transformers pools at `argmax(ids)` when `eos_token_id == 2` (legacy configs) and otherwise
at the first `eos_token_id`, which is the same position whenever eos is the largest id of
the vocabulary. We check that on import and write `eos_token_id = vocab_size - 1` on export.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

from daclip_jax.convert import open_clip as oc
from daclip_jax.convert.torch_io import CheckpointError, check_layout
from daclip_jax.models.clip import LN_EPS, CLIP, CLIPConfig

__all__ = ["load_hf_clip", "export_hf_clip", "config_from_hf", "config_to_hf",
           "hf_to_open_clip_state_dict", "open_clip_to_hf_state_dict", "is_hf_clip_dir"]

# transformers CLIPTextConfig / CLIPVisionConfig / CLIPConfig defaults (5.x), for keys a
# config.json may leave out
_TEXT_DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                      num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu",
                      layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=49406, eos_token_id=49407)
_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                        num_channels=3, image_size=224, patch_size=32, hidden_act="quick_gelu",
                        layer_norm_eps=1e-5)
_PROJECTION_DIM_DEFAULT = 512
_ACTIVATIONS = {"gelu": False, "quick_gelu": True}  # HF name -> CLIPConfig.quick_gelu
_IGNORED = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")


# ---------------------------------------------------------------- config

def config_from_hf(hf: Mapping, **overrides) -> CLIPConfig:
    """CLIPConfig from an HF `CLIPModel` config.json dict; raises for what our CLIP cannot express."""
    if hf.get("model_type", "clip") != "clip":
        raise CheckpointError(f"not a CLIPModel config (model_type {hf.get('model_type')!r})")
    t = {**_TEXT_DEFAULTS, **(hf.get("text_config") or {})}
    v = {**_VISION_DEFAULTS, **(hf.get("vision_config") or {})}
    acts = {t["hidden_act"], v["hidden_act"]}
    if len(acts) != 1 or not acts <= set(_ACTIVATIONS):
        raise CheckpointError(f"unsupported activations text={t['hidden_act']!r} vision={v['hidden_act']!r}; "
                              "CLIP here has one of 'gelu' (exact) or 'quick_gelu' for both towers")
    for name, c in (("text", t), ("vision", v)):
        if c["intermediate_size"] != 4 * c["hidden_size"]:
            raise CheckpointError(f"{name} intermediate_size {c['intermediate_size']} is not 4 x hidden_size")
        if c["hidden_size"] % c["num_attention_heads"]:
            raise CheckpointError(f"{name} hidden_size is not a multiple of num_attention_heads")
        if not np.isclose(c["layer_norm_eps"], LN_EPS, rtol=0, atol=1e-12):
            raise CheckpointError(f"{name} layer_norm_eps {c['layer_norm_eps']} != {LN_EPS}")
    if v["num_channels"] != 3:
        raise CheckpointError(f"vision num_channels {v['num_channels']} != 3")
    eos = t["eos_token_id"]
    if not isinstance(eos, int) or eos not in (2, t["vocab_size"] - 1):
        # neither legacy argmax pooling nor an eos that argmax finds first
        raise CheckpointError(f"text eos_token_id {eos!r}: transformers pools at its first occurrence, "
                              f"which equals our argmax pooling only for eos == vocab_size - 1 "
                              f"({t['vocab_size'] - 1}) or the legacy value 2")
    return CLIPConfig(
        embed_dim=int(hf.get("projection_dim", _PROJECTION_DIM_DEFAULT)),
        image_size=int(v["image_size"]), patch_size=int(v["patch_size"]),
        vision_width=int(v["hidden_size"]), vision_layers=int(v["num_hidden_layers"]),
        vision_head_width=int(v["hidden_size"]) // int(v["num_attention_heads"]),
        context_length=int(t["max_position_embeddings"]), vocab_size=int(t["vocab_size"]),
        text_width=int(t["hidden_size"]), text_heads=int(t["num_attention_heads"]),
        text_layers=int(t["num_hidden_layers"]), quick_gelu=_ACTIVATIONS[acts.pop()],
    ).replace(**overrides)


def config_to_hf(cfg: CLIPConfig, logit_scale: float = 2.6592) -> dict:
    """The config.json of an HF `CLIPModel` with `cfg`'s architecture."""
    act = "quick_gelu" if cfg.quick_gelu else "gelu"
    common = dict(hidden_act=act, layer_norm_eps=LN_EPS, attention_dropout=0.0, dropout=0.0,
                  initializer_range=0.02, initializer_factor=1.0, projection_dim=cfg.embed_dim)
    text = dict(model_type="clip_text_model", vocab_size=cfg.vocab_size, hidden_size=cfg.text_width,
                intermediate_size=4 * cfg.text_width, num_hidden_layers=cfg.text_layers,
                num_attention_heads=cfg.text_heads, max_position_embeddings=cfg.context_length,
                # open_clip pads with 0; SOT/EOT are the two last ids (49406/49407 for CLIP's vocab)
                pad_token_id=0, bos_token_id=cfg.vocab_size - 2, eos_token_id=cfg.vocab_size - 1, **common)
    vision = dict(model_type="clip_vision_model", hidden_size=cfg.vision_width,
                  intermediate_size=4 * cfg.vision_width, num_hidden_layers=cfg.vision_layers,
                  num_attention_heads=cfg.vision_heads, num_channels=3, image_size=cfg.image_size,
                  patch_size=cfg.patch_size, **common)
    return dict(architectures=["CLIPModel"], model_type="clip", projection_dim=cfg.embed_dim,
                logit_scale_init_value=float(logit_scale), initializer_factor=1.0, dtype="float32",
                text_config=text, vision_config=vision)


# ---------------------------------------------------------------- state dicts (torch layouts)

def _rename_table(cfg: CLIPConfig) -> list[tuple[str, str]]:
    """[(open_clip key, HF key)] for every tensor whose layout is the same in both."""
    def ln(o, h):
        return [(o + ".weight", h + ".weight"), (o + ".bias", h + ".bias")]

    rows = [("visual.class_embedding", "vision_model.embeddings.class_embedding"),
            ("visual.positional_embedding", "vision_model.embeddings.position_embedding.weight"),
            ("visual.conv1.weight", "vision_model.embeddings.patch_embedding.weight"),
            *ln("visual.ln_pre", "vision_model.pre_layrnorm"),
            *ln("visual.ln_post", "vision_model.post_layernorm"),
            ("token_embedding.weight", "text_model.embeddings.token_embedding.weight"),
            ("positional_embedding", "text_model.embeddings.position_embedding.weight"),
            *ln("ln_final", "text_model.final_layer_norm"),
            ("logit_scale", "logit_scale")]
    for o, h, n in (("visual.transformer.resblocks", "vision_model.encoder.layers", cfg.vision_layers),
                    ("transformer.resblocks", "text_model.encoder.layers", cfg.text_layers)):
        for i in range(n):
            o_, h_ = f"{o}.{i}.", f"{h}.{i}."
            for a, b in (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("attn.out_proj", "self_attn.out_proj"),
                         ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
                rows += ln(o_ + a, h_ + b)  # Linear and LayerNorm both have .weight / .bias
    return rows


def _attention_blocks(cfg: CLIPConfig):
    for o, h, n in (("visual.transformer.resblocks", "vision_model.encoder.layers", cfg.vision_layers),
                    ("transformer.resblocks", "text_model.encoder.layers", cfg.text_layers)):
        for i in range(n):
            yield f"{o}.{i}.attn.", f"{h}.{i}.self_attn."


_TRANSPOSED = (("visual.proj", "visual_projection.weight"), ("text_projection", "text_projection.weight"))


def hf_layout(cfg: CLIPConfig) -> "OrderedDict[str, tuple]":
    """{HF key: shape} of a CLIPModel state dict with `cfg`'s architecture."""
    oc_shapes = oc.clip_layout(cfg)
    out = OrderedDict((h, oc_shapes[o]) for o, h in _rename_table(cfg))
    for o, h in _attention_blocks(cfg):
        w = oc_shapes[o + "in_proj_weight"][1]
        for p in ("q_proj", "k_proj", "v_proj"):
            out[f"{h}{p}.weight"], out[f"{h}{p}.bias"] = (w, w), (w,)
    for o, h in _TRANSPOSED:
        out[h] = oc_shapes[o][::-1]
    return out


def hf_to_open_clip_state_dict(sd: Mapping[str, np.ndarray], cfg: CLIPConfig) -> dict[str, np.ndarray]:
    sd = {k: v for k, v in sd.items() if k not in _IGNORED}
    out = {o: sd[h] for o, h in _rename_table(cfg)}
    for o, h in _attention_blocks(cfg):
        for kind in ("weight", "bias"):
            out[f"{o}in_proj_{kind}"] = np.concatenate([sd[f"{h}{p}.{kind}"] for p in ("q_proj", "k_proj", "v_proj")])
    for o, h in _TRANSPOSED:
        out[o] = np.asarray(sd[h]).T
    return out


def open_clip_to_hf_state_dict(sd: Mapping[str, np.ndarray], cfg: CLIPConfig) -> "OrderedDict[str, np.ndarray]":
    out = OrderedDict((h, sd[o]) for o, h in _rename_table(cfg))
    for o, h in _attention_blocks(cfg):
        for kind in ("weight", "bias"):
            for p, part in zip(("q_proj", "k_proj", "v_proj"), np.split(sd[f"{o}in_proj_{kind}"], 3)):
                out[f"{h}{p}.{kind}"] = part
    for o, h in _TRANSPOSED:
        out[h] = np.asarray(sd[o]).T
    return OrderedDict((k, np.array(v, np.float32, order="C")) for k, v in out.items())


# ---------------------------------------------------------------- directories

def is_hf_clip_dir(path) -> bool:
    path = os.fspath(path)
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            return json.load(f).get("model_type") == "clip"
    except (OSError, ValueError):
        return False


def _read_weights(path: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    single = os.path.join(path, "model.safetensors")
    index = os.path.join(path, "model.safetensors.index.json")
    try:
        if os.path.isfile(single):
            return load_file(single)
        if os.path.isfile(index):
            with open(index, encoding="utf-8") as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            out = {}
            for s in shards:
                out.update(load_file(os.path.join(path, s)))
            return out
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"{path}: unreadable safetensors weights: {type(e).__name__}: {e}") from e
    bin_ = os.path.join(path, "pytorch_model.bin")
    if os.path.isfile(bin_):
        from daclip_jax.convert.torch_io import load_state_dict

        return load_state_dict(bin_)
    raise CheckpointError(f"{path}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def load_hf_clip(path, **cfg_overrides) -> CLIP:
    """An HF `CLIPModel` directory -> CLIP. `cfg_overrides` set runtime knobs (dtype, remat)."""
    path = os.fspath(path)
    cfg_file = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_file):
        raise CheckpointError(f"{path}: no config.json (not a Hugging Face model directory)")
    with open(cfg_file, encoding="utf-8") as f:
        try:
            hf_cfg = json.load(f)
        except ValueError as e:
            raise CheckpointError(f"{cfg_file}: invalid JSON: {e}") from None
    try:
        cfg = config_from_hf(hf_cfg, **cfg_overrides)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    sd = {k: v for k, v in _read_weights(path).items() if k not in _IGNORED}
    check_layout(sd, hf_layout(cfg), source=path)
    sd = {k: np.asarray(v, np.float32) for k, v in sd.items()}  # fp16 / bf16 checkpoints
    return oc.clip_from_state_dict(hf_to_open_clip_state_dict(sd, cfg), cfg, source=path)


def export_hf_clip(clip: CLIP, path, *, tokenizer: bool = True) -> None:
    """Write `clip` as an HF CLIP directory: config.json + model.safetensors, which
    `transformers.CLIPModel.from_pretrained` loads with no missing or unexpected keys.

    With tokenizer=True (and CLIP's own 49408-token vocabulary) also writes vocab.json +
    merges.txt and preprocessor_config.json, so `CLIPProcessor.from_pretrained(path)` works.
    """
    from safetensors.numpy import save_file

    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    cfg = clip.cfg
    sd = open_clip_to_hf_state_dict(oc.clip_state_dict(clip), cfg)
    save_file(dict(sd), os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config_to_hf(cfg, float(sd["logit_scale"])), f, indent=2)
    if tokenizer and cfg.vocab_size == 49408:
        _write_tokenizer_and_processor(path, cfg)


def _write_tokenizer_and_processor(path: str, cfg: CLIPConfig) -> None:
    from daclip_jax.preprocess import OPENAI_MEAN, OPENAI_STD
    from daclip_jax.tokenizer import default_tokenizer

    tok = default_tokenizer()
    hf_names = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {hf_names.get(k, k): v for k, v in tok.encoder.items()}
    merges = sorted(tok.bpe_ranks, key=tok.bpe_ranks.get)
    with open(os.path.join(path, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(path, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    with open(os.path.join(path, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(dict(tokenizer_class="CLIPTokenizer", model_max_length=cfg.context_length,
                       bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                       unk_token="<|endoftext|>", pad_token="<|endoftext|>"), f, indent=2)
    with open(os.path.join(path, "preprocessor_config.json"), "w", encoding="utf-8") as f:
        json.dump(dict(image_processor_type="CLIPImageProcessor", do_resize=True,
                       size={"shortest_edge": cfg.image_size}, resample=3, do_center_crop=True,
                       crop_size={"height": cfg.image_size, "width": cfg.image_size},
                       do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                       image_mean=[float(x) for x in OPENAI_MEAN], image_std=[float(x) for x in OPENAI_STD],
                       do_convert_rgb=True), f, indent=2)
