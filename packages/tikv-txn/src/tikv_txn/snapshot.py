"""Snapshot reads: the data committed before a timestamp (client-go ``txnsnapshot``).

A snapshot reads every key at one ts. Point reads (``KvGet``), batch reads (``KvBatchGet``,
keys grouped by region in batches of 5120 and sent concurrently, client-go
``batchGetSize``) and scans (``KvScan``, pages of 256 keys clipped to one region,
client-go ``scanBatchSize``) all go through the shared request pipeline, which handles
region errors and re-sharding. A key locked by another transaction is handed to the lock
resolver (:mod:`tikv_txn.lock_resolver`): resolved, read past when TiKV pushed the lock
beyond this snapshot, or waited for with the ``txnLockFast`` backoff capped by the lock's
remaining TTL, as client-go's ``KVSnapshot.get`` and ``batchGetSingleRegion`` do. A
locked key inside a scan page is read again with a point get once its lock is resolved
(client-go ``Scanner.resolveCurrentLock``).

After every read (point, batch, scan page) the snapshot ts is checked against the GC
safepoint (:func:`tikv_txn.gc.check_visibility`, client-go ``CheckVisibility``): a read
below it raises :class:`~tikv_pd.errors.GCTooEarlyError`.

Under snapshot isolation the values read are cached (a snapshot never changes), including
"not found"; read-committed snapshots do not cache.

Replica and stale reads: ``TransactionOptions.replica_read`` picks which replica serves the
reads (client-go ``KVSnapshot.SetReplicaRead``; the pipeline's replica selector applies the
policy). A *stale* snapshot (``stale_read=True``, client-go ``SetIsStalenessReadOnly``) reads
at a past ts from any replica whose safe ts covers it: requests carry ``Context.stale_read``
and the replica selector's stale-read rules (a random replica first; after
``DataIsNotReady`` the leader as a normal read). A stale read that meets a lock resolves it
and reads that key again from the leader with a normal read (client-go
``DisableStaleReadMeetLock``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from tikv_pd.backoff import TXN_LOCK_FAST, Backoffer
from tikv_pd.config import (
    REPLICA_READ_TYPES,
    IsolationLevel,
    ReplicaReadType,
    TransactionOptions,
)
from tikv_pd.errors import LockInfo, TxnError
from tikv_pd.interceptor import RPCInterceptor, chain_interceptors
from tikv_pd.observability import register_operations
from tikv_pd.region_cache import Region
from tikv_pd.request import KeysSharder, RequestOptions
from tikv_proto import kvrpcpb_pb2

from tikv_txn._kv import lock_from_pb
from tikv_txn._validate import check_key, check_keys, check_limit, check_range
from tikv_txn.gc import check_visibility
from tikv_txn.runtime_stats import SnapshotRuntimeStats

if TYPE_CHECKING:
    from tikv_txn._runtime import TxnRuntime

__all__ = ["AsyncSnapshot", "ReplicaReadAdjuster", "ValueEntry"]

#: ``adjuster(number_of_keys) -> (store labels to prefer or None, replica-read type)``:
#: see :meth:`AsyncSnapshot.set_replica_read_adjuster` (client-go ``ReplicaReadAdjuster``).
ReplicaReadAdjuster = Callable[[int], tuple[Mapping[str, str] | None, ReplicaReadType]]


class ValueEntry(NamedTuple):
    """A value read with the commit ts of the version it came from.

    client-go ``kv.ValueEntry`` as returned with ``kv.WithReturnCommitTS()``: TiKV fills
    ``commit_ts`` when the read asks for it (``GetRequest`` / ``BatchGetRequest``
    ``need_commit_ts``).
    """

    #: The value.
    value: bytes
    #: The commit ts of the transaction that wrote it.
    commit_ts: int


_MISSING = object()
_MAX_U64 = 2**64 - 1

#: A key greater than every key TiKV can store: longer than ``storage.max-key-size``
#: (8 KiB; TiKV refuses longer keys on write), and made of 0xFF bytes, so that any
#: storable key is either smaller at some byte or a proper prefix of it.
_ABOVE_ALL_KEYS = b"\xff" * (8 * 1024 + 1)


class AsyncSnapshot:
    """A consistent read view at :attr:`ts` (asyncio).

    Get one from :meth:`tikv_txn.AsyncTransactionClient.snapshot` or use the snapshot of
    a transaction. Keys and values are bytes; absent keys are ``None`` / left out.

    Args:
        runtime: The client's shared state.
        ts: The read timestamp.
        options: Transaction options (isolation, priority, replica read, ...).
        stale_read: Read as a stale read (any replica whose safe ts covers ``ts``; the
            options' ``replica_read`` is then ignored, as client-go uses ``mixed``).
        match_labels: Store labels that replica and stale reads prefer (client-go
            ``KVSnapshot.SetMatchStoreLabels``), e.g. ``{"zone": "z1"}`` for the local
            replica.

    """

    __slots__ = (
        "_adjusted_memo",
        "_adjuster",
        "_cache",
        "_cache_commit_ts",
        "_chain",
        "_committed",
        "_ignored",
        "_interceptor",
        "_isolation",
        "_leader_options",
        "_options",
        "_read_past",
        "_resolve_options",
        "_rt",
        "_scan_batch",
        "_scan_options",
        "_stats",
        "stale_read",
        "ts",
    )

    def __init__(
        self,
        runtime: TxnRuntime,
        ts: int,
        options: TransactionOptions | None = None,
        *,
        stale_read: bool = False,
        match_labels: Mapping[str, str] | None = None,
    ) -> None:
        if isinstance(ts, bool) or not isinstance(ts, int):
            raise TypeError(f"ts must be an int, got {type(ts).__name__}")
        if ts <= 0 or ts >= 2**64:
            raise ValueError(f"ts must be a positive 64-bit timestamp, got {ts}")
        if not isinstance(stale_read, bool):
            raise TypeError(f"stale_read must be a bool, got {stale_read!r}")
        labels = _check_labels(match_labels)
        opts = options or TransactionOptions()
        self._rt = runtime
        self.ts = ts
        #: Whether this snapshot reads as a stale read.
        self.stale_read = stale_read
        self._isolation: IsolationLevel = opts.isolation
        self._options = _read_options(runtime, opts, stale_read=stale_read, labels=labels)
        cfg = runtime.config
        self._scan_options = _read_options(
            runtime, opts, timeout=cfg.read_timeout_medium, stale_read=stale_read, labels=labels
        )
        # After a stale read meets a lock, the key is read again from the leader.
        self._leader_options = (
            _read_options(runtime, dataclasses.replace(opts, replica_read="leader"))
            if stale_read
            else self._options
        )
        self._scan_batch = opts.scan_batch_size or cfg.txn_scan_batch
        # A snapshot at MaxUint64 reads whatever is newest each time, so nothing it reads
        # may be cached (client-go TestSnapshotCacheBypassMaxUint64).
        cacheable = opts.isolation == "SI" and ts != _MAX_U64
        self._cache: dict[bytes, bytes | None] | None = {} if cacheable else None
        # The commit ts of cached values, for the keys read with it: a cached value
        # without one cannot answer a read that wants it (client-go caches ValueEntry
        # and treats a zero commit ts as unknown, getSnapCacheWithoutLock).
        self._cache_commit_ts: dict[bytes, int] = {}
        # Transactions whose locks this snapshot reads past (resolver's answers and
        # read_past_locks_of), and those told by read_past_locks_of, which a new ts keeps.
        self._ignored: set[int] = set()
        self._read_past: set[int] = set()
        # Transactions the resolver found committed at or before the read ts whose locks
        # it resolves in the background: reads go through their locks meanwhile.
        self._committed: set[int] = set()
        self._interceptor: RPCInterceptor | None = None
        # Options of the lock resolution this snapshot's reads cause (None: the client's).
        self._resolve_options: RequestOptions | None = None
        # The interceptor chain of the reads (client's and own).
        self._chain: RPCInterceptor | None = runtime.interceptor
        self._stats: SnapshotRuntimeStats | None = None
        self._adjuster: ReplicaReadAdjuster | None = None
        self._adjusted_memo: dict[tuple[int, str, tuple[tuple[str, str], ...]], RequestOptions] = {}

    # -- RPC interceptors (client-go KVSnapshot.SetRPCInterceptor / AddRPCInterceptor) ---

    @property
    def rpc_interceptor(self) -> RPCInterceptor | None:
        """The snapshot's own RPC interceptor (chain), or ``None``."""
        return self._interceptor

    def set_rpc_interceptor(self, interceptor: RPCInterceptor | None) -> None:
        """Run ``interceptor`` around every RPC of this snapshot's reads.

        It runs inside the client's interceptor (if any) and replaces the snapshot's
        previous one; ``None`` removes it. See :mod:`tikv_pd.interceptor`.
        """
        if interceptor is not None and not isinstance(interceptor, RPCInterceptor):
            raise TypeError(
                f"interceptor must have .name and .wrap(next), got {type(interceptor).__name__}"
            )
        self._interceptor = interceptor
        client = self._rt.interceptor
        if interceptor is None:
            effective = client
        elif client is None:
            effective = interceptor
        else:
            effective = chain_interceptors(client, interceptor)
        self._use_interceptor(effective)

    def add_rpc_interceptor(self, interceptor: RPCInterceptor) -> None:
        """Append ``interceptor`` to the snapshot's chain (it runs after the others)."""
        current = self._interceptor
        self.set_rpc_interceptor(
            interceptor if current is None else chain_interceptors(current, interceptor)
        )

    def _use_interceptor(self, effective: RPCInterceptor | None) -> None:
        """Send the reads with ``effective`` (the whole chain, the client's included)."""
        self._chain = effective
        self._apply_read_chain()
        # Lock resolution runs inside the same chain (client-go's resolver sends with
        # the reader's context, which carries its interceptor).
        self._resolve_options = self._rt.resolve_options(effective)

    def _apply_read_chain(self) -> None:
        """Put :attr:`_chain` and the RPC statistics if any in the reads' options."""
        chain = self._chain
        # The pipeline counts every attempt of the reads into the runtime statistics
        # (client-go gives the reads' sender the snapshot's Stats), timing the send with
        # the interceptors inside it. Lock resolution is not counted: it is sent with
        # _resolve_options, as client-go's resolver sends without the snapshot's stats.
        rpc_stats = None if self._stats is None else self._stats.rpc_stats
        self._options = dataclasses.replace(self._options, interceptor=chain, rpc_stats=rpc_stats)
        self._scan_options = dataclasses.replace(
            self._scan_options, interceptor=chain, rpc_stats=rpc_stats
        )
        self._leader_options = dataclasses.replace(
            self._leader_options, interceptor=chain, rpc_stats=rpc_stats
        )
        # Adjusted options were derived from the replaced ones.
        self._adjusted_memo.clear()

    # -- moving the read ts (client-go KVSnapshot.SetSnapshotTS) -------------------------

    def set_ts(self, ts: int) -> None:
        """Read at ``ts`` from now on (client-go ``KVSnapshot.SetSnapshotTS``).

        What the snapshot learned at the old ts is dropped with it: the read cache, and
        the transactions whose locks it was reading past (their min commit ts had been
        pushed beyond the old ts, but they may have committed at or below the new one, so
        their locks must be checked again; client-go TestResetSnapshotTS). Call it between
        reads, not while one runs.

        Raises:
            TypeError / ValueError: ``ts`` is not a positive 64-bit int.

        """
        if isinstance(ts, bool) or not isinstance(ts, int):
            raise TypeError(f"ts must be an int, got {type(ts).__name__}")
        if ts <= 0 or ts >= 2**64:
            raise ValueError(f"ts must be a positive 64-bit timestamp, got {ts}")
        self.ts = ts
        cacheable = self._isolation == "SI" and ts != _MAX_U64
        self._cache = {} if cacheable else None
        self._cache_commit_ts = {}
        # What read_past_locks_of asked for (a pipelined transaction's own locks) stays.
        self._ignored = set(self._read_past)
        # Committed at or before the old ts may be after a lower new one.
        self._committed = set()

    # -- runtime statistics (client-go KVSnapshot.SetRuntimeStats) -----------------------

    @property
    def runtime_stats(self) -> SnapshotRuntimeStats | None:
        """The statistics this snapshot adds to, or ``None`` (not collecting)."""
        return self._stats

    def set_runtime_stats(self, stats: SnapshotRuntimeStats | None) -> None:
        """Record what this snapshot's reads cost into ``stats`` (``None``: stop).

        Each RPC of a read is counted per command with its time (and its region or send
        error), each read's backoffs per kind, the time spent resolving locks, and the
        execution details TiKV returns (``exec_details_v2``); ``str(stats)`` prints them
        as client-go's ``SnapshotRuntimeStats.String()``. Lock resolution RPCs are not
        counted, as in client-go. The request pipeline counts the RPCs into
        ``stats.rpc_stats`` (the object it holds now), also while a caller's
        :func:`tikv_pd.request.collect_rpc_stats` block counts them.

        Raises:
            TypeError: ``stats`` is not a :class:`~tikv_txn.runtime_stats.SnapshotRuntimeStats`.

        """
        if stats is not None and not isinstance(stats, SnapshotRuntimeStats):
            raise TypeError(f"stats must be a SnapshotRuntimeStats, got {type(stats).__name__}")
        self._stats = stats
        self._apply_read_chain()

    def _record_exec_details(self, resp: Any) -> None:
        # client-go mergeExecDetail: each Get / BatchGet answer's execution details.
        stats = self._stats
        if stats is not None and resp.HasField("exec_details_v2"):
            stats.merge_exec_details(resp.exec_details_v2)

    def _record_backoff(self, bo: Backoffer) -> None:
        stats = self._stats
        if stats is not None and bo.total_sleep_ms:
            stats.record_backoff(bo.backoff_sleep_ms, bo.backoff_times)

    @property
    def isolation(self) -> IsolationLevel:
        """The isolation level reads use (``"SI"``, ``"RC"`` or ``"RCCheckTS"``)."""
        return self._isolation

    # -- point reads -------------------------------------------------------------------

    async def get(self, key: bytes) -> bytes | None:
        """Return the value of ``key`` at :attr:`ts`, or ``None`` if it does not exist.

        Raises:
            TypeError / ValueError: ``key`` is not non-empty bytes.
            tikv_pd.errors.TimeoutError: The read kept failing (locks, region errors)
                for client-go's 20 s budget.

        """
        _, value = await self._point_get(key, None)
        return value

    async def get_with_commit_ts(self, key: bytes) -> ValueEntry | None:
        """Return the value of ``key`` at :attr:`ts` with its commit ts, or ``None``.

        client-go ``KVSnapshot.Get(ctx, key, kv.WithReturnCommitTS())``: the read asks
        TiKV for the commit ts of the version it returns (``need_commit_ts``). A value
        cached by an earlier read without it is read again.

        Raises:
            TypeError / ValueError: ``key`` is not non-empty bytes.
            TxnError: TiKV returned a value without its commit ts (a server that does
                not support ``need_commit_ts``).
            tikv_pd.errors.TimeoutError: The read kept failing for the 20 s budget.

        """
        commit_ts: dict[bytes, int] = {}
        enc, value = await self._point_get(key, commit_ts)
        if value is None:
            return None
        return ValueEntry(value, _required_commit_ts(commit_ts, enc, self.ts))

    async def _point_get(
        self, key: bytes, commit_ts: dict[bytes, int] | None
    ) -> tuple[bytes, bytes | None]:
        """:meth:`get` and :meth:`get_with_commit_ts`: the encoded key and its value."""
        check_key(key)
        self._rt.check_open()
        enc = self._rt.codec.encode_key(key)
        bo = self._rt.backoffer(self._rt.budgets.get, "txn get")
        try:
            value = await self._get_encoded(enc, bo, commit_ts)
        finally:
            self._record_backoff(bo)
        # client-go checks the GC safepoint after the read (GC may advance meanwhile).
        await check_visibility(self._rt, self.ts)
        return enc, value

    async def _get_encoded(
        self, key: bytes, bo: Backoffer, commit_ts: dict[bytes, int] | None = None
    ) -> bytes | None:
        """Read ``key``; with ``commit_ts`` also its commit ts, stored there when found."""
        cache = self._cache
        if cache is not None:
            hit = cache.get(key, _MISSING)
            if hit is not _MISSING:
                if commit_ts is None or hit is None:
                    return hit  # type: ignore[return-value]
                known = self._cache_commit_ts.get(key)
                if known:
                    commit_ts[key] = known
                    return hit  # type: ignore[return-value]
        sender = self._rt.sender
        options = self._adjusted(self._options, 1)
        need = commit_ts is not None
        first_lock: int | None = None
        while True:
            req = kvrpcpb_pb2.GetRequest(key=key, version=self.ts, need_commit_ts=need)
            resp = await sender.call_key(
                "Get", key, req, bo=bo, options=self._past(options, read_through=not need)
            )
            self._record_exec_details(resp)
            if resp.HasField("error"):
                err = resp.error
                if not err.HasField("locked"):
                    raise self._rt.key_error(err, start_ts=self.ts)
                lock = lock_from_pb(err.locked)
                if self.ts == _MAX_U64:
                    # client-go snapshot.get: a point get at the max ts (an autocommit point
                    # get) waits only for the first lock it meets; a lock of another
                    # transaction met on a retry is read past (its start ts joins the
                    # resolved locks), since that transaction began after the get did.
                    if first_lock is None:
                        first_lock = lock.lock_version
                    elif lock.lock_version != first_lock:
                        self._ignored.add(lock.lock_version)
                        continue
                await self.resolve_for_read(bo, [lock])
                options = self._leader_options  # client-go DisableStaleReadMeetLock
                continue
            value: bytes | None = None if resp.not_found else resp.value
            if commit_ts is not None and value is not None and resp.commit_ts:
                commit_ts[key] = resp.commit_ts
                if cache is not None:
                    self._cache_commit_ts[key] = resp.commit_ts
            if cache is not None:
                cache[key] = value
            return value

    async def batch_get(self, keys: Iterable[bytes]) -> dict[bytes, bytes]:
        """Return the existing keys among ``keys`` with their values at :attr:`ts`.

        Keys are grouped by region into requests of at most ``Config.batch_get_size``
        keys, sent concurrently.

        Raises:
            TypeError / ValueError: A key is not non-empty bytes.
            tikv_pd.errors.TimeoutError: The read kept failing for the 20 s budget.

        """
        enc, found = await self._multi_get(keys, None)
        return {enc[k]: v for k, v in found.items()}

    async def batch_get_with_commit_ts(self, keys: Iterable[bytes]) -> dict[bytes, ValueEntry]:
        """Return the existing keys among ``keys`` with their values and commit ts.

        client-go ``KVSnapshot.BatchGet(ctx, keys, kv.WithReturnCommitTS())``; as
        :meth:`batch_get` otherwise. Cached values without a known commit ts are read
        again.

        Raises:
            TypeError / ValueError: A key is not non-empty bytes.
            TxnError: TiKV returned a value without its commit ts.
            tikv_pd.errors.TimeoutError: The read kept failing for the 20 s budget.

        """
        commit_ts: dict[bytes, int] = {}
        enc, found = await self._multi_get(keys, commit_ts)
        return {
            enc[k]: ValueEntry(v, _required_commit_ts(commit_ts, k, self.ts))
            for k, v in found.items()
        }

    async def _multi_get(
        self, keys: Iterable[bytes], commit_ts: dict[bytes, int] | None
    ) -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
        """:meth:`batch_get` and :meth:`batch_get_with_commit_ts`.

        Returns the user key of each encoded key, and the values found by encoded key.
        """
        wanted = check_keys(keys)
        self._rt.check_open()
        codec = self._rt.codec
        enc = {codec.encode_key(k): k for k in wanted}
        bo = self._rt.backoffer(self._rt.budgets.batch_get, "txn batch_get")
        try:
            found = await self._batch_get_encoded(list(enc), bo, commit_ts)
        finally:
            self._record_backoff(bo)
        await check_visibility(self._rt, self.ts)
        return enc, found

    async def _batch_get_encoded(
        self, keys: Sequence[bytes], bo: Backoffer, commit_ts: dict[bytes, int] | None = None
    ) -> dict[bytes, bytes]:
        """Read ``keys``; with ``commit_ts`` also the commit ts of each value found."""
        out: dict[bytes, bytes] = {}
        cache = self._cache
        cached_ts = self._cache_commit_ts
        pending: list[bytes] = []
        for key in keys:
            hit = cache.get(key, _MISSING) if cache is not None else _MISSING
            if hit is _MISSING:
                pending.append(key)
            elif hit is not None:
                if commit_ts is not None:
                    known = cached_ts.get(key)
                    if not known:
                        pending.append(key)  # cached without its commit ts: read again
                        continue
                    commit_ts[key] = known
                out[key] = hit  # type: ignore[assignment]
        ts = self.ts
        need = commit_ts is not None
        sharder: KeysSharder[bytes] = KeysSharder(max_count=self._rt.config.batch_get_size)

        def build(region: Region, part: Sequence[bytes]) -> kvrpcpb_pb2.BatchGetRequest:
            return kvrpcpb_pb2.BatchGetRequest(keys=list(part), version=ts, need_commit_ts=need)

        def handle(region: Region, part: Sequence[bytes], resp: Any) -> tuple[Sequence[bytes], Any]:
            return part, resp

        options = self._options
        while pending:
            if self._adjuster is not None and self._adjusts(options):
                parts = await self._batch_get_adjusted(
                    pending, build, handle, bo, options, read_through=not need
                )
            else:
                parts = await self._rt.sender.execute(
                    "BatchGet",
                    sharder,
                    pending,
                    build,
                    handle,
                    bo=bo,
                    options=self._past(options, read_through=not need),
                )
            locks: list[LockInfo] = []
            # Keys to read again: the locked ones, and every key of a part whose whole
            # request failed (its one reported lock says nothing about the other keys;
            # client-go keeps all pending keys when the response-level error is set).
            again: set[bytes] = set()
            for part, resp in parts:
                self._record_exec_details(resp)
                if resp.HasField("error"):
                    if not resp.error.HasField("locked"):
                        raise self._rt.key_error(resp.error, start_ts=ts)
                    locks.append(lock_from_pb(resp.error.locked))
                    again.update(part)
                    continue
                got: set[bytes] = set()
                for pair in resp.pairs:
                    if pair.HasField("error"):
                        if not pair.error.HasField("locked"):
                            raise self._rt.key_error(pair.error, start_ts=ts)
                        locks.append(lock_from_pb(pair.error.locked))
                        continue
                    out[pair.key] = pair.value
                    got.add(pair.key)
                    if commit_ts is not None and pair.commit_ts:
                        commit_ts[pair.key] = pair.commit_ts
                        if cache is not None:
                            cached_ts[pair.key] = pair.commit_ts
                if cache is not None:
                    for key in part:
                        if key in got:
                            cache[key] = out[key]
                locked_keys = {lock.key for lock in locks}
                if cache is not None:
                    for key in part:
                        if key not in got and key not in locked_keys:
                            cache[key] = None
            if not locks:
                break
            await self.resolve_for_read(bo, locks)
            again.update(lock.key for lock in locks)
            pending = sorted(again)
            options = self._leader_options  # client-go DisableStaleReadMeetLock
        return out

    # -- replica-read adjuster (client-go KVSnapshot.SetReplicaReadAdjuster) ------------

    def set_replica_read_adjuster(self, adjuster: ReplicaReadAdjuster | None) -> None:
        """Let ``adjuster`` choose, request by request, how a replica read is served.

        client-go ``SetReplicaReadAdjuster`` (TiDB's adaptive closest read): for a
        snapshot reading from replicas (``replica_read`` other than ``"leader"``; stale
        reads excluded), each ``KvGet`` and each ``KvBatchGet`` of one region calls
        ``adjuster(number_of_keys)``, which returns the store labels the request should
        prefer (``None``: keep the snapshot's) and the replica-read type to use for it,
        e.g. the local replica for small reads and the leader for large ones. ``None``
        removes it.

        Raises:
            TypeError: ``adjuster`` is not callable.

        """
        if adjuster is not None and not callable(adjuster):
            raise TypeError(f"adjuster must be callable, got {type(adjuster).__name__}")
        self._adjuster = adjuster
        self._adjusted_memo.clear()

    def _adjusts(self, options: RequestOptions) -> bool:
        # client-go applies it when the request's replica-read type is a follower read;
        # stale reads (and a stale read's leader retry) are left as they are.
        return options.replica_read != "leader" and not options.stale_read

    def _adjusted(self, options: RequestOptions, count: int) -> RequestOptions:
        """``options`` as the adjuster wants them for a request of ``count`` keys."""
        adjuster = self._adjuster
        if adjuster is None or not self._adjusts(options):
            return options
        labels, read_type = adjuster(count)
        if read_type not in REPLICA_READ_TYPES:
            raise ValueError(
                f"the replica read adjuster returned {read_type!r}; "
                f"expected one of {REPLICA_READ_TYPES}"
            )
        pairs = options.match_labels if labels is None else _check_labels(labels)
        memo_key = (id(options), read_type, pairs)
        adjusted = self._adjusted_memo.get(memo_key)
        if adjusted is None:
            adjusted = dataclasses.replace(options, replica_read=read_type, match_labels=pairs)
            self._adjusted_memo[memo_key] = adjusted
        return adjusted

    async def _batch_get_adjusted(
        self,
        keys: Sequence[bytes],
        build: Any,
        handle: Any,
        bo: Backoffer,
        options: RequestOptions,
        *,
        read_through: bool,
    ) -> list[tuple[Sequence[bytes], Any]]:
        """BatchGet ``keys`` with the options the adjuster picks for each region batch.

        client-go calls the adjuster once per batch (one region, at most
        ``batch_get_size`` keys) with the batch's key count. ``read_through`` as for
        :meth:`_past` (off for reads wanting commit timestamps).
        """
        locator = self._rt.sender.locator
        limit = self._rt.config.batch_get_size
        batches: list[list[bytes]] = []
        region: Region | None = None
        for key in sorted(keys):
            if region is None or not region.contains(key):
                region = await locator.locate_key(key)
                batches.append([])
            elif len(batches[-1]) >= limit:
                batches.append([])
            batches[-1].append(key)
        sharder: KeysSharder[bytes] = KeysSharder(max_count=limit)

        async def one(batch: list[bytes]) -> list[tuple[Sequence[bytes], Any]]:
            adjusted = self._past(self._adjusted(options, len(batch)), read_through=read_through)
            result: list[tuple[Sequence[bytes], Any]] = await self._rt.sender.execute(
                "BatchGet", sharder, batch, build, handle, bo=bo.fork(), options=adjusted
            )
            return result

        results = await asyncio.gather(*(one(b) for b in batches))
        return [part for parts in results for part in parts]

    def read_past_locks_of(self, start_ts: int) -> None:
        """Read past every lock of the transaction that started at ``start_ts``.

        Its start ts goes into ``Context.resolved_locks`` of every read, so TiKV skips its
        locks and reads the data committed before them. A pipelined transaction's
        snapshot reads past its own flushed locks this way (client-go
        ``KVSnapshot.SetPipelined``).
        """
        if isinstance(start_ts, bool) or not isinstance(start_ts, int) or start_ts <= 0:
            raise ValueError(f"start_ts must be a positive int, got {start_ts!r}")
        self._ignored.add(start_ts)
        self._read_past.add(start_ts)

    def _past(self, options: RequestOptions, *, read_through: bool = True) -> RequestOptions:
        """``options`` plus the transactions this snapshot reads past or through.

        A transaction the lock resolver let this reader ignore (TiKV pushed its
        ``min_commit_ts`` beyond the snapshot, or it rolled back or committed after it)
        goes into ``Context.resolved_locks``, so TiKV skips its locks on every key, not
        only on the primary it pushed (client-go ``KVSnapshot.resolvedLocks``, sent by
        ``ClientHelper.SendReqCtx``). One committed at or before the snapshot whose locks
        are still being resolved in the background goes into ``Context.committed_locks``:
        TiKV reads through its locks (``committedLocks``). Reads that want commit
        timestamps leave those out (read through a lock, a value has none yet) and wait
        for the cleanup instead.
        """
        ignored = self._ignored
        committed = self._committed if read_through else set()
        if ignored and not ignored.issubset(options.resolved_locks):
            merged = tuple(sorted(ignored.union(options.resolved_locks)))
            options = dataclasses.replace(options, resolved_locks=merged)
        if committed and not committed.issubset(options.committed_locks):
            merged = tuple(sorted(committed.union(options.committed_locks)))
            options = dataclasses.replace(options, committed_locks=merged)
        return options

    async def resolve_for_read(self, bo: Backoffer, locks: Sequence[LockInfo]) -> None:
        """Resolve the locks a read met and wait (back off) if some still block it.

        client-go ``KVSnapshot.get``: back off ``txnLockFast`` for at most the time until
        the first lock expires. A lock that may be read past (its transaction was pushed
        beyond this snapshot) is retried at once with the transaction in
        ``Context.resolved_locks`` (:meth:`_past`), but only once per transaction: if the
        server reports it again, the retry backs off too, so a lock that keeps coming
        back cannot make the reader spin without consuming its budget.
        """
        started = time.perf_counter_ns()
        res = await self._rt.resolver.resolve_locks(
            bo, self.ts, locks, for_read=True, options=self._resolve_options
        )
        if self._stats is not None:
            self._stats.resolve_lock_ns += time.perf_counter_ns() - started
        if res.ms_before_expired > 0:
            await bo.backoff(
                TXN_LOCK_FAST, self._rt.locked_error(locks[0]), max_sleep_ms=res.ms_before_expired
            )
            return
        seen_again = not res.ignored.isdisjoint(self._ignored)
        self._ignored.update(res.ignored)
        if res.resolved_in_background:
            # Locks of these are resolved in the background; read through them meanwhile.
            seen_again = seen_again or not res.committed.isdisjoint(self._committed)
            self._committed.update(res.committed)
        if seen_again or (res.resolved == 0 and not res.ignored):
            await bo.backoff(TXN_LOCK_FAST, self._rt.locked_error(locks[0]))

    # -- scans -------------------------------------------------------------------------

    async def scan(
        self,
        start: bytes,
        end: bytes | None = None,
        *,
        limit: int,
        key_only: bool = False,
        reverse: bool = False,
    ) -> list[tuple[bytes, bytes]]:
        """Return up to ``limit`` pairs of ``[start, end)`` at :attr:`ts`, in key order.

        Args:
            start: Inclusive lower bound (``b""``: the first key).
            end: Exclusive upper bound (``None`` or ``b""``: no bound).
            limit: Maximum number of pairs (positive).
            key_only: Return empty values.
            reverse: Descending order (the largest keys below ``end`` first).

        Raises:
            TypeError / ValueError: Bad bounds or limit.
            tikv_pd.errors.TimeoutError: A page kept failing for the 20 s budget.

        """
        check_limit(limit)
        out: list[tuple[bytes, bytes]] = []
        async for pair in self.scan_iter(
            start, end, key_only=key_only, reverse=reverse, _limit=limit
        ):
            out.append(pair)
            if len(out) >= limit:
                break
        return out

    def scan_iter(
        self,
        start: bytes,
        end: bytes | None = None,
        *,
        key_only: bool = False,
        reverse: bool = False,
        _limit: int | None = None,
    ) -> AsyncIterator[tuple[bytes, bytes]]:
        """Iterate over ``[start, end)`` at :attr:`ts`, fetching pages lazily.

        Pages hold ``Config.txn_scan_batch`` (256) pairs and never cross a region.

        Raises:
            TypeError / ValueError: Bad bounds (checked at the call).

        """
        lo, hi = check_range(start, end)
        if not isinstance(key_only, bool) or not isinstance(reverse, bool):
            raise TypeError("key_only and reverse must be bools")
        self._rt.check_open()
        enc_lo, enc_hi = self._rt.codec.encode_range(lo, hi)
        return self._iterate(enc_lo, enc_hi, key_only, reverse, _limit)

    async def _iterate(
        self, lo: bytes, hi: bytes, key_only: bool, reverse: bool, limit: int | None
    ) -> AsyncIterator[tuple[bytes, bytes]]:
        decode = self._rt.codec.decode_key
        async for page in self._pages(lo, hi, key_only, reverse, limit):
            for key, value in page:
                yield decode(key), value

    async def _pages(
        self, lo: bytes, hi: bytes, key_only: bool, reverse: bool, limit: int | None
    ) -> AsyncIterator[list[tuple[bytes, bytes]]]:
        """Yield pages of encoded pairs, region by region, in scan order."""
        bo = self._rt.backoffer(self._rt.budgets.scan, "txn scan")
        try:
            async for page in self._scan_pages(lo, hi, key_only, reverse, limit, bo):
                yield page
        finally:
            self._record_backoff(bo)

    async def _scan_pages(
        self,
        lo: bytes,
        hi: bytes,
        key_only: bool,
        reverse: bool,
        limit: int | None,
        bo: Backoffer,
    ) -> AsyncIterator[list[tuple[bytes, bytes]]]:
        ts = self.ts
        remaining = limit
        while True:
            if hi and lo >= hi:
                return
            batch = self._scan_batch if remaining is None else min(self._scan_batch, remaining)

            def build(s: bytes, e: bytes, batch: int = batch) -> kvrpcpb_pb2.ScanRequest:
                if reverse:
                    # TiKV's reverse scan: start_key is the exclusive upper bound and
                    # end_key the inclusive lower one. TiKV reads an empty start_key as the
                    # key b"" (not "unbounded"), so an open upper bound in the last region
                    # is sent as a key above every storable key.
                    return kvrpcpb_pb2.ScanRequest(
                        start_key=e or _ABOVE_ALL_KEYS,
                        end_key=s,
                        limit=batch,
                        version=ts,
                        key_only=key_only,
                        reverse=True,
                    )
                return kvrpcpb_pb2.ScanRequest(
                    start_key=s, end_key=e, limit=batch, version=ts, key_only=key_only
                )

            responses, part = await self._rt.sender.call_first_region(
                "Scan",
                lo,
                hi,
                build,
                reverse=reverse,
                bo=bo,
                options=self._past(self._scan_options),
            )
            page: list[tuple[bytes, bytes]] = []
            cursor: bytes | None = None
            retry_locks: list[LockInfo] = []
            for resp in responses:
                if resp.HasField("error"):
                    # A whole-request error (TiKV also copies it into a first pair for
                    # old clients); per-key locks come in the pairs only.
                    if not resp.error.HasField("locked"):
                        raise self._rt.key_error(resp.error, start_ts=ts)
                    retry_locks.append(lock_from_pb(resp.error.locked))
                    break
                pairs = list(resp.pairs)
                for pair in pairs:
                    if pair.HasField("error"):
                        if not pair.error.HasField("locked"):
                            raise self._rt.key_error(pair.error, start_ts=ts)
                        lock = lock_from_pb(pair.error.locked)
                        value = await self._get_encoded(lock.key, bo)
                        if value is not None:
                            page.append((lock.key, b"" if key_only else value))
                        continue
                    page.append((pair.key, pair.value))
                if len(pairs) >= batch:
                    last = pairs[-1]
                    last_key = last.key or lock_from_pb(last.error.locked).key
                    cursor = last_key
                    break
            if retry_locks:
                await self.resolve_for_read(bo, retry_locks)
                continue
            await check_visibility(self._rt, ts)  # client-go scan.go, after each batch
            if page:
                if remaining is not None:
                    remaining -= len(page)
                yield page
                if remaining is not None and remaining <= 0:
                    return
            if cursor is not None:
                if reverse:
                    hi = cursor
                else:
                    lo = cursor + b"\x00"
                continue
            if reverse:
                if not part[0] or part[0] <= lo:
                    return
                hi = part[0]
            else:
                if not part[1] or (hi and part[1] >= hi):
                    return
                lo = part[1]


def _required_commit_ts(commit_ts: Mapping[bytes, int], key: bytes, start_ts: int) -> int:
    """The commit ts TiKV returned for ``key``; a value without one is an error.

    client-go ``checkCommitTSRequired``: a read that asked for commit timestamps must
    not hand out a value without one.
    """
    found = commit_ts.get(key, 0)
    if not found:
        raise TxnError(
            f"commit timestamp is required but not returned (snapshot {start_ts}); "
            "the server does not support need_commit_ts"
        )
    return found


def _read_options(
    runtime: TxnRuntime,
    opts: TransactionOptions,
    *,
    timeout: float | None = None,
    stale_read: bool = False,
    labels: tuple[tuple[str, str], ...] = (),
) -> RequestOptions:
    """Request options of a transaction's reads (context fields from its options)."""
    if labels:
        return dataclasses.replace(
            _read_options(runtime, opts, timeout=timeout, stale_read=stale_read),
            match_labels=labels,
        )
    if stale_read:
        # client-go EnableStaleWithMixedReplicaRead: stale reads use the mixed policy.
        return runtime.request_options(
            priority=opts.priority,
            isolation=opts.isolation,
            not_fill_cache=opts.not_fill_cache,
            replica_read="mixed",
            stale_read=True,
            resource_group_name=opts.resource_group_name,
            resource_group_tag=opts.resource_group_tag,
            txn_source=opts.txn_source,
            **({"request_source": opts.request_source} if opts.request_source else {}),
            timeout=timeout,
        )
    return runtime.request_options(
        priority=opts.priority,
        isolation=opts.isolation,
        not_fill_cache=opts.not_fill_cache,
        replica_read=opts.replica_read,
        resource_group_name=opts.resource_group_name,
        resource_group_tag=opts.resource_group_tag,
        txn_source=opts.txn_source,
        **({"request_source": opts.request_source} if opts.request_source else {}),
        timeout=timeout,
    )


def _check_labels(labels: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    """``match_labels`` as sorted ``(key, value)`` pairs (checked)."""
    if labels is None:
        return ()
    if not isinstance(labels, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise TypeError(f"match_labels must map str keys to str values, got {labels!r}")
    return tuple(sorted(labels.items()))


# Snapshot reads get spans (tikv.snapshot.<method>) while tracing is on; their durations
# are measured by the transaction operation that calls them (no metric of their own).
register_operations(
    AsyncSnapshot,
    "txn",
    {
        "get": None,
        "batch_get": None,
        "scan": None,
        "get_with_commit_ts": None,
        "batch_get_with_commit_ts": None,
    },
    span_prefix="tikv.snapshot",
)
