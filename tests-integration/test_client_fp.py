"""client-go's failpoint RPC client (``integration_tests/client_fp_test.go``), mapped to the
mock store's faults.

client-go wraps its RPC client in ``fpClient``, whose failpoints replace TiKV's answers:

============================================  =============================================
client-go failpoint                           mock fault here
============================================  =============================================
``rpcPrewriteResult("timeout")``              ``KvPrewrite`` ``status=UNAVAILABLE``
``rpcPrewriteResult("writeConflict")``        ``KvPrewrite`` ``key_error="conflict"``
``rpcPrewriteResult("undeterminedResult")``   ``KvPrewrite`` ``region_error="undetermined_result"``
``rpcBatchGetResult("keyError")``             ``KvBatchGet`` ``key_error="locked"``
``rpcScanResult("keyError")``                 ``KvScan`` ``key_error="locked"``
``rpcCommitResult("undeterminedResult")``     ``KvCommit`` ``region_error="undetermined_result"``
``rpcPrewriteTimeout`` (after sending)        ``KvPrewrite`` ``drop_stream`` (the request left)
============================================  =============================================

Where client-go reports an unknown outcome at once, this client first resends the request
(prewrite and commit are idempotent in TiKV, so the resend's answer decides); a second fault,
``status=INVALID_ARGUMENT`` (not retried), makes the resend fail so that the outcome stays
unknown and ``UndeterminedError`` is raised.

The batch-get and scan key errors are exercised in ``test_snapshot_fail.py`` (the tests that
use them in client-go); a point get meeting a fabricated lock is here. Every fault is scoped
to the test's region and removed afterwards.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from _support import region_id
from tikv_mockstore import MockCluster
from tikv_txn import (
    TransactionClient,
    TransactionOptions,
    UndeterminedError,
    WriteConflictError,
)


def _locks(mock: MockCluster, tprefix: bytes) -> list[Any]:
    found: list[Any] = mock.engine.scan_lock(2**64 - 1, tprefix, tprefix + b"\xff")
    return found


def test_prewrite_send_failure_is_retried(
    txn: TransactionClient, tprefix: bytes, mock: MockCluster, faults: list[Any]
) -> None:
    # rpcPrewriteResult("timeout"): the prewrite never got an answer. A 2PC prewrite is
    # safe to send again (nothing is committed until the primary's commit).
    key = tprefix + b"k"
    fault = mock.faults.add(
        "KvPrewrite", region=region_id(mock, key), status=grpc.StatusCode.UNAVAILABLE, times=1
    )
    faults.append(fault)
    with txn.begin() as t:
        t.put(key, b"v")
    assert fault.hits == 1
    assert txn.begin().get(key) == b"v"


def test_prewrite_write_conflict_key_error(
    txn: TransactionClient, tprefix: bytes, mock: MockCluster, faults: list[Any]
) -> None:
    # rpcPrewriteResult("writeConflict"): the prewrite answers a write conflict; the commit
    # fails with the typed error carrying TiKV's facts and leaves nothing behind.
    key = tprefix + b"k"
    faults.append(
        mock.faults.add("KvPrewrite", region=region_id(mock, key), key_error="conflict", times=1)
    )
    t = txn.begin()
    t.put(key, b"v")
    with pytest.raises(WriteConflictError) as info:
        t.commit()
    assert info.value.key == key
    assert info.value.start_ts == t.start_ts
    assert info.value.conflict_commit_ts > t.start_ts
    assert txn.begin().get(key) is None
    assert _locks(mock, tprefix) == []


def test_prewrite_undetermined_result_two_phase_is_retried(
    txn: TransactionClient, tprefix: bytes, mock: MockCluster, faults: list[Any]
) -> None:
    # rpcPrewriteResult("undeterminedResult") in 2PC: TiKV does not know whether the prewrite
    # applied; since nothing commits before the primary's commit, the client retries it.
    key = tprefix + b"k"
    fault = mock.faults.add(
        "KvPrewrite", region=region_id(mock, key), region_error="undetermined_result", times=1
    )
    faults.append(fault)
    with txn.begin() as t:
        t.put(key, b"v")
    assert fault.hits == 1
    assert txn.begin().get(key) == b"v"


def _lost_then(
    mock: MockCluster,
    faults: list[Any],
    method: str,
    key: bytes,
    lost: dict[str, Any],
    *,
    fail: bool,
) -> Any:
    """Lose the first ``method`` request (``lost``: the fault's effect); with ``fail`` the
    resend then fails for good (INVALID_ARGUMENT, which the client does not retry)."""
    region = region_id(mock, key)
    first = mock.faults.add(method, region=region, times=1, **lost)
    faults.append(first)
    if fail:
        # Registered second: the first request matches ``first`` only; the resend this.
        faults.append(
            mock.faults.add(method, region=region, status=grpc.StatusCode.INVALID_ARGUMENT, times=1)
        )
    return first


@pytest.mark.parametrize(
    "lost",
    [{"region_error": "undetermined_result"}, {"drop_stream": True}],
    ids=["undetermined-result", "answer-lost-after-sending"],
)
def test_async_commit_prewrite_with_unknown_outcome(
    txn: TransactionClient,
    tprefix: bytes,
    mock: MockCluster,
    faults: list[Any],
    lost: dict[str, Any],
) -> None:
    # client-go TestPrewriteFailWithUndeterminedResult (rpcPrewriteResult
    # "undeterminedResult") and rpcPrewriteTimeout: with async commit a prewrite of every
    # key *is* the commit, so a prewrite whose outcome is unknown leaves the commit unknown.
    # client-go reports ErrResultUndetermined at once; this client first resends the
    # prewrite (TiKV answers a prewrite of its own lock with success, so the resend's answer
    # decides) and reports UndeterminedError only when the resend fails too.
    key = tprefix + b"k"
    _lost_then(mock, faults, "KvPrewrite", key, lost, fail=False)
    t = txn.begin(TransactionOptions(async_commit=True))
    t.put(key, b"v")
    t.commit()
    assert txn.begin().get(key) == b"v"
    _lost_then(mock, faults, "KvPrewrite", key, lost, fail=True)
    t = txn.begin(TransactionOptions(async_commit=True))
    t.put(key, b"v2")
    with pytest.raises(UndeterminedError):
        t.commit()
    assert all(mock.faults.get(f.id) is None for f in faults)


def test_commit_undetermined_result(
    txn: TransactionClient, tprefix: bytes, mock: MockCluster, faults: list[Any]
) -> None:
    # rpcCommitResult("undeterminedResult"): the primary's commit may or may not have
    # applied. client-go reports ErrResultUndetermined at once; this client resends the
    # commit (TiKV's commit is idempotent: a resend finds the lock or its own commit record
    # and answers for certain) and reports UndeterminedError only when the resend fails.
    key = tprefix + b"k"
    lost = {"region_error": "undetermined_result"}
    _lost_then(mock, faults, "KvCommit", key, lost, fail=False)
    commits = mock.counters.count("KvCommit")
    with txn.begin() as t:
        t.put(key, b"v")
    assert mock.counters.count("KvCommit") >= commits + 2
    assert txn.begin().get(key) == b"v"
    _lost_then(mock, faults, "KvCommit", key, lost, fail=True)
    t = txn.begin()
    t.put(key, b"v2")
    with pytest.raises(UndeterminedError) as info:
        t.commit()
    assert info.value.cause is not None
    assert all(mock.faults.get(f.id) is None for f in faults)


def test_point_get_meets_a_fabricated_lock(
    txn: TransactionClient, tprefix: bytes, mock: MockCluster, faults: list[Any]
) -> None:
    # The point-get form of rpcBatchGetResult("keyError"): the lock is resolved (no such
    # transaction: rolled back once its TTL passes) and the get reads again.
    key = tprefix + b"k"
    with txn.begin() as t:
        t.put(key, b"v")
    fault = mock.faults.add("KvGet", region=region_id(mock, key), key_error="locked", times=1)
    faults.append(fault)
    checks = mock.counters.count("KvCheckTxnStatus")
    assert txn.begin().get(key) == b"v"
    assert mock.faults.get(fault.id) is None
    assert mock.counters.count("KvCheckTxnStatus") > checks
