"""Fault injection (region errors, statuses, probability, delay, hang, dropped streams) and
request counters."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from tikv_mockstore import MockCluster
from tikv_mockstore.faults import FaultInjector
from tikv_mockstore.testing import Stubs, context_for
from tikv_proto import errorpb_pb2, kvrpcpb_pb2, pdpb_pb2, tikvpb_pb2


@pytest.fixture
def cluster() -> Iterator[MockCluster]:
    with MockCluster(stores=2, split_raw=[b"m"]) as c:
        yield c


@pytest.fixture
def stubs(cluster: MockCluster) -> Iterator[Stubs]:
    with Stubs(cluster) as s:
        yield s


def _get(stubs: Stubs, key: bytes = b"a") -> kvrpcpb_pb2.RawGetResponse:
    stub, ctx = stubs.route(key)
    return stub.RawGet(kvrpcpb_pb2.RawGetRequest(context=ctx, key=key))


def test_region_error_n_times(cluster: MockCluster, stubs: Stubs) -> None:
    fault = cluster.faults.add("RawGet", region_error="server_is_busy", times=2)
    assert _get(stubs).region_error.HasField("server_is_busy")
    assert _get(stubs).region_error.HasField("server_is_busy")
    assert not _get(stubs).HasField("region_error")
    assert fault.hits == 2


def test_not_leader_fault_names_the_leader(cluster: MockCluster, stubs: Stubs) -> None:
    cluster.faults.add("RawGet", region_error="not_leader", times=1)
    resp = _get(stubs)
    region = cluster.region_by_key(b"a")
    assert region is not None
    assert resp.region_error.not_leader.region_id == region.id
    assert resp.region_error.not_leader.leader.store_id == region.leader_store_id


def test_epoch_not_match_fault_has_current_region(cluster: MockCluster, stubs: Stubs) -> None:
    cluster.faults.add("Get", region_error="epoch_not_match", times=1)  # command name works
    stub, ctx = stubs.route(b"a")
    resp = stub.RawGet(kvrpcpb_pb2.RawGetRequest(context=ctx, key=b"a"))
    assert not resp.HasField("region_error")  # "Get" is KvGet, not RawGet
    cluster.faults.clear()
    cluster.faults.add("RawGet", region_error="epoch_not_match", times=1)
    resp = _get(stubs)
    (current,) = resp.region_error.epoch_not_match.current_regions
    assert current.id == ctx.region_id
    assert current.HasField("region_epoch")


def test_grpc_status(cluster: MockCluster, stubs: Stubs) -> None:
    cluster.faults.add("RawGet", status=grpc.StatusCode.UNAVAILABLE, times=1, message="boom")
    with pytest.raises(grpc.RpcError) as err:
        _get(stubs)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert err.value.details() == "boom"
    assert not _get(stubs).HasField("region_error")
    cluster.faults.add("RawGet", status=14, times=1)  # by number
    with pytest.raises(grpc.RpcError):
        _get(stubs)


def test_store_and_region_filters(cluster: MockCluster, stubs: Stubs) -> None:
    left = cluster.region_by_key(b"a")
    right = cluster.region_by_key(b"z")
    assert left is not None and right is not None
    cluster.faults.add("RawGet", region=right.id, region_error="region_not_found")
    assert not _get(stubs, b"a").HasField("region_error")
    assert _get(stubs, b"z").region_error.region_not_found.region_id == right.id
    cluster.faults.clear()
    cluster.faults.add(store=2, region_error="server_is_busy")  # any method, store 2 only
    assert not _get(stubs, b"a").HasField("region_error")  # leaders are on store 1
    follower_ctx = context_for(left, store_id=2)
    resp = stubs.tikv(2).RawGet(kvrpcpb_pb2.RawGetRequest(context=follower_ctx, key=b"a"))
    assert resp.region_error.HasField("server_is_busy")


def test_probability() -> None:
    inj = FaultInjector(seed=3)
    never = inj.add("RawGet", region_error="server_is_busy", probability=0.0)
    assert all(inj.apply("RawGet", 1, 1) is None for _ in range(50))
    assert never.hits == 0
    inj.clear()
    half = inj.add("RawGet", region_error="server_is_busy", probability=0.5)
    fired = sum(inj.apply("RawGet", 1, 1) is not None for _ in range(400))
    assert 0 < fired < 400
    assert half.hits == fired


def test_delay_then_serve(cluster: MockCluster, stubs: Stubs) -> None:
    fault = cluster.faults.add("RawGet", delay=0.01, times=1)
    assert not _get(stubs).HasField("region_error")
    assert fault.hits == 1


def test_hang_until_released(cluster: MockCluster, stubs: Stubs) -> None:
    fault = cluster.faults.add("RawPut", hang=True)
    stub, ctx = stubs.route(b"h")
    call = stub.RawPut.future(kvrpcpb_pb2.RawPutRequest(context=ctx, key=b"h", value=b"1"))
    assert cluster.faults.wait_hanging(1, timeout=10)
    assert not call.done()
    fault.release()
    assert not call.result(timeout=10).error
    assert _get(stubs, b"h").value == b"1"


def test_hang_in_batch_does_not_block_other_sub_requests(
    cluster: MockCluster, stubs: Stubs
) -> None:
    fault = cluster.faults.add("RawPut", hang=True)
    stub, ctx = stubs.route(b"a")
    q: queue.Queue[tikvpb_pb2.BatchCommandsRequest | None] = queue.Queue()

    def gen() -> Iterator[tikvpb_pb2.BatchCommandsRequest]:
        while (item := q.get()) is not None:
            yield item

    it = iter(stub.BatchCommands(gen()))
    req = tikvpb_pb2.BatchCommandsRequest(request_ids=[1, 2])
    req.requests.add(RawPut=kvrpcpb_pb2.RawPutRequest(context=ctx, key=b"a", value=b"v"))
    req.requests.add(RawGet=kvrpcpb_pb2.RawGetRequest(context=ctx, key=b"a"))
    q.put(req)
    first = next(it)
    assert list(first.request_ids) == [2]
    # The sub-request hanging inside the stream counts like a hanging unary call.
    assert cluster.faults.wait_hanging(1, timeout=10)
    assert cluster.faults.hanging() == 1
    fault.release()
    second = next(it)
    assert list(second.request_ids) == [1]
    q.put(None)
    assert list(it) == []


def test_hang_on_batch_commands_stalls_the_whole_stream(cluster: MockCluster, stubs: Stubs) -> None:
    fault = cluster.faults.add("BatchCommands", hang=True, times=1)
    stub, ctx = stubs.route(b"a")
    req = tikvpb_pb2.BatchCommandsRequest(request_ids=[1])
    req.requests.add(RawGet=kvrpcpb_pb2.RawGetRequest(context=ctx, key=b"a"))
    call = stub.BatchCommands(iter([req]))
    with futures.ThreadPoolExecutor(1) as pool:
        answers = pool.submit(lambda: list(call))
        assert cluster.faults.wait_hanging(1, timeout=10)
        assert not answers.done()
        fault.release()
        (resp,) = answers.result(timeout=10)
    assert list(resp.request_ids) == [1]
    assert fault.hits == 1
    # A stream fault with a status ends the stream; a fault without a method does not
    # act on the stream itself, only on its sub-requests.
    cluster.faults.add("BatchCommands", status="UNAVAILABLE", times=1)
    with pytest.raises(grpc.RpcError) as err:
        list(stub.BatchCommands(iter([req])))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    unnamed = cluster.faults.add(region_error="server_is_busy", times=1)
    (busy,) = list(stub.BatchCommands(iter([req])))
    assert busy.responses[0].RawGet.region_error.HasField("server_is_busy")
    assert unnamed.hits == 1


def test_drop_stream(cluster: MockCluster, stubs: Stubs) -> None:
    cluster.faults.add("RawGet", drop_stream=True, times=1)
    stub, ctx = stubs.route(b"a")
    req = tikvpb_pb2.BatchCommandsRequest(request_ids=[1])
    req.requests.add(RawGet=kvrpcpb_pb2.RawGetRequest(context=ctx, key=b"a"))
    with pytest.raises(grpc.RpcError) as err:
        list(stub.BatchCommands(iter([req])))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_pd_faults(cluster: MockCluster, stubs: Stubs) -> None:
    cluster.faults.add("GetRegion", status="UNAVAILABLE", times=1)
    pd, h = stubs.pd(), stubs.header()
    with pytest.raises(grpc.RpcError) as err:
        pd.GetRegion(pdpb_pb2.GetRegionRequest(header=h, region_key=b"a"))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert pd.GetRegion(pdpb_pb2.GetRegionRequest(header=h, region_key=b"a")).HasField("region")
    # A fault without a method targets TiKV only.
    cluster.faults.add(status="INTERNAL")
    assert pd.GetRegion(pdpb_pb2.GetRegionRequest(header=h, region_key=b"a")).HasField("region")


def test_bad_fault_specs(cluster: MockCluster) -> None:
    with pytest.raises(ValueError, match="unknown TiKV / PD method"):
        cluster.faults.add("NoSuchMethod", status="UNAVAILABLE")
    with pytest.raises(ValueError, match="region error kind"):
        cluster.faults.add("RawGet", region_error="bogus")
    with pytest.raises(ValueError, match="effect"):
        cluster.faults.add("RawGet")
    with pytest.raises(ValueError, match="probability"):
        cluster.faults.add("RawGet", status="UNAVAILABLE", probability=2)
    with pytest.raises(ValueError, match="either"):
        cluster.faults.add("RawGet", status="UNAVAILABLE", region_error="not_leader")
    with pytest.raises(ValueError, match="PD method"):
        cluster.faults.add("GetRegion", region_error="not_leader")


def test_counters_and_last_context(cluster: MockCluster, stubs: Stubs) -> None:
    cluster.counters.reset()
    stub, ctx = stubs.route(b"c")
    ctx.request_source = "internal_test"
    ctx.resource_control_context.resource_group_name = "rg1"
    stub.RawPut(kvrpcpb_pb2.RawPutRequest(context=ctx, key=b"c", value=b"1"))
    stub.RawGet(kvrpcpb_pb2.RawGetRequest(context=ctx, key=b"c"))
    stub.RawGet(kvrpcpb_pb2.RawGetRequest(context=ctx, key=b"c"))
    assert cluster.counters.count("RawGet") == 2
    assert cluster.counters.count("RawGet", store=2) == 0
    assert cluster.counters.count("KvCommit") == 0
    assert cluster.counters.count("Commit") == 0
    last = cluster.counters.last_context("RawPut", store=ctx.peer.store_id)
    assert last is not None
    assert last.request_source == "internal_test"
    assert last.resource_control_context.resource_group_name == "rg1"
    snap = cluster.counters.snapshot()
    assert snap[(ctx.peer.store_id, "RawPut")] == 1
    stubs.pd().GetMembers(pdpb_pb2.GetMembersRequest())
    assert cluster.counters.count("GetMembers", store=0) == 1


def test_custom_region_error(cluster: MockCluster, stubs: Stubs) -> None:
    busy = errorpb_pb2.Error(
        message="busy", server_is_busy=errorpb_pb2.ServerIsBusy(reason="r", estimated_wait_ms=80)
    )
    cluster.faults.add("RawGet", region_error=busy, times=1)
    assert _get(stubs).region_error == busy
    with pytest.raises(ValueError, match="one error field"):
        cluster.faults.add("RawGet", region_error=errorpb_pb2.Error(message="nothing"))


# ---------------------------------------------------------------------------- key errors


def _txn_put(cluster: MockCluster, stubs: Stubs, pairs: dict[bytes, bytes]) -> int:
    """Commit ``pairs`` in one transaction (keys in one region); returns the commit ts."""
    keys = sorted(pairs)
    stub, ctx = stubs.route(keys[0], txn=True)
    start = cluster.current_ts()
    muts = [kvrpcpb_pb2.Mutation(op=kvrpcpb_pb2.Put, key=k, value=pairs[k]) for k in keys]
    pre = stub.KvPrewrite(
        kvrpcpb_pb2.PrewriteRequest(
            context=ctx, mutations=muts, primary_lock=keys[0], start_version=start, lock_ttl=3000
        )
    )
    assert not pre.errors and not pre.HasField("region_error")
    commit = cluster.current_ts()
    resp = stub.KvCommit(
        kvrpcpb_pb2.CommitRequest(
            context=ctx, keys=keys, start_version=start, commit_version=commit
        )
    )
    assert not resp.HasField("error") and not resp.HasField("region_error")
    return commit


def test_key_error_on_get_fills_a_lock_below_the_reader(cluster: MockCluster, stubs: Stubs) -> None:
    _txn_put(cluster, stubs, {b"ka": b"va"})
    fault = cluster.faults.add("KvGet", key_error="locked", times=1)
    stub, ctx = stubs.route(b"ka", txn=True)
    ts = cluster.current_ts()
    resp = stub.KvGet(kvrpcpb_pb2.GetRequest(context=ctx, key=b"ka", version=ts))
    lock = resp.error.locked
    assert (lock.key, lock.primary_lock, lock.lock_version) == (b"ka", b"ka", ts - 1)
    assert lock.lock_ttl == 50 and lock.txn_size == 1 and lock.lock_type == kvrpcpb_pb2.Put
    assert not resp.value and not resp.HasField("region_error")
    assert fault.hits == 1
    # Fired once: the next read is served.
    resp = stub.KvGet(kvrpcpb_pb2.GetRequest(context=ctx, key=b"ka", version=ts))
    assert resp.value == b"va" and not resp.HasField("error")


def test_key_error_on_batch_get_whole_request_and_per_key(
    cluster: MockCluster, stubs: Stubs
) -> None:
    _txn_put(cluster, stubs, {b"kb1": b"v1", b"kb2": b"v2"})
    stub, ctx = stubs.route(b"kb1", txn=True)
    ts = cluster.current_ts()
    req = kvrpcpb_pb2.BatchGetRequest(context=ctx, keys=[b"kb1", b"kb2"], version=ts)
    # The whole request failed: TiKV sets `error` and copies it into a (sole) first pair.
    cluster.faults.add("BatchGet", key_error="locked", times=1)
    resp = stub.KvBatchGet(req)
    assert resp.error.locked.key == b"kb1" and resp.error.locked.lock_version == ts - 1
    assert [p.error for p in resp.pairs] == [resp.error]
    # One key locked: that key's pair carries the error, the other key is served.
    cluster.faults.add("KvBatchGet", key_error="locked", per_key=True, times=1)
    resp = stub.KvBatchGet(req)
    assert not resp.HasField("error")
    assert resp.pairs[0].error.locked.key == b"kb1" and not resp.pairs[0].key
    assert [(p.key, p.value) for p in resp.pairs[1:]] == [(b"kb2", b"v2")]
    resp = stub.KvBatchGet(req)
    assert [(p.key, p.value) for p in resp.pairs] == [(b"kb1", b"v1"), (b"kb2", b"v2")]


def test_key_error_on_scan_per_pair_and_whole(cluster: MockCluster, stubs: Stubs) -> None:
    _txn_put(cluster, stubs, {b"ks1": b"v1", b"ks2": b"v2", b"ks3": b"v3"})
    stub, ctx = stubs.route(b"ks1", txn=True)
    ts = cluster.current_ts()
    req = kvrpcpb_pb2.ScanRequest(context=ctx, start_key=b"ks", end_key=b"kt", limit=10, version=ts)
    cluster.faults.add("KvScan", key_error="locked", per_key=True, times=1)
    resp = stub.KvScan(req)
    assert resp.pairs[0].error.locked.key == b"ks1"
    assert [(p.key, p.value) for p in resp.pairs[1:]] == [(b"ks2", b"v2"), (b"ks3", b"v3")]
    cluster.faults.add("KvScan", key_error="retryable", message="try again", times=1)
    resp = stub.KvScan(req)
    assert resp.error.retryable == "try again"
    assert [p.error.retryable for p in resp.pairs] == ["try again"]
    assert len(stub.KvScan(req).pairs) == 3


def test_key_error_on_prewrite_and_commit_executes_nothing(
    cluster: MockCluster, stubs: Stubs
) -> None:
    stub, ctx = stubs.route(b"kp", txn=True)
    start = cluster.current_ts()
    prewrite = kvrpcpb_pb2.PrewriteRequest(
        context=ctx,
        mutations=[kvrpcpb_pb2.Mutation(op=kvrpcpb_pb2.Put, key=b"kp", value=b"v")],
        primary_lock=b"kp",
        start_version=start,
        lock_ttl=3000,
    )
    cluster.faults.add("KvPrewrite", key_error="conflict", times=1)
    resp = stub.KvPrewrite(prewrite)
    (err,) = resp.errors
    assert err.conflict.start_ts == start and err.conflict.key == b"kp"
    assert err.conflict.conflict_commit_ts > start
    assert cluster.engine.scan_lock(2**64 - 1, b"", b"") == []  # no lock was written
    assert not stub.KvPrewrite(prewrite).errors
    commit_ts = cluster.current_ts()
    commit = kvrpcpb_pb2.CommitRequest(
        context=ctx, keys=[b"kp"], start_version=start, commit_version=commit_ts
    )
    cluster.faults.add("KvCommit", key_error="abort", message="no", times=1)
    assert stub.KvCommit(commit).error.abort == "no"
    assert len(cluster.engine.scan_lock(2**64 - 1, b"", b"")) == 1  # still prewritten
    assert stub.KvCommit(commit).commit_version == commit_ts


def test_key_error_custom_lock_and_until_removed(cluster: MockCluster, stubs: Stubs) -> None:
    lock = kvrpcpb_pb2.LockInfo(primary_lock=b"p", lock_version=7, key=b"kc", lock_ttl=9)
    fault = cluster.faults.add("KvGet", key_error=lock)
    stub, ctx = stubs.route(b"kc", txn=True)
    req = kvrpcpb_pb2.GetRequest(context=ctx, key=b"kc", version=cluster.current_ts())
    for _ in range(3):
        assert stub.KvGet(req).error.locked == lock
    cluster.faults.remove(fault)
    assert stub.KvGet(req).not_found
    assert fault.hits == 3
    whole = kvrpcpb_pb2.KeyError(txn_lock_not_found=kvrpcpb_pb2.TxnLockNotFound(key=b"x"))
    cluster.faults.add("KvCommit", key_error=whole, times=1)
    commit = kvrpcpb_pb2.CommitRequest(context=ctx, keys=[b"kc"], start_version=1)
    assert stub.KvCommit(commit).error == whole


def test_key_error_skips_misrouted_requests(cluster: MockCluster, stubs: Stubs) -> None:
    # TiKV checks the region before it runs a command: a request sent to a follower gets
    # NotLeader, and the fault waits for a request that reaches the leader.
    region = cluster.region_by_key(b"kr", txn=True)
    assert region is not None
    fault = cluster.faults.add("KvGet", key_error="locked", times=1)
    follower = next(p.store_id for p in region.peers if p.store_id != region.leader_store_id)
    req = kvrpcpb_pb2.GetRequest(
        context=context_for(region, store_id=follower), key=b"kr", version=cluster.current_ts()
    )
    resp = stubs.tikv(follower).KvGet(req)
    assert resp.region_error.HasField("not_leader") and not resp.HasField("error")
    assert fault.hits == 0
    stub, ctx = stubs.route(b"kr", txn=True)
    req.context.CopyFrom(ctx)
    assert stub.KvGet(req).error.HasField("locked")
    assert fault.hits == 1


def test_key_error_in_batch_commands(cluster: MockCluster, stubs: Stubs) -> None:
    stub, ctx = stubs.route(b"kq", txn=True)
    cluster.faults.add("KvGet", key_error="txn_not_found", times=1)
    ts = cluster.current_ts()
    req = tikvpb_pb2.BatchCommandsRequest(request_ids=[1, 2])
    for _ in range(2):
        req.requests.add().Get.CopyFrom(kvrpcpb_pb2.GetRequest(context=ctx, key=b"kq", version=ts))
    answers: dict[int, kvrpcpb_pb2.GetResponse] = {}
    for msg in stub.BatchCommands(iter([req])):
        for rid, r in zip(msg.request_ids, msg.responses, strict=True):
            answers[rid] = r.Get
    errors = [a.error for a in answers.values() if a.HasField("error")]
    assert len(answers) == 2 and len(errors) == 1
    assert errors[0].txn_not_found.start_ts == ts
    assert errors[0].txn_not_found.primary_key == b"kq"


def test_bad_key_error_specs(cluster: MockCluster) -> None:
    with pytest.raises(ValueError, match="key error kind"):
        cluster.faults.add("KvGet", key_error="bogus")
    with pytest.raises(ValueError, match="carries key errors"):
        cluster.faults.add("RawGet", key_error="locked")
    with pytest.raises(ValueError, match="carries key errors"):
        cluster.faults.add(key_error="locked")
    with pytest.raises(ValueError, match="not several"):
        cluster.faults.add("KvGet", key_error="locked", region_error="not_leader")
    with pytest.raises(ValueError, match="per_key"):
        cluster.faults.add("KvGet", key_error="locked", per_key=True)
    with pytest.raises(ValueError, match="per_key"):
        cluster.faults.add("KvScan", status="UNAVAILABLE", per_key=True)
    with pytest.raises(ValueError, match="one error field"):
        cluster.faults.add("KvGet", key_error=kvrpcpb_pb2.KeyError())
    with pytest.raises(TypeError, match="key_error"):
        cluster.faults.add("KvGet", key_error=3)  # type: ignore[arg-type]


def test_key_error_fault_in_a_child_process_cluster() -> None:
    with MockCluster(stores=1, process=True) as cluster, Stubs(cluster) as stubs:
        lock = kvrpcpb_pb2.LockInfo(primary_lock=b"p", lock_version=5, key=b"k", lock_ttl=1)
        fault = cluster.faults.add("KvGet", key_error=lock, times=1)
        stub, ctx = stubs.route(b"k", txn=True)
        req = kvrpcpb_pb2.GetRequest(context=ctx, key=b"k", version=cluster.current_ts())
        assert stub.KvGet(req).error.locked == lock
        assert fault.hits == 0  # it fired its one time and is gone
        assert stub.KvGet(req).not_found
