"""The official MCP Inspector CLI, installed from the npm registry into a cache folder for the tests.

The current Inspector (2.x) needs Node >= 22.19; on an older Node, npm silently installs an old
Inspector instead. So the Node it runs on comes from the npm registry too: the npm package
`node` (a Node binary, installed by its own install script), pinned beside the Inspector.
All a machine needs is npm, of any Node.

`python -m autoresearch_mcp.tests.inspector` installs both (CI runs it before pytest; it is
idempotent); the Inspector test installs them itself when npm is present, and skips otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

NODE_PACKAGE = "node@22.23.3"
INSPECTOR_PACKAGE = "@modelcontextprotocol/inspector@2.12.0"
MIN_NODE = (22, 19)
CACHE_ENV = "AUTORESEARCH_MCP_TEST_CACHE"
MARKER = "installed.json"  # written last: a half-done install never looks installed
INSTALL_TIMEOUT_S = 900
# The launcher behind the package's `mcp-inspector` bin; `--cli` selects the CLI client.
LAUNCHER = Path("node_modules/@modelcontextprotocol/inspector/clients/launcher/build/index.js")


class InstallError(RuntimeError):
    """The Inspector could not be installed; the message says why and what to do."""


@dataclass(frozen=True)
class Inspector:
    node: Path
    launcher: Path

    def command(self, *arguments: str) -> list[str]:
        """argv for one Inspector CLI invocation."""
        return [str(self.node), str(self.launcher), "--cli", *arguments]


def cache_dir() -> Path:
    """$AUTORESEARCH_MCP_TEST_CACHE/inspector, else the user's cache folder."""
    override = os.environ.get(CACHE_ENV)
    base = Path(override) if override else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return (base if override else base / "autoresearch-mcp-tests") / "inspector"


def installed(folder: Path) -> Inspector | None:
    """The Inspector in `folder` if the pinned versions are installed there."""
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    inspector = _inspector_in(folder)
    pinned = marker == {"node": NODE_PACKAGE, "inspector": INSPECTOR_PACKAGE}
    return inspector if pinned and inspector.node.exists() and inspector.launcher.exists() else None


def install(folder: Path) -> Inspector:
    """Install the pinned Node and Inspector into `folder` with npm, unless they are there already."""
    found = installed(folder)
    if found is not None:
        return found
    npm = shutil.which("npm")
    if npm is None:
        raise InstallError("npm is not installed; install Node.js with npm (any version) and run this again")
    folder.mkdir(parents=True, exist_ok=True)
    command = [npm, "install", "--prefix", str(folder), "--no-audit", "--no-fund", NODE_PACKAGE, INSPECTOR_PACKAGE]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise InstallError(f"`{' '.join(command)}` took over {INSTALL_TIMEOUT_S} s; check the network") from None
    if done.returncode != 0:
        raise InstallError(f"`{' '.join(command)}` failed ({done.returncode}):\n{done.stderr[-3000:]}")
    inspector = _inspector_in(folder)
    _check_node(inspector.node)
    if not inspector.launcher.exists():
        raise InstallError(f"{INSPECTOR_PACKAGE} installed without {LAUNCHER}; its layout changed, update LAUNCHER")
    marker = {"node": NODE_PACKAGE, "inspector": INSPECTOR_PACKAGE}
    (folder / MARKER).write_text(json.dumps(marker), encoding="utf-8")
    return inspector


def _inspector_in(folder: Path) -> Inspector:
    return Inspector(folder / "node_modules" / ".bin" / "node", folder / LAUNCHER)


def _check_node(node: Path) -> None:
    """The npm package `node` fetches its binary in an install script: make sure it ran and fits."""
    try:
        reported = subprocess.run([str(node), "--version"], capture_output=True, text=True, timeout=60).stdout
    except OSError as exc:
        raise InstallError(
            f"{node} does not run ({exc.strerror}): npm may have skipped the install script of {NODE_PACKAGE}"
        ) from None
    version = tuple(int(part) for part in reported.strip().lstrip("v").split(".")[:2])
    if version < MIN_NODE:
        raise InstallError(f"{node} is Node {reported.strip()}; the Inspector needs Node >= 22.19")


def main() -> int:
    folder = cache_dir()
    try:
        install(folder)
    except InstallError as exc:
        print(f"MCP Inspector install failed: {exc}", file=sys.stderr)
        return 1
    print(f"MCP Inspector ready: {INSPECTOR_PACKAGE} on {NODE_PACKAGE} in {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
