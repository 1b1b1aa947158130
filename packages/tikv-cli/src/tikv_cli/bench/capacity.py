"""Mock capacity: raw gets and puts the embedded cluster serves per second, for issue tracking.

The load comes straight from ``tikvpb`` stubs on ``grpc.aio`` (no client library): the
region and its leader are looked up once through ``pdpb``, then one store is driven with

- ``unary_get`` / ``unary_put``: ``RawGet`` / ``RawPut`` unary calls, ``UNARY_IN_FLIGHT``
  concurrent callers;
- ``batch_get`` / ``batch_put``: one ``BatchCommands`` stream, messages of ``BATCH_SIZE``
  requests, ``BATCH_WINDOW`` messages in flight;
- ``batch_txn``: the same stream with transactional requests: a message of ``KvPrewrite``
  (one key per transaction), then one committing those transactions (``KvCommit``), then one
  reading the keys back (``KvGet``), over and over.

Each mode has a short warm-up, then a window; the result counts the requests answered
inside it, answers carrying a region or key error as errors, and the server's and this
process's CPU utilisation (read it: with util near 1.0 on the server side the mock is the
limit, near 1.0 on the client side this driver is). ``server_us_per_request`` (server CPU
per answered request) is the figure to compare across runs on a shared machine.

``python -m tikv_cli.bench.capacity --pd HOST:PORT [--server-pid PID] [--duration S]``
prints ``RESULT <json list>``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

import grpc
from tikv_proto import kvrpcpb_pb2, metapb_pb2, pdpb_pb2, pdpb_pb2_grpc, tikvpb_pb2, tikvpb_pb2_grpc

from tikv_cli.bench.measure import cpu_seconds_of, make_value, self_cpu

__all__ = ["BATCH_SIZE", "BATCH_WINDOW", "MODES", "UNARY_IN_FLIGHT", "main", "measure_capacity"]

#: Concurrent unary callers.
UNARY_IN_FLIGHT = 64
#: Requests per BatchCommands message.
BATCH_SIZE = 128
#: BatchCommands messages in flight.
BATCH_WINDOW = 8
#: The modes, in run order.
MODES = ("unary_get", "unary_put", "batch_get", "batch_put", "batch_txn")
_KEYS = 1000


def _key(i: int) -> bytes:
    return b"cap/%06d" % i


async def _locate(pd_target: str) -> tuple[kvrpcpb_pb2.Context, str]:
    """The Context (region, epoch, leader) of the region holding the keys, and its store."""
    async with grpc.aio.insecure_channel(pd_target) as channel:
        pd: pdpb_pb2_grpc.PDAsyncStub = pdpb_pb2_grpc.PDStub(channel)
        members = await pd.GetMembers(pdpb_pb2.GetMembersRequest(), timeout=5)
        header = pdpb_pb2.RequestHeader(cluster_id=members.header.cluster_id)
        region = await pd.GetRegion(
            pdpb_pb2.GetRegionRequest(header=header, region_key=_key(0)), timeout=5
        )
        if region.region.end_key and _key(_KEYS) >= region.region.end_key:
            raise RuntimeError("the capacity keys span more than one region")
        leader: metapb_pb2.Peer = region.leader
        store = await pd.GetStore(
            pdpb_pb2.GetStoreRequest(header=header, store_id=leader.store_id), timeout=5
        )
    ctx = kvrpcpb_pb2.Context(
        region_id=region.region.id, region_epoch=region.region.region_epoch, peer=leader
    )
    return ctx, store.store.address.removeprefix("http://")


class _Meter:
    """Counts answered requests and errors inside the window."""

    def __init__(self) -> None:
        self.measuring = False
        self.requests = 0
        self.messages = 0
        self.errors = 0

    def answered(self, requests: int, errors: int) -> None:
        if self.measuring:
            self.requests += requests
            self.messages += 1
            self.errors += errors


def _answer_error(resp: Any) -> bool:
    """Whether a raw or transactional answer carries a region error or a key error."""
    if resp.HasField("region_error"):
        return True
    fields = resp.DESCRIPTOR.fields_by_name
    if "errors" in fields:
        return len(resp.errors) > 0
    if "error" in fields and fields["error"].message_type is not None:
        return bool(resp.HasField("error"))
    return bool(getattr(resp, "error", ""))


async def _unary(
    stub: tikvpb_pb2_grpc.TikvAsyncStub, ctx: kvrpcpb_pb2.Context, put: bool, meter: _Meter
) -> None:
    i = 0
    while True:
        i = (i + 7) % _KEYS
        if put:
            resp: Any = await stub.RawPut(
                kvrpcpb_pb2.RawPutRequest(context=ctx, key=_key(i), value=make_value(i))
            )
        else:
            resp = await stub.RawGet(kvrpcpb_pb2.RawGetRequest(context=ctx, key=_key(i)))
        meter.answered(1, int(_answer_error(resp)))


def _raw_requests(ctx: kvrpcpb_pb2.Context, put: bool) -> Iterator[list[Any]]:
    """Endless request lists of ``BATCH_SIZE`` RawPut or RawGet requests."""
    request = tikvpb_pb2.BatchCommandsRequest.Request
    first = 0
    while True:
        keys = [(first + n) % _KEYS for n in range(BATCH_SIZE)]
        if put:
            yield [
                request(
                    RawPut=kvrpcpb_pb2.RawPutRequest(context=ctx, key=_key(i), value=make_value(i))
                )
                for i in keys
            ]
        else:
            yield [
                request(RawGet=kvrpcpb_pb2.RawGetRequest(context=ctx, key=_key(i))) for i in keys
            ]
        first += BATCH_SIZE


def _txn_key(i: int) -> bytes:
    return b"cap/t%06d" % i


def _txn_requests(ctx: kvrpcpb_pb2.Context) -> Iterator[list[Any]]:
    """Endless request lists: prewrite ``BATCH_SIZE`` one-key transactions, commit, read.

    Timestamps follow the wall clock as PD's would (physical milliseconds, 18 logical bits),
    so the lock TTLs are meaningful; every transaction has its own start ts.
    """
    request = tikvpb_pb2.BatchCommandsRequest.Request
    ts = int(time.time() * 1000) << 18
    first = 0
    while True:
        keys = [_txn_key((first + n) % _KEYS) for n in range(BATCH_SIZE)]
        starts = [ts + 2 * n + 1 for n in range(BATCH_SIZE)]
        yield [
            request(
                Prewrite=kvrpcpb_pb2.PrewriteRequest(
                    context=ctx,
                    mutations=[
                        kvrpcpb_pb2.Mutation(op=kvrpcpb_pb2.Put, key=k, value=make_value(n))
                    ],
                    primary_lock=k,
                    start_version=start,
                    lock_ttl=3000,
                    txn_size=1,
                )
            )
            for n, (k, start) in enumerate(zip(keys, starts, strict=True))
        ]
        yield [
            request(
                Commit=kvrpcpb_pb2.CommitRequest(
                    context=ctx, keys=[k], start_version=start, commit_version=start + 1
                )
            )
            for k, start in zip(keys, starts, strict=True)
        ]
        read_ts = ts + 2 * BATCH_SIZE + 1
        yield [
            request(Get=kvrpcpb_pb2.GetRequest(context=ctx, key=k, version=read_ts)) for k in keys
        ]
        ts += 2 * BATCH_SIZE + 2
        first += BATCH_SIZE


async def _batch(
    stub: tikvpb_pb2_grpc.TikvAsyncStub, batches: Iterator[list[Any]], meter: _Meter
) -> None:
    call: Any = stub.BatchCommands()  # type: ignore[call-arg]
    outstanding = 0
    room = asyncio.Event()
    room.set()

    async def receive() -> None:
        nonlocal outstanding
        while True:
            resp = await call.read()
            if not isinstance(resp, tikvpb_pb2.BatchCommandsResponse):  # EOF
                raise RuntimeError("the BatchCommands stream ended")
            errors = 0
            for item in resp.responses:
                name = item.WhichOneof("cmd")
                errors += int(name is None or _answer_error(getattr(item, name)))
            outstanding -= len(resp.request_ids)
            meter.answered(len(resp.request_ids), errors)
            if outstanding <= (BATCH_WINDOW - 1) * BATCH_SIZE:
                room.set()

    receiver = asyncio.create_task(receive())
    try:
        next_id = 0
        while True:
            await room.wait()
            if receiver.done():
                receiver.result()
            requests = next(batches)
            await call.write(
                tikvpb_pb2.BatchCommandsRequest(
                    requests=requests, request_ids=range(next_id, next_id + len(requests))
                )
            )
            next_id += len(requests)
            outstanding += len(requests)
            if outstanding > (BATCH_WINDOW - 1) * BATCH_SIZE:
                room.clear()
    finally:
        receiver.cancel()
        call.cancel()


async def _mode(
    mode: str,
    stub: tikvpb_pb2_grpc.TikvAsyncStub,
    ctx: kvrpcpb_pb2.Context,
    *,
    duration: float,
    warmup: float,
    server_pid: int | None,
) -> dict[str, Any]:
    meter = _Meter()
    put = mode.endswith("put")
    if mode.startswith("unary"):
        tasks = [asyncio.create_task(_unary(stub, ctx, put, meter)) for _ in range(UNARY_IN_FLIGHT)]
        in_flight = UNARY_IN_FLIGHT
    else:
        batches = _txn_requests(ctx) if mode == "batch_txn" else _raw_requests(ctx, put)
        tasks = [asyncio.create_task(_batch(stub, batches, meter))]
        in_flight = BATCH_SIZE * BATCH_WINDOW
    try:
        await asyncio.sleep(warmup)
        for task in tasks:
            if task.done():
                task.result()
        server0 = cpu_seconds_of(server_pid) if server_pid else None
        user0, sys0 = self_cpu()
        t0 = time.perf_counter()
        meter.measuring = True
        await asyncio.sleep(duration)
        meter.measuring = False
        elapsed = time.perf_counter() - t0
        user1, sys1 = self_cpu()
        server1 = cpu_seconds_of(server_pid) if server_pid else None
        for task in tasks:
            if task.done():
                task.result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    server_util = (
        (server1 - server0) / elapsed if server0 is not None and server1 is not None else None
    )
    server_us = (
        (server1 - server0) / meter.requests * 1e6
        if server0 is not None and server1 is not None and meter.requests
        else None
    )
    return {
        "mode": mode,
        "requests_per_s": meter.requests / elapsed,
        "server_us_per_request": server_us,
        "messages_per_s": meter.messages / elapsed,
        "in_flight": in_flight,
        "errors": meter.errors,
        "server_util": server_util,
        "client_util": (user1 - user0 + sys1 - sys0) / elapsed,
        "elapsed_s": elapsed,
    }


async def measure_capacity(
    pd_target: str,
    *,
    duration: float = 3.0,
    warmup: float = 0.5,
    server_pid: int | None = None,
    modes: Sequence[str] = MODES,
) -> list[dict[str, Any]]:
    """Drive the cluster behind ``pd_target`` in each mode; one result dict per mode."""
    ctx, address = await _locate(pd_target)
    options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        stub: tikvpb_pb2_grpc.TikvAsyncStub = tikvpb_pb2_grpc.TikvStub(channel)
        for i in range(_KEYS):  # the gets must find something
            await stub.RawPut(
                kvrpcpb_pb2.RawPutRequest(context=ctx, key=_key(i), value=make_value(i))
            )
        results: list[dict[str, Any]] = []
        for mode in modes:
            try:
                results.append(
                    await _mode(
                        mode, stub, ctx, duration=duration, warmup=warmup, server_pid=server_pid
                    )
                )
            except Exception as exc:
                results.append({"mode": mode, "error": f"{type(exc).__name__}: {exc}"[:500]})
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Measure every mode and print ``RESULT <json list>``."""
    parser = argparse.ArgumentParser(prog="python -m tikv_cli.bench.capacity")
    parser.add_argument("--pd", required=True)
    parser.add_argument("--server-pid", type=int, default=None)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    args = parser.parse_args(argv)
    try:
        results = asyncio.run(
            measure_capacity(
                args.pd.split(",")[0],
                duration=args.duration,
                warmup=args.warmup,
                server_pid=args.server_pid,
            )
        )
    except Exception as exc:
        results = [{"mode": "all", "error": f"{type(exc).__name__}: {exc}"[:500]}]
    print("RESULT " + json.dumps(results), flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
