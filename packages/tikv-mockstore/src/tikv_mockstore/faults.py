"""Fault injection and request counters for the mock cluster.

A :class:`Fault` matches requests by method name, store and region, and then does any of: wait
(``delay``), hang until released, fail with a region error (the response carries
``region_error`` exactly as TiKV fills it), answer with a key error (``kvrpcpb.KeyError`` in
the response's ``error`` / ``errors`` / ``pairs[i].error``, where TiKV puts it; see
:func:`build_key_error`), fail the call with a gRPC status, or drop the stream. It fires
``times`` times (``None``: until removed), each match with ``probability``.

Method names are gRPC method names (``"KvPrewrite"``, ``"RawGet"``, ``"GetRegion"``, ``"Tso"``);
the BatchCommands command names (``"Prewrite"``) are accepted and mean the same method, and a
sub-request of a BatchCommands stream matches its method's faults exactly like a unary call. A
fault on ``"BatchCommands"`` itself acts on each stream message as a whole: a delay or a hang
stalls the stream (and counts in :meth:`FaultInjector.wait_hanging`), a status, region error or
``drop_stream`` ends it (UNAVAILABLE unless a status is given).

:class:`Counters` counts served requests per method and store (PD requests under store id 0),
counting each BatchCommands sub-request under its unary method name, and keeps the last
``kvrpcpb.Context`` seen per method and store. On request (:meth:`Counters.log_messages`)
it also keeps every BatchCommands message as received, in arrival order, to check what a
client put in which message.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from tikv_proto import errorpb_pb2, kvrpcpb_pb2, pdpb_pb2, tikvpb_pb2

__all__ = [
    "COMMAND_OF_METHOD",
    "KEY_ERROR_KINDS",
    "KEY_ERROR_METHODS",
    "METHOD_OF_COMMAND",
    "PD_METHODS",
    "PER_KEY_METHODS",
    "REGION_ERROR_KINDS",
    "Counters",
    "Fault",
    "FaultInjector",
    "build_key_error",
    "method_name",
    "request_key",
]

#: The BatchCommands oneof field names.
_BATCH_COMMANDS = frozenset(
    f.name for f in tikvpb_pb2.BatchCommandsRequest.Request.DESCRIPTOR.oneofs_by_name["cmd"].fields
)


def _command_of(method: str) -> str:
    """Map a ``tikvpb.Tikv`` method to its command (BatchCommands oneof) name.

    ``KvGet`` → ``Get``, ``KVPessimisticRollback`` → ``PessimisticRollback``, ``RawGet`` →
    ``RawGet``; a method with no BatchCommands form keeps its own name (``RawCompareAndSwap``,
    ``SplitRegion``, ``UnsafeDestroyRange``).
    """
    for prefix in ("Kv", "KV"):
        if method.startswith(prefix) and method[len(prefix) :] in _BATCH_COMMANDS:
            return method[len(prefix) :]
    return method


_TIKV_METHODS = tuple(m.name for m in tikvpb_pb2.DESCRIPTOR.services_by_name["Tikv"].methods)

#: ``tikvpb.Tikv`` method name → command name (the key of ``handlers.HANDLERS``).
COMMAND_OF_METHOD: Mapping[str, str] = {m: _command_of(m) for m in _TIKV_METHODS}
#: Command name → ``tikvpb.Tikv`` method name.
METHOD_OF_COMMAND: Mapping[str, str] = {c: m for m, c in COMMAND_OF_METHOD.items()}
#: The ``pdpb.PD`` method names (plus the keyspace service's ``LoadKeyspace`` family).
PD_METHODS = frozenset(
    [m.name for m in pdpb_pb2.DESCRIPTOR.services_by_name["PD"].methods]
    + ["LoadKeyspace", "LoadKeyspaceByID", "GetAllKeyspaces"]
)

#: The ``errorpb.Error`` field names a fault may produce.
REGION_ERROR_KINDS = frozenset(
    f.name for f in errorpb_pb2.Error.DESCRIPTOR.fields if f.message_type is not None
)


#: The ``kvrpcpb.KeyError`` field names a fault fills from the request by name; any other key
#: error is injected by passing the whole ``kvrpcpb.KeyError``.
KEY_ERROR_KINDS = frozenset(
    {
        "locked",
        "conflict",
        "retryable",
        "abort",
        "already_exist",
        "txn_not_found",
        "commit_ts_expired",
        "txn_lock_not_found",
    }
)


def _key_error_fields(method: Any) -> tuple[str, ...]:
    """The response fields of a ``tikvpb.Tikv`` method that carry ``kvrpcpb.KeyError``."""
    return tuple(
        f.name
        for f in method.output_type.fields
        if f.message_type is not None and f.message_type.full_name == "kvrpcpb.KeyError"
    )


#: Method → the response fields where TiKV puts key errors (``error`` or ``errors``); the
#: methods a key-error fault may target.
KEY_ERROR_METHODS: Mapping[str, tuple[str, ...]] = {
    m.name: fields
    for m in tikvpb_pb2.DESCRIPTOR.services_by_name["Tikv"].methods
    if (fields := _key_error_fields(m))
}
#: Methods whose answers carry per-key results in ``pairs`` (``KvPair.error``), so a key error
#: may stand for one key while the others are served (``per_key=True``).
PER_KEY_METHODS = frozenset({"KvBatchGet", "KvScan", "KvBufferBatchGet"})

_MAX_TS = (1 << 64) - 1


def method_name(name: str) -> str:
    """Normalize a method or command name to the gRPC method name; raises on unknown names."""
    if not isinstance(name, str):
        raise TypeError(f"method name must be a str, not {type(name).__name__}")
    if name in COMMAND_OF_METHOD or name in PD_METHODS:
        return name
    if name in METHOD_OF_COMMAND:
        return METHOD_OF_COMMAND[name]
    raise ValueError(f"unknown TiKV / PD method or command name {name!r}")


def _status_code(status: grpc.StatusCode | int | str | None) -> grpc.StatusCode | None:
    if status is None or isinstance(status, grpc.StatusCode):
        return status
    if isinstance(status, bool):
        raise TypeError("status must be a grpc.StatusCode, its int value or its name")
    for code in grpc.StatusCode:
        if (isinstance(status, int) and code.value[0] == status) or (
            isinstance(status, str) and code.name == status.upper()
        ):
            if code is grpc.StatusCode.OK:
                raise ValueError("a fault's status must not be OK")
            return code
    raise ValueError(f"unknown gRPC status code {status!r}")


@dataclass
class Fault:
    """One injected fault. Create it with :meth:`FaultInjector.add`."""

    id: int
    method: str | None
    store_id: int | None
    region_id: int | None
    region_error: str | None
    status: grpc.StatusCode | None
    message: str
    times: int | None
    probability: float
    delay_s: float
    hang: bool
    drop_stream: bool
    custom_error: bytes | None = None
    key_error: str | None = None
    custom_key_error: bytes | None = None
    per_key: bool = False
    hits: int = 0
    _released: threading.Event = field(default_factory=threading.Event, repr=False)

    def release(self) -> None:
        """Let every request hanging on this fault continue (and stop hanging new ones)."""
        self._released.set()

    @property
    def released(self) -> bool:
        """Whether :meth:`release` was called."""
        return self._released.is_set()


@dataclass(frozen=True, slots=True)
class FaultOutcome:
    """What the framework must do for one request after waits are done."""

    fault_id: int
    region_error: str | None
    status: grpc.StatusCode | None
    message: str
    drop_stream: bool
    custom_error: bytes | None = None
    key_error: str | None = None
    custom_key_error: bytes | None = None
    per_key: bool = False


class FaultInjector:
    """The fault registry of one cluster; thread-safe."""

    def __init__(self, *, seed: int | None = None) -> None:
        self._mu = threading.Lock()
        self._faults: dict[int, Fault] = {}
        self._next = 0
        self._rng = random.Random(seed)
        self._hanging = 0
        self._hang_cv = threading.Condition(self._mu)

    def add(
        self,
        method: str | None = None,
        *,
        store: int | None = None,
        region: int | None = None,
        region_error: str | errorpb_pb2.Error | None = None,
        status: grpc.StatusCode | int | str | None = None,
        message: str = "injected by tikv-mockstore",
        times: int | None = None,
        probability: float = 1.0,
        delay: float = 0.0,
        hang: bool = False,
        drop_stream: bool = False,
        key_error: str | kvrpcpb_pb2.KeyError | kvrpcpb_pb2.LockInfo | None = None,
        per_key: bool = False,
    ) -> Fault:
        """Register a fault and return it.

        ``method`` — a gRPC method or command name (``None``: every TiKV method); ``store`` /
        ``region`` — restrict to a store id / the request context's region id; ``region_error``
        — an ``errorpb.Error`` field name such as ``"not_leader"``, ``"server_is_busy"``,
        ``"epoch_not_match"`` (filled from the cluster's state), or a whole ``errorpb.Error``
        sent as given (e.g. ``ServerIsBusy`` with ``estimated_wait_ms``); ``status`` — fail
        the call with this gRPC status instead;
        ``times`` — fire this many times (``None``: always); ``probability`` — chance that a
        matching request fires it; ``delay`` — seconds to wait first; ``hang`` — block until
        :meth:`Fault.release`; ``drop_stream`` — abort the call (for BatchCommands: the whole
        stream) with UNAVAILABLE, as a dropped connection looks to a client.

        ``key_error`` — answer with a ``kvrpcpb.KeyError`` instead of serving the request: a
        kind (:data:`KEY_ERROR_KINDS`, filled from the request by :func:`build_key_error`:
        ``"locked"`` reports a fabricated lock on the request's first key, ``"conflict"`` a
        write conflict, ``"retryable"`` / ``"abort"`` carry ``message``, ...), a whole
        ``kvrpcpb.KeyError`` sent as given, or a ``kvrpcpb.LockInfo`` (a real lock, say)
        sent as ``KeyError.locked``. The method must be one whose response carries key errors
        (:data:`KEY_ERROR_METHODS`). It goes where TiKV puts it: ``errors`` for prewrite /
        pessimistic lock, ``error`` for the others, and for ``KvBatchGet`` / ``KvScan`` also
        into one pair, as TiKV answers a request that failed as a whole (``kv.rs`` copies the
        error into a first pair for old clients). Nothing is executed, as TiKV executes nothing
        when a command fails. A request that fails TiKV's routing checks (wrong store, not
        leader, stale epoch) gets its region error and does not consume the fault.
        ``per_key`` (``KvBatchGet`` / ``KvScan`` / ``KvBufferBatchGet``) — TiKV's answer when
        one key is locked: the request is served and one key's answer is replaced by a pair
        carrying the error (the first requested key for a batch get, the first pair of a
        scan; a scan that found nothing gets the whole-request form).
        """
        norm = method_name(method) if method is not None else None
        custom: bytes | None = None
        if isinstance(region_error, errorpb_pb2.Error):
            kinds = [f.name for f, _ in region_error.ListFields() if f.message_type is not None]
            if not kinds:
                raise ValueError("a custom region error must set one error field")
            custom = region_error.SerializeToString()
            region_error = kinds[0]
        code = _status_code(status)
        key_kind, custom_key = _key_error_spec(key_error)
        if key_kind is not None:
            if region_error is not None or code is not None or drop_stream:
                raise ValueError(
                    "a fault answers with one of key_error, region_error, status or "
                    "drop_stream, not several"
                )
            if norm is None or norm not in KEY_ERROR_METHODS:
                raise ValueError(
                    f"key_error needs a method whose response carries key errors, one of "
                    f"{sorted(KEY_ERROR_METHODS)}; got {method!r}"
                )
        if not isinstance(per_key, bool):
            raise TypeError(f"per_key must be a bool, not {type(per_key).__name__}")
        if per_key and (key_kind is None or norm not in PER_KEY_METHODS):
            raise ValueError(
                f"per_key needs key_error and one of {sorted(PER_KEY_METHODS)}; got {method!r}"
            )
        if region_error is not None and region_error not in REGION_ERROR_KINDS:
            raise ValueError(
                f"unknown region error kind {region_error!r}; expected one of "
                f"{sorted(REGION_ERROR_KINDS)}"
            )
        if region_error is not None and code is not None:
            raise ValueError("a fault returns either a region error or a gRPC status, not both")
        if region_error is not None and norm is not None and norm in PD_METHODS:
            raise ValueError(f"PD method {norm} has no region errors; use status=...")
        if times is not None and (isinstance(times, bool) or not isinstance(times, int)):
            raise TypeError(f"times must be an int or None, not {type(times).__name__}")
        if times is not None and times < 1:
            raise ValueError(f"times must be >= 1, got {times}")
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"probability must be in [0, 1], got {probability}")
        if delay < 0:
            raise ValueError(f"delay must be >= 0, got {delay}")
        if not (region_error or code or delay or hang or drop_stream or key_kind):
            raise ValueError(
                "a fault needs an effect: region_error, key_error, status, delay, hang or "
                "drop_stream"
            )
        with self._mu:
            self._next += 1
            fault = Fault(
                self._next,
                norm,
                store,
                region,
                region_error,
                code,
                message,
                times,
                float(probability),
                float(delay),
                hang,
                drop_stream,
                custom,
                key_kind,
                custom_key,
                per_key,
            )
            self._faults[fault.id] = fault
            return fault

    def active(self) -> bool:
        """Whether any fault is registered (a cheap check for the hot path)."""
        return bool(self._faults)

    def get(self, fault_id: int) -> Fault | None:
        """Fault ``fault_id`` if it is registered."""
        with self._mu:
            return self._faults.get(fault_id)

    def remove(self, fault: Fault | int) -> None:
        """Unregister a fault (releasing requests hanging on it)."""
        fid = fault if isinstance(fault, int) else fault.id
        with self._mu:
            removed = self._faults.pop(fid, None)
        if removed is not None:
            removed.release()

    def release(self, fault: Fault | int) -> None:
        """Release the requests hanging on a fault."""
        fid = fault if isinstance(fault, int) else fault.id
        with self._mu:
            found = self._faults.get(fid)
        if found is not None:
            found.release()

    def clear(self) -> None:
        """Remove every fault, releasing hanging requests."""
        with self._mu:
            faults = list(self._faults.values())
            self._faults.clear()
        for f in faults:
            f.release()

    def hanging(self) -> int:
        """How many requests are hanging on a fault right now."""
        with self._mu:
            return self._hanging

    def wait_hanging(self, count: int, timeout: float) -> bool:
        """Wait until at least ``count`` requests hang on faults; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._hang_cv:
            while self._hanging < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._hang_cv.wait(left)
            return True

    def apply(
        self,
        method: str,
        store_id: int | None,
        region_id: int | None,
        routable: Callable[[], bool] | None = None,
    ) -> FaultOutcome | None:
        """Run the faults matching a request.

        Run the faults matching a request: sleep / hang as told, and return the failure to
        produce (``None``: serve the request normally). PD requests pass ``store_id=None``.
        ``routable`` says whether the request passes TiKV's routing checks; it is asked (at
        most once) only when a key-error fault matches, and a request that does not pass
        them skips key-error faults (TiKV checks the region before running a command).
        """
        routed: bool | None = None
        if not self._faults:  # the common case, without taking the lock
            return None
        # A fault without a method targets TiKV's commands: not PD, and not a BatchCommands
        # stream as a whole (its sub-requests match such a fault one by one).
        unnamed_skip = method in PD_METHODS or method == "BatchCommands"
        with self._mu:
            fired: list[Fault] = []
            for fault in list(self._faults.values()):
                if fault.method is None:
                    if unnamed_skip:
                        continue
                elif fault.method != method:
                    continue
                if fault.store_id is not None and fault.store_id != store_id:
                    continue
                if fault.region_id is not None and fault.region_id != region_id:
                    continue
                if fault.key_error is not None and routable is not None:
                    if routed is None:
                        routed = routable()
                    if not routed:
                        continue
                if fault.probability < 1.0 and self._rng.random() >= fault.probability:
                    continue
                fault.hits += 1
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        del self._faults[fault.id]
                fired.append(fault)
                if fault.region_error or fault.status or fault.drop_stream or fault.key_error:
                    break
        outcome: FaultOutcome | None = None
        for fault in fired:
            if fault.delay_s:
                time.sleep(fault.delay_s)
            if fault.hang and not fault.released:
                with self._hang_cv:
                    self._hanging += 1
                    self._hang_cv.notify_all()
                try:
                    fault._released.wait()
                finally:
                    with self._hang_cv:
                        self._hanging -= 1
            if fault.region_error or fault.status or fault.drop_stream or fault.key_error:
                outcome = FaultOutcome(
                    fault.id,
                    fault.region_error,
                    fault.status,
                    fault.message,
                    fault.drop_stream,
                    fault.custom_error,
                    fault.key_error,
                    fault.custom_key_error,
                    fault.per_key,
                )
        return outcome


def _key_error_spec(
    key_error: str | kvrpcpb_pb2.KeyError | kvrpcpb_pb2.LockInfo | None,
) -> tuple[str | None, bytes | None]:
    """``(kind, serialized KeyError or None)`` of a fault's ``key_error`` argument."""
    if key_error is None:
        return None, None
    if isinstance(key_error, kvrpcpb_pb2.LockInfo):
        return "locked", kvrpcpb_pb2.KeyError(locked=key_error).SerializeToString()
    if isinstance(key_error, kvrpcpb_pb2.KeyError):
        kinds = [f.name for f, _ in key_error.ListFields() if f.name != "debug_info"]
        if not kinds:
            raise ValueError("a custom key error must set one error field")
        return kinds[0], key_error.SerializeToString()
    if not isinstance(key_error, str):
        raise TypeError(
            "key_error must be a kind name, a kvrpcpb.KeyError or a kvrpcpb.LockInfo, not "
            f"{type(key_error).__name__}"
        )
    if key_error not in KEY_ERROR_KINDS:
        raise ValueError(
            f"unknown key error kind {key_error!r}; expected one of {sorted(KEY_ERROR_KINDS)} "
            "or a whole kvrpcpb.KeyError"
        )
    return key_error, None


def _first(request: Any, *names: str) -> Any:
    """The first of ``names`` that the request message has and sets (``None``: none)."""
    fields = request.DESCRIPTOR.fields_by_name
    for name in names:
        field_ = fields.get(name)
        if field_ is None:
            continue
        value = getattr(request, name)
        if field_.is_repeated:
            if len(value):
                return value[0]
        elif value:
            return value
    return None


def request_key(request: Any) -> bytes:
    """The key a request is mostly about: its key, first key, start key or first mutation's."""
    key = _first(request, "key", "keys", "start_key", "primary_key", "primary_lock")
    if key is None:
        mutation = _first(request, "mutations")
        key = mutation.key if mutation is not None else b""
    return bytes(key)


def build_key_error(
    kind: str,
    custom: bytes | None,
    request: Any,
    message: str,
    *,
    key: bytes | None = None,
    fresh_ts: Callable[[], int] | None = None,
) -> kvrpcpb_pb2.KeyError:
    """The ``kvrpcpb.KeyError`` an injected key-error fault answers ``request`` with.

    ``custom`` (a serialized KeyError) is sent as given. Otherwise the error is filled from the
    request, for ``key`` (default :func:`request_key`): its timestamp is the request's read
    ``version`` or its transaction's ``start_version`` / ``start_ts`` (``ts`` below), the
    primary its ``primary_lock`` (else the key itself).

    - ``locked``: an optimistic Put lock of another transaction, ``lock_version = ts - 1``
      (below the reader, so it blocks it; a fresh timestamp from ``fresh_ts`` for a read at
      the max timestamp), primary as above, TTL 50 ms, ``txn_size`` 1 — the lock client-go's
      ``rpcBatchGetResult`` / ``rpcScanResult`` failpoints fabricate. No such lock exists in
      the store, so resolving it finds no transaction, waits out the TTL and rolls it back.
    - ``conflict``: an optimistic write conflict with a write committed at ``ts + 1``.
    - ``retryable`` / ``abort``: the message. ``already_exist`` / ``txn_lock_not_found``:
      the key. ``txn_not_found``: ``ts`` and the primary. ``commit_ts_expired``: the
      request's ``commit_version`` and a ``min_commit_ts`` one above it.
    """
    err = kvrpcpb_pb2.KeyError()
    if custom is not None:
        err.MergeFromString(custom)
        return err
    if key is None:
        key = request_key(request)
    ts = int(_first(request, "version", "start_version", "start_ts", "lock_ts") or 0)
    primary = bytes(_first(request, "primary_lock", "primary_key") or key)
    if kind == "locked":
        lock_ts = ts - 1 if 0 < ts < _MAX_TS else 0
        if lock_ts <= 0 and fresh_ts is not None:
            lock_ts = fresh_ts()
        err.locked.CopyFrom(
            kvrpcpb_pb2.LockInfo(
                primary_lock=primary,
                lock_version=lock_ts,
                key=key,
                lock_ttl=50,
                txn_size=1,
                lock_type=kvrpcpb_pb2.Put,
            )
        )
    elif kind == "conflict":
        err.conflict.CopyFrom(
            kvrpcpb_pb2.WriteConflict(
                start_ts=ts,
                conflict_ts=ts,
                conflict_commit_ts=min(ts + 1, _MAX_TS),
                key=key,
                primary=primary,
                reason=kvrpcpb_pb2.WriteConflict.Optimistic,
            )
        )
    elif kind == "retryable":
        err.retryable = message
    elif kind == "abort":
        err.abort = message
    elif kind == "already_exist":
        err.already_exist.key = key
    elif kind == "txn_not_found":
        err.txn_not_found.start_ts = ts
        err.txn_not_found.primary_key = primary
    elif kind == "commit_ts_expired":
        attempted = int(_first(request, "commit_version") or ts + 1)
        err.commit_ts_expired.start_ts = ts
        err.commit_ts_expired.attempted_commit_ts = attempted
        err.commit_ts_expired.key = key
        err.commit_ts_expired.min_commit_ts = attempted + 1
    elif kind == "txn_lock_not_found":
        err.txn_lock_not_found.key = key
    else:
        raise ValueError(f"unknown key error kind {kind!r}")
    return err


class Counters:
    """Served-request counters and the last request context, per method and store; thread-safe.

    PD methods are counted under store id 0.
    """

    def __init__(self) -> None:
        self._mu = threading.Lock()
        self._counts: dict[tuple[int, str], int] = {}
        # The request's own Context message: requests are never mutated after parsing, so
        # keeping a reference is as good as a copy and costs nothing per request.
        self._contexts: dict[tuple[int, str], tuple[int, kvrpcpb_pb2.Context]] = {}
        self._seq = 0
        # (store id, message) of every BatchCommands message while logging is on.
        self._messages: list[tuple[int, tikvpb_pb2.BatchCommandsRequest]] = []
        #: Whether BatchCommands messages are being logged (read without the lock on
        #: every message: a stale read only delays logging by one message).
        self.logging_messages = False

    def log_messages(self, on: bool = True) -> None:
        """Start (forgetting earlier ones) or stop logging BatchCommands messages."""
        with self._mu:
            if on:
                self._messages.clear()
            self.logging_messages = on

    def record_message(self, store_id: int, message: tikvpb_pb2.BatchCommandsRequest) -> None:
        """Log one BatchCommands message received by ``store_id`` (when logging is on)."""
        with self._mu:
            if self.logging_messages:
                self._messages.append((store_id, message))

    def messages(self) -> list[tuple[int, tikvpb_pb2.BatchCommandsRequest]]:
        """The logged BatchCommands messages as ``(store id, message)``, oldest first.

        Each message is as the store received it (one per client ``write``), so which
        request travelled in which message, and in what order, can be checked.
        """
        with self._mu:
            return list(self._messages)

    def record(
        self,
        method: str,
        store_id: int,
        ctx: kvrpcpb_pb2.Context | None = None,
        *,
        count: int = 1,
    ) -> None:
        """Count ``count`` requests of ``method`` on ``store_id``; remember the last context."""
        key = (store_id, method)
        with self._mu:
            self._counts[key] = self._counts.get(key, 0) + count
            if ctx is not None:
                self._seq += 1
                self._contexts[key] = (self._seq, ctx)

    def count(self, method: str, store: int | None = None) -> int:
        """Requests of ``method`` served by ``store``.

        Requests of ``method`` (method or command name)

        served by ``store`` (None: all; 0: PD).

        """
        name = method_name(method)
        with self._mu:
            return sum(
                n
                for (sid, m), n in self._counts.items()
                if m == name and (store is None or sid == store)
            )

    def snapshot(self) -> dict[tuple[int, str], int]:
        """A copy of every counter: ``{(store_id, method): count}``."""
        with self._mu:
            return dict(self._counts)

    def last_context(self, method: str, store: int | None = None) -> kvrpcpb_pb2.Context | None:
        """The ``kvrpcpb.Context`` of the most recent ``method`` request.

        The ``kvrpcpb.Context`` of the most recent ``method`` request (on ``store``, or on
        any store).
        """
        name = method_name(method)
        with self._mu:
            found = [
                seq_raw
                for (sid, m), seq_raw in self._contexts.items()
                if m == name and (store is None or sid == store)
            ]
        if not found:
            return None
        latest = max(found, key=lambda item: item[0])[1]
        copy = kvrpcpb_pb2.Context()
        copy.CopyFrom(latest)
        return copy

    def reset(self) -> None:
        """Zero every counter and forget the contexts."""
        with self._mu:
            self._counts.clear()
            self._contexts.clear()
            self._messages.clear()
