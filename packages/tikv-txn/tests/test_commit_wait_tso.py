"""Commit-wait-until-TSO (client-go ``option_test.go`` TestSetCommitWaitUntilTSO*).

A transaction given ``commit_wait_until_tso`` must commit at a ts above it. The mock
PD's TSO follows the cluster clock: the clock is frozen so that the TSO cannot pass the
target on its own, and moved forward by the test once the committer was seen holding a
lagging ts (the oracle is wrapped to observe, not to answer: every ts comes from PD).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from _txn_helpers import MAX_TS, NO_HANG, poll
from tikv_mockstore import MockCluster
from tikv_pd.config import TransactionOptions
from tikv_pd.errors import CommitTsLagError
from tikv_pd.oracle import compose_ts, extract_physical
from tikv_txn import AsyncTransactionClient, TransactionClient

_ids = itertools.count()


@pytest.fixture(scope="module")
def cluster() -> Iterator[MockCluster]:
    with MockCluster(stores=1, regions=2) as mock:
        yield mock


@pytest.fixture
def frozen(cluster: MockCluster) -> Iterator[MockCluster]:
    cluster.clock.freeze()
    try:
        yield cluster
    finally:
        cluster.clock.unfreeze()


@pytest.fixture
def keys() -> list[bytes]:
    p = b"w%04d/" % next(_ids)
    # Two regions (the cluster splits at 0x80): 2PC has a primary and a secondary batch.
    return [b"\x10" + p + b"a", b"\x90" + p + b"b"]


class WatchedOracle:
    """Delegates to the client's oracle and signals when a ts at or below ``bound`` came back."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.bound = 0
        self.lagging = asyncio.Event()
        self.returned: list[int] = []

    async def get_timestamp(self, **kwargs: Any) -> int:
        ts: int = await self.inner.get_timestamp(**kwargs)
        self.returned.append(ts)
        if ts <= self.bound:
            self.lagging.set()
        return ts

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def watch(client: AsyncTransactionClient, bound: int) -> WatchedOracle:
    oracle = WatchedOracle(client.runtime.oracle)
    oracle.bound = bound
    client.runtime.oracle = oracle  # type: ignore[assignment]
    return oracle


def ahead(ts: int, ms: int) -> int:
    """A ts ``ms`` milliseconds of physical time after ``ts``."""
    return compose_ts(extract_physical(ts) + ms, 0)


async def committed(client: AsyncTransactionClient, keys: list[bytes]) -> dict[bytes, bytes]:
    snap = client.snapshot(await client.current_timestamp())
    return await asyncio.wait_for(snap.batch_get(keys), NO_HANG)


async def no_locks_left(cluster: MockCluster, keys: list[bytes]) -> None:
    """Wait until the rollback of a failed commit removed every lock."""
    await poll(
        lambda: not any(lock.key in keys for lock in cluster.engine.scan_lock(MAX_TS)),
        "the failed commit's rollback to remove its locks",
    )


@pytest.mark.parametrize(
    "options",
    [
        TransactionOptions.optimistic(),
        TransactionOptions.optimistic(async_commit=True),
        TransactionOptions.optimistic(try_one_pc=True),
        TransactionOptions.pessimistic(),
    ],
    ids=["2pc", "async_commit", "1pc", "pessimistic"],
)
async def test_commit_waits_until_the_tso_passes(
    client: AsyncTransactionClient,
    frozen: MockCluster,
    keys: list[bytes],
    options: TransactionOptions,
) -> None:
    txn = await client.begin(options)
    for key in keys if not options.try_one_pc else keys[:1]:
        txn.put(key, b"v")
    # Pessimistic: take the locks now, so that the only timestamps commit fetches are
    # the committer's.
    await txn.lock_pending_writes()
    now = await client.current_timestamp()
    target = ahead(now, 50)
    txn.set_commit_wait_until_tso(target)
    txn.set_commit_wait_until_tso(target - 1)  # a smaller ts never loosens it
    assert txn.commit_wait_until_tso == target
    txn.set_commit_wait_until_tso_timeout(30.0)
    oracle = watch(client, target)
    commit = asyncio.ensure_future(txn.commit())
    # The clock is frozen 50 ms before the target: the committer must be lagging now.
    await asyncio.wait_for(oracle.lagging.wait(), NO_HANG)
    assert not commit.done()
    frozen.clock.advance(51)
    commit_ts = await asyncio.wait_for(commit, NO_HANG)
    assert commit_ts > target
    lag = txn.commit_ts_lag
    assert lag is not None
    assert lag.wait_until_ts == target
    assert lag.first_ts <= target
    assert lag.backoffs >= 1
    if options.try_one_pc or options.async_commit:
        # TiKV chose the commit ts from min_commit_ts = the passing ts + 1.
        assert commit_ts > lag.commit_ts
    else:
        assert commit_ts == lag.commit_ts
    expected = keys if not options.try_one_pc else keys[:1]
    assert await committed(client, keys) == dict.fromkeys(expected, b"v")


async def test_no_lag_commits_with_the_first_ts(
    client: AsyncTransactionClient, keys: list[bytes]
) -> None:
    txn = await client.begin()
    txn.put(keys[0], b"v")
    txn.set_commit_wait_until_tso(txn.start_ts + 1)
    commit_ts = await txn.commit()
    assert commit_ts > txn.start_ts + 1
    assert txn.commit_ts_lag is None
    assert await committed(client, keys) == {keys[0]: b"v"}


async def test_times_out_with_nothing_committed(
    client: AsyncTransactionClient, frozen: MockCluster, keys: list[bytes]
) -> None:
    txn = await client.begin()
    for key in keys:
        txn.put(key, b"v")
    target = ahead(await client.current_timestamp(), 100)
    txn.set_commit_wait_until_tso(target)
    txn.set_commit_wait_until_tso_timeout(0.2)  # more than the 100 ms gap: it waits
    oracle = watch(client, target)
    with pytest.raises(CommitTsLagError) as info:
        await asyncio.wait_for(txn.commit(), NO_HANG)
    err = info.value
    assert err.wait_until_ts == target
    assert err.attempts > 1  # it did ask again before giving up
    assert err.first_ts <= err.last_ts <= target
    assert err.timeout_s == 0.2
    assert len([ts for ts in oracle.returned if ts <= target]) >= err.attempts
    assert txn.state == "failed"
    # 2PC had prewritten: the failed commit rolls every lock back.
    await no_locks_left(frozen, keys)
    assert await committed(client, keys) == {}


@pytest.mark.parametrize(
    ("gap_ms", "timeout_s", "reason"),
    [(5_000, 1.0, "clock drift"), (10, 0.0, "timeout is 0")],
    ids=["lag-larger-than-timeout", "zero-timeout"],
)
@pytest.mark.parametrize("one_pc", [False, True], ids=["2pc", "1pc"])
async def test_fails_at_once(
    client: AsyncTransactionClient,
    frozen: MockCluster,
    keys: list[bytes],
    gap_ms: int,
    timeout_s: float,
    reason: str,
    one_pc: bool,
) -> None:
    options = TransactionOptions.optimistic(try_one_pc=one_pc, async_commit=one_pc)
    txn = await client.begin(options)
    txn.put(keys[0], b"v")
    target = ahead(await client.current_timestamp(), gap_ms)
    txn.set_commit_wait_until_tso(target)
    txn.set_commit_wait_until_tso_timeout(timeout_s)
    prewrites = frozen.counters.count("Prewrite")
    with pytest.raises(CommitTsLagError, match=reason) as info:
        await txn.commit()
    assert info.value.attempts == 1
    assert info.value.last_ts == info.value.first_ts
    if one_pc:
        # 1PC / async commit need the ts before prewrite: nothing was sent at all.
        assert frozen.counters.count("Prewrite") == prewrites
    await no_locks_left(frozen, keys)
    assert await committed(client, keys) == {}


async def test_options_carry_the_constraint(
    client: AsyncTransactionClient, frozen: MockCluster, keys: list[bytes]
) -> None:
    target = ahead(await client.current_timestamp(), 5_000)
    txn = await client.begin(TransactionOptions(commit_wait_until_tso=target))
    assert txn.commit_wait_until_tso == target
    assert txn.commit_wait_until_tso_timeout == 1.0  # client-go's default
    txn.put(keys[0], b"v")
    with pytest.raises(CommitTsLagError):
        await txn.commit()


async def test_setters_validate_before_anything_is_sent(client: AsyncTransactionClient) -> None:
    txn = await client.begin()
    with pytest.raises(TypeError, match="ts"):
        txn.set_commit_wait_until_tso(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ts"):
        txn.set_commit_wait_until_tso(-1)
    with pytest.raises(ValueError, match="ts"):
        txn.set_commit_wait_until_tso(2**64)
    with pytest.raises(ValueError, match="seconds"):
        txn.set_commit_wait_until_tso_timeout(-1)
    with pytest.raises(TypeError, match="seconds"):
        txn.set_commit_wait_until_tso_timeout("1s")  # type: ignore[arg-type]
    assert txn.commit_wait_until_tso == 0
    assert txn.commit_wait_until_tso_timeout == 1.0
    await txn.rollback()


def test_blocking_facade(cluster: MockCluster) -> None:
    key = b"\x10w-sync/%d" % next(_ids)
    with TransactionClient.connect(cluster.pd_endpoints) as client:
        txn = client.begin()
        txn.put(key, b"v")
        txn.set_commit_wait_until_tso(txn.start_ts)
        txn.set_commit_wait_until_tso_timeout(2.0)
        assert txn.commit_wait_until_tso == txn.start_ts
        assert txn.commit_wait_until_tso_timeout == 2.0
        assert txn.commit() > txn.start_ts
        assert txn.commit_ts_lag is None  # the first commit ts was above it
        snap = client.snapshot(client.current_timestamp())
        assert snap.get(key) == b"v"
        # A target 50 ms ahead of PD: the commit waits, and the facade reports how.
        lagging = client.begin()
        lagging.put(key, b"w")
        target = client.current_timestamp() + (50 << 18)
        lagging.set_commit_wait_until_tso(target)
        assert lagging.commit() > target
        lag = lagging.commit_ts_lag
        assert lag is not None
        assert (lag.wait_until_ts, lag.commit_ts) == (target, lagging.commit_ts)


@pytest.fixture
def registry() -> Iterator[Any]:
    prometheus_client = pytest.importorskip("prometheus_client")
    from tikv_pd.metrics import disable_metrics, enable_metrics

    reg = prometheus_client.CollectorRegistry()
    enable_metrics(reg)
    yield reg
    disable_metrics()


def lag_samples(registry: Any) -> dict[str, float]:
    """Observation counts of client-go's two lag histograms, per result."""
    out = {}
    for name in ("wait_seconds", "attempt_count"):
        for result in ("ok", "err"):
            got = registry.get_sample_value(
                f"tikv_client_go_txn_lag_commit_ts_{name}_count", {"result": result}
            )
            out[f"{name}:{result}"] = got or 0.0
    return out


async def test_lag_metrics(
    client: AsyncTransactionClient, frozen: MockCluster, keys: list[bytes], registry: Any
) -> None:
    # No lag: nothing observed (client-go TestSetCommitWaitUntilTSO, "no lag commit ts").
    txn = await client.begin()
    txn.put(keys[0], b"v")
    txn.set_commit_wait_until_tso(txn.start_ts)
    await txn.commit()
    zero = dict.fromkeys(
        ("wait_seconds:ok", "wait_seconds:err", "attempt_count:ok", "attempt_count:err"), 0.0
    )
    assert lag_samples(registry) == zero
    # A lag that passes: one "ok" observation in each histogram.
    txn = await client.begin()
    txn.put(keys[0], b"w")
    target = ahead(await client.current_timestamp(), 20)
    txn.set_commit_wait_until_tso(target)
    oracle = watch(client, target)
    commit = asyncio.ensure_future(txn.commit())
    await asyncio.wait_for(oracle.lagging.wait(), NO_HANG)
    frozen.clock.advance(21)
    await asyncio.wait_for(commit, NO_HANG)
    assert lag_samples(registry) == {**zero, "wait_seconds:ok": 1, "attempt_count:ok": 1}
    attempts_sum = registry.get_sample_value(
        "tikv_client_go_txn_lag_commit_ts_attempt_count_sum", {"result": "ok"}
    )
    assert attempts_sum == 1 + txn.commit_ts_lag.backoffs  # type: ignore[union-attr]
    # A lag that fails: one "err" observation in each.
    txn = await client.begin()
    txn.put(keys[0], b"x")
    txn.set_commit_wait_until_tso(ahead(await client.current_timestamp(), 10))
    txn.set_commit_wait_until_tso_timeout(0)
    with pytest.raises(CommitTsLagError):
        await txn.commit()
    assert lag_samples(registry) == {
        "wait_seconds:ok": 1,
        "wait_seconds:err": 1,
        "attempt_count:ok": 1,
        "attempt_count:err": 1,
    }
