"""Logging for the server process: stderr plus a rotating file in the workspace.

stdout is never a log destination: in stdio mode it carries the protocol, and one stray
line there breaks the client's connection.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path

LOG_FILE_NAME = "server.log"
LOG_FILE_BYTES = 5 * 1024 * 1024
LOG_FILE_BACKUPS = 3
FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def setup_logging(state_dir: Path | None, *, level: str = "INFO", stderr_level: str | None = None) -> None:
    """Send every logger (ours, the SDK's, uvicorn's) to stderr and to `<state_dir>/server.log`.

    `stderr_level` lets one-shot commands such as `call` keep the terminal quiet while the
    file still records everything at `level`.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)
    formatter = logging.Formatter(FORMAT)

    console = logging.StreamHandler(sys.stderr)
    console.setLevel(stderr_level or level)
    console.setFormatter(formatter)
    root.addHandler(console)

    if state_dir is not None:
        state_dir.mkdir(parents=True, exist_ok=True)
        file_handler = logging.handlers.RotatingFileHandler(
            state_dir / LOG_FILE_NAME, maxBytes=LOG_FILE_BYTES, backupCount=LOG_FILE_BACKUPS, encoding="utf-8"
        )
        file_handler.setFormatter(formatter)
        root.addHandler(file_handler)
    logging.captureWarnings(True)
