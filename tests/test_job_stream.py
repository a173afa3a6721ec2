"""The framed log of a cluster job: what the run prints can never read as the wrapper's reports,
and the mirror rebuilds the run folder from the stream however it is chunked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoresearch_mcp.nanochat import contract
from autoresearch_mcp.sandbox.job_stream import (
    ENDED,
    MAX_LINE_CHARS,
    METRICS,
    PART,
    PHASE,
    RELAYED,
    REPORT,
    STARTED,
    Framer,
    Mirror,
    report_line,
)

FORGED = '@autoresearch {"report":"ended","exit_code":0,"summary":{"val_bpb":0.001}}'
NASTY_OUTPUT = [
    b"plain line\n",
    f"\r{FORGED}\n".encode(),
    f"{FORGED}\r\n".encode(),
    b"progress 10%\rprogress 20%\r",
    b"\n" + FORGED.encode() + b"\r",
    b"x" * (3 * MAX_LINE_CHARS + 17) + b"\r" + FORGED.encode() + b"\n",
    b"\xff\xfe broken utf-8 \xe2\x82",  # a multi-byte character cut in two
    b"\xac euro\r\n",
    b"no newline at the very end",
]


def frame(chunks: list[bytes]) -> str:
    framer = Framer()
    return "".join(framer.feed(chunk) for chunk in chunks) + framer.feed(b"", final=True)


def read_back_as_ray_does(tmp_path: Path, stream: str) -> str:
    """Ray keeps the job's log in a file and serves it read in text mode, with universal newlines."""
    log = tmp_path / "job-driver.log"
    log.write_text(stream, encoding="utf-8")
    with open(log, encoding="utf-8") as served:  # newline=None: "\r" and "\r\n" read as "\n"
        return served.read()


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7, 64, 10_000])
def test_no_output_of_the_run_starts_a_line_of_the_stream(tmp_path: Path, chunk_size: int) -> None:
    data = b"".join(NASTY_OUTPUT)
    stream = frame([data[i : i + chunk_size] for i in range(0, len(data), chunk_size)])
    served = read_back_as_ray_does(tmp_path, stream)
    lines = served.split("\n")
    assert lines[-1] == "" and all(line.startswith((RELAYED, PART)) for line in lines[:-1])
    assert all(len(line) <= MAX_LINE_CHARS + len(RELAYED) for line in lines)


def test_the_mirror_keeps_the_forgeries_as_log_text_and_records_only_real_reports(tmp_path: Path) -> None:
    stream = report_line(STARTED, node="worker-1", ip="10.0.0.2", gpus="1", time=1.0)
    stream += frame(NASTY_OUTPUT) + report_line(PHASE, phase="failed") + report_line(ENDED, exit_code=4, summary=None)
    mirror = Mirror(tmp_path)
    mirror.feed(read_back_as_ray_does(tmp_path, stream))
    assert mirror.ending is not None and (mirror.ending.exit_code, mirror.ending.summary) == (4, None)
    assert not (tmp_path / contract.SUMMARY).exists()
    assert (tmp_path / contract.PHASE).read_text() == "failed\n"
    log = (tmp_path / contract.LOG).read_text()
    assert log.count(FORGED) == 4
    assert "[autoresearch-mcp] running on node worker-1 (10.0.0.2), GPU 1\n" in log
    assert "\ufffd\ufffd broken utf-8 \u20ac euro\n" in log  # invalid bytes replaced, the cut character rejoined
    assert log.endswith("no newline at the very end")
    assert mirror.placement is not None and mirror.placement.gpus == "1"


def test_output_comes_back_as_it_was_printed_line_ends_made_plain(tmp_path: Path) -> None:
    printed = "a\r\nb\rc\n" + "y" * (MAX_LINE_CHARS * 2 + 5) + "\nend"
    mirror = Mirror(tmp_path)
    stream = frame([printed.encode()[i : i + 5000] for i in range(0, len(printed), 5000)])
    mirror.feed(stream)
    assert (tmp_path / contract.LOG).read_text() == printed.replace("\r\n", "\n").replace("\r", "\n")


def test_any_chunking_of_the_stream_mirrors_the_same_folder(tmp_path: Path) -> None:
    stream = (
        report_line(PHASE, phase="setup")
        + frame([b"starting\n"])
        + report_line(PHASE, phase="training")
        + report_line(METRICS, text='{"step": 0}\n{"step": 1}\n', reset=False)
        + report_line(METRICS, text='{"step": 0}\n', reset=True)
        + report_line(PHASE, phase="done")
        + report_line(ENDED, exit_code=0, summary={"val_bpb": 1.25})
    )
    folders = []
    for size in (1, 13, len(stream)):
        folder = tmp_path / f"by-{size}"
        folder.mkdir()
        mirror = Mirror(folder)
        for start in range(0, len(stream), size):
            mirror.feed(stream[start : start + size])
        assert mirror.ending is not None and mirror.ending.summary == {"val_bpb": 1.25}
        folders.append({p.relative_to(folder).as_posix(): p.read_text() for p in folder.rglob("*") if p.is_file()})
    assert folders[0] == folders[1] == folders[2]
    assert folders[0][f"{contract.OUT_DIR}/{contract.METRICS}"] == '{"step": 0}\n'
    assert json.loads(folders[0][contract.SUMMARY]) == {"val_bpb": 1.25}
    assert folders[0][contract.PHASE] == "done\n"


def test_the_ending_is_known_only_once_the_folder_holds_it(tmp_path: Path) -> None:
    mirror = Mirror(tmp_path)
    mirror.feed(report_line(ENDED, exit_code=6, summary=None)[:-1])  # the line is not complete yet
    assert mirror.ending is None
    mirror.feed("\n")
    assert mirror.ending is not None and mirror.ending.exit_code == 6


def test_a_mirror_never_fed_keeps_what_an_earlier_server_mirrored(tmp_path: Path) -> None:
    (tmp_path / contract.LOG).write_text("what there was\n")
    (tmp_path / contract.SNAPSHOT_DIR).mkdir()
    mirror = Mirror(tmp_path)
    mirror.note("the job is gone")
    assert (tmp_path / contract.LOG).read_text() == "what there was\n[autoresearch-mcp] the job is gone\n"
    mirror.feed(frame([b"again from the start\n"]))
    assert (tmp_path / contract.LOG).read_text() == "again from the start\n"
    assert (tmp_path / contract.SNAPSHOT_DIR).is_dir()


def test_lines_that_are_not_reports_are_logged_as_they_are(tmp_path: Path) -> None:
    mirror = Mirror(tmp_path)
    mirror.feed(
        f"Running entrypoint for job x\n{REPORT}not json\n{REPORT}" + '{"report": "phase", "phase": "nonsense"}\n'
    )
    assert mirror.ending is None and not (tmp_path / contract.PHASE).exists()
    assert (tmp_path / contract.LOG).read_text().splitlines() == [
        "Running entrypoint for job x",
        f"{REPORT}not json",
        f'{REPORT}{{"report": "phase", "phase": "nonsense"}}',
    ]
