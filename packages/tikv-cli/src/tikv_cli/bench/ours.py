"""The benchmark operations for this project's clients, asyncio and blocking flavours.

:func:`prepare_async` / :func:`prepare_sync` connect (:class:`tikv_raw.AsyncRawClient` /
:class:`tikv_raw.RawClient`, :class:`tikv_txn.AsyncTransactionClient` /
:class:`tikv_txn.TransactionClient`), optionally preload the workload's data and return a
:class:`Prepared`: the operation the measurement loop runs, its cleanup, and the figures
the workload adds to its cell. The small-transaction workloads count how their
transactions committed (:class:`CommitProtocolCounter`), so a 1PC or async-commit cell
shows whether the protocol it asked for was the one used.
"""

from __future__ import annotations

import itertools
import random
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from tikv_pd.config import TransactionOptions
from tikv_pd.errors import WriteConflictError
from tikv_pd.interceptor import RPCInvoker, RPCRequest
from tikv_raw import AsyncRawClient, RawClient
from tikv_txn import AsyncTransactionClient, TransactionClient

from tikv_cli.bench.measure import (
    BATCH_KEYS,
    HOT_KEYS,
    RAW_RECORDS,
    SCAN_KEYS,
    TXN_RECORDS,
    WORKLOADS,
    AsyncOp,
    SyncOp,
    hot_key,
    large_txn_keys,
    make_value,
    raw_key,
    txn_key,
    txn_write_key,
)

__all__ = [
    "MAX_CONFLICT_RETRIES",
    "CommitProtocolCounter",
    "Prepared",
    "prepare_async",
    "prepare_sync",
]

#: A contended transaction gives up after this many write conflicts in a row.
MAX_CONFLICT_RETRIES = 1000


def _no_extras() -> dict[str, Any]:
    return {}


Op = TypeVar("Op")
Cleanup = TypeVar("Cleanup")


@dataclass
class Prepared(Generic[Op, Cleanup]):
    """A workload ready to measure: its operation, its cleanup and its extra figures."""

    #: One operation (given the worker's random generator).
    op: Op
    #: Closes what the operation holds.
    cleanup: Cleanup
    #: Figures the workload adds to the cell's result (called after the window).
    extras: Callable[[], dict[str, Any]] = field(default=_no_extras)


class CommitProtocolCounter:
    """An RPC interceptor that counts how transactions committed: 1PC, async commit or 2PC.

    It reads each successful ``Prewrite`` that carries the transaction's primary key (one
    per transaction): ``one_pc_commit_ts`` set means 1PC; an async-commit request answered
    with a ``min_commit_ts`` means async commit; anything else (including a 1PC or
    async-commit attempt TiKV declined) is two-phase commit. Interceptors run on the
    client's event loop, so the counts need no lock.
    """

    name = "bench-commit-protocol-counter"

    def __init__(self) -> None:
        """Start with every count at zero."""
        self.counts: dict[str, int] = {"1pc": 0, "async_commit": 0, "2pc": 0}

    def wrap(self, next: RPCInvoker) -> RPCInvoker:
        """Count the protocol of every primary ``Prewrite`` answered without errors."""

        async def invoke(rpc: RPCRequest) -> Any:
            response = await next(rpc)
            if rpc.command == "Prewrite":
                self._observe(rpc.request, response)
            return response

        return invoke

    def _observe(self, request: Any, response: Any) -> None:
        if response.HasField("region_error") or len(response.errors):
            return
        primary = request.primary_lock
        if not any(m.key == primary for m in request.mutations):
            return
        if request.try_one_pc and response.one_pc_commit_ts:
            self.counts["1pc"] += 1
        elif request.use_async_commit and response.min_commit_ts:
            self.counts["async_commit"] += 1
        else:
            self.counts["2pc"] += 1

    def extras(self) -> dict[str, Any]:
        """The counts, as the cell's ``commit_protocols`` figure (warm-up included)."""
        return {"commit_protocols": dict(self.counts)}


def _small_txn_options(workload: str) -> TransactionOptions:
    protocol = WORKLOADS[workload].commit_protocol
    return TransactionOptions(try_one_pc=protocol == "1pc", async_commit=protocol == "async_commit")


# ---------------------------------------------------------------------------- asyncio

#: Closes what an asyncio operation holds.
AsyncCleanup = Callable[[], Awaitable[None]]
#: Closes what a blocking operation holds.
SyncCleanup = Callable[[], None]


async def prepare_async(
    workload: str, endpoints: Sequence[str], *, preload: bool
) -> Prepared[AsyncOp, AsyncCleanup]:
    """Connect the asyncio client for ``workload`` and prepare its operation.

    Raises:
        KeyError: Unknown workload.

    """
    kind = WORKLOADS[workload].kind
    eps = list(endpoints)
    if kind == "raw":
        raw = await AsyncRawClient.connect(eps)
        if preload:
            for start in range(0, RAW_RECORDS, 1000):
                await raw.batch_put({raw_key(i): make_value(i) for i in range(start, start + 1000)})
        return Prepared(_raw_async_op(workload, raw), raw.close)
    client = await AsyncTransactionClient.connect(eps)
    try:
        if kind == "tso":

            async def tso(rng: random.Random) -> None:
                await client.current_timestamp()

            return Prepared(tso, client.close)
        return await _txn_async(workload, client, preload=preload)
    except BaseException:
        await client.close()
        raise


def _raw_async_op(workload: str, raw: AsyncRawClient) -> AsyncOp:
    if workload == "raw_get":

        async def get(rng: random.Random) -> None:
            if await raw.get(raw_key(rng.randrange(RAW_RECORDS))) is None:
                raise LookupError("a preloaded key is missing")

        return get
    if workload == "raw_put":

        async def put(rng: random.Random) -> None:
            i = rng.randrange(RAW_RECORDS)
            await raw.put(raw_key(i), make_value(i))

        return put
    if workload == "raw_batch_get":

        async def batch_get(rng: random.Random) -> None:
            keys = [raw_key(i) for i in rng.sample(range(RAW_RECORDS), BATCH_KEYS)]
            if len(await raw.batch_get(keys)) != BATCH_KEYS:
                raise LookupError("preloaded keys are missing")

        return batch_get
    if workload == "raw_scan":

        async def scan(rng: random.Random) -> None:
            start = raw_key(rng.randrange(RAW_RECORDS - SCAN_KEYS))
            if len(await raw.scan(start, None, limit=SCAN_KEYS)) != SCAN_KEYS:
                raise LookupError("a scan returned too few pairs")

        return scan
    raise KeyError(workload)


def _preload_pairs(workload: str) -> dict[bytes, bytes]:
    """The pairs a transactional workload's data set holds before it runs."""
    data = WORKLOADS[workload].data_set
    if data == "txn_small":
        return {txn_key(i): make_value(i) for i in range(TXN_RECORDS)}
    if data == "txn_contended":
        return {hot_key(i): b"0" for i in range(HOT_KEYS)}
    return {}


def _sorted_pair(rng: random.Random) -> list[bytes]:
    # Locked in key order, so that two pessimistic transactions never wait on each other
    # in a cycle.
    return sorted(txn_key(i) for i in rng.sample(range(TXN_RECORDS), 2))


async def _txn_async(
    workload: str, client: AsyncTransactionClient, *, preload: bool
) -> Prepared[AsyncOp, AsyncCleanup]:
    pairs = _preload_pairs(workload) if preload else {}
    if pairs:
        txn = await client.begin()
        for key, value in pairs.items():
            txn.put(key, value)
        await txn.commit()
    spec = WORKLOADS[workload]
    if workload == "txn_small" or spec.variant_of == "txn_small":
        options = _small_txn_options(workload)
        counter = CommitProtocolCounter()
        client.add_rpc_interceptor(counter)

        async def small(rng: random.Random) -> None:
            reads = rng.sample(range(TXN_RECORDS), 2)
            txn = await client.begin(options)
            for i in reads:
                await txn.get(txn_key(i))
            for i in reads:
                txn.put(txn_write_key(rng), make_value(i))
            await txn.commit()

        return Prepared(small, client.close, counter.extras)
    if workload == "txn_pessimistic":

        async def pessimistic(rng: random.Random) -> None:
            txn = await client.begin(pessimistic=True)
            keys = _sorted_pair(rng)
            for key in keys:
                await txn.get_for_update(key)
            for key in keys:
                txn.put(key, make_value(rng.randrange(TXN_RECORDS)))
            await txn.commit()

        return Prepared(pessimistic, client.close)
    if workload == "txn_contended":

        async def contended(rng: random.Random) -> int:
            keys = [hot_key(i) for i in rng.sample(range(HOT_KEYS), 2)]
            for attempt in range(MAX_CONFLICT_RETRIES):
                txn = await client.begin()
                for key in keys:
                    value = await txn.get(key)
                    txn.put(key, b"%d" % (int(value or b"0") + 1))
                try:
                    await txn.commit()
                except WriteConflictError:
                    continue  # a failed commit has rolled the transaction back
                return attempt
            raise RuntimeError(f"no commit after {MAX_CONFLICT_RETRIES} write conflicts")

        return Prepared(contended, client.close)
    if workload == "txn_large":
        tag = uuid.uuid4().hex[:8]
        counter_ = itertools.count()
        value = make_value(0, 32)

        async def large(rng: random.Random) -> None:
            txn = await client.begin()
            for key in large_txn_keys(tag, next(counter_)):
                txn.put(key, value)
            await txn.commit()

        return Prepared(large, client.close)
    raise KeyError(workload)


# ---------------------------------------------------------------------------- blocking


def prepare_sync(
    workload: str, endpoints: Sequence[str], *, preload: bool
) -> Prepared[SyncOp, SyncCleanup]:
    """Connect the blocking client for ``workload`` and prepare its operation.

    Raises:
        KeyError: Unknown workload.

    """
    kind = WORKLOADS[workload].kind
    eps = list(endpoints)
    if kind == "raw":
        raw = RawClient.connect(eps)
        if preload:
            for start in range(0, RAW_RECORDS, 1000):
                raw.batch_put({raw_key(i): make_value(i) for i in range(start, start + 1000)})
        return Prepared(_raw_sync_op(workload, raw), raw.close)
    client = TransactionClient.connect(eps)
    try:
        if kind == "tso":

            def tso(rng: random.Random) -> None:
                client.current_timestamp()

            return Prepared(tso, client.close)
        return _txn_sync(workload, client, preload=preload)
    except BaseException:
        client.close()
        raise


def _raw_sync_op(workload: str, raw: RawClient) -> SyncOp:
    if workload == "raw_get":

        def get(rng: random.Random) -> None:
            if raw.get(raw_key(rng.randrange(RAW_RECORDS))) is None:
                raise LookupError("a preloaded key is missing")

        return get
    if workload == "raw_put":

        def put(rng: random.Random) -> None:
            i = rng.randrange(RAW_RECORDS)
            raw.put(raw_key(i), make_value(i))

        return put
    if workload == "raw_batch_get":

        def batch_get(rng: random.Random) -> None:
            keys = [raw_key(i) for i in rng.sample(range(RAW_RECORDS), BATCH_KEYS)]
            if len(raw.batch_get(keys)) != BATCH_KEYS:
                raise LookupError("preloaded keys are missing")

        return batch_get
    if workload == "raw_scan":

        def scan(rng: random.Random) -> None:
            start = raw_key(rng.randrange(RAW_RECORDS - SCAN_KEYS))
            if len(raw.scan(start, None, limit=SCAN_KEYS)) != SCAN_KEYS:
                raise LookupError("a scan returned too few pairs")

        return scan
    raise KeyError(workload)


def _txn_sync(
    workload: str, client: TransactionClient, *, preload: bool
) -> Prepared[SyncOp, SyncCleanup]:
    pairs = _preload_pairs(workload) if preload else {}
    if pairs:
        with client.begin() as txn:
            for key, value in pairs.items():
                txn.put(key, value)
    spec = WORKLOADS[workload]
    if workload == "txn_small" or spec.variant_of == "txn_small":
        options = _small_txn_options(workload)
        counter = CommitProtocolCounter()
        client.add_rpc_interceptor(counter)

        def small(rng: random.Random) -> None:
            reads = rng.sample(range(TXN_RECORDS), 2)
            txn = client.begin(options)
            for i in reads:
                txn.get(txn_key(i))
            for i in reads:
                txn.put(txn_write_key(rng), make_value(i))
            txn.commit()

        return Prepared(small, client.close, counter.extras)
    if workload == "txn_pessimistic":

        def pessimistic(rng: random.Random) -> None:
            txn = client.begin(pessimistic=True)
            keys = _sorted_pair(rng)
            for key in keys:
                txn.get_for_update(key)
            for key in keys:
                txn.put(key, make_value(rng.randrange(TXN_RECORDS)))
            txn.commit()

        return Prepared(pessimistic, client.close)
    if workload == "txn_contended":

        def contended(rng: random.Random) -> int:
            keys = [hot_key(i) for i in rng.sample(range(HOT_KEYS), 2)]
            for attempt in range(MAX_CONFLICT_RETRIES):
                txn = client.begin()
                for key in keys:
                    value = txn.get(key)
                    txn.put(key, b"%d" % (int(value or b"0") + 1))
                try:
                    txn.commit()
                except WriteConflictError:
                    continue  # a failed commit has rolled the transaction back
                return attempt
            raise RuntimeError(f"no commit after {MAX_CONFLICT_RETRIES} write conflicts")

        return Prepared(contended, client.close)
    if workload == "txn_large":
        tag = uuid.uuid4().hex[:8]
        counter_ = itertools.count()
        value = make_value(0, 32)

        def large(rng: random.Random) -> None:
            op = next(counter_)  # itertools.count is atomic under the GIL
            txn = client.begin()
            for key in large_txn_keys(tag, op):
                txn.put(key, value)
            txn.commit()

        return Prepared(large, client.close)
    raise KeyError(workload)
