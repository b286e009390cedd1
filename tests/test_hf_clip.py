"""HF CLIPModel dirs <-> our CLIP: same embeddings as transformers (tiny random models)."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from daclip_jax.convert import open_clip as oc
from daclip_jax.convert.hf_clip import config_from_hf, export_hf_clip, is_hf_clip_dir, load_hf_clip
from daclip_jax.convert.torch_io import CheckpointError
from daclip_jax.models.clip import CLIPConfig
from daclip_jax.preprocess import preprocess
from daclip_jax.tokenizer import tokenize

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TEXTS = ["a photo of a cat sitting on the sofa.", "hazy", "<end_of_text> literal", ""]


def _hf_tiny(hidden_act="gelu", eos=49407):
    torch.manual_seed(0)
    cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, hidden_act=hidden_act,
                         layer_norm_eps=1e-5, eos_token_id=eos, pad_token_id=0, bos_token_id=49406),
        vision_config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8, hidden_act=hidden_act, layer_norm_eps=1e-5),
        projection_dim=16)
    model = transformers.CLIPModel(cfg).eval()
    with torch.no_grad():  # move every weight (LayerNorms and biases too) off its init value
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _hf_embeddings(model, images_nhwc, tokens):
    with torch.no_grad():
        pix = torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))
        img = model.get_image_features(pixel_values=pix).pooler_output.numpy()
        txt = model.get_text_features(input_ids=torch.from_numpy(tokens.astype(np.int64))).pooler_output.numpy()
    return img, txt


@nnx.jit
def _encode(clip, images, tokens):  # one compile instead of eager op-by-op dispatch
    return clip.encode_image(images), clip.encode_text(tokens)


def _ours(clip, images_nhwc, tokens):
    img, txt = _encode(clip, jnp.asarray(images_nhwc), jnp.asarray(tokens))
    return np.asarray(img), np.asarray(txt)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)


@pytest.mark.parametrize("act", ["gelu", "quick_gelu"])
def test_load_hf_dir_matches_transformers(tmp_path, images, act):
    model = _hf_tiny(act)
    model.save_pretrained(tmp_path)
    assert is_hf_clip_dir(tmp_path)
    clip = load_hf_clip(tmp_path)
    assert clip.cfg.quick_gelu == (act == "quick_gelu")
    assert (clip.cfg.vision_heads, clip.cfg.text_heads, clip.cfg.embed_dim) == (2, 2, 16)
    tokens = tokenize(TEXTS)
    want_img, want_txt = _hf_embeddings(model, images, tokens)
    got_img, got_txt = _ours(clip, images, tokens)
    np.testing.assert_allclose(got_img, want_img, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got_txt, want_txt, atol=1e-5, rtol=0)
    np.testing.assert_allclose(float(clip.logit_scale[...]), float(model.logit_scale.detach()), rtol=1e-7)


def test_export_loads_in_transformers_with_same_embeddings(tmp_path, images):
    # a random open_clip state dict (numpy, much faster than an eager nnx init)
    cfg = CLIPConfig.named("daclip_tiny")
    rng = np.random.default_rng(1)
    sd = {k: (0.1 * rng.standard_normal(s)).astype(np.float32) for k, s in oc.clip_layout(cfg).items()}
    clip = oc.clip_from_state_dict(sd, cfg)

    export_hf_clip(clip, tmp_path)
    model, info = transformers.CLIPModel.from_pretrained(tmp_path, output_loading_info=True)
    model.eval()
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    tokens = tokenize(TEXTS)
    want_img, want_txt = _hf_embeddings(model, images, tokens)
    got_img, got_txt = _ours(clip, images, tokens)
    np.testing.assert_allclose(want_img, got_img, atol=1e-5, rtol=0)
    np.testing.assert_allclose(want_txt, got_txt, atol=1e-5, rtol=0)

    # and back: the round trip is exact
    again = load_hf_clip(tmp_path)
    for (p, a), (_, b) in zip(nnx.to_flat_state(nnx.state(clip, nnx.Param)),
                              nnx.to_flat_state(nnx.state(again, nnx.Param))):
        np.testing.assert_array_equal(np.asarray(a.get_value()), np.asarray(b.get_value()), err_msg=str(p))

    # the written tokenizer files give our ids through transformers' CLIPTokenizer
    hf_tok = transformers.CLIPTokenizer.from_pretrained(tmp_path)
    for t in ("a photo of a cat sitting on the sofa.", "motion-blurry, hazy and noisy"):
        row = tokenize(t)[0]
        assert hf_tok(t)["input_ids"] == row[: np.flatnonzero(row)[-1] + 1].tolist()
    # and the written preprocessor config makes transformers' processor give our CLIP view
    # (bit-exact where the centre crop has no half-pixel tie, which HF floors and torchvision rounds)
    proc = transformers.CLIPImageProcessor.from_pretrained(tmp_path)
    for shape in ((40, 40, 3), (50, 36, 3)):
        u8 = np.random.default_rng(3).integers(0, 256, shape, dtype=np.uint8)
        hf = proc(images=Image.fromarray(u8), return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
        np.testing.assert_array_equal(hf, preprocess(u8, cfg.image_size))


def test_config_checks():
    base = json.loads(transformers.CLIPConfig(
        text_config=dict(hidden_act="gelu"), vision_config=dict(hidden_act="gelu")).to_json_string())
    cfg = config_from_hf(base)
    assert cfg == CLIPConfig.named("ViT-B-32")  # transformers' defaults are ViT-B/32's shapes
    legacy = {**base, "text_config": {**base["text_config"], "eos_token_id": 2}}
    assert config_from_hf(legacy) == cfg  # legacy argmax pooling is ours
    for bad in ({**base, "text_config": {**base["text_config"], "eos_token_id": 7}},
                {**base, "text_config": {**base["text_config"], "hidden_act": "gelu_new"}},
                {**base, "vision_config": {**base["vision_config"], "hidden_act": "quick_gelu"}},
                {**base, "vision_config": {**base["vision_config"], "layer_norm_eps": 1e-6}},
                {**base, "model_type": "siglip"}):
        with pytest.raises(CheckpointError):
            config_from_hf(bad)


def test_bad_dirs_name_the_problem(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        load_hf_clip(tmp_path)
    model = _hf_tiny()
    model.save_pretrained(tmp_path)
    from safetensors.numpy import load_file, save_file

    sd = load_file(tmp_path / "model.safetensors")
    del sd["text_model.encoder.layers.1.self_attn.k_proj.bias"]
    save_file(sd, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="k_proj.bias"):
        load_hf_clip(tmp_path)
