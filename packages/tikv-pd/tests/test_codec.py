from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tikv_pd.codec import (
    API_V1,
    API_V2,
    V2_MODE_PREFIXES,
    CodecV1,
    KeyCodec,
    KeyspaceCodec,
    decode_bytes,
    decode_bytes_desc,
    encode_bytes,
    encode_bytes_desc,
    keyspace_prefix,
    make_codec,
    next_key,
    parse_keyspace_id,
    prefix_next,
    split_keyspace_key,
)
from tikv_pd.errors import CodecError, KeyOutOfKeyspaceError


def reference_encode(data: bytes) -> bytes:
    """A per-byte transcription of the format, to check the fast implementation."""
    out = bytearray()
    for idx in range(0, len(data) + 1, 8):
        group = data[idx : idx + 8]
        pad = 8 - len(group)
        out += group + b"\x00" * pad + bytes([0xFF - pad])
    return bytes(out)


# Known vectors of the format (TiDB's codec tests use the same layout).
VECTORS = [
    (b"", b"\x00" * 8 + b"\xf7"),
    (b"\x00", b"\x00" * 8 + b"\xf8"),
    (b"1", b"1" + b"\x00" * 7 + b"\xf8"),
    (b"12345678", b"12345678\xff" + b"\x00" * 8 + b"\xf7"),
    (b"123456789", b"12345678\xff9" + b"\x00" * 7 + b"\xf8"),
    (b"1234567", b"1234567\x00\xfe"),
]


@pytest.mark.parametrize(("value", "encoded"), VECTORS)
def test_vectors(value: bytes, encoded: bytes) -> None:
    assert encode_bytes(value) == encoded
    assert decode_bytes(encoded) == (value, b"")
    assert decode_bytes(encoded + b"rest") == (value, b"rest")


@given(st.binary(max_size=100))
def test_matches_reference(data: bytes) -> None:
    assert encode_bytes(data) == reference_encode(data)


@given(st.binary(max_size=100), st.binary(max_size=20))
def test_round_trip(data: bytes, rest: bytes) -> None:
    enc = encode_bytes(data)
    assert len(enc) == (len(data) // 8 + 1) * 9
    assert decode_bytes(enc + rest) == (data, rest)
    assert decode_bytes(bytearray(enc + rest)) == (data, rest)
    assert decode_bytes(memoryview(enc + rest)) == (data, rest)
    assert encode_bytes(bytearray(data)) == enc


@given(st.binary(max_size=40), st.binary(max_size=40))
def test_order_preserving(a: bytes, b: bytes) -> None:
    ea, eb = encode_bytes(a), encode_bytes(b)
    assert (a < b) == (ea < eb)
    assert (a == b) == (ea == eb)
    da, db = encode_bytes_desc(a), encode_bytes_desc(b)
    assert (a < b) == (da > db)


@given(st.binary(max_size=60), st.binary(max_size=10))
def test_desc_round_trip(data: bytes, rest: bytes) -> None:
    enc = encode_bytes_desc(data)
    assert decode_bytes_desc(enc + rest) == (data, rest)


@given(st.lists(st.binary(max_size=20), max_size=5))
def test_concatenated_values_decode_in_sequence(values: list[bytes]) -> None:
    buf = b"".join(encode_bytes(v) for v in values)
    out = []
    while buf:
        v, buf = decode_bytes(buf)
        out.append(v)
    assert out == values


@pytest.mark.parametrize(
    ("buf", "match"),
    [
        (b"", "insufficient"),
        (b"12345678", "insufficient"),
        (b"12345678\xff", "insufficient"),
        (b"12345678\xff1234", "insufficient"),
        (b"1234567\x00\xf0", "marker"),
        (b"1234567\x01\xfe", "padding"),
        (b"\x00" * 7 + b"\x01\xf7", "padding"),
    ],
)
def test_malformed(buf: bytes, match: str) -> None:
    with pytest.raises(CodecError, match=match):
        decode_bytes(buf)
    with pytest.raises(ValueError, match=match):  # CodecError is a ValueError
        decode_bytes(buf)


def test_malformed_desc() -> None:
    with pytest.raises(CodecError, match="insufficient"):
        decode_bytes_desc(b"\x00\x01")


def test_next_key_and_prefix_next() -> None:
    assert next_key(b"a") == b"a\x00"
    assert next_key(b"") == b"\x00"
    assert prefix_next(b"ab") == b"ac"
    assert prefix_next(b"a\xff") == b"b"
    assert prefix_next(b"\xff\xff") == b""
    assert prefix_next(b"") == b""


@given(st.binary(min_size=1, max_size=10), st.binary(max_size=10))
def test_prefix_next_bounds_prefixed_keys(prefix: bytes, suffix: bytes) -> None:
    end = prefix_next(prefix)
    key = prefix + suffix
    assert end == b"" or key < end
    assert end == b"" or not end.startswith(prefix)


def test_keyspace_prefix() -> None:
    assert keyspace_prefix("raw", 1) == b"r\x00\x00\x01"
    assert keyspace_prefix("txn", 0x010203) == b"x\x01\x02\x03"
    with pytest.raises(ValueError, match="out of range"):
        keyspace_prefix("txn", 0x1000000)
    with pytest.raises(ValueError, match="out of range"):
        keyspace_prefix("txn", -1)
    with pytest.raises(ValueError, match="mode"):
        keyspace_prefix("rw", 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="keyspace_id"):
        keyspace_prefix("raw", "1")  # type: ignore[arg-type]


def test_keyspace_codec_keys() -> None:
    c = KeyspaceCodec("txn", 7)
    assert isinstance(c, KeyCodec)
    assert c.api_version == API_V2
    assert c.prefix == b"x\x00\x00\x07"
    assert c.end_key == b"x\x00\x00\x08"
    assert c.encode_key(b"k") == b"x\x00\x00\x07k"
    assert c.encode_keys([b"a", b"b"]) == [b"x\x00\x00\x07a", b"x\x00\x00\x07b"]
    assert c.decode_key(b"x\x00\x00\x07k") == b"k"
    with pytest.raises(KeyOutOfKeyspaceError) as info:
        c.decode_key(b"x\x00\x00\x08k")
    assert info.value.keyspace_id == 7
    assert info.value.key == b"x\x00\x00\x08k"
    with pytest.raises(KeyOutOfKeyspaceError):
        c.decode_key(b"r\x00\x00\x07k")  # same id, other mode


def test_keyspace_end_of_max_id_rolls_mode_byte() -> None:
    c = KeyspaceCodec("raw", 0xFFFFFF)
    assert c.end_key == b"s\x00\x00\x00"


def test_keyspace_encode_range() -> None:
    c = KeyspaceCodec("raw", 1)
    p, end = c.prefix, c.end_key
    assert c.encode_range(b"a", b"z") == (p + b"a", p + b"z")
    assert c.encode_range(b"", b"") == (p, end)
    assert c.encode_range(b"a", b"") == (p + b"a", end)
    # Reverse scans send the upper bound as start_key.
    assert c.encode_range(b"z", b"a", reverse=True) == (p + b"z", p + b"a")
    assert c.encode_range(b"", b"a", reverse=True) == (end, p + b"a")


def test_keyspace_decode_range_clips() -> None:
    c = KeyspaceCodec("txn", 5)
    p, end = c.prefix, c.end_key
    assert c.decode_range(p + b"a", p + b"b") == (b"a", b"b")
    assert c.decode_range(b"", b"") == (b"", b"")
    assert c.decode_range(b"x\x00\x00\x04zz", end + b"q") == (b"", b"")
    assert c.decode_range(p, end) == (b"", b"")
    with pytest.raises(KeyOutOfKeyspaceError):
        c.decode_range(end, b"")
    with pytest.raises(KeyOutOfKeyspaceError):
        c.decode_range(b"", p)  # ends exactly where the keyspace starts


def test_keyspace_region_range_round_trip() -> None:
    c = KeyspaceCodec("txn", 5)
    s, e = c.encode_region_range(b"a", b"m")
    assert s == encode_bytes(c.prefix + b"a")
    assert e == encode_bytes(c.prefix + b"m")
    assert c.decode_region_range(s, e) == (b"a", b"m")
    s, e = c.encode_region_range(b"", b"")
    assert (s, e) == (encode_bytes(c.prefix), encode_bytes(c.end_key))
    assert c.decode_region_range(s, e) == (b"", b"")
    # A region spanning keyspaces 4..6 is clipped to keyspace 5 entirely.
    other = KeyspaceCodec("txn", 4)
    assert c.decode_region_range(encode_bytes(other.prefix + b"q"), b"") == (b"", b"")
    assert c.decode_region_key(encode_bytes(c.prefix + b"zz")) == b"zz"
    with pytest.raises(CodecError):
        c.decode_region_range(b"garbage", b"")


@given(st.binary(max_size=30), st.binary(max_size=30))
def test_keyspace_region_keys_preserve_order(a: bytes, b: bytes) -> None:
    c = KeyspaceCodec("raw", 3)
    assert (a < b) == (c.encode_region_key(a) < c.encode_region_key(b))
    assert c.decode_region_key(c.encode_region_key(a)) == a
    assert c.decode_key(c.encode_key(a)) == a


def test_codec_v1() -> None:
    txn = CodecV1("txn")
    raw = CodecV1("raw")
    assert isinstance(txn, KeyCodec)
    assert txn.api_version == API_V1
    assert txn.keyspace_id is None
    assert txn.encode_key(b"k") == b"k"
    assert txn.encode_keys(iter([b"a", b"b"])) == [b"a", b"b"]
    assert txn.encode_range(b"a", b"", reverse=True) == (b"a", b"")
    assert txn.encode_region_key(b"k") == encode_bytes(b"k")
    assert raw.encode_region_key(b"k") == b"k"
    assert txn.encode_region_range(b"a", b"") == (encode_bytes(b"a"), b"")
    assert txn.decode_region_range(encode_bytes(b"a"), b"") == (b"a", b"")
    assert raw.decode_region_range(b"a", b"b") == (b"a", b"b")
    with pytest.raises(CodecError):
        txn.decode_region_key(b"not-encoded")
    with pytest.raises(ValueError, match="mode"):
        CodecV1("both")  # type: ignore[arg-type]


def test_make_codec() -> None:
    assert make_codec(API_V1, "txn") == CodecV1("txn")
    assert make_codec(1, "raw") == CodecV1("raw")
    assert make_codec(API_V2, "raw", 0) == KeyspaceCodec("raw", 0)
    assert hash(make_codec(API_V2, "raw", 0)) == hash(KeyspaceCodec("raw", 0))
    with pytest.raises(ValueError, match="keyspace_id"):
        make_codec(API_V2, "raw")
    with pytest.raises(ValueError, match="API v2"):
        make_codec(API_V1, "raw", 3)
    with pytest.raises(ValueError, match="unsupported API version"):
        make_codec(3, "raw")


def _in_range(key: bytes, start: bytes, end: bytes) -> bool:
    return start <= key and (not end or key < end)


KEYSPACE_BYTES = st.sampled_from(
    [b"x\x00\x00\x04", b"x\x00\x00\x05", b"x\x00\x00\x06", b"r\x00\x00\x05", b"x\x00", b""]
)


@given(
    start=st.tuples(KEYSPACE_BYTES, st.binary(max_size=3)).map(b"".join),
    end=st.tuples(KEYSPACE_BYTES, st.binary(max_size=3)).map(b"".join),
    users=st.lists(st.binary(max_size=4), min_size=1, max_size=8),
)
def test_keyspace_decode_range_is_the_intersection(
    start: bytes, end: bytes, users: list[bytes]
) -> None:
    # For every user key u: prefix+u lies in [start, end) iff u lies in the decoded range.
    c = KeyspaceCodec("txn", 5)
    if end and end <= start:
        return
    try:
        s, e = c.decode_range(start, end)
    except KeyOutOfKeyspaceError:
        assert not any(_in_range(c.encode_key(u), start, end) for u in [*users, b""])
        assert start >= c.end_key or (end and end <= c.prefix)
        return
    for u in [*users, b"", s, e]:
        assert _in_range(c.encode_key(u), start, end) == _in_range(u, s, e)


def test_parse_keyspace_id() -> None:
    # client-go TestParseKeyspaceID / TestDecodeKey.
    assert parse_keyspace_id(bytes([0x78, 1, 2, 3, 1, 2, 3])) == 0x010203
    assert parse_keyspace_id(bytes([0x72, 1, 2, 3, 1, 2, 3, 4])) == 0x010203
    assert split_keyspace_key(bytes([0x72, 1, 2, 3, 1, 2, 3, 4])) == (
        b"r\x01\x02\x03",
        b"\x01\x02\x03\x04",
    )
    assert split_keyspace_key(b"x\x00\x00\x01") == (b"x\x00\x00\x01", b"")
    with pytest.raises(CodecError, match="API v2"):
        parse_keyspace_id(b"t\x00\x00")
    with pytest.raises(CodecError, match="API v2"):
        parse_keyspace_id(b"t\x00\x00\x01\x01")
    assert list(V2_MODE_PREFIXES) == sorted(V2_MODE_PREFIXES)


@given(st.sampled_from(["raw", "txn"]), st.integers(0, 0xFFFFFF), st.binary(max_size=8))
def test_parse_keyspace_id_round_trip(mode: str, keyspace_id: int, key: bytes) -> None:
    c = KeyspaceCodec(mode, keyspace_id)  # type: ignore[arg-type]
    assert parse_keyspace_id(c.encode_key(key)) == keyspace_id
    assert split_keyspace_key(c.encode_key(key)) == (c.prefix, key)
