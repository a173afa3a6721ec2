"""The training sandbox's first process: import torch and the harness, wait for the supervisor's
start, start an export process beside it, then run train.py.

    python -m autoresearch_mcp.nanochat.launch /autoresearch/snapshot/train.py   (working directory: /tmp)

Before the start only our code runs: the working directory, first on the import path, is the sandbox's
own empty /tmp, so no module of the snapshot's can stand in for ours. (With isolation = "none" nothing
is contained: it starts in the snapshot's folder, as train.py can reach everything anyway.) Importing torch (seconds) is done
then, outside the run's window: the supervisor counts the deadline from the start it sends on
contract.ENV_START_FD, and a run queued behind another on its slot is set up and imported while that
one is being evaluated. Only then does the working directory become the snapshot's, as `python train.py`
would have it.

The evaluator needs train.py's model as an exported graph (handback.py), and exporting takes seconds
(mostly importing torch.export's machinery and tracing): paid out of the run's window before training,
that is the largest fixed cost of a run after `import torch`. The graph does not depend on the weights, so a
second process can export a freshly built model of the same config while this one trains:

- once started, this process forks the export process (through a child that exits at once, so that,
  like this one, its parent is the sandbox's init and neither is the other's parent): it has torch
  and the harness imported already, and has run no code of the snapshot's yet (forked after train.py's
  first line, it could inherit state no export should see, such as threads). The export process
  waits until the training process has ended its first step (or hands back without one), then runs train.py as the export process: there
  run.export(model) (or run.hand_back(model), if train.py never calls run.export) writes the program
  into out/export/ and ends the process; nothing trains and no metrics are written. It reports its
  exit code on a pipe;
- this process then runs train.py as the training process: its run.export(model) returns at once,
  and run.hand_back(model) takes the export process's program once it has ended, checks that it still
  computes the trained model, and hands back the weights (exporting the model itself if the export
  process wrote no program, or the model changed since).

Why wait for the first step: on a machine whose cores training fills (the cpu profile on a small
machine), a second process working beside the warm-up step makes that step several times slower;
after it, the export competes with counted steps only, for a few seconds. At idle priority instead, it found no idle CPU there until training ended, and
the training process exported the model itself after training (about a second on the critical path).

harness.start() learns its part from contract.ENV_EXPORT. A model that cannot be exported still
stops the run within seconds: the export process exits with contract.EXPORT_REFUSED after printing
why, and the training process stops when it hears so. Both processes live in the same sandbox, run
the same code and reach nothing the other could not. Elsewhere than on Linux train.py runs alone and
exports the model itself.
"""

from __future__ import annotations

import os
import runpy
import socket
import sys
from pathlib import Path

from autoresearch_mcp.nanochat import contract  # imports nothing


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python -m autoresearch_mcp.nanochat.launch TRAIN_PY")
    script = Path(sys.argv[1])
    sys.argv = [str(script)]
    if (start_fd := os.environ.pop(contract.ENV_START_FD, None)) is not None:
        _wait_for_start(int(start_fd))
    if sys.platform.startswith("linux"):
        status, release = _fork_export_process(script)
        os.environ[contract.ENV_EXPORT] = f"train:{status}:{release}"
    _run(script)
    # train.py is done (the hand-back is written): end now. The interpreter's own shutdown (torch's
    # teardown, the compile workers' joins, a garbage collection) takes up to seconds, on the path
    # between the hand-back and the evaluation; the sandbox ends whatever is left.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _run(script: Path) -> None:
    """Run train.py as `python train.py` would: in its folder, which comes first on the import path."""
    os.chdir(script.parent)
    sys.path[0] = str(script.parent)
    runpy.run_path(str(script), run_name="__main__")


def _wait_for_start(fd: int) -> None:
    """Import torch and the harness, say so on the start socket `fd`, and wait for the supervisor's
    deadline (contract.ENV_DEADLINE); exit quietly if the supervisor goes away without sending it."""
    # torch, and torch._dynamo, which the first optimizer made imports (as does an export): seconds that
    # are not the run's (1.2 s each on a cpu).
    import torch._dynamo  # noqa: F401

    from autoresearch_mcp.nanochat import harness  # noqa: F401

    with socket.socket(fileno=fd) as supervisor:
        supervisor.sendall(contract.START_READY)
        said = b""
        while not said.endswith(b"\n") and (chunk := supervisor.recv(64)):
            said += chunk
    if not said.endswith(b"\n"):
        os._exit(1)  # the supervisor failed or stopped the run before its start: it says why
    os.environ[contract.ENV_DEADLINE] = said.decode().strip()


def _fork_export_process(script: Path) -> tuple[int, int]:
    """Start the export process; the reading end of the pipe it reports its exit code on, and the writing
    end of the one whose closing releases it."""
    status_read, status_write = os.pipe()
    release_read, release_write = os.pipe()
    middle = os.fork()
    if middle == 0:  # exits at once: the export process is left to the sandbox's init
        os.close(status_read)
        os.close(release_write)
        if os.fork() == 0:
            _export_process(script, status_write, release_read)
        os._exit(0)
    os.close(status_write)
    os.close(release_read)
    os.waitpid(middle, 0)
    return status_read, release_write


def _export_process(script: Path, status: int, release: int) -> None:
    """Run train.py as the export process once released; never returns. A failure other than a refused
    export is left unsaid: the training process runs the same code and meets it itself, or exports itself."""
    code = 1
    try:
        os.read(release, 1)  # returns when the training process closes its end (harness.ExportProcess)
        os.close(release)
        os.environ[contract.ENV_EXPORT] = f"export:{status}"
        _run(script)
        code = 0  # train.py ended without handing back a model: the training process exports it
    except BaseException as error:  # the training process reports it, or recovers
        handback = sys.modules.get("autoresearch_mcp.nanochat.handback")
        if handback is not None and isinstance(error, handback.ExportFailed):
            import traceback

            traceback.print_exc()
            code = contract.EXPORT_REFUSED
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.write(status, bytes([code]))
        os._exit(code)


if __name__ == "__main__":
    main()
