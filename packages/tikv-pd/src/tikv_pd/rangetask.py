"""Range tasks: run a job over every region of a key range (client-go ``txnkv/rangetask``).

Cluster-wide maintenance — resolving the locks below a GC safepoint, deleting a range,
collecting garbage — has the same shape: walk ``[start, end)`` region by region and send
each region one request (or a few). :class:`RangeTaskRunner` owns that walk so that each
job only says what to do with *one* region's part of the range:

- **Region by region.** A producer locates the regions of the range in key order,
  128 at a time (a locator with ``locate_regions``, :class:`WindowedRangeLocator`,
  serves them from the region cache and loads a cold stretch with one ``ScanRegions``
  per window, as client-go's runner calls ``BatchLoadRegionsFromKey`` for 128 regions
  per task), and queues one *part* per region: the range clipped to the region.
  ``concurrency`` workers run the handler on the parts (client-go ``Runner`` with its
  workers; client-go hands each worker its 128 regions as one task, here the unit of
  work is one region, so progress and failures are tracked per region).
- **Re-locating.** A handler that raises a :class:`~tikv_pd.errors.RegionError` (its
  region split, merged or moved) gets the unfinished part back *re-sharded*: the region
  is dropped from the cache, the runner backs off ``regionMiss`` and locates the part
  again — possibly as several regions — and runs the handler on each new part. Handlers
  that send through :class:`tikv_pd.request.RequestSender` rarely see a region error at
  all: the pipeline re-shards on its own.
- **Progress.** After each part the runner counts completed / failed regions (the
  handler says how many; client-go ``TaskStat``) and calls ``on_progress`` with a
  :class:`RangeTaskProgress`. ``done_until`` is the *watermark*: every key below it is
  done (parts finish out of order; the watermark only passes a part once every part
  before it finished).
- **Resumable.** When a handler (or locating) fails, its region counts as failed, the
  other workers are cancelled and
  the error propagates, with :attr:`RangeTaskRunner.resume_key` set to the watermark (and
  a note naming it on the exception). Calling :meth:`RangeTaskRunner.run` again from that
  key finishes the job; parts past the watermark that had finished are done again, so
  handlers must be idempotent (every client-go range task is).

The pure parts — clipping a range to a region (:func:`clip_to_region`) and the watermark
bookkeeping (:class:`RangeProgress`) — are unit-tested without a network.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from tikv_pd.backoff import (
    DEFAULT_VARS,
    DELETE_RANGE_ONE_REGION_MAX_BACKOFF,
    REGION_MISS,
    Backoffer,
    BackoffVars,
)
from tikv_pd.errors import RegionError, format_key
from tikv_pd.region_cache import DEFAULT_REGIONS_PER_BATCH, InvalidReason, Region

__all__ = [
    "DEFAULT_RANGE_TASK_CONCURRENCY",
    "ProgressCallback",
    "RangeLocator",
    "RangeProgress",
    "RangeTaskProgress",
    "RangeTaskRunner",
    "RegionTaskHandler",
    "TaskStat",
    "WindowedRangeLocator",
    "clip_to_region",
]

_log = logging.getLogger("tikv.rangetask")

#: Workers of a range task when the caller does not say (client-go's GC uses 8,
#: ``tikv/gc.go``; its delete range takes the caller's value).
DEFAULT_RANGE_TASK_CONCURRENCY = 8

_INVALID_REASONS: dict[str, InvalidReason] = {
    "epoch_not_match": InvalidReason.EPOCH_NOT_MATCH,
    "region_not_found": InvalidReason.REGION_NOT_FOUND,
    "not_leader": InvalidReason.NO_LEADER,
    "store_not_match": InvalidReason.STORE_NOT_FOUND,
}


@dataclass(frozen=True, slots=True)
class TaskStat:
    """How many regions a handler (or a whole task) completed or failed (client-go ``TaskStat``).

    Attributes:
        completed_regions: Regions the task was done on.
        failed_regions: Regions the handler gave up on without stopping the task.

    """

    completed_regions: int = 0
    failed_regions: int = 0

    def __add__(self, other: TaskStat) -> TaskStat:
        return TaskStat(
            self.completed_regions + other.completed_regions,
            self.failed_regions + other.failed_regions,
        )


@dataclass(frozen=True, slots=True)
class RangeTaskProgress:
    """A snapshot of a running range task, given to ``on_progress``.

    Attributes:
        name: The task's name (``"delete-range"``, ``"resolve-locks"``, ...).
        start: The start of the range this run covers.
        end: Its end (``b""``: unbounded).
        done_until: Every key in ``[start, done_until)`` is done.
        completed_regions: Regions completed so far in this run.
        failed_regions: Regions failed so far in this run.
        finished: The whole range is done (``done_until`` is then ``end``).

    """

    name: str
    start: bytes
    end: bytes
    done_until: bytes
    completed_regions: int
    failed_regions: int
    finished: bool


#: A region's job: ``handler(region, start, end)`` works on ``[start, end)``, which lies
#: inside ``region`` as the cache knew it. Returns the regions it completed / failed
#: (``None``: one completed region). Raising a RegionError asks the runner to re-locate
#: and re-shard the part; any other exception stops the task.
RegionTaskHandler = Callable[[Region, bytes, bytes], Awaitable[TaskStat | None]]

#: Called after each part with the task's progress (synchronously, on the event loop).
ProgressCallback = Callable[[RangeTaskProgress], None]


class RangeLocator(Protocol):
    """What the runner needs from the region locator (:class:`tikv_pd.locator.RegionLocator`)."""

    async def locate_key(self, key: bytes) -> Region:
        """The region containing ``key`` (loading it on a miss)."""
        ...

    def invalidate_region(self, region_id: int, reason: InvalidReason) -> None:
        """Drop ``region_id`` from the cache; the next lookup reloads it."""
        ...


@runtime_checkable
class WindowedRangeLocator(RangeLocator, Protocol):
    """A :class:`RangeLocator` that also loads regions in windows (the region locator)."""

    async def locate_regions(
        self, start: bytes, end: bytes = b"", *, limit: int = DEFAULT_REGIONS_PER_BATCH
    ) -> list[Region]:
        """Up to ``limit`` consecutive regions of ``[start, end)`` from ``start``'s."""
        ...


def clip_to_region(region: Region, start: bytes, end: bytes) -> tuple[bytes, bool]:
    """Where the part of ``[start, end)`` that starts in ``region`` ends.

    Args:
        region: The region containing ``start``.
        start: The part's first key.
        end: The range's end (``b""``: unbounded).

    Returns:
        ``(part_end, is_last)``: the part is ``[start, part_end)``; ``is_last`` when it
        reaches ``end`` (client-go's ``isLast``: the region ends at or after ``end``, or
        is the last region). ``part_end`` is ``end`` for the last part.

    Raises:
        ValueError: ``start`` is not inside ``region``.

    """
    if not region.contains(start):
        raise ValueError(
            f"key {format_key(start)} is not in region {region.id} "
            f"[{format_key(region.start_key)}, {format_key(region.end_key)})"
        )
    if region.reaches(end):
        return end, True
    return region.end_key, False


class RangeProgress:
    """The watermark bookkeeping of one run (pure; see the module docstring).

    Parts are identified by their start key. A part is *outstanding* from the moment it
    is registered until it finishes; the *frontier* is where the producer has located
    up to. ``done_until`` is the smallest outstanding start, or the frontier when
    nothing is outstanding.

    Args:
        start: The run's first key.
        end: The run's end (``b""``: unbounded).

    """

    __slots__ = ("_frontier", "_outstanding", "_produced_all", "end", "start")

    def __init__(self, start: bytes, end: bytes) -> None:
        self.start = start
        self.end = end
        self._frontier = start
        self._outstanding: dict[bytes, bytes] = {}
        self._produced_all = False

    def register(self, start: bytes, end: bytes) -> None:
        """A part ``[start, end)`` was handed out (or split off a re-sharded part)."""
        self._outstanding[start] = end

    def advance(self, key: bytes, *, last: bool = False) -> None:
        """The producer has located (and registered) every part below ``key``."""
        self._frontier = key
        if last:
            self._produced_all = True

    def finish(self, start: bytes) -> None:
        """The part starting at ``start`` is done."""
        self._outstanding.pop(start, None)

    def reshard(self, start: bytes, parts: list[tuple[bytes, bytes]]) -> None:
        """The part at ``start`` is replaced by ``parts`` (covering the same keys)."""
        self._outstanding.pop(start, None)
        for s, e in parts:
            self._outstanding[s] = e

    @property
    def outstanding(self) -> int:
        """How many parts are handed out and not finished."""
        return len(self._outstanding)

    @property
    def finished(self) -> bool:
        """Every part was produced and finished."""
        return self._produced_all and not self._outstanding

    @property
    def done_until(self) -> bytes:
        """Every key in ``[start, done_until)`` is done."""
        if self._outstanding:
            return min(self._outstanding)
        if self._produced_all:
            return self.end
        return self._frontier


class RangeTaskRunner:
    """Runs a :data:`RegionTaskHandler` over a key range, region by region.

    Args:
        name: Shown in logs, progress and error notes (client-go names its runners
            ``"delete-range"``, ``"resolve-locks-runner"``, ...).
        locator: Locates regions (keys in the request key space).
        handler: The per-region job.
        concurrency: Parts worked on at once (client-go's worker count).
        on_progress: Called after each part.
        region_backoff_ms: Backoff budget of one part across its re-locations (client-go
            ``deleteRangeOneRegionMaxBackoff``: 100 s).
        backoff_vars: Backoff tunables (tests shorten sleeps through them).
        regions_per_batch: Regions located at a time when ``locator`` is a
            :class:`WindowedRangeLocator` (client-go ``regionsPerTask``, 128); other
            locators are asked region by region.

    Raises:
        ValueError: ``concurrency`` or ``regions_per_batch`` < 1.

    """

    def __init__(
        self,
        name: str,
        locator: RangeLocator,
        handler: RegionTaskHandler,
        *,
        concurrency: int = DEFAULT_RANGE_TASK_CONCURRENCY,
        on_progress: ProgressCallback | None = None,
        region_backoff_ms: int = DELETE_RANGE_ONE_REGION_MAX_BACKOFF,
        backoff_vars: BackoffVars = DEFAULT_VARS,
        regions_per_batch: int = DEFAULT_REGIONS_PER_BATCH,
    ) -> None:
        for what, value in (("concurrency", concurrency), ("regions_per_batch", regions_per_batch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{what} must be an int >= 1, got {value!r}")
        self._windowed = locator if isinstance(locator, WindowedRangeLocator) else None
        self._regions_per_batch = regions_per_batch
        self.name = name
        self._locator = locator
        self._handler = handler
        self._concurrency = concurrency
        self._on_progress = on_progress
        self._region_backoff_ms = region_backoff_ms
        self._vars = backoff_vars
        self._progress: RangeProgress | None = None
        self._stat = TaskStat()
        self._relocations = 0
        self._resume_key: bytes | None = None

    # -- results -----------------------------------------------------------------------

    @property
    def stat(self) -> TaskStat:
        """Regions completed / failed by the last (or current) run."""
        return self._stat

    @property
    def completed_regions(self) -> int:
        """Regions completed by the last (or current) run (client-go ``CompletedRegions``)."""
        return self._stat.completed_regions

    @property
    def failed_regions(self) -> int:
        """Regions the handler reported as failed (client-go ``FailedRegions``)."""
        return self._stat.failed_regions

    @property
    def relocations(self) -> int:
        """Parts re-located after a region error, in the last (or current) run."""
        return self._relocations

    @property
    def resume_key(self) -> bytes | None:
        """Where to start again after a failed run (``None``: the last run finished)."""
        return self._resume_key

    def progress(self) -> RangeTaskProgress | None:
        """The current run's progress (``None`` before the first run)."""
        p = self._progress
        if p is None:
            return None
        return RangeTaskProgress(
            self.name,
            p.start,
            p.end,
            p.done_until,
            self._stat.completed_regions,
            self._stat.failed_regions,
            p.finished,
        )

    # -- running -----------------------------------------------------------------------

    async def run(self, start: bytes, end: bytes = b"") -> TaskStat:
        """Run the handler on every region of ``[start, end)``; return the region counts.

        An empty ``end`` is unbounded; ``start >= end`` is an empty task (nothing runs).

        Raises:
            TypeError: ``start`` or ``end`` is not bytes.
            BaseException: The first failure of a handler or of locating a region; the
                other parts are cancelled and :attr:`resume_key` says where to resume.

        """
        if not isinstance(start, bytes) or not isinstance(end, bytes):
            raise TypeError("start and end must be bytes")
        self._stat = TaskStat()
        self._relocations = 0
        progress = self._progress = RangeProgress(start, end)
        self._resume_key = start
        if end and start >= end:
            _log.info("range task %s: empty range, nothing to do", self.name)
            progress.advance(end, last=True)
            self._resume_key = None
            return self._stat
        queue: asyncio.Queue[tuple[Region, bytes, bytes] | None] = asyncio.Queue(
            maxsize=self._concurrency
        )
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(self._produce(queue, start, end), name=f"{self.name}-producer")]
        tasks += [
            loop.create_task(self._work(queue), name=f"{self.name}-worker-{i}")
            for i in range(self._concurrency)
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            failure = _first_failure(done)
            if failure is not None:
                raise failure
        except BaseException as exc:
            self._resume_key = progress.done_until
            if isinstance(exc, Exception):
                exc.add_note(
                    f"range task {self.name!r} stopped: resume from key "
                    f"{format_key(self._resume_key)} ({self._stat.completed_regions} "
                    "regions completed)"
                )
            raise
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
        self._resume_key = None
        _log.info(
            "range task %s finished: %d regions completed, %d failed",
            self.name,
            self._stat.completed_regions,
            self._stat.failed_regions,
        )
        return self._stat

    async def _produce(
        self, queue: asyncio.Queue[tuple[Region, bytes, bytes] | None], start: bytes, end: bytes
    ) -> None:
        progress = self._progress
        assert progress is not None
        key = start
        while True:
            parts = await self._next_parts(key, end)
            for region, part_start, part_end, last in parts:
                progress.register(part_start, part_end)
                await queue.put((region, part_start, part_end))
                progress.advance(part_end, last=last)
            _, _, key, done = parts[-1]
            if done:
                break
        for _ in range(self._concurrency):
            await queue.put(None)

    async def _next_parts(
        self, start: bytes, end: bytes
    ) -> list[tuple[Region, bytes, bytes, bool]]:
        """The next parts of ``[start, end)``: ``(region, part_start, part_end, is_last)``.

        One window of regions from a windowed locator, else the one region of ``start``.
        """
        if self._windowed is not None:
            regions = await self._windowed.locate_regions(start, end, limit=self._regions_per_batch)
        else:
            regions = [await self._locator.locate_key(start)]
        parts: list[tuple[Region, bytes, bytes, bool]] = []
        key = start
        for region in regions:
            part_end, last = clip_to_region(region, key, end)
            parts.append((region, key, part_end, last))
            if last:
                break
            key = part_end
        return parts

    async def _work(self, queue: asyncio.Queue[tuple[Region, bytes, bytes] | None]) -> None:
        while True:
            item = await queue.get()
            if item is None:
                return
            await self._run_part(*item)

    async def _locate_parts(self, start: bytes, end: bytes) -> list[tuple[Region, bytes, bytes]]:
        """The parts of ``[start, end)``, one per region as the cache now knows them."""
        parts: list[tuple[Region, bytes, bytes]] = []
        key = start
        while True:
            window = await self._next_parts(key, end)
            parts.extend(
                (region, part_start, part_end) for region, part_start, part_end, _ in window
            )
            _, _, key, done = window[-1]
            if done:
                return parts

    async def _run_part(self, region: Region, start: bytes, end: bytes) -> None:
        progress = self._progress
        assert progress is not None
        bo: Backoffer | None = None
        pending = [(region, start, end)]
        while pending:
            region, s, e = pending.pop(0)
            try:
                result = await self._handler(region, s, e)
            except RegionError as exc:
                # The region changed under the handler: drop it, back off, and run the
                # handler again on the unfinished part as the regions now are.
                self._locator.invalidate_region(
                    region.id, _INVALID_REASONS.get(exc.kind, InvalidReason.OTHER)
                )
                if bo is None:
                    bo = Backoffer(
                        self._region_backoff_ms,
                        operation=f"range task {self.name}",
                        vars=self._vars,
                    )
                await bo.backoff(REGION_MISS, exc)
                parts = await self._locate_parts(s, e)
                progress.reshard(s, [(ps, pe) for _, ps, pe in parts])
                self._relocations += 1
                pending[0:0] = parts
                continue
            except Exception:
                # The part failed and stops the task (client-go counts it as failed).
                self._stat = self._stat + TaskStat(0, 1)
                raise
            self._stat = self._stat + (result if result is not None else TaskStat(1, 0))
            progress.finish(s)
            if self._on_progress is not None:
                snapshot = self.progress()
                assert snapshot is not None
                self._on_progress(snapshot)


def _first_failure(done: set[asyncio.Task[None]]) -> BaseException | None:
    """The failure to report among finished tasks (a real error before a cancellation)."""
    cancelled: BaseException | None = None
    for task in done:
        if task.cancelled():
            cancelled = cancelled or asyncio.CancelledError()
            continue
        exc = task.exception()
        if exc is not None:
            return exc
    return cancelled
