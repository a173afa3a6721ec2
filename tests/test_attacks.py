"""Hostile paths and patches against the file tools, through the real MCP protocol.

Every case must come back as a tool error with a clear message (never an internal error),
and leave the workspace (including .git and server state), the harness and the files
outside the workspace byte-identical.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from autoresearch_mcp.sandbox.workspace import harness_root

TRAIN = "LEARNING_RATE = 0.01\nDEPTH = 4\n\n\ndef schedule(step):\n    return LEARNING_RATE\n"
MODEL = "WIDTH = 128\nHEADS = 4\n"
TEN_MB = "x" * 10_000_000
GOOD_TRAIN_HUNK = (
    "--- a/train.py\n+++ b/train.py\n@@ -1,2 +1,2 @@\n-LEARNING_RATE = 0.01\n+LEARNING_RATE = 0.02\n DEPTH = 4\n"
)


def hunk(path: str) -> str:
    return f"--- a/{path}\n+++ b/{path}\n@@ -1 +1 @@\n-anything\n+pwned\n"


# (case id, tool, arguments, words the refusal must contain); {decoy} is a file outside the workspace.
CASES = [
    ("traversal", "read_file", {"path": "../../../../etc/passwd"}, "escapes the workspace"),
    ("traversal-inside-out", "read_file", {"path": "data/../../outside/decoy.txt"}, "escapes the workspace"),
    ("absolute-outside", "read_file", {"path": "/etc/passwd"}, "outside the workspace"),
    ("absolute-decoy-write", "write_file", {"path": "{decoy}", "content": "pwned"}, "outside the workspace"),
    ("symlink-to-etc-passwd", "read_file", {"path": "passwd_link"}, "resolves outside the workspace"),
    (
        "symlink-to-etc-passwd-search",
        "search_files",
        {"pattern": "root", "path": "passwd_link"},
        "resolves outside the workspace",
    ),
    ("symlinked-folder", "read_file", {"path": "etc_link/passwd"}, "resolves outside the workspace"),
    ("symlinked-folder-list", "list_files", {"path": "etc_link"}, "resolves outside the workspace"),
    ("editable-symlink-write", "write_file", {"path": "evil.py", "content": "pwned"}, "resolves outside the workspace"),
    (
        "editable-symlink-edit",
        "edit_file",
        {"path": "evil.py", "old_text": "outside", "new_text": "pwned"},
        "resolves outside the workspace",
    ),
    ("editable-symlink-diff", "apply_diff", {"diff": hunk("evil.py")}, "resolves outside the workspace"),
    ("nul-in-path", "read_file", {"path": "train.py\x00.txt"}, "NUL byte"),
    ("nul-in-content", "write_file", {"path": "train.py", "content": "a\x00b"}, "NUL characters"),
    ("git-config-read", "read_file", {"path": ".git/config"}, ".git/ belongs to the server"),
    ("git-config-dot-slash", "read_file", {"path": "./train.py/../.git/config"}, ".git/ belongs to the server"),
    (
        "git-config-write",
        "write_file",
        {"path": ".git/config", "content": "[core]\n\tfsmonitor = touch /tmp/pwned\n"},
        ".git/ belongs to the server",
    ),
    (
        "git-hook-diff",
        "apply_diff",
        {"diff": "--- /dev/null\n+++ b/.git/hooks/post-commit\n@@ -0,0 +1 @@\n+touch /tmp/pwned\n"},
        ".git/ belongs to the server",
    ),
    ("git-listing", "list_files", {"path": ".git"}, ".git/ belongs to the server"),
    ("state-config-read", "read_file", {"path": ".autoresearch/config.toml"}, ".autoresearch/ belongs to the server"),
    (
        "state-config-edit",
        "edit_file",
        {"path": ".autoresearch/config.toml", "old_text": "editable", "new_text": "x"},
        ".autoresearch/ belongs to the server",
    ),
    (
        "state-absolute",
        "write_file",
        {"path": "{root}/.autoresearch/config.toml", "content": "editable = ['program.md']\n"},
        ".autoresearch/ belongs to the server",
    ),
    (
        "harness-write",
        "write_file",
        {"path": "@harness/evaluate.py", "content": "VAL_BPB = 0.0\n"},
        "harness is read-only",
    ),
    (
        "harness-edit",
        "edit_file",
        {"path": "@harness/__init__.py", "old_text": '"""', "new_text": "#"},
        "harness is read-only",
    ),
    ("harness-diff", "apply_diff", {"diff": hunk("@harness/evaluate.py")}, "harness is read-only"),
    ("harness-escape", "read_file", {"path": "@harness/../../../etc/passwd"}, "escapes the harness folder"),
    ("harness-to-sandbox", "read_file", {"path": "@harness/../sandbox/workspace.py"}, "escapes the harness folder"),
    ("not-editable-write", "write_file", {"path": "program.md", "content": "ignore the rules\n"}, "not editable"),
    ("diff-traversal", "apply_diff", {"diff": hunk("../outside/decoy.txt")}, "escapes the workspace"),
    (
        "diff-absolute",
        "apply_diff",
        {"diff": "--- {decoy}\n+++ {decoy}\n@@ -1 +1 @@\n-outside\n+pwned\n"},
        "outside the workspace",
    ),
    ("diff-second-file-fails", "apply_diff", {"diff": GOOD_TRAIN_HUNK + hunk("model.py")}, "model.py: hunk 1"),
    (
        "diff-second-file-protected",
        "apply_diff",
        {"diff": GOOD_TRAIN_HUNK + hunk("program.md")},
        "program.md: not editable",
    ),
    (
        "diff-delete",
        "apply_diff",
        {"diff": "--- a/train.py\n+++ /dev/null\n@@ -1,2 +0,0 @@\n-LEARNING_RATE = 0.01\n-DEPTH = 4\n"},
        "deletes the file",
    ),
    (
        "diff-rename",
        "apply_diff",
        {"diff": "diff --git a/train.py b/run.py\nrename from train.py\nrename to run.py\n"},
        "renaming or copying",
    ),
    (
        "diff-binary",
        "apply_diff",
        {"diff": "diff --git a/train.py b/train.py\nBinary files a/train.py and b/train.py differ\n"},
        "binary patches",
    ),
    (
        "diff-changes-nothing",
        "apply_diff",
        {"diff": "--- a/train.py\n+++ b/train.py\n@@ -2 +2 @@\n-DEPTH = 4\n+DEPTH = 4\n"},
        "changes nothing",
    ),
    (
        "diff-create-existing",
        "apply_diff",
        {"diff": "--- /dev/null\n+++ b/train.py\n@@ -0,0 +1 @@\n+x\n"},
        "already exists",
    ),
    ("diff-garbage", "apply_diff", {"diff": "rm -rf /\n"}, "no file sections found"),
    (
        "crlf-context-mismatch",
        "apply_diff",
        {"diff": "--- a/crlf.py\n+++ b/crlf.py\n@@ -1 +1 @@\n-nope\n+x\n"},
        "context not found",
    ),
    ("binary-edit", "edit_file", {"path": "blob.bin", "old_text": "a", "new_text": "b"}, "binary file"),
    ("binary-diff", "apply_diff", {"diff": hunk("blob.bin")}, "binary file"),
    ("ten-mb-content", "write_file", {"path": "train.py", "content": TEN_MB}, "10,000,000 bytes; at most 1,000,000"),
    ("ten-mb-old-text", "edit_file", {"path": "train.py", "old_text": TEN_MB, "new_text": "x"}, "at most 1,000,000"),
    ("ten-mb-diff", "apply_diff", {"diff": TEN_MB}, "at most 1,000,000"),
    ("ten-mb-path", "read_file", {"path": TEN_MB}, "characters long"),
    ("ten-mb-pattern", "search_files", {"pattern": TEN_MB}, "characters; at most"),
    ("ref-option-diff", "workspace_diff", {"base": "--output={decoy}"}, "not a valid ref"),
    ("ref-option-reset", "reset_workspace", {"to": "-h"}, "not a valid ref"),
    ("ref-unknown", "reset_workspace", {"to": "refs/heads/../../config"}, "not a valid ref"),
    ("ref-tree-path", "workspace_diff", {"base": "HEAD:../../etc/passwd"}, "not a valid ref"),
    ("empty-path", "read_file", {"path": ""}, "empty path"),
    ("surrogate-path", "read_file", {"path": "train\ud800.py"}, "not valid Unicode"),
    ("surrogate-content", "write_file", {"path": "train.py", "content": "x = '\udcff'\n"}, "not valid Unicode"),
    (
        "surrogate-diff",
        "apply_diff",
        {"diff": "--- a/train.py\n+++ b/train.py\n@@ -2 +2 @@\n-DEPTH = 4\n+DEPTH = '\ud800'\n"},
        "not valid Unicode",
    ),
    ("folder-as-file", "write_file", {"path": "data", "content": "x"}, "data: is a folder"),
]


@pytest.fixture
def hostile(make_workspace, call_tool, tmp_path: Path):
    decoy = tmp_path / "outside" / "decoy.txt"
    decoy.parent.mkdir()
    decoy.write_text("outside\n")
    workspace = make_workspace(
        {
            "train.py": TRAIN,
            "model.py": MODEL,
            "crlf.py": "a = 1\r\nb = 2\r\n",
            "blob.bin": b"a\x00\xff",
            "data/notes.txt": "notes\n",
        },
        editable=("train.py", "model.py", "crlf.py", "blob.bin", "evil.py", "data"),
    )
    (workspace.root / "passwd_link").symlink_to("/etc/passwd")
    (workspace.root / "etc_link").symlink_to("/etc", target_is_directory=True)
    (workspace.root / "evil.py").symlink_to(decoy)
    call_tool(workspace, "list_files")  # the server's first start creates its state files (runs.db, results.tsv)
    return workspace, decoy


def fingerprint(*roots: Path) -> dict[str, str]:
    """Every file, link and folder under the roots, with a hash of its content or target.

    Bytecode caches are left out: other processes importing the harness write them.
    """
    seen = {}
    for root in roots:
        for folder, subfolders, names in os.walk(root):
            subfolders[:] = [name for name in subfolders if name != "__pycache__"]
            for name in subfolders + names:
                path = os.path.join(folder, name)
                if os.path.islink(path):
                    seen[path] = "link:" + os.readlink(path)
                elif os.path.isdir(path):
                    seen[path] = "folder"
                else:
                    seen[path] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return seen


@pytest.mark.parametrize(
    ("tool", "arguments", "expected"), [case[1:] for case in CASES], ids=[case[0] for case in CASES]
)
def test_hostile_input_is_refused_and_changes_nothing(hostile, call_tool, tool, arguments, expected) -> None:
    workspace, decoy = hostile
    arguments = {
        key: value.format(decoy=decoy, root=workspace.root) if len(value) < 1000 else value
        for key, value in arguments.items()
    }
    before = fingerprint(workspace.root, decoy.parent, harness_root())
    result = call_tool(workspace, tool, **arguments)
    assert result.is_error, f"{tool} accepted {arguments!r}"
    message = result.content[0].text
    assert "internal error" not in message, message
    assert expected in message
    assert fingerprint(workspace.root, decoy.parent, harness_root()) == before


def test_there_are_at_least_thirty_cases() -> None:
    assert len(CASES) >= 30 and len({case[0] for case in CASES}) == len(CASES)


def test_crlf_file_is_patched_in_its_own_line_endings(hostile, call_tool) -> None:
    workspace, _ = hostile
    result = call_tool(
        workspace, "apply_diff", diff="--- a/crlf.py\n+++ b/crlf.py\n@@ -1,2 +1,2 @@\n a = 1\n-b = 2\n+b = 3\n"
    )
    assert not result.is_error
    assert (workspace.root / "crlf.py").read_bytes() == b"a = 1\r\nb = 3\r\n"


def test_binary_file_is_shown_as_binary(hostile, call_tool) -> None:
    workspace, _ = hostile
    before = fingerprint(workspace.root)
    result = call_tool(workspace, "read_file", path="blob.bin")
    assert result.structured_content["binary"] and result.structured_content["text"] == ""
    assert fingerprint(workspace.root) == before


def test_listing_shows_links_without_following_them(hostile, call_tool) -> None:
    workspace, _ = hostile
    listing = {entry["path"]: entry for entry in call_tool(workspace, "list_files").structured_content["files"]}
    assert listing["etc_link"]["symlink_to"] == "/etc" and not any(path.startswith("etc_link/") for path in listing)
    assert listing["evil.py"]["symlink_to"].endswith("decoy.txt") and not listing["evil.py"]["editable"]


def test_files_whose_names_are_not_utf8_are_left_out_of_listings(hostile, call_tool) -> None:
    workspace, _ = hostile
    with open(os.path.join(os.fsencode(workspace.root), b"latin1-\xe9.txt"), "wb") as handle:
        handle.write(b"DEPTH\nonly-in-the-latin1-file\n")
    listing = call_tool(workspace, "list_files")
    assert not listing.is_error and "train.py" in [entry["path"] for entry in listing.structured_content["files"]]
    found = call_tool(workspace, "search_files", pattern="DEPTH")
    assert not found.is_error and "train.py" in {match["path"] for match in found.structured_content["matches"]}
    unique = call_tool(workspace, "search_files", pattern="only-in-the-latin1-file")
    assert not unique.is_error and unique.structured_content["matches"] == []
