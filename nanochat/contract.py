"""The run contract: what the server, the run supervisor, the training side and the evaluator agree on.

One run is a folder (`.autoresearch/runs/<id>/`) and a process, the trusted supervisor (`python -m
autoresearch_mcp.sandbox.supervisor ...`), which runs training and evaluation each in a sandbox of
its own. The parts meet only through the names below: files in the run folder, the phases the
supervisor reports, its exit codes, and the environment the training process is given. Every side imports them from here; nothing spells them again.
This module imports nothing, so the fastest process (the server) pays nothing for it.
"""

from __future__ import annotations

import enum

# ---- the run folder ------------------------------------------------------------------------
# Written by the server or the supervisor (trusted), where no sandbox can see them: the run's
# code, its log, phase and result.
SNAPSHOT_DIR = "snapshot"  # the experiment commit, exported; the code that runs (read-only to it)
LOG = "log.txt"  # stdout and stderr of the supervisor, train.py and the evaluator (capped)
PHASE = "phase"  # one word (a Phase), replaced atomically as the run moves on
SUMMARY = "summary.json"  # the recorded result, written only after trusted evaluation
OUT_DIR = "out"  # the training sandbox's one writable folder: everything in it is untrusted data
HANDBACK_DIR = "handback"  # the hand-back files, moved out of OUT_DIR once training is over

# Written by the training process into OUT_DIR (untrusted: read back without following links,
# bounded in size, strictly parsed).
METRICS = "metrics.jsonl"  # one JSON object per step; mfu in percent of peak, null where unknown
TRAIN_STATS = "train_stats.json"
# The model as data the evaluator scores without running any of train.py (nanochat/handback.py).
# Neither file is ever executed or unpickled.
PROGRAM = "program.json"  # forward(idx) -> logits as torch.export's JSON graph, weights left out
WEIGHTS = "weights.safetensors"  # the tensors the program takes, by name
# Where the export process (launch.py) leaves the training process the PROGRAM it exported, with the
# tensor constants torch.export lifted out of forward (only if there are any; the training process
# hands them back in WEIGHTS). Neither is handed back from here.
EXPORT_DIR = "export"
EXPORT_CONSTANTS = "constants.safetensors"
# What the supervisor moves from OUT_DIR to HANDBACK_DIR for the evaluator (regular files only).
HANDBACK_FILES = (PROGRAM, WEIGHTS, TRAIN_STATS)
EVAL_RESULT = "eval.json"  # the evaluator's answer, in a private folder no other process sees
# All the supervisor ever writes on the pipe the waiting evaluator reads (--wait-fd): the hand-back
# is in place and the training sandbox is gone.
EVALUATE_GO = b"go\n"


class Phase(str, enum.Enum):
    """Where a run is, as the supervisor writes it to the PHASE file."""

    SETUP = "setup"  # data, tokenizer, the training sandbox's start and imports
    WAITING = "waiting"  # set up, waiting for the run before it on its slot to end (scheduler: held start)
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
    TIMED_OUT = 8  # a phase ran past its time limit (the supervisor stopped it)
    OVER_LIMIT = 9  # the training sandbox went over a memory, process, disk or log limit
    SANDBOX_FAILED = 10  # the sandbox could not be set up (the reason is in the log)

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
    RunExit.TIMED_OUT: "a phase ran past its time limit",
    RunExit.OVER_LIMIT: "the run went over a resource limit",
    RunExit.SANDBOX_FAILED: "the sandbox could not be set up",
}

# The supervisor's last log line when it fails a run starts with this, then says why.
FAILURE_MARK = "run failed: "

# The seed of a run launched without one.
DEFAULT_SEED = 42

# ---- the training process's context ---------------------------------------------------------
# Set by the supervisor, read by harness.py, naming paths as the sandbox sees them. Only the
# train split and the tokenizer are named: the validation data is never given to training.
ENV_RUN_DIR = "AUTORESEARCH_RUN_DIR"  # where training writes: the run's OUT_DIR
ENV_SNAPSHOT = "AUTORESEARCH_SNAPSHOT"
ENV_PROFILE = "AUTORESEARCH_PROFILE"
ENV_BUDGET = "AUTORESEARCH_BUDGET_SECONDS"
ENV_SEED = "AUTORESEARCH_SEED"
ENV_DEVICE = "AUTORESEARCH_DEVICE"
ENV_TRAIN_DIR = "AUTORESEARCH_TRAIN_DIR"
ENV_TOKENIZER_DIR = "AUTORESEARCH_TOKENIZER_DIR"
# When the run's training ends, on the wall clock (Unix seconds): the supervisor's deadline, budget +
# start-up allowance from the moment it lets train.py start (sandbox/limits.py). The harness trains every
# run up to it, so a run that starts faster trains longer, and no clock of the run's own buys it more
# time. Set by launch.py from what the supervisor sends on ENV_START_FD, just before train.py runs.
ENV_DEADLINE = "AUTORESEARCH_DEADLINE_UNIX"
# A socket to the supervisor, for launch.py only: once it has imported torch and the harness (trusted
# code, before any of the run's), it sends START_READY, then waits until the supervisor sends the
# deadline as a decimal number and a newline. So imports cost the run nothing, and a run queued behind
# another on its slot is ready to train the moment that one ends.
ENV_START_FD = "AUTORESEARCH_START_FD"
START_READY = b"R"
# A pipe the supervisor closes when that deadline is reached: `run.done` turns true and train.py hands
# back now; a run that does not is stopped shortly after.
ENV_HANDBACK_FD = "AUTORESEARCH_HANDBACK_FD"
# Set by launch.py for harness.start(), never by the supervisor: "train:STATUS:RELEASE" in the training
# process (the export process beside it reports its exit code on pipe STATUS, and starts when the
# training process closes pipe RELEASE), "export:STATUS" in the export process.
ENV_EXPORT = "AUTORESEARCH_EXPORT"
# The export process's exit code when the model cannot be handed back: training stops at once.
EXPORT_REFUSED = 3
# Optional: how much larger than the profile's model to train (a float >= 1, default 1), for
# scale-up checks; the template grows depth (and width with it) by this factor.
ENV_SCALE = "AUTORESEARCH_SCALE"
