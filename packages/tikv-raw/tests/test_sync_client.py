"""The blocking facade: same results as the async client, run on its private loop thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
from _raw_fake_router import FakeRouter
from tikv_pd.sync import LoopThread
from tikv_raw import AsyncRawClient, Checksum, ClientClosedError, RawClient

SPLITS = [b"b", b"d", b"f", b"h", b"k", b"m", b"p", b"s", b"v"]


@pytest.fixture
def sync_env() -> Iterator[tuple[FakeRouter, RawClient]]:
    router = FakeRouter(SPLITS)
    client = RawClient(AsyncRawClient(router, atomic=True), LoopThread())
    yield router, client
    client.close()


def test_every_method_through_the_facade(sync_env: tuple[FakeRouter, RawClient]) -> None:
    _, c = sync_env
    model = {b"%c%d" % (ch, i): b"%d" % i for ch in b"acegikmoqsuwy" for i in range(5)}
    c.batch_put(model)
    c.put(b"t", b"ttl", ttl=9)
    model[b"t"] = b"ttl"
    assert c.get(b"a0") == b"0"
    assert c.get(b"nope") is None
    assert c.batch_get([b"a1", b"zz", b"y4"]) == {b"a1": b"1", b"y4": b"4"}
    assert c.get_key_ttl(b"t") == 9
    assert (
        c.scan(b"c", b"g", limit=3)
        == sorted((k, v) for k, v in model.items() if b"c" <= k < b"g")[:3]
    )
    assert c.scan(limit=2, reverse=True) == [(b"y4", b"4"), (b"y3", b"3")]
    assert list(c.scan_iter(page_size=7)) == sorted(model.items())
    assert list(c.scan_iter(reverse=True, page_size=4, key_only=True)) == [
        (k, b"") for k in sorted(model, reverse=True)
    ]
    assert c.batch_scan([(b"a", b"b"), (b"w", None)], each_limit=2) == [
        [(b"a0", b"0"), (b"a1", b"1")],
        [(b"w0", b"0"), (b"w1", b"1")],
    ]
    assert c.compare_and_swap(b"cas", None, b"1") == (None, True)
    assert c.compare_and_swap(b"cas", b"0", b"2") == (b"1", False)
    del model[b"a0"]
    c.delete(b"a0")
    c.batch_delete([b"a1", b"a2"])
    del model[b"a1"], model[b"a2"]
    assert c.get(b"a0") is None
    assert isinstance(c.checksum(), Checksum)
    assert c.checksum().total_kvs == len(model) + 1  # + b"cas"
    w = c.with_cf("write")
    w.put(b"k", b"w")
    assert (w.get(b"k"), c.get(b"k")) == (b"w", None)
    assert (c.atomic, c.cf, w.cf, c.api_version, c.keyspace) == (True, "default", "write", 1, None)


def test_scan_iter_break_early_fetches_little(sync_env: tuple[FakeRouter, RawClient]) -> None:
    router, c = sync_env
    c.batch_put({b"k%04d" % i: b"v" for i in range(1000)})
    router.requests.clear()
    it = c.scan_iter(b"k", page_size=10)
    got = [next(it) for _ in range(15)]
    it.close()
    assert got == [(b"k%04d" % i, b"v") for i in range(15)]
    assert sum(r.limit for cmd, r in router.requests if cmd == "RawScan") <= 20


def test_bad_input_raises_in_the_calling_thread(sync_env: tuple[FakeRouter, RawClient]) -> None:
    router, c = sync_env
    with pytest.raises(TypeError, match="key must be bytes"):
        c.get("k")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="page_size"):
        c.scan_iter(page_size=0)
    assert router.requests == []


def test_usable_from_many_threads(sync_env: tuple[FakeRouter, RawClient]) -> None:
    _, c = sync_env
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(20):
                c.put(b"t%d-%d" % (n, i), b"%d" % i)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(c.scan(b"t", b"u", limit=1000)) == 80


async def test_refuses_calls_from_a_running_loop(sync_env: tuple[FakeRouter, RawClient]) -> None:
    _, c = sync_env
    with pytest.raises(RuntimeError, match=r"(?i)async"):
        c.get(b"k")
    await asyncio.sleep(0)


def test_close_and_context_manager() -> None:
    router = FakeRouter()
    with RawClient(AsyncRawClient(router), LoopThread()) as c:
        c.put(b"k", b"v")
        view = c.with_cf("lock")
        view.close()  # views do not own the connection
        assert c.get(b"k") == b"v"
    assert router.closed
    assert c.closed
    c.close()  # idempotent
    with pytest.raises(ClientClosedError):
        c.get(b"k")
