"""The `autoresearch-mcp` command line: init, call, doctor, --help, the default workspace, bad input."""

from __future__ import annotations

import json
import socket
from importlib.metadata import version
from pathlib import Path

import git
import pytest

from autoresearch_mcp.nanochat.data import PreparedData
from autoresearch_mcp.nanochat.errors import UserError
from autoresearch_mcp.sandbox import cgroups
from autoresearch_mcp.sandbox.config import WorkspaceConfig
from autoresearch_mcp.server.cli import check_platform, default_workspace, main, parse_tool_arguments
from autoresearch_mcp.tests.cli_process import clean_env, run_cli
from autoresearch_mcp.tools.setup import init_workspace

DOCTOR_CHECKS = ["python", "torch", "cuda", "nvml", "git", "workspace", "isolation", "limits", "data"]


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


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"autoresearch-mcp {version('autoresearch-mcp')}"


# ---- platforms ------------------------------------------------------------------------


def test_native_windows_is_refused_with_the_way_out() -> None:
    with pytest.raises(UserError) as refusal:
        check_platform("win32")
    assert str(refusal.value) == "autoresearch-mcp needs Linux or macOS; on Windows use WSL2"


@pytest.mark.parametrize("platform", ["linux", "darwin"])
def test_linux_and_macos_pass_the_platform_check(platform: str) -> None:
    check_platform(platform)


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
                "program.md",
            ]
        )
        == 0
    )

    out = capsys.readouterr().out
    assert f"created workspace {root}" in out and "read-only" not in out
    assert (root / "train.py").is_file() and (root / "program.md").is_file()
    config = WorkspaceConfig.load(root / ".autoresearch" / "config.toml")
    assert (config.profile, config.budget_seconds, config.editable) == ("cpu", 30.0, ["train.py", "program.md"])
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
        (["--editable", "nope.py"], "--editable nope.py: no such file in the template; the template's files are"),
        (["--editable", "../train.py"], "--editable ../train.py: no such file in the template"),
    ],
)
def test_init_rejects_bad_options_before_creating_anything(
    tmp_path: Path, options: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["init", str(tmp_path / "ws"), *options]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "ws").exists()


def test_init_says_when_train_py_is_not_editable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", str(tmp_path / "ws"), "--editable", "program.md"]) == 0
    assert "note: train.py is read-only to agents here" in capsys.readouterr().out
    assert WorkspaceConfig.load(tmp_path / "ws" / ".autoresearch" / "config.toml").editable == ["program.md"]


def test_init_refuses_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["init", str(tmp_path / "notes.txt")]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"autoresearch-mcp: error: {tmp_path / 'notes.txt'} is a file, not a folder; a workspace is a folder"
    )
    assert (tmp_path / "notes.txt").read_text() == "mine"


# ---- bad numbers: argparse refuses them in one line, before anything starts ---------------------


@pytest.mark.parametrize(
    ("command", "option", "value", "message"),
    [
        (["init", "WS"], "--budget", "0", "0 is not a positive number of seconds"),
        (["init", "WS"], "--budget", "-5", "-5 is not a positive number of seconds"),
        (["init", "WS"], "--budget", "nan", "nan is not a positive number of seconds"),
        (["init", "WS"], "--budget", "inf", "inf is not a positive number of seconds"),
        (["init", "WS"], "--budget", "ten", "'ten' is not a number of seconds"),
        (["init", "WS"], "--budget", "1e9", "1e9 s is over the 86400 s a budget may be"),
        (["demo", "--workspace", "WS"], "--budget", "0", "0 is not a positive number of seconds"),
        (["demo", "--workspace", "WS"], "--budget", "NaN", "NaN is not a positive number of seconds"),
        (["serve", "--workspace", "WS", "--create"], "--port", "99999", "99999 is outside 1-65535"),
        (["serve", "--workspace", "WS", "--create"], "--port", "-1", "-1 is outside 1-65535"),
        (["serve", "--workspace", "WS", "--create"], "--port", "http", "'http' is not a port number"),
        (["serve", "--workspace", "WS", "--create"], "--session-idle-timeout", "0", "0 is not a positive number"),
        (["serve", "--workspace", "WS", "--create"], "--session-idle-timeout", "inf", "inf is not a positive number"),
        (["dashboard", "--workspace", "WS"], "--port", "65536", "65536 is outside 1-65535"),
    ],
)
def test_bad_numbers_are_refused_in_one_line(
    tmp_path: Path, command: list[str], option: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    workspace = tmp_path / "ws"
    with pytest.raises(SystemExit) as exit_info:
        main([str(workspace) if part == "WS" else part for part in command] + [f"{option}={value}"])
    assert exit_info.value.code == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line.startswith(f"autoresearch-mcp {command[0]}: error: argument {option}: {message}")
    assert not workspace.exists()


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
        command = ["serve", "--transport", "http", "--port", str(port), "--workspace", str(tmp_path / "ws"), "--create"]
        assert main(command) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    assert not (tmp_path / "ws").exists()


# ---- which workspace: only the default one, or an explicit --create, is ever created -------------


@pytest.mark.parametrize(
    "command", [["serve"], ["serve", "--transport", "http", "--port", "0"], ["call", "list_files"]]
)
def test_a_missing_workspace_is_not_created(
    tmp_path: Path, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "typo"
    assert main([*command, "--workspace", str(missing)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"autoresearch-mcp: error: no workspace at {missing}; create one with `autoresearch-mcp init {missing}` "
        "(or add --create)"
    )
    assert not missing.exists()


def test_a_missing_workspace_named_by_the_environment_is_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "typo"
    result = run_cli("call", "list_files", env=clean_env(AUTORESEARCH_MCP_WORKSPACE=str(missing)))
    assert result.returncode == 2
    assert f"no workspace at {missing}" in result.stderr and "Traceback" not in result.stderr
    assert not missing.exists()


def test_an_empty_folder_is_not_made_a_workspace_unasked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--workspace", str(tmp_path)]) == 2
    assert f"{tmp_path} is an empty folder, not a workspace; create one there with" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_call_with_create_makes_the_workspace(tmp_path: Path) -> None:
    created = tmp_path / "new"
    result = run_cli("call", "list_files", "--workspace", str(created), "--create")
    assert result.returncode == 0, result.stderr
    assert (created / ".autoresearch").is_dir() and (created / "train.py").is_file()


@pytest.mark.parametrize(
    "command",
    [
        ["serve", "--workspace", "FILE"],
        ["call", "list_files", "--workspace", "FILE", "--create"],
        ["init", "FILE"],
        ["dashboard", "--workspace", "FILE", "--port", "0"],
    ],
)
def test_a_file_given_as_workspace_is_refused(
    tmp_path: Path, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "notes.txt"
    file.write_text("mine")
    assert main([str(file) if part == "FILE" else part for part in command]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"autoresearch-mcp: error: {file} is a file, not a folder; a workspace is a folder"
    )
    assert file.read_text() == "mine"


def test_demo_refuses_a_file_as_workspace(tmp_path: Path) -> None:
    file = tmp_path / "notes.txt"
    file.write_text("mine")
    result = run_cli("demo", "--workspace", str(file), "--profile", "cpu")
    assert result.returncode == 2
    assert result.stderr.strip() == f"autoresearch-mcp: error: {file} is a file, not a folder; a workspace is a folder"


def test_prepare_refuses_a_file_as_data_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = tmp_path / "cache"
    file.write_text("mine")
    assert main(["prepare", "--profile", "cpu", "--data-dir", str(file)]) == 2
    assert f"{file} is a file, not a folder; the data cache (--data-dir) is a folder" in capsys.readouterr().err


def test_a_workspace_path_through_a_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    inside_a_file = tmp_path / "notes.txt" / "ws"
    assert main(["init", str(inside_a_file)]) == 1
    assert (
        capsys.readouterr().err.strip()
        == f"autoresearch-mcp: error: Not a directory: {inside_a_file / '.autoresearch'}"
    )


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


@pytest.mark.parametrize(
    ("arguments", "refusal"),
    [
        (
            ["path=train.py", "unknown=1"],
            "read_file has no argument 'unknown'; its arguments are: path, start_line (optional), end_line (optional)",
        ),
        (
            ["path=train.py", "start_line=abc"],
            'read_file: start_line="abc" is not valid; start_line must be an integer >= 1',
        ),
        (["path=train.py", "end_line=0"], "read_file: end_line=0 is not valid; end_line must be an integer >= 1"),
        ([], "read_file needs path=...; its arguments are: path, start_line (optional), end_line (optional)"),
    ],
    ids=["unknown", "wrong-type", "out-of-range", "missing"],
)
def test_call_refuses_bad_arguments_in_one_sentence(workspace: Path, arguments: list[str], refusal: str) -> None:
    result = run_cli("call", "read_file", *arguments, "--workspace", str(workspace))
    assert result.returncode == 2
    assert result.stderr.strip() == f"autoresearch-mcp: error: {refusal}"


def test_call_refuses_nan_as_a_number(workspace: Path) -> None:
    result = run_cli("call", "training_status", "wait_seconds=NaN", "--workspace", str(workspace))
    assert result.returncode == 2
    assert 'wait_seconds="NaN" is not valid; wait_seconds must be a number >= 0 and <= ' in result.stderr


def test_call_takes_arguments_after_options(workspace: Path) -> None:
    result = run_cli("call", "read_file", "--workspace", str(workspace), "path=program.md", "end_line=1")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["end_line"] == 1


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


def test_doctor_says_which_isolation_is_in_force_and_marks_an_opt_out(workspace: Path) -> None:
    isolation_line = next(
        line for line in run_cli("doctor", "--workspace", str(workspace)).stdout.splitlines() if " isolation " in line
    )
    assert isolation_line.split()[0] == "ok" and "bubblewrap 0.11" in isolation_line and "pid, net" in isolation_line
    config = workspace / ".autoresearch" / "config.toml"
    config.write_text(config.read_text().replace('isolation = "bubblewrap"', 'isolation = "none"'))
    opted_out = next(
        line for line in run_cli("doctor", "--workspace", str(workspace)).stdout.splitlines() if " isolation " in line
    )
    assert opted_out.split()[0] == "warn" and "unisolated" in opted_out


def test_doctor_says_who_enforces_the_limits(workspace: Path) -> None:
    limits_line = next(
        line for line in run_cli("doctor", "--workspace", str(workspace)).stdout.splitlines() if " limits " in line
    )
    if isinstance(cgroups.parents(), str):
        assert limits_line.split()[0] == "warn" and "watchdog only" in limits_line
    else:
        assert limits_line.split()[0] == "ok" and "enforced by the kernel: cgroup v" in limits_line


def test_doctor_warns_of_a_missing_named_workspace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "typo"
    main(["doctor", "--workspace", str(missing)])
    out = capsys.readouterr().out
    assert f"warn  workspace  no workspace at {missing}; create one with `autoresearch-mcp init {missing}`" in out
    assert not missing.exists()


def test_doctor_fails_on_a_broken_workspace(workspace: Path) -> None:
    (workspace / ".autoresearch" / "config.toml").write_text("profile = [unclosed\n")
    result = run_cli("doctor", "--workspace", str(workspace))
    assert result.returncode == 1
    workspace_line = next(line for line in result.stdout.splitlines() if line.split()[1] == "workspace")
    assert workspace_line.startswith("FAIL") and "not valid TOML" in workspace_line
