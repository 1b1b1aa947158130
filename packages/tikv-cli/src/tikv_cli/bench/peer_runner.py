"""One benchmark cell for a third-party client, run as a script in that client's virtualenv.

``python peer_runner.py --client tikv-client|tikv-python --workload W --concurrency N
--duration S --warmup S --pd HOST:PORT [--server-pid PID] [--preload]`` prints one line
``RESULT <json>`` on standard output.

The peers register kvproto's protobuf packages, as ours does, so they cannot share a process
with this project: this script imports only the standard library, the peer and
:mod:`measure` (a sibling file, found through ``sys.path[0]``). Both peers are driven
through their asyncio APIs (``tikv_client.asynchronous`` for tikv-client 0.0.4, whose
blocking wrapper calls the deprecated ``asyncio.get_event_loop()``, and
``tikv.AsyncRawClient`` for tikv-python 0.1.1), with one shared client per process, as
this project's async flavour is.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

if __package__ in (None, ""):  # run as a script in a peer's virtualenv
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import measure as m  # type: ignore[import-not-found, no-redef, unused-ignore]
else:  # imported from the package (tests, type checking)
    from tikv_cli.bench import measure as m

__all__ = ["PEER_SUPPORT", "main"]

#: The workloads each peer can run: tikv-client 0.0.4 has no option for 1PC or async
#: commit; tikv-python has no transactions and no TSO.
PEER_SUPPORT: dict[str, frozenset[str]] = {
    "tikv-client": frozenset(n for n, w in m.WORKLOADS.items() if w.commit_protocol == "2pc"),
    "tikv-python": frozenset(n for n, w in m.WORKLOADS.items() if w.kind == "raw"),
}

Op = Callable[[random.Random], Awaitable[int | None]]
Cleanup = Callable[[], Awaitable[None]]


async def _noop() -> None:
    return None


def _is_write_conflict(exc: BaseException) -> bool:
    # tikv-client surfaces key errors as plain Exception("... WriteConflict ...").
    text = str(exc)
    return "WriteConflict" in text or "write conflict" in text.lower()


async def _prepare_tikv_client(workload: str, pd: list[str], preload: bool) -> tuple[Op, Cleanup]:
    from tikv_client.asynchronous import (  # type: ignore[import-not-found, unused-ignore]
        RawClient,
        TransactionClient,
    )

    kind = m.WORKLOADS[workload].kind
    if kind == "raw":
        raw = await RawClient.connect(pd)
        if preload:
            for start in range(0, m.RAW_RECORDS, 1000):
                await raw.batch_put(
                    {m.raw_key(i): m.make_value(i) for i in range(start, start + 1000)}
                )
        return _raw_op_tikv_client(workload, raw), _noop
    client = await TransactionClient.connect(pd)
    if kind == "tso":

        async def tso(rng: random.Random) -> None:
            await client.current_timestamp()

        return tso, _noop

    async def commit_all(pairs: dict[bytes, bytes]) -> None:
        txn = await client.begin()
        for key, value in pairs.items():
            await txn.put(key, value)
        await txn.commit()

    data = m.WORKLOADS[workload].data_set
    if preload and data == "txn_small":
        await commit_all({m.txn_key(i): m.make_value(i) for i in range(m.TXN_RECORDS)})
    if workload == "txn_small":

        async def small(rng: random.Random) -> None:
            reads = rng.sample(range(m.TXN_RECORDS), 2)
            txn = await client.begin()
            for i in reads:
                await txn.get(m.txn_key(i))
            for i in reads:
                await txn.put(m.txn_write_key(rng), m.make_value(i))
            await txn.commit()

        return small, _noop
    if workload == "txn_pessimistic":

        async def pessimistic(rng: random.Random) -> None:
            keys = sorted(m.txn_key(i) for i in rng.sample(range(m.TXN_RECORDS), 2))
            txn = await client.begin(pessimistic=True)
            for key in keys:
                await txn.get_for_update(key)
            for key in keys:
                await txn.put(key, m.make_value(rng.randrange(m.TXN_RECORDS)))
            await txn.commit()

        return pessimistic, _noop
    if workload == "txn_contended":
        if preload:
            await commit_all({m.hot_key(i): b"0" for i in range(m.HOT_KEYS)})

        async def contended(rng: random.Random) -> int:
            keys = [m.hot_key(i) for i in rng.sample(range(m.HOT_KEYS), 2)]
            for attempt in range(1000):
                txn = await client.begin()
                for key in keys:
                    value = await txn.get(key)
                    await txn.put(key, b"%d" % (int(value or b"0") + 1))
                try:
                    await txn.commit()
                except Exception as exc:
                    if not _is_write_conflict(exc):
                        raise
                    await txn.rollback()
                    continue
                return attempt
            raise RuntimeError("no commit after 1000 write conflicts")

        return contended, _noop
    if workload == "txn_large":
        tag = uuid.uuid4().hex[:8]
        counter = itertools.count()
        value = m.make_value(0, 32)

        async def large(rng: random.Random) -> None:
            txn = await client.begin()
            for key in m.large_txn_keys(tag, next(counter)):
                await txn.put(key, value)
            await txn.commit()

        return large, _noop
    raise KeyError(workload)


def _raw_op_tikv_client(workload: str, raw: Any) -> Op:
    if workload == "raw_get":

        async def get(rng: random.Random) -> None:
            if await raw.get(m.raw_key(rng.randrange(m.RAW_RECORDS))) is None:
                raise LookupError("a preloaded key is missing")

        return get
    if workload == "raw_put":

        async def put(rng: random.Random) -> None:
            i = rng.randrange(m.RAW_RECORDS)
            await raw.put(m.raw_key(i), m.make_value(i))

        return put
    if workload == "raw_batch_get":

        async def batch_get(rng: random.Random) -> None:
            keys = [m.raw_key(i) for i in rng.sample(range(m.RAW_RECORDS), m.BATCH_KEYS)]
            if len(await raw.batch_get(keys)) != m.BATCH_KEYS:
                raise LookupError("preloaded keys are missing")

        return batch_get
    if workload == "raw_scan":

        async def scan(rng: random.Random) -> None:
            start = m.raw_key(rng.randrange(m.RAW_RECORDS - m.SCAN_KEYS))
            if len(await raw.scan(start, None, m.SCAN_KEYS)) != m.SCAN_KEYS:
                raise LookupError("a scan returned too few pairs")

        return scan
    raise KeyError(workload)


async def _prepare_tikv_python(workload: str, pd: list[str], preload: bool) -> tuple[Op, Cleanup]:
    import tikv  # type: ignore[import-not-found, unused-ignore]

    raw = tikv.AsyncRawClient(pd)
    if preload:
        for start in range(0, m.RAW_RECORDS, 1000):
            await raw.put_many({m.raw_key(i): m.make_value(i) for i in range(start, start + 1000)})
    if workload == "raw_get":

        async def get(rng: random.Random) -> None:
            if await raw.get(m.raw_key(rng.randrange(m.RAW_RECORDS))) is None:
                raise LookupError("a preloaded key is missing")

        return get, raw.close
    if workload == "raw_put":

        async def put(rng: random.Random) -> None:
            i = rng.randrange(m.RAW_RECORDS)
            await raw.put(m.raw_key(i), m.make_value(i))

        return put, raw.close
    if workload == "raw_batch_get":

        async def batch_get(rng: random.Random) -> None:
            keys = [m.raw_key(i) for i in rng.sample(range(m.RAW_RECORDS), m.BATCH_KEYS)]
            if len(await raw.get_many(keys)) != m.BATCH_KEYS:
                raise LookupError("preloaded keys are missing")

        return batch_get, raw.close
    if workload == "raw_scan":

        async def scan(rng: random.Random) -> None:
            start = m.raw_key(rng.randrange(m.RAW_RECORDS - m.SCAN_KEYS))
            pairs = [kv async for kv in raw.scan(start, None, limit=m.SCAN_KEYS)]
            if len(pairs) != m.SCAN_KEYS:
                raise LookupError("a scan returned too few pairs")

        return scan, raw.close
    raise KeyError(workload)


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    if args.workload not in PEER_SUPPORT[args.client]:
        return {"unsupported": f"{args.client} has no API for {args.workload}"}
    pd = [e for e in args.pd.split(",") if e]
    prepare = _prepare_tikv_client if args.client == "tikv-client" else _prepare_tikv_python
    op, cleanup = await prepare(args.workload, pd, args.preload)
    workload = m.WORKLOADS[args.workload]
    try:
        result: dict[str, Any] = await m.run_async(
            op,
            concurrency=args.concurrency,
            duration=args.duration,
            warmup=workload.warmup if args.warmup is None else args.warmup,
            min_ops=workload.min_ops,
            server_pid=args.server_pid,
        )
    finally:
        await cleanup()
    return result


def main(argv: list[str] | None = None) -> int:
    """Run one cell and print ``RESULT <json>``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="peer_runner")
    parser.add_argument("--client", choices=sorted(PEER_SUPPORT), required=True)
    parser.add_argument("--workload", choices=sorted(m.WORKLOADS), required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--warmup", type=float, default=None)
    parser.add_argument("--pd", required=True)
    parser.add_argument("--server-pid", type=int, default=None)
    parser.add_argument("--preload", action="store_true")
    parser.add_argument("--namespace", default="", help="key prefix of the transactional data")
    args = parser.parse_args(argv)
    if args.namespace:
        m.set_namespace(args.namespace)
    try:
        result = asyncio.run(_run(args))
    except Exception as exc:
        result = {"error": f"{type(exc).__name__}: {exc}"[:1000]}
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
