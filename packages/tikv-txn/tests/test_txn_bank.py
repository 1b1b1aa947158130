"""The bank test: concurrent random transfers keep the total, while regions split and move.

20 accounts spread over the cluster's regions; 8 workers (asyncio tasks on the async
client, threads on the blocking client) move random amounts between random accounts,
retrying a transfer from the start when it loses a conflict. Meanwhile a disturber
splits regions at account keys and moves region leaders between stores. At the end the
sum of all balances is unchanged, every transfer that committed is reflected, and no lock
is left behind.

``TIKV_TXN_BANK_TRANSFERS`` (default 2,000 per flavour) sets the number of transfers.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading

from _txn_helpers import account_keys, disturb
from tikv_mockstore import MockCluster
from tikv_txn import (
    AsyncTransactionClient,
    TransactionClient,
    TxnLockNotFoundError,
    WriteConflictError,
)

#: A transfer that lost a conflict did not commit and is retried from the start: a write
#: conflict at prewrite, or its primary lock rolled back by another transaction that
#: waited for it longer than its TTL (the commit then finds no lock).
RETRYABLE = (WriteConflictError, TxnLockNotFoundError)

ACCOUNTS = 20
WORKERS = 8
INITIAL = 1000
TRANSFERS = int(os.environ.get("TIKV_TXN_BANK_TRANSFERS", "2000"))
NO_HANG = 300.0


async def test_bank_async(cluster: MockCluster) -> None:
    keys = account_keys(b"bank-async/", ACCOUNTS)
    rng = random.Random(7)
    async with await AsyncTransactionClient.connect(cluster.pd_endpoints) as client:
        async with client.begin() as txn:
            for key in keys:
                txn.put(key, b"%d" % INITIAL)
        done = 0
        conflicts = 0
        stop = asyncio.Event()

        async def worker(seed: int) -> None:
            nonlocal done, conflicts
            wrng = random.Random(seed)
            while done < TRANSFERS:
                src, dst = wrng.sample(keys, 2)
                amount = wrng.randint(1, 50)
                while True:
                    txn = await client.begin()
                    got = await txn.batch_get([src, dst])
                    a, b = int(got[src]), int(got[dst])
                    if a < amount:
                        await txn.rollback()
                        break
                    txn.put(src, b"%d" % (a - amount))
                    txn.put(dst, b"%d" % (b + amount))
                    try:
                        await txn.commit()
                    except RETRYABLE:
                        conflicts += 1
                        continue
                    break
                done += 1

        async def disturber() -> dict[str, int]:
            counts = {"split": 0, "transfer": 0}
            while not stop.is_set():
                counts[disturb(cluster, keys, rng)] += 1
                await asyncio.sleep(0.02)
            return counts

        chaos = asyncio.ensure_future(disturber())
        await asyncio.wait_for(asyncio.gather(*(worker(i) for i in range(WORKERS))), NO_HANG)
        stop.set()
        counts = await chaos
        assert await client.runtime.wait_background(NO_HANG)
        snap = client.snapshot(await client.current_timestamp())
        balances = await snap.batch_get(keys)
        assert len(balances) == ACCOUNTS
        assert sum(int(v) for v in balances.values()) == ACCOUNTS * INITIAL
        assert done >= TRANSFERS
        assert counts["split"] + counts["transfer"] > 0
        scanned = await snap.scan(b"", None, limit=100_000)
        assert sum(int(v) for k, v in scanned if b"bank-async/" in k) == ACCOUNTS * INITIAL
    assert not [lock for lock in cluster.engine.scan_lock(2**63 - 1) if b"bank-async/" in lock.key]


def test_bank_sync_threads(cluster: MockCluster) -> None:
    keys = account_keys(b"bank-sync/", ACCOUNTS)
    rng = random.Random(11)
    with TransactionClient.connect(cluster.pd_endpoints) as client:
        with client.begin() as txn:
            for key in keys:
                txn.put(key, b"%d" % INITIAL)
        lock = threading.Lock()
        state = {"done": 0, "conflicts": 0}
        errors: list[BaseException] = []
        stop = threading.Event()

        def worker(seed: int) -> None:
            wrng = random.Random(seed)
            try:
                while True:
                    with lock:
                        if state["done"] >= TRANSFERS:
                            return
                    src, dst = wrng.sample(keys, 2)
                    amount = wrng.randint(1, 50)
                    while True:
                        txn = client.begin()
                        got = txn.batch_get([src, dst])
                        a, b = int(got[src]), int(got[dst])
                        if a < amount:
                            txn.rollback()
                            break
                        txn.put(src, b"%d" % (a - amount))
                        txn.put(dst, b"%d" % (b + amount))
                        try:
                            txn.commit()
                        except RETRYABLE:
                            with lock:
                                state["conflicts"] += 1
                            continue
                        break
                    with lock:
                        state["done"] += 1
            except BaseException as exc:  # surfaced by the main thread
                errors.append(exc)

        def disturber() -> None:
            while not stop.wait(0.02):
                disturb(cluster, keys, rng)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(WORKERS)]
        chaos = threading.Thread(target=disturber)
        chaos.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join(NO_HANG)
            assert not t.is_alive(), "a worker hung"
        stop.set()
        chaos.join(NO_HANG)
        assert errors == []
        assert client.loop_thread.run(client.async_client.runtime.wait_background(NO_HANG))
        snap = client.snapshot(client.current_timestamp())
        balances = snap.batch_get(keys)
        assert sum(int(v) for v in balances.values()) == ACCOUNTS * INITIAL
        assert state["done"] >= TRANSFERS
    assert not [lock for lock in cluster.engine.scan_lock(2**63 - 1) if b"bank-sync/" in lock.key]
