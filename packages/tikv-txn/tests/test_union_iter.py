"""Tests of the union iterator (client-go union_iter.go semantics) against a dict model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tikv_txn.membuffer import TOMBSTONE, MemBuffer, Tombstone
from tikv_txn.union_iter import union_aiter, union_iter

KEYS = st.binary(min_size=0, max_size=2)
VALUES = st.binary(min_size=1, max_size=3)
BOUND = st.none() | st.binary(min_size=0, max_size=2)


def model(
    snapshot: dict[bytes, bytes],
    writes: list[tuple[bytes, bytes | None]],
    start: bytes | None,
    end: bytes | None,
    reverse: bool,
) -> list[tuple[bytes, bytes]]:
    view = dict(snapshot)
    for key, value in writes:
        if value is None:
            view.pop(key, None)
        else:
            view[key] = value
    lo = start or b""
    items = sorted((k, v) for k, v in view.items() if k >= lo and (not end or k < end))
    return items[::-1] if reverse else items


def buffer_from(writes: list[tuple[bytes, bytes | None]]) -> MemBuffer:
    buf = MemBuffer()
    for key, value in writes:
        if value is None:
            buf.delete(key)
        else:
            buf.set(key, value)
    return buf


def snapshot_items(
    snapshot: dict[bytes, bytes], reverse: bool, start: bytes | None, end: bytes | None
) -> list[tuple[bytes, bytes]]:
    # A snapshot scan returns exactly its range, like TiKV's Scan.
    lo = start or b""
    items = sorted((k, v) for k, v in snapshot.items() if k >= lo and (not end or k < end))
    return items[::-1] if reverse else items


async def agen(items: list[tuple[bytes, bytes]]) -> AsyncIterator[tuple[bytes, bytes]]:
    for item in items:
        await asyncio.sleep(0)
        yield item


async def collect(it: AsyncIterator[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [item async for item in it]


WRITES = st.lists(st.tuples(KEYS, st.none() | VALUES), max_size=12)
SNAPSHOTS = st.dictionaries(KEYS, VALUES, max_size=12)


@settings(max_examples=300, deadline=None)
@given(snapshot=SNAPSHOTS, writes=WRITES, start=BOUND, end=BOUND, reverse=st.booleans())
def test_union_matches_model(
    snapshot: dict[bytes, bytes],
    writes: list[tuple[bytes, bytes | None]],
    start: bytes | None,
    end: bytes | None,
    reverse: bool,
) -> None:
    expected = model(snapshot, writes, start, end, reverse)
    buf = buffer_from(writes)
    snap = snapshot_items(snapshot, reverse, start, end)
    got = list(union_iter(buf, snap, start=start, end=end, reverse=reverse))
    assert got == expected
    got_async = asyncio.run(
        collect(union_aiter(buf, agen(snap), start=start, end=end, reverse=reverse))
    )
    assert got_async == expected
    # The snapshot may also be a wider, unclipped scan: the union clips it.
    wide = snapshot_items(snapshot, reverse, None, None)
    assert list(union_iter(buf, wide, start=start, end=end, reverse=reverse)) == expected
    assert (
        asyncio.run(collect(union_aiter(buf, agen(wide), start=start, end=end, reverse=reverse)))
        == expected
    )


@settings(max_examples=100, deadline=None)
@given(snapshot=SNAPSHOTS, writes=WRITES, reverse=st.booleans())
def test_union_with_plain_dirty_iterable(
    snapshot: dict[bytes, bytes], writes: list[tuple[bytes, bytes | None]], reverse: bool
) -> None:
    buf = buffer_from(writes)
    dirty = list(buf.iterate(reverse=reverse))
    snap = snapshot_items(snapshot, reverse, None, None)
    expected = model(snapshot, writes, None, None, reverse)
    assert list(union_iter(dirty, snap, reverse=reverse)) == expected
    assert asyncio.run(collect(union_aiter(dirty, snap, reverse=reverse))) == expected


def test_buffered_writes_win_and_tombstones_hide() -> None:
    buf = MemBuffer()
    buf.set(b"b", b"B-new")
    buf.delete(b"c")
    buf.delete(b"x")  # deleting a key the snapshot lacks yields nothing
    buf.set(b"e", b"E")
    buf.update_flags(b"d")  # flags-only entries are invisible
    snap = [(b"a", b"A"), (b"b", b"B"), (b"c", b"C"), (b"d", b"D")]
    assert list(union_iter(buf, snap)) == [
        (b"a", b"A"),
        (b"b", b"B-new"),
        (b"d", b"D"),
        (b"e", b"E"),
    ]
    assert list(union_iter(buf, snap[::-1], reverse=True)) == [
        (b"e", b"E"),
        (b"d", b"D"),
        (b"b", b"B-new"),
        (b"a", b"A"),
    ]
    assert list(union_iter(buf, snap, start=b"b", end=b"d")) == [(b"b", b"B-new")]


def test_snapshot_is_consumed_lazily_and_closed() -> None:
    pulled: list[bytes] = []
    closed = []

    def snap() -> Iterator[tuple[bytes, bytes]]:
        try:
            for i in range(100):
                key = b"%03d" % i
                pulled.append(key)
                yield key, b"v"
        finally:
            closed.append(True)

    buf = MemBuffer()
    buf.set(b"001", b"mine")
    it = union_iter(buf, snap())
    assert next(it) == (b"000", b"v")
    assert next(it) == (b"001", b"mine")
    # Only what was needed to decide the first two items (plus one lookahead).
    assert len(pulled) <= 3
    it.close()
    assert closed == [True]


async def test_async_snapshot_lazy_and_closed_on_break() -> None:
    pulled: list[bytes] = []
    closed = []

    async def snap() -> AsyncIterator[tuple[bytes, bytes]]:
        try:
            for i in range(1000):
                key = b"%04d" % i
                pulled.append(key)
                yield key, b"v"
        finally:
            closed.append(True)

    buf = MemBuffer()
    buf.delete(b"0000")
    gen = union_aiter(buf, snap(), start=b"0000")
    got = []
    async for item in gen:
        got.append(item)
        if len(got) == 3:
            break
    await gen.aclose()
    assert got == [(b"0001", b"v"), (b"0002", b"v"), (b"0003", b"v")]
    assert len(pulled) <= 5
    assert closed == [True]


def test_out_of_order_sources_rejected() -> None:
    with pytest.raises(ValueError, match="snapshot source is not in strictly ascending"):
        list(union_iter(MemBuffer(), [(b"b", b"1"), (b"a", b"2")]))
    with pytest.raises(ValueError, match="strictly descending"):
        list(union_iter(MemBuffer(), [(b"a", b"1"), (b"b", b"2")], reverse=True))
    with pytest.raises(ValueError, match="buffer source"):
        list(union_iter([(b"b", b"1"), (b"b", TOMBSTONE)], []))

    async def bad() -> AsyncIterator[tuple[bytes, bytes]]:
        yield b"b", b"1"
        yield b"a", b"1"

    with pytest.raises(ValueError, match="snapshot source"):
        asyncio.run(collect(union_aiter(MemBuffer(), bad())))


def test_bad_arguments() -> None:
    # Checked at the call, before any iteration.
    with pytest.raises(TypeError, match="start must be bytes"):
        union_iter(MemBuffer(), [], start="a")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="end must be bytes"):
        union_iter(MemBuffer(), [], end=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="iterable"):
        union_aiter(MemBuffer(), 5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="start must be bytes"):
        union_aiter(MemBuffer(), agen([]), start=3)  # type: ignore[arg-type]


def test_tombstone_type_is_usable_in_plain_dirty_lists() -> None:
    dirty: list[tuple[bytes, bytes | Tombstone]] = [(b"a", TOMBSTONE), (b"c", b"3")]
    assert list(union_iter(dirty, [(b"a", b"1"), (b"b", b"2")])) == [(b"b", b"2"), (b"c", b"3")]
