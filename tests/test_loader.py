import math

import numpy as np
import pytest
import torch

from autoresearch_mcp.nanochat.errors import UserError
from autoresearch_mcp.nanochat.loader import BestFitPacker, load_shards, train_batches, val_batches
from autoresearch_mcp.nanochat.profiles import PROFILES

SEQ_LEN = PROFILES["cpu"].seq_len
BOS = 0


def synthetic_shards(lengths_per_shard, seed=0):
    """Shards of documents whose data tokens are 1, 2, 3, ... in order, so any piece of a
    row can be traced back to its document."""
    rng = np.random.default_rng(seed)
    shards, next_token = [], 1
    for count in lengths_per_shard:
        parts = []
        for length in rng.integers(1, 300, size=count):
            parts.append(np.concatenate([[BOS], np.arange(next_token, next_token + length)]))
            next_token += length
        shards.append(np.concatenate(parts).astype(np.uint16))
    return shards, next_token - 1


def test_rows_start_with_bos_and_targets_are_inputs_shifted(prepared_cpu_data):
    batches = train_batches(prepared_cpu_data.train_dir, 8, SEQ_LEN, prepared_cpu_data.bos_id, "cpu", seed=0)
    for _ in range(5):
        inputs, targets = next(batches)
        assert inputs.shape == targets.shape == (8, SEQ_LEN)
        assert inputs.dtype == targets.dtype == torch.int64 and inputs.is_contiguous() and targets.is_contiguous()
        assert (inputs[:, 0] == prepared_cpu_data.bos_id).all()
        assert torch.equal(inputs[:, 1:], targets[:, :-1])
        assert int(inputs.min()) >= 0 and int(targets.max()) < prepared_cpu_data.vocab_size
        assert not inputs.is_pinned()


def test_every_piece_is_a_contiguous_run_of_one_document_and_nothing_is_dropped():
    shards, total_tokens = synthetic_shards([30, 1, 25])
    documents = {}  # data token -> document number
    for shard in shards:
        for number, piece in enumerate(np.split(shard, np.flatnonzero(shard == BOS)[1:])):
            documents.update(dict.fromkeys(piece[1:].tolist(), (id(shard), number)))
    packer = BestFitPacker(shards, BOS, 65, seed=1)
    seen = np.zeros(total_tokens + 1, dtype=int)
    row = np.empty(65, dtype=np.int64)
    for _ in range(3 * total_tokens // 65):  # about three epochs
        packer.fill(row)
        assert row[0] == BOS
        for piece in np.split(row, np.flatnonzero(row == BOS)[1:]):
            data = piece[1:]
            assert (np.diff(data) == 1).all(), "a piece mixes documents or skips tokens"
            assert len({documents[t] for t in data.tolist()}) <= 1
            seen[data] += 1
    assert (seen[1:] >= 2).all(), "some document tokens were never trained on (cropped away)"
    assert seen[1:].max() <= 4


def test_packing_uses_almost_every_slot_for_data(prepared_cpu_data):
    packer = BestFitPacker(load_shards(prepared_cpu_data.train_dir), prepared_cpu_data.bos_id, SEQ_LEN + 1, seed=0)
    row = np.empty(SEQ_LEN + 1, dtype=np.int64)
    rows = 2000
    for _ in range(rows):
        packer.fill(row)
    assert packer.document_tokens + packer.inserted_tokens == rows * (SEQ_LEN + 1)
    # At most one BOS inserted per row (one cut), so utilisation >= 1 - 1/(seq_len+1).
    assert packer.document_tokens / (rows * (SEQ_LEN + 1)) >= 1 - 1 / (SEQ_LEN + 1)


def test_shuffling_is_seeded(prepared_cpu_data):
    def first_batches(seed):
        batches = train_batches(prepared_cpu_data.train_dir, 4, SEQ_LEN, prepared_cpu_data.bos_id, "cpu", seed=seed)
        return torch.cat([next(batches)[0] for _ in range(3)])

    assert torch.equal(first_batches(7), first_batches(7))
    assert not torch.equal(first_batches(7), first_batches(8))


def test_val_batches_are_a_fixed_count_and_the_same_rows_for_any_batch_size(prepared_cpu_data):
    eval_tokens = PROFILES["cpu"].eval_tokens
    by_size = {}
    for batch_size in (8, 16, 128):
        batches = list(
            val_batches(prepared_cpu_data.val_dir, batch_size, SEQ_LEN, prepared_cpu_data.bos_id, "cpu", eval_tokens)
        )
        assert len(batches) == math.ceil(eval_tokens / (batch_size * SEQ_LEN))
        by_size[batch_size] = torch.cat([inputs for inputs, _ in batches])
    assert torch.equal(by_size[8], by_size[16]) and torch.equal(by_size[8], by_size[128])
    assert (by_size[8][:, 0] == prepared_cpu_data.bos_id).all()


def test_val_batches_round_up_and_wrap_a_small_split(tmp_path):
    shards, total_tokens = synthetic_shards([5])
    np.save(tmp_path / "shard_00000.npy", shards[0])
    eval_tokens = 3 * total_tokens + 1  # more than the split holds
    batches = list(val_batches(tmp_path, 4, 32, BOS, "cpu", eval_tokens))
    assert len(batches) == math.ceil(eval_tokens / (4 * 32))
    seen = {token for inputs, targets in batches for token in torch.cat([inputs, targets]).flatten().tolist()}
    assert set(range(1, total_tokens + 1)) <= seen


def test_a_split_without_shards_or_with_a_damaged_shard_is_explained(tmp_path):
    with pytest.raises(UserError, match="no token shards"):
        load_shards(tmp_path)
    np.save(tmp_path / "shard_00000.npy", np.array([5, BOS, 6], dtype=np.uint16))
    with pytest.raises(UserError, match="does not start with BOS"):
        next(train_batches(tmp_path, 1, 8, BOS, "cpu", seed=0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_land_on_the_gpu(prepared_cpu_data):
    inputs, targets = next(
        train_batches(prepared_cpu_data.train_dir, 4, SEQ_LEN, prepared_cpu_data.bos_id, "cuda", seed=0)
    )
    assert inputs.is_cuda and targets.is_cuda
    assert (inputs[:, 0] == prepared_cpu_data.bos_id).all()
