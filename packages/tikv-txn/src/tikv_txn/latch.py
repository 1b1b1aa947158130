"""Local latches: in-process conflict detection for optimistic transactions.

When many transactions of one process write the same keys, most of them would lose at
prewrite with a write conflict after a network round trip. client-go's local latches
(``internal/latch/latch.go``, ``scheduler.go``) serialise them inside the process
instead, and fail the losers *before* any RPC:

* Keys are hashed into a power-of-two number of slots with MurmurHash3 (x86, 32-bit,
  seed 0 — what client-go's ``twmb/murmur3.Sum32`` computes). Each slot keeps a small
  table of per-key latches; a slot is only the unit of hashing and bookkeeping, two
  keys of one slot are still different latches.
* A transaction about to commit acquires the latches of its (sorted, deduplicated) keys
  in order. If a latch is held, it waits in that slot's queue. Acquiring in sorted order
  means two transactions can never wait for each other in a cycle.
* Each latch remembers the largest commit ts of the transactions that released it. A
  transaction whose start ts is older than that is *stale*: a newer version of the key
  was committed after it started, so it would fail with a write conflict — it is told so
  at once (:attr:`LatchLock.is_stale`) and must fail locally (client-go returns
  ``ErrWriteConflictInLatch``) and then release what it holds.
* Releasing hands the latch to the first waiter on that key, marking it stale if needed.
* Latches nobody holds whose commit ts is older than 2 minutes are recycled, per slot
  when a slot has 5 or more entries, and for all slots after a release when a minute of
  TSO time or 50 000 releases have passed since the last sweep.

:class:`Latches` is the sans-IO core (acquire / release / recycle, no waiting);
:class:`LatchScheduler` adds asyncio waiting. Both are single-threaded: use them from
one event loop (the sync client facade runs everything on its own loop thread).
Latches are skipped for pessimistic and pipelined transactions (client-go ``txn.go``);
that choice belongs to the committer.
"""

from __future__ import annotations

import asyncio
import enum
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from tikv_pd.errors import ClientClosedError
from tikv_pd.oracle import extract_physical

__all__ = [
    "CHECK_COUNTER",
    "CHECK_INTERVAL_MS",
    "DEFAULT_CAPACITY",
    "EXPIRE_DURATION_MS",
    "LATCH_LIST_COUNT",
    "AcquireResult",
    "LatchLock",
    "LatchScheduler",
    "Latches",
    "murmur3_32",
]

#: Latches unused for this long (TSO physical time, ms) are recycled
#: (``expireDuration`` in ``internal/latch/scheduler.go``).
EXPIRE_DURATION_MS: Final = 2 * 60 * 1000
#: A full recycle sweep runs after this much TSO time since the last (``checkInterval``).
CHECK_INTERVAL_MS: Final = 60 * 1000
#: ... or after this many releases (``checkCounter``).
CHECK_COUNTER: Final = 50_000
#: A slot with this many latch entries is swept on acquire (``latchListCount``).
LATCH_LIST_COUNT: Final = 5
#: Slot count used when none is given. client-go requires the caller to choose one
#: (``TxnLocalLatches.Capacity`` defaults to 0, ``config/config.go``); TiDB's shipped
#: ``[txn-local-latches] capacity`` is 2048000, which rounds up to 2^21 slots.
DEFAULT_CAPACITY: Final = 2_048_000

_MASK32: Final = 0xFFFFFFFF


def murmur3_32(data: bytes, seed: int = 0) -> int:
    """Return the 32-bit MurmurHash3 (x86 variant) of ``data``.

    This is the hash client-go uses to pick a latch slot (``twmb/murmur3.Sum32``).

    Raises:
        TypeError: ``data`` is not bytes.

    """
    if not isinstance(data, bytes):
        raise TypeError(f"murmur3_32 expects bytes, got {type(data).__name__}")
    c1, c2 = 0xCC9E2D51, 0x1B873593
    h = seed & _MASK32
    n = len(data)
    nblocks = n >> 2
    if nblocks:
        for k in struct.unpack_from(f"<{nblocks}I", data):
            k = (k * c1) & _MASK32
            k = ((k << 15) | (k >> 17)) & _MASK32
            k = (k * c2) & _MASK32
            h ^= k
            h = ((h << 13) | (h >> 19)) & _MASK32
            h = (h * 5 + 0xE6546B64) & _MASK32
    tail = n & 3
    if tail:
        base = nblocks << 2
        k = 0
        if tail == 3:
            k ^= data[base + 2] << 16
        if tail >= 2:
            k ^= data[base + 1] << 8
        k ^= data[base]
        k = (k * c1) & _MASK32
        k = ((k << 15) | (k >> 17)) & _MASK32
        k = (k * c2) & _MASK32
        h ^= k
    h ^= n
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _MASK32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _MASK32
    h ^= h >> 16
    return h


def _tso_sub_ms(ts1: int, ts2: int) -> int:
    """Physical time difference ``ts1 - ts2`` in milliseconds."""
    return extract_physical(ts1) - extract_physical(ts2)


class AcquireResult(enum.Enum):
    """Outcome of :meth:`Latches.acquire` (client-go ``acquireResult``)."""

    #: Every latch of the lock is held.
    SUCCESS = "success"
    #: A latch is held by another transaction; the lock waits in that slot's queue.
    LOCKED = "locked"
    #: A key was committed after the lock's start ts: the transaction must fail.
    STALE = "stale"


@dataclass(eq=False, slots=True)
class LatchLock:
    """The latches one transaction needs (client-go ``latch.Lock``).

    Attributes:
        start_ts: The transaction's start ts.
        keys: The sorted, deduplicated keys to latch.
        required_slots: The slot of each key, in the same order.
        acquired_count: How many latches (a prefix of ``keys``) are held.
        commit_ts: The commit ts recorded at release (0 when not committed).
        is_stale: A key had a commit newer than ``start_ts``; the transaction must fail
            with a write conflict without sending anything.
        stale_key: The key that made the lock stale.
        conflict_commit_ts: The newer commit ts found on ``stale_key``.

    """

    start_ts: int
    keys: tuple[bytes, ...]
    required_slots: tuple[int, ...]
    acquired_count: int = 0
    commit_ts: int = 0
    is_stale: bool = False
    stale_key: bytes | None = None
    conflict_commit_ts: int = 0
    _waiter: asyncio.Future[None] | None = field(default=None, repr=False)

    @property
    def is_locked(self) -> bool:
        """Still waiting: not stale and not every latch is held."""
        return not self.is_stale and self.acquired_count != len(self.required_slots)

    def set_commit_ts(self, commit_ts: int) -> None:
        """Record the commit ts, so that later transactions older than it are stale.

        Raises:
            ValueError: ``commit_ts`` is negative.

        """
        if commit_ts < 0:
            raise ValueError(f"commit_ts must be non-negative, got {commit_ts}")
        self.commit_ts = commit_ts


@dataclass(eq=False, slots=True)
class _Node:
    """One key's latch inside a slot."""

    max_commit_ts: int = 0
    holder: LatchLock | None = None


@dataclass(eq=False, slots=True)
class _Slot:
    nodes: dict[bytes, _Node] = field(default_factory=dict)
    waiting: list[LatchLock] = field(default_factory=list)

    def recycle(self, current_ts: int) -> int:
        """Drop unheld latches whose last commit is older than the expiry; return count."""
        expired = [
            key
            for key, node in self.nodes.items()
            if node.holder is None
            and _tso_sub_ms(current_ts, node.max_commit_ts) >= EXPIRE_DURATION_MS
        ]
        for key in expired:
            del self.nodes[key]
        return len(expired)


class Latches:
    """The sans-IO latch table (client-go ``latch.Latches``).

    Args:
        capacity: Wanted number of slots; rounded up to a power of two.

    Raises:
        ValueError: ``capacity`` is not positive.
        TypeError: ``capacity`` is not an int.

    """

    __slots__ = ("_mask", "_slots")

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if not isinstance(capacity, int) or isinstance(capacity, bool):
            raise TypeError(f"capacity must be an int, got {type(capacity).__name__}")
        if capacity <= 0:
            raise ValueError(f"latch capacity must be positive, got {capacity}")
        size = 1 << (capacity - 1).bit_length()
        self._mask = size - 1
        # Slots are created on first use and dropped when empty: 2^21 empty slots would
        # otherwise cost hundreds of MiB of Python objects.
        self._slots: dict[int, _Slot] = {}

    @property
    def slot_count(self) -> int:
        """The number of slots (a power of two)."""
        return self._mask + 1

    def slot_id(self, key: bytes) -> int:
        """Return the slot of ``key``: ``murmur3_32(key) & (slot_count - 1)``."""
        return murmur3_32(key) & self._mask

    def gen_lock(self, start_ts: int, keys: Iterable[bytes]) -> LatchLock:
        """Build the lock of a transaction: its keys sorted and deduplicated.

        Raises:
            TypeError: A key is not bytes, or ``start_ts`` is not an int.
            ValueError: ``start_ts`` is negative.

        """
        if not isinstance(start_ts, int) or isinstance(start_ts, bool):
            raise TypeError(f"start_ts must be an int, got {type(start_ts).__name__}")
        if start_ts < 0:
            raise ValueError(f"start_ts must be non-negative, got {start_ts}")
        unique = set()
        for key in keys:
            if not isinstance(key, bytes):
                raise TypeError(f"latch keys must be bytes, got {type(key).__name__}")
            unique.add(key)
        # Duplicates would make a transaction wait for itself.
        ordered = tuple(sorted(unique))
        return LatchLock(start_ts, ordered, tuple(self.slot_id(k) for k in ordered))

    def acquire(self, lock: LatchLock) -> AcquireResult:
        """Try to take the lock's remaining latches in order.

        Returns:
            SUCCESS when all are held; LOCKED when the lock was queued on a held latch
            (it keeps what it has); STALE when a key was committed after the lock's
            start ts (it keeps what it has and must be released).

        """
        if lock.is_stale:
            return AcquireResult.STALE
        while lock.acquired_count < len(lock.required_slots):
            result = self._acquire_slot(lock)
            if result is not AcquireResult.SUCCESS:
                return result
        return AcquireResult.SUCCESS

    def _acquire_slot(self, lock: LatchLock) -> AcquireResult:
        index = lock.acquired_count
        key = lock.keys[index]
        slot_id = lock.required_slots[index]
        slot = self._slots.get(slot_id)
        if slot is None:
            slot = self._slots[slot_id] = _Slot()
        elif len(slot.nodes) >= LATCH_LIST_COUNT:
            # Keep slot tables short; the lock's start ts stands in for "now".
            slot.recycle(lock.start_ts)

        node = slot.nodes.get(key)
        if node is None:
            slot.nodes[key] = _Node(holder=lock)
            lock.acquired_count += 1
            return AcquireResult.SUCCESS
        if node.max_commit_ts > lock.start_ts:
            lock.is_stale = True
            lock.stale_key = key
            lock.conflict_commit_ts = node.max_commit_ts
            return AcquireResult.STALE
        if node.holder is None:
            node.holder = lock
            lock.acquired_count += 1
            return AcquireResult.SUCCESS
        slot.waiting.append(lock)
        return AcquireResult.LOCKED

    def release(self, lock: LatchLock) -> list[LatchLock]:
        """Release every latch the lock holds; return the waiters to wake.

        Each released latch records ``lock.commit_ts`` as its newest commit and is
        handed to the first waiter queued for that key. A woken waiter that is older
        than that commit is marked stale (it then holds the latch until released).
        The caller must :meth:`acquire` each returned lock again.

        Raises:
            RuntimeError: The table does not show ``lock`` as holder of a latch it
                claims (a lock released twice or from another table).

        """
        wakeup: list[LatchLock] = []
        while lock.acquired_count > 0:
            next_lock = self._release_slot(lock)
            if next_lock is not None:
                wakeup.append(next_lock)
        return wakeup

    def _release_slot(self, lock: LatchLock) -> LatchLock | None:
        index = lock.acquired_count - 1
        key = lock.keys[index]
        slot_id = lock.required_slots[index]
        slot = self._slots.get(slot_id)
        node = slot.nodes.get(key) if slot is not None else None
        if slot is None or node is None or node.holder is not lock:
            raise RuntimeError(f"latch of key {key!r} is not held by this lock")
        lock.acquired_count -= 1
        node.max_commit_ts = max(node.max_commit_ts, lock.commit_ts)
        node.holder = None

        next_lock = None
        for i, waiting in enumerate(slot.waiting):
            if waiting.keys[waiting.acquired_count] == key:
                next_lock = slot.waiting.pop(i)
                break
        if next_lock is not None and node.max_commit_ts > next_lock.start_ts:
            # The waiter would read an older version than this commit: it is stale.
            # It takes the latch anyway so that its release is uniform.
            node.holder = next_lock
            next_lock.acquired_count += 1
            next_lock.is_stale = True
            next_lock.stale_key = key
            next_lock.conflict_commit_ts = node.max_commit_ts
        return next_lock

    def abandon(self, lock: LatchLock) -> list[LatchLock]:
        """Withdraw a waiting lock from its queue and release what it holds.

        Used when the waiting transaction gives up (its task was cancelled). Returns the
        waiters to wake, as :meth:`release`.
        """
        if lock.acquired_count < len(lock.required_slots):
            slot = self._slots.get(lock.required_slots[lock.acquired_count])
            if slot is not None and lock in slot.waiting:
                slot.waiting.remove(lock)
        return self.release(lock)

    def recycle(self, current_ts: int) -> int:
        """Drop unheld latches older than the expiry in every slot; return the count."""
        total = 0
        for slot_id in list(self._slots):
            slot = self._slots[slot_id]
            total += slot.recycle(current_ts)
            if not slot.nodes and not slot.waiting:
                del self._slots[slot_id]
        return total

    def latch_count(self) -> int:
        """Number of per-key latch entries currently kept (held or remembered)."""
        return sum(len(slot.nodes) for slot in self._slots.values())

    def waiting_count(self) -> int:
        """Number of locks queued behind a held latch."""
        return sum(len(slot.waiting) for slot in self._slots.values())


class LatchScheduler:
    """Asyncio front of :class:`Latches` (client-go ``LatchesScheduler``).

    Usage by a committer::

        lock = await scheduler.acquire(start_ts, keys)
        try:
            if lock.is_stale:
                raise WriteConflictError(...)      # fail locally, nothing was sent
            commit_ts = await two_phase_commit()
        finally:
            scheduler.release(lock, commit_ts)     # 0 when it did not commit

    Args:
        capacity: Wanted number of slots (rounded up to a power of two).

    """

    __slots__ = ("_closed", "_counter", "_last_recycle_ts", "latches")

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.latches = Latches(capacity)
        self._closed = False
        self._counter = 0
        self._last_recycle_ts = 0

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    async def acquire(self, start_ts: int, keys: Iterable[bytes]) -> LatchLock:
        """Acquire the latches of ``keys`` for the transaction ``start_ts``.

        Waits while another transaction holds one of them. Returns when all are held,
        or as soon as the lock is found stale (check :attr:`LatchLock.is_stale`). Either
        way the caller must call :meth:`release`. If the waiting task is cancelled, the
        lock leaves its queue and releases what it held before the error propagates.

        Raises:
            ClientClosedError: The scheduler is closed (also raised to waiters when it
                closes).
            TypeError: A key is not bytes.
            ValueError: ``start_ts`` is negative.

        """
        if self._closed:
            raise ClientClosedError("latch scheduler")
        lock = self.latches.gen_lock(start_ts, keys)
        while self.latches.acquire(lock) is AcquireResult.LOCKED:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            lock._waiter = waiter
            try:
                await waiter
            except BaseException:
                lock._waiter = None
                self._wake(self.latches.abandon(lock))
                raise
            lock._waiter = None
            # Woken: the latch we queued for was handed over (or we became stale); try
            # the remaining keys.
        return lock

    def release(self, lock: LatchLock, commit_ts: int = 0) -> None:
        """Release the lock's latches, recording ``commit_ts``, and wake waiters.

        Args:
            lock: The lock from :meth:`acquire`.
            commit_ts: The transaction's commit ts, or 0 if it did not commit (then
                :attr:`LatchLock.commit_ts` is kept, if set).

        A no-op after :meth:`close` (as client-go's ``UnLock``).

        Raises:
            ValueError: ``commit_ts`` is negative.

        """
        if commit_ts:
            lock.set_commit_ts(commit_ts)
        elif commit_ts < 0:
            raise ValueError(f"commit_ts must be non-negative, got {commit_ts}")
        if self._closed:
            return
        self._wake(self.latches.release(lock))
        # Periodic full sweep, driven by the TSO time of commits (client-go ``run``).
        if lock.commit_ts > lock.start_ts and (
            _tso_sub_ms(lock.commit_ts, self._last_recycle_ts) > CHECK_INTERVAL_MS
            or self._counter > CHECK_COUNTER
        ):
            self.latches.recycle(lock.commit_ts)
            self._last_recycle_ts = lock.commit_ts
            self._counter = 0
        self._counter += 1

    def _wake(self, locks: list[LatchLock]) -> None:
        for woken in locks:
            if self.latches.acquire(woken) is AcquireResult.LOCKED:
                continue  # queued again behind another latch; stays asleep
            waiter = woken._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def close(self) -> None:
        """Close the scheduler: waiters and later acquires get ClientClosedError."""
        if self._closed:
            return
        self._closed = True
        for slot in self.latches._slots.values():
            for lock in slot.waiting:
                waiter = lock._waiter
                if waiter is not None and not waiter.done():
                    waiter.set_exception(ClientClosedError("latch scheduler"))
            slot.waiting.clear()
