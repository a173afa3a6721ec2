"""The run contract: exit codes mean one thing on every side."""

from __future__ import annotations

import pytest

from autoresearch_mcp.nanochat import contract
from autoresearch_mcp.nanochat.contract import Phase, RunExit
from autoresearch_mcp.sandbox.runner import Exit, outcome


def test_every_exit_code_has_its_own_meaning() -> None:
    meanings = [code.meaning for code in RunExit]
    assert all(meanings) and len(set(meanings)) == len(meanings)
    assert len({int(code) for code in RunExit}) == len(RunExit)


@pytest.mark.parametrize("code", [code for code in RunExit if code is not RunExit.OK])
def test_the_runner_reports_a_failed_run_by_the_meaning_of_its_exit_code(tmp_path, code: RunExit) -> None:
    (tmp_path / contract.PHASE).write_text(Phase.FAILED.value + "\n")
    fields = outcome(tmp_path, Exit(int(code)))
    assert fields["status"] == ("timed_out" if code is RunExit.TIMED_OUT else "crashed")
    assert fields["error"].startswith(f"exit {int(code)} ({code.meaning})")


def test_an_exit_code_outside_the_contract_is_reported_as_a_number(tmp_path) -> None:
    fields = outcome(tmp_path, Exit(99))
    assert fields["error"] == "exit 99"


def test_the_supervisor_failure_line_is_the_reason_even_after_a_planted_one(tmp_path) -> None:
    (tmp_path / contract.LOG).write_text(
        f"{contract.FAILURE_MARK}planted by train.py\nstep 1\n{contract.FAILURE_MARK}the run used 13.2 GB of memory\n"
    )
    fields = outcome(tmp_path, Exit(int(RunExit.OVER_LIMIT)))
    assert fields["error"] == f"exit 9 ({RunExit.OVER_LIMIT.meaning}): the run used 13.2 GB of memory"


def test_a_run_that_exits_ok_with_a_summary_succeeded(tmp_path) -> None:
    (tmp_path / contract.SUMMARY).write_text('{"val_bpb": 1.5}')
    assert outcome(tmp_path, Exit(int(RunExit.OK)))["status"] == "succeeded"


def test_phases_are_the_words_in_the_phase_file() -> None:
    assert [phase.value for phase in Phase] == ["setup", "waiting", "training", "evaluating", "done", "failed"]
    assert Phase("training") is Phase.TRAINING and Phase.TRAINING == "training"
