"""gRPC channels shared by the PD client and the TiKV transport: options, TLS, endpoints.

Every connection the clients open (to PD members and to TiKV stores) goes through this
module, so that keepalive, message limits, reconnect backoff and TLS are decided once.

Choices, with the upstream facts behind them:

* Keepalive pings every 10 s with a 3 s timeout, as client-go's ``GrpcKeepAliveTime`` /
  ``GrpcKeepAliveTimeout`` (``config/client.go``), but only while calls are in flight:
  PD answers pings on idle connections with ``GOAWAY too_many_pings``.
* No message size limit, as client-go (``MaxRecvMsgSize`` is effectively unlimited in
  ``internal/client/conn_pool.go``): a large scan or batch response must never be
  refused by the client.
* gRPC's own retries are off: every retry is decided by the client's Backoffer.
* TLS from :class:`tikv_pd.config.SecurityConfig` (CA, optional client certificate).
  ``cluster_verify_cn`` cannot be enforced through grpcio's channel API; it is not
  checked here.
* Reconnect backoff 100 ms → 3 s, the ``backoff.Config`` client-go dials with
  (``internal/client/conn_pool.go``), instead of gRPC's default 1 s → 120 s, so a
  restarted PD member or store is reachable again within seconds.

Endpoints are accepted as ``host:port`` or ``http(s)://host:port`` (PD members report
``client_urls`` with a scheme); :func:`parse_endpoint` normalises them to a gRPC target.

Every channel is remembered (weakly) with the event loop it was opened on, so that a loop
about to close can close the channels still open on it first
(:func:`close_loop_channels`, called by :class:`tikv_pd.sync.LoopThread`): a channel left
open past its loop's end is destroyed later by the garbage collector, and gRPC then
delivers the completions of its cancelled calls to a closed loop (grpc/grpc#25364).
"""

from __future__ import annotations

import asyncio
import threading
import urllib.parse
import weakref
from collections.abc import Sequence

import grpc
import grpc.aio

from tikv_pd.config import Config, SecurityConfig
from tikv_pd.errors import ClientClosedError

__all__ = [
    "DEFAULT_CHANNEL_OPTIONS",
    "KEEPALIVE_TIMEOUT_MS",
    "KEEPALIVE_TIME_MS",
    "ChannelCache",
    "channel_credentials",
    "channel_options",
    "close_loop_channels",
    "create_channel",
    "endpoint_url",
    "parse_endpoint",
]

#: client-go ``GrpcKeepAliveTime`` (10 s).
KEEPALIVE_TIME_MS = 10_000
#: client-go ``GrpcKeepAliveTimeout`` (3 s).
KEEPALIVE_TIMEOUT_MS = 3_000

#: Options every channel of the project is created with (see the module docstring).
DEFAULT_CHANNEL_OPTIONS: tuple[tuple[str, int | str], ...] = (
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    ("grpc.enable_retries", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 3_000),
)


def channel_options(config: Config | None = None) -> list[tuple[str, int | str]]:
    """The channel options for ``config`` (keepalive from its ``grpc_keepalive_*``).

    Args:
        config: The client configuration; ``None`` uses client-go's defaults.

    """
    merged: dict[str, int | str] = dict(DEFAULT_CHANNEL_OPTIONS)
    if config is not None:
        merged["grpc.keepalive_time_ms"] = max(1, round(config.grpc_keepalive_time * 1000))
        merged["grpc.keepalive_timeout_ms"] = max(1, round(config.grpc_keepalive_timeout * 1000))
    return list(merged.items())


def channel_credentials(security: SecurityConfig) -> grpc.ChannelCredentials:
    """Build TLS channel credentials from the PEM files of ``security``.

    Files are read on every call, so channels opened later pick up rotated
    certificates.

    Raises:
        ValueError: TLS is not configured or a file cannot be read.

    """
    ca, cert, key = security.read_files()
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )


def parse_endpoint(endpoint: str) -> str:
    """Normalise a PD / TiKV endpoint to a gRPC target ``host:port``.

    Accepts ``host:port``, ``[v6addr]:port`` and ``http://`` / ``https://`` URLs (PD
    reports member ``client_urls`` with a scheme; a trailing ``/`` is ignored).

    Raises:
        TypeError: ``endpoint`` is not a str.
        ValueError: It is empty, has another scheme, a path, or no valid port.

    """
    if not isinstance(endpoint, str):
        raise TypeError(f"endpoint must be a str, got {type(endpoint).__name__}")
    text = endpoint.strip()
    if not text:
        raise ValueError("endpoint must not be empty")
    if "://" in text:
        parsed = urllib.parse.urlsplit(text)
        if parsed.scheme not in ("http", "https"):
            raise ValueError(
                f"endpoint {endpoint!r}: scheme must be http or https, got {parsed.scheme!r}"
            )
        if parsed.path not in ("", "/") or parsed.query or parsed.fragment:
            raise ValueError(f"endpoint {endpoint!r} must not have a path or query")
        text = parsed.netloc
    else:
        parsed = urllib.parse.urlsplit("//" + text)
        if parsed.path or parsed.query or parsed.fragment:
            raise ValueError(f"endpoint {endpoint!r} must be host:port")
    try:
        probe = urllib.parse.urlsplit("//" + text)
        host, port = probe.hostname, probe.port
    except ValueError as exc:
        raise ValueError(f"endpoint {endpoint!r} has an invalid port: {exc}") from exc
    if not host:
        raise ValueError(f"endpoint {endpoint!r} has no host")
    if port is None:
        raise ValueError(f"endpoint {endpoint!r} has no port (expected host:port)")
    if port == 0:
        raise ValueError(f"endpoint {endpoint!r}: port 0 is not a valid destination")
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def endpoint_url(target: str, *, tls: bool) -> str:
    """Return the URL form (``http://host:port`` or ``https://``) of a gRPC target."""
    return ("https://" if tls else "http://") + parse_endpoint(target)


def create_channel(
    target: str,
    *,
    config: Config | None = None,
    options: Sequence[tuple[str, int | str]] = (),
) -> grpc.aio.Channel:
    """Open a ``grpc.aio`` channel with the project's options (must run inside the loop).

    Args:
        target: ``host:port`` or an ``http(s)://`` URL.
        config: Keepalive, compression and TLS (``config.security``) come from it;
            ``None`` for client-go's defaults over plaintext.
        options: Extra channel options; they override the defaults of the same name.

    Returns:
        The channel; it connects lazily on the first call.

    """
    address = parse_endpoint(target)
    merged = dict(channel_options(config))
    merged.update(dict(options))
    opts = list(merged.items())
    compression = (
        grpc.Compression.Gzip if config is not None and config.grpc_compression == "gzip" else None
    )
    if config is None or not config.security.enabled:
        channel = grpc.aio.insecure_channel(address, options=opts, compression=compression)
    else:
        creds = channel_credentials(config.security)
        channel = grpc.aio.secure_channel(address, creds, options=opts, compression=compression)
    _remember(channel)
    return channel


# Channels by the loop they were opened on (both weak: a closed, forgotten channel and a
# finished loop leave no trace). Loops run on different threads, hence the lock.
_loop_channels: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, weakref.WeakSet[grpc.aio.Channel]
] = weakref.WeakKeyDictionary()
_loop_channels_lock = threading.Lock()


def _remember(channel: grpc.aio.Channel) -> None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # opened outside a loop: grpc binds it to the thread's loop later
        return
    with _loop_channels_lock:
        channels = _loop_channels.get(loop)
        if channels is None:
            channels = _loop_channels[loop] = weakref.WeakSet()
        channels.add(channel)


async def close_loop_channels() -> int:
    """Close every channel :func:`create_channel` opened on the running loop.

    For a loop about to close (:meth:`tikv_pd.sync.LoopThread.close` calls it after
    cancelling its tasks): the clients normally closed their channels already, but one
    that was never closed (a forgotten client, a ``close()`` that failed half-way) would
    otherwise stay open past its loop and be destroyed later by the garbage collector,
    on any thread; gRPC then cancels its calls and hands their completions to the closed
    loop, which logs "Event loop is closed" (grpc/grpc#25364). Closing is idempotent, so
    channels closed already cost nothing.

    Returns:
        How many channels were still open.

    """
    loop = asyncio.get_running_loop()
    with _loop_channels_lock:
        remembered = _loop_channels.pop(loop, None)
        channels = list(remembered) if remembered is not None else []
    still_open = [ch for ch in channels if _is_open(ch)]
    if still_open:
        await asyncio.gather(*(ch.close(None) for ch in still_open), return_exceptions=True)
    return len(still_open)


def _is_open(channel: grpc.aio.Channel) -> bool:
    """Whether ``channel`` is still open (a closed one reports ``SHUTDOWN``)."""
    return channel.get_state(try_to_connect=False) is not grpc.ChannelConnectivity.SHUTDOWN


class ChannelCache:
    """One shared ``grpc.aio`` channel per target, created lazily, closed together.

    gRPC multiplexes any number of calls over one HTTP/2 connection, so the PD client
    keeps one channel per PD member and the transport one per store (client-go keeps a
    small pool; on asyncio one channel already saturates a core, see
    ``grpc-limits.md``). :meth:`discard` drops a channel whose address went stale
    (client-go closes the connection on ``StoreNotMatch`` / address change).

    Args:
        config: Keepalive, compression and TLS settings of every channel.
        options: Extra channel options for every channel.

    """

    def __init__(
        self,
        *,
        config: Config | None = None,
        options: Sequence[tuple[str, int | str]] = (),
    ) -> None:
        self._config = config
        self._options = tuple(options)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def config(self) -> Config | None:
        """The configuration channels are created with."""
        return self._config

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def targets(self) -> list[str]:
        """The targets that currently have an open channel."""
        return list(self._channels)

    def get(self, target: str) -> grpc.aio.Channel:
        """Return the channel of ``target`` (normalised), opening it on first use.

        Raises:
            ClientClosedError: The cache was closed.
            ValueError: ``target`` is not a valid endpoint.

        """
        if self._closed:
            raise ClientClosedError("channel cache")
        address = parse_endpoint(target)
        channel = self._channels.get(address)
        if channel is None:
            channel = create_channel(address, config=self._config, options=self._options)
            self._channels[address] = channel
        return channel

    def discard(self, target: str) -> None:
        """Close and forget the channel of ``target`` (its calls fail with CANCELLED)."""
        address = parse_endpoint(target)
        channel = self._channels.pop(address, None)
        if channel is not None:
            task = asyncio.get_running_loop().create_task(channel.close(None))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Close every channel; later :meth:`get` calls raise ClientClosedError."""
        self._closed = True
        channels = list(self._channels.values())
        self._channels.clear()
        pending = [ch.close(None) for ch in channels]
        await asyncio.gather(*pending, *self._closing, return_exceptions=True)
