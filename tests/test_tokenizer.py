import sys

import numpy as np
import pytest

from autoresearch_mcp.nanochat import corpus
from autoresearch_mcp.nanochat.tokenizer import BOS, Tokenizer

SAMPLES = [
    "def f(x):\n    return x ** 2  # squares\n",
    "Unicode: héllo wörld — ✓ 你好 🙂, tabs\tand\r\nnewlines",
    "numbers 1234567 and 3.14159e-10",
    "",
]


@pytest.fixture(scope="module")
def stdlib_texts():
    documents = corpus.builtin_documents(max_chars=600_000)
    train = [d.text for d in documents if not corpus.is_validation(d.name)]
    held_out = [d.text for d in documents if corpus.is_validation(d.name)]
    return train, held_out


@pytest.fixture(scope="module")
def bpe(stdlib_texts):
    return Tokenizer.train(stdlib_texts[0], vocab_size=512)


def test_bpe_has_the_requested_vocabulary_with_bos_last(bpe):
    assert bpe.kind == "bpe"
    assert bpe.vocab_size == 512 and bpe.bos_id == 511


@pytest.mark.parametrize("text", SAMPLES)
def test_encode_decode_round_trips(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


def test_bos_text_in_a_document_is_not_the_bos_token(bpe):
    assert bpe.bos_id not in bpe.encode(f"a {BOS} b")


def test_bpe_compresses_stdlib_text_better_than_bytes(bpe, stdlib_texts):
    held_out = "".join(stdlib_texts[1])
    n_bytes = len(held_out.encode("utf-8"))
    assert len(Tokenizer.bytes_only().encode(held_out)) == n_bytes
    assert n_bytes / len(bpe.encode(held_out)) > 1.5  # about 2 with only 512 ids


@pytest.mark.parametrize("text", SAMPLES)
def test_token_bytes_add_up_to_the_utf8_length(bpe, text):
    lengths = bpe.token_bytes()
    assert lengths[bpe.bos_id] == 0 and lengths[: bpe.bos_id].min() >= 1
    assert lengths[bpe.encode(text)].sum() == len(text.encode("utf-8"))


def test_documents_are_encoded_flat_each_led_by_bos(bpe):
    tokens = bpe.encode_documents(SAMPLES)
    assert tokens.dtype == np.uint16
    starts = np.flatnonzero(tokens == bpe.bos_id)
    assert len(starts) == len(SAMPLES) and starts[0] == 0
    for text, piece in zip(SAMPLES, np.split(tokens, starts[1:]), strict=True):
        assert bpe.decode(piece[1:]) == text


def test_saved_tokenizer_loads_identical(bpe, tmp_path, stdlib_texts):
    bpe.save(tmp_path / "tok")
    loaded = Tokenizer.load(tmp_path / "tok")
    text = stdlib_texts[1][0]
    assert (loaded.kind, loaded.vocab_size, loaded.bos_id) == (bpe.kind, bpe.vocab_size, bpe.bos_id)
    assert loaded.encode(text) == bpe.encode(text)
    assert np.array_equal(loaded.token_bytes(), bpe.token_bytes())


def test_byte_fallback_when_rustbpe_is_missing(monkeypatch, stdlib_texts, tmp_path):
    monkeypatch.setitem(sys.modules, "rustbpe", None)  # makes `import rustbpe` fail
    fallback = Tokenizer.train(stdlib_texts[0], vocab_size=512)
    assert (fallback.kind, fallback.vocab_size, fallback.bos_id) == ("bytes", 257, 256)
    for text in SAMPLES:
        assert fallback.decode(fallback.encode(text)) == text
        assert fallback.token_bytes()[fallback.encode(text)].sum() == len(text.encode("utf-8"))
    fallback.save(tmp_path / "bytes")
    assert Tokenizer.load(tmp_path / "bytes").kind == "bytes"


def test_a_vocabulary_too_small_for_bytes_is_refused(stdlib_texts):
    with pytest.raises(ValueError, match="at least 257"):
        Tokenizer.train(stdlib_texts[0], vocab_size=200)
