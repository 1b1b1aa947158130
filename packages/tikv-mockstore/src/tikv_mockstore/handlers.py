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

    def now_ms(self) -> int:
        """The cluster's clock in milliseconds (settable in tests), for TTLs."""
        ...

    def check(
        self,
        ctx: kvrpcpb_pb2.Context,
        *,
        keys: Sequence[bytes] = (),
        ranges: Sequence[tuple[bytes, bytes]] = (),
        txn: bool,
    ) -> errorpb_pb2.Error | None:
        """Check the request's region, epoch, peer and store, and that its keys lie inside it.

        ``txn=True`` compares memcomparable-encoded keys with the region boundaries, as TiKV
        does for transactional commands; raw commands compare the keys as they are. An empty
        range end means "to the end of the region". Returns the region error TiKV would send,
        or ``None`` when the request may be served.
        """
        ...

    def region_bounds(self, ctx: kvrpcpb_pb2.Context, *, txn: bool) -> tuple[bytes, bytes]:
        """The ``[start, end)`` user-key bounds of the request's region (``b""`` end: unbounded).

        Scans stop at the region's end; for transactional commands the bounds are decoded
        from the memcomparable boundaries.
        """
        ...


Handler = Callable[[StoreScope, Any], Any]

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
