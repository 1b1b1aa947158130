"""What every transaction, snapshot and committer of one client shares.

A :class:`TxnRuntime` bundles the pieces of ``tikv_pd`` a transactional client runs on
(the PD client, region locator, store transport, the request pipeline and the PD oracle), the
key codec (API v1 or a keyspace's API v2 prefix), the lock resolver, the optional local
latches, and the registry of background tasks (secondary commits, cleanups, heartbeats):
each task is owned here, its failure is logged, and :meth:`TxnRuntime.close` waits for
them briefly and cancels the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from tikv_pd.backoff import (
    BATCH_GET_MAX_BACKOFF,
    CLEANUP_MAX_BACKOFF,
    COMMIT_MAX_BACKOFF,
    COMMIT_SECONDARY_MAX_BACKOFF,
    GET_MAX_BACKOFF,
    KEEP_ALIVE_MAX_BACKOFF,
    PREWRITE_MAX_BACKOFF,
    SCANNER_NEXT_MAX_BACKOFF,
    TSO_MAX_BACKOFF,
    Backoffer,
)
from tikv_pd.codec import KeyCodec
from tikv_pd.config import Config
from tikv_pd.errors import (
    ClientClosedError,
    KeyIsLockedError,
    LockInfo,
    TxnError,
    WriteConflictError,
)
from tikv_pd.interceptor import RPCInterceptor
from tikv_pd.request import RequestOptions, RequestSender
from tikv_proto import kvrpcpb_pb2

from tikv_txn._kv import decode_error_keys, key_error_to_exception, lock_from_pb
from tikv_txn.latch import LatchScheduler
from tikv_txn.policy import HEARTBEAT_INTERVAL_MS

if TYPE_CHECKING:
    from tikv_pd.oracle import Oracle
    from tikv_pd.pd_client import PDClient

    from tikv_txn.lock_resolver import LockResolver

__all__ = ["HEARTBEAT_TASK_PREFIX", "REQUEST_SOURCE", "Budgets", "TxnRuntime"]

_log = logging.getLogger("tikv.txn")

E = TypeVar("E", bound=BaseException)

#: ``Context.request_source`` of transactional requests (shown in TiKV's metrics).
REQUEST_SOURCE = "external_txn"
#: Distinct request-option sets remembered by :meth:`TxnRuntime.request_options`.
_OPTIONS_MEMO_SIZE = 256
#: Name prefix of heartbeat tasks (cancelled first on close).
HEARTBEAT_TASK_PREFIX = "tikv-txn-heartbeat"


@dataclass(slots=True)
class Budgets:
    """Backoff budgets (ms, before client-go's BackOffWeight) and the heartbeat period.

    The defaults are client-go's (``txnkv/transaction/2pc.go``, ``txnsnapshot/*.go``);
    tests shorten them through :attr:`TxnRuntime.budgets`, as client-go's test probes do.
    """

    get: int = GET_MAX_BACKOFF
    batch_get: int = BATCH_GET_MAX_BACKOFF
    scan: int = SCANNER_NEXT_MAX_BACKOFF
    prewrite: int = PREWRITE_MAX_BACKOFF
    commit: int = COMMIT_MAX_BACKOFF
    commit_secondary: int = COMMIT_SECONDARY_MAX_BACKOFF
    cleanup: int = CLEANUP_MAX_BACKOFF
    tso: int = TSO_MAX_BACKOFF
    heartbeat: int = KEEP_ALIVE_MAX_BACKOFF
    heartbeat_interval_s: float = HEARTBEAT_INTERVAL_MS / 1000.0
    #: How long ``close()`` lets secondary commits and cleanups finish before cancelling.
    close_grace_s: float = 5.0


class TxnRuntime:
    """Shared state of one transactional client (see the module docstring).

    Args:
        sender: The request pipeline.
        oracle: The timestamp oracle.
        codec: Maps user keys to the keys TiKV stores (API v2 keyspace prefix).
        config: Client configuration.
        keyspace_name: The keyspace's name ("" for API v1).
        pd: The PD client (GC safepoints, the read-visibility check); ``None`` for a
            stack without PD (tests over a fake pipeline).

    """

    def __init__(
        self,
        sender: RequestSender,
        oracle: Oracle,
        codec: KeyCodec,
        config: Config,
        *,
        keyspace_name: str = "",
        pd: PDClient | None = None,
    ) -> None:
        from tikv_txn.lock_resolver import LockResolver

        self.sender = sender
        self.oracle = oracle
        self.codec = codec
        self.config = config
        self.keyspace_name = keyspace_name
        #: The PD client, or ``None`` when the stack has none.
        self.pd = pd
        self.budgets = Budgets()
        self._rng = random.Random()
        self._options_memo: dict[tuple[tuple[str, Any], ...], RequestOptions] = {}
        #: The client's RPC interceptor (chain), in every request's options; see
        #: :meth:`set_interceptor`.
        self.interceptor: RPCInterceptor | None = None
        #: Options of the requests the client sends on its own (lock resolution, GC).
        self.base_options = self.request_options()
        self.resolver: LockResolver = LockResolver(self)
        self.latches: LatchScheduler | None = (
            LatchScheduler(config.txn_local_latches_capacity)
            if config.txn_local_latches_enabled
            else None
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        self.closed = False
        #: Background task failures seen so far (also logged), newest last.
        self.background_errors: list[BaseException] = []

    def backoffer(self, budget_ms: int, operation: str) -> Backoffer:
        """A Backoffer for one operation, drawing its jitter from the client's RNG.

        One shared :class:`random.Random` instead of one per Backoffer: seeding a new one
        from the OS costs more than a whole cached-context request.
        """
        return Backoffer(budget_ms, operation=operation, rng=self._rng)

    def set_interceptor(self, interceptor: RPCInterceptor | None) -> None:
        """Use ``interceptor`` for every request built from now on (``None``: none)."""
        self.interceptor = interceptor
        self._options_memo.clear()
        self.base_options = self.request_options()

    def resolve_options(self, interceptor: RPCInterceptor | None) -> RequestOptions:
        """Options of the lock-resolution RPCs a transaction or snapshot sends.

        ``interceptor`` is the caller's whole chain (the client's and its own): client-go's
        resolver sends with the caller's context, which carries the transaction's
        interceptor (``interceptor.WithRPCInterceptor``). The client's own chain maps to
        :attr:`base_options` (whose built contexts the pipeline caches).
        """
        if interceptor is self.interceptor:
            return self.base_options
        return dataclasses.replace(self.base_options, interceptor=interceptor)

    # -- errors with user keys (tikv_txn._kv.decode_error_keys) --------------------------

    def key_error(self, err: kvrpcpb_pb2.KeyError, *, start_ts: int = 0) -> TxnError:
        """The typed exception of a ``kvrpcpb.KeyError``, with user keys (API v2)."""
        return decode_error_keys(key_error_to_exception(err, start_ts=start_ts), self.codec)

    def locks_of(
        self, errors: Iterable[kvrpcpb_pb2.KeyError], *, start_ts: int = 0
    ) -> list[LockInfo]:
        """The locks of ``errors`` (stored keys, for the resolver); raise the first other error.

        The error raised carries user keys (:meth:`key_error`).
        """
        locks: list[LockInfo] = []
        for err in errors:
            if not err.HasField("locked"):
                raise self.key_error(err, start_ts=start_ts)
            locks.append(lock_from_pb(err.locked))
        return locks

    def prewrite_locks(
        self,
        errors: Iterable[kvrpcpb_pb2.KeyError],
        *,
        start_ts: int,
        primary: bytes,
        optimistic: bool = True,
    ) -> list[LockInfo]:
        """The locks a prewrite (or a pipelined flush) met, to resolve; raise other errors.

        A lock of a *younger* transaction fails an optimistic writer at once with a
        :class:`WriteConflictError` (user keys): whatever that transaction does, this one
        can only end in a write conflict, so it does not wait for the lock (client-go
        ``prewrite.go`` / ``extractKeyErrs``). A pessimistic writer resolves it: its keys
        are locked already.
        """
        locks = self.locks_of(errors, start_ts=start_ts)
        if optimistic:
            for lock in locks:
                if lock.lock_version > start_ts:
                    raise self.user_error(
                        WriteConflictError(
                            start_ts=start_ts,
                            conflict_start_ts=lock.lock_version,
                            conflict_commit_ts=0,
                            key=lock.key,
                            primary=primary,
                            reason=1,
                        )
                    )
        return locks

    def locked_error(self, lock: LockInfo) -> KeyIsLockedError:
        """:class:`KeyIsLockedError` for a lock met (user keys), e.g. as a backoff's cause."""
        return decode_error_keys(KeyIsLockedError(lock), self.codec)

    def user_error(self, exc: E) -> E:
        """``exc``, built by the client from stored keys, with user keys instead."""
        return decode_error_keys(exc, self.codec)

    def check_open(self) -> None:
        """Raise :class:`ClientClosedError` once the client is closed."""
        if self.closed:
            raise ClientClosedError("transaction client")

    def request_options(self, **overrides: Any) -> RequestOptions:
        """Request options with this client's API version / keyspace plus ``overrides``.

        Equal overrides return the same object: the pipeline caches built
        ``kvrpcpb.Context`` messages per options object, so transactions with the same
        options share cached contexts instead of building new ones.
        """
        memo_key = tuple(sorted(overrides.items()))
        cached = self._options_memo.get(memo_key)
        if cached is not None:
            return cached
        fields: dict[str, Any] = {
            "api_version": self.codec.api_version,
            "keyspace_id": self.codec.keyspace_id,
            "keyspace_name": self.keyspace_name,
            "request_source": REQUEST_SOURCE,
            "interceptor": self.interceptor,
        }
        fields.update(overrides)
        options = RequestOptions(**fields)
        if len(self._options_memo) >= _OPTIONS_MEMO_SIZE:
            self._options_memo.clear()
        self._options_memo[memo_key] = options
        return options

    # -- background tasks ------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run ``coro`` as a background task owned by the client; its error is logged."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.background_errors.append(exc)
            del self.background_errors[:-100]
            _log.warning("background task %s failed: %s", task.get_name(), exc, exc_info=exc)

    @property
    def pending_tasks(self) -> int:
        """How many background tasks are still running."""
        return len(self._tasks)

    async def wait_background(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        """Wait until every background task finished; False if ``timeout`` passed first."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while self._tasks:
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                return False
            await asyncio.wait(set(self._tasks), timeout=left)
        return True

    async def close(self, grace: float = 5.0) -> None:
        """Let background work finish for up to ``grace`` seconds, then cancel it."""
        if self.closed:
            return
        self.closed = True
        # Heartbeats of transactions still open must stop (their locks then expire);
        # secondary commits and cleanups get ``grace`` seconds to save readers work.
        for task in list(self._tasks):
            if task.get_name().startswith(HEARTBEAT_TASK_PREFIX):
                task.cancel()
        await self.wait_background(grace)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        if self.latches is not None:
            self.latches.close()
