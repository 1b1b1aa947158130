"""Memcomparable encoding used for transactional region boundaries."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tikv_mockstore._codec import decode_bytes, decode_bytes_lenient, encode_bytes
from tikv_mockstore.cluster import Region


def test_known_encoding_matches_the_wire() -> None:
    # tikv-client sends region_key=b'tk1\x00\x00\x00\x00\x00\xfa' for b"tk1".
    assert encode_bytes(b"tk1") == b"tk1\x00\x00\x00\x00\x00\xfa"
    assert encode_bytes(b"") == b"\x00" * 8 + b"\xf7"
    assert encode_bytes(b"12345678") == b"12345678\xff" + b"\x00" * 8 + b"\xf7"


@given(st.binary(max_size=40))
def test_roundtrip(key: bytes) -> None:
    assert decode_bytes(encode_bytes(key) + b"rest") == (key, b"rest")


@given(st.binary(max_size=20), st.binary(max_size=20))
def test_order_is_preserved(a: bytes, b: bytes) -> None:
    assert (a < b) == (encode_bytes(a) < encode_bytes(b))


@pytest.mark.parametrize("bad", [b"", b"abc", b"12345678\x00", b"1234567\x01\xfe"])
def test_invalid_encodings_raise(bad: bytes) -> None:
    with pytest.raises(ValueError, match="memcomparable"):
        decode_bytes(bad)


def test_encode_rejects_str() -> None:
    with pytest.raises(TypeError, match="bytes"):
        encode_bytes("abc")  # type: ignore[arg-type]


_small = st.binary(max_size=12).map(lambda b: bytes(x % 4 if x < 128 else 255 - x % 4 for x in b))


@given(st.one_of(_small, _small.map(encode_bytes)), st.lists(_small, max_size=30))
def test_lenient_decode_splits_user_keys_exactly(boundary: bytes, keys: list[bytes]) -> None:
    cut = decode_bytes_lenient(boundary)
    for key in keys:
        assert (encode_bytes(key) >= boundary) == (key >= cut)


def test_lenient_decode_of_valid_encoding_is_the_key() -> None:
    assert decode_bytes_lenient(encode_bytes(b"m")) == b"m"
    assert decode_bytes_lenient(b"") == b""


_BOUNDARY = st.one_of(
    st.binary(max_size=12),  # raw split keys, usually not valid encodings
    st.binary(max_size=12).map(encode_bytes),  # transactional split keys
    st.binary(max_size=12).map(lambda k: encode_bytes(k) + b"\x01"),  # encoded plus a suffix
)


@given(_BOUNDARY, _BOUNDARY, st.binary(max_size=14))
def test_region_user_bounds_match_encoded_checks(lo: bytes, hi: bytes, key: bytes) -> None:
    # The region check compares user keys against the decoded bounds instead of encoding
    # every key: it must give the encoded comparison's answer for every key and boundary.
    if hi and hi <= lo:
        lo, hi = hi, lo
    region = Region(1, lo, hi, 1, 1, (), 0)
    enc = encode_bytes(key)
    assert region.contains_user(key) == region.contains(enc)
    inclusive = enc >= lo and (not hi or enc <= hi)
    assert region.contains_user_inclusive(key) == inclusive
    for bound in (lo, hi):  # the boundary's own user key, the edge case
        if bound:
            user = decode_bytes_lenient(bound)
            assert region.contains_user(user) == region.contains(encode_bytes(user))
