import glob
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from autoresearch_mcp.nanochat import corpus, download
from autoresearch_mcp.nanochat.data import DataChanged, prepare_data, verify
from autoresearch_mcp.nanochat.errors import UserError
from autoresearch_mcp.nanochat.profiles import PROFILES

# Small enough to build in well under a second: the pydoc topics only, 300 ids.
TINY = {"vocab_size": 300, "max_corpus_chars": 150_000}
TINY_PROFILE = replace(PROFILES["cpu"], **TINY)


def corpus_digest(documents):
    digest = hashlib.sha256()
    for document in documents:
        digest.update(f"{document.name}\0{document.text}\0".encode())
    return digest.hexdigest()


def python_command(code, *args):
    """argv running `code` in a fresh interpreter, with TINY_PROFILE defined."""
    setup = (
        "from dataclasses import replace\n"
        "from autoresearch_mcp.nanochat.profiles import PROFILES\n"
        f"TINY_PROFILE = replace(PROFILES['cpu'], **{TINY!r})\n"
    )
    return [sys.executable, "-c", setup + code, *map(str, args)]


def run_python(code, *args, env=None):
    return subprocess.run(python_command(code, *args), capture_output=True, text=True, timeout=120, env=env)


def decoded_documents(directory, tokenizer):
    tokens = np.concatenate([np.load(path) for path in sorted(directory.glob("shard_*.npy"))])
    starts = np.flatnonzero(tokens == tokenizer.bos_id)
    return [tokenizer.decode(piece[1:]) for piece in np.split(tokens, starts[1:])]


# ---- the built-in corpus ----------------------------------------------------------------


def test_builtin_corpus_is_the_same_in_a_fresh_interpreter():
    here = corpus_digest(corpus.builtin_documents())
    code = (
        "import hashlib\nfrom autoresearch_mcp.nanochat import corpus\nd = hashlib.sha256()\n"
        "for doc in corpus.builtin_documents():\n    d.update(f'{doc.name}\\0{doc.text}\\0'.encode())\n"
        "print(d.hexdigest())"
    )
    there = run_python(code, env={**os.environ, "PYTHONHASHSEED": "12345"})
    assert there.stdout.strip() == here


def test_builtin_corpus_has_megabytes_of_docs_and_source():
    documents = corpus.builtin_documents()
    names = [d.name for d in documents]
    assert sum(len(d.text) for d in documents) > 3_000_000
    assert any(n.startswith("pydoc-topic/") for n in names) and "json/decoder.py" in names
    assert not any(n.startswith(("test/", "site-packages/", "encodings/")) for n in names)
    assert len(set(names)) == len(names)


PINNED_VALIDATION_DOCS = [3, 6, 12, 21, 22, 47]


PINNED_VALIDATION_TOPICS = [0, 1, 3, 4, 6, 7, 9, 10, 11, 12, 14, 15, 18, 20]


def test_validation_split_is_pinned_by_name():
    # A regression guard: these memberships must never change, or old results stop being comparable.
    assert [i for i in range(60) if corpus.is_validation(f"doc{i}")] == PINNED_VALIDATION_DOCS
    topics = [corpus.Document(f"{corpus.TOPIC_PREFIX}topic{i}", "") for i in range(21)]
    assert [i for i, topic in enumerate(topics) if corpus.in_validation_split(topic)] == PINNED_VALIDATION_TOPICS


def test_the_builtin_validation_split_is_half_the_pydoc_topics_and_no_source():
    documents = corpus.builtin_documents()
    validation = [d for d in documents if corpus.in_validation_split(d)]
    topics = [d for d in documents if d.name.startswith(corpus.TOPIC_PREFIX)]
    assert all(d.name.startswith(corpus.TOPIC_PREFIX) for d in validation)
    assert 0.35 < len(validation) / len(topics) < 0.65
    assert sum(len(d.text) for d in validation) > 100_000  # the cpu profile scores 32,768 tokens of it


def test_validation_sources_name_every_copy_of_the_topics_this_interpreter_reads():
    """The training sandbox hides these folders; the topics the corpus reads are in one of them."""
    import pydoc_data.topics

    sources = corpus.validation_sources()
    topics_file = Path(pydoc_data.topics.__file__).resolve()
    assert any(topics_file.is_relative_to(folder) for folder in sources)
    assert all(folder.is_dir() and folder == folder.resolve() for folder in sources)
    system_copies = [Path(p).resolve() for p in glob.glob("/usr/lib*/python3*/pydoc_data")]
    assert set(system_copies) <= set(sources)


def test_corpus_cap_takes_leading_documents():
    capped = corpus.builtin_documents(max_chars=100_000)
    full = corpus.builtin_documents()
    assert capped == full[: len(capped)]
    assert 100_000 <= sum(len(d.text) for d in capped) < 100_000 + max(len(d.text) for d in capped)


# ---- prepare_data -----------------------------------------------------------------------


def test_prepare_builds_disjoint_train_and_val_that_decode_to_the_corpus(tmp_path):
    prepared = prepare_data(TINY_PROFILE, tmp_path)
    tokenizer = prepared.load_tokenizer()
    assert (prepared.vocab_size, prepared.bos_id) == (tokenizer.vocab_size, tokenizer.bos_id) == (300, 299)
    assert prepared.train_dir.parent == prepared.val_dir.parent == prepared.root
    assert prepared.train_dir != prepared.val_dir

    documents = corpus.builtin_documents(TINY["max_corpus_chars"])
    train = decoded_documents(prepared.train_dir, tokenizer)
    val = decoded_documents(prepared.val_dir, tokenizer)
    assert train == [d.text for d in documents if not corpus.in_validation_split(d)]
    assert val == [d.text for d in documents if corpus.in_validation_split(d)]
    assert not set(train) & set(val)
    assert (prepared.train_documents, prepared.val_documents) == (len(train), len(val))
    assert prepared.text_bytes == sum(len(d.text.encode()) for d in documents)
    assert np.load(next(prepared.train_dir.glob("*.npy"))).dtype == np.uint16


def test_second_prepare_loads_without_rebuilding(tmp_path):
    first = prepare_data(TINY_PROFILE, tmp_path)
    shard = next(first.train_dir.glob("*.npy"))
    built = shard.stat().st_mtime_ns
    assert prepare_data(TINY_PROFILE, tmp_path) == first
    assert shard.stat().st_mtime_ns == built
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == [first.root.name]


def test_another_vocabulary_is_another_cache(tmp_path):
    small = prepare_data(TINY_PROFILE, tmp_path)
    larger = prepare_data(replace(TINY_PROFILE, vocab_size=320), tmp_path)
    assert small.root != larger.root and larger.vocab_size == 320


def test_a_build_killed_midway_leaves_no_cache_that_looks_complete(tmp_path):
    crash = (
        "import os, signal, sys\nfrom pathlib import Path\nfrom autoresearch_mcp.nanochat import data\n"
        "write_shards = data._write_shards\n"
        "def die_on_val(directory, *args):\n"
        "    if directory.name == 'val':\n        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return write_shards(directory, *args)\n"
        "data._write_shards = die_on_val\n"
        "data.prepare_data(TINY_PROFILE, Path(sys.argv[1]))\n"
    )
    killed = run_python(crash, tmp_path)
    assert killed.returncode == -9, killed.stderr
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == []
    assert any(".building-" in p.name for p in tmp_path.iterdir())  # the half-built staging dir

    prepared = prepare_data(TINY_PROFILE, tmp_path)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == [prepared.root.name]
    assert decoded_documents(prepared.val_dir, prepared.load_tokenizer())


def test_two_processes_racing_build_once(tmp_path):
    code = (
        "import logging, sys\nfrom pathlib import Path\nfrom autoresearch_mcp.nanochat.data import DataChanged, prepare_data, verify\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "print(prepare_data(TINY_PROFILE, Path(sys.argv[1])).root)\n"
    )
    racers = [
        subprocess.Popen(python_command(code, tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [racer.communicate(timeout=120) for racer in racers]
    assert [racer.returncode for racer in racers] == [0, 0], outputs
    assert outputs[0][0] == outputs[1][0]
    assert sum(err.count("preparing builtin") for _, err in outputs) == 1
    assert not any(".building-" in p.name for p in tmp_path.iterdir())


def test_a_damaged_cache_without_manifest_is_rebuilt(tmp_path):
    prepared = prepare_data(TINY_PROFILE, tmp_path)
    (prepared.root / "manifest.json").unlink()
    (next(prepared.train_dir.glob("*.npy"))).write_bytes(b"garbage")
    again = prepare_data(TINY_PROFILE, tmp_path)
    assert again == prepared
    assert decoded_documents(again.train_dir, again.load_tokenizer())


def test_manifest_records_the_build(tmp_path):
    prepared = prepare_data(TINY_PROFILE, tmp_path)
    manifest = json.loads((prepared.root / "manifest.json").read_text())
    assert manifest["tokenizer"] == "bpe" and manifest["profile"] == "cpu"
    assert manifest["train"]["tokens"] == sum(len(np.load(p)) for p in prepared.train_dir.glob("*.npy"))


def test_every_file_is_pinned_and_verified_and_the_data_id_names_what_is_scored(tmp_path):
    prepared = prepare_data(TINY_PROFILE, tmp_path)
    pinned = json.loads((prepared.root / "manifest.json").read_text())["sha256"]
    files = sorted(p.relative_to(prepared.root).as_posix() for p in prepared.root.rglob("*") if p.is_file())
    assert sorted(pinned) == [name for name in files if name.split("/")[0] in ("train", "val", "tokenizer")]
    assert all(pinned[name] == hashlib.sha256((prepared.root / name).read_bytes()).hexdigest() for name in pinned)
    data_id = verify(prepared.root)
    assert len(data_id) == 16 and verify(prepared.root) == data_id
    train_shard = next(prepared.train_dir.glob("*.npy"))
    train_shard.write_bytes(train_shard.read_bytes())  # same content, new mtime: hashed again, same id
    assert verify(prepared.root) == data_id


def _tamper_keeping_size_and_mtime(path):
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size and path.stat().st_mtime_ns == before.st_mtime_ns


@pytest.mark.parametrize("split", ["val", "train", "tokenizer"])
def test_a_changed_file_fails_verification_even_with_its_old_size_and_mtime(tmp_path, split):
    prepared = prepare_data(TINY_PROFILE, tmp_path)
    verify(prepared.root)  # remembered as verified
    _tamper_keeping_size_and_mtime(sorted((prepared.root / split).iterdir())[0])
    with pytest.raises(DataChanged, match="the cached data changed .* run `autoresearch-mcp prepare` again"):
        verify(prepared.root)


def test_an_added_or_linked_file_fails_verification(tmp_path):
    prepared = prepare_data(TINY_PROFILE, tmp_path)
    (prepared.val_dir / "shard_00001.npy").write_bytes(b"planted")
    with pytest.raises(DataChanged, match="added or removed"):
        verify(prepared.root)
    (prepared.val_dir / "shard_00001.npy").unlink()
    shard = next(prepared.val_dir.glob("*.npy"))
    shard.rename(tmp_path / "elsewhere.npy")
    shard.symlink_to(tmp_path / "elsewhere.npy")
    with pytest.raises(DataChanged, match="not a regular file"):
        verify(prepared.root)


def test_prepare_with_repair_rebuilds_a_changed_cache(tmp_path):
    prepared = prepare_data(TINY_PROFILE, tmp_path)
    data_id = verify(prepared.root)
    _tamper_keeping_size_and_mtime(next(prepared.val_dir.glob("*.npy")))
    assert prepare_data(TINY_PROFILE, tmp_path) == prepared  # a plain load does not look
    assert prepare_data(TINY_PROFILE, tmp_path, repair=True) == prepared
    assert verify(prepared.root) == data_id


def test_too_little_text_for_both_splits_is_refused(tmp_path):
    # One document (the first pydoc topic, a validation one): nothing is left to train on.
    with pytest.raises(UserError, match="training split .* is empty"):
        prepare_data(replace(TINY_PROFILE, max_corpus_chars=1), tmp_path)


# ---- other sources ----------------------------------------------------------------------


def write_parquet(path, texts):
    pq.write_table(pa.table({"text": texts, "id": list(range(len(texts)))}), path)


def test_local_files_last_file_is_validation(tmp_path):
    source = tmp_path / "src"
    (source / "more").mkdir(parents=True)
    write_parquet(source / "a.parquet", ["first parquet doc", "second parquet doc"])
    (source / "more" / "b.jsonl").write_text('{"text": "a json doc"}\n\n{"text": "another json doc"}\n')
    (source / "z.txt").write_text("held out paragraph one.\n\nheld out paragraph two.\n")
    (source / "notes.md").write_text("not data")
    prepared = prepare_data(replace(TINY_PROFILE, vocab_size=260), tmp_path / "cache", source=source)
    tokenizer = prepared.load_tokenizer()
    assert prepared.source == "local" and prepared.root.name.startswith("local-")
    assert decoded_documents(prepared.train_dir, tokenizer) == [
        "first parquet doc",
        "second parquet doc",
        "a json doc",
        "another json doc",
    ]
    assert decoded_documents(prepared.val_dir, tokenizer) == ["held out paragraph one.\n\nheld out paragraph two.\n"]


def test_a_single_local_file_is_split_by_hash(tmp_path):
    texts = [f"document number {i} says {i * i}" for i in range(200)]
    data_file = tmp_path / "all.jsonl"
    data_file.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    prepared = prepare_data(replace(TINY_PROFILE, vocab_size=280), tmp_path / "cache", source=data_file)
    tokenizer = prepared.load_tokenizer()
    val = decoded_documents(prepared.val_dir, tokenizer)
    assert val == [t for t in texts if corpus.is_validation(t)] and 5 < len(val) < 40
    assert decoded_documents(prepared.train_dir, tokenizer) == [t for t in texts if not corpus.is_validation(t)]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "bad.jsonl",
            '{"text": "ok"}\n{"body": "no text"}\n',
            r"bad.jsonl:2: expected a JSON object with a 'text' field",
        ),
        ("bad.parquet", None, "no 'text' column"),
        ("bad.csv", "a,b\n", "unsupported data file"),
    ],
)
def test_bad_local_data_is_explained(tmp_path, name, content, message):
    path = tmp_path / name
    if content is None:
        pq.write_table(pa.table({"body": ["x"]}), path)
    else:
        path.write_text(content)
    with pytest.raises(UserError, match=message):
        prepare_data(TINY_PROFILE, tmp_path / "cache", source=path)


def test_missing_local_source_is_explained(tmp_path):
    with pytest.raises(UserError, match="no such file or directory"):
        prepare_data(TINY_PROFILE, tmp_path, source=tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no .parquet, .jsonl or .txt files"):
        prepare_data(TINY_PROFILE, tmp_path, source=tmp_path / "empty")


def test_text_that_is_not_utf8_is_explained(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("café".encode("latin-1"))
    with pytest.raises(UserError, match="latin1.txt: not UTF-8 text"):
        prepare_data(TINY_PROFILE, tmp_path / "cache", source=path)


def test_an_unusable_data_dir_is_explained(tmp_path):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(UserError, match="could not prepare the data cache in .*a-file/cache"):
        prepare_data(TINY_PROFILE, tmp_path / "a-file" / "cache")


def test_txt_files_become_documents_of_a_few_thousand_characters(tmp_path):
    paragraphs = [f"Paragraph {i}. " + "word " * 60 for i in range(100)]
    path = tmp_path / "book.txt"
    path.write_text("\n\n".join(paragraphs))
    documents = list(download.read_documents(path))
    assert 3 < len(documents) < 20
    assert "\n\n".join(documents) == path.read_text()


CLIMBMIX_PROFILE = replace(PROFILES["h100"], vocab_size=300, climbmix_train_shards=2, tokenizer_train_chars=10**6)


def test_climbmix_needs_its_shards_downloaded_first(tmp_path):
    with pytest.raises(UserError, match=r"shard_00000.parquet.*autoresearch-mcp prepare --profile h100"):
        prepare_data(CLIMBMIX_PROFILE, tmp_path)


def test_climbmix_last_shard_is_validation(tmp_path):
    shard_dir = download.climbmix_dir(tmp_path)
    shard_dir.mkdir()
    for index in (0, 1, download.CLIMBMIX_VAL_SHARD):
        write_parquet(shard_dir / download.shard_name(index), [f"shard {index} doc {j}" for j in range(3)])
    prepared = prepare_data(CLIMBMIX_PROFILE, tmp_path)
    tokenizer = prepared.load_tokenizer()
    assert prepared.source == "climbmix" and len(list(prepared.train_dir.glob("*.npy"))) == 2
    assert decoded_documents(prepared.train_dir, tokenizer) == [f"shard {i} doc {j}" for i in (0, 1) for j in range(3)]
    assert decoded_documents(prepared.val_dir, tokenizer) == [
        f"shard {download.CLIMBMIX_VAL_SHARD} doc {j}" for j in range(3)
    ]
