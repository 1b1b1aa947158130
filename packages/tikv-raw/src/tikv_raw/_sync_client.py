"""The blocking raw client: a thin facade over :class:`~tikv_raw.AsyncRawClient`.

Each :class:`RawClient` owns a private event loop on a daemon thread
(:class:`tikv_pd.sync.LoopThread`) and runs the async client's coroutines there; one
implementation, one set of connections and background tasks, usable from any number of
threads. Calling it from inside a running event loop raises a clear error instead of
deadlocking (use :class:`~tikv_raw.AsyncRawClient` there).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Coroutine, Generator, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

from tikv_pd.config import Config
from tikv_pd.interceptor import RPCInterceptor
from tikv_pd.request_context import RequestContext
from tikv_pd.sync import LoopThread

from tikv_raw._async_client import DEFAULT_SCAN_PAGE_SIZE, TTL, AsyncRawClient, KeyValue
from tikv_raw._types import Checksum

__all__ = ["RawClient"]

T = TypeVar("T")


class RawClient:
    """Raw key-value client for TiKV (blocking).

    The same methods, arguments and semantics as :class:`~tikv_raw.AsyncRawClient`;
    see there for details. Create one with :meth:`connect` and close it (or use it as a
    context manager).

    Example:
        >>> with RawClient.connect(["127.0.0.1:2379"]) as client:
        ...     client.put(b"k", b"v")
        ...     client.get(b"k")
        b'v'

    """

    __slots__ = ("_client", "_loop", "_owner")

    def __init__(self, client: AsyncRawClient, loop: LoopThread, *, _owner: bool = True) -> None:
        """Wrap an async client whose loop runs in ``loop`` (use :meth:`connect`)."""
        self._client = client
        self._loop = loop
        self._owner = _owner

    @classmethod
    def connect(
        cls,
        endpoints: Sequence[str] | str,
        *,
        atomic: bool = False,
        keyspace: str | None = None,
        api_version: int | None = None,
        config: Config | None = None,
        timeout: float | None = None,
        request_context: RequestContext | None = None,
    ) -> RawClient:
        """Connect to a TiKV cluster through its PD endpoints.

        Arguments as :meth:`AsyncRawClient.connect`.

        Example:
            >>> client = RawClient.connect("127.0.0.1:2379", atomic=True)

        """
        loop = LoopThread()
        try:
            client = loop.run(
                AsyncRawClient.connect(
                    endpoints,
                    atomic=atomic,
                    keyspace=keyspace,
                    api_version=api_version,
                    config=config,
                    timeout=timeout,
                    request_context=request_context,
                )
            )
        except BaseException:
            loop.close()
            raise
        return cls(client, loop)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._loop.run(coro)

    def close(self) -> None:
        """Close the client and stop its loop thread (views: no effect)."""
        if not self._owner:
            return
        try:
            if not self._loop.closed:
                self._run(self._client.close())
        finally:
            self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def with_cf(self, cf: str) -> RawClient:
        """A view working in column family ``cf``, sharing this client's connection."""
        return RawClient(self._client.with_cf(cf), self._loop, _owner=False)

    @property
    def atomic(self) -> bool:
        """Whether writes go through TiKV's atomic path (required for CAS)."""
        return self._client.atomic

    @property
    def cf(self) -> str:
        """The column family this client (view) works in."""
        return self._client.cf

    @property
    def api_version(self) -> int:
        """The API version: 1 or 2."""
        return self._client.api_version

    @property
    def keyspace(self) -> str | None:
        """The keyspace name (API v2), or ``None``."""
        return self._client.keyspace

    @property
    def closed(self) -> bool:
        """Whether the client has been closed."""
        return self._client.closed

    # -- request control: see AsyncRawClient ---------------------------------------

    @property
    def request_context(self) -> RequestContext | None:
        """The request source / resource group / priority settings, or ``None``."""
        return self._client.request_context

    def set_request_context(self, context: RequestContext | None) -> None:
        """See :meth:`AsyncRawClient.set_request_context`."""
        self._client.set_request_context(context)

    @property
    def rpc_interceptor(self) -> RPCInterceptor | None:
        """The RPC interceptor (chain), or ``None``."""
        return self._client.rpc_interceptor

    def set_rpc_interceptor(self, interceptor: RPCInterceptor | None) -> None:
        """See :meth:`AsyncRawClient.set_rpc_interceptor` (interceptors run on the loop thread)."""
        self._client.set_rpc_interceptor(interceptor)

    def add_rpc_interceptor(self, interceptor: RPCInterceptor) -> None:
        """See :meth:`AsyncRawClient.add_rpc_interceptor`."""
        self._client.add_rpc_interceptor(interceptor)

    # -- operations: see AsyncRawClient for the documentation -------------------------

    def get(self, key: bytes) -> bytes | None:
        """Return the value of ``key`` or ``None`` (:meth:`AsyncRawClient.get`)."""
        return self._run(self._client.get(key))

    def batch_get(self, keys: Iterable[bytes]) -> dict[bytes, bytes]:
        """Return ``{key: value}`` of the existing keys (:meth:`AsyncRawClient.batch_get`)."""
        return self._run(self._client.batch_get(keys))

    def put(self, key: bytes, value: bytes, *, ttl: TTL = None) -> None:
        """Store a pair, optionally with a TTL (:meth:`AsyncRawClient.put`)."""
        self._run(self._client.put(key, value, ttl=ttl))

    def batch_put(
        self,
        pairs: Mapping[bytes, bytes] | Iterable[tuple[bytes, bytes]],
        *,
        ttl: TTL = None,
        ttls: Mapping[bytes, TTL] | None = None,
    ) -> None:
        """Store many pairs (:meth:`AsyncRawClient.batch_put`)."""
        self._run(self._client.batch_put(pairs, ttl=ttl, ttls=ttls))

    def delete(self, key: bytes) -> None:
        """Delete a key (:meth:`AsyncRawClient.delete`)."""
        self._run(self._client.delete(key))

    def batch_delete(self, keys: Iterable[bytes]) -> None:
        """Delete many keys (:meth:`AsyncRawClient.batch_delete`)."""
        self._run(self._client.batch_delete(keys))

    def delete_range(self, start: bytes, end: bytes | None = None) -> None:
        """Delete ``[start, end)`` (:meth:`AsyncRawClient.delete_range`)."""
        self._run(self._client.delete_range(start, end))

    def delete_prefix(self, prefix: bytes) -> None:
        """Delete every key starting with ``prefix`` (:meth:`AsyncRawClient.delete_prefix`)."""
        self._run(self._client.delete_prefix(prefix))

    def scan(
        self,
        start: bytes = b"",
        end: bytes | None = None,
        *,
        limit: int,
        key_only: bool = False,
        reverse: bool = False,
    ) -> list[KeyValue]:
        """Return up to ``limit`` pairs of ``[start, end)`` (:meth:`AsyncRawClient.scan`)."""
        return self._run(
            self._client.scan(start, end, limit=limit, key_only=key_only, reverse=reverse)
        )

    def scan_iter(
        self,
        start: bytes = b"",
        end: bytes | None = None,
        *,
        key_only: bool = False,
        reverse: bool = False,
        page_size: int = DEFAULT_SCAN_PAGE_SIZE,
        limit: int | None = None,
    ) -> Generator[KeyValue, None, None]:
        """Iterate over ``[start, end)`` lazily, a page per RPC (:meth:`AsyncRawClient.scan_iter`).

        Arguments are checked at once; pages are fetched on the loop thread as the
        iteration needs them.
        """
        pages = self._client._page_iter(
            start, end, key_only=key_only, reverse=reverse, page_size=page_size, limit=limit
        )
        return self._bridge(pages)

    def _bridge(self, pages: AsyncIterator[list[KeyValue]]) -> Generator[KeyValue, None, None]:
        # One loop round trip per page, not per pair; leaving the loop early closes the
        # async page iterator on the loop thread.
        page_iter = self._loop.iterate(pages)
        try:
            for page in page_iter:
                yield from page
        finally:
            close = getattr(page_iter, "close", None)
            if close is not None:
                close()

    def batch_scan(
        self,
        ranges: Iterable[tuple[bytes, bytes | None]],
        *,
        each_limit: int,
        key_only: bool = False,
        reverse: bool = False,
    ) -> list[list[KeyValue]]:
        """Scan several ranges, one result list per range (:meth:`AsyncRawClient.batch_scan`)."""
        return self._run(
            self._client.batch_scan(
                ranges, each_limit=each_limit, key_only=key_only, reverse=reverse
            )
        )

    def get_key_ttl(self, key: bytes) -> int | None:
        """Seconds left of a key's TTL (:meth:`AsyncRawClient.get_key_ttl`)."""
        return self._run(self._client.get_key_ttl(key))

    def compare_and_swap(
        self, key: bytes, expected: bytes | None, new: bytes, *, ttl: TTL = None
    ) -> tuple[bytes | None, bool]:
        """Atomic compare-and-swap (:meth:`AsyncRawClient.compare_and_swap`)."""
        return self._run(self._client.compare_and_swap(key, expected, new, ttl=ttl))

    def checksum(self, start: bytes = b"", end: bytes | None = None) -> Checksum:
        """CRC64-XOR checksum of ``[start, end)`` (:meth:`AsyncRawClient.checksum`)."""
        return self._run(self._client.checksum(start, end))
