"""The measurement loop and its statistics, on fake operations (no cluster)."""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import threading

import pytest
from tikv_cli.bench.measure import (
    WORKLOADS,
    Window,
    cpu_seconds_of,
    hot_key,
    large_txn_keys,
    make_value,
    percentile,
    ratio,
    raw_key,
    run_async,
    run_threads,
    summarize,
    txn_write_key,
)


def test_percentile_interpolates_like_numpy_linear() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 25) == pytest.approx(1.75)
    assert percentile([7.0], 99) == 7.0
    data = sorted(random.Random(3).random() for _ in range(1001))
    assert percentile(data, 50) == statistics.median(data)
    # statistics.quantiles(method="inclusive") is the same linear rule.
    cuts = statistics.quantiles(data, n=100, method="inclusive")
    assert percentile(data, 99) == pytest.approx(cuts[98])
    assert percentile(data, 90) == pytest.approx(cuts[89])


@pytest.mark.parametrize("q", [-1, 100.5])
def test_percentile_rejects_bad_q(q: float) -> None:
    with pytest.raises(ValueError, match="q must be in"):
        percentile([1.0], q)


def test_percentile_of_nothing() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


def test_summarize_in_milliseconds() -> None:
    assert summarize([]) is None
    summary = summarize([0.003, 0.001, 0.002, 0.010])
    assert summary is not None
    assert summary.count == 4
    assert summary.p50_ms == pytest.approx(2.5)
    assert summary.max_ms == pytest.approx(10.0)
    assert summary.mean_ms == pytest.approx(4.0)
    assert summary.p99_ms == pytest.approx(3 + (10 - 3) * 0.97)


def test_ratio() -> None:
    assert ratio(300.0, 100.0) == 3.0
    assert ratio(1.0, 4.0) == 0.25
    assert ratio(None, 1.0) is None
    assert ratio(1.0, None) is None
    assert ratio(1.0, 0.0) is None


def test_key_layout() -> None:
    assert raw_key(42) == b"user00000042"
    assert hot_key(3) == b"hot/03"
    assert len(make_value(7)) == 100 and make_value(7) == make_value(7)
    assert len(make_value(7, 32)) == 32
    keys = large_txn_keys("t", 5, count=1000)
    assert len(set(keys)) == 1000 and keys == sorted(keys)
    assert large_txn_keys("t", 5, count=3) != large_txn_keys("t", 6, count=3)
    rng = random.Random(1)
    assert len({txn_write_key(rng) for _ in range(1000)}) == 1000


def test_every_workload_is_well_formed() -> None:
    assert list(WORKLOADS) == [
        "raw_get",
        "raw_put",
        "raw_batch_get",
        "raw_scan",
        "tso",
        "txn_small",
        "txn_small_1pc",
        "txn_small_async",
        "txn_pessimistic",
        "txn_contended",
        "txn_large",
    ]
    for workload in WORKLOADS.values():
        assert workload.kind in ("raw", "tso", "txn")
        assert workload.concurrencies and workload.min_ops >= 1
        assert workload.commit_protocol in ("2pc", "1pc", "async_commit")
        if workload.variant_of is not None:
            assert WORKLOADS[workload.variant_of].commit_protocol == "2pc"
            assert workload.data_set == WORKLOADS[workload.variant_of].data_set
    assert WORKLOADS["raw_get"].concurrencies == (1, 16, 128)


def test_window_counts_only_operations_started_inside() -> None:
    window = Window(duration=1.0)
    window.record(0.0, 1.0, None)  # warm-up: before open()
    window.fail(0.0, RuntimeError("warm"))
    window.open()
    t = window.t0
    window.record(t - 0.5, t + 0.1, None)  # started before the window
    window.record(t + 0.1, t + 0.3, 2)
    window.record(t + 0.2, t + 0.3, None)
    window.fail(t + 0.4, KeyError("boom"))
    result = window.result()
    assert result["ops"] == 2
    assert result["retries"] == 2
    assert result["errors"] == 1
    assert result["warmup_errors"] == 1
    assert result["first_error"] == "(warm-up) RuntimeError: warm"
    assert result["latency_ms"]["max_ms"] == pytest.approx(200.0)


def test_window_waits_for_min_ops_after_the_deadline() -> None:
    window = Window(duration=0.0, min_ops=2)
    window.open()
    window.close_deadline()
    assert not window.should_stop()
    window.record(window.t0, window.t0 + 1, None)
    assert not window.should_stop()
    window.record(window.t0, window.t0 + 1, None)
    assert window.should_stop()


def test_window_gives_up_after_only_failures() -> None:
    window = Window(duration=10.0)
    window.open()
    for _ in range(199):
        window.fail(window.t0, OSError("down"))
    assert window.aborted is None
    window.fail(window.t0, OSError("down"))
    aborted: str | None = window.aborted  # (mypy narrowed it to None above)
    assert aborted == "200 failures and no success"
    assert window.should_stop()


async def test_run_async_measures_a_fake_operation() -> None:
    calls = 0

    async def op(rng: random.Random) -> int | None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        if calls % 10 == 0:
            raise ValueError("every tenth call fails")
        return 1 if calls % 5 == 0 else None

    result = await run_async(op, concurrency=4, duration=0.2, warmup=0.05)
    assert result["ops"] > 0
    assert result["errors"] > 0
    assert result["first_error"].endswith("ValueError: every tenth call fails")
    assert result["retries"] > 0
    assert result["ops_per_s"] == pytest.approx(result["ops"] / result["elapsed_s"])
    assert result["latency_ms"]["count"] == result["ops"]
    assert result["client_cpu_s_per_1k_ops"] == pytest.approx(
        result["client_cpu_s"] / result["ops"] * 1000
    )
    assert result["peak_rss_mb"] > 1
    assert result["server_util"] is None


async def test_run_async_extends_the_window_to_min_ops() -> None:
    release = asyncio.Event()

    async def slow(rng: random.Random) -> None:
        await release.wait()

    async def later() -> None:
        await asyncio.sleep(0.2)  # well past the window's 0.05 s duration
        release.set()

    task = asyncio.create_task(later())
    result = await run_async(slow, concurrency=1, duration=0.05, warmup=0.0, min_ops=1)
    await task
    # The window stayed open until the one operation finished (asyncio.sleep never
    # returns early, so the lower bound is certain).
    assert result["ops"] == 1
    assert result["elapsed_s"] >= 0.2


async def test_run_async_aborts_when_everything_fails() -> None:
    async def broken(rng: random.Random) -> None:
        raise ConnectionError("refused")

    result = await run_async(broken, concurrency=2, duration=30.0, warmup=0.0)
    assert result["ops"] == 0
    assert result["aborted"] is not None
    assert "ConnectionError: refused" in result["first_error"]


def test_run_threads_measures_and_uses_distinct_generators() -> None:
    seen: set[float] = set()
    lock = threading.Lock()

    def op(rng: random.Random) -> None:
        with lock:
            seen.add(rng.random())

    phases: list[str] = []
    result = run_threads(
        op,
        concurrency=3,
        duration=0.2,
        warmup=0.05,
        progress=lambda phase, ops, s: phases.append(phase),
    )
    assert result["ops"] > 0 and result["errors"] == 0
    assert len(seen) > 3
    assert "warmup" in phases and "measure" in phases


@pytest.mark.parametrize("flavour", ["threads", "tasks"])
def test_without_warmup_the_first_operation_counts(flavour: str) -> None:
    # One worker, one operation that outlasts the window: it must be the one measured.
    calls = 0

    def op(rng: random.Random) -> None:
        nonlocal calls
        calls += 1

    async def aop(rng: random.Random) -> None:
        op(rng)
        await asyncio.sleep(0)

    if flavour == "threads":
        result = run_threads(op, concurrency=1, duration=0.05, warmup=0.0)
    else:
        result = asyncio.run(run_async(aop, concurrency=1, duration=0.05, warmup=0.0))
    assert result["ops"] == calls
    assert result["warmup_errors"] == 0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        run_threads(lambda rng: None, concurrency=0, duration=1, warmup=0)
    with pytest.raises(ValueError, match="duration"):
        run_threads(lambda rng: None, concurrency=1, duration=0, warmup=0)


def test_cpu_seconds_of_this_process() -> None:
    own = cpu_seconds_of(os.getpid())
    assert own is not None and own > 0
    assert cpu_seconds_of(2**22 + 12345) is None
