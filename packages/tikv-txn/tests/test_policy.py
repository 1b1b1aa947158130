"""Tests of the pure transaction decisions, each checking a client-go rule."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
from tikv_pd.errors import LockInfo, TxnError
from tikv_txn.membuffer import TOMBSTONE, FlagsOp, KeyFlags, MemBuffer, MemEntry, apply_flags_ops
from tikv_txn.policy import (
    ASYNC_COMMIT_KEYS_LIMIT,
    ASYNC_COMMIT_SAFE_WINDOW_MS,
    ASYNC_COMMIT_TOTAL_KEY_SIZE_LIMIT,
    DEFAULT_LOCK_TTL_MS,
    HEARTBEAT_INTERVAL_MS,
    MANAGED_LOCK_TTL_MS,
    MAX_TXN_TTL_MS,
    RESOLVE_LOCK_LITE_THRESHOLD,
    TTL_REFRESHED_TXN_SIZE,
    TXN_COMMIT_BATCH_SIZE,
    Action,
    AsyncResolveData,
    Batch,
    LockCleanup,
    LockVisibility,
    Mutation,
    Op,
    PessimisticAction,
    PrewriteOutcome,
    RegionGroup,
    TxnNotFoundAction,
    TxnStatus,
    async_commit_max_commit_ts,
    async_commit_secondaries,
    batch_mutations,
    build_mutations,
    check_async_commit,
    check_one_pc,
    check_txn_status_current_ts,
    choose_commit_protocol,
    decide_lock_resolution,
    decide_on_txn_not_found,
    group_sorted_by_region,
    heartbeat_should_stop,
    heartbeat_ttl,
    interpret_prewrite_response,
    is_lock_expired,
    lock_ms_until_expired,
    mutation_for_entry,
    needs_min_commit_ts_from_tso,
    needs_ttl_manager,
    one_pc_still_possible,
    pessimistic_lock_ttl,
    pipelined_need_flush,
    pre_split_keys,
    prewrite_lock_ttl,
    prewrite_min_commit_ts,
    txn_lock_ttl,
    use_lite_resolve,
)

MIB = 1024 * 1024


def ts(ms: int, logical: int = 0) -> int:
    return (ms << 18) | logical


# ---------------------------------------------------------------------------- defaults


def test_client_go_defaults() -> None:
    assert DEFAULT_LOCK_TTL_MS == 3000
    assert MANAGED_LOCK_TTL_MS == 20_000
    assert HEARTBEAT_INTERVAL_MS == 10_000
    assert MAX_TXN_TTL_MS == 3_600_000
    assert TXN_COMMIT_BATCH_SIZE == 16 * 1024
    assert ASYNC_COMMIT_KEYS_LIMIT == 256
    assert ASYNC_COMMIT_TOTAL_KEY_SIZE_LIMIT == 4096
    assert ASYNC_COMMIT_SAFE_WINDOW_MS == 2000
    assert RESOLVE_LOCK_LITE_THRESHOLD == 512
    assert TTL_REFRESHED_TXN_SIZE == 32 * MIB


# ---------------------------------------------------------------------------- TTL


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (0, 3000),
        (TXN_COMMIT_BATCH_SIZE - 1, 3000),
        (TXN_COMMIT_BATCH_SIZE, 3000),  # 6000 * sqrt(1/64) = 750, raised to the default
        (256 * 1024, 3000),
        (1 * MIB, 6000),
        (4 * MIB, 12000),
        (10 * MIB, int(6000 * math.sqrt(10))),
        (12 * MIB, 20000),  # capped at ManagedLockTTL
        (1000 * MIB, 20000),
    ],
)
def test_txn_lock_ttl_scales_with_size(size: int, expected: int) -> None:
    # client-go 2pc.go txnLockTTL: "1MiB, 4MiB, or 10MiB, ttl is 6s, 12s, 20s" (10 MiB
    # is really 18.97 s; the cap bites at 11.1 MiB).
    assert txn_lock_ttl(size, 0) == expected


def test_txn_lock_ttl_adds_elapsed_time() -> None:
    assert txn_lock_ttl(100, 1234) == 3000 + 1234
    assert txn_lock_ttl(4 * MIB, 500) == 12500
    with pytest.raises(ValueError, match="elapsed_ms"):
        txn_lock_ttl(1, -1)
    with pytest.raises(TypeError, match="txn_size"):
        txn_lock_ttl(1.5, 0)  # type: ignore[arg-type]


def test_pessimistic_lock_ttl() -> None:
    # client-go pessimistic.go: elapsed + ManagedLockTTL.
    assert pessimistic_lock_ttl(0) == 20000
    assert pessimistic_lock_ttl(750) == 20750
    with pytest.raises(ValueError, match="elapsed_ms"):
        pessimistic_lock_ttl(-5)


def test_prewrite_lock_ttl_for_pessimistic_async_commit() -> None:
    start = ts(10_000)
    max_commit = ts(15_000, 7)
    # tidb#33641: start.physical + ttl must exceed max_commit.physical.
    assert (
        prewrite_lock_ttl(
            3000, async_commit=True, pessimistic=True, start_ts=start, max_commit_ts=max_commit
        )
        == 5001
    )
    assert (
        prewrite_lock_ttl(
            9000, async_commit=True, pessimistic=True, start_ts=start, max_commit_ts=max_commit
        )
        == 9000
    )
    assert (
        prewrite_lock_ttl(
            3000, async_commit=True, pessimistic=False, start_ts=start, max_commit_ts=max_commit
        )
        == 3000
    )
    assert (
        prewrite_lock_ttl(
            3000, async_commit=False, pessimistic=True, start_ts=start, max_commit_ts=max_commit
        )
        == 3000
    )


def test_heartbeat_ttl_and_lifetime() -> None:
    start = ts(1_000_000)
    assert heartbeat_ttl(start, ts(1_000_000 + 30_000)) == 30_000 + 20_000
    assert heartbeat_ttl(start, start) == 20_000
    assert heartbeat_ttl(start, ts(1_000_000 + MAX_TXN_TTL_MS)) == MAX_TXN_TTL_MS + 20_000
    assert heartbeat_ttl(start, ts(1_000_000 + MAX_TXN_TTL_MS + 1)) is None
    two_hours = 2 * 3600 * 1000
    assert heartbeat_ttl(start, ts(1_000_000 + two_hours), pipelined=True) == two_hours + 20_000
    assert heartbeat_ttl(start, ts(1_000_000 + 25 * 3600 * 1000), pipelined=True) is None
    assert heartbeat_ttl(start, ts(1_000_000 + 5000), max_txn_ttl_ms=4000) is None


def test_heartbeat_stop_rules() -> None:
    assert heartbeat_should_stop(1, key_error=True)
    assert not heartbeat_should_stop(10, key_error=False)
    assert heartbeat_should_stop(11, key_error=False)


def test_needs_ttl_manager() -> None:
    default = TTL_REFRESHED_TXN_SIZE
    assert not needs_ttl_manager(32 * MIB, one_pc_committed=False, threshold=default)
    assert needs_ttl_manager(32 * MIB + 1, one_pc_committed=False, threshold=default)
    assert not needs_ttl_manager(64 * MIB, one_pc_committed=True, threshold=default)
    # The threshold is the client's Config.ttl_refreshed_txn_size.
    assert needs_ttl_manager(1025, one_pc_committed=False, threshold=1024)
    assert not needs_ttl_manager(1024, one_pc_committed=False, threshold=1024)


# ---------------------------------------------------------------------------- timestamps


def test_async_commit_max_commit_ts() -> None:
    # client-go calculateMaxCommitTS: start_ts + elapsed + safe window, logical kept.
    assert async_commit_max_commit_ts(ts(1000, 5), 300) == ts(1000 + 300 + 2000, 5)
    assert async_commit_max_commit_ts(ts(1000), 0, safe_window_ms=0) == ts(1000)


def test_prewrite_min_commit_ts() -> None:
    # No knowledge yet: start_ts + 1.
    assert prewrite_min_commit_ts(100, 0, 0) == 101
    # Pessimistic: above the for-update ts.
    assert prewrite_min_commit_ts(100, 150, 0) == 151
    assert prewrite_min_commit_ts(100, 150, 150) == 151
    # A fresh TSO + 1 from the committer already exceeds both.
    assert prewrite_min_commit_ts(100, 150, 200) == 200
    assert prewrite_min_commit_ts(100, 0, 100) == 101


# ---------------------------------------------------------------------------- mutations


def entry(value: bytes | object | None, *ops: FlagsOp, key: bytes = b"k") -> MemEntry:
    return MemEntry(key, value, apply_flags_ops(0, ops))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("ent", "pessimistic", "op"),
    [
        (entry(b"v"), False, Op.PUT),
        (entry(b"v", FlagsOp.SET_PRESUME_KEY_NOT_EXISTS), False, Op.INSERT),
        (entry(b"v", FlagsOp.SET_PREVIOUS_PRESUME_KNE), True, Op.INSERT),
        (entry(TOMBSTONE), False, Op.DEL),
        (entry(TOMBSTONE, FlagsOp.SET_PRESUME_KEY_NOT_EXISTS), False, Op.CHECK_NOT_EXISTS),
        # Pessimistic txns checked existence when locking: a plain delete.
        (entry(TOMBSTONE, FlagsOp.SET_PRESUME_KEY_NOT_EXISTS), True, Op.DEL),
        (entry(None, FlagsOp.SET_KEY_LOCKED), True, Op.LOCK),
        (
            entry(None, FlagsOp.SET_KEY_LOCKED, FlagsOp.SET_KEY_LOCKED_IN_SHARE_MODE),
            True,
            Op.SHARED_LOCK,
        ),
        (entry(TOMBSTONE, FlagsOp.SET_NEWLY_INSERTED, FlagsOp.SET_KEY_LOCKED), True, Op.LOCK),
        (entry(None), False, None),
        (entry(None, FlagsOp.SET_PRESUME_KEY_NOT_EXISTS), False, None),
        (entry(TOMBSTONE, FlagsOp.SET_NEWLY_INSERTED), True, None),
    ],
)
def test_mutation_for_entry_ops(ent: MemEntry, pessimistic: bool, op: Op | None) -> None:
    m = mutation_for_entry(ent, pessimistic=pessimistic)
    assert (m.op if m else None) == op


def test_mutation_flags_and_pessimistic_action() -> None:
    m = mutation_for_entry(
        entry(b"v", FlagsOp.SET_KEY_LOCKED, FlagsOp.SET_ASSERT_EXIST), pessimistic=True
    )
    assert m is not None
    assert m.is_pessimistic_lock and m.assert_exist and not m.assert_not_exist
    assert m.pessimistic_action is PessimisticAction.DO_PESSIMISTIC_CHECK
    assert m.value == b"v"
    # A locked key of an optimistic txn is not a pessimistic lock.
    m = mutation_for_entry(entry(b"v", FlagsOp.SET_KEY_LOCKED), pessimistic=False)
    assert m is not None and not m.is_pessimistic_lock
    assert m.pessimistic_action is PessimisticAction.SKIP_PESSIMISTIC_CHECK
    m = mutation_for_entry(
        entry(b"v", FlagsOp.SET_ASSERT_NOT_EXIST), pessimistic=True, assertions=False
    )
    assert m is not None and not m.assert_not_exist
    m = mutation_for_entry(entry(b"v", FlagsOp.SET_ASSERT_UNKNOWN), pessimistic=True)
    assert m is not None and not m.assert_exist and not m.assert_not_exist
    # The postponed check survives on a lock-only entry.
    lock_only = MemEntry(
        b"k", None, KeyFlags.KEY_LOCKED | KeyFlags.NEED_CONSTRAINT_CHECK_IN_PREWRITE
    )
    m = mutation_for_entry(lock_only, pessimistic=True)
    assert m is not None and m.need_constraint_check
    m = mutation_for_entry(
        MemEntry(b"k", b"v", KeyFlags.NEED_CONSTRAINT_CHECK_IN_PREWRITE), pessimistic=True
    )
    assert m is not None
    assert m.pessimistic_action is PessimisticAction.DO_CONSTRAINT_CHECK


def test_build_mutations_from_a_buffer() -> None:
    buf = MemBuffer()
    buf.delete(b"a", FlagsOp.SET_PRESUME_KEY_NOT_EXISTS)  # CHECK_NOT_EXISTS: not primary
    buf.update_flags(b"b", FlagsOp.SET_PRESUME_KEY_NOT_EXISTS)  # skipped
    buf.set(b"c", b"33")
    buf.delete(b"d")
    plan = build_mutations(buf.iterate_with_flags(), pessimistic=False)
    assert [(m.op, m.key) for m in plan.mutations] == [
        (Op.CHECK_NOT_EXISTS, b"a"),
        (Op.PUT, b"c"),
        (Op.DEL, b"d"),
    ]
    assert plan.primary == b"c"
    assert plan.prewrite_only_keys == (b"a",)
    assert plan.size == 1 + 1 + 2 + 1
    assert not plan.has_shared_locks

    only_checks = build_mutations(
        [entry(TOMBSTONE, FlagsOp.SET_PRESUME_KEY_NOT_EXISTS, key=b"x")], pessimistic=False
    )
    assert only_checks.primary == b"x"
    empty = build_mutations([], pessimistic=False)
    assert empty.primary == b"" and empty.mutations == ()
    fixed = build_mutations(
        [entry(b"1", key=b"p"), entry(b"2", key=b"q")], pessimistic=True, primary=b"q"
    )
    assert fixed.primary == b"q"


def test_build_mutations_rejects_shared_primary() -> None:
    shared = entry(None, FlagsOp.SET_KEY_LOCKED, FlagsOp.SET_KEY_LOCKED_IN_SHARE_MODE, key=b"s")
    plan = build_mutations([shared, entry(b"v", key=b"t")], pessimistic=True)
    assert plan.primary == b"t" and plan.has_shared_locks
    with pytest.raises(ValueError, match="shared-locked key"):
        build_mutations([shared], pessimistic=True)
    with pytest.raises(ValueError, match="shared-locked key"):
        build_mutations([shared, entry(b"v", key=b"t")], pessimistic=True, primary=b"s")


# ---------------------------------------------------------------------------- protocols


def test_check_async_commit_limits() -> None:
    keys = [b"%04d" % i for i in range(256)]
    assert check_async_commit(keys, enabled=True)
    assert not check_async_commit([*keys, b"x"], enabled=True)
    assert not check_async_commit(keys, enabled=False)
    assert check_async_commit([b"k" * 4096], enabled=True)
    assert not check_async_commit([b"k" * 4096, b"k"], enabled=True)
    assert not check_async_commit([b"k"], enabled=True, has_shared_locks=True)
    assert not check_async_commit([b"k"], enabled=True, global_scope=False)
    assert not check_async_commit([b"k"], enabled=True, commit_ts_upper_bound_check=True)
    assert check_async_commit([b"k"] * 10, enabled=True, keys_limit=10)
    # Stops early on a huge key stream.
    assert not check_async_commit(iter(lambda: b"k", None), enabled=True)


def test_check_one_pc() -> None:
    assert check_one_pc(enabled=True)
    assert not check_one_pc(enabled=False)
    assert not check_one_pc(enabled=True, has_shared_locks=True)
    assert not check_one_pc(enabled=True, global_scope=False)
    assert not check_one_pc(enabled=True, commit_ts_upper_bound_check=True)
    assert not check_one_pc(enabled=True, pipelined=True)
    assert one_pc_still_possible(1)
    assert one_pc_still_possible(0)
    assert not one_pc_still_possible(2)


def test_local_assertion_failure_disables_async_commit_and_one_pc() -> None:
    assert not check_async_commit([b"k"], enabled=True, assertion_failed=True)
    assert not check_one_pc(enabled=True, assertion_failed=True)


def test_choose_commit_protocol() -> None:
    small = build_mutations([entry(b"v", key=b"a"), entry(b"w", key=b"b")], pessimistic=False)
    both = choose_commit_protocol(
        small, prewrite_batch_count=1, enable_async_commit=True, enable_one_pc=True
    )
    assert both.async_commit and both.one_pc and both.min_commit_ts_from_tso
    assert both.commit_ts_from_prewrite
    # Two regions: 1PC falls back, async commit stays.
    two = choose_commit_protocol(
        small, prewrite_batch_count=2, enable_async_commit=True, enable_one_pc=True
    )
    assert two.async_commit and not two.one_pc
    causal = choose_commit_protocol(
        small,
        prewrite_batch_count=1,
        enable_async_commit=False,
        enable_one_pc=True,
        causal_consistency=True,
    )
    assert causal.one_pc and not causal.min_commit_ts_from_tso
    plain = choose_commit_protocol(
        small, prewrite_batch_count=1, enable_async_commit=False, enable_one_pc=False
    )
    assert plain == type(plain)(False, False, False) and not plain.commit_ts_from_prewrite
    piped = choose_commit_protocol(
        small,
        prewrite_batch_count=1,
        enable_async_commit=True,
        enable_one_pc=True,
        pipelined=True,
    )
    assert not piped.async_commit and not piped.one_pc
    shared = build_mutations(
        [
            entry(b"v", key=b"a"),
            entry(None, FlagsOp.SET_KEY_LOCKED, FlagsOp.SET_KEY_LOCKED_IN_SHARE_MODE, key=b"b"),
        ],
        pessimistic=True,
    )
    no = choose_commit_protocol(
        shared, prewrite_batch_count=1, enable_async_commit=True, enable_one_pc=True
    )
    assert not no.async_commit and not no.one_pc
    many = build_mutations([entry(b"v", key=b"%04d" % i) for i in range(300)], pessimistic=False)
    too_many = choose_commit_protocol(
        many, prewrite_batch_count=1, enable_async_commit=True, enable_one_pc=False
    )
    assert not too_many.async_commit


def test_needs_min_commit_ts_from_tso() -> None:
    assert not needs_min_commit_ts_from_tso(async_commit=False, one_pc=False)
    assert needs_min_commit_ts_from_tso(async_commit=True, one_pc=False)
    assert needs_min_commit_ts_from_tso(async_commit=False, one_pc=True)
    assert not needs_min_commit_ts_from_tso(async_commit=True, one_pc=True, causal_consistency=True)
    assert needs_min_commit_ts_from_tso(
        async_commit=True, one_pc=False, causal_consistency=True, commit_wait_until_tso=5
    )


def test_interpret_prewrite_response() -> None:
    one = interpret_prewrite_response(
        one_pc=True, async_commit=True, one_pc_commit_ts=77, min_commit_ts=0
    )
    assert one == PrewriteOutcome(77, False, 0)
    fallback = interpret_prewrite_response(
        one_pc=True, async_commit=True, one_pc_commit_ts=0, min_commit_ts=0
    )
    assert fallback.fall_back_to_2pc and fallback.one_pc_commit_ts == 0
    with pytest.raises(TxnError, match="must be 0"):
        interpret_prewrite_response(
            one_pc=True, async_commit=False, one_pc_commit_ts=0, min_commit_ts=5
        )
    with pytest.raises(TxnError, match="did not ask"):
        interpret_prewrite_response(
            one_pc=False, async_commit=False, one_pc_commit_ts=9, min_commit_ts=0
        )
    ac = interpret_prewrite_response(
        one_pc=False, async_commit=True, one_pc_commit_ts=0, min_commit_ts=123
    )
    assert ac == PrewriteOutcome(0, False, 123)
    ac0 = interpret_prewrite_response(
        one_pc=False, async_commit=True, one_pc_commit_ts=0, min_commit_ts=0
    )
    assert ac0.fall_back_to_2pc
    plain = interpret_prewrite_response(
        one_pc=False, async_commit=False, one_pc_commit_ts=0, min_commit_ts=50
    )
    assert plain == PrewriteOutcome(0, False, 0)


def test_async_commit_secondaries() -> None:
    muts = [
        Mutation(Op.CHECK_NOT_EXISTS, b"a"),
        Mutation(Op.PUT, b"b", b"1"),
        Mutation(Op.DEL, b"c"),
        Mutation(Op.LOCK, b"d"),
    ]
    assert async_commit_secondaries(muts, b"b") == [b"c", b"d"]


# ---------------------------------------------------------------------------- batching


REGIONS = [(b"", b"g", "r1"), (b"g", b"p", "r2"), (b"p", b"", "r3")]


def make_locate(calls: list[bytes]) -> Callable[[bytes], tuple[str, bytes]]:
    def locate(key: bytes) -> tuple[str, bytes]:
        calls.append(key)
        for start, end, name in REGIONS:
            if key >= start and (not end or key < end):
                return name, end
        raise AssertionError("no region")

    return locate


def test_group_sorted_by_region() -> None:
    keys = [b"a", b"b", b"g", b"h", b"o", b"z"]
    calls: list[bytes] = []
    groups = group_sorted_by_region(keys, lambda k: k, make_locate(calls))
    assert groups == [
        RegionGroup("r1", (b"a", b"b")),
        RegionGroup("r2", (b"g", b"h", b"o")),
        RegionGroup("r3", (b"z",)),
    ]
    assert calls == [b"a", b"g", b"z"]  # once per region
    assert group_sorted_by_region([], lambda k: k, make_locate([])) == []
    with pytest.raises(ValueError, match="ascending"):
        group_sorted_by_region([b"b", b"a"], lambda k: k, make_locate([]))


def test_batch_mutations_sizes_and_primary_first() -> None:
    def m(key: bytes, size: int) -> Mutation:
        return Mutation(Op.PUT, key, b"x" * (size - len(key)))

    def kv(mut: Mutation) -> int:
        return len(mut.key) + len(mut.value)

    ten_k = 10 * 1024
    g1 = RegionGroup("r1", tuple(m(b"a%d" % i, ten_k) for i in range(5)))
    g2 = RegionGroup("r2", (m(b"p0", ten_k), m(b"p1", ten_k), m(b"p2", 100)))
    batches = batch_mutations([g1, g2], b"p2", lambda x: x.key, kv)
    # A batch grows until it reaches 16 KiB: two 10 KiB items per batch.
    sizes = [[kv(x) for x in b.items] for b in batches]
    assert [b.region for b in batches] == ["r2", "r1", "r1", "r2", "r1"]
    assert batches[0].is_primary and [x.key for x in batches[0].items] == [b"p2"]
    assert [x.key for x in batches[3].items] == [b"p0", b"p1"]
    assert [x.key for x in batches[4].items] == [b"a0", b"a1"]  # old first batch moved
    assert sum(len(b.items) for b in batches) == 8
    assert all(not b.is_primary for b in batches[1:])
    assert sizes[1] == [ten_k, ten_k]

    # Commit batches size keys only: everything fits in one batch per region.
    key_only = batch_mutations([g1, g2], b"a0", lambda x: x.key, lambda x: len(x.key))
    assert [(b.region, len(b.items), b.is_primary) for b in key_only] == [
        ("r1", 5, True),
        ("r2", 3, False),
    ]
    assert one_pc_still_possible(len(key_only)) is False

    # No primary among the mutations (e.g. committing secondaries only): order kept.
    plain = batch_mutations([g2], b"zz", lambda x: x.key, kv)
    assert [b.is_primary for b in plain] == [False, False]
    with pytest.raises(ValueError, match="positive"):
        batch_mutations([g2], b"", lambda x: x.key, kv, limit=0)
    assert isinstance(plain[0], Batch)


def test_pre_split_keys() -> None:
    items = [(b"%06d" % i, 100) for i in range(1000)]
    assert pre_split_keys(items, lambda x: x[0], lambda x: x[1], detect_threshold=1001) == []
    splits = pre_split_keys(
        items, lambda x: x[0], lambda x: x[1], detect_threshold=1000, size_threshold=25_000
    )
    assert splits == [b"000249", b"000499", b"000749", b"000999"]


def test_pipelined_need_flush() -> None:
    # client-go PipelinedMemDB.needFlush's table.
    assert not pipelined_need_flush(16 * MIB - 1, 1_000_000, flushing=False)
    assert not pipelined_need_flush(16 * MIB, 9_999, flushing=False)
    assert pipelined_need_flush(16 * MIB, 10_000, flushing=False)
    assert not pipelined_need_flush(16 * MIB, 10_000, flushing=True)
    assert pipelined_need_flush(128 * MIB, 1, flushing=False)
    assert pipelined_need_flush(128 * MIB, 1, flushing=True)
    assert not pipelined_need_flush(128 * MIB - 1, 1, flushing=False)


# ---------------------------------------------------------------------------- lock resolver


def lock(
    key: bytes = b"s",
    primary: bytes = b"p",
    start: int = ts(1000),
    ttl: int = 3000,
    txn_size: int = 1,
    lock_type: int = Op.PUT,
    async_commit: bool = False,
    min_commit_ts: int = 0,
) -> LockInfo:
    return LockInfo(
        primary_lock=primary,
        lock_version=start,
        key=key,
        lock_ttl=ttl,
        txn_size=txn_size,
        lock_type=lock_type,
        use_async_commit=async_commit,
        min_commit_ts=min_commit_ts,
    )


def test_txn_status_classification() -> None:
    assert TxnStatus(commit_ts=5).is_committed
    assert TxnStatus(commit_ts=5).is_determined
    for action in (Action.NO_ACTION, Action.LOCK_NOT_EXIST_ROLLBACK, Action.TTL_EXPIRE_ROLLBACK):
        assert TxnStatus(action=action).is_rolled_back
    assert not TxnStatus(action=Action.LOCK_NOT_EXIST_DO_NOTHING).is_determined
    assert not TxnStatus(ttl=100).is_determined
    assert not TxnStatus(ttl=100, action=Action.MIN_COMMIT_TS_PUSHED).is_rolled_back


def test_expiry_helpers() -> None:
    assert not is_lock_expired(ts(1000), 3000, ts(3999))
    assert is_lock_expired(ts(1000), 3000, ts(4000))
    assert lock_ms_until_expired(ts(1000), 3000, ts(2500)) == 1500
    assert check_txn_status_current_ts(lock(ttl=0), ts(5)) == (1 << 64) - 1
    assert check_txn_status_current_ts(lock(ttl=10), ts(5)) == ts(5)
    assert use_lite_resolve(lock(txn_size=511))
    assert not use_lite_resolve(lock(txn_size=512))
    assert use_lite_resolve(lock(txn_size=512), lite=True)


def test_txn_not_found_decisions() -> None:
    assert (
        decide_on_txn_not_found(lock(ttl=3000), ts(4000)) is TxnNotFoundAction.RETRY_WITH_ROLLBACK
    )
    assert decide_on_txn_not_found(lock(ttl=3000), ts(2000)) is TxnNotFoundAction.BACKOFF_AND_RETRY
    pessimistic = lock(ttl=3000, lock_type=Op.PESSIMISTIC_LOCK)
    assert decide_on_txn_not_found(pessimistic, ts(2000)) is TxnNotFoundAction.TREAT_AS_ALIVE


def test_alive_lock_blocks_writer_and_reports_wait() -> None:
    d = decide_lock_resolution(
        lock(), TxnStatus(ttl=3000), caller_start_ts=ts(1500), current_ts=ts(2000)
    )
    assert d.cleanup is LockCleanup.NONE and d.visibility is LockVisibility.BLOCKED
    assert d.ms_before_expired == 2000
    d = decide_lock_resolution(
        lock(), TxnStatus(ttl=3000), caller_start_ts=ts(1500), current_ts=ts(9000)
    )
    assert d.ms_before_expired == 0


def test_pushed_lock_is_ignored_by_readers_only() -> None:
    status = TxnStatus(ttl=3000, action=Action.MIN_COMMIT_TS_PUSHED)
    reader = decide_lock_resolution(
        lock(), status, caller_start_ts=ts(1500), current_ts=ts(2000), for_read=True
    )
    assert reader.visibility is LockVisibility.IGNORE and reader.pushed
    assert reader.cleanup is LockCleanup.NONE
    writer = decide_lock_resolution(lock(), status, caller_start_ts=ts(1500), current_ts=ts(2000))
    assert writer.visibility is LockVisibility.BLOCKED and writer.ms_before_expired == 2000


def test_committed_lock_resolution_and_visibility() -> None:
    status = TxnStatus(commit_ts=ts(1200))
    before = decide_lock_resolution(lock(), status, caller_start_ts=ts(1500), current_ts=ts(2000))
    assert before.cleanup is LockCleanup.COMMIT and before.commit_ts == ts(1200)
    assert before.visibility is LockVisibility.ACCESS
    assert before.lite and not before.skip_rpc
    after = decide_lock_resolution(lock(), status, caller_start_ts=ts(1100), current_ts=ts(2000))
    assert after.visibility is LockVisibility.IGNORE
    big = decide_lock_resolution(
        lock(txn_size=RESOLVE_LOCK_LITE_THRESHOLD), status, caller_start_ts=1, current_ts=1
    )
    assert not big.lite  # a large transaction: resolve its whole region at once
    primary = decide_lock_resolution(
        lock(key=b"p"), status, caller_start_ts=ts(1500), current_ts=ts(2000)
    )
    assert primary.skip_rpc  # CheckTxnStatus already committed the primary


def test_rolled_back_lock() -> None:
    status = TxnStatus(action=Action.TTL_EXPIRE_ROLLBACK)
    d = decide_lock_resolution(lock(), status, caller_start_ts=ts(1500), current_ts=ts(5000))
    assert d.cleanup is LockCleanup.ROLLBACK and d.commit_ts == 0
    assert d.visibility is LockVisibility.IGNORE
    big_primary = decide_lock_resolution(
        lock(key=b"p", txn_size=10_000), status, caller_start_ts=1, current_ts=1
    )
    assert not big_primary.lite and not big_primary.skip_rpc


def test_pessimistic_lock_of_finished_txn_is_rolled_back() -> None:
    for status in (TxnStatus(), TxnStatus(commit_ts=ts(1300))):
        d = decide_lock_resolution(
            lock(lock_type=Op.PESSIMISTIC_LOCK),
            status,
            caller_start_ts=ts(1500),
            current_ts=ts(5000),
        )
        assert d.cleanup is LockCleanup.PESSIMISTIC_ROLLBACK
    d = decide_lock_resolution(
        lock(key=b"p", lock_type=Op.SHARED_PESSIMISTIC_LOCK),
        TxnStatus(),
        caller_start_ts=1,
        current_ts=1,
    )
    assert d.cleanup is LockCleanup.PESSIMISTIC_ROLLBACK and d.skip_rpc


def test_async_commit_locks() -> None:
    primary = lock(key=b"p", async_commit=True, min_commit_ts=ts(1100))
    alive = TxnStatus(ttl=3000, primary_lock=primary)
    # Not expired: wait.
    d = decide_lock_resolution(
        lock(async_commit=True), alive, caller_start_ts=ts(1500), current_ts=ts(2000)
    )
    assert d.cleanup is LockCleanup.NONE and d.visibility is LockVisibility.BLOCKED
    # Expired and undetermined: check the secondaries.
    d = decide_lock_resolution(
        lock(async_commit=True), alive, caller_start_ts=ts(1500), current_ts=ts(4000)
    )
    assert d.cleanup is LockCleanup.CHECK_SECONDARIES
    # With force_sync_commit the async path is off: the status decides as for 2PC.
    d = decide_lock_resolution(
        lock(async_commit=True),
        alive,
        caller_start_ts=ts(1500),
        current_ts=ts(4000),
        force_sync_commit=True,
    )
    assert d.cleanup is LockCleanup.NONE and d.visibility is LockVisibility.BLOCKED
    # Determined (committed) with the primary lock reported: resolve everything.
    done = TxnStatus(commit_ts=ts(1150), primary_lock=primary)
    d = decide_lock_resolution(
        lock(async_commit=True), done, caller_start_ts=ts(1500), current_ts=ts(1200)
    )
    assert d.cleanup is LockCleanup.RESOLVE_ASYNC_COMMIT and d.commit_ts == ts(1150)
    assert d.visibility is LockVisibility.ACCESS


def test_async_resolve_data_all_locks_present() -> None:
    data = AsyncResolveData(start_ts=10, commit_ts=100)
    locks = [
        LockInfo(
            primary_lock=b"p", lock_version=10, key=b"a", use_async_commit=True, min_commit_ts=120
        ),
        LockInfo(
            primary_lock=b"p", lock_version=10, key=b"b", use_async_commit=True, min_commit_ts=110
        ),
    ]
    assert data.add(locks, 2, 0)
    assert data.add(locks[:1], 1, 0)
    assert data.commit_ts == 120 and data.keys == [b"a", b"b", b"a"]
    assert not data.missing_lock
    assert data.status() == TxnStatus(commit_ts=120)


def test_async_resolve_data_missing_lock() -> None:
    data = AsyncResolveData(start_ts=10, commit_ts=100)
    assert data.add([], 2, 130)  # already committed at 130
    assert data.missing_lock and data.commit_ts == 130
    # Other present locks no longer raise the commit ts.
    ok = LockInfo(
        primary_lock=b"p", lock_version=10, key=b"c", use_async_commit=True, min_commit_ts=500
    )
    assert data.add([ok], 1, 0)
    assert data.commit_ts == 130
    with pytest.raises(TxnError, match="mismatch"):
        data.add([], 1, 140)

    rolled = AsyncResolveData(start_ts=10, commit_ts=100)
    assert rolled.add([], 1, 0)
    assert rolled.commit_ts == 0 and rolled.status().is_rolled_back

    low = AsyncResolveData(start_ts=10, commit_ts=100)
    with pytest.raises(TxnError, match="below the min commit ts"):
        low.add([], 1, 90)


def test_async_resolve_data_bad_locks() -> None:
    data = AsyncResolveData(start_ts=10, commit_ts=100)
    sync_lock = LockInfo(primary_lock=b"p", lock_version=10, key=b"a")
    assert data.add([sync_lock], 1, 0) is False  # fell back to 2PC: force sync commit
    other = LockInfo(primary_lock=b"p", lock_version=11, key=b"a", use_async_commit=True)
    with pytest.raises(TxnError, match="lock of txn 11"):
        data.add([other], 1, 0)
