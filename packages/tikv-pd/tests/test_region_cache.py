from __future__ import annotations

import asyncio
import bisect
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tikv_pd.errors import PDError
from tikv_pd.region_cache import (
    InvalidReason,
    Liveness,
    Peer,
    PeerRole,
    Region,
    RegionCache,
    RegionEpoch,
    Store,
    StoreState,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def peers(region_id: int) -> tuple[Peer, ...]:
    return tuple(Peer(region_id * 10 + s, s) for s in (1, 2, 3))


def region(
    rid: int, start: bytes, end: bytes, ver: int = 1, conf: int = 1, leader_store: int = 1
) -> Region:
    ps = peers(rid)
    return Region(rid, start, end, RegionEpoch(conf, ver), ps, ps[leader_store - 1])


LAYOUT = [region(1, b"", b"b"), region(2, b"b", b"d"), region(3, b"d", b"")]


def make_cache(clock: Clock | None = None, **kw: object) -> RegionCache:
    return RegionCache(clock=clock or Clock(), rng=random.Random(1), **kw)  # type: ignore[arg-type]


def test_region_validation() -> None:
    with pytest.raises(ValueError, match="end_key"):
        Region(1, b"b", b"a", RegionEpoch(1, 1))
    with pytest.raises(TypeError, match="start_key"):
        Region(1, "a", b"b", RegionEpoch(1, 1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="leader"):
        Region(1, b"", b"", RegionEpoch(1, 1), peers(1), Peer(99, 9))
    with pytest.raises(ValueError, match="RegionEpoch"):
        RegionEpoch(-1, 0)
    p = Peer(1, 2, 1)  # type: ignore[arg-type]  # metapb int role accepted
    assert p.role is PeerRole.LEARNER


def test_region_contains() -> None:
    r = region(2, b"b", b"d")
    assert r.contains(b"b")
    assert r.contains(b"c\xff")
    assert not r.contains(b"d")
    assert not r.contains(b"a")
    assert r.contains_by_end(b"d")
    assert not r.contains_by_end(b"b")
    assert not r.contains_by_end(b"")
    last = region(3, b"d", b"")
    assert last.contains_by_end(b"")
    assert last.contains(b"\xff\xff")
    assert r.overlaps(b"a", b"c")
    assert not r.overlaps(b"d", b"")
    assert r.overlaps(b"", b"")


def test_locate() -> None:
    c = make_cache()
    assert c.insert_many(LAYOUT) == 3
    assert c.locate_key(b"").id == 1  # type: ignore[union-attr]
    assert c.locate_key(b"a").id == 1  # type: ignore[union-attr]
    assert c.locate_key(b"b").id == 2  # type: ignore[union-attr]
    assert c.locate_key(b"zzz").id == 3  # type: ignore[union-attr]
    assert c.locate_end_key(b"b").id == 1  # type: ignore[union-attr]
    assert c.locate_end_key(b"c").id == 2  # type: ignore[union-attr]
    assert c.locate_end_key(b"d").id == 2  # type: ignore[union-attr]
    assert c.locate_end_key(b"").id == 3  # type: ignore[union-attr]
    assert c.locate_end_key(b"\x00").id == 1  # type: ignore[union-attr]
    assert c.get_by_id(2) == LAYOUT[1]
    assert c.get_by_id(42) is None
    assert len(c) == 3
    assert list(c.regions()) == LAYOUT
    c.check_invariants()


def test_locate_misses_on_holes() -> None:
    c = make_cache()
    c.insert(LAYOUT[1])
    assert c.locate_key(b"a") is None
    assert c.locate_key(b"d") is None
    assert c.locate_end_key(b"b") is None
    assert c.locate_end_key(b"") is None
    assert c.locate_end_key(b"e") is None


def test_insert_evicts_overlapping_including_predecessor() -> None:
    c = make_cache()
    c.insert_many(LAYOUT)
    merged = region(2, b"a", b"e", ver=5)
    assert c.insert(merged)
    c.check_invariants()
    assert [r.id for r in c.regions()] == [2]
    assert c.locate_key(b"a") == merged
    assert c.locate_key(b"0") is None  # region 1's remainder was evicted with it
    assert c.locate_key(b"e") is None


def test_insert_rejects_stale_epochs() -> None:
    c = make_cache()
    c.insert(region(2, b"b", b"d", ver=5, conf=5))
    assert not c.insert(region(2, b"b", b"d", ver=4, conf=5))
    assert not c.insert(region(2, b"b", b"d", ver=5, conf=4))
    # Another region overlapping with an older version is stale too.
    assert not c.insert(region(7, b"a", b"c", ver=4))
    assert c.get_by_id(2).epoch == RegionEpoch(5, 5)  # type: ignore[union-attr]
    # Same epoch (e.g. reloaded after a leader change) is accepted.
    assert c.insert(region(2, b"b", b"d", ver=5, conf=5, leader_store=2))
    assert c.get_by_id(2).leader_store_id == 2  # type: ignore[union-attr]
    c.check_invariants()


def test_same_id_moving_range_replaces_old_entry() -> None:
    c = make_cache()
    c.insert(region(2, b"b", b"d", ver=1))
    assert c.insert(region(2, b"x", b"z", ver=2))
    assert c.locate_key(b"c") is None
    assert c.locate_key(b"y").id == 2  # type: ignore[union-attr]
    c.check_invariants()


def test_ttl_expiry_and_sliding() -> None:
    clock = Clock()
    c = make_cache(clock, ttl=10, ttl_jitter=0)
    c.insert(LAYOUT[0])
    clock.now += 9
    assert c.locate_key(b"a") is not None  # hit slides the deadline to now + 10
    clock.now += 9
    assert c.locate_key(b"a") is not None
    clock.now += 10.5
    assert c.locate_key(b"a") is None
    assert c.invalid_reason(1) is InvalidReason.EXPIRED
    assert len(c) == 0


def test_ttl_jitter_bounds() -> None:
    # Without access an entry lives between 600 s and 660 s.
    for idle, alive in ((599.99, True), (660.01, False)):
        for seed in range(20):
            clock = Clock()
            c = RegionCache(clock=clock, rng=random.Random(seed))
            c.insert(LAYOUT[0])
            clock.now += idle
            assert (c.get_by_id(1) is not None) == alive


def test_cache_validation() -> None:
    with pytest.raises(ValueError, match="ttl"):
        RegionCache(ttl=0)
    with pytest.raises(ValueError, match="ttl_jitter"):
        RegionCache(ttl_jitter=-1)
    c = make_cache()
    with pytest.raises(TypeError, match="Region"):
        c.insert("region")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="InvalidReason"):
        c.invalidate(1, "because")  # type: ignore[arg-type]


def test_invalidate() -> None:
    c = make_cache()
    c.insert_many(LAYOUT)
    assert c.invalidate(2, InvalidReason.REGION_NOT_FOUND)
    assert not c.invalidate(2)
    assert c.locate_key(b"c") is None
    assert c.invalid_reason(2) is InvalidReason.REGION_NOT_FOUND
    # The newest epoch is remembered: a stale reload cannot come back.
    assert not c.insert(region(2, b"b", b"d", ver=0))
    assert c.insert(region(2, b"b", b"d", ver=1))
    assert c.invalid_reason(2) is None
    c.check_invariants()


def test_on_not_leader() -> None:
    c = make_cache()
    c.insert_many(LAYOUT)
    assert c.on_not_leader(2, 3)
    assert c.get_by_id(2).leader_store_id == 3  # type: ignore[union-attr]
    assert c.on_not_leader(2, Peer(22, 2))
    assert c.get_by_id(2).leader_store_id == 2  # type: ignore[union-attr]
    assert not c.on_not_leader(2, None)
    assert not c.on_not_leader(2, 3, epoch=RegionEpoch(1, 0))  # request's epoch is old
    assert c.get_by_id(2).leader_store_id == 2  # type: ignore[union-attr]
    assert not c.on_not_leader(99, 1)
    # A hinted leader on a store the cached region does not know: peers are stale.
    assert not c.on_not_leader(2, 7)
    assert c.get_by_id(2) is None
    assert c.invalid_reason(2) is InvalidReason.NO_LEADER


def test_on_epoch_not_match_split() -> None:
    c = make_cache()
    c.insert_many(LAYOUT)
    left = Region(2, b"b", b"c", RegionEpoch(1, 2), peers(2))
    right = Region(5, b"c", b"d", RegionEpoch(1, 2), peers(5))
    assert c.on_epoch_not_match(2, RegionEpoch(1, 1), [left, right], store_id=2)
    c.check_invariants()
    got_left, got_right = c.locate_key(b"b"), c.locate_key(b"c")
    assert got_left is not None
    assert got_right is not None
    assert (got_left.id, got_right.id) == (2, 5)
    assert got_left.leader_store_id == 2  # the answering store becomes leader
    assert got_right.leader_store_id == 2


def test_on_epoch_not_match_partial_cover() -> None:
    c = make_cache()
    c.insert_many(LAYOUT)
    left = Region(2, b"b", b"c", RegionEpoch(1, 2), peers(2))
    assert not c.on_epoch_not_match(2, RegionEpoch(1, 1), [left])
    assert c.locate_key(b"b") == left
    assert c.locate_key(b"c") is None
    # An explicit need inside the returned region is covered.
    c2 = make_cache()
    c2.insert_many(LAYOUT)
    assert c2.on_epoch_not_match(2, RegionEpoch(1, 1), [left], needed=(b"b", b"bz"))


def test_on_epoch_not_match_fake_and_ahead() -> None:
    c = make_cache()
    c.insert_many(LAYOUT)
    assert not c.on_epoch_not_match(2, RegionEpoch(1, 1), [])
    assert c.get_by_id(2) is None
    assert c.invalid_reason(2) is InvalidReason.EPOCH_NOT_MATCH

    c = make_cache()
    c.insert(region(2, b"b", b"d", ver=3))
    behind = Region(2, b"b", b"d", RegionEpoch(1, 2), peers(2))
    assert not c.on_epoch_not_match(2, RegionEpoch(1, 3), [behind])
    assert c.get_by_id(2).epoch == RegionEpoch(1, 3)  # type: ignore[union-attr]


def test_group_keys_by_region() -> None:
    c = make_cache()
    c.insert(LAYOUT[0])
    c.insert(LAYOUT[2])
    keys = [b"e", b"a", b"c", b"f", b"a2", b"bb"]
    g = c.group_keys_by_region(keys)
    assert list(g.groups) == [LAYOUT[2], LAYOUT[0]]
    assert g.groups[LAYOUT[2]] == [b"e", b"f"]
    assert g.groups[LAYOUT[0]] == [b"a", b"a2"]
    assert g.missing == [b"c", b"bb"]


def test_split_range_by_region() -> None:
    c = make_cache()
    c.insert_many(LAYOUT)
    s = c.split_range_by_region(b"a", b"e")
    assert s.resume_key is None
    assert [(r.id, a, b) for r, a, b in s.parts] == [
        (1, b"a", b"b"),
        (2, b"b", b"d"),
        (3, b"d", b"e"),
    ]
    s = c.split_range_by_region(b"c", b"")
    assert [(r.id, a, b) for r, a, b in s.parts] == [(2, b"c", b"d"), (3, b"d", b"")]
    s = c.split_range_by_region(b"b", b"d")
    assert [(r.id, a, b) for r, a, b in s.parts] == [(2, b"b", b"d")]
    c.invalidate(2)
    s = c.split_range_by_region(b"a", b"")
    assert [(r.id, a, b) for r, a, b in s.parts] == [(1, b"a", b"b")]
    assert s.resume_key == b"b"
    with pytest.raises(ValueError, match="greater"):
        c.split_range_by_region(b"b", b"a")
    with pytest.raises(TypeError, match="start"):
        c.split_range_by_region("a", b"b")  # type: ignore[arg-type]


class Loader:
    """Serves regions of a fixed layout, counting calls; optionally blocks."""

    def __init__(self, layout: list[Region], gate: asyncio.Event | None = None) -> None:
        self.layout = layout
        self.calls: list[bytes] = []
        self.gate = gate

    async def __call__(self, key: bytes) -> Region:
        self.calls.append(key)
        if self.gate is not None:
            await self.gate.wait()
        for r in self.layout:
            if r.contains(key):
                return r
        raise AssertionError("layout has a hole")

    async def by_end(self, key: bytes) -> Region:
        self.calls.append(key)
        for r in self.layout:
            if r.contains_by_end(key):
                return r
        raise AssertionError("layout has a hole")


async def test_get_or_load_single_flight() -> None:
    gate = asyncio.Event()
    loader = Loader(LAYOUT, gate)
    c = make_cache()
    tasks = [asyncio.create_task(c.get_or_load(b"c", loader)) for _ in range(10)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*tasks)
    assert all(r == LAYOUT[1] for r in results)
    assert loader.calls == [b"c"]
    assert c.locate_key(b"c") == LAYOUT[1]
    # Cached now: no new load.
    assert await c.get_or_load(b"c", loader) == LAYOUT[1]
    assert loader.calls == [b"c"]


async def test_single_flight_survives_caller_cancellation() -> None:
    gate = asyncio.Event()
    loader = Loader(LAYOUT, gate)
    c = make_cache()
    first = asyncio.create_task(c.get_or_load(b"a", loader))
    second = asyncio.create_task(c.get_or_load(b"a", loader))
    await asyncio.sleep(0)
    first.cancel()
    gate.set()
    assert await second == LAYOUT[0]
    with pytest.raises(asyncio.CancelledError):
        await first
    assert loader.calls == [b"a"]


async def test_get_or_load_errors_propagate_to_all_waiters() -> None:
    c = make_cache()
    calls = 0

    async def failing(key: bytes) -> Region:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        raise PDError("pd down")

    results = await asyncio.gather(
        c.get_or_load(b"a", failing), c.get_or_load(b"a", failing), return_exceptions=True
    )
    assert all(isinstance(r, PDError) for r in results)
    assert calls == 1

    async def wrong(key: bytes) -> Region:
        return LAYOUT[2]

    with pytest.raises(PDError, match="does not contain"):
        await c.get_or_load(b"a", wrong)


async def test_get_or_load_end() -> None:
    loader = Loader(LAYOUT)
    c = make_cache()
    assert (await c.get_or_load_end(b"d", loader.by_end)).id == 2
    assert (await c.get_or_load_end(b"", loader.by_end)).id == 3
    assert (await c.get_or_load_end(b"d", loader.by_end)).id == 2
    assert loader.calls == [b"d", b""]


async def test_load_and_group_keys_loads_each_region_once() -> None:
    loader = Loader(LAYOUT)
    c = make_cache()
    groups = await c.load_and_group_keys([b"a", b"a1", b"b", b"c", b"x", b"y"], loader)
    assert {r.id: ks for r, ks in groups.items()} == {
        1: [b"a", b"a1"],
        2: [b"b", b"c"],
        3: [b"x", b"y"],
    }
    assert loader.calls == [b"a", b"b", b"x"]


async def test_load_and_split_range() -> None:
    loader = Loader(LAYOUT)
    c = make_cache()
    c.insert(LAYOUT[1])
    parts = await c.load_and_split_range(b"a", b"", loader)
    assert [(r.id, a, b) for r, a, b in parts] == [(1, b"a", b"b"), (2, b"b", b"d"), (3, b"d", b"")]
    assert loader.calls == [b"a", b"d"]


async def test_store_cache() -> None:
    c = make_cache()
    s1 = Store(1, "10.0.0.1:20160", labels={"zone": "z1"})  # type: ignore[arg-type]
    assert s1.labels == (("zone", "z1"),)
    assert s1.label("zone") == "z1"
    assert not s1.is_tiflash
    assert not c.put_store(s1)
    c.mark_store_reachable(1)
    assert c.store_liveness(1) is Liveness.REACHABLE
    c.insert(LAYOUT[0])
    c.on_send_fail(1, 1)
    assert c.store_failures(1) == 1
    assert c.get_by_id(1) is None
    assert c.invalid_reason(1) is InvalidReason.SEND_FAIL
    assert not c.put_store(Store(1, "10.0.0.1:20160", StoreState.OFFLINE))
    assert c.get_store(1).state is StoreState.OFFLINE  # type: ignore[union-attr]
    assert c.put_store(Store(1, "10.0.0.9:20160"))  # address moved
    assert c.store_liveness(1) is Liveness.UNKNOWN
    assert c.store_failures(1) == 0
    c.mark_store_unreachable(1)
    assert c.store_liveness(1) is Liveness.UNREACHABLE
    assert c.store_liveness(5) is Liveness.UNKNOWN
    assert [s.id for s in c.stores()] == [1]
    assert c.remove_store(1)
    assert c.get_store(1) is None
    with pytest.raises(ValueError, match="Store id"):
        Store(0, "x")
    assert Store(2, "a", 2).state is StoreState.TOMBSTONE  # type: ignore[arg-type]


async def test_get_or_load_store_single_flight() -> None:
    c = make_cache()
    calls: list[int] = []

    async def load(store_id: int) -> Store:
        calls.append(store_id)
        await asyncio.sleep(0)
        return Store(store_id, f"h{store_id}:20160")

    got = await asyncio.gather(*(c.get_or_load_store(4, load) for _ in range(5)))
    assert all(s.address == "h4:20160" for s in got)
    assert calls == [4]

    async def wrong(store_id: int) -> Store:
        return Store(store_id + 1, "x")

    with pytest.raises(PDError, match="store 5"):
        await c.get_or_load_store(5, wrong)


async def test_failed_send_makes_the_next_store_lookup_ask_pd_again() -> None:
    # client-go Store.reResolve: a store that moved (a pod rescheduled) fails every send to
    # its old address; PD has the new one.
    clock = Clock()
    c = make_cache(clock, store_reresolve_interval=30.0)
    answers = {1: Store(1, "old:20160")}
    calls: list[int] = []

    async def load(store_id: int) -> Store:
        calls.append(store_id)
        return answers[store_id]

    assert (await c.get_or_load_store(1, load)).address == "old:20160"
    assert (await c.get_or_load_store(1, load)).address == "old:20160"
    assert calls == [1]  # cached
    c.insert(LAYOUT[0])
    answers[1] = Store(1, "new:20160")
    c.on_send_fail(1, 1)
    # The first lookup after the failure asks PD at once and sees the move.
    assert (await c.get_or_load_store(1, load)).address == "new:20160"
    assert calls == [1, 1]
    assert (await c.get_or_load_store(1, load)).address == "new:20160"
    assert calls == [1, 1]  # answered: no more checks until another failure
    # Sends keep failing (the store is down): PD is asked at most once per interval.
    c.on_send_fail(1, 1)
    assert (await c.get_or_load_store(1, load)).address == "new:20160"
    assert calls == [1, 1]
    clock.now += 30.0
    answers[1] = Store(1, "newer:20160")
    assert (await c.get_or_load_store(1, load)).address == "newer:20160"
    assert calls == [1, 1, 1]

    # PD failing to answer keeps the cached store (the request goes on with it).
    async def broken(store_id: int) -> Store:
        calls.append(store_id)
        raise PDError("PD is down")

    c.on_send_fail(1, 1)
    clock.now += 30.0
    assert (await c.get_or_load_store(1, broken)).address == "newer:20160"
    assert calls == [1, 1, 1, 1]
    with pytest.raises(ValueError, match="store_reresolve_interval"):
        make_cache(store_reresolve_interval=-1)


# ---------------------------------------------------------------------------------------
# Property test: a cluster layout evolves by splits, merges and conf changes; the cache
# sees regions from any point of that history, in any order.
# ---------------------------------------------------------------------------------------

ALPHABET = [bytes([c]) for c in b"bcdefghij"] + [b"c5", b"e5", b"g5"]
PROBES = [b"", b"a", b"b", b"b5", b"c", b"c5", b"d", b"e", b"e5", b"f", b"g", b"g5", b"h", b"z"]


def evolve(ops: list[tuple[int, int, int]]) -> list[list[Region]]:
    layout = [Region(1, b"", b"", RegionEpoch(1, 1))]
    history = [layout]
    next_id = 2
    for kind, a, b in ops:
        layout = list(layout)
        i = a % len(layout)
        r = layout[i]
        if kind == 0:  # split at a key strictly inside r
            inside = sorted(k for k in ALPHABET if r.contains(k) and k != r.start_key)
            if not inside:
                continue
            key = inside[b % len(inside)]
            ver = r.epoch.version + 1
            left = Region(next_id, r.start_key, key, RegionEpoch(r.epoch.conf_ver, ver))
            right = Region(r.id, key, r.end_key, RegionEpoch(r.epoch.conf_ver, ver))
            next_id += 1
            layout[i : i + 1] = [left, right]
        elif kind == 1 and len(layout) > 1:  # merge r with its right neighbour
            j = min(i, len(layout) - 2)
            x, y = layout[j], layout[j + 1]
            ver = max(x.epoch.version, y.epoch.version) + 1
            merged = Region(y.id, x.start_key, y.end_key, RegionEpoch(y.epoch.conf_ver, ver))
            layout[j : j + 2] = [merged]
        else:  # conf change
            layout[i] = Region(
                r.id, r.start_key, r.end_key, RegionEpoch(r.epoch.conf_ver + 1, r.epoch.version)
            )
        history.append(layout)
    return history


@settings(max_examples=150, deadline=None)
@given(
    ops=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 50), st.integers(0, 50)), max_size=25),
    picks=st.lists(
        st.tuples(st.integers(0, 1000), st.integers(0, 1000), st.booleans()), max_size=40
    ),
)
def test_cache_invariants_under_any_insert_order(
    ops: list[tuple[int, int, int]], picks: list[tuple[int, int, bool]]
) -> None:
    history = evolve(ops)
    c = make_cache()
    for h, i, invalidate in picks:
        layout = history[h % len(history)]
        r = layout[i % len(layout)]
        if invalidate:
            c.invalidate(r.id)
        else:
            c.insert(r)
        c.check_invariants()
        for key in PROBES:
            found = c.locate_key(key)
            assert found is None or found.contains(key)
            by_end = c.locate_end_key(key)
            assert by_end is None or by_end.contains_by_end(key)
    # Whatever came before, inserting the current layout makes the cache exact.
    latest = history[-1]
    assert c.insert_many(latest) == len(latest)
    c.check_invariants()
    starts = [r.start_key for r in latest]
    for key in PROBES:
        expected = latest[bisect.bisect_right(starts, key) - 1]
        assert c.locate_key(key) == expected
    assert list(c.regions()) == latest


async def test_load_and_split_range_with_batch_loader() -> None:
    layout = [
        region(i + 1, bytes([97 + i]) if i else b"", bytes([98 + i]) if i < 9 else b"")
        for i in range(10)
    ]
    loader = Loader(layout)
    scans: list[tuple[bytes, bytes, int]] = []

    async def scan(start: bytes, end: bytes, limit: int) -> list[Region]:
        scans.append((start, end, limit))
        out = [r for r in layout if r.overlaps(start, end)]
        return out[:limit]

    c = make_cache()
    parts = await c.load_and_split_range(b"a", b"", loader, range_loader=scan, batch_limit=4)
    assert [r.id for r, _, _ in parts] == list(range(1, 11))
    assert parts[0][1] == b"a"
    assert all(parts[i][2] == parts[i + 1][1] for i in range(9))
    assert parts[-1][2] == b""
    assert loader.calls == []  # everything came from batch loads
    assert [s[0] for s in scans] == [b"a", b"e", b"i"]
    assert len(c) == 10
    # A batch loader that makes no progress falls back to the single-region loader.

    async def useless(start: bytes, end: bytes, limit: int) -> list[Region]:
        return []

    c2 = make_cache()
    parts = await c2.load_and_split_range(b"c", b"e", loader, range_loader=useless)
    assert [(r.id, a, b) for r, a, b in parts] == [(3, b"c", b"d"), (4, b"d", b"e")]
    with pytest.raises(ValueError, match="batch_limit"):
        await c2.load_and_split_range(b"a", b"b", loader, batch_limit=0)


async def test_load_window_serves_hits_scans_gaps_and_falls_back_past_a_gap() -> None:
    layout = [
        region(i + 1, bytes([97 + i]) if i else b"", bytes([98 + i]) if i < 9 else b"")
        for i in range(10)
    ]
    loader = Loader(layout)
    scans: list[tuple[bytes, bytes, int]] = []
    hidden = {4}  # PD's scan misses region 4 (mid-split): the window loads it alone

    async def scan(start: bytes, end: bytes, limit: int) -> list[Region]:
        scans.append((start, end, limit))
        out = [r for r in layout if r.overlaps(start, end) and r.id not in hidden]
        return out[:limit]

    c = make_cache()
    c.insert(layout[0])
    window = await c.load_window(b"", b"", loader, range_loader=scan, limit=6)
    assert [r.id for r in window] == [1, 2, 3, 4, 5, 6]
    # Region 1 was cached; the gap at b"b" was scanned for a whole window (the extra
    # regions are cached for the next one); at b"d" the scan's answer starts later, so
    # region 4 came from the single loader.
    assert scans == [(b"b", b"", 6), (b"d", b"", 6)]
    assert loader.calls == [b"d"]
    # The next window is served from what the scans cached.
    assert [r.id for r in await c.load_window(b"f", b"h", loader, range_loader=scan)] == [6, 7]
    assert len(scans) == 2
    # Without a range loader, region by region; the limit caps the window.
    c2 = make_cache()
    assert [r.id for r in await c2.load_window(b"c", b"", loader, limit=2)] == [3, 4]
    with pytest.raises(ValueError, match="limit"):
        await c2.load_window(b"a", b"", loader, limit=0)
    with pytest.raises(ValueError, match="greater than"):
        await c2.load_window(b"z", b"a", loader)


def test_sweep_expired_walks_the_cache_in_rounds() -> None:
    clock = Clock()
    c = make_cache(clock, ttl=10, ttl_jitter=0)
    layout = [
        region(i + 1, bytes([97 + i]) if i else b"", bytes([98 + i]) if i < 9 else b"")
        for i in range(10)
    ]
    c.insert_many(layout)
    clock.now += 5
    assert c.locate_key(b"a") is not None  # region 1 is accessed: deadline slides
    assert c.locate_key(b"j") is not None  # region 10 too
    clock.now += 6  # the other eight are now expired
    removed = [c.sweep_expired(limit=4) for _ in range(3)]
    assert sum(removed) == 8
    assert removed == [3, 4, 1]
    assert [r.id for r in c.regions()] == [1, 10]
    assert c.invalid_reason(5) is InvalidReason.EXPIRED
    assert c.sweep_expired() == 0
    with pytest.raises(ValueError, match="limit"):
        c.sweep_expired(0)
    c.check_invariants()


def test_send_fail_invalidates_regions_led_from_the_same_store() -> None:
    # client-go TestSendFailInvalidateRegionsInSameStore.
    c = make_cache()
    c.insert(region(1, b"", b"m", leader_store=1))
    c.insert(region(2, b"m", b"", leader_store=1))
    c.put_store(Store(1, "s1:20160"))
    assert c.on_send_fail(1, 1) == 2
    assert c.locate_key(b"a") is None
    assert c.locate_key(b"x") is None
    assert c.invalid_reason(2) is InvalidReason.SEND_FAIL
    assert c.store_failures(1) == 1
    # Regions led from other stores are untouched.
    c.insert(region(4, b"", b"m", ver=2, leader_store=2))
    assert c.on_send_fail(9, 1) == 0
    assert c.locate_key(b"a") is not None


def test_down_peers_expire_after_ttl_despite_hits() -> None:
    # client-go TestNeedExpireRegionAfterTTL (WithDownPeers): hits do not extend it.
    clock = Clock()
    c = make_cache(clock, ttl=2, ttl_jitter=0)
    c.insert(LAYOUT[0], has_down_peers=True)
    c.insert(LAYOUT[1])
    for _ in range(4):  # up to the deadline, 2 s after insertion
        clock.now += 0.5
        assert c.locate_key(b"a") is not None
        assert c.locate_key(b"c") is not None
    clock.now += 0.5
    assert c.locate_key(b"a") is None
    assert c.locate_key(b"c") is not None  # the healthy region slid forward


def test_sweep_marks_regions_with_unreachable_peers() -> None:
    # client-go TestNeedExpireRegionAfterTTL (WithUnreachableStores).
    clock = Clock()
    c = make_cache(clock, ttl=2, ttl_jitter=0)
    c.put_store(Store(2, "s2:20160"))
    c.mark_store_unreachable(2)
    c.insert(LAYOUT[0])  # has a peer on store 2
    assert c.sweep_expired() == 0
    clock.now += 1.5
    assert c.locate_key(b"a") is not None  # hit, but no extension any more
    clock.now += 0.6
    assert c.locate_key(b"a") is None


def test_remove_intersecting_regions_like_client_go() -> None:
    # client-go TestRemoveIntersectingRegions: 5 regions split at b, c, d, e; regions
    # 1..4 merge into one; inserting it leaves 2 entries; merging the last leaves 1.
    c = make_cache()
    bounds = [b"", b"b", b"c", b"d", b"e", b""]
    c.insert_many(region(i + 1, bounds[i], bounds[i + 1], ver=5) for i in range(5))
    for i, key in enumerate([b"a", b"b", b"c", b"d", b"e"]):
        assert c.locate_key(key).id == i + 1  # type: ignore[union-attr]
    assert c.insert(region(1, b"", b"e", ver=9))
    assert c.locate_key(b"c").id == 1  # type: ignore[union-attr]
    assert c.locate_key(b"e").id == 5  # type: ignore[union-attr]
    assert len(c) == 2
    assert c.insert(region(1, b"", b"", ver=10))
    assert c.locate_key(b"e").id == 1  # type: ignore[union-attr]
    assert len(c) == 1
    c.check_invariants()
