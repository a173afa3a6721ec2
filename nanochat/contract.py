"""The run contract: what the server, the run supervisor, the training side and the evaluator agree on.

One run is a folder (`.autoresearch/runs/<id>/`) and a process (`python -m
autoresearch_mcp.nanochat.run ...`). The parts meet only through the names below: files in the
run folder, the phases the supervisor reports, its exit codes, and the environment the
training process is given. Every side imports them from here; nothing spells them again.
This module imports nothing, so the fastest process (the server) pays nothing for it.
"""

from __future__ import annotations

import enum

# ---- the run folder ------------------------------------------------------------------------
# Written by the server or the supervisor (trusted): the run's code, its log, phase and result.
SNAPSHOT_DIR = "snapshot"  # the experiment commit, exported; the code that runs
LOG = "log.txt"  # stdout and stderr of the supervisor, train.py and the evaluator
PHASE = "phase"  # one word (a Phase), replaced atomically as the run moves on
SUMMARY = "summary.json"  # the recorded result, written only after trusted evaluation

# Written by the training process (untrusted: read back as bounded, strictly parsed data).
METRICS = "metrics.jsonl"  # one JSON object per step; mfu in percent of peak, null where unknown
MODEL = "model.pt"
TRAIN_STATS = "train_stats.json"
EVAL_RESULT = "eval.json"  # the evaluator's answer, in a folder the training process never saw

# Removed before training and again before evaluation, so nothing train.py left there is believed.
RESERVED_OUTPUTS = (MODEL, TRAIN_STATS, EVAL_RESULT, SUMMARY)
# Written only by the evaluation: removed again after training, whatever train.py planted.
RESULTS = (EVAL_RESULT, SUMMARY)


class Phase(str, enum.Enum):
    """Where a run is, as the supervisor writes it to the PHASE file."""

    SETUP = "setup"  # data and tokenizer
    TRAINING = "training"  # the snapshot's train.py
    EVALUATING = "evaluating"  # trusted evaluation of the handed-back model
    DONE = "done"  # summary written
    FAILED = "failed"  # the reason is at the end of the log


class RunExit(enum.IntEnum):
    """The supervisor's exit codes. `meaning` says each in words (the server shows it)."""

    OK = 0
    BAD_ARGUMENTS = 2
    SETUP_FAILED = 3
    TRAIN_CRASHED = 4
    FAST_FAILED = 5  # also what the training process itself exits with on a NaN / exploding loss
    EVAL_FAILED = 6
    NO_MODEL = 7

    @property
    def meaning(self) -> str:
        return _EXIT_MEANINGS[self]


_EXIT_MEANINGS = {
    RunExit.OK: "the run succeeded",
    RunExit.BAD_ARGUMENTS: "the harness was given bad arguments",
    RunExit.SETUP_FAILED: "data or tokenizer setup failed",
    RunExit.TRAIN_CRASHED: "train.py crashed",
    RunExit.FAST_FAILED: "training fast-failed (NaN or exploding loss)",
    RunExit.EVAL_FAILED: "evaluation failed or was refused",
    RunExit.NO_MODEL: "train.py handed back no model",
}

# The seed of a run launched without one.
DEFAULT_SEED = 42

# ---- the training process's context ---------------------------------------------------------
# Set by the supervisor, read by harness.py. Only the train split and the tokenizer are named:
# the validation data's location is never given to training.
ENV_RUN_DIR = "AUTORESEARCH_RUN_DIR"
ENV_SNAPSHOT = "AUTORESEARCH_SNAPSHOT"
ENV_PROFILE = "AUTORESEARCH_PROFILE"
ENV_BUDGET = "AUTORESEARCH_BUDGET_SECONDS"
ENV_SEED = "AUTORESEARCH_SEED"
ENV_SCALE = "AUTORESEARCH_SCALE"  # model size multiplier (1 = the profile's size; validation runs use more)
ENV_DEVICE = "AUTORESEARCH_DEVICE"
ENV_TRAIN_DIR = "AUTORESEARCH_TRAIN_DIR"
ENV_TOKENIZER_DIR = "AUTORESEARCH_TOKENIZER_DIR"
