"""The machinery of the synchronous facades: a private event loop on a daemon thread.

The async clients are the implementation (DESIGN §4). A sync client owns one
:class:`LoopThread`, builds its async client on that loop, and turns every method into
``loop_thread.run(async_client.method(...))``. All background work of the client (the TSO
stream, heartbeats, BatchCommands streams) lives on that one loop and is shared by every
thread that uses the sync client.

Rules, and why:

* :meth:`LoopThread.run` refuses to be called from a thread that is running an event loop
  (including the private loop's own thread): blocking there would freeze that loop, and
  if it is the private loop, deadlock it. The error says to use the async client instead
  — the same rule as client-rust's ``SyncTransactionClient`` (``NestedRuntimeError``).
* A ``timeout`` cancels the submitted coroutine (so it stops using the cluster) and raises
  :class:`TimeoutError`; Ctrl-C while waiting cancels it too and re-raises.
* :meth:`LoopThread.close` cancels everything still running on the loop, waits for it to
  unwind, stops the loop and joins the thread; callers still blocked in :meth:`run` get
  :class:`~tikv_pd.errors.ClientClosedError`. A LoopThread that is garbage-collected
  without ``close()`` stops its loop too, so forgotten clients do not leak threads.
* :meth:`LoopThread.iterate` bridges an async iterator (a paged scan) to a plain iterator;
  closing the plain iterator (``break`` out of a ``for``) closes the async one on the loop.
* Closing a loop that used ``grpc.aio`` logs nothing. gRPC's completion-queue poller is
  process-wide: whichever loop reads an event hands it to the loop its call was made on
  with ``call_soon_threadsafe``, and a closed loop raises there, which the *reading*
  loop logs as "Exception in callback PollerCompletionQueue._handle_events ...
  RuntimeError: Event loop is closed" (grpc/grpc#25364). So the shutdown order is: the
  client closes its channels, :meth:`LoopThread.close` cancels what still runs, closes
  any channel opened on the loop that is still open
  (:func:`tikv_pd.channels.close_loop_channels`: a forgotten client's), and only then
  stops and closes the loop; and the private loop drops the completions gRPC may still
  hand it after that (the cancelled calls' last events, which nothing awaits) instead of
  raising.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import logging
import math
import threading
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, TypeVar, TypeVarTuple, cast

from tikv_pd.channels import close_loop_channels
from tikv_pd.errors import ClientClosedError

__all__ = ["LoopThread"]

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")

_DONE = object()  # end-of-iteration marker passed back from the loop

_log = logging.getLogger("tikv.sync")


class _PrivateLoop(asyncio.SelectorEventLoop):
    """The private loop: once closed, callbacks handed to it from other threads are dropped.

    After :meth:`LoopThread.close`, the only such callbacks are gRPC's: completions of
    the loop's cancelled calls that its process-wide poller still delivers
    (grpc/grpc#25364). Nothing awaits them any more; the stock loop would raise
    ``RuntimeError("Event loop is closed")`` in the thread that delivers them (another
    client's loop, which logs it).
    """

    def call_soon_threadsafe(
        self,
        callback: Callable[[*_Ts], object],
        *args: *_Ts,
        context: contextvars.Context | None = None,
    ) -> asyncio.Handle:
        """Schedule ``callback`` from another thread; after close, drop it (see above)."""
        if not self.is_closed():
            try:
                return super().call_soon_threadsafe(callback, *args, context=context)
            except RuntimeError:
                if not self.is_closed():
                    raise
        _log.debug("dropping %r handed to a closed client event loop", callback)
        handle = asyncio.Handle(callback, args, self, context)
        handle.cancel()
        return handle


def _check_timeout(timeout: float | None) -> None:
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"timeout must be a number of seconds or None, got {timeout!r}")
    if math.isnan(timeout) or timeout <= 0:
        raise ValueError(f"timeout must be > 0 seconds or None, got {timeout!r}")


def _in_running_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _close_awaitable(obj: object) -> None:
    """Close a coroutine that will never run, so Python does not warn it was not awaited."""
    close = getattr(obj, "close", None)
    if callable(close):
        close()


async def _shutdown_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel every other task on ``loop``, wait for them, then stop the loop."""
    current = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks(loop) if t is not current]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)
    # Channels a client left open would otherwise be destroyed after the loop closed.
    with contextlib.suppress(Exception):
        await close_loop_channels()
    with contextlib.suppress(Exception):
        await loop.shutdown_asyncgens()
    loop.stop()


def _stop_from_outside(loop: asyncio.AbstractEventLoop) -> None:
    """Finalizer: shut a forgotten LoopThread's loop down (never blocks)."""
    if loop.is_closed() or not loop.is_running():
        return
    with contextlib.suppress(RuntimeError):
        asyncio.run_coroutine_threadsafe(_shutdown_loop(loop), loop)


def _loop_main(loop: asyncio.AbstractEventLoop, started: threading.Event) -> None:
    asyncio.set_event_loop(loop)
    loop.call_soon(started.set)
    try:
        loop.run_forever()
    finally:
        try:
            # Anything scheduled after the stop (rare) gets a last chance to unwind.
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        finally:
            asyncio.set_event_loop(None)
            loop.close()


class LoopThread:
    """A private asyncio event loop running on a daemon thread.

    The loop starts in the constructor. Use it as a context manager or call
    :meth:`close`.

    Args:
        name: The thread's name (shown in thread dumps).

    """

    def __init__(self, *, name: str = "tikv-loop") -> None:
        if not isinstance(name, str):
            raise TypeError("name must be a str")
        self._loop: asyncio.AbstractEventLoop = _PrivateLoop()
        started = threading.Event()
        self._thread = threading.Thread(
            target=_loop_main, args=(self._loop, started), name=name, daemon=True
        )
        self._closed = False
        self._close_lock = threading.Lock()
        self._thread.start()
        started.wait()
        self._finalizer = weakref.finalize(self, _stop_from_outside, self._loop)

    # -- properties ------------------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The private event loop (schedule on it only through this object's methods)."""
        return self._loop

    @property
    def thread(self) -> threading.Thread:
        """The daemon thread running the loop."""
        return self._thread

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def in_loop_thread(self) -> bool:
        """Whether the caller is running on the private loop's thread."""
        return threading.current_thread() is self._thread

    # -- running work ----------------------------------------------------------------

    def _check_caller(self, what: str) -> None:
        if self.in_loop_thread() or _in_running_loop():
            raise RuntimeError(
                f"{what} blocks the calling thread and cannot be called from a running "
                "event loop (it would stall or deadlock it); use the async client "
                "(e.g. AsyncRawClient / AsyncTransactionClient) inside asyncio code"
            )

    def submit(self, coro: Coroutine[Any, Any, _T]) -> concurrent.futures.Future[_T]:
        """Schedule ``coro`` on the loop and return a thread-safe future of its result.

        Does not block, so it may be called from anywhere except after close.

        Raises:
            TypeError: ``coro`` is not a coroutine.
            ClientClosedError: The loop thread is closed.

        """
        if not asyncio.iscoroutine(coro):
            raise TypeError(f"submit expects a coroutine, got {type(coro).__name__}")
        if self._closed:
            _close_awaitable(coro)
            raise ClientClosedError("the client's event loop thread")
        try:
            return asyncio.run_coroutine_threadsafe(coro, self._loop)
        except RuntimeError as exc:  # the loop stopped between the check and the call
            _close_awaitable(coro)
            raise ClientClosedError("the client's event loop thread") from exc

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float | None = None) -> _T:
        """Run ``coro`` on the loop and block until it finishes; return its result.

        Args:
            coro: The coroutine (typically a call of the async client).
            timeout: Seconds to wait; on expiry the coroutine is cancelled and
                :class:`TimeoutError` is raised. ``None`` waits as long as it takes.

        Raises:
            RuntimeError: Called from a running event loop (use the async client).
            TimeoutError: ``timeout`` expired.
            ClientClosedError: The loop thread is (or was, meanwhile) closed.
            BaseException: Whatever ``coro`` raised.

        """
        try:
            _check_timeout(timeout)
            self._check_caller("a synchronous TiKV client method")
        except BaseException:
            _close_awaitable(coro)
            raise
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"operation did not complete within {timeout} s") from None
        except concurrent.futures.CancelledError:
            if self._closed:
                raise ClientClosedError("the client", when="while the call ran") from None
            raise
        except BaseException:
            # KeyboardInterrupt and friends: stop the work on the loop, then propagate.
            future.cancel()
            raise

    def iterate(
        self, source: AsyncIterable[_T] | AsyncIterator[_T], timeout: float | None = None
    ) -> Iterator[_T]:
        """Bridge an async iterable to a blocking iterator (one :meth:`run` per item).

        Args:
            source: The async iterable (e.g. a paged scan of the async client).
            timeout: Per-item timeout in seconds, as in :meth:`run`.

        Returns:
            A generator; closing it (or leaving a ``for`` loop early) closes the async
            iterator on the loop.

        Raises:
            TypeError: ``source`` is not an async iterable.

        """
        if not hasattr(source, "__aiter__"):
            raise TypeError(f"iterate expects an async iterable, got {type(source).__name__}")
        _check_timeout(timeout)
        return self._iterate(source, timeout)

    def _iterate(
        self, source: AsyncIterable[_T] | AsyncIterator[_T], timeout: float | None
    ) -> Iterator[_T]:
        async def start() -> AsyncIterator[_T]:
            return source.__aiter__()

        async def step(it: AsyncIterator[_T]) -> object:
            try:
                return await it.__anext__()
            except StopAsyncIteration:
                return _DONE

        iterator = self.run(start())
        finished = False
        try:
            while True:
                item = self.run(step(iterator), timeout)
                if item is _DONE:
                    finished = True
                    return
                yield cast(_T, item)
        finally:
            aclose = getattr(iterator, "aclose", None)
            if not finished and aclose is not None and not self._closed:
                with contextlib.suppress(Exception):
                    if not self.in_loop_thread() and not _in_running_loop():
                        self.run(cast(Coroutine[Any, Any, object], aclose()), timeout)

    # -- lifecycle -------------------------------------------------------------------

    def close(self, timeout: float = 10.0) -> None:
        """Cancel all work on the loop, stop it and join its thread. Idempotent.

        Close the async client first (``run(client.close())``) so it can shut down
        cleanly; whatever is still running afterwards is cancelled here.

        Args:
            timeout: Seconds to wait for the thread to finish.

        Raises:
            RuntimeError: Called from the loop's own thread (it cannot join itself).

        """
        _check_timeout(timeout)
        if self.in_loop_thread():
            raise RuntimeError("LoopThread.close() cannot be called from its own loop")
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._finalizer.detach()
        if self._loop.is_running():
            with contextlib.suppress(RuntimeError):
                asyncio.run_coroutine_threadsafe(_shutdown_loop(self._loop), self._loop)
        self._thread.join(timeout)

    def __enter__(self) -> LoopThread:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running"
        return f"LoopThread(name={self._thread.name!r}, {state})"
