"""Caption providers: caption files, templates, local BLIP, fallback; cached per clean image id."""

import json
import logging
import os

import ml_collections
import numpy as np
import pytest

from daclip_jax.data import captions as C


def make_tiny_blip(d):
    """A randomly initialised tiny BLIP + processor saved locally (no download)."""
    from transformers import (BertTokenizer, BlipConfig, BlipForConditionalGeneration,
                              BlipImageProcessor, BlipProcessor)

    os.makedirs(d, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "cat", "dog",
             "the", "on", "sofa", "red", "blue", "street"]
    with open(os.path.join(d, "vocab.txt"), "w") as f:
        f.write("\n".join(words) + "\n")
    tok = BertTokenizer(os.path.join(d, "vocab.txt"))
    tok.add_special_tokens({"bos_token": "[DEC]"})
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=64, bos_token_id=tok.bos_token_id,
                sep_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id, eos_token_id=tok.sep_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_size=32, patch_size=16)
    import torch

    torch.manual_seed(0)
    BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision, projection_dim=32)).save_pretrained(d)
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok).save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_blip_dir(tmp_path_factory):
    return make_tiny_blip(str(tmp_path_factory.mktemp("tiny_blip")))


def _rec(id_, **kw):
    return dict(id=id_, gt=np.full((40, 40, 3), 0.5, np.float32), **kw)


def test_clean_caption_strips_colons():
    assert C.clean_caption("a photo: of  a cat ") == "a photo of a cat"


def test_official_csv_caption_file_drops_the_degradation(tmp_path):
    f = tmp_path / "daclip_train.csv"
    f.write_text("filepath\ttitle\n/d/noisy/LQ/1.png\ta dog on grass: noisy\n"
                 "/d/hazy/LQ/2.png\ta red car: with a colon: hazy\n")
    cap = C.TableCaptioner(str(f))
    assert cap(_rec("/d/noisy/GT/1.png")) == "a dog on grass"  # GT id found via /LQ/ -> /GT/
    assert cap(_rec("/d/hazy/LQ/2.png")) == "a red car with a colon"
    assert "noisy" not in cap(_rec("1.png")) and "hazy" not in cap(_rec("/d/hazy/GT/2.png"))


def test_plain_tables_csv_tsv_json(tmp_path):
    (tmp_path / "c.csv").write_text("filepath,caption\nx/a.png,a tree\n")
    (tmp_path / "c.tsv").write_text("path\ttext\nx/a.png\ta tree\n")
    (tmp_path / "c.json").write_text(json.dumps({"x/a.png": "a tree"}))
    (tmp_path / "l.json").write_text(json.dumps([{"filepath": "x/a.png", "caption": "a tree"}]))
    for name in ("c.csv", "c.tsv", "c.json", "l.json"):
        assert C.TableCaptioner(str(tmp_path / name))(_rec("x/a.png")) == "a tree"
    (tmp_path / "bad.csv").write_text("foo,bar\n1,2\n")
    with pytest.raises(ValueError, match="caption"):
        C.TableCaptioner(str(tmp_path / "bad.csv"))


def test_template_and_record_and_cache():
    t = C.TemplateCaptioner("a photo of a {label}")
    assert t(_rec("1", label="golden_retriever")) == "a photo of a golden retriever"
    r = C.RecordCaptioner(fallback=t)
    assert r(_rec("2", caption="a boat: hazy")) == "a boat hazy"  # ':' removed even from data
    assert r(_rec("3", label="cat")) == "a photo of a cat"

    class Counting(C.Captioner):
        calls = 0

        def _caption(self, record):
            Counting.calls += 1
            return f"caption {record['id']}"

    c = Counting()
    for _ in range(3):
        assert c(_rec("same")) == "caption same"
    assert Counting.calls == 1


def test_fallback_only_when_nothing_configured_logged_once(caplog):
    C._warned_fallback = False
    cap = C.make_captioner(ml_collections.ConfigDict(dict(kind="auto", path="", template="", blip_dir="")))
    with caplog.at_level(logging.WARNING, logger="daclip_jax.data.captions"):
        assert cap(_rec("a")) == "a photo" and cap(_rec("b")) == "a photo"
        assert cap(_rec("c", caption="a lake")) == "a lake"
    assert sum("logged once" in m for m in caplog.messages) == 1


def test_tiny_blip_captioner_runs_once_per_image(tiny_blip_dir):
    cap = C.make_captioner(ml_collections.ConfigDict(dict(kind="blip", blip_dir=tiny_blip_dir,
                                                          max_new_tokens=6, num_beams=1)))
    img = np.random.default_rng(0).random((40, 56, 3)).astype(np.float32)
    text = cap(dict(id="img0", gt=img))
    assert isinstance(text, str) and text and ":" not in text
    assert set(text.split()) <= {"a", "photo", "of", "cat", "dog", "the", "on", "sofa", "red", "blue", "street"}
    # cached: a different image under the same id gives the first caption (no second BLIP run)
    assert cap(dict(id="img0", gt=np.zeros_like(img))) == text
    with pytest.raises(FileNotFoundError):
        C.BlipCaptioner("/nonexistent/blip")
