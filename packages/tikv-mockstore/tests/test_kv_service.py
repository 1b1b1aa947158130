"""The transactional command handlers: TiKV's response shapes, driven through HANDLERS.

The handlers run against a real MvccEngine behind a small in-test StoreScope that owns one
region ``[b"b", b"y")`` (user keys), so region errors can be provoked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import tikv_mockstore.kv_service  # noqa: F401  (registers the handlers)
from tikv_mockstore.handlers import HANDLERS
from tikv_mockstore.mvcc import MvccEngine
from tikv_proto import errorpb_pb2, kvrpcpb_pb2, metapb_pb2

Op = kvrpcpb_pb2.Op
Action = kvrpcpb_pb2.Action


def ts(ms: int, logical: int = 0) -> int:
    """A TSO timestamp at physical ``ms``."""
    return (ms << 18) | logical


class Scope:
    """A store owning one region [start, end) of user keys (implements handlers.StoreScope)."""

    def __init__(self, engine: MvccEngine, start: bytes = b"b", end: bytes = b"y") -> None:
        self._engine = engine
        self.start, self.end = start, end
        self.region_id = 7
        self.version = 3
        self.checks: list[tuple[tuple[bytes, ...], tuple[tuple[bytes, bytes], ...]]] = []
        self.api_checks: list[str] = []

    @property
    def store_id(self) -> int:
        return 1

    @property
    def engine(self) -> Any:
        return self._engine

    @property
    def raw(self) -> Any:
        return None

    def now_ms(self) -> int:
        return 0

    def ctx(self, **kw: Any) -> kvrpcpb_pb2.Context:
        return kvrpcpb_pb2.Context(
            region_id=self.region_id,
            region_epoch=metapb_pb2.RegionEpoch(conf_ver=1, version=self.version),
            peer=metapb_pb2.Peer(id=11, store_id=1),
            **kw,
        )

    @property
    def cluster(self) -> Any:
        return None

    @property
    def api_version(self) -> int:
        return kvrpcpb_pb2.V1

    def check_api_version(
        self,
        ctx: kvrpcpb_pb2.Context,
        *,
        cmd: str,
        txn: bool,
        keys: Sequence[bytes] = (),
        ranges: Sequence[tuple[bytes, bytes]] = (),
    ) -> str | None:
        assert txn
        self.api_checks.append(cmd)
        if ctx.api_version != kvrpcpb_pb2.V1:
            return f"Api version in request does not match with TiKV storage, cmd: {cmd}"
        return None

    def _inside(self, key: bytes) -> bool:
        return key >= self.start and (not self.end or key < self.end)

    def _not_in_region(self, key: bytes) -> errorpb_pb2.Error:
        return errorpb_pb2.Error(
            message="key not in region",
            key_not_in_region=errorpb_pb2.KeyNotInRegion(
                key=key, region_id=self.region_id, start_key=self.start, end_key=self.end
            ),
        )

    def check_region(self, ctx: kvrpcpb_pb2.Context) -> errorpb_pb2.Error | None:
        if ctx.region_epoch.version != self.version:
            return errorpb_pb2.Error(
                message="epoch not match", epoch_not_match=errorpb_pb2.EpochNotMatch()
            )
        return None

    def check(
        self,
        ctx: kvrpcpb_pb2.Context,
        *,
        keys: Sequence[bytes] = (),
        ranges: Sequence[tuple[bytes, bytes]] = (),
        txn: bool,
        reverse: bool = False,
    ) -> errorpb_pb2.Error | None:
        assert txn
        self.checks.append((tuple(keys), tuple(ranges)))
        err = self.check_region(ctx)
        if err is not None:
            return err
        for key in keys:
            if not self._inside(key):
                return self._not_in_region(key)
        for start, _end in ranges:
            if reverse:
                inside = start >= self.start and (not self.end or start <= self.end)
            else:
                inside = self._inside(start)
            if not inside:
                return self._not_in_region(start)
        return None

    def region_bounds(self, ctx: kvrpcpb_pb2.Context, *, txn: bool) -> tuple[bytes, bytes]:
        return self.start, self.end


@pytest.fixture
def engine() -> MvccEngine:
    return MvccEngine()


@pytest.fixture
def scope(engine: MvccEngine) -> Scope:
    return Scope(engine)


def call(scope: Scope, name: str, req: Any) -> Any:
    resp = HANDLERS[name](scope, req)
    assert not hasattr(resp, "result"), "only PessimisticLock may defer"
    return resp


def mut(op: int, key: bytes, value: bytes = b"", assertion: int = 0) -> kvrpcpb_pb2.Mutation:
    return kvrpcpb_pb2.Mutation(op=op, key=key, value=value, assertion=assertion)  # type: ignore[arg-type]


def prewrite(scope: Scope, muts: list[kvrpcpb_pb2.Mutation], start: int, **kw: Any) -> Any:
    kw.setdefault("lock_ttl", 3000)
    req = kvrpcpb_pb2.PrewriteRequest(
        context=scope.ctx(),
        mutations=muts,
        primary_lock=kw.pop("primary", muts[0].key),
        start_version=start,
        **kw,
    )
    return call(scope, "Prewrite", req)


def commit(scope: Scope, keys: list[bytes], start: int, commit_ts: int) -> Any:
    return call(
        scope,
        "Commit",
        kvrpcpb_pb2.CommitRequest(
            context=scope.ctx(), keys=keys, start_version=start, commit_version=commit_ts
        ),
    )


def put(scope: Scope, key: bytes, value: bytes, start: int, commit_ts: int) -> None:
    assert not prewrite(scope, [mut(Op.Put, key, value)], start).errors
    assert commit(scope, [key], start, commit_ts).commit_version == commit_ts


def get(scope: Scope, key: bytes, version: int, **kw: Any) -> Any:
    return call(
        scope,
        "Get",
        kvrpcpb_pb2.GetRequest(context=scope.ctx(), key=key, version=version, **kw),
    )


# ----------------------------------------------------------------------------- reads


def test_get_found_not_found_and_commit_ts(scope: Scope) -> None:
    put(scope, b"k", b"v1", ts(10), ts(11))
    put(scope, b"k", b"v2", ts(20), ts(21))
    resp = get(scope, b"k", ts(15), need_commit_ts=True)
    assert (resp.value, resp.not_found, resp.commit_ts) == (b"v1", False, ts(11))
    resp = get(scope, b"k", ts(30))
    assert (resp.value, resp.commit_ts) == (b"v2", 0)
    resp = get(scope, b"k", ts(5))
    assert resp.not_found
    assert not resp.HasField("error")


def test_get_meets_lock_with_full_lock_info(scope: Scope) -> None:
    resp = prewrite(
        scope,
        [mut(Op.Put, b"p", b"1"), mut(Op.Del, b"s")],
        ts(10),
        lock_ttl=5000,
        txn_size=2,
        use_async_commit=True,
        secondaries=[b"s"],
        min_commit_ts=ts(10, 1),
        max_commit_ts=ts(10_000),
    )
    assert not resp.errors
    assert resp.min_commit_ts > ts(10)
    locked = get(scope, b"p", ts(20)).error.locked
    assert locked.primary_lock == b"p"
    assert locked.lock_version == ts(10)
    assert locked.key == b"p"
    assert locked.lock_ttl == 5000
    assert locked.txn_size == 2
    assert locked.lock_type == Op.Put
    assert locked.use_async_commit
    assert locked.min_commit_ts == resp.min_commit_ts
    assert list(locked.secondaries) == [b"s"]
    assert locked.lock_for_update_ts == 0
    secondary = get(scope, b"s", ts(20)).error.locked
    assert (secondary.key, secondary.lock_type, secondary.primary_lock) == (b"s", Op.Del, b"p")
    # A read below the lock's start does not see it; resolved_locks bypasses it.
    assert get(scope, b"p", ts(5)).not_found
    ctx = scope.ctx(resolved_locks=[ts(10)])
    bypass = call(scope, "Get", kvrpcpb_pb2.GetRequest(context=ctx, key=b"p", version=ts(20)))
    assert bypass.not_found
    assert not bypass.HasField("error")


def test_batch_get_pairs_and_lock_errors(scope: Scope) -> None:
    put(scope, b"a1", b"x", ts(1), ts(2)) if scope._inside(b"a1") else None
    put(scope, b"c1", b"x1", ts(1), ts(2))
    put(scope, b"c3", b"x3", ts(1), ts(2))
    assert not prewrite(scope, [mut(Op.Put, b"c2", b"locked")], ts(5)).errors
    resp = call(
        scope,
        "BatchGet",
        kvrpcpb_pb2.BatchGetRequest(
            context=scope.ctx(),
            keys=[b"c1", b"c2", b"c3", b"missing"],
            version=ts(10),
            need_commit_ts=True,
        ),
    )
    assert [(p.key, p.value, p.commit_ts) for p in resp.pairs if not p.HasField("error")] == [
        (b"c1", b"x1", ts(2)),
        (b"c3", b"x3", ts(2)),
    ]
    errs = [p for p in resp.pairs if p.HasField("error")]
    assert len(errs) == 1
    assert errs[0].error.locked.key == b"c2"
    assert errs[0].key == b""  # TiKV leaves the key of an error pair empty


def test_scan_forward_reverse_limit_key_only_and_clipped_to_region(scope: Scope) -> None:
    for i, key in enumerate([b"c", b"d", b"e", b"f"]):
        put(scope, key, b"v" + key, ts(10 + 2 * i), ts(11 + 2 * i))
    # Data outside the region [b, y) must never be returned by this region.
    scope.start, scope.end = b"a", b""
    put(scope, b"a", b"outside", ts(30), ts(31))
    put(scope, b"z", b"outside", ts(32), ts(33))
    scope.start, scope.end = b"b", b"y"

    def scan(start: bytes, end: bytes, limit: int, **kw: Any) -> list[tuple[bytes, bytes]]:
        resp = call(
            scope,
            "Scan",
            kvrpcpb_pb2.ScanRequest(
                context=scope.ctx(),
                start_key=start,
                end_key=end,
                limit=limit,
                version=ts(100),
                **kw,
            ),
        )
        assert not resp.HasField("region_error")
        return [(p.key, p.value) for p in resp.pairs]

    assert scan(b"b", b"", 100) == [(b"c", b"vc"), (b"d", b"vd"), (b"e", b"ve"), (b"f", b"vf")]
    assert scan(b"c", b"e", 100) == [(b"c", b"vc"), (b"d", b"vd")]
    assert scan(b"b", b"", 2) == [(b"c", b"vc"), (b"d", b"vd")]
    assert scan(b"b", b"", 100, key_only=True) == [
        (b"c", b""),
        (b"d", b""),
        (b"e", b""),
        (b"f", b""),
    ]
    # Reverse: start_key is the exclusive upper bound, end_key the inclusive lower bound;
    # an upper bound equal to the region end is allowed, and the lower one is clipped.
    assert scan(b"y", b"", 3, reverse=True) == [(b"f", b"vf"), (b"e", b"ve"), (b"d", b"vd")]
    assert scan(b"e", b"a", 10, reverse=True) == [(b"d", b"vd"), (b"c", b"vc")]
    assert scan(b"b", b"", 4, sample_step=2) == [(b"c", b"vc"), (b"e", b"ve")]


def test_scan_reports_locks_inside_pairs(scope: Scope) -> None:
    put(scope, b"c", b"1", ts(1), ts(2))
    assert not prewrite(scope, [mut(Op.Put, b"d", b"2")], ts(3)).errors
    resp = call(
        scope,
        "Scan",
        kvrpcpb_pb2.ScanRequest(context=scope.ctx(), start_key=b"c", limit=10, version=ts(9)),
    )
    assert resp.pairs[0].key == b"c"
    assert resp.pairs[1].error.locked.key == b"d"
    assert not resp.HasField("error")


def test_scan_lock_and_max_ts(scope: Scope, engine: MvccEngine) -> None:
    assert not prewrite(scope, [mut(Op.Put, b"c", b"1"), mut(Op.Put, b"d", b"2")], ts(5)).errors
    assert not prewrite(scope, [mut(Op.Put, b"e", b"3")], ts(50)).errors
    resp = call(
        scope,
        "ScanLock",
        kvrpcpb_pb2.ScanLockRequest(context=scope.ctx(), max_version=ts(10), limit=0),
    )
    assert [(lk.key, lk.lock_version, lk.primary_lock) for lk in resp.locks] == [
        (b"c", ts(5), b"c"),
        (b"d", ts(5), b"c"),
    ]
    assert engine.max_ts >= ts(10)
    limited = call(
        scope,
        "ScanLock",
        kvrpcpb_pb2.ScanLockRequest(context=scope.ctx(), max_version=ts(100), limit=2),
    )
    assert len(limited.locks) == 2


# ----------------------------------------------------------------------------- prewrite


def test_prewrite_write_conflict(scope: Scope) -> None:
    put(scope, b"k", b"v", ts(20), ts(21))
    resp = prewrite(scope, [mut(Op.Put, b"k", b"late")], ts(10))
    assert len(resp.errors) == 1
    conflict = resp.errors[0].conflict
    assert conflict.start_ts == ts(10)
    assert conflict.conflict_ts == ts(20)
    assert conflict.conflict_commit_ts == ts(21)
    assert conflict.key == b"k"
    assert conflict.primary == b"k"
    assert conflict.reason == kvrpcpb_pb2.WriteConflict.Optimistic
    assert resp.errors[0].retryable  # TiKV also fills the legacy text


def test_prewrite_meets_locks_per_key(scope: Scope) -> None:
    assert not prewrite(scope, [mut(Op.Put, b"c", b"1"), mut(Op.Put, b"d", b"1")], ts(5)).errors
    resp = prewrite(
        scope, [mut(Op.Put, b"c", b"2"), mut(Op.Put, b"d", b"2"), mut(Op.Put, b"e", b"2")], ts(6)
    )
    assert sorted(e.locked.key for e in resp.errors) == [b"c", b"d"]
    assert all(e.locked.lock_version == ts(5) for e in resp.errors)
    # Nothing of the failed prewrite was written.
    assert get(scope, b"e", ts(100)).not_found


def test_insert_already_exist(scope: Scope) -> None:
    put(scope, b"k", b"v", ts(1), ts(2))
    resp = prewrite(scope, [mut(Op.Insert, b"k", b"again")], ts(10))
    assert [e.already_exist.key for e in resp.errors] == [b"k"]


def test_assertion_failed(scope: Scope) -> None:
    put(scope, b"k", b"v", ts(1), ts(2))
    resp = prewrite(
        scope,
        [mut(Op.Put, b"k", b"x", assertion=kvrpcpb_pb2.NotExist)],
        ts(10),
        assertion_level=kvrpcpb_pb2.Strict,
    )
    failed = resp.errors[0].assertion_failed
    assert (failed.start_ts, failed.key, failed.assertion) == (ts(10), b"k", kvrpcpb_pb2.NotExist)
    assert (failed.existing_start_ts, failed.existing_commit_ts) == (ts(1), ts(2))


def test_one_pc(scope: Scope) -> None:
    get(scope, b"c", ts(40))  # raises max_ts: the 1PC commit ts must be above it
    resp = prewrite(
        scope,
        [mut(Op.Put, b"c", b"1"), mut(Op.Put, b"d", b"2")],
        ts(10),
        try_one_pc=True,
        max_commit_ts=ts(1000),
    )
    assert not resp.errors
    assert resp.one_pc_commit_ts > ts(40)
    assert resp.min_commit_ts == 0
    assert get(scope, b"d", resp.one_pc_commit_ts).value == b"2"
    assert get(scope, b"d", resp.one_pc_commit_ts - 1).not_found


def test_async_commit_min_commit_ts_above_reads(scope: Scope, engine: MvccEngine) -> None:
    get(scope, b"x", ts(500))
    resp = prewrite(
        scope,
        [mut(Op.Put, b"c", b"1"), mut(Op.Put, b"d", b"2")],
        ts(100),
        use_async_commit=True,
        secondaries=[b"d"],
        max_commit_ts=ts(10_000),
    )
    assert not resp.errors
    assert resp.min_commit_ts > ts(500)
    assert resp.one_pc_commit_ts == 0
    status = call(
        scope,
        "CheckSecondaryLocks",
        kvrpcpb_pb2.CheckSecondaryLocksRequest(
            context=scope.ctx(), keys=[b"d"], start_version=ts(100)
        ),
    )
    assert [lk.key for lk in status.locks] == [b"d"]
    assert status.commit_ts == 0


def test_secondaries_ignored_without_async_commit(scope: Scope) -> None:
    # client-rust sends secondaries with every prewrite; TiKV ignores them without async commit.
    resp = prewrite(
        scope, [mut(Op.Put, b"c", b"1"), mut(Op.Put, b"d", b"2")], ts(1), secondaries=[b"d"]
    )
    assert not resp.errors
    assert not get(scope, b"c", ts(5)).error.locked.use_async_commit


def test_pessimistic_prewrite_zips_actions_with_mutations(scope: Scope) -> None:
    lock = call(
        scope,
        "PessimisticLock",
        kvrpcpb_pb2.PessimisticLockRequest(
            context=scope.ctx(),
            mutations=[mut(Op.PessimisticLock, b"c")],
            primary_lock=b"c",
            start_version=ts(10),
            for_update_ts=ts(11),
            lock_ttl=20000,
        ),
    )
    assert not lock.errors
    # client-rust sends one action per mutation of the whole transaction (2 for 1 here).
    do_check = kvrpcpb_pb2.PrewriteRequest.DO_PESSIMISTIC_CHECK
    resp = prewrite(
        scope,
        [mut(Op.Put, b"c", b"v")],
        ts(10),
        for_update_ts=ts(11),
        pessimistic_actions=[do_check, do_check],
    )
    assert not resp.errors
    assert commit(scope, [b"c"], ts(10), ts(12)).commit_version == ts(12)
    assert get(scope, b"c", ts(13)).value == b"v"


# ----------------------------------------------------------------------------- commit & co


def test_commit_errors(scope: Scope) -> None:
    resp = commit(scope, [b"c"], ts(10), ts(11))
    assert resp.error.txn_lock_not_found.key == b"c"
    assert resp.error.retryable
    assert resp.commit_version == 0
    assert not prewrite(
        scope,
        [mut(Op.Put, b"d", b"1")],
        ts(20),
        use_async_commit=True,
        max_commit_ts=ts(10_000),
        min_commit_ts=ts(30),
    ).errors
    expired = commit(scope, [b"d"], ts(20), ts(25)).error.commit_ts_expired
    assert (expired.start_ts, expired.attempted_commit_ts, expired.key) == (ts(20), ts(25), b"d")
    assert expired.min_commit_ts >= ts(30)


def test_cleanup_returns_commit_version_or_rolls_back(scope: Scope) -> None:
    put(scope, b"c", b"1", ts(10), ts(11))
    resp = call(
        scope,
        "Cleanup",
        kvrpcpb_pb2.CleanupRequest(context=scope.ctx(), key=b"c", start_version=ts(10)),
    )
    assert resp.commit_version == ts(11)
    assert not resp.HasField("error")
    # Without current_ts a live lock is rolled back (client-rust checks the TTL itself).
    assert not prewrite(scope, [mut(Op.Put, b"d", b"1")], ts(20), lock_ttl=100_000).errors
    resp = call(
        scope,
        "Cleanup",
        kvrpcpb_pb2.CleanupRequest(context=scope.ctx(), key=b"d", start_version=ts(20)),
    )
    assert (resp.commit_version, resp.HasField("error")) == (0, False)
    assert get(scope, b"d", ts(30)).not_found
    # With current_ts, a live lock is reported instead.
    assert not prewrite(scope, [mut(Op.Put, b"e", b"1")], ts(40), lock_ttl=100_000).errors
    resp = call(
        scope,
        "Cleanup",
        kvrpcpb_pb2.CleanupRequest(
            context=scope.ctx(), key=b"e", start_version=ts(40), current_ts=ts(41)
        ),
    )
    assert resp.error.locked.lock_version == ts(40)


def test_batch_rollback(scope: Scope) -> None:
    assert not prewrite(scope, [mut(Op.Put, b"c", b"1"), mut(Op.Put, b"d", b"1")], ts(10)).errors
    resp = call(
        scope,
        "BatchRollback",
        kvrpcpb_pb2.BatchRollbackRequest(
            context=scope.ctx(), start_version=ts(10), keys=[b"c", b"d", b"never"]
        ),
    )
    assert not resp.HasField("error")
    assert commit(scope, [b"c"], ts(10), ts(11)).error.HasField("txn_lock_not_found")
    put(scope, b"e", b"1", ts(20), ts(21))
    resp = call(
        scope,
        "BatchRollback",
        kvrpcpb_pb2.BatchRollbackRequest(context=scope.ctx(), start_version=ts(20), keys=[b"e"]),
    )
    assert resp.error.abort  # rolling back a committed transaction is refused


def check_txn_status(scope: Scope, primary: bytes, lock_ts: int, **kw: Any) -> Any:
    return call(
        scope,
        "CheckTxnStatus",
        kvrpcpb_pb2.CheckTxnStatusRequest(
            context=scope.ctx(), primary_key=primary, lock_ts=lock_ts, **kw
        ),
    )


def test_check_txn_status_actions(scope: Scope) -> None:
    # Alive, with min_commit_ts pushed above the caller.
    assert not prewrite(
        scope, [mut(Op.Put, b"c", b"1")], ts(100), lock_ttl=10_000, min_commit_ts=ts(100, 1)
    ).errors
    resp = check_txn_status(scope, b"c", ts(100), caller_start_ts=ts(150), current_ts=ts(160))
    assert resp.action == Action.MinCommitTSPushed
    assert resp.lock_ttl == 10_000
    assert resp.commit_version == 0
    assert resp.lock_info.key == b"c"
    assert resp.lock_info.lock_version == ts(100)
    assert resp.lock_info.min_commit_ts > ts(150)
    # Expired: rolled back.
    resp = check_txn_status(scope, b"c", ts(100), current_ts=ts(100 + 20_000))
    assert (resp.action, resp.lock_ttl, resp.HasField("lock_info")) == (
        Action.TTLExpireRollback,
        0,
        False,
    )
    # Rolled back already: no action.
    resp = check_txn_status(scope, b"c", ts(100), current_ts=ts(100 + 20_000))
    assert (resp.action, resp.commit_version) == (Action.NoAction, 0)
    # Committed.
    put(scope, b"d", b"1", ts(200), ts(201))
    resp = check_txn_status(scope, b"d", ts(200), current_ts=ts(300))
    assert resp.commit_version == ts(201)
    # Unknown transaction: TxnNotFound, or a rollback when asked to.
    resp = check_txn_status(scope, b"e", ts(300), current_ts=ts(400))
    assert (resp.error.txn_not_found.start_ts, resp.error.txn_not_found.primary_key) == (
        ts(300),
        b"e",
    )
    resp = check_txn_status(scope, b"e", ts(300), current_ts=ts(400), rollback_if_not_exist=True)
    assert resp.action == Action.LockNotExistRollback


def test_check_txn_status_primary_mismatch(scope: Scope) -> None:
    assert not prewrite(
        scope, [mut(Op.Put, b"c", b"1"), mut(Op.Put, b"d", b"1")], ts(10), primary=b"c"
    ).errors
    resp = check_txn_status(scope, b"d", ts(10), current_ts=ts(11), verify_is_primary=True)
    assert resp.error.primary_mismatch.lock_info.primary_lock == b"c"


def test_txn_heart_beat(scope: Scope) -> None:
    assert not prewrite(scope, [mut(Op.Put, b"c", b"1")], ts(10), lock_ttl=3000).errors
    req = kvrpcpb_pb2.TxnHeartBeatRequest(
        context=scope.ctx(), primary_lock=b"c", start_version=ts(10), advise_lock_ttl=9000
    )
    assert call(scope, "TxnHeartBeat", req).lock_ttl == 9000
    req.start_version = ts(11)
    assert call(scope, "TxnHeartBeat", req).error.txn_not_found.start_ts == ts(11)


def test_resolve_lock_by_txn_keys_and_txn_infos(scope: Scope) -> None:
    assert not prewrite(scope, [mut(Op.Put, b"c", b"1"), mut(Op.Put, b"d", b"1")], ts(10)).errors
    assert not prewrite(scope, [mut(Op.Put, b"e", b"2")], ts(20)).errors
    assert not prewrite(scope, [mut(Op.Put, b"f", b"3")], ts(30)).errors
    assert not prewrite(scope, [mut(Op.Put, b"g", b"4")], ts(40)).errors

    def resolve(**kw: Any) -> Any:
        return call(scope, "ResolveLock", kvrpcpb_pb2.ResolveLockRequest(context=scope.ctx(), **kw))

    # By transaction: every lock of ts(10) in the region is committed.
    assert not resolve(start_version=ts(10), commit_version=ts(11)).HasField("error")
    assert get(scope, b"d", ts(12)).value == b"1"
    # By keys (resolve-lock-lite): rolled back.
    assert not resolve(start_version=ts(20), keys=[b"e"]).HasField("error")
    assert get(scope, b"e", ts(50)).not_found
    # txn_infos: one commits, one rolls back.
    infos = [kvrpcpb_pb2.TxnInfo(txn=ts(30), status=ts(31)), kvrpcpb_pb2.TxnInfo(txn=ts(40))]
    assert not resolve(txn_infos=infos).HasField("error")
    assert get(scope, b"f", ts(50)).value == b"3"
    assert get(scope, b"g", ts(50)).not_found
    bad = resolve(start_version=ts(60), commit_version=ts(59))
    assert bad.error.abort
    nothing = resolve()  # no transaction named: TiKV resolves nothing and succeeds
    assert not nothing.HasField("error")


def test_pessimistic_rollback_without_keys_scans_the_region(scope: Scope) -> None:
    req = kvrpcpb_pb2.PessimisticLockRequest(
        context=scope.ctx(),
        mutations=[mut(Op.PessimisticLock, b"c"), mut(Op.PessimisticLock, b"d")],
        primary_lock=b"c",
        start_version=ts(10),
        for_update_ts=ts(10),
        lock_ttl=20000,
    )
    assert not call(scope, "PessimisticLock", req).errors
    resp = call(
        scope,
        "PessimisticRollback",
        kvrpcpb_pb2.PessimisticRollbackRequest(
            context=scope.ctx(), start_version=ts(10), for_update_ts=ts(10)
        ),
    )
    assert not resp.errors
    locks = call(
        scope, "ScanLock", kvrpcpb_pb2.ScanLockRequest(context=scope.ctx(), max_version=ts(99))
    )
    assert list(locks.locks) == []


# ----------------------------------------------------------------------------- pessimistic shapes


def lock_req(scope: Scope, keys: list[bytes], start: int, **kw: Any) -> Any:
    kw.setdefault("for_update_ts", start)
    kw.setdefault("lock_ttl", 20000)
    return kvrpcpb_pb2.PessimisticLockRequest(
        context=scope.ctx(),
        mutations=[mut(Op.PessimisticLock, k) for k in keys],
        primary_lock=keys[0],
        start_version=start,
        **kw,
    )


def test_pessimistic_lock_values_and_not_founds(scope: Scope) -> None:
    put(scope, b"c", b"cv", ts(1), ts(2))
    resp = call(scope, "PessimisticLock", lock_req(scope, [b"c", b"d"], ts(10), return_values=True))
    assert list(resp.values) == [b"cv", b""]
    assert list(resp.not_founds) == [False, True]
    assert not resp.errors
    # return_values=false: both lists stay empty (client-rust asserts on it).
    resp = call(scope, "PessimisticLock", lock_req(scope, [b"e", b"f"], ts(20)))
    assert (list(resp.values), list(resp.not_founds), list(resp.results)) == ([], [], [])
    # check_existence alone: not_founds only.
    resp = call(
        scope,
        "PessimisticLock",
        lock_req(scope, [b"g", b"c"], ts(30), check_existence=True, wait_timeout=-1),
    )
    assert resp.errors[0].locked.lock_version == ts(10)  # c is still locked by ts(10)
    assert (list(resp.values), list(resp.not_founds)) == ([], [])
    resp = call(
        scope, "PessimisticLock", lock_req(scope, [b"g", b"h"], ts(30), check_existence=True)
    )
    assert (list(resp.values), list(resp.not_founds)) == ([], [True, True])


def test_pessimistic_lock_only_if_exists(scope: Scope, engine: MvccEngine) -> None:
    put(scope, b"c", b"cv", ts(1), ts(2))
    resp = call(
        scope,
        "PessimisticLock",
        lock_req(scope, [b"c", b"d"], ts(10), return_values=True, lock_only_if_exists=True),
    )
    assert (list(resp.values), list(resp.not_founds)) == ([b"cv", b""], [False, True])
    assert engine.mvcc_by_key(b"c").lock is not None
    assert engine.mvcc_by_key(b"d").lock is None
    resp = call(scope, "PessimisticLock", lock_req(scope, [b"e"], ts(20), lock_only_if_exists=True))
    assert resp.errors[0].abort  # needs return_values


def test_pessimistic_lock_conflict_and_already_exist(scope: Scope) -> None:
    put(scope, b"c", b"cv", ts(20), ts(21))
    resp = call(scope, "PessimisticLock", lock_req(scope, [b"c"], ts(10), for_update_ts=ts(15)))
    conflict = resp.errors[0].conflict
    assert (conflict.conflict_ts, conflict.conflict_commit_ts) == (ts(20), ts(21))
    assert conflict.reason == kvrpcpb_pb2.WriteConflict.PessimisticRetry
    req = lock_req(scope, [b"c"], ts(30))
    req.mutations[0].assertion = kvrpcpb_pb2.NotExist
    assert call(scope, "PessimisticLock", req).errors[0].already_exist.key == b"c"


def test_force_lock_mode_results(scope: Scope) -> None:
    put(scope, b"c", b"cv", ts(20), ts(21))
    mode = kvrpcpb_pb2.WakeUpModeForceLock
    resp = call(
        scope,
        "PessimisticLock",
        lock_req(
            scope, [b"c"], ts(10), for_update_ts=ts(15), wake_up_mode=mode, return_values=True
        ),
    )
    assert not resp.errors
    (result,) = resp.results
    assert result.type == kvrpcpb_pb2.LockResultLockedWithConflict
    assert result.locked_with_conflict_ts == ts(21)
    assert (result.value, result.existence) == (b"cv", True)
    assert (list(resp.values), list(resp.not_founds)) == ([], [])
    # The value comes with a locked-with-conflict result even without return_values.
    put(scope, b"c2", b"c2v", ts(22), ts(23))
    resp = call(
        scope,
        "PessimisticLock",
        lock_req(scope, [b"c2"], ts(11), for_update_ts=ts(15), wake_up_mode=mode),
    )
    (result,) = resp.results
    assert (result.type, result.value, result.existence) == (
        kvrpcpb_pb2.LockResultLockedWithConflict,
        b"c2v",
        True,
    )
    resp = call(
        scope,
        "PessimisticLock",
        lock_req(scope, [b"d"], ts(30), wake_up_mode=mode, check_existence=True),
    )
    assert [(r.type, r.existence) for r in resp.results] == [(kvrpcpb_pb2.LockResultNormal, False)]
    resp = call(scope, "PessimisticLock", lock_req(scope, [b"e", b"f"], ts(40), wake_up_mode=mode))
    assert resp.errors[0].abort
    assert list(resp.results) == []


# ----------------------------------------------------------------------------- pipelined, GC


def test_flush_and_buffer_batch_get(scope: Scope) -> None:
    resp = call(
        scope,
        "Flush",
        kvrpcpb_pb2.FlushRequest(
            context=scope.ctx(),
            mutations=[mut(Op.Put, b"c", b"1"), mut(Op.Del, b"d")],
            primary_key=b"c",
            start_ts=ts(10),
            generation=1,
            lock_ttl=3000,
        ),
    )
    assert not resp.errors
    got = call(
        scope,
        "BufferBatchGet",
        kvrpcpb_pb2.BufferBatchGetRequest(
            context=scope.ctx(), keys=[b"c", b"d", b"e"], version=ts(10)
        ),
    )
    assert [(p.key, p.value) for p in got.pairs] == [(b"c", b"1"), (b"d", b"")]
    # Another transaction's flush meets the locks: errors per key.
    resp = call(
        scope,
        "Flush",
        kvrpcpb_pb2.FlushRequest(
            context=scope.ctx(),
            mutations=[mut(Op.Put, b"c", b"2")],
            primary_key=b"c",
            start_ts=ts(20),
            generation=1,
        ),
    )
    assert [e.locked.lock_version for e in resp.errors] == [ts(10)]


def test_flush_checks_check_not_exists_without_locking(scope: Scope, engine: MvccEngine) -> None:
    """TiKV's Flush takes CheckNotExists (a pipelined insert-then-delete) and leaves no lock."""
    put(scope, b"c", b"old", ts(1), ts(2))

    def flush(key: bytes, start: int) -> Any:
        return call(
            scope,
            "Flush",
            kvrpcpb_pb2.FlushRequest(
                context=scope.ctx(),
                mutations=[mut(Op.CheckNotExists, key)],
                primary_key=key,
                start_ts=ts(start),
                generation=1,
                lock_ttl=3000,
            ),
        )

    assert [e.HasField("already_exist") for e in flush(b"c", 10).errors] == [True]
    assert not flush(b"d", 11).errors
    assert engine.mvcc_by_key(b"d").lock is None


def test_gc_and_delete_range_stay_in_region(scope: Scope, engine: MvccEngine) -> None:
    put(scope, b"c", b"old", ts(1), ts(2))
    put(scope, b"c", b"new", ts(3), ts(4))
    assert not call(
        scope, "GC", kvrpcpb_pb2.GCRequest(context=scope.ctx(), safe_point=ts(10))
    ).HasField("error")
    assert len(engine.mvcc_by_key(b"c").writes) == 1
    assert get(scope, b"c", ts(11)).value == b"new"
    scope.start, scope.end = b"", b""
    put(scope, b"z", b"outside", ts(5), ts(6))
    scope.start, scope.end = b"b", b"y"
    resp = call(
        scope,
        "DeleteRange",
        kvrpcpb_pb2.DeleteRangeRequest(context=scope.ctx(), start_key=b"b", end_key=b""),
    )
    assert resp.error == ""
    assert engine.mvcc_by_key(b"c").writes == ()
    assert engine.mvcc_by_key(b"z").writes != ()  # beyond the region end: untouched
    put(scope, b"c", b"again", ts(7), ts(8))
    resp = call(
        scope,
        "DeleteRange",
        kvrpcpb_pb2.DeleteRangeRequest(
            context=scope.ctx(), start_key=b"b", end_key=b"x", notify_only=True
        ),
    )
    assert get(scope, b"c", ts(9)).value == b"again"


# ----------------------------------------------------------------------------- region errors


def test_region_errors_touch_nothing(scope: Scope, engine: MvccEngine) -> None:
    resp = prewrite(scope, [mut(Op.Put, b"c", b"1"), mut(Op.Put, b"z", b"1")], ts(10))
    assert resp.region_error.key_not_in_region.key == b"z"
    assert list(resp.errors) == []
    assert engine.lock_count() == 0
    assert get(scope, b"a", ts(10)).region_error.HasField("key_not_in_region")
    scan = call(
        scope,
        "Scan",
        kvrpcpb_pb2.ScanRequest(context=scope.ctx(), start_key=b"a", limit=1, version=ts(5)),
    )
    assert scan.region_error.key_not_in_region.key == b"a"
    assert list(scan.pairs) == []
    rev = call(
        scope,
        "Scan",
        kvrpcpb_pb2.ScanRequest(
            context=scope.ctx(), start_key=b"z", limit=1, version=ts(5), reverse=True
        ),
    )
    assert rev.region_error.HasField("key_not_in_region")
    stale = scope.ctx()
    stale.region_epoch.version = 1
    for name, req in [
        ("Commit", kvrpcpb_pb2.CommitRequest(context=stale, keys=[b"c"], start_version=1)),
        ("ResolveLock", kvrpcpb_pb2.ResolveLockRequest(context=stale, start_version=1)),
        ("ScanLock", kvrpcpb_pb2.ScanLockRequest(context=stale, max_version=1)),
        ("GC", kvrpcpb_pb2.GCRequest(context=stale, safe_point=1)),
        ("PessimisticLock", kvrpcpb_pb2.PessimisticLockRequest(context=stale)),
        ("CheckTxnStatus", kvrpcpb_pb2.CheckTxnStatusRequest(context=stale, primary_key=b"c")),
    ]:
        resp = call(scope, name, req)
        assert resp.region_error.HasField("epoch_not_match"), name


def test_region_checks_name_the_touched_keys(scope: Scope) -> None:
    scope.checks.clear()
    call(
        scope,
        "BatchGet",
        kvrpcpb_pb2.BatchGetRequest(context=scope.ctx(), keys=[b"c", b"d"], version=1),
    )
    call(
        scope,
        "CheckTxnStatus",
        kvrpcpb_pb2.CheckTxnStatusRequest(
            context=scope.ctx(), primary_key=b"p", lock_ts=1, rollback_if_not_exist=True
        ),
    )
    assert scope.checks == [((b"c", b"d"), ()), ((b"p",), ())]


def test_api_version_mismatch_is_an_abort_before_region_checks(scope: Scope) -> None:
    ctx = scope.ctx(api_version=kvrpcpb_pb2.V2)
    ctx.region_epoch.version = 1  # stale too: the API check comes first, as in TiKV
    get_resp = call(scope, "Get", kvrpcpb_pb2.GetRequest(context=ctx, key=b"c", version=1))
    assert "Api version" in get_resp.error.abort
    assert not get_resp.HasField("region_error")
    pw = call(
        scope,
        "Prewrite",
        kvrpcpb_pb2.PrewriteRequest(
            context=ctx, mutations=[mut(Op.Put, b"c")], primary_lock=b"c", start_version=1
        ),
    )
    assert "Api version" in pw.errors[0].abort
    scan = call(scope, "Scan", kvrpcpb_pb2.ScanRequest(context=ctx, start_key=b"c", limit=1))
    assert scan.error.abort
    assert scan.pairs[0].error.abort == scan.error.abort
    # ScanLock is exempt in TiKV (the GC worker scans whole regions).
    lock_scan = call(scope, "ScanLock", kvrpcpb_pb2.ScanLockRequest(context=ctx, max_version=1))
    assert lock_scan.region_error.HasField("epoch_not_match")
    assert scope.api_checks == ["get", "prewrite", "scan"]


def test_unknown_op_is_an_abort(scope: Scope) -> None:
    resp = prewrite(scope, [mut(Op.SharedLock, b"c")], ts(10))
    assert resp.errors[0].abort


def test_reads_raise_max_ts_unless_stale(scope: Scope, engine: MvccEngine) -> None:
    get(scope, b"c", ts(50))
    assert engine.max_ts == ts(50)
    stale = call(
        scope,
        "Get",
        kvrpcpb_pb2.GetRequest(context=scope.ctx(stale_read=True), key=b"c", version=ts(90)),
    )
    assert stale.not_found
    assert engine.max_ts == ts(50)
    call(
        scope,
        "BatchGet",
        kvrpcpb_pb2.BatchGetRequest(context=scope.ctx(), keys=[b"c"], version=ts(60)),
    )
    assert engine.max_ts == ts(60)
    call(
        scope,
        "Scan",
        kvrpcpb_pb2.ScanRequest(context=scope.ctx(), start_key=b"c", limit=1, version=ts(70)),
    )
    assert engine.max_ts == ts(70)


def test_need_commit_ts_ignores_committed_locks(scope: Scope) -> None:
    # TiKV reads through a committed lock only when no commit ts is wanted: the value in
    # the lock has none yet, so a read wanting one gets the lock (point_getter.rs
    # get_entry; storage/mod.rs test_batch_get_command_need_commit_ts).
    put(scope, b"c", b"old", ts(1), ts(2))
    assert not prewrite(scope, [mut(Op.Put, b"c", b"new")], ts(5)).errors
    ctx = scope.ctx(committed_locks=[ts(5)])
    through = call(scope, "Get", kvrpcpb_pb2.GetRequest(context=ctx, key=b"c", version=ts(9)))
    assert (through.value, through.commit_ts) == (b"new", 0)
    resp = call(
        scope,
        "Get",
        kvrpcpb_pb2.GetRequest(context=ctx, key=b"c", version=ts(9), need_commit_ts=True),
    )
    assert resp.error.locked.lock_version == ts(5)
    assert not resp.value
    batch = call(
        scope,
        "BatchGet",
        kvrpcpb_pb2.BatchGetRequest(context=ctx, keys=[b"c"], version=ts(9), need_commit_ts=True),
    )
    assert [p.error.locked.lock_version for p in batch.pairs] == [ts(5)]
    batch = call(
        scope, "BatchGet", kvrpcpb_pb2.BatchGetRequest(context=ctx, keys=[b"c"], version=ts(9))
    )
    assert [(p.key, p.value, p.commit_ts) for p in batch.pairs] == [(b"c", b"new", 0)]


def test_mvcc_get_by_key_and_start_ts(scope: Scope) -> None:
    put(scope, b"c", b"v" * 300, ts(1), ts(2))
    put(scope, b"c", b"short", ts(3), ts(4))
    assert not prewrite(scope, [mut(Op.Del, b"c")], ts(5)).errors
    resp = call(
        scope, "MvccGetByKey", kvrpcpb_pb2.MvccGetByKeyRequest(context=scope.ctx(), key=b"c")
    )
    info = resp.info
    assert (info.lock.type, info.lock.start_ts, info.lock.primary) == (Op.Del, ts(5), b"c")
    assert [(w.type, w.start_ts, w.commit_ts, w.short_value) for w in info.writes] == [
        (Op.Put, ts(3), ts(4), b"short"),
        (Op.Put, ts(1), ts(2), b""),
    ]
    assert [(v.start_ts, v.value) for v in info.values] == [(ts(1), b"v" * 300)]
    by_ts = call(
        scope,
        "MvccGetByStartTs",
        kvrpcpb_pb2.MvccGetByStartTsRequest(context=scope.ctx(), start_ts=ts(3)),
    )
    assert by_ts.key == b"c"
    assert len(by_ts.info.writes) == 2
    missing = call(
        scope,
        "MvccGetByStartTs",
        kvrpcpb_pb2.MvccGetByStartTsRequest(context=scope.ctx(), start_ts=ts(99)),
    )
    assert (missing.key, missing.HasField("info")) == (b"", True)
    outside = call(
        scope, "MvccGetByKey", kvrpcpb_pb2.MvccGetByKeyRequest(context=scope.ctx(), key=b"z")
    )
    assert outside.region_error.HasField("key_not_in_region")


def test_keys_above_max_key_size_are_refused(scope: Scope, engine: MvccEngine) -> None:
    big = b"c" + b"x" * 8200  # encoded: 9 bytes per started group of 8
    resp = prewrite(scope, [mut(Op.Put, b"c", b"1"), mut(Op.Put, big, b"1")], ts(10))
    assert "KeyTooLarge" in resp.errors[0].abort
    assert engine.lock_count() == 0
    fits = b"c" + b"x" * 900
    assert not prewrite(scope, [mut(Op.Put, fits, b"1")], ts(11)).errors
