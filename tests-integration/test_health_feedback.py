"""TiKV's health feedback, end to end (client-go ``integration_tests/health_feedback_test.go``).

TiKV attaches a ``HealthFeedback`` (store id, sequence number, raftstore slow score) to
BatchCommands responses; client-go feeds it into the store's health status and its replica
selector steers replica and stale reads away from slow stores. Here: the transport passes
the feedback to ``RequestSender.health`` (a ``StoreHealth``), and the selector consults it.

The first test runs on any cluster. The others set a store's slow score through the
embedded cluster and each start their own 3-store cluster, so the per-store counters they
read belong to them alone.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from tikv_mockstore import MockCluster
from tikv_pd.config import Config
from tikv_pd.replica_selector import StoreHealth
from tikv_pd.transport import Transport
from tikv_proto import kvrpcpb_pb2
from tikv_txn import AsyncTransactionClient

NO_HANG = 60.0
KEYS = [b"\x10health%02d" % i for i in range(12)]
OTHER = b"\x30health-other"


async def _poll(step: Callable[[], Awaitable[bool]], what: str, deadline_s: float = 20.0) -> None:
    """Run ``step`` until it returns True (TiKV sends feedback at most once a second)."""
    end = time.monotonic() + deadline_s
    while not await step():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def _store_addresses(pd_endpoints: list[str]) -> dict[int, str]:
    async with await AsyncTransactionClient.connect(pd_endpoints) as client:
        stores = await client.runtime.pd.get_all_stores()
        return {s.id: s.address for s in stores if ("engine", "tiflash") not in s.labels}


async def test_get_health_feedback_updates_the_store_health(pd_endpoints: list[str]) -> None:
    # client-go TestGetHealthFeedback: set the recorded score to an unstable value; a
    # GetHealthFeedback sent over BatchCommands brings back the store's real one (1 on a
    # healthy store), through the response and through the stream's feedback.
    addresses = await _store_addresses(pd_endpoints)
    store_id, address = sorted(addresses.items())[0]
    ticks = itertools.count(step=10.0)  # a clock far past the 100 ms update interval
    health = StoreHealth(clock=lambda: next(ticks))
    async with Transport(Config()) as transport:
        transport.add_health_listener(health.record_feedback)
        assert transport.uses_batch_commands(address)
        last_seq = 0
        for _ in range(3):
            health.update_slow_score(store_id, 50)
            assert health.slow_score(store_id) == 50
            resp = await transport.send(
                address, "GetHealthFeedback", kvrpcpb_pb2.GetHealthFeedbackRequest(), 5.0
            )
            feedback = resp.health_feedback
            assert feedback.store_id == store_id
            assert feedback.feedback_seq_no > last_seq
            assert feedback.slow_score == 1
            last_seq = feedback.feedback_seq_no
            # Updated from the BatchCommands stream.
            assert health.slow_score(store_id) == 1
        assert transport.stats.health_feedbacks >= 3


# ---------------------------------------------------------------------------------------
# Slow stores and replica selection (embedded cluster)
# ---------------------------------------------------------------------------------------


@pytest.fixture
def cluster(embedded: MockCluster | None) -> Iterator[MockCluster]:
    if embedded is None:
        pytest.skip("sets slow scores through the embedded cluster's control API")
    with MockCluster(stores=3, split_txn=[OTHER]) as mock:
        yield mock


@pytest.fixture
async def client(cluster: MockCluster) -> AsyncIterator[AsyncTransactionClient]:
    async with await AsyncTransactionClient.connect(cluster.pd_endpoints) as c:
        c.runtime.sender.rng = random.Random(11)
        yield c


def _gets(cluster: MockCluster) -> dict[int, int]:
    return {s.id: cluster.counters.count("KvGet", s.id) for s in cluster.stores()}


def _served(cluster: MockCluster, before: dict[int, int]) -> dict[int, int]:
    return {sid: n - before[sid] for sid, n in _gets(cluster).items() if n != before[sid]}


async def _setup(client: AsyncTransactionClient, cluster: MockCluster) -> tuple[int, int, int]:
    """Write the keys; return (leader, slow follower, fast follower) of their region.

    The slow follower also leads the region of ``OTHER``, so leader reads of ``OTHER``
    reach it whatever replica reads do (client-go would instead ask an avoided store for
    its feedback after 15 s without news).
    """
    async with client.begin() as txn:
        for k in [*KEYS, OTHER]:
            txn.put(k, b"v-" + k)
    assert await client.runtime.wait_background(NO_HANG)
    region = cluster.region_by_key(KEYS[0], txn=True)
    assert region is not None
    assert all(cluster.region_by_key(k, txn=True) == region for k in KEYS)
    leader = region.leader_store_id
    slow, fast = sorted(p.store_id for p in region.peers if p.store_id != leader)
    other = cluster.region_by_key(OTHER, txn=True)
    assert other is not None and other.id != region.id
    cluster.transfer_leader(other.id, slow)
    cluster.clock.advance(1)  # stale reads at a current ts are served by every replica
    return leader, slow, fast


async def _reads(
    client: AsyncTransactionClient, cluster: MockCluster | None = None, **kw: Any
) -> None:
    """Read every key once with snapshot options ``kw``.

    For stale reads pass ``cluster``: its clock moves on past the read ts, so every
    replica's safe ts covers it and the first replica asked serves the read.
    """
    ts = await client.current_timestamp()
    if cluster is not None:
        cluster.clock.advance(1)
    for key in KEYS:
        assert await client.snapshot(ts, **kw).get(key) == b"v-" + key


async def test_follower_and_stale_reads_avoid_a_store_tikv_reports_slow(
    client: AsyncTransactionClient, cluster: MockCluster, caplog: pytest.LogCaptureFixture
) -> None:
    leader, slow, fast = await _setup(client, cluster)
    health = client.runtime.sender.health
    caplog.set_level(logging.INFO, logger="tikv.request")

    # Healthy: follower reads spread over both followers.
    before = _gets(cluster)
    await _reads(client, replica_read="follower")
    assert set(_served(cluster, before)) == {slow, fast}

    # The store reports itself slow; its feedback reaches the client with the answers of
    # the requests it serves (leader reads of OTHER).
    cluster.set_slow_score(slow, 95)

    async def slow_seen() -> bool:
        ts = await client.current_timestamp()
        assert await client.snapshot(ts).get(OTHER) == b"v-" + OTHER
        return health.is_slow(slow)

    await _poll(slow_seen, f"store {slow} reported slow")
    assert health.slow_score(slow) == 95
    assert not health.is_slow(fast) and not health.is_slow(leader)
    assert any(f"store {slow} is slow" in r.getMessage() for r in caplog.records)

    # Follower reads now go to the other follower only.
    before = _gets(cluster)
    await _reads(client, replica_read="follower")
    assert _served(cluster, before) == {fast: len(KEYS)}
    # Mixed and stale reads: any replica but the slow one.
    before = _gets(cluster)
    await _reads(client, replica_read="mixed")
    await _reads(client, cluster, stale_read=True)
    by_store = _served(cluster, before)
    assert slow not in by_store and sum(by_store.values()) == 2 * len(KEYS)
    ctx = cluster.counters.last_context("KvGet", fast)
    assert ctx is not None and (ctx.stale_read or ctx.replica_read)

    # The score drops back: once the client hears it, the store serves follower reads again.
    cluster.set_slow_score(slow, 1)

    async def recovered() -> bool:
        ts = await client.current_timestamp()
        assert await client.snapshot(ts).get(OTHER) == b"v-" + OTHER
        return not health.is_slow(slow)

    await _poll(recovered, f"store {slow} no longer slow")
    assert health.slow_score(slow) == 1
    before = _gets(cluster)
    await _reads(client, replica_read="follower")
    assert set(_served(cluster, before)) == {slow, fast}


async def test_prefer_leader_reads_leave_a_slow_leader(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    leader, slow, fast = await _setup(client, cluster)
    health = client.runtime.sender.health
    before = _gets(cluster)
    await _reads(client, replica_read="prefer-leader")
    assert _served(cluster, before) == {leader: len(KEYS)}

    cluster.set_slow_score(leader, 90)

    async def leader_slow() -> bool:
        await _reads(client)  # leader reads reach the leader's store, and its feedback
        return health.is_slow(leader)

    await _poll(leader_slow, f"leader store {leader} reported slow")
    before = _gets(cluster)
    await _reads(client, replica_read="prefer-leader")
    by_store = _served(cluster, before)
    # client-go: a slow leader loses its preference; the followers serve.
    assert set(by_store) <= {slow, fast} and sum(by_store.values()) == len(KEYS)
    # Leader reads are not steered by slowness.
    before = _gets(cluster)
    await _reads(client)
    assert _served(cluster, before) == {leader: len(KEYS)}


async def test_a_slow_follower_nobody_reads_from_is_asked_and_used_again(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    # The slow store leads nothing and replica reads avoid it, so no response brings its
    # feedback: the transport asks it (client-go's health ticker, every 15 s of silence;
    # lowered here) and the recovered store serves follower reads again.
    async with client.begin() as txn:
        for k in KEYS:
            txn.put(k, b"v-" + k)
    assert await client.runtime.wait_background(NO_HANG)
    region = cluster.region_by_key(KEYS[0], txn=True)
    assert region is not None
    leader = region.leader_store_id
    slow, fast = sorted(p.store_id for p in region.peers if p.store_id != leader)
    for r in cluster.regions():
        if r.leader_store_id == slow:
            cluster.transfer_leader(r.id, leader)
    sender = client.runtime.sender
    health = sender.health
    transport = sender.transport
    assert isinstance(transport, Transport)
    transport.health_refresh_seconds = 0.3

    cluster.set_slow_score(slow, 95)

    async def slow_seen() -> bool:
        await _reads(client, replica_read="follower")  # some reach the slow store
        return health.is_slow(slow)

    await _poll(slow_seen, f"store {slow} reported slow")
    cluster.set_slow_score(slow, 1)
    # Only follower reads now, and they all avoid the slow store.
    probes = cluster.counters.count("GetHealthFeedback", slow)

    async def recovered() -> bool:
        before = _gets(cluster)
        await _reads(client, replica_read="follower")
        if health.is_slow(slow):
            assert slow not in _served(cluster, before)
            return False
        return True

    await _poll(recovered, f"store {slow} heard from again")
    assert cluster.counters.count("GetHealthFeedback", slow) > probes
    assert transport.stats.health_probes >= 1
    before = _gets(cluster)
    await _reads(client, replica_read="follower")
    assert set(_served(cluster, before)) == {slow, fast}
