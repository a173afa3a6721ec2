"""The sandbox itself: the bwrap command line a plan makes, and what a process inside can see and do.

Runs real bwrap (python -c ... inside); the attack tests (test_sandbox_attacks.py) run whole
training runs through it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from autoresearch_mcp.sandbox.isolation import (
    PACKAGE_ROOT,
    Availability,
    SandboxPlan,
    availability,
    harness_package_dir,
    python_paths,
)

needs_sandbox = pytest.mark.skipif(not availability().available, reason=f"no sandbox here: {availability().reason}")


def plan_with_python(tmp_path: Path) -> SandboxPlan:
    plan = SandboxPlan(cwd="/")
    plan.add_system()
    plan.add_python()
    plan.private("/tmp", 2**24)
    return plan


def inside(plan: SandboxPlan, code: str) -> subprocess.CompletedProcess[str]:
    bwrap = availability().bwrap
    assert bwrap is not None
    argv = plan.argv(bwrap, [sys.executable, "-c", code])
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_mounts_are_made_parents_first_so_none_covers_another(tmp_path: Path) -> None:
    plan = SandboxPlan(cwd="/")
    plan.private("/a/b/c", 10)
    plan.read_only(tmp_path, "/a")
    plan.writable(tmp_path, "/a/b")
    argv = plan.argv("bwrap", ["true"])
    order = [argv.index(dest) for dest in ("/a", "/a/b", "/a/b/c")]
    assert order == sorted(order)
    assert argv[-6:] == ["--remount-ro", "/", "--chdir", "/", "--", "true"]


def test_a_forbidden_folder_inside_a_bound_one_is_covered(tmp_path: Path) -> None:
    tree = tmp_path / "source"
    (tree / "cache").mkdir(parents=True)
    plan = SandboxPlan(cwd="/")
    plan.read_only(tree, "/seen")
    plan.hide([tree / "cache", tmp_path / "elsewhere", tree])  # only what lies strictly inside a bind
    covered = [mount.dest for mount in plan.mounts if mount.kind == "--tmpfs"]
    assert covered == ["/seen/cache"]


def test_the_python_environment_is_bound_without_the_source_tree_around_the_package() -> None:
    paths = python_paths()
    assert Path(sys.base_prefix).resolve() in paths or any(
        Path(sys.base_prefix).resolve().is_relative_to(p) for p in paths
    )
    assert not any(path.is_relative_to(other) and path != other for path in paths for other in paths)
    assert harness_package_dir().name == "nanochat"


def test_without_a_sandbox_the_reason_and_the_opt_out_are_said() -> None:
    missing = Availability(None, None, "no bwrap binary", 'install bubblewrap, or isolation = "none"')
    assert not missing.available and missing.describe() == "no sandbox: no bwrap binary"


@needs_sandbox
def test_inside_there_are_no_capabilities_no_network_and_only_its_own_processes(tmp_path: Path) -> None:
    code = (
        "import os, socket\n"
        "status = dict(line.split(':', 1) for line in open('/proc/self/status'))\n"
        "print(status['CapEff'].strip(), status['CapBnd'].strip())\n"
        "print([name for _, name in socket.if_nameindex()])\n"
        "print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))\n"
        "import autoresearch_mcp.nanochat.contract as c; print(c.__file__)\n"
    )
    result = inside(plan_with_python(tmp_path), code)
    assert result.returncode == 0, result.stderr
    caps, interfaces, pids, package = result.stdout.splitlines()
    assert caps == "0000000000000000 0000000000000000"
    assert interfaces == "['lo']"
    assert pids == "[1, 2]"
    assert package == f"{PACKAGE_ROOT}/autoresearch_mcp/nanochat/contract.py"


@needs_sandbox
def test_inside_only_the_writable_bind_and_tmp_take_writes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    plan = plan_with_python(tmp_path)
    plan.writable(out, "/out")
    plan.read_only(tmp_path / "out", "/also-out-but-read-only")
    code = (
        "import os\n"
        "for path in ['/out/ok', '/tmp/ok', '/also-out-but-read-only/no', '/no', '/usr/no', '"
        + str(tmp_path)
        + "/no']:\n"
        "    try:\n"
        "        open(path, 'w').write('x'); print(path, 'written')\n"
        "    except OSError as error:\n"
        "        print(path, 'refused', error.errno)\n"
    )
    result = inside(plan, code)
    assert result.returncode == 0, result.stderr
    written = [line.split()[0] for line in result.stdout.splitlines() if line.endswith("written")]
    assert written == ["/out/ok", "/tmp/ok"]
    assert [p.name for p in out.iterdir()] == ["ok"] and not (tmp_path / "no").exists()
