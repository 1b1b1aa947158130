"""Unit tests of the raw client's pure parts: validation, builders, batching, readers."""

from __future__ import annotations

import datetime
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tikv_proto import kvrpcpb_pb2
from tikv_raw import Checksum, RawKVError
from tikv_raw._batching import (
    RAW_BATCH_PAIR_COUNT,
    RAW_BATCH_PUT_SIZE,
    pair_size,
    split_by_count,
    split_by_size,
)
from tikv_raw._requests import (
    REVERSE_SCAN_UNBOUNDED_UPPER,
    build_batch_delete,
    build_batch_get,
    build_batch_put,
    build_cas,
    build_checksum,
    build_delete,
    build_delete_range,
    build_get,
    build_get_key_ttl,
    build_put,
    build_scan,
    read_batch_get,
    read_cas,
    read_checksum,
    read_get,
    read_key_ttl,
    read_scan,
)
from tikv_raw._validate import (
    MAX_RAW_SCAN_LIMIT,
    check_cf,
    check_key,
    check_keys,
    check_limit,
    check_pairs,
    check_range,
    check_ttl,
    check_ttls,
    prefix_end,
)

# --- validation ---------------------------------------------------------------------


def test_check_key_accepts_bytes_like_and_refuses_others() -> None:
    assert check_key(b"k") == b"k"
    assert check_key(b"") == b""
    assert check_key(bytearray(b"ab")) == b"ab"
    assert check_key(memoryview(b"xy")) == b"xy"
    with pytest.raises(TypeError, match=r"key must be bytes, got str 'k'.*encode"):
        check_key("k")
    with pytest.raises(TypeError, match="got int"):
        check_key(5)
    with pytest.raises(TypeError, match="got NoneType"):
        check_key(None)


def test_check_keys_dedupes_in_order_and_names_bad_element() -> None:
    assert check_keys([b"b", b"a", b"b"]) == [b"b", b"a"]
    assert check_keys(iter([])) == []
    with pytest.raises(TypeError, match=r"keys\[1\] must be bytes"):
        check_keys([b"a", "b"])
    with pytest.raises(TypeError, match="single bytes"):
        check_keys(b"abc")
    with pytest.raises(TypeError, match="iterable"):
        check_keys(42)


def test_check_pairs_mapping_and_iterable_last_wins() -> None:
    assert check_pairs({b"a": b"1"}) == {b"a": b"1"}
    assert check_pairs([(b"a", b"1"), (b"b", b""), (b"a", b"3")]) == {b"a": b"3", b"b": b""}
    with pytest.raises(TypeError, match=r"pairs\[0\] value must be bytes"):
        check_pairs({b"a": "1"})
    with pytest.raises(TypeError, match=r"pairs\[0\] key must be bytes"):
        check_pairs({"a": b"1"})
    with pytest.raises(ValueError, match=r"pairs\[0\] must be a \(key, value\) pair"):
        check_pairs([(b"a", b"1", b"x")])
    with pytest.raises(TypeError, match="mapping"):
        check_pairs(b"ab")


def test_check_ttl() -> None:
    assert check_ttl(None) == 0
    assert check_ttl(1) == 1
    assert check_ttl(datetime.timedelta(minutes=2)) == 120
    with pytest.raises(ValueError, match=r"at least 1 second.*None"):
        check_ttl(0)
    with pytest.raises(ValueError, match="at least 1 second"):
        check_ttl(-5)
    with pytest.raises(ValueError, match="whole seconds"):
        check_ttl(datetime.timedelta(seconds=1.5))
    with pytest.raises(TypeError, match="got float"):
        check_ttl(1.0)
    with pytest.raises(TypeError, match="got bool"):
        check_ttl(True)
    with pytest.raises(ValueError, match="64 bits"):
        check_ttl(2**64)


def test_check_ttls() -> None:
    keys = [b"a", b"b", b"c"]
    assert check_ttls(None, keys, 0) == {b"a": 0, b"b": 0, b"c": 0}
    assert check_ttls({b"b": 5, b"c": None}, keys, 9) == {b"a": 9, b"b": 5, b"c": 0}
    with pytest.raises(ValueError, match="not in the pairs"):
        check_ttls({b"z": 5}, keys, 0)
    with pytest.raises(TypeError, match="mapping"):
        check_ttls([5, 5, 5], keys, 0)
    with pytest.raises(ValueError, match="at least 1"):
        check_ttls({b"a": 0}, keys, 0)


def test_check_limit() -> None:
    assert check_limit(1) == 1
    assert check_limit(MAX_RAW_SCAN_LIMIT) == 10240
    with pytest.raises(ValueError, match="between 1 and 10240"):
        check_limit(0)
    with pytest.raises(ValueError, match=r"between 1 and 10240.*scan_iter"):
        check_limit(10241)
    with pytest.raises(TypeError, match="int"):
        check_limit(10.0)
    with pytest.raises(TypeError, match="int"):
        check_limit(True)


def test_check_range() -> None:
    assert check_range(b"a", b"b") == (b"a", b"b")
    assert check_range(b"", None) == (b"", None)
    assert check_range(b"a", b"a") == (b"a", b"a")
    with pytest.raises(ValueError, match="is empty"):
        check_range(b"a", b"a", allow_empty=False)
    with pytest.raises(ValueError, match="start must not be greater than end"):
        check_range(b"b", b"a")
    with pytest.raises(ValueError, match="end=None"):
        check_range(b"", b"")
    with pytest.raises(TypeError, match="start must be bytes"):
        check_range("a", None)
    with pytest.raises(TypeError, match="end must be bytes"):
        check_range(b"a", "b")


def test_check_cf() -> None:
    assert check_cf("default", 1) == ""
    assert check_cf("", 1) == ""
    assert check_cf("write", 1) == "write"
    assert check_cf("lock", 1) == "lock"
    assert check_cf("default", 2) == ""
    with pytest.raises(ValueError, match="API v2"):
        check_cf("write", 2)
    with pytest.raises(ValueError, match="must be one of"):
        check_cf("raft", 1)
    with pytest.raises(TypeError):
        check_cf(None, 1)


@pytest.mark.parametrize(
    ("prefix", "end"),
    [(b"ab", b"ac"), (b"a\xff", b"b"), (b"\xff\xff", None), (b"", None), (b"\x00", b"\x01")],
)
def test_prefix_end(prefix: bytes, end: bytes | None) -> None:
    assert prefix_end(prefix) == end


@given(st.binary(max_size=6), st.binary(max_size=6))
def test_prefix_end_bounds_exactly_the_prefixed_keys(prefix: bytes, key: bytes) -> None:
    end = prefix_end(prefix)
    in_range = key >= prefix and (end is None or key < end)
    assert in_range == key.startswith(prefix)


# --- batching -----------------------------------------------------------------------


def test_batching_constants_are_client_go_values() -> None:
    assert RAW_BATCH_PAIR_COUNT == 512
    assert RAW_BATCH_PUT_SIZE == 16 * 1024


def test_split_by_count() -> None:
    keys = [i.to_bytes(2, "big") for i in range(1025)]
    chunks = split_by_count(keys, 512)
    assert [len(c) for c in chunks] == [512, 512, 1]
    assert [k for c in chunks for k in c] == keys
    assert split_by_count([], 512) == []
    with pytest.raises(ValueError, match="max_count"):
        split_by_count(keys, 0)


@given(
    st.lists(st.tuples(st.binary(max_size=40), st.binary(max_size=80)), max_size=60),
    st.integers(min_value=1, max_value=200),
)
def test_split_by_size_preserves_order_and_respects_limit(
    pairs: list[tuple[bytes, bytes]], limit: int
) -> None:
    chunks = split_by_size(pairs, limit)
    assert [p for c in chunks for p in c] == pairs
    for chunk in chunks:
        assert chunk
        size = sum(pair_size(p) for p in chunk)
        assert size <= limit or len(chunk) == 1
    # Greedy: a chunk is only closed when the next pair would not fit.
    for a, b in itertools.pairwise(chunks):
        assert sum(pair_size(p) for p in a) + pair_size(b[0]) > limit


# --- builders -----------------------------------------------------------------------


def test_point_builders() -> None:
    assert build_get(b"k", "write") == kvrpcpb_pb2.RawGetRequest(key=b"k", cf="write")
    put = build_put(b"k", b"v", "", ttl=30, for_cas=True)
    assert (put.key, put.value, put.cf, put.ttl, put.for_cas) == (b"k", b"v", "", 30, True)
    delete = build_delete(b"k", "lock", for_cas=True)
    assert (delete.key, delete.cf, delete.for_cas) == (b"k", "lock", True)
    assert build_get_key_ttl(b"k", "").key == b"k"
    assert list(build_batch_get([b"a", b"b"], "").keys) == [b"a", b"b"]
    bd = build_batch_delete([b"a"], "write", for_cas=False)
    assert (list(bd.keys), bd.cf, bd.for_cas) == ([b"a"], "write", False)
    dr = build_delete_range(b"a", b"m", "")
    assert (dr.start_key, dr.end_key) == (b"a", b"m")


def test_batch_put_ttls() -> None:
    pairs = [(b"a", b"1"), (b"b", b"2")]
    no_ttl = build_batch_put(pairs, [0, 0], "", for_cas=False)
    assert list(no_ttl.ttls) == []
    assert no_ttl.ttl == 0
    assert [(p.key, p.value) for p in no_ttl.pairs] == pairs
    same = build_batch_put(pairs, [7, 7], "", for_cas=True)
    assert list(same.ttls) == [7, 7]
    assert same.ttl == 7
    assert same.for_cas
    mixed = build_batch_put(pairs, [0, 9], "", for_cas=False)
    assert list(mixed.ttls) == [0, 9]
    assert mixed.ttl == 0
    with pytest.raises(ValueError, match="ttls for"):
        build_batch_put(pairs, [1], "", for_cas=False)


def test_scan_builder_forward_and_reverse_key_order() -> None:
    fwd = build_scan(b"a", b"m", 10, "", key_only=True, reverse=False)
    assert (fwd.start_key, fwd.end_key, fwd.limit, fwd.key_only, fwd.reverse) == (
        b"a",
        b"m",
        10,
        True,
        False,
    )
    assert build_scan(b"a", None, 5, "", key_only=False, reverse=False).end_key == b""
    # Reverse: TiKV wants the exclusive upper bound in start_key, the lower in end_key.
    rev = build_scan(b"a", b"m", 10, "write", key_only=False, reverse=True)
    assert (rev.start_key, rev.end_key, rev.reverse, rev.cf) == (b"m", b"a", True, "write")
    unbounded = build_scan(b"", None, 10, "", key_only=False, reverse=True)
    assert unbounded.start_key == REVERSE_SCAN_UNBOUNDED_UPPER
    assert unbounded.end_key == b""
    # Every key TiKV accepts by default (<= 8 KiB) sorts below the sentinel.
    assert REVERSE_SCAN_UNBOUNDED_UPPER > b"\xff" * 8192


def test_cas_builder_expected_none_vs_empty() -> None:
    absent = build_cas(b"k", None, b"new", "", ttl=0)
    assert absent.previous_not_exist
    assert absent.previous_value == b""
    assert absent.value == b"new"
    empty = build_cas(b"k", b"", b"new", "", ttl=5)
    assert not empty.previous_not_exist
    assert empty.ttl == 5


def test_checksum_builder() -> None:
    req = build_checksum([(b"a", b"b"), (b"c", b"")])
    assert req.algorithm == kvrpcpb_pb2.Crc64_Xor
    assert [(r.start_key, r.end_key) for r in req.ranges] == [(b"a", b"b"), (b"c", b"")]


# --- readers ------------------------------------------------------------------------


def test_read_get() -> None:
    assert read_get(kvrpcpb_pb2.RawGetResponse(not_found=True)) is None
    assert read_get(kvrpcpb_pb2.RawGetResponse(value=b"")) == b""
    assert read_get(kvrpcpb_pb2.RawGetResponse(value=b"v")) == b"v"
    with pytest.raises(RawKVError, match="TiKV refused RawGet: boom") as info:
        read_get(kvrpcpb_pb2.RawGetResponse(error="boom"))
    assert info.value.command == "RawGet"
    assert info.value.server_message == "boom"


def test_read_batch_get_merges_and_raises_pair_errors() -> None:
    r1 = kvrpcpb_pb2.RawBatchGetResponse(pairs=[kvrpcpb_pb2.KvPair(key=b"a", value=b"1")])
    r2 = kvrpcpb_pb2.RawBatchGetResponse(pairs=[kvrpcpb_pb2.KvPair(key=b"b", value=b"")])
    assert read_batch_get([r1, r2]) == {b"a": b"1", b"b": b""}
    bad = kvrpcpb_pb2.RawBatchGetResponse(
        pairs=[kvrpcpb_pb2.KvPair(error=kvrpcpb_pb2.KeyError(abort="Invalid cf"))]
    )
    with pytest.raises(RawKVError, match="Invalid cf"):
        read_batch_get([r1, bad])


def test_read_scan_concatenates_and_truncates() -> None:
    def page(*keys: bytes) -> kvrpcpb_pb2.RawScanResponse:
        return kvrpcpb_pb2.RawScanResponse(
            kvs=[kvrpcpb_pb2.KvPair(key=k, value=k.upper()) for k in keys]
        )

    pages = [page(b"a", b"b"), page(), page(b"c", b"d")]
    assert read_scan(pages, None) == [(b"a", b"A"), (b"b", b"B"), (b"c", b"C"), (b"d", b"D")]
    assert read_scan(pages, 3) == [(b"a", b"A"), (b"b", b"B"), (b"c", b"C")]
    err = kvrpcpb_pb2.RawScanResponse(
        kvs=[kvrpcpb_pb2.KvPair(error=kvrpcpb_pb2.KeyError(retryable="later"))]
    )
    with pytest.raises(RawKVError, match="RawScan: later"):
        read_scan([err], None)


def test_read_key_ttl() -> None:
    assert read_key_ttl(kvrpcpb_pb2.RawGetKeyTTLResponse(not_found=True)) is None
    assert read_key_ttl(kvrpcpb_pb2.RawGetKeyTTLResponse(ttl=0)) == 0
    assert read_key_ttl(kvrpcpb_pb2.RawGetKeyTTLResponse(ttl=42)) == 42
    with pytest.raises(RawKVError, match="TTL is not enabled"):
        read_key_ttl(kvrpcpb_pb2.RawGetKeyTTLResponse(error="TTL is not enabled"))


def test_read_cas() -> None:
    assert read_cas(kvrpcpb_pb2.RawCASResponse(succeed=True, previous_not_exist=True)) == (
        None,
        True,
    )
    assert read_cas(kvrpcpb_pb2.RawCASResponse(succeed=False, previous_value=b"x")) == (
        b"x",
        False,
    )
    assert read_cas(kvrpcpb_pb2.RawCASResponse(succeed=True)) == (b"", True)
    with pytest.raises(RawKVError):
        read_cas(kvrpcpb_pb2.RawCASResponse(error="nope"))


def test_read_checksum_xors_and_sums() -> None:
    responses = [
        kvrpcpb_pb2.RawChecksumResponse(checksum=0xF0F0, total_kvs=2, total_bytes=10),
        kvrpcpb_pb2.RawChecksumResponse(checksum=0x0FF0, total_kvs=3, total_bytes=7),
        kvrpcpb_pb2.RawChecksumResponse(),
    ]
    assert read_checksum(responses) == Checksum(0xFF00, 5, 17)
    assert read_checksum([]) == Checksum(0, 0, 0)
    with pytest.raises(RawKVError, match="unknown checksum algorithm"):
        read_checksum([kvrpcpb_pb2.RawChecksumResponse(error="unknown checksum algorithm")])


def test_checksum_type_validates() -> None:
    with pytest.raises(ValueError, match="64 bits"):
        Checksum(2**64, 0, 0)
    with pytest.raises(ValueError, match="non-negative"):
        Checksum(0, -1, 0)
    with pytest.raises(TypeError):
        Checksum(0, 0, 1.5)  # type: ignore[arg-type]
