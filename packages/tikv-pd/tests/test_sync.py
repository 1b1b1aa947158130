"""LoopThread: the private loop behind every sync facade."""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from tikv_pd.channels import create_channel
from tikv_pd.errors import ClientClosedError
from tikv_pd.sync import LoopThread


@pytest.fixture
def lt() -> Iterator[LoopThread]:
    thread = LoopThread(name="test-loop")
    yield thread
    thread.close()


def test_run_returns_result_on_the_private_loop(lt: LoopThread) -> None:
    async def where() -> tuple[str, bool]:
        return threading.current_thread().name, asyncio.get_running_loop() is lt.loop

    assert lt.run(where()) == ("test-loop", True)
    assert lt.thread.daemon


def test_run_propagates_exceptions(lt: LoopThread) -> None:
    async def boom() -> None:
        raise KeyError("x")

    with pytest.raises(KeyError):
        lt.run(boom())


def test_state_and_background_tasks_persist_between_calls(lt: LoopThread) -> None:
    state: dict[str, object] = {}

    async def start() -> None:
        queue: asyncio.Queue[tuple[int, asyncio.Future[int]]] = asyncio.Queue()

        async def worker() -> None:
            while True:
                item, reply = await queue.get()
                reply.set_result(item * 10)

        state["queue"] = queue
        state["task"] = asyncio.get_running_loop().create_task(worker())

    async def put_and_wait(n: int) -> int:
        queue = state["queue"]
        assert isinstance(queue, asyncio.Queue)
        reply: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        await queue.put((n, reply))
        return await reply

    lt.run(start())
    assert lt.run(put_and_wait(5)) == 50
    assert lt.run(put_and_wait(6)) == 60


async def test_run_inside_a_running_loop_raises_instead_of_deadlocking(lt: LoopThread) -> None:
    async def never_runs() -> int:
        return 1

    coro = never_runs()
    with pytest.raises(RuntimeError, match="running event loop"):
        lt.run(coro)
    # The coroutine was closed, not leaked (filterwarnings=error would flag it).
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED


def test_run_from_the_loop_thread_itself_raises(lt: LoopThread) -> None:
    async def nested() -> str:
        async def inner() -> int:
            return 1

        try:
            lt.run(inner())
        except RuntimeError as exc:
            return str(exc)
        return "no error"

    assert "running event loop" in lt.run(nested())


def test_timeout_cancels_the_work(lt: LoopThread) -> None:
    cancelled = threading.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(TimeoutError, match="within"):
        lt.run(slow(), timeout=0.05)
    assert cancelled.wait(10)


@pytest.mark.parametrize("bad", [0, -1, float("nan")])
def test_bad_timeout_is_rejected(lt: LoopThread, bad: float) -> None:
    async def quick() -> int:
        return 1

    with pytest.raises(ValueError, match="timeout"):
        lt.run(quick(), timeout=bad)


def test_submit_requires_a_coroutine(lt: LoopThread) -> None:
    with pytest.raises(TypeError, match="coroutine"):
        lt.submit(lambda: 1)  # type: ignore[arg-type]


def test_many_threads_share_one_loop(lt: LoopThread) -> None:
    results: list[int] = []
    lock = threading.Lock()

    async def double(n: int) -> int:
        await asyncio.sleep(0)
        return n * 2

    def worker(base: int) -> None:
        for i in range(50):
            value = lt.run(double(base + i))
            with lock:
                results.append(value)

    threads = [threading.Thread(target=worker, args=(k * 1000,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == sorted((k * 1000 + i) * 2 for k in range(8) for i in range(50))


def test_close_cancels_pending_work_and_fails_blocked_callers() -> None:
    lt = LoopThread()
    started = threading.Event()
    cleanup_ran = threading.Event()
    outcome: list[BaseException] = []

    async def forever() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        finally:
            cleanup_ran.set()

    def blocked_caller() -> None:
        try:
            lt.run(forever())
        except BaseException as exc:
            outcome.append(exc)

    caller = threading.Thread(target=blocked_caller)
    caller.start()
    assert started.wait(10)
    lt.close()
    caller.join(10)
    assert not caller.is_alive()
    assert cleanup_ran.is_set()
    assert len(outcome) == 1 and isinstance(outcome[0], ClientClosedError)
    assert not lt.thread.is_alive()
    assert lt.loop.is_closed()
    lt.close()  # idempotent

    async def after() -> int:
        return 1

    with pytest.raises(ClientClosedError):
        lt.run(after())


def test_context_manager_closes() -> None:
    with LoopThread() as lt:

        async def one() -> int:
            return 1

        assert lt.run(one()) == 1
    assert lt.closed and not lt.thread.is_alive()


def test_forgotten_loop_thread_stops_its_thread() -> None:
    lt = LoopThread(name="forgotten")
    thread = lt.thread
    del lt
    gc.collect()
    thread.join(10)
    assert not thread.is_alive()


def test_iterate_bridges_async_iterators(lt: LoopThread) -> None:
    async def numbers(n: int) -> AsyncIterator[int]:
        for i in range(n):
            await asyncio.sleep(0)
            yield i

    assert list(lt.iterate(numbers(5))) == [0, 1, 2, 3, 4]
    assert list(lt.iterate(numbers(0))) == []


def test_iterate_closing_early_closes_the_async_iterator(lt: LoopThread) -> None:
    closed = threading.Event()

    async def pages() -> AsyncIterator[int]:
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    taken = []
    for item in lt.iterate(pages()):
        taken.append(item)
        if item == 2:
            break
    assert taken == [0, 1, 2]
    assert closed.wait(10)


def test_iterate_propagates_errors_and_rejects_non_iterables(lt: LoopThread) -> None:
    async def failing() -> AsyncIterator[int]:
        yield 1
        raise ValueError("page failed")

    it = lt.iterate(failing())
    assert next(it) == 1
    with pytest.raises(ValueError, match="page failed"):
        next(it)
    with pytest.raises(TypeError, match="async iterable"):
        lt.iterate([1, 2])  # type: ignore[arg-type]


# -- shutdown next to grpc.aio (grpc/grpc#25364) ------------------------------------------


def test_a_closed_private_loop_drops_callbacks_handed_to_it() -> None:
    lt = LoopThread()
    lt.close()
    ran: list[int] = []
    # What grpc's shared poller does with a late completion: no error, never run.
    handle = lt.loop.call_soon_threadsafe(ran.append, 1)
    assert handle.cancelled()
    assert ran == []


_STREAM = "/tikv_pd_test.Echo/Stream"


async def _echo(requests: AsyncIterator[bytes], context: object) -> AsyncIterator[bytes]:
    async for request in requests:
        yield request


async def _start_echo_server() -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "tikv_pd_test.Echo", {"Stream": grpc.stream_stream_rpc_method_handler(_echo)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def _open_stream_and_forget(port: int) -> grpc.aio.Channel:
    """Open a channel with a stream in flight (like a client's TSO stream) and leave it."""
    channel = create_channel(f"127.0.0.1:{port}")
    call = channel.stream_stream(_STREAM, None, None)(None)
    await call.write(b"ping")
    assert await call.read() == b"ping"
    pending = asyncio.get_running_loop().create_task(call.read())
    pending.add_done_callback(lambda t: t.cancelled() or t.exception())
    return channel


def _closing_loops_scenario() -> None:
    """Open 30 LoopThreads with a gRPC stream in flight and close them (see the test)."""
    logging.basicConfig(level=logging.WARNING)  # what asyncio logs goes to stderr
    # Another loop stays bound to grpc's poller throughout (here: the server's), so the
    # completions of a closed loop's calls are read there and handed to the closed loop.
    with LoopThread(name="echo-server") as server_loop:
        server, port = server_loop.run(_start_echo_server())
        try:
            for _ in range(30):
                lt = LoopThread()
                channel = lt.run(_open_stream_and_forget(port))
                lt.close()
                # Closed before the loop was: nothing is left for the collector.
                assert channel.get_state() is grpc.ChannelConnectivity.SHUTDOWN
                del channel, lt
                gc.collect()

            async def settle() -> None:  # one more turn of the surviving loop
                await asyncio.sleep(0)

            server_loop.run(settle())
        finally:
            server_loop.run(server.stop(None))


def test_closing_loops_with_grpc_calls_in_flight_logs_nothing() -> None:
    # In a fresh process: grpc's poller is process-wide, so completions of calls left in
    # flight on plain asyncio loops that earlier tests closed can be delivered to this
    # test's loops and logged ("Event loop is closed"), whatever LoopThread does.
    done = subprocess.run(
        [sys.executable, __file__, "closing-loops"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    for text in (done.stdout, done.stderr):
        assert "Event loop is closed" not in text
        assert "_handle_events" not in text


if __name__ == "__main__" and sys.argv[1:] == ["closing-loops"]:
    _closing_loops_scenario()
