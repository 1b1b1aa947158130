"""RPC interceptors: code that sees (and may change) every request sent to a store.

An interceptor wraps the function that sends one RPC attempt, as client-go's
``tikvrpc/interceptor`` does: :meth:`RPCInterceptor.wrap` takes the next function of the
chain and returns a new one, which may read or patch the :class:`RPCRequest` (its
``kvrpcpb.Context`` included) before calling the next function, and observe the response
(or the error) after. A chain runs its interceptors in the order they were linked: the
first one is the outermost (it sees the request first and the response last).

Interceptors attach to a client, a transaction or a snapshot through
:attr:`tikv_pd.request.RequestOptions.interceptor`; linking an interceptor whose
:attr:`~RPCInterceptor.name` is already in a chain replaces the earlier one (client-go
``RPCInterceptorChain.Link``). The pipeline calls :meth:`RPCInterceptor.wrap` once per
request (not per attempt) and the wrapped function once per attempt: a retried attempt
passes through the interceptors again, with ``attempt`` counting up.

The process also has its own hooks around every send (:data:`process_chain`): the
OpenTracing-style RPC span and resource control outside the request's interceptors, and
the request-latency metrics inside them (client-go measures ``request_seconds`` in the
RPC client, below its interceptors). They are installed by :func:`tikv_pd.tracing.enable_tracing`,
:func:`tikv_pd.request_context.set_resource_controller` and
:func:`tikv_pd.metrics.enable_metrics`; with none of them and no interceptor, a request
goes straight to the transport (:func:`build_invoker` returns ``None``).

Example:
    >>> class Tag(Interceptor):
    ...     name = "tag"
    ...     async def before_send(self, rpc: RPCRequest) -> None:
    ...         rpc.context.resource_group_tag = b"batch"
    >>> class Count(Interceptor):
    ...     sent = 0
    ...     def after_response(self, rpc: RPCRequest, response: object) -> None:
    ...         Count.sent += 1
    >>> chain = chain_interceptors(Tag(), Count())   # Tag runs first
    >>> client.add_rpc_interceptor(chain)            # or RequestOptions(interceptor=chain)

"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from google.protobuf.message import Message
from tikv_proto import kvrpcpb_pb2

__all__ = [
    "Interceptor",
    "RPCInterceptor",
    "RPCInterceptorChain",
    "RPCInvoker",
    "RPCRequest",
    "SendFunction",
    "build_invoker",
    "chain_interceptors",
    "process_chain",
    "refresh_process_chain",
    "rpc_interceptor",
    "send_to_store",
]


@dataclass(slots=True)
class RPCRequest:
    """One RPC attempt as an interceptor sees it; every field may be changed.

    Attributes:
        target: The store address the attempt goes to.
        command: The command (``"RawGet"``, ``"Prewrite"``, ...; see
            :data:`tikv_pd.transport.COMMANDS`).
        request: The request message; its ``context`` is this attempt's own copy.
        store_id: The store's id.
        region_id: The region the request is for.
        attempt: 0 for the first attempt of this part of the request, then 1, 2, ...
        timeout: The attempt's deadline in seconds (``None``: the transport default).
        forwarded_host: For a relayed attempt, the address of the store the request is
            for (the region's leader, which the client cannot reach): ``target`` is then
            the proxy store that forwards it (client-go ``EnableForwarding``, the
            ``tikv-forwarded-host`` metadata); ``store_id`` and the context still name
            the leader. Empty for a direct attempt.

    """

    target: str
    command: str
    request: Message
    store_id: int
    region_id: int
    attempt: int
    timeout: float | None
    forwarded_host: str = ""

    @property
    def context(self) -> kvrpcpb_pb2.Context:
        """The request's ``kvrpcpb.Context`` (patching it changes what TiKV receives)."""
        ctx: kvrpcpb_pb2.Context = self.request.context  # type: ignore[attr-defined]
        return ctx


#: Sends one attempt and returns the response message (or raises).
RPCInvoker = Callable[[RPCRequest], Awaitable[Any]]


class SendFunction(Protocol):
    """The transport's send (:meth:`tikv_pd.transport.Transport.send`).

    ``send(address, command, request, timeout)`` sends to the store at ``address``;
    with ``forwarded_host`` that store relays the request to the one named.
    """

    def __call__(
        self,
        address: str,
        command: str,
        request: Message,
        timeout: float | None,
        /,
        *,
        forwarded_host: str | None = None,
    ) -> Awaitable[Any]:
        """Send one request and return an awaitable of the response message."""
        ...


@runtime_checkable
class RPCInterceptor(Protocol):
    """An interceptor (client-go ``interceptor.RPCInterceptor``)."""

    @property
    def name(self) -> str:
        """The interceptor's name; a chain keeps one interceptor per name."""
        ...

    def wrap(self, next: RPCInvoker) -> RPCInvoker:
        """Return a function that does this interceptor's work around ``next``."""
        ...


class Interceptor:
    """A convenient base: override :meth:`before_send` / :meth:`after_response` / :meth:`on_error`.

    Subclasses set :attr:`name` (default: the class name).
    """

    #: The interceptor's name (chains keep one interceptor per name).
    name: str = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("name"):
            cls.name = cls.__name__

    async def before_send(self, rpc: RPCRequest) -> None:
        """Called before the attempt is sent; may patch ``rpc`` (and its context)."""

    def after_response(self, rpc: RPCRequest, response: Any) -> None:
        """Called with the response of the attempt (region errors included)."""

    def on_error(self, rpc: RPCRequest, error: BaseException) -> None:
        """Called when the attempt failed (transport error, timeout, a later interceptor)."""

    def wrap(self, next: RPCInvoker) -> RPCInvoker:
        """See :meth:`RPCInterceptor.wrap`."""

        async def invoke(rpc: RPCRequest) -> Any:
            await self.before_send(rpc)
            try:
                response = await next(rpc)
            except BaseException as exc:
                self.on_error(rpc, exc)
                raise
            self.after_response(rpc, response)
            return response

        return invoke


class _FunctionInterceptor:
    __slots__ = ("_fn", "_name")

    def __init__(self, name: str, fn: Callable[[RPCInvoker], RPCInvoker]) -> None:
        self._name = name
        self._fn = fn

    @property
    def name(self) -> str:
        return self._name

    def wrap(self, next: RPCInvoker) -> RPCInvoker:
        return self._fn(next)

    def __repr__(self) -> str:
        return f"rpc_interceptor({self._name!r})"


def rpc_interceptor(name: str, fn: Callable[[RPCInvoker], RPCInvoker]) -> RPCInterceptor:
    """Make an interceptor from a wrapping function (client-go ``NewRPCInterceptor``).

    Example:
        >>> def low_priority(next):
        ...     async def invoke(rpc):
        ...         rpc.context.priority = kvrpcpb_pb2.Low
        ...         return await next(rpc)
        ...     return invoke
        >>> it = rpc_interceptor("low-priority", low_priority)

    """
    if not isinstance(name, str) or not name:
        raise ValueError("an interceptor needs a non-empty name")
    if not callable(fn):
        raise TypeError("fn must be callable")
    return _FunctionInterceptor(name, fn)


class RPCInterceptorChain:
    """Interceptors run in link order, the first outermost (client-go ``RPCInterceptorChain``).

    Linking a chain links its members; linking an interceptor whose name is already
    present removes the earlier one first, so the newest wins and runs last.
    """

    __slots__ = ("_chain",)

    #: The chain's own name.
    name = "interceptor-chain"

    def __init__(self, interceptors: Iterable[RPCInterceptor] = ()) -> None:
        self._chain: list[RPCInterceptor] = []
        for it in interceptors:
            self.link(it)

    def link(self, interceptor: RPCInterceptor) -> RPCInterceptorChain:
        """Append ``interceptor`` (or every member of a chain); returns ``self``."""
        if isinstance(interceptor, RPCInterceptorChain):
            for member in interceptor._chain:
                self.link(member)
            return self
        if not isinstance(interceptor, RPCInterceptor):
            raise TypeError(
                f"an RPC interceptor needs .name and .wrap(next), got {type(interceptor).__name__}"
            )
        name = interceptor.name
        self._chain = [it for it in self._chain if it.name != name]
        self._chain.append(interceptor)
        return self

    def __len__(self) -> int:
        return len(self._chain)

    @property
    def names(self) -> list[str]:
        """The members' names, outermost first."""
        return [it.name for it in self._chain]

    def wrap(self, next: RPCInvoker) -> RPCInvoker:
        """Wrap ``next`` with every member, the first one outermost."""
        for it in reversed(self._chain):
            next = it.wrap(next)
        return next

    def __repr__(self) -> str:
        return f"RPCInterceptorChain({self.names})"


def chain_interceptors(first: RPCInterceptor, *rest: RPCInterceptor) -> RPCInterceptorChain:
    """A new chain of ``first`` then ``rest`` (client-go ``ChainRPCInterceptors``).

    Always a new object, so extending a transaction's chain never changes its client's.
    """
    chain = RPCInterceptorChain()
    chain.link(first)
    for it in rest:
        chain.link(it)
    return chain


# ---------------------------------------------------------------------------------------
# The process-wide hooks and the invoker the pipeline calls
# ---------------------------------------------------------------------------------------

#: The process's own hooks *outside* the request's interceptors (tracing span, resource
#: control), or ``None``. Read-only: set by :func:`refresh_process_chain`.
process_chain: RPCInterceptor | None = None
#: The process's hooks *inside* the request's interceptors, next to the transport (the
#: request-latency metrics), or ``None``.
process_inner_chain: RPCInterceptor | None = None


def refresh_process_chain() -> None:
    """Rebuild :data:`process_chain` from the enabled tracing, resource control and metrics.

    Called by the enabling functions; there is no need to call it directly.
    """
    global process_chain, process_inner_chain
    from tikv_pd import observability, request_context

    outer: list[RPCInterceptor] = []
    tracing = observability.tracing
    if tracing is not None:
        outer.append(tracing.rpc_interceptor())
    controller = request_context.get_resource_controller()
    if controller is not None:
        outer.append(request_context.resource_control_interceptor(controller))
    process_chain = RPCInterceptorChain(outer) if outer else None
    metrics = observability.metrics
    process_inner_chain = metrics.rpc_interceptor() if metrics is not None else None


def build_invoker(send: SendFunction, interceptor: RPCInterceptor | None) -> RPCInvoker | None:
    """The function that sends one attempt through every hook, or ``None`` if there are none.

    Order, outermost first: :data:`process_chain` (RPC span, resource control), the
    request's ``interceptor`` chain, :data:`process_inner_chain` (latency metrics), then
    ``send`` (with the attempt's :attr:`RPCRequest.forwarded_host`, so one invoker
    serves direct and relayed attempts alike). ``None`` tells the pipeline to call
    ``send`` directly.
    """
    outer = process_chain
    inner = process_inner_chain
    if interceptor is None and outer is None and inner is None:
        return None

    async def terminal(rpc: RPCRequest) -> Any:
        if rpc.forwarded_host:
            return await send(
                rpc.target,
                rpc.command,
                rpc.request,
                rpc.timeout,
                forwarded_host=rpc.forwarded_host,
            )
        return await send(rpc.target, rpc.command, rpc.request, rpc.timeout)

    invoke: RPCInvoker = terminal
    if inner is not None:
        invoke = inner.wrap(invoke)
    if interceptor is not None:
        invoke = interceptor.wrap(invoke)
    if outer is not None:
        invoke = outer.wrap(invoke)
    return invoke


async def send_to_store(
    send: SendFunction,
    address: str,
    command: str,
    request: Message,
    timeout: float | None,  # noqa: ASYNC109 - the RPC's deadline
    *,
    store_id: int = 0,
    interceptor: RPCInterceptor | None = None,
) -> Any:
    """Send a request that is not routed by region (per-store admin RPCs) through the hooks.

    Requests that go to every store (``UnsafeDestroyRange``, ...) bypass the request
    pipeline; this gives them the same interceptors, spans and metrics (client-go sends
    them through the same intercepted client). ``region_id`` is 0 for them.
    """
    invoke = build_invoker(send, interceptor)
    if invoke is None:
        return await send(address, command, request, timeout)
    return await invoke(RPCRequest(address, command, request, store_id, 0, 0, timeout))
