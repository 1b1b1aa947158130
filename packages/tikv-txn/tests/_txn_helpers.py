"""Helpers shared by tikv-txn's tests (imported as ``_txn_helpers``; see ``conftest.py``).

They assume the shared ``cluster`` fixture's shape where they route keys: four regions
split at first bytes 0x40 / 0x80 / 0xC0.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pytest
from tikv_mockstore import MockCluster
from tikv_mockstore.kv_errors import lock_info_to_pb
from tikv_pd.config import TransactionOptions
from tikv_pd.errors import LockInfo
from tikv_txn import AsyncTransactionClient
from tikv_txn._kv import lock_from_pb
from tikv_txn.committer import TwoPhaseCommitter

#: One first byte per region of the shared cluster: keys starting with them live in
#: four different regions.
FIRST_BYTES = (b"\x10", b"\x50", b"\x90", b"\xd0")
#: Seconds after which a wait that should end is a hang.
NO_HANG = 60.0
#: A timestamp above every lock's: scans every lock the mock holds.
MAX_TS = 2**63 - 1


def K(first: bytes, p: bytes, name: bytes | str) -> bytes:
    """A test key in the region of ``first``, under the test's prefix ``p``."""
    return first + p + (name.encode() if isinstance(name, str) else name)


def client_lock(server_lock: Any) -> LockInfo:
    """A lock the mock holds (``cluster.engine.scan_lock`` / ``lock_of(...).to_lock_info``),
    as the client receives it: through TiKV's ``kvrpcpb.LockInfo`` and the client's own
    conversion, so no field is copied by hand."""
    return lock_from_pb(lock_info_to_pb(server_lock))


def locks_in(cluster: MockCluster, p: bytes) -> list[LockInfo]:
    """The locks the server holds on keys containing the prefix ``p``, in key order."""
    return [lock for lock in cluster.engine.scan_lock(MAX_TS) if p in lock.key]


def locked_keys(cluster: MockCluster, p: bytes) -> list[bytes]:
    """The keys containing the prefix ``p`` that hold a lock on the server, sorted."""
    return sorted(lock.key for lock in locks_in(cluster, p))


async def seed(
    client: AsyncTransactionClient,
    data: Iterable[bytes] | Mapping[bytes, bytes],
    *versions: bytes,
) -> None:
    """Commit ``data`` and wait for every secondary commit to finish.

    ``data`` is either key → value, or keys written with each of ``versions`` in turn,
    one transaction per version (default: one version, ``b"old"``). Waiting for the
    background commits makes the test's later fault injections meet none of them.
    """
    if isinstance(data, Mapping):
        writes = [dict(data)]
    else:
        keys = list(data)
        writes = [dict.fromkeys(keys, value) for value in versions or (b"old",)]
    for pairs in writes:
        async with client.begin() as txn:
            for key, value in pairs.items():
                txn.put(key, value)
    assert await client.runtime.wait_background(NO_HANG)


async def prepared(
    client: AsyncTransactionClient,
    keys: Iterable[bytes],
    value: bytes = b"new",
    options: TransactionOptions | None = None,
) -> TwoPhaseCommitter:
    """A committer of a transaction writing ``value`` to ``keys``, prepared, not prewritten."""
    txn = await client.begin(options)
    for key in keys:
        txn.put(key, value)
    committer = txn._new_committer()
    assert await committer.prepare()
    return committer


async def expire_locks(cluster: MockCluster, client: AsyncTransactionClient) -> None:
    """Move the cluster clock past every lock TTL and refresh ``client``'s cached ts.

    PD's timestamps follow the mock cluster's clock, so locks expire without sleeping.
    """
    cluster.clock.advance(60_000)
    await client.current_timestamp()


async def poll(condition: Callable[[], bool], what: str, within: float = NO_HANG) -> None:
    """Wait until ``condition()`` holds, yielding to the loop; fail after ``within`` s."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def account_keys(prefix: bytes, accounts: int) -> list[bytes]:
    """The bank tests' account keys, first bytes spread over [0x00, 0xff] (all regions)."""
    return [bytes([i * 256 // accounts]) + prefix + b"%02d" % i for i in range(accounts)]


def disturb(cluster: MockCluster, keys: list[bytes], rng: random.Random) -> str:
    """Split at one of ``keys`` or move a region's leader; return what was done."""
    if rng.random() < 0.5:
        cluster.split([rng.choice(keys) + b"\x00"], txn=True)
        return "split"
    region = rng.choice(cluster.regions())
    leader = region.leader
    others = [p.store_id for p in region.peers if leader is None or p.store_id != leader.store_id]
    if others:
        cluster.transfer_leader(region.id, rng.choice(others))
    return "transfer"
