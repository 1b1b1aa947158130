"""The bank run: concurrent transfers between 20 accounts while a store is killed and
restarted (client-go's classic ``TestBankTransfer`` invariant under faults).

Invariants: every snapshot sees the same total (transactions are atomic and snapshots
consistent), no balance goes negative, and the final total equals the initial one — also
when some commits ended with an undetermined outcome (a transfer is all or nothing
whichever way it went).
"""

from __future__ import annotations

import asyncio
import contextlib
import random

import pytest
from _support import NO_HANG, apoll, within
from tikv_mockstore import MockCluster
from tikv_txn import (
    AsyncTransactionClient,
    TiKVError,
    TransactionOptions,
    UndeterminedError,
    WriteConflictError,
)

ACCOUNTS = 20
INITIAL = 100


def _account(i: int) -> bytes:
    # The first byte spreads the accounts over the 8 regions (split by first byte).
    return bytes([i * 256 // ACCOUNTS]) + b"bank/acct%02d" % i


async def _balances(client: AsyncTransactionClient) -> dict[bytes, int]:
    snap = client.snapshot(await client.current_timestamp())
    got = await snap.batch_get([_account(i) for i in range(ACCOUNTS)])
    return {k: int(v) for k, v in got.items()}


def _busiest_store(cluster: MockCluster) -> int:
    leaders: dict[int, int] = {}
    for region in cluster.regions():
        assert region.leader is not None
        leaders[region.leader.store_id] = leaders.get(region.leader.store_id, 0) + 1
    return max(leaders, key=lambda s: leaders[s])


PROTOCOLS = {
    "2pc": TransactionOptions(),
    "async_commit": TransactionOptions(async_commit=True),
    "one_pc": TransactionOptions(try_one_pc=True, async_commit=True),
    "pessimistic": TransactionOptions.pessimistic(),
}


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
async def test_bank_transfers_with_a_store_killed_and_restarted(
    cluster: MockCluster, protocol: str
) -> None:
    options = PROTOCOLS[protocol]
    outcome = {"committed": 0, "conflicts": 0, "undetermined": 0, "other": 0, "audits": 0}
    errors: list[BaseException] = []
    bad_totals: list[int] = []
    stop = asyncio.Event()

    async with await AsyncTransactionClient.connect(cluster.pd_endpoints) as client:
        async with client.begin() as txn:
            for i in range(ACCOUNTS):
                txn.put(_account(i), b"%d" % INITIAL)

        async def transfer(seed: int) -> None:
            rng = random.Random(seed)
            while not stop.is_set():
                a, b = rng.sample(range(ACCOUNTS), 2)
                amount = rng.randint(1, 10)
                txn = await client.begin(options)
                keys = [_account(a), _account(b)]
                try:
                    if options.is_pessimistic:  # read and lock: no conflict at commit
                        got = await txn.batch_get_for_update(keys)
                    else:
                        got = await txn.batch_get(keys)
                    bal_a, bal_b = int(got[_account(a)]), int(got[_account(b)])
                    if bal_a < amount:
                        await txn.rollback()
                        continue
                    txn.put(_account(a), b"%d" % (bal_a - amount))
                    txn.put(_account(b), b"%d" % (bal_b + amount))
                    await txn.commit()
                    outcome["committed"] += 1
                except WriteConflictError:
                    outcome["conflicts"] += 1  # retried with a new transaction
                except UndeterminedError:
                    outcome["undetermined"] += 1
                except TiKVError as exc:
                    outcome["other"] += 1
                    errors.append(exc)
                finally:
                    if txn.state == "active":  # a failed lock or read: release what it holds
                        with contextlib.suppress(TiKVError):
                            await txn.rollback()

        async def auditor() -> None:
            while not stop.is_set():
                try:
                    balances = await _balances(client)
                except TiKVError as exc:
                    errors.append(exc)
                    continue
                total = sum(balances.values())
                if total != ACCOUNTS * INITIAL or min(balances.values()) < 0:
                    bad_totals.append(total)
                outcome["audits"] += 1

        tasks = [asyncio.ensure_future(transfer(seed)) for seed in range(8)]
        tasks.append(asyncio.ensure_future(auditor()))

        def progressed(n: int) -> object:
            mark = outcome["committed"]
            return lambda: outcome["committed"] >= mark + n or any(t.done() for t in tasks)

        await apoll(progressed(20), within=NO_HANG, what="transfers started")  # type: ignore[arg-type]
        # Killed with its leaders moved elsewhere (Raft elects new ones) ...
        victim = _busiest_store(cluster)
        await asyncio.to_thread(cluster.stop_store, victim, move_leaders=True)
        await apoll(progressed(20), within=NO_HANG, what="transfers while a store is down")  # type: ignore[arg-type]
        await asyncio.to_thread(cluster.restart_store, victim)
        await apoll(progressed(20), within=NO_HANG, what="transfers after the restart")  # type: ignore[arg-type]
        # ... and killed with its leaders stuck on it until it returns.
        victim = _busiest_store(cluster)
        await asyncio.to_thread(cluster.stop_store, victim, move_leaders=False)
        await asyncio.to_thread(cluster.restart_store, victim)
        await apoll(progressed(20), within=NO_HANG, what="transfers after the second restart")  # type: ignore[arg-type]
        stop.set()
        await within(asyncio.gather(*tasks))

        final = await within(_balances(client))

    assert not bad_totals, bad_totals[:5]
    assert sum(final.values()) == ACCOUNTS * INITIAL
    assert len(final) == ACCOUNTS
    assert min(final.values()) >= 0
    assert outcome["committed"] >= 80
    assert outcome["audits"] > 0
    if options.is_pessimistic:  # locked reads: a transfer never meets a write conflict
        assert outcome["conflicts"] == 0
    # Errors other than conflicts / undetermined commits must be typed and rare (a
    # read that gave up while the store was down); none may be an untyped exception.
    assert all(isinstance(e, TiKVError) for e in errors), errors[:3]


@pytest.mark.parametrize("protocol", ["2pc", "async_commit"])
async def test_bank_transfers_under_a_split_storm(cluster: MockCluster, protocol: str) -> None:
    """Transfers while the accounts' regions split around them and leaders move: prewrite
    and commit re-shard, readers follow; every snapshot sees the same total."""
    options = PROTOCOLS[protocol]
    stop = asyncio.Event()
    committed = [0]
    bad: list[int] = []
    async with await AsyncTransactionClient.connect(cluster.pd_endpoints) as client:
        async with client.begin() as txn:
            for i in range(ACCOUNTS):
                txn.put(_account(i), b"%d" % INITIAL)

        async def transfer(seed: int) -> None:
            rng = random.Random(seed)
            while not stop.is_set():
                a, b = rng.sample(range(ACCOUNTS), 2)
                txn = await client.begin(options)
                try:
                    got = await txn.batch_get([_account(a), _account(b)])
                    amount = min(rng.randint(1, 10), int(got[_account(a)]))
                    txn.put(_account(a), b"%d" % (int(got[_account(a)]) - amount))
                    txn.put(_account(b), b"%d" % (int(got[_account(b)]) + amount))
                    await txn.commit()
                    committed[0] += 1
                except WriteConflictError:
                    pass

        async def auditor() -> None:
            scan = False
            while not stop.is_set():
                if scan:  # a snapshot scan over every region (re-sharded as they split)
                    snap = client.snapshot(await client.current_timestamp())
                    rows = [(k, int(v)) async for k, v in snap.scan_iter(b"", None)]
                    keys = [k for k, _ in rows]
                    if keys != sorted(_account(i) for i in range(ACCOUNTS)):
                        bad.append(-len(keys))
                    total = sum(v for _, v in rows)
                else:
                    total = sum((await _balances(client)).values())
                if total != ACCOUNTS * INITIAL:
                    bad.append(total)
                scan = not scan

        tasks = [asyncio.ensure_future(transfer(s)) for s in range(6)]
        tasks.append(asyncio.ensure_future(auditor()))
        rng = random.Random(3)
        for i in range(24):
            # Split right before or after an account key (transactional keys are encoded).
            account = _account(rng.randrange(ACCOUNTS))
            cluster.split([account + (b"\0" if i % 2 else b"")], txn=True)
            if i % 3 == 2:
                region = rng.choice(cluster.regions())
                cluster.transfer_leader(region.id, rng.choice([p.store_id for p in region.peers]))
            mark = committed[0]
            await apoll(
                lambda mark=mark: committed[0] > mark or any(t.done() for t in tasks),  # type: ignore[misc]
                within=NO_HANG,
                what="transfers between splits",
            )
        stop.set()
        await within(asyncio.gather(*tasks))
        final = await _balances(client)
    assert not bad, bad[:5]
    assert sum(final.values()) == ACCOUNTS * INITIAL
    assert min(final.values()) >= 0


@pytest.mark.parametrize("protocol", ["2pc", "async_commit", "pessimistic"])
async def test_bank_transfers_over_flaky_connections(cluster: MockCluster, protocol: str) -> None:
    """3% of TiKV requests lose their connection (whole BatchCommands streams): lost
    prewrites / commits are retried or end undetermined, never half-applied; every
    snapshot sees the same total."""
    options = PROTOCOLS[protocol]
    outcome = {"committed": 0, "undetermined": 0, "failed": 0}
    bad: list[int] = []
    async with await AsyncTransactionClient.connect(cluster.pd_endpoints) as client:
        async with client.begin() as txn:
            for i in range(ACCOUNTS):
                txn.put(_account(i), b"%d" % INITIAL)
        fault = cluster.faults.add(drop_stream=True, probability=0.03)

        async def transfer(seed: int) -> None:
            rng = random.Random(seed)
            for _ in range(25):
                a, b = rng.sample(range(ACCOUNTS), 2)
                txn = await client.begin(options)
                keys = [_account(a), _account(b)]
                try:
                    if options.is_pessimistic:
                        got = await txn.batch_get_for_update(keys)
                    else:
                        got = await txn.batch_get(keys)
                    amount = min(rng.randint(1, 10), int(got[keys[0]]))
                    txn.put(keys[0], b"%d" % (int(got[keys[0]]) - amount))
                    txn.put(keys[1], b"%d" % (int(got[keys[1]]) + amount))
                    await txn.commit()
                    outcome["committed"] += 1
                except UndeterminedError:
                    outcome["undetermined"] += 1
                except TiKVError:
                    outcome["failed"] += 1  # conflicts, and losses the client gave up on
                finally:
                    if txn.state == "active":
                        with contextlib.suppress(TiKVError):
                            await txn.rollback()
                total = sum((await _balances(client)).values())
                if total != ACCOUNTS * INITIAL:
                    bad.append(total)

        try:
            await within(asyncio.gather(*(transfer(s) for s in range(6))))
        finally:
            cluster.faults.remove(fault)
        final = await within(_balances(client))
    assert fault.hits > 0
    assert not bad, bad[:5]
    assert sum(final.values()) == ACCOUNTS * INITIAL
    assert min(final.values()) >= 0
    assert outcome["committed"] > 0
