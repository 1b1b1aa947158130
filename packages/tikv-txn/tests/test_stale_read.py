"""Stale and replica reads of snapshots against the mock cluster (client-go's replica selector).

Each test gets its own 3-store cluster (every region has a peer on every store), so the
per-store request counters are exact. Which store served a read is read from the mock's
counters; what was read is checked against the commits.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterator

import pytest
from tikv_mockstore import MockCluster
from tikv_mockstore.testing import Stubs
from tikv_pd.config import TransactionOptions
from tikv_proto import kvrpcpb_pb2
from tikv_txn import AsyncTransactionClient, TransactionClient

NO_HANG = 60.0
KEYS = [b"\x10stale%02d" % i for i in range(12)]


@pytest.fixture
def cluster() -> Iterator[MockCluster]:
    with MockCluster(stores=3, regions=4) as mock:
        yield mock


@pytest.fixture
async def client(cluster: MockCluster) -> AsyncIterator[AsyncTransactionClient]:
    async with await AsyncTransactionClient.connect(cluster.pd_endpoints) as c:
        c.runtime.sender.rng = random.Random(7)
        yield c


async def write(client: AsyncTransactionClient, pairs: dict[bytes, bytes]) -> int:
    async with client.begin() as txn:
        for k, v in pairs.items():
            txn.put(k, v)
    assert await client.runtime.wait_background(NO_HANG)
    return txn.commit_ts


def stores_of(cluster: MockCluster, key: bytes) -> tuple[int, list[int]]:
    """The leader store and the follower stores of ``key``'s region."""
    region = cluster.region_by_key(key, txn=True)
    assert region is not None
    followers = [p.store_id for p in region.peers if p.store_id != region.leader_store_id]
    return region.leader_store_id, followers


def gets(cluster: MockCluster) -> dict[int, int]:
    return {s.id: cluster.counters.count("KvGet", s.id) for s in cluster.stores()}


def served(cluster: MockCluster, before: dict[int, int]) -> dict[int, int]:
    return {sid: n - before[sid] for sid, n in gets(cluster).items() if n != before[sid]}


async def test_stale_reads_return_the_data_as_of_the_stale_ts_from_followers(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    old = await write(client, dict.fromkeys(KEYS, b"old"))
    await write(client, dict.fromkeys(KEYS, b"new"))
    cluster.clock.advance(1)  # the safe ts (lag 0) passes both commits
    leader, followers = stores_of(cluster, KEYS[0])
    before = gets(cluster)
    for key in KEYS:
        snap = client.snapshot(old, stale_read=True)
        assert snap.stale_read
        assert await snap.get(key) == b"old"
    by_store = served(cluster, before)
    # Every read was served on its first attempt, by whichever replica the selector
    # drew: followers too (a random replica, client-go without zone labels).
    assert sum(by_store.values()) == len(KEYS)
    assert set(by_store) - {leader} and set(by_store) <= {leader, *followers}
    for follower in set(by_store) - {leader}:
        ctx = cluster.counters.last_context("KvGet", follower)
        assert ctx is not None and ctx.stale_read and not ctx.replica_read
    assert "data_is_not_ready" not in client.runtime.sender.stats.region_errors
    # And the latest data at a current stale ts.
    now = await client.current_timestamp()
    cluster.clock.advance(1)
    assert await client.snapshot(now, stale_read=True).batch_get(KEYS) == dict.fromkeys(
        KEYS, b"new"
    )


async def test_a_follower_behind_its_safe_ts_falls_back_to_the_leader(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    await write(client, dict.fromkeys(KEYS, b"before"))
    leader, followers = stores_of(cluster, KEYS[0])
    cluster.clock.advance(1)
    for f in followers:
        cluster.hold_safe_ts(f)
    cluster.clock.advance(1000)
    await write(client, dict.fromkeys(KEYS, b"after"))
    ts = await client.current_timestamp()
    stats = client.runtime.sender.stats
    backoffs = stats.backoffs
    before = gets(cluster)
    for key in KEYS:
        assert await client.snapshot(ts, stale_read=True).get(key) == b"after"
    by_store = served(cluster, before)
    refused = stats.region_errors.get("data_is_not_ready", 0)
    # Every read ended on the leader; each one that went to a follower first was
    # refused there and retried on the leader at once (no backoff).
    assert by_store.get(leader) == len(KEYS)
    assert sum(n for s, n in by_store.items() if s != leader) == refused > 0
    assert stats.backoffs == backoffs
    ctx = cluster.counters.last_context("KvGet", leader)
    assert ctx is not None and not ctx.stale_read and not ctx.replica_read
    # Below the held safe ts the followers still serve stale reads.
    for f in followers:
        cluster.release_safe_ts(f)


async def test_stale_batch_get_and_scan_across_regions(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    keys = [f + b"multi%02d" % i for f in (b"\x10", b"\x50", b"\x90", b"\xd0") for i in range(5)]
    old = await write(client, dict.fromkeys(keys, b"old"))
    cluster.clock.advance(1)
    # Every store lags behind the next write: followers refuse reads above their safe ts.
    for store in cluster.stores():
        cluster.hold_safe_ts(store.id)
    cluster.clock.advance(1000)
    await write(client, dict.fromkeys(keys, b"new"))
    ts = await client.current_timestamp()
    stats = client.runtime.sender.stats
    # As of the old commit: served where the stale read lands (below every safe ts).
    snap = client.snapshot(old, stale_read=True)
    assert await snap.batch_get(keys) == dict.fromkeys(keys, b"old")
    scanned = await snap.scan(b"\x00", None, limit=100)
    assert scanned == [(k, b"old") for k in sorted(keys)]
    assert "data_is_not_ready" not in stats.region_errors
    # As of now: followers refuse, the leaders serve the new values.
    snap = client.snapshot(ts, stale_read=True)
    assert await snap.batch_get(keys) == dict.fromkeys(keys, b"new")
    scanned = await snap.scan(b"\x00", None, limit=100)
    assert scanned == [(k, b"new") for k in sorted(keys)]
    assert stats.region_errors.get("data_is_not_ready", 0) > 0  # followers refused some
    for store in cluster.stores():
        cluster.release_safe_ts(store.id)


async def test_stale_read_meeting_a_lock_reads_the_key_from_the_leader(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    key = KEYS[0]
    await write(client, {key: b"v1"})
    leader, followers = stores_of(cluster, key)
    # A transaction that took its start ts early prewrites after the followers already
    # published a safe ts above it (TiKV allows that: its commit ts will be higher), and
    # is abandoned: its lock expires at once.
    start = cluster.current_ts()
    cluster.clock.advance(1000)
    read_ts = cluster.current_ts()
    cluster.clock.advance(1)
    for f in followers:
        assert cluster.safe_ts(f) > read_ts
    with Stubs(cluster) as stubs:
        stub, ctx = stubs.route(key, txn=True)
        resp = stub.KvPrewrite(
            kvrpcpb_pb2.PrewriteRequest(
                context=ctx,
                mutations=[kvrpcpb_pb2.Mutation(op=kvrpcpb_pb2.Put, key=key, value=b"x")],
                primary_lock=key,
                start_version=start,
                lock_ttl=1,
            )
        )
        assert not resp.errors
    cluster.clock.advance(10)
    # The resolver judges TTLs with the low-resolution ts: refresh it past the jump.
    await client.current_timestamp()
    client.runtime.sender.rng = _FirstFollower(followers, cluster, key)
    before = gets(cluster)
    assert await client.snapshot(read_ts, stale_read=True).get(key) == b"v1"
    by_store = served(cluster, before)
    # The follower served the stale read and met the lock; once the lock was resolved
    # the key was read again from the leader as a normal read.
    assert sum(by_store[f] for f in followers if f in by_store) == 1
    assert by_store[leader] == 1
    ctx_leader = cluster.counters.last_context("KvGet", leader)
    assert ctx_leader is not None and not ctx_leader.stale_read and not ctx_leader.replica_read


class _FirstFollower(random.Random):
    """A random source whose draws pick a follower of ``key``'s region (by index)."""

    def __init__(self, followers: list[int], cluster: MockCluster, key: bytes) -> None:
        super().__init__(0)
        region = cluster.region_by_key(key, txn=True)
        assert region is not None
        self._index = next(i for i, p in enumerate(region.peers) if p.store_id in followers)

    def randrange(self, *args: object, **kwargs: object) -> int:
        return self._index


async def test_follower_replica_reads_go_to_followers_and_see_the_latest_data(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    await write(client, dict.fromkeys(KEYS, b"v1"))
    await write(client, dict.fromkeys(KEYS, b"v2"))
    leader, followers = stores_of(cluster, KEYS[0])
    ts = await client.current_timestamp()
    before = gets(cluster)
    for key in KEYS:
        snap = client.snapshot(ts, replica_read="follower")
        assert await snap.get(key) == b"v2"  # read index: the latest committed data
    by_store = served(cluster, before)
    assert leader not in by_store
    assert set(by_store) == set(followers)
    for f in followers:
        ctx = cluster.counters.last_context("KvGet", f)
        assert ctx is not None and ctx.replica_read and not ctx.stale_read


async def test_transaction_reads_follow_the_options_replica_read(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    await write(client, dict.fromkeys(KEYS, b"v1"))
    leader, followers = stores_of(cluster, KEYS[0])
    before = gets(cluster)
    async with client.begin(TransactionOptions(replica_read="follower")) as txn:
        for key in KEYS[:4]:
            assert await txn.get(key) == b"v1"
        txn.put(KEYS[0], b"v2")
    by_store = served(cluster, before)
    assert leader not in by_store and set(by_store) <= set(followers)
    # The write itself went to the leader.
    assert await client.snapshot(await client.current_timestamp()).get(KEYS[0]) == b"v2"


async def test_mixed_replica_reads_spread_over_every_replica(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    await write(client, dict.fromkeys(KEYS, b"v"))
    leader, followers = stores_of(cluster, KEYS[0])
    ts = await client.current_timestamp()
    before = gets(cluster)
    for key in KEYS:
        assert await client.snapshot(ts, replica_read="mixed").get(key) == b"v"
    assert set(served(cluster, before)) == {leader, *followers}


async def test_prefer_leader_reads_the_leader_then_a_follower(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    await write(client, dict.fromkeys(KEYS, b"v"))
    leader, followers = stores_of(cluster, KEYS[0])
    ts = await client.current_timestamp()
    options = TransactionOptions(replica_read="prefer-leader")
    before = gets(cluster)
    for key in KEYS:
        assert await client.snapshot(ts, options).get(key) == b"v"
    assert served(cluster, before) == {leader: len(KEYS)}
    # The leader busy: the next read moves on to a follower at once.
    fault = cluster.faults.add("KvGet", store=leader, region_error="server_is_busy", times=1)
    before = gets(cluster)
    assert await client.snapshot(ts, options).get(KEYS[0]) == b"v"
    assert fault.hits == 1
    by_store = served(cluster, before)
    assert by_store.pop(leader) == 1
    assert list(by_store.values()) == [1] and set(by_store) <= set(followers)


async def test_learner_reads_go_to_the_learner() -> None:
    with MockCluster(stores=4, regions=4) as mock:
        region = mock.region_by_key(KEYS[0], txn=True)
        assert region is not None
        learner_store = max(
            p.store_id for p in region.peers if p.store_id != region.leader_store_id
        )
        mock.remove_peer(region.id, learner_store)
        mock.add_peer(region.id, learner_store, learner=True)
        async with await AsyncTransactionClient.connect(mock.pd_endpoints) as c:
            c.runtime.sender.rng = random.Random(3)
            await write(c, dict.fromkeys(KEYS, b"v"))
            ts = await c.current_timestamp()
            before = gets(mock)
            for key in KEYS:
                assert await c.snapshot(ts, replica_read="learner").get(key) == b"v"
            assert served(mock, before) == {learner_store: len(KEYS)}
            ctx = mock.counters.last_context("KvGet", learner_store)
            assert ctx is not None and ctx.replica_read
            assert ctx.peer.role == 1  # metapb.PeerRole.Learner
            # Followers include learners (client-go): reads spread over both.
            before = gets(mock)
            for key in KEYS:
                assert await c.snapshot(ts, replica_read="follower").get(key) == b"v"
            by_store = served(mock, before)
            assert region.leader_store_id not in by_store and learner_store in by_store


async def test_stale_and_replica_reads_go_to_the_local_zone(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    for store in cluster.stores():
        cluster.set_store_labels(store.id, {"zone": f"z{store.id}", "host": f"h{store.id}"})
    await write(client, dict.fromkeys(KEYS, b"v"))
    cluster.clock.advance(1)
    leader, followers = stores_of(cluster, KEYS[0])
    local = followers[-1]
    zone = {"zone": f"z{local}"}
    ts = await client.current_timestamp()
    cluster.clock.advance(1)
    before = gets(cluster)
    for key in KEYS:
        snap = client.snapshot(ts, stale_read=True, match_labels=zone)
        assert await snap.get(key) == b"v"
    assert served(cluster, before) == {local: len(KEYS)}
    ctx = cluster.counters.last_context("KvGet", local)
    assert ctx is not None and ctx.stale_read
    # Follower reads too.
    before = gets(cluster)
    for key in KEYS:
        assert (
            await client.snapshot(ts, replica_read="follower", match_labels=zone).get(key) == b"v"
        )
    assert served(cluster, before) == {local: len(KEYS)}
    # A local leader serves the stale reads itself.
    before = gets(cluster)
    leader_zone = {"zone": f"z{leader}"}
    for key in KEYS:
        snap = client.snapshot(ts, stale_read=True, match_labels=leader_zone)
        assert await snap.get(key) == b"v"
    assert served(cluster, before) == {leader: len(KEYS)}
    with pytest.raises(TypeError, match="match_labels"):
        client.snapshot(ts, match_labels={"zone": 1})  # type: ignore[dict-item]


async def test_a_stopped_follower_is_skipped(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    await write(client, dict.fromkeys(KEYS, b"v"))
    _, followers = stores_of(cluster, KEYS[0])
    down, up = followers
    cluster.stop_store(down, move_leaders=False)
    ts = await client.current_timestamp()
    sender = client.runtime.sender
    sender.health.recheck_seconds = 3600.0  # no re-check during the test
    stats = sender.stats
    failures = stats.send_failures
    before = gets(cluster)
    for key in KEYS:
        assert await client.snapshot(ts, replica_read="follower").get(key) == b"v"
    by_store = served(cluster, before)
    # The live follower served every read. The stopped one cost one failed attempt,
    # after which that read moved on to the other follower (not to the leader), and
    # later reads skipped it (it refused connections: unreachable for a while).
    assert by_store == {up: len(KEYS)}
    assert stats.send_failures - failures == 1
    assert sender.health.liveness(down).value == "unreachable"


async def test_stale_snapshot_reads_the_past(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    await write(client, {KEYS[0]: b"v1"})
    cluster.clock.advance(5_000)
    # The oracle's stale ts: the last PD ts moved back by prev_seconds.
    await client.current_timestamp()
    snap = await client.stale_snapshot(2.0)
    assert snap.stale_read
    now = await client.current_timestamp()
    assert now - snap.ts >= 2_000 << 18
    assert await snap.get(KEYS[0]) == b"v1"
    ctx = cluster.counters.last_context("KvGet")
    assert ctx is not None and ctx.stale_read


async def test_min_safe_ts_is_served_by_every_replica(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    await write(client, dict.fromkeys(KEYS, b"v"))
    leader, followers = stores_of(cluster, KEYS[0])
    cluster.clock.advance(1)
    held = cluster.hold_safe_ts(followers[0])
    cluster.clock.advance(1000)
    ts = await client.min_safe_ts()
    assert ts == held  # the lagging store bounds it
    before = gets(cluster)
    for key in KEYS:
        assert await client.snapshot(ts, stale_read=True).get(key) == b"v"
    by_store = served(cluster, before)
    assert sum(by_store.values()) == len(KEYS)  # every first attempt was served
    assert "data_is_not_ready" not in client.runtime.sender.stats.region_errors
    assert set(by_store) - {leader}


def test_sync_client_snapshots(cluster: MockCluster) -> None:
    with TransactionClient.connect(cluster.pd_endpoints) as c:
        with c.begin() as txn:
            txn.put(KEYS[0], b"sync")
        ts = c.current_timestamp()
        cluster.clock.advance(1)
        snap = c.snapshot(ts, stale_read=True)
        assert snap.stale_read and snap.get(KEYS[0]) == b"sync"
        assert c.snapshot(ts, replica_read="follower").get(KEYS[0]) == b"sync"
        assert c.stale_snapshot(0.0).stale_read
        assert c.min_safe_ts() > ts
        with pytest.raises(ValueError, match="replica_read"):
            c.snapshot(ts, replica_read="nearest")  # type: ignore[arg-type]
