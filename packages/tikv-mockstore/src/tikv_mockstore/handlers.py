"""The contract between the mock TiKV service framework and the command handlers.

A mock store serves each ``tikvpb.Tikv`` command (unary, or as a sub-request of a
``BatchCommands`` stream message) by looking up a handler in :data:`HANDLERS` under the
command's ``BatchCommandsRequest.Request`` oneof name (``"Get"``, ``"Prewrite"``, ``"RawPut"``,
...). A handler receives the :class:`StoreScope` of the store that got the request and the
request message, and returns the response message. The framework takes care of what every
command shares: counting, fault injection, a stopped store, and wrapping responses for
BatchCommands. The handler checks the request's region (through :meth:`StoreScope.check`),
because only it knows which keys or ranges the command touches, and puts the region error in
the response's ``region_error`` field when the check fails, as TiKV does.

Command names: a ``tikvpb.Tikv`` method ``KvX`` / ``KVX`` whose ``X`` is a BatchCommands oneof
name is the command ``X`` (``KvGet`` → ``"Get"``, ``KVPessimisticRollback`` →
``"PessimisticRollback"``); any other method is its own command name (``"RawGet"``,
``"RawCompareAndSwap"``, ``"SplitRegion"``, ``"UnsafeDestroyRange"``, ``"MvccGetByKey"``).
``tikv_mockstore.faults.COMMAND_OF_METHOD`` holds the full map.

Deferred results: a handler that must wait (a pessimistic lock waiting for another
transaction) returns a :class:`concurrent.futures.Future` that completes with the response
message instead of blocking. A unary call waits for it on its own server thread; in a
BatchCommands stream the other sub-requests are answered at once and this one is sent in a
later stream message when the future completes. A future that fails ends the call / stream
with INTERNAL, so it should complete with a response carrying the error instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from tikv_proto import errorpb_pb2, kvrpcpb_pb2


class StoreScope(Protocol):
    """What a handler may use of the store serving its request."""

    @property
    def store_id(self) -> int:
        """The id of the store that received the request."""
        ...

    @property
    def engine(self) -> Any:
        """The cluster's shared MVCC engine (:mod:`tikv_mockstore.mvcc`)."""
        ...

    @property
    def raw(self) -> Any:
        """The cluster's shared raw-KV engine."""
        ...

    @property
    def cluster(self) -> Any:
        """The cluster state (:class:`tikv_mockstore.cluster.Cluster`): regions, clock, TSO."""
        ...

    @property
    def api_version(self) -> int:
        """The storage API version of the store (a ``kvrpcpb.APIVersion`` value)."""
        ...

    def now_ms(self) -> int:
        """The cluster's clock in milliseconds (settable in tests), for TTLs."""
        ...

    def check_api_version(
        self,
        ctx: kvrpcpb_pb2.Context,
        *,
        cmd: str,
        txn: bool,
        keys: Sequence[bytes] = (),
        ranges: Sequence[tuple[bytes, bytes]] = (),
    ) -> str | None:
        """TiKV's ``check_api_version`` for the request.

        TiKV's ``check_api_version``: the error text when the request's ``api_version`` or
        its keys' mode does not suit the storage, else ``None``. TiKV runs it before the
        region checks; raw commands put the text in ``error``, transactional ones in a key
        error's ``abort``. ``cmd`` is TiKV's command kind for the message (``"prewrite"``,
        ...).
        """
        ...

    def check(
        self,
        ctx: kvrpcpb_pb2.Context,
        *,
        keys: Sequence[bytes] = (),
        ranges: Sequence[tuple[bytes, bytes]] = (),
        txn: bool,
        reverse: bool = False,
    ) -> errorpb_pb2.Error | None:
        """Check the request's region, epoch, peer and store, and that its keys lie inside it.

        ``txn=True`` compares memcomparable-encoded keys with the region boundaries, as TiKV
        does for transactional commands; raw commands compare the keys as they are. An empty
        range end means "to the end of the region". Returns the region error TiKV would send,
        or ``None`` when the request may be served.

        A range's start must lie inside the region; its end is not checked (scans are clipped
        to the region). With ``reverse=True`` each range is ``(upper, lower)`` as reverse scans
        send it, and the exclusive upper bound may equal the region's end. A follower passes
        the leader check when the context asks for a replica or stale read and the command is
        a read (``tikv_mockstore.tikv_service.READ_COMMANDS``).
        """
        ...

    def check_region(self, ctx: kvrpcpb_pb2.Context) -> errorpb_pb2.Error | None:
        """The store, region, leader and epoch checks of :meth:`check`, without key checks."""
        ...

    def region_bounds(self, ctx: kvrpcpb_pb2.Context, *, txn: bool) -> tuple[bytes, bytes]:
        """The ``[start, end)`` user-key bounds of the request's region (``b""`` end: unbounded).

        Scans stop at the region's end; for transactional commands the bounds are decoded
        from the memcomparable boundaries.
        """
        ...


Handler = Callable[[StoreScope, Any], Any]


def refused(resp: Any, region_error: errorpb_pb2.Error | None) -> bool:
    """Put ``region_error`` (if any) in ``resp.region_error``; return whether there was one.

    A region error is the whole answer, as TiKV's ``extract_region_error`` makes it:
    ``if refused(resp, scope.check(ctx, keys=keys, txn=True)): return resp``.
    """
    if region_error is None:
        return False
    resp.region_error.CopyFrom(region_error)
    return True


#: Command name (the ``BatchCommandsRequest.Request`` oneof field name) → handler.
HANDLERS: dict[str, Handler] = {}


def handler(name: str) -> Callable[[Handler], Handler]:
    """Register the decorated function as the handler of the command ``name``."""

    def register(fn: Handler) -> Handler:
        if name in HANDLERS:
            raise ValueError(f"a handler for {name!r} is already registered")
        HANDLERS[name] = fn
        return fn

    return register
