"""The seam between the raw client and the shared request pipeline.

The raw client decides *what* to send (builders in :mod:`tikv_raw._requests`, batching in
:mod:`tikv_raw._batching`) and how to combine the answers; the pipeline of ``tikv_pd``
decides *where* and *how*: it locates regions, fills ``kvrpcpb.Context``, sends to the
leader, classifies region and transport errors, backs off, re-shards when regions
changed, and refuses to replay a non-idempotent request whose outcome is unknown. This
module states exactly what the client needs from it, as a :class:`Router` protocol.

All keys here are *request* keys, as TiKV sees them: under API v2 they carry the
keyspace prefix (the client encodes user keys before building requests and decodes the
keys in responses); region lookups toward PD are the locator's business.
:class:`tikv_pd.request.RequestSender` provides exactly these methods.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tikv_pd.backoff import Backoffer
from tikv_pd.interceptor import RPCInterceptor
from tikv_pd.request import Ambiguity
from tikv_pd.request_context import RequestContext

__all__ = ["Ambiguity", "BuildForKeys", "BuildForRange", "Router", "Span"]


@dataclass(frozen=True, slots=True)
class Span:
    """A key range ``[start, end)``; ``end == b""`` means unbounded."""

    start: bytes
    end: bytes


#: Builds the requests for the keys of one region: ``[(keys of the request, request)]``.
#: The pipeline re-shards a request's keys when its region changed, calling it again.
BuildForKeys = Callable[[Sequence[bytes]], Sequence[tuple[Sequence[bytes], Any]]]
#: Builds the request for the part ``[start, end)`` of a range inside one region
#: (``end == b""``: up to an unbounded region end).
BuildForRange = Callable[[bytes, bytes], Any]


class Router(Protocol):
    """What the raw client needs from the request pipeline."""

    async def call_key(
        self, command: str, key: bytes, request: Any, *, ambiguity: Ambiguity, bo: Backoffer
    ) -> Any:
        """Send ``request`` to the region of ``key``; retry region errors; return the response.

        A request marked ``Ambiguity.RAISE`` whose outcome becomes unknown raises
        :class:`tikv_pd.errors.UndeterminedError` instead of being resent.
        """
        ...

    async def call_keys(
        self, command: str, keys: Sequence[bytes], build: BuildForKeys, *, bo: Backoffer
    ) -> list[Any]:
        """Group ``keys`` by region, build each region's requests, send them concurrently.

        Returns every response (in no particular order). Only idempotent commands use it.
        """
        ...

    async def call_range(
        self, command: str, start: bytes, end: bytes, build: BuildForRange, *, bo: Backoffer
    ) -> list[Any]:
        """Send one request per region overlapping ``[start, end)``, concurrently.

        ``end == b""`` means unbounded. Each request covers the range clipped to its
        region. Returns the responses in key order.
        """
        ...

    async def call_first_region(
        self,
        command: str,
        start: bytes,
        end: bytes,
        build: BuildForRange,
        *,
        reverse: bool,
        bo: Backoffer,
    ) -> tuple[list[Any], tuple[bytes, bytes]]:
        """Send a request for the first region of ``[start, end)`` in scan direction.

        Forward: the region containing ``start``; reverse: the region holding the keys
        just below ``end`` (the last region when ``end == b""``). The request covers the
        range clipped to that region. If the region changed and the part had to be split
        over several regions, one response per region comes back, in scan order.

        Returns the responses and the ``(start, end)`` part of the range they covered,
        so the caller continues from its end (forward) or its start (reverse).
        """
        ...

    def set_request_control(
        self, context: RequestContext | None, interceptor: RPCInterceptor | None
    ) -> None:
        """Use ``context`` and ``interceptor`` for every request sent from now on.

        ``context`` sets the request source, resource group, priority, ... of each
        ``kvrpcpb.Context``; ``interceptor`` runs around each RPC attempt (``None``: none).
        """
        ...

    async def close(self) -> None:
        """Release every connection and background task."""
        ...
