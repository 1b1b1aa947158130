"""The bank test with pessimistic transactions: no worker ever retries a transfer.

Same shape as ``test_txn_bank.py`` — 20 accounts spread over the cluster's regions,
8 workers (asyncio tasks, then threads on the blocking client) moving random amounts
between random accounts while a disturber splits regions and moves leaders — but every
transfer reads both balances with ``batch_get_for_update``: the locks make the read
values the ones the transfer overwrites, so the commit cannot meet a write conflict and
any exception fails the test. At the end the total is unchanged, every transfer is
reflected, and no lock is left.

``TIKV_TXN_BANK_TRANSFERS`` (default 200 per flavour here) sets the number of transfers.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading

from _txn_helpers import MAX_TS, account_keys, disturb
from tikv_mockstore import MockCluster
from tikv_txn import AsyncTransactionClient, TransactionClient

ACCOUNTS = 20
WORKERS = 8
INITIAL = 1000
TRANSFERS = int(os.environ.get("TIKV_TXN_BANK_TRANSFERS", "200"))
NO_HANG = 300.0


async def test_pessimistic_bank_async(cluster: MockCluster) -> None:
    keys = account_keys(b"pbank-async/", ACCOUNTS)
    rng = random.Random(17)
    async with await AsyncTransactionClient.connect(cluster.pd_endpoints) as client:
        async with client.begin() as txn:
            for key in keys:
                txn.put(key, b"%d" % INITIAL)
        done = 0
        moved = 0
        stop = asyncio.Event()

        async def worker(seed: int) -> None:
            nonlocal done, moved
            wrng = random.Random(seed)
            while done < TRANSFERS:
                src, dst = wrng.sample(keys, 2)
                amount = wrng.randint(1, 50)
                txn = await client.begin(pessimistic=True)
                got = await txn.batch_get_for_update([src, dst])
                a, b = int(got[src]), int(got[dst])
                if a < amount:
                    await txn.rollback()
                else:
                    txn.put(src, b"%d" % (a - amount))
                    txn.put(dst, b"%d" % (b + amount))
                    await txn.commit()  # no retry: a failure fails the test
                    moved += 1
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
        assert moved > 0
        assert counts["split"] + counts["transfer"] > 0
        scanned = await snap.scan(b"", None, limit=100_000)
        assert sum(int(v) for k, v in scanned if b"pbank-async/" in k) == ACCOUNTS * INITIAL
    assert not [lock for lock in cluster.engine.scan_lock(MAX_TS) if b"pbank-async/" in lock.key]


def test_pessimistic_bank_sync_threads(cluster: MockCluster) -> None:
    keys = account_keys(b"pbank-sync/", ACCOUNTS)
    rng = random.Random(19)
    with TransactionClient.connect(cluster.pd_endpoints) as client:
        with client.begin() as txn:
            for key in keys:
                txn.put(key, b"%d" % INITIAL)
        lock = threading.Lock()
        state = {"done": 0, "moved": 0}
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
                    with client.begin(pessimistic=True) as txn:
                        got = txn.batch_get_for_update([src, dst])
                        a, b = int(got[src]), int(got[dst])
                        if a >= amount:
                            txn.put(src, b"%d" % (a - amount))
                            txn.put(dst, b"%d" % (b + amount))
                            with lock:
                                state["moved"] += 1
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
        assert state["moved"] > 0
    assert not [lock for lock in cluster.engine.scan_lock(MAX_TS) if b"pbank-sync/" in lock.key]
