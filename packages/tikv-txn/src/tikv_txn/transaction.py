"""Transactions: buffered writes over a snapshot, committed by 2PC / 1PC / async commit.

An :class:`AsyncTransaction` reads at its start ts through an
:class:`~tikv_txn.snapshot.AsyncSnapshot` and keeps its writes in a
:class:`~tikv_txn.membuffer.MemBuffer`; reads see the transaction's own writes first
(``get`` / ``batch_get`` look in the buffer, ``scan`` merges it over the snapshot with
:func:`~tikv_txn.union_iter.union_aiter`). Nothing is sent for a write until
:meth:`AsyncTransaction.commit` runs the :class:`~tikv_txn.committer.TwoPhaseCommitter`.
Conflicts are found at commit: another transaction that committed one of the keys after
this one started makes prewrite fail with :class:`~tikv_pd.errors.WriteConflictError`
(the caller retries the whole transaction, client-go does not retry it either).

After :meth:`commit` or :meth:`rollback` every method raises
:class:`~tikv_pd.errors.TransactionClosedError`. A transaction that wrote nothing commits
without any RPC, and rolling back an optimistic transaction sends nothing (nothing of it
is on the servers before commit).

A pessimistic transaction (``begin(pessimistic=True)``) also locks its keys while it runs:
``get_for_update`` / ``batch_get_for_update`` / ``lock_keys`` lock at once, and every
write's key is locked when the awaitable ``put`` / ``insert`` / ``delete`` return is
awaited, or at the next locking call or commit (see :mod:`tikv_txn.pessimistic`).
Rolling it back releases its locks (``PessimisticRollback``).

Use it as a context manager: ``async with client.begin() as txn:`` commits when the block
ends normally and rolls back when it raises.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Final, Literal, Self

from tikv_pd.config import (
    TransactionOptions,
    check_commit_wait_until_tso,
    check_commit_wait_until_tso_timeout,
)
from tikv_pd.errors import TransactionClosedError, UndeterminedError, format_key
from tikv_pd.interceptor import RPCInterceptor, chain_interceptors
from tikv_pd.observability import register_operations

from tikv_txn._validate import check_key, check_keys, check_limit, check_range, check_value
from tikv_txn.committer import CommitTsLag, TwoPhaseCommitter
from tikv_txn.membuffer import TOMBSTONE, FlagsOp, MemBuffer
from tikv_txn.pessimistic import LockRequest, PessimisticLocker
from tikv_txn.snapshot import AsyncSnapshot
from tikv_txn.union_iter import union_aiter

if TYPE_CHECKING:
    from tikv_txn._runtime import TxnRuntime

__all__ = ["AsyncTransaction", "KeyAssertion"]

#: What :meth:`AsyncTransaction.set_assertion` can assert about a key's committed state
#: before this transaction: it exists, it does not exist, nothing can be said
#: (``"unknown"``), or no assertion at all (``"none"``, removes an earlier one).
KeyAssertion = Literal["exist", "not_exist", "unknown", "none"]

# client-go kv.SetAssertExist / SetAssertNotExist / SetAssertUnknown / SetAssertNone.
_ASSERTION_OPS: Final[dict[str, FlagsOp]] = {
    "exist": FlagsOp.SET_ASSERT_EXIST,
    "not_exist": FlagsOp.SET_ASSERT_NOT_EXIST,
    "unknown": FlagsOp.SET_ASSERT_UNKNOWN,
    "none": FlagsOp.SET_ASSERT_NONE,
}

_ACTIVE = "active"
_COMMITTING = "committing"
_COMMITTED = "committed"
_ROLLED_BACK = "rolled back"
_FAILED = "failed"


class AsyncTransaction:
    """A transaction (asyncio). Create it with ``AsyncTransactionClient.begin()``.

    Args:
        runtime: The client's shared state.
        start_ts: The start ts (the snapshot the transaction reads).
        options: The transaction's options.

    """

    __slots__ = (
        "_buffer",
        "_commit_wait_timeout",
        "_commit_wait_until_tso",
        "_committer",
        "_interceptor",
        "_lag",
        "_locker",
        "_options",
        "_rt",
        "_snapshot",
        "_started_at",
        "_state",
        "commit_ts",
        "start_ts",
    )

    def __init__(self, runtime: TxnRuntime, start_ts: int, options: TransactionOptions) -> None:
        self._rt = runtime
        self.start_ts = start_ts
        self._options = options
        cfg = runtime.config
        self._buffer = MemBuffer(
            entry_size_limit=options.entry_size_limit or cfg.txn_entry_size_limit,
            total_size_limit=options.total_size_limit or cfg.txn_total_size_limit,
        )
        self._snapshot = AsyncSnapshot(runtime, start_ts, options)
        self._started_at = time.monotonic()
        self._state = _ACTIVE
        self._committer: TwoPhaseCommitter | None = None
        self._interceptor: RPCInterceptor | None = None
        self._locker = PessimisticLocker(
            runtime,
            start_ts,
            pessimistic=options.is_pessimistic,
            default_wait_ms=options.lock_wait_timeout_ms,
            buffer=self._current_buffer,
            snapshot=self._snapshot,
            started_at=self._started_at,
            committer=self._get_committer,
        )
        #: The commit ts once committed (0 before, and for a read-only transaction).
        self.commit_ts = 0
        self._commit_wait_until_tso = options.commit_wait_until_tso
        self._commit_wait_timeout = options.commit_wait_until_tso_timeout
        # The commit-ts lag of a commit that did not go through the committer (pipelined).
        self._lag: CommitTsLag | None = None

    # -- RPC interceptors (client-go KVTxn.SetRPCInterceptor / AddRPCInterceptor) -----

    @property
    def rpc_interceptor(self) -> RPCInterceptor | None:
        """The transaction's own RPC interceptor (chain), or ``None``."""
        return self._interceptor

    def set_rpc_interceptor(self, interceptor: RPCInterceptor | None) -> None:
        """Run ``interceptor`` around every RPC of this transaction (reads and commit).

        It runs inside the client's interceptor (if any), replaces the transaction's
        previous one and applies to its snapshot too, as client-go's ``SetRPCInterceptor``;
        ``None`` removes it. The lock resolution the transaction's reads, locks and
        prewrites cause runs inside the same chain (client-go's resolver sends with the
        transaction's context, which carries its interceptor).
        """
        self._snapshot.set_rpc_interceptor(interceptor)
        self._interceptor = interceptor
        if self._committer is not None:
            # A pessimistic transaction's committer exists from its first lock on.
            self._committer.use_interceptor(self._effective_interceptor())

    def add_rpc_interceptor(self, interceptor: RPCInterceptor) -> None:
        """Append ``interceptor`` to the transaction's chain (client-go ``AddRPCInterceptor``)."""
        current = self._interceptor
        self.set_rpc_interceptor(
            interceptor if current is None else chain_interceptors(current, interceptor)
        )

    def _effective_interceptor(self) -> RPCInterceptor | None:
        client = self._rt.interceptor
        own = self._interceptor
        if own is None or client is None:
            return own if own is not None else client
        return chain_interceptors(client, own)

    # -- commit-wait-until-TSO (client-go KVTxn.SetCommitWaitUntilTSO) -------------------

    @property
    def commit_wait_until_tso(self) -> int:
        """The ts the commit ts must exceed (0: no constraint)."""
        return self._commit_wait_until_tso

    def set_commit_wait_until_tso(self, ts: int) -> None:
        """Make the commit ts greater than ``ts`` (a larger value than the current one wins).

        A transaction replicating another cluster's commit must commit after it (its
        last-write-wins rule): while PD's TSO is not past ``ts`` commit keeps fetching
        timestamps, for at most :attr:`commit_wait_until_tso_timeout`, then raises
        :class:`~tikv_pd.errors.CommitTsLagError` with nothing committed. Applies to 2PC,
        async commit and 1PC. A smaller ``ts`` than the current one is ignored, as in
        client-go (the constraint only tightens).

        Raises:
            TypeError: ``ts`` is not an int.
            ValueError: ``ts`` is not a 64-bit timestamp.

        """
        check_commit_wait_until_tso(ts, "ts")
        self._check_active()
        if ts > self._commit_wait_until_tso:
            self._commit_wait_until_tso = ts

    @property
    def commit_wait_until_tso_timeout(self) -> float:
        """Seconds commit may wait for PD's TSO to pass :attr:`commit_wait_until_tso`."""
        return self._commit_wait_timeout

    def set_commit_wait_until_tso_timeout(self, seconds: float) -> None:
        """Set how long commit may wait for PD's TSO (0: fail at once when it lags).

        Default 1 s (client-go ``txnkv/transaction/txn.go``). A lag larger than the
        timeout (the two timestamps' physical times) fails without waiting.

        Raises:
            TypeError: ``seconds`` is not a number.
            ValueError: ``seconds`` is negative or not finite.

        """
        value = check_commit_wait_until_tso_timeout(seconds, "seconds")
        self._check_active()
        self._commit_wait_timeout = value

    @property
    def commit_ts_lag(self) -> CommitTsLag | None:
        """How commit waited for PD's TSO to pass :attr:`commit_wait_until_tso`.

        ``None`` unless the first commit ts fetched was not above it (client-go
        ``CommitDetails.LagDetails``).
        """
        if self._lag is not None:
            return self._lag
        return None if self._committer is None else self._committer.commit_ts_lag

    # -- state -------------------------------------------------------------------------

    @property
    def options(self) -> TransactionOptions:
        """The transaction's options."""
        return self._options

    @property
    def snapshot(self) -> AsyncSnapshot:
        """The snapshot at the start ts (reads without the transaction's own writes)."""
        return self._snapshot

    @property
    def state(self) -> str:
        """``"active"``, ``"committing"``, ``"committed"``, ``"rolled back"`` or ``"failed"``."""
        return self._state

    @property
    def undetermined_error(self) -> UndeterminedError | None:
        """Why this transaction's commit outcome is unknown, or ``None``.

        Set when :meth:`commit` raised :class:`~tikv_pd.errors.UndeterminedError`, and
        when the task running :meth:`commit` was cancelled (``task.cancel()``,
        ``asyncio.timeout``, ``wait_for``) while an async-commit / 1PC prewrite or the
        primary key's commit was in flight: the caller then sees ``CancelledError`` (or
        the timeout), as asyncio requires, and this tells that the transaction may have
        committed (client-go ``GetUndeterminedErr`` after a cancelled context). The
        locks stay for readers to resolve, which settles the transaction all or
        nothing; read the keys later to learn the outcome. A commit cancelled at any
        other point rolls back and leaves this ``None``.
        """
        committer = self._committer
        return None if committer is None else committer.undetermined_error

    @property
    def is_read_only(self) -> bool:
        """Whether nothing was written so far."""
        return not self._buffer.dirty

    @property
    def buffer(self) -> MemBuffer:
        """The write buffer (read it, do not change it behind the transaction's back)."""
        return self._buffer

    def _check_active(self) -> None:
        if self._state != _ACTIVE:
            raise TransactionClosedError(self.start_ts, self._state)
        self._rt.check_open()

    # -- reads -------------------------------------------------------------------------

    async def get(self, key: bytes) -> bytes | None:
        """Return the value of ``key`` as this transaction sees it (own writes first)."""
        check_key(key)
        self._check_active()
        buffered = self._buffer.get(key)
        if buffered is TOMBSTONE:
            return None
        if buffered is not None:
            return buffered
        return await self._snapshot.get(key)

    async def batch_get(self, keys: Iterable[bytes]) -> dict[bytes, bytes]:
        """Return the existing keys among ``keys`` with their values (own writes first)."""
        wanted = check_keys(keys)
        self._check_active()
        out: dict[bytes, bytes] = {}
        remote: list[bytes] = []
        for key in wanted:
            buffered = self._buffer.get(key)
            if buffered is None:
                remote.append(key)
            elif buffered is not TOMBSTONE:
                out[key] = buffered
        if remote:
            out.update(await self._snapshot.batch_get(remote))
        return out

    async def scan(
        self,
        start: bytes,
        end: bytes | None = None,
        *,
        limit: int,
        key_only: bool = False,
        reverse: bool = False,
    ) -> list[tuple[bytes, bytes]]:
        """Return up to ``limit`` pairs of ``[start, end)``: own writes merged over the snapshot.

        Args:
            start: Inclusive lower bound.
            end: Exclusive upper bound (``None``: unbounded).
            limit: Maximum number of pairs (positive).
            key_only: Values are ``b""``.
            reverse: Descending key order.

        """
        check_limit(limit)
        out: list[tuple[bytes, bytes]] = []
        it = self.scan_iter(start, end, key_only=key_only, reverse=reverse)
        try:
            async for pair in it:
                out.append(pair)
                if len(out) >= limit:
                    break
        finally:
            await it.aclose()  # type: ignore[attr-defined]
        return out

    def scan_iter(
        self,
        start: bytes,
        end: bytes | None = None,
        *,
        key_only: bool = False,
        reverse: bool = False,
    ) -> AsyncIterator[tuple[bytes, bytes]]:
        """Iterate over ``[start, end)`` lazily: own writes merged over the snapshot."""
        lo, hi = check_range(start, end)
        self._check_active()
        remote = self._snapshot.scan_iter(lo, hi, key_only=key_only, reverse=reverse)
        merged = union_aiter(self._buffer, remote, start=lo, end=hi or None, reverse=reverse)
        if not key_only:
            return merged
        return _keys_only(merged)

    # -- writes ------------------------------------------------------------------------

    def put(self, key: bytes, value: bytes) -> None:
        """Buffer ``key = value`` (sent at commit).

        In a pessimistic transaction the key is locked by the next locking call
        (:meth:`lock_pending_writes`, :meth:`get_for_update`, :meth:`lock_keys`, ...) or
        by :meth:`commit`, whichever comes first.
        """
        check_key(key)
        check_value(value)
        self._check_active()
        self._locker.before_write()
        self._buffer.set(key, value)
        self._locker.after_write(key)

    def insert(self, key: bytes, value: bytes) -> None:
        """Buffer ``key = value`` presuming the key does not exist.

        Prewrite sends an ``Insert`` mutation; if the key exists, commit raises
        :class:`~tikv_pd.errors.KeyExistsError` (TiKV's ``AlreadyExist``). A pessimistic
        transaction checks it when it locks the key (the lock request asserts that the
        key does not exist).
        """
        check_key(key)
        check_value(value)
        self._check_active()
        locker = self._locker
        flags = self._buffer.get_flags(key)
        if flags is not None and self._buffer.get(key) is not None:
            # The key was already written in this transaction: its existence is known
            # from that write, so this is a plain overwrite (as client-go's Set).
            locker.before_write()
            self._buffer.set(key, value)
            locker.after_write(key)
            return
        known_absent = locker.check_insert(key)
        locker.before_write()
        if known_absent:
            # Locked, and the lock reported the key absent: nothing left to check.
            self._buffer.set(key, value, FlagsOp.SET_NEWLY_INSERTED)
        else:
            self._buffer.set(
                key, value, FlagsOp.SET_PRESUME_KEY_NOT_EXISTS, FlagsOp.SET_NEWLY_INSERTED
            )
        locker.after_write(key)

    def delete(self, key: bytes) -> None:
        """Buffer a deletion of ``key`` (sent at commit; locked like :meth:`put`)."""
        check_key(key)
        self._check_active()
        self._locker.before_write()
        self._buffer.delete(key)
        self._locker.after_write(key)

    def set_assertion(self, key: bytes, assertion: KeyAssertion) -> None:
        """Assert, at prewrite, whether ``key`` exists (client-go ``SetAssertExist`` & co.).

        The assertion travels with the key's prewrite mutation and is checked by TiKV as
        the transaction's ``assertion_level`` says: ``"Strict"`` always reads the key's
        latest committed version; ``"Fast"`` checks it only when prewrite reads that
        version anyway (an optimistic prewrite's conflict check), and for keys this
        pessimistic transaction locked while learning whether they exist
        (:meth:`check_exists_for_update`, :meth:`get_for_update`) the client compares
        the lock's answer itself (client-go ``checkAssertionByPessimisticLockResults``).
        A failed assertion makes :meth:`commit` raise
        :class:`~tikv_pd.errors.AssertionFailedError` and roll the transaction back.
        It is a consistency check (TiDB asserts what its indexes imply), not a
        condition: nothing else about the commit changes.

        Args:
            key: A key this transaction has written or locked (the assertion goes with
                its mutation; a key with nothing to prewrite has nothing to assert on).
            assertion: ``"exist"``, ``"not_exist"``, ``"unknown"`` (nothing can be said)
                or ``"none"`` (remove an earlier assertion). A later write keeps it.

        Raises:
            TypeError: ``key`` is not bytes.
            ValueError: ``assertion`` is not one of those names, the transaction's
                ``assertion_level`` is ``"Off"`` (the assertion would never be
                checked), or ``key`` has no write or lock in this transaction.

        """
        check_key(key)
        op = _ASSERTION_OPS.get(assertion) if isinstance(assertion, str) else None
        if op is None:
            raise ValueError(
                f"assertion must be one of {sorted(_ASSERTION_OPS)}, got {assertion!r}"
            )
        if self._options.assertion_level == "Off":
            raise ValueError(
                "set_assertion needs TransactionOptions.assertion_level 'Fast' or 'Strict' "
                "(with 'Off' assertions are not sent to TiKV)"
            )
        self._check_active()
        if self._buffer.get_flags(key) is None:
            raise ValueError(
                f"set_assertion: key {format_key(key)} has no write or lock in this transaction"
            )
        self._buffer.update_flags(key, op)

    # -- locks (tikv_txn.pessimistic) ----------------------------------------------------

    @property
    def locker(self) -> PessimisticLocker:
        """The transaction's locks: primary, for_update_ts, locked keys, statistics."""
        return self._locker

    async def lock_pending_writes(self, *, lock_wait_timeout_ms: int | None = None) -> None:
        """Lock the keys written since the last locking call (pessimistic; else no-op).

        TiDB locks a statement's keys when the statement ends; call this at the end of
        yours to learn at once about a deadlock, a lock wait timeout or an existing key
        of an insert. If the locks cannot be taken those writes are discarded.
        """
        self._check_active()
        await self._locker.flush_pending(lock_wait_timeout_ms)

    async def get_for_update(
        self,
        key: bytes,
        *,
        lock_wait_timeout_ms: int | None = None,
        lock_only_if_exists: bool = False,
    ) -> bytes | None:
        """Lock ``key`` and return its latest value (own writes first), or ``None``.

        A missing key is locked too (unless ``lock_only_if_exists``). In an optimistic
        transaction the key is read at the start ts and checked for conflicts at commit.

        Args:
            key: The key.
            lock_wait_timeout_ms: Overrides the options' ``lock_wait_timeout_ms``:
                ``LOCK_ALWAYS_WAIT``, ``LOCK_NO_WAIT`` or ms.
            lock_only_if_exists: Do not lock a missing key.

        Raises:
            DeadlockError: The wait for the lock would close a cycle (carries the wait
                chain); roll the transaction back.
            LockWaitTimeoutError: The key stayed locked past the wait time.

        """
        check_key(key)
        self._check_active()
        found = await self._locker.get_for_update(
            [key], lock_wait_timeout_ms, lock_only_if_exists=lock_only_if_exists
        )
        return found.get(key)

    async def batch_get_for_update(
        self,
        keys: Iterable[bytes],
        *,
        lock_wait_timeout_ms: int | None = None,
        lock_only_if_exists: bool = False,
    ) -> dict[bytes, bytes]:
        """Lock ``keys`` and return the existing ones with their latest values.

        As :meth:`get_for_update` for many keys (one lock request per region).
        """
        wanted = check_keys(keys)
        self._check_active()
        return await self._locker.get_for_update(
            wanted, lock_wait_timeout_ms, lock_only_if_exists=lock_only_if_exists
        )

    async def check_exists_for_update(
        self, keys: Iterable[bytes], *, lock_wait_timeout_ms: int | None = None
    ) -> dict[bytes, bool]:
        """Lock ``keys`` and return whether each exists (no values are transferred)."""
        wanted = check_keys(keys)
        self._check_active()
        return await self._locker.exists_for_update(wanted, lock_wait_timeout_ms)

    async def lock_keys(
        self, keys: Iterable[bytes], *, lock_wait_timeout_ms: int | None = None
    ) -> None:
        """Lock ``keys`` without reading them (client-go ``LockKeys``).

        Pessimistic: locked now at a fresh for_update_ts; optimistic: checked for write
        conflicts at commit (``Lock`` mutations). Raises as :meth:`get_for_update`.
        """
        wanted = check_keys(keys)
        self._check_active()
        await self._locker.flush_pending(lock_wait_timeout_ms)
        wait = self._options.lock_wait_timeout_ms
        await self._locker.lock(
            wanted,
            LockRequest(wait_ms=wait if lock_wait_timeout_ms is None else lock_wait_timeout_ms),
        )

    # -- aggressive (fair) locking (client-go KVTxn.*AggressiveLocking) -----------------

    def start_aggressive_locking(self) -> None:
        """Enter aggressive locking (pessimistic transactions; client-go's fair locking).

        While it is on, a lock call of a single key uses TiKV's force-lock wake-up mode:
        a waiter gets the lock as soon as it is released, even over a newer write (the
        value returned is then the newest); keys are recorded per attempt. End an attempt
        with :meth:`retry_aggressive_locking` (its locks are reused by the next attempt
        or released), and the whole with :meth:`done_aggressive_locking` (keep the locks)
        or :meth:`cancel_aggressive_locking` (release them). A lock call of several keys
        ends it as ``done`` does.

        Raises:
            ValueError: Not a pessimistic transaction, or already on.

        """
        self._check_active()
        self._locker.start_aggressive_locking()

    async def retry_aggressive_locking(self) -> None:
        """End the current aggressive-locking attempt and start the next one."""
        self._check_active()
        await self._locker.retry_aggressive_locking()

    async def cancel_aggressive_locking(self) -> None:
        """Leave aggressive locking, releasing the locks it took."""
        self._check_active()
        await self._locker.cancel_aggressive_locking()

    async def done_aggressive_locking(self) -> None:
        """Leave aggressive locking, keeping the locks of its last attempt."""
        self._check_active()
        await self._locker.done_aggressive_locking()

    @property
    def in_aggressive_locking(self) -> bool:
        """Whether aggressive locking is on."""
        return self._locker.in_aggressive_locking

    # -- finish ------------------------------------------------------------------------

    def _current_buffer(self) -> MemBuffer:
        return self._buffer

    def _get_committer(self) -> TwoPhaseCommitter:
        # A pessimistic transaction's committer exists from its first lock (it holds the
        # primary, the for-update ts and the heartbeat, as client-go's txn.committer).
        if self._committer is None:
            self._committer = self._new_committer()
        return self._committer

    def _new_committer(self) -> TwoPhaseCommitter:
        committer = TwoPhaseCommitter(
            self._rt,
            self.start_ts,
            self._options,
            self._buffer,
            self._started_at,
            interceptor=self._effective_interceptor(),
        )
        if self._options.is_pessimistic:
            committer.lock_existence = self._locker.known_existence
        return committer

    async def commit(self) -> int:
        """Commit and return the commit ts (0 when the transaction wrote nothing).

        Raises:
            WriteConflictError: Another transaction committed a written key after this
                one started (retry the whole transaction).
            KeyExistsError: An inserted key exists.
            UndeterminedError: The outcome is unknown (the primary commit got no answer).
            TransactionClosedError: Already committed or rolled back.

        Cancelling the task running it raises ``CancelledError`` as usual; if an
        async-commit / 1PC prewrite or the primary commit was in flight the outcome is
        unknown and :attr:`undetermined_error` says so.

        """
        self._check_active()
        self._locker.check_commit()
        self._state = _COMMITTING
        try:
            # Writes still waiting for their pessimistic lock are locked first.
            await self._locker.before_commit()
        except BaseException:
            self._state = _FAILED
            await self._locker.rollback()
            raise
        if not self._buffer.dirty:
            self._state = _COMMITTED
            return 0
        committer = self._get_committer()
        committer.commit_wait_until_tso = self._commit_wait_until_tso
        committer.commit_wait_until_tso_timeout = self._commit_wait_timeout
        try:
            self.commit_ts = await committer.execute()
        except BaseException:
            self._state = _FAILED
            self._locker.release_after_failed_commit(committer)
            raise
        self._state = _COMMITTED
        return self.commit_ts

    async def rollback(self) -> None:
        """Discard the transaction.

        An optimistic transaction sends nothing: it has nothing on the servers before
        commit. A pessimistic one releases its locks (``PessimisticRollback``, client-go
        ``KVTxn.Rollback``).

        Raises:
            TransactionClosedError: Already committed or rolled back.

        """
        if self._state != _ACTIVE:
            raise TransactionClosedError(self.start_ts, self._state)
        self._state = _ROLLED_BACK
        await self._locker.rollback()
        self._buffer.reset()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._state != _ACTIVE:
            return
        if exc_type is None:
            await self.commit()
        else:
            await self.rollback()

    def __repr__(self) -> str:
        return f"AsyncTransaction(start_ts={self.start_ts}, state={self._state!r})"


async def _keys_only(
    source: AsyncIterator[tuple[bytes, bytes]],
) -> AsyncIterator[tuple[bytes, bytes]]:
    try:
        async for key, _ in source:
            yield key, b""
    finally:
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()


# Transaction operations, instrumented while metrics or tracing is on
# (tikv_pd.observability): spans tikv.txn.<method> and
# tikv_client_go_txn_cmd_duration_seconds{type=<label>} with client-go's labels
# (txnkv/transaction/txn.go: commit, rollback; txnsnapshot: get, batch_get).
register_operations(
    AsyncTransaction,
    "txn",
    {
        "get": "get",
        "batch_get": "batch_get",
        "scan": "scan",
        "commit": "commit",
        "rollback": "rollback",
        "lock_keys": "lock_keys",
        "get_for_update": "get",
        "batch_get_for_update": "batch_get",
    },
)
