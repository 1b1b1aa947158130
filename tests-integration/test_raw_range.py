"""Range bounds and the ``\\0`` successor trick on the raw client: the semantics the seed
maps to client-go ``integration_tests/raw/util_test.go`` (ranges are ``[start, end)``,
``key + b"\\0"`` is the first key after ``key``, ``end=None`` is unbounded).
"""

from __future__ import annotations

import pytest
from tikv_mockstore import MockCluster
from tikv_raw import RawClient, prefix_range


def _fill(raw: RawClient, prefix: bytes) -> list[bytes]:
    keys = [prefix + k for k in (b"k", b"k\0", b"k\0\0", b"k\x01", b"l")]
    raw.batch_put({k: b"v" + k[len(prefix) :] for k in keys})
    return keys


def test_successor_key_bounds_exactly_one_key(raw: RawClient, prefix: bytes) -> None:
    k, k0, k00, k1, _l = _fill(raw, prefix)
    assert [key for key, _ in raw.scan(k, k + b"\0", limit=10)] == [k]
    assert [key for key, _ in raw.scan(k, k0 + b"\0", limit=10)] == [k, k0]
    assert [key for key, _ in raw.scan(k0, k1, limit=10)] == [k0, k00]
    # Reverse scans use the same bounds: keys in [start, end), highest first.
    assert [key for key, _ in raw.scan(k, k + b"\0", limit=10, reverse=True)] == [k]
    assert [key for key, _ in raw.scan(k, k1, limit=10, reverse=True)] == [k00, k0, k]
    assert raw.scan(k, k, limit=10) == []


def test_delete_range_with_successor_bounds(raw: RawClient, prefix: bytes) -> None:
    k, k0, k00, k1, l_ = _fill(raw, prefix)
    raw.delete_range(k0, k0 + b"\0")  # exactly k\0
    assert raw.batch_get([k, k0, k00, k1, l_]).keys() == {k, k00, k1, l_}
    raw.delete_range(k + b"\0", k1)  # everything strictly between k and k\x01
    assert sorted(raw.batch_get([k, k0, k00, k1, l_])) == [k, k1, l_]
    raw.delete_range(k1, prefix + b"m")
    assert sorted(raw.batch_get([k, k0, k00, k1, l_])) == [k]


def test_unbounded_end_and_prefix_ranges(raw: RawClient, prefix: bytes) -> None:
    keys = _fill(raw, prefix)
    start, end = prefix_range(prefix)
    assert end == prefix[:-1] + bytes([prefix[-1] + 1])
    assert [k for k, _ in raw.scan(start, end, limit=100)] == keys
    # end=None: to the end of the key space (our keys come first from the prefix on).
    assert [k for k, _ in raw.scan(prefix, None, limit=len(keys))] == keys
    assert [k for k, _ in raw.scan(start, end, limit=100, key_only=True)] == keys
    assert all(v == b"" for _, v in raw.scan(start, end, limit=100, key_only=True))
    # One result list per range, each range clipped to its own bounds.
    assert raw.batch_scan([(keys[0], keys[1]), (keys[3], end)], each_limit=10) == [
        [(keys[0], b"vk")],
        [(keys[3], b"vk\x01"), (keys[4], b"vl")],
    ]


def test_bad_ranges_are_refused_before_sending(raw: RawClient, prefix: bytes) -> None:
    with pytest.raises(ValueError, match="greater"):
        raw.scan(prefix + b"b", prefix + b"a", limit=10)
    with pytest.raises(ValueError, match="end=None"):
        raw.scan(prefix, b"", limit=10)
    with pytest.raises(ValueError, match="empty"):
        raw.delete_range(prefix + b"a", prefix + b"a")
    with pytest.raises(TypeError):
        raw.scan("a", None, limit=10)  # type: ignore[arg-type]


def test_empty_key_is_the_first_key(raw: RawClient, prefix: bytes, mock: MockCluster) -> None:
    # The empty key sorts before every key; a private cluster keeps it away from others.
    del raw, prefix
    with MockCluster(stores=1, regions=2) as cluster, RawClient.connect(cluster.pd_endpoints) as c:
        c.put(b"", b"empty")
        c.put(b"\0", b"zero")
        c.put(b"\xff\xff", b"last")
        assert c.scan(b"", b"\0", limit=10) == [(b"", b"empty")]
        assert c.scan(b"", None, limit=10) == [
            (b"", b"empty"),
            (b"\0", b"zero"),
            (b"\xff\xff", b"last"),
        ]
        assert c.scan(b"", None, limit=1, reverse=True) == [(b"\xff\xff", b"last")]
        c.delete_range(b"", b"\0")
        assert c.get(b"") is None
        assert c.get(b"\0") == b"zero"
