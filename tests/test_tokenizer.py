"""tokenize == open_clip.tokenize on the golden strings; HF-layout vocabularies agree."""

import json
import pickle

import numpy as np
import pytest

from daclip_jax.tokenizer import Tokenizer, default_tokenizer, tokenize


@pytest.fixture(scope="module")
def golden(golden_dir):
    meta = json.loads((golden_dir / "tokenizer.json").read_text())
    return meta, np.load(golden_dir / "tokenizer.npz")["tokens"]


def test_matches_golden_rows(golden):
    meta, want = golden
    got = tokenize(meta["strings"])
    assert got.dtype == np.int32 and got.shape == (22, 77)
    np.testing.assert_array_equal(got, want)


def test_matches_golden_pieces_ids_and_flags(golden):
    meta, want = golden
    tok = default_tokenizer()
    assert (tok.sot_token_id, tok.eot_token_id, len(tok.encoder)) == (meta["sot_id"], meta["eot_id"],
                                                                       meta["vocab_size"])
    for e, row in zip(meta["entries"], want):
        ids = tok.encode(e["text"])
        assert ids == e["bpe_ids_without_sot_eot"], e["text"]
        assert [tok.decoder[i] for i in ids] == e["bpe_pieces"]
        assert len(ids) + 2 == e["untruncated_length_with_sot_eot"]
        assert (len(ids) + 2 > 77) == e["truncated"]
        assert int(np.argmax(row)) == e["argmax_position"]
        nonpad = row[: np.flatnonzero(row)[-1] + 1]
        assert (nonpad[-1] == meta["eot_id"]) == e["last_nonpad_token_is_eot"]
        assert tok.decode(nonpad) == e["decode_of_row_nonpad"]


def test_single_string_and_context_length():
    np.testing.assert_array_equal(tokenize("hazy"), tokenize(["hazy"]))
    short = tokenize("a photo of a beautiful mountain lake at sunset", context_length=5)
    assert short.shape == (1, 5) and short[0, 0] == 49406 and short[0, -1] == 49407
    np.testing.assert_array_equal(short[0, :4], tokenize("a photo of a beautiful")[0, :4])
    assert tokenize([]).shape == (0, 77)


def test_default_tokenizer_is_cached_and_picklable():
    assert default_tokenizer() is default_tokenizer()
    clone = pickle.loads(pickle.dumps(default_tokenizer()))
    np.testing.assert_array_equal(clone(["a hazy photo", "noisy"]), tokenize(["a hazy photo", "noisy"]))


def _write_hf_dir(d, tok: Tokenizer, *, as_tokenizer_json=False):
    """The bundled vocabulary in HF CLIP layout (special tokens named <|startoftext|> etc.)."""
    enc = {k: v for k, v in tok.encoder.items()}
    enc["<|startoftext|>"] = enc.pop("<start_of_text>")
    enc["<|endoftext|>"] = enc.pop("<end_of_text>")
    merges = sorted(tok.bpe_ranks, key=tok.bpe_ranks.get)
    if as_tokenizer_json:
        (d / "tokenizer.json").write_text(json.dumps({"model": {
            "type": "BPE", "vocab": enc, "merges": [list(m) for m in merges], "end_of_word_suffix": "</w>"}}))
    else:
        (d / "vocab.json").write_text(json.dumps(enc))
        (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")


@pytest.mark.parametrize("as_tokenizer_json", [False, True])
def test_hf_layout_dir_gives_same_ids(tmp_path, golden, as_tokenizer_json):
    meta, want = golden
    _write_hf_dir(tmp_path, default_tokenizer(), as_tokenizer_json=as_tokenizer_json)
    hf = Tokenizer.from_dir(tmp_path)
    assert (hf.sot_token_id, hf.eot_token_id) == (49406, 49407)
    np.testing.assert_array_equal(hf(meta["strings"]), want)
    # HF's own spellings of the special tokens map to the same ids
    np.testing.assert_array_equal(hf("<|endoftext|> literal special tokens <|startoftext|>"),
                                  tokenize("<end_of_text> literal special tokens <start_of_text>"))


def test_hf_clip_tokenizer_agrees_on_plain_text(tmp_path):
    """transformers' CLIPTokenizer on the same vocabulary agrees wherever its (different)
    text cleaning does not matter, which cross-checks the BPE itself."""
    transformers = pytest.importorskip("transformers")
    _write_hf_dir(tmp_path, default_tokenizer())
    hf = transformers.CLIPTokenizer.from_pretrained(tmp_path)
    texts = ["a photo of a cat sitting on the sofa.", "A HIGH-Quality PHOTO of a Red Car, parked outside!!!",
             "it's a dog; we're happy", "123 4567 numbers 3.14", "café naïve 東京タワー 😀",
             "motion-blurry, hazy, jpeg-compressed, low-light, raindrop, shadowed, uncompleted"]
    for t in texts:
        assert hf(t)["input_ids"] == [49406, *default_tokenizer().encode(t), 49407], t


def test_from_dir_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        Tokenizer.from_dir(tmp_path)
