"""Basic client usage: the semantics of client-go ``integration_tests/ticlient_test.go``
(``TestSingleKey``, ``TestMultiKeys``, ``TestNotExist``, ``TestLargeRequest``), on the
transactional client and, where it applies, the raw client.
"""

from __future__ import annotations

import pytest
from tikv_raw import RawClient
from tikv_txn import TransactionClient, TransactionOptions, TxnTooLargeError


def _key(prefix: bytes, i: int) -> bytes:
    return prefix + b"key%08d" % i


def test_single_key(txn: TransactionClient, tprefix: bytes) -> None:
    key = tprefix + b"key"
    with txn.begin() as t:
        t.put(key, b"value")
    reader = txn.begin()
    assert reader.get(key) == b"value"
    reader.rollback()
    with txn.begin() as t:
        t.delete(key)
    reader = txn.begin()
    assert reader.get(key) is None
    reader.rollback()


def test_multi_keys(txn: TransactionClient, tprefix: bytes) -> None:
    with txn.begin() as t:
        for i in range(100):
            t.put(_key(tprefix, i), b"%d" % i)
    reader = txn.begin()
    for i in range(100):
        assert reader.get(_key(tprefix, i)) == b"%d" % i
    assert reader.batch_get([_key(tprefix, i) for i in range(100)]) == {
        _key(tprefix, i): b"%d" % i for i in range(100)
    }
    reader.rollback()
    with txn.begin() as t:
        for i in range(100):
            t.delete(_key(tprefix, i))
    reader = txn.begin()
    assert reader.scan(tprefix, tprefix + b"\xff", limit=1000) == []
    reader.rollback()


def test_not_exist(txn: TransactionClient, raw: RawClient, prefix: bytes, tprefix: bytes) -> None:
    # client-go returns ErrNotExist; the Python API returns None.
    reader = txn.begin()
    assert reader.get(tprefix + b"noSuchKey") is None
    assert reader.batch_get([tprefix + b"noSuchKey"]) == {}
    reader.rollback()
    assert raw.get(prefix + b"noSuchKey") is None


def test_large_request(txn: TransactionClient, tprefix: bytes) -> None:
    # An entry over the entry size limit is refused at put time; the transaction stays
    # usable and commits what it holds.
    options = TransactionOptions(entry_size_limit=1024 * 1024)
    t = txn.begin(options)
    with pytest.raises(TxnTooLargeError):
        t.put(tprefix + b"key", b"x" * (9 * 1024 * 1024))
    t.put(tprefix + b"small", b"ok")
    assert t.commit() > 0
    reader = txn.begin()
    assert reader.get(tprefix + b"key") is None
    assert reader.get(tprefix + b"small") == b"ok"
    reader.rollback()


def test_raw_single_and_multi_keys(raw: RawClient, prefix: bytes) -> None:
    raw.put(prefix + b"key", b"value")
    assert raw.get(prefix + b"key") == b"value"
    pairs = {_key(prefix, i): b"%d" % i for i in range(100)}
    raw.batch_put(pairs)
    assert raw.batch_get(list(pairs)) == pairs
    raw.batch_delete(list(pairs))
    assert raw.batch_get(list(pairs)) == {}
    raw.delete(prefix + b"key")
    assert raw.get(prefix + b"key") is None
