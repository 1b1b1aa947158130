"""Workload definitions, the closed-loop measurement and its statistics (standard library only).

This module is shared by every benchmark client process, including the third-party clients'
runner, which executes in its own virtualenv without this package installed: it imports
nothing outside the standard library and nothing from ``tikv_cli``.

Measurement (one *cell* = one client, one workload, one concurrency):

- ``concurrency`` workers (asyncio tasks or threads) run the workload's operation in a
  closed loop, each with its own seeded random generator.
- A warm-up phase (connections, region caches) is discarded. Then the window opens: the
  controller takes ``getrusage`` and the server's CPU time, and every operation *started*
  inside the window counts. After ``duration`` seconds (and at least ``min_ops`` operations,
  for workloads whose single operation can take longer than the window) workers stop
  starting operations; the window closes when the last one finishes, and the resource
  figures are taken again.
- Results: operations, errors, ops/s, latency percentiles, client CPU seconds (user + sys)
  per 1,000 operations, client and server CPU utilisation, peak client RSS.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import resource
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BATCH_KEYS",
    "HOT_KEYS",
    "LARGE_TXN_KEYS",
    "RAW_RECORDS",
    "SCAN_KEYS",
    "TXN_RECORDS",
    "VALUE_SIZE",
    "WORKLOADS",
    "LatencySummary",
    "Progress",
    "Window",
    "Workload",
    "cpu_seconds_of",
    "hot_key",
    "large_txn_keys",
    "make_value",
    "percentile",
    "ratio",
    "raw_key",
    "run_async",
    "run_threads",
    "self_cpu",
    "set_namespace",
    "summarize",
    "txn_key",
    "txn_write_key",
]

#: Records preloaded for the raw workloads (keys ``user00000000`` …).
RAW_RECORDS = 10_000
#: Records preloaded for the small-transaction workload (keys ``txn/user00000000`` …).
TXN_RECORDS = 1_000
#: Value size of every record, bytes (YCSB's default field is 100 bytes).
VALUE_SIZE = 100
#: Keys per raw batch get.
BATCH_KEYS = 100
#: Pairs per raw scan.
SCAN_KEYS = 100
#: Hot keys of the contended-transaction workload.
HOT_KEYS = 10
#: Keys written by one large transaction.
LARGE_TXN_KEYS = 100_000


@dataclass(frozen=True)
class Workload:
    """A benchmark workload: what one operation does and how it is measured.

    Attributes:
        name: Identifier (``raw_get``, ``txn_small``, …).
        title: Short human title for tables.
        description: What one operation does.
        kind: ``raw``, ``tso`` or ``txn`` (which client capability it needs).
        warmup: Seconds of discarded warm-up before the window.
        min_ops: Operations the window must contain (it is extended until they finish).
        concurrencies: The default concurrency levels of the comparison run.
        commit_protocol: The commit protocol a transactional workload asks for: ``2pc``
            (the default two-phase commit), ``1pc`` or ``async_commit`` (clients without
            those options cannot run it).
        variant_of: The workload this one repeats with another commit protocol; reports
            show its gain over that one (:func:`tikv_cli.bench.report.protocol_gains`).
        data: The preloaded data set it reads (default: ``raw`` for raw workloads, else
            its own name); workloads naming the same data set share one preload.

    """

    name: str
    title: str
    description: str
    kind: str
    warmup: float = 0.5
    min_ops: int = 1
    concurrencies: tuple[int, ...] = (1, 16, 128)
    commit_protocol: str = "2pc"
    variant_of: str | None = None
    data: str | None = None

    @property
    def data_set(self) -> str:
        """The name of the preloaded data set this workload reads."""
        if self.data is not None:
            return self.data
        return "raw" if self.kind == "raw" else self.name


#: Every workload, by name, in report order.
WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("raw_get", "raw get", "get one random key of 10,000 (100-byte values)", "raw"),
        Workload("raw_put", "raw put", "put one random key of 10,000 (100-byte value)", "raw"),
        Workload(
            "raw_batch_get",
            "raw batch get (100)",
            "batch get 100 random keys of 10,000",
            "raw",
        ),
        Workload(
            "raw_scan",
            "raw scan (100)",
            "scan 100 pairs from a random key of 10,000",
            "raw",
        ),
        Workload("tso", "TSO", "get one timestamp from PD", "tso"),
        Workload(
            "txn_small",
            "txn r2/w2",
            "optimistic transaction: read 2 random keys of 1,000, write 2 new keys, commit",
            "txn",
        ),
        Workload(
            "txn_small_1pc",
            "txn r2/w2 1PC",
            "txn_small asking for 1PC (one phase when its writes share a region)",
            "txn",
            commit_protocol="1pc",
            variant_of="txn_small",
            data="txn_small",
        ),
        Workload(
            "txn_small_async",
            "txn r2/w2 async commit",
            "txn_small with async commit (decided once prewrite succeeds)",
            "txn",
            commit_protocol="async_commit",
            variant_of="txn_small",
            data="txn_small",
        ),
        Workload(
            "txn_pessimistic",
            "txn pessimistic r2/w2",
            "pessimistic transaction: get_for_update 2 random keys of 1,000 (sorted: no "
            "deadlock), write both, commit",
            "txn",
            data="txn_small",
        ),
        Workload(
            "txn_contended",
            "txn contended (10 hot)",
            "read-modify-write 2 of 10 hot keys; retried on write conflict until committed",
            "txn",
        ),
        Workload(
            "txn_large",
            "txn 100k keys",
            "one transaction writing 100,000 new keys (32-byte values), committed",
            "txn",
            warmup=0.0,
            min_ops=1,
            # 16 or 128 concurrent 100,000-key transactions (1.6M / 12.8M mutations) do not
            # fit a 2-core machine's Python mock in a benchmark run; run them explicitly
            # with --concurrency if wanted.
            concurrencies=(1,),
        ),
    )
}


def raw_key(i: int) -> bytes:
    """Key of raw record ``i``."""
    return b"user%08d" % i


#: Prefix of the transactional workloads' keys in this process (see :func:`set_namespace`).
_namespace = b""


def set_namespace(name: str) -> None:
    """Put this process's transactional keys under ``name`` (a client's own data set; ``""``: none).

    The harness gives each client its own copy of the transactional data: a client whose
    transactions fail leaves locks behind, and the next client measured on the same keys
    would otherwise spend its window waiting for their TTLs.
    """
    global _namespace
    if name and not name.replace("-", "_").isidentifier():
        raise ValueError(f"namespace must be a client name, got {name!r}")
    _namespace = name.encode() + b"/" if name else b""


def txn_key(i: int) -> bytes:
    """Key of transactional record ``i``."""
    return _namespace + b"txn/user%08d" % i


def txn_write_key(rng: random.Random) -> bytes:
    """A fresh key for a small transaction's write (64 random bits: no two writers meet)."""
    return _namespace + b"txn/w/%016x" % rng.getrandbits(64)


def hot_key(i: int) -> bytes:
    """Key of hot (contended) record ``i``."""
    return _namespace + b"hot/%02d" % i


def make_value(i: int, size: int = VALUE_SIZE) -> bytes:
    """A deterministic value of ``size`` bytes for record ``i``."""
    head = b"value-%d-" % i
    return (head * (size // len(head) + 1))[:size]


def large_txn_keys(tag: str, op: int, count: int = LARGE_TXN_KEYS) -> list[bytes]:
    """The keys one large transaction writes: unique per runner ``tag`` and operation."""
    prefix = b"large/%s/%06d/" % (tag.encode(), op)
    return [prefix + b"%06d" % i for i in range(count)]


# ---------------------------------------------------------------------------- statistics


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0–100) of ascending ``sorted_values``, linearly interpolated.

    Raises:
        ValueError: Empty input, or ``q`` outside [0, 100].

    """
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    rank = (len(sorted_values) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    frac = rank - low
    return float(sorted_values[low] + (sorted_values[high] - sorted_values[low]) * frac)


@dataclass(frozen=True)
class LatencySummary:
    """Latency statistics in milliseconds."""

    count: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float


def summarize(latencies_s: Sequence[float]) -> LatencySummary | None:
    """Summarize latencies given in seconds (``None`` if there are none)."""
    if not latencies_s:
        return None
    values = sorted(latencies_s)
    return LatencySummary(
        count=len(values),
        mean_ms=sum(values) / len(values) * 1e3,
        p50_ms=percentile(values, 50) * 1e3,
        p90_ms=percentile(values, 90) * 1e3,
        p99_ms=percentile(values, 99) * 1e3,
        max_ms=values[-1] * 1e3,
    )


def ratio(ours: float | None, peer: float | None) -> float | None:
    """``ours / peer``, or ``None`` when either is missing or the peer's figure is zero."""
    if ours is None or peer is None or peer == 0:
        return None
    return ours / peer


def cpu_seconds_of(pid: int) -> float | None:
    """CPU seconds (user + system) used so far by process ``pid`` (Linux ``/proc``)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            data = f.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces: split after its closing parenthesis.
    fields = data[data.rindex(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    # Fields 14 and 15 (utime, stime) are items 11 and 12 after the name.
    return (int(fields[11]) + int(fields[12])) / ticks


def self_cpu() -> tuple[float, float]:
    """User and system CPU seconds this process has used so far (``getrusage``)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def _peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return kb / (1024 * 1024) if sys.platform == "darwin" else kb / 1024


# ---------------------------------------------------------------------------- the window

#: Called about every 0.1 s with (phase, operations counted so far, seconds into the phase).
Progress = Callable[[str, int, float], None]

#: Consecutive failures (with no success at all) after which a cell gives up.
_MAX_FAILURES_WITHOUT_SUCCESS = 200


@dataclass
class Window:
    """The shared state of one measurement: phase, counters and resource snapshots.

    Workers call :meth:`should_stop`, :meth:`record` and :meth:`fail`; the controller
    calls :meth:`open` and :meth:`close_deadline`, then :meth:`result` after the workers
    have finished.
    """

    duration: float
    min_ops: int = 1
    server_pid: int | None = None
    max_seconds: float = 600.0
    measuring: bool = False
    deadline_passed: bool = False
    aborted: str | None = None
    t0: float = 0.0
    latencies: list[float] = field(default_factory=list)
    retries: int = 0
    errors: int = 0
    first_error: str | None = None
    warmup_errors: int = 0
    _failures_in_a_row: int = 0
    _successes: int = 0
    _cpu0: tuple[float, float] = (0.0, 0.0)
    _server0: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def open(self) -> None:
        """Start the measurement window (after warm-up)."""
        self._server0 = cpu_seconds_of(self.server_pid) if self.server_pid else None
        self._cpu0 = self_cpu()
        self.t0 = time.perf_counter()
        self.measuring = True

    def close_deadline(self) -> None:
        """The window's duration is over: workers stop once ``min_ops`` have finished."""
        self.deadline_passed = True

    @property
    def ops(self) -> int:
        """Operations completed in the window so far."""
        return len(self.latencies)

    def should_stop(self) -> bool:
        """Whether a worker should stop starting operations."""
        if self.aborted is not None:
            return True
        if not self.deadline_passed:
            return False
        if self.ops >= self.min_ops:
            return True
        return time.perf_counter() - self.t0 > self.max_seconds

    def record(self, started: float, finished: float, retries: int | None) -> None:
        """Count one successful operation that started at ``started``."""
        self._successes += 1
        self._failures_in_a_row = 0
        if self.measuring and started >= self.t0:
            with self._lock:
                self.latencies.append(finished - started)
                if retries:
                    self.retries += retries

    def fail(self, started: float, exc: BaseException) -> None:
        """Count one failed operation."""
        self._failures_in_a_row += 1
        if self.measuring and started >= self.t0:
            with self._lock:
                self.errors += 1
                if self.first_error is None:
                    self.first_error = f"{type(exc).__name__}: {exc}"[:500]
        else:
            self.warmup_errors += 1
            if self.first_error is None:
                self.first_error = f"(warm-up) {type(exc).__name__}: {exc}"[:500]
        if self._successes == 0 and self._failures_in_a_row >= _MAX_FAILURES_WITHOUT_SUCCESS:
            self.aborted = f"{self._failures_in_a_row} failures and no success"

    def result(self) -> dict[str, Any]:
        """The cell's figures (call after every worker finished)."""
        elapsed = time.perf_counter() - self.t0 if self.measuring else 0.0
        user, sys_ = self_cpu()
        cpu_user = user - self._cpu0[0]
        cpu_sys = sys_ - self._cpu0[1]
        cpu = cpu_user + cpu_sys
        server_cpu = None
        if self._server0 is not None and self.server_pid:
            now = cpu_seconds_of(self.server_pid)
            server_cpu = None if now is None else now - self._server0
        summary = summarize(self.latencies)
        ops = self.ops
        return {
            "ops": ops,
            "errors": self.errors,
            "warmup_errors": self.warmup_errors,
            "first_error": self.first_error,
            "aborted": self.aborted,
            "retries": self.retries,
            "elapsed_s": elapsed,
            "ops_per_s": ops / elapsed if elapsed > 0 else 0.0,
            "latency_ms": None if summary is None else summary.__dict__,
            "client_cpu_s": cpu,
            "client_cpu_user_s": cpu_user,
            "client_cpu_sys_s": cpu_sys,
            "client_cpu_s_per_1k_ops": cpu / ops * 1000 if ops else None,
            "client_util": cpu / elapsed if elapsed > 0 else None,
            "server_cpu_s": server_cpu,
            "server_util": server_cpu / elapsed if server_cpu is not None and elapsed else None,
            "peak_rss_mb": _peak_rss_mb(),
        }


# ---------------------------------------------------------------------------- drivers

#: An asyncio operation: given the worker's random generator, run once; may return retries.
AsyncOp = Callable[[random.Random], Awaitable[int | None]]
#: A blocking operation, likewise.
SyncOp = Callable[[random.Random], int | None]


async def run_async(
    op: AsyncOp,
    *,
    concurrency: int,
    duration: float,
    warmup: float,
    min_ops: int = 1,
    server_pid: int | None = None,
    seed: int = 1,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Measure ``op`` run by ``concurrency`` asyncio tasks; returns :meth:`Window.result`."""
    _check(concurrency, duration, warmup)
    window = Window(duration=duration, min_ops=min_ops, server_pid=server_pid)

    async def worker(index: int) -> None:
        rng = random.Random(seed * 1_000_003 + index)
        while not window.should_stop():
            started = time.perf_counter()
            try:
                retries = await op(rng)
            except Exception as exc:
                window.fail(started, exc)
                await asyncio.sleep(0)
                continue
            window.record(started, time.perf_counter(), retries)

    tasks = [asyncio.create_task(worker(i)) for i in range(concurrency)]
    try:
        await _phase(lambda: window.aborted is not None, warmup, "warmup", window, progress)
        window.open()
        await _phase(lambda: window.aborted is not None, duration, "measure", window, progress)
        window.close_deadline()
        pending = set(tasks)
        while pending:
            _, pending = await asyncio.wait(pending, timeout=0.1)
            if progress is not None:
                progress("finish", window.ops, time.perf_counter() - window.t0)
        for task in tasks:
            task.result()
    finally:
        for task in tasks:
            task.cancel()
    return window.result()


async def _phase(
    stop: Callable[[], bool],
    seconds: float,
    name: str,
    window: Window,
    progress: Progress | None,
) -> None:
    start = time.perf_counter()
    while not stop():
        left = seconds - (time.perf_counter() - start)
        if left <= 0:
            break
        await asyncio.sleep(min(0.1, left))
        if progress is not None:
            progress(name, window.ops, time.perf_counter() - start)


def run_threads(
    op: SyncOp,
    *,
    concurrency: int,
    duration: float,
    warmup: float,
    min_ops: int = 1,
    server_pid: int | None = None,
    seed: int = 1,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Measure ``op`` run by ``concurrency`` threads; returns :meth:`Window.result`."""
    _check(concurrency, duration, warmup)
    window = Window(duration=duration, min_ops=min_ops, server_pid=server_pid)
    crashed: list[BaseException] = []

    def worker(index: int) -> None:
        rng = random.Random(seed * 1_000_003 + index)
        try:
            while not window.should_stop():
                started = time.perf_counter()
                try:
                    retries = op(rng)
                except Exception as exc:
                    window.fail(started, exc)
                    continue
                window.record(started, time.perf_counter(), retries)
        except BaseException as exc:  # pragma: no cover - reported below
            crashed.append(exc)
            window.aborted = f"worker crashed: {exc!r}"

    threads = [
        threading.Thread(target=worker, args=(i,), name=f"bench-{i}", daemon=True)
        for i in range(concurrency)
    ]
    if warmup == 0:
        # No warm-up: the first operations must fall inside the window (threads start
        # running at once, unlike tasks, which wait for the controller to yield).
        window.open()
    for thread in threads:
        thread.start()
    if warmup > 0:
        _sleep_phase(warmup, "warmup", window, progress)
        window.open()
    _sleep_phase(duration, "measure", window, progress)
    window.close_deadline()
    for thread in threads:
        while thread.is_alive():
            thread.join(0.1)
            if progress is not None:
                progress("finish", window.ops, time.perf_counter() - window.t0)
    if crashed:
        raise crashed[0]
    return window.result()


def _sleep_phase(seconds: float, name: str, window: Window, progress: Progress | None) -> None:
    start = time.perf_counter()
    while window.aborted is None:
        left = seconds - (time.perf_counter() - start)
        if left <= 0:
            break
        time.sleep(min(0.1, left))
        if progress is not None:
            progress(name, window.ops, time.perf_counter() - start)


def _check(concurrency: int, duration: float, warmup: float) -> None:
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be an int >= 1, got {concurrency!r}")
    if not duration > 0:
        raise ValueError(f"duration must be positive, got {duration!r}")
    if not warmup >= 0:
        raise ValueError(f"warmup must be >= 0, got {warmup!r}")
