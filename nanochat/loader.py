"""Batches of token rows for training and evaluation: best-fit packing, no padding.

Every row holds seq_len + 1 tokens (inputs are the first seq_len, targets the last
seq_len) and starts with BOS. Rows are filled from a buffer of document pieces: a row
opens with the piece that has waited longest, then takes the longest pieces that still
fit; when none fits, the oldest is cut to fill the row exactly. Unlike a plain crop, the
rest of a cut piece is not thrown away: it goes back into the buffer led by a fresh BOS,
so documents longer than a row (most source files in the built-in corpus) are read in
full. The only overhead is at most one extra BOS per row.
"""

from __future__ import annotations

import bisect
import collections
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from autoresearch_mcp.nanochat.errors import UserError

# Documents the packer chooses among: more gives tighter fits and more mixing, at the
# cost of a longer wait for a long document to be read to its end.
BUFFER_DOCUMENTS = 1000

# (shard, start, end, continued): shard[start:end], led by an extra BOS when it continues
# a document that was cut.
Piece = tuple[int, int, int, bool]


def train_batches(
    train_dir: Path, batch_size: int, seq_len: int, bos_id: int, device: str | torch.device, seed: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (inputs, targets) int64 batches of shape (batch_size, seq_len), documents
    shuffled per epoch by `seed`."""
    packer = BestFitPacker(load_shards(train_dir), bos_id, seq_len + 1, seed)
    device = torch.device(device)
    while True:
        yield _batch(packer, batch_size, device)


def val_batches(
    val_dir: Path, batch_size: int, seq_len: int, bos_id: int, device: str | torch.device, eval_tokens: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Exactly ceil(eval_tokens / (batch_size * seq_len)) batches of the validation split.

    The rows come in one fixed order, so any batch size sees the same rows (up to the
    rounding of the last batch). A split smaller than eval_tokens is read again from the
    start.
    """
    packer = BestFitPacker(load_shards(val_dir), bos_id, seq_len + 1, seed=None)
    device = torch.device(device)
    for _ in range(math.ceil(eval_tokens / (batch_size * seq_len))):
        yield _batch(packer, batch_size, device)


def load_shards(directory: Path) -> list[np.ndarray]:
    """The token shards of one split, memory-mapped, in order."""
    paths = sorted(Path(directory).glob("shard_*.npy"))
    shards = [np.load(path, mmap_mode="r") for path in paths]
    shards = [shard for shard in shards if len(shard)]
    if not shards:
        raise UserError(f"no token shards in {directory}; prepare the data first (autoresearch-mcp prepare)")
    return shards


class BestFitPacker:
    """Packs documents (token runs that start with BOS) into rows of `row_len` tokens.

    Each row starts with the piece that has waited longest, then takes the longest
    pieces that still fit. Pure best fit would let long pieces wait for ever while short
    ones keep arriving; leading with the oldest bounds every piece's wait by the buffer
    size, so each document is read within about an epoch of being drawn.
    """

    def __init__(self, shards: list[np.ndarray], bos_id: int, row_len: int, seed: int | None) -> None:
        """`seed` shuffles the documents anew each epoch; None keeps their stored order."""
        self.shards = shards
        self.bos_id = bos_id
        self.row_len = row_len
        self._rng = None if seed is None else np.random.default_rng(seed)
        self._doc_shard, self._doc_start, self._doc_end = _document_spans(shards, bos_id)
        self._capacity = min(BUFFER_DOCUMENTS, len(self._doc_start))
        self._next_documents = self._documents()
        # The buffer: each piece is found by (length, arrival) in a sorted list for best
        # fit, and by arrival in a queue for the oldest.
        self._pieces: dict[int, Piece] = {}
        self._by_length: list[tuple[int, int]] = []
        self._arrivals: collections.deque[int] = collections.deque()
        self._arrived = 0
        self.document_tokens = 0  # tokens placed that come from the data
        self.inserted_tokens = 0  # BOS tokens added in front of continued pieces

    def fill(self, row: np.ndarray) -> None:
        """Write one packed row (row_len tokens) into `row`."""
        position = 0
        while position < self.row_len:
            self._refill()
            space = self.row_len - position
            fit = bisect.bisect_right(self._by_length, (space, math.inf)) - 1
            piece = self._take_oldest() if position == 0 or fit < 0 else self._take(self._by_length[fit][1])
            shard, start, end, continued = piece
            if _length(piece) > space:  # fill the row with its head; the rest waits its turn again
                cut = start + space - int(continued)
                self._put((shard, cut, end, True))
                piece = (shard, start, cut, continued)
            position += self._place(piece, row[position:])

    def _documents(self) -> Iterator[int]:
        while True:
            count = len(self._doc_start)
            yield from (range(count) if self._rng is None else self._rng.permutation(count))

    def _refill(self) -> None:
        while len(self._pieces) < self._capacity:
            document = next(self._next_documents)
            self._put(
                (int(self._doc_shard[document]), int(self._doc_start[document]), int(self._doc_end[document]), False)
            )

    def _put(self, piece: Piece) -> None:
        arrival = self._arrived
        self._arrived += 1
        self._pieces[arrival] = piece
        bisect.insort(self._by_length, (_length(piece), arrival))
        self._arrivals.append(arrival)

    def _take(self, arrival: int) -> Piece:
        piece = self._pieces.pop(arrival)
        del self._by_length[bisect.bisect_left(self._by_length, (_length(piece), arrival))]
        return piece  # its entry in the arrival queue is skipped when it comes up

    def _take_oldest(self) -> Piece:
        while self._arrivals[0] not in self._pieces:
            self._arrivals.popleft()
        return self._take(self._arrivals.popleft())

    def _place(self, piece: Piece, out: np.ndarray) -> int:
        shard, start, end, continued = piece
        if continued:
            out[0] = self.bos_id
        out[int(continued) : _length(piece)] = self.shards[shard][start:end]
        self.document_tokens += end - start
        self.inserted_tokens += int(continued)
        return _length(piece)


def _length(piece: Piece) -> int:
    _, start, end, continued = piece
    return end - start + int(continued)


def _document_spans(shards: list[np.ndarray], bos_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(shard index, start, end) of every document, from the BOS that leads each one."""
    shard_ids, starts, ends = [], [], []
    for index, shard in enumerate(shards):
        shard_starts = np.flatnonzero(shard == bos_id)
        if len(shard_starts) == 0 or shard_starts[0] != 0:
            raise UserError(
                f"token shard {index} does not start with BOS (id {bos_id}): the cache is damaged or from "
                "another tokenizer; delete it and prepare again"
            )
        shard_ids.append(np.full(len(shard_starts), index, dtype=np.int32))
        starts.append(shard_starts)
        ends.append(np.append(shard_starts[1:], len(shard)))
    return np.concatenate(shard_ids), np.concatenate(starts), np.concatenate(ends)


def _batch(packer: BestFitPacker, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # On CUDA the rows are written straight into pinned memory so the copy can overlap
    # compute; the caching host allocator keeps each buffer alive until its copy is done.
    pinned = device.type == "cuda"
    host = torch.empty((batch_size, packer.row_len), dtype=torch.int64, pin_memory=pinned)
    rows = host.numpy()
    for row in rows:
        packer.fill(row)
    batch = host.to(device, non_blocking=pinned)
    return batch[:, :-1].contiguous(), batch[:, 1:].contiguous()
