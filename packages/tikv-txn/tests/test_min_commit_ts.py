"""The min-commit-ts manager (client-go ``txnkv/transaction/2pc_test.go`` TestMinCommitTsManager).

Unit tests of :class:`~tikv_txn.committer.MinCommitTsManager`, then its one use: a
pipelined transaction's heartbeat pushes the primary's ``min_commit_ts`` until the commit
begins, and not after (the mock's clock is frozen while the commit waits for the TSO, so
the heartbeat keeps beating then; an interceptor records each ``TxnHeartBeat`` sent).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from tikv_mockstore import MockCluster
from tikv_pd.config import TransactionOptions
from tikv_pd.interceptor import Interceptor, RPCRequest
from tikv_pd.oracle import compose_ts, extract_physical
from tikv_txn import AsyncPipelinedTransaction, AsyncTransactionClient
from tikv_txn.committer import TTL_ACCESS, TWO_PC_ACCESS, MinCommitTsManager

DEADLINE = 30.0
_ids = itertools.count()


def test_initial_state() -> None:
    m = MinCommitTsManager()
    assert m.get() == 0
    assert m.required_write_access == TTL_ACCESS


def test_ttl_updates_only_grow() -> None:
    m = MinCommitTsManager()
    m.try_update(10, TTL_ACCESS)
    assert m.get() == 10
    m.try_update(5, TTL_ACCESS)
    assert m.get() == 10


def test_elevate_write_access() -> None:
    m = MinCommitTsManager()
    m.try_update(10, TTL_ACCESS)
    assert m.elevate_write_access(TWO_PC_ACCESS) == 10
    assert m.required_write_access == TWO_PC_ACCESS
    assert m.elevate_write_access(TTL_ACCESS) == 10  # never lowered
    assert m.required_write_access == TWO_PC_ACCESS


def test_updates_after_elevation() -> None:
    m = MinCommitTsManager()
    m.try_update(10, TTL_ACCESS)
    m.elevate_write_access(TWO_PC_ACCESS)
    m.try_update(20, TTL_ACCESS)
    assert m.get() == 10
    m.try_update(30, TWO_PC_ACCESS)
    assert m.get() == 30


def test_concurrent_updates() -> None:
    m = MinCommitTsManager()

    def run(base: int) -> None:
        for i in range(1000):
            m.try_update(base + i, TTL_ACCESS)

    threads = [threading.Thread(target=run, args=(base,)) for base in (0, 1000)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert m.get() == 1999


# -- the pipelined heartbeat --------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[MockCluster]:
    with MockCluster(stores=1, regions=2) as mock:
        yield mock


@pytest.fixture
async def client(cluster: MockCluster) -> AsyncIterator[AsyncTransactionClient]:
    async with await AsyncTransactionClient.connect(cluster.pd_endpoints) as c:
        c.runtime.budgets.heartbeat_interval_s = 0.01
        yield c


class HeartbeatLog(Interceptor):
    """Records the ``min_commit_ts`` of every TxnHeartBeat sent."""

    name = "heartbeat-log"

    def __init__(self) -> None:
        self.pushed: list[int] = []

    async def before_send(self, rpc: RPCRequest) -> None:
        if rpc.command == "TxnHeartBeat":
            self.pushed.append(rpc.request.min_commit_ts)


class LagSignal:
    """Wraps the oracle: signals once a ts at or below ``bound`` was handed out."""

    def __init__(self, inner: Any, bound: int) -> None:
        self.inner = inner
        self.bound = bound
        self.lagging = asyncio.Event()

    async def get_timestamp(self, **kwargs: Any) -> int:
        ts: int = await self.inner.get_timestamp(**kwargs)
        if ts <= self.bound:
            self.lagging.set()
        return ts

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def until(predicate: Any, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


async def test_the_heartbeat_stops_pushing_once_the_commit_begins(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    key = b"\x10mcts%03d" % next(_ids)
    log = HeartbeatLog()
    txn = await client.begin(TransactionOptions(pipelined=True))
    assert isinstance(txn, AsyncPipelinedTransaction)
    txn.set_rpc_interceptor(log)
    txn.put(key, b"v")
    assert await txn.flush(force=True)
    # Before the commit, each beat pushes min_commit_ts to a newer ts.
    await until(lambda: len(log.pushed) >= 3, "three heartbeats")
    assert log.pushed == sorted(log.pushed)
    assert log.pushed[-1] > log.pushed[0] > txn.start_ts
    # Make the commit wait for the TSO (frozen clock, a target 50 ms ahead) while the
    # heartbeat keeps beating: every beat from then on must send the same value.
    cluster.clock.freeze()
    try:
        now = await client.current_timestamp()
        target = compose_ts(extract_physical(now) + 50, 0)
        txn.set_commit_wait_until_tso(target)
        txn.set_commit_wait_until_tso_timeout(DEADLINE)
        signal = LagSignal(client.runtime.oracle, target)
        client.runtime.oracle = signal  # type: ignore[assignment]
        commit = asyncio.ensure_future(txn.commit())
        await asyncio.wait_for(signal.lagging.wait(), DEADLINE)
        seen = len(log.pushed)
        await until(lambda: len(log.pushed) >= seen + 3, "three heartbeats during the commit")
        frozen_value = log.pushed[seen]
        assert log.pushed[seen:] == [frozen_value] * len(log.pushed[seen:])
        cluster.clock.advance(51)
        commit_ts = await asyncio.wait_for(commit, DEADLINE)
    finally:
        cluster.clock.unfreeze()
    assert commit_ts > target > frozen_value
    # The pipelined commit waited for the TSO too, and says how.
    lag = txn.commit_ts_lag
    assert lag is not None
    assert (lag.wait_until_ts, lag.commit_ts) == (target, commit_ts)
    assert lag.first_ts <= target
    snap = client.snapshot(await client.current_timestamp())
    assert await snap.get(key) == b"v"
