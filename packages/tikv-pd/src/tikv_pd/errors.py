"""The one error hierarchy of TiKV for Python.

Every error raised by the clients derives from :class:`TiKVError`. Each exception keeps
the facts the server (or the client) knew as attributes, so callers branch on data, not on
message text. The tree::

    TiKVError
    ├── PDError                      PD answered with an error, or could not be reached
    ├── RegionError                  a region error from errorpb.Error (kind, region id, detail)
    │   ├── ServerBusyError          errorpb.ServerIsBusy
    │   ├── DataIsNotReadyError      errorpb.DataIsNotReady (stale read safe-ts lag)
    │   └── FlashbackError           errorpb.FlashbackInProgress / FlashbackNotPrepared
    ├── TimeoutError                 a backoff budget ran out (also builtins.TimeoutError)
    ├── UndeterminedError            a write may or may not have been applied
    ├── StoreUnavailableError        transport failure talking to a TiKV store
    ├── TokenLimitError              too many requests in flight to one store (store_limit)
    ├── ClientClosedError            the client (or a component) was used after close()
    ├── FutureTSReadError            a read ts beyond every timestamp PD has issued (ValueError)
    ├── LatestStaleReadError         a stale read at the max timestamp (also a ValueError)
    ├── CodecError                   malformed encoded key (also a ValueError)
    │   └── KeyOutOfKeyspaceError    a key outside the client's keyspace (API v2)
    └── TxnError                     transaction-level errors
        ├── WriteConflictError       kvrpcpb.WriteConflict
        ├── KeyExistsError           kvrpcpb.AlreadyExist (insert of an existing key)
        ├── DeadlockError            kvrpcpb.Deadlock
        ├── AssertionFailedError     kvrpcpb.AssertionFailed
        ├── TxnNotFoundError         kvrpcpb.TxnNotFound
        ├── TxnLockNotFoundError     kvrpcpb.TxnLockNotFound
        ├── CommitTsExpiredError     kvrpcpb.CommitTsExpired
        ├── CommitTsTooLargeError    kvrpcpb.CommitTsTooLarge
        ├── CommitTsLagError         PD's TSO stayed behind a commit-wait-until ts
        ├── LockWaitTimeoutError     pessimistic lock wait timed out
        ├── PrimaryMismatchError     kvrpcpb.PrimaryMismatch
        ├── PessimisticLockNotFoundError  the pessimistic lock vanished before prewrite
        ├── TxnTooLargeError         one entry or the whole buffer exceeds its size limit
        ├── TransactionClosedError   a transaction was used after commit / rollback
        ├── GCTooEarlyError          read_ts is older than the GC safepoint
        ├── KeyIsLockedError         kvrpcpb.KeyError.locked (carries a LockInfo)
        ├── TxnRetryableError        kvrpcpb.KeyError.retryable
        └── TxnAbortedError          kvrpcpb.KeyError.abort

Keys in messages are shown with ``repr`` and truncated when long. :func:`set_redact_keys`
replaces them with ``?`` in every message (client-go's ``redact`` option, used by TiDB's
``tidb_redact_log``); the attributes always keep the real keys.

This module is pure: it imports no protobuf. The request layer converts kvproto messages
into these exceptions; opaque server objects are kept as ``object`` in ``detail``.
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "AssertionFailedError",
    "ClientClosedError",
    "CodecError",
    "CommitTsExpiredError",
    "CommitTsLagError",
    "CommitTsTooLargeError",
    "DataIsNotReadyError",
    "DeadlockError",
    "FlashbackError",
    "FutureTSReadError",
    "GCTooEarlyError",
    "KeyExistsError",
    "KeyIsLockedError",
    "KeyOutOfKeyspaceError",
    "LatestStaleReadError",
    "LockInfo",
    "LockWaitTimeoutError",
    "PDError",
    "PessimisticLockNotFoundError",
    "PrimaryMismatchError",
    "RegionError",
    "ServerBusyError",
    "StoreUnavailableError",
    "TiKVError",
    "TimeoutError",
    "TokenLimitError",
    "TransactionClosedError",
    "TxnAbortedError",
    "TxnError",
    "TxnLockNotFoundError",
    "TxnNotFoundError",
    "TxnRetryableError",
    "TxnTooLargeError",
    "UndeterminedError",
    "WaitForEntry",
    "WriteConflictError",
    "format_key",
    "redact_keys_enabled",
    "set_redact_keys",
]

# ---------------------------------------------------------------------------------------
# Key formatting and redaction
# ---------------------------------------------------------------------------------------

#: Keys longer than this many bytes are truncated in messages.
MAX_KEY_DISPLAY_BYTES = 64

_redact_lock = threading.Lock()
_redact_keys = False


def set_redact_keys(enabled: bool) -> None:
    """Turn key redaction in error messages on or off, process-wide.

    client-go redacts user data in logs and error text when TiDB's ``tidb_redact_log`` is
    set (``util/redact``); this is the same switch. Attributes keep the real keys: only
    ``str()`` of the exceptions is affected, at the time it is called.

    Args:
        enabled: ``True`` to print ``?`` instead of keys.

    Raises:
        TypeError: ``enabled`` is not a bool.

    """
    global _redact_keys
    if not isinstance(enabled, bool):
        raise TypeError(f"set_redact_keys expects a bool, got {type(enabled).__name__}")
    with _redact_lock:
        _redact_keys = enabled


def redact_keys_enabled() -> bool:
    """Return whether keys are currently redacted in error messages."""
    return _redact_keys


def format_key(key: bytes | None) -> str:
    """Format a key for an error message: ``repr``, truncated, or ``?`` when redacted.

    Args:
        key: The key, or ``None`` when unknown.

    Returns:
        ``"None"`` for a missing key, ``"?"`` when redaction is on, otherwise the key's
        ``repr`` (the first :data:`MAX_KEY_DISPLAY_BYTES` bytes and the full length when
        it is longer).

    """
    if key is None:
        return "None"
    if _redact_keys:
        return "?"
    if len(key) > MAX_KEY_DISPLAY_BYTES:
        return f"{bytes(key[:MAX_KEY_DISPLAY_BYTES])!r}...({len(key)} bytes)"
    return repr(bytes(key))


def _rebuild(cls: type[TiKVError], state: dict[str, Any], args: tuple[Any, ...]) -> TiKVError:
    """Recreate an exception from its attributes (pickle support for custom __init__)."""
    obj = cls.__new__(cls)
    obj.args = args
    obj.__dict__.update(state)
    return obj


# ---------------------------------------------------------------------------------------
# Root and client-level errors
# ---------------------------------------------------------------------------------------


class TiKVError(Exception):
    """Root of every error raised by TiKV for Python.

    Subclasses keep their facts as attributes and render their message lazily, so that
    :func:`set_redact_keys` applies to messages printed after it is called.

    Attributes:
        message: Free text given by the raiser (may be empty for subclasses that build
            their message from attributes).

    """

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message

    def _describe(self) -> str:
        """Build the human-readable message; subclasses override."""
        return self.message

    def __str__(self) -> str:
        return self._describe()

    def __reduce__(self) -> tuple[Any, ...]:
        # Subclasses have keyword-rich constructors; rebuild from attributes instead of
        # replaying ``args`` so the exceptions survive pickling (multiprocessing, logs).
        return (_rebuild, (type(self), dict(self.__dict__), self.args))


class PDError(TiKVError):
    """PD returned an error, or no PD member could serve the request.

    Attributes:
        message: What went wrong.
        error_type: PD's ``pdpb.ErrorType`` name when PD answered with a header error
            (e.g. ``"NOT_BOOTSTRAPPED"``, ``"REGION_NOT_FOUND"``), else ``None``.
        cause: The underlying transport exception, if any.

    """

    def __init__(
        self,
        message: str,
        *,
        error_type: str | None = None,
        cause: BaseException | None = None,
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.cause = cause

    def _describe(self) -> str:
        text = f"PD error: {self.message}"
        if self.error_type:
            text += f" (type={self.error_type})"
        if self.cause is not None:
            text += f": {type(self.cause).__name__}: {self.cause}"
        return text


class RegionError(TiKVError):
    """A region error (``errorpb.Error``) returned by a TiKV store.

    The request layer usually handles these internally (refresh the cache, switch the
    leader, back off and retry); one surfaces only when it cannot be handled.

    Attributes:
        kind: The name of the set field of ``errorpb.Error`` (``"not_leader"``,
            ``"epoch_not_match"``, ``"server_is_busy"``, ...), or ``"unknown"``.
        region_id: The region the request was sent to (0 when unknown).
        server_message: ``errorpb.Error.message`` as sent by the server.
        detail: The raw detail object from the server (opaque here; the request layer
            stores the protobuf sub-message).

    """

    def __init__(
        self,
        kind: str,
        region_id: int,
        server_message: str = "",
        detail: object = None,
    ) -> None:
        super().__init__(server_message)
        self.kind = kind
        self.region_id = region_id
        self.server_message = server_message
        self.detail = detail

    def _describe(self) -> str:
        text = f"region error {self.kind} on region {self.region_id}"
        if self.server_message:
            text += f": {self.server_message}"
        return text


class ServerBusyError(RegionError):
    """The store reported ``ServerIsBusy`` (its scheduler or read pool is overloaded).

    Attributes:
        reason: The server's reason text.
        backoff_ms: The backoff the server suggests (0 = use the client's default).
        estimated_wait_ms: The server's estimated queueing time (0 when unknown).

    """

    def __init__(
        self,
        region_id: int,
        reason: str = "",
        *,
        backoff_ms: int = 0,
        estimated_wait_ms: int = 0,
        server_message: str = "",
        detail: object = None,
    ) -> None:
        super().__init__("server_is_busy", region_id, server_message, detail)
        self.reason = reason
        self.backoff_ms = backoff_ms
        self.estimated_wait_ms = estimated_wait_ms

    def _describe(self) -> str:
        text = f"server is busy (region {self.region_id})"
        if self.reason:
            text += f": {self.reason}"
        if self.backoff_ms:
            text += f", suggested backoff {self.backoff_ms} ms"
        if self.estimated_wait_ms:
            text += f", estimated wait {self.estimated_wait_ms} ms"
        return text


class DataIsNotReadyError(RegionError):
    """A stale / follower read hit a replica whose safe-ts is behind the read ts.

    Attributes:
        peer_id: The replica that answered.
        safe_ts: The replica's resolved safe timestamp.

    """

    def __init__(
        self,
        region_id: int,
        *,
        peer_id: int = 0,
        safe_ts: int = 0,
        server_message: str = "",
        detail: object = None,
    ) -> None:
        super().__init__("data_is_not_ready", region_id, server_message, detail)
        self.peer_id = peer_id
        self.safe_ts = safe_ts

    def _describe(self) -> str:
        return (
            f"data is not ready on region {self.region_id} peer {self.peer_id} "
            f"(safe_ts={self.safe_ts})"
        )


class FlashbackError(RegionError):
    """The region is being flashed back (or a flashback step found it unprepared).

    TiKV rejects ordinary requests to a region in flashback (``FlashbackInProgress``)
    and the second phase of a flashback sent to a region that was not prepared
    (``FlashbackNotPrepared``). client-go stops retrying at once for both (the workload
    is expected to stop during a flashback); only a replica read is retried, on the
    leader.

    Attributes:
        flashback_start_ts: The flashback's start ts (``FlashbackInProgress``; 0 when
            TiKV did not say or for ``FlashbackNotPrepared``).

    """

    def __init__(
        self,
        kind: str,
        region_id: int,
        *,
        flashback_start_ts: int = 0,
        server_message: str = "",
        detail: object = None,
    ) -> None:
        if kind not in ("FlashbackInProgress", "FlashbackNotPrepared"):
            raise ValueError(f"not a flashback error kind: {kind!r}")
        super().__init__(kind, region_id, server_message, detail)
        self.flashback_start_ts = flashback_start_ts

    @property
    def in_progress(self) -> bool:
        """Whether the region is in a flashback (else: it was not prepared for one)."""
        return self.kind == "FlashbackInProgress"

    def _describe(self) -> str:
        if self.in_progress:
            return (
                f"region {self.region_id} is in flashback progress (FlashbackInProgress), "
                f"flashback start ts {self.flashback_start_ts}"
            )
        return f"region {self.region_id} is not prepared for the flashback (FlashbackNotPrepared)"


class TimeoutError(TiKVError, builtins.TimeoutError):
    """A backoff budget was exhausted: the operation slept as long as it may.

    It is also a :class:`builtins.TimeoutError`, so generic ``except TimeoutError``
    handlers catch it.

    Attributes:
        operation: What was being attempted (e.g. ``"raw_get"``, ``"prewrite"``).
        causes: One line per backoff taken, oldest first (kind and the error that caused
            it), as client-go keeps ``Backoffer.errors``.
        total_sleep_ms: Total time slept, in milliseconds (excluded kinds included).
        budget_ms: The budget that ran out, in milliseconds.
        last_error: The error that caused the last backoff, if any.
        longest_kind: The backoff kind that slept longest (client-go reports the error of
            this kind, e.g. ``regionMiss`` → "region unavailable"), or ``None``.
        backoff_times: How many times each kind backed off.

    """

    def __init__(
        self,
        operation: str,
        *,
        causes: Sequence[str] = (),
        total_sleep_ms: int = 0,
        budget_ms: int = 0,
        last_error: BaseException | None = None,
        longest_kind: str | None = None,
        backoff_times: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__(operation)
        self.operation = operation
        self.causes: list[str] = list(causes)
        self.total_sleep_ms = total_sleep_ms
        self.budget_ms = budget_ms
        self.last_error = last_error
        self.longest_kind = longest_kind
        self.backoff_times: dict[str, int] = dict(backoff_times or {})

    def _describe(self) -> str:
        text = (
            f"{self.operation}: backoff budget exhausted after sleeping "
            f"{self.total_sleep_ms} ms (budget {self.budget_ms} ms)"
        )
        if self.longest_kind:
            text += f", mostly {self.longest_kind}"
        if self.backoff_times:
            detail = ", ".join(f"{k}:{v}" for k, v in sorted(self.backoff_times.items()))
            text += f", backoffs {{{detail}}}"
        if self.causes:
            # Keep the message bounded: the first and last causes tell the story.
            shown = self.causes
            if len(shown) > 10:
                shown = [*shown[:5], f"... {len(shown) - 10} more ...", *shown[-5:]]
            text += "; causes: [" + "; ".join(shown) + "]"
        if self.last_error is not None:
            text += f"; last error: {type(self.last_error).__name__}: {self.last_error}"
        return text


class UndeterminedError(TiKVError):
    """A write may or may not have been applied; the client cannot tell.

    Raised e.g. when the commit of a primary key loses its connection after sending, or
    a raw CAS times out in flight. It is never retried blindly (client-go's
    ``ErrResultUndetermined``).

    Attributes:
        operation: The operation whose outcome is unknown.
        cause: The underlying error.

    """

    def __init__(self, operation: str, cause: BaseException | None = None) -> None:
        super().__init__(operation)
        self.operation = operation
        self.cause = cause

    def _describe(self) -> str:
        text = f"result of {self.operation} is undetermined"
        if self.cause is not None:
            text += f": {type(self.cause).__name__}: {self.cause}"
        return text


class StoreUnavailableError(TiKVError):
    """A TiKV store could not be reached (connection refused, reset, deadline, ...).

    Attributes:
        store_id: The store's id (0 when unknown).
        address: The address that was dialled.
        cause: The transport exception.

    """

    def __init__(self, store_id: int, address: str, cause: BaseException | None = None) -> None:
        super().__init__(address)
        self.store_id = store_id
        self.address = address
        self.cause = cause

    def _describe(self) -> str:
        text = f"store {self.store_id} at {self.address or '?'} is unavailable"
        if self.cause is not None:
            text += f": {type(self.cause).__name__}: {self.cause}"
        return text


class TokenLimitError(TiKVError):
    """A store already has ``Config.store_limit`` requests of this client in flight.

    client-go ``ErrTokenLimit`` (``kv.StoreLimit``): the request is refused before it is
    sent, not queued, so an overloaded store cannot pile up work; nothing was sent.

    Attributes:
        store_id: The store whose limit was reached.
        limit: The limit.

    """

    def __init__(self, store_id: int, limit: int) -> None:
        super().__init__("")
        self.store_id = store_id
        self.limit = limit

    def _describe(self) -> str:
        return (
            f"store token is up to the limit, store id = {self.store_id} (store_limit {self.limit})"
        )


class ClientClosedError(TiKVError):
    """A client or one of its components was used after ``close()``.

    Attributes:
        component: What was closed (``"client"``, ``"PD client"``, ``"oracle"``, ...): a
            name, not a sentence.
        when: Set when the close interrupted work in progress (``"during GetRegion"``,
            ``"while the call ran"``); the message then says it was closed then.

    """

    def __init__(self, component: str = "client", *, when: str = "") -> None:
        super().__init__(component)
        self.component = component
        self.when = when

    def _describe(self) -> str:
        if self.when:
            return f"{self.component} was closed {self.when}"
        return f"{self.component} is closed"


class FutureTSReadError(TiKVError, ValueError):
    """A read timestamp is newer than any timestamp PD has issued (client-go ``ErrFutureTSRead``).

    Reading at such a ts could see data committed later at a smaller ts: the snapshot would
    not be repeatable. Raised before the request is sent.

    Attributes:
        read_ts: The refused read timestamp.
        current_ts: The newest timestamp PD issued when the read was checked.

    """

    def __init__(self, read_ts: int, current_ts: int) -> None:
        super().__init__("future read ts")
        self.read_ts = read_ts
        self.current_ts = current_ts

    def _describe(self) -> str:
        return (
            f"cannot read at a future timestamp: read ts {self.read_ts} is newer than "
            f"the current ts {self.current_ts}"
        )


class LatestStaleReadError(TiKVError, ValueError):
    """A stale read asked for the maximum timestamp (client-go ``ErrLatestStaleRead``).

    A stale read is served by any replica from data at least as old as its ts; "the
    latest data" is not something a follower can promise. Raised before the request is
    sent.
    """

    def __init__(self) -> None:
        super().__init__("stale read at the max timestamp")

    def _describe(self) -> str:
        return "a stale read cannot use the max timestamp (the latest data)"


class CodecError(TiKVError, ValueError):
    """An encoded key could not be decoded (memcomparable or keyspace encoding).

    Attributes:
        reason: What was wrong.
        data: The offending bytes (shown truncated / redacted like keys).

    """

    def __init__(self, reason: str, data: bytes = b"") -> None:
        super().__init__(reason)
        self.reason = reason
        self.data = data

    def _describe(self) -> str:
        return f"cannot decode key: {self.reason} (data {format_key(self.data)})"


class KeyOutOfKeyspaceError(CodecError):
    """A key (or range) from the server lies outside this client's keyspace.

    Attributes:
        key: The key.
        keyspace_id: The client's keyspace id.
        mode: ``"raw"`` or ``"txn"``.

    """

    def __init__(self, key: bytes, keyspace_id: int, mode: str) -> None:
        super().__init__("key does not belong to the keyspace", key)
        self.key = key
        self.keyspace_id = keyspace_id
        self.mode = mode

    def _describe(self) -> str:
        return (
            f"key {format_key(self.key)} does not belong to {self.mode} keyspace {self.keyspace_id}"
        )


# ---------------------------------------------------------------------------------------
# Transaction errors
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class LockInfo:
    """A Percolator lock as reported by TiKV (``kvrpcpb.LockInfo``).

    Attributes:
        primary_lock: The primary key of the lock's transaction.
        lock_version: The lock's start ts.
        key: The locked key.
        lock_ttl: Lock TTL in milliseconds, counted from the start ts' physical time.
        txn_size: Number of keys the transaction wrote (drives lite resolve).
        lock_type: ``kvrpcpb.Op`` value of the lock (Put, Del, Lock, PessimisticLock).
        use_async_commit: The lock belongs to an async-commit transaction.
        min_commit_ts: The minimum commit ts the transaction may use.
        secondaries: The secondary keys (async commit only, on the primary lock).
        lock_for_update_ts: The for-update ts of a pessimistic lock.
        duration_to_last_update_ms: Time since the lock was last updated (pessimistic).
        is_txn_file: The lock was written by a "txn file" (large) transaction.

    """

    primary_lock: bytes
    lock_version: int
    key: bytes
    lock_ttl: int = 0
    txn_size: int = 0
    lock_type: int = 0
    use_async_commit: bool = False
    min_commit_ts: int = 0
    secondaries: tuple[bytes, ...] = ()
    lock_for_update_ts: int = 0
    duration_to_last_update_ms: int = 0
    is_txn_file: bool = False

    def __post_init__(self) -> None:
        for name in ("primary_lock", "key"):
            if not isinstance(getattr(self, name), bytes):
                raise TypeError(f"LockInfo.{name} must be bytes")
        if self.lock_version < 0 or self.lock_ttl < 0:
            raise ValueError("LockInfo.lock_version and lock_ttl must be non-negative")
        # Accept any iterable of keys (e.g. a protobuf repeated field); store a tuple.
        secondaries: object = self.secondaries
        if not isinstance(secondaries, tuple):
            object.__setattr__(self, "secondaries", tuple(self.secondaries))

    def describe(self) -> str:
        """Return a one-line description of the lock, honouring key redaction."""
        text = (
            f"lock(key={format_key(self.key)}, primary={format_key(self.primary_lock)}, "
            f"start_ts={self.lock_version}, ttl={self.lock_ttl}, type={self.lock_type}"
        )
        if self.use_async_commit:
            text += f", async_commit, min_commit_ts={self.min_commit_ts}"
        if self.lock_for_update_ts:
            text += f", for_update_ts={self.lock_for_update_ts}"
        return text + ")"


@dataclass(frozen=True, slots=True, kw_only=True)
class WaitForEntry:
    """One edge of a deadlock's wait-for chain (``deadlock.WaitForEntry``).

    Attributes:
        txn: The waiting transaction's start ts.
        wait_for_txn: The start ts of the transaction it waits for.
        key_hash: Hash of the key it waits on.
        key: The key it waits on (may be empty when the detector did not report it).
        resource_group_tag: Opaque tag of the waiting request.
        wait_time: How long it had been waiting, in milliseconds.

    """

    txn: int
    wait_for_txn: int
    key_hash: int
    key: bytes = b""
    resource_group_tag: bytes = b""
    wait_time: int = 0


class TxnError(TiKVError):
    """Base of transaction-level errors (key errors and client-side txn errors)."""


# kvrpcpb.WriteConflict.Reason values: the enum order of the wire protocol.
_WRITE_CONFLICT_REASONS = {
    0: "Unknown",
    1: "Optimistic",
    2: "PessimisticRetry",
    3: "SelfRolledBack",
    4: "RcCheckTs",
    5: "LazyUniquenessCheck",
    6: "NotLockedKeyConflict",
}


class WriteConflictError(TxnError):
    """Another transaction committed a write to the key after this one started.

    Attributes:
        start_ts: This transaction's start ts.
        conflict_start_ts: The start ts of the conflicting transaction.
        conflict_commit_ts: The commit ts of the conflicting write.
        key: The conflicting key.
        primary: This transaction's primary key.
        reason: ``kvrpcpb.WriteConflict.Reason`` value (0 = unknown, 1 = optimistic,
            2 = pessimistic retry, 3 = self rolled back, 4 = RC check ts,
            5 = lazy uniqueness check, 6 = not-locked key conflict).

    """

    def __init__(
        self,
        *,
        start_ts: int,
        conflict_start_ts: int,
        conflict_commit_ts: int,
        key: bytes,
        primary: bytes = b"",
        reason: int = 0,
    ) -> None:
        super().__init__("write conflict")
        self.start_ts = start_ts
        self.conflict_start_ts = conflict_start_ts
        self.conflict_commit_ts = conflict_commit_ts
        self.key = key
        self.primary = primary
        self.reason = reason

    @property
    def reason_name(self) -> str:
        """The name of :attr:`reason` (``"Optimistic"``, ...)."""
        return _WRITE_CONFLICT_REASONS.get(self.reason, f"Reason({self.reason})")

    def _describe(self) -> str:
        return (
            f"write conflict on key {format_key(self.key)}: txn start_ts={self.start_ts}, "
            f"conflicting txn start_ts={self.conflict_start_ts} "
            f"commit_ts={self.conflict_commit_ts}, primary={format_key(self.primary)}, "
            f"reason={self.reason_name}"
        )


class KeyExistsError(TxnError):
    """An insert (or a NotExist assertion / presume-not-exist) found the key present.

    Attributes:
        key: The existing key.

    """

    def __init__(self, key: bytes) -> None:
        super().__init__("key exists")
        self.key = key

    def _describe(self) -> str:
        return f"key {format_key(self.key)} already exists"


class DeadlockError(TxnError):
    """TiKV's deadlock detector aborted this pessimistic lock request.

    Attributes:
        lock_ts: Start ts of the transaction holding the lock we waited for.
        lock_key: The key we waited on.
        deadlock_key_hash: Hash of the key that closes the cycle.
        wait_chain: The wait-for cycle, as reported by the detector.

    """

    def __init__(
        self,
        *,
        lock_ts: int,
        lock_key: bytes,
        deadlock_key_hash: int,
        wait_chain: Iterable[WaitForEntry] = (),
    ) -> None:
        super().__init__("deadlock")
        self.lock_ts = lock_ts
        self.lock_key = lock_key
        self.deadlock_key_hash = deadlock_key_hash
        self.wait_chain: tuple[WaitForEntry, ...] = tuple(wait_chain)

    def _describe(self) -> str:
        text = (
            f"deadlock: waiting on key {format_key(self.lock_key)} locked by txn "
            f"{self.lock_ts}, deadlock key hash {self.deadlock_key_hash}"
        )
        if self.wait_chain:
            chain = ", ".join(f"{e.txn}->{e.wait_for_txn}" for e in self.wait_chain)
            text += f", wait chain [{chain}]"
        return text


# kvrpcpb.Assertion values.
_ASSERTION_NAMES = {0: "None", 1: "Exist", 2: "NotExist"}


class AssertionFailedError(TxnError):
    """A mutation's existence assertion did not hold on the server.

    Attributes:
        start_ts: This transaction's start ts.
        key: The key whose assertion failed.
        assertion: ``kvrpcpb.Assertion`` value (0 None, 1 Exist, 2 NotExist).
        existing_start_ts: Start ts of the existing version (0 if none).
        existing_commit_ts: Commit ts of the existing version (0 if none).

    """

    def __init__(
        self,
        *,
        start_ts: int,
        key: bytes,
        assertion: int,
        existing_start_ts: int = 0,
        existing_commit_ts: int = 0,
    ) -> None:
        super().__init__("assertion failed")
        self.start_ts = start_ts
        self.key = key
        self.assertion = assertion
        self.existing_start_ts = existing_start_ts
        self.existing_commit_ts = existing_commit_ts

    def _describe(self) -> str:
        name = _ASSERTION_NAMES.get(self.assertion, f"Assertion({self.assertion})")
        return (
            f"assertion {name} failed on key {format_key(self.key)} (txn start_ts="
            f"{self.start_ts}, existing start_ts={self.existing_start_ts} "
            f"commit_ts={self.existing_commit_ts})"
        )


class TxnNotFoundError(TxnError):
    """The transaction's primary lock and commit record are both gone.

    Attributes:
        start_ts: The transaction's start ts.
        primary_key: Its primary key.

    """

    def __init__(self, start_ts: int, primary_key: bytes) -> None:
        super().__init__("txn not found")
        self.start_ts = start_ts
        self.primary_key = primary_key

    def _describe(self) -> str:
        return f"transaction {self.start_ts} not found (primary key {format_key(self.primary_key)})"


class TxnLockNotFoundError(TxnError):
    """Commit found no lock of this transaction on the key (it was rolled back).

    Attributes:
        key: The key without the expected lock.

    """

    def __init__(self, key: bytes) -> None:
        super().__init__("txn lock not found")
        self.key = key

    def _describe(self) -> str:
        return f"transaction lock not found on key {format_key(self.key)}"


class CommitTsExpiredError(TxnError):
    """The commit ts is below the lock's min_commit_ts (async commit / 1PC pushed it).

    Attributes:
        start_ts: The transaction's start ts.
        attempted_commit_ts: The commit ts that was refused.
        key: The key whose lock refused it.
        min_commit_ts: The lock's min commit ts; a new commit ts must exceed it.

    """

    def __init__(
        self, *, start_ts: int, attempted_commit_ts: int, key: bytes, min_commit_ts: int
    ) -> None:
        super().__init__("commit ts expired")
        self.start_ts = start_ts
        self.attempted_commit_ts = attempted_commit_ts
        self.key = key
        self.min_commit_ts = min_commit_ts

    def _describe(self) -> str:
        return (
            f"commit ts {self.attempted_commit_ts} expired for txn {self.start_ts} on key "
            f"{format_key(self.key)}: min_commit_ts={self.min_commit_ts}"
        )


class CommitTsTooLargeError(TxnError):
    """The calculated async-commit / 1PC commit ts exceeds the allowed max_commit_ts.

    Attributes:
        commit_ts: The commit ts TiKV calculated.

    """

    def __init__(self, commit_ts: int) -> None:
        super().__init__("commit ts too large")
        self.commit_ts = commit_ts

    def _describe(self) -> str:
        return f"commit ts {self.commit_ts} is too large (exceeds max_commit_ts)"


class CommitTsLagError(TxnError):
    """PD's TSO did not pass a transaction's commit-wait-until ts in time.

    client-go ``ErrCommitTSLag`` (``KVTxn.GetTimestampForCommit``): a transaction given
    ``commit_wait_until_tso`` must commit after that ts; when the commit ts PD hands out
    is not above it, the client keeps asking until it is, for at most the timeout.
    Nothing was committed.

    Attributes:
        wait_until_ts: The ts the commit ts had to exceed.
        first_ts: The first commit ts PD returned.
        last_ts: The last ts PD returned (``first_ts`` when it failed without retrying).
        attempts: How many timestamps were fetched.
        timeout_s: The wait allowed, seconds (``0``: fail at once).
        reason: Why it stopped (lag larger than the timeout, or the timeout ran out).

    """

    def __init__(
        self,
        *,
        wait_until_ts: int,
        first_ts: int,
        last_ts: int,
        attempts: int,
        timeout_s: float,
        reason: str,
    ) -> None:
        super().__init__("commit timestamp lags behind expected")
        self.wait_until_ts = wait_until_ts
        self.first_ts = first_ts
        self.last_ts = last_ts
        self.attempts = attempts
        self.timeout_s = timeout_s
        self.reason = reason

    def _describe(self) -> str:
        return (
            f"commit timestamp lags behind expected: PD TSO {self.first_ts} lags the "
            f"expected timestamp {self.wait_until_ts}, {self.reason} (timeout "
            f"{self.timeout_s:g} s, attempts {self.attempts}, last ts {self.last_ts})"
        )


class LockWaitTimeoutError(TxnError):
    """A pessimistic lock request waited longer than its lock-wait timeout.

    client-go raises ``ErrLockWaitTimeout`` after a timed wait and
    ``ErrLockAcquireFailAndNoWaitSet`` for a no-wait request (``error/error.go``); both
    are this error here, told apart by :attr:`no_wait`.

    Attributes:
        key: The key that stayed locked.
        start_ts: The waiting transaction's start ts.
        lock_ts: Start ts of the transaction holding the lock (0 if unknown).
        no_wait: The request asked not to wait (``LOCK_NO_WAIT``) and the key was locked.

    """

    def __init__(
        self, key: bytes, start_ts: int, *, lock_ts: int = 0, no_wait: bool = False
    ) -> None:
        super().__init__("lock wait timeout")
        self.key = key
        self.start_ts = start_ts
        self.lock_ts = lock_ts
        self.no_wait = no_wait

    def _describe(self) -> str:
        what = "locked and no-wait is set" if self.no_wait else "lock wait timeout"
        holder = f", held by txn {self.lock_ts}" if self.lock_ts else ""
        return f"{what} on key {format_key(self.key)} (txn {self.start_ts}{holder})"


class PrimaryMismatchError(TxnError):
    """The lock on a key names a different primary than the request (kvrpcpb.PrimaryMismatch).

    Attributes:
        lock: The lock found on the key, when the server reported it.

    """

    def __init__(self, lock: LockInfo | None = None) -> None:
        super().__init__("primary mismatch")
        self.lock = lock

    def _describe(self) -> str:
        if self.lock is None:
            return "primary mismatch"
        return f"primary mismatch: {self.lock.describe()}"


class PessimisticLockNotFoundError(TxnError):
    """Prewrite of a pessimistic transaction found its pessimistic lock gone.

    Attributes:
        start_ts: The transaction's start ts.
        key: The key whose pessimistic lock is missing.

    """

    def __init__(self, start_ts: int, key: bytes) -> None:
        super().__init__("pessimistic lock not found")
        self.start_ts = start_ts
        self.key = key

    def _describe(self) -> str:
        return f"pessimistic lock not found on key {format_key(self.key)} (txn {self.start_ts})"


class TxnTooLargeError(TxnError):
    """One entry or the whole transaction buffer exceeded its size limit.

    Attributes:
        kind: ``"entry"`` (one key + value) or ``"total"`` (the whole buffer).
        size: The size that was reached, in bytes.
        limit: The configured limit, in bytes.
        key: The offending key for ``"entry"``, else ``None``.

    """

    def __init__(self, kind: str, size: int, limit: int, key: bytes | None = None) -> None:
        if kind not in ("entry", "total"):
            raise ValueError(f"TxnTooLargeError kind must be 'entry' or 'total', got {kind!r}")
        super().__init__("transaction too large")
        self.kind = kind
        self.size = size
        self.limit = limit
        self.key = key

    def _describe(self) -> str:
        if self.kind == "entry":
            return (
                f"entry too large: key {format_key(self.key)} is {self.size} bytes with its "
                f"value, limit {self.limit} bytes"
            )
        return f"transaction too large: {self.size} bytes, limit {self.limit} bytes"


class TransactionClosedError(TxnError):
    """A transaction was used after it was committed or rolled back.

    Attributes:
        start_ts: The transaction's start ts.
        state: What closed it (``"committed"``, ``"rolled back"``, ...).

    """

    def __init__(self, start_ts: int, state: str) -> None:
        super().__init__(state)
        self.start_ts = start_ts
        self.state = state

    def _describe(self) -> str:
        return f"transaction {self.start_ts} is already {self.state}"


class GCTooEarlyError(TxnError):
    """A read at ``read_ts`` asked for versions that GC may already have removed.

    Attributes:
        read_ts: The requested read timestamp.
        safepoint: The GC safepoint it is older than.

    """

    def __init__(self, read_ts: int, safepoint: int) -> None:
        super().__init__("GC too early")
        self.read_ts = read_ts
        self.safepoint = safepoint

    def _describe(self) -> str:
        return f"read ts {self.read_ts} is older than the GC safepoint {self.safepoint}"


class KeyIsLockedError(TxnError):
    """A key is locked by another transaction (``kvrpcpb.KeyError.locked``).

    Usually handled inside the client by the lock resolver; it surfaces only when
    resolution is impossible or disabled.

    Attributes:
        lock: The lock that was found.

    """

    def __init__(self, lock: LockInfo) -> None:
        super().__init__("key is locked")
        self.lock = lock

    def _describe(self) -> str:
        return f"key is locked: {self.lock.describe()}"


class _ServerReasonError(TxnError):
    """A transaction error that carries only the server's text (``_summary: reason``)."""

    #: What the error means, shown before the server's text.
    _summary = ""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def _describe(self) -> str:
        return f"{self._summary}: {self.reason}"


class TxnRetryableError(_ServerReasonError):
    """TiKV said the transaction may be retried from the start (``KeyError.retryable``).

    Attributes:
        reason: The server's text.

    """

    _summary = "retryable transaction error"


class TxnAbortedError(_ServerReasonError):
    """TiKV aborted the request for a non-retryable reason (``KeyError.abort``).

    Attributes:
        reason: The server's text.

    """

    _summary = "transaction aborted"
