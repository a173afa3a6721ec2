"""The `autoresearch-mcp` command line: init, call, doctor, --help, the default workspace."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import git
import pytest

from autoresearch_mcp.nanochat.data import PreparedData
from autoresearch_mcp.nanochat.errors import UserError
from autoresearch_mcp.sandbox.config import WorkspaceConfig
from autoresearch_mcp.server.cli import default_workspace, main, parse_tool_arguments
from autoresearch_mcp.tests.cli_process import clean_env, run_cli
from autoresearch_mcp.tools.setup import init_workspace

DOCTOR_CHECKS = ["python", "torch", "cuda", "nvml", "git", "workspace", "data"]


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    return init_workspace(tmp_path / "ws").root


# ---- --help ---------------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], ["init"], ["serve"], ["call"], ["prepare"], ["demo"], ["doctor"]])
def test_help_everywhere(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: autoresearch-mcp {' '.join(command)}".rstrip())


def test_unknown_options_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["doctor", "--frobnicate"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --frobnicate" in capsys.readouterr().err


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    assert "required: COMMAND" in capsys.readouterr().err


# ---- init -----------------------------------------------------------------------------


def test_init_creates_a_committed_workspace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "new" / "ws"
    assert (
        main(
            [
                "init",
                str(root),
                "--profile",
                "cpu",
                "--budget",
                "30",
                "--editable",
                "train.py",
                "--editable",
                "model.py",
            ]
        )
        == 0
    )

    assert f"created workspace {root}" in capsys.readouterr().out
    assert (root / "train.py").is_file() and (root / "program.md").is_file()
    config = WorkspaceConfig.load(root / ".autoresearch" / "config.toml")
    assert (config.profile, config.budget_seconds, config.editable) == ("cpu", 30.0, ["train.py", "model.py"])
    repo = git.Repo(root)
    assert not repo.is_dirty(untracked_files=True)
    assert {"train.py", "program.md"} <= {item.path for item in repo.head.commit.tree.traverse()}


def test_init_refuses_to_clobber_a_workspace(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workspace / "train.py").write_text("# my edits\n")
    assert main(["init", str(workspace)]) == 2
    assert "already a workspace" in capsys.readouterr().err
    assert (workspace / "train.py").read_text() == "# my edits\n"


def test_init_refuses_a_non_empty_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["init", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--profile", "tpu"], "unknown profile 'tpu'"),
        (["--budget", "0"], "must be a positive number of seconds"),
        (["--budget", "-5"], "must be a positive number of seconds"),
    ],
)
def test_init_rejects_bad_options_before_creating_anything(
    tmp_path: Path, options: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["init", str(tmp_path / "ws"), *options]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "ws").exists()


# ---- serve refusals (before anything starts) -----------------------------------------------


def test_serve_refuses_a_directory_that_is_not_a_workspace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "thesis.tex").write_text("mine")
    assert main(["serve", "--workspace", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis.tex"]


def test_serve_reports_a_port_in_use(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--transport", "http", "--port", str(port), "--workspace", str(tmp_path / "ws")]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    assert not (tmp_path / "ws").exists()


# ---- the default workspace --------------------------------------------------------------


def test_default_workspace_follows_env_then_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUTORESEARCH_MCP_WORKSPACE", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_workspace() == tmp_path / "data" / "autoresearch-mcp" / "workspace"
    monkeypatch.setenv("AUTORESEARCH_MCP_WORKSPACE", str(tmp_path / "chosen"))
    assert default_workspace() == tmp_path / "chosen"


def test_call_without_workspace_creates_the_default_one(tmp_path: Path) -> None:
    result = run_cli("call", "list_files", env=clean_env(XDG_DATA_HOME=str(tmp_path)))
    assert result.returncode == 0, result.stderr
    created = tmp_path / "autoresearch-mcp" / "workspace"
    assert (created / "train.py").is_file() and (created / ".git").is_dir()
    assert (created / ".autoresearch" / "server.log").is_file()


# ---- call -----------------------------------------------------------------------------


def test_call_prints_structured_results_as_json(workspace: Path) -> None:
    result = run_cli("call", "list_files", "--workspace", str(workspace))
    assert result.returncode == 0, result.stderr
    assert "train.py" in json.dumps(json.loads(result.stdout))


def test_call_takes_key_value_arguments(workspace: Path) -> None:
    first_line = (workspace / "program.md").read_text().splitlines()[0]
    result = run_cli(
        "call", "read_file", "path=program.md", "start_line=1", "end_line=1", "--workspace", str(workspace)
    )
    assert result.returncode == 0, result.stderr
    (line,) = json.loads(result.stdout)["text"].splitlines()
    assert first_line in line


def test_call_takes_a_json_object(workspace: Path) -> None:
    result = run_cli(
        "call", "read_file", "--json", '{"path": "train.py", "end_line": 2}', "--workspace", str(workspace)
    )
    assert result.returncode == 0, result.stderr
    lines = json.loads(result.stdout)["text"].splitlines()
    assert len(lines) == 2 and (workspace / "train.py").read_text().splitlines()[0] in lines[0]


def test_call_reports_a_tool_error_on_stderr_and_exits_1(workspace: Path) -> None:
    result = run_cli("call", "read_file", "path=../../etc/passwd", "--workspace", str(workspace))
    assert result.returncode == 1
    assert result.stdout == ""
    assert "read_file failed" in result.stderr and "escapes the workspace" in result.stderr


def test_call_names_the_tools_when_the_tool_is_unknown(workspace: Path) -> None:
    result = run_cli("call", "delete_everything", "--workspace", str(workspace))
    assert result.returncode == 2
    assert "unknown tool 'delete_everything'" in result.stderr and "read_file" in result.stderr


@pytest.mark.parametrize(
    ("pairs", "json_object", "expected"),
    [
        (["path=train.py"], None, {"path": "train.py"}),
        (["start_line=3", "dry_run=true", "x=null"], None, {"start_line": 3, "dry_run": True, "x": None}),
        (["old_text=a = 1"], None, {"old_text": "a = 1"}),  # only the first '=' separates
        (['content="123"'], None, {"content": "123"}),  # JSON quotes keep a number-like string
        (["pattern=[a-z"], None, {"pattern": "[a-z"}),  # not JSON: taken as a string
        ([], '{"path": "train.py", "end_line": 5}', {"path": "train.py", "end_line": 5}),
        ([], None, {}),
    ],
)
def test_parse_tool_arguments(pairs: list[str], json_object: str | None, expected: dict) -> None:
    assert parse_tool_arguments(pairs, json_object) == expected


@pytest.mark.parametrize(
    ("pairs", "json_object", "message"),
    [
        (["train.py"], None, "is not KEY=VALUE"),
        (["=x"], None, "is not KEY=VALUE"),
        (["a=1", "a=2"], None, "given twice"),
        ([], "[1, 2]", "must be a JSON object"),
        ([], "{path: x}", "not valid JSON"),
        (["a=1"], "{}", "not both"),
    ],
)
def test_parse_tool_arguments_refusals(pairs: list[str], json_object: str | None, message: str) -> None:
    with pytest.raises(UserError, match=message):
        parse_tool_arguments(pairs, json_object)


# ---- prepare --------------------------------------------------------------------------


def test_prepare_reports_the_prepared_data(prepared_cpu_data: PreparedData, cpu_data_dir: Path) -> None:
    result = run_cli("prepare", "--profile", "cpu", "--data-dir", str(cpu_data_dir))
    assert result.returncode == 0, result.stderr
    assert f"cpu data ready in {prepared_cpu_data.root}" in result.stdout
    assert f"{prepared_cpu_data.train_tokens:,} training" in result.stdout


def test_prepare_tokenizes_local_files(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for part in range(2):  # two files: the second (in sorted order) is the validation split
        lines = (json.dumps({"text": f"note {part}.{i}: tokens make the model go round. " * 8}) for i in range(50))
        (corpus / f"part{part}.jsonl").write_text("\n".join(lines) + "\n")
    result = run_cli("prepare", "--profile", "cpu", "--source", str(corpus), "--data-dir", str(tmp_path / "cache"))
    assert result.returncode == 0, result.stderr
    assert "cpu data ready in" in result.stdout and "local-" in result.stdout


def test_prepare_refuses_a_missing_local_source(tmp_path: Path) -> None:
    result = run_cli(
        "prepare", "--profile", "cpu", "--source", str(tmp_path / "nope"), "--data-dir", str(tmp_path / "cache")
    )
    assert result.returncode != 0
    assert "no such file or directory" in result.stderr


def test_prepare_rejects_an_unknown_profile(tmp_path: Path) -> None:
    result = run_cli("prepare", "--profile", "tpu", "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert "unknown profile 'tpu'" in result.stderr
    assert list(tmp_path.iterdir()) == []


# ---- doctor ---------------------------------------------------------------------------


def _doctor_lines(stdout: str) -> list[tuple[str, str]]:
    return [tuple(line.split()[:2]) for line in stdout.splitlines()]


def test_doctor_prints_one_line_per_check(workspace: Path) -> None:
    result = run_cli("doctor", "--workspace", str(workspace))
    lines = _doctor_lines(result.stdout)
    assert [check for _, check in lines] == DOCTOR_CHECKS
    assert all(status in ("ok", "warn", "FAIL") for status, _ in lines)
    assert dict((c, s) for s, c in lines)["workspace"] == "ok"
    assert result.returncode == (1 if any(status == "FAIL" for status, _ in lines) else 0)


def test_doctor_fails_on_a_broken_workspace(workspace: Path) -> None:
    (workspace / ".autoresearch" / "config.toml").write_text("profile = [unclosed\n")
    result = run_cli("doctor", "--workspace", str(workspace))
    assert result.returncode == 1
    workspace_line = next(line for line in result.stdout.splitlines() if line.split()[1] == "workspace")
    assert workspace_line.startswith("FAIL") and "not valid TOML" in workspace_line
