"""The trusted evaluator and the hand-back it reads: the bits-per-byte accounting, the causality check
on scored batches, the reader's refusals (one per class of graph it must not run), and the evaluator
process on hand-backs written by the harness or crafted by hand.

Hostile models are small nn.Modules exported here, as the harness would export them; crafted files
are honest ones edited the way an attacker could."""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import math
import os
import pickle
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from autoresearch_mcp.nanochat import contract, handback, harness
from autoresearch_mcp.nanochat import evaluate as ev
from autoresearch_mcp.nanochat.data import PreparedData
from autoresearch_mcp.nanochat.profiles import PROFILES, eval_batch_shape
from autoresearch_mcp.tests.bad_kernel_arguments import bad_calls
from autoresearch_mcp.tests.engine_helpers import until
from autoresearch_mcp.tests.nanochat_runs import ENV, evaluate, make_snapshot, set_run_context, uniform_val_bpb

VOCAB = 11
SHAPE = (4, 16)
CPU = torch.device("cpu")


class Embedder(nn.Module):
    """Logits from a token embedding; `leak(x, idx)` added to them makes a model peek."""

    def __init__(self, leak=None) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, VOCAB)
        self.leak = leak

    def forward(self, idx):
        x = self.embedding(idx)
        return x if self.leak is None else x + self.leak(x, idx)


def exported(model: nn.Module, shape: tuple[int, int] = SHAPE) -> handback.Exported:
    torch.manual_seed(0)
    return handback.export(model, shape, CPU, VOCAB)


def forward_of(model: nn.Module, shape: tuple[int, int] = SHAPE):
    """The model as the evaluator runs it: its exported program with its weights."""
    export = exported(model, shape)
    tensors = handback.program_tensors(export, model)
    return lambda idx: export.program(tensors, idx)


# ---- accounting ---------------------------------------------------------------------------------


def test_bits_per_byte_counts_nats_over_bytes_and_skips_special_tokens() -> None:
    token_bytes = torch.tensor([0, 1, 2, 3, 4])  # id 0 is a special token: 0 bytes
    targets = torch.tensor([[0, 1, 2], [3, 4, 0]])
    batches = [(torch.zeros_like(targets), targets)] * 2

    def uniform(idx):
        return torch.zeros(*idx.shape, 5)

    val_bpb = ev.bits_per_byte(uniform, batches, token_bytes, causality=None)

    # Uniform predictions cost ln(5) nats per scored token; 8 scored tokens over 20 bytes.
    assert val_bpb == pytest.approx(8 * math.log(5) / (math.log(2) * 20))


@pytest.mark.parametrize(("eval_tokens", "rows"), [(32768, 32), (40 * 524288 // 8, 32), (3 * 256, 3), (7 * 256, 7)])
def test_the_scored_batch_shape_divides_the_eval_tokens(eval_tokens: int, rows: int) -> None:
    profile = dataclasses.replace(PROFILES["cpu"], eval_tokens=eval_tokens)
    assert eval_batch_shape(profile, "cpu") == (rows, 256)


# ---- causality, on the exact scored shape ---------------------------------------------------------

SCORED_ROWS = SHAPE[0]
HALF = SHAPE[1] // 2

PEEKS = {
    # The next token's embedding added at every position.
    "sees-the-next-token": lambda x, idx: torch.roll(x, -1, dims=1),
    "sees-the-row-mean": lambda x, idx: x.mean(dim=1, keepdim=True),
    "sees-other-rows": lambda x, idx: x.flip(0),
    # What every row starts with, whichever row holds it: shuffling the rows does not change it, and
    # cuts rarely fall that early; rows replaced whole do.
    "reads-the-start-of-every-row": lambda x, idx: x[:, :2].mean(dim=(0, 1), keepdim=True),
    # Only for rows after the first, which the old probe (row 0) did not look at.
    "peeks-only-after-the-first-row": lambda x, idx: torch.cat([x[:1] * 0, torch.roll(x[1:], -1, dims=1)]),
    # Only at positions from the middle on, which the old probe (cut in the middle) never checked.
    "peeks-only-in-the-second-half": lambda x, idx: torch.cat(
        [x[:, :HALF] * 0, torch.roll(x, -1, dims=1)[:, HALF:]], dim=1
    ),
    # Only when the batch has the scored size: an old probe of two rows never saw it; the export,
    # at the scored shape, keeps it.
    "peeks-only-at-the-scored-batch-size": lambda x, idx: torch.roll(x, -1, dims=1) if x.size(0) == SCORED_ROWS else 0,
}


def one_batch_check(seed: int) -> ev.CausalityCheck:
    """The causality check of an evaluation of one scored batch of SHAPE."""
    return ev.CausalityCheck(SCORED_ROWS, 1, SHAPE[1], random.Random(seed))


def test_causality_check_passes_a_causal_model_on_real_scored_logits() -> None:
    forward = forward_of(Embedder())
    inputs = torch.randint(0, VOCAB, SHAPE)
    check = one_batch_check(1)
    check.check(forward, 0, inputs, forward(inputs))
    assert check.largest_change == 0.0


@pytest.mark.parametrize("peek", PEEKS.values(), ids=PEEKS.keys())
def test_causality_check_refuses_a_model_that_sees_the_future(peek) -> None:
    forward = forward_of(Embedder(peek))
    inputs = torch.randint(0, VOCAB, SHAPE, generator=torch.Generator().manual_seed(2))

    with pytest.raises(ev.EvaluationRefused, match="not causal"):
        one_batch_check(3).check(forward, 0, inputs, forward(inputs))


@pytest.mark.parametrize(
    ("rows", "batches", "seq_len", "passes"),
    [(32, 4, 256, 4), (64, 160, 2048, 1), (128, 32, 1024, 1), (4, 1, 16, 8), (3, 5, 7, 1)],
)
def test_the_cuts_cover_every_position_equally_often(rows: int, batches: int, seq_len: int, passes: int) -> None:
    """At least CUTS_PER_POSITION cuts at every position per evaluation (the cpu profile's 4 batches of
    32 rows need 4 passes for 512), each position as often as any other but for the remainder."""
    assert ev.causality_passes(rows, batches, seq_len) == passes
    cuts = ev.cut_points(rows, batches, seq_len, torch.Generator().manual_seed(0))
    assert cuts.shape == (batches, passes, rows)
    counts = torch.bincount(cuts.flatten(), minlength=seq_len)
    assert counts.min() >= min(ev.CUTS_PER_POSITION, cuts.numel() // seq_len)
    assert counts.max() - counts.min() <= 1 and cuts.min() >= 0 and cuts.max() < seq_len
    assert ev.cuts_per_evaluation(rows, batches, seq_len) == cuts.numel() >= ev.CUTS_PER_POSITION * seq_len


# ---- the allowed operators check what they are given ---------------------------------------------

BAD_CALLS = bad_calls("cpu")


@pytest.mark.parametrize("name", BAD_CALLS)
def test_allowed_operators_refuse_sizes_and_indices_that_do_not_fit(name: str) -> None:
    """The allow-list admits only kernels that check their arguments (bench/redteam_gpu_check.py: CUDA)."""
    with pytest.raises((RuntimeError, IndexError)):
        BAD_CALLS[name]()


# ---- graphs the reader refuses, one per class ----------------------------------------------------


class CountsCalls(Embedder):
    """Keeps state between calls: a buffer written in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, idx):
        self.calls.add_(1)
        return super().forward(idx) + self.calls


class Dropout(Embedder):
    def forward(self, idx):
        return F.dropout(super().forward(idx), p=0.5, training=True)


class RandomNoise(Embedder):
    def forward(self, idx):
        logits = super().forward(idx)
        return logits + torch.rand_like(logits)


class AttentionDropout(Embedder):
    def forward(self, idx):
        x = super().forward(idx)[:, None]
        return F.scaled_dot_product_attention(x, x, x, dropout_p=0.1, is_causal=True)[:, 0]


class Uninitialized(Embedder):
    def forward(self, idx):
        logits = super().forward(idx)
        return logits + torch.empty(logits.shape)


class TwoOutputs(Embedder):
    def forward(self, idx):
        logits = super().forward(idx)
        return logits, logits.sum()


class WrongVocab(Embedder):
    def forward(self, idx):
        return super().forward(idx)[..., :-1]


class IntegerLogits(Embedder):
    def forward(self, idx):
        return super().forward(idx).long()


class WritesItsInput(Embedder):
    def forward(self, idx):
        idx.clamp_(max=VOCAB - 1)
        return super().forward(idx)


REFUSED = {
    "keeps-state-between-calls": (CountsCalls, "change no state"),
    "dropout": (Dropout, "is random"),
    "random-op": (RandomNoise, "is random"),
    "attention-dropout": (AttentionDropout, "random"),
    "uninitialized-memory": (Uninitialized, "uninitialized memory"),
    "a-second-output": (TwoOutputs, "nothing else"),
    "wrong-logits-shape": (WrongVocab, r"the logits must have shape \(4, 16, 11\)"),
    "integer-logits": (IntegerLogits, "the logits must have shape .* dtype torch.float32"),
    "writes-its-input": (WritesItsInput, "change no state"),
}


@pytest.mark.parametrize(("model_class", "reason"), REFUSED.values(), ids=REFUSED.keys())
def test_the_reader_refuses_what_a_pure_forward_pass_has_no_use_for(model_class, reason: str) -> None:
    data, _ = handback.trace(model_class(), SHAPE, CPU)

    with pytest.raises(handback.ProgramRefused, match=reason):
        handback.Program.parse(data, SHAPE, VOCAB, "cpu")


def test_export_refuses_it_first_and_names_the_line_of_train_py() -> None:
    with pytest.raises(handback.ExportFailed, match=r"RandomNoise|test_evaluate.py.*rand_like") as failure:
        exported(RandomNoise())
    assert "is random" in str(failure.value) and "rand_like" in str(failure.value)


def test_a_model_that_cannot_be_traced_fails_with_the_rules() -> None:
    class BranchesOnValues(Embedder):
        def forward(self, idx):
            logits = super().forward(idx)
            return logits * 2 if logits.sum() > 0 else logits

    with pytest.raises(handback.ExportFailed, match="could not trace BranchesOnValues.forward") as failure:
        exported(BranchesOnValues())
    assert "no Python branches on tensor values" in str(failure.value)


def test_a_plain_bug_in_forward_raises_as_itself() -> None:
    class Typo(Embedder):
        def forward(self, idx):
            return super().forward(idx).sqaure()

    with pytest.raises(AttributeError, match="'Tensor' object has no attribute 'sqaure'"):
        exported(Typo())


def test_the_shape_is_the_scored_one() -> None:
    data, _ = handback.trace(Embedder(), (2, 16), CPU)

    with pytest.raises(handback.ProgramRefused, match=r"idx must have shape \(4, 16\).* the program has \(2, 16\)"):
        handback.Program.parse(data, SHAPE, VOCAB, "cpu")


# ---- crafted program files ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def honest_json() -> dict:
    data, _ = handback.trace(Embedder(), SHAPE, CPU)
    return json.loads(data)


def crafted(honest_json: dict, edit) -> bytes:
    raw = copy.deepcopy(honest_json)
    edit(raw)
    return json.dumps(raw).encode()


def first_node(raw: dict) -> dict:
    return raw["graph_module"]["graph"]["nodes"][0]


MARKER = Path("/tmp/autoresearch-test-pwned")
CRAFTED = {
    "python-function-target": (lambda raw: first_node(raw).update(target="builtins.exec"), "not an ATen operator"),
    "other-namespace-target": (
        lambda raw: first_node(raw).update(target="torch.ops.profiler._record_function_enter.default"),
        "not an ATen operator",
    ),
    "in-place-aten-target": (
        lambda raw: first_node(raw).update(target="torch.ops.aten.add_.Tensor"),
        "writes to its inputs",
    ),
    "symbolic-expression": (
        lambda raw: raw["graph_module"]["graph"]["sym_int_values"].update(
            s0={"as_expr": {"expr_str": f"__import__('os').system('touch {MARKER}')"}}
        ),
        "symbolic values",
    ),
    "range-constraints": (
        lambda raw: raw.update(range_constraints={"s0": {"min_val": 2, "max_val": 8}}),
        "symbolic shapes",
    ),
    "guards-code": (lambda raw: raw.update(guards_code=[f"__import__('os').system('touch {MARKER}')"]), "guards"),
    "nested-graph-argument": (
        lambda raw: first_node(raw)["inputs"][0].update(arg={"as_graph": {"name": "g", "graph": {}}}),
        "as_graph",
    ),
    "custom-object": (
        lambda raw: raw["graph_module"]["graph"]["custom_obj_values"].update(o={"name": "o", "class_fqn": "x"}),
        "custom objects",
    ),
    "buffer-mutation-output": (
        lambda raw: raw["graph_module"]["signature"]["output_specs"].append(
            {"buffer_mutation": {"arg": {"name": "x"}, "buffer_name": "b"}}
        ),
        "buffer_mutation",
    ),
    "use-before-definition": (
        lambda raw: first_node(raw)["inputs"][0].update(arg=first_node(raw)["outputs"][0]),
        "before it is computed",
    ),
    "not-json": (lambda raw: raw.clear(), "schema_version"),
    "unknown-argument": (
        lambda raw: first_node(raw)["inputs"].append({"name": "evil", "arg": {"as_int": 1}, "kind": 2}),
        "does not take",
    ),
    "string-where-an-int-belongs": (
        lambda raw: first_node(raw)["inputs"].append({"name": "padding_idx", "arg": {"as_int": "1"}, "kind": 2}),
        "str where int belongs",
    ),
}


@pytest.mark.parametrize(("edit", "reason"), CRAFTED.values(), ids=CRAFTED.keys())
def test_the_reader_refuses_crafted_programs(honest_json: dict, edit, reason: str) -> None:
    with pytest.raises(handback.ProgramRefused, match=reason):
        handback.Program.parse(crafted(honest_json, edit), SHAPE, VOCAB, "cpu")
    assert not MARKER.exists()


def test_the_reader_runs_an_honest_program_like_the_model(honest_json: dict) -> None:
    model = Embedder()
    program = handback.Program.parse(json.dumps(honest_json).encode(), SHAPE, VOCAB, "cpu")
    idx = torch.randint(0, VOCAB, SHAPE)
    with torch.no_grad():
        assert torch.equal(program(dict(model.named_parameters()), idx), model(idx))


# ---- weights -----------------------------------------------------------------------------------

EXPECTED = {"embedding.weight": handback.TensorSpec((VOCAB, VOCAB), torch.float32)}


def safetensors_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save(tensors)


@pytest.mark.parametrize(
    ("tensors", "reason"),
    [
        ({}, "missing embedding.weight"),
        (
            {"embedding.weight": torch.zeros(VOCAB, VOCAB), "spare": torch.zeros(1)},
            "not in the program: spare",
        ),
        ({"embedding.weight": torch.zeros(VOCAB, VOCAB + 1)}, r"embedding.weight is \(11, 12\)"),
        ({"embedding.weight": torch.zeros(VOCAB, VOCAB, dtype=torch.float64)}, "torch.float64, not"),
    ],
    ids=["missing", "extra", "wrong-shape", "wrong-dtype"],
)
def test_weights_must_match_the_program_by_name_shape_and_dtype(tensors, reason: str) -> None:
    with pytest.raises(handback.ProgramRefused, match=reason):
        handback.load_weights(safetensors_bytes(tensors), EXPECTED)


class Payload:
    """Unpickling this creates MARKER: what a crafted archive's pickle would do in the evaluator."""

    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


def test_a_pickle_is_never_unpickled() -> None:
    with pytest.raises(handback.ProgramRefused, match="not a safetensors file"):
        handback.load_weights(pickle.dumps({"embedding.weight": Payload()}), EXPECTED)
    assert not MARKER.exists()


# ---- the hand-back folder ------------------------------------------------------------------------


@pytest.fixture
def handed_back(tmp_path: Path) -> Path:
    model = Embedder()
    export = exported(model)
    handback.write_program(export, tmp_path)
    handback.write_weights(handback.program_tensors(export, model), tmp_path)
    return tmp_path


def test_load_reads_what_the_harness_wrote(handed_back: Path) -> None:
    program, weights = handback.load(handed_back, SHAPE, VOCAB, CPU)
    assert program.num_parameters == VOCAB * VOCAB and list(weights) == ["embedding.weight"]


def test_links_are_not_followed(handed_back: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    elsewhere = tmp_path_factory.mktemp("elsewhere") / contract.PROGRAM
    os.replace(handed_back / contract.PROGRAM, elsewhere)
    (handed_back / contract.PROGRAM).symlink_to(elsewhere)

    with pytest.raises(handback.ProgramRefused, match="no readable program.json"):
        handback.load(handed_back, SHAPE, VOCAB, CPU)


def test_a_huge_weights_file_is_refused_unread(handed_back: Path) -> None:
    with open(handed_back / contract.WEIGHTS, "r+b") as handle:
        handle.truncate(2**40)  # sparse: a terabyte that takes no disk

    with pytest.raises(handback.ProgramRefused, match="1,099,511,627,776 bytes, more than"):
        handback.load(handed_back, SHAPE, VOCAB, CPU)


def test_a_fifo_does_not_block_the_reader(handed_back: Path) -> None:
    (handed_back / contract.WEIGHTS).unlink()
    os.mkfifo(handed_back / contract.WEIGHTS)

    with pytest.raises(handback.ProgramRefused, match="not a regular file"):
        handback.load(handed_back, SHAPE, VOCAB, CPU)


# ---- the evaluator process -----------------------------------------------------------------------


def hand_back_untrained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: PreparedData) -> tuple[Path, nn.Module]:
    """The harness's hand-back of the tiny template model, untrained, in tmp_path/run."""
    snapshot = make_snapshot(tmp_path / "snapshot")
    set_run_context(monkeypatch, tmp_path / "run", snapshot, data, budget=1)
    spec = importlib.util.spec_from_file_location("snapshot_train", snapshot / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    run = harness.start()
    model = train.GPT(train.model_config(run))
    run.export(model)
    run.hand_back(model)  # untrained: lm_head starts near zero, so predictions are near uniform
    return tmp_path / "run", model


def test_evaluator_scores_a_handed_back_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prepared_cpu_data: PreparedData
) -> None:
    run_dir, model = hand_back_untrained(tmp_path, monkeypatch, prepared_cpu_data)

    result = evaluate(run_dir, prepared_cpu_data, tmp_path / "eval.json")

    assert result.returncode == 0, result.stdout + result.stderr
    scored = json.loads((tmp_path / "eval.json").read_text())
    assert scored["val_bpb"] == pytest.approx(uniform_val_bpb(prepared_cpu_data), rel=0.1)
    assert scored["eval_tokens"] == 32768 and scored["device"] == "cpu"
    assert scored["causality_cuts"] == 2 * 256 and scored["causality_largest_change"] == 0.0
    assert scored["num_params"] == sum(p.numel() for p in model.parameters())
    stats = json.loads((run_dir / contract.TRAIN_STATS).read_text())
    assert stats["num_steps"] == 0 and stats["device"] == "cpu" and stats["depth"] == 2


def test_evaluator_refuses_a_pickled_hand_back_without_unpickling_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prepared_cpu_data: PreparedData
) -> None:
    run_dir, _ = hand_back_untrained(tmp_path, monkeypatch, prepared_cpu_data)
    torch.save({"weights": Payload()}, run_dir / contract.WEIGHTS)  # what torch.export.save would unpickle

    result = evaluate(run_dir, prepared_cpu_data, tmp_path / "eval.json")

    assert result.returncode == contract.RunExit.EVAL_FAILED, result.stdout + result.stderr
    assert "evaluation refused:" in result.stderr and "forward(idx) must be a pure function" in result.stderr
    assert not MARKER.exists() and not (tmp_path / "eval.json").exists()


def evaluator_waiting(handback_dir: Path, data: PreparedData, out: Path) -> tuple[subprocess.Popen[str], int]:
    """The evaluator as the supervisor starts it with training, waiting on a pipe this test holds;
    returns once it waits there (imports and the validation split done), with the pipe's writing end."""
    wait_fd, go = os.pipe()
    command = [
        sys.executable, "-m", "autoresearch_mcp.nanochat.evaluate", "--handback", str(handback_dir),
        "--profile", "cpu", "--val-dir", str(data.val_dir), "--tokenizer-dir", str(data.tokenizer_dir),
        "--out", str(out), "--device", "cpu", "--wait-fd", str(wait_fd),
    ]  # fmt: skip
    process = subprocess.Popen(
        command, env=ENV, pass_fds=(wait_fd,), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    until(lambda: blocked_reading(process.pid, wait_fd), timeout=120, what="the evaluator waiting for GO")
    os.close(wait_fd)
    return process, go


def blocked_reading(pid: int, fd: int) -> bool:
    """Whether process `pid` is in read(2) (x86-64: 0, arm64: 63) on its descriptor `fd`."""
    try:
        number, argument = Path(f"/proc/{pid}/syscall").read_text().split()[:2]
    except (OSError, ValueError):
        return False
    return number in ("0", "63") and int(argument, 16) == fd


def test_a_waiting_evaluator_prepares_then_reads_the_hand_back_only_once_told_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prepared_cpu_data: PreparedData
) -> None:
    handback_dir = tmp_path / "handback"
    handback_dir.mkdir()
    process, go = evaluator_waiting(handback_dir, prepared_cpu_data, tmp_path / "eval.json")
    run_dir, model = hand_back_untrained(tmp_path, monkeypatch, prepared_cpu_data)
    for name in contract.HANDBACK_FILES:  # the hand-back appears only now, as the supervisor moves it
        os.rename(run_dir / name, handback_dir / name)
    placed = time.time()

    os.write(go, contract.EVALUATE_GO)
    os.close(go)

    assert process.wait(timeout=120) == 0, process.stdout.read()
    scored = json.loads((tmp_path / "eval.json").read_text())
    assert scored["ready_unix"] < placed < scored["go_unix"] <= scored["loaded_unix"]
    assert scored["val_bpb"] == pytest.approx(uniform_val_bpb(prepared_cpu_data), rel=0.1)
    assert scored["num_params"] == sum(p.numel() for p in model.parameters())


def test_a_waiting_evaluator_never_told_go_reads_nothing(tmp_path: Path, prepared_cpu_data: PreparedData) -> None:
    process, go = evaluator_waiting(tmp_path / "no-such-folder", prepared_cpu_data, tmp_path / "eval.json")

    os.close(go)  # the run failed: the supervisor closes the pipe

    assert process.wait(timeout=60) == 0, process.stdout.read()
    assert process.stdout.read() == "" and not (tmp_path / "eval.json").exists()
