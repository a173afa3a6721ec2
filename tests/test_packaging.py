"""The built wheel: everything under `autoresearch_mcp.*`, the same modules as the editable
install, and a working `autoresearch-mcp` in an environment that sees only the wheel."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "autoresearch_mcp"
REQUIRED_FILES = [
    "autoresearch_mcp/server/cli.py",
    "autoresearch_mcp/tools/setup.py",
    "autoresearch_mcp/sandbox/workspace.py",
    "autoresearch_mcp/nanochat/__init__.py",
    "autoresearch_mcp/nanochat/template/train.py",
    "autoresearch_mcp/nanochat/template/program.md",
    "autoresearch_mcp/server/static/dashboard.html",
    "autoresearch_mcp/server/static/uPlot.iife.min.js",
    "autoresearch_mcp/server/static/uPlot.LICENSE",
]

pytestmark = pytest.mark.skipif(not (REPO / "pyproject.toml").is_file(), reason="needs the source checkout")


def package_dirs() -> dict[str, str]:
    """pyproject's mapping of installed package name -> repository folder."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    return pyproject["tool"]["setuptools"]["package-dir"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """A wheel built from a copy of exactly what the build reads (the shared tree stays untouched)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for folder in package_dirs().values():
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(work / "dist"),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = (work / "dist").glob("autoresearch_mcp-*.whl")
    with zipfile.ZipFile(built) as archive:
        yield archive


def test_wheel_installs_only_under_the_namespace(wheel: zipfile.ZipFile) -> None:
    names = wheel.namelist()
    stray = [n for n in names if not n.startswith(f"{NAMESPACE}/") and ".dist-info/" not in n]
    assert stray == [], f"files outside {NAMESPACE}/ (would land top-level in site-packages)"
    top_level = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
    assert wheel.read(top_level).decode().split() == [NAMESPACE]
    assert set(REQUIRED_FILES) <= set(names)


def test_wheel_declares_the_console_script(wheel: zipfile.ZipFile) -> None:
    entry_points = next(n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt"))
    assert "autoresearch-mcp = autoresearch_mcp.server.cli:main" in wheel.read(entry_points).decode()


def test_wheel_and_editable_install_hold_the_same_modules(wheel: zipfile.ZipFile) -> None:
    source_modules: set[str] = set()
    for package, folder in package_dirs().items():
        # The editable install must map each package to its repository folder...
        spec = importlib.util.find_spec(package)
        assert spec is not None and [Path(p) for p in spec.submodule_search_locations] == [REPO / folder]
        # ...and every module there must also be in the wheel (a subpackage missing from
        # pyproject's `packages` would import in editable mode only).
        for path in (REPO / folder).rglob("*.py"):
            if "__pycache__" not in path.parts:
                source_modules.add(package.replace(".", "/") + "/" + path.relative_to(REPO / folder).as_posix())
    wheel_modules = {n for n in wheel.namelist() if n.endswith(".py")}
    assert wheel_modules == source_modules


@pytest.mark.timeout(180)
def test_the_wheel_alone_serves_a_workspace(wheel: zipfile.ZipFile, tmp_path: Path) -> None:
    """A venv holding only the wheel (dependencies come from this interpreter's site-packages,
    added as plain paths so that the editable install's import hook is not loaded)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site_packages = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    # Every site directory this interpreter sees (a venv's and, with system site packages, the base's).
    dependency_dirs = [entry for entry in sys.path if Path(entry).name in ("site-packages", "dist-packages")]
    (site_packages / "dependencies.pth").write_text("\n".join(dependency_dirs) + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", wheel.filename],
        check=True,
        capture_output=True,
        timeout=120,
    )

    locations = subprocess.run(
        [python, "-c", f"import {NAMESPACE}, json; print(json.dumps(list({NAMESPACE}.__path__)))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(locations) == [str(site_packages / NAMESPACE)]

    called = subprocess.run(
        [
            venv / "bin" / "autoresearch-mcp",
            "call",
            "read_file",
            "path=program.md",
            "--workspace",
            str(tmp_path / "ws"),
            "--create",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert called.returncode == 0, called.stderr
    assert (tmp_path / "ws" / "program.md").read_text().splitlines()[0] in json.loads(called.stdout)["text"]
