"""Snapshot runtime statistics (client-go ``snapshot_test.go`` TestSnapshotRuntimeStats).

The formatter is checked against client-go's expected strings; the collection against
the mock cluster: RPC counts per command, backoffs met on a lock, lock-resolution time,
region errors, and the ``exec_details_v2`` a server returns (the mock sends none, so an
interceptor of the test plays TiKV's part and adds them to the responses).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from _txn_helpers import seed
from tikv_mockstore import MockCluster
from tikv_pd.backoff import TXN_LOCK_FAST, Backoffer
from tikv_pd.interceptor import Interceptor, RPCRequest
from tikv_pd.request import RPCRuntimeStats, collect_rpc_stats
from tikv_proto import kvrpcpb_pb2
from tikv_txn import AsyncTransactionClient
from tikv_txn.runtime_stats import (
    PoolTaskDetails,
    ScanDetail,
    SnapshotRuntimeStats,
    format_bytes,
)

MS = 1_000_000
S = 1_000_000_000
_ids = itertools.count()


def test_format_bytes() -> None:
    # client-go util.FormatBytes.
    assert format_bytes(15) == "15 Bytes"
    assert format_bytes(1024) == "1024 Bytes"
    assert format_bytes(1536) == "1.50 KB"
    assert format_bytes(2048) == "2 KB"
    assert format_bytes(100 * 1024 + 1) == "100.0 KB"
    assert format_bytes(3 * 1024 * 1024) == "3 MB"
    assert format_bytes(5 * 1024**3 + 1) == "5.00 GB"
    with pytest.raises(TypeError):
        format_bytes(1.5)  # type: ignore[arg-type]


async def _backoffer_with_two_lock_fast_sleeps() -> Backoffer:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    bo = Backoffer(2000, sleep=sleep)
    await bo.backoff(TXN_LOCK_FAST, "test", max_sleep_ms=5)
    assert slept == [0.005]
    return bo


async def test_snapshot_runtime_stats_string() -> None:
    # client-go TestSnapshotRuntimeStats, step by step.
    req = RPCRuntimeStats()
    req.record_rpc("Get", 1 * S)
    req.record_rpc("Get", 1 * MS)
    stats = SnapshotRuntimeStats()
    stats.merge_region_request_stats(req)
    stats.merge_region_request_stats(req)
    bo = await _backoffer_with_two_lock_fast_sleeps()
    stats.record_backoff(bo.backoff_sleep_ms, bo.backoff_times)
    stats.record_backoff(bo.backoff_sleep_ms, bo.backoff_times)
    expect = "Get:{num_rpc:4, total_time:2s},txnLockFast_backoff:{num:2, total_time:10ms}"
    assert str(stats) == expect
    assert stats.cmd_rpc_count("Get") == 4
    assert stats.cmd_rpc_count("BatchGet") == 0
    detail = kvrpcpb_pb2.ExecDetailsV2(
        time_detail=kvrpcpb_pb2.TimeDetail(wait_wall_time_ms=100, process_wall_time_ms=100),
        scan_detail_v2=kvrpcpb_pb2.ScanDetailV2(
            processed_versions=10,
            processed_versions_size=10,
            total_versions=15,
            get_snapshot_nanos=500,
            rocksdb_block_read_count=20,
            rocksdb_block_read_byte=15,
            rocksdb_delete_skipped_count=5,
            rocksdb_key_skipped_count=1,
            rocksdb_block_cache_hit_count=10,
        ),
    )
    stats.merge_exec_details(detail)
    expect = (
        "Get:{num_rpc:4, total_time:2s},txnLockFast_backoff:{num:2, total_time:10ms}, "
        "time_detail: {total_process_time: 100ms, total_wait_time: 100ms}, "
        "scan_detail: {total_process_keys: 10, total_process_keys_size: 10, total_keys: 15, "
        "get_snapshot_time: 500ns, rocksdb: {delete_skipped_count: 5, key_skipped_count: 1, "
        "block: {cache_hit_count: 10, read_count: 20, read_byte: 15 Bytes}}}"
    )
    assert str(stats) == expect
    stats.merge_exec_details(detail)
    expect = (
        "Get:{num_rpc:4, total_time:2s},txnLockFast_backoff:{num:2, total_time:10ms}, "
        "time_detail: {total_process_time: 200ms, total_wait_time: 200ms}, "
        "scan_detail: {total_process_keys: 20, total_process_keys_size: 20, total_keys: 30, "
        "get_snapshot_time: 1µs, rocksdb: {delete_skipped_count: 10, key_skipped_count: 2, "
        "block: {cache_hit_count: 20, read_count: 40, read_byte: 30 Bytes}}}"
    )
    assert str(stats) == expect
    stats.resolve_lock_ns = 1 * S
    expect = (
        "Get:{num_rpc:4, total_time:2s},txnLockFast_backoff:{num:2, total_time:10ms}, "
        "time_detail: {total_process_time: 200ms, total_wait_time: 200ms}, "
        "resolve_lock_time:1s, "
        "scan_detail: {total_process_keys: 20, total_process_keys_size: 20, total_keys: 30, "
        "get_snapshot_time: 1µs, rocksdb: {delete_skipped_count: 10, key_skipped_count: 2, "
        "block: {cache_hit_count: 20, read_count: 40, read_byte: 30 Bytes}}}"
    )
    assert str(stats) == expect
    stats.merge_exec_details(
        kvrpcpb_pb2.ExecDetailsV2(
            read_pool_task_details=kvrpcpb_pb2.PoolTaskDetails(poll_count=2, dispatch_count=1)
        )
    )
    expect += (
        ", read_pool:{tasks:1, poll_count:{total:2, avg:2, max:2, min:2}, "
        "dispatch_count:{total:1, max:1, min:1}, "
        "fair_queue:{enabled:false, waited_task_slices:{total:0, max:0, min:0}}}"
    )
    assert str(stats) == expect
    # A copy is independent; merging adds everything.
    copy = stats.copy()
    copy.merge(stats)
    assert copy.cmd_rpc_count("Get") == 8
    assert copy.backoff_times == {"txnLockFast": 4}
    assert copy.resolve_lock_ns == 2 * S
    assert copy.scan_detail.total_keys == 60
    assert copy.read_pool.task_count == 2
    assert stats.cmd_rpc_count("Get") == 4


def test_empty_stats_print_nothing() -> None:
    assert str(SnapshotRuntimeStats()) == ""
    assert str(ScanDetail()) == ""
    assert str(PoolTaskDetails()) == ""


def test_pool_task_details_aggregate() -> None:
    d = PoolTaskDetails()
    d.merge_from_pb(
        kvrpcpb_pb2.PoolTaskDetails(
            poll_count=3,
            dispatch_count=2,
            total_wall_nanos=4 * MS,
            total_queue_wait_nanos=2 * MS,
            max_queue_wait_nanos=1500_000,
            min_queue_wait_nanos=500_000,
            fair_queue_enabled=True,
            total_fair_queue_waited_task_slices=3,
            max_fair_queue_waited_task_slices=2,
            min_fair_queue_waited_task_slices=1,
        )
    )
    d.merge_from_pb(kvrpcpb_pb2.PoolTaskDetails(poll_count=1, dispatch_count=1))
    assert (d.task_count, d.poll_count, d.max_poll_count, d.min_poll_count) == (2, 4, 3, 1)
    assert (d.dispatch_count, d.max_dispatch_count, d.min_dispatch_count) == (3, 2, 1)
    assert str(d) == (
        "{tasks:2, poll_count:{total:4, avg:2, max:3, min:1}, "
        "dispatch_count:{total:3, max:2, min:1}, "
        "task_wall_time:{total:4ms, avg:4ms, max:4ms, min:4ms}, "
        "queue_wait:{total:2ms, avg:666.7µs, max:1.5ms, min:500µs}, "
        "fair_queue:{enabled:true, waited_task_slices:{total:3, avg:1.5, max:2, min:1}}}"
    )
    other = PoolTaskDetails()
    other.merge(d)
    assert other == d


# -- collection on the mock cluster -------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[MockCluster]:
    with MockCluster(stores=1, regions=2) as mock:
        yield mock


def keys(n: int) -> list[bytes]:
    p = b"rstats%03d/" % next(_ids)
    return [(b"\x10" if i % 2 == 0 else b"\x90") + p + b"%d" % i for i in range(n)]


class FakeExecDetails(Interceptor):
    """Plays TiKV: adds exec details to every Get / BatchGet answer (the mock sends none)."""

    name = "fake-exec-details"

    def after_response(self, rpc: RPCRequest, response: Any) -> None:
        if rpc.command in ("Get", "BatchGet") and not response.HasField("region_error"):
            response.exec_details_v2.CopyFrom(
                kvrpcpb_pb2.ExecDetailsV2(
                    time_detail_v2=kvrpcpb_pb2.TimeDetailV2(process_wall_time_ns=3 * MS),
                    scan_detail_v2=kvrpcpb_pb2.ScanDetailV2(processed_versions=1, total_versions=2),
                )
            )


async def test_snapshot_collects_rpcs_and_exec_details(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    ks = keys(4)
    # Secondaries committed before reading: a lock met would add a retry to the counts.
    await seed(client, ks, b"v")
    snap = client.snapshot(await client.current_timestamp())
    snap.set_rpc_interceptor(FakeExecDetails())
    stats = SnapshotRuntimeStats()
    snap.set_runtime_stats(stats)
    assert snap.runtime_stats is stats
    gets, batch_gets = cluster.counters.count("KvGet"), cluster.counters.count("KvBatchGet")
    assert await snap.get(ks[0]) == b"v"
    assert await snap.batch_get(ks[1:]) == dict.fromkeys(ks[1:], b"v")  # two regions
    assert [p async for p in snap.scan_iter(ks[0], ks[0] + b"\x00")] == [(ks[0], b"v")]
    sent_gets = cluster.counters.count("KvGet") - gets
    sent_batch_gets = cluster.counters.count("KvBatchGet") - batch_gets
    assert (sent_gets, sent_batch_gets) == (1, 2)
    assert stats.cmd_rpc_count("Get") == sent_gets
    assert stats.cmd_rpc_count("BatchGet") == sent_batch_gets
    assert stats.cmd_rpc_count("Scan") == 1
    # Three answers carried exec details: 3 x 3 ms processing, 3 keys processed.
    assert stats.time_detail.process_time_ns == 9 * MS
    assert stats.scan_detail.processed_keys == 3
    assert stats.scan_detail.total_keys == 6
    text = str(stats)
    assert text.startswith("Get:{num_rpc:1, total_time:")
    assert ",BatchGet:{num_rpc:2, total_time:" in text
    assert ",Scan:{num_rpc:1, total_time:" in text
    assert "time_detail: {total_process_time: 9ms}" in text
    assert "scan_detail: {total_process_keys: 3, total_keys: 6, rocksdb: {block: {}}}" in text
    # Reads from the cache send nothing and count nothing.
    assert await snap.get(ks[0]) == b"v"
    assert stats.cmd_rpc_count("Get") == 1
    # Stop collecting.
    snap.set_runtime_stats(None)
    snap2 = client.snapshot(await client.current_timestamp())
    assert await snap2.get(ks[0]) == b"v"
    assert stats.cmd_rpc_count("Get") == 1


async def test_snapshot_collects_backoffs_resolve_time_and_region_errors(
    client: AsyncTransactionClient, cluster: MockCluster
) -> None:
    (k,) = keys(1)
    # A live lock of an older transaction: the read resolves it (TiKV pushes its
    # min_commit_ts past the snapshot, and the read goes on past it), which takes time.
    writer = await client.begin()
    writer.put(k, b"v")
    committer = writer._new_committer()
    assert await committer.prepare()
    await committer.prewrite()
    snap = client.snapshot(await client.current_timestamp())
    stats = SnapshotRuntimeStats()
    snap.set_runtime_stats(stats)
    region = cluster.region_by_key(k, txn=True)
    assert region is not None
    # And a NotLeader answer without a leader first: the read backs off regionScheduling.
    fault = cluster.faults.add("KvGet", region=region.id, region_error="not_leader", times=1)
    try:
        with collect_rpc_stats() as outer:
            assert await snap.get(k) is None
    finally:
        cluster.faults.remove(fault)
    await committer.cleanup()
    # Only the reads' RPCs are the snapshot's; a caller's block around the read counts
    # them too, and the lock resolution's.
    assert list(stats.rpc_stats.rpcs) == ["Get"]
    assert outer.rpc_count("Get") == 3
    assert outer.rpc_count("CheckTxnStatus") == 1
    assert stats.rpc_stats.errors.counts == {"not_leader": 1}
    # The pipeline recorded the failed attempt's access path too.
    assert [a.error for a in stats.rpc_stats.access] == ["not_leader"]
    # NotLeader, then the lock, then the read past the pushed lock.
    assert stats.cmd_rpc_count("Get") == 3
    assert stats.backoff_times == {"regionScheduling": 1}
    assert stats.backoff_sleep_ms["regionScheduling"] > 0
    assert stats.resolve_lock_ns > 0
    text = str(stats)
    assert text.startswith("Get:{num_rpc:3, total_time:")
    assert ", rpc_errors:{not_leader:1},regionScheduling_backoff:{num:1, total_time:" in text
    assert ", resolve_lock_time:" in text


async def test_set_runtime_stats_checks_its_argument(client: AsyncTransactionClient) -> None:
    snap = client.snapshot(await client.current_timestamp())
    with pytest.raises(TypeError, match="SnapshotRuntimeStats"):
        snap.set_runtime_stats({})  # type: ignore[arg-type]


def test_blocking_facade(cluster: MockCluster) -> None:
    from tikv_txn import SnapshotRuntimeStats as Exported
    from tikv_txn import TransactionClient

    (k,) = keys(1)
    with TransactionClient.connect(cluster.pd_endpoints) as client:
        with client.begin() as txn:
            txn.put(k, b"v")
        snap = client.snapshot(client.current_timestamp())
        stats = Exported()
        snap.set_runtime_stats(stats)
        assert snap.runtime_stats is stats
        assert snap.get(k) == b"v"
        assert stats.cmd_rpc_count("Get") == 1
