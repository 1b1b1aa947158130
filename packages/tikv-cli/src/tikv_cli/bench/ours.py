"""The benchmark operations for this project's clients, asyncio and blocking flavours.

:func:`prepare_async` / :func:`prepare_sync` connect, optionally preload the workload's data
and return the operation the measurement loop runs. Transactional workloads find
``tikv_txn.AsyncTransactionClient`` / ``TransactionClient`` at run time and raise
:class:`UnsupportedError` when the installed ``tikv-txn`` does not provide them yet.
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import random
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from tikv_pd.errors import WriteConflictError
from tikv_pd.pd_client import PDClient
from tikv_pd.sync import LoopThread
from tikv_raw import AsyncRawClient, RawClient

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

__all__ = ["MAX_CONFLICT_RETRIES", "UnsupportedError", "prepare_async", "prepare_sync"]

#: A contended transaction gives up after this many write conflicts in a row.
MAX_CONFLICT_RETRIES = 1000

#: Closes what a prepared operation holds.
AsyncCleanup = Callable[[], Awaitable[None]]
SyncCleanup = Callable[[], None]


class UnsupportedError(Exception):
    """The client cannot run the workload (the reason is the message)."""


async def _aw(value: Any) -> Any:
    """Await ``value`` if it is awaitable (the async txn API may buffer writes synchronously)."""
    if inspect.isawaitable(value):
        return await value
    return value


def _txn_module_class(name: str) -> Any:
    try:
        module = importlib.import_module("tikv_txn")
    except ImportError as exc:  # pragma: no cover - tikv-txn is a dependency
        raise UnsupportedError(f"tikv_txn cannot be imported: {exc}") from None
    cls = getattr(module, name, None)
    if cls is None:
        raise UnsupportedError(f"tikv_txn has no {name} yet")
    return cls


# ---------------------------------------------------------------------------- asyncio


async def prepare_async(
    workload: str, endpoints: Sequence[str], *, preload: bool
) -> tuple[AsyncOp, AsyncCleanup]:
    """Connect the asyncio client for ``workload``; returns (operation, cleanup).

    Raises:
        UnsupportedError: The transactional client is not available yet.
        KeyError: Unknown workload.

    """
    kind = WORKLOADS[workload].kind
    eps = list(endpoints)
    if kind == "raw":
        raw = await AsyncRawClient.connect(eps)
        if preload:
            for start in range(0, RAW_RECORDS, 1000):
                await raw.batch_put({raw_key(i): make_value(i) for i in range(start, start + 1000)})
        return _raw_async_op(workload, raw), raw.close
    if kind == "tso":
        try:
            txn_client = await _txn_module_class("AsyncTransactionClient").connect(eps)
        except UnsupportedError:
            # Before tikv-txn has its client: the PD client's TSO, which it builds on.
            pd = await PDClient.connect(eps, caller_id="tikv-bench")

            async def pd_tso(rng: random.Random) -> None:
                await pd.get_timestamp()

            return pd_tso, pd.close

        async def tso(rng: random.Random) -> None:
            await txn_client.current_timestamp()

        async def close_tso() -> None:
            await _aw(txn_client.close())

        return tso, close_tso
    cls = _txn_module_class("AsyncTransactionClient")
    client = await cls.connect(eps)
    try:
        op = await _txn_async_op(workload, client, preload=preload)
    except BaseException:
        await _aw(client.close())
        raise

    async def close() -> None:
        await _aw(client.close())

    return op, close


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


async def _txn_async_op(workload: str, client: Any, *, preload: bool) -> AsyncOp:
    async def commit_all(pairs: dict[bytes, bytes]) -> None:
        txn = await _aw(client.begin())
        for key, value in pairs.items():
            await _aw(txn.put(key, value))
        await _aw(txn.commit())

    if workload == "txn_small":
        if preload:
            await commit_all({txn_key(i): make_value(i) for i in range(TXN_RECORDS)})

        async def small(rng: random.Random) -> None:
            reads = rng.sample(range(TXN_RECORDS), 2)
            txn = await _aw(client.begin())
            for i in reads:
                await _aw(txn.get(txn_key(i)))
            for i in reads:
                await _aw(txn.put(txn_write_key(rng), make_value(i)))
            await _aw(txn.commit())

        return small
    if workload == "txn_contended":
        if preload:
            await commit_all({hot_key(i): b"0" for i in range(HOT_KEYS)})

        async def contended(rng: random.Random) -> int:
            keys = [hot_key(i) for i in rng.sample(range(HOT_KEYS), 2)]
            for attempt in range(MAX_CONFLICT_RETRIES):
                txn = await _aw(client.begin())
                for key in keys:
                    value = await _aw(txn.get(key))
                    await _aw(txn.put(key, b"%d" % (int(value or b"0") + 1)))
                try:
                    await _aw(txn.commit())
                except WriteConflictError:
                    continue  # a failed commit has rolled the transaction back
                return attempt
            raise RuntimeError(f"no commit after {MAX_CONFLICT_RETRIES} write conflicts")

        return contended
    if workload == "txn_large":
        tag = uuid.uuid4().hex[:8]
        counter = itertools.count()
        value = make_value(0, 32)

        async def large(rng: random.Random) -> None:
            txn = await _aw(client.begin())
            for key in large_txn_keys(tag, next(counter)):
                await _aw(txn.put(key, value))
            await _aw(txn.commit())

        return large
    raise KeyError(workload)


# ---------------------------------------------------------------------------- blocking


def prepare_sync(
    workload: str, endpoints: Sequence[str], *, preload: bool
) -> tuple[SyncOp, SyncCleanup]:
    """Connect the blocking client for ``workload``; returns (operation, cleanup).

    Raises:
        UnsupportedError: The transactional client is not available yet.
        KeyError: Unknown workload.

    """
    kind = WORKLOADS[workload].kind
    eps = list(endpoints)
    if kind == "raw":
        raw = RawClient.connect(eps)
        if preload:
            for start in range(0, RAW_RECORDS, 1000):
                raw.batch_put({raw_key(i): make_value(i) for i in range(start, start + 1000)})
        return _raw_sync_op(workload, raw), raw.close
    if kind == "tso":
        try:
            txn_client = _txn_module_class("TransactionClient").connect(eps)
        except UnsupportedError:
            return _pd_tso_sync(eps)

        def txn_tso(rng: random.Random) -> None:
            txn_client.current_timestamp()

        return txn_tso, txn_client.close
    cls = _txn_module_class("TransactionClient")
    client = cls.connect(eps)
    try:
        op = _txn_sync_op(workload, client, preload=preload)
    except BaseException:
        client.close()
        raise
    return op, client.close


def _pd_tso_sync(eps: list[str]) -> tuple[SyncOp, SyncCleanup]:
    """The blocking TSO path before tikv-txn has its client: the PD client on a loop thread."""
    loop = LoopThread(name="tikv-bench-pd")
    pd = loop.run(PDClient.connect(eps, caller_id="tikv-bench"))

    def tso(rng: random.Random) -> None:
        loop.run(pd.get_timestamp())

    def close() -> None:
        try:
            loop.run(pd.close())
        finally:
            loop.close()

    return tso, close


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


def _txn_sync_op(workload: str, client: Any, *, preload: bool) -> SyncOp:
    def commit_all(pairs: dict[bytes, bytes]) -> None:
        txn = client.begin()
        for key, value in pairs.items():
            txn.put(key, value)
        txn.commit()

    if workload == "txn_small":
        if preload:
            commit_all({txn_key(i): make_value(i) for i in range(TXN_RECORDS)})

        def small(rng: random.Random) -> None:
            reads = rng.sample(range(TXN_RECORDS), 2)
            txn = client.begin()
            for i in reads:
                txn.get(txn_key(i))
            for i in reads:
                txn.put(txn_write_key(rng), make_value(i))
            txn.commit()

        return small
    if workload == "txn_contended":
        if preload:
            commit_all({hot_key(i): b"0" for i in range(HOT_KEYS)})

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

        return contended
    if workload == "txn_large":
        tag = uuid.uuid4().hex[:8]
        counter = itertools.count()
        value = make_value(0, 32)

        def large(rng: random.Random) -> None:
            op = next(counter)  # itertools.count is atomic under the GIL
            txn = client.begin()
            for key in large_txn_keys(tag, op):
                txn.put(key, value)
            txn.commit()

        return large
    raise KeyError(workload)
