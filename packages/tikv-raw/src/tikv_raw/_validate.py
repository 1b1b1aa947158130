"""Input validation for the raw client: pure functions, run before anything is sent.

Every public method of :class:`tikv_raw.AsyncRawClient` (and so of the sync facade) checks
its arguments here first. Bad input raises :class:`TypeError` (wrong type) or
:class:`ValueError` (a value TiKV would reject, or that cannot mean what the caller wants)
with a message naming the argument, so that a mistake never turns into a half-applied
batch or a confusing server error.

Rules and the TiKV behaviour behind them:

* Keys and values are :class:`bytes`. ``bytearray`` / ``memoryview`` are copied to bytes;
  ``str`` is refused (TiKV stores bytes; an implicit encoding would hide bugs).
* Empty keys are legal point keys: TiKV's raw storage accepts ``b""`` (it is the smallest
  key, in the first region). Empty values are legal too (TiKV keeps them apart from
  "not found").
* Range ends are exclusive and ``None`` means "to the end of the key space". client-go
  treats an empty end key as unbounded; here ``end=b""`` is refused, because in Python it
  reads as "before every key" and would silently select nothing.
* ``start > end`` is refused for every ranged call; ``start == end`` is refused where the
  call would otherwise do nothing while looking like it did something (delete_range,
  checksum), and yields an empty result for reads.
* Scan limits are ``1 ..= 10240`` (client-go ``MaxRawKVScanLimit``; a larger limit is
  refused rather than silently truncated).
* TTLs are whole seconds, ``>= 1`` (TiKV reads a TTL of 0 as "no TTL", so ``ttl=0``
  would silently mean "keep forever"; pass ``None`` for that). They must fit TiKV's u64.
* Column families: TiKV's raw API v1 knows ``default``, ``lock`` and ``write``; API v2
  refuses an explicit column family (TiKV ``CfDeprecated``).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from typing import Final

__all__ = [
    "MAX_RAW_SCAN_LIMIT",
    "MAX_U64",
    "RAW_COLUMN_FAMILIES",
    "check_bool",
    "check_cf",
    "check_key",
    "check_keys",
    "check_limit",
    "check_pairs",
    "check_range",
    "check_ttl",
    "check_ttls",
    "check_value",
    "prefix_end",
    "prefix_range",
]

#: client-go ``rawkv.MaxRawKVScanLimit``: the largest ``limit`` of one raw scan.
MAX_RAW_SCAN_LIMIT: Final = 10240
#: Largest value of a protobuf ``uint64`` field (TTLs are u64 seconds in TiKV).
MAX_U64: Final = 2**64 - 1
#: Column families TiKV's raw API v1 accepts (``Storage::rawkv_cf``).
RAW_COLUMN_FAMILIES: Final = ("default", "lock", "write")


def _type_name(value: object) -> str:
    return type(value).__name__


def check_key(key: object, name: str = "key") -> bytes:
    """Return ``key`` as :class:`bytes`, or raise if it is not bytes-like.

    Args:
        key: The key given by the caller.
        name: The argument name used in the error message.

    Raises:
        TypeError: ``key`` is not ``bytes`` / ``bytearray`` / ``memoryview`` (a ``str``
            gets a hint to encode it).

    Example:
        >>> check_key(b"k")
        b'k'

    """
    if isinstance(key, bytes):
        return key
    if isinstance(key, bytearray | memoryview):
        return bytes(key)
    if isinstance(key, str):
        raise TypeError(f"{name} must be bytes, got str {key!r}; encode it, e.g. {name}.encode()")
    raise TypeError(f"{name} must be bytes, got {_type_name(key)}")


def check_value(value: object, name: str = "value") -> bytes:
    """Return ``value`` as :class:`bytes` (empty allowed), or raise :class:`TypeError`."""
    return check_key(value, name)


def check_keys(keys: object, name: str = "keys") -> list[bytes]:
    """Validate an iterable of keys; return them de-duplicated in first-seen order.

    Raises:
        TypeError: ``keys`` is a single bytes/str object or not iterable, or an element
            is not bytes.

    """
    if isinstance(keys, bytes | bytearray | memoryview | str):
        raise TypeError(
            f"{name} must be an iterable of bytes keys, got a single {_type_name(keys)}"
        )
    if not isinstance(keys, Iterable):
        raise TypeError(f"{name} must be an iterable of bytes keys, got {_type_name(keys)}")
    seen: dict[bytes, None] = {}
    for i, key in enumerate(keys):
        seen[check_key(key, f"{name}[{i}]")] = None
    return list(seen)


def check_pairs(pairs: object, name: str = "pairs") -> dict[bytes, bytes]:
    """Validate key/value pairs (a mapping or an iterable of 2-tuples).

    Later duplicates win, as with :class:`dict`: the batch is sent as concurrent RPCs per
    region, so two writes of one key in one call would otherwise race.

    Raises:
        TypeError: Not a mapping / iterable of pairs, or a key or value is not bytes.
        ValueError: An element is not a 2-item pair.

    """
    items: Iterable[object]
    if isinstance(pairs, Mapping):
        items = pairs.items()
    elif isinstance(pairs, bytes | bytearray | memoryview | str) or not isinstance(pairs, Iterable):
        raise TypeError(
            f"{name} must be a mapping of bytes to bytes or an iterable of (key, value) "
            f"pairs, got {_type_name(pairs)}"
        )
    else:
        items = pairs
    out: dict[bytes, bytes] = {}
    for i, item in enumerate(items):
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise ValueError(f"{name}[{i}] must be a (key, value) pair, got {item!r}")
        key = check_key(item[0], f"{name}[{i}] key")
        out[key] = check_value(item[1], f"{name}[{i}] value")
    return out


def check_bool(value: object, name: str) -> bool:
    """Return ``value`` if it is a :class:`bool`, else raise :class:`TypeError`."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {_type_name(value)}")
    return value


def check_ttl(ttl: object, name: str = "ttl") -> int:
    """Convert a TTL argument to whole seconds for the wire; ``None`` becomes 0 (no TTL).

    Accepts an :class:`int` or a :class:`datetime.timedelta` of whole seconds.

    Raises:
        TypeError: Not an int / timedelta / None (``bool`` and ``float`` are refused).
        ValueError: Not positive, fractional, or larger than TiKV's u64.

    Example:
        >>> check_ttl(30), check_ttl(None), check_ttl(datetime.timedelta(minutes=1))
        (30, 0, 60)

    """
    if ttl is None:
        return 0
    if isinstance(ttl, datetime.timedelta):
        seconds = ttl.total_seconds()
        if seconds != int(seconds):
            raise ValueError(f"{name} must be whole seconds, got {ttl!r}")
        value = int(seconds)
    elif isinstance(ttl, int) and not isinstance(ttl, bool):
        value = ttl
    else:
        raise TypeError(
            f"{name} must be an int number of seconds, a timedelta or None, got {_type_name(ttl)}"
        )
    if value < 1:
        raise ValueError(
            f"{name} must be at least 1 second, got {value} (TiKV reads 0 as 'no TTL'; "
            f"pass None for a key that never expires)"
        )
    if value > MAX_U64:
        raise ValueError(f"{name} must fit in 64 bits, got {value}")
    return value


def check_ttls(ttls: object, keys: Iterable[bytes], default: int) -> dict[bytes, int]:
    """Resolve per-key TTLs of a batch put: ``key -> seconds`` (0 = no TTL).

    Args:
        ttls: ``None`` or a mapping of key to TTL (int / timedelta / None); every key of
            the mapping must be one of ``keys``.
        keys: The keys being written.
        default: The wire TTL of keys absent from ``ttls`` (from the ``ttl`` argument).

    Raises:
        TypeError: ``ttls`` is not a mapping, or a TTL has the wrong type.
        ValueError: A TTL is invalid, or ``ttls`` names a key that is not written.

    """
    key_list = list(keys)
    if ttls is None:
        return dict.fromkeys(key_list, default)
    if not isinstance(ttls, Mapping):
        raise TypeError(f"ttls must be a mapping of key to TTL seconds, got {_type_name(ttls)}")
    out = dict.fromkeys(key_list, default)
    for raw_key, raw_ttl in ttls.items():
        key = check_key(raw_key, "ttls key")
        if key not in out:
            raise ValueError(f"ttls names key {key!r}, which is not in the pairs being written")
        out[key] = check_ttl(raw_ttl, f"ttls[{key!r}]")
    return out


def check_limit(limit: object, name: str = "limit", maximum: int = MAX_RAW_SCAN_LIMIT) -> int:
    """Validate a scan limit: an int in ``1 ..= maximum``.

    Raises:
        TypeError: Not an int.
        ValueError: Out of range (the message names TiKV's / client-go's maximum).

    """
    if not isinstance(limit, int) or isinstance(limit, bool):
        raise TypeError(f"{name} must be an int, got {_type_name(limit)}")
    if limit < 1 or limit > maximum:
        raise ValueError(
            f"{name} must be between 1 and {maximum} (the raw scan limit), got {limit}; "
            f"use scan_iter() to read more"
        )
    return limit


def check_range(
    start: object, end: object, *, allow_empty: bool = True
) -> tuple[bytes, bytes | None]:
    """Validate a ``[start, end)`` range; ``end=None`` means unbounded.

    Args:
        start: Inclusive lower bound (``b""`` = from the first key).
        end: Exclusive upper bound, or ``None`` for no upper bound.
        allow_empty: Whether ``start == end`` is acceptable (reads: yes, an empty
            result; delete_range / checksum: no).

    Raises:
        TypeError: A bound is not bytes.
        ValueError: ``end == b""``, ``start > end``, or an empty range when refused.

    """
    start_b = check_key(start, "start")
    if end is None:
        return start_b, None
    end_b = check_key(end, "end")
    if end_b == b"":
        raise ValueError(
            "end=b'' is before every key, so the range would be empty; pass end=None for "
            "a range with no upper bound"
        )
    if start_b > end_b:
        raise ValueError(f"start must not be greater than end, got start={start_b!r} end={end_b!r}")
    if start_b == end_b and not allow_empty:
        raise ValueError(f"the range [{start_b!r}, {end_b!r}) is empty")
    return start_b, end_b


def check_cf(cf: object, api_version: int) -> str:
    """Validate a column family name for the given API version; return the wire value.

    In API v1 the result is the name (``"default"`` is sent as ``""``, TiKV's own
    default, so that requests look like client-go's). In API v2 only the default column
    family exists and ``""`` is returned.

    Raises:
        TypeError: ``cf`` is not a str.
        ValueError: Unknown column family, or a non-default one in API v2.

    """
    if not isinstance(cf, str):
        raise TypeError(f"cf must be a str, got {_type_name(cf)}")
    name = cf or "default"
    if name not in RAW_COLUMN_FAMILIES:
        raise ValueError(f"cf must be one of {list(RAW_COLUMN_FAMILIES)}, got {cf!r}")
    if api_version == 2 and name != "default":
        raise ValueError(
            f"API v2 has no column families other than 'default' (TiKV refuses cf={cf!r})"
        )
    return "" if name == "default" else name


def prefix_end(prefix: bytes) -> bytes | None:
    r"""The smallest key greater than every key starting with ``prefix``.

    ``None`` when there is none (the prefix is empty or all ``0xff``), i.e. the range
    of the prefix runs to the end of the key space.

    Example:
        >>> prefix_end(b"ab"), prefix_end(b"a\xff"), prefix_end(b"\xff")
        (b'ac', b'b', None)

    """
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return None
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


def prefix_range(prefix: bytes) -> tuple[bytes, bytes | None]:
    r"""The ``(start, end)`` range of the keys that start with ``prefix``, for ranged calls.

    Example:
        >>> prefix_range(b"user:")
        (b'user:', b'user;')
        >>> client.scan(*prefix_range(b"user:"), limit=100)  # doctest: +SKIP

    """
    p = check_key(prefix, "prefix")
    return p, prefix_end(p)
