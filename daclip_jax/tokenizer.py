"""CLIP's byte-level BPE tokenizer, exactly as open_clip's `SimpleTokenizer`.

This is a port of open_clip's tokenizer (the one DA-CLIP trains and tests with), not a
wrapper around HF `CLIPTokenizer`: the latter cleans text differently (NFC + whitespace
only, no ftfy repair, no HTML unescaping), so it gives other ids for mojibake or
`&amp;`-style captions, and token ids are the model's input: they must be the ones the
released checkpoints were trained on.

    text -> ftfy.fix_text -> html.unescape twice -> strip -> collapse whitespace -> strip -> lower
         -> regex split (special tokens, contractions, letter runs, single digits, other runs)
         -> UTF-8 bytes mapped to printable unicode (GPT-2's table) -> BPE with '</w>' word ends
    row  =  [SOT] + ids + [EOT], zero padded; longer rows keep 77 and end in EOT.

The vocabulary (OpenAI's `bpe_simple_vocab_16e6.txt.gz`, MIT) ships in `daclip_jax/assets`.
`Tokenizer.from_dir` reads the same vocabulary in Hugging Face layout (vocab.json +
merges.txt, or tokenizer.json), e.g. from an HF CLIP checkpoint directory.
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.resources
import json
import os
from collections.abc import Iterable, Sequence

import ftfy
import numpy as np
import regex

__all__ = ["Tokenizer", "tokenize", "default_tokenizer", "SOT_TOKEN", "EOT_TOKEN"]

SOT_TOKEN, EOT_TOKEN = "<start_of_text>", "<end_of_text>"
_HF_SOT, _HF_EOT = "<|startoftext|>", "<|endoftext|>"
_N_MERGES = 49152 - 256 - 2  # merges used from the .gz: its lines 1..48894


@functools.lru_cache(maxsize=None)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _clean(text: str) -> str:
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return regex.sub(r"\s+", " ", text).strip().lower()


CONTEXT_LENGTH = 77   # CLIP's text context: every token row has this length


class Tokenizer:
    """Byte-level BPE with open_clip's cleaning, split regex and special tokens.

    encoder: token string -> id; merges: BPE merge pairs, highest priority first;
    sot/eot: the strings of the start/end tokens in `encoder`; `literal_specials`: texts
    that, written inside a caption, become the SOT/EOT ids (as in open_clip).
    """

    def __init__(self, encoder: dict[str, int], merges: Sequence[tuple[str, str]], *,
                 sot: str = SOT_TOKEN, eot: str = EOT_TOKEN, literal_specials: dict[str, str] | None = None):
        self.encoder = dict(encoder)
        self.decoder = {v: k for k, v in self.encoder.items()}
        self.bpe_ranks = {tuple(m): i for i, m in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        self.sot_token_id = self.encoder[sot]
        self.eot_token_id = self.encoder[eot]
        # written text -> vocabulary entry; the open_clip spellings always work
        specials = {SOT_TOKEN: sot, EOT_TOKEN: eot, sot: sot, eot: eot, **(literal_specials or {})}
        self._specials = specials
        alternatives = "|".join(regex.escape(s) for s in sorted(specials, key=len, reverse=True))
        self.pat = regex.compile(
            alternatives + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE)
        self._make_caches()

    def _make_caches(self):
        self._bpe = functools.lru_cache(maxsize=1 << 17)(self._bpe_uncached)
        # captions and degradation prompts repeat a lot during training; ftfy dominates the cost
        self._encode = functools.lru_cache(maxsize=1 << 16)(self._encode_uncached)

    # picklable for data-loader worker processes: the caches are rebuilt, not sent
    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("_bpe", "_encode")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._make_caches()

    # --- construction -----------------------------------------------------------------------

    @classmethod
    def from_bpe_gz(cls, path: str | os.PathLike | None = None) -> "Tokenizer":
        """open_clip's vocabulary from `bpe_simple_vocab_16e6.txt.gz` (default: the bundled copy)."""
        if path is None:
            ref = importlib.resources.files("daclip_jax") / "assets" / "bpe_simple_vocab_16e6.txt.gz"
            with ref.open("rb") as f:
                data = f.read()
        else:
            with open(path, "rb") as f:
                data = f.read()
        lines = gzip.decompress(data).decode("utf-8").split("\n")[1:_N_MERGES + 1]
        merges = [tuple(line.split()) for line in lines]
        vocab = list(bytes_to_unicode().values())
        vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + [SOT_TOKEN, EOT_TOKEN]
        return cls(dict(zip(vocab, range(len(vocab)))), merges)

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> "Tokenizer":
        """The vocabulary of a Hugging Face CLIP directory: vocab.json + merges.txt, or tokenizer.json.

        HF names the special tokens `<|startoftext|>` / `<|endoftext|>`; both those and the
        open_clip spellings inside a caption become the SOT/EOT ids.
        """
        path = os.fspath(path)
        vocab_file, merges_file = os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt")
        tok_file = os.path.join(path, "tokenizer.json")
        if os.path.isfile(vocab_file) and os.path.isfile(merges_file):
            with open(vocab_file, encoding="utf-8") as f:
                encoder = json.load(f)
            with open(merges_file, encoding="utf-8") as f:
                lines = f.read().split("\n")
            merges = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
        elif os.path.isfile(tok_file):
            with open(tok_file, encoding="utf-8") as f:
                model = json.load(f)["model"]
            encoder = model["vocab"]
            merges = [tuple(m.split(" ") if isinstance(m, str) else m) for m in model["merges"]]
        else:
            raise FileNotFoundError(f"{path}: no vocab.json + merges.txt or tokenizer.json")
        sot = _HF_SOT if _HF_SOT in encoder else SOT_TOKEN
        eot = _HF_EOT if _HF_EOT in encoder else EOT_TOKEN
        for s in (sot, eot):
            if s not in encoder:
                raise ValueError(f"{path}: vocabulary has no {s} token")
        return cls(encoder, merges, sot=sot, eot=eot)

    # --- encoding ---------------------------------------------------------------------------

    def _bpe_uncached(self, token: str) -> tuple[str, ...]:
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        ranks = self.bpe_ranks
        while len(word) > 1:
            pairs = set(zip(word, word[1:]))
            bigram = min(pairs, key=lambda p: ranks.get(p, float("inf")))
            if bigram not in ranks:
                break
            first, second = bigram
            merged, i = [], 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    merged.extend(word[i:])
                    break
                merged.extend(word[i:j])
                i = j
                if i < len(word) - 1 and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        return word

    def encode(self, text: str) -> list[int]:
        """BPE ids of one text, without SOT/EOT."""
        return list(self._encode(text))

    def _encode_uncached(self, text: str) -> tuple[int, ...]:
        ids = []
        for token in self.pat.findall(_clean(text)):
            special = self._specials.get(token)
            if special is not None:
                ids.append(self.encoder[special])
                continue
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[piece] for piece in self._bpe(token))
        return tuple(ids)

    def decode(self, ids: Iterable[int]) -> str:
        text = "".join(self.decoder[int(i)] for i in ids)
        return bytearray(self.byte_decoder[c] for c in text).decode("utf-8", errors="replace").replace("</w>", " ")

    def __call__(self, texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH) -> np.ndarray:
        """(N, context_length) int32 rows [SOT] + ids + [EOT], zero padded.

        A row that does not fit keeps its first `context_length` ids and ends in EOT, so
        pooling at the EOT (argmax) still finds it.
        """
        if isinstance(texts, str):
            texts = [texts]
        out = np.zeros((len(texts), context_length), np.int32)
        for i, text in enumerate(texts):
            row = [self.sot_token_id, *self._encode(text), self.eot_token_id][:context_length]
            row[-1] = self.eot_token_id
            out[i, :len(row)] = row
        return out


@functools.lru_cache(maxsize=None)
def default_tokenizer() -> Tokenizer:
    """The bundled open_clip tokenizer, built once per process (its BPE cache is shared)."""
    return Tokenizer.from_bpe_gz()


def tokenize(texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH) -> np.ndarray:
    """`open_clip.tokenize`: (N, context_length) int32 token rows for a string or a list of strings."""
    return default_tokenizer()(texts, context_length)
