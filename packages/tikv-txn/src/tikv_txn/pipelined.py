"""Pipelined DML: a transaction that writes its buffer to TiKV while it runs.

``client.begin(options=TransactionOptions(pipelined=True))`` returns an
:class:`AsyncPipelinedTransaction`. It follows client-go's pipelined DML
(``internal/unionstore/pipelined_memdb.go``, ``txnkv/transaction/pipelined_flush.go``,
the pipelined paths of ``txnkv/transaction/txn.go`` and ``2pc.go``):

* **Generations.** Writes go to an in-memory buffer. When it holds at least 10,000 keys
  and 16 MiB, or 128 MiB whatever the key count (:func:`tikv_txn.policy.pipelined_need_flush`;
  the sizes are the buffer's memory, as client-go's ``MemDB.Mem``: keys and values plus
  :data:`ENTRY_MEMORY_OVERHEAD` per entry),
  the buffer becomes the *flushing* buffer of a new generation (1, 2, ...) and a fresh
  buffer takes the writes, while the flushing one is written to TiKV with ``KvFlush`` in
  the background (client-go ``PipelinedMemDB.Flush``). TiKV keeps, per key, the lock of
  the newest generation: a key written again in a later generation supersedes its older
  lock, an older generation never overwrites a newer one (TiKV ``commands/flush.rs``).
* **One flush at a time.** While a flush runs, the writer waits for it once the buffer
  and the part of the running generation TiKV has not acknowledged yet reach the force
  threshold together (client-go counts the buffer alone; a Python entry costs about twice
  its data, so two full buffers would double the peak). The blocking client's ``put``
  blocks; an asyncio writer cannot be blocked inside ``put`` and waits in
  :meth:`AsyncPipelinedTransaction.flush`, which it should await now and then, as TiDB
  calls ``Flush`` after each statement.
  Within one generation, mutations are grouped by region, cut into 16 KiB batches and sent
  with at most ``pipelined_flush_concurrency`` (128) requests in flight (client-go
  ``calcActionConcurrency``).
* **The primary** is the first key (in key order) of the first generation that becomes a
  lock (client-go ``InitPipelinedMemDB``). Once its batch is flushed, a heartbeat keeps
  its TTL alive every 10 s and pushes its ``min_commit_ts`` to the current ts; it stops
  after 24 h (``MaxPipelinedTxnTTL``) or 10 failures in a row, and then the transaction
  cannot flush any more (client-go ``keepAlive`` closes the TTL manager).
* **Memory.** Only the current buffer, the generation being flushed, the flushed key range
  and counters stay in memory (client-go keeps the same). The generation being flushed is
  kept as sorted lists, and the values of each batch TiKV acknowledged are released at
  once (client-go keeps the whole flushing memdb until the flush ends): a Python entry
  costs twice its data, so two full buffers would not fit the memory goal. Reads of
  flushed keys go to TiKV.
* **Reads** look in the current buffer, then the flushing one, then TiKV's copy of the
  flushed generations (``KvBufferBatchGet``: this transaction's own locks; a Delete lock
  reads as "deleted"), then the snapshot, which reads past this transaction's own locks
  (``Context.resolved_locks``, client-go ``KVSnapshot.SetPipelined``). Scans are not
  supported, as in client-go (``PipelinedMemDB.Iter``); ``txn.snapshot.scan`` reads the
  committed data.
* **Commit** flushes the rest, waits for it, commits the primary key with ``KvCommit``
  at a fresh commit ts, and returns; the other locks are committed in the background by
  ``KvResolveLock`` over the flushed key range, region by region, at most
  ``pipelined_resolve_lock_concurrency`` (8) regions at a time (client-go
  ``commitFlushedMutations``, ``resolveFlushedLocks``). Readers that meet a lock before
  that resolve it from the committed primary.
* **Rollback** (and a failed commit) waits for the running flush and rolls the flushed
  range back with ``KvResolveLock`` (commit version 0) in the background (client-go
  ``KVTxn.Rollback``, ``twoPhaseCommitter.cleanup``). A client that disappears leaves its
  locks to readers, who roll them back once the primary's TTL expires.

With ``pipelined_write_throttle_ratio`` > 0 each flush starts after a sleep sized so that
sleeping takes that fraction of the time (:func:`throttle_ms`, over a moving average of
past flush durations; client-go ``throttlePipelinedTxn``).

Flush and resolve requests carry the request source ``"external_pdml"`` (client-go
``PipelinedRequestSource``). Local latches are skipped, as client-go does. Not modelled:
``BroadcastTxnStatus`` to every store (TiKV's transaction-status cache).
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import dataclasses
import enum
import logging
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Sequence,
)
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from tikv_pd.backoff import Backoffer
from tikv_pd.config import TransactionOptions
from tikv_pd.errors import (
    AssertionFailedError,
    LockInfo,
    TransactionClosedError,
    TxnError,
    UndeterminedError,
)
from tikv_pd.interceptor import RPCInterceptor
from tikv_pd.rangetask import RangeTaskRunner, TaskStat
from tikv_pd.region_cache import Region
from tikv_pd.request import KeysSharder, RequestOptions
from tikv_proto import kvrpcpb_pb2

from tikv_txn._kv import mutation_to_pb
from tikv_txn._runtime import HEARTBEAT_TASK_PREFIX
from tikv_txn._validate import check_key, check_keys, check_range
from tikv_txn.committer import (
    TWO_PC_ACCESS,
    MinCommitTsManager,
    commit_primary_keys,
    keep_primary_alive,
    timestamp_for_commit,
)
from tikv_txn.membuffer import TOMBSTONE, KeyFlags, MemBuffer, MemEntry, Tombstone
from tikv_txn.policy import (
    DEFAULT_LOCK_TTL_MS,
    MANAGED_LOCK_TTL_MS,
    PIPELINED_FORCE_FLUSH_SIZE,
    PIPELINED_MIN_FLUSH_KEYS,
    PIPELINED_MIN_FLUSH_SIZE,
    Mutation,
    Op,
    mutation_for_entry,
    pipelined_need_flush,
)
from tikv_txn.transaction import AsyncTransaction

if TYPE_CHECKING:
    from tikv_txn._runtime import TxnRuntime

__all__ = [
    "ENTRY_MEMORY_OVERHEAD",
    "PIPELINED_REQUEST_SOURCE",
    "AsyncPipelinedTransaction",
    "FlushThresholds",
    "throttle_ms",
]

_log = logging.getLogger("tikv.txn.pipelined")

#: Request source of flush and resolve requests (client-go ``PipelinedRequestSource``).
PIPELINED_REQUEST_SOURCE: Final = "external_pdml"
#: TTL of flushed locks, ms: ``max(defaultLockTTL, ManagedLockTTL)`` (client-go
#: ``buildPipelinedFlushRequest``); the heartbeat extends the primary's.
_FLUSH_LOCK_TTL_MS: Final = max(DEFAULT_LOCK_TTL_MS, MANAGED_LOCK_TTL_MS)
#: Backoff budget of one generation's flush, ms (client-go ``InitPipelinedMemDB``: 20000).
_FLUSH_MAX_BACKOFF_MS: Final = 20_000
#: A buffer's total size is bounded by the force-flush threshold, not by
#: ``txn_total_size_limit`` (client-go sets the pipelined memdb's buffer limit to unlimited).
_UNLIMITED: Final = 2**62

#: Bytes a buffered entry costs beyond its key and value: the two ``bytes`` headers, the
#: dict slot and the sorted-index slot of :class:`~tikv_txn.membuffer.MemBuffer`
#: (measured with tracemalloc: 126-127 bytes for values of 10 B to 1 KB). client-go
#: compares its memdb's memory footprint (``MemDB.Mem``), not the data size, with the
#: flush thresholds; this is the same measure for a Python buffer.
ENTRY_MEMORY_OVERHEAD: Final = 128

#: Weight of the newest flush duration in the moving average the write throttle uses:
#: an exponentially weighted moving average of age 10 (client-go ``defaultEWMAAge``,
#: VividCortex ``ewma.NewMovingAverage``: decay 2 / (age + 1)).
_EWMA_DECAY: Final = 2.0 / (10 + 1)

_BY_KEYS: KeysSharder[bytes] = KeysSharder()


def throttle_ms(ratio: float, expected_flush_ms: float) -> int:
    """Milliseconds to sleep before a flush (client-go ``throttlePipelinedTxn``).

    The sleep is sized so that ``sleep / (sleep + flush) = ratio``, with the flush
    duration taken from the moving average of past flushes; 0 when ``ratio`` is 0 or
    outside ``[0, 1)``.
    """
    if not 0.0 <= ratio < 1.0 or expected_flush_ms <= 0:
        return 0
    return int(ratio / (1.0 - ratio) * expected_flush_ms)


class _Flushed(enum.Enum):
    """Marks an entry of a flushing generation whose batch TiKV acknowledged."""

    FLUSHED = "FLUSHED"


_FLUSHED: Final = _Flushed.FLUSHED


class _Generation:
    """The generation being flushed: its entries in key order, compactly.

    Built from the buffer when it is handed to a flush (the buffer's dicts and index are
    then dropped). A value whose batch TiKV acknowledged is released at once: reads of
    that key go to TiKV (``KvBufferBatchGet``), which now holds it. client-go keeps the
    whole flushing memdb until the flush ends; releasing per batch keeps a Python
    client's peak memory near one buffer instead of two.
    """

    __slots__ = ("flags", "keys", "number", "pending_memory", "released", "values")

    def __init__(self, number: int, buf: MemBuffer) -> None:
        keys: list[bytes] = []
        values: list[bytes | Tombstone | _Flushed | None] = []
        flags: list[int] = []
        for entry in buf.iterate_with_flags():
            keys.append(entry.key)
            values.append(entry.value)
            flags.append(int(entry.flags))
        self.number = number
        self.keys = keys
        self.values = values
        self.flags = flags
        #: How many entries were released (their batch was acknowledged).
        self.released = 0
        #: Estimated memory of the entries not released yet (as ``buffer_memory``).
        self.pending_memory = buf.size + len(keys) * ENTRY_MEMORY_OVERHEAD

    def __len__(self) -> int:
        return len(self.keys)

    def get(self, key: bytes) -> bytes | Tombstone | _Flushed | None:
        """The entry's value, TOMBSTONE, ``_FLUSHED`` (released), or None (absent / flags only)."""
        keys = self.keys
        i = bisect.bisect_left(keys, key)
        if i < len(keys) and keys[i] == key:
            return self.values[i]
        return None

    def entries(self) -> Iterator[tuple[int, MemEntry]]:
        """``(position, entry)`` in key order."""
        values = self.values
        flags = self.flags
        for i, key in enumerate(self.keys):
            value = values[i]
            if value is _FLUSHED:
                continue
            yield i, MemEntry(key, value, KeyFlags(flags[i]))

    def release(self, positions: Sequence[int]) -> None:
        """Drop the values at ``positions`` (TiKV holds them now)."""
        values = self.values
        keys = self.keys
        freed = 0
        for i in positions:
            value = values[i]
            freed += len(keys[i]) + ENTRY_MEMORY_OVERHEAD
            if isinstance(value, bytes):
                freed += len(value)
            values[i] = _FLUSHED
        self.released += len(positions)
        self.pending_memory -= freed


_ACTIVE = "active"
_COMMITTING = "committing"
_COMMITTED = "committed"
_ROLLED_BACK = "rolled back"
_FAILED = "failed"


@dataclass(frozen=True, slots=True)
class FlushThresholds:
    """When a pipelined buffer is flushed (client-go ``flushOption``).

    Attributes:
        min_keys: A normal flush needs at least this many keys ...
        min_size: ... and at least this many bytes.
        force_size: This many bytes flush whatever the key count, and make the writer
            wait for a running flush.

    """

    min_keys: int = PIPELINED_MIN_FLUSH_KEYS
    min_size: int = PIPELINED_MIN_FLUSH_SIZE
    force_size: int = PIPELINED_FORCE_FLUSH_SIZE

    def __post_init__(self) -> None:
        for name in ("min_keys", "min_size", "force_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"FlushThresholds.{name} must be an int >= 0, got {value!r}")


class AsyncPipelinedTransaction(AsyncTransaction):
    """A pipelined DML transaction (asyncio); see the module docstring.

    Create it with ``client.begin(options=TransactionOptions(pipelined=True))``. It has
    the methods of :class:`~tikv_txn.AsyncTransaction` except the scans, plus
    :meth:`flush`.

    Args:
        runtime: The client's shared state.
        start_ts: The start ts.
        options: The transaction's options (``pipelined=True``).

    """

    __slots__ = (
        "_bounds",
        "_error",
        "_flush_ewma_ms",
        "_flushed_keys",
        "_flushed_size",
        "_flushing",
        "_generation",
        "_hb_task",
        "_inflight",
        "_lock_resolve_options",
        "_loop",
        "_min_commit_ts",
        "_primary",
        "_primary_flushed",
        "_remote_cache",
        "_resolve_options",
        "_thresholds",
        "_ttl_closed",
        "_write_opts",
        "heartbeats",
        "resolve_task",
    )

    def __init__(self, runtime: TxnRuntime, start_ts: int, options: TransactionOptions) -> None:
        if not options.pipelined:
            raise ValueError("AsyncPipelinedTransaction needs TransactionOptions(pipelined=True)")
        if options.is_pessimistic:
            # client-go SetPessimistic panics on a pipelined transaction.
            raise ValueError("a pipelined transaction cannot be pessimistic")
        super().__init__(runtime, start_ts, options)
        self._loop = asyncio.get_running_loop()
        # client-go KVSnapshot.SetPipelined: a read at the start ts that met this
        # transaction's own flushed lock would try to resolve it and wait on its own
        # primary's TTL; the snapshot reads past them instead.
        self._snapshot.read_past_locks_of(start_ts)
        self._buffer = self._new_buffer()
        self._flushing: _Generation | None = None
        self._inflight: concurrent.futures.Future[BaseException | None] | None = None
        self._generation = 0
        self._flushed_keys = 0
        self._flushed_size = 0
        self._bounds: tuple[bytes, bytes] | None = None
        self._primary = b""
        self._primary_flushed = False
        # What the heartbeat pushes the primary's min_commit_ts to; frozen once the
        # commit begins (client-go minCommitTsManager).
        self._min_commit_ts = MinCommitTsManager()
        self._error: BaseException | None = None
        self._ttl_closed = False
        self._hb_task: asyncio.Task[None] | None = None
        self._remote_cache: dict[bytes, bytes | None] = {}
        self._thresholds = FlushThresholds()
        self._flush_ewma_ms = 0.0
        common: dict[str, Any] = {
            "priority": options.priority,
            "disk_full_opt": options.disk_full_opt,
            "txn_source": options.txn_source,
            "resource_group_name": options.resource_group_name,
            "resource_group_tag": options.resource_group_tag,
        }
        self._write_opts = runtime.request_options(
            **common,
            **({"request_source": options.request_source} if options.request_source else {}),
        )
        self._resolve_options = runtime.request_options(
            **common, request_source=PIPELINED_REQUEST_SOURCE
        )
        # Options of the lock resolution flushes cause (None: the client's).
        self._lock_resolve_options: RequestOptions | None = None
        #: Heartbeats sent successfully.
        self.heartbeats = 0
        #: The background task resolving the flushed range after commit / rollback.
        self.resolve_task: asyncio.Task[None] | None = None

    def set_rpc_interceptor(self, interceptor: RPCInterceptor | None) -> None:
        """Run ``interceptor`` around every RPC of this transaction.

        As :meth:`AsyncTransaction.set_rpc_interceptor`, and for the RPCs of pipelined
        DML too: flushes, buffer reads, heartbeats, the commit, the range resolution and
        the lock resolution a flush causes (client-go sends all of them with the
        transaction's context, which carries its interceptor).
        """
        super().set_rpc_interceptor(interceptor)
        effective = self._effective_interceptor()
        self._write_opts = dataclasses.replace(self._write_opts, interceptor=effective)
        self._resolve_options = dataclasses.replace(self._resolve_options, interceptor=effective)
        self._lock_resolve_options = self._rt.resolve_options(effective)

    def _new_buffer(self) -> MemBuffer:
        cfg = self._rt.config
        return MemBuffer(
            entry_size_limit=self._options.entry_size_limit or cfg.txn_entry_size_limit,
            total_size_limit=_UNLIMITED,
        )

    # -- facts -------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        """Generations flushed or being flushed so far (the first is 1)."""
        return self._generation

    @property
    def flushed_keys(self) -> int:
        """Keys handed to flushes so far (a key written in two generations counts twice)."""
        return self._flushed_keys

    @property
    def flushed_size(self) -> int:
        """Bytes (keys and values) handed to flushes so far."""
        return self._flushed_size

    @property
    def primary(self) -> bytes:
        """The primary key as TiKV stores it (``b""`` before the first flush)."""
        return self._primary

    @property
    def flushed_range(self) -> tuple[bytes, bytes] | None:
        """The smallest and largest flushed keys as TiKV stores them, or ``None``."""
        return self._bounds

    @property
    def buffer_memory(self) -> int:
        """Estimated memory of the buffer taking writes, in bytes (what the thresholds see).

        Keys and values plus :data:`ENTRY_MEMORY_OVERHEAD` per entry, the counterpart of
        client-go's ``MemDB.Mem`` that ``PipelinedMemDB.needFlush`` compares.
        """
        buf = self._buffer
        return buf.size + len(buf) * ENTRY_MEMORY_OVERHEAD

    @property
    def flushing(self) -> bool:
        """Whether a flush is running."""
        inflight = self._inflight
        return inflight is not None and not inflight.done()

    @property
    def heartbeat_running(self) -> bool:
        """Whether the heartbeat keeps the primary alive (client-go ``IsTTLRunning``)."""
        task = self._hb_task
        return task is not None and not task.done()

    @property
    def is_read_only(self) -> bool:
        """Whether nothing was written so far (flushed generations included)."""
        return self._generation == 0 and not self._buffer.dirty

    @property
    def flush_thresholds(self) -> FlushThresholds:
        """When the buffer is flushed (client-go's defaults unless changed)."""
        return self._thresholds

    def set_flush_thresholds(self, thresholds: FlushThresholds) -> None:
        """Change when the buffer is flushed (client-go's ``pipelinedMemDB*`` failpoints).

        For tests and benchmarks: the defaults are client-go's.
        """
        if not isinstance(thresholds, FlushThresholds):
            raise TypeError(
                f"thresholds must be a FlushThresholds, got {type(thresholds).__name__}"
            )
        self._thresholds = thresholds

    def _check_active(self) -> None:
        super()._check_active()
        if self._error is not None:
            raise self._error

    # -- reads -------------------------------------------------------------------------

    def _local(self, key: bytes) -> bytes | object | None:
        """The value of encoded-or-not ``key`` in memory: bytes, TOMBSTONE or None (absent)."""
        value = self._buffer.get(key)
        if value is None and self._flushing is not None:
            flushing = self._flushing.get(key)
            return None if flushing is _FLUSHED else flushing
        return value

    async def get(self, key: bytes) -> bytes | None:
        """The value of ``key`` as this transaction sees it.

        Memory first (current, then flushing buffer), then the flushed generations in
        TiKV (``KvBufferBatchGet``), then the snapshot (client-go ``PipelinedMemDB.Get``
        and ``KVUnionStore.Get``).
        """
        check_key(key)
        self._check_active()
        found = await self._buffered([key])
        if key in found:
            return found[key]
        return await self._snapshot.get(key)

    async def batch_get(self, keys: Iterable[bytes]) -> dict[bytes, bytes]:
        """The existing keys among ``keys`` with their values, own writes first."""
        wanted = check_keys(keys)
        self._check_active()
        found = await self._buffered(wanted)
        out = {k: v for k, v in found.items() if v is not None}
        remote = [k for k in wanted if k not in found]
        if remote:
            out.update(await self._snapshot.batch_get(remote))
        return out

    async def _buffered(self, keys: Sequence[bytes]) -> dict[bytes, bytes | None]:
        """What this transaction wrote for ``keys``: value, ``None`` (deleted), or absent."""
        out: dict[bytes, bytes | None] = {}
        remote: list[bytes] = []
        cache = self._remote_cache
        for key in keys:
            value = self._local(key)
            if value is TOMBSTONE:
                out[key] = None
            elif isinstance(value, bytes):
                out[key] = value
            elif key in cache:
                cached = cache[key]
                if cached is not None:
                    out[key] = None if cached == b"" else cached
            elif self._flushed_anything():
                remote.append(key)
        if remote:
            got = await self._buffer_batch_get(remote)
            for key in remote:
                value = got.get(key)
                cache[key] = value
                if value is not None:
                    out[key] = None if value == b"" else value
        return out

    def _flushed_anything(self) -> bool:
        # Only generations whose flush finished are read from TiKV (the running one is
        # still in memory); reading before the first flush would be a wasted RPC.
        flushing = self._flushing
        if flushing is None:
            return self._generation > 0
        return self._generation > 1 or flushing.released > 0

    async def _buffer_batch_get(self, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        """``KvBufferBatchGet``: this transaction's flushed values (``b""``: deleted)."""
        codec = self._rt.codec
        enc = {codec.encode_key(k): k for k in keys}
        start_ts = self.start_ts
        sharder: KeysSharder[bytes] = KeysSharder(max_count=self._rt.config.batch_get_size)

        def build(region: Region, part: Sequence[bytes]) -> kvrpcpb_pb2.BufferBatchGetRequest:
            return kvrpcpb_pb2.BufferBatchGetRequest(keys=list(part), version=start_ts)

        def handle(region: Region, part: Sequence[bytes], resp: Any) -> list[tuple[bytes, bytes]]:
            if resp.HasField("error"):
                raise self._rt.key_error(resp.error, start_ts=start_ts)
            pairs: list[tuple[bytes, bytes]] = []
            for pair in resp.pairs:
                if pair.HasField("error"):
                    raise self._rt.key_error(pair.error, start_ts=start_ts)
                pairs.append((pair.key, pair.value))
            return pairs

        bo = self._rt.backoffer(self._rt.budgets.batch_get, "pipelined buffer batch_get")
        parts = await self._rt.sender.execute(
            "BufferBatchGet",
            sharder,
            list(enc),
            build,
            handle,
            bo=bo,
            options=self._resolve_options,
        )
        return {enc[k]: v for part in parts for k, v in part}

    def scan_iter(
        self,
        start: bytes,
        end: bytes | None = None,
        *,
        key_only: bool = False,
        reverse: bool = False,
    ) -> AsyncIterator[tuple[bytes, bytes]]:
        """Not supported: flushed writes cannot be scanned (client-go ``PipelinedMemDB.Iter``).

        Raises:
            NotImplementedError: Always (use ``txn.snapshot.scan_iter`` for the
                committed data).

        """
        check_range(start, end)
        self._check_active()
        raise NotImplementedError(
            "a pipelined transaction cannot scan its own writes (client-go pipelined memdb "
            "does not support iterators); scan txn.snapshot for the committed data"
        )

    # -- locks (optimistic: marks checked for conflicts when flushed) -------------------

    async def lock_keys(
        self, keys: Iterable[bytes], *, lock_wait_timeout_ms: int | None = None
    ) -> None:
        """Mark ``keys`` to be checked for write conflicts (``Lock`` mutations when flushed).

        A pipelined transaction is optimistic: the keys are only marked, as client-go's
        ``LockKeys`` without a for-update ts. Keys this transaction already wrote are
        skipped: their own lock (from the buffer or a flushed generation) is checked
        already, and a ``Lock`` mutation in a later generation would replace a flushed
        value.
        """
        wanted = check_keys(keys)
        self._check_active()
        written = await self._buffered(wanted)
        rest = [k for k in wanted if k not in written]
        if rest:
            await super().lock_keys(rest, lock_wait_timeout_ms=lock_wait_timeout_ms)

    async def get_for_update(
        self,
        key: bytes,
        *,
        lock_wait_timeout_ms: int | None = None,
        lock_only_if_exists: bool = False,
    ) -> bytes | None:
        """Read ``key`` as :meth:`get` and mark it as :meth:`lock_keys` does."""
        found = await self.batch_get_for_update(
            [key],
            lock_wait_timeout_ms=lock_wait_timeout_ms,
            lock_only_if_exists=lock_only_if_exists,
        )
        return found.get(key)

    async def batch_get_for_update(
        self,
        keys: Iterable[bytes],
        *,
        lock_wait_timeout_ms: int | None = None,
        lock_only_if_exists: bool = False,
    ) -> dict[bytes, bytes]:
        """Read ``keys`` as :meth:`batch_get` and mark them as :meth:`lock_keys` does."""
        wanted = check_keys(keys)
        found = await self.batch_get(wanted)
        await self.lock_keys(
            [k for k in wanted if k in found] if lock_only_if_exists else wanted,
            lock_wait_timeout_ms=lock_wait_timeout_ms,
        )
        return found

    async def check_exists_for_update(
        self, keys: Iterable[bytes], *, lock_wait_timeout_ms: int | None = None
    ) -> dict[bytes, bool]:
        """Whether each of ``keys`` exists (as :meth:`batch_get` sees it); marks them."""
        wanted = check_keys(keys)
        found = await self.batch_get_for_update(wanted, lock_wait_timeout_ms=lock_wait_timeout_ms)
        return {k: k in found for k in wanted}

    # -- writes ------------------------------------------------------------------------

    def put(self, key: bytes, value: bytes) -> None:
        """Buffer ``key = value``; may start a flush (or wait for one, see :meth:`flush`)."""
        super().put(key, value)
        self._after_write()

    def insert(self, key: bytes, value: bytes) -> None:
        """Buffer ``key = value`` presuming the key does not exist (checked at flush)."""
        super().insert(key, value)
        self._after_write()

    def delete(self, key: bytes) -> None:
        """Buffer a deletion of ``key``; may start a flush."""
        super().delete(key)
        self._after_write()

    def _on_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def _need_flush(self) -> bool:
        buf = self._buffer
        t = self._thresholds
        return pipelined_need_flush(
            self.buffer_memory,
            len(buf),
            flushing=self.flushing,
            min_keys=t.min_keys,
            min_size=t.min_size,
            force_size=t.force_size,
        )

    def _must_wait(self) -> bool:
        """Whether the writer must wait for the running flush before writing on.

        client-go waits when the buffer alone reaches the force threshold (128 MiB). Here
        the buffer and the part of the running generation TiKV has not acknowledged yet
        count together: a Python entry costs about twice its data, and two full buffers
        would double a client's peak memory.
        """
        inflight = self._inflight
        if inflight is None or inflight.done() or self._flushing is None:
            return False
        return self.buffer_memory + self._flushing.pending_memory >= self._thresholds.force_size

    def _after_write(self) -> None:
        """Flush when the thresholds say so (client-go ``PipelinedMemDB.Flush(false)``)."""
        if self._must_wait():
            if self._on_loop():
                return  # cannot block the event loop: flush() waits instead
            inflight = self._inflight
            assert inflight is not None
            inflight.result()
        if self._need_flush() and not self.flushing:
            self._rotate()

    async def flush(self, *, force: bool = False) -> bool:
        """Flush the buffer if the thresholds say so (always with ``force``).

        client-go ``PipelinedMemDB.Flush``: a flush starts when the thresholds are met
        and no flush runs. This waits for the running flush first when ``force`` is set,
        or when the buffer and the unacknowledged part of the running flush together
        reached the force threshold (128 MiB; the blocking client's ``put`` waits there
        by itself). The flush runs in the background; its error is raised by the next
        call that collects it (a later flush, :meth:`commit`).

        Returns:
            Whether a flush was started.

        Raises:
            TransactionClosedError: The transaction is finished.
            TiKVError: An earlier flush failed (the transaction must be rolled back).

        """
        self._check_active()
        if force or self._must_wait():
            await self._wait_inflight()
        if not force and (not self._need_flush() or self.flushing):
            return False
        await self._wait_inflight()
        return self._rotate()

    async def _wait_inflight(self) -> None:
        inflight = self._inflight
        if inflight is not None and not inflight.done():
            await asyncio.shield(asyncio.wrap_future(inflight))

    def _collect(self) -> None:
        """Take the finished flush's outcome: drop its buffer, raise its error."""
        inflight = self._inflight
        if inflight is None:
            return
        err = inflight.result()
        self._inflight = None
        self._flushing = None
        # The flushed values are now read from TiKV; cached reads may be older.
        self._remote_cache.clear()
        if err is not None:
            self._error = err
            raise err

    def _rotate(self) -> bool:
        """Start flushing the current buffer as the next generation (no flush running)."""
        self._collect()
        buf = self._buffer
        if len(buf) == 0:
            return False
        codec = self._rt.codec
        gen = _Generation(self._generation + 1, buf)
        lo, hi = codec.encode_key(gen.keys[0]), codec.encode_key(gen.keys[-1])
        if self._bounds is None:
            self._bounds = (lo, hi)
        else:
            self._bounds = (min(self._bounds[0], lo), max(self._bounds[1], hi))
        self._generation = gen.number
        self._flushed_keys += len(gen)
        self._flushed_size += buf.size
        self._flushing = gen
        self._buffer = self._new_buffer()
        self._remote_cache.clear()
        self._inflight = self._start(self._flush_generation(gen), f"flush-{gen.number}")
        return True

    def _start(
        self, coro: Coroutine[Any, Any, BaseException | None], what: str
    ) -> concurrent.futures.Future[BaseException | None]:
        """Run ``coro`` as a task of the client's runtime, from any thread."""
        result: concurrent.futures.Future[BaseException | None] = concurrent.futures.Future()
        name = f"tikv-txn-pipelined-{what}-{self.start_ts}"

        def done(task: asyncio.Task[BaseException | None]) -> None:
            if task.cancelled():
                result.set_result(asyncio.CancelledError())
            elif task.exception() is not None:
                result.set_result(task.exception())
            else:
                result.set_result(task.result())

        def start() -> None:
            try:
                task = self._rt.spawn(coro, name=name)
            except BaseException as exc:
                coro.close()
                result.set_result(exc)
                return
            task.add_done_callback(done)

        if self._on_loop():
            start()
        else:
            self._loop.call_soon_threadsafe(start)
        return result

    # -- flushing (client-go pipelined_flush.go) ---------------------------------------

    def _mutations(self, gen: _Generation) -> Iterator[tuple[int, Mutation]]:
        """``(position, mutation)`` of the generation's entries that become mutations."""
        codec = self._rt.codec
        encode = codec.api_version == 2
        assertions = self._options.assertion_level != "Off"
        for i, entry in gen.entries():
            m = mutation_for_entry(entry, pessimistic=False, assertions=assertions)
            if m is None:
                continue
            if m.op is Op.SHARED_LOCK:
                raise TxnError("shared locks are not supported in a pipelined transaction")
            yield i, (m._replace(key=codec.encode_key(m.key)) if encode else m)

    def _choose_primary(self, gen: _Generation) -> None:
        # The first key that becomes a lock (client-go InitPipelinedMemDB's flush func).
        if self._primary:
            return
        for _, m in self._mutations(gen):
            if m.op is not Op.CHECK_NOT_EXISTS:
                self._primary = m.key
                return

    async def _batches(
        self, gen: _Generation
    ) -> AsyncGenerator[tuple[list[Mutation], list[int]], None]:
        """The generation's mutations by region, in batches of ``txn_commit_batch_size``.

        Each batch comes with the positions of its entries in the generation.
        """
        locator = self._rt.sender.locator
        limit = self._rt.config.txn_commit_batch_size
        region: Region | None = None
        batch: list[Mutation] = []
        positions: list[int] = []
        size = 0
        for i, m in self._mutations(gen):
            if region is None or not region.contains(m.key):
                if batch:
                    yield batch, positions
                    batch, positions, size = [], [], 0
                region = await locator.locate_key(m.key)
            batch.append(m)
            positions.append(i)
            size += len(m.key) + len(m.value)
            if size >= limit:
                yield batch, positions
                batch, positions, size = [], [], 0
        if batch:
            yield batch, positions

    async def _flush_generation(self, gen: _Generation) -> BaseException | None:
        """Flush one generation; return its error instead of raising it."""
        generation = gen.number
        try:
            if self._ttl_closed:
                raise TxnError(
                    f"pipelined txn {self.start_ts}: the heartbeat stopped; it cannot flush"
                )
            self._choose_primary(gen)
            if not self._primary:
                raise TxnError(
                    f"pipelined txn {self.start_ts}: no key of generation {generation} "
                    "can be the primary"
                )
            sleep_ms = throttle_ms(
                self._options.pipelined_write_throttle_ratio, self._flush_ewma_ms
            )
            if sleep_ms > 0:
                # client-go throttlePipelinedTxn: the flush (and so the next one the
                # writer may wait for) starts later, to leave TiKV room.
                _log.info("pipelined txn %d: throttled %d ms", self.start_ts, sleep_ms)
                await asyncio.sleep(sleep_ms / 1000.0)
            began = time.monotonic()
            await self._flush_all_batches(gen)
            took_ms = (time.monotonic() - began) * 1000.0
            ewma = self._flush_ewma_ms
            self._flush_ewma_ms = (
                took_ms if ewma == 0 else took_ms * _EWMA_DECAY + ewma * (1 - _EWMA_DECAY)
            )
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            _log.info(
                "pipelined txn %d: flush of generation %d failed: %s",
                self.start_ts,
                generation,
                exc,
            )
            return exc
        _log.debug(
            "pipelined txn %d: flushed generation %d (%d keys)",
            self.start_ts,
            generation,
            len(gen),
        )
        return None

    async def _flush_all_batches(self, gen: _Generation) -> None:
        """Send every batch, at most ``pipelined_flush_concurrency`` at once.

        After a failure no new batch starts, but the batches in flight finish: once this
        returns, no request of the generation can still land a lock (a rollback that
        follows sees every lock). An ``AssertionFailed`` error is reported only when
        nothing else failed (client-go ``batchExecutor.process``).
        """
        generation = gen.number
        bo = self._rt.backoffer(_FLUSH_MAX_BACKOFF_MS, "pipelined flush")
        source = self._batches(gen)
        cache = self._remote_cache
        pull = asyncio.Lock()
        exhausted = False
        failures: list[Exception] = []

        async def worker() -> None:
            nonlocal exhausted
            while True:
                async with pull:
                    if exhausted or failures:
                        return
                    try:
                        batch, positions = await anext(source)
                    except StopAsyncIteration:
                        exhausted = True
                        return
                    except Exception as exc:
                        failures.append(exc)
                        return
                try:
                    await self._flush_batch(generation, batch, bo.fork())
                except Exception as exc:
                    failures.append(exc)
                    return
                # TiKV holds the batch now: reads of its keys go there.
                gen.release(positions)
                for i in positions:
                    cache.pop(gen.keys[i], None)

        workers = [
            asyncio.ensure_future(worker())
            for _ in range(self._options.pipelined_flush_concurrency)
        ]
        try:
            await asyncio.gather(*workers)
        finally:
            for t in workers:
                t.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            await source.aclose()
        if failures:
            others = [e for e in failures if not isinstance(e, AssertionFailedError)]
            raise (others or failures)[0]

    def _build_flush(
        self, generation: int
    ) -> Callable[[Region, Sequence[Mutation]], kvrpcpb_pb2.FlushRequest]:
        primary = self._primary
        start_ts = self.start_ts
        level = self._options.assertion_level_value

        def build(region: Region, part: Sequence[Mutation]) -> kvrpcpb_pb2.FlushRequest:
            return kvrpcpb_pb2.FlushRequest(
                mutations=[mutation_to_pb(m, m.key) for m in part],
                primary_key=primary,
                start_ts=start_ts,
                min_commit_ts=start_ts + 1,
                generation=generation,
                lock_ttl=_FLUSH_LOCK_TTL_MS,
                assertion_level=level,  # type: ignore[arg-type]
            )

        return build

    async def _flush_batch(self, generation: int, batch: Sequence[Mutation], bo: Backoffer) -> None:
        """One batch's ``KvFlush``, resolving other transactions' locks and retrying.

        client-go ``actionPipelinedFlush.handleSingleBatch``: an ``AlreadyExist`` error
        fails the flush; a lock of a younger transaction is a write conflict at once;
        older locks are resolved and the batch sent again (a retried generation is
        idempotent: TiKV ignores a mutation whose key already holds this generation).
        """
        sharder: KeysSharder[Mutation] = KeysSharder(lambda m: m.key)
        build = self._build_flush(generation)
        start_ts = self.start_ts
        primary = self._primary

        def handle(
            region: Region, part: Sequence[Mutation], resp: Any
        ) -> tuple[Sequence[Mutation], Any]:
            return part, resp

        payload: Sequence[Mutation] = batch
        while payload:
            parts = await self._rt.sender.execute(
                "Flush",
                sharder,
                payload,
                build,
                handle,
                bo=bo,
                options=self._resolve_options,
            )
            locks: list[LockInfo] = []
            retry: list[Mutation] = []
            for part, resp in parts:
                errors = list(resp.errors)
                if not errors:
                    if not self._primary_flushed and any(m.key == primary for m in part):
                        self._primary_flushed = True
                        self._start_heartbeat()
                    continue
                locks.extend(self._rt.prewrite_locks(errors, start_ts=start_ts, primary=primary))
                retry.extend(part)
            if locks:
                await self._rt.resolver.resolve_for_write(
                    bo, start_ts, locks, options=self._lock_resolve_options
                )
            payload = retry

    # -- heartbeat (client-go 2pc.go keepAlive, pipelined) -----------------------------

    def _start_heartbeat(self) -> None:
        if self._hb_task is not None or self._state not in (_ACTIVE, _COMMITTING):
            return
        self._hb_task = self._rt.spawn(
            self._keep_alive(), name=f"{HEARTBEAT_TASK_PREFIX}-pipelined-{self.start_ts}"
        )

    def _stop_heartbeat(self) -> None:
        task, self._hb_task = self._hb_task, None
        if task is not None:
            task.cancel()

    async def _keep_alive(self) -> None:
        """Extend the primary's TTL and push its min_commit_ts to now, every 10 s.

        When the heartbeat stops (the primary lock is gone, the transaction lived past
        its 24 h, or beats kept failing) further flushes and the commit fail: a pipelined
        transaction whose primary may be rolled back must not go on (client-go closes
        the TTL manager).
        """

        def beat() -> None:
            self.heartbeats += 1

        try:
            await keep_primary_alive(
                self._rt,
                self.start_ts,
                primary=lambda: self._primary,
                options=lambda: self._write_opts,
                on_beat=beat,
                pipelined=True,
                min_commit_ts=self._min_commit_ts,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _log.warning("pipelined txn %d: heartbeat stops: %s", self.start_ts, exc)
        self._ttl_closed = True

    # -- finish ------------------------------------------------------------------------

    async def commit(self) -> int:
        """Flush the rest, commit the primary, resolve the other locks in the background.

        Returns:
            The commit ts (0 when nothing was written: no RPC is sent).

        Raises:
            WriteConflictError, KeyExistsError, ...: A flush failed; the flushed locks are
                rolled back in the background.
            UndeterminedError: The primary commit got no answer: the outcome is unknown.
            TxnLockNotFoundError: The primary lock was rolled back (e.g. by a reader after
                the heartbeat stopped).
            TransactionClosedError: Already finished.

        """
        if self._state != _ACTIVE:
            raise TransactionClosedError(self.start_ts, self._state)
        self._rt.check_open()
        self._state = _COMMITTING
        if self.is_read_only:
            self._state = _COMMITTED
            return 0
        committing_primary = False
        try:
            if self._error is not None:
                raise self._error
            await self._wait_inflight()
            self._rotate()
            await self._wait_inflight()
            self._collect()
            if not self._primary:
                # Every write was skipped (nothing becomes a lock): nothing to commit.
                self._state = _COMMITTED
                return 0
            # From now on the heartbeat stops pushing min_commit_ts: a push past the
            # commit ts about to be fetched would only make KvCommit fail with
            # CommitTsExpired (client-go execute: elevateWriteAccess(twoPCAccess)).
            self._min_commit_ts.elevate_write_access(TWO_PC_ACCESS)
            commit_ts = await self._oracle_commit_ts()
            committing_primary = True
            await self._commit_primary()
        except UndeterminedError:
            self._state = _FAILED
            self._stop_heartbeat()
            raise
        except asyncio.CancelledError:
            self._state = _FAILED
            self._stop_heartbeat()
            if not committing_primary:
                self._spawn_resolve(0)
            raise
        except BaseException:
            self._state = _FAILED
            self._stop_heartbeat()
            self._spawn_resolve(0)
            raise
        self._stop_heartbeat()
        self._state = _COMMITTED
        self._spawn_resolve(self.commit_ts)
        _log.info(
            "pipelined txn %d committed at %d (%d generations, %d keys flushed)",
            self.start_ts,
            commit_ts,
            self._generation,
            self._flushed_keys,
        )
        return self.commit_ts

    async def _oracle_commit_ts(self) -> int:
        # The commit-wait-until-TSO constraint holds here too (client-go
        # pipelined_flush.go takes its commit ts from GetTimestampForCommit).
        commit_ts, lag = await timestamp_for_commit(
            self._rt,
            wait_until_ts=self.commit_wait_until_tso,
            timeout_s=self.commit_wait_until_tso_timeout,
        )
        if lag is not None:
            self._lag = lag
        if commit_ts <= self.start_ts:
            raise TxnError(f"commit ts {commit_ts} is not after start ts {self.start_ts}")
        self.commit_ts = commit_ts
        return commit_ts

    async def _commit_primary(self) -> None:
        """``KvCommit`` of the primary key (client-go ``commitFlushedMutations``)."""
        await commit_primary_keys(
            self._rt,
            [self._primary],
            start_ts=self.start_ts,
            commit_ts=lambda: self.commit_ts,
            newer_commit_ts=self._oracle_commit_ts,
            options=self._write_opts,
            operation="pipelined commit primary",
        )

    async def rollback(self) -> None:
        """Abort: wait for the running flush, then roll the flushed locks back in the background.

        Raises:
            TransactionClosedError: Already finished.

        """
        if self._state != _ACTIVE:
            raise TransactionClosedError(self.start_ts, self._state)
        self._state = _ROLLED_BACK
        # Wait for the running flush so that no lock lands after the rollback
        # (client-go cancels its context, then FlushWait).
        inflight = self._inflight
        if inflight is not None and not inflight.done():
            await asyncio.shield(asyncio.wrap_future(inflight))
        self._inflight = None
        self._flushing = None
        self._stop_heartbeat()
        self._buffer.reset()
        self._remote_cache.clear()
        self._spawn_resolve(0)

    def _spawn_resolve(self, commit_ts: int) -> None:
        """Resolve the flushed range in the background (nothing flushed: nothing to do)."""
        if self._bounds is None or self._rt.closed:
            return
        status = "commit" if commit_ts else "rollback"
        try:
            self.resolve_task = self._rt.spawn(
                self.resolve_flushed_locks(commit_ts),
                name=f"tikv-txn-pipelined-{status}-{self.start_ts}",
            )
        except RuntimeError:  # no running loop (interpreter shutdown)
            _log.warning("pipelined txn %d: could not schedule the %s", self.start_ts, status)

    async def resolve_flushed_locks(self, commit_ts: int) -> int:
        """``KvResolveLock`` over the flushed key range, region by region.

        client-go ``resolveFlushedLocks``: a range task with
        ``pipelined_resolve_lock_concurrency`` workers; each region gets one request that
        commits (``commit_ts`` > 0) or rolls back (0) every lock of this transaction in it.

        Returns:
            The number of regions resolved.

        """
        if self._bounds is None:
            return 0
        lo, hi = self._bounds
        end = hi + b"\x00"
        start_ts = self.start_ts
        budget = self._rt.budgets.commit_secondary if commit_ts else self._rt.budgets.cleanup
        options = self._resolve_options

        def build(s: bytes, e: bytes) -> kvrpcpb_pb2.ResolveLockRequest:
            return kvrpcpb_pb2.ResolveLockRequest(start_version=start_ts, commit_version=commit_ts)

        async def handler(region: Region, s: bytes, e: bytes) -> TaskStat:
            bo = self._rt.backoffer(budget, "pipelined resolve flushed locks")
            responses: list[Any] = await self._rt.sender.call_range(
                "ResolveLock", s, e, build, bo=bo, options=options
            )
            for resp in responses:
                if resp.HasField("error"):
                    raise self._rt.key_error(resp.error, start_ts=start_ts)
            return TaskStat(completed_regions=len(responses))

        status = "commit" if commit_ts else "rollback"
        runner = RangeTaskRunner(
            f"pipelined-dml-{status}",
            self._rt.sender.locator,
            handler,
            concurrency=self._options.pipelined_resolve_lock_concurrency,
        )
        stat = await runner.run(lo, end)
        _log.info(
            "pipelined txn %d: resolved flushed locks (%s) in %d regions",
            start_ts,
            status,
            stat.completed_regions,
        )
        return stat.completed_regions

    def __repr__(self) -> str:
        return (
            f"AsyncPipelinedTransaction(start_ts={self.start_ts}, state={self._state!r}, "
            f"generation={self._generation})"
        )
