"""The asyncio raw client: the one implementation behind both flavours.

Every method runs the same steps:

1. **validate** the arguments (:mod:`tikv_raw._validate`), raising ``TypeError`` /
   ``ValueError`` before anything is sent;
2. **encode** user keys into request keys (API v2: the 4-byte keyspace prefix; an
   unbounded range ends at the next keyspace);
3. **build** the kvrpcpb requests (:mod:`tikv_raw._requests`), cutting batches by
   client-go's limits (:mod:`tikv_raw._batching`);
4. **route** them through the shared pipeline (:class:`tikv_raw._router.Router`, bound to
   :class:`tikv_pd.request.RequestSender`), which locates regions, retries region errors
   and transport failures with client-go's backoffs, and refuses to resend a CAS whose
   outcome is unknown;
5. **read** the responses into Python values and decode keys back to user keys.

Scans walk the regions one at a time in scan direction with the number of pairs still
wanted, like client-go's ``Scan`` / ``ReverseScan``; batches and range writes go to every
region concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import random
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

from tikv_pd.backoff import RAWKV_MAX_BACKOFF, Backoffer
from tikv_pd.codec import KeyCodec, KeyspaceCodec
from tikv_pd.config import Config
from tikv_pd.errors import ClientClosedError, TiKVError
from tikv_pd.interceptor import RPCInterceptor, chain_interceptors
from tikv_pd.observability import register_operations
from tikv_pd.request_context import RequestContext

from tikv_raw import _requests as rq
from tikv_raw._batching import split_by_count, split_by_size
from tikv_raw._router import Ambiguity, Router
from tikv_raw._types import Checksum
from tikv_raw._validate import (
    check_bool,
    check_cf,
    check_key,
    check_keys,
    check_limit,
    check_pairs,
    check_range,
    check_ttl,
    check_ttls,
    check_value,
    prefix_end,
)

__all__ = ["DEFAULT_SCAN_PAGE_SIZE", "TTL", "AsyncRawClient", "KeyValue"]

#: Pairs fetched per RPC by :meth:`AsyncRawClient.scan_iter` unless told otherwise.
DEFAULT_SCAN_PAGE_SIZE = 512
#: Ranges of one :meth:`AsyncRawClient.batch_scan` scanned at the same time.
BATCH_SCAN_CONCURRENCY = 16

#: One jitter source for every operation's Backoffer: a fresh ``random.Random()`` per
#: operation would seed itself from the OS each time (a measurable cost per request).
_JITTER_RNG = random.Random()

#: A key and its value (empty for key-only scans).
KeyValue = tuple[bytes, bytes]
#: A TTL argument: whole seconds (int or timedelta), or ``None`` for no expiry.
TTL = int | datetime.timedelta | None


class _Shared:
    """State shared by a client and its column-family views."""

    __slots__ = ("closed", "config", "interceptor", "request_context", "router")

    def __init__(self, router: Router, config: Config) -> None:
        self.router = router
        self.config = config
        self.closed = False
        self.request_context: RequestContext | None = None
        self.interceptor: RPCInterceptor | None = None


class AsyncRawClient:
    """Raw key-value client for TiKV (asyncio).

    Create one with :meth:`connect`; use it as an async context manager or call
    :meth:`close`. Keys and values are :class:`bytes`. Every method validates its
    arguments before sending anything (``TypeError`` / ``ValueError``), retries region
    errors and transport failures within client-go's 20 s backoff budget for raw
    operations, and raises a :class:`tikv_pd.errors.TiKVError` subclass when it cannot
    complete.

    Example:
        >>> async with await AsyncRawClient.connect(["127.0.0.1:2379"]) as client:
        ...     await client.put(b"k", b"v")
        ...     assert await client.get(b"k") == b"v"

    """

    __slots__ = (
        "_api_version",
        "_atomic",
        "_cf",
        "_codec",
        "_keyspace",
        "_keyspace_end",
        "_owner",
        "_prefix",
        "_shared",
        "_wire_cf",
    )

    def __init__(
        self,
        router: Router,
        *,
        config: Config | None = None,
        atomic: bool = False,
        api_version: int = 1,
        keyspace: str | None = None,
        cf: str = "default",
        codec: KeyCodec | None = None,
        _shared: _Shared | None = None,
    ) -> None:
        """Wrap an already connected request router (use :meth:`connect` instead).

        ``codec`` is the API v2 keyspace codec (``None``: API v1, keys sent as given).
        """
        self._shared = _shared if _shared is not None else _Shared(router, config or Config())
        self._owner = _shared is None
        self._atomic = check_bool(atomic, "atomic")
        self._api_version = api_version
        self._keyspace = keyspace
        self._wire_cf = check_cf(cf, api_version)
        self._cf = cf or "default"
        self._codec = codec
        # Under API v2 every key TiKV sees is the keyspace prefix + the user key, and the
        # keyspace ends where the next prefix starts: an unbounded user range ends there.
        if isinstance(codec, KeyspaceCodec):
            self._prefix, self._keyspace_end = codec.prefix, codec.end_key
        else:
            self._prefix, self._keyspace_end = b"", b""

    # -- construction and lifetime -------------------------------------------------

    @classmethod
    async def connect(
        cls,
        endpoints: Sequence[str] | str,
        *,
        atomic: bool = False,
        keyspace: str | None = None,
        api_version: int | None = None,
        config: Config | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (the PD connect deadline, DESIGN §5)
        request_context: RequestContext | None = None,
    ) -> AsyncRawClient:
        """Connect to a TiKV cluster through its PD endpoints.

        Args:
            endpoints: PD addresses (``"host:port"``, optionally with ``http://``), or
                one address.
            atomic: Send every write through TiKV's atomic (single-row transaction)
                path, as client-go's ``SetAtomicForCAS(true)``. Required for
                :meth:`compare_and_swap`. Every client writing the same keys must use
                the same mode, or CAS loses its guarantees.
            keyspace: Name of the keyspace to work in (API v2). Keys of other keyspaces
                are invisible. Implies ``api_version=2``.
            api_version: 1 (keys are stored as given; the default without a keyspace)
                or 2 (keys are prefixed with the keyspace; the cluster must run
                ``storage.api-version = 2``). Without a keyspace, v2 uses the default
                keyspace.
            config: Client configuration (defaults: client-go's).
            timeout: Seconds allowed for discovering the PD cluster (default: the PD
                client's 10 s). Per-RPC timeouts and retry budgets come from ``config``
                and client-go's backoff budgets (20 s of sleep per raw operation).
            request_context: Request source, resource group (name and tag), priority
                and ``txn_source`` put in every request's ``kvrpcpb.Context`` (see
                :meth:`set_request_context`). client-go's raw client sends none of them;
                by default neither do we.

        Raises:
            TypeError, ValueError: Bad arguments (checked before connecting).
            tikv_pd.errors.PDError: PD could not be reached or refused.

        """
        check_bool(atomic, "atomic")
        version = _resolve_api_version(api_version, keyspace)
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
        ):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if config is not None and not isinstance(config, Config):
            raise TypeError(f"config must be a tikv_pd.config.Config, got {type(config).__name__}")
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        eps = list(endpoints)
        if not eps or not all(isinstance(e, str) and e for e in eps):
            raise ValueError(
                f"endpoints must be a non-empty list of 'host:port' strings, got {endpoints!r}"
            )
        from tikv_raw._pipeline import connect_router

        cfg = config or Config()
        if request_context is not None and not isinstance(request_context, RequestContext):
            raise TypeError(
                "request_context must be a tikv_pd.request_context.RequestContext, "
                f"got {type(request_context).__name__}"
            )
        router = await connect_router(
            eps, api_version=version, keyspace=keyspace, config=cfg, timeout=timeout
        )
        client = cls(
            router,
            config=cfg,
            atomic=atomic,
            api_version=version,
            keyspace=keyspace,
            codec=router.codec,
        )
        if request_context is not None:
            client.set_request_context(request_context)
        return client

    async def close(self) -> None:
        """Close the client: its PD client, store connections and background tasks.

        Column-family views share their parent's connection: closing a view does
        nothing, closing the parent closes every view. Closing twice is harmless.
        """
        if not self._owner or self._shared.closed:
            return
        self._shared.closed = True
        await self._shared.router.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def with_cf(self, cf: str) -> AsyncRawClient:
        """Return a view of this client that works in column family ``cf``.

        The view shares the connection (closing the parent closes it). Column
        families are separate key spaces. API v1 has ``"default"``, ``"write"`` and
        ``"lock"``; API v2 only ``"default"``.

        Example:
            >>> writes = client.with_cf("write")
            >>> await writes.put(b"k", b"in the write cf")

        """
        return AsyncRawClient(
            self._shared.router,
            atomic=self._atomic,
            api_version=self._api_version,
            keyspace=self._keyspace,
            cf=cf,
            codec=self._codec,
            _shared=self._shared,
        )

    @property
    def atomic(self) -> bool:
        """Whether writes go through TiKV's atomic path (required for CAS)."""
        return self._atomic

    @property
    def cf(self) -> str:
        """The column family this client (view) works in."""
        return self._cf

    @property
    def api_version(self) -> int:
        """The API version: 1 or 2."""
        return self._api_version

    @property
    def keyspace(self) -> str | None:
        """The keyspace name (API v2), or ``None``."""
        return self._keyspace

    @property
    def closed(self) -> bool:
        """Whether the client (or the parent of this view) has been closed."""
        return self._shared.closed

    # -- request control -----------------------------------------------------------

    @property
    def request_context(self) -> RequestContext | None:
        """The request source / resource group / priority settings, or ``None``."""
        return self._shared.request_context

    def set_request_context(self, context: RequestContext | None) -> None:
        """Put ``context``'s fields in the ``kvrpcpb.Context`` of every later request.

        Applies to this client and its column-family views. ``None`` restores the
        defaults.

        Example:
            >>> from tikv_pd.request_context import RequestContext, RequestSource
            >>> client.set_request_context(RequestContext(
            ...     request_source=RequestSource(source_type="ingest"),
            ...     resource_group_name="etl", priority="low"))

        """
        if context is not None and not isinstance(context, RequestContext):
            raise TypeError(f"context must be a RequestContext, got {type(context).__name__}")
        self._shared.request_context = context
        self._shared.router.set_request_control(context, self._shared.interceptor)

    @property
    def rpc_interceptor(self) -> RPCInterceptor | None:
        """The RPC interceptor (chain) run around every RPC attempt, or ``None``."""
        return self._shared.interceptor

    def set_rpc_interceptor(self, interceptor: RPCInterceptor | None) -> None:
        """Replace the client's RPC interceptor (client-go ``SetRPCInterceptor``).

        It sees (and may patch) every request before it is sent, incl. its
        ``kvrpcpb.Context``, and every response; see :mod:`tikv_pd.interceptor`.
        Applies to this client and its column-family views; ``None`` removes it.
        """
        if interceptor is not None and not isinstance(interceptor, RPCInterceptor):
            raise TypeError(
                f"interceptor must have .name and .wrap(next), got {type(interceptor).__name__}"
            )
        self._shared.interceptor = interceptor
        self._shared.router.set_request_control(self._shared.request_context, interceptor)

    def add_rpc_interceptor(self, interceptor: RPCInterceptor) -> None:
        """Append ``interceptor`` to the chain (client-go ``AddRPCInterceptor``).

        Interceptors run in the order they were added, the first outermost; adding one
        whose name is already in the chain replaces the earlier one.
        """
        current = self._shared.interceptor
        if current is None:
            self.set_rpc_interceptor(interceptor)
        else:
            self.set_rpc_interceptor(chain_interceptors(current, interceptor))

    # -- helpers ---------------------------------------------------------------------

    def _router(self) -> Router:
        if self._shared.closed:
            raise ClientClosedError("raw client")
        return self._shared.router

    def _enc(self, key: bytes) -> bytes:
        return self._prefix + key if self._prefix else key

    def _enc_end(self, end: bytes | None) -> bytes:
        """The request form of an exclusive end: ``b""`` is unbounded (API v1 only)."""
        if end is None:
            return self._keyspace_end
        return self._prefix + end if self._prefix else end

    def _dec(self, key: bytes) -> bytes:
        if self._codec is None or not self._prefix:
            return key
        return self._codec.decode_key(key)

    def _bo(self, operation: str) -> Backoffer:
        # client-go gives every raw operation (and every region step of a scan) a fresh
        # 20 s sleep budget (``rawkvMaxBackoff``).
        return Backoffer(RAWKV_MAX_BACKOFF, operation=operation, rng=_JITTER_RNG)

    def _batch_pair_count(self) -> int:
        return int(self._shared.config.raw_batch_pair_count)

    def _batch_put_size(self) -> int:
        return int(self._shared.config.raw_batch_put_size)

    def _max_scan_limit(self) -> int:
        return int(self._shared.config.raw_scan_max_limit)

    # -- point operations ------------------------------------------------------------

    async def get(self, key: bytes) -> bytes | None:
        """Return the value of ``key``, or ``None`` if it does not exist.

        An empty value (``b""``) is a value, distinct from ``None``.

        Example:
            >>> await client.put(b"k", b"v")
            >>> await client.get(b"k"), await client.get(b"missing")
            (b'v', None)

        """
        k = self._enc(check_key(key))
        router = self._router()
        response = await router.call_key(
            "RawGet",
            k,
            rq.build_get(k, self._wire_cf),
            ambiguity=Ambiguity.IDEMPOTENT,
            bo=self._bo("raw_get"),
        )
        return rq.read_get(response)

    async def put(self, key: bytes, value: bytes, *, ttl: TTL = None) -> None:
        """Store ``value`` under ``key``.

        Args:
            key: The key.
            value: The value (may be empty).
            ttl: Seconds until the key expires (int or timedelta), or ``None`` to keep
                it. TTLs need API v2, or API v1 on a cluster with
                ``storage.enable-ttl = true`` (otherwise TiKV refuses the write with
                :class:`~tikv_raw.RawKVError` "TTL is not enabled").

        Example:
            >>> await client.put(b"session", b"data", ttl=60)

        """
        k = self._enc(check_key(key))
        v = check_value(value)
        seconds = check_ttl(ttl)
        request = rq.build_put(k, v, self._wire_cf, ttl=seconds, for_cas=self._atomic)
        response = await self._router().call_key(
            "RawPut", k, request, ambiguity=Ambiguity.IDEMPOTENT, bo=self._bo("raw_put")
        )
        rq.check_response_error("RawPut", response)

    async def delete(self, key: bytes) -> None:
        """Delete ``key`` (deleting a missing key is not an error).

        Example:
            >>> await client.delete(b"k")

        """
        k = self._enc(check_key(key))
        request = rq.build_delete(k, self._wire_cf, for_cas=self._atomic)
        response = await self._router().call_key(
            "RawDelete", k, request, ambiguity=Ambiguity.IDEMPOTENT, bo=self._bo("raw_delete")
        )
        rq.check_response_error("RawDelete", response)

    async def get_key_ttl(self, key: bytes) -> int | None:
        """Return the seconds left before ``key`` expires.

        TTLs exist only on TTL-enabled storage (API v2, or API v1 with
        ``storage.enable-ttl``); do not ask a cluster without them (TiKV has no TTL to
        report there).

        Returns:
            ``None`` if the key does not exist (or has expired), ``0`` if it exists
            without a TTL, else the remaining whole seconds (at least 1).

        Example:
            >>> await client.put(b"k", b"v", ttl=100)
            >>> 0 < await client.get_key_ttl(b"k") <= 100
            True

        """
        k = self._enc(check_key(key))
        response = await self._router().call_key(
            "RawGetKeyTTL",
            k,
            rq.build_get_key_ttl(k, self._wire_cf),
            ambiguity=Ambiguity.IDEMPOTENT,
            bo=self._bo("raw_get_key_ttl"),
        )
        return rq.read_key_ttl(response)

    async def compare_and_swap(
        self, key: bytes, expected: bytes | None, new: bytes, *, ttl: TTL = None
    ) -> tuple[bytes | None, bool]:
        """Atomically set ``key`` to ``new`` if its current value is ``expected``.

        Needs a client connected with ``atomic=True`` (TiKV serialises CAS with the
        other atomic writes only; a plain write could slip between its read and write).

        Args:
            key: The key.
            expected: The value the key must have, or ``None`` for "must not exist".
                ``b""`` means "exists with an empty value".
            new: The value to write.
            ttl: TTL of the new value (see :meth:`put`), or ``None``.

        Returns:
            ``(previous, swapped)``: the value before the call (``None`` if the key did
            not exist) and whether ``new`` was written.

        Raises:
            ValueError: The client is not in atomic mode.
            tikv_pd.errors.UndeterminedError: The request may or may not have been
                applied (e.g. the connection broke after sending); it is not retried,
                since a second attempt could see the first one's write.

        Example:
            >>> await client.compare_and_swap(b"lock", None, b"me")
            (None, True)
            >>> await client.compare_and_swap(b"lock", b"other", b"me")
            (b'me', False)

        """
        k = self._enc(check_key(key))
        exp = None if expected is None else check_value(expected, "expected")
        n = check_value(new, "new")
        seconds = check_ttl(ttl)
        if not self._atomic:
            raise ValueError(
                "compare_and_swap needs atomic mode: connect with atomic=True (and use "
                "atomic mode for every client writing these keys)"
            )
        request = rq.build_cas(k, exp, n, self._wire_cf, ttl=seconds)
        response = await self._router().call_key(
            "RawCompareAndSwap", k, request, ambiguity=Ambiguity.RAISE, bo=self._bo("raw_cas")
        )
        return rq.read_cas(response)

    # -- batch operations ------------------------------------------------------------

    async def batch_get(self, keys: Iterable[bytes]) -> dict[bytes, bytes]:
        """Return the values of the existing keys among ``keys``.

        Missing keys are absent from the result; the dict follows the order of
        ``keys``. Keys are grouped by region and sent 512 per RPC, concurrently.

        Example:
            >>> await client.batch_put({b"a": b"1", b"b": b"2"})
            >>> await client.batch_get([b"a", b"b", b"c"])
            {b'a': b'1', b'b': b'2'}

        """
        ks = check_keys(keys)
        if not ks:
            return {}
        cf, per_rpc = self._wire_cf, self._batch_pair_count()

        def build(group: Sequence[bytes]) -> list[tuple[Sequence[bytes], Any]]:
            return [(c, rq.build_batch_get(c, cf)) for c in split_by_count(group, per_rpc)]

        responses = await self._router().call_keys(
            "RawBatchGet", [self._enc(k) for k in ks], build, bo=self._bo("raw_batch_get")
        )
        found = rq.read_batch_get(responses)
        return {k: found[w] for k in ks if (w := self._enc(k)) in found}

    async def batch_put(
        self,
        pairs: Mapping[bytes, bytes] | Iterable[tuple[bytes, bytes]],
        *,
        ttl: TTL = None,
        ttls: Mapping[bytes, TTL] | None = None,
    ) -> None:
        """Store many pairs.

        Pairs are grouped by region and sent as RPCs of at most 16 KiB of keys and
        values, concurrently. The batch is not atomic across regions: if it fails,
        some pairs may have been written (writing them again is harmless).

        Args:
            pairs: A mapping, or an iterable of ``(key, value)`` (later duplicates win).
            ttl: TTL of every pair (see :meth:`put`), or ``None``.
            ttls: Per-key TTLs overriding ``ttl``; each key must be one of the pairs.

        Example:
            >>> await client.batch_put({b"a": b"1", b"b": b"2"}, ttls={b"b": 30})

        """
        user_values = check_pairs(pairs)
        default_ttl = check_ttl(ttl)
        user_ttls = check_ttls(ttls, user_values.keys(), default_ttl)
        if not user_values:
            return
        values = {self._enc(k): v for k, v in user_values.items()}
        ttl_of = {self._enc(k): t for k, t in user_ttls.items()}
        cf, for_cas, size = self._wire_cf, self._atomic, self._batch_put_size()

        def build(group: Sequence[bytes]) -> list[tuple[Sequence[bytes], Any]]:
            out: list[tuple[Sequence[bytes], Any]] = []
            for chunk in split_by_size([(k, values[k]) for k in group], size):
                chunk_keys = [k for k, _ in chunk]
                chunk_ttls = [ttl_of[k] for k in chunk_keys]
                out.append((chunk_keys, rq.build_batch_put(chunk, chunk_ttls, cf, for_cas=for_cas)))
            return out

        async with _unknown_outcome_note("batch_put", len(values), "pairs"):
            responses = await self._router().call_keys(
                "RawBatchPut", list(values), build, bo=self._bo("raw_batch_put")
            )
            for response in responses:
                rq.check_response_error("RawBatchPut", response)

    async def batch_delete(self, keys: Iterable[bytes]) -> None:
        """Delete many keys (512 per RPC, concurrently; missing keys are fine).

        Example:
            >>> await client.batch_delete([b"a", b"b"])

        """
        ks = check_keys(keys)
        if not ks:
            return
        cf, for_cas, per_rpc = self._wire_cf, self._atomic, self._batch_pair_count()

        def build(group: Sequence[bytes]) -> list[tuple[Sequence[bytes], Any]]:
            return [
                (c, rq.build_batch_delete(c, cf, for_cas=for_cas))
                for c in split_by_count(group, per_rpc)
            ]

        async with _unknown_outcome_note("batch_delete", len(ks), "keys"):
            responses = await self._router().call_keys(
                "RawBatchDelete",
                [self._enc(k) for k in ks],
                build,
                bo=self._bo("raw_batch_delete"),
            )
            for response in responses:
                rq.check_response_error("RawBatchDelete", response)

    # -- range operations ------------------------------------------------------------

    async def delete_range(self, start: bytes, end: bytes | None = None) -> None:
        """Delete every key in ``[start, end)`` (``end=None``: to the last key).

        One RPC per region, clipped to the region (TiKV refuses a delete range that
        leaves its region), sent concurrently.

        Raises:
            ValueError: An empty range, ``start > end``, or atomic mode (TiKV has no
                atomic delete range, so it would race with CAS).

        Example:
            >>> await client.delete_range(b"a", b"m")

        """
        s, e = check_range(start, end, allow_empty=False)
        self._refuse_in_atomic_mode("delete_range")
        cf = self._wire_cf

        def build(lo: bytes, hi: bytes) -> Any:
            return rq.build_delete_range(lo, hi, cf)

        async with _unknown_outcome_note("delete_range", None, "regions"):
            responses = await self._router().call_range(
                "RawDeleteRange",
                self._enc(s),
                self._enc_end(e),
                build,
                bo=self._bo("raw_delete_range"),
            )
            for response in responses:
                rq.check_response_error("RawDeleteRange", response)

    async def delete_prefix(self, prefix: bytes) -> None:
        """Delete every key that starts with ``prefix`` (a non-empty prefix).

        Raises:
            ValueError: An empty prefix (to delete everything, say so with
                ``delete_range(b"", None)``), or atomic mode.

        Example:
            >>> await client.delete_prefix(b"user:42:")

        """
        p = check_key(prefix, "prefix")
        if not p:
            raise ValueError(
                "delete_prefix(b'') would delete every key; call delete_range(b'', None) "
                "to do that deliberately"
            )
        await self.delete_range(p, prefix_end(p))

    def _refuse_in_atomic_mode(self, what: str) -> None:
        if self._atomic:
            raise ValueError(
                f"{what} is not available in atomic mode: TiKV deletes ranges outside "
                f"its atomic path, which would break compare_and_swap's guarantees"
            )

    async def scan(
        self,
        start: bytes = b"",
        end: bytes | None = None,
        *,
        limit: int,
        key_only: bool = False,
        reverse: bool = False,
    ) -> list[KeyValue]:
        """Return up to ``limit`` pairs of ``[start, end)`` in key order.

        Args:
            start: Inclusive lower bound.
            end: Exclusive upper bound, or ``None`` for none.
            limit: At most this many pairs, 1 to 10240 (client-go's maximum; use
                :meth:`scan_iter` for more).
            key_only: Return empty values (TiKV does not read them).
            reverse: Return the pairs of the same range from the highest key down.

        Example:
            >>> await client.scan(b"a", b"c", limit=10)
            [(b'a', b'1'), (b'b', b'2')]
            >>> await client.scan(b"a", b"c", limit=1, reverse=True)
            [(b'b', b'2')]

        """
        s, e = check_range(start, end)
        n = check_limit(limit, maximum=self._max_scan_limit())
        ko = check_bool(key_only, "key_only")
        rev = check_bool(reverse, "reverse")
        return await self._scan(s, e, n, key_only=ko, reverse=rev)

    async def _scan(
        self, start: bytes, end: bytes | None, limit: int, *, key_only: bool, reverse: bool
    ) -> list[KeyValue]:
        if end is not None and start >= end:
            return []
        router = self._router()
        cf = self._wire_cf
        out: list[KeyValue] = []
        # The part of the range not scanned yet, as request keys (``upper == b""``:
        # unbounded). Regions are visited one at a time in scan direction, each with the
        # number of pairs still wanted, so no region is read past the limit.
        lower, upper = self._enc(start), self._enc_end(end)
        while len(out) < limit:
            remaining = limit - len(out)

            def build(lo: bytes, hi: bytes, remaining: int = remaining) -> Any:
                return rq.build_scan(
                    lo, hi or None, remaining, cf, key_only=key_only, reverse=reverse
                )

            responses, (part_lo, part_hi) = await router.call_first_region(
                "RawScan", lower, upper, build, reverse=reverse, bo=self._bo("raw_scan")
            )
            pairs = rq.read_scan(responses, remaining)
            if self._prefix:
                pairs = [(self._dec(k), v) for k, v in pairs]
            out.extend(pairs)
            if reverse:
                if part_lo <= lower:  # reached the lower bound (or the first region)
                    break
                upper = part_lo
            else:
                if not part_hi or (upper and part_hi >= upper):  # reached the upper bound
                    break
                lower = part_hi
        return out

    def scan_iter(
        self,
        start: bytes = b"",
        end: bytes | None = None,
        *,
        key_only: bool = False,
        reverse: bool = False,
        page_size: int = DEFAULT_SCAN_PAGE_SIZE,
        limit: int | None = None,
    ) -> AsyncIterator[KeyValue]:
        """Iterate over the pairs of ``[start, end)`` lazily, without a size limit.

        Pairs are fetched ``page_size`` at a time when the iteration needs them; each
        page is a consistent read of its own (a raw scan is not a snapshot).

        Args:
            start: Inclusive lower bound.
            end: Exclusive upper bound, or ``None`` for none.
            key_only: Yield empty values (TiKV does not read them).
            reverse: Iterate from the highest key down.
            page_size: Pairs per page, 1 to 10240.
            limit: Stop after this many pairs (``None``: no limit).

        Example:
            >>> async for key, value in client.scan_iter(b"user:", b"user;"):
            ...     print(key, value)

        """
        pages = self._page_iter(
            start, end, key_only=key_only, reverse=reverse, page_size=page_size, limit=limit
        )
        return self._iterate(pages)

    def _page_iter(
        self,
        start: bytes,
        end: bytes | None,
        *,
        key_only: bool,
        reverse: bool,
        page_size: int,
        limit: int | None,
    ) -> AsyncIterator[list[KeyValue]]:
        """Validate like :meth:`scan_iter`; return an async iterator of pages (lists)."""
        s, e = check_range(start, end)
        size = check_limit(page_size, "page_size", maximum=self._max_scan_limit())
        ko = check_bool(key_only, "key_only")
        rev = check_bool(reverse, "reverse")
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int):
                raise TypeError(f"limit must be an int or None, got {type(limit).__name__}")
            if limit < 0:
                raise ValueError(f"limit must be >= 0, got {limit}")
        return self._pages(s, e, size, ko, rev, limit)

    @staticmethod
    async def _iterate(pages: AsyncIterator[list[KeyValue]]) -> AsyncIterator[KeyValue]:
        async for page in pages:
            for pair in page:
                yield pair

    async def _pages(
        self,
        start: bytes,
        end: bytes | None,
        page_size: int,
        key_only: bool,
        reverse: bool,
        limit: int | None,
    ) -> AsyncIterator[list[KeyValue]]:
        # The one paging loop, shared by both flavours of scan_iter: each page is a
        # bounded scan that continues where the previous page stopped.
        produced = 0
        while limit is None or produced < limit:
            want = page_size if limit is None else min(page_size, limit - produced)
            page = await self._scan(start, end, want, key_only=key_only, reverse=reverse)
            if page:
                yield page
            produced += len(page)
            if len(page) < want:
                return
            last = page[-1][0]
            if reverse:
                end = last  # the exclusive upper bound of what is left
            else:
                start = last + b"\x00"  # the smallest key after ``last``

    async def batch_scan(
        self,
        ranges: Iterable[tuple[bytes, bytes | None]],
        *,
        each_limit: int,
        key_only: bool = False,
        reverse: bool = False,
    ) -> list[list[KeyValue]]:
        """Scan several ranges; return up to ``each_limit`` pairs of each, per range.

        The ranges are scanned concurrently (at most 16 at a time); they may overlap.

        Example:
            >>> await client.batch_scan([(b"a", b"c"), (b"x", None)], each_limit=10)
            [[(b'a', b'1'), (b'b', b'2')], [(b'x', b'9')]]

        """
        given: object = ranges
        if isinstance(given, bytes | str) or not isinstance(given, Iterable):
            raise TypeError("ranges must be an iterable of (start, end) pairs")
        checked: list[tuple[bytes, bytes | None]] = []
        for i, item in enumerate(given):
            if not isinstance(item, tuple | list) or len(item) != 2:
                raise ValueError(f"ranges[{i}] must be a (start, end) pair, got {item!r}")
            try:
                checked.append(check_range(item[0], item[1]))
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"ranges[{i}]: {exc}") from None
        n = check_limit(each_limit, "each_limit", maximum=self._max_scan_limit())
        ko = check_bool(key_only, "key_only")
        rev = check_bool(reverse, "reverse")
        self._router()
        gate = asyncio.Semaphore(BATCH_SCAN_CONCURRENCY)

        async def one(s: bytes, e: bytes | None) -> list[KeyValue]:
            async with gate:
                return await self._scan(s, e, n, key_only=ko, reverse=rev)

        # A TaskGroup cancels the other scans as soon as one fails (gather would leave
        # them running in the background); the caller gets that failure itself.
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(one(s, e)) for s, e in checked]
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None
        return [t.result() for t in tasks]

    async def checksum(self, start: bytes = b"", end: bytes | None = None) -> Checksum:
        """Return the CRC64-XOR checksum, pair count and byte count of ``[start, end)``.

        Computed by TiKV region by region, without transferring the data; see
        :class:`~tikv_raw.Checksum` for the algorithm. TiKV checksums the default
        column family only.

        Raises:
            ValueError: Called on a view of another column family.

        Example:
            >>> await client.checksum(b"a", b"z")
            Checksum(crc64_xor=..., total_kvs=2, total_bytes=4)

        """
        s, e = check_range(start, end)
        if self._wire_cf:
            raise ValueError(
                f"checksum covers the default column family only (TiKV's RawChecksum has "
                f"no column family), not {self._cf!r}"
            )
        if e is not None and s == e:
            return Checksum()

        def build(lo: bytes, hi: bytes) -> Any:
            return rq.build_checksum([(lo, hi)])

        responses = await self._router().call_range(
            "RawChecksum", self._enc(s), self._enc_end(e), build, bo=self._bo("raw_checksum")
        )
        return rq.read_checksum(responses)


@contextlib.asynccontextmanager
async def _unknown_outcome_note(
    operation: str, count: int | None, what: str
) -> AsyncIterator[None]:
    """Say, on any failure of a multi-region write, which part of it is unknown.

    A batch goes to its regions concurrently and the first failure cancels the rest, so
    when one fails the others may or may not have been applied. Every raw write except
    CAS is idempotent, so repeating the whole call is safe.
    """
    try:
        yield
    except TiKVError as exc:
        size = "all" if count is None else f"all {count}"
        exc.add_note(
            f"{operation} failed part-way: {size} {what} of this call may or may not have "
            f"been written (the regions are written concurrently and independently); "
            f"the call is idempotent and can be repeated"
        )
        raise


def _resolve_api_version(api_version: object, keyspace: object) -> int:
    if keyspace is not None:
        if not isinstance(keyspace, str):
            raise TypeError(f"keyspace must be a str or None, got {type(keyspace).__name__}")
        if not keyspace:
            raise ValueError("keyspace must not be empty (use None for no keyspace)")
    if api_version is None:
        return 2 if keyspace is not None else 1
    if isinstance(api_version, bool) or not isinstance(api_version, int):
        raise TypeError(f"api_version must be 1 or 2, got {api_version!r}")
    if api_version not in (1, 2):
        raise ValueError(f"api_version must be 1 or 2, got {api_version}")
    if api_version == 1 and keyspace is not None:
        raise ValueError("keyspaces need API v2: pass api_version=2 (or leave it out)")
    return api_version


def _scan_label(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    return "raw_reverse_scan" if kwargs.get("reverse") else "raw_scan"


# Client operations, instrumented while metrics or tracing is on (tikv_pd.observability):
# a span tikv.raw.<method> and tikv_client_go_rawkv_cmd_seconds{type=<label>} with
# client-go's labels (rawkv/rawkv.go) where it has them; get_key_ttl, compare_and_swap,
# delete_prefix and batch_scan have no client-go series and use their own names.
register_operations(
    AsyncRawClient,
    "rawkv",
    {
        "get": "get",
        "put": "batch_put",  # client-go's PutWithTTL observes the batch_put series
        "delete": "delete",
        "get_key_ttl": "get_key_ttl",
        "compare_and_swap": "compare_and_swap",
        "batch_get": "batch_get",
        "batch_put": "batch_put",
        "batch_delete": "batch_delete",
        "delete_range": "delete_range",
        "delete_prefix": "delete_prefix",
        "scan": _scan_label,
        "batch_scan": "batch_scan",
        "checksum": "raw_checksum",
    },
)
