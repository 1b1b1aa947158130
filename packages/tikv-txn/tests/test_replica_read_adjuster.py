"""The replica-read adjuster (client-go ``snapshot_test.go`` TestReplicaReadAdjuster).

A snapshot reading from replicas asks its adjuster, per ``KvGet`` and per region batch of
``KvBatchGet``, which labels to prefer and which replica-read type to use. Every region
of the mock has its leader on store 1 and followers on stores 2 and 3; store 2 carries
``zone=dc1``. An interceptor records where each read went and how it was flagged.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from tikv_mockstore import MockCluster
from tikv_pd.config import ReplicaReadType, TransactionOptions
from tikv_pd.interceptor import Interceptor, RPCRequest
from tikv_txn import AsyncTransactionClient

_ids = itertools.count()


@pytest.fixture(scope="module")
def cluster() -> Iterator[MockCluster]:
    with MockCluster(stores=3, regions=2) as mock:
        mock.set_store_labels(2, {"zone": "dc1"})
        for region in mock.regions():
            leader = region.leader
            assert leader is not None and leader.store_id == 1
        yield mock


class Where(Interceptor):
    """Records (command, store id, Context.replica_read) of every read sent."""

    name = "where"

    def __init__(self) -> None:
        self.sent: list[tuple[str, int, bool]] = []

    async def before_send(self, rpc: RPCRequest) -> None:
        if rpc.command in ("Get", "BatchGet"):
            self.sent.append((rpc.command, rpc.store_id, rpc.request.context.replica_read))


@pytest.mark.parametrize("hit", [True, False], ids=["closest-replica", "leader"])
async def test_the_adjuster_picks_the_replica_per_request(
    client: AsyncTransactionClient, cluster: MockCluster, hit: bool
) -> None:
    p = b"adj%03d/" % next(_ids)
    x, y, z = b"\x10" + p + b"x", b"\x10" + p + b"y", b"\x90" + p + b"z"
    async with client.begin() as txn:
        for k in (x, y, z):
            txn.put(k, b"v")
    calls: list[int] = []

    def adjuster(count: int) -> tuple[dict[str, str] | None, ReplicaReadType]:
        calls.append(count)
        if hit:
            return {"zone": "dc1"}, "mixed"
        return None, "leader"

    snap = client.snapshot(
        await client.current_timestamp(), TransactionOptions(replica_read="mixed")
    )
    where = Where()
    snap.set_rpc_interceptor(where)
    snap.set_replica_read_adjuster(adjuster)
    assert await snap.get(x) == b"v"
    assert await snap.batch_get([y, z]) == {y: b"v", z: b"v"}  # one key in each region
    assert calls == [1, 1, 1]
    assert sorted(c for c, _, _ in where.sent) == ["BatchGet", "BatchGet", "Get"]
    for _, store, replica_read in where.sent:
        if hit:
            # The dc1 replica (a follower) serves them, as replica reads.
            assert (store, replica_read) == (2, True)
        else:
            # Leader reads: the leader's store, no replica-read flag.
            assert (store, replica_read) == (1, False)


async def test_leader_snapshots_and_stale_reads_do_not_ask(
    client: AsyncTransactionClient,
) -> None:
    key = b"\x10adj-leader%03d" % next(_ids)
    async with client.begin() as txn:
        txn.put(key, b"v")
    calls: list[int] = []

    def adjuster(count: int) -> tuple[dict[str, str] | None, ReplicaReadType]:
        calls.append(count)
        return None, "leader"

    ts = await client.current_timestamp()
    leader = client.snapshot(ts)
    leader.set_replica_read_adjuster(adjuster)
    assert await leader.get(key) == b"v"
    assert await leader.batch_get([key + b"-missing"]) == {}
    stale = client.snapshot(ts, stale_read=True)
    stale.set_replica_read_adjuster(adjuster)
    assert await stale.get(key) == b"v"
    assert await stale.batch_get([key]) == {key: b"v"}
    assert calls == []


async def test_adjuster_argument_and_answer_are_checked(client: AsyncTransactionClient) -> None:
    snap = client.snapshot(
        await client.current_timestamp(), TransactionOptions(replica_read="follower")
    )
    with pytest.raises(TypeError, match="callable"):
        snap.set_replica_read_adjuster("closest")  # type: ignore[arg-type]
    snap.set_replica_read_adjuster(lambda n: (None, "nearest"))  # type: ignore[arg-type,return-value]
    with pytest.raises(ValueError, match="nearest"):
        await snap.get(b"\x10adj-bad")
    snap.set_replica_read_adjuster(None)
    assert await snap.get(b"\x10adj-bad") is None


def test_blocking_facade(cluster: MockCluster) -> None:
    from tikv_txn import TransactionClient

    key = b"\x10adj-sync%03d" % next(_ids)
    calls: list[int] = []

    def adjuster(count: int) -> tuple[dict[str, str] | None, ReplicaReadType]:
        calls.append(count)
        return {"zone": "dc1"}, "mixed"

    with TransactionClient.connect(cluster.pd_endpoints) as client:
        with client.begin() as txn:
            txn.put(key, b"v")
        snap = client.snapshot(client.current_timestamp(), replica_read="mixed")
        snap.set_replica_read_adjuster(adjuster)
        assert snap.get(key) == b"v"
    assert calls == [1]
