"""CLIP's byte-level byte-pair-encoding tokenizer (gives the same ids as OpenAI's).

Text is cleaned (ftfy, HTML unescaping twice, whitespace collapsed, lower-cased), split by a regular
expression into words, numbers (one digit per piece) and punctuation runs; each piece's UTF-8 bytes are mapped
to printable characters and merged by the BPE merge list shipped beside this module
(``bpe_simple_vocab_16e6.txt.gz``, from OpenAI CLIP, see ``LICENSE-BPE.txt``). The last symbol of each piece
carries the end-of-word marker ``</w>``.

Nothing is read at import time: the tokenizer is built on first use and cached (:func:`tokenizer`).
"""
from __future__ import annotations

import functools
import gzip
import html
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Tuple, Union

import torch

__all__ = ["BPETokenizer", "tokenizer", "tokenize", "DEFAULT_CONTEXT_LENGTH", "SOT_TEXT", "EOT_TEXT", "VOCAB_SIZE",
           "EOT_ID"]

DEFAULT_CONTEXT_LENGTH = 77
SOT_TEXT = "<|startoftext|>"
EOT_TEXT = "<|endoftext|>"
END_OF_WORD = "</w>"
BPE_PATH = Path(__file__).with_name("bpe_simple_vocab_16e6.txt.gz")
#: merges used by CLIP: the vocabulary is 256 bytes x 2 (with and without </w>) + merges + 2 specials = 49408
N_MERGES = 49152 - 256 - 2
VOCAB_SIZE = 2 * 256 + N_MERGES + 2
#: the end-of-text id, the vocabulary's last (so the largest id of a row marks its end, as OpenAI pools)
EOT_ID = VOCAB_SIZE - 1
#: words (letters), single digits, runs of other non-space characters; English contractions split off
_PIECE_PATTERN = (
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)


def _byte_symbols() -> Tuple[List[str], Dict[int, str]]:
    """Printable stand-ins for the 256 byte values (GPT-2's byte-level alphabet).

    Returns the 256 symbols in vocabulary order (printable Latin-1 bytes in ascending order, then the remaining
    bytes mapped to U+0100 onwards) and the byte -> symbol table.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
                 *range(ord("\u00ae"), ord("\u00ff") + 1)]
    kept = set(printable)
    others = [b for b in range(256) if b not in kept]
    table = {b: chr(b) for b in printable}
    table.update({b: chr(256 + n) for n, b in enumerate(others)})
    return [table[b] for b in printable + others], table


def _clean(text: str) -> str:
    import ftfy  # imported on first use only

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).lower()


class BPETokenizer:
    """Byte-pair tokenizer with ``encode(str) -> list[int]`` and ``decode(ids) -> str``."""

    def __init__(self, bpe_path: Union[str, Path] = BPE_PATH):
        import regex  # \p{L} / \p{N} classes need the `regex` module

        with gzip.open(bpe_path, "rt", encoding="utf-8") as fh:
            lines = fh.read().split("\n")
        merges = [tuple(line.split()) for line in lines[1:1 + N_MERGES]]  # line 0 is a version header
        symbols, self._byte_to_symbol = _byte_symbols()
        self._symbol_to_byte = {s: b for b, s in self._byte_to_symbol.items()}
        vocab = symbols + [s + END_OF_WORD for s in symbols] + ["".join(m) for m in merges] + [SOT_TEXT, EOT_TEXT]
        self.encoder: Dict[str, int] = {tok: i for i, tok in enumerate(vocab)}
        self.decoder: Dict[int, str] = dict(enumerate(vocab))
        self._ranks: Dict[Tuple[str, str], int] = {pair: r for r, pair in enumerate(merges)}
        self._cache: Dict[str, List[str]] = {}
        self._pattern = regex.compile(_PIECE_PATTERN, regex.IGNORECASE)
        self.sot_token = self.encoder[SOT_TEXT]
        self.eot_token = self.encoder[EOT_TEXT]
        self.vocab_size = len(vocab)

    def _merge(self, piece: str) -> List[str]:
        """BPE of one piece (already mapped to byte symbols): merge the best-ranked adjacent pair until none."""
        if piece in self._cache:
            return self._cache[piece]
        parts = list(piece[:-1]) + [piece[-1] + END_OF_WORD]
        ranks = self._ranks
        while len(parts) > 1:
            best = min(zip(parts, parts[1:]), key=lambda pair: ranks.get(pair, len(ranks)))
            if best not in ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and parts[i] == best[0] and parts[i + 1] == best[1]:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        self._cache[piece] = parts
        return parts

    def encode(self, text: str) -> List[int]:
        """Token ids of ``text`` (without SOT/EOT)."""
        ids: List[int] = []
        for piece in self._pattern.findall(_clean(text)):
            if piece in (SOT_TEXT, EOT_TEXT):
                ids.append(self.encoder[piece])
                continue
            mapped = "".join(self._byte_to_symbol[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[p] for p in self._merge(mapped))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of token ids (words separated by single spaces, as OpenAI's decoder gives)."""
        text = "".join(self.decoder[int(i)] for i in ids)
        data = bytes(self._symbol_to_byte[c] for c in text)
        return data.decode("utf-8", errors="replace").replace(END_OF_WORD, " ")


@functools.lru_cache(maxsize=None)
def tokenizer() -> BPETokenizer:
    """The shared tokenizer (built on first call, then cached)."""
    return BPETokenizer()


def tokenize(texts: Union[str, Sequence[str]], context_length: int = DEFAULT_CONTEXT_LENGTH,
             truncate: bool = False) -> torch.Tensor:
    """Token ids ``(N, context_length)``: SOT, the text's tokens, EOT, zero padding.

    A text longer than ``context_length`` raises ``ValueError``, unless ``truncate`` (then the last kept
    position holds EOT, as OpenAI does).
    """
    if isinstance(texts, str):
        texts = [texts]
    tok = tokenizer()
    rows = []
    for text in texts:
        ids = [tok.sot_token, *tok.encode(text), tok.eot_token]
        if len(ids) > context_length:
            if not truncate:
                raise ValueError(f"text is too long for context length {context_length} ({len(ids)} tokens with "
                                 f"SOT/EOT); pass truncate=True to cut it: {text!r}")
            ids = ids[:context_length]
            ids[-1] = tok.eot_token
        rows.append(ids + [0] * (context_length - len(ids)))
    if not rows:
        return torch.tensor([[0] * context_length])[:0]
    return torch.tensor(rows)
