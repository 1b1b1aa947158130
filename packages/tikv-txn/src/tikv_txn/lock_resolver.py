"""The lock resolver: settle the locks of other transactions that block a read or write.

Percolator leaves a lock on every key a transaction prewrote until the transaction is
committed or rolled back; a client that crashed leaves them forever. Whoever meets such a
lock asks the transaction's *primary* key for the outcome and acts on it, as client-go's
``txnkv/txnlock/lock_resolver.go`` does:

1. **Status** — ``CheckTxnStatus`` on the primary (:meth:`LockResolver.get_txn_status`)
   with the caller's start ts (TiKV may push the lock's ``min_commit_ts`` past a reader so
   the reader can ignore it) and the current ts (TiKV rolls back a primary whose TTL has
   expired). A missing primary gets the ``rollback_if_not_exist`` rules (TxnNotFound:
   retry with rollback once the lock expired, treat a pessimistic lock as alive, or back
   off and retry). Final outcomes are cached (2048 transactions, client-go
   ``ResolvedCacheSize``).
2. **Decision** — :func:`tikv_txn.policy.decide_lock_resolution`: wait for a live
   transaction, read past a pushed one, or clean up.
3. **Cleanup** — ``ResolveLock`` with the commit ts (or 0 to roll back): only the key when
   the transaction is small (``txn_size`` below 512, "lite"), else the whole region once
   per transaction; a pessimistic lock gets ``PessimisticRollback``; an async-commit
   transaction whose primary expired is settled by ``CheckSecondaryLocks`` on every
   secondary (:class:`tikv_txn.policy.AsyncResolveData`) and resolved key by key, or,
   when a secondary turns out not to be an async-commit lock, checked again with
   ``force_sync_commit``.

All keys here are the keys TiKV stores (keyspace-prefixed under API v2).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tikv_pd import observability as _obs
from tikv_pd.backoff import (
    ASYNC_RESOLVE_LOCK_MAX_BACKOFF,
    TXN_LOCK,
    TXN_NOT_FOUND,
    Backoffer,
)
from tikv_pd.errors import LockInfo, PrimaryMismatchError, TxnError, TxnNotFoundError
from tikv_pd.region_cache import Region
from tikv_pd.request import KeysSharder, RequestOptions
from tikv_proto import kvrpcpb_pb2

from tikv_txn._kv import lock_from_pb
from tikv_txn.policy import (
    Action,
    AsyncResolveData,
    LockCleanup,
    LockVisibility,
    TxnNotFoundAction,
    TxnStatus,
    check_txn_status_current_ts,
    decide_lock_resolution,
    decide_on_txn_not_found,
    lock_ms_until_expired,
)

if TYPE_CHECKING:
    from tikv_txn._runtime import TxnRuntime

__all__ = ["ASYNC_RESOLVE_LOCK_LIMIT", "RESOLVED_CACHE_SIZE", "LockResolver", "ResolveResult"]

_log = logging.getLogger("tikv.txn.lock_resolver")


def _count(action: str) -> None:
    """Count a lock resolver step in ``tikv_client_go_lock_resolver_actions_total``.

    The actions and where they are counted follow client-go's ``txnlock/lock_resolver.go``.
    """
    metrics = _obs.metrics
    if metrics is not None:
        metrics.count_lock_resolve(action)


#: Keys grouped by region, one request per region (no size limit).
_BY_KEYS: KeysSharder[bytes] = KeysSharder()

#: Transactions whose final status is remembered (client-go ``ResolvedCacheSize``).
RESOLVED_CACHE_SIZE = 2048

#: Readers' lock cleanups running in the background at once, at most (client-go
#: ``AsyncResolveLockSemaphoreLimit``, ``txnlock/lock_resolver.go``).
ASYNC_RESOLVE_LOCK_LIMIT = 10_000

_PESSIMISTIC_LOCK_TYPES = (5, 8)  # kvrpcpb.Op PessimisticLock, SharedPessimisticLock


@dataclass(slots=True)
class ResolveResult:
    """What :meth:`LockResolver.resolve_locks` achieved.

    Attributes:
        ms_before_expired: The shortest time, in ms, until a lock that still blocks the
            caller expires (0: nothing blocks any more; retry at once).
        ignored: Start ts of transactions whose locks the caller may read past (rolled
            back, committed after the reader, or pushed beyond it).
        committed: Start ts of transactions committed before the reader (their values
            are visible once the locks are resolved).
        resolved: How many locks were cleaned up by this call (or scheduled to be).
        resolved_in_background: How many of those a background task resolves (a
            reader's: it reads past or through them meanwhile, see ``ignored`` and
            ``committed``).

    """

    ms_before_expired: int = 0
    ignored: set[int] = field(default_factory=set)
    committed: set[int] = field(default_factory=set)
    resolved: int = 0
    resolved_in_background: int = 0


@dataclass(slots=True)
class _LiteBatch:
    """The keys of one finished transaction that one resolve_locks call settles lite."""

    lock: LockInfo
    commit_ts: int
    keys: list[bytes]


class _NotAsyncCommitError(Exception):
    """A secondary of an async-commit transaction is a normal lock: check with force."""


class LockResolver:
    """Resolves locks for one client (client-go ``LockResolver``).

    Args:
        runtime: The client's shared state (pipeline, oracle, options).

    """

    def __init__(self, runtime: TxnRuntime) -> None:
        self._rt = runtime
        self._resolved: OrderedDict[int, TxnStatus] = OrderedDict()
        #: Counters for tests and metrics: CheckTxnStatus / ResolveLock / async checks.
        self.stats: dict[str, int] = {
            "check_txn_status": 0,
            "resolve_lock": 0,
            "check_secondary_locks": 0,
            "pessimistic_rollback": 0,
            "cache_hits": 0,
            "fresh_current_ts": 0,
            "resolve_in_background": 0,
        }
        self._background_resolves = 0
        # What the background cleanups running now resolve: (txn, keys). A reader that
        # meets the same lock again before its cleanup finished (a read wanting commit
        # timestamps cannot read through it, so it retries) joins the running cleanup.
        self._background_work: set[tuple[int, tuple[bytes, ...]]] = set()

    # -- cache -------------------------------------------------------------------------

    def cached_status(self, txn_id: int) -> TxnStatus | None:
        """The cached final status of transaction ``txn_id``, if any."""
        return self._resolved.get(txn_id)

    def _save_resolved(self, txn_id: int, status: TxnStatus) -> None:
        if not status.is_determined:
            return
        self._resolved[txn_id] = status
        self._resolved.move_to_end(txn_id)
        while len(self._resolved) > RESOLVED_CACHE_SIZE:
            self._resolved.popitem(last=False)

    # -- status ------------------------------------------------------------------------

    async def get_txn_status(
        self,
        bo: Backoffer,
        txn_id: int,
        primary: bytes,
        *,
        caller_start_ts: int,
        current_ts: int,
        rollback_if_not_exist: bool,
        force_sync_commit: bool = False,
        resolving_pessimistic_lock: bool = False,
        options: RequestOptions | None = None,
    ) -> TxnStatus:
        """Send ``CheckTxnStatus`` for ``txn_id`` to its primary key's region.

        Args:
            bo: The caller's Backoffer (region errors and transport failures retry on it).
            txn_id: The transaction's start ts.
            primary: Its primary key.
            caller_start_ts: The start ts of the reader / writer that met the lock: TiKV
                pushes a live lock's ``min_commit_ts`` beyond it (0: never push).
            current_ts: Now (a TSO ts): TiKV rolls back a primary whose TTL expired.
            rollback_if_not_exist: Write a rollback record when neither a lock nor a
                commit exists (settles a transaction whose primary was never written).
            force_sync_commit: Treat an async-commit primary as a normal one.
            resolving_pessimistic_lock: The lock met is a pessimistic lock.
            options: Request options of the RPC (default: the client's,
                :attr:`TxnRuntime.base_options`); a transaction passes its own, with its
                interceptor chain (:meth:`TxnRuntime.resolve_options`).

        Raises:
            TxnNotFoundError: No lock, no commit record, and no rollback was requested.
            TxnError: Another key error from TiKV.

        """
        cached = self._resolved.get(txn_id)
        if cached is not None:
            self.stats["cache_hits"] += 1
            return cached
        req = kvrpcpb_pb2.CheckTxnStatusRequest(
            primary_key=primary,
            lock_ts=txn_id,
            caller_start_ts=caller_start_ts,
            current_ts=current_ts,
            rollback_if_not_exist=rollback_if_not_exist,
            force_sync_commit=force_sync_commit,
            resolving_pessimistic_lock=resolving_pessimistic_lock,
            verify_is_primary=True,
        )
        self.stats["check_txn_status"] += 1
        _count("query_txn_status")
        resp = await self._rt.sender.call_key(
            "CheckTxnStatus",
            primary,
            req,
            bo=bo,
            options=self._rt.base_options if options is None else options,
        )
        if resp.HasField("error"):
            raise self._rt.key_error(resp.error, start_ts=txn_id)
        if resp.lock_ttl == 0:
            _count(
                "query_txn_status_committed"
                if resp.commit_version
                else "query_txn_status_rolled_back"
            )
        status = TxnStatus(
            ttl=resp.lock_ttl,
            commit_ts=resp.commit_version,
            action=Action(int(resp.action)),
            primary_lock=lock_from_pb(resp.lock_info) if resp.HasField("lock_info") else None,
        )
        self._save_resolved(txn_id, status)
        return status

    async def _current_ts(self, lock: LockInfo) -> int:
        """The ``current_ts`` for CheckTxnStatus on ``lock``'s primary.

        client-go sends the low-resolution ts: never ahead of PD, so a lock is never
        taken for expired too early, but up to one refresh interval (2 s) behind. A lock
        whose TTL ran out in that window still looks alive to TiKV, and a writer blocked
        by it would re-check it, sleeping at most the TTL the stale ts leaves, until the
        cache refreshes: with short TTLs, dozens of CheckTxnStatus per lock. So when the
        cached ts advanced by the local time elapsed since it arrived says the lock has
        expired but the cached ts alone does not, a fresh TSO is fetched instead: the
        check then sees the true time, and still never a time ahead of PD.
        """
        oracle = self._rt.oracle
        current = await oracle.get_low_resolution_timestamp()
        # TiKV rolls a lock back only once ``physical(current_ts)`` is *past* its
        # ``physical(start_ts) + ttl`` (``check_txn_status``: strictly greater), so the
        # comparison is TiKV's: a cached ts exactly at the expiry still shows the lock
        # alive, and must not stop the fresh fetch (the cache stays there until refreshed).
        if (
            lock.lock_ttl != 0
            and lock_ms_until_expired(lock.lock_version, lock.lock_ttl, current) >= 0
        ):
            estimated_now = await oracle.get_stale_timestamp(0)
            if lock_ms_until_expired(lock.lock_version, lock.lock_ttl, estimated_now) < 0:
                self.stats["fresh_current_ts"] += 1
                current = await oracle.get_timestamp()
        return check_txn_status_current_ts(lock, current)

    async def _status_from_lock(
        self,
        bo: Backoffer,
        lock: LockInfo,
        caller_start_ts: int,
        force_sync_commit: bool,
        options: RequestOptions,
    ) -> tuple[TxnStatus, int]:
        """CheckTxnStatus for ``lock`` with client-go's TxnNotFound rules (getTxnStatusFromLock)."""
        rollback = False
        while True:
            current_ts = await self._current_ts(lock)
            try:
                status = await self.get_txn_status(
                    bo,
                    lock.lock_version,
                    lock.primary_lock,
                    caller_start_ts=caller_start_ts,
                    current_ts=current_ts,
                    rollback_if_not_exist=rollback,
                    force_sync_commit=force_sync_commit,
                    resolving_pessimistic_lock=lock.lock_type in _PESSIMISTIC_LOCK_TYPES,
                    options=options,
                )
                return status, current_ts
            except PrimaryMismatchError:
                if lock.lock_type not in _PESSIMISTIC_LOCK_TYPES:
                    raise
                # The lock names as primary a key that is now a secondary of the same
                # transaction (a stale pessimistic lock left by a failed lock call,
                # whose primary was chosen again later): it belongs to no live primary,
                # so it is rolled back (client-go resolves primaryMismatch on a
                # pessimistic lock with an empty, rolled-back status). Not cached: the
                # transaction itself may well commit.
                return TxnStatus(), current_ts
            except TxnNotFoundError as exc:
                action = decide_on_txn_not_found(lock, current_ts)
                if action is TxnNotFoundAction.RETRY_WITH_ROLLBACK:
                    rollback = True
                elif action is TxnNotFoundAction.TREAT_AS_ALIVE:
                    return TxnStatus(ttl=lock.lock_ttl), current_ts
                else:
                    # The primary may not be prewritten yet: its secondaries raced ahead.
                    await bo.backoff(TXN_NOT_FOUND, exc)

    # -- resolution --------------------------------------------------------------------

    async def resolve_locks(
        self,
        bo: Backoffer,
        caller_start_ts: int,
        locks: Sequence[LockInfo],
        *,
        for_read: bool,
        lite: bool = False,
        pessimistic_region_resolve: bool = False,
        options: RequestOptions | None = None,
    ) -> ResolveResult:
        """Settle ``locks`` met by a reader or writer (client-go ``ResolveLocks``).

        Args:
            bo: The caller's Backoffer.
            caller_start_ts: The caller's start ts (a reader's snapshot ts).
            locks: The locks the caller met.
            for_read: The caller is a reader (may read past pushed / later-committed
                transactions instead of waiting).
            lite: Resolve only the locked keys, never whole regions.
            pessimistic_region_resolve: Roll back a dead transaction's pessimistic locks
                region by region (``PessimisticRollback`` without keys), once per region,
                instead of key by key (client-go ``PessimisticRegionResolve``, set by the
                pessimistic lock and prewrite paths).
            options: Request options of every RPC the resolution sends (default: the
                client's). A transaction or snapshot passes options carrying its
                interceptor chain (:meth:`TxnRuntime.resolve_options`), as client-go's
                resolver sends with the caller's context and so its interceptor.

        Returns:
            How long the caller should wait before retrying, and what it may ignore.

        """
        _count("resolve")
        result = ResolveResult()
        cleaned: dict[int, set[int]] = {}
        pessimistic_cleaned: dict[int, set[int]] | None = {} if pessimistic_region_resolve else None
        opts = self._rt.base_options if options is None else options
        lite_batches: dict[int, _LiteBatch] = {}
        for lock in locks:
            await self._resolve_one(
                bo,
                lock,
                caller_start_ts,
                for_read,
                lite,
                cleaned,
                result,
                opts,
                pessimistic_cleaned,
                lite_batches,
            )
        # client-go resolveLocks: the lite cleanups are sent after the status pass, so
        # the locks one transaction left on several keys cost one ResolveLock per
        # region (with those keys) instead of one per key.
        for batch in lite_batches.values():
            await self._resolve_lite_batch(bo, batch, for_read, result, opts)
        if result.ms_before_expired > 0:
            _count("wait_expired")
        return result

    async def resolve_for_write(
        self,
        bo: Backoffer,
        caller_start_ts: int,
        locks: Sequence[LockInfo],
        *,
        options: RequestOptions | None = None,
    ) -> None:
        """Resolve the locks a write met; back off (``txnLock``) while one still blocks it.

        The sleep is capped by the time until the first blocking lock expires (client-go
        ``prewrite.go``: ``ResolveLocks`` then ``BackoffWithCfgAndMaxSleep(BoTxnLock)``).
        """
        res = await self.resolve_locks(bo, caller_start_ts, locks, for_read=False, options=options)
        if res.ms_before_expired > 0:
            await bo.backoff(
                TXN_LOCK, self._rt.locked_error(locks[0]), max_sleep_ms=res.ms_before_expired
            )

    async def _resolve_one(
        self,
        bo: Backoffer,
        lock: LockInfo,
        caller_start_ts: int,
        for_read: bool,
        lite: bool,
        cleaned: dict[int, set[int]],
        result: ResolveResult,
        options: RequestOptions,
        pessimistic_cleaned: dict[int, set[int]] | None = None,
        lite_batches: dict[int, _LiteBatch] | None = None,
    ) -> None:
        force = False
        while True:
            status, current_ts = await self._status_from_lock(
                bo, lock, caller_start_ts, force, options
            )
            decision = decide_lock_resolution(
                lock,
                status,
                caller_start_ts=caller_start_ts,
                current_ts=current_ts,
                for_read=for_read,
                force_sync_commit=force,
                lite=lite,
                lite_threshold=self._rt.config.resolve_lock_lite_threshold,
            )
            if decision.visibility is LockVisibility.IGNORE:
                result.ignored.add(lock.lock_version)
            elif decision.visibility is LockVisibility.ACCESS:
                result.committed.add(lock.lock_version)
            cleanup = decision.cleanup
            if cleanup is not LockCleanup.NONE:
                _count("expired")
            elif decision.visibility is LockVisibility.BLOCKED:
                _count("not_expired")
            if cleanup is LockCleanup.NONE:
                if decision.visibility is LockVisibility.BLOCKED:
                    wait = max(decision.ms_before_expired, 1)
                    if result.ms_before_expired == 0 or wait < result.ms_before_expired:
                        result.ms_before_expired = wait
                return
            if cleanup in (LockCleanup.CHECK_SECONDARIES, LockCleanup.RESOLVE_ASYNC_COMMIT):
                try:
                    final = await self._resolve_async_commit(lock, status, options)
                except _NotAsyncCommitError:
                    # The transaction fell back to 2PC after prewriting part of its
                    # keys: decide on the primary as a normal lock (client-go retries
                    # with forceSyncCommit).
                    force = True
                    continue
                # What the caller may do is decided by the outcome, as client-go classifies
                # the status resolveAsyncCommitLock returns: committed before the caller
                # -> read the value, committed after it or rolled back -> read past it.
                if final.is_committed and final.commit_ts <= caller_start_ts:
                    result.committed.add(lock.lock_version)
                elif final.is_committed or final.is_rolled_back:
                    result.ignored.add(lock.lock_version)
                result.resolved += 1
                return
            if decision.skip_rpc:
                # CheckTxnStatus already settled this lock (it is the primary).
                result.resolved += 1
                return
            if cleanup is LockCleanup.PESSIMISTIC_ROLLBACK:
                await self._pessimistic_rollback(bo, lock, options, pessimistic_cleaned)
            elif decision.lite and lite_batches is not None:
                batch = lite_batches.get(lock.lock_version)
                if batch is None:
                    lite_batches[lock.lock_version] = _LiteBatch(
                        lock, decision.commit_ts, [lock.key]
                    )
                elif lock.key not in batch.keys:
                    batch.keys.append(lock.key)
            elif for_read and self._in_background(
                lock.lock_version,
                (lock.key,),
                functools.partial(
                    self._resolve_regular,
                    lock=lock,
                    commit_ts=decision.commit_ts,
                    lite=decision.lite,
                    cleaned={},
                    options=options,
                ),
            ):
                # The reader goes on at once: TiKV skips the lock of a rolled-back (or
                # later-committed) transaction through resolved_locks and reads through
                # the lock of one committed before it through committed_locks.
                result.resolved_in_background += 1
            else:
                await self._resolve_regular(
                    bo, lock, decision.commit_ts, decision.lite, cleaned, options
                )
            result.resolved += 1
            return

    async def _resolve_lite_batch(
        self,
        bo: Backoffer,
        batch: _LiteBatch,
        for_read: bool,
        result: ResolveResult,
        options: RequestOptions,
    ) -> None:
        """Send the lite cleanup of one transaction's locks (client-go batchLiteResolveLocks).

        One key keeps the single-key request; several are grouped by the region holding
        them now, one ``ResolveLock`` with exactly those keys per region. For a reader the
        work runs in the background; when the pool is full it runs in place and its
        failure is logged, not raised: the transaction's status is already known, so
        the read can go on either way.
        """

        async def work(abo: Backoffer) -> None:
            if len(batch.keys) == 1:
                await self._resolve_regular(abo, batch.lock, batch.commit_ts, True, {}, options)
            else:
                await self._resolve_keys(
                    abo, batch.lock.lock_version, batch.commit_ts, batch.keys, options, lite=True
                )

        if not for_read:
            await work(bo)
            return
        if self._in_background(batch.lock.lock_version, tuple(sorted(batch.keys)), work):
            result.resolved_in_background += len(batch.keys)
            return
        try:
            await work(bo)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _log.info(
                "lite resolve of %d locks of txn %d for a read failed: %s",
                len(batch.keys),
                batch.lock.lock_version,
                exc,
            )

    def _in_background(
        self, txn_id: int, keys: tuple[bytes, ...], work: Callable[[Backoffer], Awaitable[None]]
    ) -> bool:
        """Schedule a reader's cleanup of a finished transaction's locks.

        client-go ``resolveLocks`` with ``forRead``: the cleanup does not hold the read
        up; it runs in the async resolve pool with its own Backoffer
        (``asyncResolveLockMaxBackoff``) and without the caller's cancellation, its
        failure only logged. The pool admits :data:`ASYNC_RESOLVE_LOCK_LIMIT` at once;
        beyond that (or once the client is closing) the reader resolves in place.

        The same cleanup (transaction and keys) already running is not started again:
        the caller counts on it as scheduled.

        Args:
            txn_id: The transaction whose locks ``work`` resolves (names the task).
            keys: The lock keys ``work`` starts from (with ``txn_id``, what it does).
            work: The cleanup, given its own Backoffer.

        Returns:
            Whether the cleanup was scheduled (or is already running).

        """
        what = (txn_id, keys)
        if what in self._background_work:
            return True
        if self._background_resolves >= ASYNC_RESOLVE_LOCK_LIMIT or self._rt.closed:
            _count("read_async_resolve_fallback")
            return False
        self._background_resolves += 1
        self._background_work.add(what)
        self.stats["resolve_in_background"] += 1

        async def resolve() -> None:
            try:
                bo = self._rt.backoffer(ASYNC_RESOLVE_LOCK_MAX_BACKOFF, "resolve lock for read")
                await work(bo)
            finally:
                self._background_resolves -= 1
                self._background_work.discard(what)

        self._rt.spawn(resolve(), f"tikv-txn-read-resolve-{txn_id}")
        return True

    async def _resolve_regular(
        self,
        bo: Backoffer,
        lock: LockInfo,
        commit_ts: int,
        lite: bool,
        cleaned: dict[int, set[int]],
        options: RequestOptions,
    ) -> None:
        """ResolveLock for one lock: its key only (lite) or its whole region, once."""
        _count("query_resolve_locks")
        region: Region | None = None
        if not lite:
            region = await self._rt.sender.locator.locate_key(lock.key)
            if region.id in cleaned.get(lock.lock_version, ()):
                return
        req = kvrpcpb_pb2.ResolveLockRequest(
            start_version=lock.lock_version, commit_version=commit_ts
        )
        if lite:
            _count("query_resolve_lock_lite")
            req.keys.append(lock.key)
        self.stats["resolve_lock"] += 1
        resp = await self._rt.sender.call_key("ResolveLock", lock.key, req, bo=bo, options=options)
        if resp.HasField("error"):
            raise self._rt.key_error(resp.error, start_ts=lock.lock_version)
        if region is not None:
            cleaned.setdefault(lock.lock_version, set()).add(region.id)

    async def _pessimistic_rollback(
        self,
        bo: Backoffer,
        lock: LockInfo,
        options: RequestOptions,
        region_cleaned: dict[int, set[int]] | None = None,
    ) -> None:
        """Roll back a finished txn's pessimistic lock (client-go resolvePessimisticLock).

        With ``region_cleaned`` (region resolve) the request has no keys: TiKV drops every
        pessimistic lock of the transaction in the region (with a for-update ts up to the
        lock's), and the region is not asked again for this transaction.
        """
        for_update_ts = lock.lock_for_update_ts or (2**64 - 1)
        req = kvrpcpb_pb2.PessimisticRollbackRequest(
            start_version=lock.lock_version, for_update_ts=for_update_ts
        )
        region: Region | None = None
        if region_cleaned is None:
            req.keys.append(lock.key)
        else:
            region = await self._rt.sender.locator.locate_key(lock.key)
            if region.id in region_cleaned.get(lock.lock_version, ()):
                return
        self.stats["pessimistic_rollback"] += 1
        resp = await self._rt.sender.call_key(
            "PessimisticRollback", lock.key, req, bo=bo, options=options
        )
        errors = list(resp.errors)
        if errors:
            raise self._rt.key_error(errors[0], start_ts=lock.lock_version)
        if region is not None and region_cleaned is not None:
            region_cleaned.setdefault(lock.lock_version, set()).add(region.id)

    async def _resolve_async_commit(
        self, lock: LockInfo, status: TxnStatus, options: RequestOptions
    ) -> TxnStatus:
        """Settle an async-commit transaction whose primary lock expired.

        client-go ``resolveAsyncCommitLock``: with a final status, resolve the primary and
        every secondary with it; otherwise ask every secondary's region (CheckSecondaryLocks)
        and decide from the answers (:class:`AsyncResolveData`). Returns the final status.
        """
        _count("resolve_async_commit")
        bo = self._rt.backoffer(ASYNC_RESOLVE_LOCK_MAX_BACKOFF, "async commit resolve")
        primary = status.primary_lock
        if primary is None:
            raise TxnError(f"async commit lock of txn {lock.lock_version} without primary lock")
        if status.is_determined:
            keys = [*primary.secondaries, lock.primary_lock]
            final = status
        else:
            data = await self._check_all_secondaries(bo, lock, primary, options)
            keys = [*data.keys, lock.primary_lock]
            final = data.status()
            self._save_resolved(lock.lock_version, final)
        await self._resolve_keys(bo, lock.lock_version, final.commit_ts, keys, options)
        return final

    async def _check_all_secondaries(
        self, bo: Backoffer, lock: LockInfo, primary: LockInfo, options: RequestOptions
    ) -> AsyncResolveData:
        data = AsyncResolveData(start_ts=lock.lock_version, commit_ts=primary.min_commit_ts)
        secondaries = list(primary.secondaries)
        if not secondaries:
            return data
        start_ts = lock.lock_version

        def build(region: Region, keys: Sequence[bytes]) -> kvrpcpb_pb2.CheckSecondaryLocksRequest:
            return kvrpcpb_pb2.CheckSecondaryLocksRequest(keys=list(keys), start_version=start_ts)

        def handle(region: Region, keys: Sequence[bytes], resp: Any) -> tuple[int, Any]:
            return len(keys), resp

        self.stats["check_secondary_locks"] += 1
        _count("query_check_secondary_locks")
        parts = await self._rt.sender.execute(
            "CheckSecondaryLocks",
            _BY_KEYS,
            secondaries,
            build,
            handle,
            bo=bo,
            options=options,
        )
        for expected, resp in parts:
            if resp.HasField("error"):
                raise self._rt.key_error(resp.error, start_ts=start_ts)
            locks = [lock_from_pb(pb) for pb in resp.locks]
            if not data.add(locks, expected, resp.commit_ts):
                raise _NotAsyncCommitError
        return data

    async def _resolve_keys(
        self,
        bo: Backoffer,
        start_ts: int,
        commit_ts: int,
        keys: Sequence[bytes],
        options: RequestOptions,
        *,
        lite: bool = False,
    ) -> None:
        """ResolveLock on exactly ``keys``, one request per region (lite, per region).

        ``lite``: counted as lite resolves (client-go ``LockResolverCountWithResolveLockLite``
        per region request).
        """
        if not keys:
            return

        def build(region: Region, ks: Sequence[bytes]) -> kvrpcpb_pb2.ResolveLockRequest:
            self.stats["resolve_lock"] += 1
            if lite:
                _count("query_resolve_lock_lite")
            return kvrpcpb_pb2.ResolveLockRequest(
                start_version=start_ts, commit_version=commit_ts, keys=list(ks)
            )

        responses: list[Any] = await self._rt.sender.execute(
            "ResolveLock",
            _BY_KEYS,
            sorted(set(keys)),
            build,
            bo=bo,
            options=options,
        )
        for resp in responses:
            if resp.HasField("error"):
                raise self._rt.key_error(resp.error, start_ts=start_ts)

    # -- GC ----------------------------------------------------------------------------

    async def batch_resolve_locks(self, bo: Backoffer, locks: Sequence[LockInfo]) -> None:
        """Settle many locks at once, as GC does (client-go ``BatchResolveLocks``).

        One implementation serves GC and callers of the resolver:
        :func:`tikv_txn.gc.resolve_lock_batch`. Every transaction is settled for good —
        one still running is rolled back (``CheckTxnStatus`` with ``current_ts`` =
        MaxUint64), an async-commit one is settled from its secondaries, pessimistic locks
        are rolled back — and one ``ResolveLock`` with ``txn_infos`` goes to each region
        that holds the locks *now* (a region split since the locks were scanned gets one
        request per part).

        Raises:
            TxnError: A key error from TiKV, or a transaction TiKV refused to roll back.
            tikv_pd.errors.TimeoutError: ``bo``'s budget ran out.

        """
        from tikv_txn.gc import resolve_lock_batch  # gc builds on this module

        _count("batch_resolve")
        await resolve_lock_batch(self._rt, bo, locks)
