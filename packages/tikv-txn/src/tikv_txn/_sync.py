"""The blocking facade: :class:`TransactionClient`, :class:`Transaction`, :class:`Snapshot`.

Each :class:`TransactionClient` owns a private event loop on a daemon thread
(:class:`tikv_pd.sync.LoopThread`) and runs the async client's coroutines there: one
implementation, one set of connections and background tasks (heartbeats, secondary
commits, cleanups), usable from any number of threads. Buffered writes (``put``,
``insert``, ``delete``) touch only the transaction's buffer and run in the caller's
thread; a transaction must be used by one thread at a time. Calling the blocking API
from inside a running event loop raises a clear error (use the async client there).
"""

from __future__ import annotations

from collections.abc import Coroutine, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

from tikv_pd.config import Config, ReplicaReadType, TransactionOptions
from tikv_pd.errors import UndeterminedError
from tikv_pd.interceptor import RPCInterceptor
from tikv_pd.pd_client import ServiceSafePoint
from tikv_pd.sync import LoopThread

from tikv_txn.client import AsyncTransactionClient, resolve_options
from tikv_txn.committer import CommitTsLag
from tikv_txn.gc import GC_CONCURRENCY
from tikv_txn.pipelined import AsyncPipelinedTransaction
from tikv_txn.runtime_stats import SnapshotRuntimeStats
from tikv_txn.snapshot import AsyncSnapshot, ReplicaReadAdjuster, ValueEntry
from tikv_txn.transaction import AsyncTransaction, KeyAssertion

__all__ = ["Snapshot", "Transaction", "TransactionClient"]

T = TypeVar("T")


class _Reader:
    """What the blocking :class:`Snapshot` and :class:`Transaction` share: the reads.

    Each call runs the async reader's coroutine on the client's loop thread; a
    transaction's reads see its own writes first, a snapshot's only what was committed.
    """

    __slots__ = ("_loop", "_reader")

    def __init__(self, reader: AsyncSnapshot | AsyncTransaction, loop: LoopThread) -> None:
        self._reader = reader
        self._loop = loop

    def set_rpc_interceptor(self, interceptor: RPCInterceptor | None) -> None:
        """Run ``interceptor`` around every RPC of this reader (on the loop thread).

        See :meth:`AsyncTransaction.set_rpc_interceptor` and
        :meth:`AsyncSnapshot.set_rpc_interceptor`.
        """
        self._reader.set_rpc_interceptor(interceptor)

    def add_rpc_interceptor(self, interceptor: RPCInterceptor) -> None:
        """Append ``interceptor`` to this reader's chain (it runs after the others)."""
        self._reader.add_rpc_interceptor(interceptor)

    def get(self, key: bytes) -> bytes | None:
        """The value of ``key``, or ``None``."""
        return self._loop.run(self._reader.get(key))

    def batch_get(self, keys: Iterable[bytes]) -> dict[bytes, bytes]:
        """The existing keys among ``keys`` with their values."""
        return self._loop.run(self._reader.batch_get(list(keys)))

    def scan(
        self,
        start: bytes,
        end: bytes | None = None,
        *,
        limit: int,
        key_only: bool = False,
        reverse: bool = False,
    ) -> list[tuple[bytes, bytes]]:
        """Up to ``limit`` pairs of ``[start, end)`` in key order (descending if ``reverse``)."""
        return self._loop.run(
            self._reader.scan(start, end, limit=limit, key_only=key_only, reverse=reverse)
        )

    def scan_iter(
        self,
        start: bytes,
        end: bytes | None = None,
        *,
        key_only: bool = False,
        reverse: bool = False,
    ) -> Iterator[tuple[bytes, bytes]]:
        """Iterate over ``[start, end)``, fetching pages lazily."""
        return self._loop.iterate(
            self._reader.scan_iter(start, end, key_only=key_only, reverse=reverse)
        )


class Snapshot(_Reader):
    """A read-only view at :attr:`ts` (blocking); see :class:`~tikv_txn.AsyncSnapshot`."""

    __slots__ = ("_snap",)

    def __init__(self, snapshot: AsyncSnapshot, loop: LoopThread) -> None:
        """Wrap an async snapshot whose client runs on ``loop``."""
        super().__init__(snapshot, loop)
        self._snap = snapshot

    @property
    def ts(self) -> int:
        """The read timestamp."""
        return self._snap.ts

    @property
    def stale_read(self) -> bool:
        """Whether this snapshot reads as a stale read."""
        return self._snap.stale_read

    @property
    def runtime_stats(self) -> SnapshotRuntimeStats | None:
        """The statistics this snapshot adds to, or ``None``."""
        return self._snap.runtime_stats

    def set_runtime_stats(self, stats: SnapshotRuntimeStats | None) -> None:
        """Record what this snapshot's reads cost (see ``AsyncSnapshot.set_runtime_stats``)."""
        self._snap.set_runtime_stats(stats)

    def set_ts(self, ts: int) -> None:
        """Read at ``ts`` from now on (see ``AsyncSnapshot.set_ts``)."""
        self._snap.set_ts(ts)

    def set_replica_read_adjuster(self, adjuster: ReplicaReadAdjuster | None) -> None:
        """Choose per request how a replica read is served (runs on the client's loop)."""
        self._snap.set_replica_read_adjuster(adjuster)

    def get_with_commit_ts(self, key: bytes) -> ValueEntry | None:
        """The value of ``key`` with its commit ts, or ``None`` (client-go WithReturnCommitTS)."""
        return self._loop.run(self._snap.get_with_commit_ts(key))

    def batch_get_with_commit_ts(self, keys: Iterable[bytes]) -> dict[bytes, ValueEntry]:
        """The existing keys among ``keys`` with their values and commit ts."""
        return self._loop.run(self._snap.batch_get_with_commit_ts(keys))


class Transaction(_Reader):
    """A transaction (blocking); see :class:`~tikv_txn.AsyncTransaction`.

    Reads (``get``, ``batch_get``, ``scan``, ``scan_iter``) see the transaction's own
    writes first. In a pessimistic transaction ``put`` / ``insert`` / ``delete`` lock
    their key before they return (one timestamp and one lock request each, as other
    clients do), so a deadlock or a lock wait timeout is raised by the write itself.

    ``with client.begin() as txn:`` commits when the block ends normally and rolls back
    when it raises.
    """

    __slots__ = ("_txn",)

    def __init__(self, txn: AsyncTransaction, loop: LoopThread) -> None:
        """Wrap an async transaction whose client runs on ``loop``."""
        super().__init__(txn, loop)
        self._txn = txn

    @property
    def start_ts(self) -> int:
        """The start ts."""
        return self._txn.start_ts

    @property
    def commit_ts(self) -> int:
        """The commit ts once committed (0 before, and for read-only transactions)."""
        return self._txn.commit_ts

    @property
    def state(self) -> str:
        """``"active"``, ``"committing"``, ``"committed"``, ``"rolled back"`` or ``"failed"``."""
        return self._txn.state

    @property
    def undetermined_error(self) -> UndeterminedError | None:
        """Why the commit's outcome is unknown, or ``None`` (see ``AsyncTransaction``)."""
        return self._txn.undetermined_error

    @property
    def options(self) -> TransactionOptions:
        """The transaction's options."""
        return self._txn.options

    @property
    def snapshot(self) -> Snapshot:
        """The snapshot at the start ts."""
        return Snapshot(self._txn.snapshot, self._loop)

    @property
    def async_transaction(self) -> AsyncTransaction:
        """The underlying async transaction."""
        return self._txn

    @property
    def commit_wait_until_tso(self) -> int:
        """The ts the commit ts must exceed (0: no constraint)."""
        return self._txn.commit_wait_until_tso

    def set_commit_wait_until_tso(self, ts: int) -> None:
        """Make the commit ts greater than ``ts`` (see ``AsyncTransaction``'s method)."""
        self._txn.set_commit_wait_until_tso(ts)

    @property
    def commit_wait_until_tso_timeout(self) -> float:
        """Seconds commit may wait for PD's TSO to pass :attr:`commit_wait_until_tso`."""
        return self._txn.commit_wait_until_tso_timeout

    def set_commit_wait_until_tso_timeout(self, seconds: float) -> None:
        """Set how long commit may wait for PD's TSO (0: fail at once when it lags)."""
        self._txn.set_commit_wait_until_tso_timeout(seconds)

    @property
    def commit_ts_lag(self) -> CommitTsLag | None:
        """How commit waited for PD's TSO to pass :attr:`commit_wait_until_tso`, if it did."""
        return self._txn.commit_ts_lag

    def _lock_written(self) -> None:
        if self._txn.options.is_pessimistic:
            self._loop.run(self._txn.lock_pending_writes())

    def put(self, key: bytes, value: bytes) -> None:
        """Buffer ``key = value`` (pessimistic: and lock the key)."""
        self._txn.put(key, value)
        self._lock_written()

    def insert(self, key: bytes, value: bytes) -> None:
        """Buffer an insert of ``key``: KeyExistsError if it exists (at commit if optimistic)."""
        self._txn.insert(key, value)
        self._lock_written()

    def delete(self, key: bytes) -> None:
        """Buffer a deletion of ``key`` (pessimistic: and lock the key)."""
        self._txn.delete(key)
        self._lock_written()

    def set_assertion(self, key: bytes, assertion: KeyAssertion) -> None:
        """Assert at prewrite whether ``key`` exists (see ``AsyncTransaction.set_assertion``)."""
        self._txn.set_assertion(key, assertion)

    def get_for_update(
        self,
        key: bytes,
        *,
        lock_wait_timeout_ms: int | None = None,
        lock_only_if_exists: bool = False,
    ) -> bytes | None:
        """Lock ``key`` and return its latest value; see :meth:`AsyncTransaction.get_for_update`."""
        return self._loop.run(
            self._txn.get_for_update(
                key,
                lock_wait_timeout_ms=lock_wait_timeout_ms,
                lock_only_if_exists=lock_only_if_exists,
            )
        )

    def batch_get_for_update(
        self,
        keys: Iterable[bytes],
        *,
        lock_wait_timeout_ms: int | None = None,
        lock_only_if_exists: bool = False,
    ) -> dict[bytes, bytes]:
        """Lock ``keys`` and return the existing ones with their latest values."""
        return self._loop.run(
            self._txn.batch_get_for_update(
                list(keys),
                lock_wait_timeout_ms=lock_wait_timeout_ms,
                lock_only_if_exists=lock_only_if_exists,
            )
        )

    def check_exists_for_update(
        self, keys: Iterable[bytes], *, lock_wait_timeout_ms: int | None = None
    ) -> dict[bytes, bool]:
        """Lock ``keys`` and return whether each exists."""
        return self._loop.run(
            self._txn.check_exists_for_update(list(keys), lock_wait_timeout_ms=lock_wait_timeout_ms)
        )

    def start_aggressive_locking(self) -> None:
        """See :meth:`AsyncTransaction.start_aggressive_locking`."""
        self._txn.start_aggressive_locking()

    def retry_aggressive_locking(self) -> None:
        """See :meth:`AsyncTransaction.retry_aggressive_locking`."""
        self._loop.run(self._txn.retry_aggressive_locking())

    def cancel_aggressive_locking(self) -> None:
        """See :meth:`AsyncTransaction.cancel_aggressive_locking`."""
        self._loop.run(self._txn.cancel_aggressive_locking())

    def done_aggressive_locking(self) -> None:
        """See :meth:`AsyncTransaction.done_aggressive_locking`."""
        self._loop.run(self._txn.done_aggressive_locking())

    @property
    def in_aggressive_locking(self) -> bool:
        """Whether aggressive locking is on."""
        return self._txn.in_aggressive_locking

    def lock_keys(self, keys: Iterable[bytes], *, lock_wait_timeout_ms: int | None = None) -> None:
        """Lock ``keys``; see :meth:`AsyncTransaction.lock_keys`."""
        self._loop.run(self._txn.lock_keys(list(keys), lock_wait_timeout_ms=lock_wait_timeout_ms))

    def flush(self, *, force: bool = False) -> bool:
        """Flush a pipelined transaction's buffer; see :meth:`AsyncPipelinedTransaction.flush`.

        ``put`` already flushes (and waits for a running flush) by itself; this flushes
        at a point of the caller's choosing, as TiDB does after each statement.

        Raises:
            TypeError: The transaction is not pipelined.

        """
        txn = self._txn
        if not isinstance(txn, AsyncPipelinedTransaction):
            raise TypeError(
                "flush() is for pipelined transactions (TransactionOptions(pipelined=True))"
            )
        return self._loop.run(txn.flush(force=force))

    def commit(self) -> int:
        """Commit; return the commit ts (0 when nothing was written)."""
        return self._loop.run(self._txn.commit())

    def rollback(self) -> None:
        """Discard the transaction (nothing is sent)."""
        self._loop.run(self._txn.rollback())

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._loop.run(self._txn.__aexit__(exc_type, exc, tb))

    def __repr__(self) -> str:
        return f"Transaction(start_ts={self.start_ts}, state={self.state!r})"


class TransactionClient:
    """Transactional client for TiKV (blocking); see :class:`~tikv_txn.AsyncTransactionClient`.

    Example:
        >>> with TransactionClient.connect(["127.0.0.1:2379"]) as client:
        ...     with client.begin() as txn:
        ...         txn.put(b"k", b"v")
        ...     client.snapshot(client.current_timestamp()).get(b"k")
        b'v'

    """

    __slots__ = ("_client", "_loop")

    def __init__(self, client: AsyncTransactionClient, loop: LoopThread) -> None:
        """Wrap an async client running on ``loop`` (use :meth:`connect`)."""
        self._client = client
        self._loop = loop

    def set_rpc_interceptor(self, interceptor: RPCInterceptor | None) -> None:
        """See :meth:`AsyncTransactionClient.set_rpc_interceptor`."""
        self._client.set_rpc_interceptor(interceptor)

    def add_rpc_interceptor(self, interceptor: RPCInterceptor) -> None:
        """See :meth:`AsyncTransactionClient.add_rpc_interceptor`."""
        self._client.add_rpc_interceptor(interceptor)

    @classmethod
    def connect(
        cls,
        pd_endpoints: Sequence[str] | str,
        *,
        config: Config | None = None,
        keyspace: str | None = None,
        api_version: int = 1,
    ) -> TransactionClient:
        """Connect to a TiKV cluster; arguments as :meth:`AsyncTransactionClient.connect`."""
        loop = LoopThread(name="tikv-txn-loop")
        try:
            client = loop.run(
                AsyncTransactionClient.connect(
                    pd_endpoints, config=config, keyspace=keyspace, api_version=api_version
                )
            )
        except BaseException:
            loop.close()
            raise
        return cls(client, loop)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._loop.run(coro)

    @property
    def async_client(self) -> AsyncTransactionClient:
        """The underlying async client (runs on this client's loop thread)."""
        return self._client

    @property
    def loop_thread(self) -> LoopThread:
        """The private loop thread."""
        return self._loop

    def begin(
        self, options: TransactionOptions | None = None, *, pessimistic: bool = False
    ) -> Transaction:
        """Start a transaction; see :meth:`AsyncTransactionClient.begin`."""
        opts = resolve_options(self._client.config, options, pessimistic)
        return Transaction(self._run(self._client._begin(opts)), self._loop)

    def snapshot(
        self,
        ts: int,
        options: TransactionOptions | None = None,
        *,
        replica_read: ReplicaReadType | None = None,
        stale_read: bool = False,
        match_labels: Mapping[str, str] | None = None,
    ) -> Snapshot:
        """A read-only view at ``ts``; see :meth:`AsyncTransactionClient.snapshot`."""
        return Snapshot(
            self._client.snapshot(
                ts,
                options,
                replica_read=replica_read,
                stale_read=stale_read,
                match_labels=match_labels,
            ),
            self._loop,
        )

    def stale_snapshot(
        self,
        prev_seconds: float,
        options: TransactionOptions | None = None,
        *,
        match_labels: Mapping[str, str] | None = None,
    ) -> Snapshot:
        """A stale-read snapshot of about ``prev_seconds`` ago; see the async client."""
        return Snapshot(
            self._run(
                self._client.stale_snapshot(prev_seconds, options, match_labels=match_labels)
            ),
            self._loop,
        )

    def current_timestamp(self) -> int:
        """A fresh timestamp from PD."""
        return self._run(self._client.current_timestamp())

    def min_safe_ts(self) -> int:
        """The stores' min safe ts; see :meth:`AsyncTransactionClient.min_safe_ts`."""
        return self._run(self._client.min_safe_ts())

    def gc(self, safe_point: int, *, concurrency: int = GC_CONCURRENCY) -> int:
        """Garbage-collect below ``safe_point``; see :meth:`AsyncTransactionClient.gc`."""
        return self._run(self._client.gc(safe_point, concurrency=concurrency))

    def gc_safe_point(self) -> int:
        """PD's GC safepoint; see :meth:`AsyncTransactionClient.gc_safe_point`."""
        return self._run(self._client.gc_safe_point())

    def update_service_gc_safe_point(
        self, service_id: str, ttl: int, safe_point: int
    ) -> ServiceSafePoint:
        """Register a service GC safepoint; see the async client's method."""
        return self._run(self._client.update_service_gc_safe_point(service_id, ttl, safe_point))

    def delete_range(
        self,
        start: bytes,
        end: bytes | None = None,
        *,
        notify_only: bool = False,
        concurrency: int = GC_CONCURRENCY,
    ) -> int:
        """Delete ``[start, end)``; see :meth:`AsyncTransactionClient.delete_range`."""
        return self._run(
            self._client.delete_range(start, end, notify_only=notify_only, concurrency=concurrency)
        )

    def close(self) -> None:
        """Close the client and stop its loop thread. Idempotent."""
        try:
            if not self._loop.closed:
                self._run(self._client.close())
        finally:
            self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
