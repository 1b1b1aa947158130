"""Request priority and a busy store: the semantics of client-go
``integration_tests/store_test.go`` (``TestRequestPriority``, ``TestFailBusyServerKV``;
``TestOracle`` is ``test_pd_api.py::test_oracle_retries_while_tso_is_unavailable``).
"""

from __future__ import annotations

from tikv_mockstore import MockCluster
from tikv_proto import kvrpcpb_pb2
from tikv_txn import TransactionClient, TransactionOptions


def test_request_priority_reaches_the_store(
    txn: TransactionClient, tprefix: bytes, mock: MockCluster
) -> None:
    key = tprefix + b"key"
    # 2PC with high priority: prewrite and commit carry it.
    with txn.begin(TransactionOptions(priority="high")) as t:
        t.put(key, b"value")
        t.put(tprefix + b"key2", b"value2")
    for method in ("KvPrewrite", "KvCommit"):
        ctx = mock.counters.last_context(method)
        assert ctx is not None
        assert ctx.priority == kvrpcpb_pb2.High, method
    # A low-priority get, then a normal one: each request says its own priority.
    low = txn.begin(TransactionOptions(priority="low"))
    assert low.get(key) == b"value"
    ctx = mock.counters.last_context("KvGet")
    assert ctx is not None and ctx.priority == kvrpcpb_pb2.Low
    low.rollback()
    normal = txn.begin()
    assert normal.get(key) == b"value"
    ctx = mock.counters.last_context("KvGet")
    assert ctx is not None and ctx.priority == kvrpcpb_pb2.Normal
    normal.rollback()
    # A high-priority scan.
    high = txn.begin(TransactionOptions(priority="high"))
    assert [k for k, _ in high.scan(tprefix, tprefix + b"\xff", limit=10)] == [
        key,
        tprefix + b"key2",
    ]
    ctx = mock.counters.last_context("KvScan")
    assert ctx is not None and ctx.priority == kvrpcpb_pb2.High
    high.rollback()


def test_busy_server_get_is_retried(
    txn: TransactionClient, tprefix: bytes, mock: MockCluster
) -> None:
    key = tprefix + b"key"
    with txn.begin() as t:
        t.put(key, b"value")
    fault = mock.faults.add("KvGet", region_error="server_is_busy", times=1)
    try:
        reader = txn.begin()
        assert reader.get(key) == b"value"
        reader.rollback()
        assert fault.hits == 1
    finally:
        mock.faults.remove(fault)
