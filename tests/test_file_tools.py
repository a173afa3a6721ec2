"""The file tools through a real in-memory MCP client: results, refusals, annotations."""

from __future__ import annotations

import anyio
import pytest
from mcp import Client

from autoresearch_mcp.nanochat.errors import UserError
from autoresearch_mcp.sandbox.history import open_history, pin_run
from autoresearch_mcp.server.app import build_server
from autoresearch_mcp.tools import files

TRAIN = "import math\n\nLEARNING_RATE = 0.01\nDEPTH = 4\n\n\ndef schedule(step):\n    return LEARNING_RATE * math.cos(step)\n"
MODEL = "class Model:\n    width = 128\n"
FILE_TOOLS = {
    "read_file",
    "list_files",
    "search_files",
    "workspace_diff",
    "edit_file",
    "apply_diff",
    "write_file",
    "reset_workspace",
}


@pytest.fixture
def workspace(make_workspace):
    return make_workspace(
        {"train.py": TRAIN, "model.py": MODEL, "data/notes.txt": "LEARNING_RATE notes\n"},
        editable=("train.py", "model.py"),
    )


def ok(result) -> dict:
    assert not result.is_error, result.content[0].text
    return result.structured_content


def refused(result) -> str:
    """The refusal's message, without the SDK's "Error executing tool NAME: " prefix."""
    assert result.is_error
    prefix, message = result.content[0].text.split(": ", 1)
    assert prefix.startswith("Error executing tool ") and not message.startswith("internal error"), message
    return message


def test_tools_are_advertised_with_read_only_or_destructive_hints(workspace) -> None:
    async def listed():
        async with Client(build_server(workspace)) as client:
            return (await client.list_tools()).tools

    tools = {tool.name: tool for tool in anyio.run(listed) if tool.name in FILE_TOOLS}
    readers = {"read_file", "list_files", "search_files", "workspace_diff"}
    writers = {"edit_file", "apply_diff", "write_file", "reset_workspace"}
    assert set(tools) == readers | writers == FILE_TOOLS
    assert all(tools[name].annotations.read_only_hint for name in readers)
    assert all(
        tools[name].annotations.destructive_hint and not tools[name].annotations.read_only_hint for name in writers
    )
    assert all(tool.output_schema for tool in tools.values())
    assert (
        "state" not in str(tools["read_file"].input_schema)
        and "workspace" not in tools["read_file"].input_schema["properties"]
    )


# ---- read_file -------------------------------------------------------------------------------


def test_read_file_numbers_lines_and_reads_ranges(workspace, call_tool) -> None:
    whole = ok(call_tool(workspace, "read_file", path="train.py"))
    assert whole["text"].splitlines()[2] == "3\tLEARNING_RATE = 0.01"
    assert (whole["total_lines"], whole["editable"], whole["line_ending"]) == (8, True, "lf")
    part = ok(call_tool(workspace, "read_file", path="train.py", start_line=7, end_line=99))
    assert part["text"] == "7\tdef schedule(step):\n8\t    return LEARNING_RATE * math.cos(step)"
    assert (part["start_line"], part["end_line"]) == (7, 8)


def test_read_file_reads_the_harness_read_only(workspace, call_tool) -> None:
    harness = ok(call_tool(workspace, "read_file", path="@harness/__init__.py"))
    assert harness["path"] == "@harness/__init__.py" and not harness["editable"]


def test_read_file_shows_binary_files_as_binary(workspace, call_tool) -> None:
    (workspace.root / "weights.bin").write_bytes(b"\x00\x01\xff")
    result = ok(call_tool(workspace, "read_file", path="weights.bin"))
    assert result["binary"] and result["text"] == "" and result["size_bytes"] == 3


def test_read_file_pages_long_files(workspace, call_tool) -> None:
    (workspace.root / "long.txt").write_text("x\n" * (files.MAX_READ_LINES + 5))
    first = ok(call_tool(workspace, "read_file", path="long.txt"))
    assert first["end_line"] == files.MAX_READ_LINES and f"start_line={files.MAX_READ_LINES + 1}" in first["note"]


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"path": "train.py", "start_line": 50}, "train.py has 8 lines; start_line 50 is past the end"),
        ({"path": "train.py", "start_line": 5, "end_line": 2}, "end_line 2 is before start_line 5"),
        ({"path": "missing.py"}, "missing.py: no such file in the workspace; use list_files"),
        ({"path": "data"}, "data: is a folder; use list_files"),
    ],
)
def test_read_file_refusals(workspace, call_tool, arguments, expected) -> None:
    assert expected in refused(call_tool(workspace, "read_file", **arguments))


# ---- list_files and search_files -------------------------------------------------------------


def test_list_files_shows_size_and_editability_but_not_server_state(workspace, call_tool) -> None:
    (workspace.root / "alias.py").symlink_to("train.py")
    listing = {entry["path"]: entry for entry in ok(call_tool(workspace, "list_files"))["files"]}
    assert set(listing) == {".gitignore", "alias.py", "data/notes.txt", "model.py", "program.md", "train.py"}
    assert listing["train.py"]["editable"] and listing["train.py"]["size_bytes"] == len(TRAIN)
    assert not listing["program.md"]["editable"]
    assert listing["alias.py"]["symlink_to"] == "train.py" and not listing["alias.py"]["editable"]
    only_data = ok(call_tool(workspace, "list_files", path="data"))["files"]
    assert [entry["path"] for entry in only_data] == ["data/notes.txt"]


def test_list_files_lists_the_harness(workspace, call_tool) -> None:
    paths = [entry["path"] for entry in ok(call_tool(workspace, "list_files", path="@harness/"))["files"]]
    assert "@harness/__init__.py" in paths
    assert all(path.startswith("@harness/") and not path.endswith(".pyc") for path in paths)


def test_search_files_finds_lines_by_regex(workspace, call_tool) -> None:
    result = ok(call_tool(workspace, "search_files", pattern=r"LEARNING_RATE\b"))
    assert [(m["path"], m["line"]) for m in result["matches"]] == [
        ("data/notes.txt", 1),
        ("train.py", 3),
        ("train.py", 8),
    ]
    limited = ok(call_tool(workspace, "search_files", pattern="LEARNING_RATE", path="train.py", max_results=1))
    assert limited["truncated"] and limited["matches"] == [
        {"path": "train.py", "line": 3, "text": "LEARNING_RATE = 0.01"}
    ]


def test_search_files_skips_binary_files(workspace, call_tool) -> None:
    (workspace.root / "weights.bin").write_bytes(b"LEARNING_RATE\x00")
    result = ok(call_tool(workspace, "search_files", pattern="LEARNING_RATE"))
    assert result["skipped"] == ["weights.bin"]


def test_search_files_refuses_bad_regex(workspace, call_tool) -> None:
    assert "bad regular expression '(lr'" in refused(call_tool(workspace, "search_files", pattern="(lr"))


def test_a_workspace_full_of_files_is_walked_within_bounds(workspace, monkeypatch) -> None:
    """A dataset unpacked into the workspace must not stall list_files or search_files."""
    bulk = workspace.root / "bulk"
    for folder in range(4):
        (bulk / str(folder)).mkdir(parents=True)
        for n in range(5):
            (bulk / str(folder) / f"{n}.txt").write_text("x\n")
    monkeypatch.setattr(files, "MAX_WALK_ENTRIES", 8)
    listed = files.list_files(workspace, "bulk")
    assert listed.truncated and 8 <= len(listed.files) < 20
    assert "list a subfolder" in listed.text()
    with pytest.raises(UserError, match="too many files to search"):
        files.search_files(workspace, "x", "bulk")
    assert len(files.search_files(workspace, "x", "bulk/0").matches) == 5, "a folder inside it is searched"
    monkeypatch.setattr(files, "MAX_WALK_ENTRIES", 1000)
    monkeypatch.setattr(files, "SEARCH_SECONDS", 0.0)
    with pytest.raises(UserError, match="too many files to search in 0 s"):
        files.search_files(workspace, "x", "bulk")


def test_search_files_stops_a_runaway_pattern(workspace, monkeypatch) -> None:
    (workspace.root / "data" / "notes.txt").write_text("a" * 28 + "b\n")
    monkeypatch.setattr(files, "SEARCH_SECONDS", 0.2)
    with pytest.raises(UserError, match="took longer than"):
        files.search_files(workspace, "(a|a)+$")


# ---- write_file and edit_file ----------------------------------------------------------------


def test_write_file_replaces_the_whole_file_and_returns_the_diff(workspace, call_tool) -> None:
    result = ok(call_tool(workspace, "write_file", path="model.py", content="class Model:\n    width = 256\n"))
    assert "-    width = 128\n+    width = 256\n" in result["diff"]
    assert (workspace.root / "model.py").read_text() == "class Model:\n    width = 256\n"


def test_write_file_keeps_a_crlf_file_crlf(workspace, call_tool) -> None:
    (workspace.root / "model.py").write_bytes(MODEL.replace("\n", "\r\n").encode())
    ok(call_tool(workspace, "write_file", path="model.py", content="a\nb\n"))
    assert (workspace.root / "model.py").read_bytes() == b"a\r\nb\r\n"


def test_write_file_refuses_identical_content_and_protected_files(workspace, call_tool) -> None:
    assert "identical" in refused(call_tool(workspace, "write_file", path="model.py", content=MODEL))
    assert "not editable" in refused(call_tool(workspace, "write_file", path="program.md", content="x"))


def test_edit_file_replaces_one_exact_match(workspace, call_tool) -> None:
    result = ok(
        call_tool(
            workspace, "edit_file", path="train.py", old_text="LEARNING_RATE = 0.01", new_text="LEARNING_RATE = 0.02"
        )
    )
    assert result["replacements"] == 1
    assert "-LEARNING_RATE = 0.01\n+LEARNING_RATE = 0.02\n" in result["diff"]
    assert "LEARNING_RATE = 0.02\n" in (workspace.root / "train.py").read_text()


def test_edit_file_without_a_match_shows_the_closest_region(workspace, call_tool) -> None:
    message = refused(
        call_tool(
            workspace,
            "edit_file",
            path="train.py",
            old_text="def schedule(step):\n  return LEARNING_RATE * math.cos(step)\n",
            new_text="x",
        )
    )
    assert message.startswith("train.py: old_text not found; it must match the file exactly")
    assert "The closest region is lines 7-8" in message
    assert "differ only in whitespace" in message
    assert "7\tdef schedule(step):\n8\t    return LEARNING_RATE * math.cos(step)" in message
    assert (workspace.root / "train.py").read_text() == TRAIN


def test_edit_file_needs_a_unique_match_unless_replace_all(workspace, call_tool) -> None:
    assert "matches 2 times (at lines 3, 8)" in refused(
        call_tool(workspace, "edit_file", path="train.py", old_text="LEARNING_RATE", new_text="LR")
    )
    result = ok(
        call_tool(workspace, "edit_file", path="train.py", old_text="LEARNING_RATE", new_text="LR", replace_all=True)
    )
    assert result["replacements"] == 2 and "LEARNING_RATE" not in (workspace.root / "train.py").read_text()


def test_edit_file_in_a_crlf_file_matches_lf_text_and_keeps_crlf(workspace, call_tool) -> None:
    (workspace.root / "train.py").write_bytes(TRAIN.replace("\n", "\r\n").encode())
    ok(
        call_tool(
            workspace,
            "edit_file",
            path="train.py",
            old_text="LEARNING_RATE = 0.01\nDEPTH = 4\n",
            new_text="LEARNING_RATE = 0.01\nDEPTH = 6\n",
        )
    )
    assert (workspace.root / "train.py").read_bytes() == TRAIN.replace("DEPTH = 4", "DEPTH = 6").replace(
        "\n", "\r\n"
    ).encode()


def test_edit_file_refusals(workspace, call_tool) -> None:
    assert "old_text is empty" in refused(call_tool(workspace, "edit_file", path="train.py", old_text="", new_text="x"))
    assert "identical" in refused(
        call_tool(workspace, "edit_file", path="train.py", old_text="DEPTH", new_text="DEPTH")
    )
    assert "not editable" in refused(call_tool(workspace, "edit_file", path="program.md", old_text="a", new_text="b"))


# ---- apply_diff ------------------------------------------------------------------------------

TWO_FILE_DIFF = (
    "diff --git a/train.py b/train.py\n--- a/train.py\n+++ b/train.py\n@@ -3,2 +3,2 @@\n LEARNING_RATE = 0.01\n-DEPTH = 4\n+DEPTH = 8\n"
    "diff --git a/model.py b/model.py\n--- a/model.py\n+++ b/model.py\n@@ -1,2 +1,2 @@\n class Model:\n-    width = 128\n+    width = 512\n"
)


def test_apply_diff_changes_every_file_and_returns_the_applied_diff(workspace, call_tool) -> None:
    result = ok(call_tool(workspace, "apply_diff", diff=TWO_FILE_DIFF))
    assert result["applied"] and result["files"] == ["train.py", "model.py"]
    assert "+DEPTH = 8\n" in result["diff"] and "+    width = 512\n" in result["diff"]
    assert "DEPTH = 8\n" in (workspace.root / "train.py").read_text()
    assert (workspace.root / "model.py").read_text() == "class Model:\n    width = 512\n"


def test_apply_diff_dry_run_shows_without_writing(workspace, call_tool) -> None:
    result = ok(call_tool(workspace, "apply_diff", diff=TWO_FILE_DIFF, dry_run=True))
    assert not result["applied"] and "+DEPTH = 8\n" in result["diff"]
    assert (workspace.root / "train.py").read_text() == TRAIN


def test_apply_diff_corrects_stale_line_numbers(workspace, call_tool) -> None:
    stale = TWO_FILE_DIFF.replace("@@ -3,2 +3,2 @@", "@@ -30,9 +30,9 @@")
    result = ok(call_tool(workspace, "apply_diff", diff=stale))
    assert "@@ -1,7 +1,7 @@\n" in result["diff"]


def test_apply_diff_creates_a_new_editable_file(make_workspace, call_tool) -> None:
    workspace = make_workspace({"train.py": TRAIN}, editable=("train.py", "extra.py"))
    result = ok(
        call_tool(workspace, "apply_diff", diff="--- /dev/null\n+++ b/extra.py\n@@ -0,0 +1,2 @@\n+A = 1\n+B = 2\n")
    )
    assert "new file mode" in result["diff"]
    assert (workspace.root / "extra.py").read_text() == "A = 1\nB = 2\n"


def test_apply_diff_never_reports_success_for_a_patch_that_changes_nothing(workspace, call_tool) -> None:
    same = "--- a/train.py\n+++ b/train.py\n@@ -4 +4 @@\n-DEPTH = 4\n+DEPTH = 4\n"
    assert "changes nothing in this file" in refused(call_tool(workspace, "apply_diff", diff=same))


def test_apply_diff_is_all_or_nothing_when_the_second_file_fails(workspace, call_tool) -> None:
    broken = TWO_FILE_DIFF.replace(" class Model:\n", " class Modle:\n")
    message = refused(call_tool(workspace, "apply_diff", diff=broken))
    assert message.startswith("model.py: hunk 1 (diff line 11): context not found near line 1; closest match at line 1")
    assert (workspace.root / "train.py").read_text() == TRAIN


# ---- workspace_diff and reset_workspace ------------------------------------------------------


def test_workspace_diff_shows_edits_against_best(workspace, call_tool) -> None:
    assert ok(call_tool(workspace, "workspace_diff"))["files"] == []
    ok(call_tool(workspace, "apply_diff", diff=TWO_FILE_DIFF))
    (workspace.root / "weights.bin").write_bytes(b"\x00")  # untracked, not editable: not part of the diff
    result = ok(call_tool(workspace, "workspace_diff"))
    assert result["files"] == ["model.py", "train.py"]
    assert result["commit"] == open_history(workspace.root).commit("best").hexsha
    assert "-DEPTH = 4\n+DEPTH = 8\n" in result["diff"]


def test_workspace_diff_against_an_older_commit(workspace, call_tool) -> None:
    first = open_history(workspace.root).commit("best~1").hexsha  # the template commit
    result = ok(call_tool(workspace, "workspace_diff", base=first))
    assert set(result["files"]) >= {"train.py", "model.py"} and result["commit"] == first


def test_history_tools_accept_a_run_id(workspace, call_tool) -> None:
    repo = open_history(workspace.root)
    template_commit = repo.commit("best~1").hexsha
    pin_run(repo, "run-7", template_commit)
    assert ok(call_tool(workspace, "workspace_diff", base="run-7"))["commit"] == template_commit
    reset = ok(call_tool(workspace, "reset_workspace", to="run-7"))
    assert reset["commit"] == template_commit and reset["removed"] == ["model.py"]
    assert (workspace.root / "train.py").read_bytes() == repo.commit(template_commit).tree[
        "train.py"
    ].data_stream.read()


def test_reset_workspace_restores_editable_files_only(workspace, call_tool) -> None:
    ok(call_tool(workspace, "apply_diff", diff=TWO_FILE_DIFF))
    (workspace.root / "data" / "notes.txt").write_text("human notes\n")
    result = ok(call_tool(workspace, "reset_workspace"))
    assert sorted(result["restored"]) == ["model.py", "train.py"] and result["removed"] == []
    assert "-DEPTH = 8\n+DEPTH = 4\n" in result["diff"]
    assert (workspace.root / "train.py").read_text() == TRAIN
    assert (workspace.root / "data" / "notes.txt").read_text() == "human notes\n"
    assert ok(call_tool(workspace, "reset_workspace"))["restored"] == []


def test_reset_workspace_removes_editable_files_the_commit_lacks(make_workspace, call_tool) -> None:
    workspace = make_workspace({"train.py": TRAIN}, editable=("train.py", "extra.py"))
    (workspace.root / "extra.py").write_text("scratch\n")
    result = ok(call_tool(workspace, "reset_workspace", to="best"))
    assert result["removed"] == ["extra.py"] and not (workspace.root / "extra.py").exists()


@pytest.mark.parametrize("tool, argument", [("workspace_diff", "base"), ("reset_workspace", "to")])
@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("--output=/tmp/x", "is not a valid ref"),
        ("nope", "does not name a commit"),
        ("best^{tree}", "does not name a commit"),
        ("0" * 40, "does not name a commit"),
    ],
)
def test_history_tools_refuse_bad_refs(workspace, call_tool, tool, argument, ref, expected) -> None:
    assert expected in refused(call_tool(workspace, tool, **{argument: ref}))
