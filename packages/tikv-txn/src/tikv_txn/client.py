"""Transactional clients: :class:`AsyncTransactionClient` (asyncio) and its blocking facade.

The async client is the implementation. :meth:`AsyncTransactionClient.connect` builds the
stack every request runs on — the PD client, the PD oracle (timestamps, with the 2 s
low-resolution refresh), the region locator (transactional keys are memcomparable-encoded
toward PD), the store transport (BatchCommands streams) and the shared request pipeline —
the same pieces, wired the same way, as the raw client. The blocking
:class:`TransactionClient` owns a private event loop thread
(:class:`tikv_pd.sync.LoopThread`) and runs the async client's coroutines there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

from tikv_pd.codec import KeyCodec, make_codec
from tikv_pd.config import REPLICA_READ_TYPES, Config, ReplicaReadType, TransactionOptions
from tikv_pd.interceptor import RPCInterceptor, chain_interceptors
from tikv_pd.locator import RegionLocator
from tikv_pd.observability import register_operations
from tikv_pd.pd_client import PDClient, ServiceSafePoint
from tikv_pd.pd_oracle import PDOracle
from tikv_pd.request import RequestSender
from tikv_pd.safe_ts import SafeTsCache, fetch_store_safe_ts
from tikv_pd.transport import Transport

from tikv_txn import gc as _gc
from tikv_txn._runtime import TxnRuntime
from tikv_txn.delete_range import DeleteRangeTask
from tikv_txn.pipelined import AsyncPipelinedTransaction
from tikv_txn.snapshot import AsyncSnapshot
from tikv_txn.transaction import AsyncTransaction

__all__ = ["AsyncTransactionClient"]


def _check_endpoints(endpoints: Sequence[str] | str) -> list[str]:
    if isinstance(endpoints, str):
        endpoints = [endpoints]
    eps = list(endpoints)
    if not eps or not all(isinstance(e, str) and e for e in eps):
        raise ValueError(
            f"pd_endpoints must be a non-empty list of 'host:port' strings, got {endpoints!r}"
        )
    return eps


def resolve_options(
    config: Config, options: TransactionOptions | None, pessimistic: bool
) -> TransactionOptions:
    """The options of a new transaction, checked before anything is sent.

    Without ``options`` the client's defaults apply (``Config.enable_async_commit`` and
    ``Config.enable_1pc``, client-go's global switches); explicit options are used as
    given. ``pessimistic=True`` makes the transaction pessimistic (client-go
    ``KVTxn.SetPessimistic``), as ``TransactionOptions.pessimistic()`` does.

    Raises:
        TypeError: ``options`` is not a TransactionOptions.
        ValueError: A mode that is not supported yet (a local txn scope), or a
            pipelined pessimistic transaction.

    """
    if options is not None and not isinstance(options, TransactionOptions):
        raise TypeError(
            f"options must be a tikv_pd.config.TransactionOptions, got {type(options).__name__}"
        )
    if not isinstance(pessimistic, bool):
        raise TypeError(f"pessimistic must be a bool, got {type(pessimistic).__name__}")
    if options is None:
        return TransactionOptions(
            mode="pessimistic" if pessimistic else "optimistic",
            async_commit=config.enable_async_commit,
            try_one_pc=config.enable_1pc,
        )
    if pessimistic and not options.is_pessimistic:
        options = dataclasses.replace(options, mode="pessimistic")
    if options.pipelined and options.is_pessimistic:
        # client-go KVTxn.SetPessimistic panics on a pipelined transaction.
        raise ValueError("a pipelined transaction cannot be pessimistic")
    if options.txn_scope != "global":
        # Local (per-DC) TSO scopes are gone from PD; a local start ts would silently be
        # a global one here, so refuse the option instead of ignoring it.
        raise ValueError(f"only the 'global' txn_scope is supported, got {options.txn_scope!r}")
    return options


class _Begin:
    """What ``client.begin()`` returns: awaitable, and an async context manager.

    ``await client.begin()`` gives the transaction; ``async with client.begin() as txn``
    commits on success and rolls back on error.
    """

    __slots__ = ("_client", "_options", "_txn")

    def __init__(self, client: AsyncTransactionClient, options: TransactionOptions) -> None:
        self._client = client
        self._options = options
        self._txn: AsyncTransaction | None = None

    def __await__(self) -> Generator[Any, None, AsyncTransaction]:
        return self._client._begin(self._options).__await__()

    async def __aenter__(self) -> AsyncTransaction:
        self._txn = await self._client._begin(self._options)
        return self._txn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._txn is not None
        await self._txn.__aexit__(exc_type, exc, tb)


class AsyncTransactionClient:
    """Transactional client for TiKV (asyncio).

    Create one with :meth:`connect`; use it as an async context manager or call
    :meth:`close`.

    Example:
        >>> async with await AsyncTransactionClient.connect(["127.0.0.1:2379"]) as client:
        ...     async with client.begin() as txn:
        ...         txn.put(b"k", b"v")
        ...     snap = client.snapshot(await client.current_timestamp())
        ...     assert await snap.get(b"k") == b"v"

    """

    __slots__ = ("_locator", "_pd", "_rt", "_transport")

    def __init__(
        self,
        pd: PDClient,
        locator: RegionLocator,
        transport: Transport,
        runtime: TxnRuntime,
    ) -> None:
        """Wrap a connected stack (use :meth:`connect` instead)."""
        self._pd = pd
        self._locator = locator
        self._transport = transport
        self._rt = runtime

    @classmethod
    async def connect(
        cls,
        pd_endpoints: Sequence[str] | str,
        *,
        config: Config | None = None,
        keyspace: str | None = None,
        api_version: int = 1,
    ) -> AsyncTransactionClient:
        """Connect to a TiKV cluster through its PD endpoints.

        Args:
            pd_endpoints: PD addresses (``"host:port"``), or one address.
            config: Client configuration (default: client-go's defaults).
            keyspace: Keyspace name (API v2); implies ``api_version=2``.
            api_version: 1 (keys stored as given) or 2 (keys prefixed with the keyspace;
                without ``keyspace``, the default keyspace).

        Raises:
            TypeError / ValueError: Bad arguments (before connecting).
            tikv_pd.errors.PDError: PD unreachable, or the keyspace does not exist.

        """
        eps = _check_endpoints(pd_endpoints)
        if config is not None and not isinstance(config, Config):
            raise TypeError(f"config must be a tikv_pd.config.Config, got {type(config).__name__}")
        if keyspace is not None and (not isinstance(keyspace, str) or not keyspace):
            raise ValueError(f"keyspace must be a non-empty str or None, got {keyspace!r}")
        if isinstance(api_version, bool) or api_version not in (1, 2):
            raise ValueError(f"api_version must be 1 or 2, got {api_version!r}")
        if keyspace is not None:
            api_version = 2
        cfg = config or Config()
        pd = await PDClient.connect(eps, config=cfg, caller_id="tikv-txn")
        oracle: PDOracle | None = None
        locator: RegionLocator | None = None
        transport: Transport | None = None
        try:
            codec: KeyCodec
            if api_version == 2:
                keyspace_id = 0 if keyspace is None else (await pd.load_keyspace(keyspace)).id
                codec = make_codec(2, "txn", keyspace_id)
            else:
                codec = make_codec(0, "txn")
            oracle = await PDOracle.create(pd)
            locator = RegionLocator(pd, codec=codec)
            locator.start()
            transport = Transport(cfg)
            sender = RequestSender(locator, transport)
            if cfg.validate_read_ts:
                # client-go EnableTSValidation: every read's ts is checked against PD's.
                sender.read_ts_validator = oracle.validate_read_ts
            runtime = TxnRuntime(sender, oracle, codec, cfg, keyspace_name=keyspace or "", pd=pd)
        except BaseException:
            if oracle is not None:
                await oracle.close()
            if locator is not None:
                await locator.close()
            if transport is not None:
                await transport.close()
            await pd.close()
            raise
        return cls(pd, locator, transport, runtime)

    # -- accessors ---------------------------------------------------------------------

    @property
    def config(self) -> Config:
        """The client configuration."""
        return self._rt.config

    @property
    def runtime(self) -> TxnRuntime:
        """Shared internals (pipeline, oracle, lock resolver, background tasks)."""
        return self._rt

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._rt.closed

    # -- API ---------------------------------------------------------------------------

    def begin(
        self, options: TransactionOptions | None = None, *, pessimistic: bool = False
    ) -> _Begin:
        """Start a transaction at a fresh start ts.

        ``txn = await client.begin()``, or ``async with client.begin() as txn:`` to
        commit when the block ends and roll back when it raises.

        Args:
            options: Transaction options (default: optimistic, with the client's
                async-commit / 1PC defaults).
            pessimistic: Make it a pessimistic transaction (keys are locked as they are
                written or read for update; see :mod:`tikv_txn.pessimistic`).

        Raises:
            ValueError: A pipelined pessimistic transaction, or a local txn scope.
            TypeError: ``options`` is not a TransactionOptions.

        """
        opts = resolve_options(self._rt.config, options, pessimistic)
        self._rt.check_open()
        return _Begin(self, opts)

    async def _begin(self, options: TransactionOptions) -> AsyncTransaction:
        self._rt.check_open()
        start_ts = options.start_ts
        if start_ts is None:
            start_ts = await self._rt.oracle.get_timestamp()
        if options.pipelined:
            # Pipelined DML (tikv_txn.pipelined): the buffer is flushed while it runs.
            return AsyncPipelinedTransaction(self._rt, start_ts, options)
        return AsyncTransaction(self._rt, start_ts, options)

    def snapshot(
        self,
        ts: int,
        options: TransactionOptions | None = None,
        *,
        replica_read: ReplicaReadType | None = None,
        stale_read: bool = False,
        match_labels: Mapping[str, str] | None = None,
    ) -> AsyncSnapshot:
        """A read-only view of the data committed at or before ``ts``.

        Args:
            ts: The read timestamp.
            options: Read options (isolation, priority, replica read, ...).
            replica_read: Which replicas serve the reads (``"leader"``, ``"follower"``,
                ``"mixed"``, ``"learner"``, ``"prefer-leader"``; client-go
                ``KVSnapshot.SetReplicaRead``); overrides ``options.replica_read``.
            stale_read: Read as a stale read: any replica whose safe ts covers ``ts``
                serves it, the leader when none does (client-go
                ``SetIsStalenessReadOnly``). ``ts`` should be in the past, e.g. from
                :meth:`stale_snapshot` or :meth:`min_safe_ts`.
            match_labels: Store labels replica and stale reads prefer, e.g.
                ``{"zone": "z1"}`` to read the local replica (client-go
                ``SetMatchStoreLabels``).

        Raises:
            TypeError / ValueError: ``ts`` is not a positive 64-bit int, or a bad
                ``replica_read``.

        """
        opts = _snapshot_options(options, replica_read)
        self._rt.check_open()
        return AsyncSnapshot(self._rt, ts, opts, stale_read=stale_read, match_labels=match_labels)

    async def stale_snapshot(
        self,
        prev_seconds: float,
        options: TransactionOptions | None = None,
        *,
        match_labels: Mapping[str, str] | None = None,
    ) -> AsyncSnapshot:
        """A stale-read snapshot of the data as it was about ``prev_seconds`` ago.

        The ts comes from the oracle's stale timestamp (client-go
        ``oracle.GetStaleTimestamp``: the last PD timestamp moved back by the local time
        elapsed since it was fetched and by ``prev_seconds``); reads go to any replica whose
        safe ts covers it (see :meth:`snapshot` with ``stale_read=True``).

        Raises:
            ValueError: ``prev_seconds`` is negative or not finite.

        """
        opts = _snapshot_options(options, None)
        self._rt.check_open()
        ts = await self._rt.oracle.get_stale_timestamp(prev_seconds)
        return AsyncSnapshot(self._rt, ts, opts, stale_read=True, match_labels=match_labels)

    # -- RPC interceptors ----------------------------------------------------------------

    @property
    def rpc_interceptor(self) -> RPCInterceptor | None:
        """The client's RPC interceptor (chain), or ``None``."""
        return self._rt.interceptor

    def set_rpc_interceptor(self, interceptor: RPCInterceptor | None) -> None:
        """Run ``interceptor`` around every RPC of this client (``None``: none).

        Transactions and snapshots begun afterwards use it (outermost of their chains),
        and so do lock resolution, GC and delete-range requests. See
        :mod:`tikv_pd.interceptor`.
        """
        if interceptor is not None and not isinstance(interceptor, RPCInterceptor):
            raise TypeError(
                f"interceptor must have .name and .wrap(next), got {type(interceptor).__name__}"
            )
        self._rt.set_interceptor(interceptor)

    def add_rpc_interceptor(self, interceptor: RPCInterceptor) -> None:
        """Append ``interceptor`` to the client's chain (it runs after the others)."""
        current = self._rt.interceptor
        self.set_rpc_interceptor(
            interceptor if current is None else chain_interceptors(current, interceptor)
        )

    async def current_timestamp(self) -> int:
        """A fresh timestamp from PD's TSO."""
        self._rt.check_open()
        return await self._rt.oracle.get_timestamp()

    async def min_safe_ts(self) -> int:
        """The newest ts at which every replica serves stale reads (client-go ``GetMinSafeTS``).

        Asks every TiKV store for its safe ts (``GetStoreSafeTS``) and applies client-go's
        rule: the smallest non-zero value; 0 when a store did not answer or none has one.
        A stale snapshot at this ts is served by whichever replica it reaches.
        """
        self._rt.check_open()
        cache = SafeTsCache()
        asked = await fetch_store_safe_ts(self._pd, self._transport, cache)
        return cache.min_safe_ts(asked)

    # -- GC and ranges (tikv_txn.gc, tikv_txn.delete_range) -----------------------------

    async def gc(self, safe_point: int, *, concurrency: int = _gc.GC_CONCURRENCY) -> int:
        """Resolve every lock at or below ``safe_point``, then advance PD's GC safepoint.

        client-go ``KVStore.GC``; see :func:`tikv_txn.gc.run_gc`. A transaction that
        started at or below ``safe_point`` and is still running gets rolled back. The
        safepoint never moves backwards and never passes a service safepoint.

        Returns:
            PD's GC safepoint afterwards.

        """
        self._rt.check_open()
        result = await _gc.run_gc(self._rt, self._pd, safe_point, concurrency=concurrency)
        return result.safe_point

    async def gc_safe_point(self) -> int:
        """PD's current GC safepoint (the keyspace's under API v2)."""
        self._rt.check_open()
        return await _gc.get_gc_safe_point(self._pd, self._rt.codec)

    async def update_service_gc_safe_point(
        self, service_id: str, ttl: int, safe_point: int
    ) -> ServiceSafePoint:
        """Register a service GC safepoint (``ttl`` seconds; ``ttl <= 0`` removes it).

        See :func:`tikv_txn.gc.update_service_gc_safe_point`.
        """
        self._rt.check_open()
        return await _gc.update_service_gc_safe_point(
            self._pd, self._rt.codec, service_id, ttl, safe_point
        )

    async def delete_range(
        self,
        start: bytes,
        end: bytes | None = None,
        *,
        notify_only: bool = False,
        concurrency: int = _gc.GC_CONCURRENCY,
    ) -> int:
        """Delete every version of every key in ``[start, end)``; return the regions done.

        client-go ``KVStore.DeleteRange``; see :class:`tikv_txn.delete_range.DeleteRangeTask`
        (use it directly to resume a failed deletion).
        """
        self._rt.check_open()
        task = DeleteRangeTask(
            self._rt, start, end, notify_only=notify_only, concurrency=concurrency
        )
        return await task.execute()

    async def close(self) -> None:
        """Finish background work (up to 5 s), then close connections and PD. Idempotent."""
        if self._rt.closed:
            return
        try:
            await self._rt.close(self._rt.budgets.close_grace_s)
        finally:
            try:
                await self._rt.oracle.close()
                await self._locator.close()
                await self._transport.close()
            finally:
                await self._pd.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


# Client operations, instrumented while metrics or tracing is on (tikv_pd.observability).
def _snapshot_options(
    options: TransactionOptions | None, replica_read: ReplicaReadType | None
) -> TransactionOptions | None:
    """Check a snapshot's options and apply a ``replica_read`` override."""
    if options is not None and not isinstance(options, TransactionOptions):
        raise TypeError(
            f"options must be a tikv_pd.config.TransactionOptions, got {type(options).__name__}"
        )
    if replica_read is None:
        return options
    if replica_read not in REPLICA_READ_TYPES:
        raise ValueError(
            f"replica_read must be one of {list(REPLICA_READ_TYPES)}, got {replica_read!r}"
        )
    return dataclasses.replace(options or TransactionOptions(), replica_read=replica_read)


register_operations(
    AsyncTransactionClient, "txn", {"gc": None, "delete_range": None}, span_prefix="tikv.txn"
)
