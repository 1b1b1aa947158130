"""Range-task runner: pure parts, and the runner on a fake locator (client-go ``rangetask``)."""

from __future__ import annotations

import asyncio
import bisect
import itertools

import pytest
from tikv_pd.errors import RegionError, StoreUnavailableError
from tikv_pd.rangetask import (
    RangeProgress,
    RangeTaskProgress,
    RangeTaskRunner,
    TaskStat,
    clip_to_region,
)
from tikv_pd.region_cache import InvalidReason, Peer, Region, RegionEpoch


def _region(rid: int, start: bytes, end: bytes, version: int = 1) -> Region:
    peer = Peer(id=rid * 10, store_id=1)
    return Region(rid, start, end, RegionEpoch(1, version), (peer,), peer)


class FakeCluster:
    """Regions cut at ``splits``; the 'server' knows the current epochs, the cache may lag."""

    def __init__(self, splits: list[bytes]) -> None:
        self._next_id = 1
        self.server: list[Region] = []
        bounds = [b"", *splits, b""]
        for s, e in itertools.pairwise(bounds):
            self.server.append(self._new(s, e))
        self.cache: dict[int, Region] = {r.id: r for r in self.server}
        self.invalidated: list[tuple[int, InvalidReason]] = []
        self.lookups = 0

    def _new(self, start: bytes, end: bytes, version: int = 1) -> Region:
        r = _region(self._next_id, start, end, version)
        self._next_id += 1
        return r

    def split(self, key: bytes) -> None:
        """Split the server's region holding ``key`` at ``key`` (the cache is not told)."""
        starts = [r.start_key for r in self.server]
        i = bisect.bisect_right(starts, key) - 1
        old = self.server[i]
        assert old.start_key < key and (not old.end_key or key < old.end_key)
        v = old.epoch.version + 1
        left = _region(old.id, old.start_key, key, v)
        right = self._new(key, old.end_key, v)
        self.server[i : i + 1] = [left, right]

    def current(self, region: Region) -> bool:
        """Whether ``region`` (as cached) still matches the server (epoch check)."""
        return any(r.id == region.id and r.epoch == region.epoch for r in self.server)

    # RangeLocator
    async def locate_key(self, key: bytes) -> Region:
        self.lookups += 1
        for r in sorted(self.cache.values(), key=lambda r: r.start_key):
            if r.contains(key):
                return r
        for r in self.server:  # a cache miss loads from "PD"
            if r.contains(key):
                self.cache[r.id] = r
                return r
        raise AssertionError(f"no region for {key!r}")

    def invalidate_region(self, region_id: int, reason: InvalidReason) -> None:
        self.invalidated.append((region_id, reason))
        self.cache.pop(region_id, None)
        # A reload brings every region the server now has over the dropped range.
        for r in self.server:
            if all(not (c.overlaps(r.start_key, r.end_key)) for c in self.cache.values()):
                self.cache[r.id] = r


class WindowedCluster(FakeCluster):
    """A locator that also hands out windows of regions (like RegionLocator)."""

    def __init__(self, splits: list[bytes]) -> None:
        super().__init__(splits)
        self.windows: list[tuple[bytes, bytes, int]] = []

    async def locate_regions(
        self, start: bytes, end: bytes = b"", *, limit: int = 128
    ) -> list[Region]:
        self.windows.append((start, end, limit))
        lookups = self.lookups
        window = [await self.locate_key(start)]
        while len(window) < limit and not window[-1].reaches(end):
            window.append(await self.locate_key(window[-1].end_key))
        self.lookups = lookups  # one window, not per-key lookups
        return window


def _cluster(splits: list[bytes], windowed: bool) -> FakeCluster:
    return WindowedCluster(splits) if windowed else FakeCluster(splits)


class Recorder:
    """A handler that records the parts it ran on, checking epochs like TiKV would."""

    def __init__(self, cluster: FakeCluster) -> None:
        self.cluster = cluster
        self.parts: list[tuple[int, bytes, bytes]] = []
        self.fail_at: dict[bytes, BaseException] = {}
        self.before: dict[bytes, FakeCluster] = {}
        self.split_on_first_call: bytes | None = None

    async def __call__(self, region: Region, start: bytes, end: bytes) -> TaskStat | None:
        await asyncio.sleep(0)
        if self.split_on_first_call is not None:
            key, self.split_on_first_call = self.split_on_first_call, None
            self.cluster.split(key)
        if start in self.fail_at:
            raise self.fail_at.pop(start)
        if not self.cluster.current(region):
            raise RegionError("epoch_not_match", region.id, "stale epoch")
        assert region.contains(start)
        assert not region.end_key or (end and end <= region.end_key)
        self.parts.append((region.id, start, end))
        return None

    def covered(self) -> list[tuple[bytes, bytes]]:
        """The union of the parts done (some may repeat after a resume), as ranges."""
        out: list[tuple[bytes, bytes]] = []
        for _, s, e in sorted(self.parts, key=lambda p: p[1]):
            if out and (not out[-1][1] or s <= out[-1][1]):
                last_end = out[-1][1]
                end = b"" if not e or not last_end else max(e, last_end)
                out[-1] = (out[-1][0], end)
            else:
                out.append((s, e))
        return out


def _finished(p: RangeProgress) -> bool:
    return p.finished


def _resume(runner: RangeTaskRunner) -> bytes | None:
    return runner.resume_key


# -- pure parts ---------------------------------------------------------------------------


def test_clip_to_region_middle_last_and_unbounded() -> None:
    r = _region(1, b"b", b"d")
    assert clip_to_region(r, b"b", b"z") == (b"d", False)
    assert clip_to_region(r, b"c", b"c5") == (b"c5", True)
    assert clip_to_region(r, b"c", b"d") == (b"d", True)
    assert clip_to_region(r, b"c", b"") == (b"d", False)
    last = _region(2, b"d", b"")
    assert clip_to_region(last, b"x", b"") == (b"", True)
    assert clip_to_region(last, b"x", b"y") == (b"y", True)
    with pytest.raises(ValueError, match="not in region"):
        clip_to_region(r, b"a", b"z")


def test_progress_watermark_waits_for_the_earliest_part() -> None:
    p = RangeProgress(b"a", b"z")
    assert p.done_until == b"a"
    p.register(b"a", b"c")
    p.advance(b"c")
    p.register(b"c", b"f")
    p.advance(b"f")
    p.finish(b"c")  # out of order: the watermark stays at the unfinished first part
    assert p.done_until == b"a"
    p.finish(b"a")
    assert p.done_until == b"f"  # nothing outstanding: the frontier
    assert not _finished(p)
    p.register(b"f", b"z")
    p.advance(b"z", last=True)
    p.reshard(b"f", [(b"f", b"m"), (b"m", b"z")])
    assert p.outstanding == 2
    p.finish(b"m")
    assert p.done_until == b"f"
    p.finish(b"f")
    assert p.finished
    assert p.done_until == b"z"


def test_progress_unbounded_end_finishes_at_empty_key() -> None:
    p = RangeProgress(b"", b"")
    p.register(b"", b"")
    p.advance(b"", last=True)
    assert not _finished(p)
    p.finish(b"")
    assert p.finished
    assert p.done_until == b""


def test_task_stat_adds() -> None:
    assert TaskStat(1, 2) + TaskStat(3, 4) == TaskStat(4, 6)


def test_runner_rejects_bad_concurrency_and_window() -> None:
    cluster = FakeCluster([])
    with pytest.raises(ValueError, match="concurrency"):
        RangeTaskRunner("t", cluster, Recorder(cluster), concurrency=0)
    with pytest.raises(ValueError, match="regions_per_batch"):
        RangeTaskRunner("t", cluster, Recorder(cluster), regions_per_batch=0)


# -- the runner ---------------------------------------------------------------------------


@pytest.mark.parametrize("concurrency", [1, 3, 16])
async def test_runs_each_region_part_exactly_once(concurrency: int) -> None:
    cluster = FakeCluster([b"b", b"d", b"f", b"h", b"k"])
    handler = Recorder(cluster)
    seen: list[RangeTaskProgress] = []
    runner = RangeTaskRunner(
        "t", cluster, handler, concurrency=concurrency, on_progress=seen.append
    )
    stat = await runner.run(b"c", b"j")
    assert stat == TaskStat(completed_regions=4)
    assert sorted(p[1:] for p in handler.parts) == [
        (b"c", b"d"),
        (b"d", b"f"),
        (b"f", b"h"),
        (b"h", b"j"),
    ]
    assert runner.resume_key is None
    assert [p.completed_regions for p in seen] == [1, 2, 3, 4]
    assert seen[-1].finished and seen[-1].done_until == b"j"
    # The watermark never moves backwards.
    marks = [p.done_until for p in seen]
    assert marks == sorted(marks)


async def test_whole_key_space_and_empty_range() -> None:
    cluster = FakeCluster([b"m"])
    handler = Recorder(cluster)
    runner = RangeTaskRunner("t", cluster, handler)
    assert await runner.run(b"", b"") == TaskStat(2, 0)
    assert sorted(p[1:] for p in handler.parts) == [(b"", b"m"), (b"m", b"")]
    assert handler.covered() == [(b"", b"")]
    handler.parts.clear()
    assert await runner.run(b"x", b"c") == TaskStat()
    assert await runner.run(b"c", b"c") == TaskStat()
    assert handler.parts == []
    final = runner.progress()
    assert final is not None and final.finished


async def test_a_windowed_locator_is_asked_a_window_at_a_time() -> None:
    splits = [bytes([c]) for c in range(ord("b"), ord("z") + 1)]  # 25 splits: 26 regions
    cluster = WindowedCluster(splits)
    handler = Recorder(cluster)
    runner = RangeTaskRunner("t", cluster, handler, concurrency=4, regions_per_batch=10)
    assert await runner.run(b"", b"") == TaskStat(completed_regions=26)
    assert handler.covered() == [(b"", b"")]
    # 26 regions in windows of 10, each window asked from where the last one ended.
    assert cluster.windows == [(b"", b"", 10), (b"k", b"", 10), (b"u", b"", 10)]
    assert cluster.lookups == 0
    # A bounded range: the window stops at the region that reaches the end.
    cluster.windows.clear()
    handler.parts.clear()
    assert await runner.run(b"c5", b"f5") == TaskStat(completed_regions=4)
    assert sorted(p[1:] for p in handler.parts) == [
        (b"c5", b"d"),
        (b"d", b"e"),
        (b"e", b"f"),
        (b"f", b"f5"),
    ]
    assert cluster.windows == [(b"c5", b"f5", 10)]


@pytest.mark.parametrize("windowed", [False, True])
async def test_split_mid_task_reshards_the_unfinished_part(windowed: bool) -> None:
    cluster = _cluster([b"d", b"m"], windowed)
    handler = Recorder(cluster)
    # Warm the cache, then split region [d, m) twice on the server only.
    await cluster.locate_key(b"e")
    cluster.split(b"g")
    cluster.split(b"j")
    runner = RangeTaskRunner("t", cluster, handler, concurrency=2)
    stat = await runner.run(b"a", b"z")
    assert stat.completed_regions == 5
    assert runner.relocations == 1
    assert handler.covered() == [(b"a", b"z")]
    assert sorted(p[1:] for p in handler.parts) == [
        (b"a", b"d"),
        (b"d", b"g"),
        (b"g", b"j"),
        (b"j", b"m"),
        (b"m", b"z"),
    ]
    assert [reason for _, reason in cluster.invalidated] == [InvalidReason.EPOCH_NOT_MATCH]


@pytest.mark.parametrize("windowed", [False, True])
async def test_split_during_the_run_is_handled(windowed: bool) -> None:
    cluster = _cluster([b"d"], windowed)
    handler = Recorder(cluster)
    handler.split_on_first_call = b"p"  # [d, +inf) splits while the task runs
    runner = RangeTaskRunner("t", cluster, handler, concurrency=1)
    stat = await runner.run(b"", b"")
    assert stat.completed_regions == 3
    assert handler.covered() == [(b"", b"")]


async def test_failure_reports_resume_key_and_resume_finishes_the_rest() -> None:
    cluster = FakeCluster([b"b", b"d", b"f", b"h"])
    handler = Recorder(cluster)
    handler.fail_at[b"d"] = StoreUnavailableError(1, "127.0.0.1:1")
    runner = RangeTaskRunner("t", cluster, handler, concurrency=1)
    with pytest.raises(StoreUnavailableError) as info:
        await runner.run(b"a", b"z")
    assert runner.resume_key == b"d"
    assert runner.completed_regions == 2
    assert any("resume from key" in note for note in info.value.__notes__)
    done_before = {p[1:] for p in handler.parts}
    assert done_before == {(b"a", b"b"), (b"b", b"d")}
    stat = await runner.run(b"d", b"z")
    assert stat.completed_regions == 3
    assert _resume(runner) is None
    assert handler.covered() == [(b"a", b"z")]


async def test_failure_with_concurrency_resumes_at_the_watermark() -> None:
    cluster = FakeCluster([b"b", b"c", b"d", b"e", b"f", b"g"])
    handler = Recorder(cluster)
    handler.fail_at[b"c"] = RuntimeError("boom")
    runner = RangeTaskRunner("t", cluster, handler, concurrency=4)
    with pytest.raises(RuntimeError, match="boom"):
        await runner.run(b"a", b"z")
    resume = runner.resume_key
    assert resume is not None and resume <= b"c"
    # Everything below the resume key is done.
    for s, e in [(b"a", b"b"), (b"b", b"c")]:
        if e <= resume:
            assert (s, e) in {p[1:] for p in handler.parts}
    await runner.run(resume, b"z")
    assert handler.covered() == [(b"a", b"z")]


async def test_handler_stats_and_failed_regions_are_summed() -> None:
    cluster = FakeCluster([b"b", b"c"])

    async def handler(region: Region, start: bytes, end: bytes) -> TaskStat:
        return TaskStat(0, 1) if start == b"b" else TaskStat(2, 0)

    runner = RangeTaskRunner("t", cluster, handler)
    assert await runner.run(b"", b"") == TaskStat(4, 1)
    assert runner.completed_regions == 4
    assert runner.failed_regions == 1


async def test_region_errors_past_the_budget_fail_with_timeout() -> None:
    from tikv_pd.backoff import BackoffVars
    from tikv_pd.errors import TimeoutError as BackoffTimeoutError

    cluster = FakeCluster([])

    async def handler(region: Region, start: bytes, end: bytes) -> None:
        raise RegionError("region_not_found", region.id)

    runner = RangeTaskRunner(
        "t", cluster, handler, region_backoff_ms=5, backoff_vars=BackoffVars(backoff_weight=1)
    )
    with pytest.raises(BackoffTimeoutError):
        await runner.run(b"a", b"b")
    assert runner.resume_key == b"a"


async def test_cancelling_the_run_cancels_workers() -> None:
    cluster = FakeCluster([b"m"])
    started = asyncio.Event()

    async def handler(region: Region, start: bytes, end: bytes) -> None:
        started.set()
        await asyncio.Event().wait()

    runner = RangeTaskRunner("t", cluster, handler, concurrency=2)
    task = asyncio.create_task(runner.run(b"", b""))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert runner.resume_key == b""


# -- client-go range_task_test.go's table: 26 split keys a..z ------------------------------

_AZ = [bytes([c]) for c in range(ord("a"), ord("z") + 1)]
_ALL = [(b"", b"a"), *itertools.pairwise(_AZ), (b"z", b"")]
_TABLE: list[tuple[bytes, bytes, list[tuple[bytes, bytes]]]] = [
    (b"", b"", _ALL),
    (b"", b"b", _ALL[:2]),
    (b"b", b"", _ALL[2:]),
    (b"b", b"x", _ALL[2:24]),
    (b"a", b"d", [(b"a", b"b"), (b"b", b"c"), (b"c", b"d")]),
    (b"a\x00", b"d\x00", [(b"a\x00", b"b"), (b"b", b"c"), (b"c", b"d"), (b"d", b"d\x00")]),
    (
        b"a\xff\xff\xff",
        b"c\xff\xff\xff",
        [(b"a\xff\xff\xff", b"b"), (b"b", b"c"), (b"c", b"c\xff\xff\xff")],
    ),
    (b"a1", b"a2", [(b"a1", b"a2")]),
    (b"a", b"a", []),
    (b"a3", b"a3", []),
]


@pytest.mark.parametrize(
    ("concurrency", "windowed"), [(1, False), (2, False), (3, True), (4, True)]
)
@pytest.mark.parametrize(("start", "end", "expected"), _TABLE)
async def test_client_go_range_table(
    concurrency: int,
    windowed: bool,
    start: bytes,
    end: bytes,
    expected: list[tuple[bytes, bytes]],
) -> None:
    cluster = _cluster(_AZ, windowed)
    handler = Recorder(cluster)
    runner = RangeTaskRunner(
        "t", cluster, handler, concurrency=concurrency, regions_per_batch=concurrency + 2
    )
    stat = await runner.run(start, end)
    assert sorted(p[1:] for p in handler.parts) == expected
    assert stat == TaskStat(completed_regions=len(expected))


@pytest.mark.parametrize("concurrency", [1, 4])
@pytest.mark.parametrize(("start", "end", "expected"), [t for t in _TABLE if t[2]])
async def test_client_go_range_table_errors(
    concurrency: int, start: bytes, end: bytes, expected: list[tuple[bytes, bytes]]
) -> None:
    for err_start, _ in expected:
        cluster = _cluster(_AZ, windowed=concurrency > 1)
        handler = Recorder(cluster)
        handler.fail_at[err_start] = RuntimeError("test error")
        runner = RangeTaskRunner(
            "t", cluster, handler, concurrency=concurrency, regions_per_batch=3
        )
        with pytest.raises(RuntimeError, match="test error"):
            await runner.run(start, end)
        assert runner.completed_regions < len(expected)
        assert runner.failed_regions == 1
        resume = runner.resume_key
        assert resume is not None and resume <= err_start
