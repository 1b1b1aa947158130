"""Binding the raw client to the shared pipeline of ``tikv_pd``: connect and route.

:func:`connect_router` builds what a raw client runs on — the PD client, the region
locator (region cache filled from PD), the store transport (BatchCommands streams) and the
:class:`tikv_pd.request.RequestSender` — and wraps them as a :class:`PipelineRouter`, the
:class:`tikv_raw._router.Router` the client talks to. The router adds the raw client's
per-request settings: API version and keyspace in every context, and client-go's
``MaxWriteExecutionTime`` (20 s) as the server-side execution deadline of writes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from tikv_pd.backoff import Backoffer
from tikv_pd.codec import KeyCodec, make_codec
from tikv_pd.config import Config
from tikv_pd.interceptor import RPCInterceptor
from tikv_pd.locator import RegionLocator
from tikv_pd.pd_client import PDClient
from tikv_pd.request import Ambiguity, RequestOptions, RequestSender
from tikv_pd.request_context import RequestContext
from tikv_pd.transport import Transport

from tikv_raw._router import BuildForKeys, BuildForRange

__all__ = ["MAX_WRITE_EXECUTION_MS", "PipelineRouter", "connect_router"]

#: client-go ``MaxWriteExecutionTime`` (ReadTimeoutShort 30 s - 10 s): TiKV drops a raw
#: write that waited longer than this, so a late duplicate cannot apply out of order.
MAX_WRITE_EXECUTION_MS = 20_000

_WRITES = frozenset(
    {
        "RawPut",
        "RawBatchPut",
        "RawDelete",
        "RawBatchDelete",
        "RawDeleteRange",
        "RawCompareAndSwap",
    }
)


class PipelineRouter:
    """The raw client's :class:`~tikv_raw._router.Router` over a ``RequestSender``.

    Args:
        pd: The connected PD client (owned: closed by :meth:`close`).
        locator: The region locator (owned).
        transport: The store transport (owned).
        codec: The key codec (API v1 raw, or the keyspace's API v2 codec).
        keyspace_name: The keyspace name, or ``""``.

    """

    def __init__(
        self,
        pd: PDClient,
        locator: RegionLocator,
        transport: Transport,
        codec: KeyCodec,
        *,
        keyspace_name: str = "",
    ) -> None:
        self.pd = pd
        self.locator = locator
        self.transport = transport
        self.codec = codec
        self.sender = RequestSender(locator, transport)
        common: dict[str, Any] = {
            "api_version": codec.api_version,
            "keyspace_id": codec.keyspace_id,
            "keyspace_name": keyspace_name,
        }
        self._base_read = RequestOptions(**common)
        self._base_write = RequestOptions(
            **common, max_execution_duration_ms=MAX_WRITE_EXECUTION_MS
        )
        self._read_options = self._base_read
        self._write_options = self._base_write

    def set_request_control(
        self, context: RequestContext | None, interceptor: RPCInterceptor | None
    ) -> None:
        """See :meth:`tikv_raw._router.Router.set_request_control`."""
        read, write = self._base_read, self._base_write
        if context is not None:
            read, write = context.apply(read), context.apply(write)
        if interceptor is not None:
            read = dataclasses.replace(read, interceptor=interceptor)
            write = dataclasses.replace(write, interceptor=interceptor)
        self._read_options, self._write_options = read, write

    def _options(self, command: str) -> RequestOptions:
        return self._write_options if command in _WRITES else self._read_options

    async def call_key(
        self, command: str, key: bytes, request: Any, *, ambiguity: Ambiguity, bo: Backoffer
    ) -> Any:
        """See :meth:`tikv_raw._router.Router.call_key`."""
        return await self.sender.call_key(
            command, key, request, ambiguity=ambiguity, bo=bo, options=self._options(command)
        )

    async def call_keys(
        self, command: str, keys: Sequence[bytes], build: BuildForKeys, *, bo: Backoffer
    ) -> list[Any]:
        """See :meth:`tikv_raw._router.Router.call_keys`."""
        return await self.sender.call_keys(
            command, keys, build, bo=bo, options=self._options(command)
        )

    async def call_range(
        self, command: str, start: bytes, end: bytes, build: BuildForRange, *, bo: Backoffer
    ) -> list[Any]:
        """See :meth:`tikv_raw._router.Router.call_range`."""
        return await self.sender.call_range(
            command, start, end, build, bo=bo, options=self._options(command)
        )

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
        """See :meth:`tikv_raw._router.Router.call_first_region`."""
        return await self.sender.call_first_region(
            command, start, end, build, reverse=reverse, bo=bo, options=self._options(command)
        )

    async def close(self) -> None:
        """Stop the locator, close the store connections and the PD client."""
        try:
            await self.locator.close()
            await self.transport.close()
        finally:
            await self.pd.close()


async def connect_router(
    endpoints: Sequence[str],
    *,
    api_version: int,
    keyspace: str | None,
    config: Config,
    timeout: float | None,  # noqa: ASYNC109 (the PD discovery deadline)
) -> PipelineRouter:
    """Connect to PD, resolve the keyspace (API v2) and build the request pipeline.

    Args:
        endpoints: PD addresses.
        api_version: 1 or 2.
        keyspace: The keyspace name (API v2), or ``None`` (API v2: the default keyspace).
        config: Client configuration.
        timeout: Seconds allowed for PD discovery (``None``: the PD client's default).

    Raises:
        tikv_pd.errors.PDError: PD unreachable, or the keyspace does not exist.

    """
    if timeout is None:
        pd = await PDClient.connect(endpoints, config=config, caller_id="tikv-raw")
    else:
        pd = await PDClient.connect(
            endpoints, config=config, connect_timeout=timeout, caller_id="tikv-raw"
        )
    try:
        codec: KeyCodec
        if api_version == 2:
            # The default keyspace has id 0 (client-go ``DefaultKeyspaceID``).
            keyspace_id = 0 if keyspace is None else (await pd.load_keyspace(keyspace)).id
            codec = make_codec(2, "raw", keyspace_id)
        else:
            codec = make_codec(0, "raw")
        locator = RegionLocator(pd, codec=codec)
        locator.start()
        transport = Transport(config)
    except BaseException:
        await pd.close()
        raise
    return PipelineRouter(pd, locator, transport, codec, keyspace_name=keyspace or "")
