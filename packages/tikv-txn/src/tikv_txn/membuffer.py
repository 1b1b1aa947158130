"""The transaction's write buffer: ordered writes, tombstones, key flags and staging.

This is the Python counterpart of client-go's memdb (``internal/unionstore/memdb*.go``,
``art/art.go``, ``kv/keyflags.go``). Every write a transaction makes stays here until the
committer turns the buffer into Percolator mutations:

* Each key maps to a value, a deletion **tombstone** (:data:`TOMBSTONE`: "this
  transaction deleted the key", which must hide the snapshot's value), or nothing at all
  (a *flags-only* entry, e.g. a key that was only pessimistically locked).
* Each key also carries :class:`KeyFlags` (presume-not-exists, locked, assertions, ...),
  changed with :class:`FlagsOp` operations exactly as client-go's ``ApplyFlagsOps``.
* :meth:`MemBuffer.staging` opens a nested sub-transaction (TiDB uses one per
  statement); :meth:`MemBuffer.release` merges the innermost into its parent and
  :meth:`MemBuffer.cleanup` discards it. Checkpoints give the same rollback without
  nesting.
* Size accounting follows client-go: ``size`` is the sum of the key lengths of all
  entries plus the lengths of their values (a tombstone counts 0); ``len`` counts
  entries, flags-only ones included.

The structure is a ``dict`` for point access plus a sorted key index kept in chunks (a
list of short sorted lists, like a B-tree of height 2) so that inserts cost
``O(log n + chunk)`` and a range scan seeks in ``O(log n)``. New keys are first appended to
an unsorted "pending" list and merged into the index only when an ordered operation needs
it, so the common pattern "write 100 000 keys, then commit" sorts once.
"""

from __future__ import annotations

import enum
from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final, NamedTuple

from tikv_pd.errors import TxnTooLargeError

__all__ = [
    "DEFAULT_ENTRY_SIZE_LIMIT",
    "DEFAULT_TOTAL_SIZE_LIMIT",
    "MAX_KEY_LEN",
    "PERSISTENT_FLAGS",
    "TOMBSTONE",
    "BufferValue",
    "FlagsOp",
    "KeyFlags",
    "MemBuffer",
    "MemBufferCheckpoint",
    "MemEntry",
    "Tombstone",
    "apply_flags_ops",
]

#: Largest value plus key one buffered entry may hold, in bytes. client-go's memdb itself
#: is unlimited (``unlimitedSize`` in ``internal/unionstore/memdb.go``); TiDB, its main
#: caller, sets ``txn-entry-size-limit`` = 6 MiB through ``KVUnionStore.SetEntrySizeLimit``
#: (``internal/unionstore/union_store.go``), and TiKV's raft entry limit makes larger
#: entries fail anyway, so 6 MiB is our default.
DEFAULT_ENTRY_SIZE_LIMIT: Final = 6 * 1024 * 1024

#: Largest total buffer size (:attr:`MemBuffer.size`), in bytes: TiDB's
#: ``txn-total-size-limit`` default of 100 MiB, passed to client-go's
#: ``SetEntrySizeLimit`` as the buffer limit.
DEFAULT_TOTAL_SIZE_LIMIT: Final = 100 * 1024 * 1024

#: Longest key the buffer accepts: client-go's ART stores key lengths in 16 bits
#: (``art.MaxKeyLen`` = ``math.MaxUint16``) and returns ``ErrKeyTooLarge`` beyond it.
MAX_KEY_LEN: Final = 0xFFFF


class Tombstone(enum.Enum):
    """The type of :data:`TOMBSTONE`, the marker of a key deleted in this transaction.

    client-go stores a deletion as an empty value (``IsTombstone`` in
    ``internal/unionstore/memdb.go``); an explicit marker keeps "deleted" distinct from
    "absent" (``None``) for Python callers. It is a single-member enum so that type
    checkers narrow ``value is TOMBSTONE``.
    """

    TOMBSTONE = "TOMBSTONE"

    def __repr__(self) -> str:
        return "TOMBSTONE"

    def __bool__(self) -> bool:
        # A deletion carries no data: falsy, like an empty value.
        return False


#: The deletion marker returned by :meth:`MemBuffer.get` and the iterators.
TOMBSTONE: Final = Tombstone.TOMBSTONE

#: What a buffered key can hold: a value or a deletion.
BufferValue = bytes | Tombstone


class KeyFlags(enum.IntFlag):
    """Per-key metadata bits, with client-go's bit positions (``kv/keyflags.go``).

    The assertion flags use two bits: neither set means "no assertion yet", exactly one
    means assert-exist / assert-not-exist, both mean "assertion impossible" (unknown).
    """

    #: The key is presumed not to exist (lazy uniqueness check of an insert).
    PRESUME_KNE = 1 << 0
    #: A pessimistic lock is held on the key.
    KEY_LOCKED = 1 << 1
    #: The key must be locked (set before the lock request, cleared after).
    NEED_LOCKED = 1 << 2
    #: The key had a value when it was pessimistically locked.
    KEY_LOCKED_VAL_EXIST = 1 << 3
    #: The existence of the key must be checked when it is locked.
    NEED_CHECK_EXISTS = 1 << 4
    #: Prewrite the key but do not commit it (``Op_CheckNotExists`` mutations).
    PREWRITE_ONLY = 1 << 5
    #: Leave the key out of two-phase commit entirely.
    IGNORED_IN_2PC = 1 << 6
    #: In-transaction reads may read the key (TiDB's temporary index entries).
    READABLE = 1 << 7
    #: The key was produced by an insert with a non-empty value.
    NEWLY_INSERTED = 1 << 8
    #: Prewrite asserts that the key exists.
    ASSERT_EXIST = 1 << 9
    #: Prewrite asserts that the key does not exist.
    ASSERT_NOT_EXIST = 1 << 10
    #: Conflict and constraint check postponed to prewrite (pessimistic txns only).
    NEED_CONSTRAINT_CHECK_IN_PREWRITE = 1 << 11
    #: A presume-not-exists flag from an earlier statement that must not be unset.
    PREVIOUS_PRESUME_KNE = 1 << 12
    #: The pessimistic lock is a shared lock (with :attr:`KEY_LOCKED`).
    KEY_LOCKED_IN_SHARE_MODE = 1 << 13

    @property
    def has_assert_exist(self) -> bool:
        """Prewrite must assert that the key exists."""
        return self & 0x600 == KeyFlags.ASSERT_EXIST

    @property
    def has_assert_not_exist(self) -> bool:
        """Prewrite must assert that the key does not exist."""
        return self & 0x600 == KeyFlags.ASSERT_NOT_EXIST

    @property
    def has_assert_unknown(self) -> bool:
        """The key is marked as impossible to assert (both assertion bits set)."""
        return self & 0x600 == 0x600

    @property
    def has_assertion_flags(self) -> bool:
        """An assertion (exist, not-exist or unknown) has been decided for the key."""
        return self & 0x600 != 0

    @property
    def has_presume_key_not_exists(self) -> bool:
        """The key's existence is checked lazily (current or previous statement)."""
        return self & (KeyFlags.PRESUME_KNE | KeyFlags.PREVIOUS_PRESUME_KNE) != 0

    @property
    def has_locked(self) -> bool:
        """A pessimistic lock has been acquired on the key."""
        return self & KeyFlags.KEY_LOCKED != 0

    @property
    def has_locked_in_share_mode(self) -> bool:
        """The pessimistic lock on the key is a shared lock."""
        return self & KeyFlags.KEY_LOCKED_IN_SHARE_MODE != 0

    @property
    def has_need_locked(self) -> bool:
        """The key still needs a pessimistic lock."""
        return self & KeyFlags.NEED_LOCKED != 0

    @property
    def has_locked_value_exists(self) -> bool:
        """The key had a value when it was locked."""
        return self & KeyFlags.KEY_LOCKED_VAL_EXIST != 0

    @property
    def has_need_check_exists(self) -> bool:
        """The key's existence must be checked when it is locked."""
        return self & KeyFlags.NEED_CHECK_EXISTS != 0

    @property
    def has_prewrite_only(self) -> bool:
        """The key is prewritten but skipped by the commit phase."""
        return self & KeyFlags.PREWRITE_ONLY != 0

    @property
    def has_ignored_in_2pc(self) -> bool:
        """The key takes no part in two-phase commit."""
        return self & KeyFlags.IGNORED_IN_2PC != 0

    @property
    def has_readable(self) -> bool:
        """In-transaction reads may read the key."""
        return self & KeyFlags.READABLE != 0

    @property
    def has_newly_inserted(self) -> bool:
        """The key was written by an insert."""
        return self & KeyFlags.NEWLY_INSERTED != 0

    @property
    def has_need_constraint_check_in_prewrite(self) -> bool:
        """Prewrite must do the postponed conflict / constraint check."""
        return self & KeyFlags.NEED_CONSTRAINT_CHECK_IN_PREWRITE != 0

    def and_persistent(self) -> KeyFlags:
        """Return only the flags that survive :meth:`MemBuffer.cleanup`."""
        return KeyFlags(self & PERSISTENT_FLAGS)


#: Flags that record server-side state (a pessimistic lock acquired, what it saw) and
#: therefore survive the cleanup of the staging buffer that set them: rolling back a
#: statement does not release the locks it took (client-go ``persistentFlags``).
PERSISTENT_FLAGS: Final = (
    KeyFlags.KEY_LOCKED
    | KeyFlags.KEY_LOCKED_VAL_EXIST
    | KeyFlags.NEED_CONSTRAINT_CHECK_IN_PREWRITE
    | KeyFlags.KEY_LOCKED_IN_SHARE_MODE
)
_PERSISTENT: Final = int(PERSISTENT_FLAGS)


class FlagsOp(enum.Enum):
    """An operation on :class:`KeyFlags` (client-go ``kv.FlagsOp``).

    Each value is ``(bits to set, bits to clear)``; see :func:`apply_flags_ops`.
    """

    #: Presume the key does not exist; implies NEED_CHECK_EXISTS.
    SET_PRESUME_KEY_NOT_EXISTS = (KeyFlags.PRESUME_KNE | KeyFlags.NEED_CHECK_EXISTS, 0)
    #: Revert SET_PRESUME_KEY_NOT_EXISTS.
    DEL_PRESUME_KEY_NOT_EXISTS = (0, KeyFlags.PRESUME_KNE | KeyFlags.NEED_CHECK_EXISTS)
    #: The key has been pessimistically locked.
    SET_KEY_LOCKED = (KeyFlags.KEY_LOCKED, 0)
    #: Revert SET_KEY_LOCKED.
    DEL_KEY_LOCKED = (0, KeyFlags.KEY_LOCKED)
    #: The key needs a pessimistic lock.
    SET_NEED_LOCKED = (KeyFlags.NEED_LOCKED, 0)
    #: Revert SET_NEED_LOCKED.
    DEL_NEED_LOCKED = (0, KeyFlags.NEED_LOCKED)
    #: The locked key had a value; the postponed constraint check is no longer needed.
    SET_KEY_LOCKED_VALUE_EXISTS = (
        KeyFlags.KEY_LOCKED_VAL_EXIST,
        KeyFlags.NEED_CONSTRAINT_CHECK_IN_PREWRITE,
    )
    #: The locked key had no value; the postponed constraint check is no longer needed.
    SET_KEY_LOCKED_VALUE_NOT_EXISTS = (
        0,
        KeyFlags.KEY_LOCKED_VAL_EXIST | KeyFlags.NEED_CONSTRAINT_CHECK_IN_PREWRITE,
    )
    #: The key's existence no longer needs checking when it is locked.
    DEL_NEED_CHECK_EXISTS = (0, KeyFlags.NEED_CHECK_EXISTS)
    #: Prewrite the key but skip it in the commit phase.
    SET_PREWRITE_ONLY = (KeyFlags.PREWRITE_ONLY, 0)
    #: Leave the key out of two-phase commit.
    SET_IGNORED_IN_2PC = (KeyFlags.IGNORED_IN_2PC, 0)
    #: In-transaction reads may read the key.
    SET_READABLE = (KeyFlags.READABLE, 0)
    #: The key was written by an insert.
    SET_NEWLY_INSERTED = (KeyFlags.NEWLY_INSERTED, 0)
    #: Assert the key exists (replaces a not-exist assertion).
    SET_ASSERT_EXIST = (KeyFlags.ASSERT_EXIST, KeyFlags.ASSERT_NOT_EXIST)
    #: Assert the key does not exist (replaces an exist assertion).
    SET_ASSERT_NOT_EXIST = (KeyFlags.ASSERT_NOT_EXIST, KeyFlags.ASSERT_EXIST)
    #: Mark the key as impossible to assert.
    SET_ASSERT_UNKNOWN = (KeyFlags.ASSERT_EXIST | KeyFlags.ASSERT_NOT_EXIST, 0)
    #: Remove any assertion.
    SET_ASSERT_NONE = (0, KeyFlags.ASSERT_EXIST | KeyFlags.ASSERT_NOT_EXIST)
    #: Postpone the conflict / constraint check of the key to prewrite.
    SET_NEED_CONSTRAINT_CHECK_IN_PREWRITE = (KeyFlags.NEED_CONSTRAINT_CHECK_IN_PREWRITE, 0)
    #: Revert SET_NEED_CONSTRAINT_CHECK_IN_PREWRITE (the lock is being made up).
    DEL_NEED_CONSTRAINT_CHECK_IN_PREWRITE = (0, KeyFlags.NEED_CONSTRAINT_CHECK_IN_PREWRITE)
    #: Keep the presume-not-exists of an earlier statement.
    SET_PREVIOUS_PRESUME_KNE = (KeyFlags.PREVIOUS_PRESUME_KNE, 0)
    #: The pessimistic lock on the key is shared.
    SET_KEY_LOCKED_IN_SHARE_MODE = (KeyFlags.KEY_LOCKED_IN_SHARE_MODE, 0)
    #: The pessimistic lock on the key is exclusive.
    SET_KEY_LOCKED_IN_EXCLUSIVE_MODE = (0, KeyFlags.KEY_LOCKED_IN_SHARE_MODE)


# (set, clear) as plain ints, looked up once per op instead of through the enum machinery.
_OP_MASKS: Final[dict[FlagsOp, tuple[int, int]]] = {
    op: (int(op.value[0]), int(op.value[1])) for op in FlagsOp
}
_DEL_NCCIP_MASK: Final = int(KeyFlags.NEED_CONSTRAINT_CHECK_IN_PREWRITE)


def apply_flags_ops(flags: int, ops: Iterable[FlagsOp]) -> KeyFlags:
    """Apply flag operations in order and return the resulting flags.

    Args:
        flags: The current flags (a :class:`KeyFlags` or its integer value).
        ops: The operations, applied left to right.

    Returns:
        The new flags.

    Raises:
        TypeError: An element of ``ops`` is not a :class:`FlagsOp`.

    """
    return KeyFlags(_apply_ops(int(flags), ops))


def _apply_ops(flags: int, ops: Iterable[FlagsOp]) -> int:
    for op in ops:
        masks = _OP_MASKS.get(op) if isinstance(op, FlagsOp) else None
        if masks is None:
            raise TypeError(f"flag operations must be FlagsOp members, got {op!r}")
        flags = (flags & ~masks[1]) | masks[0]
    return flags


class MemEntry(NamedTuple):
    """One buffered key with its value state and flags.

    Attributes:
        key: The key.
        value: The value, :data:`TOMBSTONE` for a deletion, or ``None`` for a flags-only
            entry (e.g. a key that was only locked).
        flags: The key's flags.

    """

    key: bytes
    value: bytes | Tombstone | None
    flags: KeyFlags


@dataclass(frozen=True, slots=True)
class MemBufferCheckpoint:
    """A position in a buffer's history, from :meth:`MemBuffer.checkpoint`.

    Attributes:
        position: Number of undo records before the checkpoint.
        generation: The buffer's generation (bumped by :meth:`MemBuffer.reset`).

    """

    position: int
    generation: int


class _Missing(enum.Enum):
    MISSING = 0


_MISSING: Final = _Missing.MISSING

# An undo record: the key and its value / flags just before one write.
_Undo = tuple[bytes, "bytes | Tombstone | _Missing", int]

# Maximum number of keys per chunk of the sorted index before it is split in two.
_CHUNK_MAX: Final = 1024


class _SortedKeys:
    """An ordered set of byte keys: sorted chunks plus an unsorted pending list.

    The caller guarantees that :meth:`add` is only given keys that are not present and
    :meth:`remove` only keys that are. ``version`` changes on every mutation so that
    running iterators can re-seek instead of reading a stale position.
    """

    __slots__ = ("_lists", "_maxes", "_pending", "chunk_max", "version")

    def __init__(self) -> None:
        self.chunk_max = _CHUNK_MAX
        self._lists: list[list[bytes]] = []
        self._maxes: list[bytes] = []
        self._pending: list[bytes] = []
        self.version = 0

    def clear(self) -> None:
        self._lists = []
        self._maxes = []
        self._pending = []
        self.version += 1

    def add(self, key: bytes) -> None:
        self._pending.append(key)
        self.version += 1

    def remove(self, key: bytes) -> None:
        self._flush()
        self.version += 1
        i = bisect_left(self._maxes, key)
        chunk = self._lists[i]
        del chunk[bisect_left(chunk, key)]
        if chunk:
            self._maxes[i] = chunk[-1]
        else:
            del self._lists[i]
            del self._maxes[i]

    def _flush(self) -> None:
        pending = self._pending
        if not pending:
            return
        self._pending = []
        total = sum(len(c) for c in self._lists)
        if len(pending) * 8 >= total:
            # Many new keys: one sort of everything is cheaper than many inserts
            # (Timsort finds the already sorted runs of the old chunks).
            keys = [k for chunk in self._lists for k in chunk]
            keys.extend(pending)
            keys.sort()
            self._rebuild(keys)
            return
        pending.sort()
        for key in pending:
            self._insert(key)

    def _rebuild(self, keys: list[bytes]) -> None:
        half = max(1, self.chunk_max // 2)
        self._lists = [keys[i : i + half] for i in range(0, len(keys), half)]
        self._maxes = [chunk[-1] for chunk in self._lists]

    def _insert(self, key: bytes) -> None:
        maxes = self._maxes
        i = bisect_left(maxes, key)
        if i == len(maxes):
            i -= 1
            chunk = self._lists[i]
            chunk.append(key)
            maxes[i] = key
        else:
            chunk = self._lists[i]
            insort(chunk, key)
        if len(chunk) > self.chunk_max:
            half = len(chunk) >> 1
            self._lists.insert(i + 1, chunk[half:])
            del chunk[half:]
            maxes.insert(i, chunk[-1])

    def _seek_forward(self, key: bytes, inclusive: bool) -> tuple[int, int]:
        """Chunk and offset of the first key >= ``key`` (> when not inclusive)."""
        self._flush()
        bis = bisect_left if inclusive else bisect_right
        ci = bis(self._maxes, key)
        if ci == len(self._lists):
            return ci, 0
        return ci, bis(self._lists[ci], key)

    def _seek_backward(self, key: bytes | None, inclusive: bool) -> tuple[int, int]:
        """Chunk and offset of the last key <= ``key`` (< when not inclusive); -1 if none."""
        self._flush()
        if key is None:
            ci = len(self._lists) - 1
            return ci, (len(self._lists[ci]) - 1 if ci >= 0 else -1)
        bis = bisect_right if inclusive else bisect_left
        ci = bis(self._maxes, key)
        if ci == len(self._lists):
            ci -= 1
            return ci, (len(self._lists[ci]) - 1 if ci >= 0 else -1)
        j = bis(self._lists[ci], key) - 1
        if j < 0:
            ci -= 1
            j = len(self._lists[ci]) - 1 if ci >= 0 else -1
        return ci, j

    def iter_forward(self, start: bytes, end: bytes | None) -> Iterator[bytes]:
        ci, j = self._seek_forward(start, True)
        version = self.version
        while ci < len(self._lists):
            chunk = self._lists[ci]
            if j >= len(chunk):
                ci, j = ci + 1, 0
                continue
            key = chunk[j]
            if end is not None and key >= end:
                return
            yield key
            if self.version != version:
                # The set changed under us: continue after the last key we produced.
                ci, j = self._seek_forward(key, False)
                version = self.version
            else:
                j += 1

    def iter_backward(self, start: bytes, end: bytes | None) -> Iterator[bytes]:
        ci, j = self._seek_backward(end, False)
        version = self.version
        while ci >= 0:
            if j < 0:
                ci -= 1
                if ci < 0:
                    return
                j = len(self._lists[ci]) - 1
                continue
            key = self._lists[ci][j]
            if key < start:
                return
            yield key
            if self.version != version:
                ci, j = self._seek_backward(key, False)
                version = self.version
            else:
                j -= 1


def _check_key(key: object) -> bytes:
    if not isinstance(key, bytes):
        raise TypeError(f"keys must be bytes, got {type(key).__name__}")
    if len(key) > MAX_KEY_LEN:
        raise ValueError(f"key is {len(key)} bytes, longer than the maximum {MAX_KEY_LEN}")
    return key


def _check_bound(name: str, bound: object) -> bytes | None:
    if bound is None:
        return None
    if not isinstance(bound, bytes):
        raise TypeError(f"{name} must be bytes or None, got {type(bound).__name__}")
    return bound


class MemBuffer:
    """An ordered in-memory write buffer with flags, staging and size limits.

    Not thread-safe: one transaction uses it from one thread or one event loop, as
    client-go's memdb (whose mutex only guards snapshot readers).

    Args:
        entry_size_limit: Largest ``len(key) + len(value)`` of one write, in bytes.
        total_size_limit: Largest :attr:`size` of the whole buffer, in bytes.

    Raises:
        ValueError: A limit is not positive.
        TypeError: A limit is not an int.

    """

    __slots__ = (
        "_dirty",
        "_entry_limit",
        "_flags",
        "_generation",
        "_index",
        "_keep_log",
        "_len",
        "_size",
        "_stages",
        "_total_limit",
        "_undo",
        "_values",
    )

    def __init__(
        self,
        *,
        entry_size_limit: int = DEFAULT_ENTRY_SIZE_LIMIT,
        total_size_limit: int = DEFAULT_TOTAL_SIZE_LIMIT,
    ) -> None:
        self._values: dict[bytes, bytes | Tombstone] = {}
        # Only non-zero flags are stored.
        self._flags: dict[bytes, int] = {}
        self._index = _SortedKeys()
        self._len = 0
        self._size = 0
        self._dirty = False
        # Undo log: one record per write while a staging buffer is open or once a
        # checkpoint has been taken. Stage handles and checkpoints are positions in it.
        self._undo: list[_Undo] = []
        self._stages: list[int] = []
        self._keep_log = False
        self._generation = 0
        self._entry_limit = 0
        self._total_limit = 0
        self.set_size_limits(entry_size_limit, total_size_limit)

    # ------------------------------------------------------------------ limits / stats

    def set_size_limits(self, entry_size_limit: int, total_size_limit: int) -> None:
        """Change the entry and total size limits (client-go ``SetEntrySizeLimit``).

        Args:
            entry_size_limit: Largest ``len(key) + len(value)`` of one write, in bytes.
            total_size_limit: Largest :attr:`size` of the buffer, in bytes.

        Raises:
            ValueError: A limit is not positive.
            TypeError: A limit is not an int.

        """
        for name, value in (
            ("entry_size_limit", entry_size_limit),
            ("total_size_limit", total_size_limit),
        ):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        self._entry_limit = entry_size_limit
        self._total_limit = total_size_limit

    @property
    def entry_size_limit(self) -> int:
        """The largest ``len(key) + len(value)`` of one write, in bytes."""
        return self._entry_limit

    @property
    def total_size_limit(self) -> int:
        """The largest :attr:`size` of the buffer, in bytes."""
        return self._total_limit

    def __len__(self) -> int:
        """Number of entries, flags-only entries included (client-go ``Len``)."""
        return self._len

    @property
    def size(self) -> int:
        """Sum of the key lengths of all entries plus their value lengths, in bytes."""
        return self._size

    @property
    def dirty(self) -> bool:
        """Whether the buffer holds writes that must be committed.

        Set by any write outside staging, by a released outermost staging that wrote
        something, and by persistent flags (a lock taken must be committed or rolled
        back even if its statement is discarded).
        """
        return self._dirty

    @property
    def staging_depth(self) -> int:
        """Number of open staging buffers (the handle of the innermost one)."""
        return len(self._stages)

    # ------------------------------------------------------------------ reads

    def get(self, key: bytes) -> bytes | Tombstone | None:
        """Return the buffered value of ``key``.

        Returns:
            The value, :data:`TOMBSTONE` if the transaction deleted the key, or ``None``
            if the buffer has no value for it (absent, or only flags).

        Raises:
            TypeError: ``key`` is not bytes.

        """
        if not isinstance(key, bytes):
            raise TypeError(f"keys must be bytes, got {type(key).__name__}")
        return self._values.get(key)

    def get_flags(self, key: bytes) -> KeyFlags | None:
        """Return the flags of ``key``, or ``None`` if the buffer has no entry for it.

        An entry with a value but no flags set has ``KeyFlags(0)``.

        Raises:
            TypeError: ``key`` is not bytes.

        """
        if not isinstance(key, bytes):
            raise TypeError(f"keys must be bytes, got {type(key).__name__}")
        flags = self._flags.get(key)
        if flags is not None:
            return KeyFlags(flags)
        if key in self._values:
            return KeyFlags(0)
        return None

    def get_entry(self, key: bytes) -> MemEntry | None:
        """Return the whole entry of ``key`` (value state and flags), or ``None``.

        Raises:
            TypeError: ``key`` is not bytes.

        """
        if not isinstance(key, bytes):
            raise TypeError(f"keys must be bytes, got {type(key).__name__}")
        value = self._values.get(key)
        flags = self._flags.get(key)
        if value is None and flags is None:
            return None
        return MemEntry(key, value, KeyFlags(flags or 0))

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` has an entry (a value, a tombstone or flags)."""
        return key in self._values or key in self._flags

    def iterate(
        self,
        start: bytes | None = None,
        end: bytes | None = None,
        *,
        reverse: bool = False,
    ) -> Iterator[tuple[bytes, bytes | Tombstone]]:
        """Yield ``(key, value)`` for keys in ``[start, end)`` that have a value.

        Tombstones are yielded (as :data:`TOMBSTONE`) so that a union iterator can hide
        the snapshot's value; flags-only entries are skipped, as client-go's ``Iter``.

        Args:
            start: Inclusive lower bound; ``None`` or ``b""`` for no bound.
            end: Exclusive upper bound; ``None`` or ``b""`` for no bound (TiKV reads an
                empty end key as "unbounded").
            reverse: Yield in descending key order.

        Writes made while iterating are allowed: the iterator continues after the last
        key it produced and sees the buffer as it is then.

        Raises:
            TypeError: A bound is not bytes.

        """
        # Validate the bounds now, not at the first next().
        return self._iter_values(self._keys(start, end, reverse))

    def _iter_values(self, keys: Iterator[bytes]) -> Iterator[tuple[bytes, bytes | Tombstone]]:
        values = self._values
        for key in keys:
            value = values.get(key)
            if value is not None:
                yield key, value

    def iterate_with_flags(
        self,
        start: bytes | None = None,
        end: bytes | None = None,
        *,
        reverse: bool = False,
    ) -> Iterator[MemEntry]:
        """Yield every entry in ``[start, end)``, flags-only entries included.

        This is what the committer walks to build mutations (client-go
        ``IterWithFlags``). Bounds and ordering as :meth:`iterate`.

        Raises:
            TypeError: A bound is not bytes.

        """
        return self._iter_entries(self._keys(start, end, reverse))

    def _iter_entries(self, keys: Iterator[bytes]) -> Iterator[MemEntry]:
        values = self._values
        flags = self._flags
        for key in keys:
            yield MemEntry(key, values.get(key), KeyFlags(flags.get(key, 0)))

    def keys(
        self, start: bytes | None = None, end: bytes | None = None, *, reverse: bool = False
    ) -> Iterator[bytes]:
        """Yield every key with an entry in ``[start, end)``, in order.

        Raises:
            TypeError: A bound is not bytes.

        """
        return self._keys(start, end, reverse)

    def _keys(self, start: bytes | None, end: bytes | None, reverse: bool) -> Iterator[bytes]:
        lo = _check_bound("start", start) or b""
        hi = _check_bound("end", end) or None
        if hi is not None and hi <= lo:
            return iter(())
        if reverse:
            return self._index.iter_backward(lo, hi)
        return self._index.iter_forward(lo, hi)

    # ------------------------------------------------------------------ writes

    def set(self, key: bytes, value: bytes, *ops: FlagsOp) -> None:
        """Buffer ``key = value`` and apply flag operations.

        Writing a value clears NEED_CONSTRAINT_CHECK_IN_PREWRITE before ``ops`` are
        applied, as client-go does: a new value means the statement re-checked the key.

        Args:
            key: The key.
            value: The new value; TiKV cannot store an empty value in a transaction
                (client-go ``ErrCannotSetNilValue``), use :meth:`delete` instead.
            *ops: Flag operations to apply.

        Raises:
            TypeError: ``key`` or ``value`` is not bytes, or an op is not a FlagsOp.
            ValueError: ``value`` is empty, or ``key`` is longer than :data:`MAX_KEY_LEN`.
            TxnTooLargeError: The entry or the buffer would exceed its limit; the
                buffer is unchanged.

        """
        if not isinstance(value, bytes):
            raise TypeError(f"values must be bytes, got {type(value).__name__}")
        if not value:
            raise ValueError("cannot set an empty value; use delete() to remove a key")
        self._write(_check_key(key), value, ops)

    def delete(self, key: bytes, *ops: FlagsOp) -> None:
        """Buffer a deletion of ``key`` (a tombstone) and apply flag operations.

        Raises:
            TypeError: ``key`` is not bytes, or an op is not a FlagsOp.
            ValueError: ``key`` is longer than :data:`MAX_KEY_LEN`.
            TxnTooLargeError: The entry or the buffer would exceed its limit; the
                buffer is unchanged.

        """
        self._write(_check_key(key), TOMBSTONE, ops)

    def update_flags(self, key: bytes, *ops: FlagsOp) -> None:
        """Apply flag operations to ``key`` without changing its value.

        Creates a flags-only entry when the key has none (e.g. a pessimistic lock on a
        key the transaction does not write); a flags-only entry whose flags all become
        clear is removed.

        Raises:
            TypeError: ``key`` is not bytes, or an op is not a FlagsOp.
            ValueError: ``key`` is longer than :data:`MAX_KEY_LEN`.
            TxnTooLargeError: A new entry's key would push the buffer over its limit.

        """
        self._write(_check_key(key), None, ops)

    def _write(self, key: bytes, value: bytes | Tombstone | None, ops: tuple[FlagsOp, ...]) -> None:
        values = self._values
        flags_map = self._flags
        old_value = values.get(key, _MISSING)
        old_flags = flags_map.get(key, 0)
        exists = old_value is not _MISSING or old_flags != 0

        # Compute the new state first; nothing is modified until the limits passed.
        new_flags = old_flags
        if value is not None:
            new_flags &= ~_DEL_NCCIP_MASK
        if ops:
            new_flags = _apply_ops(new_flags, ops)
        # An entry lives while it has a value, a tombstone or any flag: a lock-only
        # entry whose flags are all cleared is gone.
        new_exists = value is not None or old_value is not _MISSING or new_flags != 0
        if not exists and not new_exists:
            return

        delta = 0 if new_exists == exists else (len(key) if new_exists else -len(key))
        if value is not None:
            new_len = 0 if value is TOMBSTONE else len(value)
            if len(key) + new_len > self._entry_limit:
                raise TxnTooLargeError("entry", len(key) + new_len, self._entry_limit, key)
            delta += new_len
            if old_value is not _MISSING and old_value is not TOMBSTONE:
                delta -= len(old_value)
        if delta > 0 and self._size + delta > self._total_limit:
            raise TxnTooLargeError("total", self._size + delta, self._total_limit)

        if self._stages or self._keep_log:
            self._undo.append((key, old_value, old_flags))
        if not self._stages:
            self._dirty = True
        if new_flags & _PERSISTENT:
            self._dirty = True

        if value is not None:
            values[key] = value
        if new_flags:
            flags_map[key] = new_flags
        elif old_flags:
            del flags_map[key]
        if new_exists and not exists:
            self._len += 1
            self._index.add(key)
        elif exists and not new_exists:
            self._len -= 1
            self._index.remove(key)
        self._size += delta

    # ------------------------------------------------------------------ staging

    def staging(self) -> int:
        """Open a nested staging buffer and return its handle (1 for the outermost).

        Writes after this call can be discarded with :meth:`cleanup` or kept with
        :meth:`release`; only the innermost staging buffer may be released or cleaned.
        """
        self._stages.append(len(self._undo))
        return len(self._stages)

    def release(self, handle: int) -> None:
        """Merge the innermost staging buffer into its parent (or the buffer itself).

        Args:
            handle: The handle returned by :meth:`staging`; ``0`` is a no-op (client-go's
                invalid handle).

        Raises:
            ValueError: ``handle`` is not the innermost staging buffer.

        """
        if handle == 0:
            return
        if handle != len(self._stages):
            raise ValueError(
                f"can only release the innermost staging buffer {len(self._stages)}, "
                f"got handle {handle}"
            )
        start = self._stages.pop()
        if not self._stages:
            if len(self._undo) > start:
                self._dirty = True
            if not self._keep_log:
                self._undo.clear()

    def cleanup(self, handle: int) -> None:
        """Discard the innermost staging buffer: restore values and flags as they were.

        Flags in :data:`PERSISTENT_FLAGS` keep their current value: they record locks
        taken on the server, which discarding a statement does not release (client-go
        keeps them for the same reason). A key created in the staging buffer disappears
        unless such a flag is set on it.

        Args:
            handle: The handle returned by :meth:`staging`. ``0`` and handles above the
                innermost one are no-ops, as in client-go (cleaning up an already
                cleaned buffer is harmless).

        Raises:
            ValueError: ``handle`` is an outer staging buffer (inner ones are open).

        """
        if handle == 0 or handle > len(self._stages):
            return
        if handle < len(self._stages):
            raise ValueError(
                f"cannot clean up staging buffer {handle} while buffer "
                f"{len(self._stages)} is open inside it"
            )
        start = self._stages.pop()
        self._undo_to(start)
        if not self._stages and not self._keep_log:
            self._undo.clear()

    def checkpoint(self) -> MemBufferCheckpoint:
        """Return a position that :meth:`revert_to_checkpoint` can roll back to.

        From the first checkpoint on, every write is recorded for undo until
        :meth:`reset` (client-go keeps its value log for the same purpose).
        """
        self._keep_log = True
        return MemBufferCheckpoint(len(self._undo), self._generation)

    def revert_to_checkpoint(self, checkpoint: MemBufferCheckpoint) -> None:
        """Undo every write made after ``checkpoint``, with :meth:`cleanup`'s rules.

        Raises:
            TypeError: ``checkpoint`` is not a :class:`MemBufferCheckpoint`.
            ValueError: The checkpoint belongs to another generation of the buffer (it
                was reset), lies beyond the current history (already reverted past
                it), or precedes the start of an open staging buffer.

        """
        if not isinstance(checkpoint, MemBufferCheckpoint):
            raise TypeError(f"expected a MemBufferCheckpoint, got {type(checkpoint).__name__}")
        if checkpoint.generation != self._generation:
            raise ValueError("checkpoint was taken before the buffer was reset")
        if checkpoint.position > len(self._undo):
            raise ValueError("checkpoint is no longer valid: its writes were already undone")
        if self._stages and checkpoint.position < self._stages[-1]:
            raise ValueError("cannot revert past the start of an open staging buffer")
        self._undo_to(checkpoint.position)

    def _undo_to(self, position: int) -> None:
        undo = self._undo
        values = self._values
        flags_map = self._flags
        while len(undo) > position:
            key, old_value, old_flags = undo.pop()
            cur_value = values.get(key, _MISSING)
            cur_flags = flags_map.get(key, 0)
            # Persistent flags keep their current value; the others are restored.
            new_flags = (old_flags & ~_PERSISTENT) | (cur_flags & _PERSISTENT)

            if cur_value is not _MISSING and cur_value is not TOMBSTONE:
                self._size -= len(cur_value)
            if old_value is _MISSING:
                values.pop(key, None)
            else:
                values[key] = old_value
                if old_value is not TOMBSTONE:
                    self._size += len(old_value)
            if new_flags:
                flags_map[key] = new_flags
            elif cur_flags:
                del flags_map[key]

            existed = cur_value is not _MISSING or cur_flags != 0
            exists = old_value is not _MISSING or new_flags != 0
            if existed and not exists:
                self._len -= 1
                self._size -= len(key)
                self._index.remove(key)
            elif exists and not existed:
                self._len += 1
                self._size += len(key)
                self._index.add(key)

    def inspect_stage(self, handle: int) -> Iterator[MemEntry]:
        """Yield the current entries of the keys written since staging ``handle`` opened.

        Each key appears once, in key order; keys whose entry was removed are skipped
        (client-go ``InspectStage``, used to collect a statement's writes).

        Raises:
            ValueError: ``handle`` is not an open staging buffer.

        """
        if not 1 <= handle <= len(self._stages):
            raise ValueError(f"no open staging buffer {handle}")
        start = self._stages[handle - 1]
        keys = sorted({rec[0] for rec in self._undo[start:]})
        for key in keys:
            entry = self.get_entry(key)
            if entry is not None:
                yield entry

    def reset(self) -> None:
        """Drop every entry, staging buffer and checkpoint; the limits are kept."""
        self._values = {}
        self._flags = {}
        self._index.clear()
        self._len = 0
        self._size = 0
        self._dirty = False
        self._undo = []
        self._stages = []
        self._keep_log = False
        self._generation += 1
