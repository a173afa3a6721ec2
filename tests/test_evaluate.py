"""The trusted evaluator: its bits-per-byte accounting, the causality check, the fingerprint of
the functions it relies on, and the evaluator process on a model handed back by the harness."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from autoresearch_mcp.nanochat import contract, harness
from autoresearch_mcp.nanochat import evaluate as ev
from autoresearch_mcp.nanochat.data import PreparedData
from autoresearch_mcp.tests.nanochat_runs import evaluate, make_snapshot, set_run_context, uniform_val_bpb

VOCAB = 5


class Uniform(nn.Module):
    def forward(self, idx):
        return torch.zeros(*idx.shape, VOCAB)


class Embedder(nn.Module):
    """Logits from a token embedding, plus `leak` (a function of the embeddings) to make it peek."""

    def __init__(self, leak=None) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, VOCAB)
        self.leak = leak

    def forward(self, idx):
        x = self.embedding(idx)
        return x if self.leak is None else x + self.leak(x)


def test_bits_per_byte_counts_nats_over_bytes_and_skips_special_tokens() -> None:
    token_bytes = torch.tensor([0, 1, 2, 3, 4])  # id 0 is a special token: 0 bytes
    targets = torch.tensor([[0, 1, 2], [3, 4, 0]])
    batches = [(torch.zeros_like(targets), targets)] * 2

    val_bpb, tokens = ev.bits_per_byte(Uniform(), batches, token_bytes)

    # Uniform predictions cost ln(5) nats per scored token; 8 scored tokens over 20 bytes.
    assert val_bpb == pytest.approx(8 * math.log(VOCAB) / (math.log(2) * 20))
    assert tokens == 12


def test_bits_per_byte_refuses_logits_of_the_wrong_shape() -> None:
    class TooFewClasses(nn.Module):
        def forward(self, idx):
            return torch.zeros(*idx.shape, VOCAB - 1)

    targets = torch.ones(1, 4, dtype=torch.long)
    with pytest.raises(ev.EvaluationRefused, match=r"shape \(B, T, vocab_size\) = \(1, 4, 5\)"):
        ev.bits_per_byte(TooFewClasses(), [(targets, targets)], torch.ones(VOCAB, dtype=torch.long))


def test_causality_check_passes_a_causal_model() -> None:
    torch.manual_seed(0)
    ev.check_causal(Embedder(), torch.randint(0, VOCAB, (2, 8)), VOCAB)


@pytest.mark.parametrize(
    "leak",
    [
        pytest.param(lambda x: x.mean(dim=1, keepdim=True), id="sees-later-positions"),
        pytest.param(lambda x: x.flip(0), id="sees-other-rows"),
    ],
)
def test_causality_check_refuses_a_model_that_sees_the_future(leak) -> None:
    torch.manual_seed(0)
    with pytest.raises(ev.EvaluationRefused, match="not causal"):
        ev.check_causal(Embedder(leak), torch.randint(0, VOCAB, (2, 8)), VOCAB)


def test_fingerprint_sees_a_replaced_function(monkeypatch: pytest.MonkeyPatch) -> None:
    before = ev.Fingerprint.take()
    monkeypatch.setattr(F, "cross_entropy", lambda *args, **kwargs: torch.tensor(0.0))

    with pytest.raises(ev.EvaluationRefused, match=r"replaced torch\.nn\.functional\.cross_entropy at import"):
        ev.check_untouched(before, "at import time")


def test_fingerprint_sees_a_function_changed_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    before = ev.Fingerprint.take()
    monkeypatch.setattr(ev.eval_rows, "__code__", (lambda eval_tokens, seq_len, batch_tokens: 1).__code__)

    assert ev.Fingerprint.take().changes_since(before) == [f"{ev.__name__}.eval_rows"]


def test_fingerprint_is_unchanged_by_importing_the_template(tmp_path: Path) -> None:
    before = ev.Fingerprint.take()
    ev.import_snapshot(make_snapshot(tmp_path) / "train.py")

    assert ev.Fingerprint.take().changes_since(before) == []


@pytest.mark.parametrize(("eval_tokens", "rows"), [(32768, 32), (40 * 524288 // 8, 32), (3 * 256, 3), (7 * 256, 7)])
def test_eval_rows_divide_the_eval_tokens(eval_tokens: int, rows: int) -> None:
    assert ev.eval_rows(eval_tokens, 256, 2**13) == rows


def test_evaluator_scores_a_handed_back_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prepared_cpu_data: PreparedData
) -> None:
    snapshot = make_snapshot(tmp_path / "snapshot")
    run_dir = tmp_path / "run"
    set_run_context(monkeypatch, run_dir, snapshot, prepared_cpu_data, budget=1)
    train = ev.import_snapshot(snapshot / "train.py")
    run = harness.start()
    model = train.GPT(train.GPTConfig(vocab_size=run.vocab_size, seq_len=run.seq_len, depth=1, width=64, head_dim=32))
    run.hand_back(model)  # untrained: lm_head starts near zero, so predictions are near uniform

    result = evaluate(snapshot, run_dir / contract.MODEL, prepared_cpu_data, tmp_path / "eval.json")

    assert result.returncode == 0, result.stdout + result.stderr
    scored = json.loads((tmp_path / "eval.json").read_text())
    assert scored["val_bpb"] == pytest.approx(uniform_val_bpb(prepared_cpu_data), rel=0.1)
    assert scored["eval_tokens"] == 32768 and scored["depth"] == 1 and scored["device"] == "cpu"
    assert scored["num_params"] == sum(p.numel() for p in model.parameters())
    stats = json.loads((run_dir / contract.TRAIN_STATS).read_text())
    assert stats["num_steps"] == 0 and stats["device"] == "cpu"
