from __future__ import annotations

import builtins
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tikv_pd import backoff as bo
from tikv_pd.backoff import (
    DEFAULT_VARS,
    Backoffer,
    BackoffKind,
    BackoffVars,
    Jitter,
    expo,
    kind_by_name,
    next_sleep_ms,
)
from tikv_pd.errors import TimeoutError as BackoffTimeout


class FakeSleep:
    """Records requested sleeps instead of sleeping."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def make(budget: int, **kw: object) -> tuple[Backoffer, FakeSleep]:
    sleep = FakeSleep()
    b = Backoffer(budget, sleep=sleep, rng=random.Random(7), **kw)  # type: ignore[arg-type]
    return b, sleep


# client-go config/retry/config.go, transcribed as (name, base, cap, jitter).
CLIENT_GO_TABLE = [
    ("tikvRPC", 100, 2000, Jitter.EQUAL_JITTER),
    ("tiflashRPC", 100, 2000, Jitter.EQUAL_JITTER),
    ("txnLock", 100, 3000, Jitter.EQUAL_JITTER),
    ("pdRPC", 500, 3000, Jitter.EQUAL_JITTER),
    ("regionMiss", 2, 500, Jitter.NO_JITTER),
    ("regionScheduling", 2, 500, Jitter.NO_JITTER),
    ("tikvServerBusy", 2000, 10000, Jitter.EQUAL_JITTER),
    ("tikvDiskFull", 500, 5000, Jitter.NO_JITTER),
    ("regionRecoveryInProgress", 100, 10000, Jitter.EQUAL_JITTER),
    ("tiflashServerBusy", 2000, 10000, Jitter.EQUAL_JITTER),
    ("txnNotFound", 2, 500, Jitter.NO_JITTER),
    ("staleCommand", 2, 1000, Jitter.NO_JITTER),
    ("maxTsNotSynced", 2, 500, Jitter.NO_JITTER),
    ("commitTSLag", 2, 500, Jitter.NO_JITTER),
    ("regionNotInitialized", 2, 1000, Jitter.NO_JITTER),
    ("isWitness", 1000, 10000, Jitter.EQUAL_JITTER),
    ("txnLockFast", 2, 3000, Jitter.EQUAL_JITTER),
    # Removed from client-go in #1423; kept (see backoff.DATA_NOT_READY).
    ("dataNotReady", 2, 2000, Jitter.NO_JITTER),
]


@pytest.mark.parametrize(("name", "base", "cap", "jitter"), CLIENT_GO_TABLE)
def test_table_matches_client_go(name: str, base: int, cap: int, jitter: Jitter) -> None:
    kind = bo.KINDS[name]
    assert (kind.base_ms, kind.cap_ms, kind.jitter) == (base, cap, jitter)
    assert kind_by_name(name.upper()) is kind


def test_table_is_complete_and_only_server_busy_is_excluded() -> None:
    assert set(bo.KINDS) == {row[0] for row in CLIENT_GO_TABLE}
    excluded = {k.name: k.excluded_limit_ms for k in bo.KINDS.values() if k.excluded_limit_ms}
    assert excluded == {"tikvServerBusy": 600_000}


def test_budget_constants() -> None:
    assert bo.RAWKV_MAX_BACKOFF == 20_000
    assert bo.GET_MAX_BACKOFF == bo.BATCH_GET_MAX_BACKOFF == bo.SCANNER_NEXT_MAX_BACKOFF == 20_000
    assert bo.PREWRITE_MAX_BACKOFF == bo.COMMIT_MAX_BACKOFF == 40_000
    assert bo.COMMIT_SECONDARY_MAX_BACKOFF == 41_000
    assert bo.TSO_MAX_BACKOFF == 15_000
    assert bo.GC_RESOLVE_LOCK_MAX_BACKOFF == 100_000
    assert DEFAULT_VARS.backoff_weight == 2
    assert DEFAULT_VARS.backoff_lock_fast_ms == 10


def test_unknown_kind_name() -> None:
    with pytest.raises(ValueError, match="unknown backoff kind"):
        kind_by_name("nope")


def test_expo() -> None:
    assert [expo(2, 500, n) for n in range(10)] == [2, 4, 8, 16, 32, 64, 128, 256, 500, 500]
    assert expo(2, 500, 1000) == 500
    with pytest.raises(ValueError, match="attempt"):
        expo(2, 500, -1)


def test_no_jitter_sequence_is_strict_exponential() -> None:
    rng = random.Random(0)
    seq = [next_sleep_ms(bo.REGION_MISS, n, 0, rng) for n in range(10)]
    assert seq == [2, 4, 8, 16, 32, 64, 128, 256, 500, 500]


@given(attempt=st.integers(0, 40), seed=st.integers(0, 2**32))
def test_equal_jitter_bounds(attempt: int, seed: int) -> None:
    rng = random.Random(seed)
    v = expo(100, 2000, attempt)
    s = next_sleep_ms(bo.TIKV_RPC, attempt, 0, rng)
    assert v // 2 <= s < v // 2 + max(v // 2, 1)
    assert s <= 2000


@given(attempt=st.integers(0, 40), seed=st.integers(0, 2**32))
def test_full_jitter_bounds(attempt: int, seed: int) -> None:
    kind = BackoffKind("full", 10, 1000, Jitter.FULL_JITTER, "x")
    s = next_sleep_ms(kind, attempt, 0, random.Random(seed))
    assert 0 <= s < expo(10, 1000, attempt)


@given(last=st.integers(2, 5000), seed=st.integers(0, 2**32))
def test_decorr_jitter_bounds(last: int, seed: int) -> None:
    kind = BackoffKind("decorr", 10, 1000, Jitter.DECORR_JITTER, "x")
    s = next_sleep_ms(kind, 3, last, random.Random(seed))
    assert 10 <= s <= min(1000, 10 + max(3 * last - 10, 1))


def test_base_below_two_is_clamped() -> None:
    kind = BackoffKind("tiny", 0, 100, Jitter.NO_JITTER, "x")
    assert next_sleep_ms(kind, 0, 0, random.Random(1)) == 2


def test_kind_validation() -> None:
    with pytest.raises(ValueError, match="cap_ms"):
        BackoffKind("bad", 1, 0, Jitter.NO_JITTER, "x")
    with pytest.raises(ValueError, match="name"):
        BackoffKind("", 1, 10, Jitter.NO_JITTER, "x")
    with pytest.raises(ValueError, match="backoff_weight"):
        BackoffVars(backoff_weight=0)


async def test_budget_is_weighted_and_checked_before_sleeping() -> None:
    b, sleep = make(4, operation="probe")
    assert b.budget_ms == 8  # 4 ms × BackOffWeight 2
    # regionMiss: 2, 4, 8 — the third sleep crosses the budget but is still taken.
    for expected in (2, 4, 8):
        assert await b.backoff(bo.REGION_MISS, "epoch not match") == expected
    assert b.total_sleep_ms == 14
    assert sleep.calls == [0.002, 0.004, 0.008]
    with pytest.raises(BackoffTimeout) as info:
        await b.backoff(bo.REGION_MISS, RuntimeError("still missing"))
    err = info.value
    assert isinstance(err, builtins.TimeoutError)
    assert err.operation == "probe"
    assert err.total_sleep_ms == 14
    assert err.budget_ms == 8
    assert len(err.causes) == 3
    assert "epoch not match" in err.causes[0]
    assert isinstance(err.last_error, RuntimeError)
    assert err.longest_kind is not None
    assert err.longest_kind.startswith("regionMiss")
    assert err.backoff_times == {"regionMiss": 3}
    assert "still missing" in str(err)
    assert len(sleep.calls) == 3  # nothing slept for the failing call


async def test_zero_budget_means_unlimited() -> None:
    b, _ = make(0)
    for _ in range(50):
        await b.backoff(bo.REGION_MISS, "x")
    assert b.total_sleep_ms > 20_000
    assert b.errors_num == 50
    assert len(b.causes) == bo.MAX_RECORDED_CAUSES


async def test_weight_not_applied_when_it_would_overflow_int32() -> None:
    b, _ = make(2**31 - 10)
    assert b.budget_ms == 2**31 - 10


async def test_txn_lock_fast_uses_vars_base() -> None:
    b, _ = make(100_000, vars=BackoffVars(backoff_lock_fast_ms=10))
    rng_sleeps = [await b.backoff(bo.TXN_LOCK_FAST, "locked") for _ in range(3)]
    # Equal jitter on base 10: [5,10), [10,20), [20,40).
    assert 5 <= rng_sleeps[0] < 10
    assert 10 <= rng_sleeps[1] < 20
    assert 20 <= rng_sleeps[2] < 40


async def test_backoff_with_max_sleep() -> None:
    # client-go TestBackoffWithMax: the sleep is capped at 5 ms.
    b, sleep = make(2000)
    assert await b.backoff(bo.TXN_LOCK_FAST, "test", max_sleep_ms=5) == 5
    assert b.total_sleep_ms == 5
    assert sleep.calls == [0.005]
    with pytest.raises(ValueError, match="max_sleep_ms"):
        await b.backoff(bo.TXN_LOCK_FAST, "test", max_sleep_ms=-1)


async def test_each_kind_has_its_own_sequence() -> None:
    b, _ = make(100_000)
    assert await b.backoff(bo.REGION_MISS, "a") == 2
    assert await b.backoff(bo.REGION_MISS, "a") == 4
    assert await b.backoff(bo.STALE_CMD, "b") == 2
    assert await b.backoff(bo.REGION_MISS, "a") == 8
    assert b.backoff_times == {"regionMiss": 3, "staleCommand": 1}
    assert b.backoff_sleep_ms == {"regionMiss": 14, "staleCommand": 2}


async def test_error_type_names_longest_sleeping_kind() -> None:
    # client-go TestBackoffErrorType: server-busy sleep is not counted, and the final
    # error names the kind that slept longest.
    b, _ = make(800)
    await b.backoff(bo.REGION_MISS, "region miss")
    for _ in range(2):
        await b.backoff(bo.REGION_NOT_INITIALIZED, "region not initialized")
    await b.backoff(bo.REGION_RECOVERY_IN_PROGRESS, "recovery in progress")
    await b.backoff(bo.TIKV_SERVER_BUSY, "server is busy")
    assert b.excluded_sleep_ms >= 1000  # equal jitter of base 2000: [1000, 2000)
    await b.backoff(bo.IS_WITNESS, "peer is witness")
    caught: BackoffTimeout | None = None
    for _ in range(15):
        try:
            await b.backoff(bo.TXN_NOT_FOUND, "txn not found")
        except BackoffTimeout as exc:
            caught = exc
            break
    assert caught is not None, "budget never ran out"
    kind, slept = b.longest_sleep_kind()
    assert kind is not None
    assert kind.name != "tikvServerBusy"
    assert caught.longest_kind is not None
    assert caught.longest_kind.startswith(kind.name)
    assert slept == b.backoff_sleep_ms[kind.name]


async def test_excluded_sleep_does_not_consume_budget() -> None:
    b, _ = make(1000)  # effective 2000 ms
    for _ in range(5):
        await b.backoff(bo.TIKV_SERVER_BUSY, "busy")
    assert b.total_sleep_ms > 2000
    assert b.excluded_sleep_ms == b.total_sleep_ms
    # Non-excluded kinds still have the whole budget.
    assert await b.backoff(bo.REGION_MISS, "miss") == 2


async def test_excluded_limit_exceeded() -> None:
    # client-go TestBackoffWithMaxExcludedExceed with the limit lowered to 1 ms.
    busy = BackoffKind(
        "tikvServerBusy", 2000, 10000, Jitter.EQUAL_JITTER, "busy", excluded_limit_ms=1
    )
    b, _ = make(1)
    await b.backoff(busy, "server is busy")
    with pytest.raises(BackoffTimeout):
        await b.backoff(busy, "server is busy")
    assert b.excluded_sleep_ms > b.budget_ms


async def test_clone_and_fork_copy_state() -> None:
    # client-go TestBackoffDeepCopy.
    b, _ = make(4)
    for _ in range(3):
        await b.backoff(bo.REGION_NOT_INITIALIZED, "region not initialized")
    forked = b.fork()
    cloned = b.clone()
    for other in (forked, cloned):
        assert other.total_sleep_ms == b.total_sleep_ms
        assert other.excluded_sleep_ms == b.excluded_sleep_ms
        assert other.causes == b.causes
        assert other.errors_num == b.errors_num
        assert other.backoff_times == b.backoff_times
        assert other.backoff_sleep_ms == b.backoff_sleep_ms
        with pytest.raises(BackoffTimeout) as info:
            await other.backoff(bo.TIKV_RPC, "tikv rpc")
        assert info.value.longest_kind is not None
        assert info.value.longest_kind.startswith("regionNotInitialized")
    assert forked.parent is b
    assert cloned.parent is None


async def test_clone_is_independent() -> None:
    b, _ = make(100_000)
    await b.backoff(bo.REGION_MISS, "x")
    c = b.clone()
    await c.backoff(bo.REGION_MISS, "y")
    assert b.total_sleep_ms == 2
    assert c.total_sleep_ms == 4  # sequence restarted in the clone: 2 + 2
    assert b.errors_num == 1


async def test_update_using_forked() -> None:
    # client-go TestBackoffUpdateUsingFork.
    b, _ = make(4)
    for _ in range(3):
        await b.backoff(bo.REGION_NOT_INITIALIZED, "region not initialized")
    forked = b.fork()
    with pytest.raises(BackoffTimeout):
        await forked.backoff(bo.TIKV_RPC, "tikv rpc")
    snapshot = forked.clone()
    b.update_using_forked(forked)
    assert b.total_sleep_ms == snapshot.total_sleep_ms
    assert b.causes == snapshot.causes
    assert b.backoff_times == snapshot.backoff_times
    assert b.parent is None
    # A backoffer that is not an ancestor ignores the update.
    stranger, _ = make(4)
    stranger.update_using_forked(forked)
    assert stranger.total_sleep_ms == 0


async def test_fork_totals_fold_back() -> None:
    b, _ = make(100_000)
    child = b.fork()
    await child.backoff(bo.TIKV_RPC, "unavailable")
    assert b.total_sleep_ms == 0
    b.update_using_forked(child)
    assert b.total_sleep_ms == child.total_sleep_ms > 0
    assert b.kinds() == []
    assert child.kinds() == ["tikvRPC"]


async def test_cancel_propagates_to_forks() -> None:
    b, sleep = make(100_000)
    child = b.fork()
    b.cancel()
    assert child.cancelled
    cause = ConnectionError("sibling failed")
    with pytest.raises(ConnectionError, match="sibling failed"):
        await child.backoff(bo.TIKV_RPC, cause)
    assert sleep.calls == []


async def test_noop_backoffer_raises_cause_at_once() -> None:
    b, sleep = make(100, noop=True)
    with pytest.raises(KeyError):
        await b.backoff(bo.REGION_MISS, KeyError("x"))
    with pytest.raises(BackoffTimeout):
        await b.backoff(bo.REGION_MISS, "text cause")
    assert sleep.calls == []


async def test_reset_budget() -> None:
    b, _ = make(2)
    await b.backoff(bo.REGION_MISS, "x")
    await b.backoff(bo.REGION_MISS, "x")
    with pytest.raises(BackoffTimeout):
        await b.backoff(bo.REGION_MISS, "x")
    b.reset_budget(100)
    assert b.budget_ms == 200
    assert b.total_sleep_ms == 0
    assert await b.backoff(bo.REGION_MISS, "x") == 2  # sequence restarted


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="budget_ms"):
        Backoffer(-1)
    with pytest.raises(TypeError, match="budget_ms"):
        Backoffer(1.5)  # type: ignore[arg-type]


async def test_deterministic_with_seeded_rng() -> None:
    seqs = []
    for _ in range(2):
        b, _ = make(100_000)
        seqs.append([await b.backoff(bo.TIKV_RPC, "x") for _ in range(6)])
    assert seqs[0] == seqs[1]


async def test_causes_keep_the_most_recent_in_order() -> None:
    # client-go TestBackoffErrorsKeep, with our larger window.
    b, _ = make(0)
    n = bo.MAX_RECORDED_CAUSES + 5
    for i in range(n):
        await b.backoff(bo.REGION_MISS, f"err-{i}")
    assert b.errors_num == n
    reasons = [c.reason for c in b.causes]
    assert reasons == [f"err-{i}" for i in range(5, n)]
    times = [c.at for c in b.causes]
    assert times == sorted(times)
    assert str(b.causes[0]).startswith("regionMiss (")


async def test_kinds_include_ancestors() -> None:
    b, _ = make(100_000)
    await b.backoff(bo.REGION_MISS, "x")
    child = b.fork()
    await child.backoff(bo.TIKV_RPC, "y")
    assert child.kinds() == ["regionMiss", "tikvRPC", "regionMiss"]
    assert "tikvRPC" in repr(child)
