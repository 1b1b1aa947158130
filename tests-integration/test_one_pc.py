"""One-phase commit: the semantics of client-go ``integration_tests/1pc_test.go``
(``Test1PC``, ``Test1PCIsolation``, ``Test1PCDisallowMultiRegion``,
``Test1PCLinearizability``) through ``TransactionClient``.

Whether a commit used 1PC is read from the store's counters (no ``KvCommit`` was sent),
so those assertions run on the embedded cluster only.
"""

from __future__ import annotations

import asyncio

from tikv_mockstore import MockCluster
from tikv_txn import AsyncTransactionClient, TransactionClient, TransactionOptions

ONE_PC = TransactionOptions(try_one_pc=True)


def _commits(embedded: MockCluster | None) -> int | None:
    return embedded.counters.count("KvCommit") if embedded is not None else None


def _commit(
    txn: TransactionClient, options: TransactionOptions | None, pairs: dict[bytes, bytes]
) -> tuple[int, int]:
    t = txn.begin(options)
    for k, v in pairs.items():
        t.put(k, v)
    commit_ts = t.commit()
    assert commit_ts > t.start_ts
    return t.start_ts, commit_ts


def test_one_pc(txn: TransactionClient, tprefix: bytes, embedded: MockCluster | None) -> None:
    k = [tprefix + b"k%d" % i for i in range(6)]
    before = _commits(embedded)
    _, ts1 = _commit(txn, ONE_PC, {k[1]: b"v1"})
    if before is not None:
        assert _commits(embedded) == before  # committed by the prewrite alone
    # Without the option, the same write takes two phases.
    before = _commits(embedded)
    _commit(txn, None, {k[2]: b"v2"})
    if before is not None:
        assert _commits(embedded) == before + 1
    # Several keys of one region: one version for all of them.
    before = _commits(embedded)
    _, ts3 = _commit(txn, ONE_PC, {k[3]: b"v3", k[4]: b"v4", k[5]: b"v5"})
    if before is not None:
        assert _commits(embedded) == before
    at = txn.snapshot(ts3)
    assert at.batch_get([k[3], k[4], k[5]]) == {k[3]: b"v3", k[4]: b"v4", k[5]: b"v5"}
    assert txn.snapshot(ts3 - 1).batch_get([k[3], k[4], k[5]]) == {}
    # Overwriting keeps the MVCC history.
    _, ts4 = _commit(txn, ONE_PC, {k[5]: b"v5new"})
    assert txn.snapshot(ts4).get(k[5]) == b"v5new"
    assert txn.snapshot(ts4 - 1).get(k[5]) == b"v5"
    now = txn.snapshot(txn.current_timestamp())
    assert now.batch_get(k[1:]) == {
        k[1]: b"v1",
        k[2]: b"v2",
        k[3]: b"v3",
        k[4]: b"v4",
        k[5]: b"v5new",
    }
    assert ts1 < ts3 < ts4


def test_one_pc_isolation(txn: TransactionClient, tprefix: bytes) -> None:
    k = tprefix + b"k"
    _commit(txn, ONE_PC, {k: b"v1"})
    writer = txn.begin(ONE_PC)
    writer.put(k, b"v2")
    for _ in range(10):  # move PD time on: a wrong commit ts would fall below the reader
        txn.current_timestamp()
    reader = txn.begin(ONE_PC)
    assert reader.get(k) == b"v1"
    commit_ts = writer.commit()
    assert reader.get(k) == b"v1"  # the reader's snapshot does not move
    reader.rollback()
    assert commit_ts > reader.start_ts
    assert txn.snapshot(commit_ts).get(k) == b"v2"
    assert txn.snapshot(commit_ts - 1).get(k) == b"v1"


def test_one_pc_disallowed_across_regions(
    txn: TransactionClient, tprefix: bytes, mock: MockCluster
) -> None:
    keys = [tprefix + b"k%d" % i for i in range(4)]
    _commit(txn, ONE_PC, {keys[0]: b"v0", keys[3]: b"v3"})
    mock.split([keys[2]], txn=True)
    before = mock.counters.count("KvCommit")
    _commit(txn, ONE_PC, {keys[1]: b"v1", keys[2]: b"v2"})
    assert mock.counters.count("KvCommit") > before  # two regions: two phases
    now = txn.snapshot(txn.current_timestamp())
    assert now.batch_get(keys) == {k: b"v%d" % i for i, k in enumerate(keys)}


def test_one_pc_linearizability(txn: TransactionClient, tprefix: bytes) -> None:
    t1 = txn.begin(ONE_PC)
    t2 = txn.begin(ONE_PC)
    t1.put(tprefix + b"a", b"a1")
    t2.put(tprefix + b"b", b"b1")
    ts2 = t2.commit()  # t2 commits first ...
    ts1 = t1.commit()
    assert ts2 < ts1  # ... so its commit ts is smaller


async def test_one_pc_after_a_split_is_never_half_visible(mock: MockCluster) -> None:
    """The region of a 1PC transaction splits behind the client's back; while the prewrite
    of one half is held up, a reader must not see the other half committed."""
    del mock  # only for its skip on a real cluster
    with MockCluster(stores=3, regions=8) as cluster:
        async with await AsyncTransactionClient.connect(cluster.pd_endpoints) as client:
            k1, k2 = b"\xd0half/k1", b"\xd0half/k2"
            async with client.begin() as warm:  # cache the region holding both keys
                assert await warm.batch_get([k1, k2]) == {}
            before = cluster.region_by_key(k1, txn=True)
            assert before is not None
            cluster.split([k2], txn=True)
            # Hold up the prewrite of the part that got a new region id: the stale first
            # prewrite still goes to the old id (and is answered EpochNotMatch).
            parts = [cluster.region_by_key(k, txn=True) for k in (k1, k2)]
            held = next(r for r in parts if r is not None and r.id != before.id)
            hold = cluster.faults.add("KvPrewrite", region=held.id, hang=True, times=1)
            writer = await client.begin(ONE_PC)
            writer.put(k1, b"v1")
            writer.put(k2, b"v2")
            commit = asyncio.ensure_future(writer.commit())
            try:
                assert await asyncio.to_thread(cluster.faults.wait_hanging, 1, 30)
                snap = client.snapshot(await client.current_timestamp())
                try:
                    seen = await asyncio.wait_for(snap.batch_get([k1, k2]), 2)
                except TimeoutError:
                    seen = None  # blocked by the transaction's locks: consistent
            finally:
                hold.release()
                outcome = await asyncio.wait_for(asyncio.gather(commit, return_exceptions=True), 60)
            assert seen is None or len(seen) != 1, f"half of a transaction visible: {seen}"
            assert not isinstance(outcome[0], BaseException), outcome
            after = client.snapshot(await client.current_timestamp())
            assert await after.batch_get([k1, k2]) == {k1: b"v1", k2: b"v2"}
            assert cluster.counters.count("KvCommit") > 0  # two regions: two phases
