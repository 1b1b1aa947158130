from __future__ import annotations

import asyncio
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tikv_pd.errors import ClientClosedError, PDError
from tikv_pd.oracle import (
    LOGICAL_MASK,
    LocalOracle,
    LowResolutionTimestampCache,
    MockOracle,
    Oracle,
    compose_ts,
    extract_logical,
    extract_physical,
    lower_limit_start_ts,
    time_from_ts,
    ts_from_time,
)


class ManualClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@given(st.integers(0, 2**46 - 1), st.integers(0, LOGICAL_MASK))
def test_compose_extract_round_trip(physical: int, logical: int) -> None:
    ts = compose_ts(physical, logical)
    assert extract_physical(ts) == physical
    assert extract_logical(ts) == logical
    assert ts == (physical << 18) + logical


def test_compose_known_value() -> None:
    # 2021-01-01T00:00:00Z in ms, logical 5.
    assert compose_ts(1609459200000, 5) == 1609459200000 * 262144 + 5
    assert ts_from_time(1609459200.0) == 1609459200000 << 18
    assert time_from_ts(compose_ts(1609459200123, 9)) == pytest.approx(1609459200.123)


def test_compose_validation() -> None:
    with pytest.raises(ValueError, match="logical"):
        compose_ts(1, 1 << 18)
    with pytest.raises(ValueError, match="logical"):
        compose_ts(1, -1)
    with pytest.raises(ValueError, match="physical"):
        compose_ts(-1, 0)
    with pytest.raises(ValueError, match="physical"):
        compose_ts(1 << 46, 0)


def test_lower_limit_start_ts() -> None:
    now = 1_700_000_000.0
    ts = lower_limit_start_ts(now, 24 * 3600 * 1000)
    assert extract_physical(ts) == int((now - 86400) * 1000)


async def test_local_oracle_monotonic_within_a_millisecond() -> None:
    clock = ManualClock(1_700_000_000.0)
    o = LocalOracle(clock)
    assert isinstance(o, Oracle)
    a = await o.get_timestamp()
    b = await o.get_timestamp()
    c = await o.get_low_resolution_timestamp()
    assert a < b < c
    assert extract_physical(a) == extract_physical(c) == 1_700_000_000_000
    assert extract_logical(c) == 2
    clock.now += 0.005
    d = await o.get_timestamp()
    assert extract_physical(d) == 1_700_000_000_005
    assert extract_logical(d) == 0


async def test_local_oracle_survives_clock_stepping_back() -> None:
    clock = ManualClock(1_700_000_000.0)
    o = LocalOracle(clock)
    a = await o.get_timestamp()
    clock.now -= 10
    b = await o.get_timestamp()
    assert b == a + 1
    assert o.last_timestamp == b


async def test_logical_overflow_carries_into_physical() -> None:
    clock = ManualClock(1_700_000_000.0)
    o = LocalOracle(clock)
    o._last_ts = compose_ts(1_700_000_000_000, LOGICAL_MASK)
    ts = await o.get_timestamp()
    assert extract_physical(ts) == 1_700_000_000_001
    assert extract_logical(ts) == 0


async def test_local_oracle_expiry_and_stale() -> None:
    clock = ManualClock(1_700_000_000.0)
    o = LocalOracle(clock)
    lock_ts = await o.get_timestamp()
    assert not o.is_expired(lock_ts, 3000)
    assert o.until_expired(lock_ts, 3000) == 3000
    clock.now += 2.5
    assert o.until_expired(lock_ts, 3000) == 500
    clock.now += 0.5
    assert o.is_expired(lock_ts, 3000)  # expiry instant counts as expired
    assert o.until_expired(lock_ts, 3000) == 0
    stale = await o.get_stale_timestamp(10)
    assert extract_physical(stale) == int((clock.now - 10) * 1000)
    with pytest.raises(ValueError, match="prev_seconds"):
        await o.get_stale_timestamp(-1)
    with pytest.raises(ValueError, match="lock_ts"):
        o.is_expired(-1, 1)


async def test_closed_oracle_raises() -> None:
    o = LocalOracle()
    await o.close()
    with pytest.raises(ClientClosedError, match="oracle"):
        await o.get_timestamp()


async def test_mock_oracle_offset_and_manual_time() -> None:
    clock = ManualClock(1_700_000_000.0)
    o = MockOracle(clock)
    assert isinstance(o, Oracle)
    lock_ts = await o.get_timestamp()
    o.add_offset(5)
    assert o.is_expired(lock_ts, 3000)
    ts = await o.get_timestamp()
    assert extract_physical(ts) == 1_700_000_005_000
    o.set_time(1_800_000_000.0)
    o.add_offset(-5)
    assert o.now() == 1_800_000_000.0
    ts2 = await o.get_timestamp()
    assert extract_physical(ts2) == 1_800_000_000_000
    o.advance(1.5)
    assert extract_physical(await o.get_timestamp()) == 1_800_000_001_500
    o.use_clock()
    # Back to the live clock, which is far behind: timestamps still increase.
    ts3 = await o.get_timestamp()
    assert ts3 > ts2
    with pytest.raises(ValueError, match="set_time"):
        o.advance(1)


async def test_mock_oracle_outage() -> None:
    o = MockOracle(ManualClock(1_700_000_000.0))
    lock_ts = await o.get_timestamp()
    o.disable()
    assert not o.enabled
    with pytest.raises(PDError, match="disabled"):
        await o.get_timestamp()
    with pytest.raises(PDError):
        await o.get_low_resolution_timestamp()
    with pytest.raises(PDError):
        await o.get_stale_timestamp(1)
    assert not o.is_expired(lock_ts, 1000)  # expiry checks do not need PD
    o.enable()
    assert await o.get_timestamp() > lock_ts


def test_low_resolution_cache_observe_only_moves_forward() -> None:
    mono = ManualClock(100.0)
    cache = LowResolutionTimestampCache(monotonic=mono)
    assert cache.get() is None
    assert cache.needs_refresh()
    assert cache.is_expired(compose_ts(1, 0), 10)  # nothing cached: expired
    assert cache.until_expired(compose_ts(1, 0), 10) == 0
    with pytest.raises(LookupError):
        cache.stale_timestamp(1)
    cache.observe(compose_ts(1_700_000_000_000, 3))
    cache.observe(compose_ts(1_699_999_999_000, 0))  # older: ignored
    assert cache.get() == compose_ts(1_700_000_000_000, 3)
    assert cache.arrival == 100.0
    assert not cache.needs_refresh()
    mono.now = 101.999
    assert not cache.needs_refresh()
    mono.now = 102.0
    assert cache.needs_refresh()


def test_low_resolution_cache_expiry_and_stale() -> None:
    mono = ManualClock(50.0)
    cache = LowResolutionTimestampCache(monotonic=mono)
    now_ts = compose_ts(1_700_000_010_000, 0)
    cache.observe(now_ts)
    lock_ts = compose_ts(1_700_000_000_000, 7)
    assert cache.is_expired(lock_ts, 10_000)
    assert not cache.is_expired(lock_ts, 10_001)
    assert cache.until_expired(lock_ts, 12_000) == 2_000
    mono.now = 53.0  # 3 s after arrival
    stale = cache.stale_timestamp(5)
    assert extract_physical(stale) == 1_700_000_008_000
    with pytest.raises(ValueError, match="prev_seconds"):
        cache.stale_timestamp(2_000_000_000)


def test_low_resolution_cache_interval_validation() -> None:
    with pytest.raises(ValueError, match="update_interval"):
        LowResolutionTimestampCache(0)
    cache = LowResolutionTimestampCache()
    assert cache.update_interval == 2.0
    cache.update_interval = 0.5
    assert cache.update_interval == 0.5


async def test_refresh_forever_observes_and_survives_errors() -> None:
    mono = ManualClock(0.0)
    cache = LowResolutionTimestampCache(1.0, monotonic=mono)
    results: list[int | Exception] = [
        compose_ts(1_000, 0),
        PDError("leader changed"),
        compose_ts(2_000, 0),
    ]
    sleeps: list[float] = []
    done = asyncio.Event()

    async def fetch() -> int:
        item = results.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        mono.now += seconds
        if not results:
            done.set()
            await asyncio.Event().wait()  # park until cancelled

    task = asyncio.create_task(cache.refresh_forever(fetch, sleep=fake_sleep))
    await asyncio.wait_for(done.wait(), timeout=5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cache.get() == compose_ts(2_000, 0)
    assert sleeps == [1.0, 1.0, 1.0]


def test_local_oracle_unique_across_threads() -> None:
    # client-go TestLocalOracle: many timestamps, no duplicates — here from 4 threads.
    o = LocalOracle()
    results: list[list[int]] = [[] for _ in range(4)]

    async def draw(out: list[int]) -> None:
        for _ in range(5000):
            out.append(await o.get_timestamp())

    threads = [threading.Thread(target=asyncio.run, args=(draw(r),)) for r in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    all_ts = [ts for r in results for ts in r]
    assert len(set(all_ts)) == 20000
    for r in results:
        assert r == sorted(r)


async def test_local_oracle_until_expired_matches_client_go() -> None:
    # client-go TestLocalOracle_UntilExpired / TestIsExpired, 10 ms after the lock.
    clock = ManualClock(1_700_000_000.0)
    o = LocalOracle(clock)
    ts = await o.get_timestamp()
    clock.now += 0.010
    assert o.until_expired(ts, 6) == -4
    assert o.until_expired(ts, 14) == 4
    assert o.is_expired(ts, 5)
    assert not o.is_expired(ts, 200)
