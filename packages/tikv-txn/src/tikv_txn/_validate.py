"""Argument checks of the transactional API, run before anything is sent.

Keys and values are :class:`bytes` (``str`` is refused: TiKV stores bytes and an implicit
encoding would hide bugs). Range ends are exclusive; ``None`` means "to the end of the key
space" (an empty ``end`` is read the same way, as TiKV does); ``start > end`` is refused.
Scan limits are positive ints.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["check_key", "check_keys", "check_limit", "check_range", "check_value"]


def check_key(key: object, name: str = "key") -> bytes:
    """Return ``key`` if it is bytes, else raise TypeError."""
    if not isinstance(key, bytes):
        raise TypeError(f"{name} must be bytes, got {type(key).__name__}")
    return key


def check_value(value: object) -> bytes:
    """Return ``value`` if it is non-empty bytes.

    TiKV's transactional storage cannot keep an empty value apart from a deletion
    (client-go ``ErrCannotSetNilValue``), so ``b""`` is refused: use ``delete``.
    """
    if not isinstance(value, bytes):
        raise TypeError(f"value must be bytes, got {type(value).__name__}")
    if not value:
        raise ValueError("value must not be empty (a transaction cannot store b''; use delete)")
    return value


def check_keys(keys: object) -> list[bytes]:
    """Return ``keys`` (an iterable of bytes, not bytes itself) deduplicated, in order."""
    if isinstance(keys, bytes | str) or not isinstance(keys, Iterable):
        raise TypeError(f"keys must be an iterable of bytes, got {type(keys).__name__}")
    out: dict[bytes, None] = {}
    for k in keys:
        out[check_key(k, "every key")] = None
    return list(out)


def check_limit(limit: object) -> int:
    """Return ``limit`` if it is a positive int."""
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(f"limit must be an int, got {type(limit).__name__}")
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    return limit


def check_range(start: object, end: object) -> tuple[bytes, bytes]:
    """Return ``(start, end)`` with ``end=b""`` for "unbounded"; refuse ``start > end``."""
    lo = check_key(start, "start")
    if end is None:
        return lo, b""
    hi = check_key(end, "end")
    if hi and lo > hi:
        raise ValueError(f"start must not be greater than end (start={lo!r}, end={hi!r})")
    return lo, hi
