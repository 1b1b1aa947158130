"""Batching rules for raw batch commands (pure).

client-go splits the keys of one region into several RPCs so that no request grows
unbounded (``rawkv/rawkv.go``): at most 512 keys per ``RawBatchGet`` / ``RawBatchDelete``
(``rawBatchPairCount``) and about 16 KiB of keys plus values per ``RawBatchPut``
(``rawBatchPutSize``). client-go's size rule closes a batch only once it has reached the
limit, so a batch may overshoot by one pair; here a batch never exceeds the limit, except
that a single pair larger than the limit travels alone (it cannot be split).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, TypeVar

__all__ = [
    "RAW_BATCH_PAIR_COUNT",
    "RAW_BATCH_PUT_SIZE",
    "pair_size",
    "split_by_count",
    "split_by_size",
]

#: client-go ``rawBatchPairCount``: keys per raw batch get / delete RPC.
RAW_BATCH_PAIR_COUNT: Final = 512
#: client-go ``rawBatchPutSize``: bytes of keys + values per raw batch put RPC.
RAW_BATCH_PUT_SIZE: Final = 16 * 1024

T = TypeVar("T")


def split_by_count(items: Sequence[T], max_count: int) -> list[list[T]]:
    """Split ``items`` into consecutive chunks of at most ``max_count`` items.

    Example:
        >>> split_by_count([1, 2, 3, 4, 5], 2)
        [[1, 2], [3, 4], [5]]

    """
    if max_count < 1:
        raise ValueError(f"max_count must be >= 1, got {max_count}")
    return [list(items[i : i + max_count]) for i in range(0, len(items), max_count)]


def pair_size(pair: tuple[bytes, bytes]) -> int:
    """The size a pair counts for in a batch put: key length plus value length."""
    return len(pair[0]) + len(pair[1])


def split_by_size(
    pairs: Sequence[tuple[bytes, bytes]], max_bytes: int
) -> list[list[tuple[bytes, bytes]]]:
    """Split pairs into consecutive chunks whose key + value bytes stay within ``max_bytes``.

    A pair that alone exceeds ``max_bytes`` forms a chunk of its own.

    Example:
        >>> split_by_size([(b"a", b"12"), (b"b", b"34"), (b"c", b"5678")], 6)
        [[(b'a', b'12'), (b'b', b'34')], [(b'c', b'5678')]]

    """
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
    chunks: list[list[tuple[bytes, bytes]]] = []
    current: list[tuple[bytes, bytes]] = []
    size = 0
    for pair in pairs:
        n = pair_size(pair)
        if current and size + n > max_bytes:
            chunks.append(current)
            current, size = [], 0
        current.append(pair)
        size += n
    if current:
        chunks.append(current)
    return chunks
