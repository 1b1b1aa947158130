"""Snapshot isolation under concurrent increments: the semantics of client-go
``integration_tests/isolation_test.go`` (``TestWriteWriteConflict``,
``TestReadWriteConflict``).

Workers increment one counter with optimistic (and pessimistic) transactions, retrying on
write conflicts. Every committed transaction is recorded with its start ts, commit ts and
the value it wrote; in commit-ts order the values must be exactly 1, 2, 3, ... (no lost
update, no duplicate), each transaction must have read the value committed just before
it, and a snapshot at each commit ts must read that transaction's value.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import pytest
from tikv_txn import AsyncTransactionClient, TransactionOptions, WriteConflictError

WORKERS = 6
INCREMENTS = 8


@pytest.fixture
async def aclient(pd_endpoints: list[str], tprefix: bytes) -> AsyncIterator[AsyncTransactionClient]:
    async with await AsyncTransactionClient.connect(pd_endpoints) as client:
        yield client
        async with client.begin() as cleanup:
            for key, _ in await cleanup.scan(tprefix, tprefix + b"\xff", limit=10_000):
                cleanup.delete(key)


@pytest.mark.parametrize("pessimistic", [False, True])
async def test_concurrent_increments_are_serializable(
    aclient: AsyncTransactionClient, tprefix: bytes, pessimistic: bool
) -> None:
    key = tprefix + b"counter"
    options = TransactionOptions.pessimistic() if pessimistic else TransactionOptions()
    committed: list[tuple[int, int, int, int]] = []  # (commit_ts, start_ts, read, written)
    conflicts = [0]

    async def worker() -> None:
        done = 0
        while done < INCREMENTS:
            txn = await aclient.begin(options)
            try:
                if pessimistic:
                    current = await txn.get_for_update(key)
                else:
                    current = await txn.get(key)
                read = int(current or b"0")
                txn.put(key, b"%d" % (read + 1))
                commit_ts = await txn.commit()
            except WriteConflictError:
                conflicts[0] += 1
                continue
            committed.append((commit_ts, txn.start_ts, read, read + 1))
            done += 1

    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(WORKERS))), 120)
    committed.sort()
    assert [w for _, _, _, w in committed] == list(range(1, WORKERS * INCREMENTS + 1))
    for (prev_commit, _, _, prev_written), (_, start, read, _) in itertools.pairwise(committed):
        assert read == prev_written  # each read the value committed just before it
        if not pessimistic:
            # An optimistic transaction that started before the previous commit read an
            # older value and must have failed with a write conflict.
            assert start > prev_commit
    for commit_ts, _, _, written in committed[:: max(1, len(committed) // 8)]:
        snap = aclient.snapshot(commit_ts)
        assert await snap.get(key) == b"%d" % written
        assert await aclient.snapshot(commit_ts - 1).get(key) == (
            b"%d" % (written - 1) if written > 1 else None
        )
    if not pessimistic:
        assert conflicts[0] > 0  # optimistic workers did collide and retry
