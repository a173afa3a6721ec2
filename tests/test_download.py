import http.server
import io
import json
import socket
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from autoresearch_mcp.nanochat import download
from autoresearch_mcp.nanochat.download import download_climbmix, download_shards, shard_name
from autoresearch_mcp.nanochat.errors import UserError

FAST = {"retries": 3, "timeout": 5.0, "backoff_seconds": 0.01}


def parquet_bytes(texts):
    buffer = io.BytesIO()
    pq.write_table(pa.table({"text": texts}), buffer)
    return buffer.getvalue()


class ShardServer:
    """A real HTTP server on 127.0.0.1 serving shards, with Range support and scripted faults.

    `faults` is consumed one per request: "503" answers Service Unavailable, "cut" sends
    half the body (with the full Content-Length) and drops the connection, "no-range"
    ignores a Range header and sends the whole file; None serves normally.
    """

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.faults: list[str | None] = []
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                fault = server.faults.pop(0) if server.faults else None
                body = server.files.get(self.path.rsplit("/", 1)[-1])
                if fault == "503":
                    return self.send_error(503, "busy")
                if body is None:
                    return self.send_error(404, "no such shard")
                start = 0
                if self.headers.get("Range") and fault != "no-range":
                    start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
                    if start >= len(body):
                        return self.send_error(416, "range not satisfiable")
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                payload = body[start:]
                self.wfile.write(payload[: len(payload) // 2] if fault == "cut" else payload)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/datasets/shards"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    shard_server = ShardServer()
    for index in (0, 1, download.CLIMBMIX_VAL_SHARD):
        shard_server.files[shard_name(index)] = parquet_bytes([f"shard {index} text {j} " * 50 for j in range(40)])
    yield shard_server
    shard_server.close()


def test_downloads_shards_that_open_as_parquet(server, tmp_path):
    paths = download_shards(server.url, [0, 1], tmp_path, **FAST)
    assert paths == [tmp_path / shard_name(0), tmp_path / shard_name(1)]
    for index, path in zip((0, 1), paths, strict=True):
        assert path.read_bytes() == server.files[shard_name(index)]
        assert list(download.read_documents(path))[0].startswith(f"shard {index} text 0")
    assert not list(tmp_path.glob("*.part"))


def test_present_shards_are_not_fetched_again(server, tmp_path):
    download_shards(server.url, [0], tmp_path, **FAST)
    server.requests.clear()
    download_shards(server.url, [0], tmp_path, **FAST)
    assert server.requests == []


def test_a_partial_file_from_an_earlier_attempt_is_resumed(server, tmp_path):
    body = server.files[shard_name(0)]
    (tmp_path / f"{shard_name(0)}.part").write_bytes(body[:1000])
    download_shards(server.url, [0], tmp_path, **FAST)
    assert (tmp_path / shard_name(0)).read_bytes() == body
    assert server.requests == [(f"/datasets/shards/{shard_name(0)}", "bytes=1000-")]


def test_an_interrupted_transfer_resumes_where_it_stopped(server, tmp_path):
    server.faults = ["cut"]
    download_shards(server.url, [0], tmp_path, **FAST)
    body = server.files[shard_name(0)]
    assert (tmp_path / shard_name(0)).read_bytes() == body
    assert [header for _, header in server.requests] == [None, f"bytes={len(body) // 2}-"]


def test_a_server_that_ignores_range_restarts_the_file(server, tmp_path):
    (tmp_path / f"{shard_name(0)}.part").write_bytes(b"stale bytes of something else")
    server.faults = ["no-range"]
    download_shards(server.url, [0], tmp_path, **FAST)
    assert (tmp_path / shard_name(0)).read_bytes() == server.files[shard_name(0)]


def test_a_part_longer_than_the_file_starts_over(server, tmp_path):
    body = server.files[shard_name(0)]
    (tmp_path / f"{shard_name(0)}.part").write_bytes(b"x" * (len(body) + 10))
    download_shards(server.url, [0], tmp_path, **FAST)
    assert (tmp_path / shard_name(0)).read_bytes() == body


def test_a_server_failing_twice_then_succeeding_is_retried(server, tmp_path):
    server.faults = ["503", "503"]
    download_shards(server.url, [0], tmp_path, **FAST)
    assert (tmp_path / shard_name(0)).read_bytes() == server.files[shard_name(0)]
    assert len(server.requests) == 3


def test_giving_up_after_the_retries_says_what_to_do(server, tmp_path):
    server.faults = ["503"] * 3
    with pytest.raises(
        UserError, match=r"could not download shard_00000.parquet from 127.0.0.1:\d+ after 3 attempts .*--source"
    ):
        download_shards(server.url, [0], tmp_path, **FAST)


def test_a_missing_shard_is_not_retried(server, tmp_path):
    with pytest.raises(UserError, match="HTTP 404"):
        download_shards(server.url, [7], tmp_path, **FAST)
    assert len(server.requests) == 1


def test_a_corrupt_file_is_discarded_and_fetched_again(server, tmp_path):
    good = server.files[shard_name(0)]
    server.files[shard_name(0)] = b"<html>not parquet</html>"
    with pytest.raises(UserError, match="not a readable parquet file"):
        download_shards(server.url, [0], tmp_path, **FAST)
    assert not list(tmp_path.iterdir())
    server.files[shard_name(0)] = good
    download_shards(server.url, [0], tmp_path, **FAST)
    assert (tmp_path / shard_name(0)).read_bytes() == good


def test_offline_gives_a_clear_error(tmp_path):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(
        UserError, match=rf"could not reach 127.0.0.1:{port} .*check the network, or use local files with --source"
    ):
        download_shards(f"http://127.0.0.1:{port}/shards", [0], tmp_path, **FAST)


def test_climbmix_fetches_training_shards_and_the_pinned_validation_shard(server, tmp_path):
    paths = download_climbmix(tmp_path, 2, base_url=server.url)
    assert [p.name for p in paths] == [shard_name(0), shard_name(1), shard_name(download.CLIMBMIX_VAL_SHARD)]
    assert all(p.parent == download.climbmix_dir(tmp_path) and p.exists() for p in paths)


def test_local_files_in_a_directory_are_found_sorted(tmp_path):
    for name in ("b.txt", "a/c.jsonl", "a/z.parquet", "readme.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    assert [p.relative_to(tmp_path) for p in download.local_files(tmp_path)] == [
        Path("a/c.jsonl"),
        Path("a/z.parquet"),
        Path("b.txt"),
    ]
    assert download.local_files([tmp_path / "b.txt"]) == [tmp_path / "b.txt"]


def test_jsonl_documents_skip_blank_lines_and_empty_texts(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in ["one", "", "two"]) + "\n\n")
    assert list(download.read_documents(path)) == ["one", "two"]
