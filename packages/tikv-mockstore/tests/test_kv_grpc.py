"""The transactional handlers served by a real MockCluster over gRPC (unary and BatchCommands).

Two regions split at the transactional user key ``m``; every request is routed to the region's
leader store as a client would, with the region's epoch and leader peer in its context.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from tikv_mockstore.kv_pessimistic import lock_wait_manager
from tikv_mockstore.server import MockCluster
from tikv_proto import kvrpcpb_pb2, tikvpb_pb2, tikvpb_pb2_grpc

Op = kvrpcpb_pb2.Op
DEADLINE = 10.0  # seconds, for every RPC


@pytest.fixture(scope="module")
def cluster() -> Iterator[MockCluster]:
    with MockCluster(stores=2, split_txn=[b"m"], max_workers=8) as c:
        lock_wait_manager(c.engine).wait_for_lock_timeout_ms = 30_000
        yield c


class Client:
    """Routes transactional requests to the leader of the key's region."""

    def __init__(self, cluster: MockCluster) -> None:
        self.cluster = cluster
        self._channels: dict[str, grpc.Channel] = {}
        self._stubs: dict[str, tikvpb_pb2_grpc.TikvStub] = {}

    def close(self) -> None:
        for ch in self._channels.values():
            ch.close()

    def route(self, key: bytes) -> tuple[tikvpb_pb2_grpc.TikvStub, kvrpcpb_pb2.Context]:
        region = self.cluster.region_by_key(key, txn=True)
        assert region is not None
        leader = region.leader
        assert leader is not None
        address = self.cluster.store_addresses[region.leader_store_id]
        if address not in self._stubs:
            self._channels[address] = grpc.insecure_channel(address)
            self._stubs[address] = tikvpb_pb2_grpc.TikvStub(self._channels[address])
        ctx = kvrpcpb_pb2.Context(region_id=region.id, peer=leader.to_pb())
        ctx.region_epoch.conf_ver = region.conf_ver
        ctx.region_epoch.version = region.version
        return self._stubs[address], ctx

    def ts(self) -> int:
        return self.cluster.current_ts()


@pytest.fixture
def client(cluster: MockCluster) -> Iterator[Client]:
    c = Client(cluster)
    yield c
    c.close()


def put(client: Client, key: bytes, value: bytes) -> int:
    stub, ctx = client.route(key)
    start = client.ts()
    pw = stub.KvPrewrite(
        kvrpcpb_pb2.PrewriteRequest(
            context=ctx,
            mutations=[kvrpcpb_pb2.Mutation(op=Op.Put, key=key, value=value)],
            primary_lock=key,
            start_version=start,
            lock_ttl=3000,
        ),
        timeout=DEADLINE,
    )
    assert not pw.errors and not pw.HasField("region_error"), pw
    commit_ts = client.ts()
    resp = stub.KvCommit(
        kvrpcpb_pb2.CommitRequest(
            context=ctx, keys=[key], start_version=start, commit_version=commit_ts
        ),
        timeout=DEADLINE,
    )
    assert resp.commit_version == commit_ts, resp
    return commit_ts


def test_write_read_and_scan_clipped_to_the_region(client: Client) -> None:
    put(client, b"grpc-a", b"1")
    put(client, b"grpc-b", b"2")
    put(client, b"zz-grpc", b"3")  # the other region
    stub, ctx = client.route(b"grpc-a")
    got = stub.KvGet(
        kvrpcpb_pb2.GetRequest(context=ctx, key=b"grpc-a", version=client.ts()), timeout=DEADLINE
    )
    assert got.value == b"1"
    # An open end key: the first region answers with its own keys only.
    scan = stub.KvScan(
        kvrpcpb_pb2.ScanRequest(context=ctx, start_key=b"grpc", limit=100, version=client.ts()),
        timeout=DEADLINE,
    )
    assert [p.key for p in scan.pairs] == [b"grpc-a", b"grpc-b"]
    # A key of the other region is refused with KeyNotInRegion.
    wrong = stub.KvGet(
        kvrpcpb_pb2.GetRequest(context=ctx, key=b"zz-grpc", version=client.ts()),
        timeout=DEADLINE,
    )
    assert wrong.region_error.HasField("key_not_in_region")


def test_unary_waiter_proceeds_when_the_holder_commits(client: Client) -> None:
    key = b"grpc-wait"
    stub, ctx = client.route(key)
    holder = client.ts()
    first = stub.KvPessimisticLock(
        kvrpcpb_pb2.PessimisticLockRequest(
            context=ctx,
            mutations=[kvrpcpb_pb2.Mutation(op=Op.PessimisticLock, key=key)],
            primary_lock=key,
            start_version=holder,
            for_update_ts=holder,
            lock_ttl=20_000,
        ),
        timeout=DEADLINE,
    )
    assert not first.errors
    waiter = client.ts()
    future = stub.KvPessimisticLock.future(
        kvrpcpb_pb2.PessimisticLockRequest(
            context=ctx,
            mutations=[kvrpcpb_pb2.Mutation(op=Op.PessimisticLock, key=key)],
            primary_lock=key,
            start_version=waiter,
            for_update_ts=waiter,
            lock_ttl=20_000,
            wait_timeout=5000,
            wake_up_mode=kvrpcpb_pb2.WakeUpModeForceLock,
        ),
        timeout=DEADLINE,
    )
    manager = lock_wait_manager(client.cluster.engine)
    # Poll (with a deadline) until the request is parked, then release the lock.
    event = threading.Event()
    for _ in range(200):
        if manager.waiter_count:
            break
        event.wait(0.01)
    assert manager.waiter_count == 1
    assert not future.done()
    pw = stub.KvPrewrite(
        kvrpcpb_pb2.PrewriteRequest(
            context=ctx,
            mutations=[kvrpcpb_pb2.Mutation(op=Op.Put, key=key, value=b"v")],
            primary_lock=key,
            start_version=holder,
            for_update_ts=holder,
            pessimistic_actions=[kvrpcpb_pb2.PrewriteRequest.DO_PESSIMISTIC_CHECK],
            lock_ttl=3000,
        ),
        timeout=DEADLINE,
    )
    assert not pw.errors
    commit_ts = client.ts()
    assert stub.KvCommit(
        kvrpcpb_pb2.CommitRequest(
            context=ctx, keys=[key], start_version=holder, commit_version=commit_ts
        ),
        timeout=DEADLINE,
    ).commit_version
    resp = future.result(timeout=DEADLINE)
    assert not resp.errors
    (result,) = resp.results
    assert result.type == kvrpcpb_pb2.LockResultLockedWithConflict
    assert result.locked_with_conflict_ts == commit_ts
    # Clean up the waiter's lock.
    stub.KVPessimisticRollback(
        kvrpcpb_pb2.PessimisticRollbackRequest(
            context=ctx, start_version=waiter, for_update_ts=commit_ts, keys=[key]
        ),
        timeout=DEADLINE,
    )


def batch_request(reqs: list[tuple[str, Any]], first_id: int) -> tikvpb_pb2.BatchCommandsRequest:
    batch = tikvpb_pb2.BatchCommandsRequest()
    for i, (name, req) in enumerate(reqs):
        getattr(batch.requests.add(), name).CopyFrom(req)
        batch.request_ids.append(first_id + i)
    return batch


def test_batch_commands_answer_others_while_a_lock_waits(client: Client) -> None:
    key = b"grpc-batch"
    stub, ctx = client.route(key)
    holder = client.ts()

    def lock_req(start: int, wait_timeout: int) -> kvrpcpb_pb2.PessimisticLockRequest:
        return kvrpcpb_pb2.PessimisticLockRequest(
            context=ctx,
            mutations=[kvrpcpb_pb2.Mutation(op=Op.PessimisticLock, key=key)],
            primary_lock=key,
            start_version=start,
            for_update_ts=start,
            lock_ttl=20_000,
            wait_timeout=wait_timeout,
        )

    assert not stub.KvPessimisticLock(lock_req(holder, 0), timeout=DEADLINE).errors
    waiter = client.ts()
    rollback = kvrpcpb_pb2.PessimisticRollbackRequest(
        context=ctx, start_version=holder, for_update_ts=holder, keys=[key]
    )
    sent = [
        batch_request(
            [
                ("PessimisticLock", lock_req(waiter, 5000)),
                ("Get", kvrpcpb_pb2.GetRequest(context=ctx, key=b"grpc-none", version=waiter)),
            ],
            first_id=1,
        )
    ]
    release = threading.Event()

    def requests() -> Iterator[tikvpb_pb2.BatchCommandsRequest]:
        yield sent[0]
        release.wait(DEADLINE)
        yield batch_request([("PessimisticRollback", rollback)], first_id=3)

    answers: dict[int, Any] = {}
    call = stub.BatchCommands(requests(), timeout=DEADLINE)
    try:
        for message in call:
            for rid, resp in zip(message.request_ids, message.responses, strict=True):
                name = resp.WhichOneof("cmd")
                assert name is not None
                answers[rid] = getattr(resp, name)
            if 2 in answers and 1 not in answers:
                # The Get came back while the lock request still waits: release the lock.
                release.set()
            if len(answers) == 3:
                break
    finally:
        release.set()
        call.cancel()  # type: ignore[no-untyped-call]
    assert answers[2].not_found
    assert not answers[3].errors
    conflict = answers[1].errors[0].conflict
    assert (conflict.start_ts, conflict.conflict_ts) == (waiter, holder)


def test_deadlock_between_two_stores(client: Client) -> None:
    cluster = client.cluster
    upper = cluster.region_by_key(b"zz", txn=True)
    assert upper is not None
    cluster.transfer_leader(upper.id, 2)  # the two keys are now served by different stores
    k1, k2 = b"grpc-dl", b"zz-dl"
    stub1, ctx1 = client.route(k1)
    stub2, ctx2 = client.route(k2)
    assert ctx1.peer.store_id != ctx2.peer.store_id

    def lock_req(
        ctx: kvrpcpb_pb2.Context, key: bytes, primary: bytes, start: int, first: bool
    ) -> kvrpcpb_pb2.PessimisticLockRequest:
        return kvrpcpb_pb2.PessimisticLockRequest(
            context=ctx,
            mutations=[kvrpcpb_pb2.Mutation(op=Op.PessimisticLock, key=key)],
            primary_lock=primary,
            start_version=start,
            for_update_ts=start,
            lock_ttl=20_000,
            is_first_lock=first,
            wait_timeout=5000,
        )

    t1, t2 = client.ts(), client.ts()
    assert not stub1.KvPessimisticLock(lock_req(ctx1, k1, k1, t1, True), timeout=DEADLINE).errors
    assert not stub2.KvPessimisticLock(lock_req(ctx2, k2, k2, t2, True), timeout=DEADLINE).errors
    t1_waits = stub2.KvPessimisticLock.future(lock_req(ctx2, k2, k1, t1, False), timeout=DEADLINE)
    manager = lock_wait_manager(cluster.engine)
    event = threading.Event()
    for _ in range(200):
        if manager.waiter_count:
            break
        event.wait(0.01)
    assert manager.waiter_count == 1
    resp = stub1.KvPessimisticLock(lock_req(ctx1, k1, k2, t2, False), timeout=DEADLINE)
    deadlock = resp.errors[0].deadlock
    assert (deadlock.lock_ts, deadlock.lock_key) == (t1, k1)
    assert [(e.txn, e.wait_for_txn, e.key) for e in deadlock.wait_chain] == [
        (t1, t2, k2),
        (t2, t1, k1),
    ]
    assert not t1_waits.done()
    rollback = stub2.KVPessimisticRollback(
        kvrpcpb_pb2.PessimisticRollbackRequest(
            context=ctx2, start_version=t2, for_update_ts=t2, keys=[k2]
        ),
        timeout=DEADLINE,
    )
    assert not rollback.errors
    conflict = t1_waits.result(timeout=DEADLINE).errors[0].conflict
    assert (conflict.start_ts, conflict.conflict_ts, conflict.conflict_commit_ts) == (t1, t2, 0)
    stub1.KVPessimisticRollback(
        kvrpcpb_pb2.PessimisticRollbackRequest(
            context=ctx1, start_version=t1, for_update_ts=t1, keys=[k1]
        ),
        timeout=DEADLINE,
    )


def test_client_rust_lock_resolution_flows(client: Client) -> None:
    """The calls tikv-client 0.0.4 makes for an abandoned lock and for gc()."""
    key, other = b"grpc-crash", b"grpc-crash2"
    stub, ctx = client.route(key)
    crashed = client.ts()
    pw = stub.KvPrewrite(
        kvrpcpb_pb2.PrewriteRequest(
            context=ctx,
            mutations=[
                kvrpcpb_pb2.Mutation(op=Op.Put, key=key, value=b"lost"),
                kvrpcpb_pb2.Mutation(op=Op.Put, key=other, value=b"lost"),
            ],
            primary_lock=key,
            start_version=crashed,
            lock_ttl=3000,
            txn_size=2**64 - 1,
            secondaries=[other],  # sent without async commit; ignored
        ),
        timeout=DEADLINE,
    )
    assert not pw.errors
    read_ts = client.ts()
    locked = stub.KvGet(
        kvrpcpb_pb2.GetRequest(context=ctx, key=other, version=read_ts), timeout=DEADLINE
    )
    assert locked.error.locked.primary_lock == key
    # Cleanup of the primary without current_ts rolls it back whatever its TTL...
    cleanup = stub.KvCleanup(
        kvrpcpb_pb2.CleanupRequest(context=ctx, key=key, start_version=crashed), timeout=DEADLINE
    )
    assert (cleanup.commit_version, cleanup.HasField("error")) == (0, False)
    # ... then ResolveLock with no keys resolves the transaction in the whole region.
    resolve = stub.KvResolveLock(
        kvrpcpb_pb2.ResolveLockRequest(context=ctx, start_version=crashed, commit_version=0),
        timeout=DEADLINE,
    )
    assert not resolve.HasField("error")
    again = stub.KvGet(
        kvrpcpb_pb2.GetRequest(context=ctx, key=other, version=read_ts), timeout=DEADLINE
    )
    assert again.not_found and not again.HasField("error")
    # gc(): ScanLock, CheckTxnStatus(current_ts=u64::MAX), ResolveLock(txn_infos), for a
    # transaction that prewrote and never committed.
    committed = client.ts()
    assert not stub.KvPrewrite(
        kvrpcpb_pb2.PrewriteRequest(
            context=ctx,
            mutations=[kvrpcpb_pb2.Mutation(op=Op.Put, key=key, value=b"kept")],
            primary_lock=key,
            start_version=committed,
            lock_ttl=3000,
        ),
        timeout=DEADLINE,
    ).errors
    safepoint = client.ts()
    locks = stub.KvScanLock(
        kvrpcpb_pb2.ScanLockRequest(context=ctx, max_version=safepoint, limit=1024),
        timeout=DEADLINE,
    ).locks
    mine = [(lk.key, lk.lock_version) for lk in locks if lk.key.startswith(b"grpc-crash")]
    assert mine == [(key, committed)]
    status = stub.KvCheckTxnStatus(
        kvrpcpb_pb2.CheckTxnStatusRequest(
            context=ctx,
            primary_key=key,
            lock_ts=committed,
            current_ts=2**64 - 1,
            rollback_if_not_exist=True,
        ),
        timeout=DEADLINE,
    )
    # The lock's TTL has long passed against u64::MAX: rolled back.
    assert status.action == kvrpcpb_pb2.TTLExpireRollback
    resolve = stub.KvResolveLock(
        kvrpcpb_pb2.ResolveLockRequest(
            context=ctx, txn_infos=[kvrpcpb_pb2.TxnInfo(txn=committed, status=0)]
        ),
        timeout=DEADLINE,
    )
    assert not resolve.HasField("error")
    left = stub.KvScanLock(
        kvrpcpb_pb2.ScanLockRequest(context=ctx, max_version=safepoint), timeout=DEADLINE
    ).locks
    assert [lk.key for lk in left if lk.key.startswith(b"grpc-crash")] == []
