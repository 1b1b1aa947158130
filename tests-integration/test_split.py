"""Batches across a split, and a split served without PD: the semantics of client-go
``integration_tests/split_test.go`` (``TestSplitBatchGet``, ``TestStaleEpoch``), for raw and
transactional reads.

After a split the client's cached region is stale: TiKV answers EpochNotMatch with the
regions that now cover the old range, and the client re-shards from that answer — so the
reads work even while PD is unreachable.
"""

from __future__ import annotations

import grpc
from tikv_mockstore import MockCluster
from tikv_pd.request import RequestStats
from tikv_raw import RawClient
from tikv_txn import TransactionClient

PD_REGION_METHODS = (
    "GetRegion",
    "GetPrevRegion",
    "GetRegionByID",
    "ScanRegions",
    "BatchScanRegions",
)


def _stats(client: RawClient) -> RequestStats:
    """The raw client's request pipeline counters."""
    return client._client._shared.router.sender.stats  # type: ignore[attr-defined,no-any-return]


def test_split_batch_get_raw(raw: RawClient, prefix: bytes, mock: MockCluster) -> None:
    keys = [prefix + k for k in (b"a", b"b", b"c")]
    raw.batch_put({k: k[-1:] for k in keys})
    assert raw.batch_get(keys) == {k: k[-1:] for k in keys}  # the region is cached now
    mock.split([prefix + b"b"])
    before = dict(_stats(raw).region_errors)
    assert raw.batch_get(keys) == {k: k[-1:] for k in keys}
    after = _stats(raw).region_errors
    assert after.get("epoch_not_match", 0) > before.get("epoch_not_match", 0)


def test_split_batch_get_txn(txn: TransactionClient, tprefix: bytes, mock: MockCluster) -> None:
    keys = [tprefix + k for k in (b"a", b"b", b"c")]
    with txn.begin() as t:
        for k in keys:
            t.put(k, k[-1:])
    reader = txn.begin()
    assert reader.batch_get(keys) == {k: k[-1:] for k in keys}
    mock.split([tprefix + b"b"], txn=True)
    fresh = txn.begin()
    assert fresh.batch_get(keys) == {k: k[-1:] for k in keys}
    # The older snapshot is unaffected by the split.
    assert reader.batch_get(keys) == {k: k[-1:] for k in keys}
    reader.rollback()
    fresh.rollback()


def _disable_pd_region_lookups(mock: MockCluster) -> list[object]:
    return [
        mock.faults.add(m, status=grpc.StatusCode.UNAVAILABLE, message="PD disabled by the test")
        for m in PD_REGION_METHODS
    ]


def test_stale_epoch_raw_reads_without_pd(raw: RawClient, prefix: bytes, mock: MockCluster) -> None:
    a, c = prefix + b"a", prefix + b"c"
    raw.put(a, b"a")
    raw.put(c, b"c")
    mock.split([prefix + b"b"])
    faults = _disable_pd_region_lookups(mock)
    try:
        # Served from EpochNotMatch.current_regions: PD is never asked.
        assert raw.get(a) == b"a"
        assert raw.get(c) == b"c"
        assert raw.batch_get([a, c]) == {a: b"a", c: b"c"}
        assert sum(f.hits for f in faults) == 0  # type: ignore[attr-defined]
    finally:
        for f in faults:
            mock.faults.remove(f)


def test_stale_epoch_txn_reads_without_pd(
    txn: TransactionClient, tprefix: bytes, mock: MockCluster
) -> None:
    a, c = tprefix + b"a", tprefix + b"c"
    with txn.begin() as t:
        t.put(a, b"a")
        t.put(c, b"c")
    mock.split([tprefix + b"b"], txn=True)
    faults = _disable_pd_region_lookups(mock)
    try:
        reader = txn.begin()
        assert reader.get(a) == b"a"
        assert reader.get(c) == b"c"
        reader.rollback()
        assert sum(f.hits for f in faults) == 0  # type: ignore[attr-defined]
    finally:
        for f in faults:
            mock.faults.remove(f)
