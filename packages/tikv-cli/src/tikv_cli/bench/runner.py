"""One benchmark cell for this project's client, in-process or as ``python -m`` in a child.

``python -m tikv_cli.bench.runner --client ours-async|ours-sync --workload W
--concurrency N --duration S --pd HOST:PORT [--warmup S] [--server-pid PID] [--preload]``
prints one line ``RESULT <json>``, like the third-party runner
(:mod:`tikv_cli.bench.peer_runner`). :func:`run_cell` is the same measurement in the
calling process (``tikv bench`` and the tests use it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Sequence
from typing import Any

from tikv_cli.bench.measure import WORKLOADS, Progress, run_async, run_threads, set_namespace
from tikv_cli.bench.ours import prepare_async, prepare_sync

__all__ = ["OUR_CLIENTS", "main", "run_cell"]

#: This project's client flavours: the asyncio core and the blocking facade (threads).
OUR_CLIENTS = ("ours-async", "ours-sync")


def run_cell(
    client: str,
    workload: str,
    endpoints: Sequence[str],
    *,
    concurrency: int,
    duration: float,
    warmup: float | None = None,
    preload: bool = False,
    server_pid: int | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Measure one cell of this project's client in this process.

    Returns :meth:`~tikv_cli.bench.measure.Window.result`'s figures and the workload's
    own (:attr:`tikv_cli.bench.ours.Prepared.extras`: e.g. ``commit_protocols``).

    Raises:
        ValueError: Unknown client or workload.

    """
    if client not in OUR_CLIENTS:
        raise ValueError(f"client must be one of {', '.join(OUR_CLIENTS)}, got {client!r}")
    if workload not in WORKLOADS:
        raise ValueError(f"unknown workload {workload!r}; choose from {', '.join(WORKLOADS)}")
    spec = WORKLOADS[workload]
    wait = spec.warmup if warmup is None else warmup
    if client == "ours-async":
        return _cell_loop().run_until_complete(
            _run_async(
                workload,
                endpoints,
                concurrency=concurrency,
                duration=duration,
                warmup=wait,
                min_ops=spec.min_ops,
                preload=preload,
                server_pid=server_pid,
                progress=progress,
            )
        )
    prepared = prepare_sync(workload, endpoints, preload=preload)
    try:
        result = run_threads(
            prepared.op,
            concurrency=concurrency,
            duration=duration,
            warmup=wait,
            min_ops=spec.min_ops,
            server_pid=server_pid,
            progress=progress,
        )
        return {**result, **prepared.extras()}
    finally:
        prepared.cleanup()


_loop: asyncio.AbstractEventLoop | None = None


def _cell_loop() -> asyncio.AbstractEventLoop:
    """One event loop for every asyncio cell of this process, never closed.

    grpc.aio binds its completion-queue poller to each event loop that uses it and keeps
    waking it after it is closed, which logs "Event loop is closed" errors from
    ``PollerCompletionQueue._handle_events`` (grpc/grpc#25364); ``asyncio.run`` per cell
    would close a loop per cell.
    """
    global _loop
    if _loop is None or _loop.is_closed():
        _loop = asyncio.new_event_loop()
    return _loop


async def _run_async(
    workload: str,
    endpoints: Sequence[str],
    *,
    concurrency: int,
    duration: float,
    warmup: float,
    min_ops: int,
    preload: bool,
    server_pid: int | None,
    progress: Progress | None,
) -> dict[str, Any]:
    prepared = await prepare_async(workload, endpoints, preload=preload)
    try:
        result = await run_async(
            prepared.op,
            concurrency=concurrency,
            duration=duration,
            warmup=warmup,
            min_ops=min_ops,
            server_pid=server_pid,
            progress=progress,
        )
        return {**result, **prepared.extras()}
    finally:
        await prepared.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    """Run one cell and print ``RESULT <json>``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m tikv_cli.bench.runner")
    parser.add_argument("--client", choices=OUR_CLIENTS, required=True)
    parser.add_argument("--workload", choices=sorted(WORKLOADS), required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--warmup", type=float, default=None)
    parser.add_argument("--pd", required=True)
    parser.add_argument("--server-pid", type=int, default=None)
    parser.add_argument("--preload", action="store_true")
    parser.add_argument("--namespace", default="", help="key prefix of the transactional data")
    args = parser.parse_args(argv)
    if args.namespace:
        set_namespace(args.namespace)
    try:
        result = run_cell(
            args.client,
            args.workload,
            [e for e in args.pd.split(",") if e],
            concurrency=args.concurrency,
            duration=args.duration,
            warmup=args.warmup,
            preload=args.preload,
            server_pid=args.server_pid,
        )
    except Exception as exc:
        result = {"error": f"{type(exc).__name__}: {exc}"[:1000]}
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
