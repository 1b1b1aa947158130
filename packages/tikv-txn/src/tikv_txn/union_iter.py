"""Merge iteration of the transaction's write buffer over a snapshot.

A transaction's ``scan`` must show what the transaction itself wrote on top of what its
snapshot (the data committed before its start ts) holds. This is client-go's
``UnionIter`` (``internal/unionstore/union_iter.go``):

* keys are produced in order (ascending, or descending when ``reverse``);
* a key present in both sources yields the buffered value (the transaction's write
  wins);
* a buffered deletion (:data:`~tikv_txn.membuffer.TOMBSTONE`) hides the snapshot's key,
  and a deletion of a key the snapshot does not have yields nothing;
* everything is bounded by ``[start, end)``.

Both sources are consumed lazily, one item at a time, so a snapshot that fetches pages
from TiKV only fetches what the caller reads. :func:`union_iter` takes a synchronous
snapshot iterable; :func:`union_aiter` takes an asynchronous one (or a synchronous one)
and is an async generator. Both check that each source really is ordered and raise
``ValueError`` otherwise, since a mis-ordered source would silently produce wrong
results.
"""

from __future__ import annotations

from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Generator,
    Iterable,
    Iterator,
)
from typing import Any

from tikv_txn.membuffer import TOMBSTONE, MemBuffer, Tombstone

__all__ = ["DirtySource", "union_aiter", "union_iter"]

#: What the buffer side of the merge can be: a :class:`MemBuffer` (iterated within the
#: bounds) or any iterable of ``(key, value-or-TOMBSTONE)`` pairs in scan order.
DirtySource = MemBuffer | Iterable[tuple[bytes, bytes | Tombstone]]


def _bounds(start: bytes | None, end: bytes | None) -> tuple[bytes, bytes | None]:
    if start is not None and not isinstance(start, bytes):
        raise TypeError(f"start must be bytes or None, got {type(start).__name__}")
    if end is not None and not isinstance(end, bytes):
        raise TypeError(f"end must be bytes or None, got {type(end).__name__}")
    # TiKV reads an empty end key as "no upper bound"; an empty start is the minimum.
    return start or b"", end or None


def _dirty_iter(
    dirty: DirtySource, lo: bytes, hi: bytes | None, reverse: bool
) -> Iterator[tuple[bytes, bytes | Tombstone]]:
    if isinstance(dirty, MemBuffer):
        # Already bounded and ordered by construction.
        return dirty.iterate(lo, hi, reverse=reverse)
    return _clip(iter(dirty), lo, hi, reverse, "buffer")


def _clip(
    source: Iterator[tuple[bytes, Any]], lo: bytes, hi: bytes | None, reverse: bool, name: str
) -> Iterator[tuple[bytes, Any]]:
    """Keep the items of ``source`` inside ``[lo, hi)``, checking their order."""
    last: bytes | None = None
    for item in source:
        key = item[0]
        if last is not None and (key <= last if not reverse else key >= last):
            order = "descending" if reverse else "ascending"
            raise ValueError(
                f"{name} source is not in strictly {order} key order: {key!r} after {last!r}"
            )
        last = key
        if reverse:
            if hi is not None and key >= hi:
                continue
            if key < lo:
                return
        else:
            if key < lo:
                continue
            if hi is not None and key >= hi:
                return
        yield item


def _close(source: object) -> None:
    close = getattr(source, "close", None)
    if callable(close):
        close()


def union_iter(
    dirty: DirtySource,
    snapshot: Iterable[tuple[bytes, bytes]],
    *,
    start: bytes | None = None,
    end: bytes | None = None,
    reverse: bool = False,
) -> Generator[tuple[bytes, bytes], None, None]:
    """Yield the transaction's view of ``[start, end)``: buffered writes over a snapshot.

    Args:
        dirty: The write buffer, or an ordered iterable of ``(key, value)`` pairs where
            a value may be :data:`~tikv_txn.membuffer.TOMBSTONE`.
        snapshot: An iterable of committed ``(key, value)`` pairs in scan order
            (ascending, or descending when ``reverse``).
        start: Inclusive lower bound; ``None`` or ``b""`` for none.
        end: Exclusive upper bound; ``None`` or ``b""`` for none.
        reverse: Produce descending keys; both sources must then be descending.

    Yields:
        ``(key, value)`` pairs, never a tombstone.

    Raises:
        TypeError: A bound is not bytes.
        ValueError: A source is not strictly ordered in the scan direction.

    """
    # Arguments are checked here, at the call, not at the first next().
    lo, hi = _bounds(start, end)
    snap_src = iter(snapshot)
    d_it = _dirty_iter(dirty, lo, hi, reverse)
    return _merge(d_it, snap_src, lo, hi, reverse)


def _merge(
    d_it: Iterator[tuple[bytes, bytes | Tombstone]],
    snap_src: Iterator[tuple[bytes, bytes]],
    lo: bytes,
    hi: bytes | None,
    reverse: bool,
) -> Generator[tuple[bytes, bytes], None, None]:
    s_it = _clip(snap_src, lo, hi, reverse, "snapshot")
    try:
        d = next(d_it, None)
        s = next(s_it, None)
        while d is not None or s is not None:
            if s is None or (d is not None and d[0] == s[0]):
                # Only the buffer has this key, or both do and the buffer wins.
                assert d is not None
                value = d[1]
                if value is not TOMBSTONE:
                    yield d[0], value
                if s is not None:
                    s = next(s_it, None)
                d = next(d_it, None)
            elif d is None or ((d[0] > s[0]) if not reverse else (d[0] < s[0])):
                yield s
                s = next(s_it, None)
            else:
                value = d[1]
                # A deletion of a key the snapshot lacks: nothing to hide (client-go
                # logs "delete a record not exists?" and skips it).
                if value is not TOMBSTONE:
                    yield d[0], value
                d = next(d_it, None)
    finally:
        _close(snap_src)


def union_aiter(
    dirty: DirtySource,
    snapshot: AsyncIterable[tuple[bytes, bytes]] | Iterable[tuple[bytes, bytes]],
    *,
    start: bytes | None = None,
    end: bytes | None = None,
    reverse: bool = False,
) -> AsyncGenerator[tuple[bytes, bytes], None]:
    """Async version of :func:`union_iter` over an asynchronous snapshot source.

    The snapshot is awaited one item at a time; closing this generator early (``break``
    out of ``async for`` and ``aclose()``) closes the snapshot source too, so a paged
    scan stops fetching.

    Args:
        dirty: The write buffer or an ordered iterable of buffered pairs.
        snapshot: An async iterable (or a plain iterable) of committed pairs in scan
            order.
        start: Inclusive lower bound; ``None`` or ``b""`` for none.
        end: Exclusive upper bound; ``None`` or ``b""`` for none.
        reverse: Produce descending keys.

    Yields:
        ``(key, value)`` pairs, never a tombstone.

    Raises:
        TypeError: A bound is not bytes, or ``snapshot`` is not iterable.
        ValueError: A source is not strictly ordered in the scan direction.

    """
    if not isinstance(snapshot, AsyncIterable):
        if not isinstance(snapshot, Iterable):
            raise TypeError(
                f"snapshot must be an iterable or async iterable, got {type(snapshot).__name__}"
            )
        return _as_async(union_iter(dirty, snapshot, start=start, end=end, reverse=reverse))
    lo, hi = _bounds(start, end)
    d_it = _dirty_iter(dirty, lo, hi, reverse)
    return _amerge(d_it, snapshot.__aiter__(), lo, hi, reverse)


async def _as_async(
    items: Generator[tuple[bytes, bytes], None, None],
) -> AsyncGenerator[tuple[bytes, bytes], None]:
    try:
        for item in items:
            yield item
    finally:
        items.close()


async def _amerge(
    d_it: Iterator[tuple[bytes, bytes | Tombstone]],
    s_src: AsyncIterator[tuple[bytes, bytes]],
    lo: bytes,
    hi: bytes | None,
    reverse: bool,
) -> AsyncGenerator[tuple[bytes, bytes], None]:
    last: bytes | None = None
    s_done = False

    async def next_snapshot() -> tuple[bytes, bytes] | None:
        nonlocal last, s_done
        while not s_done:
            try:
                item = await s_src.__anext__()
            except StopAsyncIteration:
                s_done = True
                return None
            key = item[0]
            if last is not None and (key <= last if not reverse else key >= last):
                order = "descending" if reverse else "ascending"
                raise ValueError(
                    f"snapshot source is not in strictly {order} key order: {key!r} after {last!r}"
                )
            last = key
            if reverse:
                if hi is not None and key >= hi:
                    continue
                if key < lo:
                    s_done = True
                    return None
            else:
                if key < lo:
                    continue
                if hi is not None and key >= hi:
                    s_done = True
                    return None
            return item
        return None

    try:
        d = next(d_it, None)
        s = await next_snapshot()
        while d is not None or s is not None:
            if s is None or (d is not None and d[0] == s[0]):
                assert d is not None
                value = d[1]
                if value is not TOMBSTONE:
                    yield d[0], value
                if s is not None:
                    s = await next_snapshot()
                d = next(d_it, None)
            elif d is None or ((d[0] > s[0]) if not reverse else (d[0] < s[0])):
                yield s
                s = await next_snapshot()
            else:
                value = d[1]
                if value is not TOMBSTONE:
                    yield d[0], value
                d = next(d_it, None)
    finally:
        aclose = getattr(s_src, "aclose", None)
        if callable(aclose):
            await aclose()
