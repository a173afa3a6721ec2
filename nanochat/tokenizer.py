"""The tokenizer: byte-level BPE trained with rustbpe, run through tiktoken.

Training happens once per profile and data (see data.py); the result is saved as a
tiktoken-style rank file plus a small JSON header. Where rustbpe is not installed the
tokenizer falls back to plain bytes (256 tokens + BOS): slower to train on, but the
harness keeps working and bits-per-byte stay comparable.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import tiktoken

log = logging.getLogger(__name__)

BOS = "<|bos|>"

# GPT-4's split pattern with digits grouped in twos rather than threes: with a small
# vocabulary, fewer merges go to numbers.
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)

_HEADER = "tokenizer.json"
_RANKS = "ranks.tiktoken"


def bpe_available() -> bool:
    """Whether BPE can be trained here (rustbpe is importable)."""
    try:
        import rustbpe  # noqa: F401
    except ImportError:
        return False
    return True


class Tokenizer:
    """Text <-> token ids. Ids below `bos_id` are byte sequences; `bos_id` is the last id."""

    def __init__(self, mergeable_ranks: dict[bytes, int], pattern: str, kind: str) -> None:
        self.kind = kind  # "bpe" or "bytes"
        self.pattern = pattern
        self._ranks = mergeable_ranks
        self.bos_id = len(mergeable_ranks)
        self._encoding = tiktoken.Encoding(
            name=f"autoresearch-{kind}-{self.bos_id + 1}",
            pat_str=pattern,
            mergeable_ranks=mergeable_ranks,
            special_tokens={BOS: self.bos_id},
        )

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> Tokenizer:
        """BPE with `vocab_size` ids in all (BOS included); bytes if rustbpe is missing."""
        if not bpe_available():
            log.warning("rustbpe is not installed: using the byte-level tokenizer (257 ids)")
            return cls.bytes_only()
        import rustbpe

        if vocab_size < 257:
            raise ValueError(f"vocab_size must be at least 257 (256 bytes + BOS), got {vocab_size}")
        trainer = rustbpe.Tokenizer()
        trainer.train_from_iterator(iter(texts), vocab_size - 1, pattern=SPLIT_PATTERN)
        ranks = {bytes(token): rank for token, rank in trainer.get_mergeable_ranks()}
        return cls(ranks, trainer.get_pattern(), kind="bpe")

    @classmethod
    def bytes_only(cls) -> Tokenizer:
        return cls({bytes([b]): b for b in range(256)}, SPLIT_PATTERN, kind="bytes")

    @classmethod
    def load(cls, directory: Path) -> Tokenizer:
        directory = Path(directory)
        header = json.loads((directory / _HEADER).read_text(encoding="utf-8"))
        ranks = {}
        for line in (directory / _RANKS).read_bytes().splitlines():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
        return cls(ranks, header["pattern"], header["kind"])

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        lines = [base64.b64encode(token) + b" " + str(rank).encode() for token, rank in self._ranks.items()]
        (directory / _RANKS).write_bytes(b"\n".join(lines) + b"\n")
        header = {
            "kind": self.kind,
            "pattern": self.pattern,
            "bos": BOS,
            "bos_id": self.bos_id,
            "vocab_size": self.vocab_size,
        }
        (directory / _HEADER).write_text(json.dumps(header, indent=2) + "\n", encoding="utf-8")

    @property
    def vocab_size(self) -> int:
        return self.bos_id + 1

    def encode(self, text: str) -> list[int]:
        """Ids of `text`, with no BOS; special-token strings in the text are plain text."""
        return self._encoding.encode_ordinary(text)

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        """The texts' ids, each document led by BOS, as one flat array (encoded on all cores)."""
        encoded = self._encoding.encode_ordinary_batch(list(texts), num_threads=os.cpu_count() or 1)
        tokens = np.empty(sum(len(ids) + 1 for ids in encoded), dtype=self.token_dtype)
        position = 0
        for ids in encoded:
            tokens[position] = self.bos_id
            tokens[position + 1 : position + 1 + len(ids)] = ids
            position += len(ids) + 1
        return tokens

    @property
    def token_dtype(self) -> np.dtype:
        """The smallest unsigned integer type that holds every id."""
        return np.dtype(np.uint16 if self.vocab_size <= 2**16 else np.uint32)

    def decode(self, ids: Iterable[int]) -> str:
        return self._encoding.decode(list(ids), errors="replace")

    def token_bytes(self) -> np.ndarray:
        """UTF-8 byte length of every id (0 for BOS): the denominator of bits per byte."""
        lengths = np.zeros(self.vocab_size, dtype=np.int32)
        for token, rank in self._ranks.items():
            lengths[rank] = len(token)
        return lengths
