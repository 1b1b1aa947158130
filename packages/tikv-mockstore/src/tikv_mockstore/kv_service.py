"""The transactional command handlers of the mock TiKV store.

Importing this module registers one handler per transactional ``tikvpb.Tikv`` command in
:data:`tikv_mockstore.handlers.HANDLERS` (``Get``, ``Scan``, ``BatchGet``, ``Prewrite``,
``Commit``, ``Cleanup``, ``BatchRollback``, ``ScanLock``, ``ResolveLock``, ``GC``,
``DeleteRange``, ``PessimisticLock``, ``PessimisticRollback``, ``TxnHeartBeat``,
``CheckTxnStatus``, ``CheckSecondaryLocks``, ``Flush``, ``BufferBatchGet``, and the debugging
commands ``MvccGetByKey`` / ``MvccGetByStartTs`` / ``GetLockWaitInfo``). ``Import`` is left
unregistered: TiKV does not implement ``KvImport`` either.

Order of checks, as in TiKV: the commands that run ``Storage::check_api_version`` (the
reads, Prewrite, Flush, PessimisticLock, DeleteRange) answer an API-version or key-mode
mismatch with an ``abort`` key error first; then every handler checks the request's region
with exactly the keys or ranges the command touches, and a region error is the whole answer
(``region_error``), as TiKV's ``extract_region_error`` makes it. Otherwise the request goes to
the cluster's :class:`~tikv_mockstore.mvcc.MvccEngine` and the result is shaped as
``src/server/service/kv.rs`` shapes it: reads and most writes put one key error in ``error``;
Prewrite, PessimisticLock, PessimisticRollback and Flush put a list in ``errors``; Cleanup
turns "already committed" into ``commit_version``; DeleteRange and the Mvcc commands report a
failure as text.

``PessimisticLock`` may return a :class:`concurrent.futures.Future` instead of a response
when the request waits for another transaction's lock (see :mod:`.kv_pessimistic`). The
lock-wait manager listens to the engine, so a command that releases a lock wakes the
requests waiting for it without the handlers' help.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from concurrent.futures import Future
from typing import Any

from tikv_proto import errorpb_pb2, kvrpcpb_pb2

from tikv_mockstore.handlers import StoreScope, handler, refused
from tikv_mockstore.kv_errors import (
    KEY_ERROR_TYPES,
    key_error,
    key_errors,
    kv_pair_to_pb,
    lock_info_to_pb,
    mutation_from_pb,
    wait_for_entry_to_pb,
)
from tikv_mockstore.kv_pessimistic import PessimisticLockRequest, lock_wait_manager
from tikv_mockstore.mvcc import (
    AssertionLevel,
    CommittedError,
    IsolationLevel,
    KvPair,
    MvccEngine,
    MvccInfo,
    Op,
    PessimisticAction,
    WriteType,
)
from tikv_mockstore.mvcc.types import SHORT_VALUE_MAX_LEN, enum_of

__all__ = ["MAX_KEY_SIZE"]


def _engine(scope: StoreScope) -> MvccEngine:
    engine = scope.engine
    if not isinstance(engine, MvccEngine):
        raise TypeError(f"the store's engine is not an MvccEngine: {type(engine).__name__}")
    return engine


def _read_options(ctx: kvrpcpb_pb2.Context, *, need_commit_ts: bool = False) -> dict[str, Any]:
    # The isolation level and the lock sets a reader sends: resolved_locks are bypassed,
    # committed_locks are read through (TiKV storage/mod.rs: bypass_locks / access_locks).
    # A read that wants commit timestamps ignores committed_locks: a value read through a
    # lock has no commit ts yet, so TiKV reports the lock instead (point_getter.rs
    # get_entry / load_and_check_lock with load_commit_ts).
    # Every read except a stale one raises max_ts (prepare_snap_ctx), inside the engine.
    resolved = ctx.resolved_locks
    committed = () if need_commit_ts else ctx.committed_locks
    return {
        "isolation_level": enum_of(IsolationLevel, ctx.isolation_level),
        "bypass_locks": frozenset(resolved) if resolved else _NO_TS,
        "access_locks": frozenset(committed) if committed else _NO_TS,
        "stale_read": ctx.stale_read,
    }


_NO_TS: frozenset[int] = frozenset()


def _clip_upper(upper: bytes, region_end: bytes) -> bytes:
    """``min(upper, region_end)`` where ``b""`` means unbounded."""
    if not region_end:
        return upper
    if not upper or upper > region_end:
        return region_end
    return upper


def _check_range(
    scope: StoreScope, ctx: kvrpcpb_pb2.Context, lower: bytes, upper: bytes, *, reverse: bool
) -> tuple[errorpb_pb2.Error | None, bytes, bytes]:
    """Check a scan of ``[lower, upper)`` (``b""`` upper: unbounded) and clip it to the region.

    TiKV's region snapshot clips the bound a scan does not start from to the region
    (``region_snapshot.rs`` ``update_lower_bound`` / ``update_upper_bound``) and refuses a
    seek key outside it (``should_seekable``, inclusive of the region end). A forward scan
    seeks ``lower``, which must lie in the region; a reverse scan seeks ``upper``, which may
    equal the region end. Returns the region error, or ``None`` and the clipped bounds.
    """
    region_start, region_end = scope.region_bounds(ctx, txn=True)
    if reverse:
        lower = max(lower, region_start)
        return scope.check(ctx, ranges=((upper, lower),), txn=True, reverse=True), lower, upper
    upper = _clip_upper(upper, region_end)
    return scope.check(ctx, ranges=((lower, upper),), txn=True), lower, upper


#: TiKV's ``storage.max-key-size`` (``src/storage/config.rs``): the largest encoded key a
#: Prewrite, Flush or PessimisticLock may carry.
MAX_KEY_SIZE = 8 * 1024


def _encoded_len(key: bytes) -> int:
    # Memcomparable encoding: every started group of 8 bytes becomes 9, plus a final group.
    return (len(key) // 8 + 1) * 9


def _key_size_error(keys: Sequence[bytes]) -> kvrpcpb_pb2.KeyError | None:
    """TiKV's ``check_key_size!``: an encoded key above :data:`MAX_KEY_SIZE` is refused.

    The write commands check it right after the API version, before touching the region;
    the error has no typed field, so it is an ``abort`` with TiKV's wording.
    """
    for key in keys:
        size = _encoded_len(key)
        if size > MAX_KEY_SIZE:
            return kvrpcpb_pb2.KeyError(
                abort=f"Error(KeyTooLarge {{ size: {size}, limit: {MAX_KEY_SIZE} }})"
            )
    return None


def _api_error(
    scope: StoreScope,
    ctx: kvrpcpb_pb2.Context,
    cmd: str,
    *,
    keys: Sequence[bytes] = (),
    ranges: Sequence[tuple[bytes, bytes]] = (),
) -> kvrpcpb_pb2.KeyError | None:
    """TiKV's ``check_api_version`` for the commands that run it, as an ``abort`` key error.

    TiKV checks the request's API version (and, under API v2, the keys' mode) before it
    touches the region, for the reads, Prewrite, Flush, PessimisticLock and DeleteRange;
    ``cmd`` is TiKV's ``CommandKind`` name used in the message.
    """
    text = scope.check_api_version(ctx, cmd=cmd, txn=True, keys=keys, ranges=ranges)
    return None if text is None else kvrpcpb_pb2.KeyError(abort=text)


def _write_refused(
    scope: StoreScope, resp: Any, ctx: kvrpcpb_pb2.Context, cmd: str, keys: Sequence[bytes]
) -> bool:
    """The checks of Prewrite / Flush / PessimisticLock before they touch data.

    The API version, then the key sizes (an ``abort`` key error in ``errors``), then the
    region (``region_error``); returns whether ``resp`` is already the answer.
    """
    key_err = _api_error(scope, ctx, cmd, keys=keys) or _key_size_error(keys)
    if key_err is not None:
        resp.errors.append(key_err)
        return True
    return refused(resp, scope.check(ctx, keys=keys, txn=True))


# --------------------------------------------------------------------------- reads


@handler("Get")
def kv_get(scope: StoreScope, req: kvrpcpb_pb2.GetRequest) -> kvrpcpb_pb2.GetResponse:
    """KvGet: ``value`` / ``not_found``, or the lock hiding the key in ``error``."""
    resp = kvrpcpb_pb2.GetResponse()
    ctx, key = req.context, req.key  # each protobuf field is read once on this hot path
    api_error = _api_error(scope, ctx, "get", keys=(key,))
    if api_error is not None:
        resp.error.CopyFrom(api_error)
        return resp
    if refused(resp, scope.check(ctx, keys=(key,), txn=True)):
        return resp
    try:
        found = _engine(scope).get_with_commit_ts(
            key, req.version, **_read_options(ctx, need_commit_ts=req.need_commit_ts)
        )
    except KEY_ERROR_TYPES as e:
        resp.error.CopyFrom(key_error(e))
        return resp
    if found is None:
        resp.not_found = True
    else:
        resp.value = found[0]
        if req.need_commit_ts:
            resp.commit_ts = found[1]
    return resp


def _pairs_to_pb(
    pairs: Sequence[KvPair], req: kvrpcpb_pb2.BatchGetRequest
) -> list[kvrpcpb_pb2.KvPair]:
    out = [kv_pair_to_pb(pair) for pair in pairs]
    if req.need_commit_ts:
        for pb, pair in zip(out, pairs, strict=True):
            if pair.error is None:
                pb.commit_ts = pair.commit_ts
    return out


@handler("BatchGet")
def kv_batch_get(
    scope: StoreScope, req: kvrpcpb_pb2.BatchGetRequest
) -> kvrpcpb_pb2.BatchGetResponse:
    """KvBatchGet: the found keys as ``pairs``; a locked key is a pair carrying the error."""
    resp = kvrpcpb_pb2.BatchGetResponse()
    api_error = _api_error(scope, req.context, "batch_get", keys=req.keys)
    if api_error is not None:
        resp.error.CopyFrom(api_error)
        resp.pairs.add().error.CopyFrom(api_error)
        return resp
    if refused(resp, scope.check(req.context, keys=req.keys, txn=True)):
        return resp
    engine = _engine(scope)
    try:
        pairs = engine.batch_get(
            list(req.keys),
            req.version,
            **_read_options(req.context, need_commit_ts=req.need_commit_ts),
        )
    except KEY_ERROR_TYPES as e:
        # kv.rs: the error goes to `error` and, for old clients, into a first pair too.
        resp.error.CopyFrom(key_error(e))
        resp.pairs.add().error.CopyFrom(resp.error)
        return resp
    resp.pairs.extend(_pairs_to_pb(pairs, req))
    return resp


@handler("Scan")
def kv_scan(scope: StoreScope, req: kvrpcpb_pb2.ScanRequest) -> kvrpcpb_pb2.ScanResponse:
    """KvScan: up to ``limit`` pairs inside the region, forward or reverse.

    For a reverse scan ``start_key`` is the exclusive upper bound and ``end_key`` the
    inclusive lower one. The scan never leaves the region: a client that sends an open
    ``end_key`` gets the region's keys only. ``sample_step`` > 1 returns every
    ``sample_step``-th key, as TiKV's scanner does.
    """
    resp = kvrpcpb_pb2.ScanResponse()
    api_error = _api_error(scope, req.context, "scan", ranges=((req.start_key, req.end_key),))
    if api_error is not None:
        resp.error.CopyFrom(api_error)
        resp.pairs.add().error.CopyFrom(api_error)
        return resp
    if req.reverse:
        region_error, lower, upper = _check_range(
            scope, req.context, req.end_key, req.start_key, reverse=True
        )
    else:
        region_error, lower, upper = _check_range(
            scope, req.context, req.start_key, req.end_key, reverse=False
        )
    if refused(resp, region_error):
        return resp
    engine = _engine(scope)
    step = max(req.sample_step, 1)
    try:
        if req.reverse:
            pairs = engine.scan(
                upper,
                lower,
                req.limit * step,
                req.version,
                key_only=req.key_only,
                reverse=True,
                **_read_options(req.context),
            )
        else:
            pairs = engine.scan(
                lower,
                upper,
                req.limit * step,
                req.version,
                key_only=req.key_only,
                **_read_options(req.context),
            )
    except KEY_ERROR_TYPES as e:
        resp.error.CopyFrom(key_error(e))
        resp.pairs.add().error.CopyFrom(resp.error)
        return resp
    if step > 1:
        pairs = pairs[::step]
    resp.pairs.extend(kv_pair_to_pb(p) for p in pairs[: req.limit])
    return resp


@handler("BufferBatchGet")
def kv_buffer_batch_get(
    scope: StoreScope, req: kvrpcpb_pb2.BufferBatchGetRequest
) -> kvrpcpb_pb2.BufferBatchGetResponse:
    """KvBufferBatchGet (pipelined DML): the transaction's own flushed values."""
    resp = kvrpcpb_pb2.BufferBatchGetResponse()
    api_error = _api_error(scope, req.context, "buffer_batch_get", keys=req.keys)
    if api_error is not None:
        resp.error.CopyFrom(api_error)
        return resp
    if refused(resp, scope.check(req.context, keys=req.keys, txn=True)):
        return resp
    try:
        pairs = _engine(scope).buffer_batch_get(list(req.keys), req.version)
    except KEY_ERROR_TYPES as e:
        resp.error.CopyFrom(key_error(e))
        return resp
    resp.pairs.extend(kv_pair_to_pb(p) for p in pairs)
    return resp


@handler("ScanLock")
def kv_scan_lock(
    scope: StoreScope, req: kvrpcpb_pb2.ScanLockRequest
) -> kvrpcpb_pb2.ScanLockResponse:
    """KvScanLock: the region's locks with ``start_ts <= max_version`` (limit 0: all).

    TiKV raises ``max_ts`` to ``max_version`` first, so that no async-commit or 1PC
    transaction commits below a GC safe point that was just scanned.
    """
    resp = kvrpcpb_pb2.ScanLockResponse()
    # An empty start_key is unbounded here (Key::from_raw_maybe_unbounded): the region start.
    start_key = req.start_key or scope.region_bounds(req.context, txn=True)[0]
    region_error, lower, upper = _check_range(
        scope, req.context, start_key, req.end_key, reverse=False
    )
    if refused(resp, region_error):
        return resp
    engine = _engine(scope)
    try:
        engine.update_max_ts(req.max_version)
        locks = engine.scan_lock(req.max_version, lower, upper, req.limit)
    except KEY_ERROR_TYPES as e:
        resp.error.CopyFrom(key_error(e))
        return resp
    resp.locks.extend(lock_info_to_pb(lock) for lock in locks)
    return resp


# --------------------------------------------------------------------------- writes


def _prewrite_args(req: kvrpcpb_pb2.PrewriteRequest) -> dict[str, Any]:
    mutations = [mutation_from_pb(m) for m in req.mutations]
    args: dict[str, Any] = {}
    if req.for_update_ts != 0:
        # commands/mod.rs zips mutations with pessimistic_actions: the shorter list wins.
        # Clients that send one action per mutation of the whole transaction to every
        # region (client-rust) rely on the extra actions being ignored.
        n = min(len(mutations), len(req.pessimistic_actions))
        mutations = mutations[:n]
        args["for_update_ts"] = req.for_update_ts
        args["pessimistic_actions"] = [
            enum_of(PessimisticAction, a) for a in req.pessimistic_actions[:n]
        ]
        args["for_update_ts_constraints"] = {
            c.index: c.expected_for_update_ts for c in req.for_update_ts_constraints if c.index < n
        }
    # TiKV passes the secondaries on only for async commit; clients may send them anyway.
    if req.use_async_commit:
        args["use_async_commit"] = True
        args["secondaries"] = list(req.secondaries)
    args.update(
        mutations=mutations,
        primary_lock=req.primary_lock,
        start_version=req.start_version,
        lock_ttl=req.lock_ttl,
        skip_constraint_check=req.skip_constraint_check,
        txn_size=req.txn_size,
        min_commit_ts=req.min_commit_ts,
        try_one_pc=req.try_one_pc,
        max_commit_ts=req.max_commit_ts,
        assertion_level=enum_of(AssertionLevel, req.assertion_level),
        is_retry_request=req.context.is_retry_request,
    )
    return args


@handler("Prewrite")
def kv_prewrite(
    scope: StoreScope, req: kvrpcpb_pb2.PrewriteRequest
) -> kvrpcpb_pb2.PrewriteResponse:
    """KvPrewrite: lock errors per key in ``errors``; ``min_commit_ts`` / ``one_pc_commit_ts``."""
    resp = kvrpcpb_pb2.PrewriteResponse()
    if _write_refused(scope, resp, req.context, "prewrite", [m.key for m in req.mutations]):
        return resp
    engine = _engine(scope)
    try:
        result = engine.prewrite(**_prewrite_args(req))
    except KEY_ERROR_TYPES as e:
        resp.errors.append(key_error(e))
        return resp
    resp.errors.extend(key_errors(result.locks))
    resp.min_commit_ts = result.min_commit_ts
    resp.one_pc_commit_ts = result.one_pc_commit_ts
    return resp


@handler("Commit")
def kv_commit(scope: StoreScope, req: kvrpcpb_pb2.CommitRequest) -> kvrpcpb_pb2.CommitResponse:
    """KvCommit: ``commit_version`` on success, else one key error in ``error``."""
    resp = kvrpcpb_pb2.CommitResponse()
    keys = list(req.keys)
    if refused(resp, scope.check(req.context, keys=keys, txn=True)):
        return resp
    engine = _engine(scope)
    try:
        resp.commit_version = engine.commit(keys, req.start_version, req.commit_version)
    except KEY_ERROR_TYPES as e:
        resp.error.CopyFrom(key_error(e))
    return resp


@handler("Cleanup")
def kv_cleanup(scope: StoreScope, req: kvrpcpb_pb2.CleanupRequest) -> kvrpcpb_pb2.CleanupResponse:
    """KvCleanup: roll back ``start_version`` on ``key``; if it committed, ``commit_version``.

    Without ``current_ts`` the lock is rolled back whatever its TTL (client-rust relies on
    this: it checks the TTL itself before sending Cleanup).
    """
    resp = kvrpcpb_pb2.CleanupResponse()
    if refused(resp, scope.check(req.context, keys=(req.key,), txn=True)):
        return resp
    engine = _engine(scope)
    try:
        engine.cleanup(req.key, req.start_version, req.current_ts)
    except CommittedError as e:
        resp.commit_version = e.commit_ts
    except KEY_ERROR_TYPES as e:
        resp.error.CopyFrom(key_error(e))
    return resp


@handler("BatchRollback")
def kv_batch_rollback(
    scope: StoreScope, req: kvrpcpb_pb2.BatchRollbackRequest
) -> kvrpcpb_pb2.BatchRollbackResponse:
    """KvBatchRollback: roll the transaction back on every key; one error in ``error``."""
    resp = kvrpcpb_pb2.BatchRollbackResponse()
    if refused(resp, scope.check(req.context, keys=req.keys, txn=True)):
        return resp
    engine = _engine(scope)
    try:
        engine.batch_rollback(list(req.keys), req.start_version)
    except KEY_ERROR_TYPES as e:
        resp.error.CopyFrom(key_error(e))
    return resp


@handler("ResolveLock")
def kv_resolve_lock(
    scope: StoreScope, req: kvrpcpb_pb2.ResolveLockRequest
) -> kvrpcpb_pb2.ResolveLockResponse:
    """KvResolveLock: commit or roll back a transaction's locks.

    With ``keys``: only those keys (resolve-lock-lite). Without: every lock of the
    transaction(s) in the region, where ``start_version`` > 0 names one transaction and
    ``commit_version`` its fate (0: roll back), else ``txn_infos`` lists several
    (``commands/mod.rs``: ``start_version`` wins when set).
    """
    resp = kvrpcpb_pb2.ResolveLockResponse()
    engine = _engine(scope)
    if req.keys:
        if refused(resp, scope.check(req.context, keys=req.keys, txn=True)):
            return resp
        start_key = end_key = b""
    else:
        if refused(resp, scope.check(req.context, txn=True)):
            return resp
        start_key, end_key = scope.region_bounds(req.context, txn=True)
    txn_infos = None
    if req.start_version == 0:
        txn_infos = {info.txn: info.status for info in req.txn_infos}
        if not txn_infos and not req.keys:
            # TiKV scans the region with an empty status map: nothing to resolve.
            return resp
    try:
        engine.resolve_lock(
            req.start_version,
            req.commit_version,
            list(req.keys),
            txn_infos=txn_infos,
            start_key=start_key,
            end_key=end_key,
        )
    except KEY_ERROR_TYPES as e:
        resp.error.CopyFrom(key_error(e))
    return resp


@handler("PessimisticLock")
def kv_pessimistic_lock(
    scope: StoreScope, req: kvrpcpb_pb2.PessimisticLockRequest
) -> kvrpcpb_pb2.PessimisticLockResponse | Future[kvrpcpb_pb2.PessimisticLockResponse]:
    """KvPessimisticLock: lock the keys, waiting for other transactions' locks if allowed.

    Returns the response, or a Future of it when the request waits for a lock (see
    :class:`~tikv_mockstore.kv_pessimistic.PessimisticLockRequest` for the shapes).
    """
    resp = kvrpcpb_pb2.PessimisticLockResponse()
    keys = [m.key for m in req.mutations]
    if _write_refused(scope, resp, req.context, "acquire_pessimistic_lock", keys):
        return resp
    return PessimisticLockRequest(_engine(scope), req, store_id=scope.store_id).start()


@handler("PessimisticRollback")
def kv_pessimistic_rollback(
    scope: StoreScope, req: kvrpcpb_pb2.PessimisticRollbackRequest
) -> kvrpcpb_pb2.PessimisticRollbackResponse:
    """KVPessimisticRollback: drop the transaction's pessimistic locks; errors in ``errors``.

    Without keys, every pessimistic lock of the transaction in the region with
    ``for_update_ts <=`` the request's is dropped (``pessimistic_rollback_read_phase.rs``).
    """
    resp = kvrpcpb_pb2.PessimisticRollbackResponse()
    # Without keys only the region itself is checked.
    if refused(resp, scope.check(req.context, keys=req.keys, txn=True)):
        return resp
    engine = _engine(scope)
    try:
        keys: Collection[bytes] = list(req.keys)
        if not keys:
            start_key, end_key = scope.region_bounds(req.context, txn=True)
            keys = [
                lock.key
                for lock in engine.scan_lock(req.start_version, start_key, end_key)
                if lock.lock_version == req.start_version
                and lock.lock_type is Op.PESSIMISTIC_LOCK
                and lock.lock_for_update_ts <= req.for_update_ts
            ]
        engine.pessimistic_rollback(list(keys), req.start_version, req.for_update_ts)
    except KEY_ERROR_TYPES as e:
        resp.errors.append(key_error(e))
    return resp


@handler("TxnHeartBeat")
def kv_txn_heart_beat(
    scope: StoreScope, req: kvrpcpb_pb2.TxnHeartBeatRequest
) -> kvrpcpb_pb2.TxnHeartBeatResponse:
    """KvTxnHeartBeat: extend the primary lock's TTL; the resulting TTL in ``lock_ttl``."""
    resp = kvrpcpb_pb2.TxnHeartBeatResponse()
    if refused(resp, scope.check(req.context, keys=(req.primary_lock,), txn=True)):
        return resp
    try:
        resp.lock_ttl = _engine(scope).txn_heart_beat(
            req.primary_lock, req.start_version, req.advise_lock_ttl, req.min_commit_ts
        )
    except KEY_ERROR_TYPES as e:
        resp.error.CopyFrom(key_error(e))
    return resp


@handler("CheckTxnStatus")
def kv_check_txn_status(
    scope: StoreScope, req: kvrpcpb_pb2.CheckTxnStatusRequest
) -> kvrpcpb_pb2.CheckTxnStatusResponse:
    """KvCheckTxnStatus: ``action``, and ``commit_version`` or ``lock_ttl`` + ``lock_info``.

    As in kv.rs, ``lock_info`` (of the primary lock) is set only while the transaction is
    still uncommitted and locked.
    """
    resp = kvrpcpb_pb2.CheckTxnStatusResponse()
    if refused(resp, scope.check(req.context, keys=(req.primary_key,), txn=True)):
        return resp
    engine = _engine(scope)
    try:
        status = engine.check_txn_status(
            req.primary_key,
            req.lock_ts,
            req.caller_start_ts,
            req.current_ts,
            rollback_if_not_exist=req.rollback_if_not_exist,
            force_sync_commit=req.force_sync_commit,
            resolving_pessimistic_lock=req.resolving_pessimistic_lock,
            verify_is_primary=req.verify_is_primary,
        )
    except KEY_ERROR_TYPES as e:
        resp.error.CopyFrom(key_error(e))
        return resp
    resp.action = kvrpcpb_pb2.Action.ValueType(status.action)
    resp.commit_version = status.commit_version
    if not status.is_committed and status.lock_info is not None:
        resp.lock_ttl = status.lock_ttl
        resp.lock_info.CopyFrom(lock_info_to_pb(status.lock_info))
    return resp


@handler("CheckSecondaryLocks")
def kv_check_secondary_locks(
    scope: StoreScope, req: kvrpcpb_pb2.CheckSecondaryLocksRequest
) -> kvrpcpb_pb2.CheckSecondaryLocksResponse:
    """KvCheckSecondaryLocks: the locks if all are held, else ``commit_ts`` (0: rolled back)."""
    resp = kvrpcpb_pb2.CheckSecondaryLocksResponse()
    if refused(resp, scope.check(req.context, keys=req.keys, txn=True)):
        return resp
    engine = _engine(scope)
    try:
        status = engine.check_secondary_locks(list(req.keys), req.start_version)
    except KEY_ERROR_TYPES as e:
        resp.error.CopyFrom(key_error(e))
        return resp
    resp.locks.extend(lock_info_to_pb(lock) for lock in status.locks)
    resp.commit_ts = status.commit_ts
    return resp


@handler("Flush")
def kv_flush(scope: StoreScope, req: kvrpcpb_pb2.FlushRequest) -> kvrpcpb_pb2.FlushResponse:
    """KvFlush (pipelined DML): write a generation of locks; lock errors in ``errors``."""
    resp = kvrpcpb_pb2.FlushResponse()
    if _write_refused(scope, resp, req.context, "flush", [m.key for m in req.mutations]):
        return resp
    engine = _engine(scope)
    try:
        locked = engine.flush(
            [mutation_from_pb(m) for m in req.mutations],
            req.primary_key,
            req.start_ts,
            req.generation,
            req.lock_ttl,
            assertion_level=enum_of(AssertionLevel, req.assertion_level),
        )
    except KEY_ERROR_TYPES as e:
        resp.errors.append(key_error(e))
        return resp
    resp.errors.extend(key_errors(locked))
    return resp


@handler("GC")
def kv_gc(scope: StoreScope, req: kvrpcpb_pb2.GCRequest) -> kvrpcpb_pb2.GCResponse:
    """KvGC: drop the region's versions that no read at or after ``safe_point`` can see.

    Real TiKV answers this RPC with UNIMPLEMENTED: its GC worker collects garbage after the
    safe point is published to PD, and so does the mock's (:mod:`tikv_mockstore.gc_worker`).
    The mock still serves it, for clients that GC region by region with it.
    """
    resp = kvrpcpb_pb2.GCResponse()
    if refused(resp, scope.check(req.context, txn=True)):
        return resp
    start_key, end_key = scope.region_bounds(req.context, txn=True)
    try:
        _engine(scope).gc(req.safe_point, start_key, end_key)
    except KEY_ERROR_TYPES as e:
        resp.error.CopyFrom(key_error(e))
    return resp


@handler("DeleteRange")
def kv_delete_range(
    scope: StoreScope, req: kvrpcpb_pb2.DeleteRangeRequest
) -> kvrpcpb_pb2.DeleteRangeResponse:
    """KvDeleteRange: remove every version and lock in ``[start_key, end_key)`` of the region.

    The range is clipped to the region (an empty ``end_key`` reaches the region's end), so
    one region's request never deletes another region's data. ``notify_only`` deletes
    nothing (TiKV only tells its observers). A failure is the error's text in ``error``.
    """
    resp = kvrpcpb_pb2.DeleteRangeResponse()
    api_error = _api_error(
        scope, req.context, "delete_range", ranges=((req.start_key, req.end_key),)
    )
    if api_error is not None:
        resp.error = api_error.abort
        return resp
    region_error, start_key, end_key = _check_range(
        scope, req.context, req.start_key, req.end_key, reverse=False
    )
    if refused(resp, region_error):
        return resp
    if req.notify_only:
        return resp
    engine = _engine(scope)
    try:
        engine.delete_range(start_key, end_key)
    except KEY_ERROR_TYPES as e:
        resp.error = f"{type(e).__name__}: {e}"
    return resp


# --------------------------------------------------------------------------- debugging


@handler("GetLockWaitInfo")
def kv_get_lock_wait_info(
    scope: StoreScope, req: kvrpcpb_pb2.GetLockWaitInfoRequest
) -> kvrpcpb_pb2.GetLockWaitInfoResponse:
    """GetLockWaitInfo: the wait-for edges of the requests waiting on this store.

    TiKV answers from its waiter table without any region check (``kv.rs``
    ``get_lock_wait_info``).
    """
    resp = kvrpcpb_pb2.GetLockWaitInfoResponse()
    entries = lock_wait_manager(_engine(scope)).wait_for_entries(scope.store_id)
    resp.entries.extend(wait_for_entry_to_pb(e) for e in entries)
    return resp


_WRITE_OP = {
    WriteType.PUT: kvrpcpb_pb2.Put,
    WriteType.DELETE: kvrpcpb_pb2.Del,
    WriteType.LOCK: kvrpcpb_pb2.Lock,
    WriteType.ROLLBACK: kvrpcpb_pb2.Rollback,
}


def _short_value(value: bytes | None) -> bytes:
    # Values up to SHORT_VALUE_MAX_LEN live in the lock / write record; longer ones are in
    # the default column family and show up in MvccInfo.values instead.
    if value is None or len(value) > SHORT_VALUE_MAX_LEN:
        return b""
    return value


def _mvcc_info_to_pb(info: MvccInfo) -> kvrpcpb_pb2.MvccInfo:
    """``MvccInfo::into_proto`` (``src/storage/types.rs``): the fields TiKV fills."""
    pb = kvrpcpb_pb2.MvccInfo()
    if info.lock is not None:
        pb.lock.CopyFrom(
            kvrpcpb_pb2.MvccLock(
                type=kvrpcpb_pb2.Op.ValueType(info.lock.lock_type.to_op()),
                start_ts=info.lock.start_ts,
                primary=info.lock.primary,
                short_value=_short_value(info.lock.value),
            )
        )
    for commit_ts, write in info.writes:
        pb.writes.add(
            type=_WRITE_OP[write.write_type],
            start_ts=write.start_ts,
            commit_ts=commit_ts,
            short_value=_short_value(write.value),
            has_overlapped_rollback=write.has_overlapped_rollback,
        )
    for start_ts, value in info.values:
        pb.values.add(start_ts=start_ts, value=value)
    return pb


@handler("MvccGetByKey")
def kv_mvcc_get_by_key(
    scope: StoreScope, req: kvrpcpb_pb2.MvccGetByKeyRequest
) -> kvrpcpb_pb2.MvccGetByKeyResponse:
    """MvccGetByKey: the key's lock, writes (newest first) and long values."""
    resp = kvrpcpb_pb2.MvccGetByKeyResponse()
    if refused(resp, scope.check(req.context, keys=(req.key,), txn=True)):
        return resp
    try:
        resp.info.CopyFrom(_mvcc_info_to_pb(_engine(scope).mvcc_by_key(req.key)))
    except KEY_ERROR_TYPES as e:
        resp.error = f"{type(e).__name__}: {e}"
    return resp


@handler("MvccGetByStartTs")
def kv_mvcc_get_by_start_ts(
    scope: StoreScope, req: kvrpcpb_pb2.MvccGetByStartTsRequest
) -> kvrpcpb_pb2.MvccGetByStartTsResponse:
    """MvccGetByStartTs: a key the transaction touched and its MVCC info (empty if none).

    The engine looks for the transaction's smallest key in the whole cluster; a key outside
    this region counts as "not found here".
    """
    resp = kvrpcpb_pb2.MvccGetByStartTsResponse()
    if refused(resp, scope.check(req.context, txn=True)):
        return resp
    start_key, end_key = scope.region_bounds(req.context, txn=True)
    try:
        info = _engine(scope).mvcc_by_start_ts(req.start_ts)
    except KEY_ERROR_TYPES as e:
        resp.error = f"{type(e).__name__}: {e}"
        return resp
    inside = info is not None and info.key >= start_key and (not end_key or info.key < end_key)
    if info is not None and inside:
        resp.key = info.key
        resp.info.CopyFrom(_mvcc_info_to_pb(info))
    else:
        resp.info.CopyFrom(kvrpcpb_pb2.MvccInfo())
    return resp
