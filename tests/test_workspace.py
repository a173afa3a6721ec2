"""Path confinement and confined reads/writes of the workspace (sandbox/workspace.py)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from autoresearch_mcp.nanochat.errors import UserError
from autoresearch_mcp.sandbox.workspace import Workspace, atomic_write, harness_root


@pytest.fixture
def workspace(make_workspace) -> Workspace:
    return make_workspace(
        {"train.py": "print('train')\n", "sub/model.py": "model\n"}, editable=("train.py", "sub/model.py")
    )


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    decoy = tmp_path / "outside" / "decoy.txt"
    decoy.parent.mkdir()
    decoy.write_text("outside\n")
    return decoy


def test_resolve_names_files_by_their_workspace_relative_path(workspace: Workspace) -> None:
    resolved = workspace.resolve("./sub/../train.py")
    assert (resolved.display, resolved.editable, resolved.in_harness) == ("train.py", True, False)
    assert resolved.path == workspace.root / "train.py"
    assert workspace.resolve(str(workspace.root / "program.md")).display == "program.md"
    assert not workspace.resolve("program.md").editable


def test_resolve_follows_links_that_stay_inside(workspace: Workspace) -> None:
    (workspace.root / "alias.py").symlink_to("train.py")
    resolved = workspace.resolve("alias.py")
    assert resolved.display == "train.py"
    with pytest.raises(UserError, match="symbolic link"):
        workspace.resolve_editable("alias.py")


def test_harness_prefix_reads_the_installed_package_only(workspace: Workspace) -> None:
    resolved = workspace.resolve("@harness/__init__.py")
    assert resolved.in_harness and not resolved.editable
    assert resolved.path == harness_root() / "__init__.py"
    with pytest.raises(UserError, match="read-only"):
        workspace.resolve_editable("@harness/__init__.py")
    with pytest.raises(UserError, match="escapes the harness"):
        workspace.resolve("@harness/../sandbox/workspace.py")


def test_atomic_write_keeps_the_file_mode_and_leaves_no_temporary_file(workspace: Workspace) -> None:
    target = workspace.root / "train.py"
    target.chmod(0o750)
    workspace.atomic_write(workspace.resolve_editable("train.py"), "new\n")
    assert target.read_text() == "new\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o750
    assert sorted(p.name for p in workspace.root.iterdir() if p.name.endswith(".tmp")) == []


def test_module_atomic_write_replaces_a_planted_link_instead_of_following_it(tmp_path: Path, outside: Path) -> None:
    link = tmp_path / "config.toml"
    link.symlink_to(outside)
    atomic_write(link, "mine\n")
    assert not link.is_symlink() and link.read_text() == "mine\n"
    assert outside.read_text() == "outside\n"


def test_file_swapped_for_a_link_after_the_check_is_replaced_not_written_through(
    workspace: Workspace, outside: Path
) -> None:
    resolved = workspace.resolve_editable("train.py")
    target = workspace.root / "train.py"
    target.unlink()
    target.symlink_to(outside)  # the race: planted between the check and the write
    workspace.atomic_write(resolved, "new\n")
    assert outside.read_text() == "outside\n"
    assert not target.is_symlink() and target.read_text() == "new\n"


def test_folder_swapped_for_a_link_after_the_check_makes_the_write_fail(workspace: Workspace, outside: Path) -> None:
    resolved = workspace.resolve_editable("sub/model.py")
    (workspace.root / "sub").rename(workspace.root / "sub-moved")
    (workspace.root / "sub").symlink_to(outside.parent, target_is_directory=True)
    with pytest.raises(UserError, match="symbolic link|not a folder"):
        workspace.atomic_write(resolved, "new\n")
    assert sorted(os.listdir(outside.parent)) == ["decoy.txt"]


def test_read_refuses_a_link_planted_after_the_check(workspace: Workspace, outside: Path) -> None:
    resolved = workspace.resolve("train.py")
    (workspace.root / "train.py").unlink()
    (workspace.root / "train.py").symlink_to(outside)
    with pytest.raises(UserError, match="symbolic link"):
        workspace.read_bytes(resolved, max_bytes=1000)


def test_read_refuses_files_over_the_limit(workspace: Workspace) -> None:
    with pytest.raises(UserError, match="larger than 5 bytes"):
        workspace.read_bytes(workspace.resolve("train.py"), max_bytes=5)


def test_write_all_rolls_back_earlier_files_when_a_later_one_fails(workspace: Workspace) -> None:
    first = workspace.resolve_editable("train.py")
    second = workspace.resolve_editable("sub/model.py")
    (workspace.root / "sub" / "model.py").unlink()
    (workspace.root / "sub").rmdir()  # the second write now has no folder to go to
    with pytest.raises(UserError, match="sub/model.py"):
        workspace.write_all([(first, b"changed\n"), (second, b"changed\n")])
    assert (workspace.root / "train.py").read_text() == "print('train')\n"


def test_write_all_rolls_back_a_created_file_by_removing_it(make_workspace) -> None:
    workspace = make_workspace({"train.py": "a\n"}, editable=("new.py", "sub/x.py"))
    created = workspace.resolve_editable("new.py", must_exist=False)
    missing_folder = workspace.resolve_editable("sub/x.py", must_exist=False)
    with pytest.raises(UserError):
        workspace.write_all([(created, b"new\n"), (missing_folder, b"x\n")])
    assert not (workspace.root / "new.py").exists()


def test_writes_refuse_files_that_are_not_editable(workspace: Workspace) -> None:
    with pytest.raises(UserError, match="not editable"):
        workspace.atomic_write(workspace.resolve("program.md"), "x")
    assert "(set `editable`" in _message(lambda: workspace.resolve_editable("program.md"))


def _message(action) -> str:
    with pytest.raises(UserError) as caught:
        action()
    return str(caught.value)


def test_writing_a_hard_linked_file_leaves_the_other_name_untouched(workspace: Workspace, outside: Path) -> None:
    target = workspace.root / "train.py"
    target.unlink()
    os.link(outside, target)  # same file system: tmp_path holds both
    workspace.atomic_write(workspace.resolve_editable("train.py"), "new\n")
    assert outside.read_text() == "outside\n" and target.read_text() == "new\n"
