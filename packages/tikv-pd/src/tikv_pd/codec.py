"""Key encodings: TiDB's memcomparable bytes format and API v2 keyspace prefixes.

Memcomparable bytes (client-go ``util/codec/bytes.go``, shared with TiDB and TiKV): the
value is cut into 8-byte groups; each group is written in full (the last one padded with
``0x00``) followed by a marker byte ``0xFF - pad_count``. A value whose length is a
multiple of 8 ends with an all-padding group (marker ``0xF7``). Byte order of encodings
equals byte order of the values, and an encoding is self-delimiting, so a decoder returns
the value and the rest of the buffer. The descending variant inverts every byte.

Where it is used: with API v1, transactional region boundaries stored by PD are
memcomparable-encoded user keys (client-go's codec PD client encodes keys before asking PD
and decodes the boundaries it returns); raw region boundaries are plain. With API v2 every
key carries a 4-byte keyspace prefix, mode byte ``r`` (raw) or ``x`` (txn) followed by the
3-byte big-endian keyspace id, and region boundaries are the memcomparable encoding of the
prefixed keys in both modes (``internal/apicodec/codec_v2.go``).

Codecs: :class:`CodecV1` and :class:`KeyspaceCodec` (API v2) share the :class:`KeyCodec`
protocol used by the request layer: encode/decode keys and ranges sent to TiKV, and
encode/decode region boundaries exchanged with PD. Encoding is on the hot path of every
request, so it uses bytes operations rather than per-byte Python loops.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, Protocol, runtime_checkable

from tikv_pd.errors import CodecError, KeyOutOfKeyspaceError

__all__ = [
    "API_V1",
    "API_V2",
    "MAX_KEYSPACE_ID",
    "RAW_MODE_PREFIX",
    "TXN_MODE_PREFIX",
    "V2_MODE_PREFIXES",
    "BytesLike",
    "CodecMode",
    "CodecV1",
    "KeyCodec",
    "KeyspaceCodec",
    "decode_bytes",
    "decode_bytes_desc",
    "encode_bytes",
    "encode_bytes_desc",
    "keyspace_prefix",
    "make_codec",
    "next_key",
    "parse_keyspace_id",
    "prefix_next",
    "split_keyspace_key",
]

_GROUP = 8
_MARKER = 0xFF
#: ``_TAILS[r]`` closes an encoding whose last group holds ``r`` value bytes (0..7):
#: the zero padding and the marker ``0xFF - (8 - r)``.
_TAILS = tuple(bytes(_GROUP - r) + bytes((_MARKER - (_GROUP - r),)) for r in range(_GROUP))
_ZEROS = tuple(bytes(n) for n in range(_GROUP + 1))
_FULL_MARKER = b"\xff"
_INVERT = bytes(range(255, -1, -1))

#: kvrpcpb.APIVersion values.
API_V1 = 0
API_V2 = 2

#: Mode byte of raw keys in API v2.
RAW_MODE_PREFIX = b"r"
#: Mode byte of transactional keys in API v2.
TXN_MODE_PREFIX = b"x"
#: Keyspace ids are 24-bit (client-go ``codec_v2.go`` maxKeyspaceID).
MAX_KEYSPACE_ID = 0xFFFFFF

#: Byte sequences accepted by the memcomparable functions.
BytesLike = bytes | bytearray | memoryview

#: Which API a codec serves: raw KV or transactional KV.
CodecMode = Literal["raw", "txn"]


# ---------------------------------------------------------------------------------------
# Memcomparable bytes
# ---------------------------------------------------------------------------------------


def encode_bytes(data: BytesLike) -> bytes:
    """Encode ``data`` in memcomparable form (ascending).

    Args:
        data: Any bytes (bytearray and memoryview are accepted).

    Returns:
        ``ceil((len+1)/8) * 9`` bytes whose byte order equals the order of the inputs.

    """
    n = len(data)
    full = n - (n & 7)
    if full == 0:
        return bytes(data) + _TAILS[n]
    if full == _GROUP:
        return bytes(data[:8]) + _FULL_MARKER + bytes(data[8:]) + _TAILS[n - 8]
    groups = [data[i : i + _GROUP] for i in range(0, full, _GROUP)]
    groups.append(b"")
    return _FULL_MARKER.join(groups) + bytes(data[full:]) + _TAILS[n - full]


def _decode(buf: BytesLike) -> tuple[bytes, int]:
    """Decode one ascending memcomparable value; return it and the bytes consumed."""
    if type(buf) is not bytes:
        buf = bytes(buf)
    markers = buf[_GROUP :: _GROUP + 1]
    k = len(markers) - len(markers.lstrip(_FULL_MARKER))
    if k == len(markers):
        raise CodecError("insufficient bytes to decode value", bytes(buf))
    pad = _MARKER - markers[k]
    if pad > _GROUP:
        raise CodecError(f"invalid marker byte {markers[k]:#04x}", bytes(buf))
    last = (_GROUP + 1) * k
    real = _GROUP - pad
    if buf[last + real : last + _GROUP] != _ZEROS[pad]:
        raise CodecError("invalid padding bytes", bytes(buf))
    if k == 0:
        value = bytes(buf[:real])
    else:
        joined = bytearray(buf[: last + real])
        del joined[_GROUP :: _GROUP + 1]  # drop the 0xFF markers of the full groups
        value = bytes(joined)
    return value, last + _GROUP + 1


def decode_bytes(buf: BytesLike) -> tuple[bytes, bytes]:
    """Decode one memcomparable value from the start of ``buf``.

    Args:
        buf: Bytes that start with an encoded value.

    Returns:
        ``(value, rest)``: the decoded value and the bytes after its encoding.

    Raises:
        tikv_pd.errors.CodecError: ``buf`` ends before the value does, a marker byte is
            invalid, or padding bytes are not zero. It is also a ValueError.

    """
    value, used = _decode(buf)
    return value, bytes(buf[used:])


def encode_bytes_desc(data: BytesLike) -> bytes:
    """Encode ``data`` in descending memcomparable form (every byte inverted)."""
    return encode_bytes(data).translate(_INVERT)


def decode_bytes_desc(buf: BytesLike) -> tuple[bytes, bytes]:
    """Decode one descending memcomparable value; return ``(value, rest)``.

    Raises:
        tikv_pd.errors.CodecError: the encoding is malformed.

    """
    try:
        value, used = _decode(bytes(buf).translate(_INVERT))
    except CodecError as exc:
        raise CodecError(exc.reason, bytes(buf)) from None
    return value, bytes(buf[used:])


# ---------------------------------------------------------------------------------------
# Key helpers
# ---------------------------------------------------------------------------------------


def next_key(key: bytes) -> bytes:
    """Return the smallest key greater than ``key``: the key followed by one zero byte."""
    return bytes(key) + b"\x00"


def prefix_next(prefix: bytes) -> bytes:
    """Return the smallest key greater than every key starting with ``prefix``.

    Returns ``b""`` (meaning +infinity as an end key) when no such key exists, i.e. the
    prefix is empty or all ``0xFF``.
    """
    stripped = bytes(prefix).rstrip(b"\xff")
    if not stripped:
        return b""
    return stripped[:-1] + bytes((stripped[-1] + 1,))


def keyspace_prefix(mode: CodecMode, keyspace_id: int) -> bytes:
    """Return the 4-byte API v2 prefix of ``keyspace_id`` in ``mode``.

    Raises:
        ValueError: unknown mode or keyspace id outside ``[0, 0xFFFFFF]``.

    """
    if mode == "raw":
        head = RAW_MODE_PREFIX
    elif mode == "txn":
        head = TXN_MODE_PREFIX
    else:
        raise ValueError(f"codec mode must be 'raw' or 'txn', got {mode!r}")
    if isinstance(keyspace_id, bool) or not isinstance(keyspace_id, int):
        raise TypeError(f"keyspace_id must be an int, got {type(keyspace_id).__name__}")
    if not 0 <= keyspace_id <= MAX_KEYSPACE_ID:
        raise ValueError(f"keyspace_id {keyspace_id} is out of range, maximum is {MAX_KEYSPACE_ID}")
    return head + keyspace_id.to_bytes(3, "big")


#: The mode bytes API v2 reserves, sorted (client-go ``CodecV2Prefixes``). In a mixed
#: v1 + v2 deployment, v1 keys must not start with them.
V2_MODE_PREFIXES: tuple[bytes, ...] = (RAW_MODE_PREFIX, TXN_MODE_PREFIX)


def split_keyspace_key(key: bytes) -> tuple[bytes, bytes]:
    """Split an API v2 key into its 4-byte keyspace prefix and the user key.

    Raises:
        tikv_pd.errors.CodecError: ``key`` is shorter than 4 bytes or does not start
            with ``r`` or ``x``.

    """
    if len(key) < 4 or key[:1] not in V2_MODE_PREFIXES:
        raise CodecError("not an API v2 key (needs an 'r'/'x' keyspace prefix)", bytes(key))
    return bytes(key[:4]), bytes(key[4:])


def parse_keyspace_id(key: bytes) -> int:
    """Return the keyspace id of an API v2 key (client-go ``ParseKeyspaceID``).

    Raises:
        tikv_pd.errors.CodecError: not an API v2 key.

    """
    prefix, _ = split_keyspace_key(key)
    return int.from_bytes(prefix[1:], "big")


# ---------------------------------------------------------------------------------------
# Codecs
# ---------------------------------------------------------------------------------------


@runtime_checkable
class KeyCodec(Protocol):
    """What the request layer needs from a key codec (client-go ``apicodec.Codec``).

    *Keys* are what TiKV stores (the user key, plus the keyspace prefix in API v2).
    *Region keys* are region boundaries as PD stores them.
    """

    @property
    def api_version(self) -> int:
        """kvrpcpb.APIVersion value to put into every request context."""
        ...

    @property
    def keyspace_id(self) -> int | None:
        """The keyspace id (API v2), or ``None`` (API v1)."""
        ...

    @property
    def mode(self) -> CodecMode:
        """``"raw"`` or ``"txn"``."""
        ...

    def encode_key(self, key: bytes) -> bytes:
        """Map a user key to the key TiKV stores."""
        ...

    def encode_keys(self, keys: Iterable[bytes]) -> list[bytes]:
        """Map several user keys (for batch requests)."""
        ...

    def decode_key(self, key: bytes) -> bytes:
        """Map a stored key back to the user key."""
        ...

    def encode_range(
        self, start: bytes, end: bytes, *, reverse: bool = False
    ) -> tuple[bytes, bytes]:
        """Map a user range (empty end = unbounded) to a stored range."""
        ...

    def decode_range(self, start: bytes, end: bytes) -> tuple[bytes, bytes]:
        """Map a stored range back to user keys, clipped to the keyspace."""
        ...

    def encode_region_key(self, key: bytes) -> bytes:
        """Map a user key to the form PD uses for region boundaries."""
        ...

    def decode_region_key(self, key: bytes) -> bytes:
        """Map a region boundary from PD to a user key."""
        ...

    def encode_region_range(self, start: bytes, end: bytes) -> tuple[bytes, bytes]:
        """Map a user range to PD's region-boundary form."""
        ...

    def decode_region_range(self, start: bytes, end: bytes) -> tuple[bytes, bytes]:
        """Map region boundaries from PD to user keys, clipped to the keyspace."""
        ...


class CodecV1:
    """API v1 codec: keys are sent as they are.

    Transactional region boundaries in PD are memcomparable-encoded (TiDB's layout), raw
    region boundaries are plain (client-go ``internal/apicodec/codec_v1.go``).

    Args:
        mode: ``"raw"`` or ``"txn"``.

    """

    __slots__ = ("_mode",)

    def __init__(self, mode: CodecMode) -> None:
        if mode not in ("raw", "txn"):
            raise ValueError(f"codec mode must be 'raw' or 'txn', got {mode!r}")
        self._mode: CodecMode = mode

    @property
    def api_version(self) -> int:
        """``API_V1``."""
        return API_V1

    @property
    def keyspace_id(self) -> int | None:
        """Always ``None``: API v1 has no keyspaces."""
        return None

    @property
    def mode(self) -> CodecMode:
        """``"raw"`` or ``"txn"``."""
        return self._mode

    def encode_key(self, key: bytes) -> bytes:
        """Return ``key`` unchanged."""
        return key

    def encode_keys(self, keys: Iterable[bytes]) -> list[bytes]:
        """Return the keys unchanged, as a list."""
        return list(keys)

    def decode_key(self, key: bytes) -> bytes:
        """Return ``key`` unchanged."""
        return key

    def encode_range(
        self, start: bytes, end: bytes, *, reverse: bool = False
    ) -> tuple[bytes, bytes]:
        """Return the range unchanged."""
        return start, end

    def decode_range(self, start: bytes, end: bytes) -> tuple[bytes, bytes]:
        """Return the range unchanged."""
        return start, end

    def encode_region_key(self, key: bytes) -> bytes:
        """Memcomparable-encode in txn mode; unchanged in raw mode."""
        return encode_bytes(key) if self._mode == "txn" else key

    def decode_region_key(self, key: bytes) -> bytes:
        """Decode a region boundary; the empty boundary (-inf / +inf) stays empty.

        Raises:
            tikv_pd.errors.CodecError: a txn-mode boundary is not memcomparable.

        """
        if not key or self._mode == "raw":
            return key
        value, _ = _decode(key)
        return value

    def encode_region_range(self, start: bytes, end: bytes) -> tuple[bytes, bytes]:
        """Encode both boundaries; an empty end (+inf) stays empty."""
        return self.encode_region_key(start), (self.encode_region_key(end) if end else end)

    def decode_region_range(self, start: bytes, end: bytes) -> tuple[bytes, bytes]:
        """Decode both boundaries (see :meth:`decode_region_key`)."""
        return self.decode_region_key(start), self.decode_region_key(end)

    def __repr__(self) -> str:
        return f"CodecV1(mode={self._mode!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CodecV1) and other._mode == self._mode

    def __hash__(self) -> int:
        return hash(("v1", self._mode))


class KeyspaceCodec:
    """API v2 codec of one keyspace (client-go ``internal/apicodec/codec_v2.go``).

    Every key is prefixed with the 4-byte keyspace prefix. The keyspace spans
    ``[prefix, end)``, where ``end`` is the prefix read as a big-endian integer plus one;
    an empty user end key maps to ``end``. Region boundaries are the memcomparable
    encoding of prefixed keys; decoding clips them to the keyspace (a boundary before the
    keyspace becomes ``b""`` = -inf, one after it ``b""`` = +inf).

    Args:
        mode: ``"raw"`` or ``"txn"``.
        keyspace_id: The 24-bit keyspace id (0 is the default keyspace).

    Raises:
        ValueError: bad mode or keyspace id.

    """

    __slots__ = ("_enc_end", "_enc_prefix", "_end", "_keyspace_id", "_mode", "_prefix")

    def __init__(self, mode: CodecMode, keyspace_id: int) -> None:
        self._prefix = keyspace_prefix(mode, keyspace_id)
        self._mode: CodecMode = mode
        self._keyspace_id = keyspace_id
        self._end = (int.from_bytes(self._prefix, "big") + 1).to_bytes(4, "big")
        self._enc_prefix = encode_bytes(self._prefix)
        self._enc_end = encode_bytes(self._end)

    @property
    def api_version(self) -> int:
        """``API_V2``."""
        return API_V2

    @property
    def keyspace_id(self) -> int:
        """The keyspace id."""
        return self._keyspace_id

    @property
    def mode(self) -> CodecMode:
        """``"raw"`` or ``"txn"``."""
        return self._mode

    @property
    def prefix(self) -> bytes:
        """The 4-byte prefix of every key of this keyspace."""
        return self._prefix

    @property
    def end_key(self) -> bytes:
        """The first stored key after this keyspace (the next prefix)."""
        return self._end

    def encode_key(self, key: bytes) -> bytes:
        """Prefix ``key`` with the keyspace prefix."""
        return self._prefix + key

    def encode_keys(self, keys: Iterable[bytes]) -> list[bytes]:
        """Prefix every key."""
        prefix = self._prefix
        return [prefix + k for k in keys]

    def decode_key(self, key: bytes) -> bytes:
        """Strip the keyspace prefix.

        Raises:
            tikv_pd.errors.KeyOutOfKeyspaceError: ``key`` is not in this keyspace.

        """
        if not key.startswith(self._prefix):
            raise KeyOutOfKeyspaceError(bytes(key), self._keyspace_id, self._mode)
        return key[4:]

    def encode_range(
        self, start: bytes, end: bytes, *, reverse: bool = False
    ) -> tuple[bytes, bytes]:
        """Prefix a user range; an empty end becomes the keyspace's end.

        For a reverse scan TiKV's ``start_key`` is the upper bound and ``end_key`` the
        lower one: with ``reverse=True`` an empty *start* maps to the keyspace end.
        """
        if reverse:
            lower, upper = self.encode_range(end, start)
            return upper, lower
        return self._prefix + start, (self._prefix + end if end else self._end)

    def decode_range(self, start: bytes, end: bytes) -> tuple[bytes, bytes]:
        """Map a stored range back to user keys, clipped to the keyspace.

        A start before the keyspace becomes ``b""``; an end at or after the keyspace end
        becomes ``b""`` (unbounded).

        Raises:
            tikv_pd.errors.KeyOutOfKeyspaceError: the range does not intersect the
                keyspace.

        """
        if start >= self._end:
            raise KeyOutOfKeyspaceError(bytes(start), self._keyspace_id, self._mode)
        if end and end <= self._prefix:
            raise KeyOutOfKeyspaceError(bytes(end), self._keyspace_id, self._mode)
        prefix = self._prefix
        user_start = start[4:] if start.startswith(prefix) else b""
        user_end = end[4:] if end.startswith(prefix) else b""
        return bytes(user_start), bytes(user_end)

    def encode_region_key(self, key: bytes) -> bytes:
        """Prefix and memcomparable-encode ``key``."""
        return encode_bytes(self._prefix + key)

    def decode_region_key(self, key: bytes) -> bytes:
        """Decode a region boundary that lies inside the keyspace.

        Raises:
            tikv_pd.errors.CodecError: not memcomparable.
            tikv_pd.errors.KeyOutOfKeyspaceError: outside the keyspace.

        """
        value, _ = _decode(key)
        return self.decode_key(value)

    def encode_region_range(self, start: bytes, end: bytes) -> tuple[bytes, bytes]:
        """Encode a user range for PD: prefixed (empty end = keyspace end), memcomparable."""
        enc_start = encode_bytes(self._prefix + start) if start else self._enc_prefix
        enc_end = encode_bytes(self._prefix + end) if end else self._enc_end
        return enc_start, enc_end

    def decode_region_range(self, start: bytes, end: bytes) -> tuple[bytes, bytes]:
        """Decode region boundaries from PD to user keys, clipped to the keyspace.

        Raises:
            tikv_pd.errors.CodecError: a boundary is not memcomparable.
            tikv_pd.errors.KeyOutOfKeyspaceError: the region does not intersect the
                keyspace.

        """
        raw_start = _decode(start)[0] if start else b""
        raw_end = _decode(end)[0] if end else b""
        return self.decode_range(raw_start, raw_end)

    def __repr__(self) -> str:
        return f"KeyspaceCodec(mode={self._mode!r}, keyspace_id={self._keyspace_id})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, KeyspaceCodec)
            and other._mode == self._mode
            and other._keyspace_id == self._keyspace_id
        )

    def __hash__(self) -> int:
        return hash(("v2", self._mode, self._keyspace_id))


def make_codec(
    api_version: int, mode: CodecMode, keyspace_id: int | None = None
) -> CodecV1 | KeyspaceCodec:
    """Build the codec for an API version.

    Args:
        api_version: ``API_V1`` (0; 1 is accepted too: kvrpcpb's V1TTL is a server
            storage format that clients address as v1) or ``API_V2`` (2).
        mode: ``"raw"`` or ``"txn"``.
        keyspace_id: Required for API v2 (0 = default keyspace); must be ``None`` for v1.

    Raises:
        ValueError: unsupported version, or a keyspace id with v1 / missing with v2.

    """
    if api_version in (API_V1, 1):
        if keyspace_id is not None:
            raise ValueError("keyspaces need API v2; got a keyspace_id with API v1")
        return CodecV1(mode)
    if api_version == API_V2:
        if keyspace_id is None:
            raise ValueError("API v2 needs a keyspace_id (0 is the default keyspace)")
        return KeyspaceCodec(mode, keyspace_id)
    raise ValueError(f"unsupported API version {api_version}: use 0 or 1 for API v1, 2 for API v2")
