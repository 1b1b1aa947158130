"""Memcomparable encoding of byte strings, as TiKV stores transactional keys.

TiKV keeps a transactional key ``k`` under ``Key::from_raw(k)``: ``k`` cut into 8-byte groups,
each group padded with zero bytes and followed by a marker byte ``0xFF - padding`` (so the
last, partial group ends with a marker below ``0xFF``). The encoding preserves byte order, which
is why PD region boundaries for transactional data are encoded keys (TiKV
``components/tikv_util/src/codec/bytes.rs``; client-go ``util/codec/bytes.go``).

``tikv-mockstore`` depends only on ``tikv-proto``, so it carries its own small copy.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["decode_bytes", "decode_bytes_lenient", "encode_bytes"]

_GROUP = 8
_MARKER = 0xFF
_PAD = b"\x00" * _GROUP


def encode_bytes(key: bytes) -> bytes:
    """Return the memcomparable encoding of ``key``."""
    if not isinstance(key, bytes | bytearray):
        raise TypeError(f"key must be bytes, not {type(key).__name__}")
    out = bytearray()
    for i in range(0, len(key) + 1, _GROUP):
        chunk = bytes(key[i : i + _GROUP])
        pad = _GROUP - len(chunk)
        out += chunk
        out += _PAD[:pad]
        out.append(_MARKER - pad)
    return bytes(out)


def decode_bytes(data: bytes) -> tuple[bytes, bytes]:
    """Decode one memcomparable-encoded key from the front of ``data``.

    Returns ``(key, rest)``. Raises :class:`ValueError` if ``data`` is not a valid encoding.
    """
    out = bytearray()
    pos = 0
    while True:
        group = data[pos : pos + _GROUP + 1]
        if len(group) < _GROUP + 1:
            raise ValueError(f"memcomparable key truncated at offset {pos}")
        marker = group[_GROUP]
        pad = _MARKER - marker
        if pad > _GROUP:
            raise ValueError(f"invalid memcomparable marker {marker:#x} at offset {pos}")
        real = _GROUP - pad
        if group[real:_GROUP] != _PAD[:pad]:
            raise ValueError(f"invalid memcomparable padding at offset {pos}")
        out += group[:real]
        pos += _GROUP + 1
        if pad:
            return bytes(out), data[pos:]


def _first_group(suffix: bytes) -> bytes:
    """The first encoded group of a key whose remaining bytes are ``suffix``."""
    if len(suffix) >= _GROUP:
        return suffix[:_GROUP] + b"\xff"
    pad = _GROUP - len(suffix)
    return suffix + _PAD[:pad] + bytes([_MARKER - pad])


def _min_suffix(ok: Callable[[bytes], bool]) -> bytes:
    """The smallest byte string whose first encoded group satisfies ``ok`` (a monotonic test)."""
    suffix = b""
    while not ok(_first_group(suffix)):
        for byte in range(256):
            candidate = suffix + bytes([byte])
            # The largest first group among keys starting with ``candidate``.
            if ok(_first_group(candidate + b"\xff" * _GROUP)):
                suffix = candidate
                break
        else:  # pragma: no cover - a group of 0xFF bytes satisfies every test used here
            raise AssertionError("no suffix satisfies the boundary test")
    return suffix


def decode_bytes_lenient(boundary: bytes) -> bytes:
    """Map a region boundary to the user-key space: the least ``k`` with ``enc(k) >= boundary``.

    For a valid encoding this is the decoded key. A boundary that is not an encoded key (a raw
    split key in a transactional key space, or an encoded key with a suffix) still splits the
    user keys exactly: ``encode_bytes(k) >= boundary`` if and only if ``k >= result``.
    """
    prefix = bytearray()
    pos = 0
    while True:
        chunk = boundary[pos : pos + _GROUP + 1]
        if len(chunk) == _GROUP + 1 and chunk[_GROUP] == _MARKER:
            # A full group of a longer key: every key at or above the boundary starts with it.
            prefix += chunk[:_GROUP]
            pos += _GROUP + 1
            continue
        more = len(boundary) > pos + _GROUP + 1
        return bytes(prefix) + _min_suffix(_group_test(chunk, more))


def _group_test(chunk: bytes, more: bool) -> Callable[[bytes], bool]:
    """The test a key's next encoded group must pass to sort at or above ``chunk`` (+ more)."""
    if len(chunk) == _GROUP + 1:
        if more:
            return lambda g: g > chunk
        return lambda g: g >= chunk
    return lambda g: g[: len(chunk)] >= chunk
